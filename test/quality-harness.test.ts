// The quality harness end to end on a tiny random llama2.c model this test writes itself (no
// ../shared needed), plus, with ../shared, prefill mode against the plain forward pass.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { attention, backend, KvsquashError, softMatch, Tensor } from '../lib/index.js';
import { gatherTokens, range, toHost } from '../bench/common/kv-host.js';
import { LayerCache } from '../bench/quality/cache.js';
import { sharedDir } from '../bench/common/shared-data.js';
import { perplexity, readStories, tokenNll } from '../bench/quality/eval.js';
import { calibrationFrom, captureDump, promptLength, readDumps, resolveDevice, runQuality, topIndices, type QualityRow } from '../bench/quality/harness.js';
import { METHODS, quantMethod, softMatchMethod, uncompressed, type AttentionMethod } from '../bench/quality/methods.js';
import { Llama } from '../bench/quality/model.js';
import { reportQuality } from '../bench/quality/output.js';
import { Tokenizer } from '../bench/quality/tokenizer.js';
import { randomArray, rng } from './helpers/random.js';

const PIECES = [' ', 'a', 'b', 'c', 'd', 'e', 'g', 'h', 'i', 'l', 'n', 'o', 'r', 's', 't', 'u', 'w', 'y', '.',
  'th', 'he', 'the', ' the', 'an', 'nd', 'in', 'er', 'on', 'at'];
const CONFIG = { dim: 16, hiddenDim: 32, layers: 2, heads: 2, kvHeads: 1, vocab: 3 + PIECES.length, seqLen: 256 };

/** A random llama2.c version-0 checkpoint and a tokenizer over PIECES, in a temp dir. */
function writeTinyModel(dir: string): { model: string; tokenizer: string } {
  const c = CONFIG, kvDim = (c.dim / c.heads) * c.kvHeads, random = rng(2024);
  const weights = (count: number, scale: number) => Array.from({ length: count }, () => (random() * 2 - 1) * scale);
  const ones = (count: number) => new Array<number>(count).fill(1);
  const floats = [
    ...weights(c.vocab * c.dim, 0.3), ...ones(c.layers * c.dim),
    ...weights(c.layers * c.dim * c.dim, 0.5), ...weights(c.layers * kvDim * c.dim, 0.5), ...weights(c.layers * kvDim * c.dim, 0.5),
    ...weights(c.layers * c.dim * c.dim, 0.3), ...ones(c.layers * c.dim),
    ...weights(c.layers * c.hiddenDim * c.dim, 0.3), ...weights(c.layers * c.dim * c.hiddenDim, 0.3), ...weights(c.layers * c.hiddenDim * c.dim, 0.3),
    ...ones(c.dim),
  ];
  const header = Buffer.from(new Int32Array([c.dim, c.hiddenDim, c.layers, c.heads, c.kvHeads, c.vocab, c.seqLen]).buffer);
  writeFileSync(join(dir, 'model.bin'), Buffer.concat([header, Buffer.from(new Float32Array(floats).buffer)]));
  const entries = ['<unk>', '<s>', '</s>', ...PIECES].map((piece, id) => {
    const bytes = Buffer.from(piece, 'latin1'), head = Buffer.alloc(8);
    head.writeFloatLE(id < 3 ? 0 : piece.length, 0); // longer pieces merge first
    head.writeInt32LE(bytes.length, 4);
    return Buffer.concat([head, bytes]);
  });
  writeFileSync(join(dir, 'tok.bin'), Buffer.concat([Buffer.from(new Int32Array([8]).buffer), ...entries]));
  return { model: join(dir, 'model.bin'), tokenizer: join(dir, 'tok.bin') };
}

const WORDS = ['the', 'cat', 'sat', 'on', 'a', 'red', 'hat', 'and', 'the', 'dog', 'ran', 'to', 'in', 'sun', 'the', 'big', 'tree'];

