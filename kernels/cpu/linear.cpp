// Linear (fully connected) layer, PyTorch layout: y[rows, out] = x[rows, in] W[out, in]^T + b[out].
// Backward: dx[rows, in] = dy W (overwrite or accumulate), dW[out, in] += dy^T x, db[out] += sum_rows dy.
//
// Napkin math (BERT-base FFN up-projection, rows = 32*128 = 4096, in = 768, out = 3072): forward
// 2*rows*in*out = 19.3 GFLOP, backward twice that; bytes ~ (rows*in + in*out + rows*out)*4 = 73 MB.
// Intensity ~ 260 FLOP/byte: compute bound, so all three products are one BLAS GEMM each; the bias
// add and the bias gradient are memory-bound passes over y / dy.
#include "kernels/cpu/ops_cpu_detail.h"

namespace bert::cpu {

namespace {

void check_shape(const LinearShape& shape, const char* op) {
  detail::require(shape.rows >= 0 && shape.in_features > 0 && shape.out_features > 0, op,
                  "need rows >= 0 and in_features, out_features > 0");
  detail::require(shape.out_stride == 0 || shape.out_stride >= shape.out_features, op,
                  "out_stride " + std::to_string(shape.out_stride) + " is below out_features " +
                      std::to_string(shape.out_features) + " (0 means dense)");
}

}  // namespace

template <class T>
void linear_forward(Context& ctx, const LinearShape& shape, const T* x, const T* weight, const T* bias, T* y) {
  check_shape(shape, "linear_forward");
  const int64_t rows = shape.rows, in = shape.in_features, out = shape.out_features, ldy = shape.y_stride();
  detail::gemm<T>(false, true, rows, out, in, T(1), x, in, weight, in, T(0), y, ldy);
  if (bias == nullptr) return;
#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t r = 0; r < rows; ++r) {
    T* y_row = y + r * ldy;
    for (int64_t j = 0; j < out; ++j) y_row[j] += bias[j];
  }
}

template <class T>
void linear_backward(Context& ctx, const LinearShape& shape, const T* dy, const T* x, const T* weight, T* dx,
                     T* dweight, T* dbias, InputGrad dx_mode) {
  check_shape(shape, "linear_backward");
  const int64_t rows = shape.rows, in = shape.in_features, out = shape.out_features, ldy = shape.y_stride();
  if (dx != nullptr) {
    const T beta = dx_mode == InputGrad::kAccumulate ? T(1) : T(0);
    detail::gemm<T>(false, false, rows, in, out, T(1), dy, ldy, weight, in, beta, dx, in);
  }
  if (dweight != nullptr) detail::gemm<T>(true, false, out, in, rows, T(1), dy, ldy, x, in, T(1), dweight, in);
  if (dbias != nullptr) detail::accumulate_column_sums(ctx, rows, out, dy, dbias, ldy);
}

template void linear_forward<float>(Context&, const LinearShape&, const float*, const float*, const float*, float*);
template void linear_forward<double>(Context&, const LinearShape&, const double*, const double*, const double*,
                                     double*);
template void linear_backward<float>(Context&, const LinearShape&, const float*, const float*, const float*, float*,
                                     float*, float*, InputGrad);
template void linear_backward<double>(Context&, const LinearShape&, const double*, const double*, const double*,
                                      double*, double*, double*, InputGrad);

}  // namespace bert::cpu
