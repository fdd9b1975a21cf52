// Chunked soft matching on CUDA. The definitions are in csrc/core/softmatch.h; every output
// equals the CPU reference (csrc/cpu/softmatch.cc) bit for bit, so every float is produced by
// the same sequence of IEEE-rounded f32 operations (__fmaf_rn / __fsqrt_rn / __fmul_rn /
// __fdiv_rn, nothing left to contraction) and every choice is made in the same order.
//
// An "item" is one clustered chunk of one head; a 256-thread block serves an item at a time.
//  1. plan_chunks_kernel: the chunk's keys as f32 rows (shared memory, or a per-block global
//     buffer when chunk x D does not fit), then the passes: a thread per list entry for the
//     key norms, a warp per source for its best destination, a thread per source for the
//     edge choice, thread 0 for the pass's bookkeeping (members of every new entry, in list
//     order) and the block for the merged rows. Writes the item's final cluster count, each
//     chunk token's final entry (into assign, made absolute by step 3) and, when outputs are
//     wanted, each pass's kept edges (the "history").
//  2. chunk_slots_kernel, a warp per head: exclusive scan of the counts -> first slot of each
//     chunk; lengths.
//  3. assign_kernel, a thread per token: the slot of every token.
//  4. With outputs: emit_chunks_kernel replays the history on the keys and then on the
//     values (the same passes on the same rows give the same bits without recomputing any
//     cosine) and stores the final lists; emit_raw_kernel copies the raw tokens and fills
//     the padding. Slots at or past Tcap are not written (the caller reports a short Tcap).
// No atomics anywhere: every result is deterministic.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>

#include "common.cuh"
#include "scratch.cuh"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/merge.h"
#include "core/softmatch.h"
#include "kvsquash.h"

namespace kvs::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMaxChunk = 256;
constexpr int kMaxSources = kMaxChunk / 2;
constexpr size_t kSharedMemoryWithoutOptIn = 48 * 1024;
// Blocks per SM when the chunk rows live in global memory: each block owns a chunk x D
// buffer, so the grid (and the scratch) stays small.
constexpr int kGlobalRowBlocksPerSm = 2;
constexpr size_t kScratchAlignment = 256;

// Geometry of one call, without the dtype.
struct ChunkLayout {
  int64_t heads, T, D, Tcap;
  int64_t chunk, chunks, items;  // items = heads * chunks
  int64_t first;                 // raw leading tokens = first clustered token (min(protect_first, T))
  int32_t* assign;
  int32_t* lengths;
  int32_t* chunk_slots;  // per item: its cluster count (step 1), then its first slot (step 2)
};

template <class T>
struct SoftMatchArgs {
  ChunkLayout layout;
  const T* keys;
  const T* values;
  T* out_keys;  // nullptr: only assign and lengths
  T* out_values;
  int32_t* sizes;
  int32_t* positions;
  int16_t* history;     // [items][passes][chunk / 2]: kept destination list index, or -1; or nullptr
  float* global_rows;   // [gridDim.x][chunk][row_stride], or nullptr: dynamic shared memory
  int64_t row_stride;   // floats between two rows of the chunk buffer
  int32_t passes;
  bool threshold_mode;
  float threshold;
  int32_t merges[kSoftMatchMaxPasses];
};

