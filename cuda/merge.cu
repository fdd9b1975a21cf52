// KVMerger-style merging on CUDA: merge segments, Gaussian merge and the attention scores
// that drive them. The definitions are in csrc/core/merge.h (the CPU reference implements
// the same text); integer outputs must equal the CPU's, floats agree within tolerance.
//
// Merge segments uses no scratch memory: assign holds one state word per link until the
// last pass overwrites it with slot indices.
//  1. link_state_kernel, a thread per token i: word i := score_order(cos_i) when link i is
//     eligible as far as the first/recent protection goes, else kIneligible. cos_i is the
//     sequential f32 FMA chain of merge.h, so the words equal the CPU's keys bit for bit.
//  2. segment_row_kernel, a 1024-thread block per head: the protect_top best-scored tokens
//     make their two links kIneligible; budget mode turns the T - budget largest link words
//     into kMerged; a block scan of "starts a slot" then writes assign and lengths. Both
//     top-m choices go through block_select_top (a radix select of the m-th largest key).
// Gaussian merge: slot_bounds_kernel writes each slot's first token into pivots and its end
// into sizes (rows that gaussian_merge_kernel overwrites), then a warp per slot finds the
// pivot, sigma and the weighted sums.
// Attention scores: row_stats_kernel (a warp per query row) computes each row's softmax
// max and denominator; column_scores_kernel (a block per 32 keys) sums the probabilities
// over the rows in a fixed order. No atomics anywhere: every result is deterministic.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "common.cuh"
#include "scratch.cuh"
#include "core/attention.h"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/merge.h"
#include "kvsquash.h"

namespace kvs::cuda {
namespace {


// Link state words. score_order never produces them: its largest key is +inf's 0xff800000.
constexpr uint32_t kIneligible = 0xffffffffu;
constexpr uint32_t kMerged = 0xfffffffeu;

constexpr int kLinkThreads = 256;
constexpr int kRowThreads = 1024;
constexpr int kRowWarps = kRowThreads / kWarpSize;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kRadixPasses = 32 / kRadixBits;

constexpr int kBoundsThreads = 256;
constexpr int kSlotWarps = 8;
constexpr int kSlotThreads = kSlotWarps * kWarpSize;
// Gaussian merge and attention scores keep a row in registers (lane t: dims t, t + 32, ...)
// or a key tile in 48 KiB of shared memory; both bound the head dim.
constexpr int kMaxDimsPerLane = 8;
constexpr int64_t kMaxHeadDim = kMaxDimsPerLane * kWarpSize;

constexpr int kScoreWarps = 8;
constexpr int kScoreThreads = kScoreWarps * kWarpSize;
constexpr int kTileKeys = kWarpSize;  // lane j scores key j of the tile

template <class T>
struct LinkArgs {
  const T* keys;
  uint32_t* words;  // assign, as link state words
  int64_t tokens, head_tokens, D;  // head_tokens: T
  int64_t protect_first, protect_recent;
  bool rows_16_byte_aligned;  // every key row can be read with 16-byte vector loads
};

struct SegmentArgs {
  const float* scores;
  uint32_t* words;  // assign: link state words on entry, slot indices on exit
  int32_t* lengths;
  int64_t heads, head_tokens;  // head_tokens: T
  int64_t budget, protect_top;
  float threshold;
};

template <class T>
struct GaussianArgs {
  const T* keys;
  const T* values;
  const float* scores;
  const int32_t* lengths;
  T* out_keys;
  T* out_values;
  int32_t* sizes;   // on entry: each live slot's end token (slot_bounds_kernel)
  int32_t* pivots;  // on entry: each live slot's first token
  int64_t slots, head_tokens, D, Tcap;  // head_tokens: T
  float sigma;
  bool paper_value_scale;
};

template <class T>
struct ScoresArgs {
  const T* q;
  const T* k;
  float* scores;
  float2* row_stats;  // per (kv head, row): softmax max and denominator
  int64_t Hq, Hkv, Tq, Tk, D;
  int64_t group, window;
  int64_t rows_per_kv_head;    // group * window: row r is query head r / window of the group,
                               // query Tq - window + r % window
  int64_t blocks_per_kv_head;  // row_stats_kernel: ceil(rows / kScoreWarps)
  int64_t tiles_per_kv_head;   // column_scores_kernel: ceil(Tk / kTileKeys)
  int key_stride;              // floats between key rows of the shared tile (odd: no bank conflicts)
  float scale;
  bool causal;
};

}  // namespace

// ---- shared device helpers ----------------------------------------------------------------------

// Compensated (Kahan) f32 sum: slots and windows can hold thousands of terms, and the CPU
// sums in f64. Not reassociated by nvcc without fast-math.
struct KahanSum {
  float sum = 0.0f, carry = 0.0f;
  __device__ __forceinline__ void add(float term) {
    const float y = term - carry;
    const float t = sum + y;
    carry = (t - sum) - y;
    sum = t;
  }
};

// Inverse of score_order for non-NaN keys (key 0, NaN's key, gives back a NaN).
static __device__ __forceinline__ float order_to_float(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Inclusive prefix sum of `value` over the block's threads in index order; every thread of
// the kRowThreads block must call it. `block_total` gets the sum over the whole block.
static __device__ int block_inclusive_scan(int value, int* warp_totals, int& block_total) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset <<= 1) {
    const int other = __shfl_up_sync(kFullWarpMask, value, offset);
    if (lane >= offset) value += other;
  }
  if (lane == kWarpSize - 1) warp_totals[warp] = value;
  __syncthreads();
  if (warp == 0) {
    int total = lane < kRowWarps ? warp_totals[lane] : 0;
#pragma unroll
    for (int offset = 1; offset < kWarpSize; offset <<= 1) {
      const int other = __shfl_up_sync(kFullWarpMask, total, offset);
      if (lane >= offset) total += other;
    }
    if (lane < kRowWarps) warp_totals[lane] = total;
  }
  __syncthreads();
  block_total = warp_totals[kRowWarps - 1];
  const int result = value + (warp > 0 ? warp_totals[warp - 1] : 0);
  __syncthreads();  // warp_totals is reused by the next call
  return result;
}

