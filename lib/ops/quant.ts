/**
 * Sub-2-bit KV quantization: `quantize` packs a cache into 64-token pages of codes (format:
 * csrc/core/quant.h) between full-precision sink and recent tokens; `QuantizedKV.append`
 * grows it while decoding; `dequantize` unpacks it. Every code and dequantized value is
 * identical on CPU and CUDA.
 */
import { bf16BitsToF32, DTYPES, f16BitsToF32, type DType } from '../dtype.js';
import { describe, fail, nativeCall } from '../errors.js';
import { native, type NativeTensor } from '../native.js';
import { Tensor, isTensor, toNative, type Shape } from '../tensor.js';
import { checkOptions, checkTensorArg } from './args.js';
import { attentionSettings, withAttentionOutputs, type AttentionOptions, type AttentionWithLse } from './attention.js';
import { encodesPostRope, keyCodec, MAX_MAGNITUDE, metaPerPage, PAGE_TOKENS, pageBytes, valueCodec, wordsPerPage } from './quant-format.js';
import { QuantParams } from './quant-params.js';

export type RopeStyle = 'interleaved' | 'half';

export interface QuantizeOptions {
  /** i32 [B, T]: each token's position (default: its index). Then append needs positions too. */
  positions?: Tensor<'i32'>;
  /** RoPE base: keys are given pre-RoPE, and dequantize / attention apply RoPE */
  ropeTheta?: number;
  /** 'interleaved' pairs (2i, 2i+1) (GPT-J, llama2.c) or 'half' pairs (i, i + D/2) (HF Llama); default 'half' */
  ropeStyle?: RopeStyle;
  /** explicit inverse frequencies [D/2] (scaled RoPE: llama3, NTK, YaRN); instead of ropeTheta */
  invFreq?: Float32Array;
}

interface Rope {
  style: 0 | 1 | 2;
  invFreq: Float32Array | null;
}

function readRope(options: QuantizeOptions, D: number): Rope {
  if (options.ropeTheta !== undefined && options.invFreq !== undefined) fail('E_RANGE', 'quantize(options): give ropeTheta or invFreq, not both');
  const style = options.ropeStyle ?? 'half';
  if (style !== 'interleaved' && style !== 'half') fail('E_RANGE', `ropeStyle: expected 'interleaved' or 'half', got ${describe(style)}`);
  if (options.invFreq !== undefined) {
    const f = options.invFreq;
    if (!(f instanceof Float32Array) || f.length !== D / 2) fail('E_SHAPE', `invFreq: expected a Float32Array of ${D / 2} values, got ${describe(f)}`);
    if (!f.every(Number.isFinite)) fail('E_RANGE', 'invFreq: holds NaN or infinity');
    return { style: style === 'interleaved' ? 1 : 2, invFreq: f };
  }
  if (options.ropeStyle !== undefined && options.ropeTheta === undefined) fail('E_RANGE', 'ropeStyle: needs ropeTheta or invFreq');
  if (options.ropeTheta === undefined) return { style: 0, invFreq: null };
  const theta = options.ropeTheta;
  if (typeof theta !== 'number' || !(theta > 1) || !Number.isFinite(theta)) fail('E_RANGE', `ropeTheta: expected a finite number > 1, got ${describe(theta)}`);
  const invFreq = Float32Array.from({ length: D / 2 }, (_, i) => Math.pow(theta, (-2 * i) / D));
  return { style: style === 'interleaved' ? 1 : 2, invFreq };
}

type PageName = 'keyCodes' | 'valueCodes' | 'keyMeta' | 'valueMeta' | 'keyOutlierIndex' | 'keyOutlierValue' | 'valueOutlierIndex' | 'valueOutlierValue';