function tinyText(seed: number, words: number): string {
  const random = rng(seed);
  return Array.from({ length: words }, (_, i) => WORDS[Math.floor(random() * WORDS.length)]! + (i % 7 === 6 ? '.' : '')).join(' ');
}

const dir = mkdtempSync(join(tmpdir(), 'kvsquash-quality-'));
const paths = writeTinyModel(dir);
const model = new Llama(paths.model), tokenizer = new Tokenizer(paths.tokenizer, CONFIG.vocab);
const stories = [tinyText(1, 60), tinyText(2, 75)];
const byName = (rows: QualityRow[], method: string, mode: string, budget?: number) =>
  rows.find((r) => r.method === method && r.mode === mode && (budget === undefined || r.budget === budget))!;

// quantizers get their own test below: the 8-D codebooks need more calibration tokens than this
const RUN_METHODS = METHODS.filter((m) => m.family !== 'quant');
let rows: QualityRow[] = [];
test.before(async () => {
  const dumps = [await captureDump(model, 'dump a', tokenizer.encode(tinyText(3, 50))), await captureDump(model, 'dump b', tokenizer.encode(tinyText(4, 50)))];
  rows = await runQuality({ model, tokenizer, stories, dumps, calibration: dumps, methods: RUN_METHODS });
});
test.after(() => rmSync(dir, { recursive: true, force: true }));

test('tiny texts span several 32-token blocks, in the tiny vocabulary only', () => {
  for (const text of stories) {
    const ids = tokenizer.encode(text);
    assert.ok(ids.length > 3 * 32 && ids.length <= CONFIG.seqLen, `${ids.length} tokens`);
    assert.ok(ids.every((id) => id >= 3 && id < CONFIG.vocab || id === 1), 'no byte fallback');
    assert.is(tokenizer.decode(ids), text);
  }
});

test('one row per method, budget and mode', () => {
  const expected = RUN_METHODS.flatMap((m) => m.budgets.flatMap((b) => ['prefill', 'decode'].map((mode) => `${m.name}|${b}|${mode}`)));
  assert.equal(rows.map((r) => `${r.method}|${r.budget}|${r.mode}`).sort(), expected.sort());
});

test('uncompressed: kept 1, 16 bits, exact attention, and the plain perplexity in decode mode', async () => {
  const plain = await perplexity(model, tokenizer, stories);
  for (const mode of ['prefill', 'decode']) {
    const row = byName(rows, 'uncompressed', mode);
    assert.is(row.kept, 1);
    assert.is(row.bits, 16);
    assert.is(row.bytesPerToken, 2 * CONFIG.kvHeads * 8 * 2);
    assert.ok(row.relL2! < 1e-6, `${mode} rel-L2 ${row.relL2}`);
    assert.is(row.recall, 1);
  }
  const decode = byName(rows, 'uncompressed', 'decode');
  assert.is(decode.scoredTokens, plain.tokens);
  assert.ok(Math.abs(decode.ppl - plain.ppl) < 1e-9 * plain.ppl, `${decode.ppl} vs ${plain.ppl}`);
});

test('compressed rows keep the ratio asked for and cost that share of the bytes', () => {
  // cache-compressing methods (attention entries keep the cache whole; tested below)
  for (const row of rows.filter((r) => r.method !== 'uncompressed' && r.family !== 'pyramid')) {
    assert.ok(Math.abs(row.kept - row.budget) < 1e-9, `${row.method} ${row.budget} ${row.mode}: kept ${row.kept}`);
    // every slot: f16 key and value (32 bytes for one KV head of 8) plus an f16 log-size
    assert.ok(Math.abs(row.bytesPerToken - row.budget * 34) < 1e-9, `${row.method} ${row.budget}: ${row.bytesPerToken} bytes`);
    assert.ok(row.relL2! > 0 && row.relL2! < 2, `${row.method} rel-L2 ${row.relL2}`);
    assert.ok(row.recall! > 0 && row.recall! <= 1, `${row.method} recall ${row.recall}`);
    assert.ok(Number.isFinite(row.ppl) && row.ppl > 1, `${row.method} ppl ${row.ppl}`);
  }
  // fewer slots, more attention error (per method and mode, over its budgets)
  for (const method of ['gaussianMerge', 'softMatch']) {
    for (const mode of ['prefill', 'decode']) {
      const errors = [0.5, 0.25, 0.125].map((b) => byName(rows, method, mode, b).relL2!);
      assert.ok(errors[0]! < errors[2]!, `${method} ${mode}: ${errors.join(', ')}`);
    }
  }
});

