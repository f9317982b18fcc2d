// CUDA linear layer (kernels/cuda/gemm.cu, cuBLASLt) against kernels/cpu's fp32 linear on the same
// bf16-rounded inputs: forward with and without bias, dx overwrite (into NaN-poisoned memory) and
// accumulate, dW and db accumulated onto nonzero values (db from the dW GEMM's BGRADB epilogue, from
// the column-sum kernels, and from them after the library declines the epilogue), bitwise-deterministic gradients,
// shapes that are odd on every axis (rows 1/3/129/1030, features 8..30522, some not multiples of 8), rows of y and dy
// out_stride apart (the padding neither read nor written), and the one-line errors for bad arguments. Every operand of
// the comparisons lives in a NaN-fenced allocation (a write past either end of an output fails), at a 256-byte-aligned
// address and at addresses aligned to the element only (offset 1: bf16 2-byte, fp32 4-byte; also offsets 2 and 4), one
// operand at a time and all together, after the aligned plan of the same shape is cached in the same Context (gemm.cu
// keys its cuBLASLt plans on the pointers' alignment); a pointer not aligned to its element is a clean
// std::invalid_argument that writes nothing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/cuda/cublaslt_library.h"
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

// The CPU's results for one LinearData: y with and without bias, dx overwritten and accumulated onto
// dx_initial, dW and db accumulated onto their initial values (only the forward or only the backward
// ones when the other pass is not compared).
struct Expected {
  std::vector<float> y_with_bias, y_without_bias, dx_overwrite, dx_accumulate, dweight, dbias;
};

Expected cpu_reference(bert::cpu::Context& cpu, const LinearData& data, bool forward = true, bool backward = true) {
  const LinearShape& shape = data.shape;
  Expected e;
  if (forward) {
    e.y_with_bias.resize(static_cast<size_t>(shape.rows * shape.out_features));
    e.y_without_bias.resize(e.y_with_bias.size());
    bert::cpu::linear_forward<float>(cpu, shape, data.x.data(), data.weight.data(), data.bias.data(),
                                     e.y_with_bias.data());
    bert::cpu::linear_forward<float>(cpu, shape, data.x.data(), data.weight.data(), nullptr, e.y_without_bias.data());
  }
  if (!backward) return e;
  e.dx_overwrite.resize(static_cast<size_t>(shape.rows * shape.in_features));
  e.dweight = data.dweight_initial;
  e.dbias = data.dbias_initial;
  bert::cpu::linear_backward<float>(cpu, shape, data.dy.data(), data.x.data(), data.weight.data(),
                                    e.dx_overwrite.data(), e.dweight.data(), e.dbias.data(), InputGrad::kOverwrite);
  e.dx_accumulate = data.dx_initial;
  bert::cpu::linear_backward<float>(cpu, shape, data.dy.data(), data.x.data(), data.weight.data(),
                                    e.dx_accumulate.data(), nullptr, nullptr, InputGrad::kAccumulate);
  return e;
}

// Where each operand of a comparison lives: its offset, in elements, into a NaN-fenced allocation
// (Bf16Tensor / Fp32Tensor; cudaMalloc'd, so offset 0 is 256-byte aligned). Offset 1 leaves a bf16
// pointer 2-byte and an fp32 pointer 4-byte aligned: aligned to the element only, the least gemm.cu
// accepts, which it passes to the cuBLASLt heuristic and keys its plan cache on.
struct Placement {
  std::string name = "every operand 256-byte aligned";
  size_t x = 0, weight = 0, bias = 0, y = 0, dy = 0, dx = 0, dweight = 0, dbias = 0;
};

Placement every_operand_at(size_t offset) {
  Placement at;
  at.name = "every operand at element offset " + std::to_string(offset);
  at.x = at.weight = at.bias = at.y = at.dy = at.dx = at.dweight = at.dbias = offset;
  return at;
}
Placement only_at(size_t Placement::*operand, const char* operand_name, size_t offset) {
  Placement at;
  at.name = std::string("only ") + operand_name + " at element offset " + std::to_string(offset);
  at.*operand = offset;
  return at;
}

