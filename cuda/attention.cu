// Dense attention on CUDA (the math is stated on kvs_attention in kvsquash.h): a tiled
// online-softmax ("flash") kernel that accumulates in f32.
//
// A block serves kRowsPerBlock "rows" of one (batch b, KV head hk), one warp per row. Rows
// number the (query head g of hk's GQA group, query i) pairs as g * Tq + i, which is also
// their order in q, out and lse, so the query heads of a group share every K/V tile the
// block stages in shared memory (decode with GQA reads each K/V tile once per 4 heads).
// Per tile of up to 32 keys: the block copies K and V to shared memory, lane j of each warp
// scores key j against its row's query, and the warp folds the tile into its running max m,
// denominator l and output accumulator (lane t owns output dims t, t + 32, ...).
#include <cmath>
#include <cstdint>
#include <string>

#include "common.cuh"
#include "core/attention.h"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "kvsquash.h"

namespace kvs::cuda {
namespace {

constexpr int kRowsPerBlock = 4;
constexpr int kThreadsPerBlock = kRowsPerBlock * kWarpSize;
constexpr int kKeysPerTile = kWarpSize;  // scoring gives each lane one key
// Used only where a full tile exceeds the device's shared memory (f32, D = 256 on sm_75).
constexpr int kReducedKeysPerTile = kKeysPerTile / 2;
constexpr size_t kSharedMemoryWithoutOptIn = 48 * 1024;

using AttentionHeadDims = HeadDimList<8, 16, 32, 64, 128, 256>;

// Shared memory of one block: a K tile and a V tile (keys_per_tile rows each, stored as T),
// then one f32 query per warp.
template <class T, int D>
struct TileLayout {
  static_assert(D * sizeof(T) % 16 == 0, "K/V rows are copied as 16-byte vectors");
  static constexpr int kVectorsPerKey = static_cast<int>(D * sizeof(T) / 16);
  static constexpr int kValuesPerVector = kValuesPer16Bytes<T>;
  // When scoring, the 8 lanes of a quarter warp each read a different key at the same
  // column with 16-byte loads; a key stride that is an odd number of 16-byte vectors puts
  // them in distinct banks.
  static constexpr int kKeyStrideBytes = (kVectorsPerKey | 1) * 16;
  static constexpr int kDimsPerLane = (D + kWarpSize - 1) / kWarpSize;

