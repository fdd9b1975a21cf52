// GPU suite for the quantized KV cache: every page array (codes, meta, residual slots), the
// raw sink/recent rows and every dequantized value must equal the CPU reference byte for
// byte (both backends run the rules of csrc/core/quant_codec.h), appending on CUDA must give
// what quantizing at once gives, and the row copies must match the CPU's.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import {
  calibrate, dequantize, DTYPES, KvsquashError, QUANT_MODES, quantize, Tensor, type DType, type QuantizedKV, type QuantizeOptions, type QuantMode, type QuantParams, type RawDType,
} from '../lib/index.js';
import { nativeCall } from '../lib/errors.js';
import { native } from '../lib/native.js';
import { toNative } from '../lib/tensor.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { floatTensor, gpuSuite, type FloatDType } from './helpers/gpu.js';

const gpu = gpuSuite('GPU quantization suite');

type RopeKind = 'none' | 'interleaved' | 'half' | 'invFreq';
const PAGE_NAMES = ['keyCodes', 'valueCodes', 'keyMeta', 'valueMeta', 'keyOutlierIndex', 'keyOutlierValue', 'valueOutlierIndex', 'valueOutlierValue'] as const;

interface Case {
  mode: QuantMode;
  B: number; H: number; D: number; T: number;
  sink: number; recent: number; outliers: number;
  input: FloatDType; raw: RawDType; rope: RopeKind; positions: boolean;
}

// ---- tensors and byte comparisons ---------------------------------------------------------


function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** The bytes of the elements whose index along `axis` is below `count`. */
function leadingRows(bytes: Uint8Array, shape: readonly number[], elementBytes: number, axis: number, count: number): Uint8Array {
  const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1), rows = shape[axis]!;
  const rowBytes = shape.slice(axis + 1).reduce((a, b) => a * b, 1) * elementBytes;
  const out = new Uint8Array(outer * count * rowBytes);
  for (let o = 0; o < outer; o++) out.set(bytes.subarray(o * rows * rowBytes, (o * rows + count) * rowBytes), o * count * rowBytes);
  return out;
}

function assertSameBytes(actual: Uint8Array, expected: Uint8Array, elementBytes: number, label: string): void {
  assert.is(actual.length, expected.length, `${label}: byte length`);
  for (let i = 0; i < actual.length; i++)
    if (actual[i] !== expected[i])
      assert.unreachable(`${label}: element ${Math.floor(i / elementBytes)} differs (byte ${i}: ${actual[i]} vs ${expected[i]})`);
}

/** Same dtype and bytes; with `rows`, only the first rows.count along rows.axis, whatever the shapes' extents there. */
async function assertSameTensor(actual: Tensor, expected: Tensor, label: string, rows?: { axis: number; count: number }): Promise<void> {
  assert.is(actual.dtype, expected.dtype, `${label}: dtype`);
  const size = DTYPES[actual.dtype as DType].bytes;
  let a = bytesOf(await actual.data()), e = bytesOf(await expected.data());
  if (rows) {
    assert.equal(actual.shape.filter((_, i) => i !== rows.axis), expected.shape.filter((_, i) => i !== rows.axis), `${label}: shape`);
    a = leadingRows(a, actual.shape, size, rows.axis, rows.count);
    e = leadingRows(e, expected.shape, size, rows.axis, rows.count);
  } else {
    assert.equal(actual.shape, expected.shape, `${label}: shape`);
  }
  assertSameBytes(a, e, size, label);
}

/**
 * Both caches hold the same tokens the same way. `whole`: every byte of every array (two
 * caches built by the same calls); else only what is in use (page capacity and stale rows
 * past the recent window may differ between append and quantize-at-once).
 */
