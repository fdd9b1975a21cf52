// Decode attention straight over the quantized cache (QuantAttentionProblem, csrc/core/quant.h):
// the kernels read codes, meta, residual slots and raw sink/recent rows and never write a
// dequantized copy. The math is kvs_attention's over the cache as quant_decode writes it
// (keys post-RoPE); the operation order differs from the CPU reference only in f32
// summation order and in RoPE's cos/sin (sincosf, within 2 ulp of the contract's
// double-rounded values), which quant.h's tolerance covers.
//
// Split-K in two kernels:
//  1. qattn_split_kernel: a block per (sequence b, query rows, token split). Rows number
//     (KV head h, query head g of h's GQA group, query i) as (h * G + g) * Tq + i (the order
//     of q, out and lse), so every row of a group shares each decoded key and value. A block
//     takes up to R rows of one KV head or, when each head has one row (MHA decode) and its
//     page keys need RoPE, the rows of R consecutive KV heads, so each cos/sin serves them
//     all. The block's 4 warps take 32-token chunks of the split in turn:
//       keys, a lane per token: the lane decodes its token's key unit by unit in registers
//       (each code word loaded once; NUQ levels from a per-channel table), applies RoPE
//       pair by pair where the key is not stored post-RoPE (cos/sin once per (token,
//       frequency), shared by all the block's heads and rows), and dots it with every
//       row's query; residual slots are added as separate rank-1 terms (rotated like the
//       key);
//       softmax: an online (running max, sum) per row and warp, in f32;
//       values, a lane per output dim: for each token of the chunk the lanes decode their
//       dims and accumulate p * v for every row.
//     Rotation codecs (rot2, rot1.5) never run the inverse Hadamard transform per token:
//     <q, sign .* H w * isd> = <isd * H(sign .* q), w>, so keys are scored against a
//     transformed query, and values accumulate sum_t p_t w_t in the rotated domain, which
//     the block transforms back once, at its end (H is linear).
//     The warps' states are merged in shared memory into one partial (max, sum, output)
//     per row and split, written to scratch.
//  2. qattn_merge_kernel: a warp per row combines the splits' partials into out and lse.
//
// Cost notes: the per-head statics (NUQ key levels per channel with range and zero folded
// in, VQ key zero/range, the value codebook, RoPE frequencies) sit in shared memory; the
// 8-D VQ codebooks (128 KB per head and side at D = 128) are read through L1/L2. Dot
// products use the CUDA cores (no tensor-core MMA yet).
#include <cmath>
#include <cstdint>
#include <string>

#include "common.cuh"
#include "scratch.cuh"
#include "core/attention.h"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/quant.h"
#include "core/quant_codec.h"
#include "kvsquash.h"

namespace kvs::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kChunkTokens = kWarpSize;                 // scoring gives each lane one key
constexpr int kSplitQuantum = kWarps * kChunkTokens;    // a split is a whole number of block rounds
constexpr int kBlocksPerSm = 4;                         // split-K aims at this many blocks per SM
constexpr int kMergeWarps = 4;
constexpr size_t kSharedMemoryWithoutOptIn = 48 * 1024;

// Output dims per lane (D <= 32 * kDimsPerLane) and query rows per block: the per-lane
// accumulators (rows x dims per lane) stay at 32 floats.
template <int kDimsPerLane>
__host__ __device__ constexpr int rows_per_block() {
  return kDimsPerLane >= 8 ? 4 : 8;
}

// One side (keys or values) of the pages.
struct PageSide {
  Codec codec;
  int32_t vector_bits, words_per_page, meta_per_page;
  const uint32_t* codes;
  const uint16_t* meta;            // nullptr when the codec has none
  const uint8_t* outlier_index;    // nullptr when format.outliers == 0
  const uint16_t* outlier_value;
  const void* raw;                 // [B, Hkv, Rcap, D] sink then recent rows, raw dtype
};

struct SplitArgs {
  QuantFormat format;
  Rope rope;
  PageSide key, value;
  int64_t capacity, n_pages, sink, T, raw_capacity;
  const int32_t* positions;  // [B, positions_stride] or nullptr (position = token index)
  int64_t positions_stride;
  const void* q;
  kvs_dtype q_dtype;
  const int32_t* kv_lengths;  // [B, Hkv] or nullptr
  int64_t Tq, rows_per_head, splits, split_tokens;
  int64_t row_chunks;           // blocks per KV head when a block serves one head
  int64_t blocks_per_sequence;
  float scale;
  bool causal;
  bool rope_page_keys;  // page keys are stored pre-RoPE and the cache has RoPE
  float* partial_out;   // [rows, splits, D], relative to exp(partial max)
  float2* partial_state;  // [rows, splits]: (max, sum)
};

struct MergeArgs {
  const float* partial_out;
  const float2* partial_state;
  void* out;
  kvs_dtype out_dtype;
  float* lse;  // or nullptr
  int64_t rows, splits;
  int32_t D;
};

// Shared memory of a split block, in floats: queries [R][D] (and their rotated copies for
// the Rotation codec), RoPE frequencies [D/2], the key statics of the block's heads (Vq:
// zero and range [heads][D]; NuqChannel: the 4 dequantized levels of every channel,
// [heads][D][4], the range and zero folded in), the value codebook (NuqToken), then the
// per-warp states for the final merge: outputs [kWarps][R][D] (twice for Rotation), maxima
// and sums [kWarps][R].
struct SharedLayout {
  int64_t queries, rotated_queries, inv_freq, key_zero, key_range, key_levels, value_levels, warp_out, warp_rotated, warp_max, warp_sum, total;
};

