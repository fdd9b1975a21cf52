/** What this build and machine can run, and how much device memory kvsquash holds. */
import { deviceIndex, type DeviceLike } from './device.js';
import { describe, fail, nativeSync } from './errors.js';
import { native } from './native.js';

export interface CudaDeviceInfo {
  index: number;
  name: string;
  /** 'major.minor', e.g. '9.0' */
  computeCapability: string;
  memoryBytes: number;
}

export interface BackendInfo {
  cpu: { threads: number };
  cuda: {
    /** the addon was built with CUDA kernels */
    compiled: boolean;
    /** at least one device can run them */
    available: boolean;
    /** why CUDA is not available ('' when it is) */
    reason: string;
    driverVersion: number;
    runtimeVersion: number;
    devices: CudaDeviceInfo[];
  };
}

/**
 * Describes the CPU and CUDA backends. The first call initialises the CUDA runtime (when the
 * addon has CUDA); importing kvsquash never does.
 */
export function backend(): BackendInfo {
  const addon = native();
  const cuda = nativeSync(() => addon.probeCuda());
  return {
    cpu: { threads: addon.cpuThreads() },
    cuda: { ...cuda, devices: cuda.devices.map((d) => ({ ...d })) },
  };
}

/** Sets the threads the CPU kernels use per op; 0 restores the default. Returns the count in force. */
export function setCpuThreads(threads: number): number {
  if (!Number.isInteger(threads) || threads < 0) fail('E_RANGE', `setCpuThreads(threads): expected an integer >= 0, got ${describe(threads)}`);
  return native().cpuThreads(threads);
}

export interface MemoryStats {
  /** bytes of live device memory allocated by kvsquash */
  bytes: number;
  /** live device allocations (one per CUDA tensor kvsquash allocated) */
  tensors: number;
  /** the most bytes live at once since the process started */
  peakBytes: number;
}

/** Live device memory on one CUDA device, or on all of them when `device` is omitted. */
export function memoryStats(device?: DeviceLike): MemoryStats {
  const index = device === undefined ? -1 : deviceIndex(device, 'memoryStats(device)');
  if (device === 'cpu') fail('E_DEVICE', "memoryStats(device): reports CUDA memory; got 'cpu'");
  return nativeSync(() => native().memoryStats(index));
}
