// Pyramid sparse attention on CUDA; the definitions and tolerances are in csrc/core/pyramid.h.
//
// 1. pool_kernel, a thread per (tensor, head, level-8 token, dim): the 8 raw values under a
//    level-8 token feed its level-2, 4 and 8 sums through the contract's pairwise tree with
//    IEEE-rounded adds and divides, so the pooled tensors equal the CPU's bit for bit.
// 2. Importance, a block per mask row (b, hm, qb), two sweeps over the sampled keys of the
//    visible blocks: the first finds each sampled row's largest usable logit M(r), the second
//    folds x - M(r) into a per-key-block maximum. A maximum is order-free, so shared-memory
//    atomics keep it deterministic, and max_r exp(bm(r, kb) - M(r)) = exp(max over (r, j in kb)
//    of x(r, j) - M(r)) needs no per-row block maxima (Nk can reach 4096). f16/bf16:
//    importance_mma_kernel, every sampled row at once on mma.sync against double-buffered
//    tiles of 64 sampled keys; f32: importance_simt_kernel, FMA dot products (tensor cores'
//    TF32 would not meet the tolerance once exp amplifies the logit error).
// 3. assign_kernel, a block per mask row: one 64-bit key per visible block (forced, weight
//    bits, block id) sorted by a bitonic network gives the rank order; the threshold mode's
//    running sum is one thread's f32 loop in rank order, exactly as the CPU adds; the lists
//    come from a per-thread count and a scan, so every output is bit-identical.
// 4. Attend. A row's candidates form one "stream": its level-1 blocks' keys, then the pooled
//    tokens of its level-2, 4, 8 blocks, in list order. The hardware tile takes the next
//    64 entries (32 for D > 128) of the stream whatever blocks and levels they come from (a level-8
//    block of 64 keys is 8 tokens: 8 blocks share one tile), so any pack factor works, and
//    each tile column carries its own source row, ln(count) bias and last raw position.
//    f16/bf16: attend_mma_kernel, FlashAttention-2 style: 16 query rows per warp, QK^T and PV
//    on mma.sync m16n8k16 tensor cores with f32 accumulation, online softmax in registers,
//    K/V tiles double-buffered with cp.async. f32 (whose 1e-5 tolerance tensor cores would
//    not meet): attend_simt_kernel, a warp per query row as in cuda/attention.cu.
//    A block serves up to 64 query rows of one mask row: with a KV-head mask these are the
//    rows of every query head in the group, so one K/V tile serves the whole group. List ids
//    outside 0..Nk-1 are skipped (the C entry checks them only on the CPU).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/pyramid.h"
#include "kvsquash.h"

namespace kvs::cuda {
namespace {

constexpr int kRowsPerWarpTile = 16;  // query rows of one mma.sync m16 tile (one warp)
constexpr size_t kSharedMemoryWithoutOptIn = 48 * 1024;

size_t shared_memory_limit(int device) {
  int limit = 0;
  KVS_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                 "querying the shared memory limit of cuda:" + std::to_string(device));
  return static_cast<size_t>(limit);
}

// Raises a kernel's dynamic shared memory limit past the default 48 KiB when a launch needs
// more, after checking that the device allows that much.
void allow_shared_memory(const void* kernel, size_t bytes, int device, const std::string& what) {
  if (bytes <= kSharedMemoryWithoutOptIn) return;
  const size_t limit = shared_memory_limit(device);
  if (bytes > limit)
    throw Error(KVS_E_UNSUPPORTED, what + ": needs " + std::to_string(bytes) + " bytes of shared memory per block; cuda:" +
                                       std::to_string(device) + " allows " + std::to_string(limit));
  KVS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
                 what + ": raising the kernel's shared memory limit");
}

int compute_capability_major(int device) {
  int major = 0;
  KVS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
                 "querying the compute capability of cuda:" + std::to_string(device));
  return major;
}

int64_t checked_grid(int64_t blocks, const std::string& what) {
  if (blocks > INT32_MAX)
    throw Error(KVS_E_UNSUPPORTED, what + ": " + std::to_string(blocks) + " thread blocks are more than one CUDA grid holds");
  return blocks;
}

// Bytes carved from one dynamic shared memory buffer, each piece 16-byte aligned.
class SharedCarver {
 public:
  __host__ __device__ explicit SharedCarver(unsigned char* base) : base_(base) {}
  template <class U>
  __host__ __device__ U* take(int64_t count) {
    U* piece = reinterpret_cast<U*>(base_ + used_);
    used_ += (static_cast<size_t>(count) * sizeof(U) + 15) / 16 * 16;
    return piece;
  }
  __host__ __device__ size_t used() const { return used_; }

 private:
  unsigned char* base_;
  size_t used_ = 0;
};

// Key blocks a query block can see: all, or (causal) those starting at or before its last
// position `last_position` (negative when it precedes every key).
__host__ __device__ inline int64_t visible_key_blocks(bool causal, int64_t last_position, int64_t block, int64_t Nk) {
  if (!causal) return Nk;
  if (last_position < 0) return 0;
  const int64_t n = last_position / block + 1;
  return n < Nk ? n : Nk;
}

// Position of the last query of query block qb.
__host__ __device__ inline int64_t query_block_last_position(int64_t Tq, int64_t Tk, int64_t query_block, int64_t qb) {
  const int64_t end = (qb + 1) * query_block < Tq ? (qb + 1) * query_block : Tq;
  return pyramid_query_position(Tq, Tk, end - 1);
}

// Order-free float maximum in shared memory: non-negative floats order as signed ints,
// negative ones (sign bit set) in reverse as unsigned ints. NaN is ignored.
__device__ __forceinline__ void atomic_max_float(float* address, float value) {
  if (value != value) return;
  if (!signbit(value))
    atomicMax(reinterpret_cast<int*>(address), __float_as_int(value));
  else
    atomicMin(reinterpret_cast<unsigned*>(address), __float_as_uint(value));
}

// Sum over the block in a fixed order (warp butterflies, then the warps in order): the same
// bits on every run. Every thread must call it; all get the sum. `scratch` holds one float
// per warp plus one.
__device__ float block_sum(float value, float* scratch) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  value = warp_sum(value);
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    scratch[warps] = total;
  }
  __syncthreads();
  const float total = scratch[warps];
  __syncthreads();  // scratch may be reused right after
  return total;
}

// two[i] for i in {0, 1} without a run-time index into a local array (which would live in local memory).
template <class P>
__device__ __forceinline__ P pick(const P (&two)[2], int i) {
  return i ? two[1] : two[0];
}

// ==== 1. pool ===================================================================================

template <class T>
struct PoolArgs {
  const T* in[2];        // keys, values
  T* out[2][kPyramidLevels - 1];
  int64_t heads, Tk, D, padded;  // padded = Nk * block
};

template <class T>
__global__ void __launch_bounds__(256) pool_kernel(const PoolArgs<T> a) {
  const int64_t tokens8 = a.padded / 8;
  const int64_t per_tensor = a.heads * tokens8 * a.D;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < 2 * per_tensor; index += stride) {
    const int tensor = static_cast<int>(index / per_tensor);
    const int64_t rest = index % per_tensor;
    const int64_t d = rest % a.D, t8 = (rest / a.D) % tokens8, head = rest / (a.D * tokens8);
    const T* in = (tensor == 0 ? a.in[0] : a.in[1]) + head * a.Tk * a.D + d;
    // sums[u] holds pooled token u under t8 of the current level; level L's sums replace
    // level L/2's in place (sum u reads 2u and 2u + 1, both at or after u)
    float sums[8];
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const int64_t raw = 8 * t8 + r;
      sums[r] = raw < a.Tk ? to_float(in[raw * a.D]) : 0.0f;
    }
#pragma unroll
    for (int li = 1; li < kPyramidLevels; ++li) {
      const int64_t level = pyramid_level(li), tokens_under = 8 >> li, rows = a.padded / level;
      T* out = (tensor == 0 ? a.out[0][li - 1] : a.out[1][li - 1]) + head * rows * a.D + d;
#pragma unroll
      for (int u = 0; u < (8 >> li); ++u) {
        const int64_t t = tokens_under * t8 + u;
        const int64_t count = pyramid_count(a.Tk, level, t);
        float value = 0.0f;
        if (count > 0) {
          const bool pair = pyramid_count(a.Tk, level / 2, 2 * t + 1) > 0;
          sums[u] = pair ? __fadd_rn(sums[2 * u], sums[2 * u + 1]) : sums[2 * u];
          value = __fdiv_rn(sums[u], static_cast<float>(count));
        }
        out[t * a.D] = from_float<T>(value);
      }
    }
  }
}

template <class T>
void launch_pool(const PyramidPoolProblem& p, cudaStream_t stream) {
  PoolArgs<T> a{};
  a.in[0] = static_cast<const T*>(p.keys);
  a.in[1] = static_cast<const T*>(p.values);
  for (int i = 0; i < kPyramidLevels - 1; ++i) {
    a.out[0][i] = static_cast<T*>(p.pooled_keys[i]);
    a.out[1][i] = static_cast<T*>(p.pooled_values[i]);
  }
  a.heads = p.B * p.H;
  a.Tk = p.Tk;
  a.D = p.D;
  a.padded = pyramid_blocks(p.Tk, p.block) * p.block;
  const int64_t threads = 2 * a.heads * (a.padded / 8) * a.D;
  if (threads == 0) return;
  pool_kernel<T><<<grid_blocks(threads, 256), 256, 0, stream>>>(a);
  KVS_CUDA_CHECK(cudaGetLastError(), "pyramidPool: launching the kernel");
}

