// Quantized KV cache (CPU reference): the page format read back by an independent TS
// reader, append == quantize at once, k-means against the Lloyd-Max levels, effective-bits
// accounting, QuantParams blobs, RoPE handling, real tensors, bad input.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import {
  attention, calibrate, dequantize, kmeans, QUANT_MODES, QuantParams, quantize, Tensor, type QuantMode, type QuantizedKV,
} from '../lib/index.js';
import { f16BitsToF32, f32ToF16Bits } from '../lib/dtype.js';
import { readNpy } from '../bench/common/npy.js';
import { kvDumps, layerFile } from '../bench/common/shared-data.js';
import { badInputTests } from './helpers/expect-error.js';
import { hostPages, readCodes, referenceDequantize } from './helpers/quant-reference.js';
import { randomArray, rng } from './helpers/random.js';

const f32 = Math.fround;

function kv(seed: number, B: number, H: number, T: number, D: number) {
  const random = rng(seed);
  return {
    keys: Tensor.from(randomArray(random, B * H * T * D, 1.5), [B, H, T, D]),
    values: Tensor.from(randomArray(random, B * H * T * D), [B, H, T, D]),
  };
}

/** Every page array, raw buffer and count of two caches, byte for byte. */
async function assertSameCache(a: QuantizedKV, b: QuantizedKV, label: string) {
  assert.is(a.tokens, b.tokens, `${label}: tokens`);
  assert.is(a.pageCount, b.pageCount, `${label}: pages`);
  assert.is(a.sinkCount, b.sinkCount, `${label}: sink`);
  assert.is(a.recentCount, b.recentCount, `${label}: recent`);
  const [pa, pb] = [await hostPages(a), await hostPages(b)];
  for (const name of Object.keys(pa)) {
    const perPage = pa[name]!.length / a.batch / a.pageCapacity, perPageB = pb[name]!.length / b.batch / b.pageCapacity;
    assert.is(perPage, perPageB, `${label}: ${name} layout`);
    const used = a.pageCount * perPage;
    for (let bb = 0; bb < a.batch; bb++) {
      const x = pa[name]!.subarray(bb * a.pageCapacity * perPage, bb * a.pageCapacity * perPage + used);
      const y = pb[name]!.subarray(bb * b.pageCapacity * perPageB, bb * b.pageCapacity * perPageB + used);
      assert.ok(x.every((v, i) => v === y[i]), `${label}: ${name} differs (batch ${bb})`);
    }
  }
  const [da, db] = [await dequantize(a, { applyRope: false }), await dequantize(b, { applyRope: false })];
  assert.equal(await da.keys.data(), await db.keys.data(), `${label}: dequantized keys`);
  assert.equal(await da.values.data(), await db.values.data(), `${label}: dequantized values`);
}

const headDims = (mode: QuantMode) => (mode.startsWith('rot') ? [8, 16, 64] : [8, 24, 64]);

// ---- k-means -------------------------------------------------------------------------------

