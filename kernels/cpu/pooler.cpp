// BERT pooler (HF BertPooler): pooled[b] = tanh(W h[b, 0] + bias) on the [CLS] (first) token of each
// sequence. encoder_out [batch * seq_len, hidden], W [hidden, hidden], pooled [batch, hidden].
// Backward: dz = dpooled * (1 - pooled^2); dW += dz^T h_cls, dbias += sum_b dz, and the [CLS] rows
// of d_encoder_out += dz W (the MLM head has already written the whole tensor).
// The [CLS] rows are read and written in place through a row stride of seq_len * hidden.
//
// Napkin math (batch 32, hidden 768): 2 * 32 * 768^2 = 38 MFLOP forward; tiny next to the encoder.
//
// Also the sparse MLM head's row moves: gather_rows (dst[i] = src[rows[i]]) picks the labelled
// encoder rows, scatter_add_rows (dst[rows[i]] += src[i]) returns their gradient. Pure copies and
// adds: 614 rows x 768 is 2 MB, nothing next to a GEMM.
#include <algorithm>

#include "kernels/cpu/ops_cpu_detail.h"

namespace bert::cpu {

namespace {

void check_shape(const PoolerShape& shape, const char* op) {
  detail::require(shape.batch >= 0 && shape.seq_len > 0 && shape.hidden > 0, op,
                  "need batch >= 0 and seq_len, hidden > 0");
}

void check_rows(int64_t num_rows, int64_t cols, const void* rows, const void* src, const void* dst, const char* op) {
  detail::require(num_rows >= 0 && cols > 0, op, "need num_rows >= 0 and cols > 0");
  detail::require(num_rows == 0 || (rows != nullptr && src != nullptr && dst != nullptr), op,
                  "rows, src and dst are required");
}

}  // namespace

template <class T>
void pooler_forward(Context& ctx, const PoolerShape& shape, const T* encoder_out, const T* weight, const T* bias,
                    T* pooled) {
  check_shape(shape, "pooler_forward");
  const int64_t batch = shape.batch, hidden = shape.hidden, cls_stride = shape.seq_len * shape.hidden;
  detail::gemm<T>(false, true, batch, hidden, hidden, T(1), encoder_out, cls_stride, weight, hidden, T(0), pooled,
                  hidden);
#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < hidden; ++j) pooled[b * hidden + j] = std::tanh(pooled[b * hidden + j] + bias[j]);
}

template <class T>
void pooler_backward(Context& ctx, const PoolerShape& shape, const T* dpooled, const T* encoder_out, const T* weight,
                     const T* pooled, T* d_encoder_out, T* dweight, T* dbias) {
  check_shape(shape, "pooler_backward");
  const int64_t batch = shape.batch, hidden = shape.hidden, cls_stride = shape.seq_len * shape.hidden;
  T* dz = ctx.scratch<T>(static_cast<size_t>(batch * hidden));
  for (int64_t i = 0; i < batch * hidden; ++i) dz[i] = dpooled[i] * (T(1) - pooled[i] * pooled[i]);
  if (d_encoder_out != nullptr)
    detail::gemm<T>(false, false, batch, hidden, hidden, T(1), dz, hidden, weight, hidden, T(1), d_encoder_out,
                    cls_stride);
  if (dweight != nullptr)
    detail::gemm<T>(true, false, hidden, hidden, batch, T(1), dz, hidden, encoder_out, cls_stride, T(1), dweight,
                    hidden);
  if (dbias != nullptr) detail::accumulate_column_sums(ctx, batch, hidden, dz, dbias);
}

template <class T>
void gather_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const T* src, T* dst) {
  check_rows(num_rows, cols, rows, src, dst, "gather_rows");
#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t i = 0; i < num_rows; ++i) std::copy_n(src + int64_t{rows[i]} * cols, cols, dst + i * cols);
}

template <class T>
void scatter_add_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const T* src, T* dst) {
  check_rows(num_rows, cols, rows, src, dst, "scatter_add_rows");
  // Distinct rows (the contract): every output row has one writer, so the loop parallelises.
#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t i = 0; i < num_rows; ++i) {
    T* out = dst + int64_t{rows[i]} * cols;
    const T* in = src + i * cols;
    for (int64_t c = 0; c < cols; ++c) out[c] += in[c];
  }
}

template void gather_rows<float>(Context&, int64_t, int64_t, const int32_t*, const float*, float*);
template void gather_rows<double>(Context&, int64_t, int64_t, const int32_t*, const double*, double*);
template void scatter_add_rows<float>(Context&, int64_t, int64_t, const int32_t*, const float*, float*);
template void scatter_add_rows<double>(Context&, int64_t, int64_t, const int32_t*, const double*, double*);

template void pooler_forward<float>(Context&, const PoolerShape&, const float*, const float*, const float*, float*);
template void pooler_forward<double>(Context&, const PoolerShape&, const double*, const double*, const double*,
                                     double*);
template void pooler_backward<float>(Context&, const PoolerShape&, const float*, const float*, const float*,
                                     const float*, float*, float*, float*);
template void pooler_backward<double>(Context&, const PoolerShape&, const double*, const double*, const double*,
                                      const double*, double*, double*, double*);

}  // namespace bert::cpu
