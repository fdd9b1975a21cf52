// kvs_pyramid_pool / _importance / _assign / _attend: argument checks, then dispatch to
// csrc/cpu/pyramid.cc or cuda/pyramid.cu (definitions in csrc/core/pyramid.h).
#include <cmath>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "core/error.h"
#include "core/host_copy.h"
#include "core/pyramid.h"
#include "core/tensor.h"

namespace kvs {
namespace {

const char* const kPooledKeyNames[] = {"pooledKeys[0] (level 2)", "pooledKeys[1] (level 4)", "pooledKeys[2] (level 8)"};
const char* const kPooledValueNames[] = {"pooledValues[0] (level 2)", "pooledValues[1] (level 4)",
                                         "pooledValues[2] (level 8)"};

bool power_of_two_in(int64_t x, int64_t lo, int64_t hi) { return x >= lo && x <= hi && (x & (x - 1)) == 0; }

void check_block(int64_t block) {
  if (!power_of_two_in(block, 8, 128))
    throw Error(KVS_E_RANGE, "block: expected 8, 16, 32, 64 or 128 tokens, got " + std::to_string(block));
}

void check_blocks(int64_t block, int64_t query_block) {
  check_block(block);
  if (!power_of_two_in(query_block, 16, 128))
    throw Error(KVS_E_RANGE, "queryBlock: expected 16, 32, 64 or 128 rows, got " + std::to_string(query_block));
}

void check_key_blocks(int64_t Tk, int64_t block) {
  if (pyramid_blocks(Tk, block) > kPyramidMaxKeyBlocks)
    throw Error(KVS_E_RANGE, "k: " + std::to_string(Tk) + " tokens make " + std::to_string(pyramid_blocks(Tk, block)) +
                                 " key blocks of " + std::to_string(block) + "; at most " +
                                 std::to_string(kPyramidMaxKeyBlocks) + " are supported (use a larger block)");
}

void check_head_dim(int64_t D, const char* arg) {
  if (D < 8 || D > 256 || D % 8 != 0)
    throw Error(KVS_E_SHAPE, std::string(arg) + ": expected a head dim that is a multiple of 8 in 8..256, got " +
                                 std::to_string(D));
}

// One float tensor [B, H, T, D] of the given dtype on ref's device.
void check_float4(const kvs_tensor* t, const char* arg, kvs_dtype dtype, const kvs_tensor& ref, const char* ref_arg) {
  check_tensor(t, arg);
  check_rank(*t, 4, arg);
  check_dtype(*t, {dtype}, arg);
  check_same_device(*t, ref, arg, ref_arg);
}

void check_output(const kvs_tensor* t, std::initializer_list<int64_t> dims, kvs_dtype dtype, const kvs_tensor& ref,
                  const char* arg, const char* ref_arg, const char* doc) {
  check_tensor(t, arg);
  check_dtype(*t, {dtype}, arg);
  check_same_device(*t, ref, arg, ref_arg);
  check_shape(*t, dims, arg, doc);
}

// q [B, Hq, Tq, D] and k, v [B, Hkv, Tk, D] of one float dtype (v optional).
struct QkvShape {
  kvs_dtype dtype;
  int64_t B, Hq, Hkv, Tq, Tk, D;
};

QkvShape check_qkv(const kvs_tensor* q, const kvs_tensor* k, const kvs_tensor* v) {
  check_tensor(q, "q");
  check_rank(*q, 4, "q");
  check_dtype(*q, {KVS_F32, KVS_F16, KVS_BF16}, "q");
  QkvShape s{};
  s.dtype = static_cast<kvs_dtype>(q->dtype);
  check_float4(k, "k", s.dtype, *q, "q");
  s.B = q->shape[0], s.Hq = q->shape[1], s.Tq = q->shape[2], s.D = q->shape[3];
  check_shape(*k, {s.B, -1, -1, s.D}, "k", "[B, Hkv, Tk, D]");
  s.Hkv = k->shape[1], s.Tk = k->shape[2];
  if (v) {
    check_float4(v, "v", s.dtype, *q, "q");
    check_shape(*v, {s.B, s.Hkv, s.Tk, s.D}, "v", "[B, Hkv, Tk, D]");
  }
  if (s.Hq % s.Hkv != 0)
    throw Error(KVS_E_SHAPE, "k: KV heads (" + std::to_string(s.Hkv) + ") must divide query heads (" + std::to_string(s.Hq) + ")");
  check_head_dim(s.D, "q");
  return s;
}

// The pooled levels of kvs_pyramid_pool for keys [B, H, Tk, D] (ref).
void check_levels(const kvs_tensor* const* pooled_keys, const kvs_tensor* const* pooled_values, const kvs_tensor& ref,
                  const char* ref_arg, int64_t block) {
  if (!pooled_keys || !pooled_values) throw Error(KVS_E_SHAPE, "pooledKeys/pooledValues: expected 3 tensors each, got NULL");
  const int64_t B = ref.shape[0], H = ref.shape[1], D = ref.shape[3];
  const int64_t padded = pyramid_blocks(ref.shape[2], block) * block;
  for (int i = 0; i < kPyramidLevels - 1; ++i) {
    const int64_t rows = padded / pyramid_level(i + 1);
    check_output(pooled_keys[i], {B, H, rows, D}, static_cast<kvs_dtype>(ref.dtype), ref, kPooledKeyNames[i], ref_arg,
                 "[B, Hkv, Nk*block/L, D]");
    check_output(pooled_values[i], {B, H, rows, D}, static_cast<kvs_dtype>(ref.dtype), ref, kPooledValueNames[i], ref_arg,
                 "[B, Hkv, Nk*block/L, D]");
  }
}

// counts [rows, 4] non-negative with a sum <= Nk per row; list ids of each row's first
// sum(counts) entries in 0..Nk-1 (when lists is given: the CPU path reads them directly).
void check_lists(const std::vector<int32_t>& counts, const int32_t* lists, int64_t rows, int64_t Nk) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t used = 0;
    for (int l = 0; l < kPyramidLevels; ++l) {
      const int32_t c = counts[r * kPyramidLevels + l];
      if (c < 0) throw Error(KVS_E_RANGE, "counts: expected non-negative counts, got " + std::to_string(c) + " in row " + std::to_string(r));
      used += c;
    }
    if (used > Nk)
      throw Error(KVS_E_RANGE, "counts: row " + std::to_string(r) + " lists " + std::to_string(used) + " blocks, more than Nk = " +
                                   std::to_string(Nk));
    if (!lists) continue;
    for (int64_t e = 0; e < used; ++e) {
      const int32_t kb = lists[r * Nk + e];
      if (kb < 0 || kb >= Nk)
        throw Error(KVS_E_RANGE, "lists: expected key block ids in 0.." + std::to_string(Nk - 1) + ", got " + std::to_string(kb) +
                                     " in row " + std::to_string(r));
    }
  }
}

}  // namespace
}  // namespace kvs

