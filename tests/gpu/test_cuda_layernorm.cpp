// CUDA LayerNorm and residual + LayerNorm (kernels/cuda/layernorm.cu) against kernels/cpu in fp32 on
// the same bf16-rounded inputs: odd shapes (both the 128-bit and the scalar path, the latter also on
// pointers misaligned by one element), outputs poisoned with NaN and fenced by NaN guards (a missed
// or stray write fails), dgamma/dbeta accumulated onto nonzero priors, two runs bitwise equal, and
// in place (y aliasing x, dz aliasing dy) bitwise equal to out of place; the dropout-fused residual
// forward bitwise equal to dropout_forward followed by residual_layernorm_forward.
#include <cmath>
#include <cstddef>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/gpu/cuda_test_util.h"

namespace {

namespace cpu = bert::cpu;
namespace cuda = bert::cuda;
using bert::ops::DropoutSpec;
using bert::ops::MatrixShape;
using cuda::bf16;
using cuda::DeviceBuffer;
using namespace bert::cuda::test;

constexpr float kEps = 1e-12f;           // BERT's layer_norm_eps
constexpr double kBf16Tolerance = 1e-2;  // bf16 outputs
constexpr double kStatTolerance = 1e-5;  // fp32 mean / rstd
constexpr double kGradTolerance = 5e-5;  // fp32 sums over up to 1000 rows, in another order

void check_layernorm(int64_t rows, int64_t cols, bool with_residual, size_t offset, uint64_t seed,
                     const cuda::KernelPaths& paths = {}) {
  INFO("rows " << rows << " cols " << cols << (with_residual ? " residual" : "") << " offset " << offset
               << " kernel paths " << paths.describe());
  const MatrixShape shape{rows, cols};
  const size_t n = static_cast<size_t>(rows * cols);
  std::mt19937_64 rng(seed);
  const std::vector<float> x = random_bf16_values(rng, n, -1.0f, 2.0f);  // mean well away from 0
  const std::vector<float> residual = with_residual ? random_bf16_values(rng, n) : std::vector<float>();
  const std::vector<float> gamma = random_bf16_values(rng, static_cast<size_t>(cols), 0.5f, 1.5f);
  const std::vector<float> beta = random_bf16_values(rng, static_cast<size_t>(cols), -0.5f, 0.5f);
  const std::vector<float> dy = random_bf16_values(rng, n);
  const std::vector<float> dgamma_prior = random_floats(rng, static_cast<size_t>(cols));
  const std::vector<float> dbeta_prior = random_floats(rng, static_cast<size_t>(cols));

  cpu::Context cpu_ctx(1);
  std::vector<float> y_ref(n), mean_ref(static_cast<size_t>(rows)), rstd_ref(static_cast<size_t>(rows)), dz_ref(n);
  std::vector<float> dgamma_ref(static_cast<size_t>(cols), 0.0f), dbeta_ref(static_cast<size_t>(cols), 0.0f);
  if (with_residual) {
    cpu::residual_layernorm_forward<float>(cpu_ctx, shape, x.data(), residual.data(), gamma.data(), beta.data(), kEps,
                                           y_ref.data(), mean_ref.data(), rstd_ref.data());
    cpu::residual_layernorm_backward<float>(cpu_ctx, shape, dy.data(), x.data(), residual.data(), gamma.data(),
                                            mean_ref.data(), rstd_ref.data(), dz_ref.data(), dgamma_ref.data(),
                                            dbeta_ref.data());
  } else {
    cpu::layernorm_forward<float>(cpu_ctx, shape, x.data(), gamma.data(), beta.data(), kEps, y_ref.data(),
                                  mean_ref.data(), rstd_ref.data());
    cpu::layernorm_backward<float>(cpu_ctx, shape, dy.data(), x.data(), gamma.data(), mean_ref.data(), rstd_ref.data(),
                                   dz_ref.data(), dgamma_ref.data(), dbeta_ref.data());
  }

  cuda::Context ctx;
  ctx.set_kernel_paths(paths);
  Bf16Tensor d_x = Bf16Tensor::input(x, offset), d_residual = Bf16Tensor::input(residual, offset);
  Bf16Tensor d_gamma = Bf16Tensor::input(gamma, offset), d_beta = Bf16Tensor::input(beta, offset);
  Bf16Tensor d_dy = Bf16Tensor::input(dy, offset);

  // Forward, twice.
  std::vector<std::vector<float>> y_runs, mean_runs, rstd_runs;
  for (int run = 0; run < 2; ++run) {
    Bf16Tensor d_y = Bf16Tensor::output(n, offset);
    DeviceBuffer<float> d_mean = poisoned<float>(static_cast<size_t>(rows));
    DeviceBuffer<float> d_rstd = poisoned<float>(static_cast<size_t>(rows));
    if (with_residual)
      cuda::residual_layernorm_forward(ctx, shape, d_x.data(), d_residual.data(), d_gamma.data(), d_beta.data(), kEps,
                                       d_y.data(), d_mean.data(), d_rstd.data());
    else
      cuda::layernorm_forward(ctx, shape, d_x.data(), d_gamma.data(), d_beta.data(), kEps, d_y.data(), d_mean.data(),
                              d_rstd.data());
    ctx.synchronize();
    CHECK(d_y.guards_intact());
    y_runs.push_back(d_y.values());
    mean_runs.push_back(d_mean.download());
    rstd_runs.push_back(d_rstd.download());
  }
  CHECK_CLOSE_REL("y", y_runs[0], y_ref, kBf16Tolerance);
  CHECK_CLOSE_REL("mean", mean_runs[0], mean_ref, kStatTolerance);
  CHECK_CLOSE_REL("rstd", rstd_runs[0], rstd_ref, kStatTolerance);
  CHECK(same_bits(y_runs[0], y_runs[1]));
  CHECK(same_bits(mean_runs[0], mean_runs[1]));
  CHECK(same_bits(rstd_runs[0], rstd_runs[1]));

  // Backward, twice, from the reference statistics (so it is tested on its own).
  DeviceBuffer<float> d_mean_ref = upload<float>(mean_ref), d_rstd_ref = upload<float>(rstd_ref);
  std::vector<std::vector<float>> dz_runs, dgamma_runs, dbeta_runs;
  for (int run = 0; run < 2; ++run) {
    Bf16Tensor d_dz = Bf16Tensor::output(n, offset);
    DeviceBuffer<float> d_dgamma = upload<float>(dgamma_prior), d_dbeta = upload<float>(dbeta_prior);
    if (with_residual)
      cuda::residual_layernorm_backward(ctx, shape, d_dy.data(), d_x.data(), d_residual.data(), d_gamma.data(),
                                        d_mean_ref.data(), d_rstd_ref.data(), d_dz.data(), d_dgamma.data(),
                                        d_dbeta.data());
    else
      cuda::layernorm_backward(ctx, shape, d_dy.data(), d_x.data(), d_gamma.data(), d_mean_ref.data(),
                               d_rstd_ref.data(), d_dz.data(), d_dgamma.data(), d_dbeta.data());
    ctx.synchronize();
    CHECK(d_dz.guards_intact());
    dz_runs.push_back(d_dz.values());
    dgamma_runs.push_back(d_dgamma.download());
    dbeta_runs.push_back(d_dbeta.download());
  }
  CHECK_CLOSE_REL("dz", dz_runs[0], dz_ref, kBf16Tolerance);
  CHECK_ERROR_AT_MOST("dgamma (added to the prior)", accumulated_error(dgamma_runs[0], dgamma_prior, dgamma_ref),
                      kGradTolerance);
  CHECK_ERROR_AT_MOST("dbeta (added to the prior)", accumulated_error(dbeta_runs[0], dbeta_prior, dbeta_ref),
                      kGradTolerance);
  CHECK(same_bits(dz_runs[0], dz_runs[1]));
  CHECK(same_bits(dgamma_runs[0], dgamma_runs[1]));
  CHECK(same_bits(dbeta_runs[0], dbeta_runs[1]));

  // In place: y aliasing x, dz aliasing dy give the same bits.
  Bf16Tensor d_inplace = Bf16Tensor::input(x, offset);
  DeviceBuffer<float> d_mean = poisoned<float>(static_cast<size_t>(rows));
  DeviceBuffer<float> d_rstd = poisoned<float>(static_cast<size_t>(rows));
  Bf16Tensor d_grad_inplace = Bf16Tensor::input(dy, offset);
  DeviceBuffer<float> d_dgamma = upload<float>(dgamma_prior), d_dbeta = upload<float>(dbeta_prior);
  if (with_residual) {
    cuda::residual_layernorm_forward(ctx, shape, d_inplace.data(), d_residual.data(), d_gamma.data(), d_beta.data(),
                                     kEps, d_inplace.data(), d_mean.data(), d_rstd.data());
    cuda::residual_layernorm_backward(ctx, shape, d_grad_inplace.data(), d_x.data(), d_residual.data(), d_gamma.data(),
                                      d_mean_ref.data(), d_rstd_ref.data(), d_grad_inplace.data(), d_dgamma.data(),
                                      d_dbeta.data());
  } else {
    cuda::layernorm_forward(ctx, shape, d_inplace.data(), d_gamma.data(), d_beta.data(), kEps, d_inplace.data(),
                            d_mean.data(), d_rstd.data());
    cuda::layernorm_backward(ctx, shape, d_grad_inplace.data(), d_x.data(), d_gamma.data(), d_mean_ref.data(),
                             d_rstd_ref.data(), d_grad_inplace.data(), d_dgamma.data(), d_dbeta.data());
  }
  ctx.synchronize();
  CHECK(same_bits(d_inplace.values(), y_runs[0]));
  CHECK(same_bits(d_grad_inplace.values(), dz_runs[0]));
  CHECK(same_bits(d_dgamma.download(), dgamma_runs[0]));
  CHECK(same_bits(d_dbeta.download(), dbeta_runs[0]));

  // dz aliasing x, and (residual) dz aliasing residual: the same bits again.
  Bf16Tensor d_x_alias = Bf16Tensor::input(x, offset), d_residual_alias = Bf16Tensor::input(residual, offset);
  DeviceBuffer<float> dgamma_x = upload<float>(dgamma_prior), dbeta_x = upload<float>(dbeta_prior);
  DeviceBuffer<float> dgamma_r = upload<float>(dgamma_prior), dbeta_r = upload<float>(dbeta_prior);
  if (with_residual) {
    cuda::residual_layernorm_backward(ctx, shape, d_dy.data(), d_x_alias.data(), d_residual.data(), d_gamma.data(),
                                      d_mean_ref.data(), d_rstd_ref.data(), d_x_alias.data(), dgamma_x.data(),
                                      dbeta_x.data());
    cuda::residual_layernorm_backward(ctx, shape, d_dy.data(), d_x.data(), d_residual_alias.data(), d_gamma.data(),
                                      d_mean_ref.data(), d_rstd_ref.data(), d_residual_alias.data(), dgamma_r.data(),
                                      dbeta_r.data());
  } else {
    cuda::layernorm_backward(ctx, shape, d_dy.data(), d_x_alias.data(), d_gamma.data(), d_mean_ref.data(),
                             d_rstd_ref.data(), d_x_alias.data(), dgamma_x.data(), dbeta_x.data());
  }
  ctx.synchronize();
  CHECK(same_bits(d_x_alias.values(), dz_runs[0]));
  CHECK(same_bits(dgamma_x.download(), dgamma_runs[0]));
  CHECK(same_bits(dbeta_x.download(), dbeta_runs[0]));
  if (with_residual) {
    CHECK(same_bits(d_residual_alias.values(), dz_runs[0]));
    CHECK(same_bits(dgamma_r.download(), dgamma_runs[0]));
    CHECK(same_bits(dbeta_r.download(), dbeta_runs[0]));
  }
}

struct Case {
  int64_t rows, cols;
  size_t offset;
};
// 128-bit path: cols % 8 == 0 at offset 0; scalar path: odd cols, or offset 1. The 128-bit forward is
// the row-resident kernel up to cols 1024 (the same vectors per lane as below), the general one
// beyond. The 128-bit backward is the fused kernel up to cols 1024 (one to four 256-column vectors per lane, the last
// one used by one lane at 264 and 776, by some at 520 and 1016; more than 4 rows a warp past 32,768 rows), the two-pass
// one beyond (1032, 4096).
const Case kCases[] = {{1, 1, 0},     {3, 7, 0},       {1000, 1, 0},   {1, 768, 0},    {1000, 768, 0},
                       {3, 1024, 0},  {5, 4099, 0},    {17, 4096, 0},  {1000, 768, 1}, {3, 1024, 1},
                       {33, 8, 0},    {1000, 1024, 0}, {513, 264, 0},  {5, 776, 0},    {70001, 8, 0},
                       {130, 520, 0}, {77, 1016, 0},   {40001, 24, 0}, {8, 1032, 0}};

}  // namespace

