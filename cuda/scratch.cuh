// StreamScratch: temporary device memory for one call's kernels, shared by the CUDA families.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common.cuh"
#include "core/cuda_runtime.h"

namespace kvs::cuda {

// Scratch for one call's kernels, freed in stream order after them: with the stream-ordered
// allocator where the device has memory pools (no host wait), else with the accounted
// allocator after waiting for the stream. The destructor frees it on an exception path.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, int device, cudaStream_t stream, const std::string& what)
      : device_(device), stream_(stream) {
    int pools = 0;
    KVS_CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device),
                   what + ": querying memory pool support");
    stream_ordered_ = pools != 0;
    if (stream_ordered_) {
      KVS_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream),
                     what + ": allocating " + std::to_string(bytes) + " bytes of scratch");
    } else {
      ptr_ = cuda::malloc(device, bytes);
    }
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  ~StreamScratch() {
    try {
      release();
    } catch (...) {
      // already failing; the context is most likely unusable
    }
  }

  void* get() const { return ptr_; }

  // Frees the memory once the work queued so far on the stream is done.
  void release() {
    void* ptr = ptr_;
    if (!ptr) return;
    ptr_ = nullptr;
    if (stream_ordered_) {
      KVS_CUDA_CHECK(cudaFreeAsync(ptr, stream_), "freeing scratch memory");
      return;
    }
    const cudaError_t waited = cudaStreamSynchronize(stream_);
    cuda::free(device_, ptr);
    KVS_CUDA_CHECK(waited, "waiting for the stream before freeing scratch memory");
  }

 private:
  void* ptr_ = nullptr;
  int device_;
  cudaStream_t stream_;
  bool stream_ordered_ = false;
};

}  // namespace kvs::cuda
