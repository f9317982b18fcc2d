// kernels/cuda/async_copy.cuh for the kernel emulation (tests/kernel_emu/cuda_emu.h), found before the
// real one on the include path: the same functions, on ::emu's per-thread copy groups (cuda_emu.cpp).
// The global bytes are read when a copy is issued; the shared bytes are written either then or only at
// the async_copy_wait that completes the copy's group (poison, 0xFF, until then), alternating between
// blocks, so a tile read before its wait and barrier (poison, in the late blocks) and a copy into a
// buffer other warps still read (the new data or poison) both show up in the results. Device faults: a
// store into a late copy's destination before it lands, a destination outside the block's shared
// memory, an address not aligned to the copy size, a source outside device memory, and a thread that
// exits with copies it never waited for.
#pragma once

#include "tests/kernel_emu/cuda_emu.h"

namespace bert::cuda::detail {

inline void async_copy_16(void* shared, const void* global, bool fill) {
  ::emu::async_copy(shared, global, 16, fill ? 16 : 0, "cp.async.cg 16");
}

inline void async_copy_4(void* shared, const void* global, bool fill) {
  ::emu::async_copy(shared, global, 4, fill ? 4 : 0, "cp.async.ca 4");
}

inline void async_copy_commit() { ::emu::async_copy_commit(); }

template <int kNewestInFlight>
void async_copy_wait() {
  static_assert(kNewestInFlight >= 0 && kNewestInFlight <= 7, "cp.async.wait_group takes 0..7");
  ::emu::async_copy_wait(kNewestInFlight);
}

}  // namespace bert::cuda::detail
