/**
 * The static half of a quantized cache: `QuantParams` (mode, codebooks, key channel
 * statistics, counts) and `calibrate`, which learns them from sample K/V with deterministic
 * k-means (csrc/cpu/kmeans.cc). Serializable to a versioned binary blob.
 */
import { DTYPES, f16BitsToF32, f32ToF16Bits, bf16BitsToF32, f32ToBF16Bits } from '../dtype.js';
import { deviceIndex, deviceName, type DeviceLike } from '../device.js';
import { describe, fail, nativeCall } from '../errors.js';
import { native } from '../native.js';
import { Tensor, isTensor, toNative } from '../tensor.js';
import { checkOptions, checkTensorArg } from './args.js';
import {
  keyCodec, MAX_OUTLIERS, MODE_CODE, NUQ_LEVELS, QUANT_MODES, valueCodec, VQ_ENTRIES, VQ_GROUP, type QuantMode,
} from './quant-format.js';

export type RawDType = 'f16' | 'bf16' | 'f32';

/** The f32 arrays a mode may carry, in serialization order. */
const ARRAY_NAMES = ['keyCodebook', 'valueCodebook', 'keyChannelZero', 'keyChannelRange', 'keyChannelInvRange', 'keyVqCodebook', 'valueVqCodebook'] as const;
type ArrayName = (typeof ARRAY_NAMES)[number];
export type QuantArrays = { readonly [N in ArrayName]: Float32Array | null };

export interface QuantSettings {
  mode: QuantMode;
  headDim: number;
  kvHeads: number;
  /** residual slots per token vector (dense-and-sparse outliers), 0..min(8, headDim/4) */
  outliers: number;
  /** first tokens kept in full precision (attention sinks) */
  sinkTokens: number;
  /** most recent tokens kept in full precision */
  recentTokens: number;
  /** storage of sink/recent tokens; every token is rounded to it before encoding */
  rawDtype: RawDType;
  /** seeds k-means++ and the rotation signs */
  seed: number;
}

function integerIn(value: unknown, lo: number, hi: number, arg: string): number {
  if (!Number.isInteger(value) || (value as number) < lo || (value as number) > hi)
    fail('E_RANGE', `${arg}: expected an integer in ${lo}..${hi}, got ${describe(value)}`);
  return value as number;
}

/** Which arrays a mode needs, with their lengths. */
function arrayLengths(s: QuantSettings): Partial<Record<ArrayName, number>> {
  const kc = keyCodec(s.mode), vc = valueCodec(s.mode), HD = s.kvHeads * s.headDim;
  const vq = s.kvHeads * (s.headDim / VQ_GROUP) * VQ_ENTRIES * VQ_GROUP;
  const out: Partial<Record<ArrayName, number>> = {};
  if (kc === 'nuqChannel') out.keyCodebook = NUQ_LEVELS;
  if (vc === 'nuqToken') out.valueCodebook = NUQ_LEVELS;
  if (kc === 'nuqChannel' || kc === 'vq') out.keyChannelZero = out.keyChannelRange = out.keyChannelInvRange = HD;
  if (kc === 'vq') out.keyVqCodebook = vq;
  if (vc === 'vq') out.valueVqCodebook = vq;
  return out;
}

function checkSettings(s: QuantSettings): QuantSettings {
  if (!QUANT_MODES.includes(s.mode)) fail('E_RANGE', `mode: expected one of ${QUANT_MODES.join(', ')}, got ${describe(s.mode)}`);
  integerIn(s.headDim, 8, 256, 'headDim');
  if (s.headDim % 8 !== 0) fail('E_SHAPE', `headDim: expected a multiple of 8, got ${s.headDim}`);
  if (keyCodec(s.mode) === 'rotation' && (s.headDim & (s.headDim - 1)) !== 0)
    fail('E_SHAPE', `headDim: ${s.mode} needs a power of two, got ${s.headDim}`);
  integerIn(s.kvHeads, 1, 65536, 'kvHeads');
  integerIn(s.outliers, 0, Math.min(MAX_OUTLIERS, s.headDim / 4), 'outliers');
  integerIn(s.sinkTokens, 0, 1 << 20, 'sinkTokens');
  integerIn(s.recentTokens, 0, 1 << 20, 'recentTokens');
  if (!['f16', 'bf16', 'f32'].includes(s.rawDtype)) fail('E_DTYPE', `rawDtype: expected f16, bf16 or f32, got ${describe(s.rawDtype)}`);
  integerIn(s.seed, 0, Number.MAX_SAFE_INTEGER, 'seed');
  return s;
}

