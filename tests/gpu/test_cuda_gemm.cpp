// CUDA linear layer (kernels/cuda/gemm.cu, cuBLASLt) against kernels/cpu's fp32 linear on the same
// bf16-rounded inputs: forward with and without bias, dx overwrite (into NaN-poisoned memory) and
// accumulate, dW and db accumulated onto nonzero values, bitwise-deterministic gradients, shapes
// that are odd on every axis (rows 1/3/129/1030, features 8..30522, some not multiples of 8), and
// the one-line errors for bad arguments.
#include <stdexcept>
#include <string>

#include "kernels/cpu/ops_cpu.h"
#include "tests/gpu/cuda_test_util.h"

namespace {

using bert::cuda::bf16;
using bert::cuda::Context;
using bert::cuda::DeviceBuffer;
using bert::ops::InputGrad;
using bert::ops::LinearShape;
using namespace bert::cuda::test;

constexpr double kBf16Tolerance = 1e-2;  // bf16 outputs (y, dx)
constexpr double kFp32Tolerance = 1e-4;  // fp32 outputs of exact bf16 products, fp32 sums (dW, db)

std::string describe(const LinearShape& shape) {
  return "rows=" + std::to_string(shape.rows) + " in=" + std::to_string(shape.in_features) +
         " out=" + std::to_string(shape.out_features);
}

// Host data of one linear layer, bf16-representable, and its device copies.
struct LinearData {
  LinearShape shape;
  std::vector<float> x, weight, bias, dy, dx_initial, dweight_initial, dbias_initial;
  DeviceBuffer<bf16> x_dev, weight_dev, bias_dev, dy_dev;

  LinearData(const LinearShape& s, uint64_t seed) : shape(s) {
    std::mt19937_64 rng(seed);
    const size_t rows = static_cast<size_t>(s.rows), in = static_cast<size_t>(s.in_features),
                 out = static_cast<size_t>(s.out_features);
    x = random_bf16_values(rng, rows * in);
    weight = random_bf16_values(rng, out * in);
    bias = random_bf16_values(rng, out);
    dy = random_bf16_values(rng, rows * out);
    dx_initial = random_bf16_values(rng, rows * in);  // bf16: the GPU's dx is bf16
    dweight_initial = random_floats(rng, out * in);
    dbias_initial = random_floats(rng, out);
    x_dev = upload_bf16(x);
    weight_dev = upload_bf16(weight);
    bias_dev = upload_bf16(bias);
    dy_dev = upload_bf16(dy);
  }
};

void check_forward(Context& ctx, bert::cpu::Context& cpu, const LinearData& data, bool with_bias) {
  const LinearShape& shape = data.shape;
  INFO(describe(shape) << (with_bias ? " with bias" : " without bias"));
  std::vector<float> expected(static_cast<size_t>(shape.rows * shape.out_features));
  bert::cpu::linear_forward<float>(cpu, shape, data.x.data(), data.weight.data(),
                                   with_bias ? data.bias.data() : nullptr, expected.data());
  DeviceBuffer<bf16> y = poisoned<bf16>(expected.size());
  bert::cuda::linear_forward(ctx, shape, data.x_dev.data(), data.weight_dev.data(),
                             with_bias ? data.bias_dev.data() : nullptr, y.data());
  ctx.synchronize();
  CHECK_CLOSE_REL("y", download_float(y), expected, kBf16Tolerance);
}

void check_backward(Context& ctx, bert::cpu::Context& cpu, const LinearData& data, InputGrad mode) {
  const LinearShape& shape = data.shape;
  INFO(describe(shape) << (mode == InputGrad::kAccumulate ? " dx accumulate" : " dx overwrite"));
  std::vector<float> dx_expected = mode == InputGrad::kAccumulate
                                       ? data.dx_initial
                                       : std::vector<float>(static_cast<size_t>(shape.rows * shape.in_features));
  std::vector<float> dweight_expected = data.dweight_initial, dbias_expected = data.dbias_initial;
  bert::cpu::linear_backward<float>(cpu, shape, data.dy.data(), data.x.data(), data.weight.data(), dx_expected.data(),
                                    dweight_expected.data(), dbias_expected.data(), mode);

  DeviceBuffer<bf16> dx =
      mode == InputGrad::kAccumulate ? upload_bf16(data.dx_initial) : poisoned<bf16>(dx_expected.size());
  DeviceBuffer<float> dweight = upload<float>(data.dweight_initial);
  DeviceBuffer<float> dbias = upload<float>(data.dbias_initial);
  bert::cuda::linear_backward(ctx, shape, data.dy_dev.data(), data.x_dev.data(), data.weight_dev.data(), dx.data(),
                              dweight.data(), dbias.data(), mode);
  ctx.synchronize();
  CHECK_CLOSE_REL("dx", download_float(dx), dx_expected, kBf16Tolerance);
  CHECK_CLOSE_REL("dweight", dweight.download(), dweight_expected, kFp32Tolerance);
  CHECK_CLOSE_REL("dbias", dbias.download(), dbias_expected, kFp32Tolerance);
}

// rows 1/3/129/1030 (1030 spans 9 bias-gradient chunks); features on the fast path (multiples of 8)
// and off it (13, 30522, 30521), with out odd, even-not-8 and multiple-of-8 for the three
// bias-gradient load widths.
const std::vector<LinearShape> kShapes = {
    {1, 8, 8},      {3, 768, 3072}, {129, 3072, 768}, {129, 768, 30522}, {1, 768, 30522},
    {3, 13, 30521}, {129, 8, 24},   {1030, 64, 40},   {3, 24, 13},
};

}  // namespace

