import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { backend, memoryStats, Tensor } from '../lib/index.js';

test('Tensor.from wraps a typed array without copying', async () => {
  const data = new Float32Array([1, 2, 3, 4, 5, 6]);
  const t = Tensor.from(data, [2, 3]);
  assert.is(t.dtype, 'f32');
  assert.equal(t.shape, [2, 3]);
  assert.is(t.device, 'cpu');
  assert.is(t.size, 6);
  assert.is(t.byteLength, 24);
  data[0] = 42; // shared memory: visible through the tensor
  assert.is((await t.data())[0], 42);
  const copy = await t.data();
  copy[1] = -1; // data() is a copy: the tensor is unchanged
  assert.is((await t.data())[1], 2);
  assert.ok(Object.isFrozen(t.shape));
});

test('dtypes from typed arrays and from number arrays', async () => {
  const cases = [
    [new Int32Array([1, -2]), 'i32'], [new Uint32Array([1, 2]), 'u32'], [new Int16Array([1, -2]), 'i16'],
    [new Uint16Array([1, 2]), 'u16'], [new Int8Array([1, -2]), 'i8'], [new Uint8Array([1, 2]), 'u8'],
  ] as const;
  for (const [array, dtype] of cases) assert.is(Tensor.from(array).dtype, dtype);
  assert.is(Tensor.from(new Uint16Array([0x3c00]), [1], 'f16').dtype, 'f16');
  assert.is(Tensor.from(new Uint16Array([0x3f80]), [1], 'bf16').dtype, 'bf16');
  // number arrays are values, converted to the dtype
  assert.equal(Array.from(await Tensor.from([1, 2.5], [2], 'f16').data()), [0x3c00, 0x4100]);
  assert.equal(Array.from(await Tensor.from([1, -1], [2], 'bf16').data()), [0x3f80, 0xbf80]);
  assert.equal(Array.from(await Tensor.from([1.7, -3], [2], 'i32').data()), [1, -3]);
  assert.equal(Array.from(await Tensor.from([0.5, 2]).data()), [0.5, 2]);
  assert.equal(Tensor.from([7], []).shape, [], 'a scalar has shape []');
});

test('zeros, to(cpu) copies, toString', async () => {
  const z = Tensor.zeros([2, 3], 'bf16');
  assert.is(z.dtype, 'bf16');
  assert.equal(Array.from(await z.data()), [0, 0, 0, 0, 0, 0]);
  const a = Tensor.from(new Float32Array([1, 2]));
  const b = await a.to('cpu');
  assert.is.not(b, a);
  a.dispose();
  assert.equal(Array.from(await b.data()), [1, 2], 'the copy outlives the original');
  assert.is(b.toString(), 'Tensor(f32, [2], cpu)');
  assert.match(a.toString(), /disposed/);
});

test('using disposes at the end of the block', () => {
  let kept: Tensor;
  {
    using t = Tensor.zeros([4]);
    kept = t;
    assert.not.ok(t.isDisposed);
  }
  assert.ok(kept.isDisposed);
});

test('pointer gives the address of CPU data as a bigint', () => {
  const data = new Float32Array(16);
  const t = Tensor.from(data.subarray(4), [12]);
  const whole = Tensor.from(data, [16]);
  assert.is(typeof t.pointer, 'bigint');
  assert.is(t.pointer - whole.pointer, 16n, 'subarray offset of 4 floats');
});

test('SharedArrayBuffer-backed arrays work as tensors, zero-copy', async () => {
  const shared = new Float32Array(new SharedArrayBuffer(64)).fill(1);
  const t = Tensor.from(shared, [1, 1, 2, 8]);
  const { attention } = await import('../lib/index.js');
  assert.equal(Array.from(await (await attention(t, t, t)).data()), new Array(16).fill(1));
  assert.is(typeof t.pointer, 'bigint');
});

test('memoryStats reports live device memory (zero without CUDA tensors)', () => {
  const stats = memoryStats();
  for (const key of ['bytes', 'tensors', 'peakBytes'] as const) assert.type(stats[key], 'number');
  if (!backend().cuda.available) assert.equal(stats, { bytes: 0, tensors: 0, peakBytes: 0 });
});

test('backend() reports cpu threads and a CUDA status with a reason', () => {
  const info = backend();
  assert.ok(Number.isInteger(info.cpu.threads) && info.cpu.threads >= 1);
  assert.type(info.cuda.compiled, 'boolean');
  assert.type(info.cuda.available, 'boolean');
  assert.ok(Array.isArray(info.cuda.devices));
  if (!info.cuda.available) assert.ok(info.cuda.reason.length > 0, 'says why CUDA is unavailable');
  for (const d of info.cuda.devices) {
    assert.type(d.name, 'string');
    assert.match(d.computeCapability, /^\d+\.\d+$/);
    assert.ok(d.memoryBytes > 0);
  }
});

test.run();
