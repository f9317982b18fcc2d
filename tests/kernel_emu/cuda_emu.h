// Host execution of CUDA C++ kernels, for tests without a GPU (tests/kernel_emu/README.md). Force-
// included (-include) into each kernels/cuda/*.cu after tests/kernel_emu/transform_cu.py rewrote its
// launches (`k<<<grid, block, smem, stream>>>(args)` -> `::emu::launch("k", key, <a generic lambda
// calling k>, grid, block, smem, stream, args)`) and its __shared__ declarations (-> one object per
// block, ::emu::block_shared), then compiled by the host C++ compiler.
//
// Execution model (cuda_emu.cpp): a launch is queued on its stream like any other stream work
// (tests/emulated/emulated_runtime.cpp) and, when it runs, each block runs to completion before the
// next; every CUDA thread of a block is a fiber with its own stack, switched cooperatively at
// __syncthreads, __syncwarp and warp shuffles (the points where CUDA threads may exchange data). A
// warp runs on past its warp barriers up to the next __syncthreads before the next warp starts, and
// the order of warps and of lanes flips at every barrier and from block to block, so a read of
// another thread's write that no barrier orders sees the stale value in one of the two orders.
//
// What it checks beyond the numbers: shared memory (static and dynamic) starts poisoned (0xFF bytes:
// NaN in bf16/fp32) in every block; a barrier some threads never reach (deadlock) and a warp
// collective with a lane that has exited are device faults; launch configurations are validated as
// the device does (threads per block, grid limits, dynamic shared memory above 48 KiB without
// cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize), above the H100/H200 227 KiB
// with it), and a rejected launch is what the next cudaGetLastError returns; __trap is a device fault.
// Also: lanes (threads) meeting at different collectives (a __syncwarp and a shuffle, __syncthreads
// and __syncthreads_or) are a device fault; a launch above the kernel's __launch_bounds__ is one; a
// pointer argument that is not device or cudaMallocHost memory is one; static __shared__ above 48 KiB
// and static + dynamic above the kernel's limit are. Blocks run in increasing order in one launch and
// decreasing in the next.
// What it does not model: warp-synchronous execution without __syncwarp (each lane runs alone between
// sync points, as Volta+ allows); a shuffle orders memory here (a warp rendezvous), which CUDA does
// not promise; memory-model subtleties beyond barrier order; FMA contraction (nvcc contracts a*b + c by
// default, the emulation is built with -ffp-contract=off); tensor-core rounding (wmma is an fp32
// reference GEMM); occupancy; performance; float atomics (integer atomicAdd is provided).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace emu {