TEST_CASE("cuda layernorm matches the CPU reference", "[layernorm]") {
  uint64_t seed = 100;
  for (const Case& c : kCases) check_layernorm(c.rows, c.cols, /*with_residual=*/false, c.offset, seed++);
}

TEST_CASE("cuda residual layernorm matches the CPU reference", "[layernorm]") {
  uint64_t seed = 200;
  for (const Case& c : kCases) check_layernorm(c.rows, c.cols, /*with_residual=*/true, c.offset, seed++);
}

// KernelPaths::baseline(): the general kernels (L1 re-reads forward, dz pass + column pass backward)
// at the shapes the specialised ones take, held to the CPU like every path.
TEST_CASE("cuda layernorm with KernelPaths::baseline() matches the CPU reference", "[layernorm]") {
  const Case cases[] = {{1000, 768, 0}, {3, 1024, 0}, {77, 1016, 0}, {513, 264, 0}};
  uint64_t seed = 900;
  for (const bool with_residual : {false, true})
    for (const Case& c : cases)
      check_layernorm(c.rows, c.cols, with_residual, c.offset, seed++, cuda::KernelPaths::baseline());
}

TEST_CASE("KernelPaths: the default, the baseline (every field off), describe() and parse()", "[layernorm]") {
  const cuda::KernelPaths defaults, baseline = cuda::KernelPaths::baseline();
  CHECK(defaults.describe() == "default");
  CHECK(baseline.describe() == "baseline");
  for (const auto& [name, field] : cuda::KernelPaths::fields()) {
    CHECK(defaults.*field);
    CHECK_FALSE(baseline.*field);
    cuda::KernelPaths one;
    one.*field = false;
    CHECK(one.describe() == std::string(name) + "=false");
    CHECK(cuda::KernelPaths::parse(one.describe()) == one);
    CHECK(cuda::KernelPaths::parse(std::string(name) + "=true") == defaults);
  }
  cuda::KernelPaths two;
  two.gelu_fast_math = false;
  two.attention_fused_backward = false;
  CHECK(two.describe() == "attention_fused_backward=false,gelu_fast_math=false");
  CHECK(cuda::KernelPaths::parse("gelu_fast_math=false,attention_fused_backward=false") == two);
  CHECK(cuda::KernelPaths::parse("default") == defaults);
  CHECK(cuda::KernelPaths::parse("baseline") == baseline);
  for (const char* bad : {"", "fast", "gelu_fast_math", "gelu_fast_math=no", "gelu_fast_math=false,", "nope=false"})
    CHECK_THROWS_AS(cuda::KernelPaths::parse(bad), std::invalid_argument);
  try {
    cuda::KernelPaths::parse("gelu_fast_math=false,nope=false");
    FAIL("no throw");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("'nope=false' is not <field>=true|false") != std::string::npos);
    CHECK(std::string(e.what()).find("embeddings_direct_type_gradient") != std::string::npos);
  }
  cuda::Context ctx;
  CHECK(ctx.kernel_paths() == defaults);
  ctx.set_kernel_paths(baseline);
  CHECK(ctx.kernel_paths() == baseline);
}

