// CPU reference of the quantized cache (csrc/core/quant.h): encode pages, decode a whole
// cache, and the row copies the TS layer uses to keep sink and recent tokens. The
// per-vector math is quant_codec.h's, shared with cuda/quant.cu; this file only walks the
// layout. (b, page, head) units run in parallel; each is serial.
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/quant.h"
#include "core/quant_codec.h"
#include "cpu/elements.h"

namespace kvs::cpu {
namespace {

int64_t page_head_index(int64_t b, int64_t page, int64_t h, int64_t capacity, int64_t Hkv) {
  return (b * capacity + page) * Hkv + h;
}

struct PageArrays {
  uint32_t* codes;
  uint16_t* meta;
  uint8_t* outlier_index;
  uint16_t* outlier_value;
};

PageArrays page_arrays(const QuantPages& pages, const QuantFormat& f, bool is_key, int64_t unit) {
  const Codec codec = is_key ? key_codec(f.mode) : value_codec(f.mode);
  const int64_t slots = static_cast<int64_t>(kQuantPageTokens) * f.outliers;
  PageArrays a{};
  a.codes = (is_key ? pages.key_codes : pages.value_codes) + unit * words_per_page(f.mode, codec, f.D);
  uint16_t* meta = is_key ? pages.key_meta : pages.value_meta;
  a.meta = meta ? meta + unit * meta_per_page(codec, f.D) : nullptr;
  if (f.outliers > 0) {
    a.outlier_index = (is_key ? pages.key_outlier_index : pages.value_outlier_index) + unit * slots;
    a.outlier_value = (is_key ? pages.key_outlier_value : pages.value_outlier_value) + unit * slots;
  }
  return a;
}

// Where each unit's code sits within a token's bits (computed once per call, not per code).
struct UnitLayout {
  std::vector<int32_t> offset, width;
  int32_t vector_bits;
  UnitLayout(const QuantFormat& f, Codec codec) : vector_bits(kvs::vector_bits(f.mode, codec, f.D)) {
    for (int32_t u = 0; u < unit_count(codec, f.D); ++u) {
      offset.push_back(unit_bit_offset(f.mode, codec, f.D, u));
      width.push_back(unit_width(f.mode, codec, f.D, u));
    }
  }
};

// One page of one head, keys or values: x holds the 64 tokens in the codec domain.
void encode_page(const QuantFormat& f, bool is_key, int32_t h, const std::vector<float>& x, const PageArrays& out, const UnitLayout& layout) {
  const Codec codec = is_key ? key_codec(f.mode) : value_codec(f.mode);
  const int32_t D = f.D;
  std::memset(out.codes, 0, sizeof(uint32_t) * words_per_page(f.mode, codec, D));
  if (codec == Codec::UniformChannel)
    for (int32_t g = 0; g < kQuantPageTokens / kKiviTokenGroup; ++g)
      for (int32_t d = 0; d < D; ++d)
        uniform_channel_meta(D, g, d, [&](int32_t t, int32_t c) { return x[static_cast<size_t>(t) * D + c]; }, out.meta);
  std::vector<uint32_t> codes(D);
  std::vector<float> work(D), xhat(D);
  VectorSlots slots;
  for (int32_t t = 0; t < kQuantPageTokens; ++t) {
    const VectorContext ctx{&f, codec, is_key, h, t, out.meta};
    encode_vector(ctx, x.data() + static_cast<size_t>(t) * D, codes.data(), slots, work.data(), xhat.data());
    const int64_t first_bit = static_cast<int64_t>(t) * layout.vector_bits;
    for (size_t u = 0; u < layout.offset.size(); ++u) {
      const int64_t bit = first_bit + layout.offset[u];
      out.codes[bit >> 5] |= codes[u] << (bit & 31);
    }
    for (int32_t s = 0; s < f.outliers; ++s) {
      out.outlier_index[t * f.outliers + s] = slots.index[s];
      out.outlier_value[t * f.outliers + s] = slots.value[s];
    }
  }
}

// Token `t` of a page, dequantized into xhat (codec domain, residuals added).
void decode_token(const QuantFormat& f, bool is_key, int32_t h, int32_t t, const PageArrays& in, const UnitLayout& layout,
                  std::vector<uint32_t>& codes, float* xhat) {
  const Codec codec = is_key ? key_codec(f.mode) : value_codec(f.mode);
  const int32_t D = f.D;
  for (size_t u = 0; u < layout.offset.size(); ++u)
    codes[u] = read_unit(in.codes, static_cast<int64_t>(t) * layout.vector_bits + layout.offset[u], layout.width[u]);
  const VectorContext ctx{&f, codec, is_key, h, t, in.meta};
  dequantize_units(ctx, codes.data(), xhat);
  if (f.outliers > 0) add_residuals(in.outlier_index + t * f.outliers, in.outlier_value + t * f.outliers, f.outliers, D, xhat);
}

}  // namespace

void quant_encode(const QuantEncodeProblem& p) {
  const QuantFormat& f = p.format;
  const int32_t D = f.D;
  const bool rotate_keys = encodes_post_rope(key_codec(f.mode));
  const UnitLayout key_layout(f, key_codec(f.mode)), value_layout(f, value_codec(f.mode));
  const bool rope_keys = rotate_keys && p.rope.style != KVS_ROPE_NONE;
  // a unit is one page of one sequence, all heads: its tokens' cos/sin are computed once
  parallel_for(p.B * p.n_pages, [&](int64_t begin, int64_t end) {
    std::vector<float> keys(static_cast<size_t>(kQuantPageTokens) * D), values(keys.size());
    std::vector<float> cos_sin(rope_keys ? static_cast<size_t>(kQuantPageTokens) * D : 0);  // [token][i][c, s]
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t i = unit % p.n_pages, b = unit / p.n_pages;
      const int64_t first = p.src_start + i * kQuantPageTokens;
      for (int32_t t = 0; rope_keys && t < kQuantPageTokens; ++t) {
        const int64_t pos = p.positions ? p.positions[b * p.Ts + first + t] : p.position_offset + first + t;
        for (int32_t k = 0; k < D / 2; ++k) rope_factors(p.rope, pos, k, cos_sin[(t * D / 2 + k) * 2], cos_sin[(t * D / 2 + k) * 2 + 1]);
      }
      for (int64_t h = 0; h < f.Hkv; ++h) {
        for (int32_t t = 0; t < kQuantPageTokens; ++t) {
          const int64_t row = ((b * f.Hkv + h) * p.Ts + first + t) * D;
          float* key = keys.data() + static_cast<size_t>(t) * D;
          float* value = values.data() + static_cast<size_t>(t) * D;
          for (int32_t d = 0; d < D; ++d) {
            key[d] = round_to_storage(load_storage(p.keys, p.dtype, row + d), f.raw_dtype);
            value[d] = round_to_storage(load_storage(p.values, p.dtype, row + d), f.raw_dtype);
          }
          for (int32_t k = 0; rope_keys && k < D / 2; ++k)
            rotate_pair(p.rope.style, D, k, cos_sin[(t * D / 2 + k) * 2], cos_sin[(t * D / 2 + k) * 2 + 1], false, key);
          for (int32_t d = 0; d < D; ++d)
            if (!encodable(key[d]) || !encodable(value[d])) throw Error(KVS_E_RANGE, kQuantRangeMessage);
        }
        const int64_t page_unit = page_head_index(b, p.page_start + i, h, p.pages.capacity, f.Hkv);
        encode_page(f, true, static_cast<int32_t>(h), keys, page_arrays(p.pages, f, true, page_unit), key_layout);
        encode_page(f, false, static_cast<int32_t>(h), values, page_arrays(p.pages, f, false, page_unit), value_layout);
      }
    }
  });
}

