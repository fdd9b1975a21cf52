// gaussianMerge and attentionScores on the CPU: structural properties, the Gaussian weights
// recomputed here from the definition (csrc/core/merge.h), exactness of merge + log(size)
// on duplicated keys, and the real KV dumps when ../shared is present.
// Float tolerance 1e-5: the CPU reference sums in f64 and rounds once to f32.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attention, attentionScores, gaussianMerge, KvsquashError, Tensor, type GaussianMergeOptions } from '../lib/index.js';
import { readNpy } from '../bench/common/npy.js';
import { kvDumps, layerFile } from '../bench/common/shared-data.js';
import { badInputTests } from './helpers/expect-error.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { toleranceRatio } from './helpers/reference.js';

const f32 = (data: Float32Array, shape: number[]) => Tensor.from(data, shape);

/** Keys made of runs of near-copies, so merging has something to find. */
function runKeys(random: () => number, B: number, H: number, T: number, D: number, noise: number): Float32Array {
  const keys = new Float32Array(B * H * T * D);
  for (let row = 0; row < B * H; row++) {
    let base = randomArray(random, D);
    for (let t = 0; t < T; t++) {
      if (random() < 0.3) base = randomArray(random, D);
      for (let d = 0; d < D; d++) keys[(row * T + t) * D + d] = base[d]! + noise * (random() - 0.5);
    }
  }
  return keys;
}

function cosine(a: Float32Array, b: Float32Array): number {
  let dot = 0, na = 0, nb = 0;
  for (let d = 0; d < a.length; d++) {
    dot += a[d]! * b[d]!;
    na += a[d]! * a[d]!;
    nb += b[d]! * b[d]!;
  }
  return na * nb > 0 ? dot / Math.sqrt(na * nb) : 0;
}

/** Checks every structural promise of a MergedKV against its inputs. */
async function checkStructure(keys: Float32Array, scores: Float32Array, shape: number[], options: GaussianMergeOptions,
  merged: Awaited<ReturnType<typeof gaussianMerge>>, protectedCounts: { first: number; recent: number; top: number }) {
  const [B, H, T, D] = shape as [number, number, number, number];
  const assign = await merged.assign.data(), lengths = await merged.lengths.data();
  const sizes = await merged.sizes.data(), pivots = await merged.pivots.data();
  const tcap = merged.sizes.shape[2]!;
  for (let head = 0; head < B * H; head++) {
    const a = assign.subarray(head * T, (head + 1) * T);
    assert.is(a[0], 0);
    for (let i = 1; i < T; i++) assert.ok(a[i] === a[i - 1] || a[i] === a[i - 1]! + 1, 'assign monotone and contiguous');
    assert.is(lengths[head], a[T - 1]! + 1);
    if (options.budget !== undefined && options.budget >= 1) assert.is(lengths[head], Math.min(options.budget, T), 'budget hit exactly');
    let total = 0;
    for (let s = 0; s < tcap; s++) {
      const size = sizes[head * tcap + s]!, pivot = pivots[head * tcap + s]!;
      if (s >= lengths[head]!) {
        assert.is(size, 0);
        assert.is(pivot, -1);
        continue;
      }
      const members = [...a.keys()].filter((i) => a[i] === s);
      assert.is(size, members.length);
      total += size;
      assert.ok(members.includes(pivot), 'pivot is a member');
      for (const i of members) assert.ok(scores[head * T + i]! <= scores[head * T + pivot]!, 'pivot has the top score');
      for (const i of members) if (scores[head * T + i] === scores[head * T + pivot]) assert.ok(i >= pivot, 'ties go to the lower index');
    }
    assert.is(total, T, 'sizes sum to T');
    // protected tokens are singletons
    const order = [...Array(T).keys()].sort((x, y) => scores[head * T + y]! - scores[head * T + x]! || x - y);
    const isProtected = (i: number) => i < protectedCounts.first || i >= T - protectedCounts.recent || order.indexOf(i) < protectedCounts.top;
    for (let i = 0; i < T; i++) {
      if (!isProtected(i)) continue;
      assert.is(sizes[head * tcap + a[i]!], 1, `protected token ${i} is a singleton`);
    }
    // threshold mode: merged links are exactly the eligible ones above the threshold
    if (options.budget === undefined) {
      const eps = options.threshold ?? 0.75;
      for (let i = 1; i < T; i++) {
        if (isProtected(i) || isProtected(i - 1)) continue;
        const base = (head * T) * D;
        const c = cosine(keys.subarray(base + (i - 1) * D, base + i * D), keys.subarray(base + i * D, base + (i + 1) * D));
        if (Math.abs(c - eps) < 1e-5) continue; // a near tie: f32 and f64 may disagree
        assert.is(a[i] === a[i - 1], c > eps, `link ${i}: cos ${c}`);
      }
    }
  }
}

