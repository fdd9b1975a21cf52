/**
 * Loads the native addon on first use, in node-gyp-build's order: KVSQUASH_NATIVE (a path to
 * a .node file), then build/Release, build/Debug, then prebuilds/<platform>-<arch>/. Loading
 * runs no CUDA code; the CUDA runtime starts when a CUDA tensor or backend() needs it.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { KvsquashError } from './errors.js';

/** The version of the C ABI this TypeScript layer was written against (KVS_ABI_VERSION). */
export const ABI_VERSION = 1;

/** A tensor as the addon reads it: data is a typed array (CPU) or a DeviceBuffer (CUDA). */
export interface NativeTensor {
  data: ArrayBufferView | NativeDeviceBuffer;
  dtype: number;
  shape: readonly number[];
  /** -1 for the CPU, else the CUDA ordinal */
  device: number;
}

export interface NativeDeviceBuffer {
  free(): void;
  readonly pointer: bigint;
  readonly disposed: boolean;
}

export interface NativeCudaProbe {
  compiled: boolean;
  available: boolean;
  reason: string;
  driverVersion: number;
  runtimeVersion: number;
  devices: { index: number; name: string; computeCapability: string; memoryBytes: number }[];
}

export interface NativeAttentionOptions {
  scale: number;
  causal: boolean;
  kvLengths: NativeTensor | null;
  logWeights: NativeTensor | null;
}

export interface NativeAddon {
  readonly abiVersion: number;
  readonly cudaCompiled: boolean;
  DeviceBuffer: {
    /** allocates; `zero` fills it with zero bytes */
    new (device: number, bytes: number, zero: boolean): NativeDeviceBuffer;
    /** borrows memory owned elsewhere, keeping `owner` alive */
    new (device: number, bytes: number, pointer: bigint, owner?: object): NativeDeviceBuffer;
  };
  probeCuda(): NativeCudaProbe;
  memoryStats(device: number): { bytes: number; tensors: number; peakBytes: number };
  copy(dst: NativeTensor, src: NativeTensor): Promise<void>;
  hostPointer(array: ArrayBufferView): bigint;
  cpuThreads(set?: number): number;
  attentionScores(q: NativeTensor, k: NativeTensor, scores: NativeTensor, options: { scale: number; causal: boolean; window: number }): Promise<void>;
  mergeSegments(keys: NativeTensor, scores: NativeTensor, assign: NativeTensor, lengths: NativeTensor, options: {
    threshold: number; budget: number; protectFirst: number; protectRecent: number; protectTop: number;
  }): Promise<void>;
  gaussianMerge(keys: NativeTensor, values: NativeTensor, scores: NativeTensor, assign: NativeTensor, lengths: NativeTensor,
    outKeys: NativeTensor, outValues: NativeTensor, sizes: NativeTensor, pivots: NativeTensor,
    options: { sigma: number; valueScale: number }): Promise<void>;
  softMatch(keys: NativeTensor, values: NativeTensor, assign: NativeTensor, lengths: NativeTensor,
    outKeys: NativeTensor | null, outValues: NativeTensor | null, sizes: NativeTensor | null, positions: NativeTensor | null,
    options: { chunk: number; passes: number; keptPerChunk: number; threshold: number; protectFirst: number; protectRecent: number }): Promise<void>;
  attention(q: NativeTensor, k: NativeTensor, v: NativeTensor, out: NativeTensor, lse: NativeTensor | null,
    options: NativeAttentionOptions): Promise<void>;
  /** format, rope, pages and cache are plain objects of numbers and NativeTensors (csrc/addon/quant.cc) */
  quantEncode(format: object, rope: object, keys: NativeTensor, values: NativeTensor, positions: NativeTensor | null, pages: object,
    options: { positionOffset: number; srcStart: number; pageStart: number; pageCount: number }): Promise<void>;
  quantDecode(format: object, rope: object, cache: object, outKeys: NativeTensor, outValues: NativeTensor,
    options: { applyRope: boolean }): Promise<void>;
  quantAttention(format: object, rope: object, cache: object, q: NativeTensor, out: NativeTensor, lse: NativeTensor | null,
    options: { scale: number; causal: boolean; kvLengths: NativeTensor | null }): Promise<void>;
  copyRows(src: NativeTensor, dst: NativeTensor, options: { axis: number; srcStart: number; dstStart: number; count: number }): Promise<void>;
  kmeans(data: NativeTensor, weights: NativeTensor | null, centroids: NativeTensor, options: { k: number; iterations: number; seed: number }): Promise<void>;
  pyramidPool(k: NativeTensor, v: NativeTensor, pooledKeys: NativeTensor[], pooledValues: NativeTensor[], options: { block: number }): Promise<void>;
  pyramidImportance(q: NativeTensor, k: NativeTensor, importance: NativeTensor, options: {
    block: number; queryBlock: number; sampleQueries: number; sampleKeys: number; seed: number; scale: number; causal: boolean; kvHeadMask: boolean;
  }): Promise<void>;
  pyramidAssign(importance: NativeTensor, levelMap: NativeTensor, lists: NativeTensor, counts: NativeTensor, options: {
    block: number; queryBlock: number; qTokens: number; kvTokens: number; causal: boolean; threshold: boolean;
    bounds: number[]; minFull: number; forceSink: boolean; forceDiagonal: boolean;
  }): Promise<void>;
  pyramidAttend(q: NativeTensor, k: NativeTensor, v: NativeTensor, pooledKeys: NativeTensor[], pooledValues: NativeTensor[],
    lists: NativeTensor, counts: NativeTensor, out: NativeTensor, lse: NativeTensor | null,
    options: { block: number; queryBlock: number; scale: number; causal: boolean }): Promise<void>;
}

