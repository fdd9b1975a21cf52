// Run from a project that installed the kvsquash tarball, under Node, Bun or Deno:
// loads the package, reports the backend and runs one op per family. Prints one JSON line.
// With --worker it does the same inside a worker_threads worker.
import { isMainThread, parentPort, Worker } from 'node:worker_threads';

async function smoke() {
  const { attention, attentionScores, backend, gaussianMerge, softMatch, Tensor } = await import('kvsquash');
  const info = backend();
  const values = (n) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37));
  const q = Tensor.from(values(2 * 4 * 8), [1, 2, 4, 8]), k = Tensor.from(values(64 * 8), [1, 1, 64, 8]);
  const out = await attention(q, k, k, { causal: true });
  const scores = await attentionScores(q, k, { window: 4 });
  const merged = await gaussianMerge(k, k, scores, { budget: 16 });
  const clustered = await softMatch(k, k, { chunk: 8, ratio: 0.25 });
  return {
    runtime: typeof Bun !== 'undefined' ? `bun ${Bun.version}` : typeof Deno !== 'undefined' ? `deno ${Deno.version.deno}` : `node ${process.version}`,
    thread: isMainThread ? 'main' : 'worker',
    cpuThreads: info.cpu.threads,
    cuda: { compiled: info.cuda.compiled, available: info.cuda.available, reason: info.cuda.reason },
    attention: Array.from(await out.data()).slice(0, 2),
    mergedLengths: Array.from(await merged.lengths.data()),
    clusteredLengths: Array.from(await clustered.lengths.data()),
  };
}

if (!isMainThread) {
  parentPort.postMessage(await smoke());
} else if (process.argv.includes('--worker')) {
  const worker = new Worker(new URL(import.meta.url));
  const result = await new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  console.log(JSON.stringify(result));
} else {
  console.log(JSON.stringify(await smoke()));
}