// ---- merge segments ---------------------------------------------------------------------------------

// The link cosine of merge.h: one sequential FMA chain per sum in ascending d, IEEE sqrt,
// multiply and divide (the 16-byte loads only change how the values arrive).
template <class T>
static __device__ float link_cosine(const T* a, const T* b, int64_t D, bool vector_loads) {
  float dot = 0.0f, norm_a = 0.0f, norm_b = 0.0f;
  const auto step = [&](float x, float y) {
    dot = __fmaf_rn(x, y, dot);
    norm_a = __fmaf_rn(x, x, norm_a);
    norm_b = __fmaf_rn(y, y, norm_b);
  };
  int64_t d = 0;
  if (vector_loads) {
    constexpr int kValues = kValuesPer16Bytes<T>;
    for (; d + kValues <= D; d += kValues) {
      float x[kValues], y[kValues];
      unpack16<T>(*reinterpret_cast<const uint4*>(a + d), x);
      unpack16<T>(*reinterpret_cast<const uint4*>(b + d), y);
#pragma unroll
      for (int e = 0; e < kValues; ++e) step(x[e], y[e]);
    }
  }
  for (; d < D; ++d) step(to_float(a[d]), to_float(b[d]));
  const float denom = __fmul_rn(__fsqrt_rn(norm_a), __fsqrt_rn(norm_b));
  return denom > 0.0f ? __fdiv_rn(dot, denom) : 0.0f;
}

template <class T>
static __global__ void __launch_bounds__(kLinkThreads) link_state_kernel(const LinkArgs<T> args) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kLinkThreads;
  for (int64_t token = static_cast<int64_t>(blockIdx.x) * kLinkThreads + threadIdx.x; token < args.tokens;
       token += stride) {
    // Link i joins tokens i - 1 and i: eligible when neither is among the first or the
    // recent protected tokens (protect_top is applied later, by segment_row_kernel).
    const int64_t i = token % args.head_tokens;
    const bool eligible = i >= 1 && i - 1 >= args.protect_first && i < args.head_tokens - args.protect_recent;
    uint32_t word = kIneligible;
    if (eligible)
      word = score_order(link_cosine(args.keys + (token - 1) * args.D, args.keys + token * args.D, args.D,
                                     args.rows_16_byte_aligned));
    args.words[token] = word;
  }
}

struct RowShared {
  unsigned int histogram[kRadixBins];
  int warp_totals[kRowWarps];
  uint32_t prefix;    // high digits of the m-th largest key found so far
  long long wanted;   // how many of the keys matching `prefix` are still to be chosen
  bool take_all;      // m >= candidates: every candidate is chosen
};

