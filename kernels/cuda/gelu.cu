// Bias + GELU, the FFN activation after the up-projection GEMM (CUDA backend; the reference is
// kernels/cpu/gelu.cpp, the semantics kernels/ops.h): y = gelu(x + b), x/y/dy/dx bf16 [rows, cols],
// b bf16 [cols] (optional), db fp32 [cols] accumulated (+=). All math in fp32.
// kErf:  gelu(z) = 0.5 z (1 + erf(z / sqrt 2)),       gelu'(z) = Phi(z) + z phi(z)
// kTanh: gelu(z) = 0.5 z (1 + tanh(u)), u = sqrt(2/pi) (z + 0.044715 z^3),
//        gelu'(z) = 0.5 (1 + tanh u) + 0.5 z (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 z^2)
//
// Layout: block (row chunk = blockIdx.x, column tile = blockIdx.y); each thread owns one column
// vector (8 columns with 128-bit accesses when cols % 8 == 0 and the pointers are 16-byte aligned,
// else 1), loads its bias once and walks the chunk's rows in order. The backward sums its dx (fp32,
// before rounding) into a per-chunk partial [chunks, cols] in ctx.scratch; a second kernel adds the
// partials to db in a fixed order: deterministic, no float atomics (the column-sum machinery of
// common.cuh). y may alias x and dx may alias dy: every element is read and then written by the
// same thread.
//
// Napkin math (BERT-base FFN, 16k tokens x 3072, bf16 = 100 MB per matrix; H200 copy 4.25 TB/s):
//   forward reads x, writes y: 4 B/element, ~47 us; backward reads dy, x, writes dx: 6 B/element,
//   ~71 us; the db partials add 1024 x cols x 4 B (12.6 MB written + read once at 3072 cols).
//   The instruction budget is tighter than it looks: the H200 issues ~33 T thread-instructions/s
//   (132 SMs x 4 schedulers x 32 lanes x 1.98 GHz), so at copy bandwidth the forward may spend ~31
//   instructions an element and the backward ~47, and issue never runs at 100%. erff alone is ~25
//   (two selected polynomials, an ex2 on one side); expf another ~15. The first device run measured
//   62% / 47% of copy bandwidth (0.077 / 0.151 ms): ALU bound, not memory bound. Hence phi(z) through
//   one exp2f (~4 instructions, 2 ulp): the 128-bit backward kernel's static PTX count drops from
//   1,940 to 1,492 instructions (23%; its body handles 4 rows x 8 columns). Not timed yet.

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

using namespace detail;  // kernels/cuda/common.cuh

constexpr int kRowBatch = 4;  // rows in flight per thread

constexpr float kSqrtHalf = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1 / sqrt(2 pi)
constexpr float kHalfLog2e = 0.72134752044448170368f;   // log2(e) / 2: exp(-z^2 / 2) = exp2(-kHalfLog2e z^2)
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kTanhCubic = 0.044715f;
constexpr float kTanhCubic3 = static_cast<float>(3 * 0.044715);  // as the CPU's T(3 * kTanhCubic)

template <GeluKind kKind>
__device__ __forceinline__ float gelu(float z) {
  if constexpr (kKind == GeluKind::kErf) {
    return 0.5f * z * (1.0f + erff(z * kSqrtHalf));
  } else {
    const float u = kSqrt2OverPi * (z + kTanhCubic * z * z * z);
    return 0.5f * z * (1.0f + tanhf(u));
  }
}

template <GeluKind kKind>
__device__ __forceinline__ float gelu_derivative(float z) {
  if constexpr (kKind == GeluKind::kErf) {
    const float cdf = 0.5f * (1.0f + erff(z * kSqrtHalf));
    // exp2f is one ex2.approx (2 ulp) where expf's exact range reduction costs ~12 more instructions
    // an element; the backward is ALU bound (see the napkin math above), and 2 ulp is far below bf16's.
    const float pdf = kInvSqrt2Pi * exp2f(-kHalfLog2e * z * z);
    return cdf + z * pdf;
  } else {
    const float u = kSqrt2OverPi * (z + kTanhCubic * z * z * z);
    const float tanh_u = tanhf(u);
    const float du_dz = kSqrt2OverPi * (1.0f + kTanhCubic3 * z * z);
    return 0.5f * (1.0f + tanh_u) + 0.5f * z * (1.0f - tanh_u * tanh_u) * du_dz;
  }
}

