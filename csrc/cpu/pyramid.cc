// CPU reference of pyramid sparse attention, written from the definitions in
// csrc/core/pyramid.h stage by stage: pooling in f32 (the stated summation tree, so it is
// bit-identical to CUDA), importance and attention in f64, assignment with the exact f32
// decision chain. Threads over heads (or mask rows); each result is independent of the
// thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "core/parallel.h"
#include "core/pyramid.h"
#include "cpu/elements.h"

namespace kvs::cpu {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The `count` offsets of 0..size-1 with the smallest (sample key, offset), ascending.
std::vector<int64_t> sampled_offsets(uint32_t seed, int64_t b, int64_t h, uint32_t stream, int64_t size, int64_t count) {
  std::vector<std::pair<uint32_t, int64_t>> keyed(size);
  for (int64_t o = 0; o < size; ++o) keyed[o] = {pyramid_sample_key(seed, b, h, stream, o), o};
  std::partial_sort(keyed.begin(), keyed.begin() + count, keyed.end());
  std::vector<int64_t> offsets(count);
  for (int64_t i = 0; i < count; ++i) offsets[i] = keyed[i].second;
  std::sort(offsets.begin(), offsets.end());
  return offsets;
}

// Rows of a block actually read for the sampled offsets (offset o reads row o mod valid).
std::vector<int64_t> sampled_rows(const std::vector<int64_t>& offsets, int64_t start, int64_t valid) {
  std::vector<int64_t> rows(offsets.size());
  for (size_t i = 0; i < offsets.size(); ++i) rows[i] = start + offsets[i] % valid;
  return rows;
}

double dot_f64(const double* x, const void* base, kvs_dtype dtype, int64_t row, int64_t D) {
  double dot = 0;
  for (int64_t d = 0; d < D; ++d) dot += x[d] * load_float(base, dtype, row * D + d);
  return dot;
}

// Step 2 for one query head: P_h [Mq, Nk] in f64, rows normalised.
void head_importance(const PyramidImportanceProblem& p, int64_t b, int64_t h, double* P) {
  const int64_t D = p.D, Mq = pyramid_blocks(p.Tq, p.query_block), Nk = pyramid_blocks(p.Tk, p.block);
  const int64_t g = h / (p.Hq / p.Hkv);
  const std::vector<int64_t> q_offsets = sampled_offsets(p.seed, b, h, 0, p.query_block, p.sample_queries);
  const std::vector<int64_t> k_offsets = sampled_offsets(p.seed, b, h, 1, p.block, p.sample_keys);
  const int64_t q_head = (b * p.Hq + h) * p.Tq, k_head = (b * p.Hkv + g) * p.Tk;
  std::vector<double> query(D), block_max(Nk);
  for (int64_t qb = 0; qb < Mq; ++qb) {
    double* row_p = P + qb * Nk;
    std::fill(row_p, row_p + Nk, 0.0);
    const int64_t q0 = qb * p.query_block, q_valid = std::min(p.Tq - q0, p.query_block);
    for (int64_t r : sampled_rows(q_offsets, q0, q_valid)) {
      for (int64_t d = 0; d < D; ++d) query[d] = load_float(p.q, p.dtype, (q_head + r) * D + d);
      const int64_t position = pyramid_query_position(p.Tq, p.Tk, r);
      double row_max = kNegInf;
      for (int64_t kb = 0; kb < Nk; ++kb) {
        const int64_t k0 = kb * p.block, k_valid = std::min(p.Tk - k0, p.block);
        double best = kNegInf;
        for (int64_t j : sampled_rows(k_offsets, k0, k_valid)) {
          if (p.causal && j > position) continue;
          best = std::max(best, static_cast<double>(p.scale) * dot_f64(query.data(), p.k, p.dtype, k_head + j, D));
        }
        block_max[kb] = best;
        row_max = std::max(row_max, best);
      }
      if (row_max == kNegInf) continue;
      for (int64_t kb = 0; kb < Nk; ++kb) row_p[kb] = std::max(row_p[kb], std::exp(block_max[kb] - row_max));
    }
    double sum = 0;
    for (int64_t kb = 0; kb < Nk; ++kb) sum += row_p[kb];
    if (sum > 0)
      for (int64_t kb = 0; kb < Nk; ++kb) row_p[kb] /= sum;
  }
}

// The key blocks of one mask row with their visibility (step 3).
struct RowBlocks {
  int64_t p0, p1;  // positions of the query block's first and last rows

