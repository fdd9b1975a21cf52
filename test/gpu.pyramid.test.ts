// GPU suite for pyramid sparse attention: every stage on CUDA against the CPU reference
// (csrc/core/pyramid.h). Pooled tensors, level maps, lists and counts must be identical
// (the assignment from one shared importance tensor); importance within
// |dP| <= 1e-4 + 1e-2 |P|; attention within 1e-5 + 1e-5 |ref| for f32 (lse likewise), else
// 1e-3 + 1e-2 |ref| (lse 1e-3 + 1e-3 |ref|).
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import {
  attention, fromBF16, fromF16, pyramidAssign, pyramidAttention, pyramidImportance, pyramidPool, PyramidLevels, PyramidMask, Tensor, type MaskGranularity, type PyramidAssignOptions, type PyramidBounds,
} from '../lib/index.js';
import { readNpy } from '../bench/common/npy.js';
import { kvDumps, layerFile } from '../bench/common/shared-data.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { floatTensor, gpuSuite, type FloatDType } from './helpers/gpu.js';
import { toleranceRatio } from './helpers/reference.js';

const gpu = gpuSuite('GPU pyramid suite');

const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];
const BLOCKS = [8, 16, 32, 64, 128];
const QUERY_BLOCKS = [16, 32, 64, 128];


/** Values as numbers (f16/bf16 widened exactly), for tolerance checks. */
async function numbers(t: Tensor): Promise<Float32Array> {
  const data = await t.data();
  if (t.dtype === 'f16') return fromF16(data as Uint16Array);
  if (t.dtype === 'bf16') return fromBF16(data as Uint16Array);
  return Float32Array.from(data as ArrayLike<number>);
}

async function bits(t: Tensor): Promise<number[]> {
  return Array.from(await t.data());
}

interface Shape { B: number; Hq: number; Hkv: number; Tq: number; Tk: number; D: number; block: number; queryBlock: number }

function randomShape(random: () => number, trial: number): Shape {
  const Hkv = randomInt(random, 1, 2), G = [1, 2, 3][trial % 3]!;
  const block = BLOCKS[trial % BLOCKS.length]!, queryBlock = QUERY_BLOCKS[(trial >> 1) % QUERY_BLOCKS.length]!;
  const Tk = randomInt(random, 1, block * 5 + 3);
  // Tq below, equal to and above Tk (queries before every key see nothing when causal)
  const Tq = [Tk, randomInt(random, 1, Tk), Tk + randomInt(random, 1, 40)][trial % 3]!;
  const D = [8, 24, 40, 64, 72, 128, 136, 256][trial % 8]!;
  return { B: randomInt(random, 1, 2), Hq: Hkv * G, Hkv, Tq, Tk, D, block, queryBlock };
}

function qkv(random: () => number, s: Shape, dtype: FloatDType, scale = 1) {
  return {
    q: floatTensor(randomArray(random, s.B * s.Hq * s.Tq * s.D, scale), [s.B, s.Hq, s.Tq, s.D], dtype),
    k: floatTensor(randomArray(random, s.B * s.Hkv * s.Tk * s.D, scale), [s.B, s.Hkv, s.Tk, s.D], dtype),
    v: floatTensor(randomArray(random, s.B * s.Hkv * s.Tk * s.D), [s.B, s.Hkv, s.Tk, s.D], dtype),
  };
}

const onGpu = (...ts: Tensor[]) => Promise.all(ts.map((t) => t.to('cuda')));

async function maskOnGpu(m: PyramidMask): Promise<PyramidMask> {
  const [levelMap, lists, counts] = await onGpu(m.levelMap, m.lists, m.counts);
  return new PyramidMask(levelMap as Tensor<'u8'>, lists as Tensor<'i32'>, counts as Tensor<'i32'>, m.block, m.queryBlock, m.qTokens,
    m.kvTokens, m.causal);
}

async function levelsOnGpu(l: PyramidLevels): Promise<PyramidLevels> {
  const keys = (await onGpu(...l.keys)) as [Tensor, Tensor, Tensor], values = (await onGpu(...l.values)) as [Tensor, Tensor, Tensor];
  return new PyramidLevels(l.block, l.tokens, keys, values);
}

