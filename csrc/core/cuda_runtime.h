// The CUDA runtime layer (cuda/runtime.cu): lazy init, device probe, the library's streams,
// and accounted allocations. Only compiled when KVSQUASH_WITH_CUDA is defined; the C ABI
// (csrc/core/runtime_api.cc) answers KVS_E_UNSUPPORTED otherwise. Every function throws
// kvs::Error on failure.
#pragma once

#include <cstddef>

#include "kvsquash.h"

namespace kvs::cuda {

void probe(kvs_cuda_info* info);
// Makes `device` current on the calling thread after checking it exists and runs our code.
void use_device(int device);
// The stream to run on: `stream` when non-null, else the library's stream for `device`.
void* resolve_stream(int device, void* stream);
void* malloc(int device, size_t bytes);
void free(int device, void* ptr);
void memcpy(void* dst, const void* src, size_t bytes, kvs_copy_kind kind, int device,
            void* stream);
void memset_zero(void* dst, size_t bytes, int device, void* stream);
void synchronize(int device, void* stream);
kvs_memory_stats memory_stats(int device);
void check_pointer(int device, const void* ptr, size_t bytes);

}  // namespace kvs::cuda
