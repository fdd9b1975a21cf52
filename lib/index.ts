/**
 * kvsquash: KV-cache compression kernels (CUDA + CPU reference) for JavaScript runtimes.
 */
export { Tensor, isTensor, type Shape } from './tensor.js';
export type { Device, DeviceLike } from './device.js';
export { DTYPES, toF16, fromF16, toBF16, fromBF16, type DType, type DTypeArrayMap, type TypedArray } from './dtype.js';
export { KvsquashError, type ErrorCode } from './errors.js';
export { backend, memoryStats, setCpuThreads, type BackendInfo, type CudaDeviceInfo, type MemoryStats } from './backend.js';
export { attention, type AttentionOptions, type AttentionWithLse, type FloatDType } from './ops/attention.js';
export { attentionScores, gaussianMerge, MergedKV, type AttentionScoresOptions, type CountOrFraction, type GaussianMergeOptions } from './ops/merge.js';
export { softMatch, ClusteredKV, type SoftMatchOptions } from './ops/softmatch.js';
export { CompressedKV } from './ops/compressed.js';
export { quantize, dequantize, quantizedAttention, QuantizedKV, type QuantizeOptions, type QuantizedAttentionOptions, type RopeStyle } from './ops/quant.js';
export { calibrate, kmeans, QuantParams, type CalibrateOptions, type KmeansOptions, type QuantSettings, type RawDType } from './ops/quant-params.js';
export { QUANT_MODES, type QuantMode } from './ops/quant-format.js';
export {
  pyramidPool, pyramidImportance, pyramidAssign, pyramidAttention, PyramidLevels, PyramidMask, PYRAMID_LEVELS,
  DEFAULT_TOPK_BOUNDS, DEFAULT_THRESHOLD_BOUNDS, type PyramidBlockOptions, type PyramidImportanceOptions,
  type PyramidAssignOptions, type PyramidAttentionOptions, type PyramidAttentionResult, type PyramidBounds,
  type PyramidMode, type MaskGranularity,
} from './ops/pyramid.js';
