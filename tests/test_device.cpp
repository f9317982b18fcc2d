// GPU test (label gpu): runs only where a device exists; gpu_main.cpp skips visibly otherwise.
#include <catch2/catch.hpp>

#include "kernels/device.h"

TEST_CASE("the CUDA device is usable and described") {
  REQUIRE(bert::built_with_cuda());
  const bert::DeviceInfo d = bert::cuda_device_info();
  REQUIRE(d.available);
  CHECK(d.count >= 1);
  CHECK(d.sm_major >= 7);
  CHECK(d.memory_bytes > 0);
  CHECK_FALSE(d.name.empty());
}
