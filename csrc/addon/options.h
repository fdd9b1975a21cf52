// Reading op options from the plain objects lib/ops/*.ts pass (already validated there).
#pragma once

#include <napi.h>

#include <string>

#include "addon/errors.h"

namespace kvs::addon {

inline double number_option(Napi::Object options, const char* name) {
  Napi::Value value = options.Get(name);
  if (!value.IsNumber()) throw_error(options.Env(), KVS_E_RANGE, std::string(name) + ": expected a number");
  return value.As<Napi::Number>().DoubleValue();
}

inline Napi::Object options_arg(const Napi::CallbackInfo& info, size_t index, const char* op) {
  if (info.Length() <= index || !info[index].IsObject())
    throw_error(info.Env(), KVS_E_RANGE, std::string(op) + ": expected " + std::to_string(index + 1) + " arguments");
  return info[index].As<Napi::Object>();
}

}  // namespace kvs::addon