// Chooses the m (> 0) candidates of a row of n with the largest keys, ties to the lower
// index, and calls on_select(i) once for each (the thread owning i in index order calls it,
// in the same iteration that read key i). key_of(i, key) returns whether i is a candidate
// and sets its key. With fewer than m candidates, all of them are chosen.
// MSB-first radix select: pass p histograms digit p of the keys that match the digits found
// so far and keeps the digit where the m-th largest falls; after 4 passes `prefix` is that
// key. Then every key above it is chosen, plus the lowest-index keys equal to it (a block
// prefix count in index order) until m are chosen. The whole block must call it.
template <class KeyOf, class OnSelect>
static __device__ void block_select_top(int64_t n, int64_t m, RowShared& shared, KeyOf key_of, OnSelect on_select) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  // Every thread runs the same number of iterations, so whole warps reach __match_any_sync.
  const int64_t n_padded = (n + kRowThreads - 1) / kRowThreads * kRowThreads;
  uint32_t prefix = 0, prefix_mask = 0;
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    const int shift = 32 - kRadixBits * (pass + 1);
    for (int bin = static_cast<int>(threadIdx.x); bin < kRadixBins; bin += kRowThreads) shared.histogram[bin] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n_padded; i += kRowThreads) {
      uint32_t key = 0;
      int bin = kRadixBins;  // not counted
      if (i < n && key_of(i, key) && (key & prefix_mask) == prefix)
        bin = static_cast<int>((key >> shift) & (kRadixBins - 1));
      // Near-equal keys (cosines close to 1) share a bin: one atomic per distinct bin per warp.
      const unsigned peers = __match_any_sync(kFullWarpMask, bin);
      if (bin < kRadixBins && lane == __ffs(peers) - 1) atomicAdd(&shared.histogram[bin], __popc(peers));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      long long wanted = pass == 0 ? m : shared.wanted;
      if (pass == 0) {
        long long candidates = 0;
        for (int bin = 0; bin < kRadixBins; ++bin) candidates += shared.histogram[bin];
        shared.take_all = wanted >= candidates;
      }
      long long above = 0;  // matching keys in higher bins: all chosen
      int digit = 0;
      for (int bin = kRadixBins - 1; bin >= 0; --bin) {
        if (above + shared.histogram[bin] >= wanted) {
          digit = bin;
          break;
        }
        above += shared.histogram[bin];
      }
      shared.wanted = wanted - above;
      shared.prefix = prefix | (static_cast<uint32_t>(digit) << shift);
    }
    __syncthreads();
    if (shared.take_all) break;  // block-uniform
    prefix = shared.prefix;
    prefix_mask |= static_cast<uint32_t>(kRadixBins - 1) << shift;
  }

  if (shared.take_all) {
    for (int64_t i = threadIdx.x; i < n; i += kRowThreads) {
      uint32_t key = 0;
      if (key_of(i, key)) on_select(i);
    }
    return;
  }
  const uint32_t kth = prefix;
  const long long equal_wanted = shared.wanted;  // >= 1
  long long equal_before = 0;                    // keys equal to kth in earlier chunks
  for (int64_t base = 0; base < n; base += kRowThreads) {
    const int64_t i = base + threadIdx.x;
    uint32_t key = 0;
    const bool candidate = i < n && key_of(i, key);
    const int equal = candidate && key == kth;
    int equal_in_chunk = 0;
    const int equal_rank = block_inclusive_scan(equal, shared.warp_totals, equal_in_chunk) - 1;
    if (candidate && (key > kth || (equal && equal_before + equal_rank < equal_wanted))) on_select(i);
    equal_before += equal_in_chunk;
  }
}