__host__ __device__ inline SharedLayout shared_layout(int32_t D, int rows, int heads, bool rotation, Codec key) {
  SharedLayout s{};
  int64_t at = 0;
  const auto take = [&](int64_t floats) {
    const int64_t start = at;
    at += (floats + 3) / 4 * 4;  // 16-byte aligned pieces
    return start;
  };
  s.queries = take(static_cast<int64_t>(rows) * D);
  s.rotated_queries = take(rotation ? static_cast<int64_t>(rows) * D : 0);
  s.inv_freq = take(D / 2);
  s.key_zero = take(key == Codec::Vq ? static_cast<int64_t>(heads) * D : 0);
  s.key_range = take(key == Codec::Vq ? static_cast<int64_t>(heads) * D : 0);
  s.key_levels = take(key == Codec::NuqChannel ? static_cast<int64_t>(heads) * D * kNuqLevels : 0);
  s.value_levels = take(kNuqLevels);
  s.warp_out = take(static_cast<int64_t>(kWarps) * rows * D);
  s.warp_rotated = take(rotation ? static_cast<int64_t>(kWarps) * rows * D : 0);
  s.warp_max = take(static_cast<int64_t>(kWarps) * rows);
  s.warp_sum = take(static_cast<int64_t>(kWarps) * rows);
  s.total = at;
  return s;
}

}  // namespace

// ---- device helpers -----------------------------------------------------------------------

// Where token t of the cache lives: a page (page_head unit and token within the page) or a
// raw row (slot in the raw arrays).
struct TokenPlace {
  bool in_page;
  int64_t page_head;
  int32_t token;
  int64_t raw_row;  // element index of the raw row's first value
};

static __device__ __forceinline__ TokenPlace place_token(const SplitArgs& a, int64_t b, int64_t h, int64_t t) {
  TokenPlace p{};
  const int64_t paged = a.n_pages * kQuantPageTokens;
  p.in_page = t >= a.sink && t < a.sink + paged;
  if (p.in_page) {
    p.page_head = (b * a.capacity + (t - a.sink) / kQuantPageTokens) * a.format.Hkv + h;
    p.token = static_cast<int32_t>((t - a.sink) % kQuantPageTokens);
  } else {
    const int64_t slot = t < a.sink ? t : t - paged;
    p.raw_row = ((b * a.format.Hkv + h) * a.raw_capacity + slot) * a.format.D;
  }
  return p;
}

// The code of `unit` of a page token. The codec is a compile-time constant at every call, so
// the contract's offset and width rules fold to shifts and masks in the inner loops.
template <Codec kCodec>
static __device__ __forceinline__ uint32_t unit_code(const QuantFormat& f, const PageSide& side, const uint32_t* words,
                                                     int32_t token, int32_t unit) {
  const int32_t bit = token * side.vector_bits + unit_bit_offset(f.mode, kCodec, f.D, unit);  // < 64 * 512
  return read_unit(words, bit, unit_width(f.mode, kCodec, f.D, unit));
}

// cos and sin of the RoPE angle of (position, frequency i): the contract's f32 angle; sincosf
// is within 2 ulp of the double-rounded values quant_codec.h states.
static __device__ __forceinline__ void rope_cos_sin(const float* inv_freq, int64_t pos, int32_t i, float& c, float& s) {
  sincosf(mul_rn(static_cast<float>(pos), inv_freq[i]), &s, &c);
}

// Rotates key pair (ka, kb) of dims (ia, ib) by (c, s) as apply_rope does and adds it to
// the dot products of head hb's rows.
template <int R, int kRowsPerHead>
static __device__ __forceinline__ void add_rotated_pair(const float* queries, int32_t D, int rows, int hb, int32_t ia, int32_t ib, float ka,
                                                        float kb, float c, float s, float (&dot)[R]) {
  const float ra = sub_rn(mul_rn(ka, c), mul_rn(kb, s));
  const float rb = add_rn(mul_rn(ka, s), mul_rn(kb, c));
#pragma unroll
  for (int jj = 0; jj < kRowsPerHead; ++jj) {
    const int j = hb * kRowsPerHead + jj;
    if (j < rows) dot[j] = fmaf(queries[j * D + ia], ra, fmaf(queries[j * D + ib], rb, dot[j]));
  }
}

// Adds <q_j, key of row j's head> for every row j < rows (rows kRowsPerHead per head, head
// hb < heads), the key given element by element by key_at(hb, d) (codec domain); with RoPE,
// pair by pair after rotating it by `pos` as apply_rope does, one cos/sin for all heads.
template <int R, int kRowsPerHead, class KeyAt>
static __device__ __forceinline__ void dot_key(const float* queries, int32_t D, int rows, int heads, const Rope& rope,
                                               const float* inv_freq, bool rotate, int64_t pos, KeyAt key_at, float (&dot)[R]) {
  constexpr int kHeads = R / kRowsPerHead;
  if (!rotate) {
    for (int32_t d = 0; d < D; ++d) {
#pragma unroll
      for (int hb = 0; hb < kHeads; ++hb) {
        if (hb >= heads) break;
        const float k = key_at(hb, d);
#pragma unroll
        for (int jj = 0; jj < kRowsPerHead; ++jj) {
          const int j = hb * kRowsPerHead + jj;
          if (j < rows) dot[j] = fmaf(queries[j * D + d], k, dot[j]);
        }
      }
    }
    return;
  }
  for (int32_t i = 0; i < D / 2; ++i) {
    int32_t ia, ib;
    rope_pair(rope.style, D, i, ia, ib);
    float c, s;
    rope_cos_sin(inv_freq, pos, i, c, s);
#pragma unroll
    for (int hb = 0; hb < kHeads; ++hb) {
      if (hb >= heads) break;
      const float ka = key_at(hb, ia), kb = key_at(hb, ib);
      add_rotated_pair<R, kRowsPerHead>(queries, D, rows, hb, ia, ib, ka, kb, c, s, dot);
    }
  }
}

// A page token's unit codes for the block's heads, read in increasing bit order: each code
// word is loaded once per head (the lanes read different tokens, so a load per unit would
// touch a sector per lane every time).
template <int kHeads>
struct CodeCursor {
  int32_t index = -1;
  uint32_t word[kHeads] = {};

