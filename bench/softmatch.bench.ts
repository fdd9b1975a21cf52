/**
 * softMatch: quality on the real KV dumps (bench/common/prefix-quality.ts) at 50% / 25% /
 * 12.5% of the prefix beside gaussianMerge and eviction, and speed at 32K tokens x 8 KV heads
 * x 128 beside dense causal prefill attention (CUDA only, as in the merge benchmark).
 */
import { softMatch } from '../lib/index.js';
import { GAUSSIAN_METHODS } from './merge.bench.js';
import { runCompressionBench } from './common/compression-bench.js';
import { evictTopScore, uniformDrop, type PrefixMethod } from './common/prefix-quality.js';

const CHUNK = 32;

// Chunks of 32 tile the 448-token prefix exactly (no raw tail), so the kept count is
// exactly the ratio's; no protected tokens, so the count is the same as the other methods'.
const softMatchMethod: PrefixMethod = async ({ keys, values, prefix }, kept) => {
  const clustered = await softMatch(keys, values, { chunk: CHUNK, ratio: kept / prefix, protect: { first: 0 } });
  if (clustered.keys.shape[2] !== kept) throw new Error(`softMatch kept ${clustered.keys.shape[2]} slots, not ${kept}`);
  return { keys: clustered.keys, values: clustered.values, logWeights: (await (await clustered.logWeights()).data()) as Float32Array };
};

export async function runSoftMatchBench(options: { quick?: boolean } = {}): Promise<void> {
  await runCompressionBench('softmatch', {
    [`softMatch chunk ${CHUNK}`]: softMatchMethod,
    'gaussianMerge adaptive +top45%': GAUSSIAN_METHODS['gaussianMerge adaptive +top45%']!,
    'evict top-score': evictTopScore, 'uniform drop': uniformDrop,
  }, { label: 'softMatch 25%', run: (keys, values) => softMatch(keys, values, { chunk: CHUNK, ratio: 0.25 }) }, options);
}
