/**
 * quantizedAttention decode (Tq = 1, causal) over a packed cache against dense attention on
 * the same shape: our own `attention` (f16 on CUDA) and, when bench/qattn_sdpa.py ran on the
 * same device today, PyTorch SDPA (fp16).
 *
 * Caches: random keys (pre-RoPE, rope 'half', theta 10000) and values, 4 sink and 128 recent
 * tokens raw (f16), no outliers, built 4096 tokens at a time (quantize, then append). The
 * dense baseline's K/V are zeros of the same shape (its speed does not depend on the data).
 * "bytes" = what the fused kernel must read at least: the cache's pages and raw rows
 * (QuantizedKV.bytes), the params' arrays once, q and the output; "% of copy" compares that
 * rate with a device-to-device copy measured in the same run (read + write bytes per second).
 * Times are wall-clock medians of one awaited call (host overhead included, as in
 * attention.bench.ts); "ms (16 in flight)" issues 16 calls together so that the host overhead
 * overlaps the kernels, and GB/s, % of copy and the speedups use it on CUDA.
 * Without a GPU the CPU reference (decode + f64 attention) runs on small shapes, labelled.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { attention, backend, calibrate, quantize, quantizedAttention, Tensor, toF16, type QuantizedKV, type QuantMode, type QuantParams } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';
import { randomArray, rng } from '../test/helpers/random.js';
import { environmentStamp, medianMs, printTable, writeResult } from './common/report.js';

interface Shape { B: number; Hq: number; Hkv: number; T: number; D: number }

const GPU_SHAPES: Shape[] = [4096, 32768, 131072].flatMap((T) => [1, 8].flatMap((B) => [8, 32].map((Hkv) => ({ B, Hq: 32, Hkv, T, D: 128 }))));
const GPU_MODES: QuantMode[] = ['k2v1', 'nuq2', 'cq1', 'kivi2', 'rot2'];
const CPU_SHAPES: Shape[] = [{ B: 1, Hq: 8, Hkv: 2, T: 2048, D: 64 }];
const CPU_MODES: QuantMode[] = ['k2v1', 'kivi2'];
const CHUNK = 4096;      // tokens per quantize / append call while building a cache
const IN_FLIGHT = 16;
const SINK = 4, RECENT = 128;

type Row = Record<string, string | number>;

/** Median wall ms of `op` (its output disposed); with inFlight > 1, of inFlight calls together, per call. */
async function timeCall(op: () => Promise<Tensor>, cuda: boolean, quick: boolean, inFlight = 1): Promise<number> {
  const { median } = await medianMs(async () => {
    const outs = await Promise.all(Array.from({ length: inFlight }, op));
    for (const out of outs) out.dispose();
  }, cuda ? { warmup: 2, iterations: quick ? 5 : 15 } : { warmup: 1, iterations: 3 });
  return median / inFlight;
}

/** timeCall with IN_FLIGHT calls on CUDA; the single-call time if overlapping calls fail. */
async function timeInFlight(op: () => Promise<Tensor>, single: number, quick: boolean): Promise<number> {
  try {
    return await timeCall(op, true, quick, IN_FLIGHT);
  } catch (error) {
    console.log(`(${IN_FLIGHT} calls in flight failed, single-call time used: ${String(error)})`);
    return single;
  }
}

/** Read + write GB/s of a device-to-device copy of 512 MiB. */
async function copyBandwidth(): Promise<number> {
  const bytes = 512 * 1024 * 1024;
  using source = Tensor.zeros([bytes / 2], 'f16', 'cuda');
  const { median } = await medianMs(async () => (await source.to('cuda')).dispose(), { warmup: 2, iterations: 10 });
  return (2 * bytes) / (median / 1e3) / 1e9;
}

