// The quantized KV cache on CUDA (csrc/core/quant.h): encode pages, decode a whole cache,
// and the row copies that keep the sink and recent tokens. Every code, meta entry, residual
// slot and dequantized value equals the CPU reference's (csrc/cpu/quant.cc) bit for bit,
// because both run the per-vector rules of csrc/core/quant_codec.h on the same f32 inputs;
// this file only walks the layout.
//
// Encode and decode work in "tiles": 32 consecutive tokens of one (sequence, head, keys or
// values), one warp per tile, a lane per token. The warp loads the tile's rows with
// coalesced reads into shared memory, each lane then runs the codec on its own row, and the
// warp writes back coalesced. An encode tile is half a page (one KIVI 32-token statistics
// group), so its code words are a whole-word half of the page stream: the lanes OR their
// codes into a shared copy of those words (OR commutes: deterministic) and the warp stores
// them, so the page stream needs no zeroing pass and no global atomics.
//
// Where the speed will come from later (the target is >= 80% of copy bandwidth): the codec
// runs one lane per vector with D-float scratch in local memory, and Vq scans its 256-entry
// codebooks from global/L2. The next steps are a warp per vector for the scans and FWHT
// (lane-parallel, same operation order per element), codebooks staged in shared memory, and
// the RoPE cos/sin (f64) computed once per (position, frequency) instead of once per head.
#include <cstdint>
#include <optional>
#include <string>

#include "common.cuh"
#include "scratch.cuh"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/quant.h"
#include "core/quant_codec.h"
#include "kvsquash.h"

