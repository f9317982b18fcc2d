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
//   forward          two-pass mean / variance (as the CPU), then y. 128-bit path up to 1,024 columns:
//                    the row stays in registers (all its loads issued at once, one DRAM round trip);
//                    otherwise the row is re-read from L1 for each pass. The same bits either way.
//   dropout + residual forward (dropout_residual_layernorm_forward, the engine's hidden dropout): the
//                    row-resident kernel with a source that drops x as it loads it (the Philox mask of
//                    dropout.cu), writes the dropped x back for the backward and adds the bf16-rounded
//                    value: x read once and written once, where dropout_forward and then the forward
//                    read it twice and write it once, with one launch fewer.
//   dropout + residual backward (residual_layernorm_dropout_backward): the fused backward below with a
//                    sink that also writes d_x = dropout_backward(d_sum), the Philox draws made once
//                    the row's dz is stored (from its bf16 values kept in registers), so d_sum is not
//                    re-read: 2 B an element less traffic than the two ops and one launch fewer. At
//                    768 columns that variant spilled 140 bytes under 2 blocks an SM (128 registers),
//                    so it runs 1 block (8 warps) an SM there: 190 registers (238 at BERT-large's
//                    1,024 columns), no spills (ptxas sm_90a).
//   backward, dz     dz = rstd * (g - mean(g) - zhat * mean(g * zhat)), g = dy * gamma.
//   backward, fused  (128-bit path, cols <= 1024: BERT-base and -large) one pass over the rows: a block
//                    of 8 warps owns 8 x rows_per_warp consecutive rows; each warp walks its rows in
//                    order, holds its row slice in registers (<= 4 vectors of 8 per lane), writes dz
//                    and adds d * zhat and d to per-lane dgamma/dbeta sums; the block then adds its 8
//                    warps' sums in warp order into an fp32 partial [blocks, cols] (ctx.scratch), and
//                    a last kernel sums the partials in a fixed order and adds.
//   backward, params otherwise (the scalar path, or cols > 1024) dgamma/dbeta are a separate column
//                    reduction, run before the dz pass: block (row chunk, column tile), each thread
//                    owns a column vector and sums its chunk's rows in order into an fp32 partial
//                    [chunks, cols] in ctx.scratch; a last kernel sums the partials in a fixed order.
//                    No float atomics on either path: bitwise the same result every run for a shape
//                    and path (the two paths add dgamma/dbeta in different orders, so 16-byte aligned
//                    and element-aligned buffers of one shape may differ in the last bits).
// ctx.kernel_paths() (ops_cuda.h: KernelPaths) can send the shapes the row-resident forward, the
// fused backward and the dropout-fused forward take to the general kernels instead, the ones they
// replaced: bench_kernels times both in one run ("_baseline" cases).
//
// Napkin math (BERT-base, 4096 tokens x 768, bf16 = 6.3 MB per matrix; H100 HBM3 ~3.3 TB/s):
//   forward: reads x (+ residual), writes y: 4 (6) B/element, 12.6 (18.9) MB, ~4 (6) us; ~10 FLOPs
//   per element, far below the ~500 FLOP/B ridge: bandwidth bound.
//   backward: reads dy, x (+ residual), writes dz: 6 (8) B/element, the minimum, plus a [blocks, cols]
//   fp32 partial (blocks <= 1024; 512 at 16k rows: 3.1 MB at cols 768). The separate parameter pass
//   (the fallback) re-reads dy, x (+ residual): ~10 (14) B/element. Measured on an H200 (2026-12-04,
//   16k x 768, before the fused kernel): backward 72 us (85 with residual), 25% of the copy
//   bandwidth, 4x its traffic minimum: the parameter pass's 2,048 blocks of 2 warps and the
//   finalize's 1,024 chunks (48 blocks, 128 dependent loads a thread) cost more than the bytes.
//   Forward, same run: 22 us (31 with residual), 53% (57%) of copy bandwidth: each warp waited for
//   its row's DRAM loads, then twice for L1 re-reads and their shuffle reductions, with 1.5 (3) KB of
//   its row in flight at a time. Now all of a lane's loads go out at once (row-resident kernel,
//   common.cuh; 45-54 registers, so 10 blocks of 4 warps an SM): ~60 KB in flight an SM against the
//   ~32 KB that 4.25 TB/s x ~1 us of latency needs across 132 SMs. Not timed yet.
#include <cstdint>
#include <initializer_list>
#include <string>

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

