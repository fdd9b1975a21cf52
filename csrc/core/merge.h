// KVMerger-style Gaussian-kernel merging and the attention scores that drive it, shared by
// the CPU reference (csrc/cpu/merge.cc) and the CUDA kernels (cuda/merge.cu). This header is
// the contract: both backends implement exactly these definitions.
//
// Segments, per head (b, h) of T tokens with keys k_0..k_{T-1} and scores s_0..s_{T-1}:
//  1. Protected tokens stay singletons: i < protect_first, i >= T - protect_recent, or i among
//     the protect_top tokens with the largest score_order(s_i) (ties: lower index first).
//  2. Link i (1 <= i < T) would join token i to token i - 1. It is eligible when neither
//     token is protected. Its cosine is link_cosine(k_{i-1}, k_i) below: f32, explicit FMAs
//     in ascending d, IEEE-rounded sqrt, multiply and divide, so both backends agree bit for
//     bit (the CUDA side uses __fmaf_rn / __fsqrt_rn / __fmul_rn / __fdiv_rn).
//  3. Threshold mode (budget == 0): link i merges when eligible and cos_i > threshold.
//     Budget mode: the T - budget eligible links with the largest score_order(cos) merge
//     (ties: lower index first); when fewer are eligible, all of them merge and the head
//     keeps more than `budget` slots (the C entry then reports KVS_E_RANGE).
//  4. assign_0 = 0, assign_i = assign_{i-1} + (link i merged ? 0 : 1); lengths = assign_{T-1} + 1.
//     A slot is a maximal run of merged links: its members are contiguous tokens.
//
// Gaussian merge, per slot S (members a..b):
//  - pivot p: the member with the largest score_order(s) (ties: lower index).
//  - d2_i = sum_d (k_i,d - k_p,d)^2; sigma_S = sigma when sigma > 0, else (adaptive, ours)
//    mean over members i != p of sqrt(d2_i) / sqrt(2), and sigma_S = 0 for a singleton.
//  - g_i = exp(-d2_i / (2 sigma_S^2)) when sigma_S > 0, else 1; w_i = g_i / sum_j g_j.
//  - merged key = sum_i w_i k_i; merged value = sum_i w_i v_i, times |S| with value_scale
//    PAPER. sizes = |S|, pivots = p (a token index).
//  - Slots at or past lengths[b,h] (padding up to Tcap): zero key and value, size 0, pivot -1.
//  CPU: f64 for d2, g and the sums. CUDA: f32. Integer outputs agree exactly; floats within
//  2 ulp of the output dtype plus 1e-5 relative (f32) / 1e-3 (f16, bf16).
//
// Attention scores: see kvs_attention_scores in kvsquash.h (CPU f64, CUDA f32).
#pragma once

#include <cstdint>
#include <cstring>

#include "core/host_device.h"
#include "kvsquash.h"

namespace kvs {

// Orders floats as unsigned integers (larger float -> larger key; -0 just below +0). NaN
// gets 0, below everything, so it is never preferred.
KVS_HOST_DEVICE inline uint32_t score_order(float value) {
  if (value != value) return 0u;
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

struct MergeSegmentProblem {
  const void* keys;     // [B, H, T, D], dtype
  const float* scores;  // [B, H, T]
  int32_t* assign;      // [B, H, T]
  int32_t* lengths;     // [B, H]
  kvs_dtype dtype;      // f32, f16 or bf16
  int64_t B, H, T, D;
  float threshold;
  int64_t budget;  // 0: threshold mode
  int64_t protect_first, protect_recent, protect_top;
  int device;
};

struct GaussianMergeProblem {
  const void* keys;       // [B, H, T, D], dtype
  const void* values;     // [B, H, T, D], dtype
  const float* scores;    // [B, H, T]
  const int32_t* assign;  // [B, H, T], from merge segments
  const int32_t* lengths; // [B, H]
  void* out_keys;         // [B, H, Tcap, D], dtype
  void* out_values;       // [B, H, Tcap, D], dtype
  int32_t* sizes;         // [B, H, Tcap]
  int32_t* pivots;        // [B, H, Tcap]
  kvs_dtype dtype;
  int64_t B, H, T, D, Tcap;
  float sigma;            // > 0 fixed, 0 adaptive
  kvs_value_scale value_scale;
  int device;
};

struct AttentionScoresProblem {
  const void* q;  // [B, Hq, Tq, D], dtype
  const void* k;  // [B, Hkv, Tk, D], dtype
  float* scores;  // [B, Hkv, Tk]
  kvs_dtype dtype;
  int64_t B, Hq, Hkv, Tq, Tk, D;
  float scale;
  bool causal;
  int64_t window;  // 1..Tq
  int device;
};

namespace cpu {
void merge_segments(const MergeSegmentProblem& p);
void gaussian_merge(const GaussianMergeProblem& p);
void attention_scores(const AttentionScoresProblem& p);
}  // namespace cpu

namespace cuda {
void merge_segments(const MergeSegmentProblem& p, void* stream);
void gaussian_merge(const GaussianMergeProblem& p, void* stream);
void attention_scores(const AttentionScoresProblem& p, void* stream);
}  // namespace cuda

}  // namespace kvs
