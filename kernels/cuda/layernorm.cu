// LayerNorm over the last axis, alone and fused with the residual add of BERT's post-LN blocks
// (CUDA backend; the reference is kernels/cpu/layernorm.cpp, the semantics kernels/ops.h):
// y = (z - mean) * rstd * gamma + beta, z = x (+ residual), rstd = 1 / sqrt(biased var + eps).
// x, residual, y, dy, dz: bf16 [rows, cols]; gamma, beta: bf16 [cols]; mean, rstd: fp32 [rows];
// dgamma, dbeta: fp32 [cols], accumulated (+=). All math in fp32. In place works (not part of the
// ops.h contract, tested): y may alias x, dz may alias dy, x or residual.
//
// Kernels (common.cuh, shared with embeddings.cu; one warp per row for the row-wise parts; 128-bit
// loads when cols % 8 == 0 and every pointer is 16-byte aligned, a scalar path otherwise, so any
// cols works):
//   forward          two-pass mean / variance (as the CPU), then y. The row is re-read from L1.
//   backward, dz     dz = rstd * (g - mean(g) - zhat * mean(g * zhat)), g = dy * gamma.
//   backward, params dgamma/dbeta need only mean/rstd, not the row reductions, so they are a separate
//                    column reduction, run before the dz pass: block (row chunk, column tile), each
//                    thread owns a column vector and sums its chunk's rows in order into an fp32
//                    partial [chunks, cols] in ctx.scratch; a last kernel sums the partials in a
//                    fixed order and adds.
//                    No float atomics: bitwise the same result every run for a given shape.
//
// Napkin math (BERT-base, 4096 tokens x 768, bf16 = 6.3 MB per matrix; H100 HBM3 ~3.3 TB/s):
//   forward: reads x (+ residual), writes y: 4 (6) B/element, 12.6 (18.9) MB, ~4 (6) us; ~10 FLOPs
//   per element, far below the ~500 FLOP/B ridge: bandwidth bound.
//   backward: dz pass reads dy, x (+ residual), writes dz: 6 (8) B/element; the parameter pass
//   re-reads dy, x (+ residual): 4 (6) B/element plus a [<= 1024, cols] fp32 partial, so ~10 (14)
//   B/element, ~19 (26) us: ~1.6x the fused minimum, traded for a simple deterministic reduction
//   that works for any cols. 24 LayerNorms per BERT-base step make this ~0.2 ms of extra traffic.
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

using namespace detail;  // kernels/cuda/common.cuh

// Row r of z = x (+ residual): the Rows source of the shared LayerNorm kernels (common.cuh).
template <bool kResidual>
struct SumRow {
  const bf16* x;
  const bf16* residual;
  __device__ __forceinline__ float load(int64_t j) const {
    float z = __bfloat162float(x[j]);
    if constexpr (kResidual) z += __bfloat162float(residual[j]);
    return z;
  }
  __device__ __forceinline__ void load8(int64_t j, float (&z)[kVectorWidth]) const {
    load_bf16x8(x + j, z);
    if constexpr (kResidual) {
      float r[kVectorWidth];
      load_bf16x8(residual + j, r);
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) z[i] += r[i];
    }
  }
};
template <bool kResidual>
struct SumRows {
  const bf16* x;
  const bf16* residual;
  __device__ __forceinline__ SumRow<kResidual> row(int64_t r, int64_t cols) const {
    return SumRow<kResidual>{x + r * cols, kResidual ? residual + r * cols : nullptr};
  }
};

// dz rows: bf16 [rows, cols], the Out sink of the shared backward kernel.
struct Bf16Rows {
  bf16* data;
  struct Row {
    bf16* data;
    __device__ __forceinline__ void store(int64_t j, float value) const { data[j] = __float2bfloat16_rn(value); }
    __device__ __forceinline__ void store8(int64_t j, const float (&values)[kVectorWidth]) const {
      store_bf16x8(data + j, values);
    }
    __device__ __forceinline__ void pad(int) const {}  // no padding
  };
  __device__ __forceinline__ Row row(int64_t r, int64_t cols) const { return Row{data + r * cols}; }
};

// ----------------------------------------------------------------------------------------------------

void check_shape(const MatrixShape& shape, const char* op) {
  check_matrix_shape(shape, op);
  require(ceil_div(shape.rows, kRowWarpsPerBlock) <= INT32_MAX, op, "too many rows for one launch");
  check_column_tiles(shape.cols, "cols", op);
}

void launch_forward(Context& ctx, const MatrixShape& shape, const bf16* x, const bf16* residual, const bf16* gamma,
                    const bf16* beta, float eps, bf16* y, float* mean, float* rstd, const char* op) {
  check_shape(shape, op);
  if (shape.rows == 0) return;
  require(x && gamma && beta && y && mean && rstd, op, "a required pointer is null");
  const bool vectorized = shape.cols % kVectorWidth == 0 && aligned16(x) && aligned16(residual) && aligned16(gamma) &&
                          aligned16(beta) && aligned16(y);
  const dim3 grid(static_cast<unsigned>(ceil_div(shape.rows, kRowWarpsPerBlock)));
  const dim3 block(kRowWarpsPerBlock * kWarpSize);
  const bool has_residual = residual != nullptr;
  const SumRows<true> with_residual{x, residual};
  const SumRows<false> x_only{x, nullptr};
  if (vectorized && has_residual)
    layernorm_rows_forward_kernel<true>
        <<<grid, block, 0, ctx.stream()>>>(shape.rows, shape.cols, with_residual, gamma, beta, eps, y, mean, rstd);
  else if (vectorized)
    layernorm_rows_forward_kernel<true>
        <<<grid, block, 0, ctx.stream()>>>(shape.rows, shape.cols, x_only, gamma, beta, eps, y, mean, rstd);
  else if (has_residual)
    layernorm_rows_forward_kernel<false>
        <<<grid, block, 0, ctx.stream()>>>(shape.rows, shape.cols, with_residual, gamma, beta, eps, y, mean, rstd);
  else
    layernorm_rows_forward_kernel<false>
        <<<grid, block, 0, ctx.stream()>>>(shape.rows, shape.cols, x_only, gamma, beta, eps, y, mean, rstd);
  CUDA_CHECK_LAUNCH();
}

