/**
 * The quality harness: every registry method at every budget, in prefill and decode mode,
 * measured end to end (perplexity of the model attending over the compressed cache) and
 * per layer on K/V dumps (attention-output error and top-8 recall against dense attention).
 *
 * Prompt split: the prompt is the first half of each sequence's tokens, rounded down to a
 * multiple of BLOCK (at least one block), so softMatch chunks tile it exactly.
 * Prefill mode: the prompt runs uncompressed, its K/V are compressed once, then the
 * continuation attends over [compressed prompt ; its own raw tokens]. Scored: the
 * predictions made at continuation positions (tokens prompt+1 .. n-1).
 * Decode mode: tokens arrive in blocks of BLOCK; each block attends over [compressed older
 * blocks ; the previous block and itself raw]: once a block is full, the block before it is
 * compressed, so the newest BLOCK..2*BLOCK tokens stay raw, as a decoder compressing every
 * BLOCK tokens behind a recent window sees them. Scored: every prediction, as in plain
 * perplexity.
 */
import { attention, backend, KvsquashError, Tensor, type Device } from '../../lib/index.js';
import { readNpy } from '../common/npy.js';
import { kvDumps, layerFile } from '../common/shared-data.js';
import { gatherTokens, joinTokens, range, relativeL2, toHost, type HostKV } from '../common/kv-host.js';
import { LayerCache, ModelCache, type AttentionOverride, type CacheCost, type Compressor, type Layout } from './cache.js';
import { tokenNll } from './eval.js';
import type { AttendedKV, KvCache, LayerKV, Llama } from './model.js';
import { SOFTMATCH_CHUNK, uncompressed, type Calibration, type Method } from './methods.js';
import type { Tokenizer } from './tokenizer.js';

export const BLOCK = SOFTMATCH_CHUNK;
export const TOP_K = 8;
export type Mode = 'prefill' | 'decode';
export const MODES: Mode[] = ['prefill', 'decode'];

/** One layer of a K/V dump, host tensors [1, heads, T, D] (queries post-RoPE). */
export interface DumpLayer {
  queries: Tensor<'f32'>;
  keys: Tensor<'f32'>;
  keysPreRope: Tensor<'f32'>;
  values: Tensor<'f32'>;
}

export interface Dump {
  name: string;
  layers: DumpLayer[];
}

export interface QualityRow {
  method: string;
  family: string;
  budget: number;
  mode: Mode;
  /** valid slots / tokens handed to the method (all layers, heads, sequences) */
  kept: number;
  /** 8 * bytesPerToken / (2 * kvHeads * headDim): stored bits per K or V element */
  bits: number;
  /** stored bytes per compressed token, per layer, K + V, all KV heads */
  bytesPerToken: number;
  ppl: number;
  scoredTokens: number;
  /** attention-output relative L2 error on the dumps, mean over layers and dumps (null without dumps) */
  relL2: number | null;
  /** top-8 recall on the dumps, mean over query heads, positions, layers and dumps */
  recall: number | null;
  calibration: string;
}

/** 'cpu', or a CUDA device when one is usable (E_DEVICE otherwise). */
export function resolveDevice(requested: string): Device {
  if (requested === 'cpu') return 'cpu';
  if (!/^cuda(:\d+)?$/.test(requested)) throw new KvsquashError('E_DEVICE', `device: expected 'cpu', 'cuda' or 'cuda:N', got '${requested}'`);
  const info = backend();
  if (!info.cuda.available) throw new KvsquashError('E_DEVICE', `device ${requested}: CUDA is not available (${info.cuda.reason})`);
  return (requested === 'cuda' ? 'cuda:0' : requested) as Device;
}

export function promptLength(tokens: number): number {
  return Math.max(BLOCK, Math.floor(tokens / 2 / BLOCK) * BLOCK);
}

/** The real dumps (../shared/data/kv), one Dump per story. */
export function readDumps(): Dump[] {
  return kvDumps().map(({ story, dir, layers }) => ({
    name: story,
    layers: layers.map((l) => ({
      queries: readNpy(layerFile(dir, l, 'q')) as Tensor<'f32'>, keys: readNpy(layerFile(dir, l, 'k')) as Tensor<'f32'>,
      keysPreRope: readNpy(layerFile(dir, l, 'k_prerope')) as Tensor<'f32'>, values: readNpy(layerFile(dir, l, 'v')) as Tensor<'f32'>,
    })),
  }));
}

