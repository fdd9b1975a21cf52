// Library-wide C ABI entries: version, status names, last error, dtype sizes, CPU threads.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>

#include "core/error.h"
#include "kvsquash.h"

namespace kvs {
namespace {
thread_local std::string last_error;
std::atomic<int> cpu_threads_override{0};

int default_cpu_threads() {
  if (const char* env = std::getenv("KVSQUASH_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return std::min(n, 1024);
  }
  return std::max(1u, std::thread::hardware_concurrency());
}
}  // namespace

void set_last_error(const std::string& message) { last_error = message; }

}  // namespace kvs

extern "C" {

int kvs_abi_version(void) { return KVS_ABI_VERSION; }

const char* kvs_last_error(void) { return kvs::last_error.c_str(); }

const char* kvs_status_name(kvs_status status) {
  switch (status) {
    case KVS_OK: return "OK";
    case KVS_E_SHAPE: return "E_SHAPE";
    case KVS_E_DTYPE: return "E_DTYPE";
    case KVS_E_DEVICE: return "E_DEVICE";
    case KVS_E_DISPOSED: return "E_DISPOSED";
    case KVS_E_RANGE: return "E_RANGE";
    case KVS_E_CUDA: return "E_CUDA";
    case KVS_E_OOM: return "E_OOM";
    case KVS_E_UNSUPPORTED: return "E_UNSUPPORTED";
    case KVS_E_INTERNAL: return "E_INTERNAL";
  }
  return "E_INTERNAL";
}

size_t kvs_dtype_size(kvs_dtype dtype) {
  switch (dtype) {
    case KVS_F32: case KVS_I32: case KVS_U32: return 4;
    case KVS_F16: case KVS_BF16: case KVS_I16: case KVS_U16: return 2;
    case KVS_I8: case KVS_U8: return 1;
  }
  return 0;
}

int kvs_cpu_threads(void) {
  const int n = kvs::cpu_threads_override.load();
  return n > 0 ? n : kvs::default_cpu_threads();
}

void kvs_set_cpu_threads(int n) { kvs::cpu_threads_override.store(n > 0 ? std::min(n, 1024) : 0); }

}  // extern "C"