// Which kernels each KernelPaths setting launches; only the kernel emulation records launches.
TEST_CASE("cuda layernorm: KernelPaths chooses the kernels it names", "[layernorm]") {
  if (!launched_kernels()) {
    WARN("not checked on a device: only the kernel emulation records which kernels ran");
    return;
  }
  const MatrixShape shape{64, 768};
  const size_t n = 64 * 768;
  std::mt19937_64 rng(31);
  const std::vector<float> x = random_bf16_values(rng, n), ones(768, 1.0f);
  Bf16Tensor d_x = Bf16Tensor::input(x, 0), d_residual = Bf16Tensor::input(x, 0), d_branch = Bf16Tensor::input(x, 0);
  Bf16Tensor d_gamma = Bf16Tensor::input(ones, 0), d_beta = Bf16Tensor::input(ones, 0);
  Bf16Tensor d_y = Bf16Tensor::output(n, 0), d_dz = Bf16Tensor::output(n, 0);
  DeviceBuffer<float> mean = poisoned<float>(64), rstd = poisoned<float>(64);
  DeviceBuffer<float> dgamma = upload<float>(std::vector<float>(768, 0.0f)),
                      dbeta = upload<float>(std::vector<float>(768, 0.0f));
  const DropoutSpec spec{0.1f, 5, 6};
  for (const bool fast : {true, false}) {
    INFO((fast ? "default paths" : "baseline paths"));
    cuda::Context ctx;
    ctx.set_kernel_paths(fast ? cuda::KernelPaths{} : cuda::KernelPaths::baseline());
    (void)launched_kernels();
    cuda::residual_layernorm_forward(ctx, shape, d_x.data(), d_residual.data(), d_gamma.data(), d_beta.data(), kEps,
                                     d_y.data(), mean.data(), rstd.data());
    const std::vector<std::string> forward = *launched_kernels();
    cuda::residual_layernorm_backward(ctx, shape, d_y.data(), d_x.data(), d_residual.data(), d_gamma.data(),
                                      mean.data(), rstd.data(), d_dz.data(), dgamma.data(), dbeta.data());
    const std::vector<std::string> backward = *launched_kernels();
    cuda::dropout_residual_layernorm_forward(ctx, shape, spec, d_branch.data(), d_residual.data(), d_gamma.data(),
                                             d_beta.data(), kEps, d_y.data(), mean.data(), rstd.data());
    const std::vector<std::string> dropout = *launched_kernels();
    cuda::residual_layernorm_dropout_backward(ctx, shape, spec, d_y.data(), d_branch.data(), d_residual.data(),
                                              d_gamma.data(), mean.data(), rstd.data(), d_dz.data(), d_x.data(),
                                              dgamma.data(), dbeta.data());
    const std::vector<std::string> dropout_backward = *launched_kernels();
    ctx.synchronize();
    CHECK(launched(forward, "layernorm_rows_forward_resident_kernel") == fast);
    CHECK(launched(forward, "layernorm_rows_forward_kernel") == !fast);
    CHECK(launched(backward, "layernorm_backward_fused_kernel") == fast);
    CHECK(launched(backward, "layernorm_param_partials_kernel") == !fast);
    CHECK(launched(dropout, "layernorm_rows_forward_resident_kernel") == fast);
    CHECK(launched(dropout, "dropout_kernel") == !fast);
    CHECK(launched(dropout_backward, "layernorm_backward_fused_kernel") == fast);
    CHECK(launched(dropout_backward, "dropout_kernel") == !fast);
  }
}

