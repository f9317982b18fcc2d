#include "kernels/device.h"

namespace bert {

#if defined(BERT_WITH_CUDA)
DeviceInfo cuda_device_info_impl(int ordinal);
std::string cuda_select_device_impl(int ordinal);
std::string cuda_check_kernels_impl();
DeviceInfo cuda_device_info(int ordinal) { return cuda_device_info_impl(ordinal); }
std::string cuda_select_device(int ordinal) { return cuda_select_device_impl(ordinal); }
std::string cuda_check_kernels() { return cuda_check_kernels_impl(); }
bool built_with_cuda() { return true; }
#else
DeviceInfo cuda_device_info(int ordinal) {
  DeviceInfo info;
  info.ordinal = ordinal;
  info.reason = "built without CUDA (BERT_CUDA=OFF)";
  return info;
}
std::string cuda_select_device(int) { return "built without CUDA (BERT_CUDA=OFF)"; }
std::string cuda_check_kernels() { return "built without CUDA (BERT_CUDA=OFF)"; }
bool built_with_cuda() { return false; }
#endif

}  // namespace bert
