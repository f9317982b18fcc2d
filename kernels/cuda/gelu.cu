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
//   62% / 47% of copy bandwidth (0.077 / 0.151 ms), and the static PTX counts of the 128-bit kernels
//   (1,204 / 1,940 instructions for a body of 4 rows x 8 columns, ~38 / ~61 an element) against
//   those budgets put both at ~73% / ~60% of peak issue: ALU bound, not memory bound. Hence Phi(z)
//   through an erfc approximation (normal_cdf below: ~15 instructions, 2 of them MUFU) instead of
//   erff, and phi(z) through one exp2f instead of expf: 902 / 1,127 instructions (-25% / -42%),
//   ~28 / ~35 an element, under the budgets. MUFU load: 2 / 3 per element, 4.2 T/s on the H200 (16
//   an SM a clock): 24 / 36 us, below the memory floors. Not timed yet: the erff / expf forms stay
//   selectable (KernelPaths::gelu_fast_math = false) so that bench_kernels times both in one run
//   (bias_gelu_*_baseline).

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

using namespace detail;  // kernels/cuda/common.cuh

constexpr int kRowBatch = 4;  // rows in flight per thread

constexpr double kLog2eD = 1.44269504088896340736;
constexpr float kHalfLog2e = static_cast<float>(kLog2eD / 2);  // exp(-z^2 / 2) = exp2(-kHalfLog2e z^2)
constexpr float kLog2InvSqrt2Pi = -1.32574806473616503912f;    // log2(1 / sqrt(2 pi))
constexpr float kHalfSqrtHalf = 0.35355339059327376220f;       // 1 / (2 sqrt 2)
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kTanhCubic = 0.044715f;
constexpr float kTanhCubic3 = static_cast<float>(3 * 0.044715);  // as the CPU's T(3 * kTanhCubic)

// Numerical Recipes' erfcc (2nd ed., 6.2): erfc(x) = t exp(-x^2 + P(t)), t = 1 / (1 + x / 2) for
// x >= 0, relative error below 1.2e-7 everywhere (1.04e-7 measured in double on [0, 10]). P's
// coefficients here are pre-multiplied by log2(e) for exp2, and the constant one is lowered by 1 to
// fold in the 1/2 of Phi = erfc / 2.
constexpr float erfc_poly(int k) {
  constexpr double kCoefficients[10] = {-1.26551223, 1.00002368,  0.37409196, 0.09678418,  -0.18628806,
                                        0.27886807,  -1.13520398, 1.48851587, -0.82215223, 0.17087277};
  return static_cast<float>(kCoefficients[k] * kLog2eD - (k == 0 ? 1.0 : 0.0));
}

// Phi(z), the standard normal CDF = erfc(-z / sqrt 2) / 2, for the kErf form. CUDA's erff costs ~25
// instructions (both of its polynomials evaluated through selects, then an ex2 on one side); this is
// ~15: one approximate reciprocal, 9 FMAs, one ex2, a select. Relative error below 1e-5 in fp32
// over |z| <= 9 (7.5e-6 worst in a simulation; rounding in the exponent argument at large |z|),
// against bf16's 4e-3. Unlike 0.5 (1 + erf(z / sqrt 2)) the tail z < 0 keeps its relative precision:
// nothing cancels. Phi(+inf) = 1 and Phi(-inf) = 0 (t = 0; then gelu(-inf) = -inf * 0 = NaN, as the
// CPU's 0.5 z (1 + erf)); NaN stays NaN.
__device__ __forceinline__ float normal_cdf(float z) {
  const float t = __fdividef(1.0f, fmaf(kHalfSqrtHalf, fabsf(z), 1.0f));
  float p = erfc_poly(9);
#pragma unroll
  for (int k = 8; k >= 0; --k) p = fmaf(p, t, erfc_poly(k));
  const float half_erfc = t * exp2f(fmaf(-kHalfLog2e, z * z, p));  // erfc(|z| / sqrt 2) / 2
  return z > 0.0f ? 1.0f - half_erfc : half_erfc;
}

// The three ways the kernels compute GELU: ops.h's two kinds, the erf one with fast math (the
// default) or through erff / expf (KernelPaths::gelu_fast_math = false, the kernels before the fast
// math, kept to time against it).
enum class GeluForm { kErf, kErfLibm, kTanh };

