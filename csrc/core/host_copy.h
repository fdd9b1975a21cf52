// Small i32 tensors (lengths, slot maps) that argument checks read on the host, wherever
// they live: a plain copy on the CPU, a synchronous copy on the stream for CUDA tensors.
#pragma once

#include <cstdint>
#include <vector>

#include "kvsquash.h"

namespace kvs {

std::vector<int32_t> copy_i32_to_host(const kvs_tensor& t, void* stream);

}  // namespace kvs
