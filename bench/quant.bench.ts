/**
 * Quantization: quality on the real KV dumps and quantize speed.
 *
 * Quality: per mode, calibrate on one story's pre-RoPE keys and values, quantize the other
 * story's cache (every layer; 1 sink token raw, no recent window, so the codes themselves are
 * measured), dequantize with RoPE, and run causal attention with the real queries. Reported:
 * effective bits (without and with the params' static arrays) and the relative L2 error of
 * the attention outputs against the uncompressed cache, averaged over layers and both
 * directions (A -> B, B -> A).
 * Speed: quantize throughput in GB/s of f32 input at [1, 8, T, 128], beside a device-to-device
 * copy of the same bytes on CUDA (target: >= 80% of it) and >= 1 GB/s on the CPU.
 */
import { attention, backend, calibrate, dequantize, QUANT_MODES, quantize, Tensor, type QuantMode } from '../lib/index.js';
import { relativeL2 } from './common/kv-host.js';
import { readNpy } from './common/npy.js';
import { environmentStamp, medianMs, printTable, writeResult } from './common/report.js';
import { kvDumps, layerFile } from './common/shared-data.js';

interface Variant {
  mode: QuantMode;
  outliers: number;
}

const VARIANTS: Variant[] = [
  ...QUANT_MODES.map((mode) => ({ mode, outliers: 0 })),
  { mode: 'nuq2', outliers: 1 },
  { mode: 'k2v1', outliers: 1 },
];

async function quality(): Promise<Record<string, string | number>[]> {
  const dumps = kvDumps();
  if (dumps.length < 2) {
    console.log('(quality: ../shared/data/kv is absent, skipped)');
    return [];
  }
  const rows: Record<string, string | number>[] = [];
  const results = new Map<string, { errors: number[]; bits: number[]; bitsWithParams: number[] }>();
  const [a, b] = [dumps[0]!, dumps[1]!];
  for (const [calib, target] of [[a, b], [b, a]] as const) {
    for (const layer of target.layers) {
      const q = readNpy(layerFile(target.dir, layer, 'q')), k = readNpy(layerFile(target.dir, layer, 'k'));
      const kPre = readNpy(layerFile(target.dir, layer, 'k_prerope')), v = readNpy(layerFile(target.dir, layer, 'v'));
      const ck = readNpy(layerFile(calib.dir, layer, 'k_prerope')), cv = readNpy(layerFile(calib.dir, layer, 'v'));
      const dense = (await (await attention(q, k, v, { causal: true })).data()) as Float32Array;
      for (const { mode, outliers } of VARIANTS) {
        const params = await calibrate({ keys: ck, values: cv, mode, headDim: k.shape[3]!, outliers, sinkTokens: 1, recentTokens: 0 });
        using qkv = await quantize(kPre, v, params, { ropeTheta: 10000, ropeStyle: 'interleaved' });
        const { keys, values } = await dequantize(qkv);
        const out = (await (await attention(q, keys, values, { causal: true })).data()) as Float32Array;
        const key = `${mode}${outliers ? ` +${outliers} outlier` : ''}`;
        const entry = results.get(key) ?? { errors: [], bits: [], bitsWithParams: [] };
        entry.errors.push(relativeL2(out, dense));
        entry.bits.push(qkv.effectiveBitsWithoutParams);
        entry.bitsWithParams.push(qkv.effectiveBits);
        results.set(key, entry);
      }
    }
  }
  const mean = (list: number[]) => list.reduce((a, b) => a + b, 0) / list.length;
  for (const [method, r] of results)
    rows.push({ method, 'eff bits': mean(r.bits), 'eff bits + params': mean(r.bitsWithParams), 'attn rel L2': mean(r.errors), 'worst layer': Math.max(...r.errors) });
  rows.push({ method: 'uncompressed f16', 'eff bits': 16, 'eff bits + params': 16, 'attn rel L2': 0, 'worst layer': 0 });
  printTable(rows);
  return rows;
}

async function speed(device: string, quick: boolean): Promise<Record<string, string | number>[]> {
  const T = device === 'cpu' ? (quick ? 2048 : 8192) : quick ? 8192 : 32768, H = 8, D = 128;
  const shape = [1, H, T, D];
  const random = new Float32Array(H * T * D).map((_, i) => Math.sin(i * 12.9898) * 2);
  const hostK = Tensor.from(random, shape), hostV = Tensor.from(random.slice().reverse(), shape);
  const keys = device === 'cpu' ? hostK : await hostK.to(device as 'cuda'), values = device === 'cpu' ? hostV : await hostV.to(device as 'cuda');
  const calibK = Tensor.from(random.subarray(0, H * 1024 * D), [1, H, 1024, D]), calibV = Tensor.from(random.subarray(H * D, H * 1025 * D), [1, H, 1024, D]);
  const inputGB = (2 * H * T * D * 4) / 1e9;
  const rows: Record<string, string | number>[] = [];
  let copyGBs = 0;
  if (device !== 'cpu') {
    const copy = await medianMs(async () => { (await keys.to(device as 'cuda')).dispose(); (await values.to(device as 'cuda')).dispose(); });
    copyGBs = (2 * inputGB) / (copy.median / 1e3); // read + write
    rows.push({ op: 'device-to-device copy (K+V)', device, tokens: T, 'ms': copy.median, 'GB/s': copyGBs, '% of copy': 100 });
  }
  for (const mode of ['kivi2', 'nuq2', 'k2v1', 'rot2'] as QuantMode[]) {
    const params = await calibrate({ keys: calibK, values: calibV, mode, headDim: D, recentTokens: 0, maxVqSamples: 1024, iterations: 10 });
    const run = await medianMs(async () => (await quantize(keys, values, params)).dispose(), { iterations: quick ? 3 : 5, warmup: 1 });
    const gbs = inputGB / (run.median / 1e3);
    rows.push({ op: `quantize ${mode}`, device, tokens: T, 'ms': run.median, 'GB/s': gbs, '% of copy': copyGBs ? (100 * gbs) / copyGBs : '-' });
  }
  printTable(rows);
  return rows;
}

export async function runQuantBench(options: { quick?: boolean } = {}): Promise<void> {
  const quick = options.quick ?? false;
  const qualityRows = await quality();
  const devices = ['cpu', ...(backend().cuda.available ? ['cuda'] : [])];
  const speedRows: Record<string, string | number>[] = [];
  for (const device of devices) speedRows.push(...(await speed(device, quick)));
  const device = backend().cuda.available ? backend().cuda.devices[0]!.name : 'cpu';
  const path = writeResult('quant', device, { bench: 'quant', ...environmentStamp(), quality: qualityRows, speed: speedRows });
  console.log(`wrote ${path}`);
}
