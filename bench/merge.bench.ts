/**
 * gaussianMerge: quality on the real KV dumps and speed at 32K tokens.
 *
 * Quality: for each story and layer, the prefix (all but the last 64 tokens) is compressed to
 * 50% / 25% / 12.5% of its tokens; the last 64 queries then attend causally over the
 * compressed prefix plus the 64 recent tokens kept raw. Reported: relative L2 error of those
 * attention outputs against the uncompressed cache, averaged over layers and stories, for
 * Gaussian merging (with log(size) weights), eviction (keep the top-score tokens) and
 * uniform dropping (keep every k-th token), all at the same kept-token count.
 * Speed: merge time at 32K tokens x 8 KV heads x 128 beside dense causal prefill attention
 * (32 query heads) on the same device; the target is < 10% (CUDA only: the CPU dense
 * reference at 32K takes minutes, so only the merge is timed there).
 */
import { attention, attentionScores, backend, gaussianMerge, Tensor, toF16, type Device } from '../lib/index.js';
import { randomArray, rng } from '../test/helpers/random.js';
import { concatTokens, gatherTokens, range, relativeL2, toHost, type HostKV } from './common/kv-host.js';
import { readNpy } from './common/npy.js';
import { environmentStamp, medianMs, printTable, writeResult } from './common/report.js';
import { kvDumps, layerFile } from './common/shared-data.js';

const RECENT = 64;
const RATIOS = [0.5, 0.25, 0.125];

// Gaussian variants: KVMerger protects its top-score tokens; 45% of the kept slots keeps the
// budget reachable (each protected token can split a run, and every run needs a slot).
const METHODS = ['gaussianMerge', 'gaussianMerge +top45%', 'gaussianMerge adaptive +top45%', 'evict top-score', 'uniform drop'] as const;
type Method = (typeof METHODS)[number];

async function compressedOutput(method: Method, q: Tensor, k: HostKV, v: HostKV, scores: Float32Array, kept: number): Promise<Float32Array> {
  const [B, H, T, D] = k.shape, prefix = T - RECENT;
  const recent = (kv: HostKV) => toHost(gatherTokens(kv, () => range(prefix, T)));
  const [kRecent, vRecent] = await Promise.all([recent(k), recent(v)]);
  // the last RECENT queries of each query head
  const qAll = (await q.data()) as Float32Array, Hq = q.shape[1]!;
  const qLast = new Float32Array(B * Hq * RECENT * D);
  for (let h = 0; h < B * Hq; h++) qLast.set(qAll.subarray((h * T + prefix) * D, (h * T + T) * D), h * RECENT * D);
  const queries = Tensor.from(qLast, [B, Hq, RECENT, D]);

  let kPrefix: Tensor, vPrefix: Tensor, logWeights: Float32Array | null = null;
  if (method.startsWith('gaussianMerge')) {
    const prefixK = gatherTokens(k, () => range(0, prefix)), prefixV = gatherTokens(v, () => range(0, prefix));
    const prefixScores = Tensor.from(Float32Array.from({ length: B * H * prefix }, (_, i) => scores[Math.floor(i / prefix) * T + (i % prefix)]!), [B, H, prefix]);
    const merged = await gaussianMerge(prefixK, prefixV, prefixScores, {
      budget: kept, protect: { first: 1, topScore: method.endsWith('+top45%') ? Math.floor(0.45 * kept) : 0 },
      sigma: method.includes('adaptive') ? 'adaptive' : 5,
    });
    kPrefix = merged.keys;
    vPrefix = merged.values;
    logWeights = (await (await merged.logWeights()).data()) as Float32Array;
  } else {
    const pick = method === 'evict top-score'
      ? (head: number) => range(0, prefix).sort((a, b) => scores[head * T + b]! - scores[head * T + a]! || a - b).slice(0, kept).sort((a, b) => a - b)
      : () => range(0, kept).map((i) => Math.floor((i * prefix) / kept));
    kPrefix = gatherTokens(k, pick);
    vPrefix = gatherTokens(v, pick);
  }
  const keys = concatTokens(await toHost(kPrefix), kRecent), values = concatTokens(await toHost(vPrefix), vRecent);
  const weights = new Float32Array(B * H * (kept + RECENT));
  if (logWeights) for (let head = 0; head < B * H; head++) weights.set(logWeights.subarray(head * kept, (head + 1) * kept), head * (kept + RECENT));
  const out = await attention(queries, keys, values, { causal: true, logWeights: Tensor.from(weights, [B, H, kept + RECENT]) });
  return (await out.data()) as Float32Array;
}

