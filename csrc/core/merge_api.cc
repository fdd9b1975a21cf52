// C entries of the merge family: kvs_attention_scores, kvs_merge_segments, kvs_gaussian_merge.
// Argument checks, then dispatch to csrc/cpu/merge.cc or cuda/merge.cu.
#include <cmath>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "core/error.h"
#include "core/host_copy.h"
#include "core/merge.h"
#include "core/tensor.h"

namespace kvs {
namespace {

// keys/values [B, H, T, D] of one float dtype; scores f32 [B, H, T]; all on keys' device.
void check_kv(const kvs_tensor* keys, const kvs_tensor* values, const kvs_tensor* scores) {
  check_tensor(keys, "keys");
  check_rank(*keys, 4, "keys");
  check_dtype(*keys, {KVS_F32, KVS_F16, KVS_BF16}, "keys");
  if (values) {
    check_tensor(values, "values");
    check_dtype(*values, {static_cast<kvs_dtype>(keys->dtype)}, "values");
    check_same_device(*values, *keys, "values", "keys");
    check_shape(*values, {keys->shape[0], keys->shape[1], keys->shape[2], keys->shape[3]}, "values", "[B, H, T, D]");
  }
  check_tensor(scores, "scores");
  check_dtype(*scores, {KVS_F32}, "scores");
  check_same_device(*scores, *keys, "scores", "keys");
  check_shape(*scores, {keys->shape[0], keys->shape[1], keys->shape[2]}, "scores", "[B, H, T]");
}

void check_i32_output(const kvs_tensor* t, const kvs_tensor& keys, std::initializer_list<int64_t> dims, const char* arg,
                      const char* doc) {
  check_tensor(t, arg);
  check_dtype(*t, {KVS_I32}, arg);
  check_same_device(*t, keys, arg, "keys");
  check_shape(*t, dims, arg, doc);
}

// assign must be what kvs_merge_segments writes: per head 0, then steps of 0 or 1, ending at
// lengths - 1 <= tcap - 1. The reduce kernels index slots by it.
void check_segments(const std::vector<int32_t>& assign, const std::vector<int32_t>& lengths, int64_t T, int64_t tcap) {
  for (size_t head = 0; head < lengths.size(); ++head) {
    const int32_t* a = assign.data() + head * T;
    bool ok = a[0] == 0;
    for (int64_t i = 1; ok && i < T; ++i) ok = a[i] == a[i - 1] || a[i] == a[i - 1] + 1;
    if (!ok) throw Error(KVS_E_RANGE, "assign: head " + std::to_string(head) + " is not a monotone slot map from 0 in steps of 1");
    if (lengths[head] != a[T - 1] + 1)
      throw Error(KVS_E_RANGE, "lengths: head " + std::to_string(head) + " has " + std::to_string(a[T - 1] + 1) +
                                   " slots in assign, lengths says " + std::to_string(lengths[head]));
    if (lengths[head] > tcap)
      throw Error(KVS_E_SHAPE, "outKeys: " + std::to_string(lengths[head]) + " slots do not fit Tcap = " + std::to_string(tcap));
  }
}

}  // namespace
}  // namespace kvs

using namespace kvs;

extern "C" kvs_status kvs_attention_scores(const kvs_tensor* q, const kvs_tensor* k, const kvs_attention_scores_params* params,
                                           const kvs_tensor* scores, void* stream) {
  (void)stream;
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "attentionScores: params is NULL");
    check_tensor(q, "q");
    check_tensor(k, "k");
    check_rank(*q, 4, "q");
    check_dtype(*q, {KVS_F32, KVS_F16, KVS_BF16}, "q");
    check_dtype(*k, {static_cast<kvs_dtype>(q->dtype)}, "k");
    check_same_device(*k, *q, "k", "q");
    check_shape(*k, {q->shape[0], -1, -1, q->shape[3]}, "k", "[B, Hkv, Tk, D]");
    AttentionScoresProblem p{q->data, k->data, nullptr, static_cast<kvs_dtype>(q->dtype), q->shape[0], q->shape[1],
                             k->shape[1], q->shape[2], k->shape[2], q->shape[3], params->scale, params->causal != 0,
                             params->window, q->device_index};
    if (p.Hq % p.Hkv != 0)
      throw Error(KVS_E_SHAPE, "k: KV heads (" + std::to_string(p.Hkv) + ") must divide query heads (" + std::to_string(p.Hq) + ")");
    check_tensor(scores, "scores");
    check_dtype(*scores, {KVS_F32}, "scores");
    check_same_device(*scores, *q, "scores", "q");
    check_shape(*scores, {p.B, p.Hkv, p.Tk}, "scores", "[B, Hkv, Tk]");
    if (!std::isfinite(p.scale)) throw Error(KVS_E_RANGE, "scale: expected a finite number");
    if (p.window < 1 || p.window > p.Tq)
      throw Error(KVS_E_RANGE, "window: expected 1..Tq = " + std::to_string(p.Tq) + ", got " + std::to_string(p.window));
    p.scores = static_cast<float*>(scores->data);
    dispatch(*q, "attentionScores", [&] { cpu::attention_scores(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::attention_scores(p, stream);
#endif
    });
  });
}

