/*
 * kvsquash C ABI: the whole kernel surface, usable without Node.
 *
 * Conventions
 * - Every entry returns a kvs_status; on failure kvs_last_error() gives a message for the
 *   calling thread (valid until that thread's next kvsquash call).
 * - Tensors are dense, contiguous, row-major; a kvs_tensor only describes memory it does
 *   not own. data lives on the device named by (device_type, device_index).
 * - Every op takes an explicit stream (a cudaStream_t as void*). NULL means the library's
 *   own non-blocking stream for the tensors' device. CUDA ops only enqueue work: call
 *   kvs_cuda_stream_synchronize() before reading results on the host. CPU ops ignore the
 *   stream and finish before they return.
 * - Integer and selection outputs are identical between CPU and CUDA; float outputs agree
 *   within the tolerances stated by each op's tests.
 */
#ifndef KVSQUASH_H
#define KVSQUASH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a struct layout or an entry's meaning changes. */
#define KVS_ABI_VERSION 1
#define KVS_MAX_RANK 8

typedef enum kvs_status {
  KVS_OK = 0,
  KVS_E_SHAPE = 1,       /* wrong rank or dimension, empty tensor */
  KVS_E_DTYPE = 2,       /* dtype not accepted for this argument */
  KVS_E_DEVICE = 3,      /* tensors on different devices, or device not usable */
  KVS_E_DISPOSED = 4,    /* tensor memory already released */
  KVS_E_RANGE = 5,       /* a value out of its allowed range (lengths, NaN scale, index) */
  KVS_E_CUDA = 6,        /* the CUDA runtime reported an error */
  KVS_E_OOM = 7,         /* an allocation failed */
  KVS_E_UNSUPPORTED = 8, /* valid request this build or device cannot run */
  KVS_E_INTERNAL = 9     /* a bug in kvsquash */
} kvs_status;

typedef enum kvs_dtype {
  KVS_F32 = 0,
  KVS_F16 = 1,
  KVS_BF16 = 2,
  KVS_I32 = 3,
  KVS_U32 = 4,
  KVS_I16 = 5,
  KVS_U16 = 6,
  KVS_I8 = 7,
  KVS_U8 = 8
} kvs_dtype;

typedef enum kvs_device_type { KVS_CPU = 0, KVS_CUDA = 1 } kvs_device_type;

typedef struct kvs_tensor {
  void* data;
  int32_t dtype;        /* kvs_dtype */
  int32_t device_type;  /* kvs_device_type */
  int32_t device_index; /* CUDA ordinal; 0 for CPU */
  int32_t rank;         /* 0..KVS_MAX_RANK */
  int64_t shape[KVS_MAX_RANK];
} kvs_tensor;

/* ---- library ---------------------------------------------------------------------- */

int kvs_abi_version(void);
const char* kvs_status_name(kvs_status status); /* "E_SHAPE", ... ; "OK" */
const char* kvs_last_error(void);
size_t kvs_dtype_size(kvs_dtype dtype); /* 0 for an unknown dtype */

/* Threads the CPU reference kernels use per op (default: hardware concurrency, or the
 * KVSQUASH_THREADS environment variable). n <= 0 restores the default. */
int kvs_cpu_threads(void);
void kvs_set_cpu_threads(int n);

/* ---- CUDA runtime (KVS_E_UNSUPPORTED when built without CUDA) ----------------------- */

typedef struct kvs_cuda_device_info {
  int32_t index;
  char name[256];
  int32_t cc_major, cc_minor;
  uint64_t memory_bytes;
} kvs_cuda_device_info;

typedef struct kvs_cuda_info {
  int32_t compiled;      /* built with CUDA kernels */
  int32_t available;     /* at least one device runs our kernels */
  int32_t driver_version;  /* cudaDriverGetVersion, 0 when no driver */
  int32_t runtime_version; /* cudaRuntimeGetVersion of the linked (static) runtime */
  char reason[256];      /* why not available ("" when available) */
  int32_t device_count;  /* entries filled in devices[] */
  kvs_cuda_device_info devices[16];
} kvs_cuda_info;

/* Queries the driver once per call; the first call initialises the CUDA runtime. */
kvs_status kvs_cuda_probe(kvs_cuda_info* info);

