// Pyramid sparse attention on the CPU against an independent TypeScript implementation of
// each stage, written again from csrc/core/pyramid.h: pooling and assignment bit for bit
// (Math.fround replays the stated f32 operations), importance and attention within f64
// rounding (1e-9 relative before the f32 store, so 1e-6 after it). Plus the properties of
// the issue: all level 1 equals dense `attention`; constant K/V inside pooled windows give
// the dense result; causal edges; GQA; f16/bf16; the real tensors; bad inputs.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import {
  attention, fromBF16, fromF16, pyramidAssign, pyramidAttention, pyramidImportance, pyramidPool, PyramidMask, Tensor, toBF16, toF16,
  type PyramidAssignOptions, type PyramidBounds,
} from '../lib/index.js';
import { readNpy } from '../bench/common/npy.js';
import { kvDumps, layerFile } from '../bench/common/shared-data.js';
import { badInputTests } from './helpers/expect-error.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { toleranceRatio } from './helpers/reference.js';

type Shape4 = [number, number, number, number];
const f32 = Math.fround;

// ---- the definitions again, in TypeScript --------------------------------------------------

function mix(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

function sampleKey(seed: number, b: number, h: number, stream: number, o: number): number {
  let x = mix((seed ^ 0x9e3779b9) >>> 0);
  x = mix((x ^ b) >>> 0);
  x = mix((x ^ h) >>> 0);
  return mix((x ^ ((stream << 16) | o)) >>> 0);
}

function sampledOffsets(seed: number, b: number, h: number, stream: number, size: number, count: number): number[] {
  return Array.from({ length: size }, (_, o) => [sampleKey(seed, b, h, stream, o), o] as const)
    .sort((x, y) => x[0] - y[0] || x[1] - y[1]).slice(0, count).map((e) => e[1]);
}

const countAt = (Tk: number, L: number, t: number) => Math.min(L, Math.max(0, Tk - t * L));

/** Step 1: the f32 summation tree, then sum / count, for every head of x [H, Tk, D]. */
function refPool(x: Float32Array, heads: number, Tk: number, D: number, block: number): Float32Array[] {
  const padded = Math.ceil(Tk / block) * block;
  const out: Float32Array[] = [];
  for (const L of [2, 4, 8]) {
    const tokens = padded / L, pooled = new Float32Array(heads * tokens * D);
    for (let h = 0; h < heads; h++) {
      for (let t = 0; t < tokens; t++) {
        const c = countAt(Tk, L, t);
        if (c === 0) continue;
        for (let d = 0; d < D; d++) {
          // the tree over raw rows t*L .. t*L+L-1: pairs, then pairs of pairs
          let level: number[] = [];
          for (let u = 0; u < L; u++) level.push(t * L + u < Tk ? x[(h * Tk + t * L + u) * D + d]! : NaN);
          while (level.length > 1) {
            const next: number[] = [];
            for (let u = 0; u < level.length; u += 2) next.push(Number.isNaN(level[u + 1]!) ? level[u]! : f32(level[u]! + level[u + 1]!));
            level = next;
          }
          pooled[(h * tokens + t) * D + d] = f32(level[0]! / c);
        }
      }
    }
    out.push(pooled);
  }
  return out;
}

interface Dims { B: number; Hq: number; Hkv: number; Tq: number; Tk: number; D: number; block: number; queryBlock: number }

const position = (d: Dims, i: number) => i + d.Tk - d.Tq;

/** Step 2 in f64. */
function refImportance(q: Float32Array, k: Float32Array, d: Dims, o: { scale: number; causal: boolean; sq: number; sk: number; seed: number; kvhead: boolean }): Float64Array {
  const Mq = Math.ceil(d.Tq / d.queryBlock), Nk = Math.ceil(d.Tk / d.block), G = d.Hq / d.Hkv;
  const Hm = o.kvhead ? d.Hkv : d.Hq;
  const out = new Float64Array(d.B * Hm * Mq * Nk);
  for (let b = 0; b < d.B; b++) {
    for (let h = 0; h < d.Hq; h++) {
      const g = Math.floor(h / G), hm = o.kvhead ? g : h;
      const qo = sampledOffsets(o.seed, b, h, 0, d.queryBlock, o.sq), ko = sampledOffsets(o.seed, b, h, 1, d.block, o.sk);
      for (let qb = 0; qb < Mq; qb++) {
        const P = new Float64Array(Nk);
        const qValid = Math.min(d.Tq - qb * d.queryBlock, d.queryBlock);
        for (const oq of qo) {
          const r = qb * d.queryBlock + (oq % qValid);
          const bm = new Float64Array(Nk).fill(-Infinity);
          for (let kb = 0; kb < Nk; kb++) {
            const kValid = Math.min(d.Tk - kb * d.block, d.block);
            for (const ok of ko) {
              const j = kb * d.block + (ok % kValid);
              if (o.causal && j > position(d, r)) continue;
              let dot = 0;
              for (let e = 0; e < d.D; e++) dot += q[((b * d.Hq + h) * d.Tq + r) * d.D + e]! * k[((b * d.Hkv + g) * d.Tk + j) * d.D + e]!;
              bm[kb] = Math.max(bm[kb]!, f32(o.scale) * dot);
            }
          }
          const M = Math.max(...bm);
          if (M === -Infinity) continue;
          for (let kb = 0; kb < Nk; kb++) P[kb] = Math.max(P[kb]!, Math.exp(bm[kb]! - M));
        }
        const sum = P.reduce((a, x) => a + x, 0);
        for (let kb = 0; kb < Nk; kb++) out[((b * Hm + hm) * Mq + qb) * Nk + kb]! += (sum > 0 ? P[kb]! / sum : P[kb]!) / (o.kvhead ? G : 1);
      }
    }
  }
  return out;
}

/** Step 3, replaying the f32 decision chain with Math.fround. */
function refAssign(P: Float32Array, shape: Shape4, o: { block: number; queryBlock: number; Tq: number; Tk: number; causal: boolean; threshold: boolean; bounds: PyramidBounds; minFull: number; sink: boolean; diagonal: boolean }) {
  const [B, Hm, Mq, Nk] = shape;
  const levels = new Uint8Array(B * Hm * Mq * Nk), lists = new Int32Array(levels.length).fill(-1), counts = new Int32Array(B * Hm * Mq * 4);
  const bounds = o.bounds.map(f32);
  for (let row = 0; row < B * Hm * Mq; row++) {
    const qb = row % Mq;
    const p0 = qb * o.queryBlock + o.Tk - o.Tq, p1 = Math.min(o.Tq, (qb + 1) * o.queryBlock) - 1 + o.Tk - o.Tq;
    const visible: { kb: number; forced: boolean; w: number }[] = [];
    for (let kb = 0; kb < Nk; kb++) {
      const s = kb * o.block, e = Math.min(o.Tk, s + o.block) - 1;
      if (o.causal && s > p1) continue;
      const p = P[row * Nk + kb]!;
      visible.push({ kb, forced: (o.sink && kb === 0) || (o.diagonal && s <= p1 && e >= p0), w: p > 0 ? p : 0 });
    }
    visible.sort((a, b) => (a.forced !== b.forced ? (a.forced ? -1 : 1) : a.forced ? a.kb - b.kb : b.w - a.w || a.kb - b.kb));
    const N = visible.length;
    const levelOf = (hit: (i: number) => boolean) => { for (let i = 0; i < 4; i++) if (hit(i)) return 1 << i; return 0; };
    if (o.threshold) {
      let total = 0;
      for (const x of visible) total = f32(total + x.w);
      const t = bounds.map((b) => f32(b * total));
      const minFull = o.minFull > 0 ? Math.min(N, Math.floor(f32(f32(o.minFull) * N)) + 1) : 0;
      let before = 0;
      visible.forEach((x, r) => {
        levels[row * Nk + x.kb] = r < minFull || x.forced ? 1 : levelOf((i) => before < t[i]!);
        before = f32(before + x.w);
      });
    } else {
      const cut = bounds.map((b) => Math.min(N, Math.ceil(f32(b * N))));
      visible.forEach((x, r) => { levels[row * Nk + x.kb] = x.forced ? 1 : levelOf((i) => r < cut[i]!); });
    }
    let used = 0;
    for (let i = 0; i < 4; i++) {
      for (let kb = 0; kb < Nk; kb++) if (levels[row * Nk + kb] === 1 << i) lists[row * Nk + used++] = kb;
      counts[row * 4 + i] = lists.slice(row * Nk, row * Nk + used).filter((kb) => levels[row * Nk + kb] === 1 << i).length;
    }
  }
  return { levels, lists, counts };
}

/** Step 4 in f64, from the level map alone (the lists' order does not change the math). */
function refAttend(q: Float32Array, k: Float32Array, v: Float32Array, pooledK: Float32Array[], pooledV: Float32Array[], levelMap: Uint8Array, Hm: number, d: Dims, o: { scale: number; causal: boolean }) {
  const Mq = Math.ceil(d.Tq / d.queryBlock), Nk = Math.ceil(d.Tk / d.block), G = d.Hq / d.Hkv, padded = Nk * d.block;
  const out = new Float64Array(d.B * d.Hq * d.Tq * d.D), lse = new Float64Array(d.B * d.Hq * d.Tq);
  for (let b = 0; b < d.B; b++) for (let h = 0; h < d.Hq; h++) {
    const g = Math.floor(h / G), hm = Hm === d.Hq ? h : g;
    for (let i = 0; i < d.Tq; i++) {
      const row = ((b * Hm + hm) * Mq + Math.floor(i / d.queryBlock)) * Nk, qi = ((b * d.Hq + h) * d.Tq + i) * d.D;
      const logits: number[] = [], vals: Float32Array[] = [];
      for (let kb = 0; kb < Nk; kb++) {
        const L = levelMap[row + kb]!;
        if (L === 0) continue;
        const keys = L === 1 ? k : pooledK[Math.log2(L) - 1]!, values = L === 1 ? v : pooledV[Math.log2(L) - 1]!;
        const rows = L === 1 ? d.Tk : padded / L;
        for (let t = kb * d.block / L; t < (kb + 1) * d.block / L; t++) {
          const c = countAt(d.Tk, L, t);
          if (c === 0 || (o.causal && t * L + c - 1 > position(d, i))) continue;
          const base = ((b * d.Hkv + g) * rows + t) * d.D;
          let dot = 0;
          for (let e = 0; e < d.D; e++) dot += q[qi + e]! * keys[base + e]!;
          logits.push(f32(o.scale) * dot + Math.log(c));
          vals.push(values.subarray(base, base + d.D));
        }
      }
      const ri = (b * d.Hq + h) * d.Tq + i;
      if (logits.length === 0) { lse[ri] = -Infinity; continue; }
      const M = Math.max(...logits);
      let denom = 0;
      logits.forEach((z, n) => {
        const w = Math.exp(z - M);
        denom += w;
        for (let e = 0; e < d.D; e++) out[qi + e]! += w * vals[n]![e]!;
      });
      for (let e = 0; e < d.D; e++) out[qi + e]! /= denom;
      lse[ri] = M + Math.log(denom);
    }
  }
  return { out, lse };
}

// ---- helpers --------------------------------------------------------------------------------

type FloatDType = 'f32' | 'f16' | 'bf16';

/** A tensor of the dtype and the f32 values it actually holds. */
function floatTensor(values: Float32Array, shape: Shape4, dtype: FloatDType): { t: Tensor; x: Float32Array } {
  if (dtype === 'f16') { const bits = toF16(values); return { t: Tensor.from(bits, shape, 'f16'), x: fromF16(bits) }; }
  if (dtype === 'bf16') { const bits = toBF16(values); return { t: Tensor.from(bits, shape, 'bf16'), x: fromBF16(bits) }; }
  return { t: Tensor.from(values, shape), x: values };
}

async function f32Data(t: Tensor): Promise<Float32Array> {
  const data = await t.data();
  return t.dtype === 'f16' ? fromF16(data as Uint16Array) : t.dtype === 'bf16' ? fromBF16(data as Uint16Array) : Float32Array.from(data);
}

function randomProblem(seed: number, d: Dims, dtype: FloatDType = 'f32', scale = 1) {
  const random = rng(seed);
  const q = floatTensor(randomArray(random, d.B * d.Hq * d.Tq * d.D, scale), [d.B, d.Hq, d.Tq, d.D], dtype);
  const k = floatTensor(randomArray(random, d.B * d.Hkv * d.Tk * d.D, scale), [d.B, d.Hkv, d.Tk, d.D], dtype);
  const v = floatTensor(randomArray(random, d.B * d.Hkv * d.Tk * d.D), [d.B, d.Hkv, d.Tk, d.D], dtype);
  return { q, k, v };
}

const ALL_FULL: PyramidBounds = [1, 1, 1, 1];

// ---- stage tests ----------------------------------------------------------------------------

test('pyramidPool: bit-exact against the f32 summation tree; partial last blocks pool only their tokens', async () => {
  const random = rng(1);
  for (const [dtype, Tk, block] of [['f32', 64, 8], ['f32', 61, 16], ['f16', 37, 32], ['bf16', 130, 64], ['f32', 5, 8], ['f16', 129, 128]] as const) {
    const B = 2, H = 3, D = 8;
    const k = floatTensor(randomArray(random, B * H * Tk * D, 3), [B, H, Tk, D], dtype);
    const v = floatTensor(randomArray(random, B * H * Tk * D), [B, H, Tk, D], dtype);
    using levels = await pyramidPool(k.t, v.t, { block });
    const expectK = refPool(k.x, B * H, Tk, D, block), expectV = refPool(v.x, B * H, Tk, D, block);
    const round = dtype === 'f16' ? (x: Float32Array) => fromF16(toF16(x)) : dtype === 'bf16' ? (x: Float32Array) => fromBF16(toBF16(x)) : (x: Float32Array) => x;
    for (let i = 0; i < 3; i++) {
      assert.equal(levels.keys[i]!.shape, [B, H, Math.ceil(Tk / block) * block / (2 << i), D]);
      assert.equal(Array.from(await f32Data(levels.keys[i]!)), Array.from(round(expectK[i]!)), `${dtype} Tk=${Tk} block=${block}: keys level ${2 << i}`);
      assert.equal(Array.from(await f32Data(levels.values[i]!)), Array.from(round(expectV[i]!)), `${dtype} Tk=${Tk}: values level ${2 << i}`);
    }
    assert.equal(Array.from(levels.counts(8)), Array.from({ length: Math.ceil(Tk / block) * block / 8 }, (_, t) => countAt(Tk, 8, t)));
  }
});

test('pyramidPool: a tail token with 3 of 4 rows is their mean, not a replicate-padded one', async () => {
  // Tk = 7, one block of 8: level 4 token 1 holds rows 4, 5, 6
  const D8 = Float32Array.from({ length: 7 * 8 }, (_, i) => Math.floor(i / 8) * 3);
  using levels = await pyramidPool(Tensor.from(D8, [1, 1, 7, 8]), Tensor.from(D8, [1, 1, 7, 8]), { block: 8 });
  const l4 = await levels.keys[1]!.data(), l2 = await levels.keys[0]!.data(), l8 = await levels.keys[2]!.data();
  assert.is(l4[8], 15, 'mean of 12, 15, 18');
  assert.is(l2[3 * 8], 18, 'level 2 token 3 holds only row 6');
  assert.is(l8[0], 9, 'level 8 token 0: mean of rows 0..6');
  assert.equal([levels.count(2, 3), levels.count(4, 1), levels.count(8, 0)], [1, 3, 7]);
});

test('pyramidImportance: matches the f64 definition (sampled and full), rows sum to 1, deterministic per seed', async () => {
  const cases: [Dims, { causal: boolean; sampling: number; seed: number; kvhead: boolean }][] = [
    [{ B: 1, Hq: 2, Hkv: 2, Tq: 64, Tk: 64, D: 8, block: 16, queryBlock: 16 }, { causal: false, sampling: 0.25, seed: 0, kvhead: false }],
    [{ B: 2, Hq: 4, Hkv: 2, Tq: 50, Tk: 77, D: 16, block: 8, queryBlock: 32 }, { causal: true, sampling: 0.5, seed: 7, kvhead: true }],
    [{ B: 1, Hq: 4, Hkv: 1, Tq: 40, Tk: 40, D: 8, block: 16, queryBlock: 16 }, { causal: true, sampling: 1, seed: 3, kvhead: false }],
    [{ B: 1, Hq: 2, Hkv: 1, Tq: 33, Tk: 20, D: 8, block: 8, queryBlock: 16 }, { causal: true, sampling: 0.25, seed: 99, kvhead: true }],
  ];
  for (const [n, [d, o]] of cases.entries()) {
    const { q, k } = randomProblem(10 + n, d, 'f32', 2);
    const scale = 1 / Math.sqrt(d.D);
    const P = await pyramidImportance(q.t, k.t, { block: d.block, queryBlock: d.queryBlock, causal: o.causal, sampling: o.sampling, seed: o.seed, maskGranularity: o.kvhead ? 'kvhead' : 'qhead' });
    const expected = refImportance(q.x, k.x, d, { scale, causal: o.causal, sq: Math.ceil(d.queryBlock * o.sampling), sk: Math.ceil(d.block * o.sampling), seed: o.seed, kvhead: o.kvhead });
    const got = await P.data();
    assert.equal(P.shape, [d.B, o.kvhead ? d.Hkv : d.Hq, Math.ceil(d.Tq / d.queryBlock), Math.ceil(d.Tk / d.block)]);
    assert.ok(toleranceRatio(got, expected, 1e-7, 1e-6) <= 1, `case ${n}`);
    const Nk = P.shape[3]!;
    for (let row = 0; row < got.length / Nk; row++) {
      const sum = got.subarray(row * Nk, (row + 1) * Nk).reduce((a, x) => a + x, 0);
      assert.ok(Math.abs(sum - 1) < 1e-5 || sum === 0, `case ${n} row ${row} sums to ${sum}`);
    }
    const again = await pyramidImportance(q.t, k.t, { block: d.block, queryBlock: d.queryBlock, causal: o.causal, sampling: o.sampling, seed: o.seed, maskGranularity: o.kvhead ? 'kvhead' : 'qhead' });
    assert.equal(Array.from(await again.data()), Array.from(got), `case ${n}: same seed, same importance`);
  }
  // Tq > Tk, causal: the first query block sits before every key, so its row is all zero
  const d: Dims = { B: 1, Hq: 1, Hkv: 1, Tq: 48, Tk: 16, D: 8, block: 8, queryBlock: 16 };
  const { q, k } = randomProblem(5, d);
  const P = await (await pyramidImportance(q.t, k.t, { block: 8, queryBlock: 16, causal: true, sampling: 1 })).data();
  assert.equal(Array.from(P.subarray(0, 2)), [0, 0]);
  // a different seed samples different keys: some importance changes
  const d2: Dims = { B: 1, Hq: 1, Hkv: 1, Tq: 128, Tk: 128, D: 8, block: 32, queryBlock: 32 };
  const p2 = randomProblem(6, d2, 'f32', 2);
  const a = await (await pyramidImportance(p2.q.t, p2.k.t, { block: 32, queryBlock: 32, seed: 1 })).data();
  const b = await (await pyramidImportance(p2.q.t, p2.k.t, { block: 32, queryBlock: 32, seed: 2 })).data();
  assert.ok(a.some((x, i) => x !== b[i]), 'seeds 1 and 2 give the same importance');
});

test('pyramidAssign: exact against the definition in both modes, with and without forced blocks', async () => {
  const random = rng(21);
  for (let trial = 0; trial < 24; trial++) {
    const block = [8, 16, 32][trial % 3]!, queryBlock = [16, 32][trial % 2]!;
    const Tq = randomInt(random, 1, 150), Tk = trial % 4 === 3 ? 32 * randomInt(random, Math.ceil(Tq / 32), 7) : randomInt(random, Tq, 220);
    const Mq = Math.ceil(Tq / queryBlock), Nk = Math.ceil(Tk / block), B = 1, Hm = 2;
    // importance with exact ties and zeros, as real rows have
    const P = Float32Array.from({ length: B * Hm * Mq * Nk }, () => (random() < 0.2 ? 0 : random() < 0.2 ? 0.25 : random()));
    const threshold = trial % 2 === 1, causal = trial % 4 < 2, sink = trial % 3 !== 0, diagonal = trial % 5 !== 0;
    const bounds: PyramidBounds = threshold ? [0.3, 0.5, 0.5, 0.9] : [0.1, 0.3, 0.45, 0.7];
    const minFull = trial % 6 === 1 ? 0 : 0.06;
    const options: PyramidAssignOptions = { block, queryBlock, qTokens: Tq, kvTokens: Tk, causal, mode: threshold ? 'threshold' : 'topk', bounds, minFull, forceSink: sink, forceDiagonal: diagonal };
    using mask = await pyramidAssign(Tensor.from(P, [B, Hm, Mq, Nk]), options);
    const ref = refAssign(P, [B, Hm, Mq, Nk], { block, queryBlock, Tq, Tk, causal, threshold, bounds, minFull, sink, diagonal });
    const label = `trial ${trial} ${JSON.stringify(options)}`;
    assert.equal(Array.from(await mask.levelMap.data()), Array.from(ref.levels), `${label}: levelMap`);
    assert.equal(Array.from(await mask.lists.data()), Array.from(ref.lists), `${label}: lists`);
    assert.equal(Array.from(await mask.counts.data()), Array.from(ref.counts), `${label}: counts`);
    // density from its definition over the level map (the mask reads only counts when Tk % block == 0)
    let sparse = 0, dense = 0;
    for (let row = 0; row < B * Hm * Mq; row++) {
      const qb = row % Mq, rows = Math.min(Tq, (qb + 1) * queryBlock) - qb * queryBlock, p1 = Math.min(Tq, (qb + 1) * queryBlock) - 1 + Tk - Tq;
      for (let kb = 0; kb < Nk; kb++) {
        const keys = Math.min(Tk, (kb + 1) * block) - kb * block, L = ref.levels[row * Nk + kb]!;
        if (!causal || kb * block <= p1) dense += rows * keys;
        if (L > 0) sparse += rows * Math.ceil(keys / L);
      }
    }
    assert.ok(Math.abs((await mask.density()) - sparse / dense) < 1e-12, `${label}: density`);
  }
});

test('pyramidAssign: topk quotas, forced sink and diagonal, causal blocks never listed', async () => {
  // one row of 10 visible blocks (non-causal), importance descending with the block id reversed
  const P = Float32Array.from({ length: 10 }, (_, kb) => (kb + 1) / 55);
  using mask = await pyramidAssign(Tensor.from(P, [1, 1, 1, 10]), { block: 16, queryBlock: 16, qTokens: 16, kvTokens: 160, bounds: [0.2, 0.4, 0.6, 0.8], forceDiagonal: false, forceSink: false });
  // ranks: 9, 8 | 7, 6 | 5, 4 | 3, 2 | 1, 0 skipped
  assert.equal(Array.from(await mask.levelMap.data()), [0, 0, 8, 8, 4, 4, 2, 2, 1, 1]);
  assert.equal(Array.from(await mask.lists.data()), [8, 9, 6, 7, 4, 5, 2, 3, -1, -1]);
  assert.equal(Array.from(await mask.counts.data()), [2, 2, 2, 2]);
  // causal, Tq = Tk = 64, query block 2 of 16 rows (positions 32..47) with key blocks of 16
  const zeros = new Float32Array(4 * 4);
  using causal = await pyramidAssign(Tensor.from(zeros, [1, 1, 4, 4]), { block: 16, queryBlock: 16, qTokens: 64, kvTokens: 64, causal: true, bounds: [0, 0, 0, 0] });
  assert.equal(Array.from(await causal.levelMap.data()), [1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1], 'sink + diagonal only, nothing above it');
  // rows see 1, 2, 3, 4 blocks and keep 1, 2, 2, 2 of them, all full
  assert.is(await causal.density(), 7 / 10);
});

test('pyramidAssign: threshold mode includes the block that crosses a bound, and keeps floor(0.06 N) + 1 full', async () => {
  // masses 0.5, 0.3, 0.2 (blocks 0..2): level 1 until 40% -> block 0 (crosses); level 2 until 50% -> none more
  // (0.5 is not < 0.5); level 4 until 75% -> block 1 (E = 0.5); level 8 until 100% -> block 2 (E = 0.8)
  const P = Float32Array.from([0.5, 0.3, 0.2]);
  using mask = await pyramidAssign(Tensor.from(P, [1, 1, 1, 3]), { block: 8, queryBlock: 16, qTokens: 16, kvTokens: 24, mode: 'threshold', bounds: [0.4, 0.5, 0.75, 1], minFull: 0, forceSink: false, forceDiagonal: false });
  assert.equal(Array.from(await mask.levelMap.data()), [1, 4, 8]);
  using full = await pyramidAssign(Tensor.from(P, [1, 1, 1, 3]), { block: 8, queryBlock: 16, qTokens: 16, kvTokens: 24, mode: 'threshold', bounds: [0, 0, 0, 0], minFull: 0.4, forceSink: false, forceDiagonal: false });
  assert.equal(Array.from(await full.levelMap.data()), [1, 1, 0], 'floor(0.4 * 3) + 1 = 2 blocks full');
});

test('pyramidAttention: the attend stage matches the f64 definition over random masks (GQA, both granularities, causal, tails)', async () => {
  const cases: [Dims, boolean, 'qhead' | 'kvhead'][] = [
    [{ B: 1, Hq: 2, Hkv: 2, Tq: 64, Tk: 64, D: 8, block: 8, queryBlock: 16 }, true, 'qhead'],
    [{ B: 2, Hq: 4, Hkv: 2, Tq: 45, Tk: 83, D: 16, block: 16, queryBlock: 16 }, true, 'kvhead'],
    [{ B: 1, Hq: 6, Hkv: 2, Tq: 70, Tk: 70, D: 24, block: 32, queryBlock: 32 }, false, 'qhead'],
    [{ B: 1, Hq: 2, Hkv: 1, Tq: 40, Tk: 23, D: 8, block: 8, queryBlock: 16 }, true, 'kvhead'],
    [{ B: 1, Hq: 2, Hkv: 2, Tq: 30, Tk: 130, D: 8, block: 64, queryBlock: 16 }, false, 'kvhead'],
  ];
  const used = new Set<number>();
  for (const [n, [d, causal, granularity]] of cases.entries()) {
    const { q, k, v } = randomProblem(30 + n, d, 'f32', 1.5);
    const block = d.block, queryBlock = d.queryBlock;
    const importance = await pyramidImportance(q.t, k.t, { block, queryBlock, causal, maskGranularity: granularity, seed: n });
    using mask = await pyramidAssign(importance, { block, queryBlock, qTokens: d.Tq, kvTokens: d.Tk, causal, bounds: [0.2, 0.4, 0.6, 0.85] });
    using levels = await pyramidPool(k.t, v.t, { block });
    const result = await pyramidAttention(q.t, k.t, v.t, { block, queryBlock, causal, mask, levels, returnLse: true });
    const pooledK = await Promise.all(levels.keys.map(f32Data)), pooledV = await Promise.all(levels.values.map(f32Data));
    const ref = refAttend(q.x, k.x, v.x, pooledK, pooledV, await mask.levelMap.data(), importance.shape[1]!, d, { scale: 1 / Math.sqrt(d.D), causal });
    assert.ok(toleranceRatio(await result.output.data(), ref.out, 1e-6, 1e-6) <= 1, `case ${n}: output`);
    assert.ok(toleranceRatio(await result.lse!.data(), ref.lse, 1e-6, 1e-6) <= 1, `case ${n}: lse`);
    assert.is(result.density, await mask.density());
    assert.ok(result.density > 0 && result.density <= 1, `case ${n}: density ${result.density}`);
    for (const L of await mask.levelMap.data()) used.add(L);
  }
  assert.equal([...used].sort(), [0, 1, 2, 4, 8], 'every level and skipping occur');
});

// ---- properties -----------------------------------------------------------------------------

test('all blocks at level 1 equals dense attention (causal and not, GQA, Tq != Tk, every dtype)', async () => {
  const cases: [Dims, boolean, FloatDType][] = [
    [{ B: 1, Hq: 2, Hkv: 2, Tq: 64, Tk: 64, D: 8, block: 16, queryBlock: 16 }, true, 'f32'],
    [{ B: 2, Hq: 4, Hkv: 2, Tq: 37, Tk: 100, D: 16, block: 8, queryBlock: 32 }, true, 'f16'],
    [{ B: 1, Hq: 3, Hkv: 1, Tq: 50, Tk: 50, D: 32, block: 32, queryBlock: 64 }, false, 'bf16'],
    [{ B: 1, Hq: 2, Hkv: 1, Tq: 40, Tk: 24, D: 8, block: 8, queryBlock: 16 }, true, 'f32'],
    [{ B: 1, Hq: 1, Hkv: 1, Tq: 1, Tk: 129, D: 256, block: 128, queryBlock: 128 }, true, 'f32'],
  ];
  for (const [n, [d, causal, dtype]] of cases.entries()) {
    const { q, k, v } = randomProblem(50 + n, d, dtype);
    for (const granularity of ['qhead', 'kvhead'] as const) {
      const sparse = await pyramidAttention(q.t, k.t, v.t, { block: d.block, queryBlock: d.queryBlock, causal, bounds: ALL_FULL, returnLse: true, maskGranularity: granularity, outDtype: 'f32' });
      const dense = await attention(q.t, k.t, v.t, { causal, returnLse: true, outDtype: 'f32' });
      // the same f64 sums in the same key order, rounded once: equal, not just close
      assert.equal(Array.from(await sparse.output.data()), Array.from(await dense.output.data()), `case ${n} ${granularity}: output`);
      assert.equal(Array.from(await sparse.lse!.data()), Array.from(await dense.lse.data()), `case ${n} ${granularity}: lse`);
      assert.is(sparse.density, 1, `case ${n}: density`);
    }
  }
});

test('constant K/V inside every pooled window gives the dense result (ln(level) restores the mass)', async () => {
  const cases: [Dims, boolean][] = [
    [{ B: 1, Hq: 2, Hkv: 2, Tq: 64, Tk: 64, D: 8, block: 16, queryBlock: 16 }, false],
    [{ B: 1, Hq: 4, Hkv: 2, Tq: 96, Tk: 96, D: 16, block: 32, queryBlock: 32 }, true],
    [{ B: 2, Hq: 2, Hkv: 1, Tq: 21, Tk: 61, D: 8, block: 16, queryBlock: 16 }, true], // partial tail: bias ln(count)
    [{ B: 1, Hq: 2, Hkv: 1, Tq: 53, Tk: 53, D: 8, block: 8, queryBlock: 16 }, false],
  ];
  for (const [n, [d, causal]] of cases.entries()) {
    const random = rng(70 + n);
    const q = Tensor.from(randomArray(random, d.B * d.Hq * d.Tq * d.D), [d.B, d.Hq, d.Tq, d.D]);
    // one random row per aligned window of 8 (the widest pooling), repeated
    const windowed = () => {
      const x = new Float32Array(d.B * d.Hkv * d.Tk * d.D);
      for (let h = 0; h < d.B * d.Hkv; h++) for (let t = 0; t < d.Tk; t += 8) {
        const row = randomArray(random, d.D);
        for (let u = t; u < Math.min(d.Tk, t + 8); u++) x.set(row, (h * d.Tk + u) * d.D);
      }
      return Tensor.from(x, [d.B, d.Hkv, d.Tk, d.D]);
    };
    const k = windowed(), v = windowed();
    // every visible block gets some level, none skipped; causal diagonals stay full
    const sparse = await pyramidAttention(q, k, v, { block: d.block, queryBlock: d.queryBlock, causal, bounds: [0.2, 0.4, 0.7, 1], returnLse: true });
    const dense = await attention(q, k, v, { causal, returnLse: true });
    assert.ok(sparse.density < 0.9, `case ${n}: pooling was used (density ${sparse.density})`);
    assert.ok(toleranceRatio(await sparse.output.data(), await dense.output.data(), 1e-6, 1e-5) <= 1, `case ${n}: output`);
    assert.ok(toleranceRatio(await sparse.lse!.data(), await dense.lse.data(), 1e-6, 1e-5) <= 1, `case ${n}: lse`);
  }
});

test('causal edges: first block sees only itself, diagonal is full, queries before every key get zeros and -Infinity', async () => {
  const d: Dims = { B: 1, Hq: 1, Hkv: 1, Tq: 40, Tk: 24, D: 8, block: 8, queryBlock: 16 };
  const { q, k, v } = randomProblem(90, d);
  const result = await pyramidAttention(q.t, k.t, v.t, { block: 8, queryBlock: 16, causal: true, returnLse: true, bounds: [0, 0, 0, 0] });
  const dense = await attention(q.t, k.t, v.t, { causal: true, returnLse: true });
  const lse = await result.lse!.data(), out = await result.output.data();
  const denseOut = await dense.output.data(), denseLse = await dense.lse.data();
  // positions i - 16: queries 0..15 see nothing
  for (let i = 0; i < 16; i++) {
    assert.is(lse[i], -Infinity, `query ${i}`);
    assert.ok(out.subarray(i * 8, i * 8 + 8).every((x) => x === 0));
  }
  // query block 1 (positions 0..15) holds key blocks 0 and 1 entirely: forced, so dense there
  for (let i = 16; i < 32; i++) assert.ok(Math.abs(lse[i]! - denseLse[i]!) < 1e-6, `query ${i}`);
  assert.ok(toleranceRatio(out.subarray(16 * 8, 32 * 8), denseOut.subarray(16 * 8, 32 * 8), 1e-6, 1e-6) <= 1);
  // query block 2 (positions 16..23, partial) sees the sink and its diagonal (key block 2), not block 1
  assert.ok(lse[32]! < denseLse[32]!, 'block 1 skipped for the last query block');
  const sinkAndDiagonal = await attention(q.t, k.t, v.t, { causal: true, returnLse: true,
    logWeights: Tensor.from(Float32Array.from({ length: 24 }, (_, j) => (j >= 8 && j < 16 ? -Infinity : 0)), [1, 1, 24]) });
  const expectLse = await sinkAndDiagonal.lse.data();
  for (let i = 32; i < 40; i++) assert.ok(Math.abs(lse[i]! - expectLse[i]!) < 1e-6, `query ${i}: ${lse[i]} vs ${expectLse[i]}`);
});

test('f16 and bf16 inputs: output matches the f64 definition over the rounded values', async () => {
  for (const dtype of ['f16', 'bf16'] as const) {
    const d: Dims = { B: 1, Hq: 4, Hkv: 2, Tq: 48, Tk: 75, D: 16, block: 16, queryBlock: 16 };
    const { q, k, v } = randomProblem(100, d, dtype);
    using levels = await pyramidPool(k.t, v.t, { block: 16 });
    const importance = await pyramidImportance(q.t, k.t, { block: 16, queryBlock: 16, causal: true, maskGranularity: 'kvhead' });
    using mask = await pyramidAssign(importance, { block: 16, queryBlock: 16, qTokens: d.Tq, kvTokens: d.Tk, causal: true, bounds: [0.3, 0.5, 0.7, 0.9] });
    const result = await pyramidAttention(q.t, k.t, v.t, { block: 16, queryBlock: 16, causal: true, levels, mask });
    assert.is(result.output.dtype, dtype);
    const ref = refAttend(q.x, k.x, v.x, await Promise.all(levels.keys.map(f32Data)), await Promise.all(levels.values.map(f32Data)), await mask.levelMap.data(), 2, d, { scale: 1 / Math.sqrt(16), causal: true });
    // one rounding of the output to the dtype: half an ulp (2^-11 f16, 2^-8 bf16) relative
    const rtol = dtype === 'f16' ? 2 ** -11 : 2 ** -8;
    assert.ok(toleranceRatio(await f32Data(result.output), ref.out, 1e-7, rtol) <= 1, dtype);
  }
});

test('the fused op equals its stages chained by hand, and more density means less error on random data', async () => {
  const d: Dims = { B: 1, Hq: 4, Hkv: 2, Tq: 256, Tk: 256, D: 16, block: 16, queryBlock: 32 };
  const { q, k, v } = randomProblem(110, d, 'f32', 2);
  const options = { block: 16, queryBlock: 32, causal: true, seed: 5, maskGranularity: 'kvhead' as const, bounds: [0.2, 0.3, 0.5, 0.6] as PyramidBounds };
  const fused = await pyramidAttention(q.t, k.t, v.t, options);
  using levels = await pyramidPool(k.t, v.t, { block: 16 });
  const importance = await pyramidImportance(q.t, k.t, { block: 16, queryBlock: 32, causal: true, seed: 5, maskGranularity: 'kvhead' });
  using mask = await pyramidAssign(importance, { block: 16, queryBlock: 32, causal: true, bounds: options.bounds, qTokens: 256, kvTokens: 256 });
  const chained = await pyramidAttention(q.t, k.t, v.t, { block: 16, queryBlock: 32, causal: true, levels, mask });
  assert.equal(Array.from(await fused.output.data()), Array.from(await chained.output.data()));
  assert.is(fused.density, chained.density);
  const dense = await (await attention(q.t, k.t, v.t, { causal: true })).data();
  const relErr = async (bounds: PyramidBounds) => {
    const r = await pyramidAttention(q.t, k.t, v.t, { ...options, bounds });
    const out = await r.output.data();
    let num = 0, den = 0;
    for (let i = 0; i < out.length; i++) { num += (out[i]! - dense[i]!) ** 2; den += dense[i]! ** 2; }
    return { err: Math.sqrt(num / den), density: r.density };
  };
  const sparse = await relErr([0.1, 0.1, 0.2, 0.3]), denser = await relErr([0.5, 0.7, 0.8, 0.9]), full = await relErr(ALL_FULL);
  assert.ok(sparse.density < denser.density && denser.density < full.density, JSON.stringify([sparse, denser, full]));
  assert.ok(sparse.err > denser.err && denser.err > full.err, JSON.stringify([sparse, denser, full]));
  assert.ok(full.err < 1e-6);
});

// ---- real tensors ---------------------------------------------------------------------------

const dumps = kvDumps();
if (dumps.length === 0) test.skip('real KV dumps (../shared/data/kv is absent)', () => {});

for (const { story, dir, layers } of dumps.slice(0, 1)) {
  test(`${story}: every layer matches the f64 definition (kvhead masks), and all-full matches attn_out`, async () => {
    for (const layer of layers) {
      const q = readNpy(layerFile(dir, layer, 'q')), k = readNpy(layerFile(dir, layer, 'k')), v = readNpy(layerFile(dir, layer, 'v'));
      const [B, Hq, Tq, D] = q.shape as Shape4;
      const d: Dims = { B, Hq, Hkv: k.shape[1]!, Tq, Tk: k.shape[2]!, D, block: 16, queryBlock: 32 };
      using levels = await pyramidPool(k, v, { block: 16 });
      const importance = await pyramidImportance(q, k, { block: 16, queryBlock: 32, causal: true, maskGranularity: 'kvhead' });
      using mask = await pyramidAssign(importance, { block: 16, queryBlock: 32, causal: true, qTokens: Tq, kvTokens: d.Tk });
      const result = await pyramidAttention(q, k, v, { block: 16, queryBlock: 32, causal: true, levels, mask });
      const ref = refAttend(await q.data() as Float32Array, await k.data() as Float32Array, await v.data() as Float32Array,
        await Promise.all(levels.keys.map(f32Data)), await Promise.all(levels.values.map(f32Data)), await mask.levelMap.data(), d.Hkv, d, { scale: 1 / Math.sqrt(D), causal: true });
      assert.ok(toleranceRatio(await result.output.data(), ref.out, 1e-6, 1e-6) <= 1, `layer ${layer}`);
      // see test/realdata.test.ts for the 1e-5 bound against the float32 NumPy dump
      const full = await (await pyramidAttention(q, k, v, { block: 16, queryBlock: 32, causal: true, bounds: ALL_FULL })).output.data();
      const expected = await readNpy(layerFile(dir, layer, 'attn_out')).data();
      let worst = 0;
      for (let i = 0; i < full.length; i++) worst = Math.max(worst, Math.abs(full[i]! - expected[i]!));
      assert.ok(worst < 1e-5, `layer ${layer}: all-full max abs error ${worst}`);
    }
  });
}

// ---- bad inputs -----------------------------------------------------------------------------

{
  const q = Tensor.zeros([1, 2, 32, 8]), k = Tensor.zeros([1, 1, 32, 8]), v = Tensor.zeros([1, 1, 32, 8]);
  const P = Tensor.zeros([1, 2, 2, 2]);
  const disposed = Tensor.zeros([1, 1, 32, 8]);
  disposed.dispose();
  const maskFor = () => pyramidAssign(Tensor.zeros([1, 2, 1, 2]), { block: 16, queryBlock: 32, qTokens: 32, kvTokens: 32 });
  badInputTests(test, [
    ['pool: k not a tensor', () => pyramidPool([1, 2] as never, v), 'E_DTYPE'],
    ['pool: k rank 3', () => pyramidPool(Tensor.zeros([1, 32, 8]), v), 'E_SHAPE'],
    ['pool: v shape differs', () => pyramidPool(k, Tensor.zeros([1, 1, 31, 8])), 'E_SHAPE'],
    ['pool: i32 keys', () => pyramidPool(Tensor.zeros([1, 1, 32, 8], 'i32'), Tensor.zeros([1, 1, 32, 8], 'i32')), 'E_DTYPE'],
    ['pool: v f16 with k f32', () => pyramidPool(k, Tensor.zeros([1, 1, 32, 8], 'f16')), 'E_DTYPE'],
    ['pool: block 12', () => pyramidPool(k, v, { block: 12 }), 'E_RANGE'],
    ['pool: block 256', () => pyramidPool(k, v, { block: 256 }), 'E_RANGE'],
    ['pool: head dim 6', () => pyramidPool(Tensor.zeros([1, 1, 32, 6]), Tensor.zeros([1, 1, 32, 6])), 'E_SHAPE'],
    ['pool: disposed k', () => pyramidPool(disposed, v), 'E_DISPOSED'],
    ['pool: empty k', () => pyramidPool(Tensor.zeros([1, 1, 0, 8]), Tensor.zeros([1, 1, 0, 8])), 'E_SHAPE'],
    ['pool: unknown option', () => pyramidPool(k, v, { blok: 8 } as never), 'E_RANGE'],
    ['importance: heads do not divide', () => pyramidImportance(Tensor.zeros([1, 3, 32, 8]), Tensor.zeros([1, 2, 32, 8])), 'E_SHAPE'],
    ['importance: head dims differ', () => pyramidImportance(q, Tensor.zeros([1, 1, 32, 16])), 'E_SHAPE'],
    ['importance: sampling 0', () => pyramidImportance(q, k, { sampling: 0 }), 'E_RANGE'],
    ['importance: sampling NaN', () => pyramidImportance(q, k, { sampling: NaN }), 'E_RANGE'],
    ['importance: seed -1', () => pyramidImportance(q, k, { seed: -1 }), 'E_RANGE'],
    ['importance: queryBlock 8', () => pyramidImportance(q, k, { queryBlock: 8 }), 'E_RANGE'],
    ['importance: granularity', () => pyramidImportance(q, k, { maskGranularity: 'head' as never }), 'E_RANGE'],
    ['importance: scale Infinity', () => pyramidImportance(q, k, { scale: Infinity }), 'E_RANGE'],
    ['importance: causal "yes"', () => pyramidImportance(q, k, { causal: 'yes' as never }), 'E_RANGE'],
    ['importance: too many key blocks', () => pyramidImportance(Tensor.zeros([1, 1, 1, 8]), Tensor.zeros([1, 1, 4097 * 8, 8]), { block: 8 }), 'E_RANGE'],
    ['assign: f16 importance', () => pyramidAssign(Tensor.zeros([1, 2, 2, 2], 'f16'), { block: 16, queryBlock: 16 }), 'E_DTYPE'],
    ['assign: rank 3', () => pyramidAssign(Tensor.zeros([2, 2, 2]), { block: 16 }), 'E_SHAPE'],
    ['assign: bounds decreasing', () => pyramidAssign(P, { bounds: [0.5, 0.4, 0.6, 0.7] }), 'E_RANGE'],
    ['assign: bounds > 1', () => pyramidAssign(P, { bounds: [0.5, 0.6, 0.7, 1.5] }), 'E_RANGE'],
    ['assign: 3 bounds', () => pyramidAssign(P, { bounds: [0.5, 0.6, 0.7] as never }), 'E_RANGE'],
    ['assign: NaN bound', () => pyramidAssign(P, { bounds: [NaN, 0.6, 0.7, 0.8] }), 'E_RANGE'],
    ['assign: mode', () => pyramidAssign(P, { mode: 'top' as never }), 'E_RANGE'],
    ['assign: minFull 2', () => pyramidAssign(P, { minFull: 2 }), 'E_RANGE'],
    ['assign: tokens do not fit the shape', () => pyramidAssign(P, { block: 16, queryBlock: 16, qTokens: 100, kvTokens: 32 }), 'E_SHAPE'],
    ['assign: kvTokens 0', () => pyramidAssign(P, { kvTokens: 0 }), 'E_RANGE'],
    ['attention: v on another shape', () => pyramidAttention(q, k, Tensor.zeros([1, 1, 32, 16])), 'E_SHAPE'],
    ['attention: bf16 q with f32 k', () => pyramidAttention(Tensor.zeros([1, 2, 32, 8], 'bf16'), k, v), 'E_DTYPE'],
    ['attention: outDtype i32', () => pyramidAttention(q, k, v, { outDtype: 'i32' as never }), 'E_DTYPE'],
    ['attention: disposed v', () => pyramidAttention(q, k, disposed), 'E_DISPOSED'],
    ['attention: head dim 264', () => pyramidAttention(Tensor.zeros([1, 1, 4, 264]), Tensor.zeros([1, 1, 4, 264]), Tensor.zeros([1, 1, 4, 264])), 'E_SHAPE'],
    ['attention: mask not a PyramidMask', () => pyramidAttention(q, k, v, { mask: {} as never }), 'E_DTYPE'],
    ['attention: mask for another block', async () => pyramidAttention(q, k, v, { block: 8, queryBlock: 32, mask: await maskFor() }), 'E_SHAPE'],
    ['attention: mask for 3 heads', async () => pyramidAttention(q, k, v, { block: 16, queryBlock: 32,
      mask: await pyramidAssign(Tensor.zeros([1, 3, 1, 2]), { block: 16, queryBlock: 32, qTokens: 32, kvTokens: 32 }) }), 'E_SHAPE'],
    ['attention: levels for another block', async () => pyramidAttention(q, k, v, { block: 8, levels: await pyramidPool(k, v, { block: 16 }) }), 'E_SHAPE'],
    ['attention: unknown option', () => pyramidAttention(q, k, v, { casual: true } as never), 'E_RANGE'],
  ]);

  test('bad input: hand-made lists with an out-of-range block id or negative counts -> E_RANGE', async () => {
    const mask = await maskFor();
    const lists = Tensor.from(Int32Array.from([0, 5, 0, 1]), [1, 2, 1, 2], 'i32');
    const counts = Tensor.from(Int32Array.from([2, 0, 0, 0, 1, 0, 0, 0]), [1, 2, 1, 4], 'i32');
    const forged = new PyramidMask(mask.levelMap, lists, counts, 16, 32, 32, 32, false);
    for (const [label, m] of [['id 5', forged], ['count -1', new PyramidMask(mask.levelMap, mask.lists, Tensor.from(Int32Array.from([-1, 0, 0, 0, 0, 0, 0, 0]), [1, 2, 1, 4], 'i32'), 16, 32, 32, 32, false)]] as const) {
      try {
        await pyramidAttention(q, k, v, { block: 16, queryBlock: 32, mask: m });
        assert.unreachable(label);
      } catch (error) {
        assert.is((error as { code?: string }).code, 'E_RANGE', `${label}: ${String(error)}`);
      }
    }
  });
}

test.run();
