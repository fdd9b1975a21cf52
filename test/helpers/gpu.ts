/**
 * What every GPU suite shares: the gate (its tests skip without a usable CUDA device, and
 * KVSQUASH_REQUIRE_GPU=1 turns that skip into a failure) and float tensors of a dtype.
 */
import { test, type Test } from 'uvu';
import * as assert from 'uvu/assert';

import { backend, Tensor, toBF16, toF16 } from '../../lib/index.js';

export type FloatDType = 'f32' | 'f16' | 'bf16';

/** `test` when CUDA is usable, else `test.skip` plus one test saying why (failing when required). */
export function gpuSuite(name: string): Test {
  const info = backend();
  if (info.cuda.available) return test;
  if (process.env.KVSQUASH_REQUIRE_GPU === '1') test('a usable CUDA device (KVSQUASH_REQUIRE_GPU=1)', () => assert.unreachable(`no CUDA: ${info.cuda.reason}`));
  else test.skip(`${name} (no CUDA: ${info.cuda.reason})`, () => {});
  return test.skip as unknown as Test;
}

/** A CPU tensor of `dtype` holding `values` rounded once to it. */
export function floatTensor(values: Float32Array, shape: readonly number[], dtype: FloatDType): Tensor {
  if (dtype === 'f16') return Tensor.from(toF16(values), shape, 'f16');
  if (dtype === 'bf16') return Tensor.from(toBF16(values), shape, 'bf16');
  return Tensor.from(values, shape);
}
