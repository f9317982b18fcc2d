// main() for GPU test executables: without a usable CUDA device the whole executable reports
// "skipped: no CUDA device (<reason>)" and exits 4, which CTest shows as Skipped (never Passed). A
// device this build's kernels do not run on fails the executable with the reason (a build for the
// wrong GPU is an error to mend, not a machine without one).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

#include "kernels/device.h"

int main(int argc, char** argv) {
  const bert::DeviceInfo device = bert::cuda_device_info();
  if (!device.available) {
    std::printf("skipped: no CUDA device (%s)\n", device.reason.c_str());
    return 4;
  }
  std::printf("CUDA device: %s (sm_%d%d)\n", device.name.c_str(), device.sm_major, device.sm_minor);
  if (const std::string why = bert::cuda_check_kernels(); !why.empty()) {
    std::printf("FAILED: %s\n", why.c_str());
    return 1;
  }
  return Catch::Session().run(argc, argv);
}
