// GPU suite: CUDA results against the CPU reference on many random shapes, plus CUDA memory
// handling. Skips without a usable device; KVSQUASH_REQUIRE_GPU=1 turns the skip into a failure.
// Tolerances: the CUDA kernel accumulates in f32 (online softmax), the reference in f64, so
// outputs agree to about 1e-6 relative for a few thousand keys; we allow 2e-5 absolute plus
// 1e-4 relative (values are O(1)), and 1e-4 absolute on the log-sum-exp.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attention, KvsquashError, memoryStats, Tensor, toBF16, toF16, type DType } from '../lib/index.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { gpuSuite, type FloatDType } from './helpers/gpu.js';
import { toleranceRatio } from './helpers/reference.js';

const gpu = gpuSuite('GPU suite');
const encode = (values: Float32Array, dtype: FloatDType) =>
  dtype === 'f16' ? toF16(values) : dtype === 'bf16' ? toBF16(values) : values;

interface Case {
  B: number; Hq: number; Hkv: number; Tq: number; Tk: number; D: number; dtype: FloatDType;
  causal: boolean; ragged: boolean; weighted: boolean;
}

async function compare(c: Case, seed: number): Promise<void> {
  const random = rng(seed);
  const make = (shape: number[]) => Tensor.from(encode(randomArray(random, shape.reduce((a, b) => a * b)), c.dtype) as Float32Array, shape, c.dtype);
  const q = make([c.B, c.Hq, c.Tq, c.D]), k = make([c.B, c.Hkv, c.Tk, c.D]), v = make([c.B, c.Hkv, c.Tk, c.D]);
  const kvLengths = c.ragged ? Tensor.from(Int32Array.from({ length: c.B * c.Hkv }, () => randomInt(random, 0, c.Tk)), [c.B, c.Hkv]) : undefined;
  const logWeights = c.weighted ? Tensor.from(Float32Array.from({ length: c.B * c.Hkv * c.Tk }, () => Math.log(randomInt(random, 1, 9))), [c.B, c.Hkv, c.Tk]) : undefined;
  const options = { causal: c.causal, returnLse: true as const, outDtype: 'f32' as const };
  const cpu = await attention(q, k, v, { ...options, ...(kvLengths ? { kvLengths } : {}), ...(logWeights ? { logWeights } : {}) });
  const onGpu = async (t: Tensor | undefined) => (t ? t.to('cuda') : undefined);
  const [gq, gk, gv, gl, gw] = await Promise.all([onGpu(q), onGpu(k), onGpu(v), onGpu(kvLengths), onGpu(logWeights)]);
  const cuda = await attention(gq!, gk!, gv!, { ...options, ...(gl ? { kvLengths: gl } : {}), ...(gw ? { logWeights: gw } : {}) });
  assert.is(cuda.output.device, 'cuda:0');
  const label = JSON.stringify(c);
  const outRatio = toleranceRatio(await cuda.output.data(), await cpu.output.data(), 2e-5, 1e-4);
  assert.ok(outRatio <= 1, `output ${label}: ${outRatio}`);
  const lseRatio = toleranceRatio(await cuda.lse.data(), await cpu.lse.data(), 1e-4, 0);
  assert.ok(lseRatio <= 1, `lse ${label}: ${lseRatio}`);
  for (const t of [gq, gk, gv, gl, gw, cuda.output, cuda.lse]) t?.dispose();
}

