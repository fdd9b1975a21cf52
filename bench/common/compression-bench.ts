/**
 * The frame every compression benchmark shares: quality on the real dumps
 * (prefix-quality.ts), then the op's time at 32K tokens x 8 KV heads x 128 on each device,
 * beside dense causal prefill attention (32 query heads) on CUDA, where the target is < 10%
 * (the CPU reference of dense attention at 32K takes minutes, so only the op is timed there).
 */
import { attention, backend, Tensor, toF16, type Device } from '../../lib/index.js';
import { randomArray, rng } from '../../test/helpers/random.js';
import { prefixQuality, type PrefixMethod } from './prefix-quality.js';
import { environmentStamp, medianMs, printTable, writeResult } from './report.js';

export interface TimedOp {
  /** e.g. 'gaussianMerge 25%' */
  label: string;
  /** compresses keys/values [1, 8, 32768, 128] (scores f32 [1, 8, 32768]) and returns what to dispose */
  run(keys: Tensor, values: Tensor, scores: Tensor): Promise<{ dispose(): void }>;
}

async function speed(device: Device, op: TimedOp): Promise<Record<string, string | number>[]> {
  const B = 1, Hkv = 8, Hq = 32, T = 32768, D = 128, dtype = device === 'cpu' ? 'f32' : 'f16';
  const random = rng(9);
  const make = async (shape: number[], asDtype = dtype) => {
    const values = randomArray(random, shape.reduce((a, b) => a * b));
    const host = asDtype === 'f16' ? Tensor.from(toF16(values), shape, 'f16') : Tensor.from(values, shape);
    return device === 'cpu' ? host : host.to(device);
  };
  const k = await make([B, Hkv, T, D]), v = await make([B, Hkv, T, D]), scores = await make([B, Hkv, T], 'f32');
  const rows: Record<string, string | number>[] = [];
  const timed = await medianMs(async () => (await op.run(k, v, scores)).dispose(),
    device === 'cpu' ? { warmup: 1, iterations: 3 } : { warmup: 2, iterations: 10 });
  rows.push({ op: op.label, device, shape: `B${B} Hkv${Hkv} T${T} D${D}`, dtype, 'median ms': timed.median });
  if (device !== 'cpu') {
    const q = await make([B, Hq, T, D]);
    const dense = await medianMs(async () => (await attention(q, k, v, { causal: true })).dispose(), { warmup: 1, iterations: 5 });
    rows.push({ op: 'dense causal attention', device, shape: `B${B} Hq${Hq} Hkv${Hkv} T${T} D${D}`, dtype, 'median ms': dense.median });
    rows.push({ op: `${op.label} / dense`, device, shape: '', dtype, 'median ms': timed.median / dense.median });
    q.dispose();
  }
  for (const t of [k, v, scores]) t.dispose();
  printTable(rows);
  return rows;
}

/** Quality table, timings, and bench/results/<name>-<device>-<date>.json. */
export async function runCompressionBench(name: string, methods: Record<string, PrefixMethod>, op: TimedOp,
  options: { quick?: boolean }): Promise<void> {
  const stamp = environmentStamp();
  const qualityRows = await prefixQuality(methods);
  const info = backend();
  const devices: Device[] = options.quick ? [] : ['cpu'];
  if (info.cuda.available) devices.push('cuda:0');
  else console.log(`(CUDA not measured: ${info.cuda.reason})`);
  const speedRows = [];
  for (const device of devices) speedRows.push(...(await speed(device, op)));
  const deviceName = info.cuda.available ? info.cuda.devices[0]!.name : 'cpu';
  console.log(`wrote ${writeResult(name, deviceName, { bench: name, ...stamp, quality: qualityRows, speed: speedRows })}`);
}
