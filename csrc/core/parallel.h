// The CPU kernels' thread fan-out: splits [0, n) into contiguous ranges over
// kvs_cpu_threads() threads (the calling thread takes the first range).
#pragma once

#include <cstdint>
#include <functional>

namespace kvs {

// body(begin, end) runs once per range; an exception in any range is rethrown here after
// all threads have joined.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& body);

}  // namespace kvs
