/**
 * An independent TypeScript reading of the quantized page format (csrc/core/quant.h and
 * quant_codec.h), written from the documentation: unpacks codes and scales from a
 * QuantizedKV's page arrays and dequantizes them, so tests can check that the C++ writes
 * what the header says. RoPE is not covered (tests use caches without RoPE here).
 */
import { bf16BitsToF32, f16BitsToF32 } from '../../lib/dtype.js';
import type { QuantizedKV } from '../../lib/index.js';
import { keyCodec, valueCodec, vectorBits, wordsPerPage, metaPerPage, type Codec, type QuantMode } from '../../lib/ops/quant-format.js';

const f32 = Math.fround;
/** fma on f32 inputs: the product is exact in double; one rounding (rarely two) after the add. */
const fma = (a: number, b: number, c: number) => f32(a * b + c);

const LLOYD2 = [-1.5104176085, -0.4527800346, 0.4527800346, 1.5104176085].map(f32);
const LLOYD1 = [-0.7978845608, 0.7978845608].map(f32);

function unitWidth(mode: QuantMode, codec: Codec, D: number, u: number): number {
  if (codec === 'vq') return 8;
  if (codec === 'rotation' && mode === 'rot1.5') return u < D / 2 ? 2 : 1;
  return 2;
}

function unitOffset(mode: QuantMode, codec: Codec, D: number, u: number): number {
  if (codec === 'vq') return 8 * u;
  if (codec === 'rotation' && mode === 'rot1.5') return u < D / 2 ? 2 * u : D + (u - D / 2);
  return 2 * u;
}

function splitmix64(x: bigint): bigint {
  const M = (1n << 64n) - 1n;
  x = (x + 0x9e3779b97f4a7c15n) & M;
  x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
  x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & M;
  return x ^ (x >> 31n);
}

function signNegative(seed: number, d: number): boolean {
  return (splitmix64((BigInt(seed) + 0x9e3779b97f4a7c15n * BigInt(d + 1)) & ((1n << 64n) - 1n)) & 1n) === 1n;
}

function hadamard(v: number[]): void {
  for (let len = 1; len < v.length; len <<= 1)
    for (let start = 0; start < v.length; start += 2 * len)
      for (let j = start; j < start + len; j++) {
        const a = v[j]!, b = v[j + len]!;
        v[j] = f32(a + b);
        v[j + len] = f32(a - b);
      }
}

export interface HostPages {
  [name: string]: Uint32Array | Uint16Array | Uint8Array;
}

export async function hostPages(qkv: QuantizedKV): Promise<HostPages> {
  const out: HostPages = {};
  for (const [name, t] of Object.entries(qkv.pages)) out[name] = (await t.data()) as HostPages[string];
  return out;
}

/** Unit codes of token t of page-head `unit` (index (b * Pcap + p) * Hkv + h). */
export function readCodes(qkv: QuantizedKV, pages: HostPages, isKey: boolean, unit: number, t: number): number[] {
  const { mode, headDim: D } = qkv.params.settings, codec = isKey ? keyCodec(mode) : valueCodec(mode);
  const words = pages[isKey ? 'keyCodes' : 'valueCodes'] as Uint32Array, base = unit * wordsPerPage(mode, codec, D);
  const units = codec === 'vq' ? D / 8 : D, codes: number[] = [];
  for (let u = 0; u < units; u++) {
    const bit = t * vectorBits(mode, codec, D) + unitOffset(mode, codec, D, u), width = unitWidth(mode, codec, D, u);
    codes.push((words[base + (bit >>> 5)]! >>> (bit & 31)) & ((1 << width) - 1));
  }
  return codes;
}

