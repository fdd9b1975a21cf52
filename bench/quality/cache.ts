/**
 * The quality harness's K/V cache: per layer, a list of segments (stretches of tokens, each
 * compressed by a method or still raw), kept on the host, and what the next tokens attend
 * over, assembled from them. Prefill mode compresses the prompt once; decode mode compresses
 * each block of new tokens as it fills. One LayerCache serves both the model runs and the
 * attention metrics on the real dumps, so both measure the same cache.
 */
import { Tensor, type Device } from '../../lib/index.js';
import { joinTokens } from '../common/kv-host.js';
import type { AttendedKV, KvCache, LayerKV } from './model.js';

/** What a method makes of one layer's tokens: slots on the device, plus their cost. */
export interface Compressed {
  /** post-RoPE slot keys and values [1, Hkv, slots, D] (dequantized for quantizers) */
  keys: Tensor;
  values: Tensor;
  /** i32 [1, Hkv]: slots in use per head; default all */
  lengths?: Tensor;
  /** f32 [1, Hkv, slots]: added to each slot's logits (log of merged sizes) */
  logWeights?: Tensor;
  /** i32 [1, Hkv, T]: each token's slot, -1 when dropped; default token t -> slot t */
  assign?: Tensor;
  /** bytes of the stored form: this layer, all KV heads, keys + values */
  bytes: number;
  /** frees what the method allocated besides the tensors above */
  dispose?: () => void;
}

/** Compresses one layer's tokens (on the device) to a kept-token ratio `budget`. */
export type Compressor = (input: LayerKV, budget: number) => Promise<Compressed>;

/** Replaces dense attention for methods that change the attention op, not the cache. */
export type AttentionOverride = (queries: Tensor, kv: AttendedKV) => Promise<Tensor>;

/** A host copy of one segment: [Hkv, slots, D] slots, `lengths` of them valid per head. */
interface Segment {
  tokens: number;
  slots: number;
  keys: Float32Array;
  values: Float32Array;
  lengths: Int32Array;
  logWeights: Float32Array | null;
  /** [Hkv, tokens]: each token's slot within the segment, -1 when dropped; null: raw (slot t) */
  assign: Int32Array | null;
  bytes: number;
}

/** Host copy of LayerKV's tensors, for raw tokens awaiting compression. */
interface RawBlock {
  start: number;
  tokens: number;
  queries: Float32Array;
  keys: Float32Array;
  keysPreRope: Float32Array;
  values: Float32Array;
}

/** What a query block attends over, on the host; `slotOf` maps every token seen to its slot. */
export interface Layout {
  /** [Hkv, slots, D], each head's valid slots first: compressed segments, then raw tokens */
  keys: Float32Array;
  values: Float32Array;
  slots: number;
  lengths: Int32Array;
  logWeights: Float32Array;
  /** [Hkv, tokens so far]: the slot of each token (-1 when dropped) */
  slotOf: Int32Array;
  tokens: number;
}

export interface CacheCost {
  /** token positions handed to the method so far */
  tokens: number;
  /** valid slots they became, summed over heads */
  slots: number;
  /** stored bytes of those compressed segments */
  bytes: number;
}

/** Bytes of dense K/V elements as a deployed cache stores them (f16), whatever the runner computes in. */
export const DENSE_ELEMENT_BYTES = 2;

export class LayerCache {
  private readonly segments: Segment[] = [];
  private raw: RawBlock[] = [];
  private readonly cost: CacheCost = { tokens: 0, slots: 0, bytes: 0 };

  private readonly layer: number;
  private readonly kvHeads: number;
  private readonly headDim: number;
  private readonly compressor: Compressor;
  private readonly budget: number;
  private readonly device: Device;
  private readonly attend: AttentionOverride | undefined;
  private readonly minStretch: number;

  constructor(options: { layer: number; kvHeads: number; headDim: number; compressor: Compressor; budget: number; device: Device; attend?: AttentionOverride; minStretch?: number }) {
    ({ layer: this.layer, kvHeads: this.kvHeads, headDim: this.headDim, compressor: this.compressor, budget: this.budget, device: this.device, attend: this.attend } = options);
    this.minStretch = options.minStretch ?? 0;
  }

