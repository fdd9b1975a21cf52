// C ABI entries of the CUDA runtime layer (cuda/runtime.cu); CPU-only builds answer
// "not compiled" from the probe and KVS_E_UNSUPPORTED from everything else.
#include <cstring>

#include "core/cuda_runtime.h"
#include "core/error.h"
#include "kvsquash.h"

namespace {
#ifdef KVSQUASH_WITH_CUDA
template <class Body>
kvs_status with_cuda(Body&& body) {
  return kvs::guarded(body);
}
#else
template <class Body>
kvs_status with_cuda(Body&&) {
  return kvs::guarded([] { throw kvs::Error(KVS_E_UNSUPPORTED, "this kvsquash build has no CUDA support (built CPU-only)"); });
}
#endif
}  // namespace

extern "C" {

kvs_status kvs_cuda_probe(kvs_cuda_info* info) {
  if (!info) return kvs::guarded([] { throw kvs::Error(KVS_E_RANGE, "kvs_cuda_probe: info is NULL"); });
#ifdef KVSQUASH_WITH_CUDA
  return kvs::guarded([&] { kvs::cuda::probe(info); });
#else
  std::memset(info, 0, sizeof(*info));
  std::strncpy(info->reason, "built without CUDA (CPU-only build)", sizeof(info->reason) - 1);
  return KVS_OK;
#endif
}

kvs_status kvs_cuda_malloc(int device, size_t bytes, void** ptr) {
  return with_cuda([&] { *ptr = kvs::cuda::malloc(device, bytes); });
}

kvs_status kvs_cuda_free(int device, void* ptr) {
  return with_cuda([&] { kvs::cuda::free(device, ptr); });
}

kvs_status kvs_cuda_memcpy(void* dst, const void* src, size_t bytes, kvs_copy_kind kind, int device, void* stream) {
  return with_cuda([&] { kvs::cuda::memcpy(dst, src, bytes, kind, device, stream); });
}

kvs_status kvs_cuda_memset_zero(void* dst, size_t bytes, int device, void* stream) {
  return with_cuda([&] { kvs::cuda::memset_zero(dst, bytes, device, stream); });
}

kvs_status kvs_cuda_stream_synchronize(int device, void* stream) {
  return with_cuda([&] { kvs::cuda::synchronize(device, stream); });
}

kvs_status kvs_cuda_memory_stats(int device, kvs_memory_stats* stats) {
  if (!stats) return kvs::guarded([] { throw kvs::Error(KVS_E_RANGE, "kvs_cuda_memory_stats: stats is NULL"); });
#ifdef KVSQUASH_WITH_CUDA
  return kvs::guarded([&] { *stats = kvs::cuda::memory_stats(device); });
#else
  (void)device;
  *stats = kvs_memory_stats{0, 0, 0};
  return KVS_OK;
#endif
}

kvs_status kvs_cuda_check_pointer(int device, const void* ptr, size_t bytes) {
  return with_cuda([&] { kvs::cuda::check_pointer(device, ptr, bytes); });
}

}  // extern "C"