test('JSON and SVG are written and parse; the SVG has one polyline per method in each mode panel', () => {
  const out = mkdtempSync(join(dir, 'results-'));
  const { json, svg } = reportQuality(rows, 'tiny-cpu', { model: 'tiny' }, out);
  const parsed = JSON.parse(readFileSync(json, 'utf8'));
  assert.is(parsed.device, 'tiny-cpu');
  assert.type(parsed.commit, 'string');
  assert.ok(!Number.isNaN(Date.parse(parsed.date)));
  assert.is(parsed.rows.length, rows.length);
  const text = readFileSync(svg, 'utf8');
  assert.ok(text.startsWith('<svg') && text.trimEnd().endsWith('</svg>'));
  assert.is((text.match(/<svg/g) ?? []).length, (text.match(/<\/svg>/g) ?? []).length);
  const panels = text.split('<g class="panel"').slice(1);
  assert.is(panels.length, 2);
  for (const panel of panels) {
    const lines = [...panel.split('</g>')[0]!.matchAll(/<polyline data-method="([^"]+)" points="([^"]+)"/g)];
    assert.equal(lines.map((m) => m[1]), RUN_METHODS.map((m) => m.name));
    for (const [, method, points] of lines) {
      const budgets = RUN_METHODS.find((m) => m.name === method)!.budgets.length;
      const coords = points!.split(' ').map((p) => p.split(',').map(Number));
      assert.is(coords.length, budgets);
      assert.ok(coords.flat().every(Number.isFinite), points);
    }
  }
});

test('a quantization entry: pages from the true positions, the tail raw; rows at < 16 bits in both modes', async () => {
  const dumps = [await captureDump(model, 'a', tokenizer.encode(tinyText(3, 80))), await captureDump(model, 'b', tokenizer.encode(tinyText(4, 80)))];
  const calibration = await calibrationFrom(dumps, 'cpu');
  const compress = await quantMethod('nuq2').prepare(calibration);
  // a stretch at position 100: one 64-token page (pre-RoPE codes, rotated back at 100..163)
  // and a 10-token raw tail (f16), which must come back as the exact post-RoPE keys
  const layer = 0, start = 100, n = 74, D = calibration.headDim, H = CONFIG.kvHeads;
  const source = calibration.layers[layer]!;
  const take = async (t: Tensor<'f32'>) => {
    const data = (await t.data()) as Float32Array, T = t.shape[2]!, out = new Float32Array(H * n * D);
    for (let h = 0; h < H; h++) out.set(data.subarray((h * T + start) * D, (h * T + start + n) * D), h * n * D);
    return Tensor.from(out, [1, H, n, D], 'f32');
  };
  const input = { layer, start, queries: Tensor.zeros([1, CONFIG.heads, n, D]), keys: await take(source.keys), keysPreRope: await take(source.keysPreRope), values: await take(source.values) };
  const out = await compress(input, 1);
  const [got, want] = [(await out.keys.data()) as Float32Array, (await input.keys.data()) as Float32Array];
  let err = 0, norm = 0;
  for (let h = 0; h < H; h++) {
    for (let t = 0; t < n; t++) {
      for (let d = 0; d < D; d++) {
        const i = (h * n + t) * D + d;
        if (t >= 64) assert.ok(Math.abs(got[i]! - want[i]!) <= 2e-3 * Math.max(1, Math.abs(want[i]!)), `raw tail token ${t}: ${got[i]} vs ${want[i]}`);
        else err += (got[i]! - want[i]!) ** 2, norm += want[i]! ** 2;
      }
    }
  }
  assert.ok(Math.sqrt(err / norm) < 0.3, `page keys vs the true post-RoPE keys: rel error ${Math.sqrt(err / norm)}`);
  assert.ok(out.bytes < n * H * D * 2 * 2, `bytes ${out.bytes}`);

  const quantRows = await runQuality({ model, tokenizer, stories, dumps, calibration: dumps, methods: [quantMethod('nuq2')] });
  assert.equal(quantRows.map((r) => r.mode).sort(), ['decode', 'prefill']);
  for (const row of quantRows) {
    assert.is(row.kept, 1);
    assert.ok(row.bits > 2 && row.bits < 16, `${row.mode} bits ${row.bits}`);
    assert.ok(Number.isFinite(row.ppl) && Number.isFinite(row.relL2!), `${row.mode}: ${row.ppl} ${row.relL2}`);
  }
});