async function expectSameMask(cuda: PyramidMask, cpu: PyramidMask, label: string) {
  for (const name of ['levelMap', 'lists', 'counts'] as const) assert.equal(await bits(cuda[name]), await bits(cpu[name]), `${label}: ${name}`);
}

function attendTolerance(inDType: FloatDType, outDType: FloatDType) {
  return inDType === 'f32' && outDType === 'f32' ? { out: [1e-5, 1e-5], lse: [1e-5, 1e-5] } : { out: [1e-3, 1e-2], lse: [1e-3, 1e-3] };
}

async function expectClose(actual: Tensor, expected: Tensor, [atol, rtol]: number[], label: string) {
  const ratio = toleranceRatio(await numbers(actual), await numbers(expected), atol!, rtol!);
  assert.ok(ratio <= 1, `${label}: off by ${ratio} x tolerance`);
}

// ---- stages ---------------------------------------------------------------------------------

gpu('pyramidPool: CUDA equals the CPU bit for bit (every block size, dtype, partial last blocks)', async () => {
  const random = rng(101);
  for (let trial = 0; trial < 30; trial++) {
    const s = randomShape(random, trial), dtype = DTYPES[trial % 3]!;
    const { k, v } = qkv(random, s, dtype);
    using cpu = await pyramidPool(k, v, { block: s.block });
    const [gk, gv] = await onGpu(k, v);
    using cuda = await pyramidPool(gk!, gv!, { block: s.block });
    for (let i = 0; i < 3; i++) {
      assert.equal(await bits(cuda.keys[i]!), await bits(cpu.keys[i]!), `${JSON.stringify(s)} ${dtype}: keys level ${2 << i}`);
      assert.equal(await bits(cuda.values[i]!), await bits(cpu.values[i]!), `${JSON.stringify(s)} ${dtype}: values level ${2 << i}`);
    }
  }
});

gpu('pyramidImportance: CUDA within 1e-4 + 1e-2|P| of the CPU (sampling, seeds, GQA granularities, causal, Tq != Tk)', async () => {
  const random = rng(202);
  for (let trial = 0; trial < 36; trial++) {
    const s = randomShape(random, trial), dtype = DTYPES[trial % 3]!;
    const { q, k } = qkv(random, s, dtype, 1.5);
    const options = {
      block: s.block, queryBlock: s.queryBlock, causal: trial % 2 === 0, sampling: [0.25, 1, 0.1][trial % 3]!, seed: trial * 7919,
      maskGranularity: (trial % 4 < 2 ? 'qhead' : 'kvhead') as MaskGranularity,
    };
    const cpu = await pyramidImportance(q, k, options);
    const [gq, gk] = await onGpu(q, k);
    const cuda = await pyramidImportance(gq!, gk!, options);
    assert.equal(cuda.shape, cpu.shape);
    await expectClose(cuda, cpu, [1e-4, 1e-2], `${JSON.stringify(s)} ${dtype} ${JSON.stringify(options)}`);
  }
});

/** Importance with ties, zeros, negatives and NaN: the assignment must order them as the CPU does. */
function awkwardImportance(random: () => number, rows: number, Nk: number): Float32Array {
  const P = new Float32Array(rows * Nk);
  for (let i = 0; i < P.length; i++) {
    const u = random();
    P[i] = u < 0.1 ? 0 : u < 0.15 ? -u : u < 0.18 ? NaN : u < 0.3 ? 0.25 : Math.fround(random());
  }
  return P;
}