/** PyTorch SDPA times (ms) by "B/Hkv/T" from the newest bench/results/qattn-sdpa-*.json of this device. */
function sdpaTimes(deviceName: string): Map<string, number> {
  const dir = join(packageRoot, 'bench', 'results'), times = new Map<string, number>();
  if (!existsSync(dir)) return times;
  const files = readdirSync(dir).filter((f) => f.startsWith('qattn-sdpa-') && f.endsWith('.json')).sort();
  const today = new Date().toISOString().slice(0, 10);
  for (const file of files.reverse()) {
    const result = JSON.parse(readFileSync(join(dir, file), 'utf8')) as { device?: string; date?: string; rows?: { B: number; Hkv: number; T: number; ms: number }[] };
    if (result.device !== deviceName || !result.date?.startsWith(today)) continue;
    for (const r of result.rows ?? []) times.set(`${r.B}/${r.Hkv}/${r.T}`, r.ms);
    console.log(`(PyTorch SDPA times from ${file})`);
    break;
  }
  return times;
}

function floatTensor(values: Float32Array, shape: number[], f16: boolean): Tensor {
  return f16 ? Tensor.from(toF16(values), shape, 'f16') : Tensor.from(values, shape);
}

/** A cache of T tokens built from one random chunk, quantized then appended until T. */
async function buildCache(chunkK: Tensor, chunkV: Tensor, params: QuantParams, T: number): Promise<QuantizedKV> {
  const qkv = await quantize(chunkK, chunkV, params, { ropeTheta: 10000, ropeStyle: 'half' });
  try {
    while (qkv.tokens < T) await qkv.append(chunkK, chunkV);
    return qkv;
  } catch (error) {
    qkv.dispose();
    throw error;
  }
}

