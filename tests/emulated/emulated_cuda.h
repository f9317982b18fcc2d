// Test-side controls of the host-only CUDA emulation (tests/emulated/emulated_runtime.cpp): what the
// host has asked of the emulated device so far (syncs, copies, queued work), fault injection, and the
// execution mode. Only for executables linked with emulated_runtime.cpp instead of the CUDA runtime
// (test_cuda_model_emulated, test_cuda_trainer_emulated, test_cuda_kernels_emulated).
#pragma once

#include <cstdint>
#include <string>

namespace bert::emulated {

// Running totals since the process started.
struct Counters {
  int64_t ops = 0;                             // bert::cuda ops queued (one per call that launches work)
  int64_t stream_syncs = 0;                    // cudaStreamSynchronize (Context::synchronize)
  int64_t device_syncs = 0;                    // cudaDeviceSynchronize (DeviceBuffer::upload/download, ...)
  int64_t event_syncs = 0;                     // cudaEventSynchronize
  int64_t copies_to_device = 0;                // cudaMemcpyAsync host -> device
  int64_t copies_to_device_from_pageable = 0;  // ... whose source is not cudaMallocHost memory
  int64_t device_allocations = 0;              // cudaMalloc
};
Counters counters();

// Stream work (ops, cudaMemcpyAsync, cudaMemsetAsync) queued and not yet executed, all streams.
int64_t pending_operations();

// The (skip + 1)-th launch of `op` from now fails as a rejected launch does: the call queues nothing
// and throws bert::cuda::CudaError (a bert::cuda op, e.g. "gather_rows"), or returns
// cudaErrorLaunchFailure, which CUDA_CHECK turns into a CudaError ("cudaMemsetAsync",
// "cudaMemcpyAsync": any direction, "cudaMemcpyAsync(HostToDevice)", "cudaMemcpyAsync(DeviceToHost)",
// "cudaMemcpy2DAsync").
// Cleared when it fires, or by clear_injected_failure(). One injection at a time.
void fail_launch(const std::string& op, int skip = 0);
void clear_injected_failure();

// Deferred execution (the default): stream work runs only when the host waits for it. false: every
// stream operation runs when issued, which hides ordering bugs; for telling an ordering bug from a
// numerical one while debugging, not for tests.
void set_deferred(bool deferred);

}  // namespace bert::emulated
