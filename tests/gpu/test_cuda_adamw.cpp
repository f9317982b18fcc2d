// CUDA AdamW, grad_norm and the fp32 <-> bf16 conversions (kernels/cuda/adamw.cu) against
// kernels/cpu/adamw.cpp in fp32: several steps with and without weight decay, both lerp branches,
// tensors that span several chunks and tensors at misaligned offsets (scalar path), the bf16 copy,
// device clipping (finite, and non-finite = no-op), the device step counter and bitwise repeatability.
// The ops run on the legacy default stream (Context(cudaStreamLegacy)): DeviceBuffer's copies and
// poisoned()'s cudaMemset use that stream too, so all are ordered without explicit syncs (a
// Context's own stream is non-blocking and would race with them).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/gpu/cuda_test_util.h"

namespace {

using bert::cuda::AdamWHyperparams;
using bert::cuda::AdamWTensor;
using bert::cuda::bf16;
using bert::cuda::Context;
using bert::cuda::DeviceBuffer;
using bert::cuda::MultiTensorList;
using namespace bert::cuda::test;

// A model of several tensors carved from one buffer per field. Odd-numbered tensors start one float
// past a 16-byte boundary (the kernels' scalar path); sizes straddle the 64K-element chunk.
// Everything between tensors must stay untouched (it is compared too).
struct Model {
  std::vector<int64_t> numel{1, 7, 768, 65536, 65537, 3 * 65536 + 5, 100000, 0, 3000};
  std::vector<int64_t> offset;
  int64_t total = 0;

  std::vector<float> param, grad, exp_avg, exp_avg_sq;  // host: the CPU reference's state
  DeviceBuffer<float> param_device, grad_device, exp_avg_device, exp_avg_sq_device;
  DeviceBuffer<bf16> param_bf16_device;

  explicit Model(std::mt19937_64& rng) {
    int64_t cursor = 0;
    for (size_t i = 0; i < numel.size(); ++i) {
      cursor = (cursor + 3) / 4 * 4 + static_cast<int64_t>(i % 2);
      offset.push_back(cursor);
      cursor += numel[i];
    }
    total = cursor + 5;
    param = random_floats(rng, static_cast<size_t>(total));
    grad = random_floats(rng, static_cast<size_t>(total));
    exp_avg.assign(static_cast<size_t>(total), 0.0f);
    exp_avg_sq.assign(static_cast<size_t>(total), 0.0f);
    param_device.upload(param);
    grad_device.upload(grad);
    exp_avg_device.upload(exp_avg);
    exp_avg_sq_device.upload(exp_avg_sq);
    param_bf16_device = poisoned<bf16>(static_cast<size_t>(total));
  }

  bool decays(size_t i) const { return i % 3 != 1; }
  bool has_bf16_copy(size_t i) const { return i != 2; }

  std::vector<AdamWTensor> device_tensors() {
    std::vector<AdamWTensor> out;
    for (size_t i = 0; i < numel.size(); ++i) {
      AdamWTensor t;
      t.param = param_device.data() + offset[i];
      t.param_bf16 = has_bf16_copy(i) ? param_bf16_device.data() + offset[i] : nullptr;
      t.grad = grad_device.data() + offset[i];
      t.exp_avg = exp_avg_device.data() + offset[i];
      t.exp_avg_sq = exp_avg_sq_device.data() + offset[i];
      t.numel = numel[i];
      t.apply_weight_decay = decays(i);
      out.push_back(t);
    }
    return out;
  }

  std::vector<bert::cpu::AdamWTensor<float>> cpu_tensors() {
    std::vector<bert::cpu::AdamWTensor<float>> out;
    for (size_t i = 0; i < numel.size(); ++i) {
      bert::cpu::AdamWTensor<float> t;
      t.param = param.data() + offset[i];
      t.grad = grad.data() + offset[i];
      t.exp_avg = exp_avg.data() + offset[i];
      t.exp_avg_sq = exp_avg_sq.data() + offset[i];
      t.numel = numel[i];
      t.apply_weight_decay = decays(i);
      out.push_back(t);
    }
    return out;
  }

  std::vector<bert::cpu::GradView<float>> cpu_grads() const {
    std::vector<bert::cpu::GradView<float>> out;
    for (size_t i = 0; i < numel.size(); ++i) out.push_back({grad.data() + offset[i], numel[i]});
    return out;
  }

