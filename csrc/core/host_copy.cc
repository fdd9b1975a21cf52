#include "core/host_copy.h"

#include "core/cuda_runtime.h"
#include "core/tensor.h"

namespace kvs {

std::vector<int32_t> copy_i32_to_host(const kvs_tensor& t, void* stream) {
  std::vector<int32_t> host(static_cast<size_t>(numel(t)));
  if (t.device_type == KVS_CPU) {
    const auto* data = static_cast<const int32_t*>(t.data);
    host.assign(data, data + host.size());
    return host;
  }
#ifdef KVSQUASH_WITH_CUDA
  cuda::memcpy(host.data(), t.data, host.size() * sizeof(int32_t), KVS_COPY_DEVICE_TO_HOST, t.device_index, stream);
  cuda::synchronize(t.device_index, stream);
#else
  (void)stream;  // CUDA tensors cannot reach here: dispatch refuses them in CPU-only builds
#endif
  return host;
}

}  // namespace kvs
