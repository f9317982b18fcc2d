// Internal interface of the host emulation of the CUDA runtime (tests/emulated/emulated_runtime.cpp)
// for what executes on the emulated device: the bert::cuda ops emulated through kernels/cpu
// (emulated_ops.cpp) and the real kernels of kernels/cuda run on the host (tests/kernel_emu/).
// Test code uses emulated_cuda.h instead.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace bert::emulated::detail {

// Environment variable `name` as an integer in [low, high]; `fallback` when unset or empty. Anything
// else aborts, naming the variable and what it should hold (`what`).
int env_int(const char* name, int fallback, long low, long high, const char* what);

// Prints "emulated CUDA device fault: <what>" and aborts, as a trap ends a CUDA context.
[[noreturn]] void device_fault(const std::string& what);

// "0x..." for messages.
std::string hex(const void* pointer);

// [p, p + bytes) lies inside one live cudaMalloc allocation.
bool inside_device_allocation(const void* p, size_t bytes);

// [p, p + bytes) lies inside one live cudaMallocHost allocation (device-readable host memory).
bool inside_pinned_allocation(const void* p, size_t bytes);

// Issue-time check of a device argument: `count` elements of T at `p` inside one live allocation;
// a device fault otherwise.
template <class T>
void device_arg(const char* op, const char* name, const T* p, int64_t count) {
  if (count <= 0) return;
  const size_t bytes = static_cast<size_t>(count) * sizeof(T);
  if (p == nullptr) device_fault(std::string(op) + ": " + name + " is null (" + std::to_string(bytes) + " bytes)");
  if (!inside_device_allocation(p, bytes))
    device_fault(std::string(op) + ": " + name + " = " + hex(p) + " + " + std::to_string(bytes) +
                 " bytes is not inside one device allocation (an arena offset or size is wrong, or it is a host "
                 "pointer)");
}
template <class T>
void optional_device_arg(const char* op, const char* name, const T* p, int64_t count) {
  if (p != nullptr) device_arg(op, name, p, count);
}

// Queues `run` on `stream` (0 / cudaStreamLegacy / cudaStreamPerThread: the legacy stream); it runs
// when the host waits for it (emulated_cuda.h: set_deferred). An exception escaping `run` is a
// device fault naming `name`.
void enqueue(cudaStream_t stream, const char* name, std::function<void()> run);

// Runs the work queued on `stream` so far (not counted as a host wait): for an operation that must
// act at issue time on the results of the work before it (emulated_nccl.cpp's all-reduce).
void run_queued(cudaStream_t stream);

// Queues on `stream` work that never finishes (emulated_nccl.cpp: a sum whose peer is gone): the
// stream's later work, and work on other streams that waits for it, never runs; cudaEventQuery says
// cudaErrorNotReady; a blocking host wait for it is a device fault naming `name`.
void enqueue_stall(cudaStream_t stream, const char* name);
// Every queued stall finishes after all (doing nothing), e.g. before a test's model is destroyed.
void release_stalls();

// emulated_cuda.h's fail_launch(): true when this launch of `op` is the one to fail.
bool injected_failure(const char* op);

// Counts a queued bert::cuda op (emulated_cuda.h: Counters::ops).
void count_op();

// What the next cudaGetLastError / cudaPeekAtLastError returns: a rejected kernel launch.
void set_last_error(cudaError_t error);

}  // namespace bert::emulated::detail
