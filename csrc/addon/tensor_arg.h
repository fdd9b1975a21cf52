// Turns the tensor descriptors lib/tensor.ts passes ({data, dtype, shape, device}: data a
// typed array on the CPU or a DeviceBuffer on CUDA) into kvs_tensor views, and pins what
// they point at (JS references plus DeviceBuffer use counts) until the op has finished.
#pragma once

#include <napi.h>

#include <deque>
#include <vector>

#include "addon/device_buffer.h"
#include "kvsquash.h"

namespace kvs::addon {

class TensorPins {
 public:
  TensorPins() = default;
  TensorPins(TensorPins&&) = default;
  TensorPins& operator=(TensorPins&&) = default;
  ~TensorPins() { release(); }

  // Returns a view whose address stays valid while these pins live.
  const kvs_tensor* pin(Napi::Value descriptor, const char* arg);
  // undefined/null -> nullptr
  const kvs_tensor* pin_optional(Napi::Value descriptor, const char* arg);
  void release();

 private:
  std::deque<kvs_tensor> views_;  // deque: stable addresses as views are added
  std::vector<Napi::ObjectReference> refs_;
  std::vector<DeviceBuffer*> buffers_;
};

// The first byte of a typed array's elements (nullptr when its ArrayBuffer was detached).
// Works for SharedArrayBuffer-backed arrays too.
uint8_t* typed_array_data(Napi::TypedArray array);

// Whether `value` is a DeviceBuffer of this addon instance.
DeviceBuffer* as_device_buffer(Napi::Value value);

}  // namespace kvs::addon
