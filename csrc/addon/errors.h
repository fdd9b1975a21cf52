// Maps kvsquash statuses to JS errors carrying a stable `code` ("E_SHAPE", ...); lib/errors.ts
// turns them into KvsquashError instances.
#pragma once

#include <napi.h>

#include <string>

#include "kvsquash.h"

namespace kvs::addon {

Napi::Error make_error(Napi::Env env, kvs_status status, const std::string& message);
[[noreturn]] void throw_error(Napi::Env env, kvs_status status, const std::string& message);
// Throws the calling thread's kvs_last_error() when status is not KVS_OK.
void throw_if_failed(Napi::Env env, kvs_status status);

}  // namespace kvs::addon
