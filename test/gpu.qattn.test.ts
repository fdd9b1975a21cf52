// GPU suite for quantizedAttention: the CUDA kernel (cuda/quant_attention.cu) reads the packed
// cache directly and must match the CPU reference (f64 attention over the decoded cache)
// within csrc/core/quant.h's tolerance: max|d out| <= 1e-3 * max|v^| + 1 output ulp,
// |d lse| <= 1e-4. The oracle is CPU `attention` over the cache as CUDA `dequantize` writes
// it (equal to the CPU decode byte for byte, test/gpu.quant.test.ts), which is exactly what
// the CPU quantizedAttention computes; one test also runs the CPU quantizedAttention itself.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import {
  attention, backend, calibrate, dequantize, fromBF16, fromF16, QUANT_MODES, quantize, quantizedAttention, Tensor, toBF16, toF16,
  type AttentionWithLse, type QuantizedKV, type QuantMode, type QuantParams, type RawDType,
} from '../lib/index.js';
import { readNpy } from '../bench/common/npy.js';
import { kvDumps, layerFile } from '../bench/common/shared-data.js';
import { badInputTests } from './helpers/expect-error.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { floatTensor, gpuSuite, type FloatDType } from './helpers/gpu.js';

const gpu = gpuSuite('GPU quantizedAttention suite');

type RopeKind = 'none' | 'interleaved' | 'half';

interface Case {
  mode: QuantMode;
  B: number; Hkv: number; G: number; D: number; T: number; Tq: number;
  sink: number; recent: number; outliers: number; raw: RawDType;
  rope: RopeKind; positions: boolean;
  q: FloatDType; out: FloatDType; causal: boolean; ragged: boolean;
}

// ---- values in a dtype ------------------------------------------------------------------------

/** The f32 values after one rounding to `dtype`. */
function rounded(values: Float32Array, dtype: FloatDType): Float32Array {
  if (dtype === 'f16') return fromF16(toF16(values));
  if (dtype === 'bf16') return fromBF16(toBF16(values));
  return values;
}


async function floats(t: Tensor): Promise<Float32Array> {
  const data = await t.data();
  if (t.dtype === 'f16') return fromF16(data as Uint16Array);
  if (t.dtype === 'bf16') return fromBF16(data as Uint16Array);
  return data as Float32Array;
}

/** Spacing of `dtype` values at magnitude |x| (subnormal spacing below the normal range). */
function ulp(x: number, dtype: FloatDType): number {
  const mantissa = dtype === 'f32' ? 23 : dtype === 'f16' ? 10 : 7;
  const minExponent = dtype === 'f16' ? -14 : -126;
  const a = Math.abs(x);
  const exponent = a === 0 ? minExponent : Math.max(minExponent, Math.floor(Math.log2(a)));
  return 2 ** (exponent - mantissa);
}

// ---- caches -----------------------------------------------------------------------------------

const calibrations = new Map<string, Promise<QuantParams>>();

/** Params per (mode, D, Hkv, outliers, sink, recent, raw), calibrated once on the CPU. */
function params(c: Case): Promise<QuantParams> {
  const key = JSON.stringify([c.mode, c.D, c.Hkv, c.outliers, c.sink, c.recent, c.raw]);
  let p = calibrations.get(key);
  if (!p) {
    const random = rng(c.D * 131 + c.Hkv * 7 + c.outliers);
    const n = 400;
    const keys = Tensor.from(randomArray(random, c.Hkv * n * c.D, 1.5), [1, c.Hkv, n, c.D]);
    const values = Tensor.from(randomArray(random, c.Hkv * n * c.D), [1, c.Hkv, n, c.D]);
    p = calibrate({ keys, values, mode: c.mode, headDim: c.D, outliers: c.outliers, sinkTokens: c.sink, recentTokens: c.recent, rawDtype: c.raw, iterations: 4, maxVqSamples: 512 });
    calibrations.set(key, p);
  }
  return p;
}

