// CPU attention against the naive TypeScript reference in test/helpers/reference.ts.
// Tolerance: both accumulate in f64; the outputs differ only by the final rounding to f32
// and summation order, so 1e-6 relative (plus 1e-6 absolute near zero) is generous.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attention, fromBF16, fromF16, setCpuThreads, Tensor, toBF16, toF16 } from '../lib/index.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { referenceAttention, toleranceRatio } from './helpers/reference.js';

interface Case {
  B: number; Hq: number; Hkv: number; Tq: number; Tk: number; D: number;
  causal: boolean; ragged: boolean; weighted: boolean;
}

function makeInputs(c: Case, seed: number) {
  const random = rng(seed);
  const q = randomArray(random, c.B * c.Hq * c.Tq * c.D);
  const k = randomArray(random, c.B * c.Hkv * c.Tk * c.D);
  const v = randomArray(random, c.B * c.Hkv * c.Tk * c.D);
  const kvLengths = c.ragged ? Int32Array.from({ length: c.B * c.Hkv }, () => randomInt(random, 0, c.Tk)) : undefined;
  const logWeights = c.weighted ? Float32Array.from({ length: c.B * c.Hkv * c.Tk }, () => Math.log(randomInt(random, 1, 9))) : undefined;
  return { q, k, v, kvLengths, logWeights };
}

async function check(c: Case, seed: number): Promise<void> {
  const x = makeInputs(c, seed);
  const scale = 1 / Math.sqrt(c.D);
  const result = await attention(
    Tensor.from(x.q, [c.B, c.Hq, c.Tq, c.D]), Tensor.from(x.k, [c.B, c.Hkv, c.Tk, c.D]), Tensor.from(x.v, [c.B, c.Hkv, c.Tk, c.D]),
    {
      causal: c.causal, returnLse: true,
      ...(x.kvLengths ? { kvLengths: Tensor.from(x.kvLengths, [c.B, c.Hkv]) } : {}),
      ...(x.logWeights ? { logWeights: Tensor.from(x.logWeights, [c.B, c.Hkv, c.Tk]) } : {}),
    });
  const expected = referenceAttention({ ...c, ...x, scale });
  const label = JSON.stringify(c);
  assert.ok(toleranceRatio(await result.output.data(), expected.out, 1e-6, 1e-6) <= 1, `output ${label}`);
  assert.ok(toleranceRatio(await result.lse.data(), expected.lse, 1e-6, 1e-6) <= 1, `lse ${label}`);
}

test('fixed edge shapes: Tq=1, Tk=1, Tq>Tk causal, odd D, GQA 1..8', async () => {
  const cases: Case[] = [
    { B: 1, Hq: 1, Hkv: 1, Tq: 1, Tk: 1, D: 1, causal: false, ragged: false, weighted: false },
    { B: 1, Hq: 8, Hkv: 1, Tq: 1, Tk: 37, D: 8, causal: true, ragged: false, weighted: false },
    { B: 2, Hq: 4, Hkv: 2, Tq: 9, Tk: 5, D: 3, causal: true, ragged: false, weighted: false },
    { B: 3, Hq: 6, Hkv: 3, Tq: 17, Tk: 17, D: 7, causal: true, ragged: true, weighted: true },
    { B: 1, Hq: 2, Hkv: 2, Tq: 4, Tk: 130, D: 33, causal: false, ragged: true, weighted: false },
  ];
  for (const [i, c] of cases.entries()) await check(c, 100 + i);
});

test('random shapes (GQA, causal, ragged, logWeights) match the reference', async () => {
  const random = rng(1234);
  for (let i = 0; i < 40; i++) {
    const Hkv = randomInt(random, 1, 4);
    const c: Case = {
      B: randomInt(random, 1, 3), Hkv, Hq: Hkv * randomInt(random, 1, 4), Tq: randomInt(random, 1, 12),
      Tk: randomInt(random, 1, 70), D: [1, 5, 8, 16, 31, 64][randomInt(random, 0, 5)]!,
      causal: random() < 0.5, ragged: random() < 0.5, weighted: random() < 0.5,
    };
    await check(c, i);
  }
});