test('threshold and budget modes: structure, protection, exact budgets (random shapes)', async () => {
  const random = rng(11);
  let budgetRuns = 0;
  for (let trial = 0; trial < 12; trial++) {
    const B = randomInt(random, 1, 2), H = randomInt(random, 1, 3), T = randomInt(random, 1, 90), D = [1, 3, 8, 16][trial % 4]!;
    const keys = runKeys(random, B, H, T, D, 0.3);
    const values = randomArray(random, B * H * T * D);
    const scores = Float32Array.from({ length: B * H * T }, () => Math.round(random() * 20) / 20); // ties on purpose
    const first = randomInt(random, 0, 2), recent = randomInt(random, 0, 3), top = randomInt(random, 0, 3);
    const protect = { first, recent, topScore: top };
    const minSlots = Math.min(T, first + recent + top + 1);
    const options: GaussianMergeOptions[] = [
      { protect }, { threshold: 0.2, protect, sigma: 'adaptive' },
      { budget: randomInt(random, Math.min(T, 2 * minSlots + 1), T), protect: { first, recent: 0, topScore: 0 }, valueScale: 'paper' },
    ];
    for (const o of options) {
      const shape = [B, H, T, D];
      let merged;
      try {
        merged = await gaussianMerge(f32(keys, shape), f32(values, shape), f32(scores, [B, H, T]), o);
      } catch (error) {
        // a budget below what protection allows is reported, not silently missed
        assert.is((error as KvsquashError).code, 'E_RANGE', String(error));
        assert.ok(o.budget !== undefined, String(error));
        continue;
      }
      if (o.budget !== undefined) budgetRuns++;
      const p = o.protect ?? {};
      await checkStructure(keys, scores, shape, o, merged, { first: p.first ?? 1, recent: p.recent ?? 0, top: p.topScore ?? 0 });
    }
  }
  assert.ok(budgetRuns >= 8, `budget mode ran ${budgetRuns} times`);
});