gpu('pyramidAssign: CUDA level maps, lists and counts equal the CPU from one importance tensor (both modes, forced, causal)', async () => {
  const random = rng(303);
  const bounds: PyramidBounds[] = [[0.1, 0.15, 0.15, 0.35], [0.4, 0.5, 0.6, 0.8], [0, 0, 0, 1], [1, 1, 1, 1], [0.2, 0.2, 0.5, 0.5]];
  for (let trial = 0; trial < 40; trial++) {
    const block = BLOCKS[trial % 5]!, queryBlock = QUERY_BLOCKS[trial % 4]!;
    // up to 4096 key blocks (the largest sort) in a few trials
    const kvTokens = trial % 10 === 9 ? 4096 * block - randomInt(random, 0, block - 1) : randomInt(random, 1, block * 40);
    const qTokens = [kvTokens, randomInt(random, 1, kvTokens), kvTokens + randomInt(random, 1, 300)][trial % 3]!;
    const B = randomInt(random, 1, 2), Hm = trial % 10 === 9 ? 1 : randomInt(random, 1, 3);
    const Mq = Math.ceil(qTokens / queryBlock), Nk = Math.ceil(kvTokens / block);
    const rows = trial % 10 === 9 ? Math.min(Mq, 3) : Mq;
    const importance = Tensor.from(awkwardImportance(random, B * Hm * rows, Nk), [B, Hm, rows, Nk]);
    const options: PyramidAssignOptions = {
      block, queryBlock, qTokens: rows * queryBlock < qTokens ? rows * queryBlock : qTokens, kvTokens,
      mode: trial % 2 === 0 ? 'topk' : 'threshold', bounds: bounds[trial % bounds.length]!, causal: trial % 3 !== 1,
      forceSink: trial % 4 !== 3, forceDiagonal: trial % 5 !== 4, minFull: [0, 0.06, 0.5][trial % 3]!,
    };
    using cpu = await pyramidAssign(importance, options);
    using cuda = await pyramidAssign(await importance.to('cuda'), options);
    await expectSameMask(cuda, cpu, `trial ${trial} ${JSON.stringify({ B, Hm, rows, Nk, ...options })}`);
  }
});

gpu('pyramidAttention attend stage: CUDA within tolerance of the CPU on one mask and one set of levels', async () => {
  const random = rng(404);
  for (let trial = 0; trial < 48; trial++) {
    const s = randomShape(random, trial), dtype = DTYPES[trial % 3]!;
    const outDtype = trial % 7 === 0 ? 'f32' : dtype;
    const causal = trial % 2 === 1, maskGranularity: MaskGranularity = trial % 4 < 2 ? 'qhead' : 'kvhead';
    const { q, k, v } = qkv(random, s, dtype, 1.5);
    const common = { block: s.block, queryBlock: s.queryBlock, causal };
    const importance = await pyramidImportance(q, k, { ...common, maskGranularity, seed: trial });
    using mask = await pyramidAssign(importance, { ...common, qTokens: s.Tq, kvTokens: s.Tk, bounds: [0.2, 0.4, 0.6, 0.85] });
    using levels = await pyramidPool(k, v, { block: s.block });
    const cpu = await pyramidAttention(q, k, v, { ...common, mask, levels, returnLse: true, outDtype });
    const [gq, gk, gv] = await onGpu(q, k, v);
    using gmask = await maskOnGpu(mask);
    using glevels = await levelsOnGpu(levels);
    const cuda = await pyramidAttention(gq!, gk!, gv!, { ...common, mask: gmask, levels: glevels, returnLse: true, outDtype });
    const label = `${JSON.stringify(s)} ${dtype} -> ${outDtype} causal ${causal} ${maskGranularity}`;
    const tolerance = attendTolerance(dtype, outDtype);
    assert.is(cuda.output.dtype, cpu.output.dtype);
    await expectClose(cuda.output, cpu.output, tolerance.out, `${label}: output`);
    await expectClose(cuda.lse!, cpu.lse!, tolerance.lse, `${label}: lse`);
    assert.is(cuda.density, cpu.density, `${label}: density`);
  }
});

