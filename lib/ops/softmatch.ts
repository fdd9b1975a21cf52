/**
 * Chunked soft matching (after Chelsea / CentroidKV): per chunk of tokens, alternating
 * even -> odd bipartite matching of similar keys, merged into size-weighted centroids.
 * Definitions: csrc/core/softmatch.h. Every output is identical on CPU and CUDA.
 */
import { DTYPES, type DType } from '../dtype.js';
import { describe, fail, nativeCall } from '../errors.js';
import { native } from '../native.js';
import { Tensor, toNative } from '../tensor.js';
import { checkOptions, checkTensorArg } from './args.js';
import { CompressedKV } from './compressed.js';

export interface SoftMatchOptions {
  /** tokens per chunk, even, 2..256 (default 32) */
  chunk?: number;
  /** fraction of each full chunk kept as clusters, in (0, 1] (default 0.5); not with budget/threshold */
  ratio?: number;
  /** clusters kept per full chunk, 1..chunk; not with ratio/threshold */
  budget?: number;
  /** instead: every matched pair whose key cosine exceeds this merges, each pass */
  threshold?: number;
  /**
   * matching passes; each at most halves a chunk. Default: as many as ratio/budget needs
   * (1 for ratio 0.5, 2 for 0.25, 3 for 0.125), 1 in threshold mode.
   */
  passes?: number;
  /** tokens kept raw: the first ones (default 1, an attention sink) and the most recent ones (default 0) */
  protect?: { first?: number; recent?: number };
}

/** The settings a ClusteredKV was made with (append reuses them). */
interface Plan {
  chunk: number;
  passes: number;
  keptPerChunk: number;
  threshold: number;
  protectFirst: number;
  protectRecent: number;
}

/** How many full chunks are clustered for T tokens (csrc/core/softmatch.h step 1). */
function clusteredChunks(T: number, plan: Plan): number {
  const span = T - plan.protectRecent - plan.protectFirst;
  return span > 0 ? Math.floor(span / plan.chunk) : 0;
}

function integerIn(value: unknown, lo: number, hi: number, arg: string): number {
  if (!Number.isInteger(value) || (value as number) < lo || (value as number) > hi)
    fail('E_RANGE', `${arg}: expected an integer in ${lo}..${hi}, got ${describe(value)}`);
  return value as number;
}

function makePlan(options: SoftMatchOptions): Plan {
  checkOptions(options, ['chunk', 'ratio', 'budget', 'threshold', 'passes', 'protect'], 'softMatch(options)');
  const chunk = integerIn(options.chunk ?? 32, 2, 256, 'chunk');
  if (chunk % 2 !== 0) fail('E_RANGE', `chunk: expected an even number, got ${chunk}`);
  const modes = ['ratio', 'budget', 'threshold'].filter((m) => options[m as keyof SoftMatchOptions] !== undefined);
  if (modes.length > 1) fail('E_RANGE', `softMatch(options): give one of ratio, budget or threshold, got ${modes.join(' and ')}`);
  const protect = options.protect ?? {};
  if (typeof protect !== 'object' || protect === null) fail('E_RANGE', `protect: expected an object, got ${describe(protect)}`);
  checkOptions(protect, ['first', 'recent'], 'protect');
  const protectFirst = integerIn(protect.first ?? 1, 0, Number.MAX_SAFE_INTEGER, 'protect.first');
  const protectRecent = integerIn(protect.recent ?? 0, 0, Number.MAX_SAFE_INTEGER, 'protect.recent');
  if (options.threshold !== undefined) {
    if (typeof options.threshold !== 'number' || !Number.isFinite(options.threshold))
      fail('E_RANGE', `threshold: expected a finite number, got ${describe(options.threshold)}`);
    const passes = integerIn(options.passes ?? 1, 1, 16, 'passes');
    return { chunk, passes, keptPerChunk: 0, threshold: options.threshold, protectFirst, protectRecent };
  }
  let kept: number;
  if (options.budget !== undefined) kept = integerIn(options.budget, 1, chunk, 'budget');
  else {
    const ratio = options.ratio ?? 0.5;
    if (typeof ratio !== 'number' || !(ratio > 0 && ratio <= 1)) fail('E_RANGE', `ratio: expected a number in (0, 1], got ${describe(ratio)}`);
    kept = Math.max(1, Math.round(ratio * chunk));
  }
  // each pass merges every source it can (one per even list entry) until `kept` remain
  let needed = 0;
  for (let n = chunk; n > kept; needed++) n -= Math.min(Math.ceil(n / 2), n - kept);
  const passes = integerIn(options.passes ?? Math.max(1, needed), 1, 16, 'passes');
  return { chunk, passes, keptPerChunk: kept, threshold: 0, protectFirst, protectRecent };
}

/** A clustered cache padded to Tcap slots per head; feeds `attention` as kvLengths + logWeights. */
export class ClusteredKV extends CompressedKV {
  /** @internal */
  readonly plan: Plan;