test('merged keys and values follow the Gaussian-weight definition (sigma fixed and adaptive)', async () => {
  // one head: tokens 0..2 nearly parallel (one slot), token 3 opposite (its own slot)
  const keys = new Float32Array([1, 0, 1.2, 0.1, 0.9, -0.05, -1, 0]);
  const values = new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]);
  const scores = new Float32Array([0.1, 0.5, 0.2, 0.9]);
  for (const sigma of [5, 0.3, 'adaptive'] as const) {
    for (const valueScale of ['mean', 'paper'] as const) {
      const m = await gaussianMerge(f32(keys, [1, 1, 4, 2]), f32(values, [1, 1, 4, 2]), f32(scores, [1, 1, 4]),
        { threshold: 0.9, sigma, valueScale, protect: { first: 0 } });
      assert.equal(Array.from(await m.assign.data()), [0, 0, 0, 1]);
      assert.equal(Array.from(await m.pivots.data()), [1, 3]);
      assert.equal(Array.from(await m.sizes.data()), [3, 1]);
      const d2 = [0, 1, 2].map((i) => (keys[2 * i]! - 1.2) ** 2 + (keys[2 * i + 1]! - 0.1) ** 2);
      const s = sigma === 'adaptive' ? (Math.sqrt(d2[0]!) + Math.sqrt(d2[2]!)) / 2 / Math.SQRT2 : sigma;
      const g = d2.map((x) => Math.exp(-x / (2 * s * s)));
      const w = g.map((x) => x / (g[0]! + g[1]! + g[2]!));
      const wsum = (data: Float32Array, d: number) => w.reduce((acc, wi, i) => acc + wi * data[2 * i + d]!, 0);
      const factor = valueScale === 'paper' ? 3 : 1;
      const expectedKeys = [wsum(keys, 0), wsum(keys, 1), -1, 0];
      const expectedValues = [wsum(values, 0) * factor, wsum(values, 1) * factor, 7, 8];
      assert.ok(toleranceRatio(await m.keys.data(), expectedKeys, 1e-6, 1e-5) <= 1, `keys sigma=${sigma}`);
      assert.ok(toleranceRatio(await m.values.data(), expectedValues, 1e-6, 1e-5) <= 1, `values sigma=${sigma} ${valueScale}`);
    }
  }
});

test('identical keys in each run: merge + log(size) reproduces dense attention', async () => {
  const random = rng(5);
  const B = 2, Hkv = 2, Hq = 4, T = 60, D = 16, Tq = 3;
  const keys = runKeys(random, B, Hkv, T, D, 0); // exact copies inside runs
  const values = randomArray(random, B * Hkv * T * D);
  const scores = randomArray(random, B * Hkv * T);
  const q = f32(randomArray(random, B * Hq * Tq * D), [B, Hq, Tq, D]);
  const k = f32(keys, [B, Hkv, T, D]), v = f32(values, [B, Hkv, T, D]);
  const merged = await gaussianMerge(k, v, f32(scores, [B, Hkv, T]), { threshold: 0.999, protect: { first: 0 } });
  const lengths = await merged.lengths.data();
  assert.ok(Math.max(...lengths) < T / 2, `runs were found (lengths ${lengths})`);
  const dense = await attention(q, k, v);
  const compressed = await attention(q, merged.keys, merged.values, { kvLengths: merged.lengths, logWeights: await merged.logWeights() });
  assert.ok(toleranceRatio(await compressed.data(), await dense.data(), 1e-5, 1e-5) <= 1);
  merged.dispose();
  assert.ok(merged.keys.isDisposed && merged.assign.isDisposed);
});

test('attentionScores: column sums of the window softmax, summed over the GQA group', async () => {
  const random = rng(21);
  for (const [B, Hq, Hkv, Tq, Tk, D, window, causal] of [[1, 4, 2, 5, 9, 8, 3, true], [2, 3, 1, 1, 30, 5, 1, true], [1, 2, 2, 12, 7, 4, 12, false], [1, 2, 1, 12, 7, 4, 12, true]] as const) {
    const q = randomArray(random, B * Hq * Tq * D), k = randomArray(random, B * Hkv * Tk * D);
    const scale = 1 / Math.sqrt(D);
    const scores = await (await attentionScores(f32(q, [B, Hq, Tq, D]), f32(k, [B, Hkv, Tk, D]), { window, causal })).data();
    const expected = new Float64Array(B * Hkv * Tk);
    for (let b = 0; b < B; b++) for (let h = 0; h < Hq; h++) for (let i = Tq - window; i < Tq; i++) {
      const g = Math.floor(h / (Hq / Hkv));
      const visible = causal ? Math.max(0, Math.min(Tk, i + Tk - Tq + 1)) : Tk;
      const logits = [...Array(visible).keys()].map((j) => {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[((b * Hq + h) * Tq + i) * D + d]! * k[((b * Hkv + g) * Tk + j) * D + d]!;
        return dot * scale;
      });
      const max = Math.max(...logits);
      const denom = logits.reduce((acc, x) => acc + Math.exp(x - max), 0);
      logits.forEach((x, j) => (expected[(b * Hkv + g) * Tk + j] = expected[(b * Hkv + g) * Tk + j]! + Math.exp(x - max) / denom));
    }
    assert.ok(toleranceRatio(scores, expected, 1e-6, 1e-5) <= 1, `[${B},${Hq},${Hkv},${Tq},${Tk},${D}] w${window}`);
  }
});

