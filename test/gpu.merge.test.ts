// GPU suite for the merge family: CUDA against the CPU reference. Integer outputs (assign,
// lengths, sizes, pivots) must be identical: both sides compute link cosines with the same
// f32 FMA chain and IEEE sqrt/divide (csrc/core/merge.h). Floats: the CPU sums in f64, CUDA
// in f32; merged keys/values within 1e-5 relative + 1e-6 absolute for f32 inputs and one
// output rounding (2^-8 relative for f16/bf16, plus 1e-3) otherwise; attention scores within
// 1e-5 relative + 1e-6 absolute.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attentionScores, gaussianMerge, Tensor, fromBF16, fromF16, type GaussianMergeOptions } from '../lib/index.js';
import { readNpy } from '../bench/common/npy.js';
import { kvDumps, layerFile } from '../bench/common/shared-data.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { floatTensor, gpuSuite } from './helpers/gpu.js';
import { toleranceRatio } from './helpers/reference.js';

const gpu = gpuSuite('GPU merge suite');



async function asFloats(t: Tensor): Promise<Float32Array> {
  const data = await t.data();
  return t.dtype === 'f16' ? fromF16(data) : t.dtype === 'bf16' ? fromBF16(data) : (data as Float32Array);
}

async function compareMerge(keys: Tensor, values: Tensor, scores: Tensor, options: GaussianMergeOptions, label: string) {
  const [gk, gv, gs] = await Promise.all([keys.to('cuda'), values.to('cuda'), scores.to('cuda')]);
  const cpu = await gaussianMerge(keys, values, scores, options).catch((error: unknown) => error as Error);
  const cuda = await gaussianMerge(gk, gv, gs, options).catch((error: unknown) => error as Error);
  if (cpu instanceof Error || cuda instanceof Error) {
    // an unreachable budget must be refused on both devices, with the same code
    assert.ok(cpu instanceof Error && cuda instanceof Error, `${label}: only one device failed: ${cpu instanceof Error ? cpu : cuda}`);
    assert.is((cuda as { code?: string }).code, (cpu as { code?: string }).code, label);
    for (const t of [gk, gv, gs]) t.dispose();
    return;
  }
  for (const name of ['assign', 'lengths', 'sizes', 'pivots'] as const)
    assert.equal(Array.from(await cuda[name].data()), Array.from(await cpu[name].data()), `${label}: ${name}`);
  const [atol, rtol] = keys.dtype === 'f32' ? [1e-6, 1e-5] : [1e-3, 2 ** -8];
  for (const name of ['keys', 'values'] as const) {
    const ratio = toleranceRatio(await asFloats(cuda[name]), await asFloats(cpu[name]), atol, rtol);
    assert.ok(ratio <= 1, `${label}: ${name} off by ${ratio} x tolerance`);
  }
  cuda.dispose();
  for (const t of [gk, gv, gs]) t.dispose();
}

gpu('gaussianMerge: random shapes, dtypes, both modes, protection; integers exact', async () => {
  const random = rng(31);
  for (let trial = 0; trial < 30; trial++) {
    const B = randomInt(random, 1, 2), H = randomInt(random, 1, 4), T = randomInt(random, 1, trial < 25 ? 300 : 5000);
    const D = [1, 7, 8, 64, 128, 256][randomInt(random, 0, 5)]!, dtype = (['f32', 'f16', 'bf16'] as const)[trial % 3]!;
    const shape = [B, H, T, D];
    // runs of near-copies so that links sit on both sides of the threshold
    const base = randomArray(random, B * H * T * D);
    for (let i = D; i < base.length; i++) if (random() < 0.7 && i % (T * D) >= D) base[i] = base[i - D]! + 0.2 * (random() - 0.5);
    const keys = floatTensor(base, shape, dtype), values = floatTensor(randomArray(random, B * H * T * D), shape, dtype);
    const scores = Tensor.from(Float32Array.from({ length: B * H * T }, () => Math.round(random() * 50) / 50), [B, H, T]);
    const protect = { first: randomInt(random, 0, 2), recent: randomInt(random, 0, 4), topScore: randomInt(random, 0, 4) };
    const options: GaussianMergeOptions[] = [
      { threshold: [0.5, 0.75, 0.9][trial % 3]!, protect, sigma: trial % 2 ? 'adaptive' : 5 },
      { budget: Math.max(1, Math.round(T * 0.9)), protect: { first: protect.first }, valueScale: 'paper' },
    ];
    for (const o of options) await compareMerge(keys, values, scores, o, `${JSON.stringify({ B, H, T, D, dtype })} ${JSON.stringify(o)}`);
  }
});

gpu('attentionScores: CUDA matches the CPU', async () => {
  const random = rng(41);
  for (const [B, Hq, Hkv, Tq, Tk, D, window] of [[1, 32, 8, 64, 2000, 128, 32], [2, 4, 2, 7, 30, 8, 7], [1, 3, 1, 1, 900, 64, 1], [1, 8, 8, 40, 40, 256, 16]] as const) {
    for (const dtype of ['f32', 'f16'] as const) {
      const q = floatTensor(randomArray(random, B * Hq * Tq * D), [B, Hq, Tq, D], dtype);
      const k = floatTensor(randomArray(random, B * Hkv * Tk * D), [B, Hkv, Tk, D], dtype);
      const cpu = await attentionScores(q, k, { window });
      const [gq, gk] = await Promise.all([q.to('cuda'), k.to('cuda')]);
      const cuda = await attentionScores(gq, gk, { window });
      const ratio = toleranceRatio(await cuda.data(), await cpu.data(), 1e-6, 1e-5);
      assert.ok(ratio <= 1, `[${B},${Hq},${Hkv},${Tq},${Tk},${D}] ${dtype}: ${ratio}`);
      for (const t of [gq, gk, cuda]) t.dispose();
    }
  }
});

gpu('real KV dumps: merges on CUDA equal the CPU at 50/25/12.5% and by threshold', async () => {
  for (const { story, dir, layers } of kvDumps()) {
    for (const layer of layers) {
      const q = readNpy(layerFile(dir, layer, 'q')), k = readNpy(layerFile(dir, layer, 'k')), v = readNpy(layerFile(dir, layer, 'v'));
      const scores = await attentionScores(q, k, { window: 64 });
      for (const o of [{ budget: 0.5 }, { budget: 0.25, protect: { topScore: 20 } }, { budget: 0.125 }, { threshold: 0.8 }] as GaussianMergeOptions[])
        await compareMerge(k, v, scores, o, `${story} layer ${layer} ${JSON.stringify(o)}`);
    }
  }
});

test.run();