  constructor(plan: Plan, keys: Tensor, values: Tensor, lengths: Tensor<'i32'>, sizes: Tensor<'i32'>,
    /** i32 [B, Hkv, Tcap]: the largest token index among a slot's members (-1 for padding) */
    readonly positions: Tensor<'i32'>,
    /** assign is not monotone: a token may join a later neighbour's cluster */
    assign: Tensor<'i32'>) {
    super(keys, values, lengths, sizes, assign);
    this.plan = plan;
  }

  protected extraTensors(): Tensor[] {
    return [this.positions];
  }

  /** Tokens clustered so far. */
  get tokens(): number {
    return this.assign.shape[2]!;
  }

  /**
   * Adds tokens (keys/values [B, Hkv, Tnew, D]) for decoding: they stay raw until a chunk
   * fills (and leaves the recent window), then that chunk is clustered. The result equals
   * `softMatch` over the whole sequence. Returns a new ClusteredKV; this one stays valid.
   */
  async append(keys: Tensor, values: Tensor): Promise<ClusteredKV> {
    checkTensorArg(keys, 'keys', 4, this.keys);
    checkTensorArg(values, 'values', 4, this.keys);
    const [B, H, Tnew, D] = keys.shape as [number, number, number, number];
    if (B !== this.keys.shape[0] || H !== this.keys.shape[1] || D !== this.keys.shape[3] || keys.dtype !== this.keys.dtype)
      fail('E_SHAPE', `keys: expected [${B === this.keys.shape[0] ? B : this.keys.shape[0]}, ${this.keys.shape[1]}, Tnew, ${this.keys.shape[3]}] ${this.keys.dtype}, got [${keys.shape.join(', ')}] ${keys.dtype}`);
    if (values.dtype !== keys.dtype || values.shape.join() !== keys.shape.join())
      fail('E_SHAPE', `values: expected the shape and dtype of keys, got [${values.shape.join(', ')}] ${values.dtype}`);
    const plan = this.plan, T = this.tokens, total = T + Tnew;
    const oldChunks = clusteredChunks(T, plan), newChunks = clusteredChunks(total, plan);
    const rawStart = Math.min(plan.protectFirst, T) + oldChunks * plan.chunk; // first raw tail token
    const fresh = (newChunks - oldChunks) * plan.chunk; // tail tokens that form new chunks

    const [oldK, oldV, newK, newV] = await Promise.all([this.keys.data(), this.values.data(), keys.data(), values.data()]);
    const [oldSizes, oldPos, oldAssign, oldLengths] = await Promise.all([this.sizes.data(), this.positions.data(), this.assign.data(), this.lengths.data()]);
    const oldTcap = this.keys.shape[2]!, tail = T - rawStart;
    // the raw tokens from rawStart on: the old raw tail slots, then the new tokens
    const rawK = new (DTYPES[keys.dtype].array)(B * H * (tail + Tnew) * D), rawV = new (DTYPES[keys.dtype].array)(rawK.length);
    for (let h = 0; h < B * H; h++) {
      const tailSlot = oldLengths[h]! - tail;
      rawK.set(oldK.subarray((h * oldTcap + tailSlot) * D, (h * oldTcap + oldLengths[h]!) * D), h * (tail + Tnew) * D);
      rawV.set(oldV.subarray((h * oldTcap + tailSlot) * D, (h * oldTcap + oldLengths[h]!) * D), h * (tail + Tnew) * D);
      rawK.set(newK.subarray(h * Tnew * D, (h + 1) * Tnew * D), (h * (tail + Tnew) + tail) * D);
      rawV.set(newV.subarray(h * Tnew * D, (h + 1) * Tnew * D), (h * (tail + Tnew) + tail) * D);
    }
    let clustered: ClusteredKV | null = null;
    if (fresh > 0) {
      // whole chunks cluster independently, so clustering just the new ones is exact
      const slice = (raw: typeof rawK) => {
        const out = new (DTYPES[keys.dtype].array)(B * H * fresh * D);
        for (let h = 0; h < B * H; h++) out.set(raw.subarray(h * (tail + Tnew) * D, (h * (tail + Tnew) + fresh) * D), h * fresh * D);
        return Tensor.from(out, [B, H, fresh, D], keys.dtype);
      };
      clustered = await runSoftMatch(slice(rawK), slice(rawV), { ...plan, protectFirst: 0, protectRecent: 0 });
    }
    const parts = clustered && {
      keys: await clustered.keys.data(), values: await clustered.values.data(), sizes: await clustered.sizes.data(),
      positions: await clustered.positions.data(), assign: await clustered.assign.data(), lengths: await clustered.lengths.data(),
      tcap: clustered.keys.shape[2]!,
    };
    const chunkSlots = (h: number) => (parts ? parts.lengths[h]! : 0);
    const lengths = Int32Array.from({ length: B * H }, (_, h) => oldLengths[h]! - tail + chunkSlots(h) + (tail + Tnew - fresh));
    const tcap = Math.max(...lengths);
    const outK = new (DTYPES[keys.dtype].array)(B * H * tcap * D), outV = new (DTYPES[keys.dtype].array)(outK.length);
    const sizes = new Int32Array(B * H * tcap), positions = new Int32Array(B * H * tcap).fill(-1), assign = new Int32Array(B * H * total);
    for (let h = 0; h < B * H; h++) {
      const keep = oldLengths[h]! - tail; // slots before the raw tail stay as they are
      let slot = 0;
      const put = (k: ArrayLike<number>, v: ArrayLike<number>, from: number, size: number, position: number) => {
        outK.set((k as typeof rawK).subarray(from * D, (from + 1) * D), (h * tcap + slot) * D);
        outV.set((v as typeof rawK).subarray(from * D, (from + 1) * D), (h * tcap + slot) * D);
        sizes[h * tcap + slot] = size;
        positions[h * tcap + slot] = position;
        slot++;
      };
      for (let s = 0; s < keep; s++) put(oldK, oldV, h * oldTcap + s, oldSizes[h * oldTcap + s]!, oldPos[h * oldTcap + s]!);
      assign.set(oldAssign.subarray(h * T, h * T + rawStart), h * total);
      if (parts) {
        const c = parts.tcap;
        for (let s = 0; s < chunkSlots(h); s++) put(parts.keys, parts.values, h * c + s, parts.sizes[h * c + s]!, parts.positions[h * c + s]! + rawStart);
        for (let t = 0; t < fresh; t++) assign[h * total + rawStart + t] = keep + parts.assign[h * fresh + t]!;
      }
      for (let t = fresh; t < tail + Tnew; t++) {
        assign[h * total + rawStart + t] = slot;
        put(rawK, rawV, h * (tail + Tnew) + t, 1, rawStart + t);
      }
    }
    clustered?.dispose();
    const device = this.keys.device;
    const place = <D extends DType>(t: Tensor<D>) => (device === 'cpu' ? t : t.to(device));
    return new ClusteredKV(plan,
      await place(Tensor.from(outK, [B, H, tcap, D], keys.dtype)), await place(Tensor.from(outV, [B, H, tcap, D], keys.dtype)),
      await place(Tensor.from(lengths, [B, H])), await place(Tensor.from(sizes, [B, H, tcap])),
      await place(Tensor.from(positions, [B, H, tcap])), await place(Tensor.from(assign, [B, H, total])));
  }
}

