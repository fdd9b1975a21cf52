// Compiled (never run) by scripts/test-package.mjs against the installed package's .d.ts:
// the good calls must type-check and every @ts-expect-error line must be an error.
import {
  attention, attentionScores, backend, ClusteredKV, gaussianMerge, KvsquashError, MergedKV, memoryStats, softMatch, Tensor,
  toF16, type AttentionWithLse, type BackendInfo, type DType, type ErrorCode,
} from 'kvsquash';

declare const t: Tensor;
const plain: Promise<Tensor> = attention(t, t, t, { causal: true, scale: 0.1 });
const withLse: Promise<AttentionWithLse> = attention(t, t, t, { returnLse: true });
const f16: Tensor<'f16'> = Tensor.from(toF16([1, 2]), [2], 'f16');
const zeros: Tensor<'f32'> = Tensor.zeros([2, 3]);
const info: BackendInfo = backend();
const bytes: number = memoryStats('cuda:0').bytes;
const merged: Promise<MergedKV> = gaussianMerge(t, t, t, { budget: 0.5, sigma: 'adaptive', protect: { first: 1, topScore: 8 } });
const clustered: Promise<ClusteredKV> = softMatch(t, t, { chunk: 32, ratio: 0.25 });
const scores: Promise<Tensor<'f32'>> = attentionScores(t, t, { window: 16 });
const dtype: DType = t.dtype;
const code: ErrorCode = new KvsquashError('E_SHAPE', 'x').code;
const pointer: bigint = t.pointer;
void [plain, withLse, f16, zeros, info, bytes, merged, clustered, scores, dtype, code, pointer];

// @ts-expect-error a misspelt option
attention(t, t, t, { casual: true });
// @ts-expect-error scale is a number
attention(t, t, t, { scale: '0.1' });
// @ts-expect-error outDtype is a float dtype
attention(t, t, t, { outDtype: 'i32' });
// @ts-expect-error no such dtype
Tensor.zeros([1], 'f64');
// @ts-expect-error devices are 'cpu' or 'cuda[:N]'
Tensor.zeros([1], 'f32', 'gpu');
// @ts-expect-error valueScale is 'mean' or 'paper'
gaussianMerge(t, t, t, { valueScale: 'sum' });
// @ts-expect-error fromDevicePointer takes a bigint
Tensor.fromDevicePointer(1234, [1], 'f32');
// @ts-expect-error shape is readonly
t.shape.push(1);
// @ts-expect-error no such error code
const bad: ErrorCode = 'E_NOPE';
void bad;
