/** Argument checks shared by every op's TypeScript entry. */
import { describe, fail } from '../errors.js';
import { isTensor, toNative, type Tensor } from '../tensor.js';
import type { NativeTensor } from '../native.js';

/** Rejects a non-object and unknown keys (a typo like `casual` must not pass silently). */
export function checkOptions(options: unknown, allowed: readonly string[], arg: string): void {
  if (options === null || typeof options !== 'object' || Array.isArray(options))
    fail('E_RANGE', `${arg}: expected an object, got ${describe(options)}`);
  for (const key of Object.keys(options)) {
    if (!allowed.includes(key)) fail('E_RANGE', `${arg}: unknown option '${key}' (known: ${allowed.join(', ')})`);
  }
}

/**
 * Checks that `value` is a live tensor of the given rank, on the same device as `like` when
 * given, and returns its native view. Shapes and dtypes are checked by the C++ core.
 */
export function checkTensorArg(value: unknown, arg: string, rank: number, like?: Tensor): NativeTensor {
  if (!isTensor(value)) return fail('E_DTYPE', `${arg}: expected a Tensor, got ${describe(value)}`);
  const view = value[toNative](arg);
  if (value.rank !== rank)
    fail('E_SHAPE', `${arg}: expected rank ${rank}, got shape [${value.shape.join(', ')}]`);
  if (like && value.device !== like.device)
    fail('E_DEVICE', `${arg}: expected device ${like.device} (as q), got ${value.device}`);
  return view;
}
