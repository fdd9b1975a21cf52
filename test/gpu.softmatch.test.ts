// GPU suite for softMatch: every output, keys and values included, must equal the CPU
// reference bit for bit (csrc/core/softmatch.h fixes the f32 operation order on both sides).
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { softMatch, Tensor, toBF16, toF16, type SoftMatchOptions } from '../lib/index.js';
import { readNpy } from '../bench/common/npy.js';
import { kvDumps, layerFile } from '../bench/common/shared-data.js';
import { randomArray, randomInt, rng } from './helpers/random.js';
import { gpuSuite } from './helpers/gpu.js';

const gpu = gpuSuite('GPU softMatch suite');

const NAMES = ['keys', 'values', 'lengths', 'sizes', 'positions', 'assign'] as const;

async function compare(keys: Tensor, values: Tensor, options: SoftMatchOptions, label: string) {
  const cpu = await softMatch(keys, values, options);
  const [gk, gv] = await Promise.all([keys.to('cuda'), values.to('cuda')]);
  const cuda = await softMatch(gk, gv, options);
  for (const name of NAMES) assert.equal(Array.from(await cuda[name].data()), Array.from(await cpu[name].data()), `${label}: ${name}`);
  cuda.dispose();
  gk.dispose();
  gv.dispose();
}

gpu('softMatch: CUDA equals the CPU on random shapes, dtypes, modes and chunk sizes', async () => {
  const random = rng(77);
  for (let trial = 0; trial < 30; trial++) {
    const B = randomInt(random, 1, 2), H = randomInt(random, 1, 4), D = [1, 3, 8, 64, 128, 256][trial % 6]!;
    const chunk = [2, 8, 32, 64, 256][trial % 5]!, T = randomInt(random, 1, chunk * 6 + 7);
    const dtype = (['f32', 'f16', 'bf16'] as const)[trial % 3]!;
    const make = () => {
      const data = randomArray(random, B * H * T * D);
      return dtype === 'f16' ? Tensor.from(toF16(data), [B, H, T, D], 'f16') : dtype === 'bf16' ? Tensor.from(toBF16(data), [B, H, T, D], 'bf16') : Tensor.from(data, [B, H, T, D]);
    };
    const keys = make(), values = make();
    const protect = { first: randomInt(random, 0, 3), recent: randomInt(random, 0, 9) };
    for (const o of [{ ratio: 0.5, protect }, { ratio: 0.125, protect }, { budget: Math.max(1, chunk - 3), protect }, { threshold: 0.3, passes: 3, protect }] as SoftMatchOptions[])
      await compare(keys, values, { chunk, ...o }, `${JSON.stringify({ B, H, T, D, chunk, dtype })} ${JSON.stringify(o)}`);
  }
});

gpu('softMatch on CUDA: append equals batch, and the real dumps match the CPU', async () => {
  const random = rng(5);
  const B = 1, H = 2, D = 64, T = 300;
  const keys = await Tensor.from(randomArray(random, B * H * T * D), [B, H, T, D]).to('cuda');
  const batch = await softMatch(keys, keys, { ratio: 0.25, protect: { recent: 16 } });
  const host = await keys.data();
  const part = (t0: number, t1: number) => {
    const out = new Float32Array(B * H * (t1 - t0) * D);
    for (let h = 0; h < B * H; h++) out.set(host.subarray((h * T + t0) * D, (h * T + t1) * D), h * (t1 - t0) * D);
    return Tensor.from(out, [B, H, t1 - t0, D]).to('cuda');
  };
  let inc = await softMatch(await part(0, 100), await part(0, 100), { ratio: 0.25, protect: { recent: 16 } });
  for (const [t0, t1] of [[100, 101], [101, 190], [190, 300]] as const) inc = await inc.append(await part(t0, t1), await part(t0, t1));
  for (const name of NAMES) assert.equal(Array.from(await inc[name].data()), Array.from(await batch[name].data()), `append: ${name}`);
  for (const { story, dir, layers } of kvDumps()) {
    for (const layer of layers) {
      const k = readNpy(layerFile(dir, layer, 'k')), v = readNpy(layerFile(dir, layer, 'v'));
      for (const o of [{ ratio: 0.5 }, { ratio: 0.25 }, { ratio: 0.125 }, { threshold: 0.9 }] as SoftMatchOptions[]) await compare(k, v, o, `${story} layer ${layer} ${JSON.stringify(o)}`);
    }
  }
});

test.run();