// ==== tensor cores and asynchronous copies (sm_80+) ==========================================

template <int DP>
struct MmaTile {
  static constexpr int kKeys = DP <= 128 ? 64 : 32;  // attend: stream entries per tile (register budget)
  // Row stride in 16-bit elements: (DP + 8) / 2 words is 4 mod 8, so the 8 row groups x 4
  // column pairs of a fragment load hit 32 distinct banks (and 16-byte rows stay aligned).
  static constexpr int kStride = DP + 8;
  static constexpr int kChunks = DP / 8;  // 16-byte pieces per row
  static constexpr int kMetaSlots = 3;    // column metadata of tiles j, j + 1 (loading), j + 2 (prepared)
};

__device__ __forceinline__ void copy16_async(void* shared, const void* global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global));
#else
  *static_cast<uint4*>(shared) = *static_cast<const uint4*>(global);
#endif
}

__device__ __forceinline__ void copy_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int Pending>
__device__ __forceinline__ void copy_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
#endif
}

// 8 elements (16 bytes) of a row into shared memory: asynchronously when aligned, else one
// element at a time; zeros when src is null (padding columns and rows).
template <class T>
__device__ __forceinline__ void stage8(T* shared, const T* src, bool aligned) {
  if (!src) {
    *reinterpret_cast<uint4*>(shared) = make_uint4(0, 0, 0, 0);
  } else if (aligned) {
    copy16_async(shared, src);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) shared[e] = src[e];
  }
}

template <class T>
__device__ __forceinline__ uint32_t pack2(float low, float high) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// D (16x8, f32) += A (16x16, row) * B (16x8, col) on tensor cores.
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#else
  (void)d, (void)a, (void)b0, (void)b1;
  __trap();  // the host sends only compute capability 8.0+ here
#endif
}


// Four 8x8 matrices of 16-bit values from shared memory in one instruction: lane l gives the
// address of row l % 8 of matrix l / 8 (16-byte aligned) and receives, of matrix i, in r[i]:
// row l / 4, columns 2 (l % 4) and + 1 (the mma fragment layout); Transposed: column l / 4,
// rows 2 (l % 4) and + 1.
template <bool Transposed>
__device__ __forceinline__ void load_matrices(uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (Transposed)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
#else
  (void)row;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();  // the host sends only compute capability 8.0+ here
#endif
}

// S (16 query rows x 8 * N8 keys, f32) += Q K^T over the first D dims (a multiple of 8, zero
// padded to 16 in shared memory), on tensor cores. Rows are MmaTile<DP>::kStride apart.
template <class T, int DP, int N8>
__device__ __forceinline__ void score_tile(float (&score)[N8][4], const T* q_rows, const T* k_rows, int64_t D, int lane) {
  static_assert(N8 % 2 == 0, "keys are loaded 16 at a time");
  constexpr int kStride = MmaTile<DP>::kStride;
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) {
    if (kk * 16 >= D) break;
    // A: rows 0-7 / 8-15 x dims 0-7, then the same x dims 8-15
    uint32_t qf[4];
    load_matrices<false>(qf, q_rows + (lane % 16) * kStride + kk * 16 + (lane / 16) * 8);
#pragma unroll
    for (int nb = 0; nb < N8; nb += 2) {
      // B of key groups nb and nb + 1: keys x dims 0-7, keys x dims 8-15, for each group
      uint32_t kf[4];
      load_matrices<false>(kf, k_rows + (nb * 8 + (lane / 16) * 8 + lane % 8) * kStride + kk * 16 + ((lane / 8) % 2) * 8);
      mma_16816<T>(score[nb], qf, kf[0], kf[1]);
      mma_16816<T>(score[nb + 1], qf, kf[2], kf[3]);
    }
  }
}

// ==== 2. importance =============================================================================

constexpr int kImportanceThreads = 256;     // SIMT kernel
constexpr int kImportanceRows = 32;         // SIMT: sampled query rows per chunk
constexpr int kImportanceKeys = 32;         // SIMT: sampled keys per tile
constexpr int kRowsPerThread = kImportanceRows / (kImportanceThreads / kImportanceKeys);
constexpr int kImportanceMmaWarps = 4;      // tensor-core kernel
constexpr int kImportanceMmaKeys = 64;      // tensor-core kernel: sampled keys per tile
constexpr int kMaxSampleSpan = 128;         // query_block and block are at most 128

template <class T>
struct ImportanceArgs {
  const T* q;
  const T* k;
  float* importance;
  int64_t B, Hq, Hkv, Hm, Tq, Tk, D, block, query_block, Mq, Nk;
  int32_t sample_queries, sample_keys;
  uint32_t seed;
  float scale;
  bool causal, kv_head_mask;
};

// What both importance kernels keep per mask row in shared memory.
struct ImportanceRowState {
  float* best;             // [Nk]: max over (r, j in kb) of x(r, j) - M(r), then P_h
  float* total;            // [Nk]: KV-head mask: sum of P_h over the group
  int32_t* query_offsets;  // [kMaxSampleSpan]
  int32_t* key_offsets;    // [kMaxSampleSpan]
  uint32_t* sample_keys;   // [kMaxSampleSpan]
  float* scratch;          // [warps + 1]

  __host__ __device__ void carve(SharedCarver& c, int64_t Nk) {
    best = c.take<float>(Nk);
    total = c.take<float>(Nk);
    query_offsets = c.take<int32_t>(kMaxSampleSpan);
    key_offsets = c.take<int32_t>(kMaxSampleSpan);
    sample_keys = c.take<uint32_t>(kMaxSampleSpan);
    scratch = c.take<float>(kImportanceThreads / kWarpSize + 1);
  }
};

// One mask row (b, hm, qb) of the importance: its query block, the sampled keys of its
// visible key blocks as one stream (entry e: block e / sample_keys, offset e % sample_keys),
// and the query heads whose P_h it averages.
struct ImportanceItem {
  int64_t b, hm, qb, q0, q_valid, stream_length, first_head, heads, kv_head;
};

template <class T>
__device__ ImportanceItem importance_item(const ImportanceArgs<T>& a, int64_t item) {
  const int64_t group = a.Hq / a.Hkv;
  ImportanceItem it;
  it.qb = item % a.Mq;
  it.hm = (item / a.Mq) % a.Hm;
  it.b = item / (a.Mq * a.Hm);
  it.q0 = it.qb * a.query_block;
  it.q_valid = min(a.Tq - it.q0, a.query_block);
  const int64_t blocks = visible_key_blocks(a.causal, query_block_last_position(a.Tq, a.Tk, a.query_block, it.qb), a.block, a.Nk);
  it.stream_length = blocks * a.sample_keys;
  it.first_head = a.kv_head_mask ? it.hm * group : it.hm;
  it.heads = a.kv_head_mask ? group : 1;
  it.kv_head = it.b * a.Hkv + it.first_head / group;
  return it;
}

// Raw key row of stream entry e (offset o of a block with c valid rows reads row o mod c).
template <class T>
__device__ __forceinline__ int64_t sampled_key_row(const ImportanceArgs<T>& a, const int32_t* key_offsets, int64_t e) {
  const int64_t kb = e / a.sample_keys, k0 = kb * a.block, k_valid = min(a.Tk - k0, a.block);
  return k0 + key_offsets[e % a.sample_keys] % k_valid;
}

template <class T>
__device__ __forceinline__ int64_t sampled_query_row(const ImportanceArgs<T>& a, const ImportanceItem& it, const int32_t* query_offsets,
                                                     int r) {
  return it.q0 + query_offsets[r] % it.q_valid;
}

// offsets[0..count) = the `count` offsets of 0..size-1 with the smallest (sample key, offset),
// in that order (the order does not matter: they only feed maxima).
__device__ void sample_offsets(uint32_t seed, int64_t b, int64_t h, uint32_t stream, int size, int count, uint32_t* keys,
                               int32_t* offsets) {
  for (int o = static_cast<int>(threadIdx.x); o < size; o += blockDim.x) keys[o] = pyramid_sample_key(seed, b, h, stream, o);
  __syncthreads();
  for (int o = static_cast<int>(threadIdx.x); o < size; o += blockDim.x) {
    const uint32_t key = keys[o];
    int rank = 0;
    for (int other = 0; other < size; ++other) rank += keys[other] < key || (keys[other] == key && other < o);
    if (rank < count) offsets[rank] = o;
  }
  __syncthreads();
}

// Start of query head h: its sampled offsets, and no block seen yet. The caller has synced
// since the last use of the state.
template <class T>
__device__ void begin_importance_head(const ImportanceArgs<T>& a, const ImportanceItem& it, int64_t h, const ImportanceRowState& s) {
  sample_offsets(a.seed, it.b, h, 0, static_cast<int>(a.query_block), a.sample_queries, s.sample_keys, s.query_offsets);
  sample_offsets(a.seed, it.b, h, 1, static_cast<int>(a.block), a.sample_keys, s.sample_keys, s.key_offsets);
  for (int64_t kb = threadIdx.x; kb < a.Nk; kb += blockDim.x) s.best[kb] = -INFINITY;
  __syncthreads();
}

