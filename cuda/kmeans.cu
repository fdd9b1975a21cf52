// Weighted k-means on CUDA (kvs_kmeans; the definition is the header of csrc/cpu/kmeans.cc).
// The centroids equal the CPU reference's bit for bit, by construction:
//  - the k-means++ start runs on the host through the CPU's own code
//    (cpu::kmeans_plus_plus), and dim 1 runs wholly on the host (cpu::kmeans): sorting, cheap;
//  - assignment: the f64 squared distance summed over the dims in ascending order, each step
//    rounded on its own (__dsub_rn / __dmul_rn / __dadd_rn: nvcc may not contract them into
//    FMAs, as the CPU build may not: -ffp-contract=off), the nearest centroid by strict <, so
//    ties go to the lower index;
//  - cluster sums: one thread per cluster walks the group's points in ascending index and adds
//    each member's w and w * x, so every f64 sum is the CPU's sequence of additions in the
//    CPU's order and differs from it by exactly 0 (not merely within the 1e-5 relative the
//    calibration needs). The terms do not round either: w * x, two f32 widened, has at most
//    48 significant bits;
//  - means by IEEE division (__ddiv_rn); empty clusters (total weight 0) re-seeded in ascending
//    order at the first point of largest w * distance, whose value then drops to 0, as the CPU;
//  - each group stops when no assignment changed; all stop after `iterations`.
// The walk costs O(N) per cluster, O(N k) per group: a dim-th of the assignment's O(N k dim),
// and simpler than sorting the points by cluster. The host reads one flag per group after
// each assignment, to stop once every group has reached its fixed point.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common.cuh"
#include "scratch.cuh"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/quant.h"
#include "kvsquash.h"