/** Dtype and per-page size of each page array a format has (absent ones are skipped). */
function pageLayout(params: QuantParams): [PageName, DType, number][] {
  const { mode, headDim: D, outliers } = params.settings, kc = keyCodec(mode), vc = valueCodec(mode);
  const layout: [PageName, DType, number][] = [['keyCodes', 'u32', wordsPerPage(mode, kc, D)], ['valueCodes', 'u32', wordsPerPage(mode, vc, D)]];
  if (metaPerPage(kc, D)) layout.push(['keyMeta', 'u16', metaPerPage(kc, D)]);
  if (metaPerPage(vc, D)) layout.push(['valueMeta', 'u16', metaPerPage(vc, D)]);
  if (outliers > 0)
    for (const side of ['key', 'value'] as const)
      layout.push([`${side}OutlierIndex`, 'u8', PAGE_TOKENS * outliers], [`${side}OutlierValue`, 'u16', PAGE_TOKENS * outliers]);
  return layout;
}

async function copyRows(src: Tensor, dst: Tensor, axis: number, srcStart: number, dstStart: number, count: number): Promise<void> {
  if (count === 0) return;
  await nativeCall(() => native().copyRows(src[toNative]('src'), dst[toNative]('dst'), { axis, srcStart, dstStart, count }));
}

/** The packed cache of one layer: what `quantize` returns. Layout: csrc/core/quant.h. */
export class QuantizedKV implements Disposable {
  readonly params: QuantParams;
  readonly device: Tensor['device'];
  readonly batch: number;
  /** sink tokens at [0, sinkCount), then recent ones: [B, Hkv, S + R + 63, D] in rawDtype */
  readonly rawKeys: Tensor;
  readonly rawValues: Tensor;
  #pages: Partial<Record<PageName, Tensor>> = {};
  #positions: Tensor<'i32'> | null;
  #tokens = 0;
  #pageCount = 0;
  #sinkCount = 0;
  #recentCount = 0;

