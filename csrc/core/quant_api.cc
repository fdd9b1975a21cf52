// kvs_quant_encode, kvs_quant_decode, kvs_copy_rows, kvs_kmeans: argument checks (every
// size the kernels index with is proven here) and dispatch to csrc/cpu/quant.cc, kmeans.cc,
// cuda/quant.cu or kmeans.cu.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda_runtime.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/host_copy.h"
#include "core/quant.h"
#include "core/quant_codec.h"
#include "core/tensor.h"

namespace kvs {
namespace {

std::string str(int64_t v) { return std::to_string(v); }

const float* optional_f32(const kvs_tensor* t, bool needed, std::initializer_list<int64_t> dims, const char* arg, const char* doc,
                          const kvs_tensor& ref) {
  if (!needed) return nullptr;
  check_tensor(t, arg);
  check_dtype(*t, {KVS_F32}, arg);
  check_same_device(*t, ref, arg, "keys");
  check_shape(*t, dims, arg, doc);
  return static_cast<const float*>(t->data);
}

QuantFormat read_format(const kvs_quant_format* in, const kvs_tensor& ref) {
  if (!in) throw Error(KVS_E_RANGE, "quant: format is NULL");
  if (in->mode < KVS_QUANT_KIVI2 || in->mode > KVS_QUANT_ROT1_5) throw Error(KVS_E_RANGE, "mode: unknown mode code " + str(in->mode));
  QuantFormat f{};
  f.mode = static_cast<kvs_quant_mode>(in->mode);
  f.D = in->head_dim, f.Hkv = in->kv_heads, f.outliers = in->outliers;
  if (f.D < 8 || f.D > kQuantMaxHeadDim || f.D % 8 != 0)
    throw Error(KVS_E_SHAPE, "headDim: expected a multiple of 8 in 8..256, got " + str(f.D));
  const Codec kc = key_codec(f.mode), vc = value_codec(f.mode);
  if (kc == Codec::Rotation && (f.D & (f.D - 1)) != 0)
    throw Error(KVS_E_SHAPE, "headDim: rotation modes need a power of two, got " + str(f.D));
  if (f.Hkv < 1) throw Error(KVS_E_SHAPE, "kvHeads: expected >= 1, got " + str(f.Hkv));
  const int32_t max_outliers = f.D / 4 < kQuantMaxOutliers ? f.D / 4 : kQuantMaxOutliers;
  if (f.outliers < 0 || f.outliers > max_outliers)
    throw Error(KVS_E_RANGE, "outliers: expected 0.." + str(max_outliers) + " per vector, got " + str(f.outliers));
  if (in->raw_dtype != KVS_F16 && in->raw_dtype != KVS_BF16 && in->raw_dtype != KVS_F32)
    throw Error(KVS_E_DTYPE, "rawDtype: expected f16, bf16 or f32");
  f.raw_dtype = static_cast<kvs_dtype>(in->raw_dtype);
  f.rotation_seed = in->rotation_seed;
  const int64_t H = f.Hkv, D = f.D, groups = D / kVqGroup;
  const bool channel_stats = kc == Codec::NuqChannel || kc == Codec::Vq;
  f.key_codebook = optional_f32(in->key_codebook, kc == Codec::NuqChannel, {kNuqLevels}, "keyCodebook", "[4]", ref);
  f.value_codebook = optional_f32(in->value_codebook, vc == Codec::NuqToken, {kNuqLevels}, "valueCodebook", "[4]", ref);
  f.key_zero = optional_f32(in->key_channel_zero, channel_stats, {H, D}, "keyChannelZero", "[Hkv, D]", ref);
  f.key_range = optional_f32(in->key_channel_range, channel_stats, {H, D}, "keyChannelRange", "[Hkv, D]", ref);
  f.key_inv_range = optional_f32(in->key_channel_inv_range, channel_stats, {H, D}, "keyChannelInvRange", "[Hkv, D]", ref);
  f.key_vq_codebook = optional_f32(in->key_vq_codebook, kc == Codec::Vq, {H, groups, kVqEntries, kVqGroup}, "keyVqCodebook",
                                   "[Hkv, D/8, 256, 8]", ref);
  f.value_vq_codebook = optional_f32(in->value_vq_codebook, vc == Codec::Vq, {H, groups, kVqEntries, kVqGroup}, "valueVqCodebook",
                                     "[Hkv, D/8, 256, 8]", ref);
  return f;
}

Rope read_rope(const kvs_rope* in, int32_t D, const kvs_tensor& ref) {
  Rope r{KVS_ROPE_NONE, nullptr};
  if (!in || in->style == KVS_ROPE_NONE) return r;
  if (in->style != KVS_ROPE_INTERLEAVED && in->style != KVS_ROPE_HALF) throw Error(KVS_E_RANGE, "ropeStyle: unknown style code");
  r.style = static_cast<kvs_rope_style>(in->style);
  r.inv_freq = optional_f32(in->inv_freq, true, {D / 2}, "invFreq", "[D/2]", ref);
  return r;
}

// Page arrays [B, Pcap, Hkv, per page]; returns Pcap.
QuantPages read_pages(const kvs_quant_pages* in, const QuantFormat& f, int64_t B, const kvs_tensor& ref) {
  if (!in) throw Error(KVS_E_RANGE, "quant: pages is NULL");
  QuantPages pages{};
  check_tensor(in->key_codes, "keyCodes");
  check_rank(*in->key_codes, 4, "keyCodes");
  pages.capacity = in->key_codes->shape[1];
  const int64_t H = f.Hkv, cap = pages.capacity;
  const auto page_array = [&](const kvs_tensor* t, bool needed, kvs_dtype dtype, int64_t per_page, const char* arg) -> void* {
    if (!needed) return nullptr;
    check_tensor(t, arg);
    check_dtype(*t, {dtype}, arg);
    check_same_device(*t, ref, arg, "keys");
    check_shape(*t, {B, cap, H, per_page}, arg, "[B, Pcap, Hkv, per page]");
    return t->data;
  };
  const Codec kc = key_codec(f.mode), vc = value_codec(f.mode);
  const int64_t slots = static_cast<int64_t>(kQuantPageTokens) * f.outliers;
  pages.key_codes = static_cast<uint32_t*>(page_array(in->key_codes, true, KVS_U32, words_per_page(f.mode, kc, f.D), "keyCodes"));
  pages.value_codes = static_cast<uint32_t*>(page_array(in->value_codes, true, KVS_U32, words_per_page(f.mode, vc, f.D), "valueCodes"));
  pages.key_meta = static_cast<uint16_t*>(page_array(in->key_meta, meta_per_page(kc, f.D) > 0, KVS_U16, meta_per_page(kc, f.D), "keyMeta"));
  pages.value_meta =
      static_cast<uint16_t*>(page_array(in->value_meta, meta_per_page(vc, f.D) > 0, KVS_U16, meta_per_page(vc, f.D), "valueMeta"));
  const bool sparse = f.outliers > 0;
  pages.key_outlier_index = static_cast<uint8_t*>(page_array(in->key_outlier_index, sparse, KVS_U8, slots, "keyOutlierIndex"));
  pages.key_outlier_value = static_cast<uint16_t*>(page_array(in->key_outlier_value, sparse, KVS_U16, slots, "keyOutlierValue"));
  pages.value_outlier_index = static_cast<uint8_t*>(page_array(in->value_outlier_index, sparse, KVS_U8, slots, "valueOutlierIndex"));
  pages.value_outlier_value = static_cast<uint16_t*>(page_array(in->value_outlier_value, sparse, KVS_U16, slots, "valueOutlierValue"));
  return pages;
}

void check_count(int64_t value, int64_t low, int64_t high, const char* what) {
  if (value < low || value > high) throw Error(KVS_E_RANGE, std::string(what) + ": expected " + str(low) + ".." + str(high) + ", got " + str(value));
}

}  // namespace
}  // namespace kvs