// Row r of z = dropout(x) + residual for the dropout-fused forward, which also writes dropout(x) back
// over x (the branch the backward reads), rounded to bf16 as dropout_forward stores it, and adds that
// rounded value: the bits of dropout_forward then residual_layernorm_forward. load8 hands the dropped
// vector over and write_back stores it once the row's loads are issued (the row-resident kernel's
// write-back protocol); no single-argument load8, so no other kernel can read it twice.
struct DroppedSumRows {
  bf16* x;
  const bf16* residual;
  DropoutMask mask;
  struct Row {
    bf16* x;
    const bf16* residual;
    DropoutMask mask;
    int64_t first;  // the site's element index of the row's column 0
    __device__ __forceinline__ void load8(int64_t j, float (&z)[kVectorWidth], Bf16x8& dropped) const {
      float multiplier[kVectorWidth], r[kVectorWidth];
      load_bf16x8(x + j, z);
      load_bf16x8(residual + j, r);
      dropout_multipliers8(mask, first + j, multiplier);
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) z[i] *= multiplier[i];
      dropped = pack_bf16x8(z);
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) z[i] = __bfloat162float(dropped.value[i]) + r[i];
    }
    __device__ __forceinline__ void write_back(int64_t j, const Bf16x8& dropped) const {
      store_bf16_pack(x + j, dropped);
    }
  };
  __device__ __forceinline__ Row row(int64_t r, int64_t cols) const {
    return Row{x + r * cols, residual + r * cols, mask, r * cols};
  }
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
  const bool resident = ctx.kernel_paths().layernorm_resident_forward;
  if (residual != nullptr)
    launch_layernorm_rows_forward(ctx.stream(), vectorized, resident, shape.rows, shape.cols,
                                  SumRows<true>{x, residual}, gamma, beta, eps, y, mean, rstd);
  else
    launch_layernorm_rows_forward(ctx.stream(), vectorized, resident, shape.rows, shape.cols,
                                  SumRows<false>{x, nullptr}, gamma, beta, eps, y, mean, rstd);
  CUDA_CHECK_LAUNCH();
}