/** Inverse normal CDF (Acklam; relative error < 1.2e-9). */
function probit(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const tail = (q: number) => (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5, r = q * q;
  return ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
}

test('k-means in 1-D reproduces the Lloyd-Max levels of N(0, 1) (1 and 2 bits) within 1e-3', async () => {
  const N = 400_000, grid = Float32Array.from({ length: N }, (_, i) => probit((i + 0.5) / N));
  using data = Tensor.from(grid, [1, N, 1]);
  using two = await kmeans(data, { k: 2, iterations: 2000 });
  using four = await kmeans(data, { k: 4, iterations: 2000 });
  const [c2, c4] = [await two.data(), await four.data()];
  [-0.7979, 0.7979].forEach((e, i) => assert.ok(Math.abs(c2[i]! - e) < 1e-3, `1 bit: ${c2[i]} vs ${e}`));
  [-1.510, -0.4528, 0.4528, 1.510].forEach((e, i) => assert.ok(Math.abs(c4[i]! - e) < 1e-3, `2 bits: ${c4[i]} vs ${e}`));
});

test('k-means in 8-D: finds separated blobs, is deterministic, and honours weights', async () => {
  const random = rng(7), centers = [-5, 0, 5], N = 600, data = new Float32Array(N * 8);
  for (let i = 0; i < N; i++) for (let d = 0; d < 8; d++) data[i * 8 + d] = centers[i % 3]! + (random() - 0.5) * 0.2;
  using x = Tensor.from(data, [1, N, 8], 'f32');
  const run = async (seed: number) => { using c = await kmeans(x, { k: 3, seed }); return c.data(); };
  const a = await run(1), b = await run(1);
  assert.equal(a, b, 'same seed, same centroids');
  const found = [0, 1, 2].map((j) => a[j * 8]!).sort((p, q) => p - q);
  found.forEach((v, j) => assert.ok(Math.abs(v - centers[j]!) < 0.05, `centroid ${v} vs ${centers[j]}`));
  // weights pull a 1-cluster mean: two points, weight 3:1
  using pts = Tensor.from(new Float32Array([0, 4]), [1, 2, 1]);
  using w = Tensor.from(new Float32Array([3, 1]), [1, 2], 'f32');
  using mean = await kmeans(pts, { k: 1, weights: w });
  assert.is((await mean.data())[0], 1);
});

// ---- the format ----------------------------------------------------------------------------

for (const mode of QUANT_MODES) {
  test(`${mode}: pages decode as the format says (independent TS reader), sink/recent stay raw`, async () => {
    let seed = 100;
    for (const D of headDims(mode)) {
      for (const outliers of [0, 2]) {
        const B = 2, H = 2, T = 1 + 16 + 2 * 64 + 5;
        const { keys, values } = kv(seed++, B, H, T, D);
        const params = await calibrate({ keys, values, mode, headDim: D, outliers: Math.min(outliers, D / 4), sinkTokens: 1, recentTokens: 16, seed: 3 });
        using qkv = await quantize(keys, values, params);
        assert.is(qkv.pageCount, 2);
        assert.is(qkv.sinkCount + qkv.recentCount, T - 128);
        const out = await dequantize(qkv);
        const ref = await referenceDequantize(qkv);
        const [k, v] = [await out.keys.data(), await out.values.data()];
        for (let i = 0; i < k.length; i++) {
          if (k[i] !== ref.keys[i]) assert.unreachable(`D ${D} outliers ${outliers}: key ${i}: ${k[i]} vs reference ${ref.keys[i]}`);
          if (v[i] !== ref.values[i]) assert.unreachable(`D ${D} outliers ${outliers}: value ${i}: ${v[i]} vs reference ${ref.values[i]}`);
        }
        // raw tokens are the input rounded to f16
        const input = await keys.data();
        for (const t of [0, T - 1]) {
          const i = (1 * T + t) * D + 3; // batch 0, head 1
          assert.is(k[i], f16BitsToF32(f32ToF16Bits(input[i]!)), `raw token ${t}`);
        }
        // quantization error is that of a 1-2 bit code, not garbage
        const orig = await keys.data();
        let err = 0, norm = 0;
        for (let i = 0; i < k.length; i++) err += (k[i]! - orig[i]!) ** 2, norm += orig[i]! ** 2;
        assert.ok(Math.sqrt(err / norm) < 0.55, `D ${D}: key rel error ${Math.sqrt(err / norm)}`);
      }
    }
  });
}

test('kivi2 and nuq2 key codes follow the encode rules (recomputed in TS)', async () => {
  const D = 16, T = 1 + 64, { keys, values } = kv(11, 1, 1, T, D);
  const x = await keys.data(), f16 = (v: number) => f16BitsToF32(f32ToF16Bits(v));
  const roundEven = (v: number) => { const r = Math.round(v); return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r; };
  {
    const params = await calibrate({ mode: 'kivi2', headDim: D, kvHeads: 1, recentTokens: 0 });
    using qkv = await quantize(keys, values, params);
    const pages = await hostPages(qkv);
    for (let t = 0; t < 64; t++) {
      const codes = readCodes(qkv, pages, true, 0, t), g = Math.floor(t / 32);
      for (let d = 0; d < D; d++) {
        let mn = Infinity, mx = -Infinity;
        for (let u = g * 32; u < g * 32 + 32; u++) mn = Math.min(mn, f16(x[(1 + u) * D + d]!)), mx = Math.max(mx, f16(x[(1 + u) * D + d]!));
        const scale = f16(f32(f32(mx - mn) / 3)), min = f16(mn), inv = scale > 0 ? f32(1 / scale) : 0;
        const q = roundEven(f32(f32(f16(x[(1 + t) * D + d]!) - min) * inv));
        assert.is(codes[d], Math.min(3, Math.max(0, q)), `kivi2 token ${t} channel ${d}`);
      }
    }
  }
  {
    const params = await calibrate({ keys, values, mode: 'nuq2', headDim: D, recentTokens: 0 });
    using qkv = await quantize(keys, values, params);
    const pages = await hostPages(qkv), a = params.arrays, c = a.keyCodebook!;
    for (let t = 0; t < 64; t++) {
      const codes = readCodes(qkv, pages, true, 0, t);
      for (let d = 0; d < D; d++) {
        const u = Math.min(1, Math.max(-1, f32(f32(f16(x[(1 + t) * D + d]!) - a.keyChannelZero![d]!) * a.keyChannelInvRange![d]!)));
        let code = 0;
        for (let j = 0; j < 3; j++) if (u > f32(f32(c[j]! + c[j + 1]!) * 0.5)) code++;
        assert.is(codes[d], code, `nuq2 token ${t} channel ${d}`);
      }
    }
  }
});

test('residual slots: the worst channels are corrected (a spike comes back for per-channel codes)', async () => {
  const D = 32, T = 1 + 64, { keys, values } = kv(12, 1, 1, T, D), calibration = kv(13, 1, 1, 400, D);
  const k = (await keys.data()) as Float32Array;
  k[(1 + 10) * D + 7] = 40; // an outlier channel value in token 11
  using spiky = Tensor.from(k, [1, 1, T, D]);
  for (const mode of QUANT_MODES) {
    const withSlots = await calibrate({ ...calibration, mode, headDim: D, outliers: 2, recentTokens: 0 });
    const without = new QuantParams({ ...withSlots.settings, outliers: 0 }, withSlots.arrays); // same dense key codes
    using a = await quantize(spiky, values, withSlots);
    using b = await quantize(spiky, values, without);
    const [ka, kb] = [await (await dequantize(a)).keys.data(), await (await dequantize(b)).keys.data()];
    for (let t = 1; t < T; t++) {
      let worstA = 0, worstB = 0;
      for (let d = 0; d < D; d++) {
        const i = t * D + d, x = f16BitsToF32(f32ToF16Bits(k[i]!));
        worstA = Math.max(worstA, Math.abs(ka[i]! - x)), worstB = Math.max(worstB, Math.abs(kb[i]! - x));
      }
      assert.ok(worstA <= worstB, `${mode} token ${t}: worst key error ${worstA} with slots, ${worstB} without`);
    }
    // rotation codes spread a spike over every channel, so one slot cannot bring it back
    if (!mode.startsWith('rot')) assert.ok(Math.abs(ka[(1 + 10) * D + 7]! - 40) < 40 * 2 ** -10, `${mode}: ${ka[(1 + 10) * D + 7]}`);
  }
});

test('rotation: a norm past the f16 range saturates instead of overflowing (values of 9000 at D 64)', async () => {
  const D = 64, T = 65, big = Tensor.from(Float32Array.from({ length: T * D }, (_, i) => (i % 3 ? 9000 : -9000)), [1, 1, T, D]);
  for (const outliers of [0, 2]) {
    const params = await calibrate({ mode: 'rot2', headDim: D, kvHeads: 1, outliers, recentTokens: 0 });
    using qkv = await quantize(big, big, params);
    const keys = await (await dequantize(qkv)).keys.data();
    assert.ok(keys.every(Number.isFinite), 'finite');
    const meta = (await qkv.pages.keyMeta!.data()) as Uint16Array;
    assert.is(meta[0], 0x7bff, 'norm stored as 65504');
  }
});

// ---- append ----------------------------------------------------------------------------------

for (const mode of QUANT_MODES) {
  test(`${mode}: appending in pieces is bit-identical to quantizing at once (with and without RoPE/positions)`, async () => {
    const B = 2, H = 2, D = 16, T = 3 + 20 + 3 * 64 + 9;
    const { keys, values } = kv(200 + QUANT_MODES.indexOf(mode), B, H, T, D);
    const params = await calibrate({ keys, values, mode, headDim: D, outliers: 1, sinkTokens: 3, recentTokens: 20 });
    const [K, V] = [(await keys.data()) as Float32Array, (await values.data()) as Float32Array];
    const slice = (x: Float32Array, t0: number, t1: number) => {
      const out = new Float32Array(B * H * (t1 - t0) * D);
      for (let bh = 0; bh < B * H; bh++) out.set(x.subarray((bh * T + t0) * D, (bh * T + t1) * D), bh * (t1 - t0) * D);
      return Tensor.from(out, [B, H, t1 - t0, D]);
    };
    const posAll = Int32Array.from({ length: B * T }, (_, i) => 7 + (i % T) * 2 + Math.floor(i / T));
    const posSlice = (t0: number, t1: number) => {
      const out = new Int32Array(B * (t1 - t0));
      for (let b = 0; b < B; b++) out.set(posAll.subarray(b * T + t0, b * T + t1), b * (t1 - t0));
      return Tensor.from(out, [B, t1 - t0], 'i32');
    };
    for (const withRope of [false, true]) {
      const opts = withRope ? { ropeTheta: 10000, ropeStyle: 'interleaved' as const } : {};
      using whole = await quantize(keys, values, params, withRope ? { ...opts, positions: Tensor.from(posAll, [B, T], 'i32') } : opts);
      const cuts = [0, 2, 5, 30, 31, 100, 180, T];
      using grown = await quantize(slice(K, 0, 2), slice(V, 0, 2), params, withRope ? { ...opts, positions: posSlice(0, 2) } : opts);
      for (let i = 1; i + 1 < cuts.length; i++) {
        const [t0, t1] = [cuts[i]!, cuts[i + 1]!];
        await grown.append(slice(K, t0, t1), slice(V, t0, t1), withRope ? { positions: posSlice(t0, t1) } : {});
      }
      await assertSameCache(whole, grown, `${mode} rope=${withRope}`);
    }
  });
}

test('a failed append leaves the cache as it was; bad full-precision tokens fail the call that brings them', async () => {
  const H = 1, D = 8, wave = (n: number, s = 1) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s) * 2);
  const params = await calibrate({ mode: 'rot2', headDim: D, kvHeads: H, sinkTokens: 4, recentTokens: 0 });
  const bad = (T: number, at: number, value: number) => { const v = wave(T * D, 5); v[at * D] = value; return Tensor.from(v, [1, H, T, D]); };
  // a NaN bound for the sink is refused by quantize itself
  const expectRange = async (run: () => Promise<unknown>, label: string) => {
    try { await run(); assert.unreachable(label); } catch (e) { assert.is((e as { code: string }).code, 'E_RANGE', label); }
  };
  await expectRange(() => quantize(Tensor.from(wave(2 * D), [1, H, 2, D]), bad(2, 1, NaN), params), 'NaN in the sink');
  // a NaN in a token due to become a page: append fails, nothing changes
  using qkv = await quantize(Tensor.from(wave(2 * D), [1, H, 2, D]), Tensor.from(wave(2 * D, 2), [1, H, 2, D]), params);
  const before = { ...(await dequantize(qkv)), tokens: qkv.tokens };
  await expectRange(() => qkv.append(Tensor.from(wave(70 * D, 3), [1, H, 70, D]), bad(70, 10, NaN)), 'NaN in a page');
  assert.equal([qkv.tokens, qkv.sinkCount, qkv.pageCount, qkv.recentCount], [2, 2, 0, 0]);
  const after = await dequantize(qkv);
  assert.equal(await after.values.data(), await before.values.data());
  // the cache still works: a clean append goes through
  await qkv.append(Tensor.from(wave(70 * D, 3), [1, H, 70, D]), Tensor.from(wave(70 * D, 4), [1, H, 70, D]));
  assert.equal([qkv.tokens, qkv.sinkCount, qkv.pageCount, qkv.recentCount], [72, 4, 1, 4]);
  // with raw f32, 1e6 in the recent window is refused on entry (it could never become a page)
  const p32 = await calibrate({ mode: 'rot2', headDim: D, kvHeads: H, sinkTokens: 0, recentTokens: 4, rawDtype: 'f32' });
  await expectRange(() => quantize(Tensor.from(wave(8 * D), [1, H, 8, D]), bad(8, 5, 1e6), p32), '1e6 in the recent window');
});

