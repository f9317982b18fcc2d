// Bias + GELU, the FFN activation after the (bias-free) up-projection GEMM:
// y = gelu(x + b), x/y [rows, cols], b [cols]. Backward: dx = dy * gelu'(x + b), db += sum_rows dx.
// kErf:  gelu(z) = 0.5 z (1 + erf(z / sqrt 2)),       gelu'(z) = Phi(z) + z phi(z)
// kTanh: gelu(z) = 0.5 z (1 + tanh(u)), u = sqrt(2/pi) (z + 0.044715 z^3),
//        gelu'(z) = 0.5 (1 + tanh u) + 0.5 z (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 z^2)
//
// Napkin math (BERT-base FFN: rows 4096, cols 3072, fp32 = 50 MB per matrix): forward reads x and
// writes y, ~100 MB; erf/tanh cost ~20-40 FLOPs each, so it sits between memory and compute bound
// (~10-20 ms on 2 cores). db is a column sum of dx in fixed row order (deterministic).
// fp32 kErf rows run on kernels/cpu/vector_math.h's vectorised Phi (glibc's erff is a scalar call:
// 13-16 ns per element on the build machine, against 1.5-6.6); double and kTanh use libm.
#include <type_traits>

#include "kernels/cpu/ops_cpu_detail.h"
#include "kernels/cpu/vector_math.h"

namespace bert::cpu {

namespace {

constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kTanhCubic = 0.044715;

template <class T>
T gelu(GeluKind kind, T z) {
  if (kind == GeluKind::kErf) return T(0.5) * z * (T(1) + std::erf(z * T(kSqrtHalf)));
  const T u = T(kSqrt2OverPi) * (z + T(kTanhCubic) * z * z * z);
  return T(0.5) * z * (T(1) + std::tanh(u));
}

template <class T>
T gelu_derivative(GeluKind kind, T z) {
  if (kind == GeluKind::kErf) {
    const T cdf = T(0.5) * (T(1) + std::erf(z * T(kSqrtHalf)));
    const T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * z * z);
    return cdf + z * pdf;
  }
  const T u = T(kSqrt2OverPi) * (z + T(kTanhCubic) * z * z * z);
  const T tanh_u = std::tanh(u);
  const T du_dz = T(kSqrt2OverPi) * (T(1) + T(3 * kTanhCubic) * z * z);
  return T(0.5) * (T(1) + tanh_u) + T(0.5) * z * (T(1) - tanh_u * tanh_u) * du_dz;
}

void check_shape(const MatrixShape& shape, const char* op) {
  detail::require(shape.rows >= 0 && shape.cols > 0, op, "need rows >= 0 and cols > 0");
}

}  // namespace

template <class T>
void bias_gelu_forward(Context& ctx, GeluKind kind, const MatrixShape& shape, const T* x, const T* bias, T* y) {
  check_shape(shape, "bias_gelu_forward");
  const int64_t rows = shape.rows, cols = shape.cols;
#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t r = 0; r < rows; ++r) {
    if constexpr (std::is_same_v<T, float>) {
      if (kind == GeluKind::kErf) {
        detail::gelu_erf_forward(x + r * cols, bias, y + r * cols, cols);
        continue;
      }
    }
    for (int64_t j = 0; j < cols; ++j) {
      const T z = x[r * cols + j] + (bias != nullptr ? bias[j] : T(0));
      y[r * cols + j] = gelu(kind, z);
    }
  }
}

template <class T>
void bias_gelu_backward(Context& ctx, GeluKind kind, const MatrixShape& shape, const T* dy, const T* x, const T* bias,
                        T* dx, T* dbias) {
  check_shape(shape, "bias_gelu_backward");
  detail::require(dbias == nullptr || bias != nullptr, "bias_gelu_backward", "dbias given without a bias");
  const int64_t rows = shape.rows, cols = shape.cols;
#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t r = 0; r < rows; ++r) {
    if constexpr (std::is_same_v<T, float>) {
      if (kind == GeluKind::kErf) {
        detail::gelu_erf_backward(dy + r * cols, x + r * cols, bias, dx + r * cols, cols);
        continue;
      }
    }
    for (int64_t j = 0; j < cols; ++j) {
      const T z = x[r * cols + j] + (bias != nullptr ? bias[j] : T(0));
      dx[r * cols + j] = dy[r * cols + j] * gelu_derivative(kind, z);
    }
  }
  if (dbias != nullptr) detail::accumulate_column_sums(ctx, rows, cols, dx, dbias);
}

#define BERT_INSTANTIATE_GELU(T)                                                                      \
  template void bias_gelu_forward<T>(Context&, GeluKind, const MatrixShape&, const T*, const T*, T*); \
  template void bias_gelu_backward<T>(Context&, GeluKind, const MatrixShape&, const T*, const T*, const T*, T*, T*);
BERT_INSTANTIATE_GELU(float)
BERT_INSTANTIATE_GELU(double)
#undef BERT_INSTANTIATE_GELU

}  // namespace bert::cpu
