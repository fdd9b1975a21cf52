// CPU reference of chunked soft matching, following csrc/core/softmatch.h step by step.
// Heads run in parallel; each head is serial and deterministic.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/merge.h"
#include "core/parallel.h"
#include "core/softmatch.h"
#include "cpu/elements.h"

namespace kvs::cpu {
namespace {

struct Cluster {
  std::vector<float> key, value;
  int32_t size;
  int32_t position;
};

// One pass of step 3 over `list`; entry_of[j] (the list entry holding chunk token j) is
// updated to the new list.
void soft_match_pass(const SoftMatchProblem& p, int pass, std::vector<Cluster>& list, std::vector<int64_t>& entry_of) {
  const int64_t n = static_cast<int64_t>(list.size()), D = p.D;
  if (n < 2) return;
  struct Edge {
    int64_t source, destination;
    float cos;
  };
  std::vector<Edge> edges;
  for (int64_t a = 0; a < n; a += 2) {
    Edge best{a, -1, 0.f};
    for (int64_t b = 1; b < n; b += 2) {
      const float cos = exact_cosine(D, [&](int64_t d) { return list[a].key[d]; }, [&](int64_t d) { return list[b].key[d]; });
      if (best.destination < 0 || score_order(cos) > score_order(best.cos)) best = {a, b, cos};
    }
    edges.push_back(best);
  }
  std::vector<int64_t> kept_destination(n, -1);  // per source entry
  if (p.threshold_mode) {
    for (const Edge& e : edges)
      if (e.cos > p.threshold) kept_destination[e.source] = e.destination;
  } else {
    std::stable_sort(edges.begin(), edges.end(),
                     [](const Edge& x, const Edge& y) { return score_order(x.cos) > score_order(y.cos); });
    const int64_t keep = std::min<int64_t>(p.merges[pass], static_cast<int64_t>(edges.size()));
    for (int64_t e = 0; e < keep; ++e) kept_destination[edges[e].source] = edges[e].destination;
  }

  // members of each surviving entry, in list order
  std::vector<std::vector<int64_t>> members(n);
  for (int64_t i = 0; i < n; ++i) members[kept_destination[i] >= 0 ? kept_destination[i] : i].push_back(i);
  std::vector<Cluster> next;
  std::vector<int64_t> new_index(n, -1);
  for (int64_t i = 0; i < n; ++i) {
    if (members[i].empty()) continue;
    std::sort(members[i].begin(), members[i].end());
    Cluster merged{std::vector<float>(D), std::vector<float>(D), 0, -1};
    for (int64_t m : members[i]) {
      merged.size += list[m].size;
      merged.position = std::max(merged.position, list[m].position);
    }
    const float total = static_cast<float>(merged.size);
    for (int64_t d = 0; d < D; ++d) {
      float key = 0.f, value = 0.f;
      for (int64_t m : members[i]) {
        key = std::fma(static_cast<float>(list[m].size), list[m].key[d], key);
        value = std::fma(static_cast<float>(list[m].size), list[m].value[d], value);
      }
      merged.key[d] = key / total;
      merged.value[d] = value / total;
    }
    for (int64_t m : members[i]) new_index[m] = static_cast<int64_t>(next.size());
    next.push_back(std::move(merged));
  }
  for (int64_t& entry : entry_of) entry = new_index[entry];
  list = std::move(next);
}

}  // namespace

void soft_match(const SoftMatchProblem& p) {
  const int64_t D = p.D, T = p.T;
  const bool outputs = p.out_keys != nullptr;
  parallel_for(p.B * p.H, [&](int64_t begin, int64_t end) {
    std::vector<Cluster> list;
    std::vector<int64_t> entry_of(p.chunk);
    for (int64_t head = begin; head < end; ++head) {
      const int64_t token0 = head * T, slot0 = head * p.Tcap;
      int64_t slot = 0;
      // a raw token keeps its own slot; its stored values round-trip exactly
      const auto emit_raw = [&](int64_t t) {
        p.assign[token0 + t] = static_cast<int32_t>(slot);
        if (outputs && slot < p.Tcap) {  // a short Tcap is reported by the caller
          for (int64_t d = 0; d < D; ++d) {
            store_float(p.out_keys, p.dtype, (slot0 + slot) * D + d, load_float(p.keys, p.dtype, (token0 + t) * D + d));
            store_float(p.out_values, p.dtype, (slot0 + slot) * D + d, load_float(p.values, p.dtype, (token0 + t) * D + d));
          }
          p.sizes[slot0 + slot] = 1;
          p.positions[slot0 + slot] = static_cast<int32_t>(t);
        }
        ++slot;
      };
      const int64_t first = std::min(p.protect_first, T);
      const int64_t chunks = soft_match_chunks(T, p.chunk, p.protect_first, p.protect_recent);
      for (int64_t t = 0; t < first; ++t) emit_raw(t);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t start = first + c * p.chunk;
        list.clear();
        for (int64_t j = 0; j < p.chunk; ++j) {
          Cluster token{std::vector<float>(D), std::vector<float>(D), 1, static_cast<int32_t>(start + j)};
          for (int64_t d = 0; d < D; ++d) {
            token.key[d] = load_float(p.keys, p.dtype, (token0 + start + j) * D + d);
            token.value[d] = load_float(p.values, p.dtype, (token0 + start + j) * D + d);
          }
          list.push_back(std::move(token));
          entry_of[j] = j;
        }
        for (int pass = 0; pass < p.passes; ++pass) soft_match_pass(p, pass, list, entry_of);
        for (int64_t j = 0; j < p.chunk; ++j) p.assign[token0 + start + j] = static_cast<int32_t>(slot + entry_of[j]);
        for (const Cluster& cluster : list) {
          if (outputs && slot < p.Tcap) {
            for (int64_t d = 0; d < D; ++d) {
              store_float(p.out_keys, p.dtype, (slot0 + slot) * D + d, cluster.key[d]);
              store_float(p.out_values, p.dtype, (slot0 + slot) * D + d, cluster.value[d]);
            }
            p.sizes[slot0 + slot] = cluster.size;
            p.positions[slot0 + slot] = cluster.position;
          }
          ++slot;
        }
      }
      for (int64_t t = first + chunks * p.chunk; t < T; ++t) emit_raw(t);
      p.lengths[head] = static_cast<int32_t>(slot);
      if (outputs) write_padding_slots(p.out_keys, p.out_values, p.sizes, p.positions, p.dtype, slot0, slot, p.Tcap, D);
    }
  });
}

}  // namespace kvs::cpu