constexpr float kSqrtHalf = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

template <GeluForm kForm>
__device__ __forceinline__ float gelu(float z) {
  if constexpr (kForm == GeluForm::kErf) {
    return z * normal_cdf(z);
  } else if constexpr (kForm == GeluForm::kErfLibm) {
    return 0.5f * z * (1.0f + erff(z * kSqrtHalf));
  } else {
    const float u = kSqrt2OverPi * (z + kTanhCubic * z * z * z);
    return 0.5f * z * (1.0f + tanhf(u));
  }
}

template <GeluForm kForm>
__device__ __forceinline__ float gelu_derivative(float z) {
  if constexpr (kForm == GeluForm::kErf) {
    // phi(z) = exp2(log2(1 / sqrt(2 pi)) - kHalfLog2e z^2): one FMA and one ex2 (2 ulp), where expf's
    // exact range reduction costs ~12 more instructions an element.
    const float pdf = exp2f(fmaf(-kHalfLog2e, z * z, kLog2InvSqrt2Pi));
    return fmaf(z, pdf, normal_cdf(z));
  } else if constexpr (kForm == GeluForm::kErfLibm) {
    const float cdf = 0.5f * (1.0f + erff(z * kSqrtHalf));
    const float pdf = kInvSqrt2Pi * expf(-0.5f * z * z);
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

template <int kWidth, GeluForm kForm>
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
      for (int i = 0; i < kWidth; ++i) v[k][i] = gelu<kForm>(v[k][i] + b[i]);
      store_bf16<kWidth>(y + (r0 + k) * cols + work.column, v[k]);
    }
  }
}

// dx = dy * gelu'(x + b); with dbias_partial, partial[chunk, column] = sum of the chunk's dx (fp32).
template <int kWidth, GeluForm kForm>
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
        v[k][i] = d[k][i] * gelu_derivative<kForm>(v[k][i] + b[i]);
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

// Calls launch(std::integral_constant<GeluForm, form>{}) with the form the kind and
// ctx.kernel_paths() ask for.
template <class Launch>
void with_form(const Context& ctx, GeluKind kind, const Launch& launch) {
  if (kind == GeluKind::kTanh)
    launch(std::integral_constant<GeluForm, GeluForm::kTanh>{});
  else if (ctx.kernel_paths().gelu_fast_math)
    launch(std::integral_constant<GeluForm, GeluForm::kErf>{});
  else
    launch(std::integral_constant<GeluForm, GeluForm::kErfLibm>{});
}

template <int kWidth>
void launch_forward(Context& ctx, GeluKind kind, const MatrixShape& shape, const bf16* x, const bf16* bias, bf16* y) {
  const dim3 grid = column_grid(shape, kWidth);
  const int64_t chunk_rows = rows_per_chunk(shape.rows);
  with_form(ctx, kind, [&](auto form) {
    // [[maybe_unused]]: the host emulation's launch puts the kernel call in a lambda of its own.
    [[maybe_unused]] constexpr GeluForm kForm = decltype(form)::value;
    bias_gelu_forward_kernel<kWidth, kForm>
        <<<grid, kColumnThreads, 0, ctx.stream()>>>(shape.rows, shape.cols, chunk_rows, x, bias, y);
  });
  CUDA_CHECK_LAUNCH();
}

template <int kWidth>
void launch_backward(Context& ctx, GeluKind kind, const MatrixShape& shape, const bf16* dy, const bf16* x,
                     const bf16* bias, bf16* dx, float* dbias_partial) {
  const dim3 grid = column_grid(shape, kWidth);
  const int64_t chunk_rows = rows_per_chunk(shape.rows);
  with_form(ctx, kind, [&](auto form) {
    // [[maybe_unused]]: the host emulation's launch puts the kernel call in a lambda of its own.
    [[maybe_unused]] constexpr GeluForm kForm = decltype(form)::value;
    bias_gelu_backward_kernel<kWidth, kForm>
        <<<grid, kColumnThreads, 0, ctx.stream()>>>(shape.rows, shape.cols, chunk_rows, dy, x, bias, dx, dbias_partial);
  });
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
