/**
 * The quality plot as hand-written SVG: perplexity against bytes per token, one panel per
 * mode, one polyline per method (its budgets, in order of bytes), a log2 bytes axis.
 */
import type { Mode, QualityRow } from './harness.js';

const WIDTH = 460, HEIGHT = 340, MARGIN = { left: 64, right: 16, top: 36, bottom: 52 };
const COLORS = ['#222222', '#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf', '#bcbd22'];

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** About five round ticks covering [lo, hi]. */
function linearTicks(lo: number, hi: number): number[] {
  const raw = (hi - lo) / 5 || Math.abs(hi) || 1;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function label(value: number): string {
  return Number.isInteger(value) ? String(value) : value.toPrecision(3).replace(/\.?0+$/, '');
}

function panel(rows: QualityRow[], mode: Mode, methods: string[], xOffset: number): string {
  const points = rows.filter((r) => r.mode === mode);
  const xs = points.map((r) => Math.log2(r.bytesPerToken)), ys = points.map((r) => r.ppl);
  // a quarter octave each side; ticks on the powers of two inside
  const xLo = Math.min(...xs) - 0.25, xHi = Math.max(...xs) + 0.25;
  // a margin of 5% keeps the extreme points off the frame
  const spread = Math.max(...ys) - Math.min(...ys) || Math.abs(ys[0]!) * 0.01 || 1;
  const yLo = Math.min(...ys) - 0.05 * spread, yHi = Math.max(...ys) + 0.05 * spread;
  const yTicks = linearTicks(yLo, yHi);
  const plotW = WIDTH - MARGIN.left - MARGIN.right, plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const px = (log2Bytes: number) => Number((xOffset + MARGIN.left + ((log2Bytes - xLo) / (xHi - xLo)) * plotW).toFixed(1));
  const py = (ppl: number) => Number((MARGIN.top + plotH - ((ppl - yLo) / (yHi - yLo)) * plotH).toFixed(1));
  const out: string[] = [`<g class="panel" data-mode="${mode}">`];
  out.push(`<text x="${xOffset + WIDTH / 2}" y="20" text-anchor="middle" font-weight="bold">${mode} mode</text>`);
  out.push(`<rect x="${px(xLo)}" y="${MARGIN.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#888"/>`);
  for (let e = Math.ceil(xLo); e <= xHi; e++) {
    out.push(`<line x1="${px(e)}" y1="${MARGIN.top + plotH}" x2="${px(e)}" y2="${MARGIN.top + plotH + 5}" stroke="#444"/>`);
    out.push(`<text x="${px(e)}" y="${MARGIN.top + plotH + 18}" text-anchor="middle">${label(2 ** e)}</text>`);
  }
  for (const t of yTicks) {
    out.push(`<line x1="${px(xLo) - 5}" y1="${py(t)}" x2="${px(xLo)}" y2="${py(t)}" stroke="#444"/>`);
    out.push(`<text x="${px(xLo) - 8}" y="${py(t) + 4}" text-anchor="end">${label(t)}</text>`);
  }
  out.push(`<text x="${xOffset + MARGIN.left + plotW / 2}" y="${HEIGHT - 12}" text-anchor="middle">bytes per token per layer (K+V, all KV heads; log scale)</text>`);
  out.push(`<text transform="translate(${xOffset + 16} ${MARGIN.top + plotH / 2}) rotate(-90)" text-anchor="middle">perplexity</text>`);
  methods.forEach((method, m) => {
    const line = points.filter((r) => r.method === method).sort((a, b) => a.bytesPerToken - b.bytesPerToken);
    if (line.length === 0) return;
    const color = COLORS[m % COLORS.length]!;
    const coords = line.map((r) => `${px(Math.log2(r.bytesPerToken))},${py(r.ppl)}`);
    out.push(`<polyline data-method="${escapeXml(method)}" points="${coords.join(' ')}" fill="none" stroke="${color}" stroke-width="2"/>`);
    for (const c of coords) {
      const [x, y] = c.split(',');
      out.push(`<circle cx="${x}" cy="${y}" r="3" fill="${color}"/>`);
    }
  });
  out.push('</g>');
  return out.join('\n');
}

/** The SVG document (standalone, no dependencies). */
export function qualityPlot(rows: QualityRow[], title: string): string {
  const methods = [...new Set(rows.map((r) => r.method))];
  const modes = [...new Set(rows.map((r) => r.mode))];
  const legendHeight = 22 * Math.ceil(methods.length / 4) + 8;
  const width = WIDTH * modes.length, height = HEIGHT + legendHeight + 24;
  const body = modes.map((mode, i) => panel(rows, mode, methods, i * WIDTH));
  const legend = methods.map((method, m) => {
    const x = 20 + (m % 4) * 200, y = HEIGHT + 30 + Math.floor(m / 4) * 22, color = COLORS[m % COLORS.length]!;
    return `<line x1="${x}" y1="${y - 4}" x2="${x + 24}" y2="${y - 4}" stroke="${color}" stroke-width="2"/><text x="${x + 30}" y="${y}">${escapeXml(method)}</text>`;
  });
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="${HEIGHT + 12}" text-anchor="middle" fill="#555">${escapeXml(title)}</text>`,
    ...body,
    `<g class="legend">`, ...legend, '</g>',
    '</svg>',
    '',
  ].join('\n');
}