  RowBlocks(const PyramidAssignProblem& p, int64_t qb) {
    const int64_t last = std::min(p.Tq, (qb + 1) * p.query_block) - 1;
    p0 = pyramid_query_position(p.Tq, p.Tk, qb * p.query_block);
    p1 = pyramid_query_position(p.Tq, p.Tk, last);
  }
};

// Step 1 for one head of one tensor (keys or values): the f32 summation tree, level by level.
void pool_head(const PyramidPoolProblem& p, const void* in, void* const* out, int64_t head, std::vector<float>& below,
               std::vector<float>& sums) {
  const int64_t D = p.D, padded = pyramid_blocks(p.Tk, p.block) * p.block, in_base = head * p.Tk * D;
  for (int i = 1; i < kPyramidLevels; ++i) {
    const int64_t level = pyramid_level(i), tokens = padded / level;
    // element d of the two halves of pooled token t: raw tokens at level 2, sums below after
    const auto part = [&](int64_t u, int64_t d) { return i == 1 ? load_float(in, p.dtype, in_base + u * D + d) : below[u * D + d]; };
    sums.assign(tokens * D, 0.f);
    for (int64_t t = 0; t < tokens; ++t) {
      if (pyramid_count(p.Tk, level, t) == 0) continue;
      const bool pair = pyramid_count(p.Tk, level / 2, 2 * t + 1) > 0;
      for (int64_t d = 0; d < D; ++d) sums[t * D + d] = pair ? part(2 * t, d) + part(2 * t + 1, d) : part(2 * t, d);
    }
    below.swap(sums);
    const int64_t out_base = head * tokens * D;
    for (int64_t t = 0; t < tokens; ++t) {
      const float count = static_cast<float>(pyramid_count(p.Tk, level, t));
      for (int64_t d = 0; d < D; ++d) store_float(out[i - 1], p.dtype, out_base + t * D + d, count > 0.f ? below[t * D + d] / count : 0.f);
    }
  }
}

// One pooled (or raw) token a query attends to: where it lives and its logit.
struct Candidate {
  int level_index;
  int64_t row;
  double logit;
};

}  // namespace

void pyramid_pool(const PyramidPoolProblem& p) {
  parallel_for(p.B * p.H, [&](int64_t begin, int64_t end) {
    std::vector<float> below, sums;
    for (int64_t head = begin; head < end; ++head) {
      pool_head(p, p.keys, p.pooled_keys, head, below, sums);
      pool_head(p, p.values, p.pooled_values, head, below, sums);
    }
  });
}

void pyramid_importance(const PyramidImportanceProblem& p) {
  const int64_t Hm = p.kv_head_mask ? p.Hkv : p.Hq, group = p.Hq / p.Hkv;
  const int64_t cells = pyramid_blocks(p.Tq, p.query_block) * pyramid_blocks(p.Tk, p.block);
  parallel_for(p.B * Hm, [&](int64_t begin, int64_t end) {
    std::vector<double> head_p(cells), mean(cells);
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / Hm, hm = bm % Hm;
      float* out = p.importance + bm * cells;
      if (!p.kv_head_mask) {
        head_importance(p, b, hm, head_p.data());
        for (int64_t c = 0; c < cells; ++c) out[c] = static_cast<float>(head_p[c]);
        continue;
      }
      std::fill(mean.begin(), mean.end(), 0.0);
      for (int64_t h = hm * group; h < (hm + 1) * group; ++h) {
        head_importance(p, b, h, head_p.data());
        for (int64_t c = 0; c < cells; ++c) mean[c] += head_p[c];
      }
      for (int64_t c = 0; c < cells; ++c) out[c] = static_cast<float>(mean[c] / static_cast<double>(group));
    }
  });
}

