// Context of the CUDA backend (kernels/cuda/ops_cuda.h): the stream every op runs on, the cuBLASLt
// handle and its workspace, the device's multiprocessor count and SM version, and a growable device
// scratch region. Built once per caller; ops only read it (scratch() may grow it).
//
// Costs: construction is ~1 ms of driver work (stream, cuBLASLt handle, one 32 MiB cudaMalloc);
// scratch() is a pointer return once warm, and a stream sync + cudaFree + cudaMalloc when it grows.
// The destructor never throws: it waits for the stream, then releases everything it owns, and
// ignores errors (a destructor during unwinding has nobody to report to).
#include <cuda_runtime.h>

#include "kernels/cuda/cublaslt_library.h"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

// Scratch grows in steps of this many bytes, so a sequence of slightly larger requests does not
// reallocate each time. A multiple of 256, so every region cudaMalloc returns stays 256-aligned.
constexpr size_t kScratchGranularityBytes = size_t{1} << 20;

// Releases what the constructor made so far (also on its failure path). Never throws.
void release_handles(cudaStream_t stream, bool owns_stream, cublasLtHandle_t cublaslt) noexcept {
  if (stream != nullptr) cudaStreamSynchronize(stream);
  if (cublaslt != nullptr) cublaslt_api().cublasLtDestroy(cublaslt);
  if (owns_stream && stream != nullptr) cudaStreamDestroy(stream);
  cudaGetLastError();  // leave no sticky error behind for the next caller
}

}  // namespace

Context::Context(cudaStream_t stream, size_t gemm_workspace_bytes) : stream_(stream) {
  try {
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    int major = 0, minor = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    sm_version_ = major * 10 + minor;
    if (stream_ == nullptr) {
      // Non-blocking: the legacy default stream must not serialise our work with other libraries'.
      CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      owns_stream_ = true;
    }
    CUBLAS_CHECK(cublaslt_api().cublasLtCreate(&cublaslt_));
    gemm_workspace_.resize(gemm_workspace_bytes);
  } catch (...) {
    gemm_workspace_.reset();
    release_handles(stream_, owns_stream_, cublaslt_);
    throw;
  }
}

Context::~Context() {
  gemm_plans_.reset();  // host-side cuBLASLt descriptors; independent of the stream's progress
  // The buffers below may still be read by queued kernels: wait before they are freed.
  release_handles(stream_, owns_stream_, cublaslt_);
  scratch_.reset();
  gemm_workspace_.reset();
}

void* Context::scratch(size_t bytes) {
  if (bytes > scratch_.size()) {
    const size_t grown = (bytes + kScratchGranularityBytes - 1) / kScratchGranularityBytes * kScratchGranularityBytes;
    // Work queued earlier may still use the old region (it was valid until this call).
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    scratch_.resize(grown);
  }
  return scratch_.data();
}

}  // namespace bert::cuda