  // New gradients of mixed magnitudes (1, 0.1, 0.01 by tensor), on both sides.
  void new_gradients(std::mt19937_64& rng) {
    grad = random_floats(rng, static_cast<size_t>(total));
    for (size_t i = 0; i < numel.size(); ++i)
      for (int64_t j = 0; j < numel[i]; ++j) grad[offset[i] + j] *= std::pow(10.0f, -static_cast<float>(i % 3));
    grad_device.upload(grad);  // same size: the same allocation, so the device table stays valid
  }

  // The device bf16 copy must be exactly the rounding of the device master (where a copy exists),
  // and poison (untouched) everywhere else.
  void check_bf16_copy(const std::vector<float>& gpu_param) const {
    const std::vector<bf16> copy = param_bf16_device.download();
    std::vector<bool> covered(static_cast<size_t>(total), false);
    for (size_t i = 0; i < numel.size(); ++i)
      if (has_bf16_copy(i))
        for (int64_t j = 0; j < numel[i]; ++j) covered[static_cast<size_t>(offset[i] + j)] = true;
    size_t bad = 0;
    for (size_t k = 0; k < copy.size(); ++k) {
      const uint16_t expected = covered[k] ? bits_of(float_to_bf16(gpu_param[k])) : uint16_t{0xFFFF};
      bad += bits_of(copy[k]) != expected ? 1 : 0;
    }
    INFO(bad << " bf16 copy elements differ from the rounded master (or were written where no copy exists)");
    CHECK(bad == 0);
  }
};

// After one update on both sides (`before`: the params before it): the device's update, moments and
// bf16 copy against the CPU reference's (bitwise when `exact`), then the device continues from the
// CPU state so later steps compare like with like.
void compare_and_continue(Model& model, const std::vector<float>& before, bool exact) {
  const std::vector<float> gpu_param = model.param_device.download();
  const std::vector<float> gpu_exp_avg = model.exp_avg_device.download();
  const std::vector<float> gpu_exp_avg_sq = model.exp_avg_sq_device.download();
  // The update (lr-sized) is compared, not the parameter (1-sized), so a wrong update cannot hide.
  CHECK_CLOSE_REL("param update", difference(gpu_param, before), difference(model.param, before), 1e-5);
  CHECK_CLOSE_REL("exp_avg", gpu_exp_avg, model.exp_avg, 1e-5);
  CHECK_CLOSE_REL("exp_avg_sq", gpu_exp_avg_sq, model.exp_avg_sq, 1e-5);
  if (exact) {
    CHECK(same_bits(gpu_param, model.param));
    CHECK(same_bits(gpu_exp_avg, model.exp_avg));
    CHECK(same_bits(gpu_exp_avg_sq, model.exp_avg_sq));
  }
  model.check_bf16_copy(gpu_param);
  model.param_device.upload(model.param);
  model.exp_avg_device.upload(model.exp_avg);
  model.exp_avg_sq_device.upload(model.exp_avg_sq);
}

// One step on both backends, then compare param deltas, moments and the bf16 copy.
void step_and_compare(Context& ctx, Model& model, const MultiTensorList& list, const AdamWHyperparams& hyper,
                      bool exact) {
  INFO("step " << hyper.step << ", lr " << hyper.learning_rate << ", weight_decay " << hyper.weight_decay << ", beta1 "
               << hyper.beta1 << ", grad_scale " << hyper.grad_scale);
  const std::vector<float> before = model.param;
  bert::cpu::Context cpu_ctx(1);
  const auto cpu_tensors = model.cpu_tensors();
  bert::cpu::adamw_step<float>(cpu_ctx, hyper, cpu_tensors);
  bert::cuda::adamw_step(ctx, hyper, list);
  compare_and_continue(model, before, exact);
}

void run_steps(bool exact) {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(42);
  struct Config {
    double beta1, beta2, weight_decay, grad_scale;
  };
  // beta1 0.9: lerp weight 0.1 (< 0.5 branch); beta1 0.3: weight 0.7 (the other branch).
  for (const Config config :
       {Config{0.9, 0.999, 0.1, 1.0}, Config{0.9, 0.999, 0.0, 0.5}, Config{0.3, 0.99, 0.2, 2.0}}) {
    Model model(rng);
    const std::vector<AdamWTensor> tensors = model.device_tensors();
    const MultiTensorList list(tensors);
    CHECK(list.size() == tensors.size());
    for (int64_t step = 1; step <= 4; ++step) {
      if (step > 1) model.new_gradients(rng);
      AdamWHyperparams hyper;
      hyper.learning_rate = 0.05;  // large, so an update error is far above the param's own rounding
      hyper.beta1 = config.beta1;
      hyper.beta2 = config.beta2;
      hyper.epsilon = 1e-8;
      hyper.weight_decay = config.weight_decay;
      hyper.step = step;
      hyper.grad_scale = config.grad_scale;
      step_and_compare(ctx, model, list, hyper, exact);
    }
  }
}

}  // namespace

