// attention(q, k, v, out, lse, {scale, causal, kvLengths, logWeights}) -> Promise<void>
#include "addon/async_op.h"
#include "addon/bindings.h"
#include "addon/errors.h"
#include "addon/tensor_arg.h"

namespace kvs::addon {
namespace {

Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[5].IsObject()) throw_error(env, KVS_E_RANGE, "attention: expected 6 arguments");
  Napi::Object options = info[5].As<Napi::Object>();
  TensorPins pins;
  const kvs_tensor* q = pins.pin(info[0], "q");
  const kvs_tensor* k = pins.pin(info[1], "k");
  const kvs_tensor* v = pins.pin(info[2], "v");
  const kvs_tensor* out = pins.pin(info[3], "out");
  const kvs_tensor* lse = pins.pin_optional(info[4], "lse");
  kvs_attention_params params{};
  Napi::Value scale = options.Get("scale");
  if (!scale.IsNumber()) throw_error(env, KVS_E_RANGE, "scale: expected a number");
  params.scale = scale.As<Napi::Number>().FloatValue();
  params.causal = options.Get("causal").ToBoolean() ? 1 : 0;
  params.kv_lengths = pins.pin_optional(options.Get("kvLengths"), "kvLengths");
  params.log_weights = pins.pin_optional(options.Get("logWeights"), "logWeights");
  return AsyncOp::Start(env, std::move(pins), [=] {
    const kvs_status status = kvs_attention(q, k, v, &params, out, lse, nullptr);
    if (status != KVS_OK || q->device_type != KVS_CUDA) return status;
    return kvs_cuda_stream_synchronize(q->device_index, nullptr);
  });
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object exports) {
  exports.Set("attention", Napi::Function::New<Attention>(env, "attention"));
}

}  // namespace kvs::addon
