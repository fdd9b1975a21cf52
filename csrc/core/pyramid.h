// Pyramid sparse attention (after PSA, Li et al. 2025), shared by the CPU reference
// (csrc/cpu/pyramid.cc) and the CUDA kernels (cuda/pyramid.cu). This header is the contract:
// four separately testable stages, each defined below exactly; kvsquash.h carries the C
// entries (kvs_pyramid_pool / _importance / _assign / _attend).
//
// Notation. q [B, Hq, Tq, D]; k, v [B, Hkv, Tk, D]; G = Hq / Hkv; g = h / G is the KV head
// of query head h. Key blocks of `block` (n) tokens: Nk = ceil(Tk / n); block kb holds keys
// s_kb = kb*n .. e_kb = min(Tk, (kb+1)*n) - 1. Query blocks of `query_block` (m) rows:
// Mq = ceil(Tq / m). Queries are the last Tq positions of the sequence (as in kvs_attention):
// pos(i) = i + Tk - Tq (negative when Tq > Tk). Query block qb spans positions
// p0 = pos(qb*m) .. p1 = pos(min(Tq, (qb+1)*m) - 1). Allowed: n in {8,16,32,64,128},
// m in {16,32,64,128}, Nk <= kPyramidMaxKeyBlocks, D a multiple of 8 in 8..256, Hq % Hkv == 0.
// Mask rows: one per (b, hm, qb) where hm is the query head (granularity QHEAD, Hm = Hq) or
// the KV head (KVHEAD, Hm = Hkv; one mask serves the whole query group).
//
// 1. Pool (levels L in {2, 4, 8}; level 1 is k and v themselves). Level L has
//    Tp / L pooled tokens per head, Tp = Nk * n (tokens padded to whole blocks). Pooled token
//    t covers raw tokens t*L .. t*L + L - 1, of which count_L(t) = clamp(Tk - t*L, 0, L) exist
//    (only the last block is partial; a pooled token with count 0 is absent).
//    Per (b, g, d), f32 sums built as a pairwise tree (x = the input element as f32, exact):
//      S_2(t) = x(2t) + x(2t+1)           (just x(2t) when token 2t+1 does not exist)
//      S_4(t) = S_2(2t) + S_2(2t+1)       (just S_2(2t) when count_2(2t+1) == 0)
//      S_8(t) = S_4(2t) + S_4(2t+1)       (just S_4(2t) when count_4(2t+1) == 0)
//    pooled_L(t) = S_L(t) / count_L(t) (IEEE f32 add and divide, no FMA), stored in the input
//    dtype (round to nearest even, core/half.h). Absent pooled tokens store +0.
//    Outputs pooled keys/values per level [B, Hkv, Tp / L, D], BIT-IDENTICAL on CPU and CUDA.
//
// 2. Importance P f32 [B, Hm, Mq, Nk] (PSA's sampled block-max estimator, made deterministic).
//    Per query head h: the sampled offsets are, for queries, the `sample_queries` offsets
//    o in 0..m-1 with the smallest (pyramid_sample_key(seed, b, h, 0, o), o), and for keys the
//    `sample_keys` offsets o in 0..n-1 with the smallest (pyramid_sample_key(seed, b, h, 1, o), o)
//    (a sample without replacement, the same offsets in every block of the head). In a block
//    with c valid rows, offset o reads row o mod c (tail blocks; repeats do not change a max).
//    For a sampled query row r of block qb and sampled key j of block kb:
//      x(r, j) = scale * <q[b,h,r], k[b,g,j]>, used only when !causal or j <= pos(r);
//      bm(r, kb) = max over the usable sampled j of kb (-inf when none);
//      M(r) = max over kb of bm(r, kb); rows with M(r) = -inf are dropped;
//      P_h[qb, kb] = max over the kept rows r of exp(bm(r, kb) - M(r))  (0 when no row);
//      then each row is divided by its sum over kb (left as is when the sum is 0).
//    QHEAD: P[b,h] = P_h. KVHEAD: P[b,g] = (sum of P_h over the group's heads, ascending h) / G.
//    CPU computes in f64 and rounds once; CUDA in f32: they agree within
//    |dP| <= 1e-4 + 1e-2 * |P| (exp amplifies the logit rounding; the notes' rtol 1e-2).
//
// 3. Assign: per mask row (b, hm, qb), from P alone (any producer; CPU and CUDA outputs are
//    BIT-IDENTICAL given the same P, since every decision below is integer or one stated f32
//    operation chain):
//    - visible(kb) = !causal || s_kb <= p1; diagonal(kb) = s_kb <= p1 && e_kb >= p0 (the key
//      block shares a position with the query block); forced(kb) = visible(kb) &&
//      ((force_sink && kb == 0) || (force_diagonal && diagonal(kb))). N = #visible blocks.
//    - w(kb) = P > 0 ? P : 0 (NaN and negatives weigh 0).
//    - Rank order of the visible blocks: forced blocks first (ascending kb), then the others
//      by w descending, ties to the lower kb. Invisible blocks get level 0.
//    - bounds[0..3] (0 <= b0 <= b1 <= b2 <= b3 <= 1) end the ranges of levels 1, 2, 4, 8; the
//      rest is skipped (level 0).
//      TOPK: cut_i = min(N, (int32)ceilf(bounds[i] * (float)N)) (one f32 multiply); the block
//      at rank r takes the level of the first i with r < cut_i, else 0.
//      THRESHOLD (cumulative mass): acc = 0.f; for r in rank order: E(r) = acc, acc = acc + w
//      (f32 adds in rank order); S = acc after the last visible block; t_i = bounds[i] * S
//      (f32 multiply). The block at rank r takes the level of the first i with E(r) < t_i,
//      else 0 (the block that crosses a bound is included). Also ranks
//      r < pyramid_min_full(min_full_fraction, N) take level 1 (PSA keeps floor(0.06 N)+1).
//    - Forced blocks take level 1 whatever their rank.
//    Outputs: level_map u8 [B, Hm, Mq, Nk] (0 skipped, else 1/2/4/8); lists i32
//    [B, Hm, Mq, Nk]: the row's assigned block ids grouped by level (1, 2, 4, 8), ascending kb
//    inside a level, then -1 up to Nk; counts i32 [B, Hm, Mq, 4]: blocks per level 1, 2, 4, 8.
//
// 4. Attend: query i of head h, mask row (b, hm, qb = i / m), hm = h or g by granularity.
//    Its candidate tokens: for every level L and every listed block kb of that level, the
//    pooled tokens t of kb at level L (t = kb*n/L .. (kb+1)*n/L - 1; at L = 1 the raw keys
//    s_kb..e_kb) with count_L(t) > 0 and, when causal, last(t) = t*L + count_L(t) - 1 <= pos(i)
//    (a pooled token is visible once its last raw position is). Logit:
//      z = scale * <q[b,h,i], K_L[b,g,t]> + ln(count_L(t))  (ln 1 = 0 for raw keys)
//    with K_L the level's pooled keys as stored (step 1); out[b,h,i] = sum softmax(z) V_L[b,g,t];
//    lse[b,h,i] = ln sum exp(z). A query with no candidate gets zeros and lse = -inf.
//    Skipped blocks contribute nothing. CPU: f64; CUDA: f32 (tensor cores for QK^T and PV).
//    The C entry checks counts on the host for both devices (each >= 0, row sum <= Nk) and the
//    list ids only for CPU tensors: the CUDA kernel must skip ids outside 0..Nk-1 itself.
//    Tolerance vs the CPU: out |d| <= 1e-5 + 1e-5|ref| for f32 q/k/v with f32 out, else
//    1e-3 + 1e-2|ref| (notes sec. 2.6); lse |d| <= 1e-5 + 1e-5|ref| (f32) / 1e-3 + 1e-3|ref|.
//
// Density (the fraction of dense work, computed by the TS layer from level_map): over all
// mask rows, sum over assigned kb of rows(qb) * ceil(keys(kb) / L) divided by the sum over
// visible kb of rows(qb) * keys(kb), rows(qb) = valid queries of qb, keys(kb) = e_kb - s_kb + 1.
#pragma once