kvs_status kvs_cuda_malloc(int device, size_t bytes, void** ptr);
kvs_status kvs_cuda_free(int device, void* ptr);

typedef enum kvs_copy_kind {
  KVS_COPY_HOST_TO_DEVICE = 0,
  KVS_COPY_DEVICE_TO_HOST = 1,
  KVS_COPY_DEVICE_TO_DEVICE = 2
} kvs_copy_kind;

/* Enqueued on the stream; the host side must stay valid until the stream is synchronized. */
kvs_status kvs_cuda_memcpy(void* dst, const void* src, size_t bytes, kvs_copy_kind kind,
                           int device, void* stream);
kvs_status kvs_cuda_memset_zero(void* dst, size_t bytes, int device, void* stream);
kvs_status kvs_cuda_stream_synchronize(int device, void* stream);

/* Live allocations made through kvs_cuda_malloc on one device (all devices when device < 0). */
typedef struct kvs_memory_stats {
  uint64_t live_bytes;
  uint64_t live_allocations;
  uint64_t peak_bytes;
} kvs_memory_stats;
kvs_status kvs_cuda_memory_stats(int device, kvs_memory_stats* stats);

/* Checks that ptr is device memory of `device` holding at least `bytes` from ptr. */
kvs_status kvs_cuda_check_pointer(int device, const void* ptr, size_t bytes);

/* ---- ops ---------------------------------------------------------------------------- */

/*
 * Dense attention: out[b,h,i,:] = sum_j softmax_j(s_ij) v[b,h/G,j,:] with
 *   s_ij = scale * <q[b,h,i,:], k[b,h/G,j,:]> + log_weights[b,h/G,j]   (G = Hq / Hkv)
 * over keys j < len(b,h/G) (kv_lengths, or Tk); with causal, key j is visible to query i
 * only when j <= i + len - Tq (the queries are the last Tq positions of the sequence).
 * A query that sees no key gets a zero output row and lse = -inf.
 *
 * q [B,Hq,Tq,D]; k, v [B,Hkv,Tk,D]; one float dtype (f32/f16/bf16) for q, k, v.
 * out [B,Hq,Tq,D] in f32, f16 or bf16. lse (optional) f32 [B,Hq,Tq], natural log of the
 * softmax denominator including the max. kv_lengths (optional) i32 [B,Hkv] in [0, Tk].
 * log_weights (optional) f32 [B,Hkv,Tk]. All tensors on one device.
 * CPU accumulates in f64; CUDA in f32 and supports D in {8,16,32,64,128,256}.
 */
typedef struct kvs_attention_params {
  float scale; /* must be finite */
  int32_t causal;
  const kvs_tensor* kv_lengths;  /* NULL: all Tk keys valid */
  const kvs_tensor* log_weights; /* NULL: no per-key bias */
} kvs_attention_params;

kvs_status kvs_attention(const kvs_tensor* q, const kvs_tensor* k, const kvs_tensor* v,
                         const kvs_attention_params* params, const kvs_tensor* out,
                         const kvs_tensor* lse, void* stream);

/*
 * Aggregated attention scores: scores[b,g,j] = sum over the query heads h of KV head g and
 * over the last `window` queries i of softmax_j(scale * <q[b,h,i], k[b,g,j]>), with the
 * causal rule of kvs_attention (queries are the last Tq positions). The usual input of the
 * merge ops (SnapKV / H2O style). q [B,Hq,Tq,D], k [B,Hkv,Tk,D] float; scores f32 [B,Hkv,Tk].
 */
typedef struct kvs_attention_scores_params {
  float scale;    /* finite */
  int32_t causal;
  int64_t window; /* 1..Tq: how many of the last queries observe */
} kvs_attention_scores_params;

kvs_status kvs_attention_scores(const kvs_tensor* q, const kvs_tensor* k,
                                const kvs_attention_scores_params* params,
                                const kvs_tensor* scores, void* stream);

/*
 * Merge segments (KVMerger's chain clustering; format in csrc/core/merge.h): splits each
 * head's T tokens into runs of adjacent similar keys. keys [B,Hkv,T,D] float, scores f32
 * [B,Hkv,T]. Writes assign i32 [B,Hkv,T] (token -> slot, monotone, contiguous from 0) and
 * lengths i32 [B,Hkv] (slots per head). budget > 0 asks for exactly that many slots per
 * head (KVS_E_RANGE when protected tokens make it unreachable); budget == 0 merges every
 * eligible link whose cosine exceeds threshold.
 */