// One block's view of the chunk it is clustering. Rows of the f32 buffer are storage slots,
// one per chunk token; a list entry names the row that holds it, and a new entry reuses the
// row of the entry that absorbs the others, so no row is ever copied.
struct ChunkState {
  int n;                           // current list length
  int row[kMaxChunk];              // per list entry: its row
  int size[kMaxChunk];             // per row
  int position[kMaxChunk];         // per row: largest member token index
  int absorbed_into[kMaxChunk];    // per row, this pass: the row it merged into, or -1
  int owner[kMaxChunk];            // per chunk token: the row holding it
  float root_norm[kMaxChunk];      // per list entry: sqrt of its key's squared norm
  int target[kMaxSources];         // per source (entry 2s): kept destination entry, or -1
  int best_destination[kMaxSources];
  float best_cos[kMaxSources];
  // Bookkeeping of one pass (thread 0): entry k of the old list goes to entry
  // entry_of_index[owner_index[k]] of the new one; members[entry_begin[e] ..) are the rows
  // of new entry e in list order.
  int owner_index[kMaxChunk];
  int count[kMaxChunk];
  int cursor[kMaxChunk];
  int entry_of_index[kMaxChunk];
  int entry_row[kMaxChunk];
  int entry_begin[kMaxChunk + 1];
  int members[kMaxChunk];
  int entry_size[kMaxChunk];
  int entry_position[kMaxChunk];
};

}  // namespace

// ---- device helpers -----------------------------------------------------------------------------

// The item's chunk rows: dynamic shared memory, or this block's part of the global buffer.
template <class T>
static __device__ float* chunk_rows(const SoftMatchArgs<T>& args) {
  extern __shared__ float shared_rows[];
  if (!args.global_rows) return shared_rows;
  return args.global_rows + static_cast<int64_t>(blockIdx.x) * args.layout.chunk * args.row_stride;
}

// Step 2 of softmatch.h: the chunk's rows of `src` (keys or values) as exact f32, and one
// cluster per token. Ends with a barrier.
template <class T>
static __device__ void load_chunk(const SoftMatchArgs<T>& args, const T* src, int64_t head, int64_t first_token,
                                  float* rows, ChunkState& st) {
  const ChunkLayout& L = args.layout;
  const T* from = src + (head * L.T + first_token) * L.D;
  const int64_t elements = L.chunk * L.D;
  for (int64_t i = threadIdx.x; i < elements; i += kThreads)
    rows[(i / L.D) * args.row_stride + i % L.D] = to_float(from[i]);
  for (int e = static_cast<int>(threadIdx.x); e < L.chunk; e += kThreads) {
    st.row[e] = e;
    st.size[e] = 1;
    st.position[e] = static_cast<int>(first_token + e);
    st.absorbed_into[e] = -1;
    st.owner[e] = e;
  }
  if (threadIdx.x == 0) st.n = static_cast<int>(L.chunk);
  __syncthreads();
}

// Thread 0: the new list of a pass whose kept edges are in st.target (softmatch.h step 3,
// in the CPU reference's order). Every surviving entry (a destination, or a source without
// a kept edge) gets its members (itself and the sources that chose it) in list order, their
// total size and largest position; the list is compacted to the survivors.
static __device__ void plan_pass(ChunkState& st, int n) {
  for (int k = 0; k < n; ++k) st.count[k] = 0;
  for (int k = 0; k < n; ++k) {
    const int destination = k % 2 == 0 ? st.target[k / 2] : -1;
    const int owner = destination >= 0 ? destination : k;
    st.owner_index[k] = owner;
    ++st.count[owner];
    st.absorbed_into[st.row[k]] = destination >= 0 ? st.row[destination] : -1;
  }
  int entries = 0, offset = 0;
  for (int k = 0; k < n; ++k) {
    if (st.count[k] == 0) continue;
    st.cursor[k] = offset;
    st.entry_of_index[k] = entries;
    st.entry_row[entries] = st.row[k];
    st.entry_begin[entries] = offset;
    st.entry_size[entries] = 0;
    st.entry_position[entries] = -1;
    offset += st.count[k];
    ++entries;
  }
  st.entry_begin[entries] = offset;
  for (int k = 0; k < n; ++k) {  // ascending k: members in list order
    const int owner = st.owner_index[k];
    const int row = st.row[k];
    st.members[st.cursor[owner]++] = row;
    const int e = st.entry_of_index[owner];
    st.entry_size[e] += st.size[row];
    st.entry_position[e] = max(st.entry_position[e], st.position[row]);
  }
  for (int e = 0; e < entries; ++e) st.row[e] = st.entry_row[e];
  st.n = entries;
}

