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
import {
  attentionScores, calibrate, dequantize, gaussianMerge, pyramidAttention, QUANT_MODES, QuantParams, quantize, softMatch, Tensor,
  type CompressedKV, type QuantMode,
} from '../../lib/index.js';
import { DENSE_ELEMENT_BYTES, type AttentionOverride, type Compressed, type Compressor } from './cache.js';
import { ROPE_THETA, type LayerKV } from './model.js';

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
  /** decode mode compresses only stretches of at least this many tokens (default: every block) */
  decodeMinTokens?: number;
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
/**
 * One quantization mode as a registry entry: per layer, calibrated on the pre-RoPE keys and
 * values of the calibration data (1 sink token, no recent window: the harness keeps its own
 * raw window). Each stretch handed over is quantized from its true position; whole 64-token
 * pages are coded and a shorter tail stays raw f16 (counted in its bytes). Decode mode hands
 * over stretches of at least one page (every other 32-token block).
 */
export function quantMethod(mode: QuantMode, outliers = 0): CacheMethod {
  return {
    kind: 'cache', name: outliers ? `${mode}+${outliers}o` : mode, family: 'quant', budgets: [1], decodeMinTokens: 64,
    decode: 'every 64 new tokens (behind the raw window) are quantized as pages; the first token stays f16 (sink)',
    prepare: async (calibration) => {
      const params = await Promise.all(calibration.layers.map((l) => calibrate({
        keys: l.keysPreRope, values: l.values, mode, headDim: calibration.headDim, outliers, sinkTokens: 1, recentTokens: 0, iterations: 25,
      })));
      return async (input: LayerKV) => {
        const base = params[input.layer]!, sink = input.start === 0 ? 1 : 0;
        const layerParams = sink === base.settings.sinkTokens ? base : new QuantParams({ ...base.settings, sinkTokens: sink }, base.arrays);
        const [, , T] = input.keysPreRope.shape as [number, number, number];
        using positions = Tensor.from(Int32Array.from({ length: T }, (_, t) => input.start + t), [1, T], 'i32');
        const placed = input.keys.device === 'cpu' ? positions : await positions.to(input.keys.device);
        try {
          using qkv = await quantize(input.keysPreRope, input.values, layerParams, { ropeTheta: ROPE_THETA, ropeStyle: 'interleaved', positions: placed });
          const { keys, values } = await dequantize(qkv, { applyRope: true });
          return { keys, values, bytes: qkv.bytes };
        } finally {
          if (placed !== positions) placed.dispose();
        }
      };
    },
  };
}

/**
 * Pyramid sparse attention as an 'attention' entry: the cache stays raw and every query
 * block attends through `pyramidAttention` (key blocks of 16, query blocks of 16: this
 * model's sequences are short). A budget b sets the top-k level ranges to 0.6b at full
 * resolution, then 0.4b each at levels 2, 4 and 8, about 0.95b of the dense work; the
 * table's bytes stay dense (the saving is compute, not memory).
 */
export const pyramidMethod: AttentionMethod = {
  kind: 'attention', name: 'pyramidAttention', family: 'pyramid', budgets: [0.5, 0.25, 0.125],
  decode: 'every 32-token block of queries attends through pyramidAttention over the raw cache',
  prepare: async (_calibration, budget) => async (queries, kv) => {
    const [b1, b2, b4, b8] = [0.6, 1.0, 1.4, 1.8].map((f) => Math.min(1, f * budget)) as [number, number, number, number];
    const bounds = [b1, b2, b4, b8] as const;
    const { output } = await pyramidAttention(queries, kv.keys, kv.values, { causal: true, block: 16, queryBlock: 16, mode: 'topk', bounds });
    return output;
  },
};

/** Every method the harness runs. */
export const METHODS: Method[] = [
  uncompressed, gaussianMergeMethod, softMatchMethod,
  ...QUANT_MODES.map((mode) => quantMethod(mode)), quantMethod('nuq2', 1),
  pyramidMethod,
];