typedef struct kvs_merge_segment_params {
  float threshold;        /* cosine threshold (threshold mode) */
  int64_t budget;         /* slots per head, 1..T; 0 for threshold mode */
  int64_t protect_first;  /* first tokens kept as singletons */
  int64_t protect_recent; /* last tokens kept as singletons */
  int64_t protect_top;    /* highest-score tokens kept as singletons */
} kvs_merge_segment_params;

kvs_status kvs_merge_segments(const kvs_tensor* keys, const kvs_tensor* scores,
                              const kvs_merge_segment_params* params, const kvs_tensor* assign,
                              const kvs_tensor* lengths, void* stream);

/*
 * Gaussian-kernel merge of the segments above: per slot, the pivot is the member with the
 * largest score; member weights w_i ∝ exp(-|k_i - k_pivot|^2 / (2 sigma^2)); the merged key
 * is sum w_i k_i, the merged value sum w_i v_i (times the slot size with value_scale
 * PAPER). Outputs padded to Tcap >= max(lengths): out_keys/out_values [B,Hkv,Tcap,D] in the
 * keys' dtype, sizes and pivots i32 [B,Hkv,Tcap]; padding slots hold zeros, size 0, pivot -1.
 */
typedef enum kvs_value_scale { KVS_VALUE_SCALE_MEAN = 0, KVS_VALUE_SCALE_PAPER = 1 } kvs_value_scale;

typedef struct kvs_gaussian_merge_params {
  float sigma;         /* > 0: fixed sigma; 0: adaptive per slot (csrc/core/merge.h) */
  int32_t value_scale; /* kvs_value_scale */
} kvs_gaussian_merge_params;

kvs_status kvs_gaussian_merge(const kvs_tensor* keys, const kvs_tensor* values,
                              const kvs_tensor* scores, const kvs_tensor* assign,
                              const kvs_tensor* lengths, const kvs_gaussian_merge_params* params,
                              const kvs_tensor* out_keys, const kvs_tensor* out_values,
                              const kvs_tensor* sizes, const kvs_tensor* pivots, void* stream);

/*
 * Chunked soft matching (after Chelsea / CentroidKV; definitions in csrc/core/softmatch.h):
 * per chunk of `chunk` tokens, alternating even -> odd bipartite matching of similar keys,
 * merged into size-weighted centroids over `passes` passes. keys/values [B,H,T,D] float.
 * Writes assign i32 [B,H,T] and lengths i32 [B,H]; with out_keys non-NULL also out_keys,
 * out_values [B,H,Tcap,D] (keys' dtype), sizes and positions i32 [B,H,Tcap] (position = the
 * largest member token index). Every output is identical on CPU and CUDA.
 * kept_per_chunk > 0: each full chunk ends with exactly that many clusters (KVS_E_RANGE when
 * `passes` cannot get there); kept_per_chunk == 0: edges merge when their cosine exceeds
 * threshold.
 */
typedef struct kvs_soft_match_params {
  int64_t chunk;          /* even, >= 2 */
  int32_t passes;         /* 1..16 */
  int64_t kept_per_chunk; /* budget mode: 1..chunk; 0 for threshold mode */
  float threshold;
  int64_t protect_first, protect_recent;
} kvs_soft_match_params;

kvs_status kvs_soft_match(const kvs_tensor* keys, const kvs_tensor* values,
                          const kvs_soft_match_params* params, const kvs_tensor* assign,
                          const kvs_tensor* lengths, const kvs_tensor* out_keys,
                          const kvs_tensor* out_values, const kvs_tensor* sizes,
                          const kvs_tensor* positions, void* stream);

/*
 * Sub-2-bit KV quantization (format and rules in csrc/core/quant.h and quant_codec.h).
 * A cache is sink tokens and recent tokens kept in a raw dtype, and 64-token pages of codes
 * in between; the TypeScript layer (lib/ops/quant.ts) keeps the bookkeeping. Every code,
 * scale, outlier slot and dequantized value is identical on CPU and CUDA.
 */