// End of query head h (every thread, after a sync): P_h = exp(best), its row normalised, then
// stored (QHEAD) or added to the group's total (KVHEAD; heads in ascending order, as the CPU).
template <class T>
__device__ void end_importance_head(const ImportanceArgs<T>& a, int64_t item, const ImportanceRowState& s) {
  float partial = 0.0f;
  for (int64_t kb = threadIdx.x; kb < a.Nk; kb += blockDim.x) {
    const float p = expf(s.best[kb]);
    s.best[kb] = p;
    partial += p;
  }
  const float sum = block_sum(partial, s.scratch);
  for (int64_t kb = threadIdx.x; kb < a.Nk; kb += blockDim.x) {
    const float p = sum > 0.0f ? __fdiv_rn(s.best[kb], sum) : s.best[kb];
    if (a.kv_head_mask)
      s.total[kb] = __fadd_rn(s.total[kb], p);
    else
      a.importance[item * a.Nk + kb] = p;
  }
  __syncthreads();
}

template <class T>
__device__ void begin_importance_item(const ImportanceArgs<T>& a, const ImportanceRowState& s) {
  for (int64_t kb = threadIdx.x; kb < a.Nk; kb += blockDim.x) s.total[kb] = 0.0f;
}

template <class T>
__device__ void end_importance_item(const ImportanceArgs<T>& a, int64_t item, const ImportanceRowState& s) {
  const float heads = static_cast<float>(a.Hq / a.Hkv);
  if (a.kv_head_mask)
    for (int64_t kb = threadIdx.x; kb < a.Nk; kb += blockDim.x) a.importance[item * a.Nk + kb] = __fdiv_rn(s.total[kb], heads);
  __syncthreads();  // total is reset by the next item
}

// ---- f32 (and pre-sm_80) kernel: FMA dot products ------------------------------------------------

struct ImportanceSimtShared {
  int64_t* row_position;  // [kImportanceRows]
  float* queries;         // [kImportanceRows][D]
  float* keys;            // [kImportanceKeys][D + 1]: odd stride, lanes read distinct banks
  float* row_max;         // [kImportanceRows]
  int32_t* key_index;     // [kImportanceKeys]: raw key row, or -1
  int32_t* key_block;     // [kImportanceKeys]
  ImportanceRowState row;

  __host__ __device__ ImportanceSimtShared(unsigned char* base, int64_t D, int64_t Nk, size_t* bytes) {
    SharedCarver c(base);
    row_position = c.take<int64_t>(kImportanceRows);
    queries = c.take<float>(kImportanceRows * D);
    keys = c.take<float>(kImportanceKeys * (D + 1));
    row_max = c.take<float>(kImportanceRows);
    key_index = c.take<int32_t>(kImportanceKeys);
    key_block = c.take<int32_t>(kImportanceKeys);
    row.carve(c, Nk);
    if (bytes) *bytes = c.used();
  }
};

// <query, key> over D in f32, one fixed FMA order: both sweeps get the same bits.
__device__ __forceinline__ float dot_rows(const float* query, const float* key, int64_t D) {
  float dot = 0.0f;
  for (int64_t d = 0; d < D; ++d) dot = __fmaf_rn(query[d], key[d], dot);
  return dot;
}

template <class T>
__global__ void __launch_bounds__(kImportanceThreads) importance_simt_kernel(const ImportanceArgs<T> a) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const ImportanceSimtShared s(shared_bytes, a.D, a.Nk, nullptr);
  const int64_t D = a.D;
  const int tid = static_cast<int>(threadIdx.x);
  const int column = tid % kImportanceKeys, row_group = tid / kImportanceKeys;

  for (int64_t item = blockIdx.x; item < a.B * a.Hm * a.Mq; item += gridDim.x) {
    const ImportanceItem it = importance_item(a, item);
    begin_importance_item(a, s.row);
    for (int64_t h = it.first_head; h < it.first_head + it.heads; ++h) {
      begin_importance_head(a, it, h, s.row);
      const T* q_head = a.q + (it.b * a.Hq + h) * a.Tq * D;
      const T* k_head = a.k + it.kv_head * a.Tk * D;
      for (int first_row = 0; first_row < a.sample_queries; first_row += kImportanceRows) {
        const int rows = min(kImportanceRows, a.sample_queries - first_row);
        __syncthreads();  // the previous chunk is done with queries and row_max
        for (int64_t i = tid; i < kImportanceRows * D; i += blockDim.x) {
          const int r = static_cast<int>(i / D);
          const int64_t row = sampled_query_row(a, it, s.row.query_offsets, r < rows ? first_row + r : 0);
          s.queries[i] = r < rows ? to_float(q_head[row * D + i % D]) : 0.0f;
          if (i % D == 0) {
            s.row_position[r] = pyramid_query_position(a.Tq, a.Tk, row);
            s.row_max[r] = -INFINITY;
          }
        }
        for (int sweep = 0; sweep < 2; ++sweep) {
          for (int64_t first_key = 0; first_key < it.stream_length; first_key += kImportanceKeys) {
            __syncthreads();  // the previous tile is consumed (and the chunk's rows are loaded)
            if (tid < kImportanceKeys) {
              const int64_t entry = first_key + tid;
              const bool present = entry < it.stream_length;
              s.key_index[tid] = present ? static_cast<int32_t>(sampled_key_row(a, s.row.key_offsets, entry)) : -1;
              s.key_block[tid] = present ? static_cast<int32_t>(entry / a.sample_keys) : 0;
            }
            __syncthreads();
            for (int64_t i = tid; i < kImportanceKeys * D; i += blockDim.x) {
              const int c = static_cast<int>(i / D);
              const int32_t index = s.key_index[c];
              s.keys[c * (D + 1) + i % D] = index >= 0 ? to_float(k_head[index * D + i % D]) : 0.0f;
            }
            __syncthreads();
            const int32_t index = s.key_index[column];
            if (index < 0) continue;
#pragma unroll
            for (int i = 0; i < kRowsPerThread; ++i) {
              const int r = row_group + i * (kImportanceThreads / kImportanceKeys);
              if (r >= rows || (a.causal && index > s.row_position[r])) continue;
              const float x = __fmul_rn(a.scale, dot_rows(s.queries + r * D, s.keys + column * (D + 1), D));
              if (sweep == 0)
                atomic_max_float(&s.row_max[r], x);
              else
                atomic_max_float(&s.row.best[s.key_block[column]], __fsub_rn(x, s.row_max[r]));
            }
          }
          __syncthreads();  // row maxima complete before the second sweep reads them
        }
      }
      __syncthreads();
      end_importance_head(a, item, s.row);
    }
    end_importance_item(a, item, s.row);
  }
}

// ---- f16 / bf16 kernel: tensor cores -------------------------------------------------------------
// All sampled query rows of a mask row (up to 128: groups of 16, one per warp in turn) against
// tiles of 64 sampled keys, double-buffered. QK^T on mma.sync with f32 accumulation: the same
// instruction sequence in both sweeps gives the same logits, so the row maximum's own
// x - M(r) is exactly 0 as on the CPU.

template <int DP>
struct ImportanceMmaShared {
  unsigned char* queries;  // [rows][kStride] T: sampled query rows, zero padded
  unsigned char* keys[2];  // [kImportanceMmaKeys][kStride] T
  int64_t* row_position;   // [rows]
  float* row_max;          // [rows]: M(r), written after the first sweep
  int32_t* key_index[2];   // [kImportanceMmaKeys]: raw key row, or -1
  int32_t* key_block[2];   // [kImportanceMmaKeys]
  ImportanceRowState row;

  template <class T>
  __host__ __device__ static ImportanceMmaShared carve(unsigned char* base, int rows, int64_t Nk, size_t* bytes) {
    constexpr int kStride = MmaTile<DP>::kStride;
    SharedCarver c(base);
    ImportanceMmaShared s;
    s.queries = c.take<unsigned char>(static_cast<int64_t>(rows) * kStride * sizeof(T));
    for (int i = 0; i < 2; ++i) s.keys[i] = c.take<unsigned char>(kImportanceMmaKeys * kStride * sizeof(T));
    s.row_position = c.take<int64_t>(rows);
    s.row_max = c.take<float>(rows);
    for (int i = 0; i < 2; ++i) {
      s.key_index[i] = c.take<int32_t>(kImportanceMmaKeys);
      s.key_block[i] = c.take<int32_t>(kImportanceMmaKeys);
    }
    s.row.carve(c, Nk);
    if (bytes) *bytes = c.used();
    return s;
  }
};

// Issues the copies of tile `tile` of the sampled-key stream into buffer `buffer`, with its
// key rows and blocks (the thread that copies a row's first piece writes them).
template <class T, int DP>
__device__ void stage_sampled_keys(const ImportanceArgs<T>& a, const ImportanceItem& it, const T* k_head, int64_t tile, int buffer,
                                   const ImportanceMmaShared<DP>& s, bool aligned) {
  using Tile = MmaTile<DP>;
  T* k_tile = reinterpret_cast<T*>(pick(s.keys, buffer));
  for (int i = static_cast<int>(threadIdx.x); i < kImportanceMmaKeys * Tile::kChunks; i += blockDim.x) {
    const int c = i / Tile::kChunks, piece = i % Tile::kChunks;
    const int64_t entry = tile * kImportanceMmaKeys + c;
    const bool present = entry < it.stream_length;
    const int64_t row = present ? sampled_key_row(a, s.row.key_offsets, entry) : -1;
    if (piece == 0) {
      pick(s.key_index, buffer)[c] = static_cast<int32_t>(row);
      pick(s.key_block, buffer)[c] = present ? static_cast<int32_t>(entry / a.sample_keys) : 0;
    }
    stage8(k_tile + c * Tile::kStride + piece * 8, present && piece * 8 < a.D ? k_head + row * a.D + piece * 8 : nullptr, aligned);
  }
}