namespace kvs::cuda {
namespace {

constexpr int kTileTokens = kWarpSize;  // a lane per token
static_assert(kQuantPageTokens % kTileTokens == 0 && kKiviTokenGroup == kTileTokens,
              "an encode tile is one KIVI statistics group and a whole-word half of a page");
constexpr int kTilesPerPage = kQuantPageTokens / kTileTokens;
constexpr int kCopyThreads = 256;

// Shared rows of a tile: row r starts at r * (D + 1) + 1. The odd stride puts the lanes'
// rows in different banks.
__device__ __forceinline__ float* tile_row(float* rows, int32_t D, int r) { return rows + r * (D + 1) + 1; }

inline size_t tile_rows_bytes(int32_t D) { return static_cast<size_t>(kTileTokens) * (D + 1) * sizeof(float); }

// What the kernels need of one side (keys or values) of the cache.
struct Side {
  Codec codec;
  bool is_key;
  bool rotate;  // encode: post-RoPE keys; decode: pages hold post-RoPE keys
  int32_t units, vector_bits, words_per_page, meta_per_page;
  uint32_t* codes;
  uint16_t* meta;  // nullptr when the codec has none
  uint8_t* outlier_index;
  uint16_t* outlier_value;  // nullptr when format.outliers == 0
};

Side make_side(const QuantFormat& f, const QuantPages& pages, bool is_key) {
  Side s{};
  s.codec = is_key ? key_codec(f.mode) : value_codec(f.mode);
  s.is_key = is_key;
  s.rotate = is_key && encodes_post_rope(s.codec);
  s.units = unit_count(s.codec, f.D);
  s.vector_bits = vector_bits(f.mode, s.codec, f.D);
  s.words_per_page = words_per_page(f.mode, s.codec, f.D);
  s.meta_per_page = meta_per_page(s.codec, f.D);
  s.codes = is_key ? pages.key_codes : pages.value_codes;
  s.meta = is_key ? pages.key_meta : pages.value_meta;
  if (f.outliers > 0) {
    s.outlier_index = is_key ? pages.key_outlier_index : pages.value_outlier_index;
    s.outlier_value = is_key ? pages.key_outlier_value : pages.value_outlier_value;
  }
  return s;
}

// What both kernels read of the cache: its format, RoPE, and the two sides (keys, values).
struct Cache {
  QuantFormat format;
  Rope rope;
  Side side[2];
};

Cache make_cache(const QuantFormat& f, const Rope& rope, const QuantPages& pages) {
  return Cache{f, rope, {make_side(f, pages, true), make_side(f, pages, false)}};
}

struct EncodeArgs {
  Cache cache;
  const void* src[2];  // keys, values
  kvs_dtype dtype;
  const int32_t* positions;
  int64_t position_offset;
  int64_t B, Ts, src_start, capacity, page_start, n_pages;
  int* nonfinite;  // set when a value to encode is not encodable (NaN, infinite, past 65504)
};

struct DecodeArgs {
  Cache cache;
  const void* raw[2];
  float* out[2];
  int64_t B, T, n_pages, capacity, raw_capacity, sink;
  const int32_t* positions;
  int64_t positions_stride;
  bool apply_rope;
};

}  // namespace

// ---- encode ---------------------------------------------------------------------------------

// A warp per tile: (b, page i, head h, side, half g), half g = tokens 32 g .. 32 g + 31.
static __global__ void __launch_bounds__(kWarpSize) encode_tile_kernel(const EncodeArgs args) {
  extern __shared__ float shared[];
  const QuantFormat format = args.cache.format;
  const int32_t D = format.D;
  const int64_t Hkv = format.Hkv;
  float* rows = shared;
  uint32_t* words = reinterpret_cast<uint32_t*>(shared + kTileTokens * (D + 1));
  const int lane = static_cast<int>(threadIdx.x);

  // D-float scratch of encode_vector
  uint32_t codes[kQuantMaxHeadDim];
  float work[kQuantMaxHeadDim];
  float xhat[kQuantMaxHeadDim];

  const int64_t tiles = args.B * args.n_pages * Hkv * 2 * kTilesPerPage;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int g = static_cast<int>(tile % kTilesPerPage);
    const int which = static_cast<int>(tile / kTilesPerPage % 2);
    const int64_t h = tile / (2 * kTilesPerPage) % Hkv;
    const int64_t i = tile / (2 * kTilesPerPage * Hkv) % args.n_pages;
    const int64_t b = tile / (2 * kTilesPerPage * Hkv * args.n_pages);
    const Side& side = args.cache.side[which];
    const int64_t first = args.src_start + i * kQuantPageTokens + g * kTileTokens;  // source token of lane 0

    // Rows, rounded to the raw dtype; the 32 source rows are contiguous.
    const int64_t base = ((b * Hkv + h) * args.Ts + first) * D;
    for (int e = lane; e < kTileTokens * D; e += kWarpSize)
      tile_row(rows, D, e / D)[e % D] = round_to_storage(load_storage(args.src[which], args.dtype, base + e), format.raw_dtype);
    __syncwarp();
    const int t = g * kTileTokens + lane;  // token within the page
    float* x = tile_row(rows, D, lane);
    if (side.rotate) {
      const int64_t j = first + lane;
      const int64_t pos = args.positions ? args.positions[b * args.Ts + j] : args.position_offset + j;
      apply_rope(args.cache.rope, D, pos, false, x);
    }
    bool unencodable = false;  // checked in the codec domain, as the CPU does
    for (int d = 0; d < D; ++d) unencodable |= !encodable(x[d]);
    if (__any_sync(kFullWarpMask, unencodable)) {
      // the call fails with E_RANGE; the tile is left unwritten
      if (lane == 0) atomicOr(args.nonfinite, 1);
      continue;
    }
    for (int k = lane; k < side.vector_bits; k += kWarpSize) words[k] = 0;  // the tile's words
    __syncwarp();

    const int64_t page_head = (b * args.capacity + args.page_start + i) * Hkv + h;
    uint16_t* meta = side.meta ? side.meta + page_head * side.meta_per_page : nullptr;
    if (side.codec == Codec::UniformChannel) {
      const auto value = [&](int32_t token, int32_t d) { return tile_row(rows, D, token - g * kTileTokens)[d]; };
      for (int32_t d = lane; d < D; d += kWarpSize) uniform_channel_meta(D, g, d, value, meta);
      __syncwarp();  // orders the meta stores before every lane's encode reads them
    }

    const VectorContext ctx{&format, side.codec, side.is_key, static_cast<int32_t>(h), t, meta};
    VectorSlots slots;
    encode_vector(ctx, x, codes, slots, work, xhat);
    const int64_t tile_bit = static_cast<int64_t>(g) * kTileTokens * side.vector_bits;
    for (int32_t u = 0; u < side.units; ++u) {
      const int64_t bit = static_cast<int64_t>(t) * side.vector_bits + unit_bit_offset(format.mode, side.codec, D, u);
      atomicOr(&words[(bit - tile_bit) >> 5], codes[u] << (bit & 31));
    }
    if (format.outliers > 0) {
      const int64_t slot0 = (page_head * kQuantPageTokens + t) * format.outliers;
      for (int32_t s = 0; s < format.outliers; ++s) {
        side.outlier_index[slot0 + s] = slots.index[s];
        side.outlier_value[slot0 + s] = slots.value[s];
      }
    }
    __syncwarp();
    uint32_t* out = side.codes + page_head * side.words_per_page + tile_bit / 32;
    for (int k = lane; k < side.vector_bits; k += kWarpSize) out[k] = words[k];
    __syncwarp();  // rows and words are reused by the next tile
  }
}