template <bool kVectorized, bool kResidual>
void launch_backward_kernels(Context& ctx, const MatrixShape& shape, const bf16* dy, const bf16* x,
                             const bf16* residual, const bf16* gamma, const float* mean, const float* rstd, bf16* dz,
                             float* dgamma, float* dbeta) {
  const int64_t rows = shape.rows, cols = shape.cols;
  const int64_t chunk_rows = rows_per_chunk(rows);
  const int64_t chunks = ceil_div(rows, chunk_rows);
  // Taken before the first launch: growing the scratch synchronises the stream.
  float* partials = static_cast<float*>(ctx.scratch(2 * static_cast<size_t>(chunks * cols) * sizeof(float)));
  float* dgamma_partial = partials;
  float* dbeta_partial = partials + chunks * cols;

  // The parameter pass reads dy, x (and residual) before the dz pass writes: dz may alias them.
  const int64_t column_vectors = cols / (kVectorized ? kVectorWidth : 1);
  const dim3 partial_grid(static_cast<unsigned>(chunks),
                          static_cast<unsigned>(ceil_div(column_vectors, kColumnThreads)));
  const SumRows<kResidual> source{x, residual};
  layernorm_param_partials_kernel<kVectorized><<<partial_grid, kColumnThreads, 0, ctx.stream()>>>(
      rows, cols, chunk_rows, source, dy, mean, rstd, dgamma_partial, dbeta_partial);
  CUDA_CHECK_LAUNCH();

  layernorm_rows_backward_kernel<kVectorized>
      <<<static_cast<unsigned>(ceil_div(rows, kRowWarpsPerBlock)), kRowWarpsPerBlock * kWarpSize, 0, ctx.stream()>>>(
          rows, cols, source, dy, gamma, mean, rstd, Bf16Rows{dz});
  CUDA_CHECK_LAUNCH();

  launch_accumulate_partials(ctx.stream(), chunks, cols, dgamma_partial, dgamma, dbeta_partial, dbeta);
  CUDA_CHECK_LAUNCH();
}

void launch_backward(Context& ctx, const MatrixShape& shape, const bf16* dy, const bf16* x, const bf16* residual,
                     const bf16* gamma, const float* mean, const float* rstd, bf16* dz, float* dgamma, float* dbeta,
                     const char* op) {
  check_shape(shape, op);
  if (shape.rows == 0) return;
  require(dy && x && gamma && mean && rstd && dz && dgamma && dbeta, op, "a required pointer is null");
  const bool vectorized = shape.cols % kVectorWidth == 0 && aligned16(dy) && aligned16(x) && aligned16(residual) &&
                          aligned16(gamma) && aligned16(dz);
  if (vectorized && residual != nullptr)
    launch_backward_kernels<true, true>(ctx, shape, dy, x, residual, gamma, mean, rstd, dz, dgamma, dbeta);
  else if (vectorized)
    launch_backward_kernels<true, false>(ctx, shape, dy, x, nullptr, gamma, mean, rstd, dz, dgamma, dbeta);
  else if (residual != nullptr)
    launch_backward_kernels<false, true>(ctx, shape, dy, x, residual, gamma, mean, rstd, dz, dgamma, dbeta);
  else
    launch_backward_kernels<false, false>(ctx, shape, dy, x, nullptr, gamma, mean, rstd, dz, dgamma, dbeta);
}

}  // namespace

void layernorm_forward(Context& ctx, const MatrixShape& shape, const bf16* x, const bf16* gamma, const bf16* beta,
                       float eps, bf16* y, float* mean, float* rstd) {
  launch_forward(ctx, shape, x, nullptr, gamma, beta, eps, y, mean, rstd, "layernorm_forward");
}

void layernorm_backward(Context& ctx, const MatrixShape& shape, const bf16* dy, const bf16* x, const bf16* gamma,
                        const float* mean, const float* rstd, bf16* dx, float* dgamma, float* dbeta) {
  launch_backward(ctx, shape, dy, x, nullptr, gamma, mean, rstd, dx, dgamma, dbeta, "layernorm_backward");
}

void residual_layernorm_forward(Context& ctx, const MatrixShape& shape, const bf16* x, const bf16* residual,
                                const bf16* gamma, const bf16* beta, float eps, bf16* y, float* mean, float* rstd) {
  require(residual != nullptr, "residual_layernorm_forward", "residual is null");
  launch_forward(ctx, shape, x, residual, gamma, beta, eps, y, mean, rstd, "residual_layernorm_forward");
}

void residual_layernorm_backward(Context& ctx, const MatrixShape& shape, const bf16* dy, const bf16* x,
                                 const bf16* residual, const bf16* gamma, const float* mean, const float* rstd,
                                 bf16* d_sum, float* dgamma, float* dbeta) {
  require(residual != nullptr, "residual_layernorm_backward", "residual is null");
  launch_backward(ctx, shape, dy, x, residual, gamma, mean, rstd, d_sum, dgamma, dbeta, "residual_layernorm_backward");
}

}  // namespace bert::cuda