/** The case's keys (pre-RoPE when it has RoPE), values and positions, quantized on `device`. */
async function buildCache(c: Case, seed: number, device: 'cpu' | 'cuda'): Promise<QuantizedKV> {
  const random = rng(seed);
  const shape = [c.B, c.Hkv, c.T, c.D];
  const host = [Tensor.from(randomArray(random, c.B * c.Hkv * c.T * c.D, 1.5), shape), Tensor.from(randomArray(random, c.B * c.Hkv * c.T * c.D), shape)];
  let positions: Tensor<'i32'> | undefined;
  if (c.positions) {
    // a sequence continuing far into the context: large angles take sincosf's slow path
    const p = new Int32Array(c.B * c.T);
    for (let b = 0; b < c.B; b++) {
      const offset = randomInt(random, 0, 120_000);
      for (let t = 0; t < c.T; t++) p[b * c.T + t] = offset + t;
    }
    positions = Tensor.from(p, [c.B, c.T], 'i32');
  }
  const [keys, values] = device === 'cpu' ? host : await Promise.all(host.map((t) => t.to(device)));
  const onDevice = positions && device !== 'cpu' ? await positions.to(device) : positions;
  try {
    const rope = c.rope === 'none' ? {} : { ropeTheta: 10000, ropeStyle: c.rope };
    return await quantize(keys!, values!, await params(c), { ...rope, ...(onDevice ? { positions: onDevice } : {}) });
  } finally {
    for (const t of [...host, keys, values, positions, onDevice]) t?.dispose();
  }
}

interface Queries {
  values: Float32Array;  // rounded to the case's q dtype
  shape: number[];
  lengths: Int32Array | null;
}

function makeQueries(c: Case, seed: number): Queries {
  const random = rng(seed + 1);
  const shape = [c.B, c.Hkv * c.G, c.Tq, c.D];
  const values = rounded(randomArray(random, c.B * c.Hkv * c.G * c.Tq * c.D), c.q);
  let lengths: Int32Array | null = null;
  if (c.ragged) {
    // the first head sees nothing, the second everything, the rest anything in between
    lengths = Int32Array.from({ length: c.B * c.Hkv }, (_, i) => (i === 0 ? 0 : i === 1 ? c.T : randomInt(random, 0, c.T)));
  }
  return { values, shape, lengths };
}

/** CPU f64 attention over the cache as dequantize writes it, queries in f32. */
async function reference(qkv: QuantizedKV, c: Case, q: Queries, scale?: number): Promise<{ expected: AttentionWithLse; values: Float32Array }> {
  const decoded = await dequantize(qkv);
  const [keys, values] = await Promise.all([decoded.keys.to('cpu'), decoded.values.to('cpu')]);
  decoded.keys.dispose();
  decoded.values.dispose();
  using query = Tensor.from(q.values, q.shape);
  using kvLengths = q.lengths ? Tensor.from(q.lengths, [c.B, c.Hkv], 'i32') : undefined;
  const expected = await attention(query, keys, values, { causal: c.causal, kvLengths, returnLse: true, outDtype: c.out, scale });
  const valueData = (await values.data()) as Float32Array;
  keys.dispose();
  values.dispose();
  return { expected, values: valueData };
}

async function cudaAttention(qkv: QuantizedKV, c: Case, q: Queries, scale?: number): Promise<AttentionWithLse> {
  using host = floatTensor(q.values, q.shape, c.q);
  using query = await host.to('cuda');
  using lengths = q.lengths ? Tensor.from(q.lengths, [c.B, c.Hkv], 'i32') : undefined;
  using kvLengths = lengths ? await lengths.to('cuda') : undefined;
  return quantizedAttention(query, qkv, { causal: c.causal, kvLengths, returnLse: true, outDtype: c.out, scale });
}

