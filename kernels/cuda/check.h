// Error checking for the CUDA backend: every CUDA runtime, cuBLAS(Lt) and kernel-launch error
// becomes a bert::CudaError carrying file:line and the library's own words. Host code only; usable
// from .cu and from plain C++ (cuda_runtime.h / cublasLt.h are host headers).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace bert::cuda {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void throw_cuda_error(const char* what, const std::string& detail, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + what + " failed: " + detail);
}

// What a sticky error's message adds: the call that reports it is rarely where the fault was.
inline constexpr const char* kDeviceFaultHint =
    "; the device faulted on work queued before this call, and the process's CUDA context is lost (the "
    "process must start again): if a kernel faulted, CUDA_LAUNCH_BLOCKING=1 or compute-sanitizer names it";

// The errors a faulting kernel leaves behind: the context is lost, and every later runtime call of the
// process returns the same error, wherever it is, so the call that reports one is rarely the culprit.
inline bool is_sticky_error(cudaError_t status) {
  switch (status) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure:
    case cudaErrorECCUncorrectable:
    case cudaErrorContained:
    case cudaErrorTensorMemoryLeak:
    case cudaErrorExternalDevice:
      return true;
    default:
      return false;
  }
}

inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
  if (status == cudaSuccess) return;
  std::string detail = std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")";
  if (is_sticky_error(status)) detail += kDeviceFaultHint;
  throw_cuda_error(what, detail, file, line);
}

// The enumerator's name (cublas_api.h), without a call into the library, which is loaded lazily and
// may be what failed.
inline const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "an unknown cuBLAS status";
}

inline void check_cublas(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  std::string detail = std::string(cublas_status_name(status)) + " (" + std::to_string(static_cast<int>(status)) + ")";
  // The library's kernel did not run, as every launch fails after a device fault.
  if (status == CUBLAS_STATUS_EXECUTION_FAILED)
    detail +=
        "; its kernel did not run, as after a device fault: if an earlier kernel faulted, CUDA_LAUNCH_BLOCKING=1 or "
        "compute-sanitizer names it";
  throw_cuda_error(what, detail, file, line);
}

}  // namespace bert::cuda

#define CUDA_CHECK(call) ::bert::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) ::bert::cuda::check_cublas((call), #call, __FILE__, __LINE__)
// After every <<<...>>> launch: a bad configuration shows up here, not at the next sync.
#define CUDA_CHECK_LAUNCH() ::bert::cuda::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