  /** Tokens held (compressed or raw). */
  get tokens(): number {
    return this.segments.reduce((n, s) => n + s.tokens, 0) + this.raw.reduce((n, b) => n + b.tokens, 0);
  }

  /** Cost of what was compressed so far (raw tokens awaiting compression are not in it). */
  get compressedCost(): CacheCost {
    return { ...this.cost };
  }

  /** Keeps the new tokens raw and returns what they attend over, on the device. */
  async extend(kv: LayerKV): Promise<AttendedKV> {
    const layout = await this.extendWithLayout(kv);
    return this.toDevice(layout);
  }

  /** `extend`, also returning the host layout (for the attention metrics). */
  async extendWithLayout(kv: LayerKV): Promise<Layout> {
    const [queries, keys, keysPreRope, values] = await Promise.all([kv.queries.data(), kv.keys.data(), kv.keysPreRope.data(), kv.values.data()]);
    if (kv.start !== this.tokens) throw new Error(`layer ${kv.layer}: tokens from ${kv.start} appended to a cache of ${this.tokens}`);
    this.raw.push({ start: kv.start, tokens: kv.keys.shape[2]!, queries: queries as Float32Array, keys: keys as Float32Array, keysPreRope: keysPreRope as Float32Array, values: values as Float32Array });
    return this.layout();
  }

  async toDevice(layout: Layout): Promise<AttendedKV> {
    const { slots } = layout, H = this.kvHeads, D = this.headDim;
    const place = async <T extends Tensor>(t: T) => (this.device === 'cpu' ? t : ((await t.to(this.device)) as T));
    const attended: AttendedKV = {
      keys: await place(Tensor.from(layout.keys, [1, H, slots, D], 'f32')),
      values: await place(Tensor.from(layout.values, [1, H, slots, D], 'f32')),
      kvLengths: await place(Tensor.from(layout.lengths, [1, H], 'i32')),
      logWeights: await place(Tensor.from(layout.logWeights, [1, H, slots], 'f32')),
    };
    if (this.attend) attended.attend = this.attend;
    return attended;
  }

  /**
   * Compresses the raw blocks (as one stretch) with the method, except the newest ones that
   * together hold at most `keepRecent` tokens, which stay raw.
   */
  async compress(keepRecent = 0): Promise<void> {
    let first = this.raw.length, recent = 0; // raw[first..] stay raw
    while (first > 0 && recent + this.raw[first - 1]!.tokens <= keepRecent) recent += this.raw[--first]!.tokens;
    const taken = this.raw.slice(0, first);
    // methods that work in units (64-token quantization pages) wait for a long enough stretch
    if (taken.length === 0 || (keepRecent > 0 && taken.reduce((n, b) => n + b.tokens, 0) < this.minStretch)) return;
    const input = this.rawInput(taken);
    const tensors = await Promise.all([input.queries, input.keys, input.keysPreRope, input.values].map(async (t) => (this.device === 'cpu' ? t : t.to(this.device))));
    const [queries, keys, keysPreRope, values] = tensors as [Tensor<'f32'>, Tensor<'f32'>, Tensor<'f32'>, Tensor<'f32'>];
    const T = input.keys.shape[2]!;
    const compressed = await this.compressor({ layer: this.layer, start: taken[0]!.start, queries, keys, keysPreRope, values }, this.budget);
    try {
      const slots = compressed.keys.shape[2]!;
      const segment: Segment = {
        tokens: T, slots,
        keys: (await compressed.keys.data()) as Float32Array,
        values: (await compressed.values.data()) as Float32Array,
        lengths: compressed.lengths ? ((await compressed.lengths.data()) as Int32Array) : new Int32Array(this.kvHeads).fill(slots),
        logWeights: compressed.logWeights ? ((await compressed.logWeights.data()) as Float32Array) : null,
        assign: compressed.assign ? ((await compressed.assign.data()) as Int32Array) : null,
        bytes: compressed.bytes,
      };
      if (!compressed.assign && slots !== T) throw new Error(`a method that keeps ${slots} of ${T} tokens must say where each went (assign)`);
      this.segments.push(segment);
      this.raw = this.raw.slice(taken.length);
      this.cost.tokens += T;
      this.cost.slots += segment.lengths.reduce((a, b) => a + b, 0);
      this.cost.bytes += segment.bytes;
    } finally {
      for (const t of new Set([compressed.keys, compressed.values, compressed.lengths, compressed.logWeights, compressed.assign, ...tensors])) t?.dispose();
      compressed.dispose?.();
    }
  }

