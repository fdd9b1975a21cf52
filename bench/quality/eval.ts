/** Greedy generation and perplexity with the quality runner. */
import { readFileSync } from 'node:fs';

import { BOS, type Tokenizer } from './tokenizer.js';
import type { Llama } from './model.js';

/** Stories of the eval text, split on lines of `---`. */
export function readStories(path: string): string[] {
  return readFileSync(path, 'utf8').split(/\n---\n/).map((s) => s.trim()).filter(Boolean);
}

/** Greedy continuation from BOS, `steps` tokens (stops early when the model emits BOS). */
export async function generateGreedy(model: Llama, tokenizer: Tokenizer, steps: number): Promise<string> {
  const ids = [BOS];
  while (ids.length <= steps) {
    const logits = await model.forward(ids);
    const last = logits.subarray((ids.length - 1) * model.config.vocab, ids.length * model.config.vocab);
    let best = 0;
    for (let i = 1; i < last.length; i++) if (last[i]! > last[best]!) best = i;
    if (best === BOS) break;
    ids.push(best);
  }
  return tokenizer.decode(ids);
}

/** Next-token NLL (nats) of logits row `row` ([rows, vocab]) for token `target`. */
export function tokenNll(logits: Float32Array, vocab: number, row: number, target: number): number {
  const values = logits.subarray(row * vocab, (row + 1) * vocab);
  let max = -Infinity;
  for (const z of values) max = Math.max(max, z);
  let sum = 0;
  for (const z of values) sum += Math.exp(z - max);
  return max + Math.log(sum) - values[target]!;
}

/** Mean next-token NLL (nats) over texts, each from BOS, in windows of at most seqLen tokens. */
export async function perplexity(model: Llama, tokenizer: Tokenizer, texts: string[]): Promise<{ ppl: number; tokens: number }> {
  let total = 0, count = 0;
  const { seqLen, vocab } = model.config;
  for (const text of texts) {
    const ids = tokenizer.encode(text);
    for (let start = 0; start < ids.length - 1; start += seqLen) {
      const window = ids.slice(start, start + seqLen);
      if (window.length < 2) continue;
      const logits = await model.forward(window);
      for (let i = 0; i < window.length - 1; i++, count++) total += tokenNll(logits, vocab, i, window[i + 1]!);
    }
  }
  return { ppl: Math.exp(total / count), tokens: count };
}