test('pyramidAttention rows: whole cache, dense bytes, error that grows as the budget shrinks', () => {
  for (const mode of ['prefill', 'decode']) {
    const errors = [0.5, 0.25, 0.125].map((b) => byName(rows, 'pyramidAttention', mode, b));
    for (const row of errors) {
      assert.is(row.kept, 1);
      assert.is(row.bytesPerToken, byName(rows, 'uncompressed', mode).bytesPerToken);
      assert.ok(Number.isFinite(row.ppl) && row.relL2! >= 0, `${mode} ${row.budget}`);
    }
    assert.ok(errors[2]!.relL2! >= errors[0]!.relL2!, `${mode}: ${errors.map((r) => r.relL2).join(', ')}`);
  }
});

test("an 'attention' entry replaces the attention op over a raw cache", async () => {
  let calls = 0;
  const dense: AttentionMethod = {
    kind: 'attention', name: 'dense via override', family: 'test', budgets: [1], decode: 'raw cache',
    prepare: async () => async (queries, kv) => {
      calls++;
      return attention(queries, kv.keys, kv.values, { causal: true, kvLengths: kv.kvLengths!, logWeights: kv.logWeights! });
    },
  };
  const [row] = await runQuality({ model, tokenizer, stories, dumps: [], calibration: [await captureDump(model, 'c', tokenizer.encode(tinyText(5, 30)))], methods: [dense], modes: ['decode'] });
  assert.ok(calls > 0);
  assert.is(row!.kept, 1);
  assert.is(row!.relL2, null);
  assert.ok(Math.abs(row!.ppl - byName(rows, 'uncompressed', 'decode').ppl) < 1e-12);
});