// ---- decode ---------------------------------------------------------------------------------

// A warp per tile: (b, head h, side, 32 tokens from t0). Lanes of raw tokens (sink, recent)
// get their rows from the coalesced raw load, lanes of page tokens decode theirs; keys are
// then brought to the wanted RoPE convention and the warp stores the rows.
static __global__ void __launch_bounds__(kWarpSize) decode_tile_kernel(const DecodeArgs args) {
  extern __shared__ float shared[];
  const QuantFormat format = args.cache.format;
  const int32_t D = format.D;
  const int64_t Hkv = format.Hkv;
  float* rows = shared;
  const int lane = static_cast<int>(threadIdx.x);
  const int64_t paged = args.n_pages * kQuantPageTokens;
  uint32_t codes[kQuantMaxHeadDim];

  const int64_t tiles_per_head = (args.T + kTileTokens - 1) / kTileTokens;
  const int64_t tiles = args.B * Hkv * 2 * tiles_per_head;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t t0 = tile % tiles_per_head * kTileTokens;
    const int which = static_cast<int>(tile / tiles_per_head % 2);
    const int64_t bh = tile / (2 * tiles_per_head);  // b * Hkv + h
    const int64_t b = bh / Hkv, h = bh % Hkv;
    const Side& side = args.cache.side[which];
    const int count = static_cast<int>(args.T - t0 < kTileTokens ? args.T - t0 : kTileTokens);

    for (int e = lane; e < count * D; e += kWarpSize) {
      const int64_t t = t0 + e / D;
      if (t >= args.sink && t < args.sink + paged) continue;
      const int64_t slot = t < args.sink ? t : t - paged;
      tile_row(rows, D, e / D)[e % D] = load_storage(args.raw[which], format.raw_dtype, (bh * args.raw_capacity + slot) * D + e % D);
    }
    __syncwarp();

    const int64_t t = t0 + lane;
    float* x = tile_row(rows, D, lane);
    const bool in_page = t >= args.sink && t < args.sink + paged;
    if (lane < count && in_page) {
      const int64_t page = (t - args.sink) / kQuantPageTokens;
      const int32_t token = static_cast<int32_t>((t - args.sink) % kQuantPageTokens);
      const int64_t page_head = (b * args.capacity + page) * Hkv + h;
      const uint32_t* words = side.codes + page_head * side.words_per_page;
      for (int32_t u = 0; u < side.units; ++u) {
        const int64_t bit = static_cast<int64_t>(token) * side.vector_bits + unit_bit_offset(format.mode, side.codec, D, u);
        codes[u] = read_unit(words, bit, unit_width(format.mode, side.codec, D, u));
      }
      const VectorContext ctx{&format, side.codec, side.is_key, static_cast<int32_t>(h), token,
                              side.meta ? side.meta + page_head * side.meta_per_page : nullptr};
      dequantize_units(ctx, codes, x);
      if (format.outliers > 0) {
        const int64_t slot0 = (page_head * kQuantPageTokens + token) * format.outliers;
        add_residuals(side.outlier_index + slot0, side.outlier_value + slot0, format.outliers, D, x);
      }
    }
    if (lane < count && side.is_key) {
      const int64_t pos = args.positions ? args.positions[b * args.positions_stride + t] : t;
      const bool post_rope = in_page && side.rotate;  // pages of post-RoPE codecs; all else as given
      if (post_rope != args.apply_rope) apply_rope(args.cache.rope, D, pos, post_rope, x);
    }
    __syncwarp();

    float* out = args.out[which] + (bh * args.T + t0) * D;
    for (int e = lane; e < count * D; e += kWarpSize) out[e] = tile_row(rows, D, e / D)[e % D];
    __syncwarp();  // rows are reused by the next tile
  }
}

// ---- copy rows ------------------------------------------------------------------------------

