/**
 * A deliberately naive attention in TypeScript (f64, two passes), independent of the C++
 * reference, following the definition stated in lib/ops/attention.ts.
 */
export interface RefProblem {
  q: Float32Array; k: Float32Array; v: Float32Array;
  B: number; Hq: number; Hkv: number; Tq: number; Tk: number; D: number;
  scale: number; causal: boolean;
  kvLengths?: Int32Array; logWeights?: Float32Array;
}

export function referenceAttention(p: RefProblem): { out: Float64Array; lse: Float64Array } {
  const { B, Hq, Hkv, Tq, Tk, D } = p;
  const group = Hq / Hkv;
  const out = new Float64Array(B * Hq * Tq * D);
  const lse = new Float64Array(B * Hq * Tq);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / group);
      const len = p.kvLengths ? p.kvLengths[b * Hkv + g]! : Tk;
      for (let i = 0; i < Tq; i++) {
        const row = (b * Hq + h) * Tq + i;
        const visible = p.causal ? Math.max(0, Math.min(len, i + len - Tq + 1)) : len;
        const logits: number[] = [];
        for (let j = 0; j < visible; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += p.q[row * D + d]! * p.k[((b * Hkv + g) * Tk + j) * D + d]!;
          logits.push(p.scale * dot + (p.logWeights ? p.logWeights[(b * Hkv + g) * Tk + j]! : 0));
        }
        if (logits.length === 0) {
          lse[row] = -Infinity;
          continue;
        }
        const max = Math.max(...logits);
        let denom = 0;
        for (let j = 0; j < visible; j++) {
          const w = Math.exp(logits[j]! - max);
          denom += w;
          for (let d = 0; d < D; d++) out[row * D + d] = out[row * D + d]! + w * p.v[((b * Hkv + g) * Tk + j) * D + d]!;
        }
        for (let d = 0; d < D; d++) out[row * D + d] = out[row * D + d]! / denom;
        lse[row] = max + Math.log(denom);
      }
    }
  }
  return { out, lse };
}

/** Largest |a - b| / (atol + rtol * |b|) over all elements; <= 1 means within tolerance. */
export function toleranceRatio(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number): number {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} != ${expected.length}`);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!, e = expected[i]!;
    if (a === e) continue; // also equal infinities
    const ratio = Math.abs(a - e) / (atol + rtol * Math.abs(e));
    if (!(ratio <= worst)) worst = Number.isNaN(ratio) ? Infinity : ratio;
  }
  return worst;
}
