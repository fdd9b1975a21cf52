// Runtime bindings: CUDA probe, memory statistics, copies between devices, CPU threads.
#include <cstring>
#include <string>

#include "addon/async_op.h"
#include "addon/bindings.h"
#include "addon/errors.h"
#include "addon/tensor_arg.h"
#include "core/tensor.h"

namespace kvs::addon {
namespace {

Napi::Value ProbeCuda(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  kvs_cuda_info probe{};
  throw_if_failed(env, kvs_cuda_probe(&probe));
  Napi::Object result = Napi::Object::New(env);
  result.Set("compiled", Napi::Boolean::New(env, probe.compiled != 0));
  result.Set("available", Napi::Boolean::New(env, probe.available != 0));
  result.Set("reason", Napi::String::New(env, probe.reason));
  result.Set("driverVersion", Napi::Number::New(env, probe.driver_version));
  result.Set("runtimeVersion", Napi::Number::New(env, probe.runtime_version));
  Napi::Array devices = Napi::Array::New(env);
  for (int i = 0; i < probe.device_count; ++i) {
    const kvs_cuda_device_info& d = probe.devices[i];
    Napi::Object device = Napi::Object::New(env);
    device.Set("index", Napi::Number::New(env, d.index));
    device.Set("name", Napi::String::New(env, d.name));
    device.Set("computeCapability", Napi::String::New(env, std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)));
    device.Set("memoryBytes", Napi::Number::New(env, static_cast<double>(d.memory_bytes)));
    devices.Set(i, device);
  }
  result.Set("devices", devices);
  return result;
}

Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int device = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : -1;
  kvs_memory_stats stats{};
  throw_if_failed(env, kvs_cuda_memory_stats(device, &stats));
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytes", Napi::Number::New(env, static_cast<double>(stats.live_bytes)));
  result.Set("tensors", Napi::Number::New(env, static_cast<double>(stats.live_allocations)));
  result.Set("peakBytes", Napi::Number::New(env, static_cast<double>(stats.peak_bytes)));
  return result;
}

// copy(dst, src) -> Promise<void>: same byte size, any pair of devices.
Napi::Value Copy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TensorPins pins;
  const kvs_tensor* dst = pins.pin(info[0], "dst");
  const kvs_tensor* src = pins.pin(info[1], "src");
  const size_t bytes = nbytes(*src);
  if (nbytes(*dst) != bytes) throw_error(env, KVS_E_SHAPE, "copy: source and destination sizes differ");
  if (dst->device_type == KVS_CUDA && src->device_type == KVS_CUDA && dst->device_index != src->device_index)
    throw_error(env, KVS_E_UNSUPPORTED, "copy: between two CUDA devices, go through the host");
  return AsyncOp::Start(env, std::move(pins), [=]() -> kvs_status {
    if (dst->device_type == KVS_CPU && src->device_type == KVS_CPU) {
      std::memcpy(dst->data, src->data, bytes);
      return KVS_OK;
    }
    const bool to_device = dst->device_type == KVS_CUDA;
    const int device = to_device ? dst->device_index : src->device_index;
    const kvs_copy_kind kind = !to_device ? KVS_COPY_DEVICE_TO_HOST
                               : src->device_type == KVS_CPU ? KVS_COPY_HOST_TO_DEVICE
                                                             : KVS_COPY_DEVICE_TO_DEVICE;
    kvs_status status = kvs_cuda_memcpy(dst->data, src->data, bytes, kind, device, nullptr);
    if (status == KVS_OK) status = kvs_cuda_stream_synchronize(device, nullptr);
    return status;
  });
}

// hostPointer(typedArray) -> bigint address of its first byte
Napi::Value HostPointer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw_error(env, KVS_E_RANGE, "hostPointer: expected a typed array");
  uint8_t* data = typed_array_data(info[0].As<Napi::TypedArray>());
  if (!data) throw_error(env, KVS_E_DISPOSED, "pointer: the ArrayBuffer was detached");
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(data)));
}

Napi::Value CpuThreads(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].IsNumber()) kvs_set_cpu_threads(info[0].As<Napi::Number>().Int32Value());
  return Napi::Number::New(info.Env(), kvs_cpu_threads());
}

}  // namespace

void register_runtime(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, kvs_abi_version()));
#ifdef KVSQUASH_WITH_CUDA
  exports.Set("cudaCompiled", Napi::Boolean::New(env, true));
#else
  exports.Set("cudaCompiled", Napi::Boolean::New(env, false));
#endif
  exports.Set("probeCuda", Napi::Function::New<ProbeCuda>(env, "probeCuda"));
  exports.Set("memoryStats", Napi::Function::New<MemoryStats>(env, "memoryStats"));
  exports.Set("copy", Napi::Function::New<Copy>(env, "copy"));
  exports.Set("hostPointer", Napi::Function::New<HostPointer>(env, "hostPointer"));
  exports.Set("cpuThreads", Napi::Function::New<CpuThreads>(env, "cpuThreads"));
}

}  // namespace kvs::addon