/** Dequantized token t (0..63) of page-head unit (b, p, h), residual slots included. */
export function decodeToken(qkv: QuantizedKV, pages: HostPages, isKey: boolean, unit: number, h: number, t: number): number[] {
  const s = qkv.params.settings, a = qkv.params.arrays, { mode, headDim: D } = s;
  const codec = isKey ? keyCodec(mode) : valueCodec(mode), codes = readCodes(qkv, pages, isKey, unit, t);
  const metaCount = metaPerPage(codec, D);
  const meta = metaCount ? (pages[isKey ? 'keyMeta' : 'valueMeta'] as Uint16Array).subarray(unit * metaCount, (unit + 1) * metaCount) : null;
  const half = (i: number) => f16BitsToF32(meta![i]!);
  const x: number[] = new Array(D).fill(0);
  const chan = (d: number) => h * D + d;
  if (codec === 'uniformChannel') {
    const g = Math.floor(t / 32);
    for (let d = 0; d < D; d++) x[d] = fma(codes[d]!, half((g * D + d) * 2), half((g * D + d) * 2 + 1));
  } else if (codec === 'uniformToken') {
    const G = Math.ceil(D / 32);
    for (let d = 0; d < D; d++) {
      const g = Math.floor(d / 32);
      x[d] = fma(codes[d]!, half((t * G + g) * 2), half((t * G + g) * 2 + 1));
    }
  } else if (codec === 'nuqChannel') {
    for (let d = 0; d < D; d++) x[d] = fma(a.keyCodebook![codes[d]!]!, a.keyChannelRange![chan(d)]!, a.keyChannelZero![chan(d)]!);
  } else if (codec === 'nuqToken') {
    for (let d = 0; d < D; d++) x[d] = fma(a.valueCodebook![codes[d]!]!, half(2 * t + 1), half(2 * t));
  } else if (codec === 'vq') {
    const book = isKey ? a.keyVqCodebook! : a.valueVqCodebook!;
    for (let g = 0; g < D / 8; g++)
      for (let i = 0; i < 8; i++) {
        const d = g * 8 + i, c = book[((h * (D / 8) + g) * 256 + codes[g]!) * 8 + i]!;
        x[d] = isKey ? fma(c, a.keyChannelRange![chan(d)]!, a.keyChannelZero![chan(d)]!) : c;
      }
  } else {
    const isd = f32(1 / f32(Math.sqrt(D))), step = f32(half(t) * isd);
    for (let d = 0; d < D; d++) x[d] = f32((mode === 'rot1.5' && d >= D / 2 ? LLOYD1 : LLOYD2)[codes[d]!]! * step);
    hadamard(x);
    for (let d = 0; d < D; d++) {
      const w = f32(x[d]! * isd);
      x[d] = signNegative(s.seed, d) ? -w : w;
    }
  }
  if (s.outliers > 0) {
    const side = isKey ? 'key' : 'value', idx = pages[`${side}OutlierIndex`] as Uint8Array, val = pages[`${side}OutlierValue`] as Uint16Array;
    for (let slot = 0; slot < s.outliers; slot++) {
      const i = (unit * 64 + t) * s.outliers + slot;
      if ((val[i]! & 0x7fff) !== 0) x[idx[i]!] = f32(x[idx[i]!]! + f16BitsToF32(val[i]!));
    }
  }
  return x;
}

/** The whole cache dequantized by this reference, [B, Hkv, T, D] (no RoPE). */
export async function referenceDequantize(qkv: QuantizedKV): Promise<{ keys: Float32Array; values: Float32Array }> {
  const s = qkv.params.settings, { kvHeads: H, headDim: D } = s, T = qkv.tokens, pages = await hostPages(qkv);
  const rawK = await qkv.rawKeys.data(), rawV = await qkv.rawValues.data(), rcap = qkv.rawKeys.shape[2]!;
  const toF32 = s.rawDtype === 'f16' ? f16BitsToF32 : s.rawDtype === 'bf16' ? bf16BitsToF32 : (x: number) => x;
  const keys = new Float32Array(qkv.batch * H * T * D), values = new Float32Array(keys.length);
  const paged = qkv.pageCount * 64;
  for (let b = 0; b < qkv.batch; b++)
    for (let h = 0; h < H; h++)
      for (let t = 0; t < T; t++) {
        const out = ((b * H + h) * T + t) * D;
        if (t >= qkv.sinkCount && t < qkv.sinkCount + paged) {
          const p = Math.floor((t - qkv.sinkCount) / 64), unit = (b * qkv.pageCapacity + p) * H + h;
          keys.set(decodeToken(qkv, pages, true, unit, h, (t - qkv.sinkCount) % 64), out);
          values.set(decodeToken(qkv, pages, false, unit, h, (t - qkv.sinkCount) % 64), out);
        } else {
          const slot = t < qkv.sinkCount ? t : t - paged, row = ((b * H + h) * rcap + slot) * D;
          for (let d = 0; d < D; d++) keys[out + d] = toF32(rawK[row + d]!), values[out + d] = toF32(rawV[row + d]!);
        }
      }
  return { keys, values };
}

