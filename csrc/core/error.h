// Errors inside the library are C++ exceptions carrying a kvs_status; the C ABI entries
// catch them (guarded) and turn them into a status plus a thread-local message.
#pragma once

#include <new>
#include <stdexcept>
#include <string>

#include "kvsquash.h"

namespace kvs {

class Error : public std::runtime_error {
 public:
  Error(kvs_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  kvs_status status() const { return status_; }

 private:
  kvs_status status_;
};

void set_last_error(const std::string& message);

// Runs body, mapping any exception to a status; the message goes to kvs_last_error().
template <class Body>
kvs_status guarded(Body&& body) noexcept {
  try {
    set_last_error("");
    body();
    return KVS_OK;
  } catch (const Error& e) {
    set_last_error(e.what());
    return e.status();
  } catch (const std::bad_alloc&) {
    set_last_error("host allocation failed");
    return KVS_E_OOM;
  } catch (const std::exception& e) {
    set_last_error(std::string("internal error: ") + e.what());
    return KVS_E_INTERNAL;
  } catch (...) {
    set_last_error("internal error: unknown exception");
    return KVS_E_INTERNAL;
  }
}

}  // namespace kvs