/** The contract's tolerance, max|v^| taken over the row's KV head. */
async function assertClose(got: AttentionWithLse, expected: AttentionWithLse, values: Float32Array, c: Case, label: string): Promise<void> {
  assert.is(got.output.dtype, c.out, `${label}: out dtype`);
  assert.equal(got.output.shape, expected.output.shape, `${label}: out shape`);
  const [out, want, lse, wantLse] = await Promise.all([floats(got.output), floats(expected.output), floats(got.lse), floats(expected.lse)]);
  const headSize = c.T * c.D, maxV = new Float64Array(c.B * c.Hkv);
  for (let bh = 0; bh < c.B * c.Hkv; bh++)
    for (let i = bh * headSize; i < (bh + 1) * headSize; i++) maxV[bh] = Math.max(maxV[bh]!, Math.abs(values[i]!));
  const rowsPerHead = c.G * c.Tq;
  let worst = 0;
  for (let row = 0; row < lse.length; row++) {
    const bh = Math.floor(row / rowsPerHead);
    if (wantLse[row] === -Infinity || lse[row] === -Infinity) {
      assert.is(lse[row], wantLse[row], `${label}: row ${row} lse (a row that sees no key)`);
    } else if (!(Math.abs(lse[row]! - wantLse[row]!) <= 1e-4)) {
      assert.unreachable(`${label}: row ${row} lse ${lse[row]} vs ${wantLse[row]}`);
    }
    for (let d = 0; d < c.D; d++) {
      const i = row * c.D + d, error = Math.abs(out[i]! - want[i]!);
      const bound = 1e-3 * maxV[bh]! + Math.max(ulp(want[i]!, c.out), ulp(out[i]!, c.out));
      if (!(error <= bound)) assert.unreachable(`${label}: out[row ${row}, dim ${d}] = ${out[i]} vs ${want[i]} (bound ${bound})`);
      worst = Math.max(worst, error / bound);
    }
  }
  assert.ok(worst <= 1, `${label}: worst error / bound ${worst}`);
}

function disposeResult(r: AttentionWithLse): void {
  r.output.dispose();
  r.lse.dispose();
}

async function checkCase(c: Case, seed: number, label = JSON.stringify(c)): Promise<void> {
  using qkv = await buildCache(c, seed, 'cuda');
  const q = makeQueries(c, seed);
  const scale = seed % 3 === 0 ? 0.3 : undefined;
  const { expected, values } = await reference(qkv, c, q, scale);
  const got = await cudaAttention(qkv, c, q, scale);
  try {
    await assertClose(got, expected, values, c, label);
  } finally {
    disposeResult(got);
    disposeResult(expected);
  }
}

const POWER_OF_TWO_DIMS = [8, 16, 32, 64, 128, 256];
const DIMS = [8, 16, 24, 40, 64, 96, 128, 136, 200, 256];

function randomCase(random: () => number, mode: QuantMode, trial: number): Case {
  const rotation = mode.startsWith('rot');
  const D = rotation ? POWER_OF_TWO_DIMS[trial % POWER_OF_TWO_DIMS.length]! : DIMS[trial % DIMS.length]!;
  const sink = [0, 1, 4][trial % 3]!, recent = [0, 16, 64, 128][randomInt(random, 0, 3)]!;
  // from fewer tokens than sink + recent (no pages) to a few dozen pages
  const T = trial % 4 === 0 ? randomInt(random, 1, Math.max(1, sink + recent)) : randomInt(random, sink + recent + 64, sink + recent + 3000);
  const rope = (['none', 'half', 'interleaved'] as const)[trial % 3]!;
  return {
    mode, B: randomInt(random, 1, 8), Hkv: randomInt(random, 1, 3), G: [1, 2, 3, 4, 8][randomInt(random, 0, 4)]!, D, T,
    Tq: [1, 1, 2, 5, 16][randomInt(random, 0, 4)]!, sink, recent, outliers: [0, 2][trial % 2]!,
    raw: (['f16', 'bf16', 'f32'] as const)[randomInt(random, 0, 2)]!,
    rope, positions: rope !== 'none' && trial % 5 === 1,
    q: (['f32', 'f16', 'bf16'] as const)[randomInt(random, 0, 2)]!, out: (['f32', 'f16', 'bf16'] as const)[randomInt(random, 0, 2)]!,
    causal: randomInt(random, 0, 1) === 1, ragged: randomInt(random, 0, 2) > 0,
  };
}

// ---- tests ------------------------------------------------------------------------------------

for (const mode of QUANT_MODES) {
  gpu(`${mode}: CUDA equals the CPU reference on random shapes (D, GQA, batch, ragged lengths, Tq, RoPE, outliers, dtypes)`, async () => {
    const random = rng(900 + QUANT_MODES.indexOf(mode));
    for (let trial = 0; trial < 12; trial++) await checkCase(randomCase(random, mode, trial), 1000 * trial + 17, `${mode} trial ${trial}`);
  });
}

