// f32 arithmetic that rounds exactly as written on the host and on the device. The host is
// compiled with -ffp-contract=off; nvcc contracts a*b+c into an FMA unless told otherwise,
// so device code goes through the __f*_rn intrinsics, which are never contracted. Shared
// family rules (csrc/core/quant.h) use these so the CPU reference and the CUDA kernels
// produce the same bits.
#pragma once

#include <cmath>

#include "core/host_device.h"

namespace kvs {

KVS_HOST_DEVICE inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

KVS_HOST_DEVICE inline float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

KVS_HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

KVS_HOST_DEVICE inline float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

KVS_HOST_DEVICE inline float fma_rn(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

KVS_HOST_DEVICE inline float sqrt_rn(float a) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// Round to the nearest integer, ties to even (the default rounding mode on both sides).
KVS_HOST_DEVICE inline float round_even(float a) {
#ifdef __CUDA_ARCH__
  return rintf(a);
#else
  return std::nearbyint(a);
#endif
}

}  // namespace kvs