TEST_CASE("cuda linear_forward equals the CPU reference, with and without bias", "[cuda][linear]") {
  Context ctx;
  bert::cpu::Context cpu;
  uint64_t seed = 1;
  for (const LinearShape& shape : kShapes) {
    const LinearData data(shape, seed++);
    check_forward(ctx, cpu, data, true);
    check_forward(ctx, cpu, data, false);
  }
}

TEST_CASE("cuda linear_backward equals the CPU reference: dx overwrite/accumulate, dW and db accumulate",
          "[cuda][linear]") {
  Context ctx;
  bert::cpu::Context cpu;
  uint64_t seed = 100;
  for (const LinearShape& shape : kShapes) {
    const LinearData data(shape, seed++);
    check_backward(ctx, cpu, data, InputGrad::kOverwrite);
    check_backward(ctx, cpu, data, InputGrad::kAccumulate);
  }
}

TEST_CASE("cuda linear_backward computes only the gradients asked for", "[cuda][linear]") {
  Context ctx;
  bert::cpu::Context cpu;
  const LinearShape shape{129, 768, 3072};
  const LinearData data(shape, 7);
  std::vector<float> dx_expected(static_cast<size_t>(shape.rows * shape.in_features));
  std::vector<float> dweight_expected = data.dweight_initial, dbias_expected = data.dbias_initial;
  bert::cpu::linear_backward<float>(cpu, shape, data.dy.data(), data.x.data(), data.weight.data(), dx_expected.data(),
                                    dweight_expected.data(), dbias_expected.data(), InputGrad::kOverwrite);

  SECTION("dbias only") {
    DeviceBuffer<float> dbias = upload<float>(data.dbias_initial);
    bert::cuda::linear_backward(ctx, shape, data.dy_dev.data(), nullptr, nullptr, nullptr, nullptr, dbias.data());
    ctx.synchronize();
    CHECK_CLOSE_REL("dbias", dbias.download(), dbias_expected, kFp32Tolerance);
  }
  SECTION("dx only") {
    DeviceBuffer<bf16> dx = poisoned<bf16>(dx_expected.size());
    bert::cuda::linear_backward(ctx, shape, data.dy_dev.data(), nullptr, data.weight_dev.data(), dx.data(), nullptr,
                                nullptr);
    ctx.synchronize();
    CHECK_CLOSE_REL("dx", download_float(dx), dx_expected, kBf16Tolerance);
  }
  SECTION("dweight only") {
    DeviceBuffer<float> dweight = upload<float>(data.dweight_initial);
    bert::cuda::linear_backward(ctx, shape, data.dy_dev.data(), data.x_dev.data(), nullptr, nullptr, dweight.data(),
                                nullptr);
    ctx.synchronize();
    CHECK_CLOSE_REL("dweight", dweight.download(), dweight_expected, kFp32Tolerance);
  }
}

