// nvcuda::wmma for the kernel emulation (tests/kernel_emu/cuda_emu.h), in place of the toolkit's
// mma.h: bf16 16x16x16 fragments with fp32 accumulators, the subset kernels/cuda/attention.cu uses.
// A fragment is a warp-collective object; here lane 0 of the warp holds the whole tile and does the
// work when it reaches the call, and the other lanes' fragments are never observable (only lane 0
// stores). The calls imply no memory ordering between lanes: shared memory other lanes wrote must be
// published by __syncwarp / __syncthreads first, as on the device, or lane 0 may read it stale. The product is an fp32
// reference (sum over k in order), not the tensor cores' rounding. The documented operand requirements are device
// faults: a 256-bit aligned pointer and ldm a multiple of 16 bytes.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "tests/emulated/emulated_runtime.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has the 16x16x16 shape only");
  static constexpr int num_elements = 256;  // of the tile; a real lane holds 8
  float x[16][16];
};

namespace detail {

// True on the lane that does the work of a collective call.
inline bool collective() { return ::emu::lane() == 0; }

inline void check_operand(const void* p, unsigned ldm, unsigned element_bytes, const char* call) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * element_bytes) % 16 != 0)
    bert::emulated::detail::device_fault(std::string("wmma::") + call + ": pointer " + bert::emulated::detail::hex(p) +
                                         " is not 256-bit aligned or ldm " + std::to_string(ldm) +
                                         " is not a multiple of 16 bytes");
}

}  // namespace detail

template <class Use, class T, class L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, float value) {
  if (!detail::collective()) return;
  for (auto& row : f.x)
    for (float& e : row) e = value;
}

// matrix_a: element (m, k); matrix_b: element (k, n). Row-major: p[r * ldm + c]; column-major: p[c * ldm + r].
template <class Use, class L>
requires(std::is_same_v<Use, matrix_a> ||
         std::is_same_v<Use, matrix_b>) void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, L>& f,
                                                              const __nv_bfloat16* p, unsigned ldm) {
  if (!detail::collective()) return;
  detail::check_operand(p, ldm, 2, "load_matrix_sync");
  constexpr bool row = std::is_same_v<L, row_major>;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r][c] = __bfloat162float(row ? p[r * ldm + c] : p[c * ldm + r]);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t l) {
  if (!detail::collective()) return;
  detail::check_operand(p, ldm, 4, "load_matrix_sync");
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) f.x[m][n] = l == mem_row_major ? p[m * ldm + n] : p[n * ldm + m];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  if (!detail::collective()) return;
  detail::check_operand(p, ldm, 4, "store_matrix_sync");
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) (l == mem_row_major ? p[m * ldm + n] : p[n * ldm + m]) = f.x[m][n];
}

template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  if (!detail::collective()) return;
  float out[16][16];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float sum = c.x[m][n];
      for (int k = 0; k < 16; ++k) sum += a.x[m][k] * b.x[k][n];
      out[m][n] = sum;
    }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) d.x[m][n] = out[m][n];
}

}  // namespace nvcuda::wmma
