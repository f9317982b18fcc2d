// A probe of the tensor-core register layouts that kernels/cuda/mma_sync.cuh documents and the mma.sync
// attention kernels rely on (attention.cu). One warp loads a 16x16 A and two 16x8 B tiles with
// ldmatrix (B from a [n][k] array with ldmatrix_x4 and from a [k][n] array with ldmatrix_x4_trans),
// multiplies them with mma_bf16_16816 and writes back every lane's registers and both products.
// tests/gpu/test_cuda_mma_sync.cpp compares them with the layouts of the header's purpose block: on a
// device that checks the documentation against the hardware (a failure there points at the layouts,
// not at attention's softmax), on the kernel emulation it checks the emulation's implementation.
// No napkin math: 32 threads, once.
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

constexpr int kLd = 24;  // bf16 per shared row: 48 bytes, a multiple of 16 as ldmatrix needs

__global__ void __launch_bounds__(32)
    mma_sync_probe_kernel(const bf16* __restrict__ a, const bf16* __restrict__ b_nk, const bf16* __restrict__ b_kn,
                          MmaSyncProbe* __restrict__ out) {
  __shared__ __align__(16) bf16 a_tile[16 * kLd];
  __shared__ __align__(16) bf16 b_nk_tile[16 * kLd];
  __shared__ __align__(16) bf16 b_kn_tile[16 * kLd];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) {
    a_tile[(i / 16) * kLd + i % 16] = a[i];
    b_nk_tile[(i / 16) * kLd + i % 16] = b_nk[i];
    b_kn_tile[(i / 16) * kLd + i % 16] = b_kn[i];
  }
  __syncwarp();
  const int j = lane / 8;  // the 8x8 matrix whose row this lane addresses
  uint32_t a_regs[4], nk_regs[4], kn_regs[4];
  detail::ldmatrix_x4(a_regs, a_tile + (lane % 16) * kLd + (lane / 16) * 8);
  // Two n tiles of B^T = [n][k]: matrix j is n 8 (j / 2) .., k 8 (j % 2) ..
  detail::ldmatrix_x4(nk_regs, b_nk_tile + (8 * (j / 2) + lane % 8) * kLd + 8 * (j % 2));
  // The same from B = [k][n], transposed: matrix j is k 8 (j % 2) .., n 8 (j / 2) ..
  detail::ldmatrix_x4_trans(kn_regs, b_kn_tile + (8 * (j % 2) + lane % 8) * kLd + 8 * (j / 2));
  float d_nk[2][4] = {}, d_kn[2][4] = {};
  for (int n = 0; n < 2; ++n) {
    detail::mma_bf16_16816(d_nk[n], a_regs, nk_regs[2 * n], nk_regs[2 * n + 1]);
    detail::mma_bf16_16816(d_kn[n], a_regs, kn_regs[2 * n], kn_regs[2 * n + 1]);
  }
  const int g = lane / 4, q = lane % 4;
  for (int r = 0; r < 4; ++r) {
    out->a[lane][r] = a_regs[r];
    out->b_nk[lane][r] = nk_regs[r];
    out->b_kn[lane][r] = kn_regs[r];
  }
  for (int n = 0; n < 2; ++n)
    for (int i = 0; i < 4; ++i) {
      out->d_nk[g + 8 * (i / 2)][8 * n + 2 * q + i % 2] = d_nk[n][i];
      out->d_kn[g + 8 * (i / 2)][8 * n + 2 * q + i % 2] = d_kn[n][i];
    }
}

}  // namespace

void mma_sync_probe(Context& ctx, const bf16* a, const bf16* b_nk, const bf16* b_kn, MmaSyncProbe* out) {
  detail::require(a != nullptr && b_nk != nullptr && b_kn != nullptr && out != nullptr, "mma_sync_probe",
                  "null pointer");
  mma_sync_probe_kernel<<<1, 32, 0, ctx.stream()>>>(a, b_nk, b_kn, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace bert::cuda
