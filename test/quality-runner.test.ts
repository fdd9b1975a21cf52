// The quality harness's model runner against the real model's known behaviour (figures from
// ../shared/models/SOURCE.md and ../shared/data/kv/README.md); skipped without ../shared.
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { sharedDir } from '../bench/common/shared-data.js';
import { generateGreedy, perplexity, readStories } from '../bench/quality/eval.js';
import { Llama } from '../bench/quality/model.js';
import { Tokenizer } from '../bench/quality/tokenizer.js';

const modelPath = join(sharedDir, 'models', 'stories260K.bin');
const tokenizerPath = join(sharedDir, 'models', 'tok512.bin');
const evalPath = join(sharedDir, 'data', 'text', 'eval_stories.txt');
const present = [modelPath, tokenizerPath, evalPath].every(existsSync);
const maybe = present ? test : test.skip;

maybe('greedy generation from BOS tells the known story', async () => {
  const model = new Llama(modelPath), tokenizer = new Tokenizer(tokenizerPath, model.config.vocab);
  const text = await generateGreedy(model, tokenizer, 40);
  assert.ok(text.startsWith('Once upon a time, there was a little girl named Lily. She loved to play outside in the park.'), text);
});

maybe('uncompressed perplexity on the eval stories is 3.603 over 2,075 tokens', async () => {
  const model = new Llama(modelPath), tokenizer = new Tokenizer(tokenizerPath, model.config.vocab);
  const { ppl, tokens } = await perplexity(model, tokenizer, readStories(evalPath));
  assert.is(tokens, 2075);
  assert.ok(Math.abs(ppl - 3.603) < 5e-4, `perplexity ${ppl}`);
});

maybe('tokenizer: encode then decode gives the text back', () => {
  const tokenizer = new Tokenizer(tokenizerPath, 512);
  for (const text of ['Once upon a time, Lily found a key.', 'naïve café – 2 dogs!', 'x']) {
    const ids = tokenizer.encode(text);
    assert.is(ids[0], 1, 'starts with BOS');
    assert.is(tokenizer.decode(ids), text);
  }
});

test.run();