// Fused (128-bit path up to 1,024 columns) and composed (the rest: odd, wide or misaligned) both
// must give dropout_forward's bits in x and residual_layernorm_forward's in y, mean and rstd; x holds
// exact zeros where ops::dropout_keep drops (so the dropout really ran) and nowhere else for nonzero x.
TEST_CASE("cuda dropout_residual_layernorm_forward is dropout_forward then residual_layernorm_forward, bit for bit",
          "[layernorm]") {
  const Case cases[] = {{1000, 768, 0}, {513, 264, 0}, {3, 1024, 0}, {77, 1016, 0}, {40, 8, 0},
                        {5, 4099, 0},   {8, 1032, 0},  {100, 768, 1}, {3, 7, 0}};
  uint64_t seed = 700;
  for (const float probability : {0.1f, 0.5f, 0.0f}) {
    for (const Case& c : cases) {
      INFO("rows " << c.rows << " cols " << c.cols << " offset " << c.offset << " p " << probability);
      const MatrixShape shape{c.rows, c.cols};
      const size_t n = static_cast<size_t>(c.rows * c.cols), cols = static_cast<size_t>(c.cols);
      std::mt19937_64 rng(seed++);
      const std::vector<float> x = random_bf16_values(rng, n, -2.0f, 2.0f);
      const std::vector<float> residual = random_bf16_values(rng, n, -2.0f, 2.0f);
      const std::vector<float> gamma = random_bf16_values(rng, cols, 0.5f, 1.5f);
      const std::vector<float> beta = random_bf16_values(rng, cols, -0.5f, 0.5f);
      const DropoutSpec spec{probability, 1234 + seed, 77 * seed};

      cuda::Context ctx;
      Bf16Tensor d_residual = Bf16Tensor::input(residual, c.offset), d_gamma = Bf16Tensor::input(gamma, c.offset),
                 d_beta = Bf16Tensor::input(beta, c.offset);
      Bf16Tensor x_composed = Bf16Tensor::input(x, c.offset), x_fused = Bf16Tensor::input(x, c.offset);
      Bf16Tensor y_composed = Bf16Tensor::output(n, c.offset), y_fused = Bf16Tensor::output(n, c.offset);
      DeviceBuffer<float> mean_composed = poisoned<float>(shape.rows), rstd_composed = poisoned<float>(shape.rows);
      DeviceBuffer<float> mean_fused = poisoned<float>(shape.rows), rstd_fused = poisoned<float>(shape.rows);
      cuda::dropout_forward(ctx, shape.rows * shape.cols, spec, x_composed.data(), x_composed.data());
      cuda::residual_layernorm_forward(ctx, shape, x_composed.data(), d_residual.data(), d_gamma.data(), d_beta.data(),
                                       kEps, y_composed.data(), mean_composed.data(), rstd_composed.data());
      cuda::dropout_residual_layernorm_forward(ctx, shape, spec, x_fused.data(), d_residual.data(), d_gamma.data(),
                                               d_beta.data(), kEps, y_fused.data(), mean_fused.data(),
                                               rstd_fused.data());
      ctx.synchronize();
      CHECK(x_fused.guards_intact());
      CHECK(y_fused.guards_intact());
      const bool same_x = x_fused.bits() == x_composed.bits(), same_y = y_fused.bits() == y_composed.bits();
      CHECK(same_x);
      CHECK(same_y);
      CHECK(same_bits(mean_fused.download(), mean_composed.download()));
      CHECK(same_bits(rstd_fused.download(), rstd_composed.download()));

      const std::vector<float> dropped = x_fused.values();
      size_t wrong = 0, zeros = 0;
      for (size_t i = 0; i < n; ++i) {
        const bool keep = probability == 0.0f || bert::ops::dropout_keep(spec, i);
        zeros += dropped[i] == 0.0f ? 1 : 0;
        if (x[i] != 0.0f && (dropped[i] == 0.0f) == keep) ++wrong;
      }
      CHECK(wrong == 0);
      if (probability != 0.0f && n >= 1000) {
        INFO("zeros " << zeros << " of " << n);
        CHECK(std::abs(static_cast<double>(zeros) / static_cast<double>(n) - probability) < 0.05);
      }
    }
  }
}

