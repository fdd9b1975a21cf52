// The four pyramid stages (csrc/core/pyramid.h); outputs preallocated by lib/ops/pyramid.ts:
//   pyramidPool(k, v, pooledKeys[3], pooledValues[3], {block})
//   pyramidImportance(q, k, importance, {block, queryBlock, sampleQueries, sampleKeys, seed,
//                     scale, causal, kvHeadMask})
//   pyramidAssign(importance, levelMap, lists, counts, {block, queryBlock, qTokens, kvTokens,
//                 causal, threshold, bounds[4], minFull, forceSink, forceDiagonal})
//   pyramidAttend(q, k, v, pooledKeys[3], pooledValues[3], lists, counts, out, lse|null,
//                 {block, queryBlock, scale, causal})
// each -> Promise<void>
#include <array>
#include <string>

#include "addon/async_op.h"
#include "addon/bindings.h"
#include "addon/errors.h"
#include "addon/options.h"
#include "addon/tensor_arg.h"

namespace kvs::addon {
namespace {

using LevelViews = std::array<const kvs_tensor*, 3>;

// An array of the three pooled levels (2, 4, 8).
LevelViews pin_levels(TensorPins& pins, Napi::Value value, const char* arg) {
  if (!value.IsArray() || value.As<Napi::Array>().Length() != 3)
    throw_error(value.Env(), KVS_E_SHAPE, std::string(arg) + ": expected an array of 3 tensors (levels 2, 4, 8)");
  Napi::Array array = value.As<Napi::Array>();
  LevelViews views{};
  for (uint32_t i = 0; i < 3; ++i) views[i] = pins.pin(array.Get(i), arg);
  return views;
}

bool flag_option(Napi::Object options, const char* name) { return options.Get(name).ToBoolean(); }

Napi::Value PyramidPool(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 4, "pyramidPool");
  TensorPins pins;
  const kvs_tensor* k = pins.pin(info[0], "k");
  const kvs_tensor* v = pins.pin(info[1], "v");
  const LevelViews keys = pin_levels(pins, info[2], "pooledKeys");
  const LevelViews values = pin_levels(pins, info[3], "pooledValues");
  kvs_pyramid_pool_params params{};
  params.block = static_cast<int64_t>(number_option(options, "block"));
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(kvs_pyramid_pool(k, v, &params, keys.data(), values.data(), nullptr), k);
  });
}

Napi::Value PyramidImportance(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 3, "pyramidImportance");
  TensorPins pins;
  const kvs_tensor* q = pins.pin(info[0], "q");
  const kvs_tensor* k = pins.pin(info[1], "k");
  const kvs_tensor* importance = pins.pin(info[2], "importance");
  kvs_pyramid_importance_params params{};
  params.block = static_cast<int64_t>(number_option(options, "block"));
  params.query_block = static_cast<int64_t>(number_option(options, "queryBlock"));
  params.sample_queries = static_cast<int64_t>(number_option(options, "sampleQueries"));
  params.sample_keys = static_cast<int64_t>(number_option(options, "sampleKeys"));
  params.seed = static_cast<uint32_t>(number_option(options, "seed"));
  params.scale = static_cast<float>(number_option(options, "scale"));
  params.causal = flag_option(options, "causal") ? 1 : 0;
  params.mask = flag_option(options, "kvHeadMask") ? KVS_PYRAMID_MASK_KVHEAD : KVS_PYRAMID_MASK_QHEAD;
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(kvs_pyramid_importance(q, k, &params, importance, nullptr), q);
  });
}

Napi::Value PyramidAssign(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 4, "pyramidAssign");
  TensorPins pins;
  const kvs_tensor* importance = pins.pin(info[0], "importance");
  const kvs_tensor* level_map = pins.pin(info[1], "levelMap");
  const kvs_tensor* lists = pins.pin(info[2], "lists");
  const kvs_tensor* counts = pins.pin(info[3], "counts");
  kvs_pyramid_assign_params params{};
  params.block = static_cast<int64_t>(number_option(options, "block"));
  params.query_block = static_cast<int64_t>(number_option(options, "queryBlock"));
  params.q_tokens = static_cast<int64_t>(number_option(options, "qTokens"));
  params.kv_tokens = static_cast<int64_t>(number_option(options, "kvTokens"));
  params.causal = flag_option(options, "causal") ? 1 : 0;
  params.mode = flag_option(options, "threshold") ? KVS_PYRAMID_THRESHOLD : KVS_PYRAMID_TOPK;
  Napi::Value bounds = options.Get("bounds");
  if (!bounds.IsArray() || bounds.As<Napi::Array>().Length() != 4)
    throw_error(info.Env(), KVS_E_RANGE, "bounds: expected 4 numbers");
  for (uint32_t i = 0; i < 4; ++i) {
    Napi::Value b = bounds.As<Napi::Array>().Get(i);
    if (!b.IsNumber()) throw_error(info.Env(), KVS_E_RANGE, "bounds: expected 4 numbers");
    params.bounds[i] = b.As<Napi::Number>().FloatValue();
  }
  params.min_full_fraction = static_cast<float>(number_option(options, "minFull"));
  params.force_sink = flag_option(options, "forceSink") ? 1 : 0;
  params.force_diagonal = flag_option(options, "forceDiagonal") ? 1 : 0;
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(kvs_pyramid_assign(importance, &params, level_map, lists, counts, nullptr), importance);
  });
}

Napi::Value PyramidAttend(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 9, "pyramidAttention");
  TensorPins pins;
  const kvs_tensor* q = pins.pin(info[0], "q");
  const kvs_tensor* k = pins.pin(info[1], "k");
  const kvs_tensor* v = pins.pin(info[2], "v");
  const LevelViews keys = pin_levels(pins, info[3], "pooledKeys");
  const LevelViews values = pin_levels(pins, info[4], "pooledValues");
  const kvs_tensor* lists = pins.pin(info[5], "lists");
  const kvs_tensor* counts = pins.pin(info[6], "counts");
  const kvs_tensor* out = pins.pin(info[7], "out");
  const kvs_tensor* lse = pins.pin_optional(info[8], "lse");
  kvs_pyramid_attend_params params{};
  params.block = static_cast<int64_t>(number_option(options, "block"));
  params.query_block = static_cast<int64_t>(number_option(options, "queryBlock"));
  params.scale = static_cast<float>(number_option(options, "scale"));
  params.causal = flag_option(options, "causal") ? 1 : 0;
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(
        kvs_pyramid_attend(q, k, v, keys.data(), values.data(), lists, counts, &params, out, lse, nullptr), q);
  });
}

}  // namespace

void register_pyramid(Napi::Env env, Napi::Object exports) {
  exports.Set("pyramidPool", Napi::Function::New<PyramidPool>(env, "pyramidPool"));
  exports.Set("pyramidImportance", Napi::Function::New<PyramidImportance>(env, "pyramidImportance"));
  exports.Set("pyramidAssign", Napi::Function::New<PyramidAssign>(env, "pyramidAssign"));
  exports.Set("pyramidAttend", Napi::Function::New<PyramidAttend>(env, "pyramidAttend"));
}

}  // namespace kvs::addon
