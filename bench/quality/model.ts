/**
 * A small f32 CPU inference runner for llama2.c "version 0" checkpoints (RMSNorm, SwiGLU,
 * GQA, interleaved RoPE, tied classifier) whose attention is kvsquash's `attention`, so a
 * compressed cache (the `kvHook`) is what the model really attends over. For the quality
 * harness; not part of the package.
 */
import { readFileSync } from 'node:fs';

import { attention, Tensor } from '../../lib/index.js';

export interface ModelConfig {
  dim: number;
  hiddenDim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
  headDim: number;
}

interface LayerWeights {
  rmsAtt: Float32Array; wq: Float32Array; wk: Float32Array; wv: Float32Array; wo: Float32Array;
  rmsFfn: Float32Array; w1: Float32Array; w2: Float32Array; w3: Float32Array;
}

/**
 * Replaces one layer's K/V (post-RoPE keys, [1, kvHeads, T, headDim]) before attention; may
 * return kvLengths / logWeights for merged caches.
 */
export type KvHook = (layer: number, keys: Tensor<'f32'>, values: Tensor<'f32'>) => Promise<{
  keys: Tensor; values: Tensor; kvLengths?: Tensor; logWeights?: Tensor;
}>;

export class Llama {
  readonly config: ModelConfig;
  private readonly embedding: Float32Array;
  private readonly layerWeights: LayerWeights[];
  private readonly rmsFinal: Float32Array;
  private readonly cos: Float32Array;
  private readonly sin: Float32Array;

  constructor(path: string) {
    const bytes = readFileSync(path);
    const header = new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 28));
    const [dim, hiddenDim, layers, heads, kvHeads, vocabSigned, seqLen] = Array.from(header) as number[];
    if (vocabSigned! < 0) throw new Error(`${path}: untied classifiers are not supported`);
    this.config = { dim: dim!, hiddenDim: hiddenDim!, layers: layers!, heads: heads!, kvHeads: kvHeads!, vocab: vocabSigned!, seqLen: seqLen!, headDim: dim! / heads! };
    const floats = new Float32Array(bytes.buffer.slice(bytes.byteOffset + 28, bytes.byteOffset + bytes.length));
    let offset = 0;
    const take = (count: number) => floats.subarray(offset, (offset += count));
    const c = this.config, kvDim = c.kvHeads * c.headDim;
    this.embedding = take(c.vocab * c.dim);
    const perLayer = (size: number) => { const all = take(c.layers * size); return (l: number) => all.subarray(l * size, (l + 1) * size); };
    const rmsAtt = perLayer(c.dim), wq = perLayer(c.dim * c.dim), wk = perLayer(kvDim * c.dim), wv = perLayer(kvDim * c.dim);
    const wo = perLayer(c.dim * c.dim), rmsFfn = perLayer(c.dim), w1 = perLayer(c.hiddenDim * c.dim), w2 = perLayer(c.dim * c.hiddenDim);
    const w3 = perLayer(c.hiddenDim * c.dim);
    this.layerWeights = Array.from({ length: c.layers }, (_, l) => ({
      rmsAtt: rmsAtt(l), wq: wq(l), wk: wk(l), wv: wv(l), wo: wo(l), rmsFfn: rmsFfn(l), w1: w1(l), w2: w2(l), w3: w3(l),
    }));
    this.rmsFinal = take(c.dim);
    // RoPE tables (the file's freq_cis copies are not needed): adjacent pairs, theta 10000
    const half = c.headDim / 2;
    this.cos = new Float32Array(c.seqLen * half);
    this.sin = new Float32Array(c.seqLen * half);
    for (let pos = 0; pos < c.seqLen; pos++) {
      for (let j = 0; j < half; j++) {
        const angle = pos * Math.pow(10000, (-2 * j) / c.headDim);
        this.cos[pos * half + j] = Math.cos(angle);
        this.sin[pos * half + j] = Math.sin(angle);
      }
    }
  }

  /** Logits [tokens.length, vocab] of one causal pass over `tokens` (at most seqLen). */
  async forward(tokens: number[], kvHook?: KvHook): Promise<Float32Array> {
    const c = this.config, n = tokens.length, kvDim = c.kvHeads * c.headDim;
    if (n > c.seqLen) throw new Error(`${n} tokens exceed the model's context of ${c.seqLen}`);
    const x = new Float32Array(n * c.dim);
    tokens.forEach((t, i) => x.set(this.embedding.subarray(t * c.dim, (t + 1) * c.dim), i * c.dim));
    const normed = new Float32Array(n * c.dim);
    for (let l = 0; l < c.layers; l++) {
      const w = this.layerWeights[l]!;
      rmsnorm(normed, x, w.rmsAtt, n, c.dim);
      const q = matmul(normed, w.wq, n, c.dim, c.dim), k = matmul(normed, w.wk, n, c.dim, kvDim), v = matmul(normed, w.wv, n, c.dim, kvDim);
      this.rope(q, n, c.heads);
      this.rope(k, n, c.kvHeads);
      const queries = Tensor.from(toHeads(q, n, c.heads, c.headDim), [1, c.heads, n, c.headDim]);
      let keys: Tensor = Tensor.from(toHeads(k, n, c.kvHeads, c.headDim), [1, c.kvHeads, n, c.headDim]);
      let values: Tensor = Tensor.from(toHeads(v, n, c.kvHeads, c.headDim), [1, c.kvHeads, n, c.headDim]);
      let extra = {};
      if (kvHook) {
        const hooked = await kvHook(l, keys as Tensor<'f32'>, values as Tensor<'f32'>);
        ({ keys, values } = hooked);
        extra = { ...(hooked.kvLengths ? { kvLengths: hooked.kvLengths } : {}), ...(hooked.logWeights ? { logWeights: hooked.logWeights } : {}) };
      }
      const out = (await (await attention(queries, keys, values, { causal: true, ...extra })).data()) as Float32Array;
      const attended = fromHeads(out, n, c.heads, c.headDim);
      addInto(x, matmul(attended, w.wo, n, c.dim, c.dim));
      rmsnorm(normed, x, w.rmsFfn, n, c.dim);
      const h1 = matmul(normed, w.w1, n, c.dim, c.hiddenDim), h3 = matmul(normed, w.w3, n, c.dim, c.hiddenDim);
      for (let i = 0; i < h1.length; i++) h1[i] = (h1[i]! / (1 + Math.exp(-h1[i]!))) * h3[i]!;
      addInto(x, matmul(h1, w.w2, n, c.hiddenDim, c.dim));
    }
    rmsnorm(normed, x, this.rmsFinal, n, c.dim);
    return matmul(normed, this.embedding, n, c.dim, c.vocab);
  }

  /** Rotates adjacent pairs (x[2j], x[2j+1]) of every head of every position in place. */
  private rope(data: Float32Array, n: number, heads: number): void {
    const hd = this.config.headDim, half = hd / 2;
    for (let pos = 0; pos < n; pos++) {
      for (let h = 0; h < heads; h++) {
        const base = (pos * heads + h) * hd;
        for (let j = 0; j < half; j++) {
          const c = this.cos[pos * half + j]!, s = this.sin[pos * half + j]!;
          const a = data[base + 2 * j]!, b = data[base + 2 * j + 1]!;
          data[base + 2 * j] = a * c - b * s;
          data[base + 2 * j + 1] = a * s + b * c;
        }
      }
    }
  }
}

