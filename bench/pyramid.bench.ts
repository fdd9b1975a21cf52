/**
 * pyramidAttention: output error against dense causal attention (relative L2 over all
 * outputs) with the achieved density, on the real KV dumps and on longer random sequences
 * (iid keys, and keys drifting along the sequence as a random walk, where neighbouring
 * keys resemble each other as in real caches), at several level bounds; a level-1-only row
 * at the same budget shows what pooling adds over plain block sparsity. Then timings: on the
 * CPU the reference's stages beside the dense reference at one small shape; on CUDA (when
 * present) the fused op and the attend stage alone beside our dense attention at 8K/32K/64K
 * tokens, 32 heads x 128, f16, at ~25% density; with KVSQUASH_SDPA_JSON naming the output of
 * bench/pyramid_sdpa.py (PyTorch SDPA, flash backend, same shapes), also against that.
 */
import { existsSync, readFileSync } from 'node:fs';

import {
  attention, backend, pyramidAssign, pyramidAttention, pyramidImportance, pyramidPool, Tensor, toF16, type Device, type PyramidBounds,
  type PyramidAttentionOptions,
} from '../lib/index.js';
import { randomArray, rng } from '../test/helpers/random.js';
import { readNpy } from './common/npy.js';
import { kvDumps, layerFile } from './common/shared-data.js';
import { relativeL2 } from './common/kv-host.js';
import { environmentStamp, medianMs, printTable, writeResult } from './common/report.js';

type Row = Record<string, string | number>;

/** Level bounds (ends of levels 1, 2, 4, 8), labelled by the row density they aim at without forced blocks. */
const SETTINGS: [string, Pick<PyramidAttentionOptions, 'mode' | 'bounds'>][] = [
  ['topk ~12%', { bounds: [0.05, 0.1, 0.2, 0.4] }],
  ['topk PSA default ~15%', { bounds: [0.1, 0.15, 0.15, 0.35] }],
  ['topk ~25%', { bounds: [0.15, 0.25, 0.4, 0.6] }],
  ['topk ~25% level 1 only', { bounds: [0.25, 0.25, 0.25, 0.25] }],
  ['topk ~50%', { bounds: [0.4, 0.55, 0.7, 0.9] }],
  ['threshold PSA Wan2.1', { mode: 'threshold', bounds: [0.4, 0.5, 0.6, 0.8] }],
];

/** The GPU timing setting: ~25% density. */
const GPU_BOUNDS: PyramidBounds = [0.15, 0.25, 0.4, 0.6];

async function errorRow(source: string, setting: string, q: Tensor, k: Tensor, v: Tensor, dense: ArrayLike<number>,
  options: PyramidAttentionOptions): Promise<Row> {
  const result = await pyramidAttention(q, k, v, { causal: true, ...options });
  const error = relativeL2(await result.output.data(), dense);
  result.output.dispose();
  return { source, setting, block: options.block ?? 64, density: result.density, 'rel L2 error': error };
}

async function realDataQuality(): Promise<Row[]> {
  const dumps = kvDumps();
  if (dumps.length === 0) {
    console.log('(real KV dumps absent: ../shared/data/kv)');
    return [];
  }
  const rows: Row[] = [];
  for (const [setting, options] of SETTINGS) {
    // the mean over every layer of every story; blocks of 16 keys (32 per 512-token head)
    let density = 0, error = 0, n = 0;
    for (const { dir, layers } of dumps) {
      for (const layer of layers) {
        const q = readNpy(layerFile(dir, layer, 'q')), k = readNpy(layerFile(dir, layer, 'k')), v = readNpy(layerFile(dir, layer, 'v'));
        const dense = await (await attention(q, k, v, { causal: true })).data();
        const row = await errorRow('real', setting, q, k, v, dense, { block: 16, queryBlock: 32, maskGranularity: 'kvhead', ...options });
        density += row.density as number;
        error += row['rel L2 error'] as number;
        n++;
      }
    }
    rows.push({ source: `real (${n} layers, T 512, D 8)`, setting, block: 16, density: density / n, 'rel L2 error': error / n });
  }
  return rows;
}

/** keys/values [1, H, T, D]: iid, or a random walk along the tokens (unit-variance steps, rescaled). */
function randomKV(random: () => number, H: number, T: number, D: number, walk: boolean): Float32Array {
  const x = randomArray(random, H * T * D);
  if (!walk) return x;
  for (let h = 0; h < H; h++) {
    for (let t = 1; t < T; t++) for (let d = 0; d < D; d++) x[(h * T + t) * D + d] = 0.98 * x[(h * T + t - 1) * D + d]! + 0.2 * x[(h * T + t) * D + d]!;
  }
  return x;
}

async function randomQuality(quick: boolean): Promise<Row[]> {
  const Hq = 4, Hkv = 2, T = quick ? 512 : 2048, D = 64;
  const rows: Row[] = [];
  for (const walk of [false, true]) {
    const random = rng(walk ? 2 : 1);
    const q = Tensor.from(randomKV(random, Hq, T, D, walk), [1, Hq, T, D]);
    const k = Tensor.from(randomKV(random, Hkv, T, D, walk), [1, Hkv, T, D]);
    const v = Tensor.from(randomKV(random, Hkv, T, D, walk), [1, Hkv, T, D]);
    const dense = await (await attention(q, k, v, { causal: true })).data();
    for (const [setting, options] of SETTINGS)
      rows.push(await errorRow(`random ${walk ? 'walk' : 'iid'} T ${T} D ${D}`, setting, q, k, v, dense, { block: 32, queryBlock: 64, ...options }));
    for (const t of [q, k, v]) t.dispose();
  }
  return rows;
}

