// softMatch(keys, values, assign, lengths, outKeys|null, outValues|null, sizes|null,
//           positions|null, {chunk, passes, keptPerChunk, threshold, protectFirst, protectRecent})
//   -> Promise<void> (outputs preallocated by lib/ops/softmatch.ts)
#include "addon/async_op.h"
#include "addon/bindings.h"
#include "addon/options.h"
#include "addon/tensor_arg.h"

namespace kvs::addon {
namespace {

Napi::Value SoftMatch(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 8, "softMatch");
  TensorPins pins;
  const kvs_tensor* keys = pins.pin(info[0], "keys");
  const kvs_tensor* values = pins.pin(info[1], "values");
  const kvs_tensor* assign = pins.pin(info[2], "assign");
  const kvs_tensor* lengths = pins.pin(info[3], "lengths");
  const kvs_tensor* out_keys = pins.pin_optional(info[4], "outKeys");
  const kvs_tensor* out_values = pins.pin_optional(info[5], "outValues");
  const kvs_tensor* sizes = pins.pin_optional(info[6], "sizes");
  const kvs_tensor* positions = pins.pin_optional(info[7], "positions");
  kvs_soft_match_params params{};
  params.chunk = static_cast<int64_t>(number_option(options, "chunk"));
  params.passes = static_cast<int32_t>(number_option(options, "passes"));
  params.kept_per_chunk = static_cast<int64_t>(number_option(options, "keptPerChunk"));
  params.threshold = static_cast<float>(number_option(options, "threshold"));
  params.protect_first = static_cast<int64_t>(number_option(options, "protectFirst"));
  params.protect_recent = static_cast<int64_t>(number_option(options, "protectRecent"));
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(
        kvs_soft_match(keys, values, &params, assign, lengths, out_keys, out_values, sizes, positions, nullptr), keys);
  });
}

}  // namespace

void register_softmatch(Napi::Env env, Napi::Object exports) {
  exports.Set("softMatch", Napi::Function::New<SoftMatch>(env, "softMatch"));
}

}  // namespace kvs::addon
