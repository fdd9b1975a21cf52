/**
 * Dense attention over [batch, heads, tokens, headDim] tensors, aware of GQA, ragged
 * per-head lengths and merged tokens (logWeights). The math is stated on `attention`.
 */
import { describe, fail, nativeCall } from '../errors.js';
import { native, type NativeTensor } from '../native.js';
import { Tensor, toNative } from '../tensor.js';
import { checkOptions, checkTensorArg } from './args.js';

export type FloatDType = 'f32' | 'f16' | 'bf16';

export interface AttentionOptions {
  /** query i sees key j only when j <= i + len - Tq (queries are the last Tq positions) */
  causal?: boolean;
  /** logit scale; default 1 / sqrt(headDim) */
  scale?: number;
  /** i32 [B, Hkv]: valid keys per KV head (keys past it are ignored); default Tk everywhere */
  kvLengths?: Tensor;
  /** f32 [B, Hkv, Tk]: added to every logit of that key, e.g. log(sizes) of merged tokens */
  logWeights?: Tensor;
  /** also return the log-sum-exp of each query's logits, f32 [B, Hq, Tq] */
  returnLse?: boolean;
  /** output dtype; default q's dtype */
  outDtype?: FloatDType;
}

export interface AttentionWithLse {
  output: Tensor;
  /** natural log of the softmax denominator; -Infinity for a query that sees no key */
  lse: Tensor<'f32'>;
}

const OPTION_KEYS = ['causal', 'scale', 'kvLengths', 'logWeights', 'returnLse', 'outDtype'] as const;

/**
 * `out[b,h,i] = sum_j softmax_j(scale * q[b,h,i]·k[b,g,j] + logWeights[b,g,j]) v[b,g,j]`, with
 * g = h / (Hq / Hkv). q `[B, Hq, Tq, D]`, k and v `[B, Hkv, Tk, D]`, all f32, f16 or bf16
 * (one dtype) on one device. Accumulates in f32 on CUDA (D in 8, 16, 32, 64, 128, 256) and
 * in f64 on the CPU (any D). A query that sees no key gets zeros (and lse -Infinity).
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions & { returnLse: true }): Promise<AttentionWithLse>;
export function attention(q: Tensor, k: Tensor, v: Tensor, options?: AttentionOptions & { returnLse?: false }): Promise<Tensor>;
export function attention(q: Tensor, k: Tensor, v: Tensor, options?: AttentionOptions): Promise<Tensor | AttentionWithLse>;
export async function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions = {}): Promise<Tensor | AttentionWithLse> {
  checkOptions(options, OPTION_KEYS, 'attention(options)');
  const qn = checkTensorArg(q, 'q', 4);
  const kn = checkTensorArg(k, 'k', 4, q);
  const vn = checkTensorArg(v, 'v', 4, q);
  const settings = attentionSettings(q, options);
  const logWeights = options.logWeights === undefined ? null : checkTensorArg(options.logWeights, 'logWeights', 3, q);
  return withAttentionOutputs(q, settings, (out, lse) => native().attention(qn, kn, vn, out, lse,
    { scale: settings.scale, causal: settings.causal, kvLengths: settings.kvLengths, logWeights }));
}

/** @internal the options every attention op shares, checked, with their defaults. */
export function attentionSettings(q: Tensor, options: Omit<AttentionOptions, 'logWeights'>) {
  // an integer q keeps a float default here so that the core reports q's dtype, not outDtype's
  const { causal = false, returnLse = false, outDtype = q.dtype === 'f16' || q.dtype === 'bf16' ? q.dtype : 'f32' } = options;
  if (typeof causal !== 'boolean') fail('E_RANGE', `causal: expected a boolean, got ${describe(causal)}`);
  if (typeof returnLse !== 'boolean') fail('E_RANGE', `returnLse: expected a boolean, got ${describe(returnLse)}`);
  if (outDtype !== 'f32' && outDtype !== 'f16' && outDtype !== 'bf16')
    fail('E_DTYPE', `outDtype: expected 'f32', 'f16' or 'bf16', got ${describe(outDtype)}`);
  const scale = options.scale ?? 1 / Math.sqrt(q.shape[3]!);
  if (typeof scale !== 'number' || !Number.isFinite(scale))
    fail('E_RANGE', `scale: expected a finite number, got ${describe(scale)}`);
  const kvLengths = options.kvLengths === undefined ? null : checkTensorArg(options.kvLengths, 'kvLengths', 2, q);
  return { causal, returnLse, outDtype, scale, kvLengths };
}

/** @internal allocates out (and lse), runs `op` on their native views, frees them on failure. */
export async function withAttentionOutputs(q: Tensor, settings: ReturnType<typeof attentionSettings>,
  op: (out: NativeTensor, lse: NativeTensor | null) => Promise<void>): Promise<Tensor | AttentionWithLse> {
  const output = Tensor.empty(q.shape, settings.outDtype, q.device);
  let lse: Tensor<'f32'> | null = null;
  try {
    if (settings.returnLse) lse = Tensor.empty(q.shape.slice(0, 3), 'f32', q.device);
    await nativeCall(() => op(output[toNative]('out'), lse?.[toNative]('lse') ?? null));
  } catch (error) {
    output.dispose();
    lse?.dispose();
    throw error;
  }
  return lse ? { output, lse } : output;
}

