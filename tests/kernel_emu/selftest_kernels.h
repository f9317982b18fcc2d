// Launchers of the kernel emulation's own test kernels (selftest_kernels.cu). Each queues one launch
// on the legacy stream; pointers are device memory.
#pragma once

#include <cstddef>

namespace bert::kernel_emu_selftest {

// mode 0: __shfl_xor_sync, 1: __shfl_down_sync, 2: __shfl_sync; out[32].
void shuffle(int mode, int operand, int width, int* out);
// *out = the block's final __syncthreads_or(0), after threads >= exit_from left early.
void syncthreads_or_after_exit(int exit_from, int threads, int* out);
void block_order(int blocks, int* out, int* seen);
// out[t] = the value thread (t + 1) % threads wrote to shared memory (with or without a barrier);
// declared __launch_bounds__(64).
void shared_race(bool barrier, int threads, float* out);
void divergent_barrier(int* out);
void dynamic_shared(size_t bytes, int* out);
// out[index] = 1 by one thread (index may lie outside out's allocation).
void write_at(int* out, int index);
// cp.async in `blocks` blocks of 64 threads (selftest_kernels.cu's async_copy_kernel: modes 0-7): in is
// 128 float4, scratch 64 float4, out [blocks][64][2] floats.
void async_copy(int mode, int blocks, int filled, const void* in, void* scratch, float* out);

}  // namespace bert::kernel_emu_selftest
