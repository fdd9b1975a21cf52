/** `npm run bench -- <name...> [--quick]`: runs the named benchmarks (all when none is named). */
import { runAttentionBench } from './attention.bench.js';
import { runMergeBench } from './merge.bench.js';
import { runQuantBench } from './quant.bench.js';
import { runPyramidBench } from './pyramid.bench.js';
import { runSoftMatchBench } from './softmatch.bench.js';

const benches: Record<string, (options: { quick: boolean }) => Promise<void>> = {
  attention: runAttentionBench,
  merge: runMergeBench,
  qattn: async (options) => (await import('./qattn.bench.js')).runQattnBench(options),
  quant: runQuantBench,
  pyramid: runPyramidBench,
  softmatch: runSoftMatchBench,
};

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const names = args.filter((a) => !a.startsWith('--'));
const unknown = names.filter((n) => !(n in benches));
if (unknown.length > 0) {
  console.error(`unknown benchmark(s): ${unknown.join(', ')}; known: ${Object.keys(benches).join(', ')}`);
  process.exit(2);
}
for (const name of names.length > 0 ? names : Object.keys(benches)) {
  console.log(`== ${name}`);
  await benches[name]!({ quick });
}