  __device__ __forceinline__ void seek(const uint32_t* words, int32_t words_per_page, int heads, int32_t bit) {
    if ((bit >> 5) == index) return;
    index = bit >> 5;
#pragma unroll
    for (int hb = 0; hb < kHeads; ++hb)
      if (hb < heads) word[hb] = words[hb * words_per_page + index];
  }

  __device__ __forceinline__ uint32_t code(int hb, int32_t bit, int32_t width) const {
    return (word[hb] >> (bit & 31)) & ((1u << width) - 1u);
  }
};

// dot_key for a page token of codec kCodec: level(hb, d, code) is element d of head hb's key
// in the codec domain. Interleaved RoPE pairs share one code cursor; half pairs (i, i + D/2)
// read two.
template <int R, int kRowsPerHead, Codec kCodec, class Level>
static __device__ __forceinline__ void dot_page_key(const SplitArgs& a, const uint32_t* words, int32_t token, const float* queries, int rows,
                                                    int heads, const float* inv_freq, bool rotate, int64_t pos, Level level, float (&dot)[R]) {
  static_assert(kCodec != Codec::Rotation, "Rotation keys are scored in the rotated domain");
  constexpr int kHeads = R / kRowsPerHead;
  const QuantFormat& f = a.format;
  const int32_t D = f.D, words_per_page = a.key.words_per_page, token_bit = token * a.key.vector_bits;
  const auto unit_bit = [&](int32_t d) { return token_bit + unit_bit_offset(f.mode, kCodec, D, kCodec == Codec::Vq ? d / kVqGroup : d); };
  const int32_t width = unit_width(f.mode, kCodec, D, 0);  // one width for every unit of these codecs
  CodeCursor<kHeads> first, second;
  if (!rotate) {
    for (int32_t d = 0; d < D; ++d) {
      const int32_t bit = unit_bit(d);
      first.seek(words, words_per_page, heads, bit);
#pragma unroll
      for (int hb = 0; hb < kHeads; ++hb) {
        if (hb >= heads) break;
        const float k = level(hb, d, first.code(hb, bit, width));
#pragma unroll
        for (int jj = 0; jj < kRowsPerHead; ++jj) {
          const int j = hb * kRowsPerHead + jj;
          if (j < rows) dot[j] = fmaf(queries[j * D + d], k, dot[j]);
        }
      }
    }
    return;
  }
  const bool half = a.rope.style == KVS_ROPE_HALF;
  for (int32_t i = 0; i < D / 2; ++i) {
    int32_t ia, ib;
    rope_pair(a.rope.style, D, i, ia, ib);
    float c, s;
    rope_cos_sin(inv_freq, pos, i, c, s);
    const int32_t bit_a = unit_bit(ia), bit_b = unit_bit(ib);
    first.seek(words, words_per_page, heads, bit_a);
    if (half)
      second.seek(words, words_per_page, heads, bit_b);
    else
      first.seek(words, words_per_page, heads, bit_b);  // the word of bit_a: units never straddle words
#pragma unroll
    for (int hb = 0; hb < kHeads; ++hb) {
      if (hb >= heads) break;
      const uint32_t code_b = half ? second.code(hb, bit_b, width) : first.code(hb, bit_b, width);
      const float ka = level(hb, ia, first.code(hb, bit_a, width)), kb = level(hb, ib, code_b);
      add_rotated_pair<R, kRowsPerHead>(queries, D, rows, hb, ia, ib, ka, kb, c, s, dot);
    }
  }
}

// The residual slots of a page key, as rank-1 terms value * e_d (rotated by RoPE where the
// key is: the slots are added in the codec domain, before RoPE). p locates head 0's page.
template <int R, int kRowsPerHead>
static __device__ __forceinline__ void dot_key_residuals(const SplitArgs& a, const TokenPlace& p, const float* queries, int rows, int heads,
                                                         const float* inv_freq, bool rotate, int64_t pos, float (&dot)[R]) {
  constexpr int kHeads = R / kRowsPerHead;
  const int32_t D = a.format.D, slots = a.format.outliers;
#pragma unroll
  for (int hb = 0; hb < kHeads; ++hb) {
    if (hb >= heads) break;
    const int64_t first = ((p.page_head + hb) * kQuantPageTokens + p.token) * slots;
    for (int32_t s = 0; s < slots; ++s) {
      const uint16_t bits = a.key.outlier_value[first + s];
      const int32_t d = a.key.outlier_index[first + s];
      if ((bits & 0x7fffu) == 0 || d >= D) continue;  // empty slot (a valid page has d < D)
      const float v = half_to_float(bits);
      // unrotated: (ia, ra) = (d, v), rb = 0; rotated: (v, 0) turns into (v c, v s) and (0, v) into (-v s, v c)
      int32_t ia = d, ib = d;
      float ra = v, rb = 0.0f;
      if (rotate) {
        const bool half = a.rope.style == KVS_ROPE_HALF;
        const int32_t i = half ? d % (D / 2) : d / 2;
        const bool first_of_pair = half ? d < D / 2 : d % 2 == 0;
        rope_pair(a.rope.style, D, i, ia, ib);
        float c, sn;
        rope_cos_sin(inv_freq, pos, i, c, sn);
        ra = first_of_pair ? mul_rn(v, c) : -mul_rn(v, sn);
        rb = first_of_pair ? mul_rn(v, sn) : mul_rn(v, c);
      }
#pragma unroll
      for (int jj = 0; jj < kRowsPerHead; ++jj) {
        const int j = hb * kRowsPerHead + jj;
        if (j < rows) dot[j] = fmaf(queries[j * D + ia], ra, fmaf(queries[j * D + ib], rb, dot[j]));
      }
    }
  }
}

