/**
 * Gaussian-kernel KV merging (after KVMerger) and the aggregated attention scores that
 * choose pivots and protected tokens. Definitions: csrc/core/merge.h.
 */
import { describe, fail, nativeCall } from '../errors.js';
import { native } from '../native.js';
import { Tensor, toNative } from '../tensor.js';
import { checkOptions, checkTensorArg } from './args.js';
import { CompressedKV } from './compressed.js';

export interface AttentionScoresOptions {
  /** how many of the last queries observe (SnapKV's window); default min(32, Tq) */
  window?: number;
  /** causal visibility as in `attention` (default true) */
  causal?: boolean;
  /** logit scale, default 1 / sqrt(D) */
  scale?: number;
}

/**
 * Column sums of softmax attention of the last `window` queries, summed over each KV head's
 * query group: f32 `[B, Hkv, Tk]`, the usual `scores` for `gaussianMerge`. q `[B, Hq, Tq, D]`
 * and k `[B, Hkv, Tk, D]` as in `attention` (the queries are the last Tq positions).
 */
export async function attentionScores(q: Tensor, k: Tensor, options: AttentionScoresOptions = {}): Promise<Tensor<'f32'>> {
  checkOptions(options, ['window', 'causal', 'scale'], 'attentionScores(options)');
  const qn = checkTensorArg(q, 'q', 4);
  const kn = checkTensorArg(k, 'k', 4, q);
  const { causal = true, scale = 1 / Math.sqrt(q.shape[3]!), window = Math.min(32, q.shape[2]!) } = options;
  if (typeof causal !== 'boolean') fail('E_RANGE', `causal: expected a boolean, got ${describe(causal)}`);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) fail('E_RANGE', `scale: expected a finite number, got ${describe(scale)}`);
  if (!Number.isInteger(window) || window < 1 || window > q.shape[2]!)
    fail('E_RANGE', `window: expected an integer in 1..${q.shape[2]} (Tq), got ${describe(window)}`);
  const scores = Tensor.empty([k.shape[0]!, k.shape[1]!, k.shape[2]!], 'f32', q.device);
  try {
    await nativeCall(() => native().attentionScores(qn, kn, scores[toNative]('scores'), { scale, causal, window }));
  } catch (error) {
    scores.dispose();
    throw error;
  }
  return scores;
}

/** A count, or a fraction of T when in (0, 1). */
export type CountOrFraction = number;

export interface GaussianMergeOptions {
  /** cosine above which adjacent keys merge (default 0.75); not with `budget` */
  threshold?: number;
  /** exact slots kept per head: a count, or a fraction of T in (0, 1); not with `threshold` */
  budget?: CountOrFraction;
  /** Gaussian kernel width (default 5), or 'adaptive': per slot, mean member distance to the pivot / sqrt(2) */
  sigma?: number | 'adaptive';
  /**
   * tokens kept as singletons: the first ones (attention sinks, default 1), the most recent
   * ones (default 0) and those with the highest scores (default 0); each a count or a
   * fraction of T. KVMerger's experiments protect recent 0.17 and topScore 0.12 at a 50% budget.
   */
  protect?: { first?: CountOrFraction; recent?: CountOrFraction; topScore?: CountOrFraction };
  /** merged values: the Gaussian-weighted mean ('mean', default, exact with logWeights = log(size)) or that times the size ('paper') */
  valueScale?: 'mean' | 'paper';
}

/** A merged cache, padded to Tcap slots per head; feeds `attention` as kvLengths + logWeights. */
export class MergedKV extends CompressedKV {
  constructor(keys: Tensor, values: Tensor, lengths: Tensor<'i32'>, sizes: Tensor<'i32'>,
    /** i32 [B, Hkv, Tcap]: the pivot token of each slot (-1 for padding) */
    readonly pivots: Tensor<'i32'>,
    /** assign is monotone and contiguous: each slot is a run of adjacent tokens */
    assign: Tensor<'i32'>) {
    super(keys, values, lengths, sizes, assign);
  }

  protected extraTensors(): Tensor[] {
    return [this.pivots];
  }
}

