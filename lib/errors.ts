/**
 * Every failure kvsquash reports is a {@link KvsquashError} with a stable `code`; the message
 * names the argument, what was expected and what came.
 */
export type ErrorCode =
  | 'E_SHAPE' // wrong rank or dimension, empty tensor
  | 'E_DTYPE' // dtype not accepted for this argument
  | 'E_DEVICE' // tensors on different devices, or the device cannot be used
  | 'E_DISPOSED' // the tensor was disposed
  | 'E_RANGE' // a value outside its allowed range (lengths, NaN scale, bad option)
  | 'E_CUDA' // the CUDA runtime reported an error
  | 'E_OOM' // an allocation failed
  | 'E_UNSUPPORTED' // a valid request this build or device cannot run
  | 'E_LOAD' // the native addon could not be loaded
  | 'E_INTERNAL'; // a bug in kvsquash: please report it

const CODES = new Set<string>([
  'E_SHAPE', 'E_DTYPE', 'E_DEVICE', 'E_DISPOSED', 'E_RANGE', 'E_CUDA', 'E_OOM', 'E_UNSUPPORTED', 'E_LOAD',
  'E_INTERNAL',
]);

export class KvsquashError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KvsquashError';
    this.code = code;
  }
}

/** Throws a KvsquashError; the return type lets callers write `x ?? fail(...)`. */
export function fail(code: ErrorCode, message: string): never {
  throw new KvsquashError(code, message);
}

/** Re-types an error thrown by the native addon (a plain Error with `code`). */
export function fromNative(error: unknown): unknown {
  if (error instanceof KvsquashError || !(error instanceof Error)) return error;
  const code = (error as { code?: unknown }).code;
  if (typeof code !== 'string' || !CODES.has(code)) return error;
  const typed = new KvsquashError(code as ErrorCode, error.message, { cause: error });
  return typed;
}

/** Awaits a native promise, re-typing its rejection. */
export async function nativeCall<T>(promise: () => Promise<T>): Promise<T> {
  try {
    return await promise();
  } catch (error) {
    throw fromNative(error);
  }
}

/** Runs a synchronous native call, re-typing what it throws. */
export function nativeSync<T>(body: () => T): T {
  try {
    return body();
  } catch (error) {
    throw fromNative(error);
  }
}

/** Describes a value for an error message: its type, or the value itself when short. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name} of length ${(value as unknown as ArrayLike<unknown>).length}`;
  return `a ${(value as object).constructor?.name ?? 'object'}`;
}