test('residual slots clamp an error past the f16 range instead of storing infinity', async () => {
  const H = 1, D = 8, T = 300;
  const calib = Float32Array.from({ length: T * D }, (_, i) => -40000 + 100 * Math.sin(i)), v = Float32Array.from({ length: T * D }, (_, i) => Math.sin(i * 3));
  const params = await calibrate({ keys: Tensor.from(calib, [1, H, T, D]), values: Tensor.from(v, [1, H, T, D]), mode: 'nuq2', headDim: D, outliers: 2, sinkTokens: 0, recentTokens: 0 });
  const k = calib.slice(0, 64 * D);
  k[0] = 40000; // about 80000 from its code
  using qkv = await quantize(Tensor.from(k, [1, H, 64, D]), Tensor.from(v.slice(0, 64 * D), [1, H, 64, D]), params);
  const key0 = (await (await dequantize(qkv)).keys.data())[0]!;
  assert.ok(Number.isFinite(key0) && key0 > 0 && key0 <= 40000, `key 0 -> ${key0}`);
});

// ---- accounting ----------------------------------------------------------------------------

test('effective bits: bytes are the used page bytes + raw tokens; k2v1 at D 128 matches the quant.md formula', async () => {
  const D = 128, H = 2, pages = 20, S = 1, R = 128, T = S + R + pages * 64 + 10;
  const { keys, values } = kv(13, 1, H, T, D);
  const params = await calibrate({ keys, values, mode: 'k2v1', headDim: D, sinkTokens: S, recentTokens: R, maxVqSamples: 512, iterations: 5 });
  using qkv = await quantize(keys, values, params);
  assert.is(qkv.pageCount, pages);
  let used = 0;
  for (const t of Object.values(qkv.pages)) used += (t.byteLength / qkv.pageCapacity) * qkv.pageCount;
  const raw = (qkv.sinkCount + qkv.recentCount) * H * D * 2 * 2;
  assert.is(qkv.bytes, used + raw);
  // eff = [(L - W) B_tok + 32 D W] / (2 D L): K 2 bits, V 1 bit per element, no per-token metadata
  const L = T, W = qkv.sinkCount + qkv.recentCount, Btok = D * (2 + 1);
  const expected = ((L - W) * Btok + 32 * D * W) / (2 * D * L);
  assert.ok(Math.abs(qkv.effectiveBitsWithoutParams - expected) < 1e-12, `${qkv.effectiveBitsWithoutParams} vs ${expected}`);
  assert.ok(Math.abs(qkv.effectiveBits - (qkv.effectiveBitsWithoutParams + (8 * params.bytes) / (2 * H * T * D))) < 1e-12);
});