// The rest of merge.h steps 1 to 4 for one head per block (see the file comment).
static __global__ void __launch_bounds__(kRowThreads) segment_row_kernel(const SegmentArgs args) {
  __shared__ RowShared shared;
  const int64_t T = args.head_tokens;
  for (int64_t head = blockIdx.x; head < args.heads; head += gridDim.x) {
    uint32_t* words = args.words + head * T;
    if (args.protect_top > 0) {
      const float* scores = args.scores + head * T;
      // Keys come from scores, so writing words here races with no read.
      block_select_top(
          T, min(args.protect_top, T), shared,
          [&](int64_t i, uint32_t& key) {
            key = score_order(scores[i]);
            return true;
          },
          [&](int64_t i) {
            words[i] = kIneligible;
            if (i + 1 < T) words[i + 1] = kIneligible;
          });
      __syncthreads();  // the marks are visible to every thread before the links are read
    }
    if (args.budget > 0 && T - args.budget > 0) {
      block_select_top(
          T, T - args.budget, shared,
          [&](int64_t i, uint32_t& key) {
            key = words[i];
            return key != kIneligible;
          },
          [&](int64_t i) { words[i] = kMerged; });
      __syncthreads();
    }
    // assign_i = (number of i' <= i starting a slot) - 1; each word is read and then
    // overwritten by the same thread.
    long long slots_before = 0;
    for (int64_t base = 0; base < T; base += kRowThreads) {
      const int64_t i = base + threadIdx.x;
      int starts_slot = 0;
      if (i < T) {
        const uint32_t word = words[i];
        const bool merged =
            i > 0 && (args.budget > 0 ? word == kMerged : word != kIneligible && order_to_float(word) > args.threshold);
        starts_slot = !merged;
      }
      int starts_in_chunk = 0;
      const int rank = block_inclusive_scan(starts_slot, shared.warp_totals, starts_in_chunk);
      if (i < T) words[i] = static_cast<uint32_t>(slots_before + rank - 1);
      slots_before += starts_in_chunk;
    }
    if (threadIdx.x == 0) args.lengths[head] = static_cast<int32_t>(slots_before);
  }
}

// ---- Gaussian merge ---------------------------------------------------------------------------------

// Slot assign[i] of each head starts at token i when i == 0 or assign changes there, and
// ends after i when i == T - 1 or assign changes after it. Assign was validated by the
// caller (monotone from 0, steps of 1, slots < Tcap); the bound check only keeps a bad one
// from writing out of bounds.
static __global__ void __launch_bounds__(kBoundsThreads)
    slot_bounds_kernel(const int32_t* assign, int32_t* starts, int32_t* ends, int64_t tokens, int64_t T, int64_t Tcap) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBoundsThreads;
  for (int64_t token = static_cast<int64_t>(blockIdx.x) * kBoundsThreads + threadIdx.x; token < tokens;
       token += stride) {
    const int64_t head = token / T, i = token % T;
    const int32_t slot = assign[token];
    if (slot < 0 || slot >= Tcap) continue;
    const int64_t out = head * Tcap + slot;
    if (i == 0 || assign[token - 1] != slot) starts[out] = static_cast<int32_t>(i);
    if (i == T - 1 || assign[token + 1] != slot) ends[out] = static_cast<int32_t>(i + 1);
  }
}

// Lane t's dims t, t + 32, ... of a row (zeros past D).
template <class T>
static __device__ __forceinline__ void load_lane_dims(const T* row, int64_t D, int lane,
                                                      float (&out)[kMaxDimsPerLane]) {
#pragma unroll
  for (int c = 0; c < kMaxDimsPerLane; ++c) {
    const int64_t d = lane + c * kWarpSize;
    out[c] = d < D ? to_float(row[d]) : 0.0f;
  }
}

// sum_d (x_d - y_d)^2 over the warp's lanes; the butterfly gives every lane the same value.
static __device__ __forceinline__ float squared_distance(const float (&x)[kMaxDimsPerLane],
                                                         const float (&y)[kMaxDimsPerLane]) {
  float partial = 0.0f;
#pragma unroll
  for (int c = 0; c < kMaxDimsPerLane; ++c) {
    const float diff = x[c] - y[c];
    partial = fmaf(diff, diff, partial);
  }
  return warp_sum(partial);
}

