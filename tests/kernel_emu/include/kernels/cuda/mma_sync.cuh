// kernels/cuda/mma_sync.cuh for the kernel emulation (tests/kernel_emu/cuda_emu.h), found before the real
// one on the include path: the same functions, implemented from the register layouts that file's
// purpose block quotes from the PTX ISA, as warp collectives. Each call gathers every lane's operands
// (a warp rendezvous, so all 32 lanes must reach the same call, as .sync.aligned requires) and then
// computes this lane's own results: ldmatrix reads the rows the lanes named, mma.sync forms this lane's
// four outputs of D = A B + C as an fp32 sum over k in order (not the tensor cores' rounding).
// Device faults: an ldmatrix row address that is not 16-byte aligned.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "tests/emulated/emulated_runtime.h"

namespace bert::cuda::detail {

namespace emulated_mma {

constexpr unsigned kFullMask = 0xffffffffu;

// Every lane's `value`, in lane order: one warp rendezvous.
template <class T>
void all_lanes(const T& value, T (&out)[32], const char* point) {
  static_assert(sizeof(T) <= ::emu::kWarpExchangeWords * sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  uint64_t* slots = ::emu::warp_exchange(kFullMask);
  std::memcpy(slots + ::emu::lane() * ::emu::kWarpExchangeWords, &value, sizeof(T));
  ::emu::sync_warp(kFullMask, point);
  for (int l = 0; l < 32; ++l) std::memcpy(&out[l], slots + l * ::emu::kWarpExchangeWords, sizeof(T));
}

inline float bf16_bits_to_float(uint32_t bits16) {
  const uint32_t bits = bits16 << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline uint16_t load_bits(const void* row, int element) {
  uint16_t bits;
  std::memcpy(&bits, static_cast<const unsigned char*>(row) + 2 * element, sizeof(bits));
  return bits;
}

inline void ldmatrix(uint32_t (&r)[4], const void* row, bool transpose, const char* point) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0)
    bert::emulated::detail::device_fault(std::string(point) + ": row address " + bert::emulated::detail::hex(row) +
                                         " is not 16-byte aligned");
  const void* rows[32];
  all_lanes(row, rows, point);
  const int lane = static_cast<int>(::emu::lane()), g = lane / 4, q = lane % 4;
  for (int j = 0; j < 4; ++j) {
    const void* const* matrix = rows + 8 * j;
    const uint32_t low = transpose ? load_bits(matrix[2 * q], g) : load_bits(matrix[g], 2 * q);
    const uint32_t high = transpose ? load_bits(matrix[2 * q + 1], g) : load_bits(matrix[g], 2 * q + 1);
    r[j] = low | (high << 16);
  }
}

struct MmaOperands {
  uint32_t a[4];
  uint32_t b[2];
};

}  // namespace emulated_mma

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { emulated_mma::ldmatrix(r, row, false, "ldmatrix.x4"); }

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  emulated_mma::ldmatrix(r, row, true, "ldmatrix.x4.trans");
}

inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  using emulated_mma::bf16_bits_to_float;
  const emulated_mma::MmaOperands mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  emulated_mma::MmaOperands all[32];
  emulated_mma::all_lanes(mine, all, "mma.sync.m16n8k16");
  // A[row][k]: lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half k % 2.
  const auto a_at = [&all](int row, int k) {
    const uint32_t reg = all[(row % 8) * 4 + (k % 8) / 2].a[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
    return bf16_bits_to_float((reg >> (16 * (k % 2))) & 0xFFFFu);
  };
  // B[k][n]: lane n * 4 + (k % 8) / 2, register (k >= 8), half k % 2.
  const auto b_at = [&all](int k, int n) {
    const uint32_t reg = all[n * 4 + (k % 8) / 2].b[k >= 8 ? 1 : 0];
    return bf16_bits_to_float((reg >> (16 * (k % 2))) & 0xFFFFu);
  };
  const int lane = static_cast<int>(::emu::lane()), g = lane / 4, q = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * q + i % 2;
    float sum = d[i];
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    out[i] = sum;
  }
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

inline uint32_t pack_bf16x2(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  uint32_t bits;
  std::memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

}  // namespace bert::cuda::detail