void check_forward(Context& ctx, const LinearData& data, const Expected& expected, bool with_bias,
                   const Placement& at = Placement()) {
  const LinearShape& shape = data.shape;
  INFO(describe(shape) << (with_bias ? " with bias, " : " without bias, ") << at.name);
  Bf16Tensor x = Bf16Tensor::input(data.x, at.x), weight = Bf16Tensor::input(data.weight, at.weight),
             bias = Bf16Tensor::input(data.bias, at.bias);
  Bf16Tensor y = Bf16Tensor::output(expected.y_with_bias.size(), at.y);
  CHECK_NOTHROW(
      bert::cuda::linear_forward(ctx, shape, x.data(), weight.data(), with_bias ? bias.data() : nullptr, y.data()));
  ctx.synchronize();
  CHECK_CLOSE_REL("y", y.values(), with_bias ? expected.y_with_bias : expected.y_without_bias, kBf16Tolerance);
  CHECK(y.guards_intact());
  CHECK(x.guards_intact());
  CHECK(weight.guards_intact());
  CHECK(bias.guards_intact());
}

void check_backward(Context& ctx, const LinearData& data, const Expected& expected, InputGrad mode,
                    const Placement& at = Placement()) {
  const LinearShape& shape = data.shape;
  const bool accumulate = mode == InputGrad::kAccumulate;
  INFO(describe(shape) << (accumulate ? " dx accumulate, " : " dx overwrite, ") << at.name);
  Bf16Tensor dy = Bf16Tensor::input(data.dy, at.dy), x = Bf16Tensor::input(data.x, at.x),
             weight = Bf16Tensor::input(data.weight, at.weight);
  Bf16Tensor dx = accumulate ? Bf16Tensor::input(data.dx_initial, at.dx)
                             : Bf16Tensor::output(data.dx_initial.size(), at.dx);  // NaN: every element written
  Fp32Tensor dweight = Fp32Tensor::input(data.dweight_initial, at.dweight),
             dbias = Fp32Tensor::input(data.dbias_initial, at.dbias);
  CHECK_NOTHROW(bert::cuda::linear_backward(ctx, shape, dy.data(), x.data(), weight.data(), dx.data(), dweight.data(),
                                            dbias.data(), mode));
  ctx.synchronize();
  CHECK_CLOSE_REL("dx", dx.values(), accumulate ? expected.dx_accumulate : expected.dx_overwrite, kBf16Tolerance);
  CHECK_CLOSE_REL("dweight", dweight.values(), expected.dweight, kFp32Tolerance);
  CHECK_CLOSE_REL("dbias", dbias.values(), expected.dbias, kFp32Tolerance);
  CHECK(dx.guards_intact());
  CHECK(dweight.guards_intact());
  CHECK(dbias.guards_intact());
  CHECK(dy.guards_intact());
  CHECK(x.guards_intact());
  CHECK(weight.guards_intact());
}

// All four calls of one shape at one placement.
void check_all(Context& ctx, const LinearData& data, const Expected& expected, const Placement& at) {
  check_forward(ctx, data, expected, true, at);
  check_forward(ctx, data, expected, false, at);
  check_backward(ctx, data, expected, InputGrad::kOverwrite, at);
  check_backward(ctx, data, expected, InputGrad::kAccumulate, at);
}

// p moved by half an element: aligned to less than its element size.
template <class T>
T* half_element_off(T* p) {
  return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) + sizeof(T) / 2);
}

// rows 1/3/129/1030 (1030 spans 9 bias-gradient chunks); features on the fast path (multiples of 8)
// and off it (13, 30522, 30521), with out odd, even-not-8 and multiple-of-8 for the three
// bias-gradient load widths.
const std::vector<LinearShape> kShapes = {
    {1, 8, 8},      {3, 768, 3072}, {129, 3072, 768}, {129, 768, 30522}, {1, 768, 30522},
    {3, 13, 30521}, {129, 8, 24},   {1030, 64, 40},   {3, 24, 13},
};