// Applies one pass of n >= 2 entries whose st.target is set and visible to the block: every
// new entry's row becomes acc = fma(size_m, x_m, acc) over its members in list order, divided
// by the total size (the CPU recomputes singletons too, so they are not skipped). Each row is
// read and written by one thread per column, and the members of different entries are
// disjoint rows, so the update can be in place. Begins and ends with barriers.
static __device__ void apply_pass(ChunkState& st, float* rows, int64_t row_stride, int64_t D, int n,
                                  int64_t chunk) {
  if (threadIdx.x == 0) plan_pass(st, n);
  __syncthreads();
  const int entries = st.n;
  const int64_t elements = entries * D;
  for (int64_t i = threadIdx.x; i < elements; i += kThreads) {
    const int e = static_cast<int>(i / D);
    const int64_t d = i % D;
    float acc = 0.0f;
    for (int m = st.entry_begin[e]; m < st.entry_begin[e + 1]; ++m) {
      const int row = st.members[m];
      acc = __fmaf_rn(static_cast<float>(st.size[row]), rows[row * row_stride + d], acc);
    }
    rows[st.row[e] * row_stride + d] = __fdiv_rn(acc, static_cast<float>(st.entry_size[e]));
  }
  for (int t = static_cast<int>(threadIdx.x); t < chunk; t += kThreads) {
    const int into = st.absorbed_into[st.owner[t]];
    if (into >= 0) st.owner[t] = into;
  }
  __syncthreads();  // the sizes were read above
  for (int e = static_cast<int>(threadIdx.x); e < entries; e += kThreads) {
    st.size[st.row[e]] = st.entry_size[e];
    st.position[st.row[e]] = st.entry_position[e];
  }
  __syncthreads();
}

// Item -> (head, first token of its chunk).
static __device__ __forceinline__ void item_origin(const ChunkLayout& L, int64_t item, int64_t& head,
                                                   int64_t& first_token) {
  head = item / L.chunks;
  first_token = L.first + (item % L.chunks) * L.chunk;
}

// ---- kernels ------------------------------------------------------------------------------------