  static constexpr size_t shared_bytes(int keys_per_tile) {
    return 2 * static_cast<size_t>(keys_per_tile) * kKeyStrideBytes + kRowsPerBlock * D * sizeof(float);
  }
};

template <class T>
struct AttentionArgs {
  const T* q;
  const T* k;
  const T* v;
  void* out;
  float* lse;                 // or nullptr
  const int32_t* kv_lengths;  // or nullptr (all Tk)
  const float* log_weights;   // or nullptr
  int64_t Tq, Tk;
  int64_t rows_per_kv_head;    // G * Tq
  int64_t blocks_per_kv_head;  // ceil(rows_per_kv_head / kRowsPerBlock)
  float scale;
  bool causal;
  bool kv_16_byte_aligned;     // k and v can be read with 16-byte vector loads
  kvs_dtype out_dtype;
  int keys_per_tile;
};

}  // namespace

// ---- device code ------------------------------------------------------------------------------

// Keys visible to row `row_in_head` of a KV head (0 for the padding rows of the last block).
template <class T>
static __device__ __forceinline__ int64_t row_key_limit(const AttentionArgs<T>& args, int64_t kv_length,
                                                        int64_t row_in_head) {
  if (row_in_head >= args.rows_per_kv_head) return 0;
  return attention_key_limit(args.causal, kv_length, args.Tq, row_in_head % args.Tq);
}

// Copies keys [first_key, first_key + keys_present) of one KV head into the K and V tiles
// and zero-fills the remaining tile rows, so the tile never holds stale or unread data.
template <class T, int D>
static __device__ void stage_kv_tile(const AttentionArgs<T>& args, const T* k_head, const T* v_head,
                                     int64_t first_key, int keys_present, unsigned char* k_tile,
                                     unsigned char* v_tile) {
  using Layout = TileLayout<T, D>;
  const int vectors = args.keys_per_tile * Layout::kVectorsPerKey;
  for (int index = threadIdx.x; index < vectors; index += kThreadsPerBlock) {
    const int key = index / Layout::kVectorsPerKey;
    const int vector = index % Layout::kVectorsPerKey;
    const int tile_offset = key * Layout::kKeyStrideBytes + vector * 16;
    uint4* k_dst = reinterpret_cast<uint4*>(k_tile + tile_offset);
    uint4* v_dst = reinterpret_cast<uint4*>(v_tile + tile_offset);
    if (key >= keys_present) {
      *k_dst = make_uint4(0, 0, 0, 0);
      *v_dst = make_uint4(0, 0, 0, 0);
      continue;
    }
    const int64_t element = (first_key + key) * D + vector * Layout::kValuesPerVector;
    if (args.kv_16_byte_aligned) {
      *k_dst = *reinterpret_cast<const uint4*>(k_head + element);
      *v_dst = *reinterpret_cast<const uint4*>(v_head + element);
    } else {
      T* k_values = reinterpret_cast<T*>(k_dst);
      T* v_values = reinterpret_cast<T*>(v_dst);
#pragma unroll
      for (int e = 0; e < Layout::kValuesPerVector; ++e) {
        k_values[e] = k_head[element + e];
        v_values[e] = v_head[element + e];
      }
    }
  }
}

// <query, key> with the query in f32 shared memory (read as broadcasts) and the key a row
// of the K tile. One partial sum per vector slot: short dependency chains, smaller error.
template <class T, int D>
static __device__ __forceinline__ float dot_query_key(const float* query, const unsigned char* key_row) {
  using Layout = TileLayout<T, D>;
  constexpr int kValues = Layout::kValuesPerVector;
  const float4* query4 = reinterpret_cast<const float4*>(query);
  float partial[kValues] = {};
#pragma unroll
  for (int vector = 0; vector < Layout::kVectorsPerKey; ++vector) {
    float key[kValues];
    unpack16<T>(*reinterpret_cast<const uint4*>(key_row + vector * 16), key);
#pragma unroll
    for (int quad = 0; quad < kValues / 4; ++quad) {
      const float4 q = query4[vector * (kValues / 4) + quad];
      partial[4 * quad + 0] = fmaf(q.x, key[4 * quad + 0], partial[4 * quad + 0]);
      partial[4 * quad + 1] = fmaf(q.y, key[4 * quad + 1], partial[4 * quad + 1]);
      partial[4 * quad + 2] = fmaf(q.z, key[4 * quad + 2], partial[4 * quad + 2]);
      partial[4 * quad + 3] = fmaf(q.w, key[4 * quad + 3], partial[4 * quad + 3]);
    }
  }
  float sum = 0.0f;
#pragma unroll
  for (int e = 0; e < kValues; ++e) sum += partial[e];
  return sum;
}

template <class T, int D>
static __global__ void __launch_bounds__(kThreadsPerBlock) attention_kernel(const AttentionArgs<T> args) {
  using Layout = TileLayout<T, D>;
  extern __shared__ __align__(16) unsigned char shared[];
  unsigned char* k_tile = shared;
  unsigned char* v_tile = k_tile + args.keys_per_tile * Layout::kKeyStrideBytes;
  float* queries = reinterpret_cast<float*>(v_tile + args.keys_per_tile * Layout::kKeyStrideBytes);

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t block = blockIdx.x;
  const int64_t kv_head = block / args.blocks_per_kv_head;  // flat b * Hkv + hk
  const int64_t first_row_in_head = (block % args.blocks_per_kv_head) * kRowsPerBlock;

  // Lengths were validated on the host; clamping keeps a bad one from reading out of bounds.
  int64_t kv_length = args.Tk;
  if (args.kv_lengths) kv_length = min(max(static_cast<int64_t>(args.kv_lengths[kv_head]), int64_t{0}), args.Tk);

  // The block stages keys up to the largest limit among its rows; each warp stops at its own.
  int64_t block_key_limit = 0;
#pragma unroll
  for (int r = 0; r < kRowsPerBlock; ++r)
    block_key_limit = max(block_key_limit, row_key_limit(args, kv_length, first_row_in_head + r));

  // Padding rows (past the head's last row) keep a zero key limit: they compute nothing and
  // store nothing, but still reach every __syncthreads below.
  const int64_t row_in_head = first_row_in_head + warp;
  const bool row_exists = row_in_head < args.rows_per_kv_head;
  const int64_t row_key_count = row_key_limit(args, kv_length, row_in_head);
  const int64_t row = kv_head * args.rows_per_kv_head + row_in_head;  // row of q, out and lse

  // Made visible to the warp by the first __syncthreads of the tile loop.
  float* query = queries + warp * D;
  for (int d = lane; d < D; d += kWarpSize) query[d] = row_exists ? to_float(args.q[row * D + d]) : 0.0f;

  const T* k_head = args.k + kv_head * args.Tk * D;
  const T* v_head = args.v + kv_head * args.Tk * D;
  const float* log_weights = args.log_weights ? args.log_weights + kv_head * args.Tk : nullptr;

  // Online softmax state, identical on all lanes except acc: denominator and acc are
  // relative to exp(running_max).
  float running_max = -INFINITY;
  float denominator = 0.0f;
  float acc[Layout::kDimsPerLane] = {};  // output dims lane + 32 * c

  for (int64_t first_key = 0; first_key < block_key_limit; first_key += args.keys_per_tile) {
    const int keys_in_tile = static_cast<int>(min(static_cast<int64_t>(args.keys_per_tile), block_key_limit - first_key));
    __syncthreads();  // every warp is done reading the previous tile
    stage_kv_tile<T, D>(args, k_head, v_head, first_key, keys_in_tile, k_tile, v_tile);
    __syncthreads();  // the tile is complete

    if (first_key >= row_key_count) continue;  // warp-uniform: this row has seen all its keys
    const int keys_for_row = static_cast<int>(min(static_cast<int64_t>(keys_in_tile), row_key_count - first_key));

    float logit = -INFINITY;
    if (lane < keys_for_row) {
      logit = args.scale * dot_query_key<T, D>(query, k_tile + lane * Layout::kKeyStrideBytes);
      if (log_weights) logit += log_weights[first_key + lane];
    }
    const float new_max = fmaxf(running_max, warp_max(logit));
    // Every key so far has weight zero (log weight -inf): nothing to add, and skipping
    // avoids exp(-inf - -inf) = NaN.
    if (new_max == -INFINITY) continue;

    const float rescale = expf(running_max - new_max);  // 0 while running_max is -inf
    const float weight = expf(logit - new_max);          // 0 for the masked lanes
    denominator = denominator * rescale + warp_sum(weight);
    running_max = new_max;
#pragma unroll
    for (int c = 0; c < Layout::kDimsPerLane; ++c) acc[c] *= rescale;
    for (int j = 0; j < keys_for_row; ++j) {
      const float key_weight = __shfl_sync(kFullWarpMask, weight, j);
      const T* value = reinterpret_cast<const T*>(v_tile + j * Layout::kKeyStrideBytes);
#pragma unroll
      for (int c = 0; c < Layout::kDimsPerLane; ++c) {
        const int dim = lane + c * kWarpSize;
        if (dim < D) acc[c] = fmaf(key_weight, to_float(value[dim]), acc[c]);
      }
    }
  }

  if (!row_exists) return;
  // A row that saw no key (or only zero weights) gets zeros and lse = -inf, as on the CPU.
  const bool has_weight = denominator > 0.0f;
#pragma unroll
  for (int c = 0; c < Layout::kDimsPerLane; ++c) {
    const int dim = lane + c * kWarpSize;
    if (dim < D) store_float_as(args.out, args.out_dtype, row * D + dim, has_weight ? acc[c] / denominator : 0.0f);
  }
  if (args.lse && lane == 0) args.lse[row] = has_weight ? running_max + logf(denominator) : -INFINITY;
}

// ---- launch -----------------------------------------------------------------------------------

template <class T, int D>
static void launch_attention(const AttentionProblem& p, cudaStream_t stream) {
  using Layout = TileLayout<T, D>;
  AttentionArgs<T> args{};
  args.q = static_cast<const T*>(p.q);
  args.k = static_cast<const T*>(p.k);
  args.v = static_cast<const T*>(p.v);
  args.out = p.out;
  args.lse = p.lse;
  args.kv_lengths = p.kv_lengths;
  args.log_weights = p.log_weights;
  args.Tq = p.Tq;
  args.Tk = p.Tk;
  args.rows_per_kv_head = (p.Hq / p.Hkv) * p.Tq;
  args.blocks_per_kv_head = (args.rows_per_kv_head + kRowsPerBlock - 1) / kRowsPerBlock;
  args.scale = p.scale;
  args.causal = p.causal;
  args.kv_16_byte_aligned = is_16_byte_aligned(p.k) && is_16_byte_aligned(p.v);
  args.out_dtype = p.out_dtype;
  args.keys_per_tile = kKeysPerTile;

  const int64_t blocks = p.B * p.Hkv * args.blocks_per_kv_head;
  if (blocks > INT32_MAX)
    throw Error(KVS_E_UNSUPPORTED, "attention: " + std::to_string(p.B * p.Hq * p.Tq) +
                                       " query rows are more than the CUDA kernel's grid can cover");

  size_t shared_bytes = Layout::shared_bytes(args.keys_per_tile);
  if (shared_bytes > kSharedMemoryWithoutOptIn) {
    int device_limit = 0;
    KVS_CUDA_CHECK(cudaDeviceGetAttribute(&device_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device),
                   "attention: querying the shared memory limit of cuda:" + std::to_string(p.device));
    if (shared_bytes > static_cast<size_t>(device_limit)) {
      args.keys_per_tile = kReducedKeysPerTile;
      shared_bytes = Layout::shared_bytes(args.keys_per_tile);
    }
    if (shared_bytes > static_cast<size_t>(device_limit))
      throw Error(KVS_E_UNSUPPORTED, "attention: head dim " + std::to_string(D) + " needs " +
                                         std::to_string(shared_bytes) + " bytes of shared memory per block; cuda:" +
                                         std::to_string(p.device) + " allows " + std::to_string(device_limit));
    if (shared_bytes > kSharedMemoryWithoutOptIn)
      KVS_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)),
                     "attention: raising the kernel's shared memory limit");
  }

  attention_kernel<T, D><<<static_cast<unsigned>(blocks), kThreadsPerBlock, shared_bytes, stream>>>(args);
  KVS_CUDA_CHECK(cudaGetLastError(), "attention: launching the kernel");
}

// ---- entry --------------------------------------------------------------------------------------

bool attention_supports_head_dim(int64_t d) { return AttentionHeadDims::contains(d); }

void attention(const AttentionProblem& p, void* stream) {
  if (p.out_dtype != KVS_F32 && p.out_dtype != KVS_F16 && p.out_dtype != KVS_BF16)
    throw Error(KVS_E_DTYPE, "out: expected dtype f32, f16 or bf16");
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  AttentionHeadDims::dispatch(p.D, "attention", [&](auto head_dim) {
    dispatch_float_dtype(p.in_dtype, "q", [&](auto type_tag) {
      using T = typename decltype(type_tag)::type;
      launch_attention<T, decltype(head_dim)::value>(p, cuda_stream);
    });
  });
}

}  // namespace kvs::cuda
