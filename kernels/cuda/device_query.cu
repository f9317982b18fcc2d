// CUDA device discovery. Every runtime error (no driver, driver too old, no device) is reported
// as "no device" with the runtime's own words, never as a crash.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "kernels/device.h"

namespace bert {

DeviceInfo cuda_device_info_impl(int ordinal) {
  DeviceInfo info;
  info.ordinal = ordinal;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.reason = std::string("no CUDA device: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error
    return info;
  }
  info.count = count;
  if (count == 0) {
    info.reason = "no CUDA device: none found";
    return info;
  }
  if (ordinal < 0 || ordinal >= count) {
    info.reason = "no CUDA device " + std::to_string(ordinal) + ": " + std::to_string(count) + " visible";
    return info;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, ordinal) != cudaSuccess) {
    info.reason = "no CUDA device: cannot read device " + std::to_string(ordinal) + " properties";
    cudaGetLastError();
    return info;
  }
  info.available = true;
  info.name = prop.name;
  info.sm_major = prop.major;
  info.sm_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.memory_bytes = prop.totalGlobalMem;
  for (const char byte : prop.uuid.bytes) {
    char hex[3];
    std::snprintf(hex, sizeof hex, "%02x", static_cast<unsigned char>(byte));
    info.uuid += hex;
  }
  return info;
}

std::string cuda_select_device_impl(int ordinal) {
  const cudaError_t err = cudaSetDevice(ordinal);
  if (err == cudaSuccess) return "";
  cudaGetLastError();
  return std::string("cudaSetDevice(") + std::to_string(ordinal) + "): " + cudaGetErrorString(err);
}

}  // namespace bert
