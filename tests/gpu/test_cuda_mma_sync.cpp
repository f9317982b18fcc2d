// The tensor-core register layouts of kernels/cuda/mma_sync.cuh (the mma.sync attention kernels'
// foundation) through its probe kernel (kernels/cuda/mma_sync.cu): every lane's ldmatrix registers
// against the formulas of the header's purpose block (PTX ISA), and the mma.sync products against a
// host GEMM, exactly: the inputs are small integers, so every product and sum is exact in fp32 whatever
// order the tensor cores add in. On a device this checks the documentation against the hardware; on
// the kernel emulation, the emulation's implementation of it.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/gpu/cuda_test_util.h"

namespace {

namespace cuda = bert::cuda;
using cuda::bf16;
using cuda::DeviceBuffer;
using cuda::MmaSyncProbe;
using namespace bert::cuda::test;

// Distinct small integers in [-8, 8] (exact in bf16; products and 16-term sums exact in fp32).
std::vector<float> integer_matrix(int salt) {
  std::vector<float> m(256);
  for (int i = 0; i < 256; ++i) m[static_cast<size_t>(i)] = static_cast<float>((i * 7 + salt * 13) % 17 - 8);
  return m;
}

// The bf16 pair in a register: element `low` in bits 0-15, `high` in bits 16-31.
uint32_t pair_bits(float low, float high) {
  return static_cast<uint32_t>(bits_of(float_to_bf16(low))) |
         (static_cast<uint32_t>(bits_of(float_to_bf16(high))) << 16);
}

std::string hex(uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof(text), "0x%08x", value);
  return text;
}

}  // namespace

TEST_CASE("cuda mma_sync: ldmatrix and mma.sync m16n8k16 registers follow the documented layouts", "[mma_sync]") {
  cuda::Context ctx;
  const std::vector<float> a = integer_matrix(1);  // A[m][k], row-major
  const std::vector<float> b = integer_matrix(2);  // B[k][n]
  std::vector<float> b_nk(256);                    // B^T: [n][k]
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 16; ++n) b_nk[static_cast<size_t>(n * 16 + k)] = b[static_cast<size_t>(k * 16 + n)];
  const auto A = [&a](int m, int k) { return a[static_cast<size_t>(m * 16 + k)]; };
  const auto B = [&b](int k, int n) { return b[static_cast<size_t>(k * 16 + n)]; };

  const DeviceBuffer<bf16> a_dev = upload_bf16(a), b_nk_dev = upload_bf16(b_nk), b_kn_dev = upload_bf16(b);
  DeviceBuffer<MmaSyncProbe> out = poisoned<MmaSyncProbe>(1);
  cuda::mma_sync_probe(ctx, a_dev.data(), b_nk_dev.data(), b_kn_dev.data(), out.data());
  ctx.synchronize();
  const MmaSyncProbe probe = out.download().at(0);

  // Registers, lane by lane (g = lane / 4, q = lane % 4).
  int wrong_a = 0, wrong_b = 0;
  std::string first_wrong;
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, q = lane % 4;
    const uint32_t expected_a[4] = {
        pair_bits(A(g, 2 * q), A(g, 2 * q + 1)), pair_bits(A(g + 8, 2 * q), A(g + 8, 2 * q + 1)),
        pair_bits(A(g, 2 * q + 8), A(g, 2 * q + 9)), pair_bits(A(g + 8, 2 * q + 8), A(g + 8, 2 * q + 9))};
    // n tile t: b0 = B[2q, 2q+1][8t + g], b1 = B[2q+8, 2q+9][8t + g].
    uint32_t expected_b[4];
    for (int t = 0; t < 2; ++t) {
      expected_b[2 * t] = pair_bits(B(2 * q, 8 * t + g), B(2 * q + 1, 8 * t + g));
      expected_b[2 * t + 1] = pair_bits(B(2 * q + 8, 8 * t + g), B(2 * q + 9, 8 * t + g));
    }
    for (int r = 0; r < 4; ++r) {
      if (probe.a[lane][r] != expected_a[r]) {
        if (wrong_a + wrong_b == 0)
          first_wrong = "A lane " + std::to_string(lane) + " register " + std::to_string(r) + ": " +
                        hex(probe.a[lane][r]) + ", expected " + hex(expected_a[r]);
        ++wrong_a;
      }
      for (const uint32_t got : {probe.b_nk[lane][r], probe.b_kn[lane][r]})
        if (got != expected_b[r]) {
          if (wrong_a + wrong_b == 0)
            first_wrong = "B lane " + std::to_string(lane) + " register " + std::to_string(r) + ": " + hex(got) +
                          ", expected " + hex(expected_b[r]);
          ++wrong_b;
        }
    }
  }
  INFO("first wrong register: " << first_wrong);
  CHECK(wrong_a == 0);
  CHECK(wrong_b == 0);

  // D = A B, exactly, from both B loads.
  int wrong_d = 0;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float expected = 0;
      for (int k = 0; k < 16; ++k) expected += A(m, k) * B(k, n);
      wrong_d += probe.d_nk[m][n] != expected;
      wrong_d += probe.d_kn[m][n] != expected;
    }
  CHECK(wrong_d == 0);
}