const require = createRequire(import.meta.url);
/** lib/ (sources under tsx) and dist/ (built) both sit one level below the package root. */
export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

let loaded: NativeAddon | undefined;

function loadHints(root: string): string {
  return [
    'kvsquash could not load its native addon (kvsquash.node).',
    `Looked in: ${process.env.KVSQUASH_NATIVE ? `${process.env.KVSQUASH_NATIVE} (KVSQUASH_NATIVE), ` : ''}` +
      `${join(root, 'build/Release')}, ${join(root, 'build/Debug')}, ${join(root, 'prebuilds', `${process.platform}-${process.arch}`)}.`,
    'Try one of:',
    '  - from a git checkout: `npm install` (builds from source; needs cmake or node-gyp and a C++17 compiler)',
    '  - installed as a dependency: `npm rebuild kvsquash --build-from-source`, or check that no',
    '    --ignore-scripts/--omit step removed the prebuilds folder',
    '  - bundlers (webpack, esbuild, Electron asar): mark kvsquash as external / asarUnpack it',
    '  - set KVSQUASH_NATIVE=/path/to/kvsquash.node to use a specific build',
  ].join('\n');
}

/** The addon, loaded once per thread on first use. */
export function native(): NativeAddon {
  if (loaded) return loaded;
  let addon: NativeAddon;
  try {
    const explicit = process.env.KVSQUASH_NATIVE;
    if (explicit) {
      if (!existsSync(explicit)) throw new Error(`KVSQUASH_NATIVE points at a missing file: ${explicit}`);
      addon = require(resolve(explicit)) as NativeAddon;
    } else {
      const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
      addon = nodeGypBuild(packageRoot) as NativeAddon;
    }
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new KvsquashError('E_LOAD', `${loadHints(packageRoot)}\nCause: ${detail}`, { cause: error });
  }
  if (addon.abiVersion !== ABI_VERSION) {
    throw new KvsquashError('E_LOAD', `kvsquash.node has ABI version ${addon.abiVersion}, this JavaScript expects ` +
      `${ABI_VERSION}: the build is stale. Rebuild with \`npm run build\`.`);
  }
  loaded = addon;
  return addon;
}