/** A dump made by running the model over `tokens` (one causal pass, as the real dumps were). */
export async function captureDump(model: Llama, name: string, tokens: number[]): Promise<Dump> {
  const layers: DumpLayer[] = [];
  const copy = async (t: Tensor<'f32'>) => Tensor.from((await t.data()) as Float32Array, t.shape, 'f32');
  const capture: KvCache = {
    length: 0,
    commit() {},
    async extend(kv: LayerKV): Promise<AttendedKV> {
      layers[kv.layer] = { queries: await copy(kv.queries), keys: await copy(kv.keys), keysPreRope: await copy(kv.keysPreRope), values: await copy(kv.values) };
      return { keys: await copy(kv.keys), values: await copy(kv.values) };
    },
  };
  await model.forward(tokens, capture);
  return { name, layers };
}

/** Per layer, the dumps' K/V concatenated along tokens, on `device`. */
export async function calibrationFrom(dumps: Dump[], device: Device): Promise<Calibration> {
  const join = async (pick: (l: DumpLayer) => Tensor<'f32'>, layer: number) => {
    const host = joinTokens(await Promise.all(dumps.map((d) => toHost(pick(d.layers[layer]!)))));
    return device === 'cpu' ? host : host.to(device);
  };
  const layers = [];
  for (let l = 0; l < dumps[0]!.layers.length; l++)
    layers.push({ keysPreRope: await join((d) => d.keysPreRope, l), keys: await join((d) => d.keys, l), values: await join((d) => d.values, l) });
  return { layers, headDim: dumps[0]!.layers[0]!.keys.shape[3]!, source: dumps.map((d) => d.name).join('+') };
}

/** The pieces [from, to) a sequence of `tokens` arrives in: prompt and continuation, or blocks. */
function pieces(tokens: number, mode: Mode): [number, number][] {
  if (mode === 'prefill') {
    const prompt = promptLength(tokens);
    return [[0, prompt], [prompt, tokens]];
  }
  return Array.from({ length: Math.ceil(tokens / BLOCK) }, (_, b) => [b * BLOCK, Math.min(tokens, (b + 1) * BLOCK)]);
}

/** After piece `index` (of `n` tokens): prefill compresses the prompt; decode, once a block fills, the blocks before it. */
async function compressAfter(cache: { compress(keepRecent: number): Promise<void> }, mode: Mode, index: number, n: number): Promise<void> {
  if (mode === 'prefill' ? index === 0 : n === BLOCK) await cache.compress(mode === 'decode' ? BLOCK : 0);
}

/** A method at one budget, ready for a cache: its compressor or its attention override. */
interface Prepared {
  compressor: Compressor;
  attend?: AttentionOverride;
  /** decode mode: compress only stretches of at least this many tokens */
  minStretch?: number;
}

async function prepare(method: Method, calibration: Calibration, budget: number): Promise<Prepared> {
  if (method.kind === 'cache') return { compressor: await method.prepare(calibration), minStretch: method.decodeMinTokens };
  // the cache of an attention method stays raw: compressing is keeping every token
  return { compressor: await uncompressed.prepare(calibration), attend: await method.prepare(calibration, budget) };
}

/** Summed NLL and cost of one sequence in one mode. */
async function scoreSequence(model: Llama, tokens: number[], mode: Mode, prepared: Prepared, budget: number):
  Promise<{ nll: number; count: number; cost: CacheCost }> {
  const c = model.config;
  const cache = new ModelCache((layer) => new LayerCache({
    layer, kvHeads: c.kvHeads, headDim: c.headDim, budget, device: model.device, ...prepared,
  }), c.layers);
  let nll = 0, count = 0;
  for (const [index, [from, to]] of pieces(tokens.length, mode).entries()) {
    const logits = await model.forward(tokens.slice(from, to), cache);
    const scored = mode === 'decode' || index > 0;
    for (let i = 0; scored && i < to - from && from + i + 1 < tokens.length; i++, count++) nll += tokenNll(logits, c.vocab, i, tokens[from + i + 1]!);
    await compressAfter(cache, mode, index, to - from);
  }
  return { nll, count, cost: cache.compressedCost };
}

