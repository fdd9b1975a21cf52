/** Host-side slicing of [B, H, T, D] caches for benchmarks (no device work, f32 only). */
import { Tensor } from '../../lib/index.js';

export interface HostKV {
  data: Float32Array;
  shape: [number, number, number, number];
}

export async function toHost(t: Tensor): Promise<HostKV> {
  if (t.dtype !== 'f32' || t.rank !== 4) throw new Error(`expected an f32 rank-4 tensor, got ${t}`);
  return { data: (await t.data()) as Float32Array, shape: [...t.shape] as HostKV['shape'] };
}

/** Tokens picked per head: `pick(head)` lists token indices (same count for every head). */
export function gatherTokens(kv: HostKV, pick: (head: number) => number[]): Tensor<'f32'> {
  const [B, H, T, D] = kv.shape;
  const count = pick(0).length;
  const out = new Float32Array(B * H * count * D);
  for (let head = 0; head < B * H; head++) {
    pick(head).forEach((t, n) => out.set(kv.data.subarray((head * T + t) * D, (head * T + t + 1) * D), (head * count + n) * D));
  }
  return Tensor.from(out, [B, H, count, D]);
}

export function range(start: number, end: number): number[] {
  return Array.from({ length: Math.max(0, end - start) }, (_, i) => start + i);
}

/** Concatenates along tokens: [B,H,Ta,D] + [B,H,Tb,D] -> [B,H,Ta+Tb,D]. */
export function concatTokens(a: HostKV, b: HostKV): Tensor<'f32'> {
  return joinTokens([a, b]);
}

/** Concatenates any number of [B,H,Ti,D] caches along tokens. */
export function joinTokens(parts: HostKV[]): Tensor<'f32'> {
  const [B, H, , D] = parts[0]!.shape, T = parts.reduce((n, p) => n + p.shape[2], 0);
  const out = new Float32Array(B * H * T * D);
  let at = 0;
  for (const { data, shape } of parts) {
    const Ti = shape[2];
    for (let head = 0; head < B * H; head++) out.set(data.subarray(head * Ti * D, (head + 1) * Ti * D), (head * T + at) * D);
    at += Ti;
  }
  return Tensor.from(out, [B, H, T, D], 'f32');
}

export function relativeL2(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < expected.length; i++) {
    num += (actual[i]! - expected[i]!) ** 2;
    den += expected[i]! ** 2;
  }
  return Math.sqrt(num / den);
}
