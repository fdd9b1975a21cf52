// Sub-2-bit KV quantization (after KVQuant, KIVI, coupled quantization and rotated Lloyd-Max
// codes): the format both backends read and write. The per-vector rules live in
// csrc/core/quant_codec.h and are compiled into both the CPU reference (csrc/cpu/quant.cc)
// and the CUDA kernels (cuda/quant.cu), so every code, scale, outlier slot and dequantized
// value is bit-identical on CPU and CUDA.
//
// A cache holds, per sequence b and KV head h, T tokens of keys and values [.., D]:
//   tokens [0, S)           "sink": full precision (raw dtype)
//   tokens [S, S + 64 P)    P pages of 64 tokens, quantized
//   tokens [S + 64 P, T)    "recent": full precision, R <= count < R + 64 once T >= S + R
// with S = sinkTokens, R = recentTokens. Appending tokens grows the recent part; whenever it
// reaches R + 64 tokens, its oldest 64 become a page. So pages never mix formats, and
// appending gives the same bits as quantizing the whole sequence at once: every token is
// first rounded to the raw dtype (f16 or bf16 or f32), and pages are encoded from those
// rounded values, whichever way they arrived.
//
// Modes (kvs_quant_mode) pick a codec for keys and one for values:
//   mode    keys                                   values
//   kivi2   UniformChannel, post-RoPE               UniformToken
//   nuq2    NuqChannel, pre-RoPE                    NuqToken
//   k2v1    NuqChannel, pre-RoPE                    Vq
//   cq1     Vq over channel-normalized keys, pre-RoPE  Vq
//   rot2    Rotation (2-bit), post-RoPE             Rotation (2-bit)
//   rot1.5  Rotation (2-bit half, 1-bit half)       same
// "post-RoPE" codecs rotate pre-RoPE keys with the cache's RoPE before encoding; "pre-RoPE"
// codecs encode the keys as given. With rope style NONE the keys are used as given anywhere.
//
// Page layout (per sequence b, page p, head h; arrays [B, Pcap, Hkv, per-page]):
//   codes  u32 [words]: one little-endian bit stream; token i's units start at bit
//          i * vector_bits, unit u at unit_bit_offset(u) after that, LSB first. Units are
//          channels (2 or 1 bits) or 8-channel groups (Vq, 8 bits); no unit straddles a word.
//          words = 64 * vector_bits / 32. Unused bits are zero.
//   meta   u16 (f16 bits) [meta_per_page]; the layout of each codec is in quant_codec.h.
//   outlier index u8 / value u16 (f16 bits) [64][outliers]: per token, `outliers` residual
//          slots (csrc/core/quant_codec.h, "Residual slots"); an empty slot is (0, +0).
#pragma once

#include <cstdint>

#include "kvsquash.h"