const MAGIC = 0x5153564b; // "KVSQ" little-endian
const VERSION = 1;

export class QuantParams {
  readonly settings: Readonly<QuantSettings>;
  readonly arrays: QuantArrays;
  #uploads = new Map<number, Promise<Record<string, Tensor>>>();

  /** Checks that `arrays` are exactly the mode's arrays, finite, codebooks sorted. */
  constructor(settings: QuantSettings, arrays: Partial<QuantArrays>) {
    this.settings = Object.freeze(checkSettings({ ...settings }));
    const lengths = arrayLengths(this.settings);
    const out: Record<string, Float32Array | null> = {};
    for (const name of ARRAY_NAMES) {
      const array = arrays[name] ?? null, length = lengths[name];
      if (length === undefined) {
        if (array) fail('E_RANGE', `${name}: mode ${settings.mode} takes no ${name}`);
        out[name] = null;
        continue;
      }
      if (!(array instanceof Float32Array) || array.length !== length)
        fail('E_SHAPE', `${name}: expected a Float32Array of ${length} values, got ${describe(array)}`);
      if (!array.every(Number.isFinite)) fail('E_RANGE', `${name}: holds NaN or infinity`);
      if ((name === 'keyCodebook' || name === 'valueCodebook') && !array.every((c, i) => i === 0 || array[i - 1]! <= c))
        fail('E_RANGE', `${name}: expected ascending levels`);
      out[name] = array.slice(); // a private copy: the caller's array may change after these checks
    }
    this.arrays = Object.freeze(out) as QuantArrays;
  }

  get mode(): QuantMode { return this.settings.mode; }
  get headDim(): number { return this.settings.headDim; }
  get kvHeads(): number { return this.settings.kvHeads; }

  /** Bytes of the static arrays (shared by every cache quantized with these params). */
  get bytes(): number {
    return ARRAY_NAMES.reduce((sum, name) => sum + (this.arrays[name]?.byteLength ?? 0), 0);
  }

  /**
   * Versioned blob: "KVSQ", u32 version, u32 header length, a JSON header (settings and the
   * arrays present), zero padding to 4 bytes, then the arrays as little-endian f32 in
   * header order.
   */
  toBytes(): Uint8Array {
    const present = ARRAY_NAMES.filter((n) => this.arrays[n]);
    const header = new TextEncoder().encode(JSON.stringify({ ...this.settings, arrays: present.map((n) => [n, this.arrays[n]!.length]) }));
    const headerEnd = 12 + header.length, start = Math.ceil(headerEnd / 4) * 4;
    const total = start + present.reduce((s, n) => s + this.arrays[n]!.byteLength, 0);
    const bytes = new Uint8Array(total), view = new DataView(bytes.buffer);
    view.setUint32(0, MAGIC, true);
    view.setUint32(4, VERSION, true);
    view.setUint32(8, header.length, true);
    bytes.set(header, 12);
    let offset = start;
    for (const n of present) for (const value of this.arrays[n]!) view.setFloat32((offset += 4) - 4, value, true);
    return bytes;
  }

