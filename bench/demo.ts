/**
 * `npm run demo`: prints the backend, then runs causal attention on a real KV cache from
 * ../shared/data/kv when it is there (checking against the model's own outputs), else on a
 * generated one, on the CPU and on CUDA when available.
 */
import { attention, backend, Tensor, type Device } from '../lib/index.js';
import { randomArray, rng } from '../test/helpers/random.js';
import { readNpy } from './common/npy.js';
import { printTable } from './common/report.js';
import { kvDumps, layerFile } from './common/shared-data.js';

interface Sample { name: string; q: Tensor; k: Tensor; v: Tensor; expected?: Float32Array }

async function samples(): Promise<Sample[]> {
  const dump = kvDumps()[0];
  if (dump) {
    console.log(`real KV cache: ${dump.story} (${dump.layers.length} layers, from ../shared/data/kv)\n`);
    return Promise.all(dump.layers.map(async (layer) => ({
      name: `${dump.story} layer ${layer}`,
      q: readNpy(layerFile(dump.dir, layer, 'q')), k: readNpy(layerFile(dump.dir, layer, 'k')), v: readNpy(layerFile(dump.dir, layer, 'v')),
      expected: (await readNpy(layerFile(dump.dir, layer, 'attn_out')).data()) as Float32Array,
    })));
  }
  console.log('no ../shared/data here: a generated KV cache (B=1, 8 query heads, 4 KV heads, 512 tokens, D=64)\n');
  const random = rng(1);
  const make = (shape: number[]) => Tensor.from(randomArray(random, shape.reduce((a, b) => a * b)), shape);
  return [{ name: 'generated', q: make([1, 8, 512, 64]), k: make([1, 4, 512, 64]), v: make([1, 4, 512, 64]) }];
}

const info = backend();
console.log(`kvsquash backend: CPU ${info.cpu.threads} threads; CUDA ${info.cuda.compiled ? 'compiled' : 'not compiled'}, ` +
  `${info.cuda.available ? `available: ${info.cuda.devices.map((d) => `${d.name} (sm ${d.computeCapability})`).join(', ')}` : `unavailable (${info.cuda.reason})`}`);

const devices: Device[] = info.cuda.available ? ['cpu', 'cuda:0'] : ['cpu'];
const rows: Record<string, string | number>[] = [];
for (const sample of await samples()) {
  for (const device of devices) {
    const [q, k, v] = device === 'cpu' ? [sample.q, sample.k, sample.v] : await Promise.all([sample.q, sample.k, sample.v].map((t) => t.to(device)));
    const start = performance.now();
    const out = await attention(q!, k!, v!, { causal: true });
    const ms = performance.now() - start;
    const values = await out.data();
    let maxError = 0;
    if (sample.expected) for (let i = 0; i < values.length; i++) maxError = Math.max(maxError, Math.abs(values[i]! - sample.expected[i]!));
    rows.push({
      sample: sample.name, device, 'q shape': `[${q!.shape.join(',')}]`, 'kv shape': `[${k!.shape.join(',')}]`,
      ms, 'max |err| vs model': sample.expected ? maxError.toExponential(2) : 'n/a',
    });
    if (device !== 'cpu') for (const t of [q, k, v, out]) t!.dispose();
  }
}
printTable(rows);
