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
// Whether this build's CUDA kernels run on the calling thread's current device: "" when they do, else
// one line naming the device's sm_XY, the build's BERT_CUDA_GENCODE and how to rebuild for it. Asks the
// runtime for a probe kernel's attributes, which loads (or JIT-compiles from PTX) the build's code for
// that device: a GPU the build has neither SASS nor PTX for fails here instead of at the first launch.
// Makes the device's primary context (select the device first). Never throws.
std::string cuda_check_kernels();
// True when the build includes the CUDA backend.
bool built_with_cuda();

// cuda_check_kernels()'s words (shared with the host emulation of the runtime, tests/emulated).
enum class KernelLoadFailure {
  kNoImage,  // neither SASS nor PTX for the device's architecture
  kPtx,      // PTX the driver cannot compile (too old a driver, JIT disabled)
  kContext,  // anything else: the context itself failed (out of memory, a GPU held in exclusive mode)
};
// The kernels need sm_80 or newer (cp.async, bf16 mma.sync): older GPUs get no rebuild line.
inline constexpr int kMinKernelSm = 80;
inline std::string kernel_load_error(int device, int sm_major, int sm_minor, const std::string& runtime_error,
                                     KernelLoadFailure failure, const std::string& build_gencode) {
  const std::string sm = std::to_string(sm_major) + std::to_string(sm_minor);
  const std::string name = "CUDA device " + std::to_string(device) + " (sm_" + sm + ")";
  if (failure == KernelLoadFailure::kContext) return name + ": no CUDA context: " + runtime_error;
  const std::string head = name + " cannot run this build's kernels: " + runtime_error;
  if (sm_major * 10 + sm_minor < kMinKernelSm)
    return head + "; they need sm_" + std::to_string(kMinKernelSm) + " or newer (cp.async, bf16 tensor cores)";
  const std::string rebuild = "rebuild for this GPU: cmake -B build -DBERT_CUDA_GENCODE=\"-gencode=arch=compute_" + sm +
                              ",code=sm_" + sm + "\", then scripts/build.sh (this build has BERT_CUDA_GENCODE=\"" +
                              build_gencode + "\")";
  if (failure == KernelLoadFailure::kPtx)
    return head +
           " (the driver cannot compile the build's PTX for it); update the NVIDIA driver (and leave PTX JIT "
           "enabled: CUDA_DISABLE_PTX_JIT unset), or " +
           rebuild;
  return head + "; " + rebuild;
}

}  // namespace bert
