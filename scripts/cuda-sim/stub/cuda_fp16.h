// host-simulation stub: the 16-bit float types as their bits, converted by core/half.h
#pragma once
#include "core/half.h"
struct __half { unsigned short x; };
struct __half2 { __half x, y; };
struct __nv_bfloat16 { unsigned short x; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline float __half2float(__half h) { return kvs::half_to_float(h.x); }
inline float __bfloat162float(__nv_bfloat16 h) { return kvs::bf16_to_float(h.x); }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }
inline __half2 __floats2half2_rn(float a, float b) { return {{kvs::float_to_half(a)}, {kvs::float_to_half(b)}}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {{kvs::float_to_bf16(a)}, {kvs::float_to_bf16(b)}}; }
