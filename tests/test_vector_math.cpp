// kernels/cpu/vector_math.h: the vectorised exp and normal CDF against libm / double precision, their
// edges (overflow, underflow, infinities, NaN), and the array kernels (the build for this machine's
// x86-64 level, picked at load time) bit for bit against the scalar functions compiled here for the
// baseline, so every level computes the same bits; the vectorised dropout masks against
// ops::dropout_keep at unaligned starts and lengths.
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/ops_cpu_detail.h"
#include "kernels/cpu/vector_math.h"

namespace {

using bert::cpu::detail::exp_float;
using bert::cpu::detail::normal_cdf_float;

int64_t ulp_distance(float a, float b) {
  const int64_t ia = std::bit_cast<int32_t>(a), ib = std::bit_cast<int32_t>(b);
  return ia > ib ? ia - ib : ib - ia;  // same sign here: exp > 0
}

double phi(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

std::vector<float> random_floats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

bool same_bits(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }

}  // namespace

TEST_CASE("exp_float is within 2 ulp of libm's expf over the normal range", "[vector_math]") {
  int64_t worst = 0;
  float worst_x = 0;
  int64_t checked = 0;
  // Every 101st bit pattern, both signs, wherever e^x is a normal float.
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFull; bits += 101) {
    const float x = std::bit_cast<float>(static_cast<uint32_t>(bits));
    if (!(x >= -87.3f && x <= 88.7f)) continue;
    const int64_t distance = ulp_distance(exp_float(x), std::exp(x));
    ++checked;
    if (distance > worst) {
      worst = distance;
      worst_x = x;
    }
  }
  INFO("worst at x = " << worst_x << " over " << checked << " points");
  CHECK(checked > 20'000'000);
  CHECK(worst <= 2);
}

