// DeviceBuffer: the JS handle of one block of CUDA memory, owned (allocated here and freed by
// free() or, as a safety net, by the finalizer) or borrowed (Tensor.fromDevicePointer: the
// `owner` object is kept alive and nothing is freed). Ops in flight hold a use count, so a
// free() requested meanwhile waits until the last op using the memory has finished.
#pragma once

#include <napi.h>

#include <cstdint>

namespace kvs::addon {

class DeviceBuffer : public Napi::ObjectWrap<DeviceBuffer> {
 public:
  static Napi::Function Define(Napi::Env env);
  // new DeviceBuffer(device, bytes, zero?: boolean) allocates (zero-filled when asked);
  // new DeviceBuffer(device, bytes, pointer: bigint, owner?) borrows.
  explicit DeviceBuffer(const Napi::CallbackInfo& info);
  ~DeviceBuffer() override;

  void* data() const { return released_ ? nullptr : ptr_; }
  int device() const { return device_; }
  size_t bytes() const { return bytes_; }
  bool released() const { return released_; }
  void acquire() { ++uses_; }
  void release_use();

 private:
  Napi::Value Free(const Napi::CallbackInfo& info);
  Napi::Value Pointer(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  void free_now();

  void* ptr_ = nullptr;
  int device_ = 0;
  size_t bytes_ = 0;
  bool owned_ = false;
  bool released_ = false;      // free() was called: unusable from JS
  bool free_pending_ = false;  // released while ops were using it
  int uses_ = 0;
  Napi::ObjectReference owner_;
};

}  // namespace kvs::addon
