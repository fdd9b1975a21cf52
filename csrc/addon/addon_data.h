// Per-environment state (main thread and each worker_threads worker get their own).
#pragma once

#include <napi.h>

namespace kvs::addon {

struct AddonData {
  Napi::FunctionReference device_buffer;
};

}  // namespace kvs::addon