async function assertSameCache(actual: QuantizedKV, expected: QuantizedKV, label: string, whole: boolean): Promise<void> {
  for (const key of ['tokens', 'pageCount', 'sinkCount', 'recentCount'] as const) assert.is(actual[key], expected[key], `${label}: ${key}`);
  assert.equal(Object.keys(actual.pages).sort(), Object.keys(expected.pages).sort(), `${label}: page arrays`);
  for (const name of PAGE_NAMES) {
    const a = actual.pages[name], e = expected.pages[name];
    if (a && e) await assertSameTensor(a, e, `${label}: ${name}`, whole ? undefined : { axis: 1, count: expected.pageCount });
  }
  const rawRows = whole ? undefined : { axis: 2, count: expected.sinkCount + expected.recentCount };
  await assertSameTensor(actual.rawKeys, expected.rawKeys, `${label}: rawKeys`, rawRows);
  await assertSameTensor(actual.rawValues, expected.rawValues, `${label}: rawValues`, rawRows);
  assert.is(actual.positions === null, expected.positions === null, `${label}: positions kept`);
  if (actual.positions && expected.positions)
    await assertSameTensor(actual.positions, expected.positions, `${label}: positions`, whole ? undefined : { axis: 1, count: expected.tokens });
}

async function assertSameDequantized(actual: QuantizedKV, expected: QuantizedKV, label: string): Promise<void> {
  const conventions = actual.rope.style === 0 ? [false] : [true, false];
  for (const applyRope of conventions) {
    const a = await dequantize(actual, { applyRope }), e = await dequantize(expected, { applyRope });
    try {
      await assertSameTensor(a.keys, e.keys, `${label}: dequantized keys (applyRope ${applyRope})`);
      await assertSameTensor(a.values, e.values, `${label}: dequantized values (applyRope ${applyRope})`);
    } finally {
      for (const t of [a.keys, a.values, e.keys, e.values]) t.dispose();
    }
  }
}

// ---- cases ---------------------------------------------------------------------------------

function describeCase(c: Case): string {
  return JSON.stringify(c);
}

const isRotation = (mode: QuantMode) => mode === 'rot2' || mode === 'rot1.5';

function makeCases(): Case[] {
  const random = rng(2026);
  const cases: Case[] = [];
  QUANT_MODES.forEach((mode, m) => {
    const dims = isRotation(mode) ? [8, 16, 64, 128, 256] : [8, 16, 24, 64, 128, 256];
    for (let k = 0; k < 6; k++) {
      const sink = randomInt(random, 0, 4), recent = randomInt(random, 0, 40);
      // the first case of a mode stays below one page; the others hold up to 3 pages and a tail
      const T = k === 0 ? randomInt(random, 1, sink + recent + 40) : sink + recent + 64 * randomInt(random, 1, 3) + randomInt(random, 0, 63);
      const rope = (['none', 'interleaved', 'half', 'invFreq'] as const)[(k + m) % 4]!;
      cases.push({
        mode, B: randomInt(random, 1, 3), H: randomInt(random, 1, 4), D: dims[k % dims.length]!, T, sink, recent,
        outliers: k % 2 === 0 ? 0 : 2, input: (['f32', 'f16', 'bf16'] as const)[k % 3]!, raw: (['f16', 'bf16', 'f32'] as const)[(k + m) % 3]!,
        rope, positions: rope !== 'none' && randomInt(random, 0, 1) === 1,
      });
    }
  });
  return cases;
}

/** Calibration from its own random sample, enough tokens for the 256-entry codebooks. */
async function calibrateFor(c: Case, seed: number): Promise<QuantParams> {
  const random = rng(seed), shape = [1, c.H, c.sink + 300, c.D];
  const keys = Tensor.from(randomArray(random, c.H * (c.sink + 300) * c.D, 2), shape);
  const values = Tensor.from(randomArray(random, c.H * (c.sink + 300) * c.D), shape);
  return calibrate({
    keys, values, mode: c.mode, headDim: c.D, kvHeads: c.H, outliers: c.outliers, sinkTokens: c.sink, recentTokens: c.recent,
    seed, rawDtype: c.raw, iterations: 4,
  });
}

/** Host data of one case: keys and values [B, H, T, D] as f32, positions [B, T]. */
interface CaseData {
  keys: Float32Array;
  values: Float32Array;
  positions: Int32Array | null;
}

