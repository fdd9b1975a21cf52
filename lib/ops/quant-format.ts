/**
 * The quantized cache's sizes, mirrored from csrc/core/quant_codec.h (the format's single
 * source of truth): which codec each mode uses and how many words / scales a page holds.
 */
export type QuantMode = 'kivi2' | 'nuq2' | 'k2v1' | 'cq1' | 'rot2' | 'rot1.5';
export type Codec = 'uniformChannel' | 'uniformToken' | 'nuqChannel' | 'nuqToken' | 'vq' | 'rotation';

export const QUANT_MODES: readonly QuantMode[] = ['kivi2', 'nuq2', 'k2v1', 'cq1', 'rot2', 'rot1.5'];
/** kvs_quant_mode codes */
export const MODE_CODE: { readonly [M in QuantMode]: number } = { kivi2: 0, nuq2: 1, k2v1: 2, cq1: 3, rot2: 4, 'rot1.5': 5 };

export const PAGE_TOKENS = 64;
export const VQ_GROUP = 8;
export const VQ_ENTRIES = 256;
export const NUQ_LEVELS = 4;
export const MAX_OUTLIERS = 8;
/** values a page can encode: the f16 range of its scales (quant_codec.h, encodable) */
export const MAX_MAGNITUDE = 65504;

export function keyCodec(mode: QuantMode): Codec {
  if (mode === 'kivi2') return 'uniformChannel';
  if (mode === 'cq1') return 'vq';
  if (mode === 'rot2' || mode === 'rot1.5') return 'rotation';
  return 'nuqChannel';
}

export function valueCodec(mode: QuantMode): Codec {
  if (mode === 'kivi2') return 'uniformToken';
  if (mode === 'nuq2') return 'nuqToken';
  if (mode === 'rot2' || mode === 'rot1.5') return 'rotation';
  return 'vq';
}

/** Keys of these modes are encoded after RoPE (the others before it). */
export function encodesPostRope(mode: QuantMode): boolean {
  const codec = keyCodec(mode);
  return codec === 'uniformChannel' || codec === 'rotation';
}

/** Code bits of one token's D-channel vector. */
export function vectorBits(mode: QuantMode, codec: Codec, D: number): number {
  if (codec === 'vq') return D;
  if (codec === 'rotation' && mode === 'rot1.5') return D + D / 2;
  return 2 * D;
}

export function wordsPerPage(mode: QuantMode, codec: Codec, D: number): number {
  return (PAGE_TOKENS * vectorBits(mode, codec, D)) / 32;
}

/** f16 scale entries per page and head (0: the codec has none). */
export function metaPerPage(codec: Codec, D: number): number {
  switch (codec) {
    case 'uniformChannel': return 2 * D * 2;
    case 'uniformToken': return PAGE_TOKENS * Math.ceil(D / 32) * 2;
    case 'nuqToken': return PAGE_TOKENS * 2;
    case 'rotation': return PAGE_TOKENS;
    default: return 0;
  }
}

/** Stored bytes of one page of one head, keys and values, outlier slots included. */
export function pageBytes(mode: QuantMode, D: number, outliers: number): number {
  let bytes = 0;
  for (const codec of [keyCodec(mode), valueCodec(mode)]) bytes += 4 * wordsPerPage(mode, codec, D) + 2 * metaPerPage(codec, D);
  return bytes + 2 * PAGE_TOKENS * outliers * 3; // u8 index + f16 value per slot, K and V
}
