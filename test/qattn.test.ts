// quantizedAttention on the CPU: the attention of q over the cache as dequantize writes it
// (RoPE applied), for every mode, GQA, ragged kvLengths, causal decode steps, and bad input.
// The CPU path decodes and then runs the f64 dense reference, so it must equal
// attention(q, dequantize(qkv)) exactly; the CUDA kernel is held to quant.h's tolerance in
// test/gpu.qattn.test.ts.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attention, calibrate, dequantize, fromF16, QUANT_MODES, quantize, quantizedAttention, Tensor } from '../lib/index.js';
import { badInputTests } from './helpers/expect-error.js';
import { randomArray, randomInt, rng } from './helpers/random.js';

async function cache(seed: number, mode: (typeof QUANT_MODES)[number], B: number, Hkv: number, T: number, D: number, rope: boolean) {
  const random = rng(seed);
  const keys = Tensor.from(randomArray(random, B * Hkv * T * D, 1.5), [B, Hkv, T, D]);
  const values = Tensor.from(randomArray(random, B * Hkv * T * D), [B, Hkv, T, D]);
  const calibration = { keys: Tensor.from(randomArray(random, Hkv * 300 * D, 1.5), [1, Hkv, 300, D]), values: Tensor.from(randomArray(random, Hkv * 300 * D), [1, Hkv, 300, D]) };
  const params = await calibrate({ ...calibration, mode, headDim: D, outliers: 1, sinkTokens: 2, recentTokens: 16, iterations: 5 });
  return quantize(keys, values, params, rope ? { ropeTheta: 10000 } : {});
}

for (const mode of QUANT_MODES) {
  test(`${mode}: equals attention over the dequantized cache (GQA, causal decode steps, ragged lengths, lse)`, async () => {
    const random = rng(40 + QUANT_MODES.indexOf(mode));
    for (let trial = 0; trial < 4; trial++) {
      const B = randomInt(random, 1, 3), Hkv = randomInt(random, 1, 2), G = [1, 2, 4][trial % 3]!, D = [8, 16, 32][trial % 3]!;
      const T = randomInt(random, 5, 260), Tq = randomInt(random, 1, 16), causal = trial % 2 === 0;
      using qkv = await cache(100 * trial + 7, mode, B, Hkv, T, D, trial !== 3);
      using q = Tensor.from(randomArray(random, B * Hkv * G * Tq * D), [B, Hkv * G, Tq, D]);
      const lengths = Int32Array.from({ length: B * Hkv }, (_, i) => (i === 0 ? 0 : randomInt(random, 0, T)));
      using kvLengths = Tensor.from(lengths, [B, Hkv], 'i32');
      const { keys, values } = await dequantize(qkv);
      const expected = await attention(q, keys, values, { causal, kvLengths, returnLse: true });
      const got = await quantizedAttention(q, qkv, { causal, kvLengths, returnLse: true });
      assert.equal(await got.output.data(), await expected.output.data(), `trial ${trial}: out`);
      assert.equal(await got.lse.data(), await expected.lse.data(), `trial ${trial}: lse`);
    }
  });
}

test('f16 queries and bf16 outputs: as attention with the same (f16-rounded) queries', async () => {
  using qkv = await cache(9, 'k2v1', 1, 2, 300, 16, true);
  const values16 = Array.from(randomArray(rng(3), 4 * 3 * 16));
  using q16 = Tensor.from(values16, [1, 4, 3, 16], 'f16');
  using q32 = Tensor.from(fromF16(await q16.data() as Uint16Array), [1, 4, 3, 16]);
  const { keys, values } = await dequantize(qkv);
  const expected = await attention(q32, keys, values, { outDtype: 'bf16', causal: true });
  const got = await quantizedAttention(q16, qkv, { outDtype: 'bf16', causal: true });
  assert.is(got.dtype, 'bf16');
  assert.equal(await got.data(), await expected.data());
});

const good = await cache(1, 'nuq2', 1, 2, 100, 16, true);
const q = Tensor.from(randomArray(rng(2), 4 * 16), [1, 4, 1, 16]);
badInputTests(test, [
  ['q heads not a multiple of kvHeads', () => quantizedAttention(Tensor.zeros([1, 3, 1, 16]), good), 'E_SHAPE'],
  ['q head dim', () => quantizedAttention(Tensor.zeros([1, 4, 1, 8]), good), 'E_SHAPE'],
  ['17 query tokens', () => quantizedAttention(Tensor.zeros([1, 4, 17, 16]), good), 'E_RANGE'],
  ['kvLengths past the cache', () => quantizedAttention(q, good, { kvLengths: Tensor.from(new Int32Array([100, 101]), [1, 2], 'i32') }), 'E_RANGE'],
  ['kvLengths shape', () => quantizedAttention(q, good, { kvLengths: Tensor.from(new Int32Array([1]), [1, 1], 'i32') }), 'E_SHAPE'],
  ['NaN scale', () => quantizedAttention(q, good, { scale: NaN }), 'E_RANGE'],
  ['logWeights is not an option here', () => quantizedAttention(q, good, { logWeights: Tensor.zeros([1, 2, 100]) } as never), 'E_RANGE'],
  ['not a cache', () => quantizedAttention(q, {} as never), 'E_RANGE'],
  ['integer q', () => quantizedAttention(Tensor.zeros([1, 4, 1, 16], 'i32'), good), 'E_DTYPE'],
  ['disposed cache', async () => { const c = await cache(3, 'kivi2', 1, 1, 70, 8, false); c.dispose(); await quantizedAttention(Tensor.zeros([1, 1, 1, 8]), c); }, 'E_DISPOSED'],
]);

test.run();
