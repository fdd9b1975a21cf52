/**
 * Dense attention: decode (Tq = 1) and causal prefill on each available device.
 * GB/s counts the bytes of q, k, v and the output once; TFLOP/s counts 4·D flops per visible
 * (query, key) pair (QK^T and PV), so a causal prefill does about half the pairs.
 */
import { attention, backend, Tensor, toF16, type Device } from '../lib/index.js';
import { randomArray, rng } from '../test/helpers/random.js';
import { environmentStamp, medianMs, printTable, writeResult } from './common/report.js';

interface Shape { B: number; Hq: number; Hkv: number; Tq: number; Tk: number; D: number; causal: boolean }

const CPU_SHAPES: Shape[] = [
  { B: 1, Hq: 32, Hkv: 8, Tq: 1, Tk: 4096, D: 128, causal: true },
  { B: 8, Hq: 32, Hkv: 8, Tq: 1, Tk: 4096, D: 128, causal: true },
  { B: 1, Hq: 8, Hkv: 4, Tq: 512, Tk: 512, D: 8, causal: true },
  { B: 1, Hq: 32, Hkv: 8, Tq: 256, Tk: 256, D: 128, causal: true },
];

const GPU_SHAPES: Shape[] = [
  ...[4096, 32768].flatMap((Tk) => [1, 8].flatMap((B) => [8, 32].map((Hkv) => ({ B, Hq: 32, Hkv, Tq: 1, Tk, D: 128, causal: true })))),
  { B: 1, Hq: 32, Hkv: 8, Tq: 4096, Tk: 4096, D: 128, causal: true },
  { B: 1, Hq: 32, Hkv: 32, Tq: 8192, Tk: 8192, D: 128, causal: true },
];

function visiblePairs(s: Shape): number {
  if (!s.causal) return s.Tq * s.Tk;
  let pairs = 0;
  for (let i = 0; i < s.Tq; i++) pairs += Math.max(0, Math.min(s.Tk, i + s.Tk - s.Tq + 1));
  return pairs;
}

async function makeTensor(shape: number[], dtype: 'f32' | 'f16', device: Device, seed: number): Promise<Tensor> {
  const values = randomArray(rng(seed), shape.reduce((a, b) => a * b));
  const host = dtype === 'f16' ? Tensor.from(toF16(values), shape, 'f16') : Tensor.from(values, shape);
  return device === 'cpu' ? host : host.to(device);
}

export async function runAttentionBench(options: { quick?: boolean } = {}): Promise<void> {
  const info = backend();
  const devices: [Device, 'f32' | 'f16', Shape[]][] = [['cpu', 'f32', options.quick ? CPU_SHAPES.slice(2, 3) : CPU_SHAPES]];
  if (info.cuda.available) devices.push(['cuda:0', 'f16', GPU_SHAPES], ['cuda:0', 'f32', GPU_SHAPES.slice(0, 2)]);
  else console.log(`(CUDA not measured: ${info.cuda.reason})`);

  const stamp = environmentStamp();
  for (const [device, dtype, shapes] of devices) {
    const rows: Record<string, string | number>[] = [];
    for (const [i, s] of shapes.entries()) {
      const q = await makeTensor([s.B, s.Hq, s.Tq, s.D], dtype, device, 3 * i);
      const k = await makeTensor([s.B, s.Hkv, s.Tk, s.D], dtype, device, 3 * i + 1);
      const v = await makeTensor([s.B, s.Hkv, s.Tk, s.D], dtype, device, 3 * i + 2);
      const { median } = await medianMs(async () => (await attention(q, k, v, { causal: s.causal })).dispose(),
        device === 'cpu' ? { warmup: 1, iterations: 5 } : { warmup: 3, iterations: 20 });
      const bytesPerElement = dtype === 'f16' ? 2 : 4;
      const bytes = (2 * s.B * s.Hq * s.Tq * s.D + 2 * s.B * s.Hkv * s.Tk * s.D) * bytesPerElement;
      const flops = 4 * s.D * s.B * s.Hq * visiblePairs(s);
      rows.push({
        shape: `B${s.B} Hq${s.Hq} Hkv${s.Hkv} Tq${s.Tq} Tk${s.Tk} D${s.D}${s.causal ? ' causal' : ''}`,
        dtype, device, 'median ms': median, 'GB/s': bytes / median / 1e6, 'TFLOP/s': flops / median / 1e9,
      });
      for (const t of [q, k, v]) t.dispose();
    }
    printTable(rows);
    const name = device === 'cpu' ? 'cpu' : (info.cuda.devices[0]?.name ?? device);
    console.log(`wrote ${writeResult(`attention-${dtype}`, name, { bench: 'attention', ...stamp, device, rows })}\n`);
  }
}