template <class T, int DP>
__global__ void __launch_bounds__(kImportanceMmaWarps * kWarpSize) importance_mma_kernel(const ImportanceArgs<T> a, bool aligned) {
  using Tile = MmaTile<DP>;
  constexpr int kN8 = kImportanceMmaKeys / 8;
  constexpr int kGroupsPerWarp = kMaxSampleSpan / kRowsPerWarpTile / kImportanceMmaWarps;  // up to 128 rows
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int rows = (a.sample_queries + kRowsPerWarpTile - 1) / kRowsPerWarpTile * kRowsPerWarpTile;
  const ImportanceMmaShared<DP> s = ImportanceMmaShared<DP>::template carve<T>(shared_bytes, rows, a.Nk, nullptr);
  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int group = lane >> 2, pair = lane & 3;
  const int groups = rows / kRowsPerWarpTile;

  for (int64_t item = blockIdx.x; item < a.B * a.Hm * a.Mq; item += gridDim.x) {
    const ImportanceItem it = importance_item(a, item);
    const int64_t tiles = (it.stream_length + kImportanceMmaKeys - 1) / kImportanceMmaKeys;
    begin_importance_item(a, s.row);
    for (int64_t h = it.first_head; h < it.first_head + it.heads; ++h) {
      begin_importance_head(a, it, h, s.row);
      const T* q_head = a.q + (it.b * a.Hq + h) * a.Tq * a.D;
      const T* k_head = a.k + it.kv_head * a.Tk * a.D;
      T* q_tile = reinterpret_cast<T*>(s.queries);
      for (int i = tid; i < rows * Tile::kChunks; i += blockDim.x) {
        const int r = i / Tile::kChunks, piece = i % Tile::kChunks;
        const int64_t row = sampled_query_row(a, it, s.row.query_offsets, r < a.sample_queries ? r : 0);
        if (piece == 0) s.row_position[r] = pyramid_query_position(a.Tq, a.Tk, row);
        const bool present = r < a.sample_queries && piece * 8 < a.D;
        stage8(q_tile + r * Tile::kStride + piece * 8, present ? q_head + row * a.D + piece * 8 : nullptr, aligned);
      }
      float row_max[kGroupsPerWarp][2];
#pragma unroll
      for (int gi = 0; gi < kGroupsPerWarp; ++gi) row_max[gi][0] = row_max[gi][1] = -INFINITY;

      for (int sweep = 0; sweep < 2; ++sweep) {
        if (tiles > 0) stage_sampled_keys<T, DP>(a, it, k_head, 0, 0, s, aligned);
        copy_async_commit();  // (the first sweep: with the queries)
        for (int64_t j = 0; j < tiles; ++j) {
          const int buffer = static_cast<int>(j & 1);
          if (j + 1 < tiles) {
            stage_sampled_keys<T, DP>(a, it, k_head, j + 1, buffer ^ 1, s, aligned);
            copy_async_commit();
            copy_async_wait<1>();
          } else {
            copy_async_wait<0>();
          }
          __syncthreads();
#pragma unroll
          for (int gi = 0; gi < kGroupsPerWarp; ++gi) {
            const int grp = warp + gi * kImportanceMmaWarps;
            if (grp >= groups) break;
            float score[kN8][4] = {};
            score_tile<T, DP>(score, q_tile + grp * kRowsPerWarpTile * Tile::kStride, reinterpret_cast<const T*>(pick(s.keys, buffer)), a.D,
                              lane);
            float column_best[kN8][2];
#pragma unroll
            for (int nb = 0; nb < kN8; ++nb) {
              column_best[nb][0] = column_best[nb][1] = -INFINITY;
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const int c = nb * 8 + pair * 2 + (e & 1), r = grp * kRowsPerWarpTile + group + 8 * (e >> 1);
                const int32_t index = pick(s.key_index, buffer)[c];
                if (index < 0 || r >= a.sample_queries || (a.causal && index > s.row_position[r])) continue;
                const float x = __fmul_rn(a.scale, score[nb][e]);
                if (sweep == 0)
                  row_max[gi][e >> 1] = fmaxf(row_max[gi][e >> 1], x);
                else
                  column_best[nb][e & 1] = fmaxf(column_best[nb][e & 1], __fsub_rn(x, s.row_max[r]));
              }
            }
            if (sweep == 1) {
              // the column's maximum over the warp's 16 rows (lanes of one pair), then one
              // order-free shared maximum per column and block
#pragma unroll
              for (int nb = 0; nb < kN8; ++nb) {
#pragma unroll
                for (int odd = 0; odd < 2; ++odd) {
                  float m = column_best[nb][odd];
                  m = fmaxf(m, __shfl_xor_sync(kFullWarpMask, m, 4));
                  m = fmaxf(m, __shfl_xor_sync(kFullWarpMask, m, 8));
                  m = fmaxf(m, __shfl_xor_sync(kFullWarpMask, m, 16));
                  const int c = nb * 8 + pair * 2 + odd;
                  if (group == 0 && m != -INFINITY) atomic_max_float(&s.row.best[pick(s.key_block, buffer)[c]], m);
                }
              }
            }
          }
          __syncthreads();  // buffer `buffer` is free again
        }
        copy_async_wait<0>();  // no tile: the query copies are still pending
        if (sweep == 0) {
#pragma unroll
          for (int gi = 0; gi < kGroupsPerWarp; ++gi) {
            const int grp = warp + gi * kImportanceMmaWarps;
            if (grp >= groups) break;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              float m = row_max[gi][half];
              m = fmaxf(m, __shfl_xor_sync(kFullWarpMask, m, 1));
              m = fmaxf(m, __shfl_xor_sync(kFullWarpMask, m, 2));
              if (pair == 0) s.row_max[grp * kRowsPerWarpTile + group + 8 * half] = m;
            }
          }
        }
        __syncthreads();  // M(r) complete before the second sweep; the best maxima before the end
      }
      end_importance_head(a, item, s.row);
    }
    end_importance_item(a, item, s.row);
  }
}

template <class T>
ImportanceArgs<T> importance_args(const PyramidImportanceProblem& p) {
  ImportanceArgs<T> a{};
  a.q = static_cast<const T*>(p.q);
  a.k = static_cast<const T*>(p.k);
  a.importance = p.importance;
  a.B = p.B, a.Hq = p.Hq, a.Hkv = p.Hkv, a.Tq = p.Tq, a.Tk = p.Tk, a.D = p.D;
  a.Hm = p.kv_head_mask ? p.Hkv : p.Hq;
  a.block = p.block;
  a.query_block = p.query_block;
  a.Mq = pyramid_blocks(p.Tq, p.query_block);
  a.Nk = pyramid_blocks(p.Tk, p.block);
  a.sample_queries = static_cast<int32_t>(p.sample_queries);
  a.sample_keys = static_cast<int32_t>(p.sample_keys);
  a.seed = p.seed;
  a.scale = p.scale;
  a.causal = p.causal;
  a.kv_head_mask = p.kv_head_mask;
  return a;
}

// Calls body(std::integral_constant<int, DP>{}) with the smallest supported DP >= D (DP >= Smallest).
template <int Smallest, class Body>
void dispatch_padded_head_dim(int64_t D, Body&& body) {
  if constexpr (Smallest <= 16) {
    if (D <= 16) return body(std::integral_constant<int, 16>{});
  }
  if (D <= 32) body(std::integral_constant<int, 32>{});
  else if (D <= 64) body(std::integral_constant<int, 64>{});
  else if (D <= 128) body(std::integral_constant<int, 128>{});
  else body(std::integral_constant<int, 256>{});  // D <= 256 is checked by the C entry
}

template <class T>
void launch_importance(const PyramidImportanceProblem& p, bool tensor_cores, cudaStream_t stream) {
  const ImportanceArgs<T> a = importance_args<T>(p);
  const int64_t items = a.B * a.Hm * a.Mq;
  if (items == 0 || a.Nk == 0) return;
  size_t bytes = 0;
  if constexpr (!std::is_same_v<T, float>) {
    bool launched = false;
    if (tensor_cores) {
      const bool aligned = is_16_byte_aligned(p.q) && is_16_byte_aligned(p.k);  // rows: D * 2 bytes, a multiple of 16
      const int rows = static_cast<int>((a.sample_queries + kRowsPerWarpTile - 1) / kRowsPerWarpTile * kRowsPerWarpTile);
      dispatch_padded_head_dim<16>(p.D, [&](auto padded) {
        constexpr int DP = decltype(padded)::value;
        ImportanceMmaShared<DP>::template carve<T>(nullptr, rows, a.Nk, &bytes);
        if (bytes > kSharedMemoryWithoutOptIn && bytes > shared_memory_limit(p.device)) return;  // the FMA kernel needs less
        allow_shared_memory(reinterpret_cast<const void*>(importance_mma_kernel<T, DP>), bytes, p.device, "pyramidImportance");
        importance_mma_kernel<T, DP><<<grid_blocks(items, 1), kImportanceMmaWarps * kWarpSize, bytes, stream>>>(a, aligned);
        launched = true;
      });
    }
    if (launched) {
      KVS_CUDA_CHECK(cudaGetLastError(), "pyramidImportance: launching the kernel");
      return;
    }
  }
  ImportanceSimtShared(nullptr, a.D, a.Nk, &bytes);
  allow_shared_memory(reinterpret_cast<const void*>(importance_simt_kernel<T>), bytes, p.device, "pyramidImportance");
  importance_simt_kernel<T><<<grid_blocks(items, 1), kImportanceThreads, bytes, stream>>>(a);
  KVS_CUDA_CHECK(cudaGetLastError(), "pyramidImportance: launching the kernel");
}