typedef enum kvs_quant_mode {
  KVS_QUANT_KIVI2 = 0,
  KVS_QUANT_NUQ2 = 1,
  KVS_QUANT_K2V1 = 2,
  KVS_QUANT_CQ1 = 3,
  KVS_QUANT_ROT2 = 4,
  KVS_QUANT_ROT1_5 = 5
} kvs_quant_mode;

typedef enum kvs_rope_style { KVS_ROPE_NONE = 0, KVS_ROPE_INTERLEAVED = 1, KVS_ROPE_HALF = 2 } kvs_rope_style;

typedef struct kvs_rope {
  int32_t style;              /* kvs_rope_style */
  const kvs_tensor* inv_freq; /* f32 [D/2]; NULL with KVS_ROPE_NONE */
} kvs_rope;

/* The static part of a quantized cache (QuantParams). Tensors are f32 on the op's device;
 * those a mode does not use are NULL. */
typedef struct kvs_quant_format {
  int32_t mode;      /* kvs_quant_mode */
  int32_t head_dim;  /* 8..256, a multiple of 8; a power of two for rot2 / rot1.5 */
  int32_t kv_heads;
  int32_t outliers;  /* residual slots per token vector, 0..min(8, D/4) */
  int32_t raw_dtype; /* KVS_F16, KVS_BF16 or KVS_F32 */
  uint64_t rotation_seed;
  const kvs_tensor* key_codebook;          /* [4] sorted: nuq2, k2v1 */
  const kvs_tensor* value_codebook;        /* [4] sorted: nuq2 */
  const kvs_tensor* key_channel_zero;      /* [Hkv, D]: nuq2, k2v1, cq1 */
  const kvs_tensor* key_channel_range;     /* [Hkv, D] */
  const kvs_tensor* key_channel_inv_range; /* [Hkv, D], 1/range (0 where range is 0) */
  const kvs_tensor* key_vq_codebook;       /* [Hkv, D/8, 256, 8]: cq1 */
  const kvs_tensor* value_vq_codebook;     /* [Hkv, D/8, 256, 8]: k2v1, cq1 */
} kvs_quant_format;

/* Pages [B, Pcap, Hkv, per page]: codes u32, meta u16 (f16 bits; NULL when the codec has
 * none), outlier index u8 and value u16 [.., 64 * outliers] (NULL when outliers == 0). */
typedef struct kvs_quant_pages {
  const kvs_tensor* key_codes;
  const kvs_tensor* value_codes;
  const kvs_tensor* key_meta;
  const kvs_tensor* value_meta;
  const kvs_tensor* key_outlier_index;
  const kvs_tensor* key_outlier_value;
  const kvs_tensor* value_outlier_index;
  const kvs_tensor* value_outlier_value;
} kvs_quant_pages;

/* Encodes n_pages pages from tokens src_start + 64 i of keys/values [B, Hkv, Ts, D]
 * (f32/f16/bf16) into pages page_start + i. Token j's position is positions[b, j] (i32
 * [B, Ts]) or, with positions NULL, position_offset + j. */
kvs_status kvs_quant_encode(const kvs_quant_format* format, const kvs_rope* rope, const kvs_tensor* keys,
                            const kvs_tensor* values, const kvs_tensor* positions, int64_t position_offset,
                            int64_t src_start, const kvs_quant_pages* pages, int64_t page_start, int64_t n_pages,
                            void* stream);

/* A whole cache: sink tokens, n_pages pages, then recent tokens. raw_keys / raw_values
 * [B, Hkv, Rcap, D] in the raw dtype hold the sink tokens at [0, sink) and the recent ones
 * at [sink, sink + recent). positions i32 [B, >= T] or NULL (position = token index). */
typedef struct kvs_quant_cache {
  kvs_quant_pages pages;
  int64_t n_pages;
  const kvs_tensor* raw_keys;
  const kvs_tensor* raw_values;
  int64_t sink_tokens;
  int64_t recent_tokens;
  const kvs_tensor* positions;
} kvs_quant_cache;

/* Dequantizes the whole cache into f32 out_keys / out_values [B, Hkv, T, D]. Keys come out
 * post-RoPE with apply_rope, else in the convention they went in. */
kvs_status kvs_quant_decode(const kvs_quant_format* format, const kvs_rope* rope, const kvs_quant_cache* cache,
                            int32_t apply_rope, const kvs_tensor* out_keys, const kvs_tensor* out_values,
                            void* stream);