  /** Raw blocks as one stretch of host tensors. */
  private rawInput(blocks: RawBlock[]): { queries: Tensor<'f32'>; keys: Tensor<'f32'>; keysPreRope: Tensor<'f32'>; values: Tensor<'f32'> } {
    const D = this.headDim;
    const join = (pick: (b: RawBlock) => Float32Array) =>
      joinTokens(blocks.map((b) => ({ data: pick(b), shape: [1, pick(b).length / (b.tokens * D), b.tokens, D] })));
    return { queries: join((b) => b.queries), keys: join((b) => b.keys), keysPreRope: join((b) => b.keysPreRope), values: join((b) => b.values) };
  }

  /** Segments' valid slots, then every raw token, per head; padded to the longest head. */
  private layout(): Layout {
    const H = this.kvHeads, D = this.headDim, tokens = this.tokens;
    const rawTokens = this.raw.reduce((n, b) => n + b.tokens, 0);
    const lengths = Int32Array.from({ length: H }, (_, h) => this.segments.reduce((n, s) => n + s.lengths[h]!, 0) + rawTokens);
    const slots = Math.max(...lengths);
    const keys = new Float32Array(H * slots * D), values = new Float32Array(H * slots * D), logWeights = new Float32Array(H * slots);
    const slotOf = new Int32Array(H * tokens).fill(-1);
    for (let h = 0; h < H; h++) {
      let slot = 0, token = 0;
      for (const s of this.segments) {
        const used = s.lengths[h]!;
        keys.set(s.keys.subarray(h * s.slots * D, (h * s.slots + used) * D), (h * slots + slot) * D);
        values.set(s.values.subarray(h * s.slots * D, (h * s.slots + used) * D), (h * slots + slot) * D);
        if (s.logWeights) logWeights.set(s.logWeights.subarray(h * s.slots, h * s.slots + used), h * slots + slot);
        for (let t = 0; t < s.tokens; t++) {
          const local = s.assign ? s.assign[h * s.tokens + t]! : t;
          if (local >= 0) slotOf[h * tokens + token + t] = slot + local;
        }
        slot += used;
        token += s.tokens;
      }
      for (const b of this.raw) {
        keys.set(b.keys.subarray(h * b.tokens * D, (h + 1) * b.tokens * D), (h * slots + slot) * D);
        values.set(b.values.subarray(h * b.tokens * D, (h + 1) * b.tokens * D), (h * slots + slot) * D);
        for (let t = 0; t < b.tokens; t++) slotOf[h * tokens + token + t] = slot + t;
        slot += b.tokens;
        token += b.tokens;
      }
    }
    return { keys, values, slots, lengths, logWeights, slotOf, tokens };
  }
}

/** One LayerCache per model layer, as the model's KvCache. */
export class ModelCache implements KvCache {
  readonly layers: LayerCache[];
  private cached = 0;

  constructor(make: (layer: number) => LayerCache, layers: number) {
    this.layers = Array.from({ length: layers }, (_, l) => make(l));
  }

  get length(): number {
    return this.cached;
  }

  extend(kv: LayerKV): Promise<AttendedKV> {
    return this.layers[kv.layer]!.extend(kv);
  }

  commit(tokens: number): void {
    this.cached += tokens;
  }

  async compress(keepRecent = 0): Promise<void> {
    for (const layer of this.layers) await layer.compress(keepRecent);
  }

  /** Summed over layers: bytes / tokens is bytes per token per layer. */
  get compressedCost(): CacheCost {
    const total: CacheCost = { tokens: 0, slots: 0, bytes: 0 };
    for (const layer of this.layers) {
      const c = layer.compressedCost;
      total.tokens += c.tokens;
      total.slots += c.slots;
      total.bytes += c.bytes;
    }
    return total;
  }
}
