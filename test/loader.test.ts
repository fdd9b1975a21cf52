// Loading: import is lazy (never loads the addon or touches CUDA), failures explain themselves,
// and the addon works inside worker_threads.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

function runScript(source: string, env: Record<string, string> = {}) {
  return spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', source], {
    cwd: fileURLToPath(new URL('..', import.meta.url)), encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0', ...env },
  });
}

test('importing does not load the addon; the first use reports E_LOAD with hints', () => {
  const result = runScript(`
    import * as k from './lib/index.ts';
    console.log('imported', typeof k.attention, k.toF16([1])[0]);
    try { k.backend(); } catch (e) { console.log('code', e.code); console.log(e.message); }
  `, { KVSQUASH_NATIVE: '/nonexistent/kvsquash.node' });
  assert.is(result.status, 0, result.stderr + result.stdout);
  assert.match(result.stdout, /imported function 15360/);
  assert.match(result.stdout, /code E_LOAD/);
  assert.match(result.stdout, /npm install/);
  assert.match(result.stdout, /KVSQUASH_NATIVE/);
});

test('KVSQUASH_NATIVE selects a specific build', () => {
  const result = runScript(`
    import { createRequire } from 'node:module';
    const path = createRequire(import.meta.url).resolve('./build/Release/kvsquash.node');
    process.env.KVSQUASH_NATIVE = path;
    const k = await import('./lib/index.ts');
    console.log('threads', k.backend().cpu.threads);
  `);
  assert.is(result.status, 0, result.stderr + result.stdout);
  assert.match(result.stdout, /threads \d+/);
});

test('loads and runs attention in worker_threads, twice in parallel, then exits cleanly', async () => {
  const source = `
    import { parentPort, workerData } from 'node:worker_threads';
    const { register } = await import(workerData.tsx);
    register();
    const { attention, Tensor, backend } = await import(workerData.lib);
    const q = Tensor.from(new Float32Array(8).fill(1), [1, 1, 1, 8]);
    const k = Tensor.from(Float32Array.from({ length: 16 }, (_, i) => i % 8), [1, 1, 2, 8]);
    const out = await attention(q, k, k);
    parentPort.postMessage({ threads: backend().cpu.threads, out: Array.from(await out.data()) });
  `;
  const lib = new URL('../lib/index.ts', import.meta.url).href;
  // tsx's hooks do not reach workers from execArgv on Node 20: the worker registers them
  const tsx = import.meta.resolve('tsx/esm/api');
  const runOne = () => new Promise<{ threads: number; out: number[] }>((resolve, reject) => {
    const worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(source)}`), {
      workerData: { lib, tsx },
    });
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => code !== 0 && reject(new Error(`worker exited with ${code}`)));
  });
  const results = await Promise.all([runOne(), runOne()]);
  for (const r of results) {
    assert.ok(r.threads >= 1);
    // two identical keys: the output is that key's value row
    assert.equal(r.out, [0, 1, 2, 3, 4, 5, 6, 7]);
  }
});

test.run();