/*
 * Decode attention straight over a quantized cache: the meaning of kvs_attention over the
 * cache dequantized with RoPE applied (when it has RoPE), without materializing it. q
 * [B, Hq, Tq, D] post-RoPE, Tq 1..16 (decode steps; causal treats them as the last Tq
 * positions), f32/f16/bf16; out [B, Hq, Tq, D] f32/f16/bf16; lse f32 [B, Hq, Tq] or NULL;
 * kv_lengths i32 [B, Hkv] in [0, T] or NULL (ragged batches).
 */
typedef struct kvs_quant_attention_params {
  float scale; /* finite */
  int32_t causal;
  const kvs_tensor* kv_lengths;
} kvs_quant_attention_params;

kvs_status kvs_quant_attention(const kvs_quant_format* format, const kvs_rope* rope, const kvs_quant_cache* cache,
                               const kvs_tensor* q, const kvs_quant_attention_params* params, const kvs_tensor* out,
                               const kvs_tensor* lse, void* stream);

/* Copies count slices along `axis` from src (at src_start) to dst (at dst_start); all other
 * dimensions equal. Float dtypes convert (one rounding, to nearest even); integer dtypes must
 * match. src and dst may be the same tensor. */
kvs_status kvs_copy_rows(const kvs_tensor* src, int32_t axis, int64_t src_start, const kvs_tensor* dst,
                         int64_t dst_start, int64_t count, void* stream);

/* Weighted k-means over G independent problems (definition in csrc/cpu/kmeans.cc): data f32
 * [G, N, dim], weights f32 [G, N] (NULL: all 1), centroids f32 [G, k, dim], k <= N. dim 1 is
 * solved exactly by sorting and starts from weighted quantiles; dim > 1 starts from seeded
 * k-means++. CPU or CUDA; on CUDA the centroids equal the CPU's: the values are checked, the
 * k-means++ start and all of dim 1 are computed on the host (the call waits for the stream),
 * Lloyd's iterations on the device. */
typedef struct kvs_kmeans_params {
  int64_t k;
  int32_t iterations; /* upper bound on Lloyd iterations (stops early at a fixed point) */
  uint64_t seed;
} kvs_kmeans_params;

kvs_status kvs_kmeans(const kvs_tensor* data, const kvs_tensor* weights, const kvs_kmeans_params* params,
                      const kvs_tensor* centroids, void* stream);

/*
 * Pyramid sparse attention (after PSA; exact definitions in csrc/core/pyramid.h): four
 * stages the TS op pyramidAttention chains. Key blocks of `block` tokens (8..128, power of
 * two), query blocks of `query_block` rows (16..128, power of two); Nk = ceil(Tk / block) <=
 * 4096, Mq = ceil(Tq / query_block); D a multiple of 8 in 8..256. q [B,Hq,Tq,D], k, v
 * [B,Hkv,Tk,D] in one float dtype; queries are the last Tq positions (as kvs_attention).
 * Mask rows are per query head (QHEAD, Hm = Hq) or per KV head (KVHEAD, Hm = Hkv).
 */
typedef enum kvs_pyramid_mask {
  KVS_PYRAMID_MASK_QHEAD = 0, /* one mask per query head */
  KVS_PYRAMID_MASK_KVHEAD = 1 /* one mask per KV head, shared by its query group */
} kvs_pyramid_mask;

typedef enum kvs_pyramid_mode {
  KVS_PYRAMID_TOPK = 0,     /* bounds are fractions of the row's visible blocks (by rank) */
  KVS_PYRAMID_THRESHOLD = 1 /* bounds are fractions of the row's cumulative importance */
} kvs_pyramid_mode;

/*
 * Pool: mean of each run of L = 2, 4, 8 keys (and values) inside every key block; a partial
 * last block pools only its existing tokens (pooled token t at level L holds
 * clamp(Tk - t*L, 0, L) of them). keys, values [B,Hkv,Tk,D]; pooled_keys[i], pooled_values[i]
 * (i = 0, 1, 2 for L = 2, 4, 8) [B,Hkv,Nk*block/L,D] in the keys' dtype. Bit-identical on CPU
 * and CUDA (a stated f32 summation tree).
 */
