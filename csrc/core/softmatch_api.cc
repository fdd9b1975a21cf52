// kvs_soft_match: argument checks, the per-pass merge schedule of budget mode, dispatch to
// csrc/cpu/softmatch.cc or cuda/softmatch.cu, and the Tcap check on the lengths it wrote.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "core/error.h"
#include "core/host_copy.h"
#include "core/softmatch.h"
#include "core/tensor.h"

namespace kvs {
namespace {

// Budget mode: pass p merges as many sources as it can (every even list entry has an edge)
// until a full chunk is down to `kept` clusters.
void plan_merges(SoftMatchProblem& p, int64_t kept) {
  int64_t n = p.chunk;
  for (int pass = 0; pass < p.passes; ++pass) {
    const int64_t sources = n >= 2 ? (n + 1) / 2 : 0;
    const int64_t merges = std::min<int64_t>(sources, n - kept);
    p.merges[pass] = static_cast<int32_t>(merges);
    n -= merges;
  }
  if (n != kept)
    throw Error(KVS_E_RANGE, "passes: " + std::to_string(p.passes) + " pass(es) bring a chunk of " + std::to_string(p.chunk) +
                                 " tokens down to " + std::to_string(n) + ", not to the " + std::to_string(kept) +
                                 " asked for (each pass at most halves it)");
}

}  // namespace
}  // namespace kvs

using namespace kvs;

extern "C" kvs_status kvs_soft_match(const kvs_tensor* keys, const kvs_tensor* values, const kvs_soft_match_params* params,
                                     const kvs_tensor* assign, const kvs_tensor* lengths, const kvs_tensor* out_keys,
                                     const kvs_tensor* out_values, const kvs_tensor* sizes, const kvs_tensor* positions,
                                     void* stream) {
  return guarded([&] {
    if (!params) throw Error(KVS_E_RANGE, "softMatch: params is NULL");
    check_tensor(keys, "keys");
    check_rank(*keys, 4, "keys");
    check_dtype(*keys, {KVS_F32, KVS_F16, KVS_BF16}, "keys");
    const auto dtype = static_cast<kvs_dtype>(keys->dtype);
    const int64_t B = keys->shape[0], H = keys->shape[1], T = keys->shape[2], D = keys->shape[3];
    check_tensor(values, "values");
    check_dtype(*values, {dtype}, "values");
    check_same_device(*values, *keys, "values", "keys");
    check_shape(*values, {B, H, T, D}, "values", "[B, H, T, D]");
    const auto check_i32 = [&](const kvs_tensor* t, std::initializer_list<int64_t> dims, const char* arg, const char* doc) {
      check_tensor(t, arg);
      check_dtype(*t, {KVS_I32}, arg);
      check_same_device(*t, *keys, arg, "keys");
      check_shape(*t, dims, arg, doc);
    };
    check_i32(assign, {B, H, T}, "assign", "[B, H, T]");
    check_i32(lengths, {B, H}, "lengths", "[B, H]");
    int64_t tcap = 0;
    if (out_keys) {
      check_tensor(out_keys, "outKeys");
      check_dtype(*out_keys, {dtype}, "outKeys");
      check_same_device(*out_keys, *keys, "outKeys", "keys");
      check_shape(*out_keys, {B, H, -1, D}, "outKeys", "[B, H, Tcap, D]");
      tcap = out_keys->shape[2];
      check_tensor(out_values, "outValues");
      check_dtype(*out_values, {dtype}, "outValues");
      check_same_device(*out_values, *keys, "outValues", "keys");
      check_shape(*out_values, {B, H, tcap, D}, "outValues", "[B, H, Tcap, D]");
      check_i32(sizes, {B, H, tcap}, "sizes", "[B, H, Tcap]");
      check_i32(positions, {B, H, tcap}, "positions", "[B, H, Tcap]");
    }
    if (params->chunk < 2 || params->chunk % 2 != 0 || params->chunk > 256)
      throw Error(KVS_E_RANGE, "chunk: expected an even number of tokens in 2..256, got " + std::to_string(params->chunk));
    if (params->passes < 1 || params->passes > kSoftMatchMaxPasses)
      throw Error(KVS_E_RANGE, "passes: expected 1.." + std::to_string(kSoftMatchMaxPasses) + ", got " + std::to_string(params->passes));
    if (params->protect_first < 0 || params->protect_recent < 0) throw Error(KVS_E_RANGE, "protect: counts must be >= 0");
    if (params->kept_per_chunk < 0 || params->kept_per_chunk > params->chunk)
      throw Error(KVS_E_RANGE, "kept per chunk: expected 1.." + std::to_string(params->chunk) + " (or 0 for threshold mode), got " +
                                   std::to_string(params->kept_per_chunk));
    if (!std::isfinite(params->threshold)) throw Error(KVS_E_RANGE, "threshold: expected a finite number");

    SoftMatchProblem p{};
    p.keys = keys->data;
    p.values = values->data;
    p.assign = static_cast<int32_t*>(assign->data);
    p.lengths = static_cast<int32_t*>(lengths->data);
    if (out_keys) {
      p.out_keys = out_keys->data;
      p.out_values = out_values->data;
      p.sizes = static_cast<int32_t*>(sizes->data);
      p.positions = static_cast<int32_t*>(positions->data);
    }
    p.dtype = dtype;
    p.B = B, p.H = H, p.T = T, p.D = D, p.Tcap = tcap;
    p.chunk = params->chunk;
    p.passes = params->passes;
    p.threshold_mode = params->kept_per_chunk == 0;
    p.threshold = params->threshold;
    p.protect_first = params->protect_first;
    p.protect_recent = params->protect_recent;
    p.device = keys->device_index;
    if (!p.threshold_mode) plan_merges(p, params->kept_per_chunk);

    dispatch(*keys, "softMatch", [&] { cpu::soft_match(p); }, [&] {
#ifdef KVSQUASH_WITH_CUDA
      cuda::soft_match(p, stream);
#endif
    });
    if (out_keys) {
      const std::vector<int32_t> kept = copy_i32_to_host(*lengths, stream);
      const int32_t longest = *std::max_element(kept.begin(), kept.end());
      if (longest > tcap)
        throw Error(KVS_E_SHAPE, "outKeys: " + std::to_string(longest) + " slots do not fit Tcap = " + std::to_string(tcap));
    }
  });
}
