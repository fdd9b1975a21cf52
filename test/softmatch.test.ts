// softMatch on the CPU against an independent TypeScript implementation of the definition
// in csrc/core/softmatch.h (f64 similarities: random data keeps decisions away from ties),
// plus its promises: sizes sum to T, positions are the largest member index, centroids are
// their members' means, duplicates found and exact under log(size), append == batch.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attention, ClusteredKV, fromF16, softMatch, Tensor, toF16, type SoftMatchOptions } from '../lib/index.js';
import { readNpy } from '../bench/common/npy.js';
import { kvDumps, layerFile } from '../bench/common/shared-data.js';
import { badInputTests } from './helpers/expect-error.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { toleranceRatio } from './helpers/reference.js';

interface RefCluster { key: number[]; value: number[]; size: number; position: number; members: number[] }

/** The definition, written again from the header text (f64 arithmetic). */
function referenceSoftMatch(keys: Float32Array, values: Float32Array, T: number, D: number, o: { chunk: number; passes: number; merges?: number[]; threshold?: number; first: number; recent: number }) {
  const cos = (x: number[], y: number[]) => {
    let dot = 0, nx = 0, ny = 0;
    for (let d = 0; d < D; d++) { dot += x[d]! * y[d]!; nx += x[d]! ** 2; ny += y[d]! ** 2; }
    return nx * ny > 0 ? dot / Math.sqrt(nx * ny) : 0;
  };
  const row = (data: Float32Array, t: number) => Array.from(data.subarray(t * D, (t + 1) * D));
  const raw = (t: number): RefCluster => ({ key: row(keys, t), value: row(values, t), size: 1, position: t, members: [t] });
  const slots: RefCluster[] = [];
  const first = Math.min(o.first, T);
  const chunks = Math.max(0, Math.floor((T - o.recent - o.first) / o.chunk));
  for (let t = 0; t < first; t++) slots.push(raw(t));
  for (let c = 0; c < chunks; c++) {
    let list = Array.from({ length: o.chunk }, (_, j) => raw(first + c * o.chunk + j));
    for (let pass = 0; pass < o.passes && list.length >= 2; pass++) {
      const edges: { a: number; b: number; s: number }[] = [];
      for (let a = 0; a < list.length; a += 2) {
        let best = { a, b: -1, s: -Infinity };
        for (let b = 1; b < list.length; b += 2) { const s = cos(list[a]!.key, list[b]!.key); if (s > best.s) best = { a, b, s }; }
        edges.push(best);
      }
      const kept = o.threshold !== undefined ? edges.filter((e) => e.s > o.threshold!) : [...edges].sort((x, y) => y.s - x.s || x.a - y.a).slice(0, o.merges![pass]);
      const into = new Map(kept.map((e) => [e.a, e.b]));
      const next: RefCluster[] = [];
      list.forEach((cluster, i) => {
        if (into.has(i)) return;
        const members = list.filter((_, m) => m === i || into.get(m) === i);
        const size = members.reduce((n, m) => n + m.size, 0);
        next.push({
          key: cluster.key.map((_, d) => members.reduce((acc, m) => acc + m.size * m.key[d]!, 0) / size),
          value: cluster.value.map((_, d) => members.reduce((acc, m) => acc + m.size * m.value[d]!, 0) / size),
          size, position: Math.max(...members.map((m) => m.position)), members: members.flatMap((m) => m.members),
        });
      });
      list = next;
    }
    slots.push(...list);
  }
  for (let t = first + chunks * o.chunk; t < T; t++) slots.push(raw(t));
  return slots;
}

async function checkAgainstReference(keys: Float32Array, values: Float32Array, shape: [number, number, number, number], options: SoftMatchOptions, ref: Parameters<typeof referenceSoftMatch>[4], label: string) {
  const [B, H, T, D] = shape;
  const m = await softMatch(Tensor.from(keys, shape), Tensor.from(values, shape), options);
  const [lengths, assign, sizes, positions, outK, outV] = await Promise.all([m.lengths.data(), m.assign.data(), m.sizes.data(), m.positions.data(), m.keys.data(), m.values.data()]);
  const tcap = m.keys.shape[2]!;
  for (let h = 0; h < B * H; h++) {
    const slots = referenceSoftMatch(keys.subarray(h * T * D, (h + 1) * T * D), values.subarray(h * T * D, (h + 1) * T * D), T, D, ref);
    assert.is(lengths[h], slots.length, `${label}: lengths`);
    slots.forEach((slot, s) => {
      assert.is(sizes[h * tcap + s], slot.size, `${label}: size of slot ${s}`);
      assert.is(positions[h * tcap + s], slot.position, `${label}: position of slot ${s}`);
      for (const t of slot.members) assert.is(assign[h * T + t], s, `${label}: assign of token ${t}`);
      assert.ok(toleranceRatio(outK.subarray((h * tcap + s) * D, (h * tcap + s + 1) * D), slot.key, 1e-6, 1e-5) <= 1, `${label}: key ${s}`);
      assert.ok(toleranceRatio(outV.subarray((h * tcap + s) * D, (h * tcap + s + 1) * D), slot.value, 1e-6, 1e-5) <= 1, `${label}: value ${s}`);
    });
    assert.is(slots.reduce((n, s) => n + s.size, 0), T, 'sizes sum to T');
    for (let s = slots.length; s < tcap; s++) { assert.is(sizes[h * tcap + s], 0); assert.is(positions[h * tcap + s], -1); }
  }
  return m;
}