typedef struct kvs_pyramid_pool_params {
  int64_t block;
} kvs_pyramid_pool_params;

kvs_status kvs_pyramid_pool(const kvs_tensor* keys, const kvs_tensor* values,
                            const kvs_pyramid_pool_params* params,
                            const kvs_tensor* const* pooled_keys,   /* 3 entries */
                            const kvs_tensor* const* pooled_values, /* 3 entries */
                            void* stream);

/*
 * Importance: f32 [B,Hm,Mq,Nk], the block importance of PSA's sampled block-max estimator
 * (each row sums to 1, or is all 0): sample_queries rows of every query block and
 * sample_keys keys of every key block, chosen by a counter-based hash of (seed, b, head,
 * offset), so the result depends on nothing but the inputs. CPU f64, CUDA f32 (tolerance in
 * csrc/core/pyramid.h).
 */
typedef struct kvs_pyramid_importance_params {
  int64_t block, query_block;
  int64_t sample_queries; /* 1..query_block */
  int64_t sample_keys;    /* 1..block */
  uint32_t seed;
  float scale;            /* finite */
  int32_t causal;
  int32_t mask;           /* kvs_pyramid_mask */
} kvs_pyramid_importance_params;

kvs_status kvs_pyramid_importance(const kvs_tensor* q, const kvs_tensor* k,
                                  const kvs_pyramid_importance_params* params,
                                  const kvs_tensor* importance, void* stream);

/*
 * Assign: per mask row, ranks the visible key blocks (forced ones first, then by importance,
 * ties to the lower block) and gives rank ranges levels 1, 2, 4, 8 or 0 (skipped); bounds
 * end the ranges of levels 1, 2, 4, 8 (non-decreasing, in [0, 1]). importance f32
 * [B,Hm,Mq,Nk]; writes level_map u8 [B,Hm,Mq,Nk], lists i32 [B,Hm,Mq,Nk] (assigned block
 * ids grouped by level 1, 2, 4, 8, ascending inside a level, then -1) and counts i32
 * [B,Hm,Mq,4]. Identical on CPU and CUDA for the same importance.
 */
typedef struct kvs_pyramid_assign_params {
  int64_t block, query_block;
  int64_t q_tokens, kv_tokens; /* Tq, Tk: block extents, positions and visibility */
  int32_t causal;
  int32_t mode;                /* kvs_pyramid_mode */
  float bounds[4];
  float min_full_fraction;     /* threshold mode: the first floor(f*N)+1 ranks take level 1; 0: off */
  int32_t force_sink;          /* key block 0 takes level 1 */
  int32_t force_diagonal;      /* key blocks sharing a position with the query block take level 1 */
} kvs_pyramid_assign_params;

kvs_status kvs_pyramid_assign(const kvs_tensor* importance, const kvs_pyramid_assign_params* params,
                              const kvs_tensor* level_map, const kvs_tensor* lists,
                              const kvs_tensor* counts, void* stream);

/*
 * Attend: for each query, online softmax over the pooled tokens of its query block's listed
 * (block, level) pairs, with ln(count) added to each pooled logit (proportional attention;
 * count = L except in a partial last block) and, when causal, a pooled token visible only
 * once its last raw position is <= the query's. q [B,Hq,Tq,D], k, v [B,Hkv,Tk,D], the pooled
 * levels of kvs_pyramid_pool, lists and counts of kvs_pyramid_assign with Hm = Hq or Hkv.
 * out [B,Hq,Tq,D] in f32, f16 or bf16; lse (optional) f32 [B,Hq,Tq]. A query that sees no
 * token gets zeros and lse = -inf. CPU accumulates in f64, CUDA in f32.
 */
typedef struct kvs_pyramid_attend_params {
  int64_t block, query_block;
  float scale; /* finite */
  int32_t causal;
} kvs_pyramid_attend_params;

kvs_status kvs_pyramid_attend(const kvs_tensor* q, const kvs_tensor* k, const kvs_tensor* v,
                              const kvs_tensor* const* pooled_keys,   /* 3 entries */
                              const kvs_tensor* const* pooled_values, /* 3 entries */
                              const kvs_tensor* lists, const kvs_tensor* counts,
                              const kvs_pyramid_attend_params* params, const kvs_tensor* out,
                              const kvs_tensor* lse, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* KVSQUASH_H */