gpu('tensors round-trip host -> device -> host for every dtype', async () => {
  const dtypes: [DType, ArrayLike<number>][] = [
    ['f32', new Float32Array([1.5, -2, 3e-7])], ['f16', new Uint16Array([0x3c00, 0x7bff, 1])], ['bf16', new Uint16Array([0x3f80, 2, 3])],
    ['i32', new Int32Array([-5, 7, 2 ** 30])], ['u32', new Uint32Array([1, 2, 2 ** 31])], ['i16', new Int16Array([-3, 4, 5])],
    ['u16', new Uint16Array([9, 8, 7])], ['i8', new Int8Array([-128, 0, 127])], ['u8', new Uint8Array([0, 1, 255])],
  ];
  for (const [dtype, data] of dtypes) {
    const host = Tensor.from(data as Float32Array, [3], dtype);
    const device = await host.to('cuda');
    const again = await device.to('cuda:0'); // device-to-device copy
    assert.is(device.device, 'cuda:0');
    assert.equal(Array.from(await again.data()), Array.from(data), dtype);
    device.dispose();
    again.dispose();
  }
  const zeros = Tensor.zeros([5, 3], 'f16', 'cuda');
  assert.equal(Array.from(await zeros.data()), new Array(15).fill(0));
  zeros.dispose();
});

gpu('memoryStats follows allocations and dispose; the finalizer is only a safety net', async () => {
  const before = memoryStats('cuda:0');
  const t = Tensor.zeros([1024], 'f32', 'cuda');
  const during = memoryStats('cuda:0');
  assert.is(during.tensors, before.tensors + 1);
  assert.is(during.bytes, before.bytes + 4096);
  assert.ok(during.peakBytes >= during.bytes);
  t.dispose();
  assert.equal(memoryStats('cuda:0').bytes, before.bytes);
  assert.equal(memoryStats().tensors, before.tensors, 'the all-devices total agrees');
});

gpu('a forgotten CUDA tensor is freed by its finalizer after garbage collection', async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, 'npm test runs node with --expose-gc');
  const before = memoryStats('cuda:0').bytes;
  (() => {
    Tensor.zeros([1 << 20], 'f32', 'cuda'); // 4 MiB, never disposed
  })();
  assert.is(memoryStats('cuda:0').bytes, before + 4 * (1 << 20));
  for (let i = 0; i < 20 && memoryStats('cuda:0').bytes !== before; i++) {
    gc!();
    await new Promise((resolve) => setImmediate(resolve)); // finalizers run between turns
  }
  assert.is(memoryStats('cuda:0').bytes, before);
});

gpu('fromDevicePointer borrows memory; disposing the view frees nothing', async () => {
  const owner = await Tensor.from(new Float32Array([1, 2, 3, 4]), [4]).to('cuda');
  const stats = memoryStats();
  const view = Tensor.fromDevicePointer(owner.pointer, [2, 2], 'f32', { device: 'cuda:0', owner });
  assert.equal(memoryStats(), stats, 'no new allocation');
  assert.equal(Array.from(await view.data()), [1, 2, 3, 4]);
  view.dispose();
  assert.equal(Array.from(await owner.data()), [1, 2, 3, 4], 'the owner still holds its memory');
  owner.dispose();
  try {
    Tensor.fromDevicePointer(Tensor.zeros([1]).pointer, [1], 'f32'); // host memory is not device memory
    assert.unreachable('host pointer accepted');
  } catch (error) {
    assert.instance(error, KvsquashError);
    assert.is((error as KvsquashError).code, 'E_DEVICE');
  }
});

gpu('disposing inputs while an op is in flight is safe (the free waits for the op)', async () => {
  const random = rng(3);
  const qHost = Tensor.from(randomArray(random, 4 * 128), [1, 4, 1, 128]);
  const kHost = Tensor.from(randomArray(random, 2 * 4096 * 128), [1, 2, 4096, 128]);
  const q = await qHost.to('cuda'), k = await kHost.to('cuda');
  const pending = attention(q, k, k);
  k.dispose();
  q.dispose();
  assert.ok(k.isDisposed && q.isDisposed);
  const out = await pending;
  const expected = await attention(qHost, kHost, kHost);
  assert.ok(toleranceRatio(await out.data(), await expected.data(), 2e-5, 1e-4) <= 1);
  out.dispose();
});

