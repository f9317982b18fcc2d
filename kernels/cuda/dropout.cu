// Dropout with the counter-based Philox mask of kernels/ops.h (CUDA backend; the reference is
// kernels/cpu/dropout.cpp): y = x * keep(seed, offset, i) / (1 - p), x/y (dy/dx) bf16 flat [numel].
// In place allowed. The backward regenerates the same mask from the same DropoutSpec, so nothing is
// stored, and the mask is the CPU's bit for bit (ops::dropout_random_group: one Philox4x32-10 call
// per aligned group of 4 elements, element i uses word i % 4). The multiply is fp32 x * (keep ?
// 1 / (1 - p) : 0), as the CPU, rounded once to bf16. p = 0 is a copy (nothing when in place).
//
// Layout: a grid-stride loop over octets (8 elements = 2 Philox groups = one 128-bit access when x
// and y are 16-byte aligned; a scalar path for unaligned pointers and the tail).
//
// Napkin math (BERT-base hidden dropout, 4096 x 768 = 3.1 M elements; H100 ~3.3 TB/s): reads 2 B and
// writes 2 B per element, 12.6 MB, ~4 us. One Philox call per 4 elements is ~10 rounds x (2 wide
// multiplies + 4 xor/add) ~ 80 integer ops, ~20 per element: ~65 M ops here, about what H100's
// ~30 T integer ops/s do in those 4 us, so the kernel sits near both limits.
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

using namespace detail;  // kernels/cuda/common.cuh

constexpr int kThreads = 256;
constexpr int64_t kOctet = 8;            // elements per thread per step: 2 Philox groups, 16 bytes
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this

template <bool kVectorized>
__global__ void __launch_bounds__(kThreads) dropout_kernel(int64_t numel, DropoutMask mask, const bf16* in, bf16* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t octet = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; octet * kOctet < numel;
       octet += stride) {
    const int64_t first = octet * kOctet;
    float multiplier[kOctet];
    dropout_multipliers8(mask, first, multiplier);
    if (kVectorized && first + kOctet <= numel) {
      float values[kOctet];
      load_bf16x8(in + first, values);
#pragma unroll
      for (int i = 0; i < kOctet; ++i) values[i] *= multiplier[i];
      store_bf16x8(out + first, values);
    } else {
#pragma unroll
      for (int i = 0; i < kOctet; ++i)
        if (first + i < numel) out[first + i] = __float2bfloat16_rn(__bfloat162float(in[first + i]) * multiplier[i]);
    }
  }
}

// ----------------------------------------------------------------------------------------------------

void apply_dropout(Context& ctx, int64_t numel, const DropoutSpec& dropout, const bf16* in, bf16* out, const char* op) {
  require(numel >= 0, op, "numel < 0");
  require(dropout.probability >= 0.0f && dropout.probability < 1.0f, op,  // false for NaN too
          "probability must be in [0, 1), got " + std::to_string(dropout.probability));
  if (numel == 0) return;
  require(in != nullptr && out != nullptr, op, "a pointer is null");
  if (dropout.probability == 0.0f) {
    if (in != out)
      CUDA_CHECK(
          cudaMemcpyAsync(out, in, static_cast<size_t>(numel) * sizeof(bf16), cudaMemcpyDeviceToDevice, ctx.stream()));
    return;
  }
  const DropoutMask mask = make_dropout_mask(dropout);
  const int64_t octets = ceil_div(numel, kOctet);
  const int64_t wanted_blocks = ceil_div(octets, kThreads);
  const unsigned blocks = static_cast<unsigned>(wanted_blocks < kMaxBlocks ? wanted_blocks : kMaxBlocks);
  const bool vectorized = aligned16(in) && aligned16(out);
  if (vectorized)
    dropout_kernel<true><<<blocks, kThreads, 0, ctx.stream()>>>(numel, mask, in, out);
  else
    dropout_kernel<false><<<blocks, kThreads, 0, ctx.stream()>>>(numel, mask, in, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void dropout_forward(Context& ctx, int64_t numel, const DropoutSpec& dropout, const bf16* x, bf16* y) {
  apply_dropout(ctx, numel, dropout, x, y, "dropout_forward");
}

void dropout_backward(Context& ctx, int64_t numel, const DropoutSpec& dropout, const bf16* dy, bf16* dx) {
  apply_dropout(ctx, numel, dropout, dy, dx, "dropout_backward");
}

}  // namespace bert::cuda