TEST_CASE("cuda adamw_step matches the CPU AdamW over several steps", "[cuda][adamw]") { run_steps(false); }

// The kernel uses explicitly rounded fp32 operations in the CPU reference's order, so the two agree
// bit for bit (the CPU build has no FMA contraction). A failure here alone (the test above passing)
// means a last-bit difference, not a wrong formula.
TEST_CASE("cuda adamw_step reproduces the CPU fp32 update bit for bit", "[cuda][adamw][exact]") { run_steps(true); }

TEST_CASE("cuda adamw_step repeats bitwise from the same state", "[cuda][adamw]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(7);
  Model model(rng);
  const std::vector<AdamWTensor> tensors = model.device_tensors();
  const MultiTensorList list(tensors);
  AdamWHyperparams hyper;
  hyper.learning_rate = 1e-3;
  hyper.weight_decay = 0.01;
  hyper.step = 3;
  bert::cuda::adamw_step(ctx, hyper, list);
  const std::vector<float> first_param = model.param_device.download();
  const std::vector<float> first_exp_avg = model.exp_avg_device.download();
  model.param_device.upload(model.param);
  model.exp_avg_device.upload(model.exp_avg);
  model.exp_avg_sq_device.upload(model.exp_avg_sq);
  bert::cuda::adamw_step(ctx, hyper, list);
  CHECK(same_bits(model.param_device.download(), first_param));
  CHECK(same_bits(model.exp_avg_device.download(), first_exp_avg));
}

TEST_CASE("cuda grad_norm matches the CPU and repeats bitwise", "[cuda][adamw]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(11);
  Model model(rng);
  model.new_gradients(rng);
  const std::vector<AdamWTensor> tensors = model.device_tensors();
  const MultiTensorList list(tensors);
  int64_t expected_numel = 0;
  for (int64_t n : model.numel) expected_numel += n;
  CHECK(list.total_numel() == expected_numel);

  DeviceBuffer<float> norm = poisoned<float>(1);
  bert::cuda::grad_norm(ctx, list, norm.data());
  const float gpu = norm.download().at(0);
  bert::cpu::Context cpu_ctx(1);
  const double cpu = bert::cpu::grad_norm<float>(cpu_ctx, model.cpu_grads());
  INFO("gpu " << gpu << " cpu " << cpu);
  CHECK(std::fabs(gpu - cpu) <= 1e-5 * cpu);

  DeviceBuffer<float> again = poisoned<float>(1);
  bert::cuda::grad_norm(ctx, list, again.data());
  const float repeat = again.download().at(0);
  CHECK(std::memcmp(&repeat, &gpu, sizeof(float)) == 0);

  // An empty list: norm 0.
  const MultiTensorList empty(std::span<const AdamWTensor>{});
  bert::cuda::grad_norm(ctx, empty, again.data());
  CHECK(again.download().at(0) == 0.0f);
}

