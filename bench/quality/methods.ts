/**
 * The quality harness's method registry: adding a method is adding one entry to METHODS.
 *
 * A 'cache' entry compresses one layer's K/V: `prepare` fits it to calibration data (K/V of
 * texts other than the ones scored) and returns the compressor the cache calls, in prefill
 * mode once on the prompt, in decode mode once per block of new tokens as it fills. It
 * receives the post-RoPE keys, the pre-RoPE keys, the values, the queries of those tokens
 * and their first position, and returns post-RoPE slots plus the bytes they take.
 * An 'attention' entry (pyramid attention, to come) keeps the cache raw and replaces the
 * attention op itself.
 */
import { attentionScores, gaussianMerge, softMatch, Tensor, type CompressedKV } from '../../lib/index.js';
import { DENSE_ELEMENT_BYTES, type AttentionOverride, type Compressed, type Compressor } from './cache.js';
import { applyRope, ROPE_THETA, type LayerKV } from './model.js';

/** Per layer, K/V of calibration text [1, Hkv, T, D] on the run's device. */
export interface CalibrationLayer {
  keysPreRope: Tensor<'f32'>;
  keys: Tensor<'f32'>;
  values: Tensor<'f32'>;
}

export interface Calibration {
  layers: CalibrationLayer[];
  headDim: number;
  /** where the data came from, for the result file */
  source: string;
}

interface EntryBase {
  name: string;
  family: string;
  /** kept-token ratios to run; fixed-rate methods (quantizers) keep every token: [1] */
  budgets: number[];
  /** what decode mode does with it, for the README and the result file */
  decode: string;
}

export interface CacheMethod extends EntryBase {
  kind: 'cache';
  prepare(calibration: Calibration): Promise<Compressor>;
}

export interface AttentionMethod extends EntryBase {
  kind: 'attention';
  /** the attention to use at `budget`; its cache stays raw */
  prepare(calibration: Calibration, budget: number): Promise<AttentionOverride>;
}

export type Method = CacheMethod | AttentionMethod;

/** Dense K/V elements of a layer's tokens, stored as a deployed cache would (f16). */
export function denseBytes(tokens: number, kvHeads: number, headDim: number): number {
  return 2 * tokens * kvHeads * headDim * DENSE_ELEMENT_BYTES;
}

/** A merged or clustered cache as the harness's Compressed: slots in f16 plus an f16 log-size each. */
async function fromCompressedKV(kv: CompressedKV): Promise<Compressed> {
  const D = kv.keys.shape[3]!;
  const used = ((await kv.lengths.data()) as Int32Array).reduce((a, b) => a + b, 0);
  return {
    keys: kv.keys, values: kv.values, lengths: kv.lengths, assign: kv.assign, logWeights: await kv.logWeights(),
    bytes: denseBytes(used, 1, D) + used * DENSE_ELEMENT_BYTES,
    dispose: () => kv.dispose(),
  };
}

export const uncompressed: CacheMethod = {
  kind: 'cache', name: 'uncompressed', family: 'dense', budgets: [1],
  decode: 'keeps every token (f16 storage counted)',
  prepare: async () => async ({ keys, values }) => ({
    keys, values, bytes: denseBytes(keys.shape[2]!, keys.shape[1]!, keys.shape[3]!),
  }),
};

/**
 * gaussianMerge as bench/merge.bench.ts found best on the real dumps: adaptive sigma, 45% of
 * the kept slots protected as the top-score tokens, the first token kept (attention sink).
 * Scores: attentionScores of the compressed tokens' own last 32 queries (SnapKV's window).
 */
export const gaussianMergeMethod: CacheMethod = {
  kind: 'cache', name: 'gaussianMerge', family: 'merge', budgets: [0.5, 0.25, 0.125],
  decode: 'each block of 32 new tokens is merged on its own to the budget, scored by its own queries',
  prepare: async () => async ({ queries, keys, values }, budget) => {
    const T = keys.shape[2]!, kept = Math.max(1, Math.round(budget * T));
    const scores = await attentionScores(queries, keys, { window: Math.min(32, T) });
    try {
      return await fromCompressedKV(await gaussianMerge(keys, values, scores, {
        budget: kept, sigma: 'adaptive', protect: { first: 1, topScore: Math.floor(0.45 * kept) },
      }));
    } finally {
      scores.dispose();
    }
  },
};

/** Chunk of softMatch; the prompt split and the decode block are multiples of it, so chunks tile exactly. */
export const SOFTMATCH_CHUNK = 32;

export const softMatchMethod: CacheMethod = {
  kind: 'cache', name: 'softMatch', family: 'cluster', budgets: [0.5, 0.25, 0.125],
  decode: 'each 32-token chunk is clustered once it fills (what ClusteredKV.append does)',
  prepare: async () => async ({ keys, values }, budget) =>
    fromCompressedKV(await softMatch(keys, values, { chunk: SOFTMATCH_CHUNK, ratio: budget, protect: { first: 0 } })),
};

/** What quantize returns, as far as the harness needs it. */
export interface QuantizedLike {
  effectiveBits: number;
  /** stored bytes: codes plus scales and zero points, keys and values */
  bytes: number;
  dispose(): void;
}

/** The quantization API being written in lib/ (its announced shape). */
export interface QuantApi {
  calibrate(data: { keys: Tensor; values: Tensor; mode: string; headDim: number }): unknown;
  quantize(keysPreRope: Tensor, values: Tensor, params: unknown, options: { ropeTheta: number; ropeStyle: 'interleaved' }): Promise<QuantizedLike> | QuantizedLike;
  dequantize(qkv: QuantizedLike, options: { applyRope: boolean }): Promise<{ keys: Tensor; values: Tensor }> | { keys: Tensor; values: Tensor };
}

/**
 * One quantization mode as a registry entry: per layer, calibrated on the pre-RoPE keys and
 * values of the calibration data; quantizes pre-RoPE keys (every token kept, so budget is
 * 1). Dequantized keys are rotated here at their true positions: a decode block starts
 * past position 0, and the announced dequantize rotates from 0.
 */
export function quantMethod(api: QuantApi, mode: string): CacheMethod {
  return {
    kind: 'cache', name: mode, family: 'quant', budgets: [1],
    decode: 'each block of 32 new tokens is quantized on its own with the calibrated parameters',
    prepare: async (calibration) => {
      const params = await Promise.all(calibration.layers.map((l) => api.calibrate({ keys: l.keysPreRope, values: l.values, mode, headDim: calibration.headDim })));
      return async (input: LayerKV) => {
        const qkv = await api.quantize(input.keysPreRope, input.values, params[input.layer], { ropeTheta: ROPE_THETA, ropeStyle: 'interleaved' });
        try {
          const { keys: preRope, values } = await api.dequantize(qkv, { applyRope: false });
          const [, H, T, D] = preRope.shape as [number, number, number, number];
          const rotated = (await preRope.data()) as Float32Array;
          preRope.dispose();
          applyRope(rotated, D, (row) => input.start + (row % T));
          const host = Tensor.from(rotated, [1, H, T, D], 'f32');
          return { keys: input.keys.device === 'cpu' ? host : await host.to(input.keys.device), values, bytes: qkv.bytes };
        } finally {
          qkv.dispose();
        }
      };
    },
  };
}

/** Every method the harness runs; quantization modes join as quantMethod(api, mode) entries. */
export const METHODS: Method[] = [uncompressed, gaussianMergeMethod, softMatchMethod];