// ==== 3. assign =================================================================================

constexpr int kAssignThreads = 256;
constexpr int kBlockIdBits = 12;
static_assert(kPyramidMaxKeyBlocks <= (int64_t{1} << kBlockIdBits), "block ids must fit the sort key");

struct AssignArgs {
  const float* importance;
  uint8_t* level_map;
  int32_t* lists;
  int32_t* counts;
  int64_t rows, Mq, Nk, Tq, Tk, block, query_block, sort_size;  // sort_size: Nk rounded up to a power of two
  float bounds[kPyramidLevels];
  float min_full_fraction;
  bool causal, threshold_mode, force_sink, force_diagonal;
};

struct AssignShared {
  uint64_t* order;      // [sort_size]: rank order keys, descending after the sort
  float* weight;        // [Nk]
  float* before;        // [Nk], per rank: THRESHOLD's E(r)
  int32_t* per_thread;  // [kAssignThreads][4]: blocks per level, then their exclusive scan
  int32_t* totals;      // [4]
  uint8_t* forced;      // [Nk]
  uint8_t* levels;      // [Nk]

  __host__ __device__ AssignShared(unsigned char* base, int64_t Nk, int64_t sort_size, size_t* bytes) {
    SharedCarver c(base);
    order = c.take<uint64_t>(sort_size);
    weight = c.take<float>(Nk);
    before = c.take<float>(Nk);
    per_thread = c.take<int32_t>(kAssignThreads * kPyramidLevels);
    totals = c.take<int32_t>(kPyramidLevels);
    forced = c.take<uint8_t>(Nk);
    levels = c.take<uint8_t>(Nk);
    if (bytes) *bytes = c.used();
  }
};

// Sort key of visible block kb: larger ranks first. Forced blocks above all others, among
// them the lower id first; then the weight (non-negative, so its bits order as the value),
// ties to the lower id. 0 marks an unused slot (invisible or padding).
__device__ __forceinline__ uint64_t rank_key(bool forced, float weight, int64_t kb) {
  const uint64_t low_id_first = static_cast<uint64_t>((int64_t{1} << kBlockIdBits) - 1 - kb);
  const uint64_t weight_bits = forced ? 0 : __float_as_uint(weight);
  return ((static_cast<uint64_t>(forced) << (32 + kBlockIdBits)) | (weight_bits << kBlockIdBits) | low_id_first) + 1;
}

__device__ __forceinline__ int64_t rank_key_block(uint64_t key) {
  return ((int64_t{1} << kBlockIdBits) - 1) - static_cast<int64_t>((key - 1) & ((uint64_t{1} << kBlockIdBits) - 1));
}

__global__ void __launch_bounds__(kAssignThreads) assign_kernel(const AssignArgs a) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const AssignShared s(shared_bytes, a.Nk, a.sort_size, nullptr);
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t Nk = a.Nk;
  const int64_t per_thread = (Nk + kAssignThreads - 1) / kAssignThreads;

  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const int64_t qb = row % a.Mq;
    const int64_t p0 = pyramid_query_position(a.Tq, a.Tk, qb * a.query_block);
    const int64_t p1 = query_block_last_position(a.Tq, a.Tk, a.query_block, qb);
    const int64_t N = visible_key_blocks(a.causal, p1, a.block, Nk);  // the visible blocks are 0..N-1
    const float* P = a.importance + row * Nk;
    for (int64_t i = tid; i < a.sort_size; i += kAssignThreads) {
      uint64_t key = 0;
      if (i < N) {
        const int64_t start = i * a.block, end = min(a.Tk, start + a.block) - 1;
        const bool forced = (a.force_sink && i == 0) || (a.force_diagonal && start <= p1 && end >= p0);
        const float w = P[i] > 0.0f ? P[i] : 0.0f;
        s.forced[i] = forced;
        s.weight[i] = w;
        key = rank_key(forced, w, i);
      }
      if (i < Nk) s.levels[i] = 0;
      s.order[i] = key;
    }
    __syncthreads();
    // bitonic sort, descending
    for (int64_t span = 2; span <= a.sort_size; span <<= 1) {
      for (int64_t step = span >> 1; step > 0; step >>= 1) {
        for (int64_t i = tid; i < a.sort_size; i += kAssignThreads) {
          const int64_t partner = i ^ step;
          if (partner <= i) continue;
          const uint64_t x = s.order[i], y = s.order[partner];
          const bool descending = (i & span) == 0;
          if (descending ? x < y : x > y) {
            s.order[i] = y;
            s.order[partner] = x;
          }
        }
        __syncthreads();
      }
    }

    if (a.threshold_mode) {
      if (tid == 0) {
        float acc = 0.0f;  // the CPU's rank-order f32 sum, term by term
        for (int64_t r = 0; r < N; ++r) {
          s.before[r] = acc;
          acc = __fadd_rn(acc, s.weight[rank_key_block(s.order[r])]);
        }
        s.totals[0] = __float_as_int(acc);
      }
      __syncthreads();
      const float total = __int_as_float(s.totals[0]);
      float bound[kPyramidLevels];
#pragma unroll
      for (int i = 0; i < kPyramidLevels; ++i) bound[i] = __fmul_rn(a.bounds[i], total);
      const int64_t min_full = pyramid_min_full(a.min_full_fraction, N);
      for (int64_t r = tid; r < N; r += kAssignThreads) {
        const int64_t kb = rank_key_block(s.order[r]);
        int level = 0;
        for (int i = kPyramidLevels - 1; i >= 0; --i)
          if (s.before[r] < bound[i]) level = pyramid_level(i);
        if (r < min_full || s.forced[kb]) level = 1;
        s.levels[kb] = static_cast<uint8_t>(level);
      }
    } else {
      int64_t cut[kPyramidLevels];
#pragma unroll
      for (int i = 0; i < kPyramidLevels; ++i) {
        const int64_t c = static_cast<int64_t>(ceilf(__fmul_rn(a.bounds[i], static_cast<float>(N))));
        cut[i] = c < N ? c : N;
      }
      for (int64_t r = tid; r < N; r += kAssignThreads) {
        const int64_t kb = rank_key_block(s.order[r]);
        int level = 0;
        for (int i = kPyramidLevels - 1; i >= 0; --i)
          if (r < cut[i]) level = pyramid_level(i);
        if (s.forced[kb]) level = 1;
        s.levels[kb] = static_cast<uint8_t>(level);
      }
    }
    __syncthreads();

    // lists: each thread counts its slice of block ids per level; four threads scan the
    // per-thread counts; each thread then writes its slice's ids at their places
    const int64_t first = tid * per_thread, last = min(Nk, first + per_thread);
    int32_t mine[kPyramidLevels] = {};
    for (int64_t kb = first; kb < last; ++kb)
      if (s.levels[kb]) ++mine[__ffs(s.levels[kb]) - 1];
#pragma unroll
    for (int i = 0; i < kPyramidLevels; ++i) s.per_thread[tid * kPyramidLevels + i] = mine[i];
    __syncthreads();
    if (tid < kPyramidLevels) {
      int32_t running = 0;
      for (int t = 0; t < kAssignThreads; ++t) {
        const int32_t c = s.per_thread[t * kPyramidLevels + tid];
        s.per_thread[t * kPyramidLevels + tid] = running;
        running += c;
      }
      s.totals[tid] = running;
    }
    __syncthreads();
    int32_t* list = a.lists + row * Nk;
    int32_t next[kPyramidLevels];
    int32_t used = 0;
#pragma unroll
    for (int i = 0; i < kPyramidLevels; ++i) {
      next[i] = used + s.per_thread[tid * kPyramidLevels + i];
      used += s.totals[i];
    }
    for (int64_t kb = first; kb < last; ++kb) {
      const uint8_t level = s.levels[kb];
      a.level_map[row * Nk + kb] = level;
      if (level) list[next[__ffs(level) - 1]++] = static_cast<int32_t>(kb);
    }
    for (int64_t e = used + tid; e < Nk; e += kAssignThreads) list[e] = -1;
    if (tid < kPyramidLevels) a.counts[row * kPyramidLevels + tid] = s.totals[tid];
    __syncthreads();  // shared state is rebuilt for the next row
  }
}

void launch_assign(const PyramidAssignProblem& p, cudaStream_t stream) {
  AssignArgs a{};
  a.importance = p.importance;
  a.level_map = p.level_map;
  a.lists = p.lists;
  a.counts = p.counts;
  a.rows = p.B * p.Hm * p.Mq;
  a.Mq = p.Mq, a.Nk = p.Nk, a.Tq = p.Tq, a.Tk = p.Tk, a.block = p.block, a.query_block = p.query_block;
  a.sort_size = 1;
  while (a.sort_size < a.Nk) a.sort_size <<= 1;
  for (int i = 0; i < kPyramidLevels; ++i) a.bounds[i] = p.bounds[i];
  a.min_full_fraction = p.min_full_fraction;
  a.causal = p.causal;
  a.threshold_mode = p.threshold_mode;
  a.force_sink = p.force_sink;
  a.force_diagonal = p.force_diagonal;
  if (a.rows == 0 || a.Nk == 0) return;
  size_t bytes = 0;
  AssignShared(nullptr, a.Nk, a.sort_size, &bytes);
  allow_shared_memory(reinterpret_cast<const void*>(assign_kernel), bytes, p.device, "pyramidAssign");
  assign_kernel<<<grid_blocks(a.rows, 1), kAssignThreads, bytes, stream>>>(a);
  KVS_CUDA_CHECK(cudaGetLastError(), "pyramidAssign: launching the kernel");
}