test('matches an independent implementation: ratio, budget, threshold, passes, protection', async () => {
  const random = rng(3);
  for (let trial = 0; trial < 16; trial++) {
    // D >= 2: with D = 1 every cosine is ±1, all ties, where f32 and f64 may break differently
    const B = randomInt(random, 1, 2), H = randomInt(random, 1, 2), D = [2, 4, 9, 16][trial % 4]!, chunk = [2, 4, 6, 8, 32][trial % 5]!;
    const T = randomInt(random, 1, 4 * chunk + 10), first = randomInt(random, 0, 2), recent = randomInt(random, 0, 5);
    const keys = randomArray(random, B * H * T * D), values = randomArray(random, B * H * T * D);
    const protect = { first, recent };
    const shape: [number, number, number, number] = [B, H, T, D];
    // merges per pass as the core plans them: as many as possible until `kept` remain
    const plan = (kept: number) => { const out = []; for (let n = chunk; n > kept;) { const m = Math.min(Math.ceil(n / 2), n - kept); out.push(m); n -= m; } return out.length ? out : [0]; };
    const half = Math.max(1, Math.round(chunk / 2)), quarter = Math.max(1, Math.round(chunk / 4));
    await checkAgainstReference(keys, values, shape, { chunk, protect }, { chunk, passes: plan(half).length, merges: plan(half), first, recent }, `ratio .5 #${trial}`);
    await checkAgainstReference(keys, values, shape, { chunk, ratio: 0.25, protect }, { chunk, passes: plan(quarter).length, merges: plan(quarter), first, recent }, `ratio .25 #${trial}`);
    await checkAgainstReference(keys, values, shape, { chunk, budget: chunk - 1, protect }, { chunk, passes: 1, merges: [1], first, recent }, `budget #${trial}`);
    await checkAgainstReference(keys, values, shape, { chunk, threshold: 0.2, passes: 2, protect }, { chunk, passes: 2, threshold: 0.2, first, recent }, `threshold #${trial}`);
  }
});

test('duplicated tokens are found, and attention with log(size) reproduces dense attention', async () => {
  const random = rng(8);
  const B = 1, Hkv = 2, Hq = 4, T = 64, D = 16;
  const keys = randomArray(random, B * Hkv * T * D), values = randomArray(random, B * Hkv * T * D);
  for (let t = 1; t < B * Hkv * T; t += 2) keys.copyWithin(t * D, (t - 1) * D, t * D); // token 2i+1 = token 2i
  const k = Tensor.from(keys, [B, Hkv, T, D]), v = Tensor.from(values, [B, Hkv, T, D]);
  using m = await softMatch(k, v, { chunk: 16, ratio: 0.5, protect: { first: 0 } });
  const assign = await m.assign.data();
  for (let t = 0; t < B * Hkv * T; t += 2) assert.is(assign[t], assign[t + 1], `token ${t} merged with its twin`);
  const q = Tensor.from(randomArray(random, B * Hq * 3 * D), [B, Hq, 3, D]);
  const dense = await attention(q, k, v);
  const merged = await attention(q, m.keys, m.values, { kvLengths: m.lengths, logWeights: await m.logWeights() });
  assert.ok(toleranceRatio(await merged.data(), await dense.data(), 1e-5, 1e-5) <= 1);
});

