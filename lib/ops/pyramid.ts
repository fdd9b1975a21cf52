/**
 * Pyramid sparse attention (after PSA): each query block attends to every key block at a
 * pooling level (1, 2, 4, 8 keys per pooled token, or skipped) chosen by block importance.
 * Four stages, each usable alone: pyramidPool, pyramidImportance, pyramidAssign and the
 * fused pyramidAttention. Definitions: csrc/core/pyramid.h.
 */
import { describe, fail, nativeCall } from '../errors.js';
import { native } from '../native.js';
import { Tensor, toNative } from '../tensor.js';
import { checkOptions, checkTensorArg } from './args.js';
import type { FloatDType } from './attention.js';

/** Pooling levels 2, 4, 8 (level 1 is the raw keys/values). */
export const PYRAMID_LEVELS = [2, 4, 8] as const;

export type PyramidMode = 'topk' | 'threshold';
export type MaskGranularity = 'qhead' | 'kvhead';

/** Ends of the level ranges, in order: level 1, 2, 4, 8 (the rest is skipped). */
export type PyramidBounds = readonly [number, number, number, number];

/** PSA's library default ("~85% sparsity"): ranks 0-10% full, 10-15% level 2, 15-35% level 8. */
export const DEFAULT_TOPK_BOUNDS: PyramidBounds = [0.1, 0.15, 0.15, 0.35];
/** PSA's Wan2.1-14B preset: 40% of the importance mass full, then 50/60/80% for 2/4/8. */
export const DEFAULT_THRESHOLD_BOUNDS: PyramidBounds = [0.4, 0.5, 0.6, 0.8];

export interface PyramidBlockOptions {
  /** keys per block (mask column): 8, 16, 32, 64 or 128; default 64 */
  block?: number;
  /** queries per block (mask row): 16, 32, 64 or 128; default 128 */
  queryBlock?: number;
}

export interface PyramidImportanceOptions extends PyramidBlockOptions {
  causal?: boolean;
  /** logit scale; default 1 / sqrt(headDim) */
  scale?: number;
  /** fraction of each block's queries and keys sampled, in (0, 1]; default 0.25 (PSA); 1 reads every row */
  sampling?: number;
  /** picks the sampled rows (a counter-based hash; no global RNG); uint32, default 0 */
  seed?: number;
  /** one mask per query head (default) or per KV head, shared by its query group */
  maskGranularity?: MaskGranularity;
}

export interface PyramidAssignOptions extends PyramidBlockOptions {
  /** 'topk': bounds are fractions of the row's visible blocks by rank; 'threshold': of its cumulative importance */
  mode?: PyramidMode;
  /** ends of the level 1, 2, 4, 8 ranges, non-decreasing in [0, 1]; defaults per mode above */
  bounds?: PyramidBounds;
  /** threshold mode: the first floor(minFull * N) + 1 ranked blocks stay full; default 0.06 (PSA), 0 turns it off */
  minFull?: number;
  /** key block 0 (the attention sink) is always full; default true */
  forceSink?: boolean;
  /** key blocks sharing a position with the query block are always full; default true */
  forceDiagonal?: boolean;
  /** causal: blocks past the query block's last position are skipped and not ranked */
  causal?: boolean;
  /** query and key token counts (block extents and positions); default: whole blocks */
  qTokens?: number;
  kvTokens?: number;
}

export interface PyramidAttentionOptions extends PyramidImportanceOptions, Omit<PyramidAssignOptions, 'qTokens' | 'kvTokens'> {
  /** also return the log-sum-exp of each query's logits, f32 [B, Hq, Tq] */
  returnLse?: boolean;
  /** output dtype; default q's dtype */
  outDtype?: FloatDType;
  /** a mask from pyramidAssign to use instead of computing importance and levels */
  mask?: PyramidMask;
  /** pooled levels from pyramidPool of these k, v, instead of pooling them again */
  levels?: PyramidLevels;
}

export interface PyramidAttentionResult {
  output: Tensor;
  /** with returnLse: natural log of each query's softmax denominator (-Infinity when it sees nothing) */
  lse?: Tensor<'f32'>;
  /** the fraction of dense attention work done (see PyramidMask.density) */
  density: number;
}

function integerIn(value: unknown, lo: number, hi: number, arg: string): number {
  if (!Number.isInteger(value) || (value as number) < lo || (value as number) > hi)
    fail('E_RANGE', `${arg}: expected an integer in ${lo}..${hi}, got ${describe(value)}`);
  return value as number;
}