// ==== 4. attend: the candidate stream, shared by both kernels ===================================

constexpr int kMaxWarps = 4;          // query rows per block: up to 64

template <class T>
struct AttendArgs {
  const T* q;
  const T* keys[kPyramidLevels];    // level 1 (k itself), 2, 4, 8
  const T* values[kPyramidLevels];
  const int32_t* lists;
  const int32_t* counts;
  void* out;
  float* lse;  // or nullptr
  kvs_dtype out_dtype;
  int64_t B, Hq, Hkv, Hm, Tq, Tk, D, block, query_block, Mq, Nk;
  int64_t group;          // Hq / Hkv
  int64_t heads_per_row;  // query heads one mask row serves: 1 (QHEAD) or group (KVHEAD)
  int64_t rows_per_block; // query rows per thread block
  int64_t blocks_per_row; // thread blocks per mask row
  float scale;
  bool causal;
  bool aligned;           // every K/V/q row can be read as 16-byte vectors
};

// One mask row's candidates in list order: level 1's blocks' raw keys, then the pooled tokens
// of the level 2, 4, 8 blocks (block / L each).
struct CandidateStream {
  const int32_t* list;
  int64_t start[kPyramidLevels + 1];      // stream index of each level's first token; [4] = length
  int32_t first_entry[kPyramidLevels];    // list index of each level's first block
};

__device__ CandidateStream candidate_stream(const int32_t* lists, const int32_t* counts, int64_t mask_row, int64_t Nk,
                                            int64_t block) {
  CandidateStream s;
  s.list = lists + mask_row * Nk;
  int64_t start = 0;
  int32_t entry = 0;
#pragma unroll
  for (int li = 0; li < kPyramidLevels; ++li) {
    const int32_t c = max(counts[mask_row * kPyramidLevels + li], 0);  // checked on the host
    s.start[li] = start;
    s.first_entry[li] = entry;
    start += c * (block >> li);
    entry += c;
  }
  s.start[kPyramidLevels] = start;
  return s;
}

// Where stream entry e (< length) reads its key and value, its raw-token count (0: nothing
// to attend, e.g. an out-of-range block id or a token past Tk) and its last raw position.
template <class T>
struct Candidate {
  const T* key;    // null when count is 0
  const T* value;
  int count;
  int64_t last;
};

// arrays[li] without a run-time index into a parameter array (which would go through local memory).
template <class T>
__device__ __forceinline__ const T* level_tensor(const T* const (&arrays)[kPyramidLevels], int li) {
  return li == 0 ? arrays[0] : li == 1 ? arrays[1] : li == 2 ? arrays[2] : arrays[3];
}

template <class T>
__device__ Candidate<T> locate_candidate(const AttendArgs<T>& a, const CandidateStream& s, int64_t e, int64_t kv_head) {
  Candidate<T> c{nullptr, nullptr, 0, 0};
  int li = 0;
  int64_t level_start = s.start[0];
  int32_t first_entry = s.first_entry[0];
#pragma unroll
  for (int l = 1; l < kPyramidLevels; ++l) {
    if (e >= s.start[l]) {
      li = l;
      level_start = s.start[l];
      first_entry = s.first_entry[l];
    }
  }
  const int64_t per_block = a.block >> li, within = e - level_start;
  const int32_t kb = s.list[first_entry + within / per_block];
  if (kb < 0 || kb >= a.Nk) return c;
  const int64_t level = pyramid_level(li), t = kb * per_block + within % per_block;
  c.count = static_cast<int>(pyramid_count(a.Tk, level, t));
  if (c.count == 0) return c;
  c.last = t * level + c.count - 1;
  const int64_t head_rows = li == 0 ? a.Tk : a.Nk * a.block / level;
  const int64_t row = (kv_head * head_rows + t) * a.D;
  c.key = level_tensor(a.keys, li) + row;
  c.value = level_tensor(a.values, li) + row;
  return c;
}

// The block's place: mask row (b, hm, qb) and which of that row's query rows it serves. Late
// query blocks come first: under a causal mask they carry the most work.
struct AttendPlace {
  int64_t b, hm, qb, mask_row, first_head, kv_head, first_row;
};

template <class T>
__device__ AttendPlace attend_place(const AttendArgs<T>& a) {
  const int64_t index = blockIdx.x;
  const int64_t part = index % a.blocks_per_row, rest = index / a.blocks_per_row;
  const int64_t bhm = rest % (a.B * a.Hm);
  AttendPlace p;
  p.qb = a.Mq - 1 - rest / (a.B * a.Hm);
  p.b = bhm / a.Hm;
  p.hm = bhm % a.Hm;
  p.mask_row = bhm * a.Mq + p.qb;
  p.first_head = a.heads_per_row == 1 ? p.hm : p.hm * a.group;
  p.kv_head = p.b * a.Hkv + p.first_head / a.group;
  p.first_row = part * a.rows_per_block;
  return p;
}

// Query row r of the block: its flat index in q / out / lse, or -1 past the mask row's rows.
template <class T>
__device__ __forceinline__ int64_t attend_query_row(const AttendArgs<T>& a, const AttendPlace& p, int64_t r,
                                                    int64_t* position) {
  const int64_t row = p.first_row + r;
  const int64_t head = p.first_head + row / a.query_block, i = p.qb * a.query_block + row % a.query_block;
  *position = pyramid_query_position(a.Tq, a.Tk, i);
  if (row >= a.heads_per_row * a.query_block || i >= a.Tq) return -1;
  return (p.b * a.Hq + head) * a.Tq + i;
}

// ==== 4a. f16 / bf16: tensor cores ==============================================================

struct MmaShared {
  unsigned char* q;      // [rows][kStride] T
  unsigned char* k[2];   // [kKeys][kStride] T
  unsigned char* v[2];
  const void** key_row;    // [slots][kKeys]: the column's key row, or null
  const void** value_row;  // [slots][kKeys]
  float* bias;           // [slots][kKeys]: log2(count), -inf for a column with nothing to attend
  int32_t* last;         // [slots][kKeys]: last raw position

  template <int DP, class T>
  __host__ __device__ static MmaShared carve(unsigned char* base, int rows, size_t* bytes) {
    using Tile = MmaTile<DP>;
    SharedCarver c(base);
    MmaShared s;
    s.q = c.take<unsigned char>(static_cast<int64_t>(rows) * Tile::kStride * sizeof(T));
    for (int i = 0; i < 2; ++i) s.k[i] = c.take<unsigned char>(Tile::kKeys * Tile::kStride * sizeof(T));
    for (int i = 0; i < 2; ++i) s.v[i] = c.take<unsigned char>(Tile::kKeys * Tile::kStride * sizeof(T));
    s.key_row = c.take<const void*>(Tile::kMetaSlots * Tile::kKeys);
    s.value_row = c.take<const void*>(Tile::kMetaSlots * Tile::kKeys);
    s.bias = c.take<float>(Tile::kMetaSlots * Tile::kKeys);
    s.last = c.take<int32_t>(Tile::kMetaSlots * Tile::kKeys);
    if (bytes) *bytes = c.used();
    return s;
  }
};

// Column metadata of tile `tile` into meta slot `slot`.
template <int DP, class T>
__device__ void prepare_columns(const AttendArgs<T>& a, const CandidateStream& stream, int64_t kv_head, int64_t tile,
                                int slot, const MmaShared& s) {
  using Tile = MmaTile<DP>;
  for (int c = static_cast<int>(threadIdx.x); c < Tile::kKeys; c += blockDim.x) {  // a block may have 1 warp
    const int64_t e = tile * Tile::kKeys + c;
    const int at = slot * Tile::kKeys + c;
    Candidate<T> cand{nullptr, nullptr, 0, 0};
    if (e < stream.start[kPyramidLevels]) cand = locate_candidate(a, stream, e, kv_head);
    s.key_row[at] = cand.key;
    s.value_row[at] = cand.value;
    s.bias[at] = cand.count > 0 ? log2f(static_cast<float>(cand.count)) : -INFINITY;
    s.last[at] = static_cast<int32_t>(cand.last);
  }
}

// Issues the copies of tile rows (keys and values) described by meta slot `slot` into buffer `buffer`.
template <int DP, class T>
__device__ void stage_tile(const AttendArgs<T>& a, int slot, int buffer, const MmaShared& s) {
  using Tile = MmaTile<DP>;
  T* k_tile = reinterpret_cast<T*>(pick(s.k, buffer));
  T* v_tile = reinterpret_cast<T*>(pick(s.v, buffer));
  for (int i = static_cast<int>(threadIdx.x); i < Tile::kKeys * Tile::kChunks; i += blockDim.x) {
    const int c = i / Tile::kChunks, piece = i % Tile::kChunks;
    const T* key = static_cast<const T*>(s.key_row[slot * Tile::kKeys + c]);
    const T* value = static_cast<const T*>(s.value_row[slot * Tile::kKeys + c]);
    const bool present = key && piece * 8 < a.D;
    const int offset = c * Tile::kStride + piece * 8;
    stage8(k_tile + offset, present ? key + piece * 8 : nullptr, a.aligned);
    stage8(v_tile + offset, present ? value + piece * 8 : nullptr, a.aligned);
  }
}


