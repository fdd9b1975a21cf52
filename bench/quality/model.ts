/**
 * A small f32 inference runner for llama2.c "version 0" checkpoints (RMSNorm, SwiGLU, GQA,
 * interleaved RoPE, tied classifier) whose attention is kvsquash's `attention`, so a
 * compressed cache (a `KvCache`) is what the model really attends over. The matmuls run in
 * JS on the CPU; attention runs on the model's device. For the quality harness; not part of
 * the package.
 */
import { readFileSync } from 'node:fs';

import { attention, Tensor, type Device } from '../../lib/index.js';

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

export const ROPE_THETA = 10000;

/** One layer's projections of the tokens of one forward call, on the model's device. */
export interface LayerKV {
  layer: number;
  /** position of the first of these tokens (its RoPE angle) */
  start: number;
  /** post-RoPE queries [1, heads, n, headDim] */
  queries: Tensor<'f32'>;
  /** post-RoPE keys [1, kvHeads, n, headDim]: what attention uses */
  keys: Tensor<'f32'>;
  /** the same keys before RoPE (quantizers calibrate and quantize these) */
  keysPreRope: Tensor<'f32'>;
  values: Tensor<'f32'>;
}

/**
 * What the new tokens of one layer attend over: [cached part ; the new tokens], causal over
 * the new ones (the queries are the last n positions of each head's kvLengths), with
 * log(size) weights for merged slots. `attend` replaces kvsquash's dense `attention` for
 * methods that change the attention itself rather than the cache.
 */
export interface AttendedKV {
  keys: Tensor;
  values: Tensor;
  kvLengths?: Tensor;
  logWeights?: Tensor;
  attend?: (queries: Tensor, kv: AttendedKV) => Promise<Tensor>;
}

/**
 * A per-layer K/V cache kept outside the model across forward calls: `extend` receives the
 * new tokens' K/V of each layer and returns what they attend over, keeping host copies as
 * it likes (the forward pass disposes both sides after attention); `commit` follows once
 * every layer has seen them.
 */
export interface KvCache {
  /** tokens already cached: the position of the next forward call's first token */
  readonly length: number;
  extend(kv: LayerKV): Promise<AttendedKV>;
  commit(tokens: number): void;
}

/**
 * Rotates adjacent pairs (x[2j], x[2j+1]) of each headDim-long row in place by
 * position(row) * theta^(-2j/headDim). cos and sin are rounded to f32 first, as
 * llama2.c's tables are, so the runner reproduces its logits.
 */
export function applyRope(data: Float32Array, headDim: number, position: (row: number) => number, theta = ROPE_THETA): void {
  const half = headDim / 2;
  const inverseFrequencies = Array.from({ length: half }, (_, j) => Math.pow(theta, (-2 * j) / headDim));
  for (let row = 0; row < data.length / headDim; row++) {
    const pos = position(row), base = row * headDim;
    for (let j = 0; j < half; j++) {
      const angle = pos * inverseFrequencies[j]!;
      const c = Math.fround(Math.cos(angle)), s = Math.fround(Math.sin(angle));
      const a = data[base + 2 * j]!, b = data[base + 2 * j + 1]!;
      data[base + 2 * j] = a * c - b * s;
      data[base + 2 * j + 1] = a * s + b * c;
    }
  }
}

export class Llama {
  readonly config: ModelConfig;
  private readonly embedding: Float32Array;
  private readonly layerWeights: LayerWeights[];
  private readonly rmsFinal: Float32Array;
  /** where attention runs (and the LayerKV tensors live) */
  readonly device: Device;

  constructor(path: string, options: { device?: Device } = {}) {
    this.device = options.device ?? 'cpu';
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
    this.rmsFinal = take(c.dim); // the freq_cis tables that follow are recomputed by applyRope
  }

  /**
   * Logits [tokens.length, vocab] of one causal pass over `tokens`. Without a cache the
   * tokens start at position 0 and attend only to each other; with one they continue it
   * (from position cache.length) and attend over what it returns.
   */
  async forward(tokens: number[], cache?: KvCache): Promise<Float32Array> {
    const c = this.config, n = tokens.length, kvDim = c.kvHeads * c.headDim, start = cache?.length ?? 0;
    if (start + n > c.seqLen) throw new Error(`${start + n} tokens exceed the model's context of ${c.seqLen}`);
    const x = new Float32Array(n * c.dim);
    tokens.forEach((t, i) => x.set(this.embedding.subarray(t * c.dim, (t + 1) * c.dim), i * c.dim));
    const normed = new Float32Array(n * c.dim);
    const onDevice = async (data: Float32Array, heads: number) => {
      const host = Tensor.from(toHeads(data, n, heads, c.headDim), [1, heads, n, c.headDim], 'f32');
      return this.device === 'cpu' ? host : host.to(this.device);
    };
    // rows of [n, heads, headDim] projections: row r is token r / heads
    const position = (heads: number) => (row: number) => start + Math.floor(row / heads);
    for (let l = 0; l < c.layers; l++) {
      const w = this.layerWeights[l]!;
      rmsnorm(normed, x, w.rmsAtt, n, c.dim);
      const q = matmul(normed, w.wq, n, c.dim, c.dim), k = matmul(normed, w.wk, n, c.dim, kvDim), v = matmul(normed, w.wv, n, c.dim, kvDim);
      const keysPreRope = await onDevice(k, c.kvHeads);
      applyRope(q, c.headDim, position(c.heads));
      applyRope(k, c.headDim, position(c.kvHeads));
      const kv: LayerKV = {
        layer: l, start, queries: await onDevice(q, c.heads), keys: await onDevice(k, c.kvHeads), keysPreRope, values: await onDevice(v, c.kvHeads),
      };
      const attended: AttendedKV = cache ? await cache.extend(kv) : kv;
      const { keys, values, kvLengths, logWeights } = attended;
      const output = attended.attend ? await attended.attend(kv.queries, attended)
        : await attention(kv.queries, keys, values, { causal: true, ...(kvLengths ? { kvLengths } : {}), ...(logWeights ? { logWeights } : {}) });
      const out = (await output.data()) as Float32Array;
      // caches keep copies, so every tensor of this step can go now (device memory above all)
      for (const t of new Set([output, kv.queries, kv.keys, kv.keysPreRope, kv.values, keys, values, kvLengths, logWeights])) t?.dispose();
      const attendedRows = fromHeads(out, n, c.heads, c.headDim);
      addInto(x, matmul(attendedRows, w.wo, n, c.dim, c.dim));
      rmsnorm(normed, x, w.rmsFfn, n, c.dim);
      const h1 = matmul(normed, w.w1, n, c.dim, c.hiddenDim), h3 = matmul(normed, w.w3, n, c.dim, c.hiddenDim);
      for (let i = 0; i < h1.length; i++) h1[i] = (h1[i]! / (1 + Math.exp(-h1[i]!))) * h3[i]!;
      addInto(x, matmul(h1, w.w2, n, c.hiddenDim, c.dim));
    }
    cache?.commit(n);
    rmsnorm(normed, x, this.rmsFinal, n, c.dim);
    return matmul(normed, this.embedding, n, c.dim, c.vocab);
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