#include <cstdint>

#include "core/host_device.h"
#include "kvsquash.h"

namespace kvs {

constexpr int kPyramidLevels = 4;             // 1, 2, 4, 8
constexpr int64_t kPyramidMaxKeyBlocks = 4096;

// Level (1, 2, 4, 8) of level slot i (0..3) in counts and the lists' groups.
KVS_HOST_DEVICE inline int32_t pyramid_level(int i) { return 1 << i; }

// Pooled tokens that exist at level L for a head of Tk tokens (step 1).
KVS_HOST_DEVICE inline int64_t pyramid_count(int64_t Tk, int64_t level, int64_t t) {
  const int64_t c = Tk - t * level;
  return c < 0 ? 0 : (c > level ? level : c);
}

KVS_HOST_DEVICE inline int64_t pyramid_blocks(int64_t tokens, int64_t block) { return (tokens + block - 1) / block; }

// Absolute position of query i (the queries are the last Tq positions).
KVS_HOST_DEVICE inline int64_t pyramid_query_position(int64_t Tq, int64_t Tk, int64_t i) { return i + Tk - Tq; }

// One 32-bit avalanche round (xor-shift-multiply), the building block of the sampling hash.
KVS_HOST_DEVICE inline uint32_t pyramid_mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// Counter-based sampling key of offset o for head (b, h); stream 0 samples query rows,
// stream 1 key rows. No state: every backend and thread computes it independently.
KVS_HOST_DEVICE inline uint32_t pyramid_sample_key(uint32_t seed, int64_t b, int64_t h, uint32_t stream, int64_t o) {
  uint32_t x = pyramid_mix(seed ^ 0x9e3779b9u);
  x = pyramid_mix(x ^ static_cast<uint32_t>(b));
  x = pyramid_mix(x ^ static_cast<uint32_t>(h));
  return pyramid_mix(x ^ ((stream << 16) | static_cast<uint32_t>(o)));
}

// Threshold mode: the leading ranks that always take level 1 (0 when fraction <= 0).
KVS_HOST_DEVICE inline int64_t pyramid_min_full(float fraction, int64_t N) {
  if (!(fraction > 0.f)) return 0;
  const int64_t m = static_cast<int64_t>(fraction * static_cast<float>(N)) + 1;  // floor: product >= 0
  return m < N ? m : N;
}

// Pooled key/value tensors of levels 2, 4, 8 (index 0, 1, 2), each [B, Hkv, Tp / L, D].
struct PyramidLevels {
  const void* keys[kPyramidLevels - 1];
  const void* values[kPyramidLevels - 1];
};

struct PyramidPoolProblem {
  const void* keys;                       // [B, H, Tk, D], dtype
  const void* values;                     // [B, H, Tk, D], dtype
  void* pooled_keys[kPyramidLevels - 1];  // levels 2, 4, 8: [B, H, Nk*block / L, D], dtype
  void* pooled_values[kPyramidLevels - 1];
  kvs_dtype dtype;                        // f32, f16 or bf16
  int64_t B, H, Tk, D, block;
  int device;
};

struct PyramidImportanceProblem {
  const void* q;       // [B, Hq, Tq, D], dtype
  const void* k;       // [B, Hkv, Tk, D], dtype
  float* importance;   // [B, Hm, Mq, Nk]
  kvs_dtype dtype;
  int64_t B, Hq, Hkv, Tq, Tk, D, block, query_block;
  int64_t sample_queries;  // 1..query_block
  int64_t sample_keys;     // 1..block
  uint32_t seed;
  float scale;
  bool causal;
  bool kv_head_mask;       // KVHEAD granularity (Hm = Hkv), else QHEAD (Hm = Hq)
  int device;
};

struct PyramidAssignProblem {
  const float* importance;  // [B, Hm, Mq, Nk]
  uint8_t* level_map;       // [B, Hm, Mq, Nk]
  int32_t* lists;           // [B, Hm, Mq, Nk]
  int32_t* counts;          // [B, Hm, Mq, 4]
  int64_t B, Hm, Mq, Nk, Tq, Tk, block, query_block;
  bool causal;
  bool threshold_mode;      // else TOPK
  float bounds[kPyramidLevels];
  float min_full_fraction;  // THRESHOLD only
  bool force_sink, force_diagonal;
  int device;
};

struct PyramidAttendProblem {
  const void* q;            // [B, Hq, Tq, D], in_dtype
  const void* k;            // [B, Hkv, Tk, D], in_dtype (level 1)
  const void* v;
  PyramidLevels pooled;     // step 1's outputs, in_dtype
  const int32_t* lists;     // [B, Hm, Mq, Nk]
  const int32_t* counts;    // [B, Hm, Mq, 4]
  void* out;                // [B, Hq, Tq, D], out_dtype
  float* lse;               // [B, Hq, Tq] or nullptr
  kvs_dtype in_dtype, out_dtype;
  int64_t B, Hq, Hkv, Hm, Tq, Tk, D, block, query_block;
  float scale;
  bool causal;
  int device;
};

namespace cpu {
void pyramid_pool(const PyramidPoolProblem& p);
void pyramid_importance(const PyramidImportanceProblem& p);
void pyramid_assign(const PyramidAssignProblem& p);
void pyramid_attend(const PyramidAttendProblem& p);
}  // namespace cpu

namespace cuda {
void pyramid_pool(const PyramidPoolProblem& p, void* stream);
void pyramid_importance(const PyramidImportanceProblem& p, void* stream);
void pyramid_assign(const PyramidAssignProblem& p, void* stream);
void pyramid_attend(const PyramidAttendProblem& p, void* stream);
}  // namespace cuda

}  // namespace kvs
