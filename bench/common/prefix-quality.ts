/**
 * The quality protocol the compression benchmarks share, on the real KV dumps: per story
 * and layer, the prefix (all but the last 64 tokens) is compressed to a kept-token count;
 * the last 64 queries attend causally over [compressed prefix ; 64 recent tokens kept raw].
 * Reported: the relative L2 error of those outputs against the uncompressed cache, averaged
 * over layers and stories. Eviction (keep the top-score tokens; its scores come from the
 * same 64 queries, an oracle advantage) and uniform dropping are the shared baselines.
 */
import { attention, attentionScores, Tensor } from '../../lib/index.js';
import { concatTokens, gatherTokens, range, relativeL2, toHost, type HostKV } from './kv-host.js';
import { readNpy } from './npy.js';
import { printTable } from './report.js';
import { kvDumps, layerFile } from './shared-data.js';

export const RECENT = 64;
export const RATIOS = [0.5, 0.25, 0.125];

export interface PrefixInput {
  /** the prefix's keys and values [B, Hkv, prefix, D] */
  keys: Tensor<'f32'>;
  values: Tensor<'f32'>;
  /** attentionScores of the last 64 queries over the prefix, [B, Hkv, prefix] */
  scores: Float32Array;
  prefix: number;
}

/** A compressed prefix with exactly `kept` slots per head. */
export interface CompressedPrefix {
  keys: Tensor;
  values: Tensor;
  /** log(size) per slot, [B, Hkv, kept]; none for eviction-style methods */
  logWeights?: Float32Array;
}

export type PrefixMethod = (input: PrefixInput, kept: number) => Promise<CompressedPrefix>;

export const evictTopScore: PrefixMethod = async ({ keys, values, scores, prefix }, kept) => {
  const pick = (head: number) => range(0, prefix).sort((a, b) => scores[head * prefix + b]! - scores[head * prefix + a]! || a - b)
    .slice(0, kept).sort((a, b) => a - b);
  return { keys: gatherTokens(await toHost(keys), pick), values: gatherTokens(await toHost(values), pick) };
};

export const uniformDrop: PrefixMethod = async ({ keys, values, prefix }, kept) => {
  const pick = () => range(0, kept).map((i) => Math.floor((i * prefix) / kept));
  return { keys: gatherTokens(await toHost(keys), pick), values: gatherTokens(await toHost(values), pick) };
};

/** Runs every method at every ratio; prints and returns the table rows. */
export async function prefixQuality(methods: Record<string, PrefixMethod>): Promise<Record<string, string | number>[]> {
  const dumps = kvDumps();
  if (dumps.length === 0) {
    console.log('(quality: ../shared/data/kv is absent, skipped)');
    return [];
  }
  const errors = new Map<string, number[]>();
  for (const { dir, layers } of dumps) {
    for (const layer of layers) {
      const q = readNpy(layerFile(dir, layer, 'q')), kT = readNpy(layerFile(dir, layer, 'k')), vT = readNpy(layerFile(dir, layer, 'v'));
      const [B, Hq, T, D] = q.shape as [number, number, number, number];
      const prefix = T - RECENT;
      const last = (data: Float32Array, heads: number) => {
        const out = new Float32Array(B * heads * RECENT * D);
        for (let h = 0; h < B * heads; h++) out.set(data.subarray((h * T + prefix) * D, (h * T + T) * D), h * RECENT * D);
        return out;
      };
      const dense = last((await (await attention(q, kT, vT, { causal: true })).data()) as Float32Array, Hq);
      const queries = Tensor.from(last((await q.data()) as Float32Array, Hq), [B, Hq, RECENT, D]);
      const [k, v] = await Promise.all([toHost(kT), toHost(vT)]);
      const H = k.shape[1];
      const allScores = (await (await attentionScores(q, kT, { window: RECENT })).data()) as Float32Array;
      const input: PrefixInput = {
        keys: gatherTokens(k, () => range(0, prefix)), values: gatherTokens(v, () => range(0, prefix)), prefix,
        scores: Float32Array.from({ length: B * H * prefix }, (_, i) => allScores[Math.floor(i / prefix) * T + (i % prefix)]!),
      };
      const recentK = await toHost(gatherTokens(k, () => range(prefix, T))), recentV = await toHost(gatherTokens(v, () => range(prefix, T)));
      for (const ratio of RATIOS) {
        const kept = Math.round(ratio * prefix);
        for (const [name, method] of Object.entries(methods)) {
          const compressed = await method(input, kept);
          const weights = new Float32Array(B * H * (kept + RECENT));
          if (compressed.logWeights) {
            for (let head = 0; head < B * H; head++)
              weights.set(compressed.logWeights.subarray(head * kept, (head + 1) * kept), head * (kept + RECENT));
          }
          const out = await attention(queries, concatTokens(await toHost(compressed.keys as Tensor<'f32'>), recentK),
            concatTokens(await toHost(compressed.values as Tensor<'f32'>), recentV),
            { causal: true, logWeights: Tensor.from(weights, [B, H, kept + RECENT]) });
          const key = `${ratio}|${name}`;
          errors.set(key, [...(errors.get(key) ?? []), relativeL2(await out.data(), dense)]);
        }
      }
    }
  }
  const rows = [...errors.entries()].map(([key, list]) => {
    const [ratio, method] = key.split('|');
    return {
      'kept (of prefix)': `${Number(ratio) * 100}%`, method: method!,
      'rel L2 error (mean)': list.reduce((a, b) => a + b, 0) / list.length, 'worst layer': Math.max(...list), layers: list.length,
    };
  });
  printTable(rows);
  return rows;
}