  static fromBytes(bytes: Uint8Array): QuantParams {
    if (!(bytes instanceof Uint8Array) || bytes.length < 12) fail('E_RANGE', `QuantParams.fromBytes: expected a Uint8Array blob, got ${describe(bytes)}`);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (view.getUint32(0, true) !== MAGIC) fail('E_RANGE', 'QuantParams.fromBytes: not a kvsquash QuantParams blob (bad magic)');
    const version = view.getUint32(4, true);
    if (version !== VERSION) fail('E_UNSUPPORTED', `QuantParams.fromBytes: blob version ${version}, this kvsquash reads ${VERSION}`);
    const headerLength = view.getUint32(8, true);
    if (12 + headerLength > bytes.length) fail('E_RANGE', 'QuantParams.fromBytes: truncated header');
    let header: QuantSettings & { arrays: [ArrayName, number][] };
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(12, 12 + headerLength)));
    } catch {
      return fail('E_RANGE', 'QuantParams.fromBytes: the header is not valid JSON');
    }
    if (!header || !Array.isArray(header.arrays)) fail('E_RANGE', 'QuantParams.fromBytes: the header lists no arrays');
    let offset = Math.ceil((12 + headerLength) / 4) * 4;
    const arrays: Partial<Record<ArrayName, Float32Array>> = {};
    for (const entry of header.arrays) {
      const [name, length] = Array.isArray(entry) ? entry : [];
      if (!ARRAY_NAMES.includes(name as ArrayName) || !Number.isInteger(length) || (length as number) < 0)
        fail('E_RANGE', `QuantParams.fromBytes: bad array entry ${describe(entry)}`);
      if (offset + 4 * (length as number) > bytes.length) fail('E_RANGE', `QuantParams.fromBytes: truncated array ${name}`);
      const array = new Float32Array(length as number);
      for (let i = 0; i < array.length; i++) array[i] = view.getFloat32(offset + 4 * i, true);
      arrays[name as ArrayName] = array;
      offset += 4 * (length as number);
    }
    if (offset !== bytes.length) fail('E_RANGE', 'QuantParams.fromBytes: trailing bytes after the arrays');
    const { mode, headDim, kvHeads, outliers, sinkTokens, recentTokens, rawDtype, seed } = header;
    return new QuantParams({ mode, headDim, kvHeads, outliers, sinkTokens, recentTokens, rawDtype, seed }, arrays);
  }

  /** @internal the addon's kvs_quant_format on `device` (arrays uploaded once per device). */
  async nativeFormat(device: string): Promise<Record<string, unknown>> {
    const index = deviceIndex(device as DeviceLike, 'device');
    const s = this.settings, D = s.headDim, H = s.kvHeads, groups = D / VQ_GROUP;
    // the promise is cached, not its result, so concurrent first calls share one upload
    let uploads = this.#uploads.get(index);
    if (!uploads) {
      const shapes: Record<ArrayName, number[]> = {
        keyCodebook: [NUQ_LEVELS], valueCodebook: [NUQ_LEVELS], keyChannelZero: [H, D], keyChannelRange: [H, D], keyChannelInvRange: [H, D],
        keyVqCodebook: [H, groups, VQ_ENTRIES, VQ_GROUP], valueVqCodebook: [H, groups, VQ_ENTRIES, VQ_GROUP],
      };
      uploads = Promise.all(ARRAY_NAMES.filter((name) => this.arrays[name]).map(async (name) => {
        const host = Tensor.from(this.arrays[name]!, shapes[name], 'f32');
        return [name, index < 0 ? host : await host.to(device as DeviceLike)] as const;
      })).then((entries) => Object.fromEntries(entries));
      uploads.catch(() => this.#uploads.delete(index)); // a failed upload is retried next time
      this.#uploads.set(index, uploads);
    }
    const tensors = await uploads;
    const views = Object.fromEntries(Object.entries(tensors).map(([name, t]) => [name, t[toNative](name)]));
    return { mode: MODE_CODE[s.mode], headDim: D, kvHeads: H, outliers: s.outliers, rawDtype: DTYPES[s.rawDtype].code, rotationSeed: s.seed, ...views };
  }

  /** Frees the device copies of the arrays (the params stay usable; they upload again). */
  dispose(): void {
    for (const uploads of this.#uploads.values()) void uploads.then((tensors) => { for (const t of Object.values(tensors)) t.dispose(); }, () => {});
    this.#uploads.clear();
  }
}

// ---- calibration ---------------------------------------------------------------------------

export interface KmeansOptions {
  k: number;
  /** upper bound on Lloyd iterations (default 50; stops early at a fixed point) */
  iterations?: number;
  seed?: number;
  /** f32 [G, N]: point weights (e.g. Fisher information) */
  weights?: Tensor<'f32'>;
}

/**
 * Deterministic weighted k-means over G independent problems: data f32 [G, N, dim] ->
 * centroids f32 [G, k, dim] (dim 1: sorted). Definition in csrc/cpu/kmeans.cc. Runs where
 * `data` lives; on CUDA the centroids equal the CPU's (the k-means++ start and dim 1 are
 * computed on the host, Lloyd's iterations on the device).
 */
export async function kmeans(data: Tensor, options: KmeansOptions): Promise<Tensor<'f32'>> {
  checkOptions(options, ['k', 'iterations', 'seed', 'weights'], 'kmeans(options)');
  if (!isTensor(data) || data.rank !== 3) fail('E_SHAPE', `data: expected an f32 tensor [G, N, dim], got ${describe(data)}`);
  const [G, N, dim] = data.shape as [number, number, number];
  const k = integerIn(options.k, 1, N, 'k');
  const iterations = integerIn(options.iterations ?? 50, 0, 100000, 'iterations');
  const seed = integerIn(options.seed ?? 0, 0, Number.MAX_SAFE_INTEGER, 'seed');
  const centroids = Tensor.empty([G, k, dim], 'f32', data.device);
  try {
    await nativeCall(() => native().kmeans(data[toNative]('data'), options.weights !== undefined ? checkTensorArg(options.weights, 'weights', 2, data) : null,
      centroids[toNative]('centroids'), { k, iterations, seed }));
    return centroids;
  } catch (error) {
    centroids.dispose();
    throw error;
  }
}

export interface CalibrateOptions {
  /** pre-RoPE keys [B, Hkv, T, D] (any float dtype, any device); modes kivi2 and rot* ignore them */
  keys?: Tensor;
  /** values [B, Hkv, T, D] */
  values?: Tensor;
  mode: QuantMode;
  headDim: number;
  /** default: keys.shape[1] */
  kvHeads?: number;
  outliers?: number;
  sinkTokens?: number;
  recentTokens?: number;
  seed?: number;
  rawDtype?: RawDType;
  /** Lloyd iterations of the 8-D codebooks (default 50) */
  iterations?: number;
  /** calibration vectors per 8-channel group for the 8-D codebooks (default 8192, an evenly spread sample) */
  maxVqSamples?: number;
  /** where the 8-D codebooks' k-means runs (default 'cpu'; the same codebooks on either); the rest runs on the CPU */
  device?: DeviceLike;
}

const f32 = Math.fround;

function roundTo(dtype: RawDType): (x: number) => number {
  if (dtype === 'f16') return (x) => f16BitsToF32(f32ToF16Bits(x));
  if (dtype === 'bf16') return (x) => bf16BitsToF32(f32ToBF16Bits(x));
  return f32;
}

/** Calibration tokens as [Hkv][vectors][D] f32, sink tokens left out, rounded to the raw dtype. */
async function calibrationRows(t: Tensor, s: QuantSettings, arg: string): Promise<Float32Array[]> {
  if (!isTensor(t) || t.rank !== 4) fail('E_SHAPE', `${arg}: expected a tensor [B, Hkv, T, D], got ${describe(t)}`);
  const [B, H, T, D] = t.shape as [number, number, number, number];
  if (H !== s.kvHeads || D !== s.headDim) fail('E_SHAPE', `${arg}: expected [B, ${s.kvHeads}, T, ${s.headDim}], got [${t.shape.join(', ')}]`);
  if (!['f32', 'f16', 'bf16'].includes(t.dtype)) fail('E_DTYPE', `${arg}: expected f32, f16 or bf16, got ${t.dtype}`);
  const raw = await t.data(), toF32 = t.dtype === 'f16' ? f16BitsToF32 : t.dtype === 'bf16' ? bf16BitsToF32 : (x: number) => x;
  const round = roundTo(s.rawDtype), used = Math.max(0, T - s.sinkTokens);
  if (used === 0) fail('E_SHAPE', `${arg}: no tokens past the ${s.sinkTokens} sink tokens to calibrate on`);
  return Array.from({ length: H }, (_, h) => {
    const rows = new Float32Array(B * used * D);
    for (let b = 0; b < B; b++)
      for (let t = 0; t < used; t++)
        for (let d = 0; d < D; d++) {
          const value = round(toF32(raw[((b * H + h) * T + s.sinkTokens + t) * D + d]!));
          if (!Number.isFinite(value)) fail('E_RANGE', `${arg}: holds NaN or infinity`);
          rows[(b * used + t) * D + d] = value;
        }
    return rows;
  });
}

function quantile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.floor(q * (sorted.length - 1) + 0.5)))]!;
}