gpu('pyramidAttention on CUDA skips list ids outside 0..Nk-1 (the C entry checks them only on the CPU)', async () => {
  const random = rng(505);
  const s: Shape = { B: 1, Hq: 2, Hkv: 1, Tq: 96, Tk: 200, D: 64, block: 32, queryBlock: 32 };
  for (const dtype of DTYPES) {
    const { q, k, v } = qkv(random, s, dtype);
    const common = { block: s.block, queryBlock: s.queryBlock, causal: false };
    const importance = await pyramidImportance(q, k, { ...common, maskGranularity: 'kvhead' });
    using mask = await pyramidAssign(importance, { ...common, qTokens: s.Tq, kvTokens: s.Tk, bounds: [0.5, 0.7, 0.85, 1] });
    using levels = await pyramidPool(k, v, { block: s.block });
    // every row: its last listed block is replaced by a bad id on the GPU and dropped on the CPU
    const lists = Int32Array.from(await mask.lists.data()), counts = Int32Array.from(await mask.counts.data());
    const Nk = mask.lists.shape[3]!, rows = lists.length / Nk;
    const badLists = lists.slice(), shortCounts = counts.slice();
    for (let r = 0; r < rows; r++) {
      const used = counts.slice(r * 4, r * 4 + 4).reduce((x, y) => x + y, 0);
      const level = [3, 2, 1, 0].find((i) => counts[r * 4 + i]! > 0)!;
      badLists[r * Nk + used - 1] = r % 2 === 0 ? Nk + r : -1 - r;
      shortCounts[r * 4 + level]! -= 1;
    }
    const shape = [...mask.lists.shape];
    using cpuMask = new PyramidMask(mask.levelMap, Tensor.from(lists, shape, 'i32'), Tensor.from(shortCounts, mask.counts.shape, 'i32'),
      mask.block, mask.queryBlock, mask.qTokens, mask.kvTokens, mask.causal);
    const cpu = await pyramidAttention(q, k, v, { ...common, mask: cpuMask, levels, returnLse: true });
    using gpuMask = await maskOnGpu(new PyramidMask(mask.levelMap, Tensor.from(badLists, shape, 'i32'), mask.counts, mask.block, mask.queryBlock,
      mask.qTokens, mask.kvTokens, mask.causal));
    const [gq, gk, gv] = await onGpu(q, k, v);
    using glevels = await levelsOnGpu(levels);
    const cuda = await pyramidAttention(gq!, gk!, gv!, { ...common, mask: gpuMask, levels: glevels, returnLse: true });
    const tolerance = attendTolerance(dtype, dtype);
    await expectClose(cuda.output, cpu.output, tolerance.out, `${dtype}: output`);
    await expectClose(cuda.lse!, cpu.lse!, tolerance.lse, `${dtype}: lse`);
  }
});

gpu('pyramidAttention fused on CUDA: all level 1 equals dense attention; the CUDA importance assigns as the CPU would', async () => {
  const random = rng(606);
  for (let trial = 0; trial < 12; trial++) {
    const s = randomShape(random, trial), dtype = DTYPES[trial % 3]!, causal = trial % 2 === 0;
    const { q, k, v } = qkv(random, s, dtype);
    const [gq, gk, gv] = await onGpu(q, k, v);
    const common = { block: s.block, queryBlock: s.queryBlock, causal };
    const label = `${JSON.stringify(s)} ${dtype} causal ${causal}`;
    const full = await pyramidAttention(gq!, gk!, gv!, { ...common, bounds: [1, 1, 1, 1], maskGranularity: trial % 2 ? 'kvhead' : 'qhead' });
    const dense = await attention(q, k, v, { causal });
    await expectClose(full.output, dense, attendTolerance(dtype, dtype).out, `${label}: all full vs dense`);
    // the GPU's importance, assigned on both devices, gives the same mask
    const importance = await pyramidImportance(gq!, gk!, common);
    const assign = { ...common, qTokens: s.Tq, kvTokens: s.Tk };
    using cuda = await pyramidAssign(importance, assign);
    using cpu = await pyramidAssign(await importance.to('cpu'), assign);
    await expectSameMask(cuda, cpu, label);
  }
});

