/** Benchmark plumbing: timing, the environment stamp every result file carries, tables. */
import { execSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { backend } from '../../lib/index.js';
import { packageRoot } from '../../lib/native.js';

/** Median wall time in ms of `run` (awaited), after `warmup` untimed runs. */
export async function medianMs(run: () => Promise<unknown>, { warmup = 2, iterations = 10, budgetMs = 20_000 } = {}): Promise<{ median: number; samples: number[] }> {
  for (let i = 0; i < warmup; i++) await run();
  const samples: number[] = [];
  const start = performance.now();
  while (samples.length < iterations && (samples.length < 3 || performance.now() - start < budgetMs)) {
    const t0 = performance.now();
    await run();
    samples.push(performance.now() - t0);
  }
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return { median: sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2, samples };
}

function git(command: string): string {
  try {
    return execSync(`git ${command}`, { cwd: packageRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}

export function environmentStamp() {
  const info = backend();
  // result files being written do not make the tree dirty
  const dirty = git("status --porcelain -- . ':!bench/results'") !== '';
  return {
    date: new Date().toISOString(),
    commit: git('rev-parse --short HEAD') + (dirty ? '+dirty' : ''),
    node: process.version,
    cpuThreads: info.cpu.threads,
    cuda: {
      compiled: info.cuda.compiled, available: info.cuda.available, reason: info.cuda.reason,
      driverVersion: info.cuda.driverVersion, runtimeVersion: info.cuda.runtimeVersion, devices: info.cuda.devices,
    },
  };
}

export function printTable(rows: Record<string, string | number>[]): void {
  if (rows.length === 0) return;
  const columns = Object.keys(rows[0]!);
  const cell = (value: string | number | undefined) => (typeof value === 'number' ? formatNumber(value) : String(value ?? ''));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (values: string[]) => values.map((v, i) => v.padStart(widths[i]!)).join('  ');
  console.log(line(columns));
  console.log(line(widths.map((w) => '-'.repeat(w))));
  for (const row of rows) console.log(line(columns.map((c) => cell(row[c]))));
}

function formatNumber(value: number): string {
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  return abs >= 100 ? value.toFixed(1) : abs >= 1 ? value.toFixed(3) : value.toPrecision(3);
}

/** Writes <dir>/<name>-<device>-<date>.json (dir: bench/results) and returns its path. */
export function writeResult(name: string, device: string, payload: object, dir = join(packageRoot, 'bench', 'results')): string {
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().slice(0, 10);
  const path = join(dir, `${name}-${device.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}-${stamp}.json`);
  writeFileSync(path, `${JSON.stringify(payload, null, 2)}\n`);
  return path;
}