test('real KV dumps: 50%/25% budgets hold exactly and the structure is sound', async () => {
  const dump = kvDumps()[0];
  if (!dump) return; // ../shared absent: covered by the random cases above
  const q = readNpy(layerFile(dump.dir, 3, 'q')), k = readNpy(layerFile(dump.dir, 3, 'k')), v = readNpy(layerFile(dump.dir, 3, 'v'));
  const scores = await attentionScores(q, k, { window: 64 });
  const keys = await k.data(), scoreData = await scores.data();
  for (const budget of [256, 128]) {
    const o: GaussianMergeOptions = { budget, protect: { first: 1, recent: 16, topScore: 16 } };
    const merged = await gaussianMerge(k, v, scores, o);
    await checkStructure(keys as Float32Array, scoreData, [...k.shape], o, merged, { first: 1, recent: 16, top: 16 });
  }
});

const bad: [string, () => Promise<unknown>, string][] = [
  ['threshold and budget together', () => gaussianMerge(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(4), [1, 1, 4]), { threshold: 0.5, budget: 2 }), 'E_RANGE'],
  ['budget 0', () => gaussianMerge(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(4), [1, 1, 4]), { budget: 0 }), 'E_RANGE'],
  ['budget 2.5', () => gaussianMerge(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(4), [1, 1, 4]), { budget: 2.5 }), 'E_RANGE'],
  ['budget below the protected tokens', () => gaussianMerge(f32(new Float32Array(8).fill(1), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(4), [1, 1, 4]), { budget: 1, protect: { first: 2 } }), 'E_RANGE'],
  ['sigma negative', () => gaussianMerge(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(4), [1, 1, 4]), { sigma: -1 }), 'E_RANGE'],
  ['valueScale unknown', () => gaussianMerge(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(4), [1, 1, 4]), { valueScale: 'sum' as 'mean' }), 'E_RANGE'],
  ['protect unknown key', () => gaussianMerge(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(4), [1, 1, 4]), { protect: { sink: 1 } as never }), 'E_RANGE'],
  ['scores wrong shape', () => gaussianMerge(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(3), [1, 1, 3])), 'E_SHAPE'],
  ['scores i32', () => gaussianMerge(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), Tensor.from(new Int32Array(4), [1, 1, 4])), 'E_DTYPE'],
  ['values shape differs', () => gaussianMerge(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 2, 4]), f32(new Float32Array(4), [1, 1, 4])), 'E_SHAPE'],
  ['keys rank 3', () => gaussianMerge(f32(new Float32Array(8), [1, 4, 2]), f32(new Float32Array(8), [1, 4, 2]), f32(new Float32Array(4), [1, 1, 4])), 'E_SHAPE'],
  ['window 0', () => attentionScores(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), { window: 0 }), 'E_RANGE'],
  ['window above Tq', () => attentionScores(f32(new Float32Array(8), [1, 1, 4, 2]), f32(new Float32Array(8), [1, 1, 4, 2]), { window: 5 }), 'E_RANGE'],
  ['scores with GQA mismatch', () => attentionScores(f32(new Float32Array(24), [1, 3, 4, 2]), f32(new Float32Array(16), [1, 2, 4, 2])), 'E_SHAPE'],
];
badInputTests(test, bad);

test.run();