using namespace kvs;

extern "C" kvs_status kvs_quant_encode(const kvs_quant_format* format, const kvs_rope* rope, const kvs_tensor* keys,
                                       const kvs_tensor* values, const kvs_tensor* positions, int64_t position_offset,
                                       int64_t src_start, const kvs_quant_pages* pages, int64_t page_start, int64_t n_pages,
                                       void* stream) {
  (void)stream;  // only the CUDA path uses it
  return guarded([&] {
    check_tensor(keys, "keys");
    check_rank(*keys, 4, "keys");
    check_dtype(*keys, {KVS_F32, KVS_F16, KVS_BF16}, "keys");
    QuantEncodeProblem p{};
    p.format = read_format(format, *keys);
    const int64_t B = keys->shape[0], Ts = keys->shape[2];
    check_shape(*keys, {B, p.format.Hkv, Ts, p.format.D}, "keys", "[B, kvHeads, T, headDim]");
    check_tensor(values, "values");
    check_dtype(*values, {static_cast<kvs_dtype>(keys->dtype)}, "values");
    check_same_device(*values, *keys, "values", "keys");
    check_shape(*values, {B, p.format.Hkv, Ts, p.format.D}, "values", "[B, kvHeads, T, headDim]");
    p.rope = read_rope(rope, p.format.D, *keys);
    if (positions) {
      check_tensor(positions, "positions");
      check_dtype(*positions, {KVS_I32}, "positions");
      check_same_device(*positions, *keys, "positions", "keys");
      check_shape(*positions, {B, Ts}, "positions", "[B, T]");
      p.positions = static_cast<const int32_t*>(positions->data);
    }
    p.pages = read_pages(pages, p.format, B, *keys);
    check_count(n_pages, 0, p.pages.capacity, "pages to encode");
    check_count(page_start, 0, p.pages.capacity - n_pages, "first page");
    check_count(src_start, 0, Ts - n_pages * kQuantPageTokens, "first source token");
    if (n_pages == 0) return;
    p.keys = keys->data, p.values = values->data;
    p.dtype = static_cast<kvs_dtype>(keys->dtype);
    p.position_offset = position_offset;
    p.B = B, p.Ts = Ts, p.src_start = src_start, p.page_start = page_start, p.n_pages = n_pages;
    p.device = keys->device_index;
    dispatch(*keys, "quantize", [&] { cpu::quant_encode(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::quant_encode(p, stream);
#endif
    });
  });
}

namespace kvs {
namespace {

// The cache of kvs_quant_decode / kvs_quant_attention for B sequences, on ref's device.
QuantDecodeProblem read_cache(const kvs_quant_format* format, const kvs_rope* rope, const kvs_quant_cache* cache, const kvs_tensor& ref,
                              int64_t B) {
  if (!cache) throw Error(KVS_E_RANGE, "quant: cache is NULL");
  QuantDecodeProblem p{};
  p.format = read_format(format, ref);
  const int64_t H = p.format.Hkv, D = p.format.D;
  p.rope = read_rope(rope, p.format.D, ref);
  p.n_pages = cache->n_pages;
  if (p.n_pages > 0) {
    p.pages = read_pages(&cache->pages, p.format, B, ref);
    check_count(p.n_pages, 0, p.pages.capacity, "pages");
  }
  check_count(p.n_pages, 0, INT32_MAX / kQuantPageTokens, "pages");
  check_count(cache->sink_tokens, 0, INT32_MAX, "sink tokens");
  check_count(cache->recent_tokens, 0, INT32_MAX, "recent tokens");
  p.sink = cache->sink_tokens, p.recent = cache->recent_tokens;
  const int64_t T = p.sink + p.n_pages * kQuantPageTokens + p.recent;
  if (T == 0) throw Error(KVS_E_SHAPE, "quant: the cache holds no tokens");
  if (p.sink + p.recent > 0) {
    check_tensor(cache->raw_keys, "rawKeys");
    check_dtype(*cache->raw_keys, {p.format.raw_dtype}, "rawKeys");
    check_same_device(*cache->raw_keys, ref, "rawKeys", "keys");
    check_shape(*cache->raw_keys, {B, H, -1, D}, "rawKeys", "[B, kvHeads, Rcap, headDim]");
    p.raw_capacity = cache->raw_keys->shape[2];
    check_count(p.sink + p.recent, 0, p.raw_capacity, "sink + recent tokens");
    check_tensor(cache->raw_values, "rawValues");
    check_dtype(*cache->raw_values, {p.format.raw_dtype}, "rawValues");
    check_same_device(*cache->raw_values, ref, "rawValues", "keys");
    check_shape(*cache->raw_values, {B, H, p.raw_capacity, D}, "rawValues", "[B, kvHeads, Rcap, headDim]");
    p.raw_keys = cache->raw_keys->data, p.raw_values = cache->raw_values->data;
  }
  if (cache->positions) {
    check_tensor(cache->positions, "positions");
    check_dtype(*cache->positions, {KVS_I32}, "positions");
    check_same_device(*cache->positions, ref, "positions", "keys");
    check_shape(*cache->positions, {B, -1}, "positions", "[B, >= tokens]");
    if (cache->positions->shape[1] < T) throw Error(KVS_E_SHAPE, "positions: fewer than the cache's " + str(T) + " tokens");
    p.positions = static_cast<const int32_t*>(cache->positions->data);
    p.positions_stride = cache->positions->shape[1];
  }
  p.B = B;
  p.device = ref.device_index;
  return p;
}

int64_t cache_tokens(const QuantDecodeProblem& p) { return p.sink + p.n_pages * kQuantPageTokens + p.recent; }

}  // namespace
}  // namespace kvs

extern "C" kvs_status kvs_quant_decode(const kvs_quant_format* format, const kvs_rope* rope, const kvs_quant_cache* cache,
                                       int32_t apply_rope, const kvs_tensor* out_keys, const kvs_tensor* out_values, void* stream) {
  (void)stream;  // only the CUDA path uses it
  return guarded([&] {
    check_tensor(out_keys, "outKeys");
    check_rank(*out_keys, 4, "outKeys");
    check_dtype(*out_keys, {KVS_F32}, "outKeys");
    QuantDecodeProblem p = read_cache(format, rope, cache, *out_keys, out_keys->shape[0]);
    if (apply_rope && p.rope.style == KVS_ROPE_NONE) throw Error(KVS_E_RANGE, "applyRope: the cache has no RoPE to apply");
    p.apply_rope = apply_rope != 0;
    const int64_t T = cache_tokens(p);
    check_shape(*out_keys, {p.B, p.format.Hkv, T, p.format.D}, "outKeys", "[B, kvHeads, tokens, headDim]");
    check_tensor(out_values, "outValues");
    check_dtype(*out_values, {KVS_F32}, "outValues");
    check_same_device(*out_values, *out_keys, "outValues", "outKeys");
    check_shape(*out_values, {p.B, p.format.Hkv, T, p.format.D}, "outValues", "[B, kvHeads, tokens, headDim]");
    p.out_keys = static_cast<float*>(out_keys->data), p.out_values = static_cast<float*>(out_values->data);
    dispatch(*out_keys, "dequantize", [&] { cpu::quant_decode(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::quant_decode(p, stream);
#endif
    });
  });
}

extern "C" kvs_status kvs_quant_attention(const kvs_quant_format* format, const kvs_rope* rope, const kvs_quant_cache* cache,
                                          const kvs_tensor* q, const kvs_quant_attention_params* params, const kvs_tensor* out,
                                          const kvs_tensor* lse, void* stream) {
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "quantizedAttention: params is NULL");
    check_tensor(q, "q");
    check_rank(*q, 4, "q");
    check_dtype(*q, {KVS_F32, KVS_F16, KVS_BF16}, "q");
    QuantAttentionProblem p{};
    p.cache = read_cache(format, rope, cache, *q, q->shape[0]);
    p.cache.apply_rope = p.cache.rope.style != KVS_ROPE_NONE;
    const int64_t B = p.cache.B, Hkv = p.cache.format.Hkv, D = p.cache.format.D;
    p.Hq = q->shape[1], p.Tq = q->shape[2], p.T = cache_tokens(p.cache);
    check_shape(*q, {B, -1, -1, D}, "q", "[B, qHeads, qTokens, headDim]");
    if (p.Hq % Hkv != 0) throw Error(KVS_E_SHAPE, "q: qHeads " + str(p.Hq) + " is not a multiple of the cache's kvHeads " + str(Hkv));
    check_count(p.Tq, 1, kQuantAttentionMaxQueries, "q tokens (decode steps)");
    check_tensor(out, "out");
    check_dtype(*out, {KVS_F32, KVS_F16, KVS_BF16}, "out");
    check_same_device(*out, *q, "out", "q");
    check_shape(*out, {B, p.Hq, p.Tq, D}, "out", "[B, qHeads, qTokens, headDim]");
    if (lse) {
      check_tensor(lse, "lse");
      check_dtype(*lse, {KVS_F32}, "lse");
      check_same_device(*lse, *q, "lse", "q");
      check_shape(*lse, {B, p.Hq, p.Tq}, "lse", "[B, qHeads, qTokens]");
      p.lse = static_cast<float*>(lse->data);
    }
    if (params->kv_lengths) {
      const kvs_tensor* lengths = params->kv_lengths;
      check_tensor(lengths, "kvLengths");
      check_dtype(*lengths, {KVS_I32}, "kvLengths");
      check_same_device(*lengths, *q, "kvLengths", "q");
      check_shape(*lengths, {B, Hkv}, "kvLengths", "[B, kvHeads]");
      for (int32_t len : copy_i32_to_host(*lengths, stream))
        if (len < 0 || len > p.T) throw Error(KVS_E_RANGE, "kvLengths: expected values in 0.." + str(p.T) + ", got " + str(len));
      p.kv_lengths = static_cast<const int32_t*>(lengths->data);
    }
    if (!std::isfinite(params->scale)) throw Error(KVS_E_RANGE, "scale: expected a finite number");
    p.scale = params->scale;
    p.causal = params->causal != 0;
    p.q = q->data, p.q_dtype = static_cast<kvs_dtype>(q->dtype);
    p.out = out->data, p.out_dtype = static_cast<kvs_dtype>(out->dtype);
    dispatch(*q, "quantizedAttention", [&] { cpu::quant_attention(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::quant_attention(p, stream);
#endif
    });
  });
}

