// Merge family bindings, each -> Promise<void> (outputs are preallocated by lib/ops/merge.ts):
//   attentionScores(q, k, scores, {scale, causal, window})
//   mergeSegments(keys, scores, assign, lengths, {threshold, budget, protectFirst, protectRecent, protectTop})
//   gaussianMerge(keys, values, scores, assign, lengths, outKeys, outValues, sizes, pivots, {sigma, valueScale})
#include "addon/async_op.h"
#include "addon/bindings.h"
#include "addon/options.h"
#include "addon/tensor_arg.h"

namespace kvs::addon {
namespace {

Napi::Value AttentionScores(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 3, "attentionScores");
  TensorPins pins;
  const kvs_tensor* q = pins.pin(info[0], "q");
  const kvs_tensor* k = pins.pin(info[1], "k");
  const kvs_tensor* scores = pins.pin(info[2], "scores");
  kvs_attention_scores_params params{};
  params.scale = static_cast<float>(number_option(options, "scale"));
  params.causal = options.Get("causal").ToBoolean() ? 1 : 0;
  params.window = static_cast<int64_t>(number_option(options, "window"));
  return AsyncOp::Start(info.Env(), std::move(pins),
                        [=] { return wait_for_device(kvs_attention_scores(q, k, &params, scores, nullptr), q); });
}

Napi::Value MergeSegments(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 4, "mergeSegments");
  TensorPins pins;
  const kvs_tensor* keys = pins.pin(info[0], "keys");
  const kvs_tensor* scores = pins.pin(info[1], "scores");
  const kvs_tensor* assign = pins.pin(info[2], "assign");
  const kvs_tensor* lengths = pins.pin(info[3], "lengths");
  kvs_merge_segment_params params{};
  params.threshold = static_cast<float>(number_option(options, "threshold"));
  params.budget = static_cast<int64_t>(number_option(options, "budget"));
  params.protect_first = static_cast<int64_t>(number_option(options, "protectFirst"));
  params.protect_recent = static_cast<int64_t>(number_option(options, "protectRecent"));
  params.protect_top = static_cast<int64_t>(number_option(options, "protectTop"));
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(kvs_merge_segments(keys, scores, &params, assign, lengths, nullptr), keys);
  });
}

Napi::Value GaussianMerge(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 9, "gaussianMerge");
  TensorPins pins;
  const kvs_tensor* keys = pins.pin(info[0], "keys");
  const kvs_tensor* values = pins.pin(info[1], "values");
  const kvs_tensor* scores = pins.pin(info[2], "scores");
  const kvs_tensor* assign = pins.pin(info[3], "assign");
  const kvs_tensor* lengths = pins.pin(info[4], "lengths");
  const kvs_tensor* out_keys = pins.pin(info[5], "outKeys");
  const kvs_tensor* out_values = pins.pin(info[6], "outValues");
  const kvs_tensor* sizes = pins.pin(info[7], "sizes");
  const kvs_tensor* pivots = pins.pin(info[8], "pivots");
  kvs_gaussian_merge_params params{};
  params.sigma = static_cast<float>(number_option(options, "sigma"));
  params.value_scale = static_cast<int32_t>(number_option(options, "valueScale"));
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(
        kvs_gaussian_merge(keys, values, scores, assign, lengths, &params, out_keys, out_values, sizes, pivots, nullptr),
        keys);
  });
}

}  // namespace

void register_merge(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionScores", Napi::Function::New<AttentionScores>(env, "attentionScores"));
  exports.Set("mergeSegments", Napi::Function::New<MergeSegments>(env, "mergeSegments"));
  exports.Set("gaussianMerge", Napi::Function::New<GaussianMerge>(env, "gaussianMerge"));
}

}  // namespace kvs::addon