TEST_CASE("exp_float edges: overflow, underflow, infinities, NaN", "[vector_math]") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(exp_float(0.0f) == 1.0f);
  CHECK(exp_float(-0.0f) == 1.0f);
  CHECK(exp_float(1.0f) == std::exp(1.0f));
  CHECK(ulp_distance(exp_float(88.72f), std::exp(88.72f)) <= 2);  // n = 128: scaled in two steps
  CHECK(std::isfinite(exp_float(88.72f)));
  CHECK(exp_float(88.73f) == inf);
  CHECK(exp_float(1000.0f) == inf);
  CHECK(exp_float(inf) == inf);
  CHECK(ulp_distance(exp_float(-87.33f), std::exp(-87.33f)) <= 2);
  CHECK(exp_float(-87.34f) == 0.0f);  // below FLT_MIN: flushed (expf: a subnormal < 1.2e-38)
  CHECK(exp_float(-1000.0f) == 0.0f);
  CHECK(exp_float(-inf) == 0.0f);
  CHECK(std::isnan(exp_float(std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("normal_cdf_float against double-precision Phi", "[vector_math]") {
  struct Range {
    double lo, hi, max_relative;
  };
  // Relative error bound per range: ~4 ulp around 0, better in the right tail; in the far left tail
  // the rounding of z^2 / 2 (the exponent) dominates, still far below the old 0.5 (1 + erff(z/sqrt 2)),
  // whose cancellation loses all digits there.
  const Range ranges[] = {{-2, 2, 8e-7}, {2, 14, 1e-7}, {-5, -2, 3e-6}, {-12, -5, 2e-5}};
  for (const Range& range : ranges) {
    double worst = 0, worst_z = 0;
    for (double z = range.lo; z <= range.hi; z += 3.7e-5) {
      const float zf = static_cast<float>(z);
      const double reference = phi(zf);
      const double relative = std::fabs(normal_cdf_float(zf) - reference) / reference;
      if (relative > worst) {
        worst = relative;
        worst_z = zf;
      }
    }
    INFO("[" << range.lo << ", " << range.hi << "]: worst relative error " << worst << " at z = " << worst_z);
    CHECK(worst <= range.max_relative);
  }
  CHECK(normal_cdf_float(0.0f) == Approx(0.5).epsilon(1e-6));
  CHECK(normal_cdf_float(20.0f) == 1.0f);
  CHECK(normal_cdf_float(-20.0f) == 0.0f);
  CHECK(normal_cdf_float(std::numeric_limits<float>::infinity()) == 1.0f);
  CHECK(normal_cdf_float(-std::numeric_limits<float>::infinity()) == 0.0f);
}

TEST_CASE("array kernels equal the scalar functions bit for bit", "[vector_math]") {
  namespace d = bert::cpu::detail;
  for (const int64_t n : {0, 1, 7, 8, 9, 31, 128, 1000, 16001}) {
    INFO("n = " << n);
    const std::vector<float> x = random_floats(static_cast<size_t>(n), -12.0f, 12.0f, 17 + static_cast<uint32_t>(n));
    const std::vector<float> bias = random_floats(static_cast<size_t>(n), -1.0f, 1.0f, 5);
    const std::vector<float> dy = random_floats(static_cast<size_t>(n), -2.0f, 2.0f, 9);

    std::vector<float> y(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
    d::exp_affine(x.data(), 0.125f, 1.5f, y.data(), n);
    for (int64_t i = 0; i < n; ++i) REQUIRE(same_bits(y[i], exp_float(0.125f * x[i] - 1.5f)));
    std::vector<float> in_place = x;
    d::exp_affine(in_place.data(), 1.0f, 0.25f, in_place.data(), n);
    for (int64_t i = 0; i < n; ++i) REQUIRE(same_bits(in_place[i], exp_float(x[i] - 0.25f)));

    float lanes[8] = {};
    for (int64_t i = 0; i < n; ++i) lanes[i % 8] += exp_float(x[i] - 3.0f);
    const float expected_sum =
        ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    const float sum = d::sum_exp_shifted(x.data(), 3.0f, n);
    CHECK(same_bits(sum, expected_sum));
    std::vector<float> stored = x;  // in place: the exps replace x
    CHECK(same_bits(d::sum_exp_shifted(stored.data(), 3.0f, n, stored.data()), expected_sum));
    for (int64_t i = 0; i < n; ++i) REQUIRE(same_bits(stored[i], exp_float(x[i] - 3.0f)));
    double exact = 0;
    for (int64_t i = 0; i < n; ++i) exact += std::exp(static_cast<double>(x[i]) - 3.0);
    CHECK(sum == Approx(exact).epsilon(1e-5).margin(1e-30));

    for (const bool with_bias : {false, true}) {
      const float* b = with_bias ? bias.data() : nullptr;
      std::vector<float> gelu(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
      std::vector<float> dgelu(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
      d::gelu_erf_forward(x.data(), b, gelu.data(), n);
      d::gelu_erf_backward(dy.data(), x.data(), b, dgelu.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const float z = x[i] + (with_bias ? bias[i] : 0.0f);
        REQUIRE(same_bits(gelu[i], z * normal_cdf_float(z)));
        const float pdf = 0.39894228040143267794f * exp_float(-0.5f * z * z);
        REQUIRE(same_bits(dgelu[i], dy[i] * (normal_cdf_float(z) + z * pdf)));
        // and close to the double-precision GELU and its derivative
        const double zd = z, cdf = phi(zd), pdf_d = std::exp(-0.5 * zd * zd) / std::sqrt(2 * M_PI);
        REQUIRE(gelu[i] == Approx(zd * cdf).epsilon(2e-5).margin(1e-30));
        REQUIRE(dgelu[i] == Approx(dy[i] * (cdf + zd * pdf_d)).epsilon(1e-5).margin(1e-6));
      }
    }
  }
}

TEST_CASE("dropout multipliers: the vectorised groups equal ops::dropout_keep at any start and length",
          "[vector_math]") {
  for (const float probability : {0.1f, 0.5f, 0.9f}) {
    // Group indices across 2^32 (the counter's high word in use) and a 64-bit seed and offset.
    const bert::ops::DropoutSpec spec{probability, 0x123456789abcdefull, (uint64_t{5} << 40) + 3};
    const float scale = 1.0f / (1.0f - probability);
    const uint64_t first_group = (uint64_t{1} << 32) - 37;
    std::vector<float> groups(4 * 101, std::numeric_limits<float>::quiet_NaN());
    bert::cpu::detail::dropout_group_multipliers(spec, first_group, 101, scale, groups.data());
    for (size_t i = 0; i < groups.size(); ++i)
      REQUIRE(groups[i] == (bert::ops::dropout_keep(spec, 4 * first_group + i) ? scale : 0.0f));

    for (const uint64_t first_index :
         {uint64_t{0}, uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{4} * first_group + 2}) {
      for (const int64_t count : {0, 1, 2, 3, 4, 5, 7, 8, 63, 130}) {
        INFO("p = " << probability << ", first index " << first_index << ", count " << count);
        std::vector<float> multipliers(static_cast<size_t>(count) + 1, std::numeric_limits<float>::quiet_NaN());
        bert::cpu::detail::dropout_multipliers(spec, first_index, count, multipliers.data());
        for (int64_t j = 0; j < count; ++j)
          REQUIRE(multipliers[j] == (bert::ops::dropout_keep(spec, first_index + j) ? scale : 0.0f));
        CHECK(std::isnan(multipliers[count]));  // nothing written past the end
      }
    }
  }
}