test('zero-length heads and fully masked queries give zeros and lse -Infinity', async () => {
  const q = Tensor.from(new Float32Array(2 * 3 * 4).fill(1), [1, 2, 3, 4]);
  const k = Tensor.from(new Float32Array(2 * 5 * 4).fill(1), [1, 2, 5, 4]);
  const { output, lse } = await attention(q, k, k, { kvLengths: Tensor.from(new Int32Array([0, 1]), [1, 2]), causal: true, returnLse: true });
  const out = await output.data(), l = await lse.data();
  assert.equal(Array.from(out.subarray(0, 12)), new Array(12).fill(0)); // head 0: no keys
  assert.equal(Array.from(l.subarray(0, 3)), [-Infinity, -Infinity, -Infinity]);
  // head 1: one key, visible only to the last query (j <= i + 1 - 3)
  assert.equal(Array.from(l.subarray(3, 5)), [-Infinity, -Infinity]);
  assert.ok(Math.abs(l[5]! - 4 / 2) < 1e-6, 'lse of one key = its logit q.k * scale');
  assert.equal(Array.from(out.subarray(20, 24)), [1, 1, 1, 1]);
});

test('scale option and f16/bf16 inputs (compared in f32 after decoding)', async () => {
  const c: Case = { B: 2, Hq: 4, Hkv: 2, Tq: 3, Tk: 21, D: 16, causal: true, ragged: false, weighted: false };
  const x = makeInputs(c, 99);
  for (const [dtype, encode, decode] of [['f16', toF16, fromF16], ['bf16', toBF16, fromBF16]] as const) {
    const qd = decode(encode(x.q)), kd = decode(encode(x.k)), vd = decode(encode(x.v));
    const out = await attention(
      Tensor.from(encode(x.q), [2, 4, 3, 16], dtype), Tensor.from(encode(x.k), [2, 2, 21, 16], dtype),
      Tensor.from(encode(x.v), [2, 2, 21, 16], dtype), { causal: true, scale: 0.3, outDtype: 'f32' });
    const expected = referenceAttention({ ...c, q: qd, k: kd, v: vd, scale: 0.3 });
    assert.ok(toleranceRatio(await out.data(), expected.out, 1e-6, 1e-6) <= 1, dtype);
    const native = await attention(Tensor.from(encode(x.q), [2, 4, 3, 16], dtype), Tensor.from(encode(x.k), [2, 2, 21, 16], dtype),
      Tensor.from(encode(x.v), [2, 2, 21, 16], dtype), { causal: true, scale: 0.3 });
    assert.is(native.dtype, dtype, 'output keeps the input dtype by default');
    assert.equal(Array.from(await native.data()), Array.from(encode(await out.data())), `${dtype} output = encoded f32 output`);
  }
});

test('results do not depend on the CPU thread count', async () => {
  const c: Case = { B: 2, Hq: 6, Hkv: 3, Tq: 5, Tk: 40, D: 8, causal: true, ragged: true, weighted: true };
  const x = makeInputs(c, 5);
  const run = async () => Array.from(await (await attention(Tensor.from(x.q, [2, 6, 5, 8]), Tensor.from(x.k, [2, 3, 40, 8]),
    Tensor.from(x.v, [2, 3, 40, 8]), { causal: true, kvLengths: Tensor.from(x.kvLengths!, [2, 3]), logWeights: Tensor.from(x.logWeights!, [2, 3, 40]) })).data());
  const before = setCpuThreads(1);
  const one = await run();
  setCpuThreads(3);
  const three = await run();
  setCpuThreads(0);
  assert.ok(before >= 1);
  assert.equal(one, three);
});

test('many concurrent calls all settle with the right results', async () => {
  const c: Case = { B: 1, Hq: 2, Hkv: 1, Tq: 2, Tk: 9, D: 4, causal: false, ragged: false, weighted: false };
  const runs = Array.from({ length: 32 }, (_, i) => {
    const x = makeInputs(c, 500 + i);
    return attention(Tensor.from(x.q, [1, 2, 2, 4]), Tensor.from(x.k, [1, 1, 9, 4]), Tensor.from(x.v, [1, 1, 9, 4]))
      .then(async (out) => toleranceRatio(await out.data(), referenceAttention({ ...c, ...x, scale: 0.5 }).out, 1e-6, 1e-6));
  });
  for (const ratio of await Promise.all(runs)) assert.ok(ratio <= 1);
});

test.run();