TEST_CASE("cuda linear gradients are bitwise deterministic and accumulate over repeated calls", "[cuda][linear]") {
  Context ctx;
  const LinearShape shape{1030, 768, 3072};
  const LinearData data(shape, 11);
  auto run_twice = [&](std::vector<float>& dweight_out, std::vector<float>& dbias_out) {
    DeviceBuffer<float> dweight = upload<float>(data.dweight_initial);
    DeviceBuffer<float> dbias = upload<float>(data.dbias_initial);
    for (int call = 0; call < 2; ++call)
      bert::cuda::linear_backward(ctx, shape, data.dy_dev.data(), data.x_dev.data(), nullptr, nullptr, dweight.data(),
                                  dbias.data());
    ctx.synchronize();
    dweight_out = dweight.download();
    dbias_out = dbias.download();
  };
  std::vector<float> dweight_a, dbias_a, dweight_b, dbias_b;
  run_twice(dweight_a, dbias_a);
  run_twice(dweight_b, dbias_b);
  CHECK(std::memcmp(dweight_a.data(), dweight_b.data(), dweight_a.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(dbias_a.data(), dbias_b.data(), dbias_a.size() * sizeof(float)) == 0);

  // Two calls add twice the gradient: compare with the CPU accumulating twice.
  bert::cpu::Context cpu;
  std::vector<float> dweight_expected = data.dweight_initial, dbias_expected = data.dbias_initial;
  for (int call = 0; call < 2; ++call)
    bert::cpu::linear_backward<float>(cpu, shape, data.dy.data(), data.x.data(), nullptr, nullptr,
                                      dweight_expected.data(), dbias_expected.data(), InputGrad::kOverwrite);
  CHECK_CLOSE_REL("dweight (2 calls)", dweight_a, dweight_expected, kFp32Tolerance);
  CHECK_CLOSE_REL("dbias (2 calls)", dbias_a, dbias_expected, kFp32Tolerance);
}

TEST_CASE("cuda linear with zero rows writes nothing", "[cuda][linear]") {
  Context ctx;
  const LinearShape shape{0, 16, 8};
  std::mt19937_64 rng(5);
  const std::vector<float> dweight_initial = random_floats(rng, 16 * 8), dbias_initial = random_floats(rng, 8);
  DeviceBuffer<float> dweight = upload<float>(dweight_initial), dbias = upload<float>(dbias_initial);
  DeviceBuffer<bf16> weight = upload_bf16(random_bf16_values(rng, 16 * 8));
  DeviceBuffer<bf16> any(16);  // x, y, dy, dx: no element is touched
  bert::cuda::linear_forward(ctx, shape, any.data(), weight.data(), nullptr, any.data());
  bert::cuda::linear_backward(ctx, shape, any.data(), any.data(), weight.data(), any.data(), dweight.data(),
                              dbias.data());
  ctx.synchronize();
  CHECK(dweight.download() == dweight_initial);
  CHECK(dbias.download() == dbias_initial);
}

TEST_CASE("cuda linear rejects bad arguments with a one-line error before launching", "[cuda][linear]") {
  Context ctx;
  DeviceBuffer<bf16> buffer(64);
  DeviceBuffer<float> grads(64);
  bf16* p = buffer.data();
  const LinearShape shape{2, 4, 4};
  CHECK_THROWS_AS(bert::cuda::linear_forward(ctx, LinearShape{2, 0, 4}, p, p, nullptr, p), std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::linear_forward(ctx, LinearShape{-1, 4, 4}, p, p, nullptr, p), std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::linear_forward(ctx, shape, nullptr, p, nullptr, p), std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::linear_backward(ctx, shape, p, nullptr, p, nullptr, grads.data(), nullptr),
                  std::invalid_argument);  // dweight needs x
  CHECK_THROWS_AS(bert::cuda::linear_backward(ctx, shape, p, p, nullptr, p, nullptr, nullptr),
                  std::invalid_argument);  // dx needs weight
  const bf16* misaligned = reinterpret_cast<const bf16*>(reinterpret_cast<const char*>(p) + 1);
  CHECK_THROWS_WITH(bert::cuda::linear_forward(ctx, shape, misaligned, p, nullptr, p), Catch::Contains("not aligned"));
}
