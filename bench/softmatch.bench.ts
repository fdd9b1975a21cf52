/**
 * softMatch: quality on the real KV dumps (bench/common/prefix-quality.ts) at 50% / 25% /
 * 12.5% of the prefix beside gaussianMerge and eviction, and speed at 32K tokens x 8 KV heads
 * x 128 beside dense causal prefill attention (CUDA only, as in the merge benchmark).
 */
import { attention, backend, softMatch, Tensor, toF16, type Device } from '../lib/index.js';
import { randomArray, rng } from '../test/helpers/random.js';
import { GAUSSIAN_METHODS } from './merge.bench.js';
import { evictTopScore, prefixQuality, uniformDrop, type PrefixMethod } from './common/prefix-quality.js';
import { environmentStamp, medianMs, printTable, writeResult } from './common/report.js';

const CHUNK = 32;

// Chunks of 32 tile the 448-token prefix exactly (no raw tail), so the kept count is
// exactly the ratio's; no protected tokens, so the count is the same as the other methods'.
const softMatchMethod: PrefixMethod = async ({ keys, values, prefix }, kept) => {
  const clustered = await softMatch(keys, values, { chunk: CHUNK, ratio: kept / prefix, protect: { first: 0 } });
  if (clustered.keys.shape[2] !== kept) throw new Error(`softMatch kept ${clustered.keys.shape[2]} slots, not ${kept}`);
  return { keys: clustered.keys, values: clustered.values, logWeights: (await (await clustered.logWeights()).data()) as Float32Array };
};

async function speed(device: Device): Promise<Record<string, string | number>[]> {
  const B = 1, Hkv = 8, Hq = 32, T = 32768, D = 128, dtype = device === 'cpu' ? 'f32' : 'f16';
  const random = rng(10);
  const make = async (shape: number[]) => {
    const values = randomArray(random, shape.reduce((a, b) => a * b));
    const host = dtype === 'f16' ? Tensor.from(toF16(values), shape, 'f16') : Tensor.from(values, shape);
    return device === 'cpu' ? host : host.to(device);
  };
  const k = await make([B, Hkv, T, D]), v = await make([B, Hkv, T, D]);
  const rows: Record<string, string | number>[] = [];
  const cluster = await medianMs(async () => (await softMatch(k, v, { ratio: 0.25 })).dispose(),
    device === 'cpu' ? { warmup: 1, iterations: 3 } : { warmup: 2, iterations: 10 });
  rows.push({ op: 'softMatch 25%', device, shape: `B${B} Hkv${Hkv} T${T} D${D} chunk${CHUNK}`, dtype, 'median ms': cluster.median });
  if (device !== 'cpu') {
    const q = await make([B, Hq, T, D]);
    const dense = await medianMs(async () => (await attention(q, k, v, { causal: true })).dispose(), { warmup: 1, iterations: 5 });
    rows.push({ op: 'dense causal attention', device, shape: `B${B} Hq${Hq} Hkv${Hkv} T${T} D${D}`, dtype, 'median ms': dense.median });
    rows.push({ op: 'softMatch / dense', device, shape: '', dtype, 'median ms': cluster.median / dense.median });
    q.dispose();
  }
  k.dispose();
  v.dispose();
  printTable(rows);
  return rows;
}

export async function runSoftMatchBench(options: { quick?: boolean } = {}): Promise<void> {
  const stamp = environmentStamp();
  const qualityRows = await prefixQuality({
    [`softMatch chunk ${CHUNK}`]: softMatchMethod,
    'gaussianMerge adaptive +top45%': GAUSSIAN_METHODS['gaussianMerge adaptive +top45%']!,
    'evict top-score': evictTopScore, 'uniform drop': uniformDrop,
  });
  const info = backend();
  const devices: Device[] = options.quick ? [] : ['cpu'];
  if (info.cuda.available) devices.push('cuda:0');
  else console.log(`(CUDA not measured: ${info.cuda.reason})`);
  const speedRows = [];
  for (const device of devices) speedRows.push(...(await speed(device)));
  const name = info.cuda.available ? info.cuda.devices[0]!.name : 'cpu';
  console.log(`wrote ${writeResult('softmatch', name, { bench: 'softmatch', ...stamp, quality: qualityRows, speed: speedRows })}`);
}
