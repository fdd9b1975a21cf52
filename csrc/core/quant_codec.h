// The per-vector rules of the quantized cache format (csrc/core/quant.h), written once for
// the CPU reference and the CUDA kernels. All arithmetic goes through core/exact_math.h, so
// both sides round identically; f16 scales round to nearest even (core/half.h).
//
// Codecs (x = one token's D values of one head, f32, after rounding to the raw dtype and,
// for post-RoPE key codecs, after RoPE):
//  UniformChannel (KIVI keys): per page, per 32-token group g and channel d: mn = min, mx =
//    max over the group; scale s = f16(div(mx - mn, 3)), min m = f16(mn); meta[(g*D + d)*2]
//    = s, [+1] = m. code = clamp(round_even((x - m) * inv), 0, 3), inv = 1/s (0 when s = 0);
//    x^ = fma(code, s, m).
//  UniformToken (KIVI values): per token and 32-channel group (D < 32: one group of D), the
//    same rule over the group's channels; meta[(i*G + g)*2] = s, [+1] = m, G = ceil(D/32).
//  NuqChannel (KVQuant keys): static per-(head, channel) zero z, range r and inv = 1/r from
//    calibration; t = (x - z) * inv; code = #{j : clamp(t, -1, 1) > beta_j}, beta_j =
//    (c_j + c_{j+1}) * 0.5 over the sorted 4-entry codebook c; x^ = fma(c_code, r, z).
//  NuqToken (KVQuant values): per token, the `outliers` largest |x| (ties: lower channel)
//    are left out of the range: m, M = min, max of the rest; z = f16((M + m) * 0.5), r =
//    f16((M - m) * 0.5); meta[2i] = z, [2i+1] = r; inv = 1/r (0 when r = 0); then as
//    NuqChannel with z, r, inv.
//  Vq (coupled quantization): units are 8-channel groups; u = x (values) or the keys'
//    channel-normalized (x - z) * inv (cq1 keys, no clamp). code = argmin_e sum_i (u_i -
//    C[e]_i)^2, the sum an fma chain over i ascending, ties to the lower entry; x^_i =
//    C[code]_i (values) or fma(C[code]_i, r, z) (keys). Codebook C[h][group][256][8].
//  Rotation (data-oblivious): n = sqrt(sum x_d^2) (fma chain, d ascending), N = f16(n)
//    (saturated at 65504), meta[i] = N. y = FWHT(sign .* x) (unnormalized butterflies, below), t_d = (y_d * isd)
//    * g with isd = 1/sqrt(D), g = sqrt(D)/N (0 when N = 0): about N(0, 1). Codes: the
//    Lloyd-Max quantizer of N(0, 1), 2 bits (rot2; rot1.5 for d < D/2) or 1 bit (rot1.5,
//    d >= D/2), code = #{j : t > beta_j}. Decode: w_d = level_code * (N * isd); x^ = sign .*
//    (FWHT(w) * isd). sign_d = -1 when splitmix64(seed + golden * (d + 1)) is odd.
//  Residual slots (any codec, `outliers` > 0): per token, the slots take the channels with
//    the largest |x_d - x^_d| (ties: lower channel), in that order; value = f16(x_d - x^_d)
//    with the difference first clamped to +-65504;
//    a value that rounds to +-0 leaves the slot empty (index 0, value +0) and so do all
//    later slots. Dequantized: x^_d + value (f32 add) for each non-empty slot.
//
// RoPE: pairs (2i, 2i+1) (interleaved) or (i, i + D/2) (half), frequency inv_freq[i];
// angle = f32(position) * inv_freq[i] (one rounding, like Hugging Face), cos and sin of the
// angle in double rounded to f32. Rotation: (a c - b s, a s + b c); its inverse (a c + b s,
// b c - a s). Double cos/sin agree between glibc and CUDA to well within the f32 rounding
// (a mismatch needs a double result within 1 ulp of an f32 tie, p ~ 2^-29 per value).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/exact_math.h"
#include "core/half.h"
#include "core/quant.h"

