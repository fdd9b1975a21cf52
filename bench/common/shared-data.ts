/** Locates ../shared/data (beside the checkout); absent in a user's clone. */
import { existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { packageRoot } from '../../lib/native.js';

export const sharedDir = process.env.KVSQUASH_SHARED ?? resolve(packageRoot, '..', 'shared');
export const kvDumpDir = join(sharedDir, 'data', 'kv');

/** The real KV dumps: one folder per story, each with layerNN_{q,k,v,attn_out}.npy. */
export function kvDumps(): { story: string; dir: string; layers: number[] }[] {
  if (!existsSync(kvDumpDir)) return [];
  return readdirSync(kvDumpDir, { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .map((entry) => {
      const dir = join(kvDumpDir, entry.name);
      const layers = readdirSync(dir)
        .map((file) => /^layer(\d+)_attn_out\.npy$/.exec(file)?.[1])
        .filter((n): n is string => n !== undefined)
        .map(Number)
        .sort((a, b) => a - b);
      return { story: entry.name, dir, layers };
    })
    .filter((dump) => dump.layers.length > 0);
}

export function layerFile(dir: string, layer: number, name: string): string {
  return join(dir, `layer${String(layer).padStart(2, '0')}_${name}.npy`);
}
