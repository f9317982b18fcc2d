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
};

// Describes CUDA device 0. Never throws.
DeviceInfo cuda_device_info();
// True when the build includes the CUDA backend.
bool built_with_cuda();

}  // namespace bert
