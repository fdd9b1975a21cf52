// Quantization bindings, each -> Promise<void> (outputs are preallocated by lib/ops/quant.ts):
//   quantEncode(format, rope, keys, values, positions|null, pages,
//               {positionOffset, srcStart, pageStart, pageCount})
//   quantDecode(format, rope, cache, outKeys, outValues, {applyRope})
//   quantAttention(format, rope, cache, q, out, lse|null, {scale, causal, kvLengths?})
//   copyRows(src, dst, {axis, srcStart, dstStart, count})
//   kmeans(data, weights|null, centroids, {k, iterations, seed})
// format = {mode, headDim, kvHeads, outliers, rawDtype, rotationSeed, keyCodebook?, ...},
// rope = {style, invFreq?}, pages = {keyCodes, valueCodes, keyMeta?, ...},
// cache = {pages, pageCount, rawKeys?, rawValues?, sinkTokens, recentTokens, positions?}.
#include "addon/async_op.h"
#include "addon/bindings.h"
#include "addon/options.h"
#include "addon/tensor_arg.h"

namespace kvs::addon {
namespace {

Napi::Object object_option(Napi::Value value, const char* name) {
  if (!value.IsObject()) throw_error(value.Env(), KVS_E_RANGE, std::string(name) + ": expected an object");
  return value.As<Napi::Object>();
}

kvs_quant_format read_format(Napi::Value value, TensorPins& pins) {
  Napi::Object o = object_option(value, "format");
  kvs_quant_format f{};
  f.mode = static_cast<int32_t>(number_option(o, "mode"));
  f.head_dim = static_cast<int32_t>(number_option(o, "headDim"));
  f.kv_heads = static_cast<int32_t>(number_option(o, "kvHeads"));
  f.outliers = static_cast<int32_t>(number_option(o, "outliers"));
  f.raw_dtype = static_cast<int32_t>(number_option(o, "rawDtype"));
  f.rotation_seed = static_cast<uint64_t>(number_option(o, "rotationSeed"));
  f.key_codebook = pins.pin_optional(o.Get("keyCodebook"), "keyCodebook");
  f.value_codebook = pins.pin_optional(o.Get("valueCodebook"), "valueCodebook");
  f.key_channel_zero = pins.pin_optional(o.Get("keyChannelZero"), "keyChannelZero");
  f.key_channel_range = pins.pin_optional(o.Get("keyChannelRange"), "keyChannelRange");
  f.key_channel_inv_range = pins.pin_optional(o.Get("keyChannelInvRange"), "keyChannelInvRange");
  f.key_vq_codebook = pins.pin_optional(o.Get("keyVqCodebook"), "keyVqCodebook");
  f.value_vq_codebook = pins.pin_optional(o.Get("valueVqCodebook"), "valueVqCodebook");
  return f;
}

kvs_rope read_rope(Napi::Value value, TensorPins& pins) {
  Napi::Object o = object_option(value, "rope");
  kvs_rope r{};
  r.style = static_cast<int32_t>(number_option(o, "style"));
  r.inv_freq = pins.pin_optional(o.Get("invFreq"), "invFreq");
  return r;
}

kvs_quant_pages read_pages(Napi::Value value, TensorPins& pins) {
  Napi::Object o = object_option(value, "pages");
  kvs_quant_pages p{};
  p.key_codes = pins.pin(o.Get("keyCodes"), "keyCodes");
  p.value_codes = pins.pin(o.Get("valueCodes"), "valueCodes");
  p.key_meta = pins.pin_optional(o.Get("keyMeta"), "keyMeta");
  p.value_meta = pins.pin_optional(o.Get("valueMeta"), "valueMeta");
  p.key_outlier_index = pins.pin_optional(o.Get("keyOutlierIndex"), "keyOutlierIndex");
  p.key_outlier_value = pins.pin_optional(o.Get("keyOutlierValue"), "keyOutlierValue");
  p.value_outlier_index = pins.pin_optional(o.Get("valueOutlierIndex"), "valueOutlierIndex");
  p.value_outlier_value = pins.pin_optional(o.Get("valueOutlierValue"), "valueOutlierValue");
  return p;
}

Napi::Value QuantEncode(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 6, "quantize");
  TensorPins pins;
  const kvs_quant_format format = read_format(info[0], pins);
  const kvs_rope rope = read_rope(info[1], pins);
  const kvs_tensor* keys = pins.pin(info[2], "keys");
  const kvs_tensor* values = pins.pin(info[3], "values");
  const kvs_tensor* positions = pins.pin_optional(info[4], "positions");
  const kvs_quant_pages pages = read_pages(info[5], pins);
  const auto position_offset = static_cast<int64_t>(number_option(options, "positionOffset"));
  const auto src_start = static_cast<int64_t>(number_option(options, "srcStart"));
  const auto page_start = static_cast<int64_t>(number_option(options, "pageStart"));
  const auto page_count = static_cast<int64_t>(number_option(options, "pageCount"));
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(kvs_quant_encode(&format, &rope, keys, values, positions, position_offset, src_start, &pages, page_start,
                                            page_count, nullptr),
                           keys);
  });
}