template <class T>
static __global__ void __launch_bounds__(kSlotThreads) gaussian_merge_kernel(const GaussianArgs<T> args) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t D = args.D;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kSlotWarps;
  for (int64_t slot = static_cast<int64_t>(blockIdx.x) * kSlotWarps + threadIdx.x / kWarpSize; slot < args.slots;
       slot += warps) {
    const int64_t head = slot / args.Tcap;
    T* out_key = args.out_keys + slot * D;
    T* out_value = args.out_values + slot * D;
    if (slot % args.Tcap >= args.lengths[head]) {  // padding slot
      for (int64_t d = lane; d < D; d += kWarpSize) {
        out_key[d] = from_float<T>(0.0f);
        out_value[d] = from_float<T>(0.0f);
      }
      if (lane == 0) {
        args.sizes[slot] = 0;
        args.pivots[slot] = -1;
      }
      continue;
    }

    // Only lane 0 reads the bounds and later overwrites them with size and pivot.
    int64_t first = 0, end = 0;
    if (lane == 0) {
      first = args.pivots[slot];
      end = args.sizes[slot];
    }
    first = __shfl_sync(kFullWarpMask, first, 0);
    end = __shfl_sync(kFullWarpMask, end, 0);
    const int64_t size = end - first;
    const int64_t token0 = head * args.head_tokens;  // the head's first token

    // Pivot: the largest score_order(score), ties to the lower index.
    uint32_t best_key = 0;
    int64_t pivot = kNoIndex;
    for (int64_t i = first + lane; i < end; i += kWarpSize) {
      const uint32_t key = score_order(args.scores[token0 + i]);
      if (pivot == kNoIndex || key > best_key) {  // i ascends: an equal key keeps the lower index
        best_key = key;
        pivot = i;
      }
    }
    warp_argmax(best_key, pivot);

    const T* keys = args.keys + token0 * D;
    const T* values = args.values + token0 * D;
    float pivot_key[kMaxDimsPerLane];
    load_lane_dims(keys + pivot * D, D, lane, pivot_key);

    float sigma = args.sigma;
    if (!(sigma > 0.0f)) {  // adaptive: mean distance to the pivot over sqrt(2); 0 for a singleton
      KahanSum distance;
      for (int64_t i = first; i < end; ++i) {
        if (i == pivot) continue;
        float key[kMaxDimsPerLane];
        load_lane_dims(keys + i * D, D, lane, key);
        distance.add(sqrtf(squared_distance(key, pivot_key)));
      }
      sigma = size > 1 ? distance.sum / static_cast<float>(size - 1) * 0.70710678118654752f : 0.0f;
    }

    KahanSum weight_sum, key_sum[kMaxDimsPerLane], value_sum[kMaxDimsPerLane];
    for (int64_t i = first; i < end; ++i) {
      float key[kMaxDimsPerLane], value[kMaxDimsPerLane];
      load_lane_dims(keys + i * D, D, lane, key);
      load_lane_dims(values + i * D, D, lane, value);
      // d2 / sigma / sigma rather than d2 / (2 sigma^2): a tiny sigma overflows to +inf
      // (weight 0) instead of 0 / 0 for the pivot, whose d2 is exactly 0 (weight 1).
      const float d2 = squared_distance(key, pivot_key);
      const float weight = sigma > 0.0f ? expf(-0.5f * (d2 / sigma / sigma)) : 1.0f;
      weight_sum.add(weight);
#pragma unroll
      for (int c = 0; c < kMaxDimsPerLane; ++c) {
        key_sum[c].add(weight * key[c]);
        value_sum[c].add(weight * value[c]);
      }
    }

    const float value_factor = args.paper_value_scale ? static_cast<float>(size) : 1.0f;
#pragma unroll
    for (int c = 0; c < kMaxDimsPerLane; ++c) {
      const int64_t d = lane + c * kWarpSize;
      if (d < D) {
        out_key[d] = from_float<T>(key_sum[c].sum / weight_sum.sum);
        out_value[d] = from_float<T>(value_sum[c].sum / weight_sum.sum * value_factor);
      }
    }
    if (lane == 0) {
      args.sizes[slot] = static_cast<int32_t>(size);
      args.pivots[slot] = static_cast<int32_t>(pivot);
    }
  }
}

// ---- attention scores -------------------------------------------------------------------------------

// Query position (in 0..Tq-1) of row r of a KV head.
template <class T>
static __device__ __forceinline__ int64_t row_query(const ScoresArgs<T>& args, int64_t r) {
  return args.Tq - args.window + r % args.window;
}

// Keys visible to row r: a prefix of the head's Tk (the causal rule of core/attention.h).
template <class T>
static __device__ __forceinline__ int64_t row_key_limit(const ScoresArgs<T>& args, int64_t r) {
  return attention_key_limit(args.causal, args.Tk, args.Tq, row_query(args, r));
}

template <class T>
static __device__ __forceinline__ const T* row_query_ptr(const ScoresArgs<T>& args, int64_t kv_head, int64_t r) {
  const int64_t b = kv_head / args.Hkv, g = kv_head % args.Hkv;
  const int64_t h = g * args.group + r / args.window;
  return args.q + ((b * args.Hq + h) * args.Tq + row_query(args, r)) * args.D;
}