function powerOfTwo(value: unknown, lo: number, hi: number, arg: string, unit: string): number {
  if (!Number.isInteger(value) || (value as number) < lo || (value as number) > hi || ((value as number) & ((value as number) - 1)) !== 0) {
    const allowed: number[] = [];
    for (let x = lo; x <= hi; x *= 2) allowed.push(x);
    fail('E_RANGE', `${arg}: expected ${allowed.slice(0, -1).join(', ')} or ${hi} ${unit}, got ${describe(value)}`);
  }
  return value as number;
}

function flag(value: unknown, fallback: boolean, arg: string): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') fail('E_RANGE', `${arg}: expected a boolean, got ${describe(value)}`);
  return value;
}

function blocksOf(options: PyramidBlockOptions): { block: number; queryBlock: number } {
  return {
    block: powerOfTwo(options.block ?? 64, 8, 128, 'block', 'tokens'),
    queryBlock: powerOfTwo(options.queryBlock ?? 128, 16, 128, 'queryBlock', 'rows'),
  };
}

function scaleOf(scale: unknown, headDim: number): number {
  const value = scale ?? 1 / Math.sqrt(headDim);
  if (typeof value !== 'number' || !Number.isFinite(value)) fail('E_RANGE', `scale: expected a finite number, got ${describe(value)}`);
  return value;
}

/** The pooled keys/values of levels 2, 4, 8 (csrc/core/pyramid.h step 1). */
export class PyramidLevels implements Disposable {
  constructor(
    /** keys per block */
    readonly block: number,
    /** Tk: raw tokens pooled */
    readonly tokens: number,
    /** [B, Hkv, Nk * block / L, D] for L = 2, 4, 8, the input dtype */
    readonly keys: readonly [Tensor, Tensor, Tensor],
    readonly values: readonly [Tensor, Tensor, Tensor],
  ) {}

  /** How many raw tokens pooled token t of `level` holds (less than level only in a partial last block). */
  count(level: number, t: number): number {
    return Math.min(level, Math.max(0, this.tokens - t * level));
  }

