// Which accelerator, if any, this process can use. Without a driver (a build machine, CI),
// cudaGetDeviceCount returns an error rather than 0: any error means "no device".
#pragma once

#include <string>

namespace bert {

struct DeviceInfo {
  bool available = false;
  std::string reason;  // why not, when unavailable
  std::string name;
  int count = 0;
  int sm_major = 0, sm_minor = 0, multiprocessors = 0;
  size_t memory_bytes = 0;
  int ordinal = 0;   // which of the `count` visible devices this describes
  std::string uuid;  // the device's UUID (cudaDeviceProp::uuid) in hex: tells two ranks' GPUs apart
};

// Describes visible CUDA device `ordinal` (0 .. count - 1). Never throws.
DeviceInfo cuda_device_info(int ordinal = 0);
// Makes visible device `ordinal` the calling thread's current device (cudaSetDevice), where the CUDA
// backend then allocates and runs. Returns the runtime's words on failure, "" on success.
std::string cuda_select_device(int ordinal);
// True when the build includes the CUDA backend.
bool built_with_cuda();

}  // namespace bert