// Keys [first_key, first_key + keys) of a KV head into the tile as f32, one per row of
// key_stride floats (contiguous in global memory, so the loads coalesce).
template <class T>
static __device__ void stage_key_tile(const ScoresArgs<T>& args, int64_t kv_head, int64_t first_key, int keys,
                                      float* tile) {
  const T* src = args.k + (kv_head * args.Tk + first_key) * args.D;
  const int64_t count = keys * args.D;
  for (int64_t e = threadIdx.x; e < count; e += kScoreThreads)
    tile[(e / args.D) * args.key_stride + e % args.D] = to_float(src[e]);
}

// scale * <query, key> from shared memory; query reads are broadcasts, and the odd key
// stride puts the 32 lanes' keys in distinct banks. Both kernels use it, so a row's logits
// in row_stats_kernel equal the ones column_scores_kernel recomputes.
static __device__ __forceinline__ float scaled_dot(const float* query, const float* key, int64_t D, float scale) {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) {
    s0 = fmaf(query[d], key[d], s0);
    s1 = fmaf(query[d + 1], key[d + 1], s1);
    s2 = fmaf(query[d + 2], key[d + 2], s2);
    s3 = fmaf(query[d + 3], key[d + 3], s3);
  }
  for (; d < D; ++d) s0 = fmaf(query[d], key[d], s0);
  return scale * ((s0 + s1) + (s2 + s3));
}

template <class T>
static __device__ __forceinline__ void load_query(const ScoresArgs<T>& args, int64_t kv_head, int64_t r, int lane,
                                                  float* query) {
  const T* src = row_query_ptr(args, kv_head, r);
  for (int64_t d = lane; d < args.D; d += kWarpSize) query[d] = to_float(src[d]);
}

// A block serves kScoreWarps rows of one KV head, a warp per row; the block stages tiles of
// kTileKeys keys up to the largest key limit among its rows, and lane j scores key j of the
// tile against its warp's row (online max and denominator, as in cuda/attention.cu).
template <class T>
static __global__ void __launch_bounds__(kScoreThreads) row_stats_kernel(const ScoresArgs<T> args) {
  extern __shared__ float shared[];
  float* tile = shared;
  float* queries = tile + kTileKeys * args.key_stride;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t kv_head = blockIdx.x / args.blocks_per_kv_head;
  const int64_t first_row = (blockIdx.x % args.blocks_per_kv_head) * kScoreWarps;
  const int64_t rows = args.rows_per_kv_head;

  int64_t block_key_limit = 0;
  for (int w = 0; w < kScoreWarps && first_row + w < rows; ++w)
    block_key_limit = max(block_key_limit, row_key_limit(args, first_row + w));
  const int64_t r = first_row + warp;
  const bool row_exists = r < rows;
  const int64_t key_limit = row_exists ? row_key_limit(args, r) : 0;

  float* query = queries + warp * args.D;  // visible to the warp after the first __syncthreads below
  if (row_exists) load_query(args, kv_head, r, lane, query);

  float running_max = -INFINITY, denominator = 0.0f;
  for (int64_t first_key = 0; first_key < block_key_limit; first_key += kTileKeys) {
    const int keys_in_tile = static_cast<int>(min(static_cast<int64_t>(kTileKeys), block_key_limit - first_key));
    __syncthreads();  // every warp is done with the previous tile
    stage_key_tile(args, kv_head, first_key, keys_in_tile, tile);
    __syncthreads();
    if (first_key >= key_limit) continue;  // warp-uniform
    const int keys_for_row = static_cast<int>(min(static_cast<int64_t>(kTileKeys), key_limit - first_key));
    const float logit =
        lane < keys_for_row ? scaled_dot(query, tile + lane * args.key_stride, args.D, args.scale) : -INFINITY;
    const float new_max = fmaxf(running_max, warp_max(logit));
    if (new_max == -INFINITY) continue;  // avoids exp(-inf - -inf)
    denominator = denominator * expf(running_max - new_max) + warp_sum(expf(logit - new_max));
    running_max = new_max;
  }
  // A row with no visible key keeps (-inf, 0); column_scores_kernel never reads it.
  if (row_exists && lane == 0) args.row_stats[kv_head * rows + r] = make_float2(running_max, denominator);
}