/**
 * Per (head, channel) zero, range and 1/range: the channel's min/max, or with outlier slots
 * the central quantiles leaving min(1%, outliers/D) of values outside (they become residuals).
 */
function channelStats(rows: Float32Array[], s: QuantSettings) {
  const { headDim: D, kvHeads: H } = s, clip = s.outliers > 0 ? Math.min(0.01, s.outliers / D) : 0;
  const zero = new Float32Array(H * D), range = new Float32Array(H * D), inv = new Float32Array(H * D);
  for (let h = 0; h < H; h++) {
    const n = rows[h]!.length / D;
    for (let d = 0; d < D; d++) {
      const column = new Float64Array(n);
      for (let i = 0; i < n; i++) column[i] = rows[h]![i * D + d]!;
      column.sort();
      const lo = quantile(column, clip / 2), hi = quantile(column, 1 - clip / 2);
      zero[h * D + d] = f32((hi + lo) / 2);
      range[h * D + d] = f32((hi - lo) / 2);
      inv[h * D + d] = range[h * D + d]! > 0 ? f32(1 / range[h * D + d]!) : 0;
    }
  }
  return { zero, range, inv };
}

async function codebook1d(samples: number[], s: QuantSettings, what: string): Promise<Float32Array> {
  if (samples.length < NUQ_LEVELS) fail('E_SHAPE', `${what}: only ${samples.length} in-range calibration values, need at least ${NUQ_LEVELS}`);
  using data = Tensor.from(Float32Array.from(samples), [1, samples.length, 1], 'f32');
  using centroids = await kmeans(data, { k: NUQ_LEVELS, iterations: 1000, seed: s.seed });
  return (await centroids.data()) as Float32Array;
}

