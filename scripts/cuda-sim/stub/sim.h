// Host simulation of the CUDA execution model for cuda/pyramid.cu: blocks run one after the
// other, the threads of a block as std::threads with a block barrier; warps exchange values
// through per-warp slots and barriers; mma.sync / ldmatrix are emulated from the documented
// fragment layouts.
#pragma once
#include <array>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <strings.h>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n)
#ifndef INFINITY
#define INFINITY (__builtin_inff())
#endif

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline uint3 blockDim;
inline uint3 gridDim;
alignas(16) inline unsigned char sim_shared[1 << 20];

struct SimBlock {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<std::array<uint64_t, 32>> slots;       // one value per lane
  std::vector<std::array<const void*, 32>> pointers;  // ldmatrix row addresses
  std::vector<std::array<std::array<uint32_t, 10>, 32>> mma;  // a[4], b[2], c[4] per lane
};
inline SimBlock sim_block;

inline void __syncthreads() { sim_block.block->arrive_and_wait(); }
inline void __trap() { std::abort(); }
inline int sim_warp() { return threadIdx.x / 32; }
inline int sim_lane() { return threadIdx.x % 32; }
inline void sim_warp_sync() { sim_block.warps[sim_warp()]->arrive_and_wait(); }

template <class V>
V sim_exchange(V v, int source_lane) {
  static_assert(sizeof(V) <= 8);
  auto& slots = sim_block.slots[sim_warp()];
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  slots[sim_lane()] = bits;
  sim_warp_sync();
  const uint64_t got = slots[source_lane & 31];
  sim_warp_sync();
  V r;
  std::memcpy(&r, &got, sizeof(V));
  return r;
}
template <class V> V __shfl_xor_sync(unsigned, V v, int m) { return sim_exchange(v, sim_lane() ^ m); }
template <class V> V __shfl_sync(unsigned, V v, int src) { return sim_exchange(v, src); }
template <class V> V __shfl_up_sync(unsigned, V v, unsigned d) { const int s = sim_lane() - static_cast<int>(d); V r = sim_exchange(v, s < 0 ? sim_lane() : s); return r; }
inline bool __any_sync(unsigned, bool p) {
  bool any = false;
  for (int l = 0; l < 32; ++l) any |= sim_exchange<int>(p, l) != 0;
  return any;
}

inline int atomicMax(int* p, int v) {
  std::atomic_ref<int> a(*p);
  int old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {}
  return old;
}
inline unsigned atomicMin(unsigned* p, unsigned v) {
  std::atomic_ref<unsigned> a(*p);
  unsigned old = a.load();
  while (old > v && !a.compare_exchange_weak(old, v)) {}
  return old;
}

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __ffs(int x) { return ffs(x); }
using std::signbit;
template <class A, class B> auto min(A a, B b) { using C = std::common_type_t<A, B>; return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b); }
template <class A, class B> auto max(A a, B b) { using C = std::common_type_t<A, B>; return static_cast<C>(a) > static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b); }

// ---- tensor-core emulation (the PTX ISA fragment layouts of m16n8k16 and ldmatrix) ----
inline float sim_half_value(uint16_t bits, bool bf16);
template <class T>
void sim_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  constexpr bool bf16 = !std::is_same_v<T, __half>;
  auto& m = sim_block.mma[sim_warp()];
  const int lane = sim_lane();
  for (int i = 0; i < 4; ++i) m[lane][i] = a[i];
  m[lane][4] = b0;
  m[lane][5] = b1;
  for (int i = 0; i < 4; ++i) std::memcpy(&m[lane][6 + i], &d[i], 4);
  sim_warp_sync();
  auto half_of = [&](int l, int reg, int hi) { return sim_half_value(static_cast<uint16_t>(m[l][reg] >> (16 * hi)), bf16); };
  // A[row][k]: lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half k % 2
  // B[k][n]: lane n * 4 + (k % 8) / 2, register 4 + (k >= 8), half k % 2
  // C[row][n]: lane (row % 8) * 4 + n / 2, register 6 + 2 (row >= 8) + n % 2
  const int g = lane / 4, t = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), n = 2 * t + (i % 2);
    float c;
    std::memcpy(&c, &m[lane][6 + i], 4);
    double acc = c;
    for (int k = 0; k < 16; ++k)
      acc += static_cast<double>(half_of((row % 8) * 4 + (k % 8) / 2, (row >= 8) + 2 * (k >= 8), k % 2)) *
             half_of(n * 4 + (k % 8) / 2, 4 + (k >= 8), k % 2);
    out[i] = static_cast<float>(acc);
  }
  sim_warp_sync();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

template <bool Transposed>
void sim_ldmatrix(uint32_t (&r)[4], const void* row) {
  auto& p = sim_block.pointers[sim_warp()];
  const int lane = sim_lane();
  p[lane] = row;
  sim_warp_sync();
  for (int i = 0; i < 4; ++i) {
    uint16_t e[2];
    for (int j = 0; j < 2; ++j) {
      const int rr = Transposed ? 2 * (lane % 4) + j : lane / 4;
      const int cc = Transposed ? lane / 4 : 2 * (lane % 4) + j;
      std::memcpy(&e[j], static_cast<const unsigned char*>(p[i * 8 + rr]) + 2 * cc, 2);
    }
    r[i] = e[0] | (static_cast<uint32_t>(e[1]) << 16);
  }
  sim_warp_sync();
}

template <class... P, class... A>
void sim_launch(void (*kernel)(P...), unsigned grid, unsigned block, size_t shared, cudaStream_t, A&&... args) {
  if (shared > sizeof(sim_shared)) std::abort();
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  for (unsigned b = 0; b < grid; ++b) {
    const int warps = static_cast<int>(block / 32);
    sim_block.block = std::make_unique<std::barrier<>>(block);
    sim_block.warps.clear();
    for (int w = 0; w < warps; ++w) sim_block.warps.push_back(std::make_unique<std::barrier<>>(32));
    sim_block.slots.assign(warps, {});
    sim_block.pointers.assign(warps, {});
    sim_block.mma.assign(warps, {});
    std::memset(sim_shared, 0xcd, shared);  // stale garbage, as a GPU may leave
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([&, t, b] {
        threadIdx = {t, 0, 0};
        blockIdx = {b, 0, 0};
        kernel(args...);
      });
    for (auto& th : threads) th.join();
  }
}