test('decode mode with softMatch holds what softMatch over the compressed blocks gives, then the recent block raw', async () => {
  const random = rng(11), H = 2, D = 8, T = 104;
  const make = () => Tensor.from(randomArray(random, H * T * D), [1, H, T, D], 'f32');
  const keys = await toHost(make()), values = await toHost(make()), queries = await toHost(make());
  const compressor = await softMatchMethod.prepare({ layers: [], headDim: D, source: 'none' });
  const cache = new LayerCache({ layer: 0, kvHeads: H, headDim: D, compressor, budget: 0.25, device: 'cpu' });
  let layout;
  for (let from = 0; from < T; from += 32) {
    const to = Math.min(T, from + 32), slice = (kv: typeof keys) => gatherTokens(kv, () => range(from, to));
    layout = await cache.extendWithLayout({ layer: 0, start: from, queries: slice(queries), keys: slice(keys), keysPreRope: slice(keys), values: slice(values) });
    if (to - from === 32) await cache.compress(32);
  }
  // what the last 8 tokens attend over: blocks 0 and 1 clustered (8 slots each), then block 2 and themselves raw
  const clustered = await softMatch(gatherTokens(keys, () => range(0, 64)), gatherTokens(values, () => range(0, 64)), { chunk: 32, ratio: 0.25, protect: { first: 0 } });
  const [ck, cv, sizes, assign] = [await clustered.keys.data(), await clustered.values.data(), await clustered.sizes.data(), await clustered.assign.data()];
  assert.equal(Array.from(layout!.lengths), [16 + 40, 16 + 40]);
  for (let h = 0; h < H; h++) {
    const slots = layout!.slots;
    assert.equal(Array.from(layout!.keys.subarray(h * slots * D, (h * slots + 16) * D)), Array.from(ck.subarray(h * 16 * D, (h + 1) * 16 * D)));
    assert.equal(Array.from(layout!.values.subarray(h * slots * D, (h * slots + 16) * D)), Array.from(cv.subarray(h * 16 * D, (h + 1) * 16 * D)));
    assert.equal(Array.from(layout!.logWeights.subarray(h * slots, h * slots + 16)), Array.from(sizes.subarray(h * 16, (h + 1) * 16), (n) => Math.fround(Math.log(n))));
    assert.equal(Array.from(layout!.keys.subarray((h * slots + 16) * D, (h * slots + 56) * D)), Array.from(keys.data.subarray((h * T + 64) * D, (h * T + 104) * D)));
    assert.equal(Array.from(layout!.slotOf.subarray(h * T, (h + 1) * T)), [...Array.from(assign.subarray(h * 64, (h + 1) * 64)), ...range(16, 56)]);
  }
  clustered.dispose();
});

test('topIndices: the k largest, largest first, ties to the lower index (against a full sort)', () => {
  const random = rng(5);
  for (let trial = 0; trial < 200; trial++) {
    const count = 1 + Math.floor(random() * 40), k = 1 + Math.floor(random() * 10);
    // few distinct values, so ties are common
    const values = Array.from({ length: count }, () => Math.floor(random() * 6));
    const expected = values.map((v, i) => [v, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, k).map(([, i]) => i);
    assert.equal(topIndices(values, count, k), expected, `values ${values} k ${k}`);
  }
});

test('--device: cuda without a usable GPU is E_DEVICE; nonsense is E_DEVICE', () => {
  assert.is(resolveDevice('cpu'), 'cpu');
  for (const requested of ['gpu', ...(backend().cuda.available ? [] : ['cuda', 'cuda:1'])]) {
    try {
      resolveDevice(requested);
      assert.unreachable(requested);
    } catch (error) {
      assert.instance(error, KvsquashError);
      assert.is((error as KvsquashError).code, 'E_DEVICE');
    }
  }
});

const modelPath = join(sharedDir, 'models', 'stories260K.bin'), tokenizerPath = join(sharedDir, 'models', 'tok512.bin');
const evalPath = join(sharedDir, 'data', 'text', 'eval_stories.txt');
const present = [modelPath, tokenizerPath, evalPath].every(existsSync) && readDumps().length > 0;

(present ? test : test.skip)('stories260K: prefill with uncompressed equals the plain forward pass on the same scored tokens', async () => {
  const real = new Llama(modelPath), tok = new Tokenizer(tokenizerPath, real.config.vocab);
  const texts = readStories(evalPath).slice(0, 2), dumps = readDumps();
  const [row] = await runQuality({ model: real, tokenizer: tok, stories: texts, dumps: [], calibration: dumps, methods: [uncompressed], modes: ['prefill'] });
  let nll = 0, count = 0;
  for (const text of texts) {
    const ids = tok.encode(text), logits = await real.forward(ids);
    // scored: predictions made at the continuation's positions, summed per story as the harness does
    let story = 0;
    for (let i = promptLength(ids.length); i < ids.length - 1; i++, count++) story += tokenNll(logits, real.config.vocab, i, ids[i + 1]!);
    nll += story;
  }
  assert.is(row!.scoredTokens, count);
  assert.is(row!.ppl, Math.exp(nll / count));
});

test.run();