/** 256-entry codebooks per (head, 8-channel group) from `vectors(h)` rows [n, D], k-means on `device`. */
async function vqCodebooks(rows: Float32Array[], s: QuantSettings, iterations: number, maxSamples: number, what: string,
  device: DeviceLike): Promise<Float32Array> {
  const { headDim: D, kvHeads: H } = s, groups = D / VQ_GROUP, n = rows[0]!.length / D;
  if (n < VQ_ENTRIES) fail('E_SHAPE', `${what}: ${n} calibration tokens per head, the 256-entry codebooks need at least ${VQ_ENTRIES}`);
  const used = Math.min(n, maxSamples), pick = (i: number) => Math.floor((i * n) / used); // evenly spread rows
  const data = new Float32Array(H * groups * used * VQ_GROUP);
  for (let h = 0; h < H; h++)
    for (let g = 0; g < groups; g++)
      for (let i = 0; i < used; i++)
        for (let c = 0; c < VQ_GROUP; c++) data[((h * groups + g) * used + i) * VQ_GROUP + c] = rows[h]![pick(i) * D + g * VQ_GROUP + c]!;
  using input = Tensor.from(data, [H * groups, used, VQ_GROUP], 'f32');
  using placed = device === 'cpu' ? null : await input.to(device);
  using centroids = await kmeans(placed ?? input, { k: VQ_ENTRIES, iterations, seed: s.seed });
  return (await centroids.data()) as Float32Array;
}

/**
 * Learns the QuantParams of a mode from calibration K/V (keys pre-RoPE). Deterministic for
 * a given input and seed. kivi2 and rot* need no data. Inputs may live on any device; the
 * 8-D codebooks' k-means runs on `device` (the same codebooks on either, csrc/cpu/kmeans.cc),
 * everything else on the CPU.
 */