// The fused backward (see the purpose block and common.cuh), its partials in ctx.scratch.
template <class Rows, class Out>
void launch_backward_fused(Context& ctx, const MatrixShape& shape, const bf16* dy, Rows source, const bf16* gamma,
                           const float* mean, const float* rstd, Out dz, float* dgamma, float* dbeta) {
  const size_t blocks = static_cast<size_t>(layernorm_backward_fused_blocks(shape.rows));
  // Taken before the first launch: growing the scratch synchronises the stream.
  float* partials = static_cast<float*>(ctx.scratch(2 * blocks * static_cast<size_t>(shape.cols) * sizeof(float)));
  launch_layernorm_backward_fused(ctx.stream(), shape.rows, shape.cols, dy, source, gamma, mean, rstd, dz, partials,
                                  dgamma, dbeta);
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
  if (vectorized && shape.cols <= kFusedMaxCols && ctx.kernel_paths().layernorm_fused_backward) {
    if (residual != nullptr)
      launch_backward_fused(ctx, shape, dy, SumRows<true>{x, residual}, gamma, mean, rstd, Bf16Rows{dz}, dgamma, dbeta);
    else
      launch_backward_fused(ctx, shape, dy, SumRows<false>{x, nullptr}, gamma, mean, rstd, Bf16Rows{dz}, dgamma,
                            dbeta);
  } else if (vectorized && residual != nullptr)
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

namespace {

// The dropout-fused forward needs the 128-bit path up to 1,024 columns, every pointer 16-byte
// aligned; otherwise the two ops run one after the other (the same bits).
bool dropout_fusable(const MatrixShape& shape, std::initializer_list<const void*> pointers) {
  if (shape.cols % kVectorWidth != 0 || shape.cols > kResidentMaxCols) return false;
  for (const void* pointer : pointers)
    if (!aligned16(pointer)) return false;
  return true;
}

void check_dropout(const DropoutSpec& dropout, const char* op) {
  require(dropout.probability >= 0.0f && dropout.probability < 1.0f, op,  // false for NaN too
          "probability must be in [0, 1), got " + std::to_string(dropout.probability));
}

}  // namespace

void dropout_residual_layernorm_forward(Context& ctx, const MatrixShape& shape, const DropoutSpec& dropout, bf16* x,
                                        const bf16* residual, const bf16* gamma, const bf16* beta, float eps,
                                        bf16* y, float* mean, float* rstd) {
  constexpr const char* kOp = "dropout_residual_layernorm_forward";
  check_shape(shape, kOp);
  check_dropout(dropout, kOp);
  if (shape.rows == 0) return;
  require(x && residual && gamma && beta && y && mean && rstd, kOp, "a required pointer is null");
  require(x != y && x != residual, kOp, "x (the dropped branch, kept for the backward) must not alias y or residual");
  if (dropout.probability != 0.0f && ctx.kernel_paths().dropout_fused_layernorm &&
      dropout_fusable(shape, {x, residual, gamma, beta, y})) {
    launch_layernorm_rows_forward_resident(ctx.stream(), shape.rows, shape.cols,
                                           DroppedSumRows{x, residual, make_dropout_mask(dropout)}, gamma, beta, eps,
                                           y, mean, rstd);
    CUDA_CHECK_LAUNCH();
    return;
  }
  dropout_forward(ctx, shape.rows * shape.cols, dropout, x, x);
  residual_layernorm_forward(ctx, shape, x, residual, gamma, beta, eps, y, mean, rstd);
}

void residual_layernorm_dropout_backward(Context& ctx, const MatrixShape& shape, const DropoutSpec& dropout,
                                         const bf16* dy, const bf16* x, const bf16* residual, const bf16* gamma,
                                         const float* mean, const float* rstd, bf16* d_sum, bf16* d_x, float* dgamma,
                                         float* dbeta) {
  constexpr const char* kOp = "residual_layernorm_dropout_backward";
  check_shape(shape, kOp);
  check_dropout(dropout, kOp);
  if (shape.rows == 0) return;
  require(dy && x && residual && gamma && mean && rstd && d_sum && d_x && dgamma && dbeta, kOp,
          "a required pointer is null");
  require(d_x != d_sum, kOp, "d_x must not alias d_sum");
  const KernelPaths& paths = ctx.kernel_paths();
  if (dropout.probability != 0.0f && paths.dropout_fused_layernorm_backward && paths.layernorm_fused_backward &&
      shape.cols <= kFusedMaxCols && dropout_fusable(shape, {dy, x, residual, gamma, d_sum, d_x})) {
    launch_backward_fused(ctx, shape, dy, SumRows<true>{x, residual}, gamma, mean, rstd,
                          DroppedBf16Rows{d_sum, d_x, make_dropout_mask(dropout)}, dgamma, dbeta);
    return;
  }
  residual_layernorm_backward(ctx, shape, dy, x, residual, gamma, mean, rstd, d_sum, dgamma, dbeta);
  dropout_backward(ctx, shape.rows * shape.cols, dropout, d_sum, d_x);
}

}  // namespace bert::cuda