function caseData(c: Case, seed: number): CaseData {
  const random = rng(seed), n = c.B * c.H * c.T * c.D;
  let positions: Int32Array | null = null;
  if (c.positions) {
    positions = new Int32Array(c.B * c.T);
    for (let b = 0; b < c.B; b++) {
      let p = randomInt(random, 0, 5000);
      for (let t = 0; t < c.T; t++) positions[b * c.T + t] = p += randomInt(random, 1, 3);
    }
  }
  return { keys: randomArray(random, n, 3), values: randomArray(random, n), positions };
}

/** Tokens [t0, t1) of the case's data as tensors on `device`. */
async function slice(c: Case, data: CaseData, t0: number, t1: number, device: 'cpu' | 'cuda') {
  const n = t1 - t0, shape = [c.B, c.H, n, c.D];
  const part = (all: Float32Array) => {
    const out = new Float32Array(c.B * c.H * n * c.D);
    for (let bh = 0; bh < c.B * c.H; bh++) out.set(all.subarray((bh * c.T + t0) * c.D, (bh * c.T + t1) * c.D), bh * n * c.D);
    return floatTensor(out, shape, c.input);
  };
  let positions: Tensor<'i32'> | undefined;
  if (data.positions) {
    const out = new Int32Array(c.B * n);
    for (let b = 0; b < c.B; b++) out.set(data.positions.subarray(b * c.T + t0, b * c.T + t1), b * n);
    positions = Tensor.from(out, [c.B, n], 'i32');
  }
  const onDevice = async <T extends Tensor>(t: T): Promise<T> => (device === 'cpu' ? t : ((await t.to(device)) as T));
  return { keys: await onDevice(part(data.keys)), values: await onDevice(part(data.values)), positions: positions && (await onDevice(positions)) };
}

function ropeOptions(c: Case): QuantizeOptions {
  switch (c.rope) {
    case 'none': return {};
    case 'interleaved': return { ropeTheta: 10000, ropeStyle: 'interleaved' };
    case 'half': return { ropeTheta: 500000, ropeStyle: 'half' };
    // scaled frequencies, as llama3 passes them: the low ones divided by 8
    default: return { invFreq: Float32Array.from({ length: c.D / 2 }, (_, i) => Math.pow(10000, (-2 * i) / c.D) / (i >= c.D / 4 ? 8 : 1)) };
  }
}

async function quantizeOn(c: Case, data: CaseData, params: QuantParams, device: 'cpu' | 'cuda'): Promise<QuantizedKV> {
  const { keys, values, positions } = await slice(c, data, 0, c.T, device);
  try {
    return await quantize(keys, values, params, { ...ropeOptions(c), ...(positions ? { positions } : {}) });
  } finally {
    for (const t of [keys, values, positions]) t?.dispose();
  }
}

/** quantize the first chunk, then append the others: chunks [bounds[i], bounds[i + 1]). */
async function appendOn(c: Case, data: CaseData, params: QuantParams, bounds: number[], device: 'cpu' | 'cuda'): Promise<QuantizedKV> {
  let qkv: QuantizedKV | undefined;
  try {
    for (let i = 0; i + 1 < bounds.length; i++) {
      const { keys, values, positions } = await slice(c, data, bounds[i]!, bounds[i + 1]!, device);
      try {
        if (!qkv) qkv = await quantize(keys, values, params, { ...ropeOptions(c), ...(positions ? { positions } : {}) });
        else await qkv.append(keys, values, positions ? { positions } : {});
      } finally {
        for (const t of [keys, values, positions]) t?.dispose();
      }
    }
    return qkv!;
  } catch (error) {
    qkv?.dispose();
    throw error;
  }
}

// ---- tests ---------------------------------------------------------------------------------

const CASES = makeCases();

gpu('quantize: CUDA pages, raw rows and dequantized values equal the CPU byte for byte (every mode)', async () => {
  for (const [i, c] of CASES.entries()) {
    const label = describeCase(c);
    const params = await calibrateFor(c, 100 + i);
    const data = caseData(c, 500 + i);
    const cpu = await quantizeOn(c, data, params, 'cpu');
    const cuda = await quantizeOn(c, data, params, 'cuda');
    try {
      assert.ok(c.T < c.sink + c.recent + 64 || cpu.pageCount > 0, `${label}: the case holds pages`);
      await assertSameCache(cuda, cpu, label, true);
      await assertSameDequantized(cuda, cpu, label);
    } finally {
      cpu.dispose();
      cuda.dispose();
      params.dispose();
    }
  }
});