gpu('long caches (up to 70K tokens, many splits) and MHA decode match the CPU reference', async () => {
  const cases: Case[] = [
    { mode: 'k2v1', B: 1, Hkv: 2, G: 4, D: 128, T: 70_000, Tq: 1, sink: 4, recent: 128, outliers: 2, raw: 'f16', rope: 'half', positions: false, q: 'f16', out: 'f16', causal: true, ragged: false },
    { mode: 'kivi2', B: 2, Hkv: 1, G: 8, D: 64, T: 40_000, Tq: 4, sink: 1, recent: 64, outliers: 0, raw: 'bf16', rope: 'interleaved', positions: true, q: 'bf16', out: 'f32', causal: true, ragged: true },
    { mode: 'rot1.5', B: 1, Hkv: 2, G: 2, D: 128, T: 66_000, Tq: 16, sink: 4, recent: 128, outliers: 2, raw: 'f16', rope: 'half', positions: false, q: 'f32', out: 'f32', causal: true, ragged: false },
    { mode: 'cq1', B: 1, Hkv: 1, G: 4, D: 128, T: 50_000, Tq: 2, sink: 4, recent: 128, outliers: 0, raw: 'f16', rope: 'half', positions: false, q: 'f16', out: 'bf16', causal: false, ragged: false },
    { mode: 'nuq2', B: 3, Hkv: 1, G: 1, D: 256, T: 20_000, Tq: 1, sink: 4, recent: 128, outliers: 2, raw: 'f32', rope: 'none', positions: false, q: 'f32', out: 'f32', causal: false, ragged: true },
    // MHA decode with pre-RoPE keys: blocks of 8 KV heads sharing cos/sin, the last one partial
    { mode: 'k2v1', B: 2, Hkv: 12, G: 1, D: 128, T: 9_000, Tq: 1, sink: 4, recent: 128, outliers: 2, raw: 'f16', rope: 'half', positions: true, q: 'f16', out: 'f16', causal: true, ragged: true },
  ];
  for (const [i, c] of cases.entries()) await checkCase(c, 31 + i);
});

gpu('CUDA quantizedAttention equals CUDA attention over the CUDA-dequantized cache', async () => {
  const random = rng(4242);
  for (const [i, mode] of QUANT_MODES.entries()) {
    const c: Case = { ...randomCase(random, mode, 2 * i + 1), q: 'f32', out: 'f32' };
    c.D = POWER_OF_TWO_DIMS[i % POWER_OF_TWO_DIMS.length]!;  // the dense kernel's head dims
    using qkv = await buildCache(c, 70 + i, 'cuda');
    const q = makeQueries(c, 70 + i);
    const decoded = await dequantize(qkv);
    using query = await Tensor.from(q.values, q.shape).to('cuda');
    using kvLengths = q.lengths ? await Tensor.from(q.lengths, [c.B, c.Hkv], 'i32').to('cuda') : undefined;
    const dense = await attention(query, decoded.keys, decoded.values, { causal: c.causal, kvLengths, returnLse: true });
    const fused = await quantizedAttention(query, qkv, { causal: c.causal, kvLengths, returnLse: true });
    const values = (await decoded.values.data()) as Float32Array;
    await assertClose(fused, dense, values, c, `${mode} ${JSON.stringify(c)}`);
    for (const t of [decoded.keys, decoded.values]) t.dispose();
    disposeResult(dense);
    disposeResult(fused);
  }
});

gpu('the CPU quantizedAttention over a CPU-quantized cache and CUDA over the same tokens agree', async () => {
  const random = rng(777);
  for (const [i, mode] of QUANT_MODES.entries()) {
    const c: Case = { ...randomCase(random, mode, i + 1), B: 2, T: 700 + 37 * i, D: mode.startsWith('rot') ? 32 : 24 };
    using cpuCache = await buildCache(c, 90 + i, 'cpu');
    using cudaCache = await buildCache(c, 90 + i, 'cuda');
    const q = makeQueries(c, 90 + i);
    using query = floatTensor(q.values, q.shape, c.q);
    using kvLengths = q.lengths ? Tensor.from(q.lengths, [c.B, c.Hkv], 'i32') : undefined;
    const expected = await quantizedAttention(query, cpuCache, { causal: c.causal, kvLengths, returnLse: true, outDtype: c.out });
    const got = await cudaAttention(cudaCache, c, q);
    const decoded = await dequantize(cpuCache);
    await assertClose(got, expected, (await decoded.values.data()) as Float32Array, c, `${mode} ${JSON.stringify(c)}`);
    for (const t of [decoded.keys, decoded.values]) t.dispose();
    disposeResult(got);
    disposeResult(expected);
  }
});