async function runSoftMatch(keys: Tensor, values: Tensor, plan: Plan): Promise<ClusteredKV> {
  const [B, H, T, D] = keys.shape as [number, number, number, number];
  const addon = native();
  const kn = keys[toNative]('keys'), vn = values[toNative]('values');
  const assign = Tensor.empty([B, H, T], 'i32', keys.device);
  const lengths = Tensor.empty([B, H], 'i32', keys.device);
  const owned: Tensor[] = [assign, lengths];
  try {
    let tcap: number;
    if (plan.keptPerChunk > 0) {
      tcap = T - clusteredChunks(T, plan) * (plan.chunk - plan.keptPerChunk); // the same for every head
    } else {
      // threshold mode: the heads' lengths first, to size the padded outputs
      await nativeCall(() => addon.softMatch(kn, vn, assign[toNative]('assign'), lengths[toNative]('lengths'), null, null, null, null, plan));
      tcap = Math.max(...(await lengths.data()));
    }
    const outKeys = Tensor.empty([B, H, tcap, D], keys.dtype, keys.device);
    owned.push(outKeys);
    const outValues = Tensor.empty([B, H, tcap, D], keys.dtype, keys.device);
    owned.push(outValues);
    const sizes = Tensor.empty([B, H, tcap], 'i32', keys.device);
    owned.push(sizes);
    const positions = Tensor.empty([B, H, tcap], 'i32', keys.device);
    owned.push(positions);
    await nativeCall(() => addon.softMatch(kn, vn, assign[toNative]('assign'), lengths[toNative]('lengths'),
      outKeys[toNative]('outKeys'), outValues[toNative]('outValues'), sizes[toNative]('sizes'), positions[toNative]('positions'), plan));
    return new ClusteredKV(plan, outKeys, outValues, lengths, sizes, positions, assign);
  } catch (error) {
    for (const t of owned) t.dispose();
    throw error;
  }
}

/**
 * Clusters each KV head's keys chunk by chunk (after Chelsea / CentroidKV). keys/values
 * `[B, Hkv, T, D]` (post-RoPE). Within a chunk, the even tokens each pick their most similar
 * odd token (cosine of keys); the best pairs (ratio/budget) or those above `threshold`
 * merge into centroids weighted by their sizes, over `passes` passes. Chunks that are not
 * full, the first `protect.first` and the last `protect.recent` tokens stay raw.
 */
export async function softMatch(keys: Tensor, values: Tensor, options: SoftMatchOptions = {}): Promise<ClusteredKV> {
  const plan = makePlan(options);
  checkTensorArg(keys, 'keys', 4);
  checkTensorArg(values, 'values', 4, keys);
  return runSoftMatch(keys, values, plan);
}
