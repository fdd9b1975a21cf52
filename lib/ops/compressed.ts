/** What every compressed cache (MergedKV, ClusteredKV) shares: padded slots plus their sizes. */
import { Tensor } from '../tensor.js';

export abstract class CompressedKV implements Disposable {
  constructor(
    /** slot keys [B, Hkv, Tcap, D], the input dtype */
    readonly keys: Tensor,
    /** slot values [B, Hkv, Tcap, D] */
    readonly values: Tensor,
    /** i32 [B, Hkv]: slots in use per head (attention's kvLengths) */
    readonly lengths: Tensor<'i32'>,
    /** i32 [B, Hkv, Tcap]: tokens per slot (0 for padding) */
    readonly sizes: Tensor<'i32'>,
    /** i32 [B, Hkv, T]: the slot of each input token */
    readonly assign: Tensor<'i32'>,
  ) {}

  /** The family's own per-slot tensors, disposed with the rest. */
  protected abstract extraTensors(): Tensor[];

  /** f32 [B, Hkv, Tcap] = log(sizes) (0 on padding), on the cache's device: attention's logWeights. */
  async logWeights(): Promise<Tensor<'f32'>> {
    const sizes = await this.sizes.data();
    const logs = Tensor.from(Float32Array.from(sizes, (s) => (s > 0 ? Math.log(s) : 0)), this.sizes.shape, 'f32');
    return this.sizes.device === 'cpu' ? logs : logs.to(this.sizes.device);
  }

  dispose(): void {
    for (const t of [this.keys, this.values, this.lengths, this.sizes, this.assign, ...this.extraTensors()]) t.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