const dumps = kvDumps();
if (dumps.length < 2) test.skip('quantizedAttention on the real KV dumps (../shared/data/kv is absent)', () => {});
else {
  gpu('real tensors: the last 16 queries of each layer over its quantized cache (interleaved RoPE, GQA 2) match the CPU', async () => {
    const [calib, evalDump] = dumps;
    const Tq = 16;
    for (const layer of [0, 2, 4]) {
      const kPre = readNpy(layerFile(evalDump!.dir, layer, 'k_prerope')), v = readNpy(layerFile(evalDump!.dir, layer, 'v'));
      const qAll = (await readNpy(layerFile(evalDump!.dir, layer, 'q')).data()) as Float32Array;
      const [, Hq, T, D] = readNpy(layerFile(evalDump!.dir, layer, 'q')).shape as [number, number, number, number];
      const Hkv = kPre.shape[1]!;
      const last = new Float32Array(Hq * Tq * D);  // the newest Tq positions of each head
      for (let h = 0; h < Hq; h++) last.set(qAll.subarray((h * T + T - Tq) * D, (h * T + T) * D), h * Tq * D);
      const [kGpu, vGpu] = await Promise.all([kPre.to('cuda'), v.to('cuda')]);
      for (const mode of QUANT_MODES) {
        const p = await calibrate({ keys: readNpy(layerFile(calib!.dir, layer, 'k_prerope')), values: readNpy(layerFile(calib!.dir, layer, 'v')), mode, headDim: D,
          outliers: 1, recentTokens: 64, rawDtype: 'f32', iterations: 10 });
        using qkv = await quantize(kGpu, vGpu, p, { ropeTheta: 10000, ropeStyle: 'interleaved' });
        const c: Case = { mode, B: 1, Hkv, G: Hq / Hkv, D, T, Tq, sink: 1, recent: 64, outliers: 1, raw: 'f32', rope: 'interleaved', positions: false,
          q: 'f32', out: 'f32', causal: true, ragged: false };
        const q: Queries = { values: last, shape: [1, Hq, Tq, D], lengths: null };
        const { expected, values } = await reference(qkv, c, q);
        const got = await cudaAttention(qkv, c, q);
        await assertClose(got, expected, values, c, `${evalDump!.story} layer ${layer} ${mode}`);
        disposeResult(got);
        disposeResult(expected);
      }
      kGpu.dispose();
      vGpu.dispose();
    }
  });
}

if (backend().cuda.available) {
  const c: Case = { mode: 'nuq2', B: 1, Hkv: 2, G: 2, D: 16, T: 100, Tq: 1, sink: 2, recent: 16, outliers: 0, raw: 'f16', rope: 'half', positions: false, q: 'f32', out: 'f32', causal: false, ragged: false };
  const good = await buildCache(c, 5, 'cuda');
  const q = await Tensor.from(randomArray(rng(6), 4 * 16), [1, 4, 1, 16]).to('cuda');
  badInputTests(test, [
    ['CPU queries over a CUDA cache', () => quantizedAttention(Tensor.zeros([1, 4, 1, 16]), good), 'E_DEVICE'],
    ['kvLengths past the cache (CUDA)', async () => quantizedAttention(q, good, { kvLengths: await Tensor.from(new Int32Array([100, 101]), [1, 2], 'i32').to('cuda') }), 'E_RANGE'],
    ['kvLengths on the CPU', () => quantizedAttention(q, good, { kvLengths: Tensor.from(new Int32Array([1, 1]), [1, 2], 'i32') }), 'E_DEVICE'],
    ['17 query tokens (CUDA)', async () => quantizedAttention(await Tensor.zeros([1, 4, 17, 16]).to('cuda'), good), 'E_RANGE'],
  ]);
}

test.run();
