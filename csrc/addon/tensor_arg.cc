#include "addon/tensor_arg.h"

#include <string>

#include "addon/addon_data.h"
#include "addon/errors.h"

namespace kvs::addon {

DeviceBuffer* as_device_buffer(Napi::Value value) {
  if (!value.IsObject()) return nullptr;
  Napi::Object object = value.As<Napi::Object>();
  if (!object.InstanceOf(value.Env().GetInstanceData<AddonData>()->device_buffer.Value())) return nullptr;
  return DeviceBuffer::Unwrap(object);
}

uint8_t* typed_array_data(Napi::TypedArray array) {
  napi_env env = array.Env();
  void* data = nullptr;
  napi_value buffer = nullptr;
  NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, array, nullptr, nullptr, &data, &buffer, nullptr), nullptr);
  bool is_array_buffer = false, detached = false;
  NAPI_THROW_IF_FAILED(env, napi_is_arraybuffer(env, buffer, &is_array_buffer), nullptr);
  if (is_array_buffer) NAPI_THROW_IF_FAILED(env, napi_is_detached_arraybuffer(env, buffer, &detached), nullptr);
  return detached ? nullptr : static_cast<uint8_t*>(data);
}

const kvs_tensor* TensorPins::pin(Napi::Value descriptor, const char* arg) {
  Napi::Env env = descriptor.Env();
  const std::string name(arg);
  if (!descriptor.IsObject()) throw_error(env, KVS_E_SHAPE, name + ": expected a tensor");
  Napi::Object d = descriptor.As<Napi::Object>();
  Napi::Value dtype = d.Get("dtype"), shape = d.Get("shape"), device = d.Get("device"), data = d.Get("data");
  if (!dtype.IsNumber() || !shape.IsArray() || !device.IsNumber())
    throw_error(env, KVS_E_SHAPE, name + ": malformed tensor descriptor");

  kvs_tensor t{};
  t.dtype = dtype.As<Napi::Number>().Int32Value();
  const size_t item = kvs_dtype_size(static_cast<kvs_dtype>(t.dtype));
  if (item == 0) throw_error(env, KVS_E_DTYPE, name + ": unknown dtype code " + std::to_string(t.dtype));
  Napi::Array dims = shape.As<Napi::Array>();
  if (dims.Length() > KVS_MAX_RANK) throw_error(env, KVS_E_SHAPE, name + ": rank above " + std::to_string(KVS_MAX_RANK));
  t.rank = static_cast<int32_t>(dims.Length());
  double count = 1;
  for (uint32_t i = 0; i < dims.Length(); ++i) {
    Napi::Value dim = dims.Get(i);
    if (!dim.IsNumber()) throw_error(env, KVS_E_SHAPE, name + ": shape entries must be numbers");
    t.shape[i] = dim.As<Napi::Number>().Int64Value();
    count *= static_cast<double>(t.shape[i]);
  }
  const double expected_bytes = count * static_cast<double>(item);
  const int32_t device_index = device.As<Napi::Number>().Int32Value();

  if (device_index < 0) {
    if (!data.IsTypedArray()) throw_error(env, KVS_E_DEVICE, name + ": CPU tensor without a typed array");
    Napi::TypedArray array = data.As<Napi::TypedArray>();
    uint8_t* bytes = typed_array_data(array);
    if (!bytes) throw_error(env, KVS_E_DISPOSED, name + ": its ArrayBuffer was detached (transferred?)");
    if (static_cast<double>(array.ByteLength()) != expected_bytes)
      throw_error(env, KVS_E_SHAPE, name + ": typed array holds " + std::to_string(array.ByteLength()) +
                                        " bytes, shape needs " + std::to_string(static_cast<uint64_t>(expected_bytes)));
    t.device_type = KVS_CPU;
    t.data = bytes;
    refs_.push_back(Napi::Persistent(array.As<Napi::Object>()));
  } else {
    DeviceBuffer* buffer = as_device_buffer(data);
    if (!buffer) throw_error(env, KVS_E_DEVICE, name + ": CUDA tensor without device memory");
    if (buffer->released()) throw_error(env, KVS_E_DISPOSED, name + ": tensor has been disposed");
    if (buffer->device() != device_index)
      throw_error(env, KVS_E_DEVICE, name + ": memory is on cuda:" + std::to_string(buffer->device()) +
                                         ", descriptor says cuda:" + std::to_string(device_index));
    if (static_cast<double>(buffer->bytes()) < expected_bytes)
      throw_error(env, KVS_E_SHAPE, name + ": device memory smaller than its shape needs");
    t.device_type = KVS_CUDA;
    t.device_index = device_index;
    t.data = buffer->data();
    refs_.push_back(Napi::Persistent(data.As<Napi::Object>()));
    buffer->acquire();
    buffers_.push_back(buffer);
  }
  views_.push_back(t);
  return &views_.back();
}

const kvs_tensor* TensorPins::pin_optional(Napi::Value descriptor, const char* arg) {
  if (descriptor.IsUndefined() || descriptor.IsNull()) return nullptr;
  return pin(descriptor, arg);
}

void TensorPins::release() {
  for (DeviceBuffer* buffer : buffers_) buffer->release_use();
  buffers_.clear();
  for (auto& ref : refs_) ref.Reset();
  refs_.clear();
}

}  // namespace kvs::addon
