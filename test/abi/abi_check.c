/* Uses the C ABI from plain C, without Node: kvsquash.h must compile as C, and the core plus
 * the CPU kernels must link and run on their own. Prints "ok" on success. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kvsquash.h"

static kvs_tensor cpu_tensor(void* data, int32_t dtype, int rank, const int64_t* shape) {
  kvs_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dtype;
  t.device_type = KVS_CPU;
  t.rank = rank;
  for (int i = 0; i < rank; ++i) t.shape[i] = shape[i];
  return t;
}

int main(void) {
  if (kvs_abi_version() != KVS_ABI_VERSION) return printf("abi version mismatch\n"), 1;
  /* one query, two keys with logits 0 and ln 3 (scale 1): weights 1/4 and 3/4 */
  float q[2] = {1.0f, 0.0f}, k[4] = {0.0f, 0.0f, (float)log(3.0), 0.0f}, v[4] = {4.0f, 0.0f, 0.0f, 8.0f};
  float out[2] = {0}, lse = 0;
  const int64_t qs[4] = {1, 1, 1, 2}, ks[4] = {1, 1, 2, 2}, ls[3] = {1, 1, 1};
  kvs_tensor tq = cpu_tensor(q, KVS_F32, 4, qs), tk = cpu_tensor(k, KVS_F32, 4, ks), tv = cpu_tensor(v, KVS_F32, 4, ks);
  kvs_tensor to = cpu_tensor(out, KVS_F32, 4, qs), tl = cpu_tensor(&lse, KVS_F32, 3, ls);
  kvs_attention_params params;
  memset(&params, 0, sizeof params);
  params.scale = 1.0f;
  kvs_status status = kvs_attention(&tq, &tk, &tv, &params, &to, &tl, NULL);
  if (status != KVS_OK) return printf("attention failed: %s\n", kvs_last_error()), 1;
  if (fabsf(out[0] - 1.0f) > 1e-6f || fabsf(out[1] - 6.0f) > 1e-6f || fabsf(lse - (float)log(4.0)) > 1e-6f)
    return printf("wrong result: %g %g %g\n", out[0], out[1], lse), 1;

  /* errors come back as status + message, never as a crash */
  params.scale = NAN;
  status = kvs_attention(&tq, &tk, &tv, &params, &to, NULL, NULL);
  if (status != KVS_E_RANGE || strstr(kvs_last_error(), "scale") == NULL)
    return printf("NaN scale: %s %s\n", kvs_status_name(status), kvs_last_error()), 1;
  params.scale = 1.0f;
  status = kvs_attention(&tq, NULL, &tv, &params, &to, NULL, NULL);
  if (status != KVS_E_SHAPE) return printf("NULL k: %s\n", kvs_status_name(status)), 1;

  /* pyramid pooling through the arrays of level tensors: rows 0..7 hold their index */
  {
    float rows[64], l2[32], l4[16], l8[8];
    for (int i = 0; i < 64; ++i) rows[i] = (float)(i / 8);
    const int64_t rs[4] = {1, 1, 8, 8}, s2[4] = {1, 1, 4, 8}, s4[4] = {1, 1, 2, 8}, s8[4] = {1, 1, 1, 8};
    kvs_tensor tr = cpu_tensor(rows, KVS_F32, 4, rs);
    kvs_tensor t2 = cpu_tensor(l2, KVS_F32, 4, s2), t4 = cpu_tensor(l4, KVS_F32, 4, s4), t8 = cpu_tensor(l8, KVS_F32, 4, s8);
    const kvs_tensor* levels[3] = {&t2, &t4, &t8};
    kvs_pyramid_pool_params pool;
    memset(&pool, 0, sizeof pool);
    pool.block = 8;
    status = kvs_pyramid_pool(&tr, &tr, &pool, levels, levels, NULL);
    if (status != KVS_OK) return printf("pyramid pool failed: %s\n", kvs_last_error()), 1;
    if (l2[8] != 2.5f || l4[8] != 5.5f || l8[7] != 3.5f) return printf("wrong pooling: %g %g %g\n", l2[8], l4[8], l8[7]), 1;
  }

  kvs_cuda_info info;
  if (kvs_cuda_probe(&info) != KVS_OK) return printf("probe failed\n"), 1;
  if (!info.available && info.reason[0] == '\0') return printf("unavailable CUDA without a reason\n"), 1;
  printf("ok\n");
  return 0;
}
