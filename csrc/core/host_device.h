// KVS_HOST_DEVICE marks small inline helpers in the shared family headers that both the CPU
// reference (g++) and the CUDA kernels (nvcc) call, so each rule is written once.
#pragma once

#if defined(__CUDACC__)
#define KVS_HOST_DEVICE __host__ __device__
#else
#define KVS_HOST_DEVICE
#endif