// kWidth (1 or 8) consecutive bf16 <-> floats; kWidth 8 needs 16-byte alignment.
template <int kWidth>
__device__ __forceinline__ void load_bf16(const bf16* src, float (&out)[kWidth]) {
  if constexpr (kWidth == kVectorWidth) {
    load_bf16x8(src, out);
  } else {
    static_assert(kWidth == 1);
    out[0] = __bfloat162float(*src);
  }
}

template <int kWidth>
__device__ __forceinline__ void store_bf16(bf16* dst, const float (&in)[kWidth]) {
  if constexpr (kWidth == kVectorWidth) {
    store_bf16x8(dst, in);
  } else {
    static_assert(kWidth == 1);
    *dst = __float2bfloat16_rn(in[0]);
  }
}

template <int kWidth, GeluKind kKind>
__global__ void __launch_bounds__(kColumnThreads)
    bias_gelu_forward_kernel(int64_t rows, int64_t cols, int64_t rows_per_chunk, const bf16* x, const bf16* bias,
                             bf16* y) {
  ColumnWork work;
  if (!column_work<kWidth>(rows, cols, rows_per_chunk, work)) return;
  float b[kWidth];
  if (bias != nullptr) {
    load_bf16<kWidth>(bias + work.column, b);
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) b[i] = 0.0f;
  }
  // kRowBatch rows loaded before any is stored: y may alias x, so the compiler could not hoist the
  // next row's loads above this row's stores by itself.
  for (int64_t r0 = work.first_row; r0 < work.last_row; r0 += kRowBatch) {
    float v[kRowBatch][kWidth];
#pragma unroll
    for (int k = 0; k < kRowBatch; ++k)
      if (r0 + k < work.last_row) load_bf16<kWidth>(x + (r0 + k) * cols + work.column, v[k]);
#pragma unroll
    for (int k = 0; k < kRowBatch; ++k) {
      if (r0 + k >= work.last_row) break;
#pragma unroll
      for (int i = 0; i < kWidth; ++i) v[k][i] = gelu<kKind>(v[k][i] + b[i]);
      store_bf16<kWidth>(y + (r0 + k) * cols + work.column, v[k]);
    }
  }
}

// dx = dy * gelu'(x + b); with dbias_partial, partial[chunk, column] = sum of the chunk's dx (fp32).
template <int kWidth, GeluKind kKind>
__global__ void __launch_bounds__(kColumnThreads)
    bias_gelu_backward_kernel(int64_t rows, int64_t cols, int64_t rows_per_chunk, const bf16* dy, const bf16* x,
                              const bf16* bias, bf16* dx, float* dbias_partial) {
  ColumnWork work;
  if (!column_work<kWidth>(rows, cols, rows_per_chunk, work)) return;
  float b[kWidth], dbias_sum[kWidth];
  if (bias != nullptr) {
    load_bf16<kWidth>(bias + work.column, b);
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) b[i] = 0.0f;
  }