test('append equals clustering the whole sequence (bit for bit), f32 and f16', async () => {
  const random = rng(12);
  for (const [dtype, options] of [['f32', { chunk: 8, ratio: 0.25, protect: { first: 1, recent: 5 } }], ['f16', { chunk: 4, threshold: 0.1 }], ['f32', { chunk: 6 }]] as const) {
    const B = 2, H = 2, D = 8, T = 71;
    const raw = (n: number) => randomArray(random, n);
    const keys = raw(B * H * T * D), values = raw(B * H * T * D);
    const make = (data: Float32Array, t0: number, t1: number) => {
      const out = new Float32Array(B * H * (t1 - t0) * D);
      for (let h = 0; h < B * H; h++) out.set(data.subarray((h * T + t0) * D, (h * T + t1) * D), h * (t1 - t0) * D);
      return dtype === 'f16' ? Tensor.from(toF16(out), [B, H, t1 - t0, D], 'f16') : Tensor.from(out, [B, H, t1 - t0, D]);
    };
    const batch = await softMatch(make(keys, 0, T), make(values, 0, T), options as SoftMatchOptions);
    let inc: ClusteredKV = await softMatch(make(keys, 0, 3), make(values, 0, 3), options as SoftMatchOptions);
    for (let t = 3; t < T;) {
      const step = Math.min(T - t, randomInt(random, 1, 13));
      const next = await inc.append(make(keys, t, t + step), make(values, t, t + step));
      inc.dispose();
      inc = next;
      t += step;
    }
    for (const name of ['keys', 'values', 'lengths', 'sizes', 'positions', 'assign'] as const)
      assert.equal(Array.from(await inc[name].data()), Array.from(await batch[name].data()), `${dtype} ${JSON.stringify(options)}: ${name}`);
    assert.is(inc.tokens, T);
    if (dtype === 'f16') assert.ok(fromF16(await inc.keys.data()).every(Number.isFinite));
  }
});

test('real KV dumps: 50/25/12.5% kept per chunk, centroids are their members\' means', async () => {
  const dump = kvDumps()[0];
  if (!dump) return;
  const k = readNpy(layerFile(dump.dir, 2, 'k')), v = readNpy(layerFile(dump.dir, 2, 'v'));
  const [B, H, T, D] = k.shape as [number, number, number, number];
  const keys = (await k.data()) as Float32Array;
  for (const ratio of [0.5, 0.25, 0.125]) {
    using m = await softMatch(k, v, { ratio });
    const [lengths, assign, outK] = await Promise.all([m.lengths.data(), m.assign.data(), m.keys.data()]);
    const tcap = m.keys.shape[2]!;
    const chunks = Math.floor((T - 1) / 32);
    for (let h = 0; h < B * H; h++) {
      assert.is(lengths[h], 1 + chunks * Math.round(32 * ratio) + (T - 1 - chunks * 32), `ratio ${ratio}: exact length`);
      for (let s = 0; s < lengths[h]!; s++) {
        const members = [...Array(T).keys()].filter((t) => assign[h * T + t] === s);
        const mean = Array.from({ length: D }, (_, d) => members.reduce((acc, t) => acc + keys[(h * T + t) * D + d]!, 0) / members.length);
        assert.ok(toleranceRatio(outK.subarray((h * tcap + s) * D, (h * tcap + s + 1) * D), mean, 1e-5, 1e-4) <= 1, `slot ${s}`);
      }
    }
  }
});

const kv = () => Tensor.from(new Float32Array(2 * 40 * 4), [1, 2, 40, 4]);
const bad: [string, () => Promise<unknown>, string][] = [
  ['odd chunk', () => softMatch(kv(), kv(), { chunk: 5 }), 'E_RANGE'],
  ['chunk above 256', () => softMatch(kv(), kv(), { chunk: 258 }), 'E_RANGE'],
  ['ratio 0', () => softMatch(kv(), kv(), { ratio: 0 }), 'E_RANGE'],
  ['ratio 1.5', () => softMatch(kv(), kv(), { ratio: 1.5 }), 'E_RANGE'],
  ['budget above chunk', () => softMatch(kv(), kv(), { chunk: 8, budget: 9 }), 'E_RANGE'],
  ['ratio and threshold', () => softMatch(kv(), kv(), { ratio: 0.5, threshold: 0.5 }), 'E_RANGE'],
  ['too few passes', () => softMatch(kv(), kv(), { ratio: 0.125, passes: 1 }), 'E_RANGE'],
  ['passes 17', () => softMatch(kv(), kv(), { threshold: 0.5, passes: 17 }), 'E_RANGE'],
  ['protect unknown key', () => softMatch(kv(), kv(), { protect: { sink: 1 } as never }), 'E_RANGE'],
  ['values shape differs', () => softMatch(kv(), Tensor.from(new Float32Array(2 * 40 * 4), [1, 2, 4, 40])), 'E_SHAPE'],
  ['integer keys', () => softMatch(Tensor.from(new Int32Array(320), [1, 2, 40, 4]), kv()), 'E_DTYPE'],
  ['append with another head dim', async () => (await softMatch(kv(), kv())).append(Tensor.from(new Float32Array(10), [1, 2, 1, 5]), Tensor.from(new Float32Array(10), [1, 2, 1, 5])), 'E_SHAPE'],
];
badInputTests(test, bad);

test.run();