/** Indices of the k largest of values[0 .. count), largest first (ties to the lower index). */
export function topIndices(values: ArrayLike<number>, count: number, k: number): number[] {
  const best: number[] = [];
  for (let i = 0; i < count; i++) {
    if (best.length === k && values[i]! <= values[best[k - 1]!]!) continue;
    let at = best.length;
    while (at > 0 && values[best[at - 1]!]! < values[i]!) at--;
    best.splice(at, 0, i);
    if (best.length > k) best.pop();
  }
  return best;
}

/**
 * Top-8 recall of one query block: for each query head and position, the fraction of its 8
 * keys with the largest dense attention weights (over every token it sees) whose slot is
 * among the 8 slots with the largest weights in the compressed cache (logits plus
 * logWeights, over the slots it sees). A dropped token is never recalled; a merged one is
 * when its slot is. Returns the sum over queries and their count.
 */
function recallSum(queries: Float32Array, heads: number, denseKeys: Float32Array, denseTokens: number, layout: Layout,
  start: number, n: number, headDim: number): { sum: number; count: number } {
  const D = headDim, kvHeads = layout.lengths.length, group = heads / kvHeads, scale = 1 / Math.sqrt(D);
  const dense = new Float64Array(denseTokens), slotted = new Float64Array(layout.slots);
  let sum = 0, count = 0;
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group), length = layout.lengths[g]!;
    for (let i = 0; i < n; i++) {
      const q = queries.subarray((h * n + i) * D, (h * n + i + 1) * D), visible = start + i + 1;
      const dot = (keys: Float32Array, row: number) => {
        let s = 0;
        for (let d = 0; d < D; d++) s += q[d]! * keys[row * D + d]!;
        return s * scale;
      };
      for (let t = 0; t < visible; t++) dense[t] = dot(denseKeys, g * denseTokens + t);
      const visibleSlots = i + length - n + 1;
      for (let s = 0; s < visibleSlots; s++) slotted[s] = dot(layout.keys, g * layout.slots + s) + layout.logWeights[g * layout.slots + s]!;
      const kept = new Set(topIndices(slotted, visibleSlots, TOP_K));
      const truth = topIndices(dense, visible, TOP_K);
      let hits = 0;
      for (const t of truth) if (kept.has(layout.slotOf[g * layout.tokens + t]!)) hits++;
      sum += hits / truth.length;
      count++;
    }
  }
  return { sum, count };
}

/** Attention error and top-8 recall of one dump layer under one method, budget and mode. */
async function layerMetrics(layer: DumpLayer, index: number, mode: Mode, prepared: Prepared, budget: number, device: Device):
  Promise<{ relL2: number; recall: number }> {
  const [, Hq, T, D] = layer.queries.shape as [number, number, number, number];
  const Hkv = layer.keys.shape[1]!;
  const onDevice = async <X extends Tensor>(t: X) => (device === 'cpu' ? t : ((await t.to(device)) as X));
  const [q, k, kPre, v] = await Promise.all([layer.queries, layer.keys, layer.keysPreRope, layer.values].map(toHost));
  const full = await Promise.all([layer.queries, layer.keys, layer.values].map(onDevice));
  const denseOut = await attention(full[0]!, full[1]!, full[2]!, { causal: true });
  const dense = (await denseOut.data()) as Float32Array;
  for (const t of [...full, denseOut]) if (device !== 'cpu') t.dispose();
  const cache = new LayerCache({ layer: index, kvHeads: Hkv, headDim: D, budget, device, ...prepared });
  const outs: number[] = [], refs: number[] = [];
  let recall = 0, queriesCounted = 0;
  for (const [b, [from, to]] of pieces(T, mode).entries()) {
    const n = to - from;
    const slice = (kv: HostKV) => gatherTokens(kv, () => range(from, to));
    const kv: LayerKV = { layer: index, start: from, queries: slice(q!), keys: slice(k!), keysPreRope: slice(kPre!), values: slice(v!) };
    const layout = await cache.extendWithLayout(kv);
    if (b > 0) {
      const attended = await cache.toDevice(layout);
      const queries = await onDevice(kv.queries);
      const output = attended.attend ? await attended.attend(queries, attended)
        : await attention(queries, attended.keys, attended.values, { causal: true, kvLengths: attended.kvLengths!, logWeights: attended.logWeights! });
      const out = (await output.data()) as Float32Array;
      for (let h = 0; h < Hq; h++) {
        for (let i = 0; i < n * D; i++) {
          outs.push(out[h * n * D + i]!);
          refs.push(dense[(h * T + from) * D + i]!);
        }
      }
      const r = recallSum((await kv.queries.data()) as Float32Array, Hq, k!.data, T, layout, from, n, D);
      recall += r.sum;
      queriesCounted += r.count;
      for (const t of new Set([output, queries, attended.keys, attended.values, attended.kvLengths, attended.logWeights])) if (t !== kv.queries) t?.dispose();
    }
    await compressAfter(cache, mode, b, n);
  }
  return { relL2: relativeL2(outs, refs), recall: recall / queriesCounted };
}

