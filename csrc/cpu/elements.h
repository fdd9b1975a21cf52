// Element access for the CPU kernels over f32 / f16 / bf16 storage (reads are exact in
// float; writes round once, to nearest even), and the exact cosine the merge decisions use.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/half.h"
#include "kvsquash.h"

namespace kvs::cpu {

inline float load_float(const void* base, kvs_dtype dtype, int64_t i) {
  switch (dtype) {
    case KVS_F16: return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case KVS_BF16: return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

inline void store_float(void* base, kvs_dtype dtype, int64_t i, double value) {
  const float f = static_cast<float>(value);
  switch (dtype) {
    case KVS_F16: static_cast<uint16_t*>(base)[i] = float_to_half(f); break;
    case KVS_BF16: static_cast<uint16_t*>(base)[i] = float_to_bf16(f); break;
    default: static_cast<float*>(base)[i] = f;
  }
}

// Padding of a head's compressed output past its `used` slots (up to tcap): zero keys and
// values, size 0, and -1 in the per-slot index (pivot or position). Slots are relative to
// the head's first slot `slot0`.
inline void write_padding_slots(void* keys, void* values, int32_t* sizes, int32_t* index, kvs_dtype dtype,
                                int64_t slot0, int64_t used, int64_t tcap, int64_t D) {
  for (int64_t s = slot0 + used; s < slot0 + tcap; ++s) {
    for (int64_t d = 0; d < D; ++d) {
      store_float(keys, dtype, s * D + d, 0.0);
      store_float(values, dtype, s * D + d, 0.0);
    }
    sizes[s] = 0;
    index[s] = -1;
  }
}

// The link cosine of csrc/core/merge.h: sequential f32 FMA chains in ascending d, then IEEE
// sqrt, multiply and divide. x(d) and y(d) give element d of the two rows as f32.
template <class RowX, class RowY>
inline float exact_cosine(int64_t D, RowX x, RowY y) {
  float dot = 0.f, nx = 0.f, ny = 0.f;
  for (int64_t d = 0; d < D; ++d) {
    const float a = x(d), b = y(d);
    dot = std::fma(a, b, dot);
    nx = std::fma(a, a, nx);
    ny = std::fma(b, b, ny);
  }
  const float denom = std::sqrt(nx) * std::sqrt(ny);
  return denom > 0.f ? dot / denom : 0.f;
}

}  // namespace kvs::cpu
