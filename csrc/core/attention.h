// Dense attention, shared by the CPU reference (csrc/cpu/attention.cc) and the CUDA kernel
// (cuda/attention.cu). The math and the tensor contract are stated on kvs_attention in
// kvsquash.h; this is the validated, unpacked form both backends receive.
#pragma once

#include <cstdint>

#include "core/host_device.h"
#include "kvsquash.h"

namespace kvs {

struct AttentionProblem {
  const void* q;             // [B, Hq, Tq, D], dtype `in_dtype`
  const void* k;             // [B, Hkv, Tk, D], dtype `in_dtype`
  const void* v;             // [B, Hkv, Tk, D], dtype `in_dtype`
  void* out;                 // [B, Hq, Tq, D], dtype `out_dtype`
  float* lse;                // [B, Hq, Tq] or nullptr
  const int32_t* kv_lengths; // [B, Hkv], each in [0, Tk], or nullptr (all Tk)
  const float* log_weights;  // [B, Hkv, Tk] or nullptr
  kvs_dtype in_dtype;        // f32, f16 or bf16
  kvs_dtype out_dtype;       // f32, f16 or bf16
  int64_t B, Hq, Hkv, Tq, Tk, D;
  float scale;
  bool causal;
  int device;                // CUDA ordinal (CUDA backend only)
};

// How many keys (a prefix of the head's `len` valid ones) query i of Tq may see.
KVS_HOST_DEVICE inline int64_t attention_key_limit(bool causal, int64_t len, int64_t Tq, int64_t i) {
  if (!causal) return len;
  const int64_t limit = i + len - Tq + 1;
  return limit < 0 ? 0 : (limit > len ? len : limit);
}

namespace cpu {
void attention(const AttentionProblem& p);
}

namespace cuda {
// Supported head dims of the CUDA kernel.
bool attention_supports_head_dim(int64_t d);
void attention(const AttentionProblem& p, void* stream);
}  // namespace cuda

}  // namespace kvs
