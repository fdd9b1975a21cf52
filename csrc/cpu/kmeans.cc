// Deterministic weighted k-means for calibrating codebooks (quant.md 7.4). Definition:
//  - dim 1: points sorted by value (ties by index). Start: centroid j = the first sorted
//    point whose cumulative weight reaches (j + 0.5) / k of the total. Lloyd: a point
//    belongs to the nearest centroid (ties: lower), found through the midpoints of the sorted
//    centroids; each centroid moves to its members' weighted mean (f64, prefix sums).
//  - dim > 1: start from k-means++: the first centroid and each next one drawn with
//    probability proportional to weight (then weight * squared distance to the nearest
//    chosen centroid), with uniforms from splitmix64(seed + 0xD1B54A32D192ED03 * (n + 1)),
//    n = 0, 1, ... Lloyd: nearest centroid by f64 squared distance (ties: lower index),
//    weighted f64 means.
//  - Both: an empty cluster is re-seeded at the point with the largest weighted squared
//    distance to its centroid (ties: lower point; each point at most once), clusters in
//    ascending order. Stops at a fixed point or after `iterations`. Centroids are written as
//    f32; dim 1 sorted.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/parallel.h"
#include "core/quant.h"
#include "core/quant_codec.h"

namespace kvs::cpu {
namespace {

double uniform01(uint64_t seed, uint64_t& draw) {
  const uint64_t bits = splitmix64(seed + 0xD1B54A32D192ED03ull * (++draw));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Index i with prefix(i) <= u * total < prefix(i + 1) over non-negative masses.
int64_t draw_index(const std::vector<double>& mass, double u) {
  double total = 0.0;
  for (double m : mass) total += m;
  const double target = u * total;
  double running = 0.0;
  int64_t last_positive = 0;
  for (size_t i = 0; i < mass.size(); ++i) {
    if (mass[i] <= 0.0) continue;
    last_positive = static_cast<int64_t>(i);
    running += mass[i];
    if (target < running) return last_positive;
  }
  return last_positive;  // rounding at the very top
}

void kmeans_1d(const float* data, const float* weights, int64_t N, int64_t k, int32_t iterations, float* out) {
  std::vector<int64_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return data[a] < data[b]; });
  std::vector<double> x(N), w_prefix(N + 1, 0.0), wx_prefix(N + 1, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    x[i] = data[order[i]];
    const double w = weights ? weights[order[i]] : 1.0;
    w_prefix[i + 1] = w_prefix[i] + w;
    wx_prefix[i + 1] = wx_prefix[i] + w * x[i];
  }
  const double total = w_prefix[N];
  std::vector<double> c(k);
  for (int64_t j = 0; j < k; ++j) {
    const double target = (static_cast<double>(j) + 0.5) / static_cast<double>(k) * total;
    const int64_t i = std::lower_bound(w_prefix.begin() + 1, w_prefix.end(), target) - (w_prefix.begin() + 1);
    c[j] = x[std::min<int64_t>(i, N - 1)];
  }
  std::vector<int64_t> start(k + 1);
  for (int32_t iter = 0; iter < iterations; ++iter) {
    std::sort(c.begin(), c.end());
    start[0] = 0, start[k] = N;
    for (int64_t j = 1; j < k; ++j) {  // members of j: x in (mid(j-1, j), mid(j, j+1)]
      const double mid = (c[j - 1] + c[j]) * 0.5;
      start[j] = std::upper_bound(x.begin(), x.end(), mid) - x.begin();
      start[j] = std::max(start[j], start[j - 1]);
    }
    std::vector<double> next(k);
    std::vector<int64_t> empty;
    for (int64_t j = 0; j < k; ++j) {
      const double w = w_prefix[start[j + 1]] - w_prefix[start[j]];
      if (w > 0.0) {
        next[j] = (wx_prefix[start[j + 1]] - wx_prefix[start[j]]) / w;
      } else {
        empty.push_back(j);
        next[j] = c[j];
      }
    }
    std::vector<int64_t> reseeded;  // as in dim > 1: a point seeds at most one empty cluster
    for (int64_t j : empty) {  // the worst-served point becomes a centroid
      int64_t worst = -1;
      double worst_error = -1.0;
      for (int64_t jj = 0; jj < k; ++jj)
        for (int64_t i = start[jj]; i < start[jj + 1]; ++i) {
          if (std::find(reseeded.begin(), reseeded.end(), i) != reseeded.end()) continue;
          const double w = w_prefix[i + 1] - w_prefix[i], e = w * (x[i] - next[jj]) * (x[i] - next[jj]);
          if (e > worst_error) worst_error = e, worst = i;
        }
      if (worst >= 0) next[j] = x[worst], reseeded.push_back(worst);
    }
    const bool fixed = next == c;
    c = next;
    if (fixed) break;
  }
  std::sort(c.begin(), c.end());
  for (int64_t j = 0; j < k; ++j) out[j] = static_cast<float>(c[j]);
}

double squared_distance(const float* a, const double* b, int64_t dim) {
  double s = 0.0;
  for (int64_t i = 0; i < dim; ++i) {
    const double d = a[i] - b[i];
    s += d * d;
  }
  return s;
}

double point_weight(const float* weights, int64_t i) { return weights ? static_cast<double>(weights[i]) : 1.0; }

}  // namespace

