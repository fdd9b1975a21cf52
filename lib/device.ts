/** Devices: 'cpu', or 'cuda' / 'cuda:N' (N a CUDA ordinal; 'cuda' means 'cuda:0'). */
import { describe, fail } from './errors.js';

export type Device = 'cpu' | `cuda:${number}`;
export type DeviceLike = Device | 'cuda';

/** -1 for the CPU, else the CUDA ordinal: the form the addon takes. */
export function deviceIndex(device: unknown, arg: string): number {
  if (device === 'cpu') return -1;
  if (device === 'cuda') return 0;
  if (typeof device === 'string') {
    const match = /^cuda:(\d{1,3})$/.exec(device);
    if (match) return Number(match[1]);
  }
  return fail('E_DEVICE', `${arg}: expected 'cpu', 'cuda' or 'cuda:N', got ${describe(device)}`);
}

export function deviceName(index: number): Device {
  return index < 0 ? 'cpu' : `cuda:${index}`;
}