// Lane work of a chunk: the scores <q_j, k_t> of the lane's token t for every row, the
// block's heads h0 .. h0 + heads - 1 (their statics at hb * D in key_zero / key_range).
template <int R, int kRowsPerHead, bool kRotation>
static __device__ __forceinline__ void score_token(const SplitArgs& a, int64_t b, int64_t h0, int heads, int64_t t, const float* queries,
                                   const float* rotated_queries, const float* inv_freq, const float* key_zero, const float* key_range,
                                   const float* key_levels, int rows, float isd, float (&dot)[R]) {
  constexpr int kHeads = R / kRowsPerHead;
  const QuantFormat& f = a.format;
  const int32_t D = f.D;
  const TokenPlace p = place_token(a, b, h0, t);  // head h0 + hb: page_head + hb, raw_row + hb * raw head size
  const bool rotate = a.rope.style != KVS_ROPE_NONE && (!p.in_page || a.rope_page_keys);
  const int64_t pos = !rotate ? 0 : (a.positions ? a.positions[b * a.positions_stride + t] : t);
#pragma unroll
  for (int j = 0; j < R; ++j) dot[j] = 0.0f;

  if (!p.in_page) {
    const int64_t head_size = a.raw_capacity * D;
    const auto raw_at = [&](int hb, int32_t d) { return load_storage(a.key.raw, f.raw_dtype, p.raw_row + hb * head_size + d); };
    dot_key<R, kRowsPerHead>(queries, D, rows, heads, a.rope, inv_freq, rotate, pos, raw_at, dot);
    return;
  }
  const uint32_t* words = a.key.codes + p.page_head * a.key.words_per_page;  // head hb: + hb * words_per_page
  if constexpr (kRotation) {
    // post-RoPE pages: <q, sign .* H w * isd> = <rotated q, w>, w_d = level_d * step
#pragma unroll
    for (int hb = 0; hb < kHeads; ++hb) {
      if (hb >= heads) break;
      const uint32_t* head_words = words + hb * a.key.words_per_page;
      float head_dot[kRowsPerHead] = {};
      CodeCursor<1> cursor;
      for (int32_t d = 0; d < D; ++d) {
        const int32_t bit = p.token * a.key.vector_bits + unit_bit_offset(f.mode, Codec::Rotation, D, d);
        cursor.seek(head_words, 0, 1, bit);
        const float level = lloyd_max_level(rotation_two_bits(f.mode, D, d), cursor.code(0, bit, unit_width(f.mode, Codec::Rotation, D, d)));
#pragma unroll
        for (int jj = 0; jj < kRowsPerHead; ++jj) {
          const int j = hb * kRowsPerHead + jj;
          if (j < rows) head_dot[jj] = fmaf(rotated_queries[j * D + d], level, head_dot[jj]);
        }
      }
      const float step = mul_rn(half_to_float(a.key.meta[(p.page_head + hb) * a.key.meta_per_page + p.token]), isd);
#pragma unroll
      for (int jj = 0; jj < kRowsPerHead; ++jj) dot[hb * kRowsPerHead + jj] = head_dot[jj] * step;
    }
  } else {
    switch (a.key.codec) {
      case Codec::UniformChannel: {
        const uint16_t* meta = a.key.meta + p.page_head * a.key.meta_per_page + (p.token / kKiviTokenGroup) * D * 2;
        const auto level = [&](int hb, int32_t d, uint32_t code) {
          const uint16_t* m = meta + hb * a.key.meta_per_page;
          return uniform_value(code, half_to_float(m[2 * d]), half_to_float(m[2 * d + 1]));
        };
        dot_page_key<R, kRowsPerHead, Codec::UniformChannel>(a, words, p.token, queries, rows, heads, inv_freq, rotate, pos, level, dot);
        break;
      }
      case Codec::NuqChannel: {
        const auto level = [&](int hb, int32_t d, uint32_t code) { return key_levels[(hb * D + d) * kNuqLevels + code]; };
        dot_page_key<R, kRowsPerHead, Codec::NuqChannel>(a, words, p.token, queries, rows, heads, inv_freq, rotate, pos, level, dot);
        break;
      }
      default: {  // Vq over channel-normalized keys
        const float* book = f.key_vq_codebook + h0 * D * kVqEntries;  // [heads][D/8][256][8] from head h0
        const auto level = [&](int hb, int32_t d, uint32_t code) {
          const int32_t g = d / kVqGroup;
          const float c = __ldg(book + ((static_cast<int64_t>(hb) * (D / kVqGroup) + g) * kVqEntries + code) * kVqGroup + d % kVqGroup);
          return fma_rn(c, key_range[hb * D + d], key_zero[hb * D + d]);
        };
        dot_page_key<R, kRowsPerHead, Codec::Vq>(a, words, p.token, queries, rows, heads, inv_freq, rotate, pos, level, dot);
        break;
      }
    }
  }
  if (f.outliers > 0) dot_key_residuals<R, kRowsPerHead>(a, p, queries, rows, heads, inv_freq, rotate, pos, dot);
}

