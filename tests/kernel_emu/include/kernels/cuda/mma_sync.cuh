// kernels/cuda/mma_sync.cuh for the kernel emulation (tests/kernel_emu/cuda_emu.h), found before the real
// one on the include path: the same functions, implemented from the register layouts that file's
// purpose block quotes from the PTX ISA, as warp collectives. Each call publishes this lane's operands
// (a warp rendezvous, so all 32 lanes must reach the same call, as .sync.aligned requires) and then
// computes this lane's own results from the lanes that hold what they need: ldmatrix reads the rows
// the lanes named, mma.sync forms this lane's four outputs of D = A B + C as an fp32 sum over k in
// order (not the tensor cores' rounding).
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

// Publishes this lane's `value` and meets the other lanes (one warp rendezvous); then lane_value
// reads any lane's. Each lane reads only the lanes its results need.
template <class T>
const uint64_t* publish(const T& value, const char* point) {
  static_assert(sizeof(T) <= ::emu::kWarpExchangeWords * sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  uint64_t* slots = ::emu::warp_exchange(kFullMask);
  std::memcpy(slots + ::emu::lane() * ::emu::kWarpExchangeWords, &value, sizeof(T));
  ::emu::sync_warp(kFullMask, point);
  return slots;
}

template <class T>
T lane_value(const uint64_t* slots, int lane) {
  T value;
  std::memcpy(&value, slots + lane * ::emu::kWarpExchangeWords, sizeof(T));
  return value;
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
  const uint64_t* slots = publish(row, point);
  const int lane = static_cast<int>(::emu::lane()), g = lane / 4, q = lane % 4;
  const auto row_of = [slots](int j, int i) { return lane_value<const void*>(slots, 8 * j + i); };
  for (int j = 0; j < 4; ++j) {
    const uint32_t low = transpose ? load_bits(row_of(j, 2 * q), g) : load_bits(row_of(j, g), 2 * q);
    const uint32_t high = transpose ? load_bits(row_of(j, 2 * q + 1), g) : load_bits(row_of(j, g), 2 * q + 1);
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
  using emulated_mma::MmaOperands;
  const uint64_t* slots = emulated_mma::publish(MmaOperands{{a[0], a[1], a[2], a[3]}, {b0, b1}}, "mma.sync.m16n8k16");
  const int lane = static_cast<int>(::emu::lane()), g = lane / 4, q = lane % 4;
  // This lane's rows of A, g and g + 8: A[row][k] is in lane (row % 8) * 4 + (k % 8) / 2, register
  // (row >= 8) + 2 (k >= 8), half k % 2. Its columns of B, 2q and 2q + 1: B[k][n] is in lane
  // n * 4 + (k % 8) / 2, register (k >= 8), half k % 2.
  float a_rows[2][16], b_cols[2][16];
  for (int half = 0; half < 2; ++half)
    for (int k = 0; k < 16; k += 2) {
      const uint32_t a_reg =
          emulated_mma::lane_value<MmaOperands>(slots, g * 4 + (k % 8) / 2).a[half + (k >= 8 ? 2 : 0)];
      a_rows[half][k] = bf16_bits_to_float(a_reg & 0xFFFFu);
      a_rows[half][k + 1] = bf16_bits_to_float(a_reg >> 16);
      const uint32_t b_reg =
          emulated_mma::lane_value<MmaOperands>(slots, (2 * q + half) * 4 + (k % 8) / 2).b[k >= 8 ? 1 : 0];
      b_cols[half][k] = bf16_bits_to_float(b_reg & 0xFFFFu);
      b_cols[half][k + 1] = bf16_bits_to_float(b_reg >> 16);
    }
  // d[i] = D[g + 8 (i / 2)][2q + i % 2], a sum over k in order.
  for (int i = 0; i < 4; ++i) {
    float sum = d[i];
    for (int k = 0; k < 16; ++k) sum += a_rows[i / 2][k] * b_cols[i % 2][k];
    d[i] = sum;
  }
}

inline uint32_t pack_bf16x2(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  uint32_t bits;
  std::memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

}  // namespace bert::cuda::detail