  /** count() for every pooled token of a level, i32. */
  counts(level: (typeof PYRAMID_LEVELS)[number]): Int32Array {
    const rows = this.keys[PYRAMID_LEVELS.indexOf(level)]!.shape[2]!;
    return Int32Array.from({ length: rows }, (_, t) => this.count(level, t));
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Per mask row (b, head, query block): the level of every key block and the lists the kernel walks. */
export class PyramidMask implements Disposable {
  constructor(
    /** u8 [B, Hm, Mq, Nk]: 0 skipped, else the pooling level 1, 2, 4 or 8 */
    readonly levelMap: Tensor<'u8'>,
    /** i32 [B, Hm, Mq, Nk]: assigned key blocks grouped by level 1, 2, 4, 8, ascending in a level, then -1 */
    readonly lists: Tensor<'i32'>,
    /** i32 [B, Hm, Mq, 4]: blocks per level 1, 2, 4, 8 */
    readonly counts: Tensor<'i32'>,
    readonly block: number,
    readonly queryBlock: number,
    readonly qTokens: number,
    readonly kvTokens: number,
    readonly causal: boolean,
  ) {}

  /**
   * Fraction of dense work: over all rows, sum over assigned blocks of queries * pooled tokens
   * divided by the sum over visible blocks of queries * keys (block granularity, as a kernel works).
   * Reads only the small counts when every key block is whole, the level map otherwise.
   */
  async density(): Promise<number> {
    const [B, Hm, Mq, Nk] = this.levelMap.shape as [number, number, number, number];
    const whole = this.kvTokens % this.block === 0;
    const levels = whole ? null : await this.levelMap.data();
    const counts = whole ? await this.counts.data() : null;
    let sparse = 0, dense = 0;
    for (let row = 0; row < B * Hm * Mq; row++) {
      const qb = row % Mq;
      const rows = Math.min(this.qTokens, (qb + 1) * this.queryBlock) - qb * this.queryBlock;
      const lastPosition = Math.min(this.qTokens, (qb + 1) * this.queryBlock) - 1 + this.kvTokens - this.qTokens;
      const visible = this.causal ? Math.min(Nk, Math.max(0, Math.floor(lastPosition / this.block) + 1)) : Nk;
      dense += rows * (Math.min(this.kvTokens, visible * this.block));
      if (counts) {
        for (let i = 0; i < 4; i++) sparse += rows * counts[row * 4 + i]! * (this.block >> i);
        continue;
      }
      for (let kb = 0; kb < Nk; kb++) {
        const level = levels![row * Nk + kb]!;
        const keys = Math.min(this.kvTokens, (kb + 1) * this.block) - kb * this.block;
        if (level > 0) sparse += rows * Math.ceil(keys / level);
      }
    }
    return dense > 0 ? sparse / dense : 0;
  }

  dispose(): void {
    for (const t of [this.levelMap, this.lists, this.counts]) t.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Mean-pools k and v `[B, Hkv, Tk, D]` (f32, f16 or bf16) within each key block into levels
 * 2, 4 and 8; a partial last block pools only its existing tokens (see PyramidLevels.count).
 * Identical on CPU and CUDA.
 */
export async function pyramidPool(k: Tensor, v: Tensor, options: { block?: number } = {}): Promise<PyramidLevels> {
  checkOptions(options, ['block'], 'pyramidPool(options)');
  const kn = checkTensorArg(k, 'k', 4);
  const vn = checkTensorArg(v, 'v', 4, k);
  const { block } = blocksOf({ block: options.block });
  const [B, H, Tk, D] = k.shape as [number, number, number, number];
  const padded = Math.ceil(Tk / block) * block;
  const made: Tensor[] = [];
  try {
    const level = (L: number) => {
      const t = Tensor.empty([B, H, padded / L, D], k.dtype, k.device);
      made.push(t);
      return t;
    };
    const keys = [level(2), level(4), level(8)] as const;
    const values = [level(2), level(4), level(8)] as const;
    await nativeCall(() => native().pyramidPool(kn, vn, keys.map((t, i) => t[toNative](`pooledKeys[${i}]`)),
      values.map((t, i) => t[toNative](`pooledValues[${i}]`)), { block }));
    return new PyramidLevels(block, Tk, keys, values);
  } catch (error) {
    for (const t of made) t.dispose();
    throw error;
  }
}

/**
 * Block importance f32 `[B, Hm, ceil(Tq/queryBlock), ceil(Tk/block)]` (Hm = Hq, or Hkv with
 * maskGranularity 'kvhead'): PSA's sampled estimator, the largest softmax weight a sampled
 * query row gives a sampled key of the block, rows normalised to sum 1. q `[B, Hq, Tq, D]`,
 * k `[B, Hkv, Tk, D]`. Deterministic for a given seed.
 */
export async function pyramidImportance(q: Tensor, k: Tensor, options: PyramidImportanceOptions = {}): Promise<Tensor<'f32'>> {
  checkOptions(options, ['block', 'queryBlock', 'causal', 'scale', 'sampling', 'seed', 'maskGranularity'], 'pyramidImportance(options)');
  return runImportance(q, k, options);
}

async function runImportance(q: Tensor, k: Tensor, options: PyramidImportanceOptions): Promise<Tensor<'f32'>> {
  const qn = checkTensorArg(q, 'q', 4);
  const kn = checkTensorArg(k, 'k', 4, q);
  const { block, queryBlock } = blocksOf(options);
  const causal = flag(options.causal, false, 'causal');
  const scale = scaleOf(options.scale, q.shape[3]!);
  const sampling = options.sampling ?? 0.25;
  if (typeof sampling !== 'number' || !(sampling > 0 && sampling <= 1))
    fail('E_RANGE', `sampling: expected a fraction in (0, 1], got ${describe(sampling)}`);
  const seed = integerIn(options.seed ?? 0, 0, 0xffffffff, 'seed');
  const granularity = options.maskGranularity ?? 'qhead';
  if (granularity !== 'qhead' && granularity !== 'kvhead')
    fail('E_RANGE', `maskGranularity: expected 'qhead' or 'kvhead', got ${describe(granularity)}`);
  const [B, Hq, Tq] = q.shape as [number, number, number, number];
  const [, Hkv, Tk] = k.shape as [number, number, number, number];
  const Hm = granularity === 'kvhead' ? Hkv : Hq;
  const importance = Tensor.empty([B, Hm, Math.ceil(Tq / queryBlock), Math.ceil(Tk / block)], 'f32', q.device);
  try {
    await nativeCall(() => native().pyramidImportance(qn, kn, importance[toNative]('importance'), {
      block, queryBlock, causal, scale, seed, kvHeadMask: granularity === 'kvhead',
      sampleQueries: Math.max(1, Math.ceil(queryBlock * sampling)), sampleKeys: Math.max(1, Math.ceil(block * sampling)),
    }));
  } catch (error) {
    importance.dispose();
    throw error;
  }
  return importance;
}

/**
 * Levels from importance f32 `[B, Hm, Mq, Nk]` (from pyramidImportance or any other source):
 * per mask row, the visible key blocks are ranked (forced ones first, then by importance, ties
 * to the lower block) and the rank ranges that `bounds` end take levels 1, 2, 4, 8; the rest
 * is skipped. Identical on CPU and CUDA for the same importance.
 */
export async function pyramidAssign(importance: Tensor, options: PyramidAssignOptions = {}): Promise<PyramidMask> {
  checkOptions(options, ['block', 'queryBlock', 'mode', 'bounds', 'minFull', 'forceSink', 'forceDiagonal', 'causal', 'qTokens', 'kvTokens'],
    'pyramidAssign(options)');
  return runAssign(importance, options);
}

function boundsOf(mode: PyramidMode, bounds: unknown): PyramidBounds {
  if (bounds === undefined) return mode === 'topk' ? DEFAULT_TOPK_BOUNDS : DEFAULT_THRESHOLD_BOUNDS;
  if (!Array.isArray(bounds) || bounds.length !== 4)
    fail('E_RANGE', `bounds: expected 4 fractions (ends of levels 1, 2, 4, 8), got ${describe(bounds)}`);
  let previous = 0;
  for (const b of bounds as unknown[]) {
    if (typeof b !== 'number' || !(b >= previous && b <= 1))
      fail('E_RANGE', `bounds: expected non-decreasing fractions in [0, 1], got [${(bounds as unknown[]).map(describe).join(', ')}]`);
    previous = b;
  }
  return bounds as unknown as PyramidBounds;
}

async function runAssign(importance: Tensor, options: PyramidAssignOptions): Promise<PyramidMask> {
  const pn = checkTensorArg(importance, 'importance', 4);
  const { block, queryBlock } = blocksOf(options);
  const mode = options.mode ?? 'topk';
  if (mode !== 'topk' && mode !== 'threshold') fail('E_RANGE', `mode: expected 'topk' or 'threshold', got ${describe(mode)}`);
  const bounds = boundsOf(mode, options.bounds);
  const minFull = options.minFull ?? (mode === 'threshold' ? 0.06 : 0);
  if (typeof minFull !== 'number' || !(minFull >= 0 && minFull <= 1))
    fail('E_RANGE', `minFull: expected a fraction in [0, 1], got ${describe(minFull)}`);
  const causal = flag(options.causal, false, 'causal');
  const forceSink = flag(options.forceSink, true, 'forceSink');
  const forceDiagonal = flag(options.forceDiagonal, true, 'forceDiagonal');
  const [B, Hm, Mq, Nk] = importance.shape as [number, number, number, number];
  const qTokens = integerIn(options.qTokens ?? Mq * queryBlock, 1, Number.MAX_SAFE_INTEGER, 'qTokens');
  const kvTokens = integerIn(options.kvTokens ?? Nk * block, 1, Number.MAX_SAFE_INTEGER, 'kvTokens');
  if (Math.ceil(qTokens / queryBlock) !== Mq || Math.ceil(kvTokens / block) !== Nk)
    fail('E_SHAPE', `importance: expected [${B}, ${Hm}, ${Math.ceil(qTokens / queryBlock)}, ${Math.ceil(kvTokens / block)}] ` +
      `for ${qTokens} queries in blocks of ${queryBlock} and ${kvTokens} keys in blocks of ${block}, got [${importance.shape.join(', ')}]`);
  const made: Tensor[] = [];
  const make = <D extends 'u8' | 'i32'>(shape: number[], dtype: D) => {
    const t = Tensor.empty(shape, dtype, importance.device);
    made.push(t);
    return t;
  };
  try {
    const levelMap = make([B, Hm, Mq, Nk], 'u8');
    const lists = make([B, Hm, Mq, Nk], 'i32');
    const counts = make([B, Hm, Mq, 4], 'i32');
    await nativeCall(() => native().pyramidAssign(pn, levelMap[toNative]('levelMap'), lists[toNative]('lists'), counts[toNative]('counts'), {
      block, queryBlock, qTokens, kvTokens, causal, threshold: mode === 'threshold', bounds: [...bounds], minFull, forceSink, forceDiagonal,
    }));
    return new PyramidMask(levelMap, lists, counts, block, queryBlock, qTokens, kvTokens, causal);
  } catch (error) {
    for (const t of made) t.dispose();
    throw error;
  }
}

/**
 * Sparse prefill attention whose cost follows importance. q `[B, Hq, Tq, D]`, k and v
 * `[B, Hkv, Tk, D]` (one float dtype, D a multiple of 8 in 8..256; queries are the last Tq
 * positions). Chains pyramidPool, pyramidImportance and pyramidAssign (or takes `levels` /
 * `mask`), then every query attends to the pooled tokens of its row's (block, level) pairs
 * with `ln(level)` added to pooled logits; when causal, a pooled token is visible once its
 * last raw position is. CPU f64 reference; CUDA f32.
 */
export async function pyramidAttention(q: Tensor, k: Tensor, v: Tensor, options: PyramidAttentionOptions = {}): Promise<PyramidAttentionResult> {
  checkOptions(options, ['block', 'queryBlock', 'causal', 'scale', 'sampling', 'seed', 'maskGranularity', 'mode', 'bounds', 'minFull',
    'forceSink', 'forceDiagonal', 'returnLse', 'outDtype', 'mask', 'levels'], 'pyramidAttention(options)');
  const qn = checkTensorArg(q, 'q', 4);
  const kn = checkTensorArg(k, 'k', 4, q);
  const vn = checkTensorArg(v, 'v', 4, q);
  const returnLse = flag(options.returnLse, false, 'returnLse');
  const outDtype = options.outDtype ?? (q.dtype === 'f16' || q.dtype === 'bf16' ? q.dtype : 'f32');
  if (outDtype !== 'f32' && outDtype !== 'f16' && outDtype !== 'bf16')
    fail('E_DTYPE', `outDtype: expected 'f32', 'f16' or 'bf16', got ${describe(outDtype)}`);
  const causal = flag(options.causal, false, 'causal');
  const scale = scaleOf(options.scale, q.shape[3]!);
  const { block, queryBlock } = blocksOf(options);
  const [, , Tq] = q.shape as [number, number, number, number];
  const Tk = k.shape[2]!;
  if (options.mask !== undefined) {
    const m = options.mask;
    if (!(m instanceof PyramidMask)) fail('E_DTYPE', `mask: expected a PyramidMask, got ${describe(m)}`);
    if (m.block !== block || m.queryBlock !== queryBlock || m.qTokens !== Tq || m.kvTokens !== Tk || m.causal !== causal)
      fail('E_SHAPE', `mask: made for block ${m.block}, queryBlock ${m.queryBlock}, ${m.qTokens} x ${m.kvTokens} tokens, causal ${m.causal}; ` +
        `this call has block ${block}, queryBlock ${queryBlock}, ${Tq} x ${Tk}, causal ${causal}`);
  }
  if (options.levels !== undefined) {
    const l = options.levels;
    if (!(l instanceof PyramidLevels)) fail('E_DTYPE', `levels: expected PyramidLevels, got ${describe(l)}`);
    if (l.block !== block || l.tokens !== Tk) fail('E_SHAPE', `levels: pooled ${l.tokens} tokens in blocks of ${l.block}, expected ${Tk} in blocks of ${block}`);
  }

  const owned: Array<Disposable> = [];
  let output: Tensor | null = null, lse: Tensor<'f32'> | null = null;
  try {
    const levels = options.levels ?? await pyramidPool(k, v, { block });
    if (!options.levels) owned.push(levels);
    let mask = options.mask;
    if (!mask) {
      const importance = await runImportance(q, k, { block, queryBlock, causal, scale, sampling: options.sampling, seed: options.seed,
        maskGranularity: options.maskGranularity });
      owned.push(importance);
      mask = await runAssign(importance, { block, queryBlock, causal, mode: options.mode, bounds: options.bounds, minFull: options.minFull,
        forceSink: options.forceSink, forceDiagonal: options.forceDiagonal, qTokens: Tq, kvTokens: Tk });
      owned.push(mask);
    }
    output = Tensor.empty(q.shape, outDtype, q.device);
    if (returnLse) lse = Tensor.empty(q.shape.slice(0, 3), 'f32', q.device);
    const { lists, counts } = mask;
    await nativeCall(() => native().pyramidAttend(qn, kn, vn, levels.keys.map((t, i) => t[toNative](`pooledKeys[${i}]`)),
      levels.values.map((t, i) => t[toNative](`pooledValues[${i}]`)), lists[toNative]('lists'), counts[toNative]('counts'),
      output![toNative]('out'), lse?.[toNative]('lse') ?? null, { block, queryBlock, scale, causal }));
    const density = await mask.density();
    return lse ? { output, lse, density } : { output, density };
  } catch (error) {
    output?.dispose();
    lse?.dispose();
    throw error;
  } finally {
    for (const d of owned) d[Symbol.dispose]();
  }
}
