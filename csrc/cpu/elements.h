// Element access for the CPU kernels over f32 / f16 / bf16 storage: reads are exact in
// float; writes round once, to nearest even.
#pragma once

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

}  // namespace kvs::cpu