template <class T, int DP>
__global__ void __launch_bounds__(kMaxWarps * kWarpSize) attend_mma_kernel(const AttendArgs<T> a) {
  using Tile = MmaTile<DP>;
  constexpr int kN8 = Tile::kKeys / 8;  // 8-key column groups of a tile
  constexpr int kD8 = DP / 8;           // 8-dim column groups of the output
  constexpr bool kSplitWeights = std::is_same_v<T, __nv_bfloat16>;
  constexpr int kStride = Tile::kStride;
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int rows = static_cast<int>(a.rows_per_block);
  const MmaShared s = MmaShared::carve<DP, T>(shared_bytes, rows, nullptr);
  const AttendPlace place = attend_place(a);
  const CandidateStream stream = candidate_stream(a.lists, a.counts, place.mask_row, a.Nk, a.block);
  const int64_t tiles = (stream.start[kPyramidLevels] + Tile::kKeys - 1) / Tile::kKeys;
  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int group = lane >> 2, pair = lane & 3;  // the mma fragment coordinates of this lane

  T* q_tile = reinterpret_cast<T*>(s.q);
  for (int i = tid; i < rows * Tile::kChunks; i += blockDim.x) {
    const int r = i / Tile::kChunks, piece = i % Tile::kChunks;
    int64_t position;
    const int64_t row = attend_query_row(a, place, r, &position);
    const bool present = row >= 0 && piece * 8 < a.D;
    stage8(q_tile + r * kStride + piece * 8, present ? a.q + row * a.D + piece * 8 : nullptr, a.aligned);
  }
  prepare_columns<DP>(a, stream, place.kv_head, 0, 0, s);
  prepare_columns<DP>(a, stream, place.kv_head, 1, 1, s);
  __syncthreads();
  if (tiles > 0) stage_tile<DP>(a, 0, 0, s);
  copy_async_commit();  // the queries and tile 0

  // this lane's two query rows: group and group + 8 of the warp's 16
  int64_t position[2], out_row[2];
  out_row[0] = attend_query_row(a, place, warp * kRowsPerWarpTile + group, &position[0]);
  out_row[1] = attend_query_row(a, place, warp * kRowsPerWarpTile + group + 8, &position[1]);
  const bool warp_active = __any_sync(kFullWarpMask, out_row[0] >= 0 || out_row[1] >= 0);

  float o[kD8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};  // log2 domain
  float row_sum[2] = {0.0f, 0.0f};            // this lane's columns only; the quad adds up at the end
  const float scale2 = a.scale * kLog2e;
  const T* q_warp = q_tile + warp * kRowsPerWarpTile * kStride;

  for (int64_t j = 0; j < tiles; ++j) {
    const int buffer = static_cast<int>(j & 1), slot = static_cast<int>(j % Tile::kMetaSlots);
    if (j + 1 < tiles) {
      stage_tile<DP>(a, static_cast<int>((j + 1) % Tile::kMetaSlots), buffer ^ 1, s);
      copy_async_commit();
      copy_async_wait<1>();  // everything but tile j + 1 has landed
    } else {
      copy_async_wait<0>();
    }
    if (j + 2 < tiles) prepare_columns<DP>(a, stream, place.kv_head, j + 2, static_cast<int>((j + 2) % Tile::kMetaSlots), s);
    __syncthreads();

    if (warp_active) {
      const T* k_tile = reinterpret_cast<const T*>(pick(s.k, buffer));
      const T* v_tile = reinterpret_cast<const T*>(pick(s.v, buffer));
      float score[kN8][4] = {};
      score_tile<T, DP>(score, q_warp, k_tile, a.D, lane);

      // logits (log2 domain) with the level bias and the pooled causal rule; tile maxima
      const int meta = slot * Tile::kKeys;
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nb = 0; nb < kN8; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int column = meta + nb * 8 + pair * 2 + (e & 1);
          float z = fmaf(score[nb][e], scale2, s.bias[column]);
          if (a.causal && s.last[column] > position[e >> 1]) z = -INFINITY;
          score[nb][e] = z;
          tile_max[e >> 1] = fmaxf(tile_max[e >> 1], z);
        }
      }
      float base[2], rescale[2], partial[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(kFullWarpMask, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(kFullWarpMask, tile_max[r], 2));
        const float new_max = fmaxf(row_max[r], tile_max[r]);
        base[r] = new_max == -INFINITY ? 0.0f : new_max;  // nothing seen yet: every weight is 0, no NaN
        rescale[r] = exp2f(row_max[r] - base[r]);
        row_max[r] = new_max;
      }
#pragma unroll
      for (int nb = 0; nb < kN8; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          score[nb][e] = exp2f(score[nb][e] - base[e >> 1]);
          partial[e >> 1] += score[nb][e];
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) row_sum[r] = row_sum[r] * rescale[r] + partial[r];
#pragma unroll
      for (int db = 0; db < kD8; ++db) {
        o[db][0] *= rescale[0];
        o[db][1] *= rescale[0];
        o[db][2] *= rescale[1];
        o[db][3] *= rescale[1];
      }

      // PV: the weights are the A fragments as they lie (the accumulator layout of two
      // 8-key groups is the A layout of one 16-key step). bf16 keeps only 8 significant bits,
      // too few for the 1e-3 tolerance where a few weights cancel: there the weights go in as
      // a rounded part plus what the rounding left out, two products summed.
#pragma unroll
      for (int kk = 0; kk < Tile::kKeys / 16; ++kk) {
        const float w[8] = {score[2 * kk][0],     score[2 * kk][1],     score[2 * kk][2],     score[2 * kk][3],
                            score[2 * kk + 1][0], score[2 * kk + 1][1], score[2 * kk + 1][2], score[2 * kk + 1][3]};
        uint32_t pf[4], rest[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          pf[i] = pack2<T>(w[2 * i], w[2 * i + 1]);
          if constexpr (kSplitWeights)
            rest[i] = pack2<T>(w[2 * i] - __uint_as_float(pf[i] << 16), w[2 * i + 1] - __uint_as_float(pf[i] & 0xffff0000u));
        }
        // B of dim groups db and db + 1, transposed out of the [key][dim] tile: keys 0-7 and
        // 8-15 of each group (the zero padding past D may be read, never used)
        const T* vp = v_tile + (kk * 16 + ((lane / 8) % 2) * 8 + lane % 8) * kStride + (lane / 16) * 8;
#pragma unroll
        for (int db = 0; db < kD8; db += 2) {
          if (db * 8 >= a.D) break;
          uint32_t vf[4];
          load_matrices<true>(vf, vp + db * 8);
          mma_16816<T>(o[db], pf, vf[0], vf[1]);
          if constexpr (kSplitWeights) mma_16816<T>(o[db], rest, vf[0], vf[1]);
          if ((db + 1) * 8 < a.D) {
            mma_16816<T>(o[db + 1], pf, vf[2], vf[3]);
            if constexpr (kSplitWeights) mma_16816<T>(o[db + 1], rest, vf[2], vf[3]);
          }
        }
      }
    }
    __syncthreads();  // buffer `buffer` and meta slot `slot` are free again
  }
  copy_async_wait<0>();  // no tile: the query copies are still pending

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(kFullWarpMask, sum, 1);
    sum += __shfl_xor_sync(kFullWarpMask, sum, 2);
    if (out_row[r] < 0) continue;
    // a query with no candidate (or only zero weights) gets zeros and lse = -inf, as on the CPU
    const bool has_weight = sum > 0.0f;
#pragma unroll
    for (int db = 0; db < kD8; ++db) {
      if (db * 8 >= a.D) break;
      const int64_t at = out_row[r] * a.D + db * 8 + pair * 2;
      store_float_as(a.out, a.out_dtype, at, has_weight ? o[db][2 * r] / sum : 0.0f);
      store_float_as(a.out, a.out_dtype, at + 1, has_weight ? o[db][2 * r + 1] / sum : 0.0f);
    }
    if (a.lse && pair == 0) a.lse[out_row[r]] = has_weight ? (row_max[r] + log2f(sum)) * kLn2 : -INFINITY;
  }
}

// ==== 4b. f32: a warp per query row =============================================================

constexpr int kSimtWarps = 4;
constexpr int kSimtRowsPerWarp = 4;
constexpr int kSimtRows = kSimtWarps * kSimtRowsPerWarp;  // a multiple of 16: blocks never split a warp tile
constexpr int kSimtKeys = kWarpSize;                      // scoring gives each lane one key

struct SimtShared {
  float* queries;        // [kSimtRows][D]
  float* keys;           // [kSimtKeys][D + 1]: odd stride, lanes read distinct banks
  float* values;         // [kSimtKeys][D]
  const void** key_row;  // [kSimtKeys]: the column's key row, or null
  const void** value_row;
  float* bias;           // [kSimtKeys]: ln(count), -inf for a column with nothing to attend
  int32_t* last;         // [kSimtKeys]

  __host__ __device__ SimtShared(unsigned char* base, int64_t D, size_t* bytes) {
    SharedCarver c(base);
    queries = c.take<float>(kSimtRows * D);
    keys = c.take<float>(kSimtKeys * (D + 1));
    values = c.take<float>(kSimtKeys * D);
    key_row = c.take<const void*>(kSimtKeys);
    value_row = c.take<const void*>(kSimtKeys);
    bias = c.take<float>(kSimtKeys);
    last = c.take<int32_t>(kSimtKeys);
    if (bytes) *bytes = c.used();
  }
};