void kmeans_plus_plus(const float* data, const float* weights, int64_t N, int64_t dim, int64_t k, uint64_t seed, double* centroids) {
  std::vector<double> nearest(N), mass(N);
  uint64_t draw = 0;
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t i = 0; i < N; ++i) mass[i] = j == 0 ? point_weight(weights, i) : point_weight(weights, i) * nearest[i];
    const int64_t pick = draw_index(mass, uniform01(seed, draw));
    for (int64_t d = 0; d < dim; ++d) centroids[j * dim + d] = data[pick * dim + d];
    for (int64_t i = 0; i < N; ++i) {
      const double dist = squared_distance(data + i * dim, centroids + j * dim, dim);
      nearest[i] = j == 0 ? dist : std::min(nearest[i], dist);
    }
  }
}

namespace {

void kmeans_nd(const float* data, const float* weights, int64_t N, int64_t dim, int64_t k, int32_t iterations, uint64_t seed,
               float* out) {
  const auto weight = [&](int64_t i) { return point_weight(weights, i); };
  std::vector<double> c(k * dim), nearest(N);
  kmeans_plus_plus(data, weights, N, dim, k, seed, c.data());
  std::vector<int64_t> assign(N, -1);
  std::vector<double> sum(k * dim), total(k);
  for (int32_t iter = 0; iter < iterations; ++iter) {
    bool changed = false;
    for (int64_t i = 0; i < N; ++i) {
      int64_t best = 0;
      double best_distance = squared_distance(data + i * dim, c.data(), dim);
      for (int64_t j = 1; j < k; ++j) {
        const double dist = squared_distance(data + i * dim, c.data() + j * dim, dim);
        if (dist < best_distance) best = j, best_distance = dist;
      }
      changed |= assign[i] != best;
      assign[i] = best;
      nearest[i] = weight(i) * best_distance;
    }
    if (!changed) break;
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(total.begin(), total.end(), 0.0);
    for (int64_t i = 0; i < N; ++i) {
      total[assign[i]] += weight(i);
      for (int64_t d = 0; d < dim; ++d) sum[assign[i] * dim + d] += weight(i) * data[i * dim + d];
    }
    for (int64_t j = 0; j < k; ++j) {
      if (total[j] > 0.0) {
        for (int64_t d = 0; d < dim; ++d) c[j * dim + d] = sum[j * dim + d] / total[j];
        continue;
      }
      const int64_t worst = std::max_element(nearest.begin(), nearest.end()) - nearest.begin();
      for (int64_t d = 0; d < dim; ++d) c[j * dim + d] = data[worst * dim + d];
      nearest[worst] = 0.0;
    }
  }
  for (int64_t i = 0; i < k * dim; ++i) out[i] = static_cast<float>(c[i]);
}

}  // namespace

void kmeans(const KmeansProblem& p) {
  parallel_for(p.G, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const float* data = p.data + g * p.N * p.dim;
      const float* weights = p.weights ? p.weights + g * p.N : nullptr;
      float* out = p.centroids + g * p.k * p.dim;
      if (p.dim == 1)
        kmeans_1d(data, weights, p.N, p.k, p.iterations, out);
      else
        kmeans_nd(data, weights, p.N, p.dim, p.k, p.iterations, p.seed + static_cast<uint64_t>(g), out);
    }
  });
}

}  // namespace kvs::cpu