function rmsnorm(out: Float32Array, x: Float32Array, weight: Float32Array, n: number, dim: number): void {
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (let d = 0; d < dim; d++) sum += x[i * dim + d]! ** 2;
    const scale = 1 / Math.sqrt(sum / dim + 1e-5);
    for (let d = 0; d < dim; d++) out[i * dim + d] = x[i * dim + d]! * scale * weight[d]!;
  }
}

/** y [n, out] = x [n, in] @ W^T, W stored (out, in). */
function matmul(x: Float32Array, w: Float32Array, n: number, inDim: number, outDim: number): Float32Array {
  const y = new Float32Array(n * outDim);
  for (let i = 0; i < n; i++) {
    const row = x.subarray(i * inDim, (i + 1) * inDim);
    for (let o = 0; o < outDim; o++) {
      let sum = 0;
      const wr = o * inDim;
      for (let k = 0; k < inDim; k++) sum += row[k]! * w[wr + k]!;
      y[i * outDim + o] = sum;
    }
  }
  return y;
}

function addInto(x: Float32Array, y: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] = x[i]! + y[i]!;
}

/** [n, heads * hd] -> [heads, n, hd] (the dense KV layout). */
function toHeads(x: Float32Array, n: number, heads: number, hd: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < n; i++) for (let h = 0; h < heads; h++) out.set(x.subarray((i * heads + h) * hd, (i * heads + h + 1) * hd), (h * n + i) * hd);
  return out;
}

function fromHeads(x: Float32Array, n: number, heads: number, hd: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let h = 0; h < heads; h++) for (let i = 0; i < n; i++) out.set(x.subarray((h * n + i) * hd, (h * n + i + 1) * hd), (i * heads + h) * hd);
  return out;
}
