// Helpers over kvs_tensor descriptors: sizes, names, and the argument checks every op shares.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "kvsquash.h"

namespace kvs {

const char* dtype_name(int32_t dtype);
bool is_float_dtype(int32_t dtype);
int64_t numel(const kvs_tensor& t);
size_t nbytes(const kvs_tensor& t);
std::string shape_string(const kvs_tensor& t);
std::string device_string(int32_t device_type, int32_t device_index);

// Each check throws kvs::Error naming `arg` with what was expected and what came.
void check_tensor(const kvs_tensor* t, const char* arg);  // non-null, valid dtype, non-empty
void check_rank(const kvs_tensor& t, int rank, const char* arg);
void check_dtype(const kvs_tensor& t, std::initializer_list<kvs_dtype> allowed, const char* arg);
void check_same_device(const kvs_tensor& t, const kvs_tensor& ref, const char* arg,
                       const char* ref_arg);
// dims: expected shape; -1 leaves a dimension free.
void check_shape(const kvs_tensor& t, std::initializer_list<int64_t> dims, const char* arg,
                 const char* dims_doc);

}  // namespace kvs
