#include "kernels/device.h"

namespace bert {

#if defined(BERT_WITH_CUDA)
DeviceInfo cuda_device_info_impl();
DeviceInfo cuda_device_info() { return cuda_device_info_impl(); }
bool built_with_cuda() { return true; }
#else
DeviceInfo cuda_device_info() {
  DeviceInfo info;
  info.reason = "built without CUDA (BERT_CUDA=OFF)";
  return info;
}
bool built_with_cuda() { return false; }
#endif

}  // namespace bert
