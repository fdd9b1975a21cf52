// Runs cuda/pyramid.cu's kernels in the host simulation (stub/sim.h) against the CPU
// reference, stage by stage, with the GPU suite's tolerances: pooled tensors, level maps,
// lists and counts identical; importance within 1e-4 + 1e-2|P|; attention within 1e-5 + 1e-5
// |ref| (f32) or 1e-3 + 1e-2|ref| (lse 1e-3 + 1e-3|ref|), CUDA also given out-of-range list ids.
// Usage (scripts/cuda-sim/run.sh): pyramid-sim TRIALS MODE, MODE 0 random small shapes,
// 1 long sequences (many tiles), 2 misaligned tensors and a pre-sm_80 device on odd trials,
// 3 4096 key blocks.
#include "pyramid_sim.cc"

#include <cstdio>
#include <random>
#include <string>

#include "core/half.h"

namespace kvs::cuda {
void use_device(int) {}
void* resolve_stream(int, void* s) { return s; }
}  // namespace kvs::cuda

inline float sim_half_value(uint16_t bits, bool bf16) { return bf16 ? kvs::bf16_to_float(bits) : kvs::half_to_float(bits); }

using namespace kvs;

static std::mt19937 rng_(1234);
static int rint(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
static float rnorm() { return std::normal_distribution<float>(0.f, 1.f)(rng_); }
static size_t esize(kvs_dtype d) { return d == KVS_F32 ? 4 : 2; }

struct Buf {
  std::vector<unsigned char> bytes;
  void* p() { return bytes.data(); }
};
static Buf random_tensor(int64_t n, kvs_dtype d, float scale) {
  Buf b;
  b.bytes.resize(n * esize(d) + 16);
  for (int64_t i = 0; i < n; ++i) {
    const float x = rnorm() * scale;
    if (d == KVS_F32) std::memcpy(&b.bytes[i * 4], &x, 4);
    else {
      const uint16_t h = d == KVS_F16 ? float_to_half(x) : float_to_bf16(x);
      std::memcpy(&b.bytes[i * 2], &h, 2);
    }
  }
  return b;
}
static Buf zeros(int64_t bytes) { Buf b; b.bytes.assign(bytes + 16, 0); return b; }
static float value(const void* p, kvs_dtype d, int64_t i) {
  if (d == KVS_F32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return d == KVS_F16 ? half_to_float(h) : bf16_to_float(h);
}
static int failures = 0;
static void check(bool ok, const std::string& what) {
  if (!ok) { ++failures; std::printf("FAIL %s\n", what.c_str()); }
}
static double worst_ratio(const void* a, const void* e, kvs_dtype d, int64_t n, double atol, double rtol) {
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = value(a, d, i), y = value(e, d, i);
    if (x == y) continue;
    const double r = std::fabs(x - y) / (atol + rtol * std::fabs(y));
    if (!(r <= worst)) worst = std::isnan(r) ? INFINITY : r;
  }
  return worst;
}
static const kvs_dtype kTypes[3] = {KVS_F32, KVS_F16, KVS_BF16};
static const char* kNames[3] = {"f32", "f16", "bf16"};

int main(int argc, char** argv) {
  const int trials = argc > 1 ? std::atoi(argv[1]) : 12;
  const int mode = argc > 2 ? std::atoi(argv[2]) : 0;  // 0 random, 1 long, 2 misaligned + pre-sm80, 3 4096 blocks
  for (int trial = 0; trial < trials; ++trial) {
    sim_cc_major = mode == 2 && trial % 2 ? 7 : 9;
    const int ti = trial % 3;
    const kvs_dtype dt = kTypes[ti];
    const int64_t block = mode == 3 ? 8 : 8 << (trial % 5), query_block = 16 << ((trial / 2) % 4);
    const int64_t Hkv = rint(1, 2), G = 1 + trial % 3, Hq = Hkv * G, B = 1;
    int64_t Tk = mode == 1 ? rint(200, 700) : mode == 3 ? 4096 * block - rint(0, block - 1) : rint(1, block * 4 + 3);
    int64_t Tq = trial % 3 == 0 ? Tk : trial % 3 == 1 ? rint(1, Tk) : Tk + rint(1, 40);
    if (mode == 3) Tq = rint(1, 40);
    const int64_t Ds[8] = {8, 24, 40, 64, 72, 128, 136, 256};
    const int64_t D = mode == 3 ? 8 : Ds[trial % 8];
    const bool causal = trial % 2 == 1, kvhead = trial % 4 >= 2;
    const int64_t Nk = pyramid_blocks(Tk, block), Mq = pyramid_blocks(Tq, query_block), padded = Nk * block;
    const int64_t Hm = kvhead ? Hkv : Hq;
    char label[256];
    std::snprintf(label, sizeof label, "trial %d %s B%ld Hq%ld Hkv%ld Tq%ld Tk%ld D%ld n%ld m%ld causal%d kvhead%d", trial, kNames[ti], (long)B, (long)Hq,
                  (long)Hkv, (long)Tq, (long)Tk, (long)D, (long)block, (long)query_block, causal, kvhead);
    std::printf("%s\n", label);
    Buf q = random_tensor(B * Hq * Tq * D + 1, dt, 1.5f), k = random_tensor(B * Hkv * Tk * D + 1, dt, 1.5f), v = random_tensor(B * Hkv * Tk * D + 1, dt, 1.f);
    const size_t shift = mode == 2 ? esize(dt) : 0;
    void* qp = q.bytes.data() + shift; void* kp = k.bytes.data() + shift; void* vp = v.bytes.data() + shift;

    // 1. pool
    Buf pk[2][3], pv[2][3];
    PyramidPoolProblem pp{};
    pp.keys = kp; pp.values = vp; pp.dtype = dt; pp.B = B; pp.H = Hkv; pp.Tk = Tk; pp.D = D; pp.block = block;
    for (int dev = 0; dev < 2; ++dev) {
      for (int i = 0; i < 3; ++i) {
        pk[dev][i] = zeros(B * Hkv * (padded >> (i + 1)) * D * esize(dt));
        pv[dev][i] = zeros(B * Hkv * (padded >> (i + 1)) * D * esize(dt));
        // garbage, so that unwritten elements show
        std::memset(pk[dev][i].p(), 0x5a, pk[dev][i].bytes.size());
        std::memset(pv[dev][i].p(), 0x5a, pv[dev][i].bytes.size());
        pp.pooled_keys[i] = pk[dev][i].p(); pp.pooled_values[i] = pv[dev][i].p();
      }
      if (dev == 0) cpu::pyramid_pool(pp); else cuda::pyramid_pool(pp, nullptr);
    }
    for (int i = 0; i < 3; ++i) {
      check(pk[0][i].bytes == pk[1][i].bytes, std::string(label) + " pooled keys " + std::to_string(i));
      check(pv[0][i].bytes == pv[1][i].bytes, std::string(label) + " pooled values " + std::to_string(i));
    }

    // 2. importance
    std::vector<float> P[2];
    PyramidImportanceProblem ip{};
    ip.q = qp; ip.k = kp; ip.dtype = dt; ip.B = B; ip.Hq = Hq; ip.Hkv = Hkv; ip.Tq = Tq; ip.Tk = Tk; ip.D = D;
    ip.block = block; ip.query_block = query_block;
    const double sampling[3] = {0.25, 1.0, 0.1};
    ip.sample_queries = std::max<int64_t>(1, std::ceil(query_block * sampling[trial % 3]));
    ip.sample_keys = std::max<int64_t>(1, std::ceil(block * sampling[trial % 3]));
    ip.seed = 77 * trial; ip.scale = 1.f / std::sqrt(static_cast<float>(D)); ip.causal = causal; ip.kv_head_mask = kvhead;
    for (int dev = 0; dev < 2; ++dev) {
      P[dev].assign(B * Hm * Mq * Nk, -7.f);
      ip.importance = P[dev].data();
      if (dev == 0) cpu::pyramid_importance(ip); else cuda::pyramid_importance(ip, nullptr);
    }
    check(worst_ratio(P[1].data(), P[0].data(), KVS_F32, P[0].size(), 1e-4, 1e-2) <= 1,
          std::string(label) + " importance ratio " + std::to_string(worst_ratio(P[1].data(), P[0].data(), KVS_F32, P[0].size(), 1e-4, 1e-2)));

    // 3. assign from the CPU importance (with a few ties and NaNs)
    for (size_t i = 0; i < P[0].size(); i += 7) P[0][i] = i % 3 ? 0.125f : NAN;
    std::vector<uint8_t> lm[2];
    std::vector<int32_t> li[2], co[2];
    PyramidAssignProblem ap{};
    ap.importance = P[0].data(); ap.B = B; ap.Hm = Hm; ap.Mq = Mq; ap.Nk = Nk; ap.Tq = Tq; ap.Tk = Tk; ap.block = block; ap.query_block = query_block;
    ap.causal = causal; ap.threshold_mode = trial % 2 == 0;
    const float bounds[4] = {0.2f, 0.4f, 0.6f, 0.85f};
    std::memcpy(ap.bounds, bounds, sizeof bounds);
    ap.min_full_fraction = 0.06f; ap.force_sink = trial % 4 != 3; ap.force_diagonal = trial % 5 != 4;
    for (int dev = 0; dev < 2; ++dev) {
      lm[dev].assign(B * Hm * Mq * Nk, 99); li[dev].assign(B * Hm * Mq * Nk, 99); co[dev].assign(B * Hm * Mq * 4, 99);
      ap.level_map = lm[dev].data(); ap.lists = li[dev].data(); ap.counts = co[dev].data();
      if (dev == 0) cpu::pyramid_assign(ap); else cuda::pyramid_assign(ap, nullptr);
    }
    check(lm[0] == lm[1], std::string(label) + " level map");
    check(li[0] == li[1], std::string(label) + " lists");
    check(co[0] == co[1], std::string(label) + " counts");

    // 4. attend, on the CPU's mask and levels, with an out-of-range id appended for CUDA
    const kvs_dtype out_dt = trial % 7 == 0 ? KVS_F32 : dt;
    Buf out[2];
    std::vector<float> lse[2];
    PyramidAttendProblem at{};
    at.q = qp; at.k = kp; at.v = vp;
    for (int i = 0; i < 3; ++i) { at.pooled.keys[i] = pk[0][i].p(); at.pooled.values[i] = pv[0][i].p(); }
    at.in_dtype = dt; at.out_dtype = out_dt; at.B = B; at.Hq = Hq; at.Hkv = Hkv; at.Hm = Hm; at.Tq = Tq; at.Tk = Tk; at.D = D;
    at.block = block; at.query_block = query_block; at.scale = 1.f / std::sqrt(static_cast<float>(D)); at.causal = causal;
    std::vector<int32_t> bad_lists = li[0], bad_counts = co[0];
    for (int64_t row = 0; row < B * Hm * Mq; ++row) {
      int used = 0;
      for (int l = 0; l < 4; ++l) used += co[0][row * 4 + l];
      if (used < Nk) { bad_lists[row * Nk + used] = row % 2 ? -3 : static_cast<int32_t>(Nk + row); bad_counts[row * 4 + 3] += 1; }
    }
    for (int dev = 0; dev < 2; ++dev) {
      out[dev] = zeros(B * Hq * Tq * D * esize(out_dt));
      std::memset(out[dev].p(), 0x7f, out[dev].bytes.size());
      lse[dev].assign(B * Hq * Tq, 12345.f);
      at.out = out[dev].p(); at.lse = lse[dev].data();
      at.lists = dev == 0 ? li[0].data() : bad_lists.data();
      at.counts = dev == 0 ? co[0].data() : bad_counts.data();
      if (dev == 0) cpu::pyramid_attend(at);
      else if (sim_cc_major >= 8 || dt == KVS_F32) cuda::pyramid_attend(at, nullptr);
      else out[1] = out[0], lse[1] = lse[0];  // f16/bf16 attend needs sm_80: refused before any launch
    }
    const bool f32 = dt == KVS_F32 && out_dt == KVS_F32;
    const double r_out = worst_ratio(out[1].p(), out[0].p(), out_dt, B * Hq * Tq * D, f32 ? 1e-5 : 1e-3, f32 ? 1e-5 : 1e-2);
    const double r_lse = worst_ratio(lse[1].data(), lse[0].data(), KVS_F32, B * Hq * Tq, f32 ? 1e-5 : 1e-3, f32 ? 1e-5 : 1e-3);
    check(r_out <= 1, std::string(label) + " output ratio " + std::to_string(r_out));
    if (r_out > 1) {
      for (int64_t i = 0; i < B * Hq * Tq * D; ++i) {
        const double x = value(out[1].p(), out_dt, i), y = value(out[0].p(), out_dt, i);
        if (std::fabs(x - y) > 1e-3 + 1e-2 * std::fabs(y)) std::printf("  at %ld (row %ld d %ld): cuda %.6f cpu %.6f\n", (long)i, (long)(i / D), (long)(i % D), x, y);
      }
    }
    check(r_lse <= 1, std::string(label) + " lse ratio " + std::to_string(r_lse));
  }
  std::printf("%d failures\n", failures);
  return failures != 0;
}
extern "C" int32_t kvs_cpu_threads(void) { return 2; }
