/**
 * Tensor: a dense, contiguous, row-major array on the CPU (wrapping a typed array without
 * copying) or on a CUDA device (owning or borrowing device memory). Disposal is explicit
 * (`dispose()`, `using`); a finalizer frees forgotten device memory as a safety net only.
 */
import { deviceIndex, deviceName, type Device, type DeviceLike } from './device.js';
import { checkDType, DTYPES, dtypeOfArray, toBF16, toF16, type DType, type DTypeArrayMap } from './dtype.js';
import { describe, fail, nativeCall, nativeSync } from './errors.js';
import { native, type NativeDeviceBuffer, type NativeTensor } from './native.js';

/** Reads a tensor in the addon's form; not part of the public API. */
export const toNative: unique symbol = Symbol('kvsquash.toNative');

export type Shape = readonly number[];

function checkShape(shape: unknown, arg: string): number[] {
  if (!Array.isArray(shape)) fail('E_SHAPE', `${arg}: expected an array of dimensions, got ${describe(shape)}`);
  if (shape.length > 8) fail('E_SHAPE', `${arg}: at most 8 dimensions, got ${shape.length}`);
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || (dim as number) <= 0)
      fail('E_SHAPE', `${arg}: dimensions must be positive integers, got [${shape.join(', ')}]`);
  }
  return [...(shape as number[])];
}

function elementCount(shape: Shape): number {
  return shape.reduce((n, d) => n * d, 1);
}

