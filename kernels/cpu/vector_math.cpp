// The array kernels of kernels/cpu/vector_math.h, one build per x86-64 level (target_clones; the
// loader picks the widest the CPU has). Compiled with -ffp-contract=off and -fno-trapping-math
// (CMakeLists.txt): no multiply-add fusion, so every build computes the same bits; comparisons may be
// if-converted into vector selects.
//
// Measured on the 2-core AVX-512 build machine, 64k floats in [-10, 10], ns per element: exp 0.5
// (x86-64-v4), 1.05 (v3), 2.7 (baseline SSE2) against glibc expf's 3.3-4.0; GELU forward 1.5 / 2.7 /
// 6.6 against 13-16 with glibc's erff.
#include "kernels/cpu/vector_math.h"

#include <algorithm>

namespace bert::cpu::detail {

// GCC 12+ on x86-64 (the x86-64-vN names in target_clones), not under AddressSanitizer; else one
// baseline build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && !defined(__SANITIZE_ADDRESS__)
#define BERT_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BERT_VECTOR_CLONES
#endif

namespace {
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1 / sqrt(2 pi)
constexpr int kLanes = 8;

inline float bias_at(const float* bias, int64_t i) { return bias != nullptr ? bias[i] : 0.0f; }
}  // namespace

BERT_VECTOR_CLONES void exp_affine(const float* x, float a, float b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = exp_float(a * x[i] - b);
}

BERT_VECTOR_CLONES float sum_exp_shifted(const float* x, float shift, int64_t n, float* out) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  if (out == nullptr) {
    for (; i + kLanes <= n; i += kLanes)
      for (int lane = 0; lane < kLanes; ++lane) lanes[lane] += exp_float(x[i + lane] - shift);
  } else {
    for (; i + kLanes <= n; i += kLanes)
      for (int lane = 0; lane < kLanes; ++lane) {
        const float e = exp_float(x[i + lane] - shift);
        out[i + lane] = e;
        lanes[lane] += e;
      }
  }
  for (int lane = 0; i < n; ++i, ++lane) {
    const float e = exp_float(x[i] - shift);
    if (out != nullptr) out[i] = e;
    lanes[lane] += e;
  }
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

BERT_VECTOR_CLONES void gelu_erf_forward(const float* x, const float* bias, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float z = x[i] + bias_at(bias, i);
    y[i] = z * normal_cdf_float(z);
  }
}

BERT_VECTOR_CLONES void gelu_erf_backward(const float* dy, const float* x, const float* bias, float* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float z = x[i] + bias_at(bias, i);
    const float pdf = kInvSqrt2Pi * exp_float(-0.5f * z * z);
    dx[i] = dy[i] * (normal_cdf_float(z) + z * pdf);
  }
}

BERT_VECTOR_CLONES void dropout_group_multipliers(const ops::DropoutSpec& spec, uint64_t first_group, int64_t groups,
                                                  float scale, float* multiplier) {
  // One ops::philox4x32_10 per group; its 10 rounds unroll into straight-line code, so the loop over
  // groups vectorises (the 32 x 32 -> 64-bit products as 64-bit vector multiplies, the 4 words per
  // group as interleaved stores). 1.2 ns per element on AVX-512 against 1.7 scalar.
  const uint64_t threshold = ops::dropout_drop_threshold(spec.probability);
  for (int64_t g = 0; g < groups; ++g) {
    const ops::Philox4x32Result random = ops::dropout_random_group(spec, first_group + static_cast<uint64_t>(g));
    for (int word = 0; word < 4; ++word) multiplier[4 * g + word] = random.word[word] >= threshold ? scale : 0.0f;
  }
}

}  // namespace bert::cpu::detail
