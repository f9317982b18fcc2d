// Softmax cross-entropy with ignore_index, forward and backward fused (no probabilities stored):
// logits [rows, classes] with rows row_stride apart (the elements between are never touched), labels
// [rows] (ops::kIgnoreIndex skips a row). Returns the mean loss over counted rows, the counts, and
// writes dlogits = grad_scale * (softmax - onehot) / counted (zeros on ignored rows). dlogits may
// alias logits: each row is read fully before it is overwritten. Used for MLM (classes = vocab) and
// NSP (classes = 2).
//
// Napkin math (MLM over all 4096 tokens, vocab 30522, fp32): logits are 500 MB; one pass for the
// max and argmax, one for the sum of exponentials, one to write dlogits: ~1.5 GB of traffic and
// 125M exp() calls, ~0.2 s on 2 cores. Computing the head only on the ~15% masked rows (a gather
// before the decoder GEMM) divides that by ~7. Per-row losses are summed in row order.
#include "kernels/cpu/ops_cpu_detail.h"
#include "kernels/cpu/vector_math.h"

namespace bert::cpu {

template <class T>
CrossEntropyStats softmax_cross_entropy(Context& ctx, const LogitsShape& shape, const T* logits, const int32_t* labels,
                                        T grad_scale, T* dlogits) {
  const char* op = "softmax_cross_entropy";
  detail::require(shape.rows >= 0 && shape.classes > 0, op, "need rows >= 0 and classes > 0");
  detail::require(shape.row_stride == 0 || shape.row_stride >= shape.classes, op,
                  "row_stride " + std::to_string(shape.row_stride) + " is below classes " +
                      std::to_string(shape.classes) + " (0 means dense)");
  const int64_t rows = shape.rows, classes = shape.classes, stride = shape.stride();
  CrossEntropyStats stats;
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] == ops::kIgnoreIndex) continue;
    detail::require(labels[r] >= 0 && labels[r] < classes, op,
                    "label " + std::to_string(labels[r]) + " at row " + std::to_string(r) + " is outside [0, " +
                        std::to_string(classes) + ") and not the ignore index " + std::to_string(ops::kIgnoreIndex));
    ++stats.num_counted;
  }
  const T grad_per_row = stats.num_counted > 0 ? grad_scale / static_cast<T>(stats.num_counted) : T(0);
  // [rows] losses, then [rows] correct flags (0/1), summed in row order below.
  double* per_row = ctx.scratch<double>(static_cast<size_t>(2 * rows));

#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = logits + r * stride;
    const int32_t label = labels[r];
    if (label == ops::kIgnoreIndex) {
      per_row[r] = per_row[rows + r] = 0;
      if (dlogits != nullptr)
        for (int64_t c = 0; c < classes; ++c) dlogits[r * stride + c] = T(0);
      continue;
    }
    int64_t argmax = 0;
    for (int64_t c = 1; c < classes; ++c)
      if (row[c] > row[argmax]) argmax = c;
    const T max_logit = row[argmax], label_logit = row[label];
    // With a gradient, its row receives exp(row - max) in the same pass as the sum (it may be `row`
    // itself: the label's logit and the max are read already), so exp runs once per logit.
    T* grad = dlogits != nullptr ? dlogits + r * stride : nullptr;
    const T sum = detail::sum_exp_shifted(row, max_logit, classes, grad);
    const T log_sum = std::log(sum);
    per_row[r] = static_cast<double>(log_sum + max_logit - label_logit);
    per_row[rows + r] = argmax == label ? 1.0 : 0.0;
    if (grad != nullptr) {
      const T inv_sum = T(1) / sum;
      for (int64_t c = 0; c < classes; ++c) grad[c] = grad_per_row * (grad[c] * inv_sum);
      grad[label] -= grad_per_row;
    }
  }

  double loss_sum = 0, correct = 0;
  for (int64_t r = 0; r < rows; ++r) {
    loss_sum += per_row[r];
    correct += per_row[rows + r];
  }
  stats.loss = stats.num_counted > 0 ? loss_sum / static_cast<double>(stats.num_counted) : 0.0;
  stats.num_correct = static_cast<int64_t>(correct);
  return stats;
}

template CrossEntropyStats softmax_cross_entropy<float>(Context&, const LogitsShape&, const float*, const int32_t*,
                                                        float, float*);
template CrossEntropyStats softmax_cross_entropy<double>(Context&, const LogitsShape&, const double*, const int32_t*,
                                                         double, double*);

}  // namespace bert::cpu
