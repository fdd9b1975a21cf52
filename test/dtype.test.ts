import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attention, fromBF16, fromF16, Tensor, toBF16, toF16 } from '../lib/index.js';
import { rng, randomArray } from './helpers/random.js';

test('every f16 bit pattern survives fromF16 -> toF16 (NaNs stay NaN)', () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const back = toF16(fromF16(all));
  for (let i = 0; i < 65536; i++) {
    const isNaN = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
    if (isNaN) assert.ok((back[i]! & 0x7c00) === 0x7c00 && (back[i]! & 0x3ff) !== 0, `NaN ${i} stays NaN`);
    else assert.is(back[i], i, `bits ${i.toString(16)}`);
  }
});

test('f16: special values, ties to even, overflow and subnormals', () => {
  const cases: [number, number][] = [
    [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff],
    [65519, 0x7bff], // below the halfway point to 65536: stays finite
    [65520, 0x7c00], // halfway: ties to even rounds up to infinity
    [Infinity, 0x7c00], [-Infinity, 0xfc00], [1e10, 0x7c00],
    [1 + 2 ** -11, 0x3c00], // tie between 1 and 1+2^-10: even (1)
    [1 + 3 * 2 ** -11, 0x3c02], // tie between 1+2^-10 and 1+2^-9: even (the latter)
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // tie with zero: even (zero)
    [3 * 2 ** -25, 0x0002], // tie between 1 and 2 subnormal ulps: even (2)
    [2 ** -26, 0x0000],
    [1023 * 2 ** -24, 0x03ff], // largest subnormal
    [2 ** -14 - 2 ** -26, 0x0400], // rounds up into the normal range
  ];
  const bits = toF16(cases.map(([x]) => x));
  cases.forEach(([x, expected], i) => assert.is(bits[i], expected, `toF16(${x})`));
  assert.ok(Number.isNaN(fromF16(toF16([NaN]))[0]!));
  assert.equal(Array.from(fromF16([0x3c00, 0x0001, 0xfc00])), [1, 2 ** -24, -Infinity]);
});

test('bf16: round trip of every bit pattern and ties to even', () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const back = toBF16(fromBF16(all));
  for (let i = 0; i < 65536; i++) {
    const isNaN = (i & 0x7f80) === 0x7f80 && (i & 0x7f) !== 0;
    if (isNaN) assert.ok((back[i]! & 0x7f80) === 0x7f80 && (back[i]! & 0x7f) !== 0);
    else assert.is(back[i], i);
  }
  const cases: [number, number][] = [
    [1, 0x3f80], [1 + 2 ** -8, 0x3f80], [1 + 3 * 2 ** -8, 0x3f82], [-Infinity, 0xff80],
    [3.4028234663852886e38, 0x7f80], // f32 max rounds up to infinity in bf16
    [1e-40, 0x0001], // f32 subnormal 0x000116c2 -> bf16 subnormal 0x0001
  ];
  const bits = toBF16(cases.map(([x]) => x));
  cases.forEach(([x, expected], i) => assert.is(bits[i], expected, `toBF16(${x})`));
});

test('converters reject non-arrays with E_DTYPE', () => {
  for (const fn of [toF16, fromF16, toBF16, fromBF16]) {
    try {
      fn(42 as unknown as number[]);
      assert.unreachable('should throw');
    } catch (error) {
      assert.is((error as { code?: string }).code, 'E_DTYPE');
    }
  }
});

// With one key, attention returns that key's value row: the C++ kernels' own f16/bf16
// encoders must then agree bit for bit with the TypeScript ones above.
test('C++ f16/bf16 encoders agree with toF16/toBF16 (attention over a single key)', async () => {
  const random = rng(7);
  // (no -0: the weighted sum 0 + 1 * -0 is +0 before any encoder sees it)
  const specials = [0, 65504, 65519, 65520, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -25, 3 * 2 ** -25, 1e-6, -1e-7,
    1e5, -1e5, 2 ** -14 - 2 ** -26, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3e38];
  const D = 64;
  const values = randomArray(random, 4 * D, 100);
  values.set(specials);
  for (let i = specials.length; i < values.length; i += 3) values[i] = values[i]! * 1e-5; // some subnormal halves
  const v = Tensor.from(values, [1, 4, 1, D]);
  const qValues = randomArray(random, 4 * D), kValues = randomArray(random, 4 * D);
  const q = Tensor.from(qValues, [1, 4, 1, D]), k = Tensor.from(kValues, [1, 4, 1, D]);
  for (const [dtype, encode] of [['f16', toF16], ['bf16', toBF16]] as const) {
    const out = await attention(q, k, v, { outDtype: dtype });
    assert.equal(Array.from(await out.data()), Array.from(encode(values)), `${dtype} encoder`);
    // and the decoders: f16/bf16 inputs come back unchanged through f32
    const halfV = Tensor.from(encode(values), [1, 4, 1, D], dtype);
    const halfQ = Tensor.from(encode(qValues), [1, 4, 1, D], dtype);
    const halfK = Tensor.from(encode(kValues), [1, 4, 1, D], dtype);
    const back = await attention(halfQ, halfK, halfV, { outDtype: 'f32' });
    const decoded = dtype === 'f16' ? fromF16(encode(values)) : fromBF16(encode(values));
    assert.equal(Array.from(await back.data()), Array.from(decoded), `${dtype} decoder`);
  }
});

test.run();