// ---- the running thread -----------------------------------------------------------------------------
struct ThreadCoords {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern constinit thread_local ThreadCoords coords;  // of the fiber now running on this host thread

// ---- synchronisation points (cuda_emu.cpp) -------------------------------------------------------------
void sync_block();                                 // __syncthreads
int sync_block_or(int predicate);                  // __syncthreads_or
void sync_warp(unsigned mask, const char* point);  // __syncwarp and the rendezvous of every shuffle
// This warp's exchange for the collective now: kWarpExchangeWords words per lane, lane l's at
// [l * kWarpExchangeWords] (two buffers alternate, so a lane already at the next collective cannot
// overwrite what the others still read of this one).
constexpr size_t kWarpExchangeWords = 4;
uint64_t* warp_exchange(unsigned mask);
[[noreturn]] void trap();  // __trap: a device fault naming the kernel and thread
// cp.async (include/kernels/cuda/async_copy.cuh): one copy of copy_bytes (4, 8 or 16) into this
// block's shared memory, src_bytes of them read from global memory now and the rest zeros; it lands
// at once in "early" blocks and only at the wait that completes its group in "late" ones (alternating
// in pairs of blocks), its destination 0xFF bytes (NaN) until then. commit closes this thread's open
// copies into a group; wait completes all of this thread's committed groups but the newest
// `newest_in_flight`. Device faults: a late copy whose destination was written before it landed, and
// a thread that exits with copies not waited for.
void async_copy(void* shared, const void* global, unsigned copy_bytes, unsigned src_bytes, const char* point);
void async_copy_commit();
void async_copy_wait(unsigned newest_in_flight);
[[noreturn]] void launch_bounds_exceeded(unsigned max_threads);
[[noreturn]] void host_pointer_argument(const char* kernel, size_t index, const void* pointer);
bool device_accessible(const void* pointer);  // in a live cudaMalloc or cudaMallocHost allocation

// transform_cu.py puts this at the top of every kernel declared with __launch_bounds__(N).
inline void check_launch_bounds(unsigned max_threads) {
  if (coords.block_dim.x * coords.block_dim.y * coords.block_dim.z > max_threads) launch_bounds_exceeded(max_threads);
}
unsigned lane();                                                      // threadIdx linearised % 32
void* block_shared(const void* key, size_t bytes, size_t alignment);  // one object per block and key
void* dynamic_shared();                                               // extern __shared__: this block's launch bytes

template <class T, class Key>
T& block_shared(Key) {
  static const char key = 0;  // one per (T, declaration): Key is the declaration's own lambda type
  return *static_cast<T*>(block_shared(&key, sizeof(T), alignof(T)));
}

// A value of up to 64 bits exchanged within the warp: every lane publishes its own, then reads lane
// `source` (its own value when source is outside the warp).
template <class T>
T shuffle(unsigned mask, T value, int source, const char* point) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "shuffles of up to 64 bits");
  uint64_t* slots = warp_exchange(mask);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  slots[lane() * kWarpExchangeWords] = bits;
  sync_warp(mask, point);
  if (source < 0 || source >= 32) return value;
  T out;
  std::memcpy(&out, &slots[source * kWarpExchangeWords], sizeof(T));
  return out;
}

// ---- launches -------------------------------------------------------------------------------------------
inline dim3 to_dim3(dim3 d) { return d; }
template <class I>
requires std::is_integral_v<I> dim3 to_dim3(I n) { return dim3(static_cast<unsigned>(n)); }

// Checks the configuration as the device would; false (and the error recorded for cudaGetLastError)
// when the launch is rejected.
// *shared_limit: the static + dynamic shared bytes a block of this kernel may have.
bool accept_launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                   size_t* shared_limit);
// The kernels launched (accepted launches, in issue order, named as in the source: "kernel<T>")
// since the last call; the first call starts the record and returns nothing. For tests of which
// kernel an op chose (tests/gpu/cuda_test_util.h: launched_kernels).
std::vector<std::string> take_launched_kernels();
// tests/kernel_emu/cublaslt_emu.cpp: true makes cublasLtMatmul decline the bias-gradient epilogue
// (CUBLASLT_EPILOGUE_BGRADB) that its heuristic still offers, as a library may; for gemm.cu's fallback.
void refuse_bias_gradient_epilogue_at_matmul(bool refuse);
// The same for every algorithm of id `id` (the heuristic's rank; -1: none), whatever its epilogue.
void refuse_algorithm_at_matmul(int id);

// Queues the grid on `stream`: body() runs once per CUDA thread.
void queue_grid(const char* name, dim3 grid, dim3 block, size_t dynamic_shared_bytes, size_t shared_limit,
                cudaStream_t stream, std::function<void()> body);

