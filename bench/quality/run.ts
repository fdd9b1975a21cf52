/**
 * `npm run quality -- [--quick] [--device cpu|cuda|cuda:N] [--methods a,b] [--modes prefill,decode]`:
 * the quality harness on stories260K (../shared): table on stdout, JSON and SVG in
 * bench/results, progress on stderr. --quick: two stories and the 25% budget only.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { backend, KvsquashError } from '../../lib/index.js';
import { sharedDir } from '../common/shared-data.js';
import { readStories } from './eval.js';
import { BLOCK, MODES, readDumps, resolveDevice, runQuality, type Mode } from './harness.js';
import { METHODS } from './methods.js';
import { Llama } from './model.js';
import { reportQuality } from './output.js';
import { Tokenizer } from './tokenizer.js';

function flag(name: string): string | undefined {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 ? process.argv[at + 1] : undefined;
}

/** A bar redrawn in place on a terminal; one line per step otherwise (logs, CI). */
function progressReporter(): (done: number, total: number, label: string) => void {
  const started = performance.now();
  return (done, total, label) => {
    const seconds = ((performance.now() - started) / 1000).toFixed(0);
    if (process.stderr.isTTY) {
      const width = 30, filled = Math.round((done / total) * width);
      process.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${seconds}s ${label}`.padEnd(100));
      if (done === total) process.stderr.write('\n');
    } else {
      process.stderr.write(`quality ${done}/${total} (${seconds}s): ${label}\n`);
    }
  };
}

async function main(): Promise<void> {
  const modelPath = join(sharedDir, 'models', 'stories260K.bin'), tokenizerPath = join(sharedDir, 'models', 'tok512.bin');
  const evalPath = join(sharedDir, 'data', 'text', 'eval_stories.txt');
  const missing = [modelPath, tokenizerPath, evalPath].filter((p) => !existsSync(p));
  const device = resolveDevice(flag('device') ?? 'cpu');
  const dumps = readDumps();
  if (missing.length > 0 || dumps.length === 0) {
    console.error(`quality: needs the model, the eval text and the K/V dumps under ${sharedDir} (missing: ${[...missing, ...(dumps.length === 0 ? ['data/kv'] : [])].join(', ')})`);
    process.exit(2);
  }

  const quick = process.argv.includes('--quick');
  const names = flag('methods')?.split(',');
  const unknown = names?.filter((n) => !METHODS.some((m) => m.name === n)) ?? [];
  if (unknown.length > 0) throw new KvsquashError('E_RANGE', `--methods: unknown ${unknown.join(', ')}; known: ${METHODS.map((m) => m.name).join(', ')}`);
  const modes = (flag('modes')?.split(',') ?? MODES) as Mode[];
  if (modes.some((m) => !MODES.includes(m))) throw new KvsquashError('E_RANGE', `--modes: expected some of ${MODES.join(', ')}, got ${modes.join(', ')}`);

  const model = new Llama(modelPath, { device });
  const tokenizer = new Tokenizer(tokenizerPath, model.config.vocab);
  const stories = readStories(evalPath).slice(0, quick ? 2 : undefined);
  const started = performance.now();
  const rows = await runQuality({
    model, tokenizer, stories, dumps, calibration: dumps, modes,
    methods: names ? METHODS.filter((m) => names.includes(m.name)) : METHODS,
    ...(quick ? { budgets: [0.25] } : {}),
    progress: progressReporter(),
  });
  const wallSeconds = (performance.now() - started) / 1000;
  const deviceName = device === 'cpu' ? 'cpu' : backend().cuda.devices[Number(device.slice('cuda:'.length))]!.name;
  const { json, svg } = reportQuality(rows, deviceName, {
    model: 'stories260K', stories: stories.length, dumps: dumps.map((d) => d.name), quick, modes, opsDevice: device,
    wallSeconds, methods: METHODS.map((m) => ({ name: m.name, family: m.family, kind: m.kind, budgets: m.budgets, decode: m.decode })),
    bytes: 'per layer, keys + values, all KV heads, per token handed to the method; dense elements at 2 bytes (f16), merged slots + 2 bytes (f16 log-size)',
    split: `prompt = first half of each sequence rounded down to a multiple of ${BLOCK} tokens; decode: blocks of ${BLOCK}, the newest ${BLOCK}..${2 * BLOCK} tokens raw`,
  });
  console.log(`wrote ${json}\nwrote ${svg}\nwall time ${wallSeconds.toFixed(1)} s`);
}

main().catch((error: unknown) => {
  if (!(error instanceof KvsquashError)) throw error;
  console.error(`quality: ${error.code}: ${error.message}`);
  process.exit(2);
});