namespace kvs::cuda {
namespace {

constexpr int kAssignThreads = 256;     // a point per thread
constexpr int kSumThreads = 128;        // a cluster per thread
constexpr int kSumChunk = 2048;         // assignments staged in shared memory per pass
constexpr int kUpdateThreads = 256;     // a block per group
constexpr int kMaxWarps = 32;
constexpr int kCodebookDim = 8;         // the quantizer's 8-D codebooks get registers
constexpr size_t kSharedCentroidBytes = 48 * 1024;  // the default dynamic shared memory limit

struct LloydArgs {
  const float* data;     // [G, N, dim]
  const float* weights;  // [G, N] or nullptr
  double* centroids;     // [G, k, dim]
  double* sums;          // [G, k, dim]
  double* totals;        // [G, k]
  double* nearest;       // [G, N]: w * squared distance to the assigned centroid
  int32_t* assign;       // [G, N], -1 before the first assignment
  const uint8_t* running;  // [G]: still iterating
  uint8_t* changed;        // [G]: an assignment changed in this iteration
  int64_t N, dim, k;
};

__device__ __forceinline__ double point_weight(const float* weights, int64_t p) {
  return weights ? static_cast<double>(weights[p]) : 1.0;
}

// A point held in registers when its dim is known at compile time.
template <int kDim>
struct RegisterPoint {
  float v[kDim];
  __device__ float operator[](int64_t d) const { return v[d]; }
};

// The CPU's squared_distance: sum over d ascending of (x_d - c_d)^2, each operation rounded.
template <class Point>
__device__ __forceinline__ double squared_distance(const Point& x, const double* c, int64_t dim) {
  double s = 0.0;
#pragma unroll
  for (int64_t d = 0; d < dim; ++d) {
    const double diff = __dsub_rn(static_cast<double>(x[d]), c[d]);
    s = __dadd_rn(s, __dmul_rn(diff, diff));
  }
  return s;
}

template <class Point>
__device__ __forceinline__ void assign_point(const LloydArgs& a, const Point& x, const double* c, int64_t dim, int64_t g, int64_t p) {
  int32_t best = 0;
  double best_distance = squared_distance(x, c, dim);
  for (int64_t j = 1; j < a.k; ++j) {
    const double distance = squared_distance(x, c + j * dim, dim);
    if (distance < best_distance) best = static_cast<int32_t>(j), best_distance = distance;
  }
  if (a.assign[p] != best) a.changed[g] = 1;
  a.assign[p] = best;
  a.nearest[p] = __dmul_rn(point_weight(a.weights, p), best_distance);
}

// Nearest centroid of every point of the running groups. kDim > 0: dim is kDim. Centroids
// staged in shared memory when they fit (every thread reads them all, in the same order).
template <int kDim, bool kStaged>
__global__ void assign_kernel(LloydArgs a, int64_t blocks_per_group) {
  const int64_t g = blockIdx.x / blocks_per_group;
  if (!a.running[g]) return;  // the whole block
  const int64_t dim = kDim > 0 ? kDim : a.dim;
  const double* c = a.centroids + g * a.k * dim;
  if constexpr (kStaged) {
    extern __shared__ double staged[];
    for (int64_t e = threadIdx.x; e < a.k * dim; e += blockDim.x) staged[e] = c[e];
    __syncthreads();
    c = staged;
  }
  const int64_t i = (blockIdx.x % blocks_per_group) * blockDim.x + threadIdx.x;
  if (i >= a.N) return;
  const int64_t p = g * a.N + i;
  const float* x = a.data + p * dim;
  if constexpr (kDim > 0) {
    RegisterPoint<kDim> point;
#pragma unroll
    for (int d = 0; d < kDim; ++d) point.v[d] = x[d];
    assign_point(a, point, c, kDim, g, p);
  } else {
    assign_point(a, x, c, dim, g, p);
  }
}

// Total weight and weighted coordinate sums of every cluster of the changed groups: a thread
// per cluster adds its members in ascending point order (the CPU's order). The block stages
// kSumChunk assignments at a time in shared memory, which each thread scans for its cluster.
template <int kDim>
__global__ void cluster_sums_kernel(LloydArgs a, int64_t blocks_per_group) {
  __shared__ int32_t chunk[kSumChunk];
  const int64_t g = blockIdx.x / blocks_per_group;
  if (!a.changed[g]) return;  // the whole block
  const int64_t dim = kDim > 0 ? kDim : a.dim;
  const int64_t j = (blockIdx.x % blocks_per_group) * blockDim.x + threadIdx.x;
  const bool owns = j < a.k;
  double* sum = a.sums + (g * a.k + (owns ? j : 0)) * dim;  // accumulated in place when dim is not kDim
  double held[kDim > 0 ? kDim : 1] = {};
  if constexpr (kDim == 0)
    for (int64_t d = 0; owns && d < dim; ++d) sum[d] = 0.0;
  double total = 0.0;
  for (int64_t base = 0; base < a.N; base += kSumChunk) {
    const int64_t count = a.N - base < kSumChunk ? a.N - base : kSumChunk;
    __syncthreads();  // the previous chunk is scanned
    for (int64_t t = threadIdx.x; t < count; t += blockDim.x) chunk[t] = a.assign[g * a.N + base + t];
    __syncthreads();
    if (!owns) continue;
    for (int64_t t = 0; t < count; ++t) {
      if (chunk[t] != j) continue;
      const int64_t p = g * a.N + base + t;
      const double w = point_weight(a.weights, p);
      const float* x = a.data + p * dim;
      total = __dadd_rn(total, w);
      if constexpr (kDim > 0) {
#pragma unroll
        for (int d = 0; d < kDim; ++d) held[d] = __dadd_rn(held[d], __dmul_rn(w, static_cast<double>(x[d])));
      } else {
        for (int64_t d = 0; d < dim; ++d) sum[d] = __dadd_rn(sum[d], __dmul_rn(w, static_cast<double>(x[d])));
      }
    }
  }
  if (!owns) return;
  a.totals[g * a.k + j] = total;
  if constexpr (kDim > 0) {
#pragma unroll
    for (int d = 0; d < kDim; ++d) sum[d] = held[d];
  }
}

// Block-wide index of the first largest of values[0, n) (values >= 0, no NaN): std::max_element.
// Every thread gets it; lane_values / lane_indices hold the warp winners.
__device__ int64_t first_argmax(const double* values, int64_t n, double (&lane_values)[kMaxWarps],
                                int64_t (&lane_indices)[kMaxWarps]) {
  double best = 0.0;
  int64_t at = kNoIndex;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)  // ascending: strict > keeps the first
    if (at == kNoIndex || values[i] > best) best = values[i], at = i;
  const auto merge_warp = [&] {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const double other = __shfl_xor_sync(kFullWarpMask, best, offset);
      const int64_t other_at = __shfl_xor_sync(kFullWarpMask, at, offset);
      if (other_at != kNoIndex && (at == kNoIndex || other > best || (other == best && other_at < at))) best = other, at = other_at;
    }
  };
  merge_warp();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // the previous call's readers are done with the scratch
  if (lane == 0) lane_values[warp] = best, lane_indices[warp] = at;
  __syncthreads();
  best = lane < warps ? lane_values[lane] : 0.0;
  at = lane < warps ? lane_indices[lane] : kNoIndex;
  merge_warp();  // every warp merges the warp winners: all threads agree
  return at;
}