TEST_CASE("cuda adamw_step with a device clip norm", "[cuda][adamw]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(3);
  AdamWHyperparams hyper;
  hyper.learning_rate = 0.05;
  hyper.weight_decay = 0.1;
  hyper.step = 2;
  hyper.grad_scale = 3.0;  // ignored when clipping on the device (ops_cuda.h)

  SECTION("a finite norm scales the gradient by clip_grad_coefficient") {
    for (const float max_over_norm : {0.25f, 4.0f}) {  // clipped, and coefficient 1
      Model model(rng);
      const std::vector<AdamWTensor> tensors = model.device_tensors();
      const MultiTensorList list(tensors);
      DeviceBuffer<float> norm = poisoned<float>(1);
      bert::cuda::grad_norm(ctx, list, norm.data());
      const float gpu_norm = norm.download().at(0);
      const float max_grad_norm = max_over_norm * gpu_norm;
      bert::cuda::adamw_step(ctx, hyper, list, norm.data(), max_grad_norm);

      AdamWHyperparams cpu_hyper = hyper;
      cpu_hyper.grad_scale = bert::ops::clip_grad_coefficient(gpu_norm, max_grad_norm);
      INFO("max_grad_norm / norm " << max_over_norm << ", coefficient " << cpu_hyper.grad_scale);
      const std::vector<float> before = model.param;
      bert::cpu::Context cpu_ctx(1);
      const auto cpu_tensors = model.cpu_tensors();
      bert::cpu::adamw_step<float>(cpu_ctx, cpu_hyper, cpu_tensors);
      CHECK_CLOSE_REL("param update", difference(model.param_device.download(), before),
                      difference(model.param, before), 1e-5);
      CHECK_CLOSE_REL("exp_avg", model.exp_avg_device.download(), model.exp_avg, 1e-5);
      CHECK_CLOSE_REL("exp_avg_sq", model.exp_avg_sq_device.download(), model.exp_avg_sq, 1e-5);
    }
  }

  SECTION("a non-finite norm skips the update entirely") {
    for (const float bad_norm : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      Model model(rng);
      const std::vector<AdamWTensor> tensors = model.device_tensors();
      const MultiTensorList list(tensors);
      const std::vector<float> host_norm{bad_norm};
      DeviceBuffer<float> norm = upload<float>(host_norm);
      const std::vector<bf16> bf16_before = model.param_bf16_device.download();
      bert::cuda::adamw_step(ctx, hyper, list, norm.data(), 1.0f);
      INFO("norm " << bad_norm);
      CHECK(same_bits(model.param_device.download(), model.param));
      CHECK(same_bits(model.exp_avg_device.download(), model.exp_avg));
      CHECK(same_bits(model.exp_avg_sq_device.download(), model.exp_avg_sq));
      const std::vector<bf16> bf16_after = model.param_bf16_device.download();
      CHECK(std::memcmp(bf16_after.data(), bf16_before.data(), bf16_after.size() * sizeof(bf16)) == 0);
    }
  }

  SECTION("a NaN gradient makes the norm NaN, and the step a no-op") {
    Model model(rng);
    model.grad[static_cast<size_t>(model.offset[5] + 70000)] = std::numeric_limits<float>::quiet_NaN();
    model.grad_device.upload(model.grad);
    const std::vector<AdamWTensor> tensors = model.device_tensors();
    const MultiTensorList list(tensors);
    DeviceBuffer<float> norm = poisoned<float>(1);
    bert::cuda::grad_norm(ctx, list, norm.data());
    CHECK(std::isnan(norm.download().at(0)));
    bert::cuda::adamw_step(ctx, hyper, list, norm.data(), 1.0f);
    CHECK(same_bits(model.param_device.download(), model.param));
  }
}

// The model's optimizer_step: the bias-correction step comes from a device counter of applied updates
// (no host sync), a skipped step leaves the counter alone; hyper.step is the caller's expectation.
TEST_CASE("cuda adamw_step with a device step counter", "[cuda][adamw]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(23);
  Model model(rng);
  const std::vector<AdamWTensor> tensors = model.device_tensors();
  const MultiTensorList list(tensors);
  const std::vector<int64_t> two{2};
  DeviceBuffer<int64_t> count = upload<int64_t>(two);
  bert::cpu::Context cpu_ctx(1);
  const float max_grad_norm = 1.0f;
  const std::vector<float> nan_norm{std::numeric_limits<float>::quiet_NaN()};
  DeviceBuffer<float> bad_norm = upload<float>(nan_norm);
  struct Call {
    int64_t expected;  // hyper.step: what the caller thinks the step is
    int64_t step;      // what it is (0: skipped by a NaN norm)
  };
  // Counted 3 as expected; skipped; counted 4 where the caller, not having seen the skip, expected 5
  // (the bias corrections formed on the device: within an ulp); counted 5 as expected.
  for (const Call call : {Call{3, 3}, Call{4, 0}, Call{5, 4}, Call{5, 5}}) {
    INFO("expected step " << call.expected << ", actual " << call.step);
    model.new_gradients(rng);
    AdamWHyperparams hyper;
    hyper.learning_rate = 0.05;
    hyper.weight_decay = 0.1;
    hyper.step = call.expected;
    if (call.step == 0) {
      const std::vector<bf16> bf16_before = model.param_bf16_device.download();
      bert::cuda::adamw_step(ctx, hyper, list, bad_norm.data(), max_grad_norm, count.data());
      CHECK(same_bits(model.param_device.download(), model.param));
      CHECK(same_bits(model.exp_avg_device.download(), model.exp_avg));
      CHECK(same_bits(model.exp_avg_sq_device.download(), model.exp_avg_sq));
      const std::vector<bf16> bf16_after = model.param_bf16_device.download();
      CHECK(std::memcmp(bf16_after.data(), bf16_before.data(), bf16_after.size() * sizeof(bf16)) == 0);
      CHECK(count.download().at(0) == 3);
      continue;
    }
    DeviceBuffer<float> norm = poisoned<float>(1);
    bert::cuda::grad_norm(ctx, list, norm.data());
    const float gpu_norm = norm.download().at(0);
    bert::cuda::adamw_step(ctx, hyper, list, norm.data(), max_grad_norm, count.data());
    CHECK(count.download().at(0) == call.step);

    AdamWHyperparams cpu_hyper = hyper;
    cpu_hyper.step = call.step;
    cpu_hyper.grad_scale = bert::ops::clip_grad_coefficient(gpu_norm, max_grad_norm);
    const std::vector<float> before = model.param;
    const auto cpu_tensors = model.cpu_tensors();
    bert::cpu::adamw_step<float>(cpu_ctx, cpu_hyper, cpu_tensors);
    compare_and_continue(model, before, call.step == call.expected);  // expected: the host's scalars, exact
  }
}

