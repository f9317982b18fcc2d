// CUDA device discovery. Every runtime error (no driver, driver too old, no device) is reported
// as "no device" with the runtime's own words, never as a crash.
#include <cuda_runtime.h>

#include "kernels/device.h"

namespace bert {

DeviceInfo cuda_device_info_impl() {
  DeviceInfo info;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.reason = std::string("no CUDA device: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error
    return info;
  }
  if (count == 0) {
    info.reason = "no CUDA device: none found";
    return info;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    info.reason = "no CUDA device: cannot read device 0 properties";
    cudaGetLastError();
    return info;
  }
  info.available = true;
  info.count = count;
  info.name = prop.name;
  info.sm_major = prop.major;
  info.sm_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.memory_bytes = prop.totalGlobalMem;
  return info;
}

}  // namespace bert