gpu('CUDA errors: unsupported head dim, lengths out of range, mixed devices', async () => {
  const expectCode = async (run: () => Promise<unknown>, code: string) => {
    try {
      await run();
      assert.unreachable(code);
    } catch (error) {
      assert.instance(error, KvsquashError);
      assert.is((error as KvsquashError).code, code, (error as Error).message);
    }
  };
  const q = Tensor.zeros([1, 2, 1, 24], 'f32', 'cuda'), k = Tensor.zeros([1, 1, 3, 24], 'f32', 'cuda');
  await expectCode(() => attention(q, k, k), 'E_UNSUPPORTED');
  const q8 = Tensor.zeros([1, 2, 1, 8], 'f32', 'cuda'), k8 = Tensor.zeros([1, 1, 3, 8], 'f32', 'cuda');
  await expectCode(async () => attention(q8, k8, k8, { kvLengths: await Tensor.from(new Int32Array([4]), [1, 1]).to('cuda') }), 'E_RANGE');
  await expectCode(() => attention(q8, Tensor.zeros([1, 1, 3, 8]), k8), 'E_DEVICE');
  for (const t of [q, k, q8, k8]) t.dispose();
});

gpu('attention: fixed edge cases, every supported head dim and dtype', async () => {
  let seed = 0;
  for (const D of [8, 16, 32, 64, 128, 256]) {
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      await compare({ B: 1, Hq: 4, Hkv: 1, Tq: 1, Tk: 33, D, dtype, causal: false, ragged: false, weighted: false }, seed++);
      await compare({ B: 2, Hq: 6, Hkv: 3, Tq: 7, Tk: 7, D, dtype, causal: true, ragged: true, weighted: true }, seed++);
    }
  }
  await compare({ B: 1, Hq: 1, Hkv: 1, Tq: 1, Tk: 1, D: 8, dtype: 'f32', causal: true, ragged: false, weighted: false }, seed++);
  await compare({ B: 1, Hq: 2, Hkv: 2, Tq: 40, Tk: 9, D: 32, dtype: 'f32', causal: true, ragged: false, weighted: false }, seed++);
  await compare({ B: 1, Hq: 32, Hkv: 8, Tq: 1, Tk: 5000, D: 128, dtype: 'f16', causal: true, ragged: false, weighted: false }, seed++);
  await compare({ B: 2, Hq: 8, Hkv: 8, Tq: 130, Tk: 700, D: 64, dtype: 'bf16', causal: true, ragged: true, weighted: false }, seed++);
});

gpu('attention: 60 random shapes match the CPU reference', async () => {
  const random = rng(2024);
  for (let i = 0; i < 60; i++) {
    const Hkv = randomInt(random, 1, 4);
    await compare({
      B: randomInt(random, 1, 3), Hkv, Hq: Hkv * randomInt(random, 1, 8), Tq: random() < 0.3 ? 1 : randomInt(random, 1, 70),
      Tk: randomInt(random, 1, 600), D: [8, 16, 32, 64, 128, 256][randomInt(random, 0, 5)]!,
      dtype: (['f32', 'f16', 'bf16'] as const)[randomInt(random, 0, 2)]!,
      causal: random() < 0.5, ragged: random() < 0.5, weighted: random() < 0.5,
    }, 10_000 + i);
  }
});

gpu('attention on CUDA writes f16/bf16 outputs within one rounding of the f32 result', async () => {
  const random = rng(77);
  const q = await Tensor.from(randomArray(random, 2 * 4 * 5 * 64), [2, 4, 5, 64]).to('cuda');
  const k = await Tensor.from(randomArray(random, 2 * 2 * 50 * 64), [2, 2, 50, 64]).to('cuda');
  const reference = await (await attention(q, k, k, { causal: true })).data();
  for (const dtype of ['f16', 'bf16'] as const) {
    const out = await attention(q, k, k, { causal: true, outDtype: dtype });
    const bits = await out.data();
    const expected = encode(reference as Float32Array, dtype) as Uint16Array;
    let off = 0;
    for (let i = 0; i < bits.length; i++) if (Math.abs(bits[i]! - expected[i]!) > 1) off++;
    assert.is(off, 0, `${dtype}: elements more than one ulp away`);
  }
});

test.run();