template <class T, int DP>
__global__ void __launch_bounds__(kSimtWarps * kWarpSize) attend_simt_kernel(const AttendArgs<T> a) {
  constexpr int kDimsPerLane = DP / kWarpSize;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const SimtShared s(shared_bytes, a.D, nullptr);
  const int64_t D = a.D;
  const AttendPlace place = attend_place(a);
  const CandidateStream stream = candidate_stream(a.lists, a.counts, place.mask_row, a.Nk, a.block);
  const int64_t length = stream.start[kPyramidLevels];
  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;

  for (int64_t i = tid; i < kSimtRows * D; i += blockDim.x) {
    int64_t position;
    const int64_t row = attend_query_row(a, place, i / D, &position);
    s.queries[i] = row >= 0 ? to_float(a.q[row * D + i % D]) : 0.0f;
  }
  int64_t position[kSimtRowsPerWarp], out_row[kSimtRowsPerWarp];
  float running_max[kSimtRowsPerWarp], denominator[kSimtRowsPerWarp], acc[kSimtRowsPerWarp][kDimsPerLane];
#pragma unroll
  for (int rr = 0; rr < kSimtRowsPerWarp; ++rr) {
    out_row[rr] = attend_query_row(a, place, warp * kSimtRowsPerWarp + rr, &position[rr]);
    running_max[rr] = -INFINITY;
    denominator[rr] = 0.0f;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) acc[rr][c] = 0.0f;
  }

  for (int64_t first = 0; first < length; first += kSimtKeys) {
    __syncthreads();  // the previous tile is consumed (and the queries are loaded)
    if (tid < kSimtKeys) {
      Candidate<T> cand{nullptr, nullptr, 0, 0};
      if (first + tid < length) cand = locate_candidate(a, stream, first + tid, place.kv_head);
      s.key_row[tid] = cand.key;
      s.value_row[tid] = cand.value;
      s.bias[tid] = cand.count > 0 ? logf(static_cast<float>(cand.count)) : -INFINITY;
      s.last[tid] = static_cast<int32_t>(cand.last);
    }
    __syncthreads();
    for (int64_t i = tid; i < kSimtKeys * D; i += blockDim.x) {
      const int c = static_cast<int>(i / D);
      const int64_t d = i % D;
      const T* key = static_cast<const T*>(s.key_row[c]);
      const T* value = static_cast<const T*>(s.value_row[c]);
      s.keys[c * (D + 1) + d] = key ? to_float(key[d]) : 0.0f;
      s.values[c * D + d] = value ? to_float(value[d]) : 0.0f;
    }
    __syncthreads();

    for (int rr = 0; rr < kSimtRowsPerWarp; ++rr) {
      if (out_row[rr] < 0) continue;  // warp-uniform
      const float* query = s.queries + (warp * kSimtRowsPerWarp + rr) * D;
      float logit = -INFINITY;
      if (s.bias[lane] != -INFINITY && !(a.causal && s.last[lane] > position[rr])) {
        const float* key = s.keys + lane * (D + 1);
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d) dot = fmaf(query[d], key[d], dot);
        logit = a.scale * dot + s.bias[lane];
      }
      const float new_max = fmaxf(running_max[rr], warp_max(logit));
      if (new_max == -INFINITY) continue;  // nothing visible yet: skipping avoids exp(-inf - -inf)
      const float rescale = expf(running_max[rr] - new_max);
      const float weight = expf(logit - new_max);
      denominator[rr] = denominator[rr] * rescale + warp_sum(weight);
      running_max[rr] = new_max;
#pragma unroll
      for (int c = 0; c < kDimsPerLane; ++c) acc[rr][c] *= rescale;
      for (int j = 0; j < kSimtKeys; ++j) {
        const float w = __shfl_sync(kFullWarpMask, weight, j);
        if (w == 0.0f) continue;  // warp-uniform: masked and padding columns
#pragma unroll
        for (int c = 0; c < kDimsPerLane; ++c) {
          const int dim = lane + c * kWarpSize;
          if (dim < D) acc[rr][c] = fmaf(w, s.values[j * D + dim], acc[rr][c]);
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kSimtRowsPerWarp; ++rr) {
    if (out_row[rr] < 0) continue;
    const bool has_weight = denominator[rr] > 0.0f;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int dim = lane + c * kWarpSize;
      if (dim < D) store_float_as(a.out, a.out_dtype, out_row[rr] * D + dim, has_weight ? acc[rr][c] / denominator[rr] : 0.0f);
    }
    if (a.lse && lane == 0) a.lse[out_row[rr]] = has_weight ? running_max[rr] + logf(denominator[rr]) : -INFINITY;
  }
}

// ---- attend launch ---------------------------------------------------------------------------

template <class T>
AttendArgs<T> attend_args(const PyramidAttendProblem& p) {
  AttendArgs<T> a{};
  a.q = static_cast<const T*>(p.q);
  a.keys[0] = static_cast<const T*>(p.k);
  a.values[0] = static_cast<const T*>(p.v);
  for (int i = 0; i < kPyramidLevels - 1; ++i) {
    a.keys[i + 1] = static_cast<const T*>(p.pooled.keys[i]);
    a.values[i + 1] = static_cast<const T*>(p.pooled.values[i]);
  }
  a.lists = p.lists;
  a.counts = p.counts;
  a.out = p.out;
  a.lse = p.lse;
  a.out_dtype = p.out_dtype;
  a.B = p.B, a.Hq = p.Hq, a.Hkv = p.Hkv, a.Hm = p.Hm, a.Tq = p.Tq, a.Tk = p.Tk, a.D = p.D;
  a.block = p.block;
  a.query_block = p.query_block;
  a.Mq = pyramid_blocks(p.Tq, p.query_block);
  a.Nk = pyramid_blocks(p.Tk, p.block);
  a.group = p.Hq / p.Hkv;
  a.heads_per_row = p.Hm == p.Hq ? 1 : a.group;  // as the CPU: Hm == Hq means one mask per query head
  a.scale = p.scale;
  a.causal = p.causal;
  bool aligned = is_16_byte_aligned(p.q);
  for (int i = 0; i < kPyramidLevels; ++i) aligned = aligned && is_16_byte_aligned(a.keys[i]) && is_16_byte_aligned(a.values[i]);
  a.aligned = aligned;  // rows are D * sizeof(T) bytes, a multiple of 16 for 16-bit T
  return a;
}

template <class T>
void launch_attend(const PyramidAttendProblem& p, cudaStream_t stream) {
  AttendArgs<T> a = attend_args<T>(p);
  constexpr bool kTensorCores = !std::is_same_v<T, float>;
  const int64_t rows_per_mask_row = a.heads_per_row * a.query_block;  // a multiple of 16
  a.rows_per_block = kTensorCores ? std::min<int64_t>(kMaxWarps * kRowsPerWarpTile, rows_per_mask_row) : kSimtRows;
  a.blocks_per_row = (rows_per_mask_row + a.rows_per_block - 1) / a.rows_per_block;
  const int64_t blocks = checked_grid(a.Mq * a.B * a.Hm * a.blocks_per_row, "pyramidAttention");
  if (blocks == 0) return;
  dispatch_padded_head_dim<kTensorCores ? 16 : 32>(p.D, [&](auto padded) {
    constexpr int DP = decltype(padded)::value;
    size_t bytes = 0;
    if constexpr (kTensorCores) {
      MmaShared::carve<DP, T>(nullptr, static_cast<int>(a.rows_per_block), &bytes);
      allow_shared_memory(reinterpret_cast<const void*>(attend_mma_kernel<T, DP>), bytes, p.device, "pyramidAttention");
      const unsigned threads = static_cast<unsigned>(a.rows_per_block / kRowsPerWarpTile * kWarpSize);
      attend_mma_kernel<T, DP><<<static_cast<unsigned>(blocks), threads, bytes, stream>>>(a);
    } else {
      SimtShared(nullptr, p.D, &bytes);
      allow_shared_memory(reinterpret_cast<const void*>(attend_simt_kernel<T, DP>), bytes, p.device, "pyramidAttention");
      attend_simt_kernel<T, DP><<<static_cast<unsigned>(blocks), kSimtWarps * kWarpSize, bytes, stream>>>(a);
    }
    KVS_CUDA_CHECK(cudaGetLastError(), "pyramidAttention: launching the kernel");
  });
}

}  // namespace

// ==== entries ===================================================================================

void pyramid_pool(const PyramidPoolProblem& p, void* stream) {
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  dispatch_float_dtype(p.dtype, "k", [&](auto type_tag) { launch_pool<typename decltype(type_tag)::type>(p, cuda_stream); });
}

void pyramid_importance(const PyramidImportanceProblem& p, void* stream) {
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  const bool tensor_cores = p.dtype != KVS_F32 && compute_capability_major(p.device) >= 8;
  dispatch_float_dtype(p.dtype, "q", [&](auto type_tag) {
    launch_importance<typename decltype(type_tag)::type>(p, tensor_cores, cuda_stream);
  });
}

void pyramid_assign(const PyramidAssignProblem& p, void* stream) {
  use_device(p.device);
  launch_assign(p, static_cast<cudaStream_t>(resolve_stream(p.device, stream)));
}

void pyramid_attend(const PyramidAttendProblem& p, void* stream) {
  if (p.out_dtype != KVS_F32 && p.out_dtype != KVS_F16 && p.out_dtype != KVS_BF16)
    throw Error(KVS_E_DTYPE, "out: expected dtype f32, f16 or bf16");
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  if (p.in_dtype != KVS_F32) {
    if (compute_capability_major(p.device) < 8)
      throw Error(KVS_E_UNSUPPORTED, "pyramidAttention: f16/bf16 inputs need tensor cores of compute capability 8.0 or newer on cuda:" +
                                         std::to_string(p.device));
  }
  dispatch_float_dtype(p.in_dtype, "q", [&](auto type_tag) { launch_attend<typename decltype(type_tag)::type>(p, cuda_stream); });
}

}  // namespace kvs::cuda
