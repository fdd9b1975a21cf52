// The CUDA runtime layer declared in csrc/core/cuda_runtime.h: device probe, device
// selection, the library's streams, and accounted allocations.
//
// Only the runtime API is used (cudart is linked statically; never the driver API), and
// nothing here runs at load time: the first call (usually the probe) initialises CUDA, so a
// machine without a driver can load the addon and learn why CUDA is unavailable.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "core/cuda_runtime.h"
#include "core/error.h"
#include "common.cuh"
#include "kvsquash.h"

namespace kvs::cuda {
namespace {

constexpr int kMaxDevices = static_cast<int>(sizeof(kvs_cuda_info::devices) / sizeof(kvs_cuda_device_info));

// Does nothing; exists so the probe can ask whether this build has code for a device
// (cudaFuncGetAttributes fails with cudaErrorNoKernelImageForDevice when it has not).
__global__ void probe_kernel() {}

std::string device_name(int device) { return "cuda:" + std::to_string(device); }

void copy_text(char* dst, size_t capacity, const std::string& text) {
  std::snprintf(dst, capacity, "%s", text.c_str());
}

// ---- probe ----------------------------------------------------------------------------------

struct ProbeResult {
  kvs_cuda_info info;
  bool usable[kMaxDevices];
  std::string unusable_reason[kMaxDevices];  // per device, "" when usable
};

std::string describe_device_count_error(cudaError_t err) {
  switch (err) {
    case cudaErrorInsufficientDriver:
      return "no NVIDIA driver found (or it is older than this CUDA runtime needs)";
    case cudaErrorNoDevice:
      return "no CUDA device found";
    case cudaErrorStubLibrary:
      return "the CUDA driver library found is a stub, not a real driver";
    case cudaErrorSystemDriverMismatch:
      return "the NVIDIA kernel driver and the user-mode driver library have different versions "
             "(cudaErrorSystemDriverMismatch)";
    case cudaErrorCompatNotSupportedOnDevice:
      return "the CUDA forward-compatibility driver in use does not support this GPU "
             "(cudaErrorCompatNotSupportedOnDevice)";
    case cudaErrorSystemNotReady:
      return "the system is not ready for CUDA yet (is the fabric manager running?) (cudaErrorSystemNotReady)";
    case cudaErrorDevicesUnavailable:
      return "all CUDA devices are busy or unavailable (cudaErrorDevicesUnavailable)";
    default:
      return std::string("CUDA initialisation failed: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
             ")";
  }
}

// Why the current device cannot run our kernels, or "" when it can.
std::string kernel_image_problem(const cudaDeviceProp& prop) {
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, probe_kernel);
  if (err == cudaSuccess) return "";
  (void)cudaGetLastError();
  const std::string arch = "sm_" + std::to_string(prop.major) + std::to_string(prop.minor);
  switch (err) {
    case cudaErrorNoKernelImageForDevice:
      return "no kernel image for " + arch + " in this build";
    case cudaErrorUnsupportedPtxVersion:
      return "the driver is too old to compile this build's PTX for " + arch + " (cudaErrorUnsupportedPtxVersion)";
    default:
      return std::string("cannot run kernels on it: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  }
}

// Never throws for "CUDA not usable": every failure becomes a reason.
void run_probe(ProbeResult& result) {
  kvs_cuda_info& info = result.info;
  std::memset(&info, 0, sizeof(info));
  info.compiled = 1;
  for (int d = 0; d < kMaxDevices; ++d) result.usable[d] = false;

  int version = 0;
  info.runtime_version = cudaRuntimeGetVersion(&version) == cudaSuccess ? version : 0;
  version = 0;
  info.driver_version = cudaDriverGetVersion(&version) == cudaSuccess ? version : 0;
  (void)cudaGetLastError();

  int count = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&count);
  if (count_err != cudaSuccess || count <= 0) {
    (void)cudaGetLastError();
    copy_text(info.reason, sizeof(info.reason),
              describe_device_count_error(count_err != cudaSuccess ? count_err : cudaErrorNoDevice));
    return;
  }

  // Probing a device makes it current on this thread; give the caller its device back.
  int caller_device = 0;
  const bool restore = cudaGetDevice(&caller_device) == cudaSuccess;
  (void)cudaGetLastError();

  info.device_count = std::min(count, kMaxDevices);
  std::string unusable_summary;
  for (int d = 0; d < info.device_count; ++d) {
    kvs_cuda_device_info& device = info.devices[d];
    device.index = d;
    cudaDeviceProp prop;
    std::string problem;
    const cudaError_t prop_err = cudaGetDeviceProperties(&prop, d);
    if (prop_err != cudaSuccess) {
      (void)cudaGetLastError();
      problem = std::string("cannot read its properties: ") + cudaGetErrorName(prop_err);
    } else {
      copy_text(device.name, sizeof(device.name), prop.name);
      device.cc_major = prop.major;
      device.cc_minor = prop.minor;
      device.memory_bytes = prop.totalGlobalMem;
      const cudaError_t set_err = cudaSetDevice(d);
      if (set_err != cudaSuccess) {
        (void)cudaGetLastError();
        problem = std::string("cannot be selected: ") + cudaGetErrorName(set_err) + " (" +
                  cudaGetErrorString(set_err) + ")";
      } else {
        problem = kernel_image_problem(prop);
      }
    }
    result.usable[d] = problem.empty();
    result.unusable_reason[d] = problem;
    if (result.usable[d]) {
      info.available = 1;
    } else {
      unusable_summary += (unusable_summary.empty() ? "" : "; ") + device_name(d) + ": " + problem;
    }
  }
  if (!info.available) copy_text(info.reason, sizeof(info.reason), unusable_summary);

  if (restore) (void)cudaSetDevice(caller_device);
  (void)cudaGetLastError();
}

// The probe runs once per process; every later call gets the cached result. Like the other
// tables here it is never destroyed, so calls made while the process exits stay safe.
const ProbeResult& probe_result() {
  static std::once_flag once;
  static ProbeResult* result = new ProbeResult();
  std::call_once(once, [] { run_probe(*result); });
  return *result;
}

// ---- allocations ----------------------------------------------------------------------------

struct Allocation {
  int device;
  size_t bytes;
};

struct Usage {
  uint64_t live_bytes = 0;
  uint64_t live_allocations = 0;
  uint64_t peak_bytes = 0;

  void add(size_t bytes) {
    live_bytes += bytes;
    live_allocations += 1;
    peak_bytes = std::max(peak_bytes, live_bytes);
  }
  void remove(size_t bytes) {
    live_bytes -= bytes;
    live_allocations -= 1;
  }
};

// Ordered by address so check_pointer can find the allocation containing a pointer.
struct AllocationTable {
  std::mutex mutex;
  std::map<const char*, Allocation> by_address;
  Usage per_device[kMaxDevices];
  Usage all_devices;  // its peak is the peak of the total, not the sum of per-device peaks
};

AllocationTable& allocations() {
  static AllocationTable* table = new AllocationTable();
  return *table;
}

// ---- streams --------------------------------------------------------------------------------

struct LibraryStreams {
  std::mutex mutex;
  cudaStream_t per_device[kMaxDevices] = {};
};

// Never destroyed: at process exit the CUDA runtime may already be torn down.
LibraryStreams& library_streams() {
  static LibraryStreams* streams = new LibraryStreams();
  return *streams;
}

cudaMemcpyKind to_cuda_copy_kind(kvs_copy_kind kind) {
  switch (kind) {
    case KVS_COPY_HOST_TO_DEVICE: return cudaMemcpyHostToDevice;
    case KVS_COPY_DEVICE_TO_HOST: return cudaMemcpyDeviceToHost;
    case KVS_COPY_DEVICE_TO_DEVICE: return cudaMemcpyDeviceToDevice;
  }
  throw Error(KVS_E_RANGE, "memcpy: unknown copy kind " + std::to_string(static_cast<int>(kind)));
}

}  // namespace

// ---- public entries -----------------------------------------------------------------------

void probe(kvs_cuda_info* info) { *info = probe_result().info; }

void use_device(int device) {
  const ProbeResult& probed = probe_result();
  if (!probed.info.available) throw Error(KVS_E_DEVICE, std::string("CUDA is not available: ") + probed.info.reason);
  if (device < 0 || device >= probed.info.device_count)
    throw Error(KVS_E_DEVICE, device_name(device) + " does not exist (kvsquash sees " +
                                  std::to_string(probed.info.device_count) + " CUDA device" +
                                  (probed.info.device_count == 1 ? "" : "s") + ")");
  if (!probed.usable[device])
    throw Error(KVS_E_DEVICE, device_name(device) + " cannot run kvsquash: " + probed.unusable_reason[device]);
  KVS_CUDA_CHECK(cudaSetDevice(device), "selecting " + device_name(device));
}

void* resolve_stream(int device, void* stream) {
  if (stream) return stream;
  use_device(device);  // validates `device` before it indexes the table; the stream is created on it
  LibraryStreams& streams = library_streams();
  std::lock_guard<std::mutex> lock(streams.mutex);
  cudaStream_t& slot = streams.per_device[device];
  if (!slot)
    KVS_CUDA_CHECK(cudaStreamCreateWithFlags(&slot, cudaStreamNonBlocking),
                   "creating the library stream for " + device_name(device));
  return slot;
}

void* malloc(int device, size_t bytes) {
  if (bytes == 0) throw Error(KVS_E_SHAPE, "cannot allocate an empty tensor (0 bytes)");
  use_device(device);
  void* ptr = nullptr;
  KVS_CUDA_CHECK(cudaMalloc(&ptr, bytes),
                 "allocating " + std::to_string(bytes) + " bytes on " + device_name(device));
  AllocationTable& table = allocations();
  std::lock_guard<std::mutex> lock(table.mutex);
  table.by_address[static_cast<const char*>(ptr)] = Allocation{device, bytes};
  table.per_device[device].add(bytes);
  table.all_devices.add(bytes);
  return ptr;
}

void free(int device, void* ptr) {
  if (!ptr) return;
  use_device(device);
  AllocationTable& table = allocations();
  {
    // Claim the entry before cudaFree (which waits for the device), so the table is not
    // locked meanwhile and two threads freeing the same pointer cannot both get past here.
    std::lock_guard<std::mutex> lock(table.mutex);
    const auto it = table.by_address.find(static_cast<const char*>(ptr));
    if (it == table.by_address.end())
      throw Error(KVS_E_RANGE, "free: pointer was not allocated by kvsquash's CUDA allocator (or was already freed)");
    const Allocation allocation = it->second;
    if (allocation.device != device)
      throw Error(KVS_E_DEVICE, "free: pointer belongs to " + device_name(allocation.device) + ", not " +
                                    device_name(device));
    table.by_address.erase(it);
    table.per_device[device].remove(allocation.bytes);
    table.all_devices.remove(allocation.bytes);
  }
  // On failure (typically a sticky error from an earlier kernel) the memory stays counted
  // as freed: the context is unusable anyway.
  KVS_CUDA_CHECK(cudaFree(ptr), "freeing device memory on " + device_name(device));
}

void memcpy(void* dst, const void* src, size_t bytes, kvs_copy_kind kind, int device, void* stream) {
  const cudaMemcpyKind cuda_kind = to_cuda_copy_kind(kind);
  if (bytes == 0) return;
  if (!dst || !src) throw Error(KVS_E_RANGE, "memcpy: NULL source or destination");
  use_device(device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(device, stream));
  KVS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cuda_kind, cuda_stream),
                 "copying " + std::to_string(bytes) + " bytes on " + device_name(device));
}