// A block serves kTileKeys keys of one KV head (lane j: key j of the tile); warp w walks the
// rows w, w + kScoreWarps, ... and the warps' sums are added in warp order at the end.
template <class T>
static __global__ void __launch_bounds__(kScoreThreads) column_scores_kernel(const ScoresArgs<T> args) {
  extern __shared__ float shared[];
  float* tile = shared;
  float* queries = tile + kTileKeys * args.key_stride;
  float* warp_sums = queries + kScoreWarps * args.D;  // [kScoreWarps][kWarpSize]
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t kv_head = blockIdx.x / args.tiles_per_kv_head;
  const int64_t first_key = (blockIdx.x % args.tiles_per_kv_head) * kTileKeys;
  const int keys_in_tile = static_cast<int>(min(static_cast<int64_t>(kTileKeys), args.Tk - first_key));
  const int64_t rows = args.rows_per_kv_head;

  stage_key_tile(args, kv_head, first_key, keys_in_tile, tile);
  __syncthreads();

  const int64_t key = first_key + lane;
  const float* key_row = tile + lane * args.key_stride;
  float* query = queries + warp * args.D;
  const float2* stats = args.row_stats + kv_head * rows;
  KahanSum sum;
  for (int64_t r = warp; r < rows; r += kScoreWarps) {
    const int64_t key_limit = row_key_limit(args, r);
    if (first_key >= key_limit) continue;  // warp-uniform: no key of the tile is visible
    __syncwarp();                          // the lanes are done with the previous query
    load_query(args, kv_head, r, lane, query);
    __syncwarp();
    if (key < key_limit) {
      const float2 row = stats[r];  // (max, denominator); denominator >= 1 for a visible key
      sum.add(expf(scaled_dot(query, key_row, args.D, args.scale) - row.x) / row.y);
    }
  }
  warp_sums[warp * kWarpSize + lane] = sum.sum;
  __syncthreads();
  if (warp == 0 && lane < keys_in_tile) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kScoreWarps; ++w) total += warp_sums[w * kWarpSize + lane];
    args.scores[kv_head * args.Tk + key] = total;
  }
}

// ---- launch -----------------------------------------------------------------------------------------

static void check_head_dim(int64_t D, const char* op) {
  if (D > kMaxHeadDim)
    throw Error(KVS_E_UNSUPPORTED, std::string(op) + ": head dim " + std::to_string(D) +
                                       " is not supported on CUDA (at most " + std::to_string(kMaxHeadDim) + ")");
}

template <class T>
static void launch_link_states(const MergeSegmentProblem& p, cudaStream_t stream) {
  LinkArgs<T> args{};
  args.keys = static_cast<const T*>(p.keys);
  args.words = reinterpret_cast<uint32_t*>(p.assign);
  args.tokens = p.B * p.H * p.T;
  args.head_tokens = p.T;
  args.D = p.D;
  args.protect_first = p.protect_first;
  args.protect_recent = p.protect_recent;
  args.rows_16_byte_aligned = is_16_byte_aligned(p.keys) && p.D * sizeof(T) % 16 == 0;
  link_state_kernel<T><<<grid_blocks(args.tokens, kLinkThreads), kLinkThreads, 0, stream>>>(args);
  KVS_CUDA_CHECK(cudaGetLastError(), "mergeSegments: launching the link kernel");
}

template <class T>
static void launch_gaussian_merge(const GaussianMergeProblem& p, cudaStream_t stream) {
  GaussianArgs<T> args{};
  args.keys = static_cast<const T*>(p.keys);
  args.values = static_cast<const T*>(p.values);
  args.scores = p.scores;
  args.lengths = p.lengths;
  args.out_keys = static_cast<T*>(p.out_keys);
  args.out_values = static_cast<T*>(p.out_values);
  args.sizes = p.sizes;
  args.pivots = p.pivots;
  args.slots = p.B * p.H * p.Tcap;
  args.head_tokens = p.T;
  args.D = p.D;
  args.Tcap = p.Tcap;
  args.sigma = p.sigma;
  args.paper_value_scale = p.value_scale == KVS_VALUE_SCALE_PAPER;
  gaussian_merge_kernel<T><<<grid_blocks(args.slots, kSlotWarps), kSlotThreads, 0, stream>>>(args);
  KVS_CUDA_CHECK(cudaGetLastError(), "gaussianMerge: launching the merge kernel");
}