using namespace kvs;

extern "C" kvs_status kvs_pyramid_pool(const kvs_tensor* keys, const kvs_tensor* values, const kvs_pyramid_pool_params* params,
                                       const kvs_tensor* const* pooled_keys, const kvs_tensor* const* pooled_values,
                                       void* stream) {
  (void)stream;
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "pyramidPool: params is NULL");
    check_tensor(keys, "k");
    check_rank(*keys, 4, "k");
    check_dtype(*keys, {KVS_F32, KVS_F16, KVS_BF16}, "k");
    const auto dtype = static_cast<kvs_dtype>(keys->dtype);
    check_float4(values, "v", dtype, *keys, "k");
    check_shape(*values, {keys->shape[0], keys->shape[1], keys->shape[2], keys->shape[3]}, "v", "[B, Hkv, Tk, D] (as k)");
    check_head_dim(keys->shape[3], "k");
    check_block(params->block);
    check_key_blocks(keys->shape[2], params->block);
    check_levels(pooled_keys, pooled_values, *keys, "k", params->block);

    PyramidPoolProblem p{};
    p.keys = keys->data;
    p.values = values->data;
    for (int i = 0; i < kPyramidLevels - 1; ++i) {
      p.pooled_keys[i] = pooled_keys[i]->data;
      p.pooled_values[i] = pooled_values[i]->data;
    }
    p.dtype = dtype;
    p.B = keys->shape[0], p.H = keys->shape[1], p.Tk = keys->shape[2], p.D = keys->shape[3];
    p.block = params->block;
    p.device = keys->device_index;
    dispatch(*keys, "pyramidPool", [&] { cpu::pyramid_pool(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::pyramid_pool(p, stream);
#endif
    });
  });
}

