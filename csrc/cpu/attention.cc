// CPU reference of dense attention (math in kvsquash.h, kvs_attention): a two-pass softmax
// in f64 per query row, rows spread over threads. Deterministic: each row's sums run in key
// order regardless of the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/attention.h"
#include "core/parallel.h"
#include "cpu/elements.h"

namespace kvs::cpu {

void attention(const AttentionProblem& p) {
  const int64_t group = p.Hq / p.Hkv;
  const int64_t D = p.D;
  parallel_for(p.B * p.Hq, [&](int64_t begin, int64_t end) {
    std::vector<double> query(D), logits(p.Tk), acc(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / p.Hq, hkv = (bh % p.Hq) / group;
      const int64_t kv_head = b * p.Hkv + hkv;
      // clamped again here: the caller's array may change after the API checked it (CPU
      // tensors wrap user memory), and a stale length must never index past Tk
      const int64_t len = p.kv_lengths ? std::min<int64_t>(std::max<int64_t>(p.kv_lengths[kv_head], 0), p.Tk) : p.Tk;
      const int64_t kv_base = kv_head * p.Tk * D;
      for (int64_t i = 0; i < p.Tq; ++i) {
        const int64_t row = bh * p.Tq + i;
        for (int64_t d = 0; d < D; ++d) query[d] = load_float(p.q, p.in_dtype, row * D + d);
        const int64_t limit = attention_key_limit(p.causal, len, p.Tq, i);
        double max_logit = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < limit; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += query[d] * load_float(p.k, p.in_dtype, kv_base + j * D + d);
          double s = static_cast<double>(p.scale) * dot;
          if (p.log_weights) s += p.log_weights[kv_head * p.Tk + j];
          logits[j] = s;
          if (s > max_logit) max_logit = s;
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double denom = 0;
        if (max_logit != -std::numeric_limits<double>::infinity()) {
          for (int64_t j = 0; j < limit; ++j) {
            const double w = std::exp(logits[j] - max_logit);
            denom += w;
            for (int64_t d = 0; d < D; ++d) acc[d] += w * load_float(p.v, p.in_dtype, kv_base + j * D + d);
          }
        }
        for (int64_t d = 0; d < D; ++d) store_float(p.out, p.out_dtype, row * D + d, denom > 0 ? acc[d] / denom : 0.0);
        if (p.lse) p.lse[row] = denom > 0 ? static_cast<float>(max_logit + std::log(denom))
                                          : -std::numeric_limits<float>::infinity();
      }
    }
  });
}

}  // namespace kvs::cpu
