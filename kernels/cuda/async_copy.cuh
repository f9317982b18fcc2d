// cp.async (sm_80+): copies from global to shared memory that bypass the registers and complete in the
// background, so a block can fetch its next tile while it computes on the current one (FlashAttention-2's
// K/V double buffering). Device code, .cu files only. Semantics (PTX ISA, "cp.async",
// "cp.async.commit_group", "cp.async.wait_group"):
//   - async_copy_16 / async_copy_4 issue one copy of 16 / 4 bytes; both addresses aligned to that size.
//     With fill == false no global byte is read and the shared bytes become zeros (src-size 0: PTX's
//     zero fill), so tiles past the end of a sequence need no second code path. `global` must still be
//     a valid global address (callers pass the start of the rows); it is converted from generic.
//   - async_copy_commit closes this thread's copies issued since the last commit into one group.
//   - async_copy_wait<N> waits until at most the N newest committed groups of *this thread* are still in
//     flight. The data is then visible to this thread only: other threads of the block see it after a
//     barrier that follows every copying thread's wait (wait, then __syncthreads, is the publish).
//   - Until a copy completes its shared bytes are undefined, and a write to them (another copy into a
//     buffer still being read, say) races with it: the buffer a copy targets must be free before the
//     copy is issued (a barrier after the last reads), as for an ordinary store.
// The kernel emulation (tests/kernel_emu/include/kernels/cuda/async_copy.cuh) implements the same
// functions with these rules checked: a copy lands either when it is issued or only at the wait that
// completes it (alternating between blocks; poison until then), and a store into an in-flight copy's
// destination, a thread that exits with copies not waited for, a destination outside the block's
// shared memory, a source outside device memory and a misaligned address are device faults.
#pragma once

#include <cstdint>

namespace bert::cuda::detail {

__device__ __forceinline__ void async_copy_16(void* shared, const void* global, bool fill) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(__cvta_generic_to_global(global)),
               "r"(fill ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void async_copy_4(void* shared, const void* global, bool fill) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(address), "l"(__cvta_generic_to_global(global)),
               "r"(fill ? 4 : 0)
               : "memory");
}

__device__ __forceinline__ void async_copy_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int kNewestInFlight>
__device__ __forceinline__ void async_copy_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kNewestInFlight) : "memory");
}

}  // namespace bert::cuda::detail