gpu('4096 key blocks (the most supported): every stage on CUDA matches the CPU (largest sort, shared rows, longest lists)', async () => {
  const random = rng(707);
  for (const dtype of DTYPES) {
    // blocks of 8 keys, a partial last one; few queries keep the CPU reference quick
    const s: Shape = { B: 1, Hq: 2, Hkv: 1, Tq: 40, Tk: 4096 * 8 - 3, D: 8, block: 8, queryBlock: 16 };
    const { q, k, v } = qkv(random, s, dtype, 1.5);
    const common = { block: s.block, queryBlock: s.queryBlock, causal: true };
    const [gq, gk, gv] = await onGpu(q, k, v);
    for (const maskGranularity of ['qhead', 'kvhead'] as const) {
      const importance = await pyramidImportance(q, k, { ...common, maskGranularity, sampling: 1 });
      await expectClose(await pyramidImportance(gq!, gk!, { ...common, maskGranularity, sampling: 1 }), importance, [1e-4, 1e-2],
        `${dtype} ${maskGranularity}: importance`);
      for (const mode of ['topk', 'threshold'] as const) {
        const assign = { ...common, qTokens: s.Tq, kvTokens: s.Tk, mode };
        using mask = await pyramidAssign(importance, assign);
        using gmask = await pyramidAssign(await importance.to('cuda'), assign);
        await expectSameMask(gmask, mask, `${dtype} ${maskGranularity} ${mode}`);
        using levels = await pyramidPool(k, v, { block: s.block });
        using glevels = await pyramidPool(gk!, gv!, { block: s.block });
        const cpu = await pyramidAttention(q, k, v, { ...common, mask, levels, returnLse: true });
        const cuda = await pyramidAttention(gq!, gk!, gv!, { ...common, mask: gmask, levels: glevels, returnLse: true });
        const tolerance = attendTolerance(dtype, dtype);
        await expectClose(cuda.output, cpu.output, tolerance.out, `${dtype} ${maskGranularity} ${mode}: output`);
        await expectClose(cuda.lse!, cpu.lse!, tolerance.lse, `${dtype} ${maskGranularity} ${mode}: lse`);
      }
    }
  }
});

// ---- real tensors -----------------------------------------------------------------------------

const dumps = kvDumps();
if (dumps.length === 0) test.skip('GPU pyramid on real KV dumps (../shared/data/kv is absent)', () => {});

for (const { story, dir, layers } of dumps.slice(0, 1)) {
  gpu(`${story}: every stage on CUDA matches the CPU on every layer (D = 8, kvhead and qhead masks)`, async () => {
    for (const layer of layers) {
      const q = readNpy(layerFile(dir, layer, 'q')), k = readNpy(layerFile(dir, layer, 'k')), v = readNpy(layerFile(dir, layer, 'v'));
      for (const dtype of DTYPES) {
        const [cq, ck, cv] = await Promise.all([q, k, v].map(async (t) => floatTensor((await t.data()) as Float32Array, t.shape, dtype)));
        const [dq, dk, dv] = await onGpu(cq!, ck!, cv!);
        const label = `layer ${layer} ${dtype}`;
        for (const maskGranularity of ['kvhead', 'qhead'] as const) {
          const common = { block: 16, queryBlock: 32, causal: true };
          using levels = await pyramidPool(ck!, cv!, { block: 16 });
          using glevels = await pyramidPool(dk!, dv!, { block: 16 });
          for (let i = 0; i < 3; i++) assert.equal(await bits(glevels.keys[i]!), await bits(levels.keys[i]!), `${label}: pooled keys`);
          const importance = await pyramidImportance(cq!, ck!, { ...common, maskGranularity });
          await expectClose(await pyramidImportance(dq!, dk!, { ...common, maskGranularity }), importance, [1e-4, 1e-2], `${label}: importance`);
          const assign = { ...common, qTokens: q.shape[2]!, kvTokens: k.shape[2]! };
          using mask = await pyramidAssign(importance, assign);
          using gmask = await pyramidAssign(await importance.to('cuda'), assign);
          await expectSameMask(gmask, mask, label);
          const cpu = await pyramidAttention(cq!, ck!, cv!, { ...common, mask, levels, returnLse: true });
          const cuda = await pyramidAttention(dq!, dk!, dv!, { ...common, mask: gmask, levels: glevels, returnLse: true });
          const tolerance = attendTolerance(dtype, dtype);
          await expectClose(cuda.output, cpu.output, tolerance.out, `${label} ${maskGranularity}: output`);
          await expectClose(cuda.lse!, cpu.lse!, tolerance.lse, `${label} ${maskGranularity}: lse`);
        }
      }
    }
  });
}

test.run();