// Warp work per token t of a chunk, for the rows of block head hb (rows hb * kRowsPerHead
// ..): acc[j][c] += p_j * v_t[lane + 32 c] (Rotation pages: rotated[j][c] += p_j * w_t[...]
// instead; residual slots always go to acc). p locates the token for head h = h0 + hb.
template <int kDimsPerLane, int R, int kRowsPerHead, bool kRotation>
static __device__ __forceinline__ void accumulate_head_value(const SplitArgs& a, const TokenPlace& p, int64_t h, int hb, int lane, int rows,
                                                             const float* value_levels, float isd, const float (&weight)[R],
                                                             float (&acc)[R][kDimsPerLane], float (&rotated)[R][kDimsPerLane]) {
  const QuantFormat& f = a.format;
  const int32_t D = f.D;
  // v_t[d] for the lane's dims into the head's rows
  const auto add_dims = [&](auto value_at) {
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int32_t d = lane + c * kWarpSize;
      if (d >= D) break;
      const float v = value_at(d);
#pragma unroll
      for (int jj = 0; jj < kRowsPerHead; ++jj) {
        const int j = hb * kRowsPerHead + jj;
        if (j < rows) acc[j][c] = fmaf(weight[j], v, acc[j][c]);
      }
    }
  };
  if (!p.in_page) {
    add_dims([&](int32_t d) { return load_storage(a.value.raw, f.raw_dtype, p.raw_row + d); });
    return;
  }
  const uint32_t* words = a.value.codes + p.page_head * a.value.words_per_page;
  const uint16_t* meta = a.value.meta ? a.value.meta + p.page_head * a.value.meta_per_page : nullptr;
  if constexpr (kRotation) {
    const float step = mul_rn(half_to_float(meta[p.token]), isd);
    float scaled[kRowsPerHead];
#pragma unroll
    for (int jj = 0; jj < kRowsPerHead; ++jj) scaled[jj] = weight[hb * kRowsPerHead + jj] * step;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int32_t d = lane + c * kWarpSize;
      if (d >= D) break;
      const float level = lloyd_max_level(rotation_two_bits(f.mode, D, d), unit_code<Codec::Rotation>(f, a.value, words, p.token, d));
#pragma unroll
      for (int jj = 0; jj < kRowsPerHead; ++jj) {
        const int j = hb * kRowsPerHead + jj;
        if (j < rows) rotated[j][c] = fmaf(scaled[jj], level, rotated[j][c]);
      }
    }
  } else {
    switch (a.value.codec) {
      case Codec::UniformToken: {
        const uint16_t* m = meta + static_cast<int64_t>(p.token) * uniform_token_groups(D) * 2;
        add_dims([&](int32_t d) {
          const int32_t g = d / kKiviChannelGroup;
          return uniform_value(unit_code<Codec::UniformToken>(f, a.value, words, p.token, d), half_to_float(m[2 * g]), half_to_float(m[2 * g + 1]));
        });
        break;
      }
      case Codec::NuqToken: {
        const float zero = half_to_float(meta[2 * p.token]), range = half_to_float(meta[2 * p.token + 1]);
        add_dims([&](int32_t d) { return fma_rn(value_levels[unit_code<Codec::NuqToken>(f, a.value, words, p.token, d)], range, zero); });
        break;
      }
      default: {  // Vq
        const float* book = f.value_vq_codebook + h * D * kVqEntries;  // [D/8][256][8] of head h
        add_dims([&](int32_t d) {
          const int32_t g = d / kVqGroup;
          const uint32_t code = unit_code<Codec::Vq>(f, a.value, words, p.token, g);
          return __ldg(book + (static_cast<int64_t>(g) * kVqEntries + code) * kVqGroup + d % kVqGroup);
        });
        break;
      }
    }
  }
  if (f.outliers > 0) {
    const int64_t first = (p.page_head * kQuantPageTokens + p.token) * f.outliers;
    for (int32_t s = 0; s < f.outliers; ++s) {
      const uint16_t bits = a.value.outlier_value[first + s];
      const int32_t d = a.value.outlier_index[first + s];
      if ((bits & 0x7fffu) == 0) continue;
      const float v = half_to_float(bits);
#pragma unroll
      for (int c = 0; c < kDimsPerLane; ++c)
        if (d == lane + c * kWarpSize) {
#pragma unroll
          for (int jj = 0; jj < kRowsPerHead; ++jj) {
            const int j = hb * kRowsPerHead + jj;
            if (j < rows) acc[j][c] = fmaf(weight[j], v, acc[j][c]);
          }
        }
    }
  }
}

// The same for every head of the block.
template <int kDimsPerLane, int R, int kRowsPerHead, bool kRotation>
static __device__ __forceinline__ void accumulate_value(const SplitArgs& a, int64_t b, int64_t h0, int heads, int64_t t, int lane, int rows,
                                                        const float* value_levels, float isd, const float (&weight)[R],
                                                        float (&acc)[R][kDimsPerLane], float (&rotated)[R][kDimsPerLane]) {
  constexpr int kHeads = R / kRowsPerHead;
  TokenPlace p = place_token(a, b, h0, t);
#pragma unroll
  for (int hb = 0; hb < kHeads; ++hb) {
    if (hb >= heads) break;
    accumulate_head_value<kDimsPerLane, R, kRowsPerHead, kRotation>(a, p, h0 + hb, hb, lane, rows, value_levels, isd, weight, acc, rotated);
    p.page_head += 1;  // the next KV head: the next page unit, the next raw head
    p.raw_row += a.raw_capacity * a.format.D;
  }
}

// In-place unnormalized Walsh-Hadamard transform of `count` rows of D floats in shared
// memory, by the whole block (every thread must call it).
static __device__ void block_walsh_hadamard(float* rows, int count, int32_t D) {
  const int butterflies = count * (D / 2);
  for (int32_t len = 1; len < D; len <<= 1) {
    for (int k = static_cast<int>(threadIdx.x); k < butterflies; k += kThreads) {
      const int row = k / (D / 2), pair = k % (D / 2);
      const int j = row * D + (pair / len) * 2 * len + pair % len;
      const float x = rows[j], y = rows[j + len];
      rows[j] = x + y;
      rows[j + len] = x - y;
    }
    __syncthreads();
  }
}

// ---- kernels ------------------------------------------------------------------------------

