#include "core/parallel.h"

#include <algorithm>
#include <exception>
#include <thread>
#include <vector>

#include "kvsquash.h"

namespace kvs {

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  const int64_t threads = std::min<int64_t>(kvs_cpu_threads(), n);
  if (threads <= 1) {
    body(0, n);
    return;
  }
  std::vector<std::exception_ptr> errors(threads);
  auto run = [&](int64_t t) {
    try {
      body(n * t / threads, n * (t + 1) / threads);
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  int64_t next = 1;
  try {
    for (; next < threads; ++next) pool.emplace_back(run, next);
  } catch (...) {
    // could not start a thread: the caller's thread runs the ranges that have none
  }
  for (int64_t t = next; t < threads; ++t) run(t);
  run(0);
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace kvs
