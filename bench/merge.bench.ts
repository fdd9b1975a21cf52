/**
 * gaussianMerge: quality on the real KV dumps and speed at 32K tokens.
 *
 * Quality: the protocol of bench/common/prefix-quality.ts at 50% / 25% / 12.5% of the
 * prefix, for Gaussian merging (with log(size) weights) beside eviction and uniform dropping.
 * Speed: merge time at 32K tokens x 8 KV heads x 128 beside dense causal prefill attention
 * (32 query heads) on the same device; the target is < 10% (CUDA only: the CPU dense
 * reference at 32K takes minutes, so only the merge is timed there).
 */
import { attention, backend, gaussianMerge, Tensor, toF16, type Device } from '../lib/index.js';
import { randomArray, rng } from '../test/helpers/random.js';
import { evictTopScore, prefixQuality, uniformDrop, type PrefixMethod } from './common/prefix-quality.js';
import { environmentStamp, medianMs, printTable, writeResult } from './common/report.js';

// Gaussian variants: KVMerger protects its top-score tokens; 45% of the kept slots keeps the
// budget reachable (each protected token can split a run, and every run needs a slot).
function gaussian(topScore: number, sigma: number | 'adaptive'): PrefixMethod {
  return async ({ keys, values, scores, prefix }, kept) => {
    const [B, H] = keys.shape as [number, number];
    const merged = await gaussianMerge(keys, values, Tensor.from(scores, [B, H, prefix]), {
      budget: kept, protect: { first: 1, topScore: Math.floor(topScore * kept) }, sigma,
    });
    return { keys: merged.keys, values: merged.values, logWeights: (await (await merged.logWeights()).data()) as Float32Array };
  };
}

export const GAUSSIAN_METHODS: Record<string, PrefixMethod> = {
  gaussianMerge: gaussian(0, 5),
  'gaussianMerge +top45%': gaussian(0.45, 5),
  'gaussianMerge adaptive +top45%': gaussian(0.45, 'adaptive'),
};

async function speed(device: Device): Promise<Record<string, string | number>[]> {
  const B = 1, Hkv = 8, Hq = 32, T = 32768, D = 128, dtype = device === 'cpu' ? 'f32' : 'f16';
  const random = rng(9);
  const make = async (shape: number[]) => {
    const values = randomArray(random, shape.reduce((a, b) => a * b));
    const host = dtype === 'f16' ? Tensor.from(toF16(values), shape, 'f16') : Tensor.from(values, shape);
    return device === 'cpu' ? host : host.to(device);
  };
  const k = await make([B, Hkv, T, D]), v = await make([B, Hkv, T, D]);
  const scoresHost = Tensor.from(randomArray(random, B * Hkv * T), [B, Hkv, T]);
  const scores = device === 'cpu' ? scoresHost : await scoresHost.to(device);
  const rows: Record<string, string | number>[] = [];
  const merge = await medianMs(async () => (await gaussianMerge(k, v, scores, { budget: 0.25, protect: { first: 1, recent: 64 } })).dispose(),
    device === 'cpu' ? { warmup: 1, iterations: 3 } : { warmup: 2, iterations: 10 });
  rows.push({ op: 'gaussianMerge 25%', device, shape: `B${B} Hkv${Hkv} T${T} D${D}`, dtype, 'median ms': merge.median });
  if (device !== 'cpu') {
    const q = await make([B, Hq, T, D]);
    const dense = await medianMs(async () => (await attention(q, k, v, { causal: true })).dispose(), { warmup: 1, iterations: 5 });
    rows.push({ op: 'dense causal attention', device, shape: `B${B} Hq${Hq} Hkv${Hkv} T${T} D${D}`, dtype, 'median ms': dense.median });
    rows.push({ op: 'merge / dense', device, shape: '', dtype, 'median ms': merge.median / dense.median });
    q.dispose();
  }
  for (const t of [k, v, scores]) t.dispose();
  printTable(rows);
  return rows;
}

export async function runMergeBench(options: { quick?: boolean } = {}): Promise<void> {
  const stamp = environmentStamp();
  const qualityRows = await prefixQuality({ ...GAUSSIAN_METHODS, 'evict top-score': evictTopScore, 'uniform drop': uniformDrop });
  const info = backend();
  const devices: Device[] = options.quick ? [] : ['cpu'];
  if (info.cuda.available) devices.push('cuda:0');
  else console.log(`(CUDA not measured: ${info.cuda.reason})`);
  const speedRows = [];
  for (const device of devices) speedRows.push(...(await speed(device)));
  const name = info.cuda.available ? info.cuda.devices[0]!.name : 'cpu';
  console.log(`wrote ${writeResult('merge', name, { bench: 'merge', ...stamp, quality: qualityRows, speed: speedRows })}`);
}