template <int kDimsPerLane, int kRowsPerHead, bool kRotation>
static __global__ void __launch_bounds__(kThreads) qattn_split_kernel(const __grid_constant__ SplitArgs a) {
  constexpr int R = rows_per_block<kDimsPerLane>();
  constexpr int kHeads = R / kRowsPerHead;  // 1: the block takes up to R rows of one head
  extern __shared__ __align__(16) float shared[];
  const QuantFormat& f = a.format;
  const int32_t D = f.D;
  const SharedLayout layout = shared_layout(D, R, kHeads, kRotation, a.key.codec);
  float* queries = shared + layout.queries;
  float* rotated_queries = shared + layout.rotated_queries;
  float* inv_freq = shared + layout.inv_freq;
  float* key_zero = shared + layout.key_zero;
  float* key_range = shared + layout.key_range;
  float* key_levels = shared + layout.key_levels;
  float* value_levels = shared + layout.value_levels;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;

  int64_t block = blockIdx.x;
  const int64_t split = block % a.splits;
  block /= a.splits;
  const int64_t b = block / a.blocks_per_sequence, in_sequence = block % a.blocks_per_sequence;
  // the block's KV heads h0 .. h0 + heads - 1 and rows: row j is row row0 + j of head h0
  // (one head), or row j % kRowsPerHead of head h0 + j / kRowsPerHead
  int64_t h0, row0;
  int heads, rows;
  if constexpr (kHeads == 1) {
    h0 = in_sequence / a.row_chunks;
    row0 = in_sequence % a.row_chunks * R;
    heads = 1;
    rows = static_cast<int>(min(static_cast<int64_t>(R), a.rows_per_head - row0));
  } else {
    h0 = in_sequence * kHeads;
    row0 = 0;
    heads = static_cast<int>(min(static_cast<int64_t>(kHeads), f.Hkv - h0));
    rows = heads * kRowsPerHead;
  }
  const int64_t first_row = (b * f.Hkv + h0) * a.rows_per_head + row0;  // of q, out and lse; the rows are consecutive

  // Lengths were validated on the host; clamping keeps a bad one from reading out of bounds.
  int64_t limit[R];
  int64_t block_limit = 0;
#pragma unroll
  for (int j = 0; j < R; ++j) {
    const int hb = j / kRowsPerHead;
    limit[j] = 0;
    if (j >= rows) continue;
    int64_t length = a.T;
    if (a.kv_lengths) length = min(max(static_cast<int64_t>(a.kv_lengths[b * f.Hkv + h0 + hb]), int64_t{0}), a.T);
    const int64_t row_in_head = row0 + j - hb * kRowsPerHead;
    limit[j] = attention_key_limit(a.causal, length, a.Tq, row_in_head % a.Tq);
    block_limit = max(block_limit, limit[j]);
  }

  // Statics and queries (padding rows are zero).
  for (int e = static_cast<int>(threadIdx.x); e < R * D; e += kThreads) {
    const int j = e / D;
    queries[e] = j < rows ? load_storage(a.q, a.q_dtype, first_row * D + e) : 0.0f;
  }
  for (int d = static_cast<int>(threadIdx.x); d < D; d += kThreads)
    if (a.rope.style != KVS_ROPE_NONE && d < D / 2) inv_freq[d] = a.rope.inv_freq[d];
  if (a.key.codec == Codec::Vq)
    for (int e = static_cast<int>(threadIdx.x); e < heads * D; e += kThreads) {
      key_zero[e] = f.key_zero[h0 * D + e];
      key_range[e] = f.key_range[h0 * D + e];
    }
  if (a.key.codec == Codec::NuqChannel)  // the values dequantize_units computes, per code
    for (int e = static_cast<int>(threadIdx.x); e < heads * D * kNuqLevels; e += kThreads) {
      const int64_t channel = h0 * D + e / kNuqLevels;
      key_levels[e] = fma_rn(f.key_codebook[e % kNuqLevels], f.key_range[channel], f.key_zero[channel]);
    }
  if (a.value.codec == Codec::NuqToken && threadIdx.x < kNuqLevels) value_levels[threadIdx.x] = f.value_codebook[threadIdx.x];
  __syncthreads();
  const float isd = div_rn(1.0f, sqrt_rn(static_cast<float>(D)));
  if constexpr (kRotation) {
    for (int e = static_cast<int>(threadIdx.x); e < R * D; e += kThreads)
      rotated_queries[e] = rotation_sign_negative(f.rotation_seed, e % D) ? -queries[e] : queries[e];
    __syncthreads();
    block_walsh_hadamard(rotated_queries, R, D);
    for (int e = static_cast<int>(threadIdx.x); e < R * D; e += kThreads) rotated_queries[e] *= isd;
    __syncthreads();
  }

  // Online softmax state of the warp: equal on all lanes except the accumulators, which are
  // relative to exp(running_max).
  float running_max[R], denominator[R], acc[R][kDimsPerLane], rotated[R][kDimsPerLane];
#pragma unroll
  for (int j = 0; j < R; ++j) {
    running_max[j] = -INFINITY;
    denominator[j] = 0.0f;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) acc[j][c] = rotated[j][c] = 0.0f;
  }

  const int64_t begin = split * a.split_tokens;
  const int64_t end = min(begin + a.split_tokens, block_limit);
  for (int64_t chunk = begin + warp * kChunkTokens; chunk < end; chunk += kSplitQuantum) {
    const int64_t t = chunk + lane;
    float logit[R];
    if (t < end) {
      score_token<R, kRowsPerHead, kRotation>(a, b, h0, heads, t, queries, rotated_queries, inv_freq, key_zero, key_range, key_levels, rows, isd,
                                              logit);
#pragma unroll
      for (int j = 0; j < R; ++j) logit[j] = t < limit[j] ? a.scale * logit[j] : -INFINITY;
    } else {
#pragma unroll
      for (int j = 0; j < R; ++j) logit[j] = -INFINITY;
    }

    float weight[R];
#pragma unroll
    for (int j = 0; j < R; ++j) {
      weight[j] = 0.0f;
      if (j >= rows) continue;
      const float new_max = fmaxf(running_max[j], warp_max(logit[j]));
      if (new_max == -INFINITY) continue;  // no visible key yet: nothing to add
      const float rescale = expf(running_max[j] - new_max);
      weight[j] = expf(logit[j] - new_max);
      denominator[j] = denominator[j] * rescale + warp_sum(weight[j]);
      running_max[j] = new_max;
#pragma unroll
      for (int c = 0; c < kDimsPerLane; ++c) {
        acc[j][c] *= rescale;
        if constexpr (kRotation) rotated[j][c] *= rescale;
      }
    }

    const int tokens = static_cast<int>(min(static_cast<int64_t>(kChunkTokens), end - chunk));
    for (int k = 0; k < tokens; ++k) {
      float token_weight[R];
      bool any = false;
#pragma unroll
      for (int j = 0; j < R; ++j) {
        token_weight[j] = __shfl_sync(kFullWarpMask, weight[j], k);
        any |= token_weight[j] != 0.0f;
      }
      if (!any) continue;  // warp-uniform: masked for every row
      accumulate_value<kDimsPerLane, R, kRowsPerHead, kRotation>(a, b, h0, heads, chunk + k, lane, rows, value_levels, isd, token_weight, acc,
                                                                 rotated);
    }
  }

  // Merge the warps: each writes its state, then each (row, dim) is combined by one thread.
  float* warp_out = shared + layout.warp_out;
  float* warp_rotated = shared + layout.warp_rotated;
  float* warp_max_s = shared + layout.warp_max;
  float* warp_sum_s = shared + layout.warp_sum;