export class Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: Shape;
  readonly device: Device;
  #array: DTypeArrayMap[D] | null;
  #buffer: NativeDeviceBuffer | null;

  private constructor(dtype: D, shape: Shape, device: Device, array: DTypeArrayMap[D] | null, buffer: NativeDeviceBuffer | null) {
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.device = device;
    this.#array = array;
    this.#buffer = buffer;
  }

  /**
   * A CPU tensor over `data`. A typed array of the dtype's kind is wrapped without copying
   * (f16/bf16 take a Uint16Array of raw bits); a plain number array is copied, and for
   * f16/bf16 its values are converted. `shape` defaults to `[data.length]`.
   */
  static from<D extends DType = DType>(data: ArrayLike<number>, shape?: Shape, dtype?: D): Tensor<D> {
    if (data === null || typeof data !== 'object' || typeof (data as ArrayLike<number>).length !== 'number')
      fail('E_DTYPE', `Tensor.from(data): expected a typed array or an array of numbers, got ${describe(data)}`);
    const dims = checkShape(shape ?? [data.length], 'Tensor.from(shape)');
    if (elementCount(dims) !== data.length)
      fail('E_SHAPE', `Tensor.from(shape): [${dims.join(', ')}] holds ${elementCount(dims)} elements, data has ${data.length}`);
    if (ArrayBuffer.isView(data)) {
      const own = dtypeOfArray(data);
      const chosen = dtype === undefined ? own : checkDType(dtype, 'Tensor.from(dtype)');
      if (chosen === undefined) fail('E_DTYPE', `Tensor.from(data): ${describe(data)} is not a supported typed array`);
      if (!(data instanceof DTYPES[chosen].array))
        fail('E_DTYPE', `Tensor.from(data): dtype ${chosen} needs a ${DTYPES[chosen].array.name}, got ${describe(data)}`);
      return new Tensor(chosen as D, dims, 'cpu', data as unknown as DTypeArrayMap[D], null);
    }
    const chosen = (dtype === undefined ? 'f32' : checkDType(dtype, 'Tensor.from(dtype)')) as D;
    let converted: DTypeArrayMap[DType];
    if (chosen === 'f16') converted = toF16(data);
    else if (chosen === 'bf16') converted = toBF16(data);
    else {
      converted = new DTYPES[chosen].array(data.length);
      converted.set(data);
    }
    return new Tensor(chosen, dims, 'cpu', converted as DTypeArrayMap[D], null);
  }

  /** A tensor of zeros on `device`. */
  static zeros<D extends DType = 'f32'>(shape: Shape, dtype: D = 'f32' as D, device: DeviceLike = 'cpu'): Tensor<D> {
    return Tensor.empty(shape, dtype, device, true);
  }

  /** @internal an uninitialised tensor for op outputs (zeros on the CPU). */
  static empty<D extends DType>(shape: Shape, dtype: D, device: DeviceLike, zero = false): Tensor<D> {
    const dims = checkShape(shape, 'shape');
    const chosen = checkDType(dtype, 'dtype') as D;
    const index = deviceIndex(device, 'device');
    const count = elementCount(dims);
    if (index < 0) return new Tensor(chosen, dims, 'cpu', new DTYPES[chosen].array(count) as DTypeArrayMap[D], null);
    const addon = native();
    const buffer = nativeSync(() => new addon.DeviceBuffer(index, count * DTYPES[chosen].bytes, zero));
    return new Tensor(chosen, dims, deviceName(index), null, buffer);
  }

  /**
   * Wraps CUDA memory owned by other native code, without copying. kvsquash never frees it;
   * `owner` (any object) is kept alive as long as this tensor is, so the memory outlives it.
   */
  static fromDevicePointer<D extends DType>(pointer: bigint, shape: Shape, dtype: D,
    options: { device?: DeviceLike; owner?: object } = {}): Tensor<D> {
    if (typeof pointer !== 'bigint' || pointer <= 0n)
      fail('E_RANGE', `Tensor.fromDevicePointer(pointer): expected a positive bigint, got ${describe(pointer)}`);
    const dims = checkShape(shape, 'Tensor.fromDevicePointer(shape)');
    const chosen = checkDType(dtype, 'Tensor.fromDevicePointer(dtype)') as D;
    const index = deviceIndex(options.device ?? 'cuda', 'Tensor.fromDevicePointer(device)');
    if (index < 0) fail('E_DEVICE', "Tensor.fromDevicePointer(device): expected a CUDA device, got 'cpu'");
    const addon = native();
    const bytes = elementCount(dims) * DTYPES[chosen].bytes;
    const buffer = nativeSync(() => new addon.DeviceBuffer(index, bytes, pointer, options.owner));
    return new Tensor(chosen, dims, deviceName(index), null, buffer);
  }

  get rank(): number {
    return this.shape.length;
  }

  /** Number of elements. */
  get size(): number {
    return elementCount(this.shape);
  }

  get byteLength(): number {
    return this.size * DTYPES[this.dtype].bytes;
  }

  get isDisposed(): boolean {
    return this.#array === null && (this.#buffer === null || this.#buffer.disposed);
  }

  /**
   * The address of the first element: device memory for CUDA tensors, the typed array's
   * memory for CPU tensors. Valid while the tensor is alive and not disposed.
   */
  get pointer(): bigint {
    const n = this[toNative]('tensor');
    const data = n.data;
    return nativeSync(() => (ArrayBuffer.isView(data) ? native().hostPointer(data) : data.pointer));
  }

  /** A copy of this tensor on `device` (a new tensor, even on the same device). */
  async to(device: DeviceLike): Promise<Tensor<D>> {
    const source = this[toNative]('tensor');
    const index = deviceIndex(device, 'to(device)');
    if (index < 0 && source.device < 0) {
      const array = (this.#array as DTypeArrayMap[D]).slice() as DTypeArrayMap[D];
      return new Tensor(this.dtype, this.shape, 'cpu', array, null);
    }
    if (index >= 0 && source.device >= 0 && index !== source.device) {
      // between two GPUs: through the host, which the addon's copies handle one hop at a time
      const host = await this.to('cpu');
      try {
        return await host.to(device);
      } finally {
        host.dispose();
      }
    }
    const target = Tensor.empty(this.shape, this.dtype, device);
    try {
      await nativeCall(() => native().copy(target[toNative]('to'), source));
      return target;
    } catch (error) {
      target.dispose();
      throw error;
    }
  }

  /** A host copy of the elements (f16/bf16 as Uint16Array bits). */
  async data(): Promise<DTypeArrayMap[D]> {
    const host = this.device === 'cpu' ? this.#array : null;
    if (host) return host.slice() as DTypeArrayMap[D];
    const copy = await this.to('cpu');
    return copy.#array as DTypeArrayMap[D];
  }

  /** Releases the memory now; later uses throw E_DISPOSED. Safe to call twice. */
  dispose(): void {
    this.#array = null;
    this.#buffer?.free();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device}${this.isDisposed ? ', disposed' : ''})`;
  }

  /** @internal the addon's view of this tensor; `arg` names it in errors. */
  [toNative](arg: string): NativeTensor {
    const data = this.#array ?? (this.#buffer && !this.#buffer.disposed ? this.#buffer : null);
    if (data === null) return fail('E_DISPOSED', `${arg}: tensor has been disposed`);
    return { data, dtype: DTYPES[this.dtype].code, shape: this.shape, device: this.device === 'cpu' ? -1 : deviceIndex(this.device, arg) };
  }
}

export function isTensor(value: unknown): value is Tensor {
  return value instanceof Tensor;
}