void pyramid_assign(const PyramidAssignProblem& p) {
  const int64_t Nk = p.Nk;
  parallel_for(p.B * p.Hm * p.Mq, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> ranked;
    std::vector<uint8_t> forced(Nk);
    std::vector<float> weight(Nk);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t qb = row % p.Mq;
      const float* P = p.importance + row * Nk;
      uint8_t* levels = p.level_map + row * Nk;
      const RowBlocks blocks(p, qb);
      ranked.clear();
      for (int64_t kb = 0; kb < Nk; ++kb) {
        levels[kb] = 0;
        const int64_t s = kb * p.block, e = std::min(p.Tk, s + p.block) - 1;
        if (p.causal && s > blocks.p1) continue;
        forced[kb] = (p.force_sink && kb == 0) || (p.force_diagonal && s <= blocks.p1 && e >= blocks.p0);
        weight[kb] = P[kb] > 0.f ? P[kb] : 0.f;
        ranked.push_back(kb);
      }
      std::sort(ranked.begin(), ranked.end(), [&](int64_t a, int64_t b) {
        if (forced[a] != forced[b]) return forced[a] > forced[b];
        if (forced[a]) return a < b;
        if (weight[a] != weight[b]) return weight[a] > weight[b];
        return a < b;
      });
      const int64_t N = static_cast<int64_t>(ranked.size());
      if (p.threshold_mode) {
        float total = 0.f;
        for (int64_t kb : ranked) total = total + weight[kb];
        float bound[kPyramidLevels];
        for (int i = 0; i < kPyramidLevels; ++i) bound[i] = p.bounds[i] * total;
        const int64_t min_full = pyramid_min_full(p.min_full_fraction, N);
        float before = 0.f;  // importance of the higher ranks
        for (int64_t r = 0; r < N; ++r) {
          const int64_t kb = ranked[r];
          int level = 0;
          for (int i = kPyramidLevels - 1; i >= 0; --i)
            if (before < bound[i]) level = pyramid_level(i);
          if (r < min_full || forced[kb]) level = 1;
          levels[kb] = static_cast<uint8_t>(level);
          before = before + weight[kb];
        }
      } else {
        int64_t cut[kPyramidLevels];
        for (int i = 0; i < kPyramidLevels; ++i)
          cut[i] = std::min<int64_t>(N, static_cast<int64_t>(std::ceil(p.bounds[i] * static_cast<float>(N))));
        for (int64_t r = 0; r < N; ++r) {
          const int64_t kb = ranked[r];
          int level = 0;
          for (int i = kPyramidLevels - 1; i >= 0; --i)
            if (r < cut[i]) level = pyramid_level(i);
          if (forced[kb]) level = 1;
          levels[kb] = static_cast<uint8_t>(level);
        }
      }
      int32_t* list = p.lists + row * Nk;
      int32_t* counts = p.counts + row * kPyramidLevels;
      int64_t used = 0;
      for (int i = 0; i < kPyramidLevels; ++i) {
        const int64_t first = used;
        for (int64_t kb = 0; kb < Nk; ++kb)
          if (levels[kb] == pyramid_level(i)) list[used++] = static_cast<int32_t>(kb);
        counts[i] = static_cast<int32_t>(used - first);
      }
      std::fill(list + used, list + Nk, -1);
    }
  });
}

void pyramid_attend(const PyramidAttendProblem& p) {
  const int64_t D = p.D, group = p.Hq / p.Hkv, Mq = pyramid_blocks(p.Tq, p.query_block), Nk = pyramid_blocks(p.Tk, p.block);
  const int64_t padded = Nk * p.block;
  double log_level[kPyramidLevels];  // the bias of every whole pooled token, computed once
  for (int li = 0; li < kPyramidLevels; ++li) log_level[li] = std::log(static_cast<double>(pyramid_level(li)));
  parallel_for(p.B * p.Hq, [&](int64_t begin, int64_t end) {
    std::vector<double> query(D), acc(D);
    std::vector<Candidate> candidates;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / p.Hq, h = bh % p.Hq, g = h / group;
      const int64_t hm = p.Hm == p.Hq ? h : g;
      const int64_t kv_head = b * p.Hkv + g;
      for (int64_t i = 0; i < p.Tq; ++i) {
        const int64_t out_row = bh * p.Tq + i, qb = i / p.query_block;
        const int64_t mask_row = (b * p.Hm + hm) * Mq + qb;
        const int64_t position = pyramid_query_position(p.Tq, p.Tk, i);
        for (int64_t d = 0; d < D; ++d) query[d] = load_float(p.q, p.in_dtype, out_row * D + d);
        candidates.clear();
        double max_logit = kNegInf;
        int64_t entry = 0;
        for (int li = 0; li < kPyramidLevels; ++li) {
          const int64_t level = pyramid_level(li), per_block = p.block / level;
          const void* keys = li == 0 ? p.k : p.pooled.keys[li - 1];
          const int64_t head_rows = li == 0 ? p.Tk : padded / level;
          for (int32_t c = 0; c < p.counts[mask_row * kPyramidLevels + li]; ++c, ++entry) {
            const int64_t kb = p.lists[mask_row * Nk + entry];
            for (int64_t t = kb * per_block; t < (kb + 1) * per_block; ++t) {
              const int64_t count = pyramid_count(p.Tk, level, t);
              if (count == 0 || (p.causal && t * level + count - 1 > position)) continue;
              const int64_t row = kv_head * head_rows + t;
              const double bias = count == level ? log_level[li] : std::log(static_cast<double>(count));
              const double z = static_cast<double>(p.scale) * dot_f64(query.data(), keys, p.in_dtype, row, D) + bias;
              candidates.push_back({li, row, z});
              max_logit = std::max(max_logit, z);
            }
          }
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double denom = 0;
        for (const Candidate& c : candidates) {
          const double w = std::exp(c.logit - max_logit);
          const void* values = c.level_index == 0 ? p.v : p.pooled.values[c.level_index - 1];
          denom += w;
          for (int64_t d = 0; d < D; ++d) acc[d] += w * load_float(values, p.in_dtype, c.row * D + d);
        }
        for (int64_t d = 0; d < D; ++d) store_float(p.out, p.out_dtype, out_row * D + d, denom > 0 ? acc[d] / denom : 0.0);
        if (p.lse) p.lse[out_row] = denom > 0 ? static_cast<float>(max_logit + std::log(denom)) : -std::numeric_limits<float>::infinity();
      }
    }
  });
}

}  // namespace kvs::cpu