extern "C" kvs_status kvs_pyramid_importance(const kvs_tensor* q, const kvs_tensor* k,
                                             const kvs_pyramid_importance_params* params, const kvs_tensor* importance,
                                             void* stream) {
  (void)stream;
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "pyramidImportance: params is NULL");
    const QkvShape s = check_qkv(q, k, nullptr);
    check_blocks(params->block, params->query_block);
    check_key_blocks(s.Tk, params->block);
    if (params->mask != KVS_PYRAMID_MASK_QHEAD && params->mask != KVS_PYRAMID_MASK_KVHEAD)
      throw Error(KVS_E_RANGE, "maskGranularity: expected QHEAD (0) or KVHEAD (1), got " + std::to_string(params->mask));
    if (params->sample_queries < 1 || params->sample_queries > params->query_block)
      throw Error(KVS_E_RANGE, "sampling: expected 1.." + std::to_string(params->query_block) + " sampled query rows, got " +
                                   std::to_string(params->sample_queries));
    if (params->sample_keys < 1 || params->sample_keys > params->block)
      throw Error(KVS_E_RANGE, "sampling: expected 1.." + std::to_string(params->block) + " sampled keys, got " +
                                   std::to_string(params->sample_keys));
    if (!std::isfinite(params->scale)) throw Error(KVS_E_RANGE, "scale: expected a finite number, got " + std::to_string(params->scale));
    const bool kv_head_mask = params->mask == KVS_PYRAMID_MASK_KVHEAD;
    const int64_t Hm = kv_head_mask ? s.Hkv : s.Hq;
    const int64_t Mq = pyramid_blocks(s.Tq, params->query_block), Nk = pyramid_blocks(s.Tk, params->block);
    check_output(importance, {s.B, Hm, Mq, Nk}, KVS_F32, *q, "importance", "q", "[B, Hm, Mq, Nk]");

    PyramidImportanceProblem p{};
    p.q = q->data;
    p.k = k->data;
    p.importance = static_cast<float*>(importance->data);
    p.dtype = s.dtype;
    p.B = s.B, p.Hq = s.Hq, p.Hkv = s.Hkv, p.Tq = s.Tq, p.Tk = s.Tk, p.D = s.D;
    p.block = params->block;
    p.query_block = params->query_block;
    p.sample_queries = params->sample_queries;
    p.sample_keys = params->sample_keys;
    p.seed = params->seed;
    p.scale = params->scale;
    p.causal = params->causal != 0;
    p.kv_head_mask = kv_head_mask;
    p.device = q->device_index;
    dispatch(*q, "pyramidImportance", [&] { cpu::pyramid_importance(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::pyramid_importance(p, stream);
#endif
    });
  });
}

extern "C" kvs_status kvs_pyramid_assign(const kvs_tensor* importance, const kvs_pyramid_assign_params* params,
                                         const kvs_tensor* level_map, const kvs_tensor* lists, const kvs_tensor* counts,
                                         void* stream) {
  (void)stream;
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "pyramidAssign: params is NULL");
    check_tensor(importance, "importance");
    check_rank(*importance, 4, "importance");
    check_dtype(*importance, {KVS_F32}, "importance");
    check_blocks(params->block, params->query_block);
    if (params->q_tokens < 1 || params->kv_tokens < 1)
      throw Error(KVS_E_RANGE, "tokens: expected Tq, Tk >= 1, got " + std::to_string(params->q_tokens) + ", " +
                                   std::to_string(params->kv_tokens));
    check_key_blocks(params->kv_tokens, params->block);
    const int64_t B = importance->shape[0], Hm = importance->shape[1];
    const int64_t Mq = pyramid_blocks(params->q_tokens, params->query_block), Nk = pyramid_blocks(params->kv_tokens, params->block);
    check_shape(*importance, {B, Hm, Mq, Nk}, "importance", "[B, Hm, ceil(Tq/queryBlock), ceil(Tk/block)]");
    if (params->mode != KVS_PYRAMID_TOPK && params->mode != KVS_PYRAMID_THRESHOLD)
      throw Error(KVS_E_RANGE, "mode: expected TOPK (0) or THRESHOLD (1), got " + std::to_string(params->mode));
    float previous = 0.f;
    for (int i = 0; i < kPyramidLevels; ++i) {
      const float b = params->bounds[i];
      if (!(b >= previous && b <= 1.f))
        throw Error(KVS_E_RANGE, "bounds: expected non-decreasing fractions in [0, 1], got " + std::to_string(b) + " for level " +
                                     std::to_string(pyramid_level(i)));
      previous = b;
    }
    if (!(params->min_full_fraction >= 0.f && params->min_full_fraction <= 1.f))
      throw Error(KVS_E_RANGE, "minFull: expected a fraction in [0, 1], got " + std::to_string(params->min_full_fraction));
    check_output(level_map, {B, Hm, Mq, Nk}, KVS_U8, *importance, "levelMap", "importance", "[B, Hm, Mq, Nk]");
    check_output(lists, {B, Hm, Mq, Nk}, KVS_I32, *importance, "lists", "importance", "[B, Hm, Mq, Nk]");
    check_output(counts, {B, Hm, Mq, kPyramidLevels}, KVS_I32, *importance, "counts", "importance", "[B, Hm, Mq, 4]");

    PyramidAssignProblem p{};
    p.importance = static_cast<const float*>(importance->data);
    p.level_map = static_cast<uint8_t*>(level_map->data);
    p.lists = static_cast<int32_t*>(lists->data);
    p.counts = static_cast<int32_t*>(counts->data);
    p.B = B, p.Hm = Hm, p.Mq = Mq, p.Nk = Nk, p.Tq = params->q_tokens, p.Tk = params->kv_tokens;
    p.block = params->block;
    p.query_block = params->query_block;
    p.causal = params->causal != 0;
    p.threshold_mode = params->mode == KVS_PYRAMID_THRESHOLD;
    for (int i = 0; i < kPyramidLevels; ++i) p.bounds[i] = params->bounds[i];
    p.min_full_fraction = params->min_full_fraction;
    p.force_sink = params->force_sink != 0;
    p.force_diagonal = params->force_diagonal != 0;
    p.device = importance->device_index;
    dispatch(*importance, "pyramidAssign", [&] { cpu::pyramid_assign(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::pyramid_assign(p, stream);
#endif
    });
  });
}

