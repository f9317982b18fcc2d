// Kernels that exercise the kernel emulation itself (tests/kernel_emu/test_kernel_emu.cpp): CUDA
// source, rewritten by transform_cu.py like kernels/cuda/*.cu. Not part of the CUDA build.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/async_copy.cuh"
#include "tests/kernel_emu/selftest_kernels.h"

namespace {

// out[t] = the value lane t receives from each shuffle mode (values are the lane ids + 100).
__global__ void shuffle_kernel(int mode, int operand, int width, int* out) {
  const int lane = static_cast<int>(threadIdx.x);
  int value = lane + 100;
  if (mode == 0) value = __shfl_xor_sync(0xffffffffu, value, operand, width);
  if (mode == 1) value = __shfl_down_sync(0xffffffffu, value, static_cast<unsigned>(operand), width);
  if (mode == 2) value = __shfl_sync(0xffffffffu, value, operand, width);
  out[lane] = value;
}

// Threads >= exit_from leave first; the rest meet twice, the second time at __syncthreads_or(0).
__global__ void syncthreads_or_kernel(int exit_from, int* out) {
  const int t = static_cast<int>(threadIdx.x);
  if (t >= exit_from) {
    (void)__syncthreads_or(1);
    return;
  }
  (void)__syncthreads_or(1);
  __syncthreads();
  const int any = __syncthreads_or(0);
  if (t == 0) *out = any;
}

// Block b writes b + 1 into out[b]; block b > 0 also copies out[b - 1] into seen[b] (a race between
// blocks, which the emulation exposes by running blocks in both orders).
__global__ void block_order_kernel(int* out, int* seen) {
  const int b = static_cast<int>(blockIdx.x);
  if (threadIdx.x != 0) return;
  out[b] = b + 1;
  if (b > 0) seen[b] = out[b - 1];
}

// Thread t writes shared[t]; without the barrier, thread t reads shared[(t + 1) % n] stale.
template <bool kBarrier>
__global__ void __launch_bounds__(64) shared_race_kernel(float* out) {
  __shared__ float values[64];
  const int t = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  values[t] = static_cast<float>(t);
  if (kBarrier) __syncthreads();
  out[t] = values[(t + 1) % n];
}

// Half a warp stops at __syncthreads while the other half waits at __syncwarp: never completes.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16)
    __syncthreads();
  else
    __syncwarp();
  out[threadIdx.x] = 1;
}

// One thread writes out[index], in bounds or not.
__global__ void write_at_kernel(int* out, int index) { out[index] = 1; }

__global__ void dynamic_shared_kernel(int* out) {
  extern __shared__ __align__(16) unsigned char bytes[];
  bytes[threadIdx.x] = 1;
  out[threadIdx.x] = bytes[threadIdx.x];
}

// Block b, thread t (of 64): cp.async of in[t] (16 bytes) into group A and of in[64 + t] into group B
// (or zeros where t >= filled), then per mode:
//   0: wait for both, __syncthreads, out = the neighbour's A and B (t + 1 mod 64): correct everywhere;
//   1: __syncthreads, then wait for both, neighbour's A: its copy may not have landed (late blocks);
//   2: wait<1> (A complete, B maybe not), own A and B: B not yet there in late blocks;
//   3: no wait at all (a device fault at exit); 4: a global destination, 5: a misaligned one, 6: a source
//   past the end of `in` (device faults at issue); 7: a store into A before its wait (a device fault at
//   the wait, in the blocks where copies land late).
// out[b][t] = {A's word 0, B's word 0}.
__global__ void __launch_bounds__(64)
    async_copy_kernel(int mode, int filled, const float4* in, float4* scratch, float2* out) {
  __shared__ float4 a[64];
  __shared__ float4 b[64];
  const int t = static_cast<int>(threadIdx.x), next = (t + 1) % 64;
  float4* a_target = mode == 4 ? scratch + t : a + t;
  if (mode == 5) a_target = reinterpret_cast<float4*>(reinterpret_cast<char*>(a_target) + 4);
  const float4* a_source = mode == 6 ? in + 128 + t : t < filled ? in + t : in;
  bert::cuda::detail::async_copy_16(a_target, a_source, t < filled);
  bert::cuda::detail::async_copy_commit();
  bert::cuda::detail::async_copy_16(b + t, t < filled ? in + 64 + t : in, t < filled);
  bert::cuda::detail::async_copy_commit();
  float2* row = out + static_cast<int64_t>(blockIdx.x) * 64;
  if (mode == 0) {
    bert::cuda::detail::async_copy_wait<0>();
    __syncthreads();
    row[t] = make_float2(a[next].x, b[next].x);
  } else if (mode == 1) {
    __syncthreads();
    bert::cuda::detail::async_copy_wait<0>();
    row[t] = make_float2(a[next].x, 0.0f);
  } else if (mode == 2) {
    bert::cuda::detail::async_copy_wait<1>();
    row[t] = make_float2(a[t].x, b[t].x);
    bert::cuda::detail::async_copy_wait<0>();
  } else if (mode == 7) {
    a[t].x = 1.0f;
    bert::cuda::detail::async_copy_wait<0>();
  }
}

}  // namespace

namespace bert::kernel_emu_selftest {

void shuffle(int mode, int operand, int width, int* out) { shuffle_kernel<<<1, 32>>>(mode, operand, width, out); }

void syncthreads_or_after_exit(int exit_from, int threads, int* out) {
  syncthreads_or_kernel<<<1, threads>>>(exit_from, out);
}

void block_order(int blocks, int* out, int* seen) { block_order_kernel<<<blocks, 32>>>(out, seen); }

void shared_race(bool barrier, int threads, float* out) {
  if (barrier)
    shared_race_kernel<true><<<1, threads>>>(out);
  else
    shared_race_kernel<false><<<1, threads>>>(out);
}

void divergent_barrier(int* out) { divergent_barrier_kernel<<<1, 32>>>(out); }

void write_at(int* out, int index) { write_at_kernel<<<1, 1>>>(out, index); }

void dynamic_shared(size_t bytes, int* out) { dynamic_shared_kernel<<<1, 32, bytes>>>(out); }

void async_copy(int mode, int blocks, int filled, const void* in, void* scratch, float* out) {
  async_copy_kernel<<<blocks, 64>>>(mode, filled, static_cast<const float4*>(in), static_cast<float4*>(scratch),
                                    reinterpret_cast<float2*>(out));
}

}  // namespace bert::kernel_emu_selftest