#pragma unroll
  for (int i = 0; i < kWidth; ++i) dbias_sum[i] = 0.0f;
  // Rows in batches, loads before stores (dx may alias dy); dbias sums stay in row order.
  for (int64_t r0 = work.first_row; r0 < work.last_row; r0 += kRowBatch) {
    float d[kRowBatch][kWidth], v[kRowBatch][kWidth];
#pragma unroll
    for (int k = 0; k < kRowBatch; ++k) {
      if (r0 + k < work.last_row) {
        load_bf16<kWidth>(dy + (r0 + k) * cols + work.column, d[k]);
        load_bf16<kWidth>(x + (r0 + k) * cols + work.column, v[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < kRowBatch; ++k) {
      if (r0 + k >= work.last_row) break;
#pragma unroll
      for (int i = 0; i < kWidth; ++i) {
        v[k][i] = d[k][i] * gelu_derivative<kKind>(v[k][i] + b[i]);
        dbias_sum[i] += v[k][i];
      }
      store_bf16<kWidth>(dx + (r0 + k) * cols + work.column, v[k]);
    }
  }
  if (dbias_partial != nullptr) {
    float* out = dbias_partial + static_cast<int64_t>(blockIdx.x) * cols + work.column;
#pragma unroll
    for (int i = 0; i < kWidth; ++i) out[i] = dbias_sum[i];
  }
}

// ----------------------------------------------------------------------------------------------------

void check_shape(const MatrixShape& shape, const char* op) {
  check_matrix_shape(shape, op);
  check_column_tiles(shape.cols, "cols", op);
}

dim3 column_grid(const MatrixShape& shape, int width) {
  return dim3(static_cast<unsigned>(ceil_div(shape.rows, rows_per_chunk(shape.rows))),
              static_cast<unsigned>(ceil_div(shape.cols / width, kColumnThreads)));
}

template <int kWidth>
void launch_forward(Context& ctx, GeluKind kind, const MatrixShape& shape, const bf16* x, const bf16* bias, bf16* y) {
  const dim3 grid = column_grid(shape, kWidth);
  const int64_t chunk_rows = rows_per_chunk(shape.rows);
  if (kind == GeluKind::kErf)
    bias_gelu_forward_kernel<kWidth, GeluKind::kErf>
        <<<grid, kColumnThreads, 0, ctx.stream()>>>(shape.rows, shape.cols, chunk_rows, x, bias, y);
  else
    bias_gelu_forward_kernel<kWidth, GeluKind::kTanh>
        <<<grid, kColumnThreads, 0, ctx.stream()>>>(shape.rows, shape.cols, chunk_rows, x, bias, y);
  CUDA_CHECK_LAUNCH();
}

template <int kWidth>
void launch_backward(Context& ctx, GeluKind kind, const MatrixShape& shape, const bf16* dy, const bf16* x,
                     const bf16* bias, bf16* dx, float* dbias_partial) {
  const dim3 grid = column_grid(shape, kWidth);
  const int64_t chunk_rows = rows_per_chunk(shape.rows);
  if (kind == GeluKind::kErf)
    bias_gelu_backward_kernel<kWidth, GeluKind::kErf>
        <<<grid, kColumnThreads, 0, ctx.stream()>>>(shape.rows, shape.cols, chunk_rows, dy, x, bias, dx, dbias_partial);
  else
    bias_gelu_backward_kernel<kWidth, GeluKind::kTanh>
        <<<grid, kColumnThreads, 0, ctx.stream()>>>(shape.rows, shape.cols, chunk_rows, dy, x, bias, dx, dbias_partial);
  CUDA_CHECK_LAUNCH();
}

void check_kind(GeluKind kind, const char* op) {
  require(kind == GeluKind::kErf || kind == GeluKind::kTanh, op, "unknown GeluKind");
}

}  // namespace

void bias_gelu_forward(Context& ctx, GeluKind kind, const MatrixShape& shape, const bf16* x, const bf16* bias,
                       bf16* y) {
  constexpr const char* kOp = "bias_gelu_forward";
  check_shape(shape, kOp);
  check_kind(kind, kOp);
  if (shape.rows == 0) return;
  require(x != nullptr && y != nullptr, kOp, "x or y is null");
  const bool vectorized = shape.cols % kVectorWidth == 0 && aligned16(x) && aligned16(bias) && aligned16(y);
  if (vectorized)
    launch_forward<kVectorWidth>(ctx, kind, shape, x, bias, y);
  else
    launch_forward<1>(ctx, kind, shape, x, bias, y);
}

void bias_gelu_backward(Context& ctx, GeluKind kind, const MatrixShape& shape, const bf16* dy, const bf16* x,
                        const bf16* bias, bf16* dx, float* dbias) {
  constexpr const char* kOp = "bias_gelu_backward";
  check_shape(shape, kOp);
  check_kind(kind, kOp);
  require(dbias == nullptr || bias != nullptr, kOp, "dbias given without a bias");
  if (shape.rows == 0) return;
  require(dy != nullptr && x != nullptr && dx != nullptr, kOp, "dy, x or dx is null");
  const int64_t chunks = ceil_div(shape.rows, rows_per_chunk(shape.rows));
  float* dbias_partial =
      dbias != nullptr ? static_cast<float*>(ctx.scratch(static_cast<size_t>(chunks * shape.cols) * sizeof(float)))
                       : nullptr;
  const bool vectorized =
      shape.cols % kVectorWidth == 0 && aligned16(dy) && aligned16(x) && aligned16(bias) && aligned16(dx);
  if (vectorized)
    launch_backward<kVectorWidth>(ctx, kind, shape, dy, x, bias, dx, dbias_partial);
  else
    launch_backward<1>(ctx, kind, shape, dy, x, bias, dx, dbias_partial);
  if (dbias != nullptr) {
    launch_accumulate_partials(ctx.stream(), chunks, shape.cols, dbias_partial, dbias);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace bert::cuda