kvs_quant_cache read_cache(Napi::Value value, TensorPins& pins) {
  Napi::Object c = object_option(value, "cache");
  kvs_quant_cache cache{};
  cache.n_pages = static_cast<int64_t>(number_option(c, "pageCount"));
  if (cache.n_pages > 0) cache.pages = read_pages(c.Get("pages"), pins);
  cache.raw_keys = pins.pin_optional(c.Get("rawKeys"), "rawKeys");
  cache.raw_values = pins.pin_optional(c.Get("rawValues"), "rawValues");
  cache.sink_tokens = static_cast<int64_t>(number_option(c, "sinkTokens"));
  cache.recent_tokens = static_cast<int64_t>(number_option(c, "recentTokens"));
  cache.positions = pins.pin_optional(c.Get("positions"), "positions");
  return cache;
}

Napi::Value QuantDecode(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 5, "dequantize");
  TensorPins pins;
  const kvs_quant_format format = read_format(info[0], pins);
  const kvs_rope rope = read_rope(info[1], pins);
  const kvs_quant_cache cache = read_cache(info[2], pins);
  const kvs_tensor* out_keys = pins.pin(info[3], "outKeys");
  const kvs_tensor* out_values = pins.pin(info[4], "outValues");
  const int32_t apply_rope = options.Get("applyRope").ToBoolean() ? 1 : 0;
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(kvs_quant_decode(&format, &rope, &cache, apply_rope, out_keys, out_values, nullptr), out_keys);
  });
}

Napi::Value QuantAttention(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 6, "quantizedAttention");
  TensorPins pins;
  const kvs_quant_format format = read_format(info[0], pins);
  const kvs_rope rope = read_rope(info[1], pins);
  const kvs_quant_cache cache = read_cache(info[2], pins);
  const kvs_tensor* q = pins.pin(info[3], "q");
  const kvs_tensor* out = pins.pin(info[4], "out");
  const kvs_tensor* lse = pins.pin_optional(info[5], "lse");
  kvs_quant_attention_params params{};
  params.scale = static_cast<float>(number_option(options, "scale"));
  params.causal = options.Get("causal").ToBoolean() ? 1 : 0;
  params.kv_lengths = pins.pin_optional(options.Get("kvLengths"), "kvLengths");
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(kvs_quant_attention(&format, &rope, &cache, q, &params, out, lse, nullptr), q);
  });
}

Napi::Value CopyRows(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 2, "copyRows");
  TensorPins pins;
  const kvs_tensor* src = pins.pin(info[0], "src");
  const kvs_tensor* dst = pins.pin(info[1], "dst");
  const auto axis = static_cast<int32_t>(number_option(options, "axis"));
  const auto src_start = static_cast<int64_t>(number_option(options, "srcStart"));
  const auto dst_start = static_cast<int64_t>(number_option(options, "dstStart"));
  const auto count = static_cast<int64_t>(number_option(options, "count"));
  return AsyncOp::Start(info.Env(), std::move(pins), [=] {
    return wait_for_device(kvs_copy_rows(src, axis, src_start, dst, dst_start, count, nullptr), src);
  });
}

Napi::Value Kmeans(const Napi::CallbackInfo& info) {
  Napi::Object options = options_arg(info, 3, "kmeans");
  TensorPins pins;
  const kvs_tensor* data = pins.pin(info[0], "data");
  const kvs_tensor* weights = pins.pin_optional(info[1], "weights");
  const kvs_tensor* centroids = pins.pin(info[2], "centroids");
  kvs_kmeans_params params{};
  params.k = static_cast<int64_t>(number_option(options, "k"));
  params.iterations = static_cast<int32_t>(number_option(options, "iterations"));
  params.seed = static_cast<uint64_t>(number_option(options, "seed"));
  return AsyncOp::Start(info.Env(), std::move(pins),
                        [=] { return wait_for_device(kvs_kmeans(data, weights, &params, centroids, nullptr), data); });
}

}  // namespace

void register_quant(Napi::Env env, Napi::Object exports) {
  exports.Set("quantEncode", Napi::Function::New<QuantEncode>(env, "quantEncode"));
  exports.Set("quantDecode", Napi::Function::New<QuantDecode>(env, "quantDecode"));
  exports.Set("quantAttention", Napi::Function::New<QuantAttention>(env, "quantAttention"));
  exports.Set("copyRows", Napi::Function::New<CopyRows>(env, "copyRows"));
  exports.Set("kmeans", Napi::Function::New<Kmeans>(env, "kmeans"));
}

}  // namespace kvs::addon