// Step 1 of the file comment: the passes of softmatch.h on the keys.
template <class T>
static __global__ void __launch_bounds__(kThreads) plan_chunks_kernel(const SoftMatchArgs<T> args) {
  __shared__ ChunkState st;
  const ChunkLayout& L = args.layout;
  float* rows = chunk_rows(args);
  const int64_t stride = args.row_stride, D = L.D;
  const int half_chunk = static_cast<int>(L.chunk / 2);
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;

  for (int64_t item = blockIdx.x; item < L.items; item += gridDim.x) {
    int64_t head, first_token;
    item_origin(L, item, head, first_token);
    load_chunk(args, args.keys, head, first_token, rows, st);

    for (int pass = 0; pass < args.passes; ++pass) {
      const int n = st.n;  // uniform: written before the last barrier
      if (n < 2) break;
      const int sources = (n + 1) / 2, destinations = n / 2;

      // The norm chains of cos, computed once per entry (they do not depend on the pair).
      for (int e = static_cast<int>(threadIdx.x); e < n; e += kThreads) {
        const float* x = rows + st.row[e] * stride;
        float norm = 0.0f;
        for (int64_t d = 0; d < D; ++d) norm = __fmaf_rn(x[d], x[d], norm);
        st.root_norm[e] = __fsqrt_rn(norm);
      }
      __syncthreads();

      // Source s (entry 2s): lane j scores destinations j, j + 32, ...; the warp keeps the
      // largest score_order(cos), ties to the lower destination, as the CPU's ascending scan.
      for (int s = warp; s < sources; s += kWarps) {
        const float* xa = rows + st.row[2 * s] * stride;
        const float norm_a = st.root_norm[2 * s];
        uint32_t best_key = 0;
        int64_t best_j = kNoIndex;
        float best_cos = 0.0f;  // of this lane's best; the winner's lane holds the winner's
        for (int j = lane; j < destinations; j += kWarpSize) {
          const float* xb = rows + st.row[2 * j + 1] * stride;
          float dot = 0.0f;
          for (int64_t d = 0; d < D; ++d) dot = __fmaf_rn(xa[d], xb[d], dot);
          const float denom = __fmul_rn(norm_a, st.root_norm[2 * j + 1]);
          const float cos = denom > 0.0f ? __fdiv_rn(dot, denom) : 0.0f;
          const uint32_t key = score_order(cos);
          if (best_j == kNoIndex || key > best_key) {
            best_key = key;
            best_j = j;
            best_cos = cos;
          }
        }
        warp_argmax(best_key, best_j);  // destinations >= 1: there is a winner
        // the winner's own lane scored it, and kept it as that lane's best
        const float winner_cos = __shfl_sync(kFullWarpMask, best_cos, static_cast<int>(best_j % kWarpSize));
        if (lane == 0) {
          st.best_destination[s] = static_cast<int>(2 * best_j + 1);
          st.best_cos[s] = winner_cos;
        }
      }
      __syncthreads();

      // Kept edges. Budget mode: rank of edge s = edges ahead of it in (score_order desc,
      // source asc), i.e. its index after the CPU's stable sort.
      for (int s = static_cast<int>(threadIdx.x); s < sources; s += kThreads) {
        bool kept;
        if (args.threshold_mode) {
          kept = st.best_cos[s] > args.threshold;
        } else {
          const uint32_t key = score_order(st.best_cos[s]);
          int rank = 0;
          for (int o = 0; o < sources; ++o) {
            const uint32_t other = score_order(st.best_cos[o]);
            rank += other > key || (other == key && o < s);
          }
          kept = rank < args.merges[pass];
        }
        const int target = kept ? st.best_destination[s] : -1;
        st.target[s] = target;
        if (args.history) args.history[(item * args.passes + pass) * half_chunk + s] = static_cast<int16_t>(target);
      }
      __syncthreads();
      apply_pass(st, rows, stride, D, n, L.chunk);
    }

    // Final entry of each chunk token (absorbed_into is free now: reused as entry-of-row).
    const int n = st.n;
    for (int e = static_cast<int>(threadIdx.x); e < n; e += kThreads) st.absorbed_into[st.row[e]] = e;
    __syncthreads();
    int32_t* assign = L.assign + head * L.T + first_token;
    for (int t = static_cast<int>(threadIdx.x); t < L.chunk; t += kThreads) assign[t] = st.absorbed_into[st.owner[t]];
    if (threadIdx.x == 0) L.chunk_slots[item] = n;
    __syncthreads();  // st and rows are reused by the next item
  }
}

// Step 2: a warp per head turns the chunks' counts into their first slots (inclusive warp
// scans over tiles of 32 chunks, carried across tiles) and writes lengths.
static __global__ void __launch_bounds__(kThreads) chunk_slots_kernel(const ChunkLayout L) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t head = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; head < L.heads;
       head += warps) {
    int64_t carry = 0;
    for (int64_t base = 0; base < L.chunks; base += kWarpSize) {
      const int64_t c = base + lane;
      const int count = c < L.chunks ? L.chunk_slots[head * L.chunks + c] : 0;
      int inclusive = count;
#pragma unroll
      for (int offset = 1; offset < kWarpSize; offset <<= 1) {
        const int other = __shfl_up_sync(kFullWarpMask, inclusive, offset);
        if (lane >= offset) inclusive += other;
      }
      if (c < L.chunks) L.chunk_slots[head * L.chunks + c] = static_cast<int32_t>(L.first + carry + inclusive - count);
      carry += __shfl_sync(kFullWarpMask, inclusive, kWarpSize - 1);
    }
    if (lane == 0) L.lengths[head] = static_cast<int32_t>(L.T - L.chunks * L.chunk + carry);
  }
}