// Moves each cluster of the changed groups to its members' weighted mean, then re-seeds the
// empty ones in ascending order at the worst-served point. A block per group.
__global__ void update_kernel(LloydArgs a) {
  __shared__ double lane_values[kMaxWarps];
  __shared__ int64_t lane_indices[kMaxWarps];
  __shared__ uint8_t empty[kUpdateThreads];
  const int64_t g = blockIdx.x;
  if (!a.changed[g]) return;  // the whole block
  const int64_t k = a.k, dim = a.dim;
  double* c = a.centroids + g * k * dim;
  const double* sums = a.sums + g * k * dim;
  const double* totals = a.totals + g * k;
  for (int64_t e = threadIdx.x; e < k * dim; e += blockDim.x)
    if (totals[e / dim] > 0.0) c[e] = __ddiv_rn(sums[e], totals[e / dim]);
  double* nearest = a.nearest + g * a.N;
  for (int64_t base = 0; base < k; base += blockDim.x) {
    __syncthreads();  // the previous window's flags are read
    empty[threadIdx.x] = base + threadIdx.x < k && !(totals[base + threadIdx.x] > 0.0);
    __syncthreads();
    for (int64_t t = 0; t < static_cast<int64_t>(blockDim.x) && base + t < k; ++t) {
      if (!empty[t]) continue;  // the same for every thread
      const int64_t worst = first_argmax(nearest, a.N, lane_values, lane_indices);
      const int64_t j = base + t;
      for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) c[j * dim + d] = a.data[(g * a.N + worst) * dim + d];
      __syncthreads();  // every thread has its argmax before the value drops
      if (threadIdx.x == 0) nearest[worst] = 0.0;
      __syncthreads();
    }
  }
}

__global__ void store_centroids_kernel(const double* centroids, float* out, int64_t count) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[e] = __double2float_rn(centroids[e]);
}

// Device scratch of one call, carved from one allocation (f64 arrays first: 8-byte aligned).
struct LloydBuffers {
  double *centroids, *sums, *totals, *nearest;
  int32_t* assign;
  uint8_t *running, *changed;

  static size_t bytes(int64_t G, int64_t N, int64_t k, int64_t dim) {
    return static_cast<size_t>(2 * G * k * dim + G * k + G * N) * sizeof(double) + static_cast<size_t>(G * N) * sizeof(int32_t) +
           static_cast<size_t>(2 * G);
  }

  LloydBuffers(void* base, int64_t G, int64_t N, int64_t k, int64_t dim) {
    centroids = static_cast<double*>(base);
    sums = centroids + G * k * dim;
    totals = sums + G * k * dim;
    nearest = totals + G * k;
    assign = reinterpret_cast<int32_t*>(nearest + G * N);
    running = reinterpret_cast<uint8_t*>(assign + G * N);
    changed = running + G;
  }
};

std::vector<float> copy_to_host(const float* device_data, int64_t count, cudaStream_t stream) {
  std::vector<float> host(static_cast<size_t>(count));
  KVS_CUDA_CHECK(cudaMemcpyAsync(host.data(), device_data, host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream),
                 "kmeans: copying the points to the host");
  KVS_CUDA_CHECK(cudaStreamSynchronize(stream), "kmeans: waiting for the points");
  return host;
}

unsigned whole_grid(int64_t blocks) {
  if (blocks > kMaxGridBlocks) throw Error(KVS_E_UNSUPPORTED, "kmeans: too many points for one CUDA grid");
  return static_cast<unsigned>(blocks);
}

template <int kDim>
void launch_assign(const LloydArgs& a, int64_t G, cudaStream_t stream) {
  const int64_t blocks_per_group = (a.N + kAssignThreads - 1) / kAssignThreads;
  const size_t centroid_bytes = static_cast<size_t>(a.k * a.dim) * sizeof(double);
  if (centroid_bytes <= kSharedCentroidBytes)
    assign_kernel<kDim, true><<<whole_grid(G * blocks_per_group), kAssignThreads, centroid_bytes, stream>>>(a, blocks_per_group);
  else
    assign_kernel<kDim, false><<<whole_grid(G * blocks_per_group), kAssignThreads, 0, stream>>>(a, blocks_per_group);
  KVS_CUDA_CHECK(cudaGetLastError(), "kmeans: launching the assignment kernel");
}

template <int kDim>
void launch_update(const LloydArgs& a, int64_t G, cudaStream_t stream) {
  const int64_t blocks_per_group = (a.k + kSumThreads - 1) / kSumThreads;
  cluster_sums_kernel<kDim><<<whole_grid(G * blocks_per_group), kSumThreads, 0, stream>>>(a, blocks_per_group);
  KVS_CUDA_CHECK(cudaGetLastError(), "kmeans: launching the cluster sums kernel");
  update_kernel<<<whole_grid(G), kUpdateThreads, 0, stream>>>(a);
  KVS_CUDA_CHECK(cudaGetLastError(), "kmeans: launching the centroid update kernel");
}