  /** page arrays [B, pageCapacity, Hkv, per page]; only those the mode has (layout: csrc/core/quant.h) */
  get pages(): Readonly<Partial<Record<PageName, Tensor>>> { return this.#pages; }
  /** i32 [B, capacity] when positions were given */
  get positions(): Tensor<'i32'> | null { return this.#positions; }
  /** tokens held */
  get tokens(): number { return this.#tokens; }
  /** 64-token pages in use */
  get pageCount(): number { return this.#pageCount; }
  /** full-precision sink tokens, at the start of the raw buffers */
  get sinkCount(): number { return this.#sinkCount; }
  /** full-precision recent tokens, after the sink in the raw buffers */
  get recentCount(): number { return this.#recentCount; }
  /** @internal */
  readonly rope: Rope;
  #inputDtype: DType;

  /** @internal use `quantize` */
  constructor(params: QuantParams, rope: Rope, device: Tensor['device'], batch: number, inputDtype: DType, positions: Tensor<'i32'> | null) {
    const s = params.settings;
    this.params = params;
    this.rope = rope;
    this.device = device;
    this.batch = batch;
    this.#inputDtype = inputDtype;
    this.#positions = positions;
    const rawShape = [batch, s.kvHeads, s.sinkTokens + s.recentTokens + PAGE_TOKENS - 1, s.headDim];
    this.rawKeys = Tensor.zeros(rawShape, s.rawDtype, device);
    this.rawValues = Tensor.zeros(rawShape, s.rawDtype, device);
  }

  get pageCapacity(): number {
    return this.pages.keyCodes?.shape[1] ?? 0;
  }

  /** Bytes stored for this cache: pages in use, sink and recent tokens, explicit positions. */
  get bytes(): number {
    const s = this.params.settings, heads = this.batch * s.kvHeads;
    const raw = (this.sinkCount + this.recentCount) * heads * s.headDim * 2 * DTYPES[s.rawDtype].bytes;
    const positions = this.positions ? this.batch * this.tokens * 4 : 0;
    return this.pageCount * heads * pageBytes(s.mode, s.headDim, s.outliers) + raw + positions;
  }

  /** Stored bits per cached element (K and V), counting every byte of `bytes` plus the params' arrays. */
  get effectiveBits(): number {
    return this.tokens === 0 ? 0 : (8 * (this.bytes + this.params.bytes)) / this.elements;
  }

  /** The same without the params' static arrays (shared by every cache of the layer). */
  get effectiveBitsWithoutParams(): number {
    return this.tokens === 0 ? 0 : (8 * this.bytes) / this.elements;
  }

  private get elements(): number {
    const s = this.params.settings;
    return 2 * this.batch * s.kvHeads * this.tokens * s.headDim;
  }

  /** @internal the addon's kvs_quant_pages */
  nativePages(): Record<string, NativeTensor> {
    const out: Record<string, NativeTensor> = {};
    for (const [name, t] of Object.entries(this.pages)) out[name] = t[toNative](name);
    return out;
  }

  /** @internal the addon's kvs_quant_cache */
  nativeCache(): object {
    return {
      pages: this.pageCount > 0 ? this.nativePages() : undefined, pageCount: this.pageCount,
      rawKeys: this.rawKeys[toNative]('rawKeys'), rawValues: this.rawValues[toNative]('rawValues'),
      sinkTokens: this.sinkCount, recentTokens: this.recentCount, positions: this.positions ? this.positions[toNative]('positions') : undefined,
    };
  }

  #ropeUpload: Promise<Tensor<'f32'>> | null = null;

  /** @internal the addon's kvs_rope, its table uploaded to the cache's device once */
  async nativeRope(): Promise<object> {
    if (!this.rope.invFreq) return { style: 0 };
    if (!this.#ropeUpload) {
      const host = Tensor.from(this.rope.invFreq, [this.rope.invFreq.length], 'f32');
      const upload = this.device === 'cpu' ? Promise.resolve(host) : host.to(this.device);
      upload.catch(() => { if (this.#ropeUpload === upload) this.#ropeUpload = null; }); // retried next time
      this.#ropeUpload = upload;
    }
    return { style: this.rope.style, invFreq: (await this.#ropeUpload)[toNative]('invFreq') };
  }

  #checkTokens(keys: Tensor, values: Tensor): number {
    const s = this.params.settings;
    for (const [t, arg] of [[keys, 'keys'], [values, 'values']] as const) {
      if (!isTensor(t) || t.rank !== 4) fail('E_SHAPE', `${arg}: expected a tensor [B, Hkv, T, D], got ${describe(t)}`);
      t[toNative](arg);
      if (t.shape[0] !== this.batch || t.shape[1] !== s.kvHeads || t.shape[3] !== s.headDim || t.shape[2] !== keys.shape[2])
        fail('E_SHAPE', `${arg}: expected [${this.batch}, ${s.kvHeads}, T, ${s.headDim}] (as the cache), got [${t.shape.join(', ')}]`);
      if (t.dtype !== this.#inputDtype) fail('E_DTYPE', `${arg}: expected ${this.#inputDtype} (as the cache's first tokens), got ${t.dtype}`);
      if (t.device !== this.device) fail('E_DEVICE', `${arg}: expected device ${this.device} (as the cache), got ${t.device}`);
    }
    return keys.shape[2]!;
  }

  async #ensurePageCapacity(pages: number): Promise<void> {
    if (pages <= this.pageCapacity) return;
    const capacity = Math.max(pages, 2 * this.pageCapacity);
    const s = this.params.settings, grown: Partial<Record<PageName, Tensor>> = {};
    try {
      for (const [name, dtype, perPage] of pageLayout(this.params)) {
        grown[name] = Tensor.zeros([this.batch, capacity, s.kvHeads, perPage], dtype, this.device);
        const old = this.#pages[name];
        if (old) await copyRows(old, grown[name]!, 1, 0, 0, this.#pageCount);
      }
      if (this.rawKeys.isDisposed) fail('E_DISPOSED', 'qkv: the cache was disposed while it grew');
    } catch (error) {
      for (const t of Object.values(grown)) t.dispose();
      throw error;
    }
    for (const t of Object.values(this.#pages)) t.dispose();
    this.#pages = grown;
  }

  /** Encodes `count` pages from src tokens srcStart.. into pages pageStart..; commits nothing. */
  async #encode(keys: Tensor, values: Tensor, positions: Tensor<'i32'> | null, positionOffset: number, srcStart: number, pageStart: number, count: number) {
    if (count === 0) return;
    await this.#ensurePageCapacity(pageStart + count);
    const format = await this.params.nativeFormat(this.device);
    const rope = await this.nativeRope();
    await nativeCall(() => native().quantEncode(format, rope, keys[toNative]('keys'), values[toNative]('values'),
      positions ? positions[toNative]('positions') : null, this.nativePages(),
      { positionOffset, srcStart, pageStart, pageCount: count }));
  }

  /**
   * Full-precision tokens must be encodable once they become a page (csrc/core/quant_codec.h,
   * encodable): values within +-65504, and keys too or, when RoPE rotates them before coding,
   * each rotation pair's norm. Checked as they enter, so a bad token fails the call that
   * brings it instead of every later append.
   */
  async #checkEncodable(keys: Tensor, values: Tensor, from: number, count: number): Promise<void> {
    if (count === 0) return;
    const s = this.params.settings, D = s.headDim, shape = [this.batch, s.kvHeads, count, D];
    using k = Tensor.empty(shape, s.rawDtype, this.device), v = Tensor.empty(shape, s.rawDtype, this.device);
    await copyRows(keys, k, 2, from, 0, count);
    await copyRows(values, v, 2, from, 0, count);
    const toF32 = s.rawDtype === 'f16' ? f16BitsToF32 : s.rawDtype === 'bf16' ? bf16BitsToF32 : (x: number) => x;
    const [kd, vd] = [await k.data(), await v.data()];
    const within = (x: number) => Math.abs(x) <= MAX_MAGNITUDE; // false for NaN
    let ok = vd.every((x) => within(toF32(x)));
    if (ok && encodesPostRope(s.mode) && this.rope.style !== 0) {
      const half = this.rope.style === 2;
      for (let row = 0; ok && row < kd.length; row += D)
        for (let i = 0; ok && i < D / 2; i++) {
          const a = toF32(kd[row + (half ? i : 2 * i)]!), b = toF32(kd[row + (half ? i + D / 2 : 2 * i + 1)]!);
          ok = within(Math.hypot(a, b));
        }
    } else if (ok) {
      ok = kd.every((x) => within(toF32(x)));
    }
    if (!ok) fail('E_RANGE', 'quantize: keys or values hold NaN, infinity, or a magnitude above 65504 (the f16 range of the format\'s scales)');
  }

  /** Writes the tokens' positions after the ones held (past `tokens`: nothing committed). */
  async #storePositions(positions: Tensor<'i32'> | undefined, count: number, arg: string): Promise<void> {
    if (!this.#positions) {
      if (positions !== undefined) fail('E_RANGE', `${arg}: this cache was quantized without positions (token index = position)`);
      return;
    }
    if (!isTensor(positions) || positions.dtype !== 'i32' || positions.rank !== 2 || positions.shape[0] !== this.batch || positions.shape[1] !== count)
      fail('E_SHAPE', `${arg}: expected an i32 tensor [${this.batch}, ${count}], got ${describe(positions)}`);
    if (positions.device !== this.device) fail('E_DEVICE', `${arg}: expected device ${this.device}, got ${positions.device}`);
    const needed = this.#tokens + count;
    if (needed > this.#positions.shape[1]!) {
      const grown = Tensor.zeros([this.batch, Math.max(needed, 2 * this.#positions.shape[1]!)], 'i32', this.device);
      await copyRows(this.#positions, grown, 1, 0, 0, this.#tokens);
      this.#positions.dispose();
      this.#positions = grown;
    }
    await copyRows(positions, this.#positions, 1, 0, this.#tokens, count);
  }

  /** @internal first fill, by `quantize` */
  async fill(keys: Tensor, values: Tensor, positions: Tensor<'i32'> | null): Promise<void> {
    const s = this.params.settings, T = keys.shape[2]!;
    const sink = Math.min(s.sinkTokens, T), rest = T - sink;
    const pages = rest > s.recentTokens ? Math.floor((rest - s.recentTokens) / PAGE_TOKENS) : 0;
    const recent = rest - pages * PAGE_TOKENS;
    await copyRows(keys, this.rawKeys, 2, 0, 0, sink);
    await copyRows(values, this.rawValues, 2, 0, 0, sink);
    await copyRows(keys, this.rawKeys, 2, sink + pages * PAGE_TOKENS, sink, recent);
    await copyRows(values, this.rawValues, 2, sink + pages * PAGE_TOKENS, sink, recent);
    await this.#checkEncodable(this.rawKeys, this.rawValues, 0, sink + recent);
    await this.#encode(keys, values, positions, 0, sink, 0, pages);
    [this.#sinkCount, this.#recentCount, this.#pageCount, this.#tokens] = [sink, recent, pages, T];
  }

  /**
   * Adds tokens (keys pre-RoPE when the cache has RoPE, [B, Hkv, Tnew, D], the dtype of the
   * first tokens). They join the sink until it is full, then the recent window; whenever the
   * window reaches recentTokens + 64, its oldest 64 tokens become a page. The result is
   * bit-identical to quantizing the whole sequence at once. A failed append (bad input, out
   * of memory) leaves the cache as it was.
   */
  async append(keys: Tensor, values: Tensor, options: { positions?: Tensor<'i32'> } = {}): Promise<void> {
    checkOptions(options, ['positions'], 'append(options)');
    const count = this.#checkTokens(keys, values);
    const s = this.params.settings, H = s.kvHeads, D = s.headDim;
    if (this.#positions && options.positions === undefined) fail('E_RANGE', 'positions: this cache has explicit positions; append needs them too');
    await this.#storePositions(options.positions, count, 'positions');
    // everything below writes only past what is committed, until the last step
    const toSink = Math.min(s.sinkTokens - this.#sinkCount, count), sink = this.#sinkCount + toSink;
    await copyRows(keys, this.rawKeys, 2, 0, this.#sinkCount, toSink);
    await copyRows(values, this.rawValues, 2, 0, this.#sinkCount, toSink);
    await this.#checkEncodable(this.rawKeys, this.rawValues, this.#sinkCount, toSink);
    const fresh = count - toSink, window = this.#recentCount + fresh;
    const flush = window >= s.recentTokens + PAGE_TOKENS ? Math.floor((window - s.recentTokens) / PAGE_TOKENS) : 0;
    if (flush === 0) {
      await copyRows(keys, this.rawKeys, 2, toSink, sink + this.#recentCount, fresh);
      await copyRows(values, this.rawValues, 2, toSink, sink + this.#recentCount, fresh);
      await this.#checkEncodable(this.rawKeys, this.rawValues, sink + this.#recentCount, fresh);
    } else {
      // old recent tokens + new ones, in the raw dtype, then the oldest pages from there
      const firstToken = sink + this.#pageCount * PAGE_TOKENS;
      using windowKeys = Tensor.empty([this.batch, H, window, D], s.rawDtype, this.device);
      using windowValues = Tensor.empty([this.batch, H, window, D], s.rawDtype, this.device);
      await copyRows(this.rawKeys, windowKeys, 2, sink, 0, this.#recentCount);
      await copyRows(this.rawValues, windowValues, 2, sink, 0, this.#recentCount);
      await copyRows(keys, windowKeys, 2, toSink, this.#recentCount, fresh);
      await copyRows(values, windowValues, 2, toSink, this.#recentCount, fresh);
      await this.#checkEncodable(windowKeys, windowValues, this.#recentCount, fresh);
      let windowPositions: Tensor<'i32'> | null = null;
      try {
        if (this.#positions) {
          windowPositions = Tensor.empty([this.batch, window], 'i32', this.device);
          await copyRows(this.#positions, windowPositions, 1, firstToken, 0, window);
        }
        await this.#encode(windowKeys, windowValues, windowPositions, firstToken, 0, this.#pageCount, flush);
      } finally {
        windowPositions?.dispose();
      }
      // the one write over committed rows: the recent window moves down
      await copyRows(windowKeys, this.rawKeys, 2, flush * PAGE_TOKENS, sink, window - flush * PAGE_TOKENS);
      await copyRows(windowValues, this.rawValues, 2, flush * PAGE_TOKENS, sink, window - flush * PAGE_TOKENS);
    }
    this.#sinkCount = sink;
    this.#pageCount += flush;
    this.#recentCount = window - flush * PAGE_TOKENS;
    this.#tokens += count;
  }

  dispose(): void {
    for (const t of [...Object.values(this.#pages), this.rawKeys, this.rawValues, this.#positions]) t?.dispose();
    void this.#ropeUpload?.then((t) => t.dispose(), () => {});
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Quantizes one layer's cache: keys (pre-RoPE when ropeTheta/invFreq is given) and values
 * `[B, Hkv, T, D]` (f32/f16/bf16), on their device, with `params` from `calibrate`.
 */
export async function quantize(keys: Tensor, values: Tensor, params: QuantParams, options: QuantizeOptions = {}): Promise<QuantizedKV> {
  checkOptions(options, ['positions', 'ropeTheta', 'ropeStyle', 'invFreq'], 'quantize(options)');
  if (!(params instanceof QuantParams)) fail('E_RANGE', `params: expected QuantParams (from calibrate), got ${describe(params)}`);
  if (!isTensor(keys) || keys.rank !== 4) fail('E_SHAPE', `keys: expected a tensor [B, Hkv, T, D], got ${describe(keys)}`);
  keys[toNative]('keys');
  if (!['f32', 'f16', 'bf16'].includes(keys.dtype)) fail('E_DTYPE', `keys: expected f32, f16 or bf16, got ${keys.dtype}`);
  const s = params.settings, [B] = keys.shape as [number];
  if (keys.shape[1] !== s.kvHeads || keys.shape[3] !== s.headDim)
    fail('E_SHAPE', `keys: expected [B, ${s.kvHeads}, T, ${s.headDim}] (the params' kvHeads and headDim), got [${keys.shape.join(', ')}]`);
  const rope = readRope(options, s.headDim);
  if (rope.style === 0 && options.positions !== undefined) fail('E_RANGE', 'positions: only meaningful with ropeTheta or invFreq');
  let positions: Tensor<'i32'> | null = null;
  if (options.positions !== undefined) positions = Tensor.zeros([B, Math.max(1, keys.shape[2]!)], 'i32', keys.device);
  const qkv = new QuantizedKV(params, rope, keys.device, B, keys.dtype, positions);
  try {
    const T = keys.shape[2]!;
    if (positions) {
      const given = options.positions!;
      if (!isTensor(given) || given.dtype !== 'i32' || given.shape.join() !== [B, T].join())
        fail('E_SHAPE', `positions: expected an i32 tensor [${B}, ${T}], got ${describe(given)}`);
      if (given.device !== keys.device) fail('E_DEVICE', `positions: expected device ${keys.device}, got ${given.device}`);
      await copyRows(given, positions, 1, 0, 0, T);
    }
    if (!isTensor(values) || values.shape.join() !== keys.shape.join() || values.dtype !== keys.dtype)
      fail('E_SHAPE', `values: expected the shape and dtype of keys, got ${describe(values)}`);
    if (values.device !== keys.device) fail('E_DEVICE', `values: expected device ${keys.device}, got ${values.device}`);
    await qkv.fill(keys, values, positions ? options.positions! : null);
    return qkv;
  } catch (error) {
    qkv.dispose();
    throw error;
  }
}

/**
 * The whole cache back as dense f32 `{keys, values}` [B, Hkv, T, D] on its device. Keys come
 * back post-RoPE when `applyRope` (default: whenever the cache has RoPE), ready for
 * `attention`; else in the convention they were given.
 */
export async function dequantize(qkv: QuantizedKV, options: { applyRope?: boolean } = {}): Promise<{ keys: Tensor<'f32'>; values: Tensor<'f32'> }> {
  checkOptions(options, ['applyRope'], 'dequantize(options)');
  if (!(qkv instanceof QuantizedKV)) fail('E_RANGE', `qkv: expected a QuantizedKV (from quantize), got ${describe(qkv)}`);
  if (qkv.rawKeys.isDisposed) fail('E_DISPOSED', 'qkv: the cache has been disposed');
  const applyRope = options.applyRope ?? qkv.rope.style !== 0;
  if (applyRope && qkv.rope.style === 0) fail('E_RANGE', 'applyRope: the cache was quantized without RoPE');
  const s = qkv.params.settings;
  const shape: Shape = [qkv.batch, s.kvHeads, qkv.tokens, s.headDim];
  if (qkv.tokens === 0) fail('E_SHAPE', 'qkv: the cache holds no tokens');
  const keys = Tensor.empty(shape, 'f32', qkv.device), values = Tensor.empty(shape, 'f32', qkv.device);
  try {
    const format = await qkv.params.nativeFormat(qkv.device);
    const rope = await qkv.nativeRope();
    await nativeCall(() => native().quantDecode(format, rope, qkv.nativeCache(), keys[toNative]('outKeys'), values[toNative]('outValues'), { applyRope }));
    return { keys, values };
  } catch (error) {
    keys.dispose();
    values.dispose();
    throw error;
  }
}

export interface QuantizedAttentionOptions extends Omit<AttentionOptions, 'logWeights'> {}

/**
 * Decode attention straight over a quantized cache: the result of `attention(q,
 * dequantize(qkv).keys, .values, options)` without unpacking the cache (on CUDA the kernel
 * reads the pages; the CPU reference decodes then attends in f64). q `[B, Hq, Tq, D]`
 * post-RoPE, Tq 1..16 (the newest positions of each sequence under `causal`), Hq a multiple
 * of the cache's kvHeads. `kvLengths` i32 [B, Hkv] limits ragged sequences.
 */
export function quantizedAttention(q: Tensor, qkv: QuantizedKV, options: QuantizedAttentionOptions & { returnLse: true }): Promise<AttentionWithLse>;
export function quantizedAttention(q: Tensor, qkv: QuantizedKV, options?: QuantizedAttentionOptions & { returnLse?: false }): Promise<Tensor>;
export async function quantizedAttention(q: Tensor, qkv: QuantizedKV, options: QuantizedAttentionOptions = {}): Promise<Tensor | AttentionWithLse> {
  checkOptions(options, ['causal', 'scale', 'kvLengths', 'returnLse', 'outDtype'], 'quantizedAttention(options)');
  const qn = checkTensorArg(q, 'q', 4);
  if (!(qkv instanceof QuantizedKV)) fail('E_RANGE', `qkv: expected a QuantizedKV (from quantize), got ${describe(qkv)}`);
  if (qkv.rawKeys.isDisposed) fail('E_DISPOSED', 'qkv: the cache has been disposed');
  if (q.device !== qkv.device) fail('E_DEVICE', `q: expected device ${qkv.device} (as the cache), got ${q.device}`);
  const settings = attentionSettings(q, options);
  const format = await qkv.params.nativeFormat(qkv.device);
  const rope = await qkv.nativeRope();
  return withAttentionOutputs(q, settings, (out, lse) => native().quantAttention(format, rope, qkv.nativeCache(), qn, out, lse,
    { scale: settings.scale, causal: settings.causal, kvLengths: settings.kvLengths }));
}