namespace kvs {

constexpr int kQuantPageTokens = 64;
// The error both backends report for input the format cannot encode (quant_codec.h, encodable).
constexpr const char* kQuantRangeMessage =
    "quantize: keys or values hold NaN, infinity, or a magnitude above 65504 (the f16 range of the format's scales)";
constexpr int kQuantMaxOutliers = 8;
constexpr int kQuantMaxHeadDim = 256;
constexpr int kVqGroup = 8;       // channels per coupled (vector-quantized) unit
constexpr int kVqEntries = 256;   // codebook entries per group (8-bit codes)
constexpr int kNuqLevels = 4;     // 2-bit non-uniform codebook
constexpr int kKiviTokenGroup = 32;    // KIVI keys: per-channel statistics over 32 tokens
constexpr int kKiviChannelGroup = 32;  // KIVI values: per-token statistics over 32 channels

enum class Codec : int32_t { UniformChannel, UniformToken, NuqChannel, NuqToken, Vq, Rotation };

struct QuantFormat {
  kvs_quant_mode mode;
  int32_t D, Hkv, outliers;
  kvs_dtype raw_dtype;             // f16, bf16 or f32: sink/recent storage and pre-encode rounding
  uint64_t rotation_seed;
  // device pointers of the format's statics (nullptr where the mode has none)
  const float* key_codebook;        // [4] sorted, NuqChannel
  const float* value_codebook;      // [4] sorted, NuqToken
  const float* key_zero;            // [Hkv, D]  NuqChannel, Vq keys
  const float* key_range;           // [Hkv, D]
  const float* key_inv_range;       // [Hkv, D]  1/range in f32 (0 where range is 0), host computed
  const float* key_vq_codebook;     // [Hkv, D/8, 256, 8]
  const float* value_vq_codebook;   // [Hkv, D/8, 256, 8]
};

struct Rope {
  kvs_rope_style style;
  const float* inv_freq;  // [D/2]; nullptr with KVS_ROPE_NONE
};

struct QuantPages {
  uint32_t* key_codes;  uint32_t* value_codes;          // [B, Pcap, Hkv, words]
  uint16_t* key_meta;   uint16_t* value_meta;           // [B, Pcap, Hkv, meta] or nullptr
  uint8_t* key_outlier_index;  uint16_t* key_outlier_value;    // [B, Pcap, Hkv, 64, outliers]
  uint8_t* value_outlier_index; uint16_t* value_outlier_value;  // or nullptr when outliers == 0
  int64_t capacity;  // Pcap
};

// Encodes n_pages pages from source tokens src_start + 64 i .. of keys/values [B, Hkv, Ts, D]
// (f32/f16/bf16) into pages page_start + i. Token j of the source has position
// positions[b, j] (i32 [B, Ts]) or, without positions, position_offset + j.
struct QuantEncodeProblem {
  QuantFormat format;
  Rope rope;
  const void* keys;
  const void* values;
  kvs_dtype dtype;
  const int32_t* positions;
  int64_t position_offset;
  int64_t B, Ts, src_start;
  QuantPages pages;
  int64_t page_start, n_pages;
  int device;
};

// Writes the whole cache, dequantized, as f32 [B, Hkv, T, D] (T = sink + 64 n_pages +
// recent). Keys come back post-RoPE with apply_rope, else in the convention they were given
// (post-RoPE codecs undo the rotation). Positions as in QuantEncodeProblem (offset 0).
struct QuantDecodeProblem {
  QuantFormat format;
  Rope rope;
  QuantPages pages;
  int64_t n_pages;
  const void* raw_keys;    // [B, Hkv, Rcap, D] in format.raw_dtype: sink tokens, then recent
  const void* raw_values;
  int64_t raw_capacity, sink, recent;
  const int32_t* positions;  // [B, positions_stride] or nullptr
  int64_t positions_stride;
  bool apply_rope;
  float* out_keys;
  float* out_values;
  int64_t B;
  int device;
};

// Copies `count` slices along `axis` from src [.., Ns, ..] at src_start to dst [.., Nd, ..]
// at dst_start; other dimensions equal. Floats convert (rounding once, to nearest even);
// integer dtypes copy bits and must match.
struct CopyRowsProblem {
  const void* src;
  void* dst;
  kvs_dtype src_dtype, dst_dtype;
  int64_t outer, src_rows, dst_rows, inner;  // [outer, rows, inner] views
  int64_t src_start, dst_start, count;
  bool overlapping;  // src and dst are one buffer: copy through a temporary
  int device;
};

// Weighted k-means, per group g of G independent problems: data f32 [G, N, dim], weights
// f32 [G, N] (nullptr: all 1), centroids f32 [G, k, dim]. Definition in csrc/cpu/kmeans.cc.
struct KmeansProblem {
  const float* data;
  const float* weights;
  float* centroids;
  int64_t G, N, dim, k;
  int32_t iterations;
  uint64_t seed;
  int device;
};

// Attention of decode queries over a quantized cache (kvs_quant_attention). Its meaning is
// exactly kvs_attention (csrc/core/attention.h: GQA, causal rule with the queries as the
// last Tq positions, kv_lengths, zero row and lse -inf for a query that sees no key) over
// the cache as quant_decode writes it with apply_rope = (rope.style != NONE), so keys are
// post-RoPE and the queries must be too. cache.out_keys / out_values are unused.
// Tolerances of the CUDA kernel against the CPU reference (f64 over the decoded cache),
// quant.md 7.6: max|d out| <= 1e-3 * max|v^| + 1 output ulp, |d lse| <= 1e-4.
struct QuantAttentionProblem {
  QuantDecodeProblem cache;
  const void* q;              // [B, Hq, Tq, D]
  kvs_dtype q_dtype;          // f32, f16 or bf16
  void* out;                  // [B, Hq, Tq, D]
  kvs_dtype out_dtype;        // f32, f16 or bf16
  float* lse;                 // [B, Hq, Tq] or nullptr
  const int32_t* kv_lengths;  // [B, Hkv], each in [0, T], or nullptr (all T tokens)
  int64_t Hq, Tq, T;          // T = sink + 64 n_pages + recent
  float scale;
  bool causal;
};

constexpr int kQuantAttentionMaxQueries = 16;

namespace cpu {
void quant_attention(const QuantAttentionProblem& p);
void quant_encode(const QuantEncodeProblem& p);
void quant_decode(const QuantDecodeProblem& p);
void copy_rows(const CopyRowsProblem& p);
void kmeans(const KmeansProblem& p);
// The k-means++ start of one dim > 1 problem (f64 centroids [k, dim]); the CUDA path starts
// from it too, so both backends begin from the same centroids.
void kmeans_plus_plus(const float* data, const float* weights, int64_t N, int64_t dim, int64_t k, uint64_t seed, double* centroids);
}  // namespace cpu

namespace cuda {
void quant_attention(const QuantAttentionProblem& p, void* stream);
void quant_encode(const QuantEncodeProblem& p, void* stream);
void quant_decode(const QuantDecodeProblem& p, void* stream);
void copy_rows(const CopyRowsProblem& p, void* stream);
void kmeans(const KmeansProblem& p, void* stream);
}  // namespace cuda

}  // namespace kvs
