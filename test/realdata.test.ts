// Attention on real K/V/Q dumped from a trained model (../shared/data/kv), every layer vs the
// dump's own attn_out. Skipped when ../shared is absent (a user's clone).
// Tolerance: the dump was computed independently in float32 NumPy; our f64 result rounded
// to f32 differs from it by float32 summation error (observed at most 3.8e-6 over all
// layers of both stories; values are O(1)), so the bound is 1e-5 absolute.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attention } from '../lib/index.js';
import { readNpy } from '../bench/common/npy.js';
import { kvDumps, layerFile } from '../bench/common/shared-data.js';

const dumps = kvDumps();

if (dumps.length === 0) {
  test.skip('real KV dumps (../shared/data/kv is absent)', () => {});
}

for (const { story, dir, layers } of dumps) {
  test(`${story}: causal attention of every layer matches attn_out.npy`, async () => {
    for (const layer of layers) {
      const q = readNpy(layerFile(dir, layer, 'q'));
      const k = readNpy(layerFile(dir, layer, 'k'));
      const v = readNpy(layerFile(dir, layer, 'v'));
      const expected = await readNpy(layerFile(dir, layer, 'attn_out')).data();
      assert.equal(q.shape.length, 4);
      const out = await (await attention(q, k, v, { causal: true })).data();
      let worst = 0;
      for (let i = 0; i < out.length; i++) worst = Math.max(worst, Math.abs(out[i]! - expected[i]!));
      assert.ok(worst < 1e-5, `${story} layer ${layer}: max abs error ${worst}`);
    }
  });
}

test.run();
