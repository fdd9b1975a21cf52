#include "core/tensor.h"

#include <cstdio>
#include <string>

#include "core/error.h"

namespace kvs {

const char* dtype_name(int32_t dtype) {
  static const char* const names[] = {"f32", "f16", "bf16", "i32", "u32", "i16", "u16", "i8", "u8"};
  return dtype >= 0 && dtype <= KVS_U8 ? names[dtype] : "unknown";
}

bool is_float_dtype(int32_t dtype) { return dtype == KVS_F32 || dtype == KVS_F16 || dtype == KVS_BF16; }

int64_t numel(const kvs_tensor& t) {
  int64_t n = 1;
  for (int i = 0; i < t.rank; ++i) n *= t.shape[i];
  return n;
}

size_t nbytes(const kvs_tensor& t) {
  return static_cast<size_t>(numel(t)) * kvs_dtype_size(static_cast<kvs_dtype>(t.dtype));
}

std::string shape_string(const kvs_tensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.shape[i]);
  }
  return s + "]";
}

std::string device_string(int32_t device_type, int32_t device_index) {
  return device_type == KVS_CUDA ? "cuda:" + std::to_string(device_index) : "cpu";
}

void check_tensor(const kvs_tensor* t, const char* arg) {
  if (!t) throw Error(KVS_E_SHAPE, std::string(arg) + ": expected a tensor, got NULL");
  if (t->dtype < 0 || t->dtype > KVS_U8)
    throw Error(KVS_E_DTYPE, std::string(arg) + ": unknown dtype code " + std::to_string(t->dtype));
  if (t->device_type != KVS_CPU && t->device_type != KVS_CUDA)
    throw Error(KVS_E_DEVICE, std::string(arg) + ": unknown device type " + std::to_string(t->device_type));
  if (t->rank < 0 || t->rank > KVS_MAX_RANK)
    throw Error(KVS_E_SHAPE, std::string(arg) + ": rank " + std::to_string(t->rank) + " out of range");
  for (int i = 0; i < t->rank; ++i) {
    if (t->shape[i] <= 0)
      throw Error(KVS_E_SHAPE, std::string(arg) + ": expected non-empty dimensions, got shape " + shape_string(*t));
  }
  if (!t->data) throw Error(KVS_E_DISPOSED, std::string(arg) + ": tensor has no memory (disposed?)");
}

void check_rank(const kvs_tensor& t, int rank, const char* arg) {
  if (t.rank != rank)
    throw Error(KVS_E_SHAPE, std::string(arg) + ": expected rank " + std::to_string(rank) + ", got shape " +
                                 shape_string(t));
}

void check_dtype(const kvs_tensor& t, std::initializer_list<kvs_dtype> allowed, const char* arg) {
  std::string expected;
  for (kvs_dtype d : allowed) {
    if (t.dtype == d) return;
    expected += expected.empty() ? "" : " or ";
    expected += dtype_name(d);
  }
  throw Error(KVS_E_DTYPE, std::string(arg) + ": expected dtype " + expected + ", got " + dtype_name(t.dtype));
}

void check_same_device(const kvs_tensor& t, const kvs_tensor& ref, const char* arg, const char* ref_arg) {
  if (t.device_type != ref.device_type || (t.device_type == KVS_CUDA && t.device_index != ref.device_index))
    throw Error(KVS_E_DEVICE, std::string(arg) + ": expected device " + device_string(ref.device_type, ref.device_index) +
                                  " (as " + ref_arg + "), got " + device_string(t.device_type, t.device_index));
}

void check_shape(const kvs_tensor& t, std::initializer_list<int64_t> dims, const char* arg, const char* dims_doc) {
  bool ok = t.rank == static_cast<int>(dims.size());
  int i = 0;
  for (int64_t d : dims) {
    if (ok && d >= 0 && t.shape[i] != d) ok = false;
    ++i;
  }
  if (!ok) {
    std::string expected = "[";
    i = 0;
    for (int64_t d : dims) expected += (i++ ? ", " : "") + (d >= 0 ? std::to_string(d) : std::string("*"));
    throw Error(KVS_E_SHAPE, std::string(arg) + ": expected shape " + dims_doc + " = " + expected + "], got " +
                                 shape_string(t));
  }
}

}  // namespace kvs
