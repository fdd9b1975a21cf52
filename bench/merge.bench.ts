/**
 * gaussianMerge: quality on the real KV dumps and speed at 32K tokens.
 *
 * Quality: the protocol of bench/common/prefix-quality.ts at 50% / 25% / 12.5% of the
 * prefix, for Gaussian merging (with log(size) weights) beside eviction and uniform dropping.
 * Speed: bench/common/compression-bench.ts (32K tokens, beside dense prefill on CUDA).
 */
import { gaussianMerge, Tensor } from '../lib/index.js';
import { runCompressionBench } from './common/compression-bench.js';
import { evictTopScore, uniformDrop, type PrefixMethod } from './common/prefix-quality.js';

// Gaussian variants: KVMerger protects its top-score tokens; 45% of the kept slots keeps the
// budget reachable (each protected token can split a run, and every run needs a slot).
function gaussian(topScore: number, sigma: number | 'adaptive'): PrefixMethod {
  return async ({ keys, values, scores, prefix }, kept) => {
    const [B, H] = keys.shape as [number, number];
    const merged = await gaussianMerge(keys, values, Tensor.from(scores, [B, H, prefix]), {
      budget: kept, protect: { first: 1, topScore: Math.floor(topScore * kept) }, sigma,
    });
    return { keys: merged.keys, values: merged.values, logWeights: (await (await merged.logWeights()).data()) as Float32Array };
  };
}

export const GAUSSIAN_METHODS: Record<string, PrefixMethod> = {
  gaussianMerge: gaussian(0, 5),
  'gaussianMerge +top45%': gaussian(0.45, 5),
  'gaussianMerge adaptive +top45%': gaussian(0.45, 'adaptive'),
};

export async function runMergeBench(options: { quick?: boolean } = {}): Promise<void> {
  await runCompressionBench('merge', { ...GAUSSIAN_METHODS, 'evict top-score': evictTopScore, 'uniform drop': uniformDrop }, {
    label: 'gaussianMerge 25%',
    run: (keys, values, scores) => gaussianMerge(keys, values, scores, { budget: 0.25, protect: { first: 1, recent: 64 } }),
  }, options);
}
