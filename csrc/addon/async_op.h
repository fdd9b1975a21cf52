// Runs one kvsquash C call on the libuv pool and settles a promise with its status. The
// JS-side tensors stay pinned until the promise settles; Execute touches no JS.
#pragma once

#include <napi.h>

#include <functional>
#include <string>

#include "addon/errors.h"
#include "addon/tensor_arg.h"

namespace kvs::addon {

// For use inside a Body: after a C entry enqueued CUDA work for tensors on ref's device,
// waits for the library stream so the promise settles only when the results are ready.
inline kvs_status wait_for_device(kvs_status status, const kvs_tensor* ref) {
  if (status != KVS_OK || ref->device_type != KVS_CUDA) return status;
  return kvs_cuda_stream_synchronize(ref->device_index, nullptr);
}

class AsyncOp : public Napi::AsyncWorker {
 public:
  using Body = std::function<kvs_status()>;

  // Queues the work and returns its promise.
  static Napi::Promise Start(Napi::Env env, TensorPins pins, Body body) {
    auto* op = new AsyncOp(env, std::move(pins), std::move(body));
    Napi::Promise promise = op->deferred_.Promise();
    op->Queue();
    return promise;
  }

 protected:
  void Execute() override {
    status_ = body_();
    if (status_ != KVS_OK) message_ = kvs_last_error();
  }

  void OnOK() override {
    pins_.release();
    if (status_ == KVS_OK)
      deferred_.Resolve(Env().Undefined());
    else
      deferred_.Reject(make_error(Env(), status_, message_).Value());
  }

  void OnError(const Napi::Error& error) override {
    pins_.release();
    deferred_.Reject(error.Value());
  }

 private:
  AsyncOp(Napi::Env env, TensorPins pins, Body body)
      : Napi::AsyncWorker(env, "kvsquash"), deferred_(Napi::Promise::Deferred::New(env)),
        pins_(std::move(pins)), body_(std::move(body)) {}

  Napi::Promise::Deferred deferred_;
  TensorPins pins_;
  Body body_;
  kvs_status status_ = KVS_OK;
  std::string message_;
};

}  // namespace kvs::addon