// The backward: d_sum of residual_layernorm_backward and d_x of dropout_backward(d_sum), the fused
// kernel (128-bit path up to 1,024 columns: 2 blocks an SM up to 512, 1 at 768 and 1,024) or the
// two ops (the rest), bit for bit the two ops in sequence, dgamma/dbeta included (onto a prior);
// also with d_sum in dy's buffer and d_x in x's (aliasing the ops.h contract allows).
TEST_CASE("cuda residual_layernorm_dropout_backward is residual_layernorm_backward then dropout_backward, bit for bit",
          "[layernorm]") {
  const Case cases[] = {{1000, 768, 0}, {513, 264, 0}, {3, 1024, 0},  {77, 1016, 0}, {40, 8, 0},
                        {5, 4099, 0},   {8, 1032, 0},  {100, 768, 1}, {3, 7, 0},     {300, 512, 0}};
  uint64_t seed = 750;
  for (const float probability : {0.1f, 0.5f, 0.0f}) {
    for (const Case& c : cases) {
      for (const bool in_place : {false, true}) {
        if (in_place && (probability != 0.1f || c.offset != 0)) continue;
        INFO("rows " << c.rows << " cols " << c.cols << " offset " << c.offset << " p " << probability
                     << (in_place ? " in place" : ""));
        const MatrixShape shape{c.rows, c.cols};
        const size_t n = static_cast<size_t>(c.rows * c.cols), cols = static_cast<size_t>(c.cols);
        std::mt19937_64 rng(seed++);
        const std::vector<float> dy = random_bf16_values(rng, n, -1.0f, 1.0f);
        const std::vector<float> x = random_bf16_values(rng, n, -2.0f, 2.0f);
        const std::vector<float> residual = random_bf16_values(rng, n, -2.0f, 2.0f);
        const std::vector<float> gamma = random_bf16_values(rng, cols, 0.5f, 1.5f);
        const std::vector<float> beta = random_bf16_values(rng, cols, -0.5f, 0.5f);
        const std::vector<float> dgamma_prior = random_floats(rng, cols), dbeta_prior = random_floats(rng, cols);
        const DropoutSpec spec{probability, 4321 + seed, 33 * seed};

        cuda::Context ctx;
        Bf16Tensor d_residual = Bf16Tensor::input(residual, c.offset), d_gamma = Bf16Tensor::input(gamma, c.offset),
                   d_beta = Bf16Tensor::input(beta, c.offset), d_x_in = Bf16Tensor::input(x, c.offset);
        Bf16Tensor y = Bf16Tensor::output(n, c.offset);
        DeviceBuffer<float> mean = poisoned<float>(shape.rows), rstd = poisoned<float>(shape.rows);
        cuda::residual_layernorm_forward(ctx, shape, d_x_in.data(), d_residual.data(), d_gamma.data(), d_beta.data(),
                                         kEps, y.data(), mean.data(), rstd.data());

        Bf16Tensor dy_composed = Bf16Tensor::input(dy, c.offset), sum_composed = Bf16Tensor::output(n, c.offset),
                   dx_composed = Bf16Tensor::output(n, c.offset);
        DeviceBuffer<float> dgamma_composed = upload<float>(dgamma_prior), dbeta_composed = upload<float>(dbeta_prior);
        cuda::residual_layernorm_backward(ctx, shape, dy_composed.data(), d_x_in.data(), d_residual.data(),
                                          d_gamma.data(), mean.data(), rstd.data(), sum_composed.data(),
                                          dgamma_composed.data(), dbeta_composed.data());
        cuda::dropout_backward(ctx, shape.rows * shape.cols, spec, sum_composed.data(), dx_composed.data());

        Bf16Tensor dy_fused = Bf16Tensor::input(dy, c.offset), x_fused = Bf16Tensor::input(x, c.offset);
        Bf16Tensor sum_fused = Bf16Tensor::output(n, c.offset), dx_fused = Bf16Tensor::output(n, c.offset);
        DeviceBuffer<float> dgamma_fused = upload<float>(dgamma_prior), dbeta_fused = upload<float>(dbeta_prior);
        Bf16Tensor& sum_out = in_place ? dy_fused : sum_fused;
        Bf16Tensor& dx_out = in_place ? x_fused : dx_fused;
        cuda::residual_layernorm_dropout_backward(ctx, shape, spec, dy_fused.data(), x_fused.data(), d_residual.data(),
                                                  d_gamma.data(), mean.data(), rstd.data(), sum_out.data(),
                                                  dx_out.data(), dgamma_fused.data(), dbeta_fused.data());
        ctx.synchronize();
        CHECK(sum_out.guards_intact());
        CHECK(dx_out.guards_intact());
        const bool same_sum = sum_out.bits() == sum_composed.bits(), same_dx = dx_out.bits() == dx_composed.bits();
        CHECK(same_sum);
        CHECK(same_dx);
        CHECK(same_bits(dgamma_fused.download(), dgamma_composed.download()));
        CHECK(same_bits(dbeta_fused.download(), dbeta_composed.download()));

        // The dropout really ran: exact zeros in d_x where ops::dropout_keep drops, for nonzero d_sum.
        const std::vector<float> sums = sum_out.values(), dropped = dx_out.values();
        size_t wrong = 0;
        for (size_t i = 0; i < n; ++i) {
          const bool keep = probability == 0.0f || bert::ops::dropout_keep(spec, i);
          if (sums[i] != 0.0f && (dropped[i] == 0.0f) == keep) ++wrong;
        }
        CHECK(wrong == 0);
      }
    }
  }
}