template <int kDim>
void lloyd(const KmeansProblem& p, LloydArgs a, LloydBuffers& buffers, cudaStream_t stream) {
  const int64_t G = p.G;
  std::vector<uint8_t> changed(static_cast<size_t>(G));
  KVS_CUDA_CHECK(cudaMemsetAsync(buffers.running, 1, static_cast<size_t>(G), stream), "kmeans: marking the groups");
  for (int32_t iteration = 0; iteration < p.iterations; ++iteration) {
    a.running = buffers.running, a.changed = buffers.changed;
    KVS_CUDA_CHECK(cudaMemsetAsync(buffers.changed, 0, static_cast<size_t>(G), stream), "kmeans: clearing the change flags");
    launch_assign<kDim>(a, G, stream);
    KVS_CUDA_CHECK(cudaMemcpyAsync(changed.data(), buffers.changed, changed.size(), cudaMemcpyDeviceToHost, stream),
                   "kmeans: reading the change flags");
    KVS_CUDA_CHECK(cudaStreamSynchronize(stream), "kmeans: waiting for the assignment");
    if (std::none_of(changed.begin(), changed.end(), [](uint8_t c) { return c != 0; })) break;
    launch_update<kDim>(a, G, stream);
    std::swap(buffers.running, buffers.changed);  // a group runs on while its assignment changes
  }
}

}  // namespace

void kmeans(const KmeansProblem& p, void* stream) {
  if (p.G == 0 || p.k * p.dim == 0) return;  // no centroids to write
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  if (p.k > INT32_MAX) throw Error(KVS_E_UNSUPPORTED, "k: at most 2^31 - 1 centroids on CUDA");
  const int64_t G = p.G, N = p.N, k = p.k, dim = p.dim;
  const std::vector<float> data = copy_to_host(p.data, G * N * dim, cuda_stream);
  const std::vector<float> weights = p.weights ? copy_to_host(p.weights, G * N, cuda_stream) : std::vector<float>();
  const float* host_weights = p.weights ? weights.data() : nullptr;

  if (dim == 1) {  // the sorting solution is cheap and sequential: the CPU's code, on the host
    std::vector<float> centroids(static_cast<size_t>(G * k));
    KmeansProblem host = p;
    host.data = data.data(), host.weights = host_weights, host.centroids = centroids.data();
    cpu::kmeans(host);
    KVS_CUDA_CHECK(cudaMemcpyAsync(p.centroids, centroids.data(), centroids.size() * sizeof(float), cudaMemcpyHostToDevice, cuda_stream),
                   "kmeans: copying the centroids to the device");
    KVS_CUDA_CHECK(cudaStreamSynchronize(cuda_stream), "kmeans: waiting for the centroids");  // before `centroids` is freed
    return;
  }

  std::vector<double> start(static_cast<size_t>(G * k * dim));
  parallel_for(G, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      cpu::kmeans_plus_plus(data.data() + g * N * dim, host_weights ? host_weights + g * N : nullptr, N, dim, k,
                            p.seed + static_cast<uint64_t>(g), start.data() + g * k * dim);
  });

  StreamScratch scratch(LloydBuffers::bytes(G, N, k, dim), p.device, cuda_stream, "kmeans");
  LloydBuffers buffers(scratch.get(), G, N, k, dim);
  KVS_CUDA_CHECK(cudaMemcpyAsync(buffers.centroids, start.data(), start.size() * sizeof(double), cudaMemcpyHostToDevice, cuda_stream),
                 "kmeans: copying the k-means++ centroids to the device");
  KVS_CUDA_CHECK(cudaMemsetAsync(buffers.assign, 0xff, static_cast<size_t>(G * N) * sizeof(int32_t), cuda_stream),
                 "kmeans: clearing the assignments");  // all bits set: -1, no centroid yet

  LloydArgs args{};
  args.data = p.data, args.weights = p.weights;
  args.centroids = buffers.centroids, args.sums = buffers.sums, args.totals = buffers.totals;
  args.nearest = buffers.nearest, args.assign = buffers.assign;
  args.N = N, args.dim = dim, args.k = k;
  if (dim == kCodebookDim)
    lloyd<kCodebookDim>(p, args, buffers, cuda_stream);
  else
    lloyd<0>(p, args, buffers, cuda_stream);

  const int64_t count = G * k * dim;
  store_centroids_kernel<<<grid_blocks(count, 256), 256, 0, cuda_stream>>>(buffers.centroids, p.centroids, count);
  KVS_CUDA_CHECK(cudaGetLastError(), "kmeans: launching the centroid store");
  scratch.release();
  KVS_CUDA_CHECK(cudaStreamSynchronize(cuda_stream), "kmeans: waiting for the centroids");  // before `start` is freed
}

}  // namespace kvs::cuda