template <class T>
static void launch_attention_scores(const AttentionScoresProblem& p, cudaStream_t stream) {
  ScoresArgs<T> args{};
  args.q = static_cast<const T*>(p.q);
  args.k = static_cast<const T*>(p.k);
  args.scores = p.scores;
  args.Hq = p.Hq;
  args.Hkv = p.Hkv;
  args.Tq = p.Tq;
  args.Tk = p.Tk;
  args.D = p.D;
  args.group = p.Hq / p.Hkv;
  args.window = p.window;
  args.rows_per_kv_head = args.group * p.window;
  args.blocks_per_kv_head = (args.rows_per_kv_head + kScoreWarps - 1) / kScoreWarps;
  args.tiles_per_kv_head = (p.Tk + kTileKeys - 1) / kTileKeys;
  args.key_stride = static_cast<int>(p.D | 1);
  args.scale = p.scale;
  args.causal = p.causal;

  const int64_t kv_heads = p.B * p.Hkv;
  const int64_t row_blocks = kv_heads * args.blocks_per_kv_head;
  const int64_t column_blocks = kv_heads * args.tiles_per_kv_head;
  if (row_blocks > kMaxGridBlocks || column_blocks > kMaxGridBlocks)
    throw Error(KVS_E_UNSUPPORTED, "attentionScores: " + std::to_string(kv_heads * args.rows_per_kv_head) +
                                       " rows by " + std::to_string(p.Tk) +
                                       " keys are more than the CUDA grid can cover");
  // Key tile, one query per warp, and the warps' sums: 41 KiB for D = 256.
  const size_t shared_bytes =
      (static_cast<size_t>(kTileKeys) * args.key_stride + kScoreWarps * p.D + kScoreWarps * kWarpSize) * sizeof(float);

  StreamScratch row_stats(static_cast<size_t>(kv_heads * args.rows_per_kv_head) * sizeof(float2), p.device, stream,
                          "attentionScores");
  args.row_stats = static_cast<float2*>(row_stats.get());
  row_stats_kernel<T><<<static_cast<unsigned>(row_blocks), kScoreThreads, shared_bytes, stream>>>(args);
  KVS_CUDA_CHECK(cudaGetLastError(), "attentionScores: launching the row kernel");
  column_scores_kernel<T><<<static_cast<unsigned>(column_blocks), kScoreThreads, shared_bytes, stream>>>(args);
  KVS_CUDA_CHECK(cudaGetLastError(), "attentionScores: launching the column kernel");
  row_stats.release();
}

// ---- entries ----------------------------------------------------------------------------------------

void merge_segments(const MergeSegmentProblem& p, void* stream) {
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  if (p.T > INT32_MAX)
    throw Error(KVS_E_UNSUPPORTED, "mergeSegments: " + std::to_string(p.T) + " tokens per head do not fit i32 assign");
  const int64_t heads = p.B * p.H;
  if (heads == 0 || p.T == 0) return;
  dispatch_float_dtype(p.dtype, "keys", [&](auto type_tag) {
    launch_link_states<typename decltype(type_tag)::type>(p, cuda_stream);
  });
  SegmentArgs args{};
  args.scores = p.scores;
  args.words = reinterpret_cast<uint32_t*>(p.assign);
  args.lengths = p.lengths;
  args.heads = heads;
  args.head_tokens = p.T;
  args.budget = p.budget;
  args.protect_top = p.protect_top;
  args.threshold = p.threshold;
  segment_row_kernel<<<grid_blocks(heads, 1), kRowThreads, 0, cuda_stream>>>(args);
  KVS_CUDA_CHECK(cudaGetLastError(), "mergeSegments: launching the segment kernel");
}

void gaussian_merge(const GaussianMergeProblem& p, void* stream) {
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  check_head_dim(p.D, "gaussianMerge");
  if (p.B * p.H * p.Tcap == 0) return;
  const int64_t tokens = p.B * p.H * p.T;
  if (tokens > 0) {
    slot_bounds_kernel<<<grid_blocks(tokens, kBoundsThreads), kBoundsThreads, 0, cuda_stream>>>(
        p.assign, p.pivots, p.sizes, tokens, p.T, p.Tcap);
    KVS_CUDA_CHECK(cudaGetLastError(), "gaussianMerge: launching the slot bounds kernel");
  }
  dispatch_float_dtype(p.dtype, "keys", [&](auto type_tag) {
    launch_gaussian_merge<typename decltype(type_tag)::type>(p, cuda_stream);
  });
}

void attention_scores(const AttentionScoresProblem& p, void* stream) {
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  check_head_dim(p.D, "attentionScores");
  if (p.B * p.Hkv * p.Tk == 0) return;
  dispatch_float_dtype(p.dtype, "q", [&](auto type_tag) {
    launch_attention_scores<typename decltype(type_tag)::type>(p, cuda_stream);
  });
}

}  // namespace kvs::cuda
