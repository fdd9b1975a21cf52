// Every bad argument gets a KvsquashError with its code and a message naming the argument;
// none crashes the process.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attention, KvsquashError, Tensor, type ErrorCode } from '../lib/index.js';

const f32 = (shape: number[], fill = 0.5) => Tensor.from(new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill), shape);
const q = f32([1, 4, 3, 8]);
const k = f32([1, 2, 5, 8]);
const v = f32([1, 2, 5, 8]);

async function expectError(run: () => unknown, code: ErrorCode, mention: string | RegExp, label: string) {
  try {
    await run();
  } catch (error) {
    assert.instance(error, KvsquashError, `${label}: a KvsquashError`);
    const e = error as KvsquashError;
    assert.is(e.code, code, `${label}: code (message: ${e.message})`);
    if (typeof mention === 'string') assert.ok(e.message.includes(mention), `${label}: message "${e.message}" names ${mention}`);
    else assert.match(e.message, mention, label);
    return;
  }
  assert.unreachable(`${label}: expected ${code}`);
}

const table: [string, () => unknown, ErrorCode, string | RegExp][] = [
  ['q not a tensor', () => attention({} as Tensor, k, v), 'E_DTYPE', 'q'],
  ['k missing', () => attention(q, undefined as unknown as Tensor, v), 'E_DTYPE', 'k'],
  ['q rank 3', () => attention(f32([4, 3, 8]), k, v), 'E_SHAPE', 'q'],
  ['v rank 5', () => attention(q, k, f32([1, 1, 2, 5, 8])), 'E_SHAPE', 'v'],
  ['head dim mismatch', () => attention(q, f32([1, 2, 5, 7]), f32([1, 2, 5, 7])), 'E_SHAPE', 'k'],
  ['batch mismatch', () => attention(q, f32([2, 2, 5, 8]), f32([2, 2, 5, 8])), 'E_SHAPE', 'k'],
  ['v length differs from k', () => attention(q, k, f32([1, 2, 6, 8])), 'E_SHAPE', 'v'],
  ['Hq not a multiple of Hkv', () => attention(q, f32([1, 3, 5, 8]), f32([1, 3, 5, 8])), 'E_SHAPE', 'divide'],
  ['integer q', () => attention(Tensor.from(new Int32Array(96), [1, 4, 3, 8]), k, v), 'E_DTYPE', 'q'],
  ['k dtype differs from q', () => attention(q, Tensor.from(new Uint16Array(80), [1, 2, 5, 8], 'f16'), v), 'E_DTYPE', 'k'],
  ['outDtype i32', () => attention(q, k, v, { outDtype: 'i32' as 'f32' }), 'E_DTYPE', 'outDtype'],
  ['scale NaN', () => attention(q, k, v, { scale: NaN }), 'E_RANGE', 'scale'],
  ['scale Infinity', () => attention(q, k, v, { scale: Infinity }), 'E_RANGE', 'scale'],
  ['scale a string', () => attention(q, k, v, { scale: '1' as unknown as number }), 'E_RANGE', 'scale'],
  ['causal not boolean', () => attention(q, k, v, { causal: 1 as unknown as boolean }), 'E_RANGE', 'causal'],
  ['unknown option', () => attention(q, k, v, { casual: true } as never), 'E_RANGE', 'casual'],
  ['options not an object', () => attention(q, k, v, 5 as never), 'E_RANGE', 'options'],
  ['kvLengths f32', () => attention(q, k, v, { kvLengths: f32([1, 2], 3) }), 'E_DTYPE', 'kvLengths'],
  ['kvLengths wrong shape', () => attention(q, k, v, { kvLengths: Tensor.from(new Int32Array([1, 2, 3]), [1, 3]) }), 'E_SHAPE', 'kvLengths'],
  ['kvLengths rank 1', () => attention(q, k, v, { kvLengths: Tensor.from(new Int32Array([1, 2])) }), 'E_SHAPE', 'kvLengths'],
  ['kvLengths above Tk', () => attention(q, k, v, { kvLengths: Tensor.from(new Int32Array([5, 6]), [1, 2]) }), 'E_RANGE', 'kvLengths'],
  ['kvLengths negative', () => attention(q, k, v, { kvLengths: Tensor.from(new Int32Array([-1, 2]), [1, 2]) }), 'E_RANGE', 'kvLengths'],
  ['logWeights wrong shape', () => attention(q, k, v, { logWeights: f32([1, 2, 4]) }), 'E_SHAPE', 'logWeights'],
  ['logWeights f16', () => attention(q, k, v, { logWeights: Tensor.from(new Uint16Array(10), [1, 2, 5], 'f16') }), 'E_DTYPE', 'logWeights'],
  ['Tensor.from empty shape', () => Tensor.from(new Float32Array(0), [0, 4]), 'E_SHAPE', 'shape'],
  ['Tensor.from wrong element count', () => Tensor.from(new Float32Array(6), [4, 2]), 'E_SHAPE', 'shape'],
  ['Tensor.from fractional dim', () => Tensor.from(new Float32Array(6), [1.5, 4]), 'E_SHAPE', 'shape'],
  ['Tensor.from dtype/array mismatch', () => Tensor.from(new Float32Array(4), [4], 'f16'), 'E_DTYPE', 'f16'],
  ['Tensor.from unknown dtype', () => Tensor.from([1, 2], [2], 'f64' as 'f32'), 'E_DTYPE', 'dtype'],
  ['Tensor.from a string', () => Tensor.from('abc' as never), 'E_DTYPE', 'data'],
  ['Tensor.zeros bad device', () => Tensor.zeros([2], 'f32', 'gpu' as 'cpu'), 'E_DEVICE', 'device'],
  ['to a bad device', () => q.to('cuda:x' as 'cuda'), 'E_DEVICE', 'device'],
  ['fromDevicePointer with a number', () => Tensor.fromDevicePointer(5 as unknown as bigint, [2], 'f32'), 'E_RANGE', 'pointer'],
  ['fromDevicePointer on the cpu', () => Tensor.fromDevicePointer(4096n, [2], 'f32', { device: 'cpu' }), 'E_DEVICE', 'device'],
];