// Step 3: leading raw token t -> slot t; chunk token -> its chunk's first slot + its entry
// (left in assign by plan_chunks_kernel); trailing raw token t -> lengths - (T - t).
static __global__ void __launch_bounds__(kThreads) assign_kernel(const ChunkLayout L) {
  const int64_t tokens = L.heads * L.T;
  const int64_t end = L.first + L.chunks * L.chunk;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < tokens; i += stride) {
    const int64_t head = i / L.T, t = i % L.T;
    int64_t slot;
    if (t < L.first) {
      slot = t;
    } else if (t < end) {
      slot = L.chunk_slots[head * L.chunks + (t - L.first) / L.chunk] + L.assign[i];
    } else {
      slot = L.lengths[head] - (L.T - t);
    }
    L.assign[i] = static_cast<int32_t>(slot);
  }
}

// Step 4, clustered slots: the history replayed on the keys, then on the values.
template <class T>
static __global__ void __launch_bounds__(kThreads) emit_chunks_kernel(const SoftMatchArgs<T> args) {
  __shared__ ChunkState st;
  const ChunkLayout& L = args.layout;
  float* rows = chunk_rows(args);
  const int64_t stride = args.row_stride, D = L.D;
  const int half_chunk = static_cast<int>(L.chunk / 2);

  for (int64_t item = blockIdx.x; item < L.items; item += gridDim.x) {
    int64_t head, first_token;
    item_origin(L, item, head, first_token);
    const int64_t first_slot = L.chunk_slots[item];
    for (int tensor = 0; tensor < 2; ++tensor) {
      const bool keys = tensor == 0;
      load_chunk(args, keys ? args.keys : args.values, head, first_token, rows, st);
      for (int pass = 0; pass < args.passes; ++pass) {
        const int n = st.n;
        if (n < 2) break;
        const int sources = (n + 1) / 2;
        const int16_t* kept = args.history + (item * args.passes + pass) * half_chunk;
        for (int s = static_cast<int>(threadIdx.x); s < sources; s += kThreads) st.target[s] = kept[s];
        __syncthreads();
        apply_pass(st, rows, stride, D, n, L.chunk);
      }
      const int n = st.n;
      const int64_t room = L.Tcap - first_slot;  // a short Tcap: nothing is written past it
      const int64_t live = n < room ? n : room;
      T* out = (keys ? args.out_keys : args.out_values) + (head * L.Tcap + first_slot) * D;
      for (int64_t i = threadIdx.x; i < live * D; i += kThreads)
        out[i] = from_float<T>(rows[st.row[i / D] * stride + i % D]);
      if (keys) {
        for (int e = static_cast<int>(threadIdx.x); e < live; e += kThreads) {
          args.sizes[head * L.Tcap + first_slot + e] = st.size[st.row[e]];
          args.positions[head * L.Tcap + first_slot + e] = st.position[st.row[e]];
        }
      }
      __syncthreads();  // st and rows are reloaded next
    }
  }
}

// Step 4, every other slot: a thread per (head, slot, d) copies a raw token (through f32, as
// the CPU; exact) or writes padding; clustered slots are left to emit_chunks_kernel.
template <class T>
static __global__ void __launch_bounds__(kThreads) emit_raw_kernel(const SoftMatchArgs<T> args) {
  const ChunkLayout& L = args.layout;
  const int64_t elements = L.heads * L.Tcap * L.D;
  const int64_t rest = L.T - (L.first + L.chunks * L.chunk);  // trailing raw tokens
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < elements; i += stride) {
    const int64_t d = i % L.D, slot = (i / L.D) % L.Tcap, head = i / (L.D * L.Tcap);
    const int64_t length = L.lengths[head];
    int64_t token;
    if (slot >= length) {
      token = -1;
    } else if (slot < L.first) {
      token = slot;
    } else if (slot >= length - rest) {
      token = L.T - (length - slot);
    } else {
      continue;  // a clustered slot
    }
    float key = 0.0f, value = 0.0f;
    if (token >= 0) {
      key = to_float(args.keys[(head * L.T + token) * L.D + d]);
      value = to_float(args.values[(head * L.T + token) * L.D + d]);
    }
    args.out_keys[i] = from_float<T>(key);
    args.out_values[i] = from_float<T>(value);
    if (d == 0) {
      args.sizes[head * L.Tcap + slot] = token >= 0 ? 1 : 0;
      args.positions[head * L.Tcap + slot] = static_cast<int32_t>(token);
    }
  }
}