test('QuantParams: binary round trip for every mode; corrupt blobs are refused', async () => {
  const { keys, values } = kv(14, 1, 2, 400, 16);
  for (const mode of QUANT_MODES) {
    const params = await calibrate({ keys, values, mode, headDim: 16, outliers: 2, seed: 5 });
    const bytes = params.toBytes();
    const back = QuantParams.fromBytes(bytes);
    assert.equal(back.settings, params.settings, mode);
    assert.equal(back.arrays, params.arrays, mode);
    assert.equal(back.toBytes(), bytes, mode);
  }
  const good = (await calibrate({ keys, values, mode: 'nuq2', headDim: 16 })).toBytes();
  const bad = (mutate: (b: Uint8Array) => Uint8Array) => () => QuantParams.fromBytes(mutate(good.slice()));
  for (const [label, run, code] of [
    ['bad magic', bad((b) => { b[0] = 0; return b; }), 'E_RANGE'],
    ['future version', bad((b) => { b[4] = 9; return b; }), 'E_UNSUPPORTED'],
    ['truncated', bad((b) => b.subarray(0, b.length - 4)), 'E_RANGE'],
    ['trailing bytes', bad((b) => { const c = new Uint8Array(b.length + 4); c.set(b); return c; }), 'E_RANGE'],
  ] as const) {
    try { run(); assert.unreachable(label); } catch (e) { assert.is((e as { code: string }).code, code, label); }
  }
});