gpu('append on CUDA equals quantizing at once on CUDA, and appending on the CPU', async () => {
  const random = rng(9);
  for (const [i, c] of CASES.entries()) {
    if (c.T < c.sink + c.recent + 64) continue;  // no pages: nothing for append to flush
    const label = describeCase(c);
    const bounds = [0, randomInt(random, 1, Math.min(c.T, 40))];
    while (bounds.at(-1)! < c.T) bounds.push(Math.min(c.T, bounds.at(-1)! + [1, randomInt(random, 2, 70), 64, randomInt(random, 65, 150)][bounds.length % 4]!));
    const params = await calibrateFor(c, 100 + i);
    const data = caseData(c, 500 + i);
    const batch = await quantizeOn(c, data, params, 'cuda');
    const cuda = await appendOn(c, data, params, bounds, 'cuda');
    const cpu = await appendOn(c, data, params, bounds, 'cpu');
    try {
      await assertSameCache(cuda, batch, `${label} chunks ${bounds}: append vs at once`, false);
      await assertSameDequantized(cuda, batch, `${label} chunks ${bounds}: append vs at once`);
      await assertSameCache(cuda, cpu, `${label} chunks ${bounds}: CUDA vs CPU append`, true);
    } finally {
      for (const q of [batch, cuda, cpu]) q.dispose();
      params.dispose();
    }
  }
});

/** The error code a call rejects with, or 'accepted'. */
async function outcome(run: () => Promise<QuantizedKV>): Promise<string> {
  try {
    (await run()).dispose();
    return 'accepted';
  } catch (error) {
    assert.instance(error, KvsquashError, String(error));
    return (error as KvsquashError).code;
  }
}

gpu('quantize: a NaN or infinity in a page gives the CPU error code on CUDA; one in the sink is kept as the CPU keeps it', async () => {
  for (const [m, mode] of QUANT_MODES.entries()) {
    const c: Case = { mode, B: 1, H: 2, D: 16, T: 2 + 64 + 4 + 3, sink: 2, recent: 4, outliers: 2, input: (['f32', 'f16', 'bf16'] as const)[m % 3]!,
      raw: 'f16', rope: 'none', positions: false };
    const params = await calibrateFor(c, 40 + m);
    try {
      for (const [bad, token] of [[NaN, c.sink + 10], [Infinity, c.sink + 63], [-Infinity, c.sink]] as const) {
        const data = caseData(c, 60 + m);
        (m % 2 === 0 ? data.keys : data.values)[(1 * c.T + token) * c.D + 3] = bad;
        const label = `${mode}: ${bad} at token ${token}`;
        const onCpu = await outcome(() => quantizeOn(c, data, params, 'cpu'));
        assert.is(onCpu, 'E_RANGE', `${label}: CPU`);
        assert.is(await outcome(() => quantizeOn(c, data, params, 'cuda')), onCpu, `${label}: CUDA`);
      }
      // in the sink: never encoded, stored and dequantized as is (the NaN's bits included)
      const data = caseData(c, 80 + m);
      data.values[(0 * c.T + 1) * c.D + 5] = NaN;
      const cpu = await quantizeOn(c, data, params, 'cpu');
      const cuda = await quantizeOn(c, data, params, 'cuda');  // the device still works after the failures above
      try {
        await assertSameCache(cuda, cpu, `${mode}: NaN in the sink`, true);
        await assertSameDequantized(cuda, cpu, `${mode}: NaN in the sink`);
      } finally {
        cpu.dispose();
        cuda.dispose();
      }
    } finally {
      params.dispose();
    }
  }
});

// kvs_copy_rows has no public op (the quantized cache uses it for its sink, recent and page
// arrays), so this calls the binding the TS layer calls.
async function copyRows(src: Tensor, dst: Tensor, axis: number, srcStart: number, dstStart: number, count: number): Promise<void> {
  await nativeCall(() => native().copyRows(src[toNative]('src'), dst[toNative]('dst'), { axis, srcStart, dstStart, count }));
}