// ---- launch -------------------------------------------------------------------------------------

namespace {

size_t align_scratch(size_t bytes) { return (bytes + kScratchAlignment - 1) / kScratchAlignment * kScratchAlignment; }


}  // namespace

// Where the chunk kernels keep their f32 rows: dynamic shared memory when chunk x D fits next
// to ChunkState (raising the kernels' limit past 48 KiB when needed), else a global buffer
// per block, with a grid of a few blocks per SM.
template <class T>
static size_t place_chunk_rows(const SoftMatchProblem& p, SoftMatchArgs<T>& args, unsigned& chunk_blocks) {
  int optin = 0, sms = 0;
  KVS_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device),
                 "softMatch: querying the shared memory limit of cuda:" + std::to_string(p.device));
  KVS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, p.device),
                 "softMatch: querying the SM count of cuda:" + std::to_string(p.device));
  size_t static_bytes = 0;
  for (const void* kernel : {reinterpret_cast<const void*>(plan_chunks_kernel<T>),
                             reinterpret_cast<const void*>(emit_chunks_kernel<T>)}) {
    cudaFuncAttributes attributes{};
    KVS_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel), "softMatch: querying the chunk kernels");
    static_bytes = std::max(static_bytes, attributes.sharedSizeBytes);
  }
  const int64_t items = args.layout.items;
  const int64_t shared_stride = p.D | 1;  // odd: rows of different lanes in different banks
  const size_t shared_bytes = static_cast<size_t>(p.chunk * shared_stride) * sizeof(float);
  if (shared_bytes + static_bytes <= static_cast<size_t>(optin)) {
    args.row_stride = shared_stride;
    chunk_blocks = grid_blocks(items, 1);
    // the 48 KiB default covers static + dynamic shared memory together
    if (shared_bytes + static_bytes > kSharedMemoryWithoutOptIn) {
      KVS_CUDA_CHECK(cudaFuncSetAttribute(plan_chunks_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)),
                     "softMatch: raising the plan kernel's shared memory limit");
      KVS_CUDA_CHECK(cudaFuncSetAttribute(emit_chunks_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)),
                     "softMatch: raising the emit kernel's shared memory limit");
    }
    return shared_bytes;
  }
  args.row_stride = p.D;
  chunk_blocks = static_cast<unsigned>(std::min<int64_t>(items, static_cast<int64_t>(sms) * kGlobalRowBlocksPerSm));
  return 0;
}