namespace {

// A [outer, rows, inner] view's slices [start, start + count) along rows.
struct RowSpan {
  int64_t rows, start;
};

template <class Word>
struct CopyWordsArgs {
  const Word* src;
  Word* dst;
  int64_t outer, span;  // span: words per outer index (count * inner elements)
  int64_t src_pitch, src_offset, dst_pitch, dst_offset;  // in words
};

struct ConvertArgs {
  const void* src;
  void* dst;
  kvs_dtype src_dtype, dst_dtype;
  int64_t outer, span, inner;
  RowSpan from, to;
};

}  // namespace

// Identical dtypes: the bits, moved in the widest word that every offset allows.
template <class Word>
static __global__ void __launch_bounds__(kCopyThreads) copy_words_kernel(const CopyWordsArgs<Word> a) {
  const int64_t total = a.outer * a.span;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kCopyThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kCopyThreads + threadIdx.x; k < total; k += stride) {
    const int64_t o = k / a.span, w = k % a.span;
    a.dst[o * a.dst_pitch + a.dst_offset + w] = a.src[o * a.src_pitch + a.src_offset + w];
  }
}

// Float dtypes: exact to f32, then one rounding to the destination, both with the CPU's own
// converters (core/half.h), so NaN payloads come out as on the CPU too (cuda_fp16's
// conversions need not keep them).
static __global__ void __launch_bounds__(kCopyThreads) convert_rows_kernel(const ConvertArgs a) {
  const int64_t total = a.outer * a.span;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kCopyThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kCopyThreads + threadIdx.x; k < total; k += stride) {
    const int64_t o = k / a.span, e = k % a.span;
    const float value = load_storage(a.src, a.src_dtype, (o * a.from.rows + a.from.start) * a.inner + e);
    store_float_as(a.dst, a.dst_dtype, (o * a.to.rows + a.to.start) * a.inner + e, value);
  }
}

namespace {

template <class Word>
void launch_copy_words(const void* src, void* dst, int64_t outer, int64_t span_bytes, RowSpan from, RowSpan to,
                       int64_t row_bytes, cudaStream_t stream) {
  constexpr int64_t w = sizeof(Word);
  CopyWordsArgs<Word> a{static_cast<const Word*>(src), static_cast<Word*>(dst), outer, span_bytes / w,
                        from.rows * row_bytes / w, from.start * row_bytes / w, to.rows * row_bytes / w,
                        to.start * row_bytes / w};
  copy_words_kernel<Word><<<grid_blocks(a.outer * a.span, kCopyThreads), kCopyThreads, 0, stream>>>(a);
  KVS_CUDA_CHECK(cudaGetLastError(), "copyRows: launching the copy kernel");
}

// Bit copy of the [outer, count, inner] slices; row_bytes = inner * element size.
void copy_bits(const void* src, void* dst, int64_t outer, int64_t count, RowSpan from, RowSpan to, int64_t row_bytes,
               cudaStream_t stream) {
  const int64_t span_bytes = count * row_bytes;
  // the widest word dividing both pointers, the row size (so every pitch and offset) and
  // the span
  const uint64_t mix = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) |
                       static_cast<uint64_t>(row_bytes) | static_cast<uint64_t>(span_bytes);
  if (mix % 16 == 0) return launch_copy_words<uint4>(src, dst, outer, span_bytes, from, to, row_bytes, stream);
  if (mix % 8 == 0) return launch_copy_words<uint2>(src, dst, outer, span_bytes, from, to, row_bytes, stream);
  if (mix % 4 == 0) return launch_copy_words<uint32_t>(src, dst, outer, span_bytes, from, to, row_bytes, stream);
  if (mix % 2 == 0) return launch_copy_words<uint16_t>(src, dst, outer, span_bytes, from, to, row_bytes, stream);
  launch_copy_words<uint8_t>(src, dst, outer, span_bytes, from, to, row_bytes, stream);
}

void convert_rows(const void* src, kvs_dtype src_dtype, void* dst, kvs_dtype dst_dtype, int64_t outer, int64_t count,
                  int64_t inner, RowSpan from, RowSpan to, cudaStream_t stream) {
  const ConvertArgs a{src, dst, src_dtype, dst_dtype, outer, count * inner, inner, from, to};
  convert_rows_kernel<<<grid_blocks(outer * a.span, kCopyThreads), kCopyThreads, 0, stream>>>(a);
  KVS_CUDA_CHECK(cudaGetLastError(), "copyRows: launching the conversion kernel");
}

}  // namespace

// ---- entries --------------------------------------------------------------------------------