extern "C" kvs_status kvs_copy_rows(const kvs_tensor* src, int32_t axis, int64_t src_start, const kvs_tensor* dst, int64_t dst_start,
                                    int64_t count, void* stream) {
  (void)stream;  // only the CUDA path uses it
  return guarded([&] {
    check_tensor(src, "src");
    check_tensor(dst, "dst");
    check_same_device(*dst, *src, "dst", "src");
    if (src->rank != dst->rank) throw Error(KVS_E_SHAPE, "dst: expected the rank of src " + shape_string(*src) + ", got " + shape_string(*dst));
    check_count(axis, 0, src->rank - 1, "axis");
    CopyRowsProblem p{};
    p.outer = 1, p.inner = 1;
    for (int i = 0; i < src->rank; ++i) {
      if (i != axis && src->shape[i] != dst->shape[i])
        throw Error(KVS_E_SHAPE, "dst: dimensions other than axis " + str(axis) + " must match src " + shape_string(*src) + ", got " +
                                     shape_string(*dst));
      if (i < axis) p.outer *= src->shape[i];
      if (i > axis) p.inner *= src->shape[i];
    }
    p.src_rows = src->shape[axis], p.dst_rows = dst->shape[axis];
    check_count(count, 0, p.src_rows, "count");
    check_count(src_start, 0, p.src_rows - count, "source start");
    check_count(dst_start, 0, p.dst_rows - count, "destination start");
    const bool both_float = is_float_dtype(src->dtype) && is_float_dtype(dst->dtype);
    if (!both_float && src->dtype != dst->dtype)
      throw Error(KVS_E_DTYPE, std::string("dst: integer rows copy only to the same dtype (") + dtype_name(src->dtype) + "), got " +
                                   dtype_name(dst->dtype));
    if (count == 0) return;
    p.src = src->data, p.dst = dst->data;
    p.src_dtype = static_cast<kvs_dtype>(src->dtype), p.dst_dtype = static_cast<kvs_dtype>(dst->dtype);
    p.src_start = src_start, p.dst_start = dst_start, p.count = count;
    p.overlapping = src->data == dst->data;
    p.device = src->device_index;
    dispatch(*src, "copyRows", [&] { cpu::copy_rows(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::copy_rows(p, stream);
#endif
    });
  });
}

namespace kvs {
namespace {

// kmeans reads every value on the host to check it, wherever the tensors live.
void check_kmeans_values(const float* data, const float* weights, int64_t points, int64_t dim) {
  for (int64_t i = 0; i < points * dim; ++i)
    if (!std::isfinite(data[i])) throw Error(KVS_E_RANGE, "data: holds NaN or infinity");
  for (int64_t i = 0; weights && i < points; ++i)
    if (!(weights[i] >= 0.f) || !std::isfinite(weights[i])) throw Error(KVS_E_RANGE, "weights: expected finite values >= 0");
}

#ifdef KVSQUASH_WITH_CUDA
std::vector<float> f32_to_host(const float* device_data, int64_t count, int device, void* stream) {
  std::vector<float> host(static_cast<size_t>(count));
  cuda::memcpy(host.data(), device_data, host.size() * sizeof(float), KVS_COPY_DEVICE_TO_HOST, device, stream);
  cuda::synchronize(device, stream);
  return host;
}
#endif

}  // namespace
}  // namespace kvs

extern "C" kvs_status kvs_kmeans(const kvs_tensor* data, const kvs_tensor* weights, const kvs_kmeans_params* params,
                                 const kvs_tensor* centroids, void* stream) {
  (void)stream;  // only the CUDA path uses it
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "kmeans: params is NULL");
    check_tensor(data, "data");
    check_rank(*data, 3, "data");
    check_dtype(*data, {KVS_F32}, "data");
    const int64_t G = data->shape[0], N = data->shape[1], dim = data->shape[2];
    check_count(params->k, 1, N, "k");
    check_count(params->iterations, 0, 100000, "iterations");
    KmeansProblem p{};
    if (weights) {
      check_tensor(weights, "weights");
      check_dtype(*weights, {KVS_F32}, "weights");
      check_same_device(*weights, *data, "weights", "data");
      check_shape(*weights, {G, N}, "weights", "[G, N]");
      p.weights = static_cast<const float*>(weights->data);
    }
    check_tensor(centroids, "centroids");
    check_dtype(*centroids, {KVS_F32}, "centroids");
    check_same_device(*centroids, *data, "centroids", "data");
    check_shape(*centroids, {G, params->k, dim}, "centroids", "[G, k, dim]");
    p.data = static_cast<const float*>(data->data);
    p.centroids = static_cast<float*>(centroids->data);
    p.G = G, p.N = N, p.dim = dim, p.k = params->k, p.iterations = params->iterations, p.seed = params->seed;
    p.device = data->device_index;
    dispatch(*data, "kmeans", [&] {
      check_kmeans_values(p.data, p.weights, G * N, dim);
      cpu::kmeans(p);
    }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      // A copy just for the checks: cuda::kmeans copies the data to the host once more for its
      // k-means++ start, a few milliseconds beside that start's seconds.
      const std::vector<float> host_data = f32_to_host(p.data, G * N * dim, p.device, stream);
      const std::vector<float> host_weights = p.weights ? f32_to_host(p.weights, G * N, p.device, stream) : std::vector<float>();
      check_kmeans_values(host_data.data(), p.weights ? host_weights.data() : nullptr, G * N, dim);
      cuda::kmeans(p, stream);
#endif
    });
  });
}