namespace kvs {

// ---- mode -> codec, and the sizes that follow -------------------------------------------

KVS_HOST_DEVICE inline Codec key_codec(kvs_quant_mode mode) {
  switch (mode) {
    case KVS_QUANT_KIVI2: return Codec::UniformChannel;
    case KVS_QUANT_CQ1: return Codec::Vq;
    case KVS_QUANT_ROT2:
    case KVS_QUANT_ROT1_5: return Codec::Rotation;
    default: return Codec::NuqChannel;  // nuq2, k2v1
  }
}

KVS_HOST_DEVICE inline Codec value_codec(kvs_quant_mode mode) {
  switch (mode) {
    case KVS_QUANT_KIVI2: return Codec::UniformToken;
    case KVS_QUANT_NUQ2: return Codec::NuqToken;
    case KVS_QUANT_ROT2:
    case KVS_QUANT_ROT1_5: return Codec::Rotation;
    default: return Codec::Vq;  // k2v1, cq1
  }
}

// Keys of these codecs are rotated by RoPE before encoding (values never are).
KVS_HOST_DEVICE inline bool encodes_post_rope(Codec key_codec) {
  return key_codec == Codec::UniformChannel || key_codec == Codec::Rotation;
}

KVS_HOST_DEVICE inline int32_t unit_count(Codec codec, int32_t D) { return codec == Codec::Vq ? D / kVqGroup : D; }

// rot1.5: the first D/2 rotated coordinates take 2 bits, the rest 1 bit.
KVS_HOST_DEVICE inline int32_t unit_width(kvs_quant_mode mode, Codec codec, int32_t D, int32_t unit) {
  if (codec == Codec::Vq) return 8;
  if (codec == Codec::Rotation && mode == KVS_QUANT_ROT1_5) return unit < D / 2 ? 2 : 1;
  return 2;
}

KVS_HOST_DEVICE inline int32_t unit_bit_offset(kvs_quant_mode mode, Codec codec, int32_t D, int32_t unit) {
  if (codec == Codec::Vq) return unit * 8;
  if (codec == Codec::Rotation && mode == KVS_QUANT_ROT1_5) return unit < D / 2 ? 2 * unit : D + (unit - D / 2);
  return 2 * unit;
}

KVS_HOST_DEVICE inline int32_t vector_bits(kvs_quant_mode mode, Codec codec, int32_t D) {
  if (codec == Codec::Vq) return D;  // 8 bits per 8 channels
  if (codec == Codec::Rotation && mode == KVS_QUANT_ROT1_5) return D + D / 2;
  return 2 * D;
}

KVS_HOST_DEVICE inline int32_t words_per_page(kvs_quant_mode mode, Codec codec, int32_t D) {
  return kQuantPageTokens * vector_bits(mode, codec, D) / 32;  // D % 8 == 0 makes this exact
}

KVS_HOST_DEVICE inline int32_t uniform_token_groups(int32_t D) { return (D + kKiviChannelGroup - 1) / kKiviChannelGroup; }

KVS_HOST_DEVICE inline int32_t meta_per_page(Codec codec, int32_t D) {
  switch (codec) {
    case Codec::UniformChannel: return (kQuantPageTokens / kKiviTokenGroup) * D * 2;
    case Codec::UniformToken: return kQuantPageTokens * uniform_token_groups(D) * 2;
    case Codec::NuqToken: return kQuantPageTokens * 2;
    case Codec::Rotation: return kQuantPageTokens;
    default: return 0;
  }
}

// ---- bit stream --------------------------------------------------------------------------

KVS_HOST_DEVICE inline uint32_t read_unit(const uint32_t* words, int64_t bit, int32_t width) {
  return (words[bit >> 5] >> (bit & 31)) & ((1u << width) - 1u);
}

// ---- storage and RoPE --------------------------------------------------------------------

KVS_HOST_DEVICE inline float load_storage(const void* base, kvs_dtype dtype, int64_t i) {
  switch (dtype) {
    case KVS_F16: return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case KVS_BF16: return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

KVS_HOST_DEVICE inline float round_to_storage(float x, kvs_dtype dtype) {
  switch (dtype) {
    case KVS_F16: return half_to_float(float_to_half(x));
    case KVS_BF16: return bf16_to_float(float_to_bf16(x));
    default: return x;
  }
}

KVS_HOST_DEVICE inline void rope_pair(kvs_rope_style style, int32_t D, int32_t i, int32_t& a, int32_t& b) {
  if (style == KVS_ROPE_HALF) {
    a = i;
    b = i + D / 2;
  } else {
    a = 2 * i;
    b = 2 * i + 1;
  }
}

// cos and sin of frequency i at position `pos`, as the contract defines them.
KVS_HOST_DEVICE inline void rope_factors(const Rope& rope, int64_t pos, int32_t i, float& c, float& s) {
  const float angle = mul_rn(static_cast<float>(pos), rope.inv_freq[i]);
  c = static_cast<float>(cos(static_cast<double>(angle)));
  s = static_cast<float>(sin(static_cast<double>(angle)));
}

// Rotates pair i of x[D] by the angle whose cos and sin are given (inverse: by its negative).
KVS_HOST_DEVICE inline void rotate_pair(kvs_rope_style style, int32_t D, int32_t i, float c, float s, bool inverse, float* x) {
  int32_t ia, ib;
  rope_pair(style, D, i, ia, ib);
  const float a = x[ia], b = x[ib];
  if (inverse) {
    x[ia] = add_rn(mul_rn(a, c), mul_rn(b, s));
    x[ib] = sub_rn(mul_rn(b, c), mul_rn(a, s));
  } else {
    x[ia] = sub_rn(mul_rn(a, c), mul_rn(b, s));
    x[ib] = add_rn(mul_rn(a, s), mul_rn(b, c));
  }
}

// Rotates x[D] in place by position `pos` (inverse: by -pos). No-op for KVS_ROPE_NONE.
KVS_HOST_DEVICE inline void apply_rope(const Rope& rope, int32_t D, int64_t pos, bool inverse, float* x) {
  if (rope.style == KVS_ROPE_NONE) return;
  for (int32_t i = 0; i < D / 2; ++i) {
    float c, s;
    rope_factors(rope, pos, i, c, s);
    rotate_pair(rope.style, D, i, c, s, inverse, x);
  }
}

// The format's f16 scales and norms cover |x| <= 65504: every value a page encodes (after
// rounding to the raw dtype and RoPE) must be within it (NaN is not); quantize fails with
// E_RANGE otherwise, so encode_vector only ever sees finite, representable input.
constexpr float kQuantMaxMagnitude = 65504.f;
KVS_HOST_DEVICE inline bool encodable(float x) { return fabsf(x) <= kQuantMaxMagnitude; }

// ---- scalar quantizers -------------------------------------------------------------------

// The decision boundaries (c_j + c_{j+1}) / 2 of a sorted 4-entry codebook, computed once
// per vector; a code is #{j : t > boundary_j}.
struct NuqBoundaries {
  float beta[kNuqLevels - 1];
  KVS_HOST_DEVICE explicit NuqBoundaries(const float* c) {
    for (int32_t j = 0; j + 1 < kNuqLevels; ++j) beta[j] = mul_rn(add_rn(c[j], c[j + 1]), 0.5f);
  }
  KVS_HOST_DEVICE uint32_t code(float t) const {
    return (t > beta[0] ? 1u : 0u) + (t > beta[1] ? 1u : 0u) + (t > beta[2] ? 1u : 0u);
  }
};

KVS_HOST_DEVICE inline float clamp_unit(float t) { return t < -1.f ? -1.f : (t > 1.f ? 1.f : t); }

KVS_HOST_DEVICE inline float reciprocal_or_zero(float r) { return r > 0.f ? div_rn(1.f, r) : 0.f; }

// KIVI's asymmetric 2-bit rule over [mn, mx]: scale and min as stored f16 bits.
KVS_HOST_DEVICE inline void uniform_scale_min(float mn, float mx, uint16_t& scale, uint16_t& min) {
  scale = float_to_half(div_rn(sub_rn(mx, mn), 3.f));
  min = float_to_half(mn);
}

// Meta entries 2i (scale) and 2i+1 (min) of the uniform codecs, as floats.
struct UniformScale {
  float scale, min;
  KVS_HOST_DEVICE UniformScale(const uint16_t* meta, int64_t i) : scale(half_to_float(meta[2 * i])), min(half_to_float(meta[2 * i + 1])) {}
};

KVS_HOST_DEVICE inline uint32_t uniform_code(float x, float scale, float min) {
  const float q = round_even(mul_rn(sub_rn(x, min), reciprocal_or_zero(scale)));
  return q <= 0.f ? 0u : (q >= 3.f ? 3u : static_cast<uint32_t>(q));
}

KVS_HOST_DEVICE inline float uniform_value(uint32_t code, float scale, float min) {
  return fma_rn(static_cast<float>(code), scale, min);
}

// ---- rotation ----------------------------------------------------------------------------

KVS_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

KVS_HOST_DEVICE inline bool rotation_sign_negative(uint64_t seed, int32_t d) {
  return (splitmix64(seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(d + 1)) & 1u) != 0;
}

// In-place unnormalized Walsh-Hadamard transform of v[D], D a power of two; the butterfly
// order is fixed (stride 1, 2, 4, ..., ascending blocks), so results are reproducible.
KVS_HOST_DEVICE inline void walsh_hadamard(float* v, int32_t D) {
  for (int32_t len = 1; len < D; len <<= 1)
    for (int32_t start = 0; start < D; start += 2 * len)
      for (int32_t j = start; j < start + len; ++j) {
        const float a = v[j], b = v[j + len];
        v[j] = add_rn(a, b);
        v[j + len] = sub_rn(a, b);
      }
}

// Lloyd-Max reconstruction levels of N(0, 1): the fixed codebooks of the Rotation codec,
// 2 bits (rot2, and rot1.5 for d < D/2) or 1 bit. Written as a switch, not a table, so
// device code needs no constant memory.
KVS_HOST_DEVICE inline bool rotation_two_bits(kvs_quant_mode mode, int32_t D, int32_t unit) {
  return mode != KVS_QUANT_ROT1_5 || unit < D / 2;
}

KVS_HOST_DEVICE inline float lloyd_max_level(bool two_bits, uint32_t code) {
  if (!two_bits) return code ? 0.7978845608f : -0.7978845608f;
  switch (code) {
    case 0: return -1.5104176085f;
    case 1: return -0.4527800346f;
    case 2: return 0.4527800346f;
    default: return 1.5104176085f;
  }
}

// #{j : t > (level_j + level_{j+1}) / 2} over the Lloyd-Max levels; the boundaries are
// exact f32 constants (-0.98159885..., 0, +0.98159885...: the midpoint rounded once).
KVS_HOST_DEVICE inline uint32_t lloyd_max_code(float t, bool two_bits) {
  if (!two_bits) return t > 0.f ? 1u : 0u;
  const float outer = mul_rn(add_rn(1.5104176085f, 0.4527800346f), 0.5f);
  return (t > -outer ? 1u : 0u) + (t > 0.f ? 1u : 0u) + (t > outer ? 1u : 0u);
}

// ---- one vector --------------------------------------------------------------------------

struct VectorSlots {
  uint8_t index[kQuantMaxOutliers];
  uint16_t value[kQuantMaxOutliers];
};

// Index of the largest score[d] >= 0 (ties: lower d); marks it taken (-1). -1 when none.
KVS_HOST_DEVICE inline int32_t take_largest(float* score, int32_t D) {
  int32_t best = -1;
  for (int32_t d = 0; d < D; ++d)
    if (score[d] >= 0.f && (best < 0 || score[d] > score[best])) best = d;
  if (best >= 0) score[best] = -1.f;
  return best;
}

// Everything one token's vector needs from its page and the format.
struct VectorContext {
  const QuantFormat* format;
  Codec codec;
  bool is_key;
  int32_t head;   // KV head
  int32_t token;  // 0..63 within the page
  uint16_t* meta; // the page-head meta array of this codec (nullptr when it has none)
};

// Dequantizes unit codes into xhat[D] (no residual slots).
KVS_HOST_DEVICE inline void dequantize_units(const VectorContext& v, const uint32_t* codes, float* xhat) {
  const QuantFormat& f = *v.format;
  const int32_t D = f.D;
  const int64_t hd = static_cast<int64_t>(v.head) * D;
  switch (v.codec) {
    case Codec::UniformChannel: {
      const uint16_t* m = v.meta + (v.token / kKiviTokenGroup) * D * 2;
      for (int32_t d = 0; d < D; ++d) {
        const UniformScale u(m, d);
        xhat[d] = uniform_value(codes[d], u.scale, u.min);
      }
      break;
    }
    case Codec::UniformToken: {
      const uint16_t* m = v.meta + static_cast<int64_t>(v.token) * uniform_token_groups(D) * 2;
      for (int32_t d = 0; d < D; ++d) {
        const UniformScale u(m, d / kKiviChannelGroup);
        xhat[d] = uniform_value(codes[d], u.scale, u.min);
      }
      break;
    }
    case Codec::NuqChannel:
      for (int32_t d = 0; d < D; ++d) xhat[d] = fma_rn(f.key_codebook[codes[d]], f.key_range[hd + d], f.key_zero[hd + d]);
      break;
    case Codec::NuqToken: {
      const float z = half_to_float(v.meta[2 * v.token]), r = half_to_float(v.meta[2 * v.token + 1]);
      for (int32_t d = 0; d < D; ++d) xhat[d] = fma_rn(f.value_codebook[codes[d]], r, z);
      break;
    }
    case Codec::Vq: {
      const float* book = v.is_key ? f.key_vq_codebook : f.value_vq_codebook;
      for (int32_t g = 0; g < D / kVqGroup; ++g) {
        const float* entry = book + ((static_cast<int64_t>(v.head) * (D / kVqGroup) + g) * kVqEntries + codes[g]) * kVqGroup;
        for (int32_t i = 0; i < kVqGroup; ++i) {
          const int32_t d = g * kVqGroup + i;
          xhat[d] = v.is_key ? fma_rn(entry[i], f.key_range[hd + d], f.key_zero[hd + d]) : entry[i];
        }
      }
      break;
    }
    case Codec::Rotation: {
      const float isd = div_rn(1.f, sqrt_rn(static_cast<float>(D)));
      const float step = mul_rn(half_to_float(v.meta[v.token]), isd);
      for (int32_t d = 0; d < D; ++d) xhat[d] = mul_rn(lloyd_max_level(rotation_two_bits(f.mode, D, d), codes[d]), step);
      walsh_hadamard(xhat, D);
      for (int32_t d = 0; d < D; ++d) {
        const float w = mul_rn(xhat[d], isd);
        xhat[d] = rotation_sign_negative(f.rotation_seed, d) ? -w : w;
      }
      break;
    }
  }
}

// Encodes x[D] (codec domain): writes the token's meta entries (UniformChannel reads the
// page's, written beforehand by uniform_channel_meta), codes[unit_count], and the residual
// slots. work and xhat are D-float scratch arrays.
KVS_HOST_DEVICE inline void encode_vector(const VectorContext& v, const float* x, uint32_t* codes, VectorSlots& slots,
                                          float* work, float* xhat) {
  const QuantFormat& f = *v.format;
  const int32_t D = f.D;
  const int64_t hd = static_cast<int64_t>(v.head) * D;
  switch (v.codec) {
    case Codec::UniformChannel: {
      const uint16_t* m = v.meta + (v.token / kKiviTokenGroup) * D * 2;
      for (int32_t d = 0; d < D; ++d) {
        const UniformScale u(m, d);
        codes[d] = uniform_code(x[d], u.scale, u.min);
      }
      break;
    }
    case Codec::UniformToken: {
      const int32_t G = uniform_token_groups(D);
      uint16_t* m = v.meta + static_cast<int64_t>(v.token) * G * 2;
      for (int32_t g = 0; g < G; ++g) {
        const int32_t d0 = g * kKiviChannelGroup, d1 = d0 + kKiviChannelGroup < D ? d0 + kKiviChannelGroup : D;
        float mn = x[d0], mx = x[d0];
        for (int32_t d = d0 + 1; d < d1; ++d) {
          mn = x[d] < mn ? x[d] : mn;
          mx = x[d] > mx ? x[d] : mx;
        }
        uniform_scale_min(mn, mx, m[2 * g], m[2 * g + 1]);
        const UniformScale u(m, g);
        for (int32_t d = d0; d < d1; ++d) codes[d] = uniform_code(x[d], u.scale, u.min);
      }
      break;
    }
    case Codec::NuqChannel: {
      const NuqBoundaries levels(f.key_codebook);
      for (int32_t d = 0; d < D; ++d) codes[d] = levels.code(clamp_unit(mul_rn(sub_rn(x[d], f.key_zero[hd + d]), f.key_inv_range[hd + d])));
      break;
    }
    case Codec::NuqToken: {
      for (int32_t d = 0; d < D; ++d) work[d] = fabsf(x[d]);
      for (int32_t s = 0; s < f.outliers; ++s) take_largest(work, D);
      int32_t first = 0;  // outliers <= D/4 leaves channels in the range
      while (work[first] < 0.f) ++first;
      float mn = x[first], mx = x[first];
      for (int32_t d = first + 1; d < D; ++d) {
        if (work[d] < 0.f) continue;  // left out of the range
        mn = x[d] < mn ? x[d] : mn;
        mx = x[d] > mx ? x[d] : mx;
      }
      const uint16_t z16 = float_to_half(mul_rn(add_rn(mx, mn), 0.5f));
      const uint16_t r16 = float_to_half(mul_rn(sub_rn(mx, mn), 0.5f));
      v.meta[2 * v.token] = z16;
      v.meta[2 * v.token + 1] = r16;
      const float z = half_to_float(z16), inv = reciprocal_or_zero(half_to_float(r16));
      const NuqBoundaries levels(f.value_codebook);
      for (int32_t d = 0; d < D; ++d) codes[d] = levels.code(clamp_unit(mul_rn(sub_rn(x[d], z), inv)));
      break;
    }
    case Codec::Vq: {
      const float* book = v.is_key ? f.key_vq_codebook : f.value_vq_codebook;
      for (int32_t g = 0; g < D / kVqGroup; ++g) {
        float u[kVqGroup];
        for (int32_t i = 0; i < kVqGroup; ++i) {
          const int32_t d = g * kVqGroup + i;
          u[i] = v.is_key ? mul_rn(sub_rn(x[d], f.key_zero[hd + d]), f.key_inv_range[hd + d]) : x[d];
        }
        const float* entries = book + (static_cast<int64_t>(v.head) * (D / kVqGroup) + g) * kVqEntries * kVqGroup;
        uint32_t best = 0;
        float best_distance = 0.f;
        for (uint32_t e = 0; e < static_cast<uint32_t>(kVqEntries); ++e) {
          // The chain only grows (each step adds a square, rounded monotonically), so once it
          // reaches the best distance this entry cannot win: stopping early is exact.
          float distance = 0.f;
          int32_t i = 0;
          for (; i < kVqGroup && (e == 0 || distance < best_distance); ++i) {
            const float diff = sub_rn(u[i], entries[e * kVqGroup + i]);
            distance = fma_rn(diff, diff, distance);
          }
          if (e == 0 || (i == kVqGroup && distance < best_distance)) {
            best = e;
            best_distance = distance;
          }
        }
        codes[g] = best;
      }
      break;
    }
    case Codec::Rotation: {
      float sum = 0.f;
      for (int32_t d = 0; d < D; ++d) sum = fma_rn(x[d], x[d], sum);
      uint16_t n16 = float_to_half(sqrt_rn(sum));
      if (n16 == 0x7c00u) n16 = 0x7bffu;  // a norm past the f16 range saturates at 65504
      v.meta[v.token] = n16;
      const float norm = half_to_float(n16), sqrt_d = sqrt_rn(static_cast<float>(D));
      const float isd = div_rn(1.f, sqrt_d), gain = norm > 0.f ? div_rn(sqrt_d, norm) : 0.f;
      for (int32_t d = 0; d < D; ++d) work[d] = rotation_sign_negative(f.rotation_seed, d) ? -x[d] : x[d];
      walsh_hadamard(work, D);
      for (int32_t d = 0; d < D; ++d)
        codes[d] = lloyd_max_code(mul_rn(mul_rn(work[d], isd), gain), rotation_two_bits(f.mode, D, d));
      break;
    }
  }

  for (int32_t s = 0; s < kQuantMaxOutliers; ++s) slots.index[s] = 0, slots.value[s] = 0;
  if (f.outliers == 0) return;
  dequantize_units(v, codes, xhat);
  for (int32_t d = 0; d < D; ++d) work[d] = fabsf(sub_rn(x[d], xhat[d]));
  for (int32_t s = 0; s < f.outliers; ++s) {
    const int32_t d = take_largest(work, D);
    if (d < 0) break;  // unreachable for encodable input; keeps every index in range regardless
    // x and x^ are each within +-65504 but their difference need not be: clamp it so a
    // slot never stores an infinity (the slot then corrects as far as f16 reaches)
    const float error = sub_rn(x[d], xhat[d]);
    const uint16_t residual = float_to_half(error > kQuantMaxMagnitude ? kQuantMaxMagnitude : (error < -kQuantMaxMagnitude ? -kQuantMaxMagnitude : error));
    if ((residual & 0x7fffu) == 0) break;  // this and every smaller error round to zero
    slots.index[s] = static_cast<uint8_t>(d);
    slots.value[s] = residual;
  }
}

// Slots whose index is past D (only possible in corrupted pages) are ignored.
KVS_HOST_DEVICE inline void add_residuals(const uint8_t* index, const uint16_t* value, int32_t outliers, int32_t D, float* xhat) {
  for (int32_t s = 0; s < outliers; ++s)
    if ((value[s] & 0x7fffu) != 0 && index[s] < D) xhat[index[s]] = add_rn(xhat[index[s]], half_to_float(value[s]));
}

// UniformChannel page statistics: meta for 32-token group g, channel d from that group's
// values; x(t, d) gives token t (0..63) of the page in the codec domain.
template <class TokenValue>
KVS_HOST_DEVICE inline void uniform_channel_meta(int32_t D, int32_t group, int32_t d, TokenValue x, uint16_t* meta) {
  const int32_t t0 = group * kKiviTokenGroup;
  float mn = x(t0, d), mx = mn;
  for (int32_t t = t0 + 1; t < t0 + kKiviTokenGroup; ++t) {
    const float value = x(t, d);
    mn = value < mn ? value : mn;
    mx = value > mx ? value : mx;
  }
  uint16_t* m = meta + (static_cast<int64_t>(group) * D + d) * 2;
  uniform_scale_min(mn, mx, m[0], m[1]);
}

}  // namespace kvs