void quant_decode(const QuantDecodeProblem& p) {
  const QuantFormat& f = p.format;
  const int32_t D = f.D;
  const bool post_rope_pages = encodes_post_rope(key_codec(f.mode));
  const int64_t paged = p.n_pages * kQuantPageTokens, T = p.sink + paged + p.recent;
  const UnitLayout key_layout(f, key_codec(f.mode)), value_layout(f, value_codec(f.mode));
  parallel_for(p.B * f.Hkv, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> codes(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / f.Hkv, h = bh % f.Hkv;
      for (int64_t t = 0; t < T; ++t) {
        float* key = p.out_keys + (bh * T + t) * D;
        float* value = p.out_values + (bh * T + t) * D;
        const bool in_page = t >= p.sink && t < p.sink + paged;
        if (in_page) {
          const int64_t page = (t - p.sink) / kQuantPageTokens;
          const int32_t token = static_cast<int32_t>((t - p.sink) % kQuantPageTokens);
          const int64_t unit = page_head_index(b, page, h, p.pages.capacity, f.Hkv);
          decode_token(f, true, static_cast<int32_t>(h), token, page_arrays(p.pages, f, true, unit), key_layout, codes, key);
          decode_token(f, false, static_cast<int32_t>(h), token, page_arrays(p.pages, f, false, unit), value_layout, codes, value);
        } else {
          const int64_t slot = t < p.sink ? t : t - paged;
          const int64_t row = (bh * p.raw_capacity + slot) * D;
          for (int32_t d = 0; d < D; ++d) {
            key[d] = load_storage(p.raw_keys, f.raw_dtype, row + d);
            value[d] = load_storage(p.raw_values, f.raw_dtype, row + d);
          }
        }
        const int64_t pos = p.positions ? p.positions[b * p.positions_stride + t] : t;
        const bool key_post_rope = in_page && post_rope_pages;
        if (key_post_rope != p.apply_rope) apply_rope(p.rope, D, pos, key_post_rope, key);
      }
    }
  });
}

void copy_rows(const CopyRowsProblem& p) {
  const size_t element = kvs_dtype_size(p.src_dtype);
  const bool convert = p.src_dtype != p.dst_dtype;
  const int64_t span = p.count * p.inner;
  std::vector<unsigned char> staging;
  const unsigned char* src = static_cast<const unsigned char*>(p.src);
  int64_t src_rows = p.src_rows, src_start = p.src_start;
  if (p.overlapping) {  // stage the source slices so the copy behaves like memmove
    staging.resize(static_cast<size_t>(p.outer * span) * element);
    for (int64_t o = 0; o < p.outer; ++o)
      std::memcpy(staging.data() + static_cast<size_t>(o * span) * element,
                  src + static_cast<size_t>((o * p.src_rows + p.src_start) * p.inner) * element, static_cast<size_t>(span) * element);
    src = staging.data(), src_rows = p.count, src_start = 0;
  }
  parallel_for(p.outer, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const int64_t from = (o * src_rows + src_start) * p.inner, to = (o * p.dst_rows + p.dst_start) * p.inner;
      if (!convert) {
        std::memcpy(static_cast<unsigned char*>(p.dst) + static_cast<size_t>(to) * element, src + static_cast<size_t>(from) * element,
                    static_cast<size_t>(span) * element);
        continue;
      }
      for (int64_t i = 0; i < span; ++i) store_float(p.dst, p.dst_dtype, to + i, load_float(src, p.src_dtype, from + i));
    }
  });
}

}  // namespace kvs::cpu
