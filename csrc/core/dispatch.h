// The one place that routes an op to its CPU or CUDA implementation by the device of its
// tensors. Builds without CUDA answer KVS_E_UNSUPPORTED for CUDA tensors.
#pragma once

#include <string>

#include "core/error.h"
#include "kvsquash.h"

namespace kvs {

template <class CpuImpl, class CudaImpl>
void dispatch(const kvs_tensor& ref, const char* op, CpuImpl&& on_cpu, CudaImpl&& on_cuda) {
  if (ref.device_type == KVS_CPU) {
    on_cpu();
    return;
  }
#ifdef KVSQUASH_WITH_CUDA
  (void)op;
  on_cuda();
#else
  (void)on_cuda;
  throw Error(KVS_E_UNSUPPORTED, std::string(op) + ": this kvsquash build has no CUDA kernels (built CPU-only)");
#endif
}

}  // namespace kvs