// ---- RoPE ----------------------------------------------------------------------------------

test('RoPE: raw tokens come back rotated; post-RoPE modes encode the rotated keys', async () => {
  const D = 16, T = 1 + 8 + 64, H = 1, { keys, values } = kv(15, 1, H, T, D), x = await keys.data();
  const rope = (t: number, d: number, style: 'interleaved' | 'half') => {
    const i = style === 'interleaved' ? d >> 1 : d % (D / 2);
    const angle = t * f32(Math.pow(10000, (-2 * i) / D)), [c, s] = [Math.cos(angle), Math.sin(angle)];
    const pair = style === 'interleaved' ? d ^ 1 : (d + D / 2) % D, first = style === 'interleaved' ? d % 2 === 0 : d < D / 2;
    const a = f16BitsToF32(f32ToF16Bits(x[t * D + d]!)), b = f16BitsToF32(f32ToF16Bits(x[t * D + pair]!));
    return first ? a * c - b * s : b * s + a * c;
  };
  for (const style of ['interleaved', 'half'] as const) {
    for (const mode of ['nuq2', 'rot2'] as const) {
      const params = await calibrate({ keys, values, mode, headDim: D, recentTokens: 8 });
      using qkv = await quantize(keys, values, params, { ropeTheta: 10000, ropeStyle: style });
      const rotated = await (await dequantize(qkv)).keys.data();
      const plain = await (await dequantize(qkv, { applyRope: false })).keys.data();
      for (const t of [0, T - 1]) for (let d = 0; d < D; d++) {
        assert.ok(Math.abs(rotated[t * D + d]! - rope(t, d, style)) < 1e-5, `${mode} ${style} raw token ${t}`);
        assert.ok(Math.abs(plain[t * D + d]! - f16BitsToF32(f32ToF16Bits(x[t * D + d]!))) < 1e-6);
      }
      // a page token: rotated and plain views agree up to rounding in both directions
      let err = 0, norm = 0;
      for (let t = 1; t < 65; t++) for (let d = 0; d < D; d++) err += (rotated[t * D + d]! - rope(t, d, style)) ** 2, norm += rope(t, d, style) ** 2;
      assert.ok(Math.sqrt(err / norm) < 0.35, `${mode} ${style}: page keys vs RoPE(keys) rel error ${Math.sqrt(err / norm)}`);
    }
  }
});

