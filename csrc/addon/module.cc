// Module init: per-environment data and the export table. Loading touches no CUDA.
#include <napi.h>

#include "addon/addon_data.h"
#include "addon/bindings.h"
#include "addon/device_buffer.h"

namespace kvs::addon {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  Napi::Function device_buffer = DeviceBuffer::Define(env);
  data->device_buffer = Napi::Persistent(device_buffer);
  env.SetInstanceData<AddonData>(data);
  exports.Set("DeviceBuffer", device_buffer);
  register_runtime(env, exports);
  register_attention(env, exports);
  register_merge(env, exports);
  register_softmatch(env, exports);
  register_quant(env, exports);
  register_pyramid(env, exports);
  return exports;
}

}  // namespace kvs::addon

static Napi::Object InitKvsquash(Napi::Env env, Napi::Object exports) {
  return kvs::addon::Init(env, exports);
}

NODE_API_MODULE(kvsquash, InitKvsquash)
