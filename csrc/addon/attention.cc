// attention(q, k, v, out, lse, {scale, causal, kvLengths, logWeights}) -> Promise<void>
#include "addon/async_op.h"
#include "addon/bindings.h"
#include "addon/errors.h"
#include "addon/options.h"
#include "addon/tensor_arg.h"

namespace kvs::addon {
namespace {

Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object options = options_arg(info, 5, "attention");
  TensorPins pins;
  const kvs_tensor* q = pins.pin(info[0], "q");
  const kvs_tensor* k = pins.pin(info[1], "k");
  const kvs_tensor* v = pins.pin(info[2], "v");
  const kvs_tensor* out = pins.pin(info[3], "out");
  const kvs_tensor* lse = pins.pin_optional(info[4], "lse");
  kvs_attention_params params{};
  params.scale = static_cast<float>(number_option(options, "scale"));
  params.causal = options.Get("causal").ToBoolean() ? 1 : 0;
  params.kv_lengths = pins.pin_optional(options.Get("kvLengths"), "kvLengths");
  params.log_weights = pins.pin_optional(options.Get("logWeights"), "logWeights");
  return AsyncOp::Start(env, std::move(pins),
                        [=] { return wait_for_device(kvs_attention(q, k, v, &params, out, lse, nullptr), q); });
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object exports) {
  exports.Set("attention", Napi::Function::New<Attention>(env, "attention"));
}

}  // namespace kvs::addon