extern "C" kvs_status kvs_merge_segments(const kvs_tensor* keys, const kvs_tensor* scores, const kvs_merge_segment_params* params,
                                         const kvs_tensor* assign, const kvs_tensor* lengths, void* stream) {
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "mergeSegments: params is NULL");
    check_kv(keys, nullptr, scores);
    const int64_t B = keys->shape[0], H = keys->shape[1], T = keys->shape[2], D = keys->shape[3];
    check_i32_output(assign, *keys, {B, H, T}, "assign", "[B, H, T]");
    check_i32_output(lengths, *keys, {B, H}, "lengths", "[B, H]");
    if (!std::isfinite(params->threshold)) throw Error(KVS_E_RANGE, "threshold: expected a finite number");
    if (params->budget < 0 || params->budget > T)
      throw Error(KVS_E_RANGE, "budget: expected 1..T = " + std::to_string(T) + " slots (or 0 for threshold mode), got " +
                                   std::to_string(params->budget));
    for (int64_t count : {params->protect_first, params->protect_recent, params->protect_top})
      if (count < 0) throw Error(KVS_E_RANGE, "protect: counts must be >= 0");
    const MergeSegmentProblem p{keys->data, static_cast<const float*>(scores->data), static_cast<int32_t*>(assign->data),
                                static_cast<int32_t*>(lengths->data), static_cast<kvs_dtype>(keys->dtype), B, H, T, D,
                                params->threshold, params->budget, params->protect_first, params->protect_recent,
                                params->protect_top, keys->device_index};
    dispatch(*keys, "mergeSegments", [&] { cpu::merge_segments(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::merge_segments(p, stream);
#endif
    });
    if (p.budget > 0) {
      const std::vector<int32_t> kept = copy_i32_to_host(*lengths, stream);
      for (size_t head = 0; head < kept.size(); ++head)
        if (kept[head] != p.budget)
          throw Error(KVS_E_RANGE, "budget: head " + std::to_string(head) + " cannot get down to " + std::to_string(p.budget) +
                                       " slots: its protected tokens leave at least " + std::to_string(kept[head]));
    }
  });
}

extern "C" kvs_status kvs_gaussian_merge(const kvs_tensor* keys, const kvs_tensor* values, const kvs_tensor* scores,
                                         const kvs_tensor* assign, const kvs_tensor* lengths,
                                         const kvs_gaussian_merge_params* params, const kvs_tensor* out_keys,
                                         const kvs_tensor* out_values, const kvs_tensor* sizes, const kvs_tensor* pivots,
                                         void* stream) {
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "gaussianMerge: params is NULL");
    check_kv(keys, values, scores);
    const int64_t B = keys->shape[0], H = keys->shape[1], T = keys->shape[2], D = keys->shape[3];
    check_i32_output(assign, *keys, {B, H, T}, "assign", "[B, H, T]");
    check_i32_output(lengths, *keys, {B, H}, "lengths", "[B, H]");
    check_tensor(out_keys, "outKeys");
    check_dtype(*out_keys, {static_cast<kvs_dtype>(keys->dtype)}, "outKeys");
    check_same_device(*out_keys, *keys, "outKeys", "keys");
    check_shape(*out_keys, {B, H, -1, D}, "outKeys", "[B, H, Tcap, D]");
    const int64_t tcap = out_keys->shape[2];
    check_tensor(out_values, "outValues");
    check_dtype(*out_values, {static_cast<kvs_dtype>(keys->dtype)}, "outValues");
    check_same_device(*out_values, *keys, "outValues", "keys");
    check_shape(*out_values, {B, H, tcap, D}, "outValues", "[B, H, Tcap, D]");
    check_i32_output(sizes, *keys, {B, H, tcap}, "sizes", "[B, H, Tcap]");
    check_i32_output(pivots, *keys, {B, H, tcap}, "pivots", "[B, H, Tcap]");
    if (!(params->sigma >= 0) || !std::isfinite(params->sigma))
      throw Error(KVS_E_RANGE, "sigma: expected a finite number > 0 (or 0 for adaptive)");
    if (params->value_scale != KVS_VALUE_SCALE_MEAN && params->value_scale != KVS_VALUE_SCALE_PAPER)
      throw Error(KVS_E_RANGE, "valueScale: expected 'mean' or 'paper'");
    check_segments(copy_i32_to_host(*assign, stream), copy_i32_to_host(*lengths, stream), T, tcap);
    const GaussianMergeProblem p{keys->data, values->data, static_cast<const float*>(scores->data),
                                 static_cast<const int32_t*>(assign->data), static_cast<const int32_t*>(lengths->data),
                                 out_keys->data, out_values->data, static_cast<int32_t*>(sizes->data),
                                 static_cast<int32_t*>(pivots->data), static_cast<kvs_dtype>(keys->dtype), B, H, T, D, tcap,
                                 params->sigma, static_cast<kvs_value_scale>(params->value_scale), keys->device_index};
    dispatch(*keys, "gaussianMerge", [&] { cpu::gaussian_merge(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::gaussian_merge(p, stream);
#endif
    });
  });
}