// ---- real tensors ----------------------------------------------------------------------------

const dumps = kvDumps();
if (dumps.length < 2) test.skip('real KV dumps (../shared/data/kv is absent)', () => {});
else {
  test('real tensors: calibrate on one story, quantize the other; raw RoPE matches the dump; attention error per mode is bounded', async () => {
    const [calib, evalDump] = dumps;
    const errors: Record<string, number> = {};
    for (const layer of [0, 2, 4]) {
      const ck = readNpy(layerFile(calib!.dir, layer, 'k_prerope')), cv = readNpy(layerFile(calib!.dir, layer, 'v'));
      const kPre = readNpy(layerFile(evalDump!.dir, layer, 'k_prerope')), v = readNpy(layerFile(evalDump!.dir, layer, 'v'));
      const q = readNpy(layerFile(evalDump!.dir, layer, 'q')), kPost = await readNpy(layerFile(evalDump!.dir, layer, 'k')).data();
      const dense = await (await attention(q, readNpy(layerFile(evalDump!.dir, layer, 'k')), v, { causal: true })).data();
      for (const mode of QUANT_MODES) {
        const params = await calibrate({ keys: ck, values: cv, mode, headDim: 8, recentTokens: 64, rawDtype: 'f32', iterations: 20 });
        using qkv = await quantize(kPre, v, params, { ropeTheta: 10000, ropeStyle: 'interleaved' });
        const { keys, values } = await dequantize(qkv);
        const k = await keys.data();
        for (let i = 0; i < 8; i++) assert.ok(Math.abs(k[i]! - kPost[i]!) < 1e-5, `${mode}: sink key vs dump`);
        const out = await (await attention(q, keys, values, { causal: true })).data();
        let err = 0, norm = 0;
        for (let i = 0; i < out.length; i++) err += (out[i]! - dense[i]!) ** 2, norm += dense[i]! ** 2;
        errors[mode] = (errors[mode] ?? 0) + Math.sqrt(err / norm) / 3;
      }
    }
    // head_dim 8 with large keys (|k| ~ 15) makes attention very sensitive to key error; what
    // must hold is the papers' ordering: per-channel pre-RoPE codes (nuq2, cq1) beat KIVI.
    for (const [mode, e] of Object.entries(errors)) assert.ok(Number.isFinite(e) && e < 1.5, `${mode}: mean attention rel-L2 ${e}`);
    assert.ok(errors.nuq2! < errors.kivi2!, `nuq2 ${errors.nuq2} vs kivi2 ${errors.kivi2}`);
    assert.ok(errors.cq1! < errors.kivi2!, `cq1 ${errors.cq1} vs kivi2 ${errors.kivi2}`);
  });
}

