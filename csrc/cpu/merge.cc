// CPU reference of merge segments, Gaussian merge and attention scores; the definitions
// are in csrc/core/merge.h. Heads run in parallel; each head is serial and deterministic.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/attention.h"
#include "core/merge.h"
#include "core/parallel.h"
#include "cpu/elements.h"

namespace kvs::cpu {
namespace {

// Indices of the m largest keys (ties: lower index first).
std::vector<int64_t> top_indices(const std::vector<uint32_t>& keys, const std::vector<int64_t>& candidates, int64_t m) {
  std::vector<int64_t> order = candidates;
  m = std::min<int64_t>(m, static_cast<int64_t>(order.size()));
  std::partial_sort(order.begin(), order.begin() + m, order.end(), [&](int64_t x, int64_t y) {
    return keys[x] != keys[y] ? keys[x] > keys[y] : x < y;
  });
  order.resize(m);
  return order;
}

}  // namespace

void merge_segments(const MergeSegmentProblem& p) {
  parallel_for(p.B * p.H, [&](int64_t begin, int64_t end) {
    const int64_t T = p.T;
    std::vector<uint8_t> is_protected(T), merged(T);
    std::vector<uint32_t> order_keys(T);
    std::vector<int64_t> candidates;
    for (int64_t head = begin; head < end; ++head) {
      const int64_t token0 = head * T;
      std::fill(is_protected.begin(), is_protected.end(), 0);
      std::fill(merged.begin(), merged.end(), 0);
      for (int64_t i = 0; i < T; ++i)
        is_protected[i] = i < p.protect_first || i >= T - p.protect_recent;
      if (p.protect_top > 0) {
        candidates.resize(T);
        std::iota(candidates.begin(), candidates.end(), 0);
        for (int64_t i = 0; i < T; ++i) order_keys[i] = score_order(p.scores[token0 + i]);
        for (int64_t i : top_indices(order_keys, candidates, p.protect_top)) is_protected[i] = 1;
      }
      candidates.clear();
      for (int64_t i = 1; i < T; ++i) {
        if (is_protected[i - 1] || is_protected[i]) continue;
        const float cos = exact_cosine(
            p.D, [&](int64_t d) { return load_float(p.keys, p.dtype, (token0 + i - 1) * p.D + d); },
            [&](int64_t d) { return load_float(p.keys, p.dtype, (token0 + i) * p.D + d); });
        if (p.budget == 0) {
          merged[i] = cos > p.threshold;
        } else {
          order_keys[i] = score_order(cos);
          candidates.push_back(i);
        }
      }
      if (p.budget > 0)
        for (int64_t i : top_indices(order_keys, candidates, T - p.budget)) merged[i] = 1;
      int32_t slot = 0;
      for (int64_t i = 0; i < T; ++i) {
        if (i > 0 && !merged[i]) ++slot;
        p.assign[token0 + i] = slot;
      }
      p.lengths[head] = slot + 1;
    }
  });
}

void gaussian_merge(const GaussianMergeProblem& p) {
  const int64_t D = p.D;
  parallel_for(p.B * p.H, [&](int64_t begin, int64_t end) {
    std::vector<double> d2, key(D), value(D);
    for (int64_t head = begin; head < end; ++head) {
      const int64_t token0 = head * p.T, slot0 = head * p.Tcap;
      int64_t slots = 0;
      for (int64_t first = 0; first < p.T;) {
        int64_t last = first;  // members first..last share one slot
        while (last + 1 < p.T && p.assign[token0 + last + 1] == p.assign[token0 + first]) ++last;
        const int64_t size = last - first + 1, slot = slot0 + slots++;
        int64_t pivot = first;
        for (int64_t i = first + 1; i <= last; ++i)
          if (score_order(p.scores[token0 + i]) > score_order(p.scores[token0 + pivot])) pivot = i;
        d2.assign(size, 0.0);
        double distance_sum = 0;
        for (int64_t i = first; i <= last; ++i) {
          double sum = 0;
          for (int64_t d = 0; d < D; ++d) {
            const double diff = static_cast<double>(load_float(p.keys, p.dtype, (token0 + i) * D + d)) -
                                load_float(p.keys, p.dtype, (token0 + pivot) * D + d);
            sum += diff * diff;
          }
          d2[i - first] = sum;
          if (i != pivot) distance_sum += std::sqrt(sum);
        }
        const double sigma = p.sigma > 0 ? p.sigma : size > 1 ? distance_sum / (size - 1) / std::sqrt(2.0) : 0.0;
        double weight_sum = 0;
        std::fill(key.begin(), key.end(), 0.0);
        std::fill(value.begin(), value.end(), 0.0);
        for (int64_t i = first; i <= last; ++i) {
          const double g = sigma > 0 ? std::exp(-d2[i - first] / (2 * sigma * sigma)) : 1.0;
          weight_sum += g;
          for (int64_t d = 0; d < D; ++d) {
            key[d] += g * load_float(p.keys, p.dtype, (token0 + i) * D + d);
            value[d] += g * load_float(p.values, p.dtype, (token0 + i) * D + d);
          }
        }
        const double value_factor = p.value_scale == KVS_VALUE_SCALE_PAPER ? static_cast<double>(size) : 1.0;
        for (int64_t d = 0; d < D; ++d) {
          store_float(p.out_keys, p.dtype, slot * D + d, key[d] / weight_sum);
          store_float(p.out_values, p.dtype, slot * D + d, value[d] / weight_sum * value_factor);
        }
        p.sizes[slot] = static_cast<int32_t>(size);
        p.pivots[slot] = static_cast<int32_t>(pivot);
        first = last + 1;
      }
      write_padding_slots(p.out_keys, p.out_values, p.sizes, p.pivots, p.dtype, slot0, slots, p.Tcap, D);
    }
  });
}

void attention_scores(const AttentionScoresProblem& p) {
  const int64_t group = p.Hq / p.Hkv, D = p.D;
  parallel_for(p.B * p.Hkv, [&](int64_t begin, int64_t end) {
    std::vector<double> column(p.Tk), logits(p.Tk), query(D);
    for (int64_t kv_head = begin; kv_head < end; ++kv_head) {
      const int64_t b = kv_head / p.Hkv, g = kv_head % p.Hkv;
      std::fill(column.begin(), column.end(), 0.0);
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (int64_t i = p.Tq - p.window; i < p.Tq; ++i) {
          const int64_t row = (b * p.Hq + h) * p.Tq + i;
          const int64_t visible = attention_key_limit(p.causal, p.Tk, p.Tq, i);
          for (int64_t d = 0; d < D; ++d) query[d] = load_float(p.q, p.dtype, row * D + d);
          double max_logit = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < visible; ++j) {
            double dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += query[d] * load_float(p.k, p.dtype, (kv_head * p.Tk + j) * D + d);
            logits[j] = p.scale * dot;
            max_logit = std::max(max_logit, logits[j]);
          }
          double denom = 0;
          for (int64_t j = 0; j < visible; ++j) denom += std::exp(logits[j] - max_logit);
          for (int64_t j = 0; j < visible; ++j) column[j] += std::exp(logits[j] - max_logit) / denom;
        }
      }
      for (int64_t j = 0; j < p.Tk; ++j) p.scores[kv_head * p.Tk + j] = static_cast<float>(column[j]);
    }
  });
}

}  // namespace kvs::cpu
