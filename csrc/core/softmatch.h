// Chunked soft matching (after Chelsea / CentroidKV, with ToMe's bipartite rule), shared by
// the CPU reference (csrc/cpu/softmatch.cc) and the CUDA kernel (cuda/softmatch.cu). This
// header is the contract: both backends compute exactly these definitions, in f32 with the
// operation order stated, so every output (keys and values included) is bit-identical.
//
// Per head (b, h) with tokens 0..T-1:
//  1. Tokens < protect_first stay raw. Chunks of `chunk` consecutive tokens start at
//     protect_first; a chunk is clustered when it is full and ends at or before
//     T - protect_recent. Every other token (a partial or recent chunk) stays raw.
//  2. A chunk starts as a list of `chunk` clusters, one per token: key and value as f32
//     (exact conversions of the input), size 1, position = the token index.
//  3. Pass p (0 <= p < passes) over the chunk's current list of n clusters (list order =
//     position order): sources A = list entries at even indices, destinations B = odd ones.
//     With n < 2 nothing happens. Each source a picks the destination with the largest
//     score_order(cos(k_a, k_b)) (ties: lower list index; NaN lowest); that is its edge. Edge ranking uses
//     score_order(cos) (csrc/core/merge.h), ties to the lower source index.
//       - budget mode: the merges[p] best edges are kept (merges[p] <= |A|, the same for
//         every full chunk; csrc/core/softmatch_api.cc derives it from the kept count);
//       - threshold mode: every edge with cos > threshold is kept.
//     Each destination absorbs its kept sources: the members (b and those sources) in list
//     order m_1..m_j give size S = sum s_m, position = max position_m, and for each of key
//     and value, per dimension: acc = 0; acc = fma(s_m, x_m, acc) for m in list order;
//     x = acc / S (f32, IEEE-rounded fma and divide). Every entry of the new list goes
//     through this, absorbed sources or not (so a -0 becomes +0). The new list keeps the
//     destinations and the sources without a kept edge, in list order.
//  4. cos(x, y): the link cosine of csrc/core/merge.h (sequential f32 FMA chains for dot and
//     both squared norms in ascending d, then dot / (sqrt(na) * sqrt(nb)), 0 when that
//     product is 0).
//  5. Output slots per head, in order: the raw first tokens, each clustered chunk's final
//     list, then the raw rest; lengths = slot count. assign[t] = slot of token t; within a
//     chunk it need not be monotone (a source may join a destination past the next entry).
//     Outputs are padded to Tcap: padding slots hold zero keys/values, size 0, position -1.
//     Keys/values are stored in the input dtype (round to nearest even from the f32 value).
#pragma once

#include <cstdint>

#include "kvsquash.h"

namespace kvs {

constexpr int kSoftMatchMaxPasses = 16;

struct SoftMatchProblem {
  const void* keys;    // [B, H, T, D], dtype
  const void* values;  // [B, H, T, D], dtype
  int32_t* assign;     // [B, H, T]
  int32_t* lengths;    // [B, H]
  void* out_keys;      // [B, H, Tcap, D], dtype; nullptr: only assign and lengths
  void* out_values;    // [B, H, Tcap, D], dtype (nullptr with out_keys)
  int32_t* sizes;      // [B, H, Tcap] (nullptr with out_keys)
  int32_t* positions;  // [B, H, Tcap] (nullptr with out_keys)
  kvs_dtype dtype;
  int64_t B, H, T, D, Tcap;
  int64_t chunk;       // even, >= 2
  int32_t passes;      // 1..kSoftMatchMaxPasses
  bool threshold_mode;
  float threshold;
  int32_t merges[kSoftMatchMaxPasses];  // budget mode: kept edges per full chunk, per pass
  int64_t protect_first, protect_recent;
  int device;
};

// Chunks of a head that are clustered (step 1).
inline int64_t soft_match_chunks(int64_t T, int64_t chunk, int64_t protect_first, int64_t protect_recent) {
  const int64_t span = T - protect_recent - protect_first;
  return span > 0 ? span / chunk : 0;
}

namespace cpu {
void soft_match(const SoftMatchProblem& p);
}

namespace cuda {
void soft_match(const SoftMatchProblem& p, void* stream);
}

}  // namespace kvs