TEST_CASE("cuda convert_f32_to_bf16 and convert_bf16_to_f32 round exactly", "[cuda][adamw]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(17);
  std::vector<float> values = random_floats(rng, 1000003, -1000.0f, 1000.0f);
  const float specials[] = {0.0f,
                            -0.0f,
                            1.0f,
                            1.00390625f,
                            1.01171875f,
                            3.0e38f,
                            -3.0e38f,
                            1e-40f,
                            -1e-42f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::min()};
  for (size_t i = 0; i < std::size(specials); ++i) values[i * 7] = specials[i];
  DeviceBuffer<float> src = upload<float>(values);
  DeviceBuffer<bf16> converted = poisoned<bf16>(values.size());
  bert::cuda::convert_f32_to_bf16(ctx, static_cast<int64_t>(values.size()), src.data(), converted.data());
  const std::vector<bf16> gpu = converted.download();
  size_t bad = 0;
  for (size_t i = 0; i < values.size(); ++i) bad += bits_of(gpu[i]) != bits_of(float_to_bf16(values[i])) ? 1 : 0;
  CHECK(bad == 0);

  DeviceBuffer<float> back = poisoned<float>(values.size());
  bert::cuda::convert_bf16_to_f32(ctx, static_cast<int64_t>(values.size()), converted.data(), back.data());
  CHECK(same_bits(back.download(), to_float(gpu)));

  // Odd count at an odd offset, and zero elements (a no-op that must not throw).
  DeviceBuffer<bf16> partial = poisoned<bf16>(10);
  bert::cuda::convert_f32_to_bf16(ctx, 7, src.data() + 1, partial.data() + 1);
  const std::vector<bf16> partial_host = partial.download();
  CHECK(bits_of(partial_host[0]) == 0xFFFF);
  for (size_t i = 1; i < 8; ++i) CHECK(bits_of(partial_host[i]) == bits_of(float_to_bf16(values[i])));
  CHECK(bits_of(partial_host[8]) == 0xFFFF);
  bert::cuda::convert_f32_to_bf16(ctx, 0, nullptr, nullptr);
}

TEST_CASE("cuda adamw rejects bad arguments before launching", "[cuda][adamw]") {
  Context ctx(cudaStreamLegacy);
  DeviceBuffer<float> buffer(16);
  AdamWTensor negative;
  negative.param = negative.exp_avg = negative.exp_avg_sq = buffer.data();
  negative.grad = buffer.data();
  negative.numel = -1;
  CHECK_THROWS_AS(MultiTensorList(std::span<const AdamWTensor>(&negative, 1)), std::invalid_argument);
  AdamWTensor missing = negative;
  missing.numel = 4;
  missing.exp_avg = nullptr;
  CHECK_THROWS_AS(MultiTensorList(std::span<const AdamWTensor>(&missing, 1)), std::invalid_argument);

  AdamWTensor ok = negative;
  ok.numel = 4;
  const MultiTensorList list(std::span<const AdamWTensor>(&ok, 1));
  AdamWHyperparams hyper;
  hyper.step = 0;
  CHECK_THROWS_AS(bert::cuda::adamw_step(ctx, hyper, list), std::invalid_argument);
  hyper.step = 1;
  hyper.beta2 = 1.0;
  CHECK_THROWS_AS(bert::cuda::adamw_step(ctx, hyper, list), std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::grad_norm(ctx, list, nullptr), std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::convert_f32_to_bf16(ctx, -1, nullptr, nullptr), std::invalid_argument);
}
