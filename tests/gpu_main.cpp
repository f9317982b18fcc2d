// main() for GPU test executables: without a usable CUDA device the whole executable reports
// "skipped: no CUDA device (<reason>)" and exits 4, which CTest shows as Skipped (never Passed).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "kernels/device.h"

int main(int argc, char** argv) {
  const bert::DeviceInfo device = bert::cuda_device_info();
  if (!device.available) {
    std::printf("skipped: no CUDA device (%s)\n", device.reason.c_str());
    return 4;
  }
  std::printf("CUDA device: %s (sm_%d%d)\n", device.name.c_str(), device.sm_major, device.sm_minor);
  return Catch::Session().run(argc, argv);
}
