// kvs_attention: argument checks, then dispatch to csrc/cpu/attention.cc or cuda/attention.cu.
#include <cmath>
#include <string>
#include <vector>

#include "core/attention.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/host_copy.h"
#include "core/tensor.h"

namespace kvs {
namespace {

void check_lengths_in_range(const int32_t* lengths, int64_t count, int64_t tk) {
  for (int64_t i = 0; i < count; ++i) {
    if (lengths[i] < 0 || lengths[i] > tk)
      throw Error(KVS_E_RANGE, "kvLengths: expected values in [0, " + std::to_string(tk) + "] (Tk), got " +
                                   std::to_string(lengths[i]) + " at flat index " + std::to_string(i));
  }
}

AttentionProblem validate(const kvs_tensor* q, const kvs_tensor* k, const kvs_tensor* v,
                          const kvs_attention_params* params, const kvs_tensor* out, const kvs_tensor* lse) {
  if (!params) throw Error(KVS_E_RANGE, "attention: params is NULL");
  check_tensor(q, "q");
  check_tensor(k, "k");
  check_tensor(v, "v");
  check_tensor(out, "out");
  check_rank(*q, 4, "q");
  check_rank(*k, 4, "k");
  check_dtype(*q, {KVS_F32, KVS_F16, KVS_BF16}, "q");
  const auto in_dtype = static_cast<kvs_dtype>(q->dtype);
  check_dtype(*k, {in_dtype}, "k");
  check_dtype(*v, {in_dtype}, "v");
  check_dtype(*out, {KVS_F32, KVS_F16, KVS_BF16}, "out");
  check_same_device(*k, *q, "k", "q");
  check_same_device(*v, *q, "v", "q");
  check_same_device(*out, *q, "out", "q");

  AttentionProblem p{};
  p.B = q->shape[0];
  p.Hq = q->shape[1];
  p.Tq = q->shape[2];
  p.D = q->shape[3];
  p.Hkv = k->shape[1];
  p.Tk = k->shape[2];
  check_shape(*k, {p.B, -1, -1, p.D}, "k", "[B, Hkv, Tk, D]");
  check_shape(*v, {p.B, p.Hkv, p.Tk, p.D}, "v", "[B, Hkv, Tk, D]");
  if (p.Hq % p.Hkv != 0)
    throw Error(KVS_E_SHAPE, "k: KV heads (" + std::to_string(p.Hkv) + ") must divide query heads (" +
                                 std::to_string(p.Hq) + ")");
  check_shape(*out, {p.B, p.Hq, p.Tq, p.D}, "out", "[B, Hq, Tq, D]");
  if (lse) {
    check_tensor(lse, "lse");
    check_dtype(*lse, {KVS_F32}, "lse");
    check_same_device(*lse, *q, "lse", "q");
    check_shape(*lse, {p.B, p.Hq, p.Tq}, "lse", "[B, Hq, Tq]");
  }
  if (params->kv_lengths) {
    check_tensor(params->kv_lengths, "kvLengths");
    check_dtype(*params->kv_lengths, {KVS_I32}, "kvLengths");
    check_same_device(*params->kv_lengths, *q, "kvLengths", "q");
    check_shape(*params->kv_lengths, {p.B, p.Hkv}, "kvLengths", "[B, Hkv]");
  }
  if (params->log_weights) {
    check_tensor(params->log_weights, "logWeights");
    check_dtype(*params->log_weights, {KVS_F32}, "logWeights");
    check_same_device(*params->log_weights, *q, "logWeights", "q");
    check_shape(*params->log_weights, {p.B, p.Hkv, p.Tk}, "logWeights", "[B, Hkv, Tk]");
  }
  if (!std::isfinite(params->scale))
    throw Error(KVS_E_RANGE, "scale: expected a finite number, got " + std::to_string(params->scale));

  p.q = q->data;
  p.k = k->data;
  p.v = v->data;
  p.out = out->data;
  p.lse = lse ? static_cast<float*>(lse->data) : nullptr;
  p.kv_lengths = params->kv_lengths ? static_cast<const int32_t*>(params->kv_lengths->data) : nullptr;
  p.log_weights = params->log_weights ? static_cast<const float*>(params->log_weights->data) : nullptr;
  p.in_dtype = in_dtype;
  p.out_dtype = static_cast<kvs_dtype>(out->dtype);
  p.scale = params->scale;
  p.causal = params->causal != 0;
  p.device = q->device_index;
  return p;
}

}  // namespace
}  // namespace kvs

extern "C" kvs_status kvs_attention(const kvs_tensor* q, const kvs_tensor* k, const kvs_tensor* v,
                                    const kvs_attention_params* params, const kvs_tensor* out,
                                    const kvs_tensor* lse, void* stream) {
  (void)stream;  // unused in CPU-only builds
  return kvs::guarded([&] {
    const kvs::AttentionProblem p = kvs::validate(q, k, v, params, out, lse);
    const int64_t length_count = p.B * p.Hkv;
    kvs::dispatch(
        *q, "attention",
        [&] {
          if (p.kv_lengths) kvs::check_lengths_in_range(p.kv_lengths, length_count, p.Tk);
          kvs::cpu::attention(p);
        },
        [&] {
#ifdef KVSQUASH_WITH_CUDA
          if (!kvs::cuda::attention_supports_head_dim(p.D))
            throw kvs::Error(KVS_E_UNSUPPORTED, "q: the CUDA attention kernel supports head dims 8, 16, 32, 64, 128, "
                                                "256; got " + std::to_string(p.D));
          if (p.kv_lengths) {
            // lengths are few; checking them on the host keeps one error path for both devices
            const std::vector<int32_t> host = kvs::copy_i32_to_host(*params->kv_lengths, stream);
            kvs::check_lengths_in_range(host.data(), length_count, p.Tk);
          }
          kvs::cuda::attention(p, stream);
#endif
        });
  });
}
