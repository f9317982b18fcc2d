// Dropout with the counter-based Philox mask of kernels/ops.h: y = x * keep(seed, offset, i) / (1 - p).
// x/y (dy/dx) are flat [numel]; in place allowed. Backward regenerates the same mask from the same
// DropoutSpec, so nothing is stored between forward and backward and CUDA can produce the same bits.
//
// Napkin math (4096 x 768 fp32 = 12.6 MB): one read + one write, plus one Philox4x32-10 call
// (~10 rounds of 2 32x32->64 multiplies and xors) per 4 elements: ~15 integer ops per element,
// ~2-5 ms on 2 cores, about the cost of the memory traffic.
#include <type_traits>

#include "kernels/cpu/ops_cpu_detail.h"
#include "kernels/cpu/vector_math.h"

namespace bert::cpu {

namespace detail {

namespace {

// One Philox call per aligned group of 4 indices, scalar.
template <class T>
void multipliers_scalar(const DropoutSpec& dropout, uint64_t first_index, int64_t count, T scale, uint64_t threshold,
                        T* multiplier) {
  int64_t j = 0;
  while (j < count) {
    const uint64_t index = first_index + static_cast<uint64_t>(j);
    const ops::Philox4x32Result random = ops::dropout_random_group(dropout, index / 4);
    for (uint64_t lane = index % 4; lane < 4 && j < count; ++lane, ++j)
      multiplier[j] = random.word[lane] >= threshold ? scale : T(0);
  }
}

}  // namespace

template <class T>
void dropout_multipliers(const DropoutSpec& dropout, uint64_t first_index, int64_t count, T* multiplier) {
  if (dropout.probability == 0.0f) {
    for (int64_t j = 0; j < count; ++j) multiplier[j] = T(1);
    return;
  }
  const T scale = T(1) / (T(1) - static_cast<T>(dropout.probability));
  const uint64_t threshold = ops::dropout_drop_threshold(dropout.probability);
  if constexpr (std::is_same_v<T, float>) {
    // The whole groups vectorised (kernels/cpu/vector_math.h); the head before the first whole group
    // and the tail after the last, scalar.
    const int64_t head = std::min<int64_t>(count, static_cast<int64_t>((4 - first_index % 4) % 4));
    const int64_t groups = (count - head) / 4, tail_start = head + 4 * groups;
    multipliers_scalar(dropout, first_index, head, scale, threshold, multiplier);
    dropout_group_multipliers(dropout, (first_index + static_cast<uint64_t>(head)) / 4, groups, scale,
                              multiplier + head);
    multipliers_scalar(dropout, first_index + static_cast<uint64_t>(tail_start), count - tail_start, scale, threshold,
                       multiplier + tail_start);
  } else {
    multipliers_scalar(dropout, first_index, count, scale, threshold, multiplier);
  }
}

template void dropout_multipliers<float>(const DropoutSpec&, uint64_t, int64_t, float*);
template void dropout_multipliers<double>(const DropoutSpec&, uint64_t, int64_t, double*);

}  // namespace detail

namespace {

void check_spec(int64_t numel, const DropoutSpec& dropout, const char* op) {
  detail::require(numel >= 0, op, "numel < 0");
  detail::require(dropout.probability >= 0.0f && dropout.probability < 1.0f, op, "probability must be in [0, 1)");
}

// out[i] = in[i] * multiplier(i), in blocks of a fixed size so each block aligns to Philox groups.
template <class T>
void apply_dropout(Context& ctx, int64_t numel, const DropoutSpec& dropout, const T* in, T* out) {
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * kBlock, count = std::min(kBlock, numel - first);
    T multiplier[kBlock];
    detail::dropout_multipliers(dropout, static_cast<uint64_t>(first), count, multiplier);
    for (int64_t j = 0; j < count; ++j) out[first + j] = in[first + j] * multiplier[j];
  }
}

}  // namespace

template <class T>
void dropout_forward(Context& ctx, int64_t numel, const DropoutSpec& dropout, const T* x, T* y) {
  check_spec(numel, dropout, "dropout_forward");
  if (dropout.probability == 0.0f) {
    if (x != y) std::copy(x, x + numel, y);
    return;
  }
  apply_dropout(ctx, numel, dropout, x, y);
}

template <class T>
void dropout_backward(Context& ctx, int64_t numel, const DropoutSpec& dropout, const T* dy, T* dx) {
  check_spec(numel, dropout, "dropout_backward");
  if (dropout.probability == 0.0f) {
    if (dy != dx) std::copy(dy, dy + numel, dx);
    return;
  }
  apply_dropout(ctx, numel, dropout, dy, dx);
}

template void dropout_forward<float>(Context&, int64_t, const DropoutSpec&, const float*, float*);
template void dropout_forward<double>(Context&, int64_t, const DropoutSpec&, const double*, double*);
template void dropout_backward<float>(Context&, int64_t, const DropoutSpec&, const float*, float*);
template void dropout_backward<double>(Context&, int64_t, const DropoutSpec&, const double*, double*);

}  // namespace bert::cpu