#pragma unroll
  for (int j = 0; j < R; ++j) {
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int32_t d = lane + c * kWarpSize;
      if (d >= D) break;
      warp_out[(warp * R + j) * D + d] = acc[j][c];
      if constexpr (kRotation) warp_rotated[(warp * R + j) * D + d] = rotated[j][c];
    }
    if (lane == 0) {
      warp_max_s[warp * R + j] = running_max[j];
      warp_sum_s[warp * R + j] = denominator[j];
    }
  }
  __syncthreads();
  for (int e = static_cast<int>(threadIdx.x); e < rows * D; e += kThreads) {
    const int j = e / D;
    float m = -INFINITY;
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, warp_max_s[w * R + j]);
    float o = 0.0f, o_rotated = 0.0f;
    if (m != -INFINITY)
      for (int w = 0; w < kWarps; ++w) {
        const float mw = warp_max_s[w * R + j];
        if (mw == -INFINITY) continue;
        const float factor = expf(mw - m);
        o = fmaf(factor, warp_out[w * R * D + e], o);
        if constexpr (kRotation) o_rotated = fmaf(factor, warp_rotated[w * R * D + e], o_rotated);
      }
    warp_out[e] = o;  // warp 0's slot: read above by this thread only
    if constexpr (kRotation) warp_rotated[e] = o_rotated;
  }
  __syncthreads();
  if constexpr (kRotation) {
    // back from the rotated domain: sign .* (H o_rotated) * isd, added to the raw/residual part
    block_walsh_hadamard(warp_rotated, rows, D);
    for (int e = static_cast<int>(threadIdx.x); e < rows * D; e += kThreads) {
      const float w = warp_rotated[e] * isd;
      warp_out[e] += rotation_sign_negative(f.rotation_seed, e % D) ? -w : w;
    }
    __syncthreads();
  }

  for (int e = static_cast<int>(threadIdx.x); e < rows * D; e += kThreads) {
    const int j = e / D;
    a.partial_out[((first_row + j) * a.splits + split) * D + e % D] = warp_out[e];
  }
  if (threadIdx.x < static_cast<unsigned>(rows)) {
    const int j = static_cast<int>(threadIdx.x);
    float m = -INFINITY, l = 0.0f;
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, warp_max_s[w * R + j]);
    if (m != -INFINITY)
      for (int w = 0; w < kWarps; ++w) {
        const float mw = warp_max_s[w * R + j];
        if (mw != -INFINITY) l = fmaf(expf(mw - m), warp_sum_s[w * R + j], l);
      }
    a.partial_state[(first_row + j) * a.splits + split] = make_float2(m, l);
  }
}

// A warp per output row: out = sum_s e^(m_s - M) o_s / L, lse = M + log L, L = sum_s e^(m_s - M) l_s.
static __global__ void __launch_bounds__(kMergeWarps * kWarpSize) qattn_merge_kernel(const __grid_constant__ MergeArgs a) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeWarps + threadIdx.x / kWarpSize;
  if (row >= a.rows) return;
  const float2* state = a.partial_state + row * a.splits;
  float m = -INFINITY;
  for (int64_t s = 0; s < a.splits; ++s) m = fmaxf(m, state[s].x);
  float l = 0.0f;
  if (m != -INFINITY)
    for (int64_t s = 0; s < a.splits; ++s)
      if (state[s].x != -INFINITY) l = fmaf(expf(state[s].x - m), state[s].y, l);
  // A row that saw no key (or only zero weights) gets zeros and lse = -inf, as on the CPU.
  const bool has_weight = l > 0.0f;
  for (int32_t d = lane; d < a.D; d += kWarpSize) {
    float o = 0.0f;
    if (has_weight) {
      for (int64_t s = 0; s < a.splits; ++s)
        if (state[s].x != -INFINITY) o = fmaf(expf(state[s].x - m), a.partial_out[(row * a.splits + s) * a.D + d], o);
      o /= l;
    }
    store_float_as(a.out, a.out_dtype, row * a.D + d, o);
  }
  if (a.lse && lane == 0) a.lse[row] = has_weight ? m + logf(l) : -INFINITY;
}

// ---- launch -------------------------------------------------------------------------------

namespace {

PageSide page_side(const QuantDecodeProblem& c, bool is_key) {
  const QuantFormat& f = c.format;
  PageSide s{};
  s.codec = is_key ? key_codec(f.mode) : value_codec(f.mode);
  s.vector_bits = vector_bits(f.mode, s.codec, f.D);
  s.words_per_page = words_per_page(f.mode, s.codec, f.D);
  s.meta_per_page = meta_per_page(s.codec, f.D);
  s.codes = is_key ? c.pages.key_codes : c.pages.value_codes;
  s.meta = is_key ? c.pages.key_meta : c.pages.value_meta;
  if (f.outliers > 0) {
    s.outlier_index = is_key ? c.pages.key_outlier_index : c.pages.value_outlier_index;
    s.outlier_value = is_key ? c.pages.key_outlier_value : c.pages.value_outlier_value;
  }
  s.raw = is_key ? c.raw_keys : c.raw_values;
  return s;
}

int multiprocessor_count(int device) {
  int count = 0;
  KVS_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device),
                 "quantizedAttention: querying the multiprocessor count of cuda:" + std::to_string(device));
  return count;
}

