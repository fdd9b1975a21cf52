// CPU reference of attention over a quantized cache (csrc/core/quant.h,
// QuantAttentionProblem): the cache decoded exactly as quant_decode does (RoPE applied),
// then dense attention in f64 (csrc/cpu/attention.cc). The CUDA kernel reads the pages
// directly; this is the oracle it is checked against.
#include <vector>

#include "core/attention.h"
#include "core/quant.h"
#include "cpu/elements.h"

namespace kvs::cpu {

void quant_attention(const QuantAttentionProblem& p) {
  const QuantFormat& f = p.cache.format;
  const size_t cache_size = static_cast<size_t>(p.cache.B * f.Hkv * p.T * f.D);
  std::vector<float> keys(cache_size), values(cache_size), queries(static_cast<size_t>(p.cache.B * p.Hq * p.Tq * f.D));
  QuantDecodeProblem decode = p.cache;
  decode.out_keys = keys.data();
  decode.out_values = values.data();
  quant_decode(decode);
  for (size_t i = 0; i < queries.size(); ++i) queries[i] = load_float(p.q, p.q_dtype, static_cast<int64_t>(i));

  AttentionProblem a{};
  a.q = queries.data(), a.k = keys.data(), a.v = values.data();
  a.out = p.out, a.lse = p.lse, a.kv_lengths = p.kv_lengths;
  a.in_dtype = KVS_F32, a.out_dtype = p.out_dtype;
  a.B = p.cache.B, a.Hq = p.Hq, a.Hkv = f.Hkv, a.Tq = p.Tq, a.Tk = p.T, a.D = f.D;
  a.scale = p.scale, a.causal = p.causal;
  attention(a);
}

}  // namespace kvs::cpu
