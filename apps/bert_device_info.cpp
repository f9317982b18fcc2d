// bert_device_info: prints the CUDA device this build would train on, or why there is none.
// Exit code 0 with a device this build's kernels run on, 3 without a device (scripts use it to decide
// whether to run GPU steps), 5 with a device the build's kernels cannot load on (no code for it, or no
// context: the line says why and, where a rebuild helps, how).
#include <cstdio>
#include <string>

#include "kernels/device.h"

int main() {
  const bert::DeviceInfo d = bert::cuda_device_info();
  if (!d.available) {
    std::printf("%s\n", d.reason.c_str());
    return 3;
  }
  std::printf("%s (sm_%d%d, %d SMs, %.1f GiB), %d device(s)\n", d.name.c_str(), d.sm_major, d.sm_minor,
              d.multiprocessors, static_cast<double>(d.memory_bytes) / (1 << 30), d.count);
  if (const std::string why = bert::cuda_check_kernels(); !why.empty()) {
    std::printf("%s\n", why.c_str());
    return 5;
  }
  return 0;
}