void quant_encode(const QuantEncodeProblem& p, void* stream) {
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  const int64_t tiles = p.B * p.n_pages * p.format.Hkv * 2 * kTilesPerPage;
  if (tiles == 0) return;
  EncodeArgs args{};
  args.cache = make_cache(p.format, p.rope, p.pages);
  args.src[0] = p.keys;
  args.src[1] = p.values;
  args.dtype = p.dtype;
  args.positions = p.positions;
  args.position_offset = p.position_offset;
  args.B = p.B, args.Ts = p.Ts, args.src_start = p.src_start;
  args.capacity = p.pages.capacity, args.page_start = p.page_start, args.n_pages = p.n_pages;

  StreamScratch flag(sizeof(int), p.device, cuda_stream, "quantize");
  args.nonfinite = static_cast<int*>(flag.get());
  KVS_CUDA_CHECK(cudaMemsetAsync(args.nonfinite, 0, sizeof(int), cuda_stream), "quantize: clearing the NaN flag");
  // rows, then the tile's code words (at most 2 D bits per token: vector_bits words)
  const size_t shared_bytes = tile_rows_bytes(p.format.D) + static_cast<size_t>(2 * p.format.D) * sizeof(uint32_t);
  encode_tile_kernel<<<grid_blocks(tiles, 1), kWarpSize, shared_bytes, cuda_stream>>>(args);
  KVS_CUDA_CHECK(cudaGetLastError(), "quantize: launching the encode kernel");
  int nonfinite = 0;
  KVS_CUDA_CHECK(cudaMemcpyAsync(&nonfinite, args.nonfinite, sizeof(int), cudaMemcpyDeviceToHost, cuda_stream),
                 "quantize: reading the NaN flag");
  flag.release();
  KVS_CUDA_CHECK(cudaStreamSynchronize(cuda_stream), "quantize: waiting for the encode kernel");
  if (nonfinite) throw Error(KVS_E_RANGE, kQuantRangeMessage);
}

void quant_decode(const QuantDecodeProblem& p, void* stream) {
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  DecodeArgs args{};
  args.cache = make_cache(p.format, p.rope, p.pages);
  args.raw[0] = p.raw_keys;
  args.raw[1] = p.raw_values;
  args.out[0] = p.out_keys;
  args.out[1] = p.out_values;
  args.B = p.B;
  args.T = p.sink + p.n_pages * kQuantPageTokens + p.recent;
  args.n_pages = p.n_pages, args.capacity = p.pages.capacity;
  args.raw_capacity = p.raw_capacity, args.sink = p.sink;
  args.positions = p.positions, args.positions_stride = p.positions_stride;
  args.apply_rope = p.apply_rope;
  const int64_t tiles = p.B * p.format.Hkv * 2 * ((args.T + kTileTokens - 1) / kTileTokens);
  if (tiles == 0) return;
  const size_t shared_bytes = tile_rows_bytes(p.format.D);
  decode_tile_kernel<<<grid_blocks(tiles, 1), kWarpSize, shared_bytes, cuda_stream>>>(args);
  KVS_CUDA_CHECK(cudaGetLastError(), "dequantize: launching the decode kernel");
}

void copy_rows(const CopyRowsProblem& p, void* stream) {
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  if (p.outer * p.count * p.inner == 0) return;
  const int64_t src_element = static_cast<int64_t>(kvs_dtype_size(p.src_dtype));
  const int64_t dst_element = static_cast<int64_t>(kvs_dtype_size(p.dst_dtype));
  const void* src = p.src;
  RowSpan from{p.src_rows, p.src_start};
  const RowSpan to{p.dst_rows, p.dst_start};
  std::optional<StreamScratch> staging;
  if (p.overlapping) {  // stage the source slices, compact [outer, count, inner], so the copy acts like memmove
    staging.emplace(static_cast<size_t>(p.outer * p.count * p.inner * src_element), p.device, cuda_stream, "copyRows");
    copy_bits(p.src, staging->get(), p.outer, p.count, from, RowSpan{p.count, 0}, p.inner * src_element, cuda_stream);
    src = staging->get();
    from = RowSpan{p.count, 0};
  }
  if (p.src_dtype == p.dst_dtype)
    copy_bits(src, p.dst, p.outer, p.count, from, to, p.inner * dst_element, cuda_stream);
  else
    convert_rows(src, p.src_dtype, p.dst, p.dst_dtype, p.outer, p.count, p.inner, from, to, cuda_stream);
  if (staging) staging->release();
}

}  // namespace kvs::cuda