/** Random bits of `dtype`; floats also get the values conversions get wrong first. */
function randomBits(random: () => number, dtype: DType, n: number): ArrayBufferView {
  const bytes = new Uint8Array(n * DTYPES[dtype].bytes);
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  if (dtype === 'f32') {
    const f = new Float32Array(bytes.buffer);
    // NaN payloads, infinities, signed zeros, f16/bf16 subnormals, overflow and ties
    const special = [NaN, Infinity, -Infinity, 0, -0, 1e-7, -3e-8, 65504, 65520, -65519.99, 3.4e38, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8];
    for (let i = 0; i < n; i++) if (random() < 0.5) f[i] = random() < 0.3 ? special[i % special.length]! : randomArray(random, 1, 100)[0]!;
    new Uint32Array(bytes.buffer)[0] = 0x7fa00001;  // a signaling NaN with a payload
  }
  const Array_ = DTYPES[dtype].array as unknown as new (buffer: ArrayBufferLike) => ArrayBufferView;
  return new Array_(bytes.buffer);
}

gpu('copyRows: CUDA equals the CPU for conversions, bit copies of every dtype and overlapping copies', async () => {
  const random = rng(31);
  const floats: DType[] = ['f32', 'f16', 'bf16'], integers: DType[] = ['i32', 'u32', 'i16', 'u16', 'i8', 'u8'];
  const pairs: [DType, DType][] = [...floats.flatMap((a) => floats.map((b) => [a, b] as [DType, DType])), ...integers.map((d) => [d, d] as [DType, DType])];
  for (let trial = 0; trial < 90; trial++) {
    const [srcDtype, dstDtype] = pairs[trial % pairs.length]!;
    const rank = randomInt(random, 1, 4), axis = randomInt(random, 0, rank - 1);
    // odd sizes reach the narrow word paths; trial % 3 == 0 keeps rows 16-byte friendly
    const shape = Array.from({ length: rank }, (_, i) => (i === axis ? randomInt(random, 1, 40) : trial % 3 === 0 ? 8 * randomInt(random, 1, 4) : randomInt(random, 1, 7)));
    const dstShape = shape.map((s, i) => (i === axis ? randomInt(random, 1, 40) : s));
    const count = randomInt(random, 0, Math.min(shape[axis]!, dstShape[axis]!));
    const srcStart = randomInt(random, 0, shape[axis]! - count), dstStart = randomInt(random, 0, dstShape[axis]! - count);
    const n = (s: number[]) => s.reduce((a, b) => a * b, 1);
    const srcHost = Tensor.from(randomBits(random, srcDtype, n(shape)) as unknown as ArrayLike<number>, shape, srcDtype);
    const dstHost = Tensor.from(randomBits(random, dstDtype, n(dstShape)) as unknown as ArrayLike<number>, dstShape, dstDtype);
    const label = JSON.stringify({ srcDtype, dstDtype, shape, dstShape, axis, srcStart, dstStart, count });
    const [src, dst, dstCpu] = [await srcHost.to('cuda'), await dstHost.to('cuda'), await dstHost.to('cpu')];
    try {
      await copyRows(srcHost, dstCpu, axis, srcStart, dstStart, count);
      await copyRows(src, dst, axis, srcStart, dstStart, count);
      await assertSameTensor(dst, dstCpu, label);
      // within one tensor, ranges overlapping by a few rows either way (a memmove)
      const reach = Math.min(3, shape[axis]!), shift = randomInt(random, -reach, reach), inCount = Math.max(0, Math.min(count, shape[axis]! - Math.abs(shift)));
      const from = randomInt(random, Math.max(0, -shift), shape[axis]! - inCount - Math.max(0, shift));
      await copyRows(srcHost, srcHost, axis, from, from + shift, inCount);
      await copyRows(src, src, axis, from, from + shift, inCount);
      await assertSameTensor(src, srcHost, `${label} overlapping from ${from} by ${shift}, ${inCount} rows`);
    } finally {
      for (const t of [src, dst, dstCpu, srcHost, dstHost]) t.dispose();
    }
  }
});

test.run();