async function makeTensor(shape: number[], dtype: 'f32' | 'f16', device: Device, seed: number): Promise<Tensor> {
  const values = randomArray(rng(seed), shape.reduce((a, b) => a * b));
  const host = dtype === 'f16' ? Tensor.from(toF16(values), shape, 'f16') : Tensor.from(values, shape);
  return device === 'cpu' ? host : host.to(device);
}

/** Stage timings and the fused op beside dense attention, one shape on one device. */
async function speed(device: Device, dtype: 'f32' | 'f16', T: number, Hq: number, Hkv: number, D: number, block: number): Promise<Row[]> {
  const cpu = device === 'cpu';
  const reps = cpu ? { warmup: 1, iterations: 5 } : { warmup: 3, iterations: 20 };
  const q = await makeTensor([1, Hq, T, D], dtype, device, 1), k = await makeTensor([1, Hkv, T, D], dtype, device, 2);
  const v = await makeTensor([1, Hkv, T, D], dtype, device, 3);
  const shape = `Hq${Hq} Hkv${Hkv} T${T} D${D} block ${block}`;
  const opts = { block, queryBlock: 128, causal: true, maskGranularity: 'kvhead' as const };
  const levels = await pyramidPool(k, v, { block });
  const importance = await pyramidImportance(q, k, opts);
  const assignOpts = { block, queryBlock: 128, causal: true, bounds: GPU_BOUNDS, qTokens: T, kvTokens: T };
  const mask = await pyramidAssign(importance, assignOpts);
  const density = await mask.density();
  const time = async (label: string, run: () => Promise<unknown>) => ({ op: label, device, dtype, shape, 'median ms': (await medianMs(run, reps)).median });
  const rows: Row[] = [
    await time('pyramidPool', async () => (await pyramidPool(k, v, { block })).dispose()),
    await time('pyramidImportance (sampling 0.25)', async () => (await pyramidImportance(q, k, opts)).dispose()),
    await time('pyramidAssign', async () => (await pyramidAssign(importance, assignOpts)).dispose()),
    await time('attend stage (mask, levels given)', async () => (await pyramidAttention(q, k, v, { ...opts, mask, levels })).output.dispose()),
    await time('pyramidAttention fused', async () => (await pyramidAttention(q, k, v, { ...opts, bounds: GPU_BOUNDS })).output.dispose()),
    await time('dense causal attention', async () => (await attention(q, k, v, { causal: true })).dispose()),
  ];
  const dense = rows.at(-1)!['median ms'] as number;
  for (const row of rows) Object.assign(row, { density, 'dense / this': dense / (row['median ms'] as number) });
  for (const t of [q, k, v, importance]) t.dispose();
  levels.dispose();
  mask.dispose();
  return rows;
}

interface SdpaRow { tokens: number; heads: number; dim: number; median_ms: number }

/** PyTorch SDPA timings from bench/pyramid_sdpa.py, when KVSQUASH_SDPA_JSON names its output. */
function sdpaTimings(): { device: string; rows: SdpaRow[] } | null {
  const path = process.env.KVSQUASH_SDPA_JSON;
  if (!path) return null;
  if (!existsSync(path)) {
    console.log(`(KVSQUASH_SDPA_JSON=${path} does not exist: no SDPA comparison)`);
    return null;
  }
  return JSON.parse(readFileSync(path, 'utf8')) as { device: string; rows: SdpaRow[] };
}

/** Adds the SDPA row of each shape and every row's 'SDPA / this' (same T, 32 heads x 128). */
function compareWithSdpa(rows: Row[], T: number, sdpa: { device: string; rows: SdpaRow[] }): Row[] {
  const match = sdpa.rows.find((r) => r.tokens === T && r.heads === 32 && r.dim === 128);
  if (!match) return rows;
  const sdpaRow: Row = { op: `PyTorch SDPA flash (${sdpa.device})`, device: 'cuda:0', dtype: 'f16', shape: String(rows[0]?.shape ?? T),
    'median ms': match.median_ms };
  const all = [...rows, sdpaRow];
  for (const row of all) row['SDPA / this'] = match.median_ms / (row['median ms'] as number);
  return all;
}

export async function runPyramidBench(options: { quick?: boolean } = {}): Promise<void> {
  const stamp = environmentStamp();
  const quality = [...(await realDataQuality()), ...(await randomQuality(options.quick ?? false))];
  printTable(quality);
  const info = backend();
  const speedRows: Row[] = [];
  // the f64 CPU reference is an oracle, not a fast path: one small shape
  speedRows.push(...(await speed('cpu', 'f32', options.quick ? 512 : 2048, 8, 2, 64, 32)));
  printTable(speedRows);
  console.log(`wrote ${writeResult('pyramid', 'cpu', { bench: 'pyramid', ...stamp, device: 'cpu', quality, speed: speedRows })}\n`);
  if (!info.cuda.available) {
    console.log(`(CUDA not measured: ${info.cuda.reason})`);
    return;
  }
  const gpuRows: Row[] = [];
  const sdpa = sdpaTimings();
  for (const T of options.quick ? [8192] : [8192, 32768, 65536]) {
    const rows = await speed('cuda:0', 'f16', T, 32, 32, 128, 64);
    gpuRows.push(...(sdpa ? compareWithSdpa(rows, T, sdpa) : rows));
  }
  printTable(gpuRows);
  const name = info.cuda.devices[0]?.name ?? 'cuda';
  console.log(`wrote ${writeResult('pyramid', name, { bench: 'pyramid', ...stamp, device: 'cuda:0', quality, speed: gpuRows })}\n`);
}
