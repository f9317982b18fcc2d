// exp and the normal CDF for the CPU ops' element-wise loops, written so the compiler vectorises them
// (no calls, no branches: selects only), and array kernels built on them plus the Philox dropout
// masks. glibc's expf / erff are accurate but scalar calls; with the loops around them (cross-entropy,
// softmax, GELU) and the scalar Philox masks they were ~38% of the demo config's training step (perf,
// 2 cores: expf 9%, erff 4%, cross-entropy 9%, GELU 6%, dropout masks 10%). For T = double (the
// gradient checks) these are std::exp / std::erf, unchanged.
//
// exp (float): Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two so n * ln2_hi
// is exact), e^r by Cephes' expf polynomial (degree 5 on r, theoretical relative error 4.2e-9), then
// scaled by 2^n through the exponent bits. Rounding of n: the 1.5 * 2^23 trick (round to nearest,
// SSE2-friendly, exact for |t| < 2^22). Against glibc's expf: at most 1 ulp on every 7th float of
// [-87.3, 88.7] (measured once); tests/test_vector_math.cpp checks <= 2 ulp on every 101st. Edges: x > 88.72 -> +inf; x
// below log(FLT_MIN) = -87.34 -> 0 (expf would return a subnormal: under 1.2e-38 absolute); -inf -> 0; NaN -> NaN.
//
// Normal CDF Phi(z) = 0.5 erfc(-z / sqrt 2), what GELU needs (gelu(z) = z Phi(z)): erfc by the
// Chebyshev fit of Press et al. (Numerical Recipes, erfcc: erfc(u) = t exp(-u^2 - 1.26551223 +
// t P(t)), t = 1 / (1 + u / 2), u >= 0, fractional error < 1.2e-7 everywhere), reflected for u < 0.
// Because Phi is formed from erfc of |z| / sqrt 2 directly, it keeps its relative accuracy in the
// left tail (where 0.5 (1 + erf(z / sqrt 2)) cancels). Relative to a double-precision Phi (same
// test): <= 6e-7 on [-2, 2] (the float Horner sum in the exponent), <= 4e-8 above 2, growing to
// ~1e-5 at z = -12 (the rounding of z^2 / 2 in the exponent); 0 below z ~ -13.2, where Phi < FLT_MIN.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/ops.h"

namespace bert::cpu::detail {

inline float exp_float(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;       // 1.5 * 2^23
  constexpr float kMax = 88.7228394f;         // log(FLT_MAX)
  constexpr float kMinNormal = -87.3365479f;  // log(FLT_MIN)
  float clamped = x < kMinNormal ? kMinNormal : x;
  clamped = clamped > kMax ? kMax : clamped;
  const float n = (clamped * kLog2e + kRound) - kRound;  // round to nearest: n in [-126, 128]
  const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  // 2^n from the exponent bits; n = 128 (x >= 127.5 ln 2 = 88.38) as 2 * 2^127. A NaN x makes n NaN:
  // it is clamped too (to 127; the last line returns NaN), since converting NaN to int is undefined.
  const float n_scale = n < 127.0f ? n : 127.0f;
  const float result =
      (p * (n > 127.0f ? 2.0f : 1.0f)) * std::bit_cast<float>((static_cast<int32_t>(n_scale) + 127) << 23);
  const float edges = x > kMax ? std::numeric_limits<float>::infinity() : 0.0f;
  const float in_range = x < kMinNormal || x > kMax ? edges : result;
  return x != x ? x + x : in_range;  // NaN stays NaN
}

// Phi(z) = P(Z <= z) for a standard normal Z (see the top).
inline float normal_cdf_float(float z) {
  constexpr float kInvSqrt2 = 0.70710678118654752440f;
  const float u = (z < 0.0f ? -z : z) * kInvSqrt2;
  const float t = 1.0f / (1.0f + 0.5f * u);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  // u^2 as z^2 / 2 (one rounding, not two: the exponent's rounding error is the result's relative one).
  const float half_erfc = 0.5f * t * exp_float(-(0.5f * (z * z)) - 1.26551223f + t * p);  // 0.5 erfc(|z| / sqrt 2)
  return z < 0.0f ? half_erfc : 1.0f - half_erfc;
}

// ---- array kernels (kernels/cpu/vector_math.cpp) ---------------------------------------------------
// Built for x86-64 (SSE2), x86-64-v3 (AVX2) and x86-64-v4 (AVX-512) and picked at load time for the
// machine (GCC target_clones). Each element goes through the same IEEE operations in every build (no
// FMA contraction, no reassociation; sums in a fixed order), so the results are bitwise the same on
// every machine and equal to the scalar functions above. In place (y == x) is allowed.

// y[i] = exp(a * x[i] - b).
void exp_affine(const float* x, float a, float b, float* y, int64_t n);
// sum of exp(x[i] - shift), as 8 interleaved partial sums (element i into sum i % 8) added in a
// fixed tree; each exp(x[i] - shift) also stored to out[i] when out is not null (out == x allowed).
float sum_exp_shifted(const float* x, float shift, int64_t n, float* out = nullptr);
// GELU (erf form) on one row: z = x[i] + (bias ? bias[i] : 0); forward y[i] = z Phi(z); backward
// dx[i] = dy[i] (Phi(z) + z phi(z)).
void gelu_erf_forward(const float* x, const float* bias, float* y, int64_t n);
void gelu_erf_backward(const float* dy, const float* x, const float* bias, float* dx, int64_t n);

// multiplier[4 g + w] = (word w of ops::dropout_random_group(spec, first_group + g) >= the drop
// threshold) ? scale : 0, for g < groups: the dropout mask of whole Philox groups, 4 elements each.
void dropout_group_multipliers(const ops::DropoutSpec& spec, uint64_t first_group, int64_t groups, float scale,
                               float* multiplier);

// The same for T = double (the gradient checks): std::exp / std::erf, plain loops.
inline void exp_affine(const double* x, double a, double b, double* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(a * x[i] - b);
}
inline double sum_exp_shifted(const double* x, double shift, int64_t n, double* out = nullptr) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::exp(x[i] - shift);
    if (out != nullptr) out[i] = e;
    sum += e;
  }
  return sum;
}

}  // namespace bert::cpu::detail