async function runDevice(device: 'cpu' | 'cuda', quick: boolean, deviceName: string): Promise<Row[]> {
  const cuda = device === 'cuda';
  const shapes = cuda ? (quick ? GPU_SHAPES.filter((s) => s.T <= 32768) : GPU_SHAPES) : CPU_SHAPES.map((s) => ({ ...s, T: quick ? 1024 : s.T }));
  const modes = cuda ? GPU_MODES : CPU_MODES;
  const copyGBs = cuda ? await copyBandwidth() : 0;
  if (cuda) console.log(`device-to-device copy: ${copyGBs.toFixed(1)} GB/s (read + write)`);
  const sdpa = cuda ? sdpaTimes(deviceName) : new Map<string, number>();
  const rows: Row[] = [];
  const paramsCache = new Map<string, QuantParams>();
  const chunks = new Map<string, [Tensor, Tensor]>();
  try {
    for (const s of shapes) {
      const chunkTokens = Math.min(CHUNK, s.T);
      const key = `${s.B}/${s.Hkv}/${s.D}`;
      if (!chunks.has(key)) {
        for (const [k, [a, b]] of chunks) (a.dispose(), b.dispose(), chunks.delete(k));
        const random = rng(s.B * 100 + s.Hkv);
        const shape = [s.B, s.Hkv, chunkTokens, s.D], n = s.B * s.Hkv * chunkTokens * s.D;
        const host = [floatTensor(randomArray(random, n, 1.5), shape, true), floatTensor(randomArray(random, n), shape, true)];
        chunks.set(key, cuda ? [await host[0]!.to('cuda'), await host[1]!.to('cuda')] : [host[0]!, host[1]!]);
        if (cuda) for (const t of host) t.dispose();
      }
      const [chunkK, chunkV] = chunks.get(key)!;
      using q = cuda ? await floatTensor(randomArray(rng(7), s.B * s.Hq * s.D), [s.B, s.Hq, 1, s.D], true).to('cuda')
        : floatTensor(randomArray(rng(7), s.B * s.Hq * s.D), [s.B, s.Hq, 1, s.D], false);

      // the dense baseline: f16 on CUDA, f32 on the CPU
      const denseDtype = cuda ? 'f16' : 'f32';
      let denseMs: number, denseMsInFlight: number;
      {
        using k = Tensor.zeros([s.B, s.Hkv, s.T, s.D], denseDtype, device);
        using v = Tensor.zeros([s.B, s.Hkv, s.T, s.D], denseDtype, device);
        const op = () => attention(q, k, v, { causal: true });
        denseMs = await timeCall(op, cuda, quick);
        denseMsInFlight = cuda ? await timeInFlight(op, denseMs, quick) : denseMs;
      }
      const sdpaMs = sdpa.get(`${s.B}/${s.Hkv}/${s.T}`);
      rows.push({
        shape: `B${s.B} Hq${s.Hq} Hkv${s.Hkv} T${s.T} D${s.D}`, method: `attention ${denseDtype} (dense)`, device,
        'median ms': denseMs, [`ms (${IN_FLIGHT} in flight)`]: cuda ? denseMsInFlight : '-', 'MB read': (2 * s.B * s.Hkv * s.T * s.D * (cuda ? 2 : 4)) / 1e6,
        'GB/s': (2 * s.B * s.Hkv * s.T * s.D * (cuda ? 2 : 4)) / (denseMsInFlight * 1e6), '% of copy': '-', 'x dense': 1,
        'x SDPA': sdpaMs ? sdpaMs / denseMsInFlight : '-',
      });

      for (const mode of modes) {
        const paramsKey = `${mode}/${s.Hkv}/${s.D}`;
        let params = paramsCache.get(paramsKey);
        if (!params) {
          const random = rng(11), n = s.Hkv * 1024 * s.D;
          params = await calibrate({ keys: Tensor.from(randomArray(random, n, 1.5), [1, s.Hkv, 1024, s.D]), values: Tensor.from(randomArray(random, n), [1, s.Hkv, 1024, s.D]),
            mode, headDim: s.D, sinkTokens: SINK, recentTokens: RECENT, rawDtype: 'f16', iterations: 5, maxVqSamples: 1024 });
          paramsCache.set(paramsKey, params);
        }
        using qkv = await buildCache(chunkK, chunkV, params, s.T);
        const op = () => quantizedAttention(q, qkv, { causal: true });
        const ms = await timeCall(op, cuda, quick);
        const msInFlight = cuda ? await timeInFlight(op, ms, quick) : ms;
        const bytes = qkv.bytes + params.bytes + 2 * s.B * s.Hq * s.D * (cuda ? 2 : 4);
        const gbs = bytes / (msInFlight * 1e6);
        rows.push({
          shape: `B${s.B} Hq${s.Hq} Hkv${s.Hkv} T${s.T} D${s.D}`, method: cuda ? `quantizedAttention ${mode}` : `quantizedAttention ${mode} (CPU reference)`, device,
          'median ms': ms, [`ms (${IN_FLIGHT} in flight)`]: cuda ? msInFlight : '-', 'MB read': bytes / 1e6, 'GB/s': gbs,
          '% of copy': cuda ? (100 * gbs) / copyGBs : '-', 'x dense': denseMsInFlight / msInFlight, 'x SDPA': sdpaMs ? sdpaMs / msInFlight : '-',
        });
      }
    }
  } finally {
    for (const [a, b] of chunks.values()) (a.dispose(), b.dispose());
  }
  printTable(rows);
  return rows;
}

export async function runQattnBench(options: { quick?: boolean } = {}): Promise<void> {
  const quick = options.quick ?? false;
  const info = backend();
  const stamp = environmentStamp();
  if (!info.cuda.available) console.log(`(CUDA not measured: ${info.cuda.reason}; the CPU reference on small shapes instead)`);
  const device = info.cuda.available ? 'cuda' : 'cpu';
  const name = info.cuda.available ? (info.cuda.devices[0]?.name ?? 'cuda') : 'cpu';
  const rows = await runDevice(device, quick, name);
  console.log(`wrote ${writeResult('qattn', name, { bench: 'qattn', ...stamp, device, rows })}`);
}
