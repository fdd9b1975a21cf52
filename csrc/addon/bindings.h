// Each binding file adds its functions to the module's exports.
#pragma once

#include <napi.h>

namespace kvs::addon {

void register_runtime(Napi::Env env, Napi::Object exports);
void register_attention(Napi::Env env, Napi::Object exports);
void register_merge(Napi::Env env, Napi::Object exports);
void register_softmatch(Napi::Env env, Napi::Object exports);
void register_quant(Napi::Env env, Napi::Object exports);
void register_pyramid(Napi::Env env, Napi::Object exports);

}  // namespace kvs::addon