// ---- bad input -------------------------------------------------------------------------------

const good = kv(16, 1, 2, 100, 16);
const nuq = await calibrate({ keys: good.keys, values: good.values, mode: 'nuq2', headDim: 16 });
const withNaN = (() => { const a = randomArray(rng(1), 2 * 100 * 16); a[1700] = NaN; return Tensor.from(a, [1, 2, 100, 16]); })();
const disposed = Tensor.zeros([1, 2, 100, 16]);
disposed.dispose();
badInputTests(test, [
  ['unknown mode', () => calibrate({ mode: 'int3' as QuantMode, headDim: 16, kvHeads: 2 }), 'E_RANGE'],
  ['headDim not a multiple of 8', () => calibrate({ mode: 'kivi2', headDim: 12, kvHeads: 2 }), 'E_SHAPE'],
  ['rotation with headDim 24', () => calibrate({ mode: 'rot2', headDim: 24, kvHeads: 2 }), 'E_SHAPE'],
  ['too many outliers', () => calibrate({ mode: 'kivi2', headDim: 16, kvHeads: 2, outliers: 5 }), 'E_RANGE'],
  ['nuq2 without keys', () => calibrate({ mode: 'nuq2', headDim: 16, kvHeads: 2 }), 'E_SHAPE'],
  ['cq1 with too few tokens', () => calibrate({ ...good, mode: 'cq1', headDim: 16 }), 'E_SHAPE'],
  ['calibrate with NaN', () => calibrate({ keys: withNaN, values: good.values, mode: 'nuq2', headDim: 16 }), 'E_RANGE'],
  ['unknown calibrate option', () => calibrate({ mode: 'kivi2', headDim: 16, kvHeads: 2, bits: 2 } as never), 'E_RANGE'],
  ['quantize: NaN in a token that is encoded', () => quantize(withNaN, good.values, new QuantParams({ ...nuq.settings, recentTokens: 0 }, nuq.arrays)), 'E_RANGE'],
  ['quantize: a value past the f16 range of the scales', () => quantize(Tensor.from(new Float32Array(2 * 100 * 16).fill(7e4), [1, 2, 100, 16]), good.values, new QuantParams({ ...nuq.settings, recentTokens: 0, rawDtype: 'f32' }, nuq.arrays)), 'E_RANGE'],
  ['quantize: heads differ from params', () => quantize(Tensor.zeros([1, 3, 100, 16]), Tensor.zeros([1, 3, 100, 16]), nuq), 'E_SHAPE'],
  ['quantize: values shape', () => quantize(good.keys, Tensor.zeros([1, 2, 99, 16]), nuq), 'E_SHAPE'],
  ['quantize: integer keys', () => quantize(Tensor.zeros([1, 2, 100, 16], 'i32'), good.values, nuq), 'E_DTYPE'],
  ['quantize: disposed keys', () => quantize(disposed, good.values, nuq), 'E_DISPOSED'],
  ['quantize: not params', () => quantize(good.keys, good.values, {} as QuantParams), 'E_RANGE'],
  ['quantize: ropeTheta and invFreq', () => quantize(good.keys, good.values, nuq, { ropeTheta: 1e4, invFreq: new Float32Array(8) }), 'E_RANGE'],
  ['quantize: invFreq length', () => quantize(good.keys, good.values, nuq, { invFreq: new Float32Array(3) }), 'E_SHAPE'],
  ['quantize: positions without RoPE', () => quantize(good.keys, good.values, nuq, { positions: Tensor.zeros([1, 100], 'i32') }), 'E_RANGE'],
  ['quantize: positions shape', () => quantize(good.keys, good.values, nuq, { ropeTheta: 1e4, positions: Tensor.zeros([1, 99], 'i32') }), 'E_SHAPE'],
  ['append: other head count', async () => { using q = await quantize(good.keys, good.values, nuq); await q.append(Tensor.zeros([1, 3, 4, 16]), Tensor.zeros([1, 3, 4, 16])); }, 'E_SHAPE'],
  ['append: other dtype', async () => { using q = await quantize(good.keys, good.values, nuq); await q.append(Tensor.zeros([1, 2, 4, 16], 'f16'), Tensor.zeros([1, 2, 4, 16], 'f16')); }, 'E_DTYPE'],
  ['append: positions to a cache without', async () => { using q = await quantize(good.keys, good.values, nuq); await q.append(good.keys, good.values, { positions: Tensor.zeros([1, 100], 'i32') }); }, 'E_RANGE'],
  ['dequantize: disposed cache', async () => { const q = await quantize(good.keys, good.values, nuq); q.dispose(); await dequantize(q); }, 'E_DISPOSED'],
  ['dequantize: applyRope without RoPE', async () => { using q = await quantize(good.keys, good.values, nuq); await dequantize(q, { applyRope: true }); }, 'E_RANGE'],
  ['kmeans: k > N', () => kmeans(Tensor.zeros([1, 3, 1]), { k: 4 }), 'E_RANGE'],
  ['kmeans: NaN data', () => kmeans(Tensor.from(new Float32Array([0, NaN, 1]), [1, 3, 1]), { k: 2 }), 'E_RANGE'],
  ['kmeans: weights not a tensor', () => kmeans(Tensor.zeros([1, 3, 1]), { k: 2, weights: new Float32Array(3) as never }), 'E_DTYPE'],
  ['kmeans: negative weight', () => kmeans(Tensor.zeros([1, 3, 1]), { k: 2, weights: Tensor.from(new Float32Array([1, -1, 1]), [1, 3]) }), 'E_RANGE'],
]);

test.run();