TEST_CASE("cuda dropout_residual_layernorm_forward and its backward refuse aliasing and bad probabilities",
          "[layernorm]") {
  cuda::Context ctx;
  const std::vector<float> ones(16, 1.0f);
  Bf16Tensor x = Bf16Tensor::input(ones, 0), residual = Bf16Tensor::input(ones, 0), gamma = Bf16Tensor::input(ones, 0),
             beta = Bf16Tensor::input(ones, 0), y = Bf16Tensor::output(16, 0);
  DeviceBuffer<float> mean = poisoned<float>(2), rstd = poisoned<float>(2);
  const MatrixShape shape{2, 8};
  const DropoutSpec spec{0.1f, 1, 2};
  CHECK_THROWS_AS(cuda::dropout_residual_layernorm_forward(ctx, shape, spec, x.data(), residual.data(), gamma.data(),
                                                           beta.data(), kEps, x.data(), mean.data(), rstd.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(cuda::dropout_residual_layernorm_forward(ctx, shape, spec, x.data(), x.data(), gamma.data(),
                                                           beta.data(), kEps, y.data(), mean.data(), rstd.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(cuda::dropout_residual_layernorm_forward(ctx, shape, DropoutSpec{1.0f, 1, 2}, x.data(),
                                                           residual.data(), gamma.data(), beta.data(), kEps, y.data(),
                                                           mean.data(), rstd.data()),
                  std::invalid_argument);
  DeviceBuffer<float> dgamma = upload<float>(std::vector<float>(8, 0.0f)),
                      dbeta = upload<float>(std::vector<float>(8, 0.0f));
  CHECK_THROWS_AS(cuda::residual_layernorm_dropout_backward(ctx, shape, spec, x.data(), x.data(), residual.data(),
                                                            gamma.data(), mean.data(), rstd.data(), y.data(), y.data(),
                                                            dgamma.data(), dbeta.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(cuda::residual_layernorm_dropout_backward(ctx, shape, DropoutSpec{1.0f, 1, 2}, x.data(), x.data(),
                                                            residual.data(), gamma.data(), mean.data(), rstd.data(),
                                                            y.data(), beta.data(), dgamma.data(), dbeta.data()),
                  std::invalid_argument);
  ctx.synchronize();
  CHECK(y.guards_intact());
  CHECK(same_bits(x.values(), ones));  // nothing ran
}

TEST_CASE("cuda layernorm: zero rows is a no-op, bad arguments throw", "[layernorm]") {
  cuda::Context ctx;
  Bf16Tensor x = Bf16Tensor::input({1.0f, 2.0f}, 0), gamma = Bf16Tensor::input({1.0f, 1.0f}, 0),
             beta = Bf16Tensor::input({0.0f, 0.0f}, 0);
  Bf16Tensor y = Bf16Tensor::output(2, 0);
  DeviceBuffer<float> mean = poisoned<float>(1), rstd = poisoned<float>(1);
  const std::vector<float> prior = {0.25f, -0.5f};
  DeviceBuffer<float> dgamma = upload<float>(prior), dbeta = upload<float>(prior);

  cuda::layernorm_forward(ctx, MatrixShape{0, 2}, x.data(), gamma.data(), beta.data(), kEps, y.data(), mean.data(),
                          rstd.data());
  cuda::layernorm_backward(ctx, MatrixShape{0, 2}, x.data(), x.data(), gamma.data(), mean.data(), rstd.data(), y.data(),
                           dgamma.data(), dbeta.data());
  ctx.synchronize();
  CHECK(y.guards_intact());
  CHECK(y.bits()[0] == 0xFFFF);
  CHECK(same_bits(dgamma.download(), prior));
  CHECK(same_bits(dbeta.download(), prior));

  CHECK_THROWS_AS(cuda::layernorm_forward(ctx, MatrixShape{1, 0}, x.data(), gamma.data(), beta.data(), kEps, y.data(),
                                          mean.data(), rstd.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(cuda::layernorm_forward(ctx, MatrixShape{-1, 2}, x.data(), gamma.data(), beta.data(), kEps, y.data(),
                                          mean.data(), rstd.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(cuda::residual_layernorm_forward(ctx, MatrixShape{1, 2}, x.data(), nullptr, gamma.data(), beta.data(),
                                                   kEps, y.data(), mean.data(), rstd.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(cuda::residual_layernorm_backward(ctx, MatrixShape{1, 2}, x.data(), x.data(), nullptr, gamma.data(),
                                                    mean.data(), rstd.data(), y.data(), dgamma.data(), dbeta.data()),
                  std::invalid_argument);
}