// y and dy with rows out_stride apart (the MLM decoder's padded logits, engine/bert.cpp): the dense
// CPU results, y's padding never written (it stays NaN) and dy's never read (it is NaN, and would
// reach dx, dW and db). y and dy at element offset `offset` (1: aligned to the element only).
void check_strided(Context& ctx, bert::cpu::Context& cpu, const LinearShape& dense, int64_t stride, size_t offset,
                   uint64_t seed) {
  INFO(describe(dense) << ", rows of y and dy " << stride << " apart, at element offset " << offset);
  const LinearData data(dense, seed);
  const Expected expected = cpu_reference(cpu, data);
  LinearShape shape = dense;
  shape.out_stride = stride;
  const int64_t rows = dense.rows, out = dense.out_features;
  const size_t extent = static_cast<size_t>(rows * stride);
  std::vector<float> dy_rows(extent, std::numeric_limits<float>::quiet_NaN());
  for (int64_t r = 0; r < rows; ++r) std::copy_n(data.dy.begin() + r * out, out, dy_rows.begin() + r * stride);
  // The [rows, out] values of a [rows, stride] tensor; every padding element must be NaN.
  auto dense_rows = [&](const std::vector<float>& all) {
    std::vector<float> values(static_cast<size_t>(rows * out));
    bool padding_nan = true;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < stride; ++c) {
        const float v = all[static_cast<size_t>(r * stride + c)];
        if (c < out)
          values[static_cast<size_t>(r * out + c)] = v;
        else
          padding_nan = padding_nan && std::isnan(v);
      }
    CHECK(padding_nan);
    return values;
  };
  Bf16Tensor x = Bf16Tensor::input(data.x, 0), weight = Bf16Tensor::input(data.weight, 0),
             bias = Bf16Tensor::input(data.bias, 0);
  for (const bool with_bias : {true, false}) {
    INFO((with_bias ? "with bias" : "without bias"));
    Bf16Tensor y = Bf16Tensor::output(extent, offset);
    CHECK_NOTHROW(
        bert::cuda::linear_forward(ctx, shape, x.data(), weight.data(), with_bias ? bias.data() : nullptr, y.data()));
    ctx.synchronize();
    CHECK_CLOSE_REL("y", dense_rows(y.values()), with_bias ? expected.y_with_bias : expected.y_without_bias,
                    kBf16Tolerance);
    CHECK(y.guards_intact());
  }
  Bf16Tensor dy = Bf16Tensor::input(dy_rows, offset);
  Bf16Tensor dx = Bf16Tensor::output(data.dx_initial.size(), 0);
  Fp32Tensor dweight = Fp32Tensor::input(data.dweight_initial, 0), dbias = Fp32Tensor::input(data.dbias_initial, 0);
  CHECK_NOTHROW(bert::cuda::linear_backward(ctx, shape, dy.data(), x.data(), weight.data(), dx.data(), dweight.data(),
                                            dbias.data(), InputGrad::kOverwrite));
  ctx.synchronize();
  CHECK_CLOSE_REL("dx", dx.values(), expected.dx_overwrite, kBf16Tolerance);
  CHECK_CLOSE_REL("dweight", dweight.values(), expected.dweight, kFp32Tolerance);
  CHECK_CLOSE_REL("dbias", dbias.values(), expected.dbias, kFp32Tolerance);
  CHECK(dx.guards_intact());
  CHECK(dweight.guards_intact());
  CHECK(dbias.guards_intact());
}

}  // namespace

TEST_CASE("cuda linear_forward equals the CPU reference, with and without bias", "[cuda][linear]") {
  Context ctx;
  bert::cpu::Context cpu;
  uint64_t seed = 1;
  for (const LinearShape& shape : kShapes) {
    const LinearData data(shape, seed++);
    const Expected expected = cpu_reference(cpu, data, /*forward=*/true, /*backward=*/false);
    check_forward(ctx, data, expected, true);
    check_forward(ctx, data, expected, false);
  }
}

