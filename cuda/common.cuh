// Helpers shared by the CUDA sources: the runtime-error check, warp reductions, conversions
// between float and the storage dtypes, and the dtype / head-dim dispatch to templates.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "core/half.h"
#include "kvsquash.h"

namespace kvs::cuda {

// ---- errors -------------------------------------------------------------------------------

// Throws for a failed runtime call; `what` says what was being done. Also clears the
// runtime's last-error state (for non-sticky errors) so that a later cudaGetLastError()
// after an unrelated kernel launch does not report this failure a second time.
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const std::string& what) {
  (void)cudaGetLastError();
  const kvs_status status = err == cudaErrorMemoryAllocation ? KVS_E_OOM : KVS_E_CUDA;
  throw Error(status, what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// `what` is only evaluated on failure, so it may build a string without costing the
// success path anything.
#define KVS_CUDA_CHECK(call, what)                                   \
  do {                                                               \
    const cudaError_t kvs_cuda_check_err_ = (call);                  \
    if (kvs_cuda_check_err_ != cudaSuccess)                          \
      ::kvs::cuda::throw_cuda_error(kvs_cuda_check_err_, (what));    \
  } while (0)

// ---- warp reductions (every lane of the warp must take part; all get the result) ----------

constexpr int kWarpSize = 32;
constexpr unsigned kFullWarpMask = 0xffffffffu;

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    value = fmaxf(value, __shfl_xor_sync(kFullWarpMask, value, offset));
  return value;
}

// The butterfly gives every lane the same sum (each step adds the same two values).
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(kFullWarpMask, value, offset);
  return value;
}

// Warp-wide argmax over (key, index) pairs: the largest key, ties to the lower index. A lane
// without a candidate holds index kNoIndex (its key is ignored). Every lane gets the winner.
constexpr int64_t kNoIndex = INT64_MAX;

__device__ __forceinline__ void warp_argmax(uint32_t& key, int64_t& index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const uint32_t other_key = __shfl_xor_sync(kFullWarpMask, key, offset);
    const int64_t other_index = __shfl_xor_sync(kFullWarpMask, index, offset);
    if (other_index != kNoIndex &&
        (index == kNoIndex || other_key > key || (other_key == key && other_index < index))) {
      key = other_key;
      index = other_index;
    }
  }
}

// ---- storage types <-> float ----------------------------------------------------------------

template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

template <class T>
__device__ __forceinline__ float to_float(T value) {
  static_assert(is_storage_type_v<T>, "storage type must be float, __half or __nv_bfloat16");
  if constexpr (std::is_same_v<T, float>) {
    return value;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(value);
  } else {
    return __bfloat162float(value);
  }
}

// Rounds to nearest, ties to even with the CPU's own converters (csrc/core/half.h), so every
// stored bit pattern, NaN payloads included, equals the CPU reference's.
template <class T>
__device__ __forceinline__ T from_float(float value) {
  static_assert(is_storage_type_v<T>, "storage type must be float, __half or __nv_bfloat16");
  if constexpr (std::is_same_v<T, float>) {
    return value;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __ushort_as_half(float_to_half(value));
  } else {
    return __ushort_as_bfloat16(float_to_bf16(value));
  }
}

inline bool is_16_byte_aligned(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Values of T held by one 16-byte vector (the unit of the kernels' vector loads).
template <class T>
inline constexpr int kValuesPer16Bytes = static_cast<int>(16 / sizeof(T));

// Converts the values packed in a 16-byte vector (lowest address in the lowest bits of .x)
// to floats.
template <class T>
__device__ __forceinline__ void unpack16(const uint4& raw, float (&out)[kValuesPer16Bytes<T>]) {
  static_assert(is_storage_type_v<T>, "storage type must be float, __half or __nv_bfloat16");
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    if constexpr (std::is_same_v<T, float>) {
      out[w] = __uint_as_float(words[w]);
    } else {
      const auto low = static_cast<unsigned short>(words[w] & 0xffffu);
      const auto high = static_cast<unsigned short>(words[w] >> 16);
      if constexpr (std::is_same_v<T, __half>) {
        out[2 * w] = __half2float(__ushort_as_half(low));
        out[2 * w + 1] = __half2float(__ushort_as_half(high));
      } else {
        out[2 * w] = __bfloat162float(__ushort_as_bfloat16(low));
        out[2 * w + 1] = __bfloat162float(__ushort_as_bfloat16(high));
      }
    }
  }
}

// Stores `value` as element `index` of a tensor whose dtype is only known at run time
// (f32 / f16 / bf16); meant for epilogues, where a uniform switch costs nothing.
__device__ __forceinline__ void store_float_as(void* base, kvs_dtype dtype, int64_t index, float value) {
  switch (dtype) {
    case KVS_F16: static_cast<__half*>(base)[index] = from_float<__half>(value); break;
    case KVS_BF16: static_cast<__nv_bfloat16*>(base)[index] = from_float<__nv_bfloat16>(value); break;
    default: static_cast<float*>(base)[index] = value; break;
  }
}

// ---- launch geometry ------------------------------------------------------------------------

constexpr int64_t kMaxGridBlocks = INT32_MAX;  // larger problems loop inside the kernels (grid-stride)

// Blocks for `items` at `items_per_block`, capped at what a 1-D grid allows.
inline unsigned grid_blocks(int64_t items, int64_t items_per_block) {
  const int64_t blocks = (items + items_per_block - 1) / items_per_block;
  return static_cast<unsigned>(blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks);
}

// ---- dispatch: run-time values -> template arguments ----------------------------------------

template <class T>
struct TypeTag {
  using type = T;
};

// Calls body(TypeTag<T>{}) with the C++ storage type of a float dtype.
template <class Body>
void dispatch_float_dtype(kvs_dtype dtype, const char* arg, Body&& body) {
  switch (dtype) {
    case KVS_F32: body(TypeTag<float>{}); return;
    case KVS_F16: body(TypeTag<__half>{}); return;
    case KVS_BF16: body(TypeTag<__nv_bfloat16>{}); return;
    default:
      throw Error(KVS_E_DTYPE, std::string(arg) + ": expected dtype f32, f16 or bf16, got dtype code " +
                                   std::to_string(static_cast<int>(dtype)));
  }
}

// The head dims a kernel is instantiated for: one list serves both the support check and
// the dispatch, so they cannot drift apart.
template <int... Dims>
struct HeadDimList {
  static constexpr bool contains(int64_t dim) { return ((dim == Dims) || ...); }

  static std::string describe() {
    std::string list;
    ((list += (list.empty() ? "" : ", ") + std::to_string(Dims)), ...);
    return list;
  }

  // Calls body(std::integral_constant<int, D>{}) for the D equal to `dim`.
  template <class Body>
  static void dispatch(int64_t dim, const char* what, Body&& body) {
    const bool found = ((dim == Dims ? (body(std::integral_constant<int, Dims>{}), true) : false) || ...);
    if (!found)
      throw Error(KVS_E_UNSUPPORTED, std::string(what) + ": head dim " + std::to_string(dim) +
                                         " is not supported on CUDA (supported: " + describe() + ")");
  }
};

}  // namespace kvs::cuda
