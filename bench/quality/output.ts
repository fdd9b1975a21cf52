/** The quality harness's outputs: the table, bench/results JSON and the SVG plot beside it. */
import { writeFileSync } from 'node:fs';

import { environmentStamp, printTable, writeResult } from '../common/report.js';
import type { QualityRow } from './harness.js';
import { qualityPlot } from './plot.js';

export function tableRows(rows: QualityRow[]): Record<string, string | number>[] {
  return rows.map((r) => ({
    method: r.method, budget: r.budget < 1 ? `${r.budget * 100}%` : '-', mode: r.mode,
    kept: r.kept, bits: r.bits, 'bytes/tok': r.bytesPerToken, ppl: r.ppl,
    'attn rel-L2': r.relL2 ?? 'n/a', 'top-8 recall': r.recall ?? 'n/a',
  }));
}

/** Prints the table; writes quality-<device>-<date>.json and .svg to `dir`; returns both paths. */
export function reportQuality(rows: QualityRow[], device: string, settings: object, dir?: string): { json: string; svg: string } {
  printTable(tableRows(rows));
  const stamp = environmentStamp();
  const json = writeResult('quality', device, { bench: 'quality', ...stamp, device, settings, rows }, dir);
  const svg = json.replace(/\.json$/, '.svg');
  writeFileSync(svg, qualityPlot(rows, `kvsquash quality, ${device}, ${stamp.commit}, ${stamp.date.slice(0, 10)}`));
  return { json, svg };
}