// `call(args...)` is the kernel with these arguments (transform_cu.py: a generic lambda, so template
// arguments are deduced as the launch syntax deduces them); `key` is the kernel's address for its
// cudaFuncSetAttribute limit, or nullptr when the launch has no dynamic shared memory.
template <class Call, class Grid, class Block, class... Args>
void launch(const char* name, const void* key, Call call, Grid grid, Block block, size_t dynamic_shared_bytes,
            cudaStream_t stream, Args&&... args) {
  const dim3 g = to_dim3(grid), b = to_dim3(block);
  size_t shared_limit = 0;
  if (!accept_launch(name, key, g, b, dynamic_shared_bytes, &shared_limit)) return;
  // Pointer arguments must be memory the device can reach (pointers inside argument structs are not
  // seen here; their accesses still fault under AddressSanitizer when they leave an allocation).
  size_t index = 0;
  auto check_pointer = [&](const auto& arg) {
    using A = std::decay_t<decltype(arg)>;
    if constexpr (std::is_pointer_v<A>)
      if (arg != nullptr && !device_accessible(arg)) host_pointer_argument(name, index, arg);
    ++index;
  };
  (check_pointer(args), ...);
  // The arguments are copied now, as a launch does; each thread's call converts them to the
  // parameter types.
  auto bound = std::make_shared<std::tuple<std::decay_t<Args>...>>(std::forward<Args>(args)...);
  queue_grid(name, g, b, dynamic_shared_bytes, shared_limit, stream, [call, bound] { std::apply(call, *bound); });
}

}  // namespace emu

// ---- the CUDA C++ surface the kernels use -----------------------------------------------------------------
#define threadIdx (::emu::coords.thread_idx)
#define blockIdx (::emu::coords.block_idx)
#define blockDim (::emu::coords.block_dim)
#define gridDim (::emu::coords.grid_dim)

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Every __shared__ declaration must have been rewritten by transform_cu.py; one it missed would be a
// per-thread variable here, so it does not compile.
#define __shared__ static_assert(false, "__shared__ declaration not rewritten by tests/kernel_emu/transform_cu.py");

// The runtime's kernel-attribute call with a kernel (nvcc's template overload).
template <class... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attribute, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}

inline void __syncthreads() { ::emu::sync_block(); }
inline int __syncthreads_or(int predicate) { return ::emu::sync_block_or(predicate); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::sync_warp(mask, "__syncwarp"); }
[[noreturn]] inline void __trap() { ::emu::trap(); }

// The source lanes of the PTX shfl.sync modes, for a power-of-two width <= 32 (width - 1 selects the
// segment): bfly reads lane ^ mask, which may lie in an earlier segment but not a later one; down reads
// lane + delta within the segment; idx reads (source % width) of the segment. Out of range: the lane's
// own value.
inline int shuffle_width_check(int width) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) ::emu::trap();
  return width;
}
template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  const int me = static_cast<int>(::emu::lane()), last = me | (shuffle_width_check(width) - 1);
  const int source = me ^ (lane_mask & 31);
  return ::emu::shuffle(mask, value, source <= last ? source : me, "__shfl_xor_sync");
}
template <class T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int me = static_cast<int>(::emu::lane()), last = me | (shuffle_width_check(width) - 1);
  const int source = me + static_cast<int>(delta & 31u);
  return ::emu::shuffle(mask, value, source <= last ? source : me, "__shfl_down_sync");
}
template <class T>
T __shfl_sync(unsigned mask, T value, int source_lane, int width = 32) {
  const int me = static_cast<int>(::emu::lane());
  const int base = me & ~(shuffle_width_check(width) - 1);
  return ::emu::shuffle(mask, value, base + (source_lane & (width - 1)), "__shfl_sync");
}

// IEEE round-to-nearest arithmetic that the device compiler must not contract into FMAs; the
// emulation is compiled with -ffp-contract=off, so the plain operators are exactly these.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline float __fdividef(float a, float b) { return a / b; }  // the device's is approximate (2 ulp)
using std::isfinite;
using std::max;
using std::min;

// Integer global atomics (bench/bench_kernels.cu's non-finite count; the kernels of kernels/cuda have
// none). Threads switch only at barriers and shuffles, so a read-modify-write is never interleaved
// with another thread's; the builtin keeps it atomic if launches ever run on several host threads.
template <class T, class = std::enable_if_t<std::is_integral_v<T>>>
T atomicAdd(T* address, T value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