extern "C" kvs_status kvs_pyramid_attend(const kvs_tensor* q, const kvs_tensor* k, const kvs_tensor* v,
                                         const kvs_tensor* const* pooled_keys, const kvs_tensor* const* pooled_values,
                                         const kvs_tensor* lists, const kvs_tensor* counts,
                                         const kvs_pyramid_attend_params* params, const kvs_tensor* out, const kvs_tensor* lse,
                                         void* stream) {
  (void)stream;
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "pyramidAttention: params is NULL");
    const QkvShape s = check_qkv(q, k, v);
    check_blocks(params->block, params->query_block);
    check_key_blocks(s.Tk, params->block);
    check_levels(pooled_keys, pooled_values, *k, "k", params->block);
    const int64_t Mq = pyramid_blocks(s.Tq, params->query_block), Nk = pyramid_blocks(s.Tk, params->block);
    check_tensor(lists, "lists");
    check_rank(*lists, 4, "lists");
    const int64_t Hm = lists->shape[1];
    if (Hm != s.Hq && Hm != s.Hkv)
      throw Error(KVS_E_SHAPE, "lists: expected one mask row set per query head (" + std::to_string(s.Hq) + ") or per KV head (" +
                                   std::to_string(s.Hkv) + "), got " + std::to_string(Hm) + " heads");
    check_output(lists, {s.B, Hm, Mq, Nk}, KVS_I32, *q, "lists", "q", "[B, Hm, ceil(Tq/queryBlock), ceil(Tk/block)]");
    check_output(counts, {s.B, Hm, Mq, kPyramidLevels}, KVS_I32, *q, "counts", "q", "[B, Hm, Mq, 4]");
    check_tensor(out, "out");
    check_dtype(*out, {KVS_F32, KVS_F16, KVS_BF16}, "out");
    check_same_device(*out, *q, "out", "q");
    check_shape(*out, {s.B, s.Hq, s.Tq, s.D}, "out", "[B, Hq, Tq, D]");
    if (lse) check_output(lse, {s.B, s.Hq, s.Tq}, KVS_F32, *q, "lse", "q", "[B, Hq, Tq]");
    if (!std::isfinite(params->scale)) throw Error(KVS_E_RANGE, "scale: expected a finite number, got " + std::to_string(params->scale));

    PyramidAttendProblem p{};
    p.q = q->data;
    p.k = k->data;
    p.v = v->data;
    for (int i = 0; i < kPyramidLevels - 1; ++i) {
      p.pooled.keys[i] = pooled_keys[i]->data;
      p.pooled.values[i] = pooled_values[i]->data;
    }
    p.lists = static_cast<const int32_t*>(lists->data);
    p.counts = static_cast<const int32_t*>(counts->data);
    p.out = out->data;
    p.lse = lse ? static_cast<float*>(lse->data) : nullptr;
    p.in_dtype = s.dtype;
    p.out_dtype = static_cast<kvs_dtype>(out->dtype);
    p.B = s.B, p.Hq = s.Hq, p.Hkv = s.Hkv, p.Hm = Hm, p.Tq = s.Tq, p.Tk = s.Tk, p.D = s.D;
    p.block = params->block;
    p.query_block = params->query_block;
    p.scale = params->scale;
    p.causal = params->causal != 0;
    p.device = q->device_index;
    const int64_t rows = s.B * Hm * Mq;
    // counts are small, so both devices check them on the host; the list ids too on the CPU,
    // while the CUDA kernel skips ids outside 0..Nk-1 rather than copying every list back
    dispatch(*q, "pyramidAttention", [&] {
      check_lists(std::vector<int32_t>(p.counts, p.counts + rows * kPyramidLevels), p.lists, rows, Nk);
      cpu::pyramid_attend(p);
    }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      check_lists(copy_i32_to_host(*counts, stream), nullptr, rows, Nk);
      cuda::pyramid_attend(p, stream);
#endif
    });
  });
}