TEST_CASE("cuda linear_backward equals the CPU reference: dx overwrite/accumulate, dW and db accumulate",
          "[cuda][linear]") {
  Context ctx;
  bert::cpu::Context cpu;
  uint64_t seed = 100;
  for (const LinearShape& shape : kShapes) {
    const LinearData data(shape, seed++);
    const Expected expected = cpu_reference(cpu, data, /*forward=*/false, /*backward=*/true);
    check_backward(ctx, data, expected, InputGrad::kOverwrite);
    check_backward(ctx, data, expected, InputGrad::kAccumulate);
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

// KernelPaths::gemm_bias_gradient_epilogue: with dW asked for, db comes from the dW GEMM's BGRADB
// epilogue (into scratch, then added) or from the column-sum kernels; and where cublasLtMatmul declines
// an epilogue its heuristic offered (forced under the kernel emulation), from the column sums after
// all, that call and every later one. Each way db (and dW, dx) equal the CPU's, twice over on the same
// plans, and under the kernel emulation the launched kernels and the plan report say which way ran.
TEST_CASE("cuda linear_backward's db from the dW GEMM's epilogue or the column sums: both the CPU's",
          "[cuda][linear]") {
  struct Setting {
    const char* name;
    bool epilogue, refused;
    int autotune;
  };
  bert::cpu::Context cpu;
  const bool emulated = bert::cuda::cublaslt_api().path == "emulated";
  uint64_t seed = 400;
  for (const Setting setting :
       {Setting{"BGRADB epilogue", true, false, 0}, Setting{"column-sum kernels", false, false, 0},
        Setting{"BGRADB declined at cublasLtMatmul", true, true, 0},
        Setting{"BGRADB declined at cublasLtMatmul, autotuned", true, true, 4}}) {
    if (setting.refused && !emulated) continue;  // only the emulated library can be told to decline
    // k = rows: 1 never gets the epilogue (gemm.cu: OneFlow's "wrong bias grad in cublas_k == 1").
    for (const LinearShape& shape :
         {LinearShape{1030, 64, 40}, LinearShape{129, 768, 3072}, LinearShape{3, 24, 13}, LinearShape{1, 24, 16}}) {
      INFO(setting.name << ", " << describe(shape));
      const LinearData data(shape, seed++);
      const Expected expected = cpu_reference(cpu, data, /*forward=*/false, /*backward=*/true);
      Context ctx;
      bert::cuda::KernelPaths paths;
      paths.gemm_bias_gradient_epilogue = setting.epilogue;
      ctx.set_kernel_paths(paths);
      ctx.set_gemm_autotune(setting.autotune);
#if defined(BERT_KERNEL_EMULATION)
      struct Decline {
        explicit Decline(bool refuse) { ::emu::refuse_bias_gradient_epilogue_at_matmul(refuse); }
        ~Decline() { ::emu::refuse_bias_gradient_epilogue_at_matmul(false); }
      } decline(setting.refused);
#endif
      (void)launched_kernels();
      for (int call = 0; call < 2; ++call) check_backward(ctx, data, expected, InputGrad::kAccumulate);
      const auto names = launched_kernels();
      if (!emulated || !names) continue;
      const bool from_epilogue = setting.epilogue && !setting.refused && shape.rows > 1;
      CHECK(launched(*names, "bias_grad_partial_kernel") != from_epilogue);
      if (from_epilogue) CHECK(launched(*names, "bias_grad_add_kernel"));  // adds the epilogue's sums to db
      // More than 128 rows: the column sums' chunks are added by the finalize the column kernels share.
      CHECK(launched(*names, "accumulate_partials_kernel") == (!from_epilogue && shape.rows > 128));
      int weight_plans = 0;
      for (const bert::cuda::GemmPlanInfo& plan : ctx.gemm_plans()) {
        if (plan.product.find("linear_backward (dW") != 0) continue;
        ++weight_plans;
        CHECK(plan.bias_gradient_epilogue == from_epilogue);
        CHECK(plan.accumulate);
        CHECK_FALSE(plan.bias_epilogue);
        CHECK((bert::cuda::describe_gemm_plan(plan).find("+dbias") != std::string::npos) == from_epilogue);
        // Autotuned: the candidates timed are the plain GEMM's (every BGRADB one declined), rank 2 refusing.
        if (setting.autotune > 0) {
          REQUIRE(plan.candidate_ms.size() == 3);
          CHECK(plan.candidate_ms[plan.chosen] >= 0);
        }
      }
      CHECK(weight_plans == 1);  // the declined plan was replaced, not kept beside its successor
    }
  }
}

#if defined(BERT_KERNEL_EMULATION)
// Only the emulated library can be told to decline an algorithm it offered, so this case exists only
// in the emulated builds (tests/kernel_emu/cublaslt_emu.cpp: emu::refuse_algorithm_at_matmul).
TEST_CASE("cuda linear: a rank autotuned for its class that cublasLtMatmul declines for a shape falls back to rank 0",
          "[cuda][linear]") {
  REQUIRE(bert::cuda::cublaslt_api().path == "emulated");
  bert::cpu::Context cpu;
  Context ctx;
  ctx.set_gemm_autotune(4);
  struct Restore {
    ~Restore() { ::emu::refuse_algorithm_at_matmul(-1); }
  } restore;
  // Rows 129 timed with rank 0 declining (rank 2 always does): rank 1 wins for the class.
  ::emu::refuse_algorithm_at_matmul(0);
  const LinearData tuned(LinearShape{129, 64, 48}, 51);
  check_forward(ctx, tuned, cpu_reference(cpu, tuned), true);
  REQUIRE(ctx.gemm_plans().size() == 1);
  CHECK(ctx.gemm_plans()[0].chosen == 1);
  // Rows 200, the same class: rank 1 reused untimed, declined, so planned again with rank 0.
  ::emu::refuse_algorithm_at_matmul(1);
  const LinearData similar(LinearShape{200, 64, 48}, 52);
  const Expected similar_expected = cpu_reference(cpu, similar);
  for (int call = 0; call < 2; ++call) check_forward(ctx, similar, similar_expected, true);
  const std::vector<bert::cuda::GemmPlanInfo> plans = ctx.gemm_plans();
  REQUIRE(plans.size() == 2);  // the declined plan replaced, not kept beside its successor
  CHECK(plans[1].n == 200);
  CHECK(plans[1].chosen == 0);
  CHECK_FALSE(plans[1].rank_reused);
  CHECK(plans[1].candidate_ms.empty());
}
#endif

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

TEST_CASE("cuda linear with autotuned algorithms equals the CPU reference and reports every plan", "[cuda][linear]") {
  Context ctx;
  CHECK(ctx.gemm_autotune() == 0);
  CHECK_THROWS_AS(ctx.set_gemm_autotune(-1), std::invalid_argument);
  CHECK_THROWS_WITH(ctx.set_gemm_autotune(Context::kMaxGemmAutotune + 1), Catch::Contains("0..32"));
  bert::cpu::Context cpu;
  // One shape on the fast path and one off it; the untuned plan of the first is made first, so the
  // report shows both kinds and the autotuned plan is a new one (the setting is part of the key).
  const LinearData fast(LinearShape{129, 768, 3072}, 31), odd(LinearShape{3, 24, 13}, 32);
  const Expected fast_expected = cpu_reference(cpu, fast), odd_expected = cpu_reference(cpu, odd);
  check_forward(ctx, fast, fast_expected, true);
  REQUIRE(ctx.gemm_plans().size() == 1);
  ctx.set_gemm_autotune(4);
  for (const LinearData* data : {&fast, &odd}) {
    const Expected& expected = data == &fast ? fast_expected : odd_expected;
    // Accumulating dx, dW and db onto nonzero values: a candidate timed on the caller's own D would
    // add its product several times.
    check_all(ctx, *data, expected, Placement());
    check_all(ctx, *data, expected, every_operand_at(1));
  }
  const std::vector<bert::cuda::GemmPlanInfo> plans = ctx.gemm_plans();
  REQUIRE(plans.size() > 1);
  CHECK(plans[0].candidate_ms.empty());  // made before autotuning was set
  CHECK(plans[0].offered == 1);
  CHECK(plans[0].product.find("linear_forward") == 0);
  CHECK(plans[0].bias_epilogue);
  const bool emulated = bert::cuda::cublaslt_api().path == "emulated";
  int tuned = 0;
  for (const bert::cuda::GemmPlanInfo& plan : plans) {
    INFO(plan.product << " m=" << plan.m << " n=" << plan.n << " k=" << plan.k << ": " << plan.algorithm);
    CHECK(!plan.algorithm.empty());
    CHECK(plan.m > 0);
    CHECK(plan.n > 0);
    CHECK(plan.k > 0);
    CHECK(plan.offered >= 1);
    CHECK(plan.offered <= 4);
    CHECK(plan.chosen >= 0);
    CHECK(plan.chosen < plan.offered);
    if (plan.candidate_ms.empty()) continue;
    ++tuned;
    REQUIRE(plan.candidate_ms.size() == static_cast<size_t>(plan.offered));
    const double chosen_ms = plan.candidate_ms[static_cast<size_t>(plan.chosen)];
    CHECK(chosen_ms >= 0);
    for (const double ms : plan.candidate_ms) CHECK((ms < 0 || ms >= chosen_ms));
    if (emulated) {
      // Three offered, the last refusing to run (tests/kernel_emu/cublaslt_emu.cpp).
      CHECK(plan.offered == 3);
      CHECK(plan.candidate_ms[2] < 0);
      CHECK(plan.chosen < 2);
      CHECK(plan.algorithm == "algo " + std::to_string(plan.chosen) + ", tile 128x128, split-k 1");
    }
  }
  CHECK(tuned > 0);  // 129 x 768 x 3072 gets several algorithms from any cuBLASLt
  if (emulated) CHECK(tuned == static_cast<int>(plans.size()) - 1);
  // A shape of a class already timed (rows 200 and 129 both round up to 256) takes the rank timed
  // for it, untimed: the MLM head's GEMMs, whose rows change with every batch, are tuned once.
  const LinearData similar(LinearShape{200, 768, 3072}, 33);
  const Expected similar_expected = cpu_reference(cpu, similar);
  check_all(ctx, similar, similar_expected, Placement());
  const std::vector<bert::cuda::GemmPlanInfo> after = ctx.gemm_plans();
  REQUIRE(after.size() == plans.size() + 5);  // forward with and without bias, dW, dx overwrite and accumulate
  for (size_t i = plans.size(); i < after.size(); ++i) {
    const bert::cuda::GemmPlanInfo& plan = after[i];
    INFO(plan.product << " m=" << plan.m << " n=" << plan.n << " k=" << plan.k << ": " << plan.algorithm);
    CHECK(plan.candidate_ms.empty());
    // Its class's rank: the tuned plan of the same product and epilogue at rows 129, placement 0.
    const auto twin = std::find_if(plans.begin() + 1, plans.end(), [&](const bert::cuda::GemmPlanInfo& p) {
      return p.product == plan.product && p.bias_epilogue == plan.bias_epilogue &&
             p.bias_gradient_epilogue == plan.bias_gradient_epilogue && p.accumulate == plan.accumulate &&
             p.m == plan.m && (p.n == 129 || p.k == 129) && !p.candidate_ms.empty();
    });
    if (emulated) REQUIRE(twin != plans.end());  // every emulated plan was offered three algorithms
    if (twin != plans.end() && twin->chosen < plan.offered) {
      CHECK(plan.rank_reused);
      CHECK(plan.chosen == twin->chosen);
    } else {
      CHECK_FALSE(plan.rank_reused);  // a class never timed (one algorithm offered), or its rank not offered here
    }
  }
  if (emulated)
    CHECK(bert::cuda::describe_gemm_plan(after.back()).find("(timed for a shape of its class)") != std::string::npos);

  // The three products of both shapes, autotuned: forward (with and without bias), dx, dW.
  for (const char* product : {"linear_forward", "linear_backward (dx", "linear_backward (dW"}) {
    INFO(product);
    CHECK(std::count_if(plans.begin() + 1, plans.end(),
                        [&](const bert::cuda::GemmPlanInfo& plan) { return plan.product.find(product) == 0; }) >= 2);
  }
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

TEST_CASE("cuda linear rejects a pointer not aligned to its element size: std::invalid_argument, nothing written",
          "[cuda][linear]") {
  Context ctx;
  bert::cpu::Context cpu;
  const LinearShape shape{3, 24, 16};
  const LinearData data(shape, 21);
  const Expected expected = cpu_reference(cpu, data);
  Bf16Tensor x = Bf16Tensor::input(data.x, 0), weight = Bf16Tensor::input(data.weight, 0),
             bias = Bf16Tensor::input(data.bias, 0), dy = Bf16Tensor::input(data.dy, 0);
  Bf16Tensor y = Bf16Tensor::output(expected.y_with_bias.size(), 0), dx = Bf16Tensor::output(data.dx_initial.size(), 0);
  Fp32Tensor dweight = Fp32Tensor::input(data.dweight_initial, 0), dbias = Fp32Tensor::input(data.dbias_initial, 0);

  const auto rejects = [](const auto& call, const std::string& words) {
    INFO("expecting std::invalid_argument with '" << words << "'");
    CHECK_THROWS_AS(call(), std::invalid_argument);
    CHECK_THROWS_WITH(call(), Catch::Contains(words));
  };
  // Each pointer alone half an element off (1 byte for bf16, 2 for fp32), all others valid.
  rejects(
      [&] { bert::cuda::linear_forward(ctx, shape, half_element_off(x.data()), weight.data(), bias.data(), y.data()); },
      "linear_forward: x is not aligned");
  rejects(
      [&] { bert::cuda::linear_forward(ctx, shape, x.data(), half_element_off(weight.data()), bias.data(), y.data()); },
      "linear_forward: weight is not aligned");
  rejects(
      [&] { bert::cuda::linear_forward(ctx, shape, x.data(), weight.data(), half_element_off(bias.data()), y.data()); },
      "linear_forward: bias is not aligned");
  rejects(
      [&] { bert::cuda::linear_forward(ctx, shape, x.data(), weight.data(), bias.data(), half_element_off(y.data())); },
      "linear_forward: y is not aligned");
  rejects(
      [&] {
        bert::cuda::linear_backward(ctx, shape, half_element_off(dy.data()), x.data(), weight.data(), dx.data(),
                                    dweight.data(), dbias.data());
      },
      "linear_backward: dy is not aligned");
  rejects(
      [&] {
        bert::cuda::linear_backward(ctx, shape, dy.data(), half_element_off(x.data()), weight.data(), dx.data(),
                                    dweight.data(), dbias.data());
      },
      "linear_backward: x (needed for dweight) is not aligned");
  rejects(
      [&] {
        bert::cuda::linear_backward(ctx, shape, dy.data(), x.data(), half_element_off(weight.data()), dx.data(),
                                    dweight.data(), dbias.data());
      },
      "linear_backward: weight (needed for dx) is not aligned");
  rejects(
      [&] {
        bert::cuda::linear_backward(ctx, shape, dy.data(), x.data(), weight.data(), half_element_off(dx.data()),
                                    dweight.data(), dbias.data());
      },
      "linear_backward: dx is not aligned");
  rejects(
      [&] {
        bert::cuda::linear_backward(ctx, shape, dy.data(), x.data(), weight.data(), dx.data(),
                                    half_element_off(dweight.data()), dbias.data());
      },
      "linear_backward: dweight is not aligned");
  rejects(
      [&] {
        bert::cuda::linear_backward(ctx, shape, dy.data(), x.data(), weight.data(), dx.data(), dweight.data(),
                                    half_element_off(dbias.data()));
      },
      "linear_backward: dbias is not aligned");

  // Rejected before launching: the outputs keep their poison and priors bit for bit, guards included.
  ctx.synchronize();
  const std::vector<uint16_t> y_bits = y.bits(), dx_bits = dx.bits();
  CHECK(std::all_of(y_bits.begin(), y_bits.end(), [](uint16_t b) { return b == 0xFFFFu; }));
  CHECK(std::all_of(dx_bits.begin(), dx_bits.end(), [](uint16_t b) { return b == 0xFFFFu; }));
  CHECK(same_bits(dweight.values(), data.dweight_initial));
  CHECK(same_bits(dbias.values(), data.dbias_initial));
  CHECK(dweight.guards_intact());
  CHECK(dbias.guards_intact());

  // The Context is still fine for valid calls.
  check_all(ctx, data, expected, Placement());
}

// gemm.cu caches one cuBLASLt plan per (product, shape, alignments). With features multiples of 8
// the aligned call may get a kernel that assumes 16-byte operands (TMA); each operand alone at a
// 2-byte (bf16) or 4-byte (fp32) address must then get a plan of its own, not that one. The bias goes
// last: cuBLASLt's alignment preferences do not cover the epilogue's bias pointer, so if an
// under-aligned bias faults, the other operands have been reported first.
TEST_CASE("cuda linear with one operand aligned to its element only, after the aligned plan is cached",
          "[cuda][linear]") {
  Context ctx;
  bert::cpu::Context cpu;
  const LinearShape shape{129, 768, 3072};
  const LinearData data(shape, 31);
  const Expected expected = cpu_reference(cpu, data);
  check_all(ctx, data, expected, Placement());  // caches the aligned plans
  check_all(ctx, data, expected, only_at(&Placement::x, "x", 1));
  check_all(ctx, data, expected, only_at(&Placement::weight, "weight", 1));
  check_all(ctx, data, expected, only_at(&Placement::y, "y", 1));
  check_all(ctx, data, expected, only_at(&Placement::dy, "dy", 1));
  check_all(ctx, data, expected, only_at(&Placement::dx, "dx", 1));
  check_all(ctx, data, expected, only_at(&Placement::dweight, "dweight", 1));
  check_all(ctx, data, expected, only_at(&Placement::dbias, "dbias", 1));
  check_all(ctx, data, expected, only_at(&Placement::bias, "bias", 1));
  check_all(ctx, data, expected, Placement());  // the aligned plans are still the right ones
}

// Every operand (x, W, bias, y, dy, dx; fp32 dW, db) at element offset 1, 2 and 4 inside NaN-fenced
// buffers: bf16 pointers 2-, 4- and 8-byte aligned (the bias gradient's loads: scalar at offset 1,
// 2-wide at offsets 2 and 4 where out is even; 8-wide only at offset 0), fp32 ones 4-, 8- and 16-byte
// aligned, on shapes of kShapes' kinds (features multiples of 8 or not, 1030 rows for 9 bias chunks).
TEST_CASE("cuda linear with every operand at an element offset equals the CPU reference, guards untouched",
          "[cuda][linear]") {
  const std::vector<LinearShape> shapes = {{1, 8, 8},        {3, 24, 13},    {129, 8, 24},   {1030, 64, 40},
                                           {129, 768, 3072}, {3, 13, 30521}, {1, 768, 30522}};
  Context ctx;
  bert::cpu::Context cpu;
  uint64_t seed = 200;
  for (const LinearShape& shape : shapes) {
    const LinearData data(shape, seed++);
    const Expected expected = cpu_reference(cpu, data);
    check_all(ctx, data, expected, Placement());
    for (const size_t offset : {size_t{1}, size_t{2}, size_t{4}})
      check_all(ctx, data, expected, every_operand_at(offset));
  }
}

TEST_CASE("cuda linear with rows of y and dy out_stride apart equals the dense CPU reference", "[cuda][linear]") {
  Context ctx;
  bert::cpu::Context cpu;
  check_strided(ctx, cpu, {37, 64, 30522}, 30528, 0, 501);  // the MLM decoder's padded logits
  check_strided(ctx, cpu, {37, 64, 30522}, 30528, 1, 502);  // y and dy aligned to the element only
  check_strided(ctx, cpu, {129, 24, 40}, 48, 0, 503);       // 8-wide bias-gradient loads
  check_strided(ctx, cpu, {9, 16, 13}, 21, 0, 504);         // odd stride: every row aligned differently
  check_strided(ctx, cpu, {1030, 8, 6}, 10, 0, 505);        // 9 bias-gradient chunks, 2-wide loads
  // The same m, n, k dense and strided in one Context, both orders: a plan cached for one leading
  // dimension must never serve the other (gemm.cu keys its plans on them).
  for (const int64_t first_stride : {int64_t{0}, int64_t{30528}}) {
    Context shared;
    const LinearShape dense{37, 64, 30522};
    const LinearData data(dense, 506);
    const Expected expected = cpu_reference(cpu, data);
    if (first_stride == 0) {
      check_all(shared, data, expected, Placement());
      check_strided(shared, cpu, dense, 30528, 0, 506);
    } else {
      check_strided(shared, cpu, dense, 30528, 0, 506);
      check_all(shared, data, expected, Placement());
    }
  }
  LinearShape too_narrow{4, 8, 16, 15};
  DeviceBuffer<bf16> buffer(256);
  CHECK_THROWS_AS(bert::cuda::linear_forward(ctx, too_narrow, buffer.data(), buffer.data(), nullptr, buffer.data()),
                  std::invalid_argument);
}