async function quality(): Promise<Record<string, string | number>[]> {
  const dumps = kvDumps();
  if (dumps.length === 0) {
    console.log('(quality: ../shared/data/kv is absent, skipped)');
    return [];
  }
  const errors = new Map<string, number[]>();
  for (const { dir, layers } of dumps) {
    for (const layer of layers) {
      const q = readNpy(layerFile(dir, layer, 'q')), kT = readNpy(layerFile(dir, layer, 'k')), vT = readNpy(layerFile(dir, layer, 'v'));
      const T = kT.shape[2]!;
      const dense = (await (await attention(q, kT, vT, { causal: true })).data()) as Float32Array;
      const B = q.shape[0]!, Hq = q.shape[1]!, D = q.shape[3]!;
      const denseLast = new Float32Array(B * Hq * RECENT * D);
      for (let h = 0; h < B * Hq; h++) denseLast.set(dense.subarray((h * T + T - RECENT) * D, (h * T + T) * D), h * RECENT * D);
      const scores = (await (await attentionScores(q, kT, { window: RECENT })).data()) as Float32Array;
      const [k, v] = await Promise.all([toHost(kT), toHost(vT)]);
      for (const ratio of RATIOS) {
        const kept = Math.round(ratio * (T - RECENT));
        for (const method of METHODS) {
          const out = await compressedOutput(method, q, k, v, scores, kept);
          const key = `${ratio}|${method}`;
          errors.set(key, [...(errors.get(key) ?? []), relativeL2(out, denseLast)]);
        }
      }
    }
  }
  const rows = [...errors.entries()].map(([key, list]) => {
    const [ratio, method] = key.split('|');
    return { 'kept (of prefix)': `${Number(ratio) * 100}%`, method: method!, 'rel L2 error (mean)': list.reduce((a, b) => a + b, 0) / list.length, 'worst layer': Math.max(...list), layers: list.length };
  });
  printTable(rows);
  return rows;
}

async function speed(device: Device): Promise<Record<string, string | number>[]> {
  const B = 1, Hkv = 8, Hq = 32, T = 32768, D = 128, dtype = device === 'cpu' ? 'f32' : 'f16';
  const random = rng(9);
  const make = async (shape: number[]) => {
    const values = randomArray(random, shape.reduce((a, b) => a * b));
    const host = dtype === 'f16' ? Tensor.from(toF16(values), shape, 'f16') : Tensor.from(values, shape);
    return device === 'cpu' ? host : host.to(device);
  };
  const k = await make([B, Hkv, T, D]), v = await make([B, Hkv, T, D]);
  const scoresHost = Tensor.from(randomArray(random, B * Hkv * T), [B, Hkv, T]);
  const scores = device === 'cpu' ? scoresHost : await scoresHost.to(device);
  const rows: Record<string, string | number>[] = [];
  const merge = await medianMs(async () => (await gaussianMerge(k, v, scores, { budget: 0.25, protect: { first: 1, recent: 64 } })).dispose(),
    device === 'cpu' ? { warmup: 1, iterations: 3 } : { warmup: 2, iterations: 10 });
  rows.push({ op: 'gaussianMerge 25%', device, shape: `B${B} Hkv${Hkv} T${T} D${D}`, dtype, 'median ms': merge.median });
  if (device !== 'cpu') {
    const q = await make([B, Hq, T, D]);
    const dense = await medianMs(async () => (await attention(q, k, v, { causal: true })).dispose(), { warmup: 1, iterations: 5 });
    rows.push({ op: 'dense causal attention', device, shape: `B${B} Hq${Hq} Hkv${Hkv} T${T} D${D}`, dtype, 'median ms': dense.median });
    rows.push({ op: 'merge / dense', device, shape: '', dtype, 'median ms': merge.median / dense.median });
    q.dispose();
  }
  for (const t of [k, v, scores]) t.dispose();
  printTable(rows);
  return rows;
}

export async function runMergeBench(options: { quick?: boolean } = {}): Promise<void> {
  const stamp = environmentStamp();
  const qualityRows = await quality();
  const info = backend();
  const devices: Device[] = options.quick ? [] : ['cpu'];
  if (info.cuda.available) devices.push('cuda:0');
  else console.log(`(CUDA not measured: ${info.cuda.reason})`);
  const speedRows = [];
  for (const device of devices) speedRows.push(...(await speed(device)));
  const name = info.cuda.available ? info.cuda.devices[0]!.name : 'cpu';
  console.log(`wrote ${writeResult('merge', name, { bench: 'merge', ...stamp, quality: qualityRows, speed: speedRows })}`);
}