void memset_zero(void* dst, size_t bytes, int device, void* stream) {
  if (bytes == 0) return;
  if (!dst) throw Error(KVS_E_RANGE, "memset: NULL destination");
  use_device(device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(device, stream));
  KVS_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, cuda_stream),
                 "zeroing " + std::to_string(bytes) + " bytes on " + device_name(device));
}

void synchronize(int device, void* stream) {
  use_device(device);
  const auto cuda_stream = static_cast<cudaStream_t>(resolve_stream(device, stream));
  KVS_CUDA_CHECK(cudaStreamSynchronize(cuda_stream), "waiting for the stream on " + device_name(device));
}

kvs_memory_stats memory_stats(int device) {
  // Pure bookkeeping: never touches CUDA, so it answers zeros on machines without a GPU.
  AllocationTable& table = allocations();
  std::lock_guard<std::mutex> lock(table.mutex);
  const Usage* usage = nullptr;
  if (device < 0) {
    usage = &table.all_devices;
  } else if (device < kMaxDevices) {
    usage = &table.per_device[device];
  }
  if (!usage) return kvs_memory_stats{0, 0, 0};
  return kvs_memory_stats{usage->live_bytes, usage->live_allocations, usage->peak_bytes};
}

void check_pointer(int device, const void* ptr, size_t bytes) {
  use_device(device);
  if (!ptr) throw Error(KVS_E_DEVICE, "pointer is NULL, not device memory of " + device_name(device));
  cudaPointerAttributes attributes;
  const cudaError_t err = cudaPointerGetAttributes(&attributes, ptr);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error(KVS_E_DEVICE, "pointer is not device memory of " + device_name(device) + " (" +
                                  cudaGetErrorName(err) + ")");
  }
  const bool device_memory = attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
  if (!device_memory)
    throw Error(KVS_E_DEVICE, std::string("pointer is ") +
                                  (attributes.type == cudaMemoryTypeHost ? "pinned host memory"
                                                                         : "host memory unknown to CUDA") +
                                  ", not device memory of " + device_name(device));
  if (attributes.device != device)
    throw Error(KVS_E_DEVICE, "pointer is memory of " + device_name(attributes.device) + ", not of " +
                                  device_name(device));

  // The runtime API cannot tell how large the allocation holding a foreign pointer is (that
  // needs the driver's cuMemGetAddressRange), so `bytes` is checked only for memory from
  // our own malloc.
  AllocationTable& table = allocations();
  std::lock_guard<std::mutex> lock(table.mutex);
  auto it = table.by_address.upper_bound(static_cast<const char*>(ptr));
  if (it == table.by_address.begin()) return;
  --it;  // the last allocation starting at or before ptr
  const size_t size = it->second.bytes;
  const size_t offset = reinterpret_cast<uintptr_t>(ptr) - reinterpret_cast<uintptr_t>(it->first);
  if (offset >= size) return;  // not inside one of ours
  if (bytes > size - offset)
    throw Error(KVS_E_RANGE, "pointer has " + std::to_string(size - offset) + " bytes of its allocation left, " +
                                 std::to_string(bytes) + " needed");
}

}  // namespace kvs::cuda