template <class T>
static void launch_soft_match(const SoftMatchProblem& p, cudaStream_t stream) {
  SoftMatchArgs<T> args{};
  ChunkLayout& L = args.layout;
  L.heads = p.B * p.H;
  L.T = p.T;
  L.D = p.D;
  L.Tcap = p.out_keys ? p.Tcap : 0;
  L.chunk = p.chunk;
  L.chunks = soft_match_chunks(p.T, p.chunk, p.protect_first, p.protect_recent);
  L.items = L.heads * L.chunks;
  L.first = std::min(p.protect_first, p.T);
  L.assign = p.assign;
  L.lengths = p.lengths;
  args.keys = static_cast<const T*>(p.keys);
  args.values = static_cast<const T*>(p.values);
  args.out_keys = static_cast<T*>(p.out_keys);
  args.out_values = static_cast<T*>(p.out_values);
  args.sizes = p.sizes;
  args.positions = p.positions;
  args.passes = p.passes;
  args.threshold_mode = p.threshold_mode;
  args.threshold = p.threshold;
  std::copy(p.merges, p.merges + kSoftMatchMaxPasses, args.merges);
  const bool outputs = p.out_keys != nullptr;

  // Scratch: counts / first slots, the history (outputs only) and global chunk rows (only
  // when they do not fit in shared memory).
  unsigned chunk_blocks = 0;
  size_t shared_bytes = 0;
  size_t slots_bytes = 0, history_bytes = 0, rows_bytes = 0;
  if (L.items > 0) {
    shared_bytes = place_chunk_rows(p, args, chunk_blocks);
    slots_bytes = align_scratch(static_cast<size_t>(L.items) * sizeof(int32_t));
    if (outputs) history_bytes = align_scratch(static_cast<size_t>(L.items * p.passes * (p.chunk / 2)) * sizeof(int16_t));
    if (shared_bytes == 0) rows_bytes = static_cast<size_t>(chunk_blocks * p.chunk * p.D) * sizeof(float);
  }
  std::optional<StreamScratch> scratch;
  if (L.items > 0) {
    scratch.emplace(slots_bytes + history_bytes + rows_bytes, p.device, stream, "softMatch");
    auto* base = static_cast<char*>(scratch->get());
    L.chunk_slots = reinterpret_cast<int32_t*>(base);
    if (outputs) args.history = reinterpret_cast<int16_t*>(base + slots_bytes);
    if (rows_bytes > 0) args.global_rows = reinterpret_cast<float*>(base + slots_bytes + history_bytes);
    plan_chunks_kernel<T><<<chunk_blocks, kThreads, shared_bytes, stream>>>(args);
    KVS_CUDA_CHECK(cudaGetLastError(), "softMatch: launching the plan kernel");
  }
  chunk_slots_kernel<<<grid_blocks(L.heads, kWarps), kThreads, 0, stream>>>(L);
  KVS_CUDA_CHECK(cudaGetLastError(), "softMatch: launching the chunk slot kernel");
  if (L.T > 0) {
    assign_kernel<<<grid_blocks(L.heads * L.T, kThreads), kThreads, 0, stream>>>(L);
    KVS_CUDA_CHECK(cudaGetLastError(), "softMatch: launching the assign kernel");
  }
  if (outputs) {
    if (L.items > 0) {
      emit_chunks_kernel<T><<<chunk_blocks, kThreads, shared_bytes, stream>>>(args);
      KVS_CUDA_CHECK(cudaGetLastError(), "softMatch: launching the chunk output kernel");
    }
    const int64_t elements = L.heads * L.Tcap * L.D;
    if (elements > 0) {
      emit_raw_kernel<T><<<grid_blocks(elements, kThreads), kThreads, 0, stream>>>(args);
      KVS_CUDA_CHECK(cudaGetLastError(), "softMatch: launching the raw output kernel");
    }
  }
  if (scratch) scratch->release();
}

// ---- entry --------------------------------------------------------------------------------------

void soft_match(const SoftMatchProblem& p, void* stream) {
  use_device(p.device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(p.device, stream));
  if (p.chunk < 2 || p.chunk > kMaxChunk || p.chunk % 2 != 0)
    throw Error(KVS_E_UNSUPPORTED, "softMatch: chunk " + std::to_string(p.chunk) +
                                       " is not supported on CUDA (an even number of tokens in 2.." +
                                       std::to_string(kMaxChunk) + ")");
  if (p.T > INT32_MAX)
    throw Error(KVS_E_UNSUPPORTED, "softMatch: " + std::to_string(p.T) + " tokens per head do not fit i32 assign");
  if (p.B * p.H == 0) return;
  dispatch_float_dtype(p.dtype, "keys", [&](auto type_tag) {
    launch_soft_match<typename decltype(type_tag)::type>(p, cuda_stream);
  });
}

}  // namespace kvs::cuda