function countOf(value: unknown, total: number, arg: string, min = 0): number {
  const valid = typeof value === 'number' && Number.isFinite(value) && value >= 0 && (Number.isInteger(value) || value < 1);
  if (!valid || (Number.isInteger(value) && (value as number) < min))
    fail('E_RANGE', `${arg}: expected a count (integer >= ${min}) or a fraction in (0, 1), got ${describe(value)}`);
  const count = value as number;
  return Number.isInteger(count) ? count : Math.max(min, Math.round(count * total));
}

const VALUE_SCALES = { mean: 0, paper: 1 } as const;

/**
 * Merges runs of adjacent similar keys of each KV head into Gaussian-weighted slots (after
 * KVMerger). keys/values `[B, Hkv, T, D]` post-RoPE, scores f32 `[B, Hkv, T]` (e.g. from
 * `attentionScores`). Integer outputs are identical on CPU and CUDA.
 */
export async function gaussianMerge(keys: Tensor, values: Tensor, scores: Tensor, options: GaussianMergeOptions = {}): Promise<MergedKV> {
  checkOptions(options, ['threshold', 'budget', 'sigma', 'protect', 'valueScale'], 'gaussianMerge(options)');
  const kn = checkTensorArg(keys, 'keys', 4);
  const vn = checkTensorArg(values, 'values', 4, keys);
  const sn = checkTensorArg(scores, 'scores', 3, keys);
  const [B, H, T] = keys.shape as [number, number, number, number];
  if (options.threshold !== undefined && options.budget !== undefined) fail('E_RANGE', 'gaussianMerge(options): give threshold or budget, not both');
  const threshold = options.threshold ?? 0.75;
  if (typeof threshold !== 'number' || !Number.isFinite(threshold)) fail('E_RANGE', `threshold: expected a finite number, got ${describe(threshold)}`);
  const budget = options.budget === undefined ? 0 : Math.min(countOf(options.budget, T, 'budget', 1), T);
  const sigma = options.sigma ?? 5;
  if (sigma !== 'adaptive' && (typeof sigma !== 'number' || !(sigma > 0) || !Number.isFinite(sigma)))
    fail('E_RANGE', `sigma: expected a finite number > 0 or 'adaptive', got ${describe(sigma)}`);
  const protect = options.protect ?? {};
  if (typeof protect !== 'object' || protect === null) fail('E_RANGE', `protect: expected an object, got ${describe(protect)}`);
  checkOptions(protect, ['first', 'recent', 'topScore'], 'protect');
  const valueScale = options.valueScale ?? 'mean';
  if (!(valueScale in VALUE_SCALES)) fail('E_RANGE', `valueScale: expected 'mean' or 'paper', got ${describe(valueScale)}`);

  const addon = native();
  const assign = Tensor.empty([B, H, T], 'i32', keys.device);
  const lengths = Tensor.empty([B, H], 'i32', keys.device);
  const owned: Tensor[] = [assign, lengths];
  try {
    await nativeCall(() => addon.mergeSegments(kn, sn, assign[toNative]('assign'), lengths[toNative]('lengths'), {
      threshold, budget,
      protectFirst: countOf(protect.first ?? 1, T, 'protect.first'),
      protectRecent: countOf(protect.recent ?? 0, T, 'protect.recent'),
      protectTop: countOf(protect.topScore ?? 0, T, 'protect.topScore'),
    }));
    const tcap = budget > 0 ? budget : Math.max(...(await lengths.data()));
    const outKeys = Tensor.empty([B, H, tcap, keys.shape[3]!], keys.dtype, keys.device);
    owned.push(outKeys);
    const outValues = Tensor.empty([B, H, tcap, keys.shape[3]!], keys.dtype, keys.device);
    owned.push(outValues);
    const sizes = Tensor.empty([B, H, tcap], 'i32', keys.device);
    owned.push(sizes);
    const pivots = Tensor.empty([B, H, tcap], 'i32', keys.device);
    owned.push(pivots);
    await nativeCall(() => addon.gaussianMerge(kn, vn, sn, assign[toNative]('assign'), lengths[toNative]('lengths'),
      outKeys[toNative]('outKeys'), outValues[toNative]('outValues'), sizes[toNative]('sizes'), pivots[toNative]('pivots'),
      { sigma: sigma === 'adaptive' ? 0 : sigma, valueScale: VALUE_SCALES[valueScale] }));
    return new MergedKV(outKeys, outValues, lengths, sizes, pivots, assign);
  } catch (error) {
    for (const t of owned) t.dispose();
    throw error;
  }
}
