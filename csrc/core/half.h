// IEEE binary16 and bfloat16 <-> float conversions. Float to half/bf16 rounds to nearest,
// ties to even, keeps NaN a NaN (sign and payload bits kept), overflows to infinity and
// produces subnormals. The CPU kernels and the CUDA stores (cuda/common.cuh) both use these,
// so even NaN bit patterns agree between devices; lib/dtype.ts implements the same rules.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/host_device.h"

namespace kvs {

KVS_HOST_DEVICE inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

KVS_HOST_DEVICE inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

KVS_HOST_DEVICE inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp != 0) return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
  // zero or subnormal: mant * 2^-24, exact in float
  const float magnitude = static_cast<float>(mant) * 5.9604644775390625e-08f;
  return sign ? -magnitude : magnitude;
}

KVS_HOST_DEVICE inline uint16_t float_to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((abs >> 13) & 0x3ffu);
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {
    // below the smallest normal half (2^-14): round abs / 2^-24 to an integer, ties to even
    const uint32_t exp = abs >> 23;
    if (exp < 102) return sign;  // < 2^-25: rounds to zero
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // 14..24
    uint32_t value = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1);
    const uint32_t half_way = 1u << (shift - 1);
    if (rest > half_way || (rest == half_way && (value & 1u))) ++value;
    return sign | static_cast<uint16_t>(value);
  }
  // normal: rebias the exponent and round the 13 dropped mantissa bits, ties to even;
  // a carry out of the mantissa correctly bumps the exponent
  uint32_t rebased = abs - 0x38000000u;
  rebased += 0x0fffu + ((rebased >> 13) & 1u);
  return sign | static_cast<uint16_t>(rebased >> 13);
}

KVS_HOST_DEVICE inline float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

KVS_HOST_DEVICE inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace kvs