template <int kDimsPerLane, int kRowsPerHead, bool kRotation>
void launch_split(SplitArgs& args, const QuantAttentionProblem& p, cudaStream_t stream) {
  constexpr int R = rows_per_block<kDimsPerLane>();
  constexpr int kHeads = R / kRowsPerHead;
  const int64_t B = p.cache.B, Hkv = p.cache.format.Hkv, D = p.cache.format.D;
  args.row_chunks = (args.rows_per_head + R - 1) / R;
  args.blocks_per_sequence = kHeads == 1 ? Hkv * args.row_chunks : (Hkv + kHeads - 1) / kHeads;
  // Enough splits to give every SM kBlocksPerSm blocks, each split a whole number of rounds.
  const int64_t units = B * args.blocks_per_sequence;
  const int64_t max_splits = (p.T + kSplitQuantum - 1) / kSplitQuantum;
  const int64_t wanted = (static_cast<int64_t>(kBlocksPerSm) * multiprocessor_count(p.cache.device) + units - 1) / units;
  const int64_t splits = wanted < 1 ? 1 : (wanted > max_splits ? max_splits : wanted);
  args.split_tokens = ((p.T + splits - 1) / splits + kSplitQuantum - 1) / kSplitQuantum * kSplitQuantum;
  args.splits = (p.T + args.split_tokens - 1) / args.split_tokens;
  const int64_t blocks = units * args.splits;
  if (blocks > INT32_MAX)
    throw Error(KVS_E_UNSUPPORTED, "quantizedAttention: " + std::to_string(blocks) + " blocks are more than the CUDA grid allows");

  const int64_t rows = B * p.Hq * p.Tq;
  const size_t partial_bytes = static_cast<size_t>(rows * args.splits * D) * sizeof(float);
  StreamScratch scratch(partial_bytes + static_cast<size_t>(rows * args.splits) * sizeof(float2), p.cache.device, stream,
                        "quantizedAttention");
  args.partial_out = static_cast<float*>(scratch.get());
  args.partial_state = reinterpret_cast<float2*>(static_cast<unsigned char*>(scratch.get()) + partial_bytes);

  const size_t shared_bytes = static_cast<size_t>(shared_layout(static_cast<int32_t>(D), R, kHeads, kRotation, args.key.codec).total) * sizeof(float);
  if (shared_bytes > kSharedMemoryWithoutOptIn)  // not reached for D <= 256; kept as a guard
    throw Error(KVS_E_UNSUPPORTED, "quantizedAttention: head dim " + std::to_string(D) + " needs " + std::to_string(shared_bytes) +
                                       " bytes of shared memory per block");
  qattn_split_kernel<kDimsPerLane, kRowsPerHead, kRotation><<<static_cast<unsigned>(blocks), kThreads, shared_bytes, stream>>>(args);
  KVS_CUDA_CHECK(cudaGetLastError(), "quantizedAttention: launching the split kernel");

  MergeArgs merge{args.partial_out, args.partial_state, p.out, p.out_dtype, p.lse, rows, args.splits, static_cast<int32_t>(D)};
  qattn_merge_kernel<<<grid_blocks(rows, kMergeWarps), kMergeWarps * kWarpSize, 0, stream>>>(merge);
  KVS_CUDA_CHECK(cudaGetLastError(), "quantizedAttention: launching the merge kernel");
  scratch.release();
}

// With one query row per KV head (MHA decode) and page keys that need RoPE, a block serves
// R heads so that each cos/sin serves all of them (a GQA group's rows already share them
// in one block); D <= 128 keeps the heads' statics within 48 KB of shared memory.
// Elsewhere, the Rotation codec included (its pages hold post-RoPE keys), a block serves
// one head.
template <int kDimsPerLane>
void dispatch_rows(SplitArgs& args, const QuantAttentionProblem& p, cudaStream_t stream) {
  constexpr int R = rows_per_block<kDimsPerLane>();
  if (args.key.codec == Codec::Rotation) return launch_split<kDimsPerLane, R, true>(args, p, stream);
  if constexpr (kDimsPerLane <= 4)
    if (args.rope_page_keys && args.rows_per_head == 1 && p.cache.format.Hkv > 1) return launch_split<kDimsPerLane, 1, false>(args, p, stream);
  launch_split<kDimsPerLane, R, false>(args, p, stream);
}

void dispatch_dims(SplitArgs& args, const QuantAttentionProblem& p, cudaStream_t stream) {
  const int32_t D = p.cache.format.D;
  if (D <= 32) return dispatch_rows<1>(args, p, stream);
  if (D <= 64) return dispatch_rows<2>(args, p, stream);
  if (D <= 128) return dispatch_rows<4>(args, p, stream);
  dispatch_rows<8>(args, p, stream);
}

}  // namespace

void quant_attention(const QuantAttentionProblem& p, void* stream) {
  const QuantDecodeProblem& c = p.cache;
  if (c.format.D > kQuantMaxHeadDim || c.format.D % kVqGroup != 0)
    throw Error(KVS_E_UNSUPPORTED, "quantizedAttention: head dim " + std::to_string(c.format.D) + " is not supported");
  use_device(c.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(c.device, stream));
  if (c.B * p.Hq * p.Tq == 0) return;

  SplitArgs args{};
  args.format = c.format;
  args.rope = c.rope;
  args.key = page_side(c, true);
  args.value = page_side(c, false);
  args.capacity = c.pages.capacity, args.n_pages = c.n_pages, args.sink = c.sink, args.T = p.T;
  args.raw_capacity = c.raw_capacity;
  args.positions = c.positions, args.positions_stride = c.positions_stride;
  args.q = p.q, args.q_dtype = p.q_dtype;
  args.kv_lengths = p.kv_lengths;
  args.Tq = p.Tq;
  args.rows_per_head = (p.Hq / c.format.Hkv) * p.Tq;
  args.scale = p.scale;
  args.causal = p.causal;
  args.rope_page_keys = c.rope.style != KVS_ROPE_NONE && !encodes_post_rope(args.key.codec);
  dispatch_dims(args, p, cuda_stream);
}

}  // namespace kvs::cuda