export interface QualityOptions {
  model: Llama;
  tokenizer: Tokenizer;
  /** texts scored for perplexity, each from BOS (cut to the model's context) */
  stories: string[];
  /** K/V dumps for the attention metrics; each is calibrated on the others */
  dumps: Dump[];
  /** calibration data for the perplexity runs (texts other than `stories`) */
  calibration: Dump[];
  methods: Method[];
  modes?: Mode[];
  /** keep only these budgets of multi-budget methods */
  budgets?: number[];
  progress?: (done: number, total: number, label: string) => void;
}

/** Runs every method x budget x mode; returns one row each. */
export async function runQuality(options: QualityOptions): Promise<QualityRow[]> {
  const { model, tokenizer, dumps, methods, modes = MODES } = options;
  const device = model.device, { kvHeads, headDim, seqLen } = model.config;
  const sequences = options.stories.map((s) => tokenizer.encode(s).slice(0, seqLen));
  const runs = methods.flatMap((method) => method.budgets
    .filter((b) => method.budgets.length === 1 || !options.budgets || options.budgets.includes(b))
    .flatMap((budget) => modes.map((mode) => ({ method, budget, mode }))));
  const total = runs.length * (sequences.length + dumps.length);
  let done = 0;
  const step = (label: string) => options.progress?.(++done, total, label);
  const calibration = await calibrationFrom(options.calibration, device);
  const calibrations = [calibration]; // freed at the end: methods may hold on to them while they run
  const rows: QualityRow[] = [];
  for (const { method, budget, mode } of runs) {
    const label = `${method.name} ${budget < 1 ? `${budget * 100}%` : ''} ${mode}`.replace(/\s+/g, ' ');
    const prepared = await prepare(method, calibration, budget);
    let nll = 0, count = 0;
    const cost: CacheCost = { tokens: 0, slots: 0, bytes: 0 };
    for (const tokens of sequences) {
      const s = await scoreSequence(model, tokens, mode, prepared, budget);
      nll += s.nll;
      count += s.count;
      cost.tokens += s.cost.tokens;
      cost.slots += s.cost.slots;
      cost.bytes += s.cost.bytes;
      step(label);
    }
    const relL2s: number[] = [], recalls: number[] = [];
    for (const dump of dumps) {
      const others = dumps.filter((d) => d !== dump);
      const dumpCalibration = await calibrationFrom(others.length > 0 ? others : [dump], device);
      calibrations.push(dumpCalibration);
      const dumpPrepared = await prepare(method, dumpCalibration, budget);
      for (const [index, layer] of dump.layers.entries()) {
        const m = await layerMetrics(layer, index, mode, dumpPrepared, budget, device);
        relL2s.push(m.relL2);
        recalls.push(m.recall);
      }
      step(label);
    }
    const mean = (list: number[]) => (list.length > 0 ? list.reduce((a, b) => a + b, 0) / list.length : null);
    const bytesPerToken = cost.bytes / cost.tokens;
    rows.push({
      method: method.name, family: method.family, budget, mode,
      kept: cost.slots / (cost.tokens * kvHeads), bits: (8 * bytesPerToken) / (2 * kvHeads * headDim), bytesPerToken,
      ppl: Math.exp(nll / count), scoredTokens: count, relL2: mean(relL2s), recall: mean(recalls),
      calibration: `perplexity: ${calibration.source}; dumps: ${dumps.length > 1 ? 'each calibrated on the others' : 'calibrated on itself (the only one)'}`,
    });
  }
  for (const c of calibrations) for (const l of c.layers) for (const t of [l.keysPreRope, l.keys, l.values]) t.dispose();
  return rows;
}