export async function calibrate(options: CalibrateOptions): Promise<QuantParams> {
  checkOptions(options, ['keys', 'values', 'mode', 'headDim', 'kvHeads', 'outliers', 'sinkTokens', 'recentTokens', 'seed', 'rawDtype',
    'iterations', 'maxVqSamples', 'device'], 'calibrate(options)');
  const settings = checkSettings({
    mode: options.mode, headDim: options.headDim, kvHeads: options.kvHeads ?? options.keys?.shape[1] ?? options.values?.shape[1] ?? 0,
    outliers: options.outliers ?? 0, sinkTokens: options.sinkTokens ?? 1, recentTokens: options.recentTokens ?? 128,
    rawDtype: options.rawDtype ?? 'f16', seed: options.seed ?? 0,
  });
  const device = deviceName(deviceIndex(options.device ?? 'cpu', 'device'));
  const iterations = integerIn(options.iterations ?? 50, 1, 100000, 'iterations');
  const maxVqSamples = integerIn(options.maxVqSamples ?? 8192, VQ_ENTRIES, 1 << 24, 'maxVqSamples');
  const kc = keyCodec(settings.mode), vc = valueCodec(settings.mode), D = settings.headDim;
  const arrays: Partial<Record<ArrayName, Float32Array>> = {};
  if (kc === 'nuqChannel' || kc === 'vq') {
    if (!options.keys) fail('E_SHAPE', `keys: mode ${settings.mode} calibrates on keys; none given`);
    const rows = await calibrationRows(options.keys, settings, 'keys');
    const { zero, range, inv } = channelStats(rows, settings);
    Object.assign(arrays, { keyChannelZero: zero, keyChannelRange: range, keyChannelInvRange: inv });
    const normalized = rows.map((r, h) => r.map((x, i) => f32(f32(x - zero[h * D + (i % D)]!) * inv[h * D + (i % D)]!)));
    if (kc === 'nuqChannel') {
      const inliers: number[] = [];
      for (const r of normalized) for (const t of r) if (Math.abs(t) <= 1) inliers.push(t);
      arrays.keyCodebook = await codebook1d(inliers, settings, 'keys');
    } else {
      arrays.keyVqCodebook = await vqCodebooks(normalized, settings, iterations, maxVqSamples, 'keys', device);
    }
  }
  if (vc === 'nuqToken' || vc === 'vq') {
    if (!options.values) fail('E_SHAPE', `values: mode ${settings.mode} calibrates on values; none given`);
    const rows = await calibrationRows(options.values, settings, 'values');
    if (vc === 'vq') arrays.valueVqCodebook = await vqCodebooks(rows, settings, iterations, maxVqSamples, 'values', device);
    else arrays.valueCodebook = await codebook1d(nuqTokenSamples(rows, settings), settings, 'values');
  }
  return new QuantParams(settings, arrays);
}

/** Normalized in-range values of the NuqToken codec (quant_codec.h), per token vector. */
function nuqTokenSamples(rows: Float32Array[], s: QuantSettings): number[] {
  const D = s.headDim, samples: number[] = [];
  const f16 = (x: number) => f16BitsToF32(f32ToF16Bits(x));
  for (const r of rows) {
    for (let i = 0; i < r.length; i += D) {
      const x = r.subarray(i, i + D);
      const order = Array.from(x.keys()).sort((a, b) => Math.abs(x[b]!) - Math.abs(x[a]!) || a - b);
      const left = new Set(order.slice(0, s.outliers));
      let mn = Infinity, mx = -Infinity;
      for (let d = 0; d < D; d++) if (!left.has(d)) mn = Math.min(mn, x[d]!), mx = Math.max(mx, x[d]!);
      const z = f16(f32((mx + mn) * 0.5)), r16 = f16(f32((mx - mn) * 0.5)), inv = r16 > 0 ? f32(1 / r16) : 0;
      for (let d = 0; d < D; d++) {
        if (left.has(d)) continue;
        const t = f32(f32(x[d]! - z) * inv);
        if (Math.abs(t) <= 1) samples.push(t);
      }
    }
  }
  return samples;
}

