#include "addon/device_buffer.h"

#include "addon/errors.h"
#include "kvsquash.h"

#include <string>

namespace kvs::addon {

Napi::Function DeviceBuffer::Define(Napi::Env env) {
  return DefineClass(env, "DeviceBuffer",
                     {InstanceMethod<&DeviceBuffer::Free>("free"),
                      InstanceAccessor<&DeviceBuffer::Pointer>("pointer"),
                      InstanceAccessor<&DeviceBuffer::Disposed>("disposed")});
}

DeviceBuffer::DeviceBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceBuffer>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    throw_error(env, KVS_E_RANGE, "DeviceBuffer(device, bytes[, pointer, owner]): bad arguments");
  device_ = info[0].As<Napi::Number>().Int32Value();
  const double bytes = info[1].As<Napi::Number>().DoubleValue();
  if (!(bytes >= 1) || bytes > 9007199254740991.0)
    throw_error(env, KVS_E_SHAPE, "DeviceBuffer: byte size must be a positive integer");
  bytes_ = static_cast<size_t>(bytes);
  if (info.Length() >= 3 && info[2].IsBigInt()) {
    bool lossless = false;
    const uint64_t address = info[2].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless || address == 0) throw_error(env, KVS_E_RANGE, "pointer: expected a non-zero 64-bit address");
    ptr_ = reinterpret_cast<void*>(static_cast<uintptr_t>(address));
    throw_if_failed(env, kvs_cuda_check_pointer(device_, ptr_, bytes_));
    if (info.Length() >= 4 && info[3].IsObject()) owner_ = Napi::Persistent(info[3].As<Napi::Object>());
    return;
  }
  throw_if_failed(env, kvs_cuda_malloc(device_, bytes_, &ptr_));
  owned_ = true;
  if (info.Length() >= 3 && info[2].ToBoolean()) {
    const kvs_status status = kvs_cuda_memset_zero(ptr_, bytes_, device_, nullptr);
    if (status != KVS_OK || kvs_cuda_stream_synchronize(device_, nullptr) != KVS_OK) {
      const std::string message = kvs_last_error();
      kvs_cuda_free(device_, ptr_);
      ptr_ = nullptr;
      throw_error(env, status != KVS_OK ? status : KVS_E_CUDA, message);
    }
  }
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(bytes_));
}

DeviceBuffer::~DeviceBuffer() {
  // Safety net for memory nobody disposed; errors cannot be reported from a finalizer.
  if (owned_ && ptr_) {
    kvs_cuda_free(device_, ptr_);
    Napi::MemoryManagement::AdjustExternalMemory(Env(), -static_cast<int64_t>(bytes_));
  }
}

void DeviceBuffer::free_now() {
  if (owned_ && ptr_) {
    kvs_cuda_free(device_, ptr_);
    Napi::MemoryManagement::AdjustExternalMemory(Env(), -static_cast<int64_t>(bytes_));
  }
  ptr_ = nullptr;
  owner_.Reset();
}

void DeviceBuffer::release_use() {
  if (--uses_ == 0 && free_pending_) {
    free_pending_ = false;
    free_now();
  }
}

Napi::Value DeviceBuffer::Free(const Napi::CallbackInfo& info) {
  if (!released_) {
    released_ = true;
    if (uses_ > 0)
      free_pending_ = true;
    else
      free_now();
  }
  return info.Env().Undefined();
}

Napi::Value DeviceBuffer::Pointer(const Napi::CallbackInfo& info) {
  if (released_) throw_error(info.Env(), KVS_E_DISPOSED, "pointer: tensor has been disposed");
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ptr_)));
}

Napi::Value DeviceBuffer::Disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), released_);
}

}  // namespace kvs::addon
