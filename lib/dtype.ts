/**
 * Element types and the f16/bf16 converters. Half-precision values live in Uint16Array.
 * Conversions from f32 round to nearest, ties to even (the same rule as the C++ kernels and
 * CUDA's __float2half_rn), keep NaN a NaN, overflow to ±Infinity and produce subnormals.
 */
import { describe, fail } from './errors.js';

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u32' | 'i16' | 'u16' | 'i8' | 'u8';

export interface DTypeArrayMap {
  f32: Float32Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  i32: Int32Array;
  u32: Uint32Array;
  i16: Int16Array;
  u16: Uint16Array;
  i8: Int8Array;
  u8: Uint8Array;
}

export type TypedArray = DTypeArrayMap[DType];

type ArrayConstructorOf<A> = { new (length: number): A; new (buffer: ArrayBufferLike, offset: number, length: number): A };

interface DTypeInfo<D extends DType> {
  /** the dtype's code in the C ABI (kvs_dtype) */
  readonly code: number;
  readonly bytes: number;
  readonly array: ArrayConstructorOf<DTypeArrayMap[D]>;
  readonly isFloat: boolean;
}

export const DTYPES: { readonly [D in DType]: DTypeInfo<D> } = {
  f32: { code: 0, bytes: 4, array: Float32Array, isFloat: true },
  f16: { code: 1, bytes: 2, array: Uint16Array, isFloat: true },
  bf16: { code: 2, bytes: 2, array: Uint16Array, isFloat: true },
  i32: { code: 3, bytes: 4, array: Int32Array, isFloat: false },
  u32: { code: 4, bytes: 4, array: Uint32Array, isFloat: false },
  i16: { code: 5, bytes: 2, array: Int16Array, isFloat: false },
  u16: { code: 6, bytes: 2, array: Uint16Array, isFloat: false },
  i8: { code: 7, bytes: 1, array: Int8Array, isFloat: false },
  u8: { code: 8, bytes: 1, array: Uint8Array, isFloat: false },
};

export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(DTYPES, value);
}

export function checkDType(value: unknown, arg: string): DType {
  if (!isDType(value)) fail('E_DTYPE', `${arg}: expected one of ${Object.keys(DTYPES).join(', ')}, got ${describe(value)}`);
  return value;
}

/** The dtype a typed array holds by default (Uint16Array means u16 unless told f16/bf16). */
export function dtypeOfArray(array: ArrayBufferView): DType | undefined {
  if (array instanceof Float32Array) return 'f32';
  if (array instanceof Int32Array) return 'i32';
  if (array instanceof Uint32Array) return 'u32';
  if (array instanceof Int16Array) return 'i16';
  if (array instanceof Uint16Array) return 'u16';
  if (array instanceof Int8Array) return 'i8';
  if (array instanceof Uint8Array) return 'u8';
  return undefined;
}

const scratch = new DataView(new ArrayBuffer(4));

function floatBits(x: number): number {
  scratch.setFloat32(0, x);
  return scratch.getUint32(0);
}

/** The bits of an f32 word converted to IEEE binary16 bits. */
function halfFromFloatWord(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00 | ((abs >>> 13) & 0x3ff); // NaN, payload kept, quiet
  if (abs >= 0x477ff000) return sign | 0x7c00; // rounds to >= 65520: infinity
  if (abs < 0x38800000) {
    // subnormal half: round abs / 2^-24 to an integer, ties to even
    const exp = abs >>> 23;
    if (exp < 102) return sign;
    const mant = (abs & 0x7fffff) | 0x800000;
    const shift = 126 - exp;
    let value = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rest > halfway || (rest === halfway && (value & 1) === 1)) value += 1;
    return sign | value;
  }
  // normal: rebias the exponent, round the 13 dropped bits to even; a carry bumps the exponent
  let rebased = abs - 0x38000000;
  rebased += 0x0fff + ((rebased >>> 13) & 1);
  return sign | (rebased >>> 13);
}

/** The bits of an f32 word converted to bfloat16 bits. */
function bf16FromFloatWord(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** One value, rounded to f32 first, to IEEE binary16 bits. */
export function f32ToF16Bits(x: number): number {
  return halfFromFloatWord(floatBits(x));
}

/** One value, rounded to f32 first, to bfloat16 bits. */
export function f32ToBF16Bits(x: number): number {
  return bf16FromFloatWord(floatBits(x));
}

/** IEEE binary16 bits to a number (exact). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return mant ? Number.NaN : sign * Infinity;
  if (exp === 0) return sign * mant * 2 ** -24;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** bfloat16 bits to a number (exact). */
export function bf16BitsToF32(b: number): number {
  scratch.setUint32(0, (b & 0xffff) << 16);
  return scratch.getFloat32(0);
}

function floatWords(values: ArrayLike<number>, arg: string): Uint32Array {
  if (values === null || typeof values !== 'object' || typeof values.length !== 'number')
    fail('E_DTYPE', `${arg}: expected an array of numbers, got ${describe(values)}`);
  const f32 = values instanceof Float32Array ? values : Float32Array.from(values);
  return new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
}

function halfWords(bits: ArrayLike<number>, arg: string): ArrayLike<number> {
  if (bits === null || typeof bits !== 'object' || typeof bits.length !== 'number')
    fail('E_DTYPE', `${arg}: expected an array of 16-bit words, got ${describe(bits)}`);
  return bits;
}

/** Values (rounded to f32 first, as kvsquash's floats are f32) to f16 bits, ties to even. */
export function toF16(values: ArrayLike<number>): Uint16Array {
  const words = floatWords(values, 'toF16(values)');
  const out = new Uint16Array(words.length);
  for (let i = 0; i < words.length; i++) out[i] = halfFromFloatWord(words[i]!);
  return out;
}

/** f16 bits to Float32Array (exact). */
export function fromF16(bits: ArrayLike<number>): Float32Array {
  const src = halfWords(bits, 'fromF16(bits)');
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = f16BitsToF32(src[i]!);
  return out;
}

/** Values (rounded to f32 first) to bf16 bits, ties to even. */
export function toBF16(values: ArrayLike<number>): Uint16Array {
  const words = floatWords(values, 'toBF16(values)');
  const out = new Uint16Array(words.length);
  for (let i = 0; i < words.length; i++) out[i] = bf16FromFloatWord(words[i]!);
  return out;
}

/** bf16 bits to Float32Array (exact). */
export function fromBF16(bits: ArrayLike<number>): Float32Array {
  const src = halfWords(bits, 'fromBF16(bits)');
  const out = new Float32Array(src.length);
  const words = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) words[i] = (src[i]! & 0xffff) << 16;
  return out;
}
