#include "addon/errors.h"

namespace kvs::addon {

Napi::Error make_error(Napi::Env env, kvs_status status, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, kvs_status_name(status)));
  return error;
}

void throw_error(Napi::Env env, kvs_status status, const std::string& message) {
  throw make_error(env, status, message);
}

void throw_if_failed(Napi::Env env, kvs_status status) {
  if (status != KVS_OK) throw_error(env, status, kvs_last_error());
}

}  // namespace kvs::addon