for (const [label, run, code, mention] of table) {
  test(`bad input: ${label} -> ${code}`, () => expectError(run, code, mention, label));
}

test('use after dispose: every use throws E_DISPOSED, dispose twice is fine', async () => {
  const t = f32([1, 2, 5, 8]);
  t.dispose();
  t.dispose();
  assert.ok(t.isDisposed);
  await expectError(() => t.data(), 'E_DISPOSED', 'disposed', 'data()');
  await expectError(() => t.to('cpu'), 'E_DISPOSED', 'disposed', 'to()');
  await expectError(() => t.pointer, 'E_DISPOSED', 'disposed', 'pointer');
  await expectError(() => attention(q, t, v), 'E_DISPOSED', 'k', 'attention(k disposed)');
  await expectError(() => attention(q, k, v, { logWeights: t }), 'E_DISPOSED', 'logWeights', 'logWeights disposed');
});

test('a detached ArrayBuffer is refused, not read', async () => {
  const data = new Float32Array(80).fill(1);
  const t = Tensor.from(data, [1, 2, 5, 8]);
  structuredClone(data.buffer, { transfer: [data.buffer] });
  await expectError(() => attention(q, t, v), 'E_DISPOSED', 'detached', 'detached k');
});

test('CUDA requests on a machine without CUDA fail with a reason, not a crash', async (context) => {
  const { backend } = await import('../lib/index.js');
  if (backend().cuda.available) return; // covered by the GPU suite
  await expectError(() => Tensor.zeros([2, 2], 'f32', 'cuda'), backend().cuda.compiled ? 'E_DEVICE' : 'E_UNSUPPORTED', /CUDA|driver|device/i, 'zeros on cuda');
  await expectError(() => q.to('cuda'), backend().cuda.compiled ? 'E_DEVICE' : 'E_UNSUPPORTED', /CUDA|driver|device/i, 'to cuda');
  void context;
});

test.run();
