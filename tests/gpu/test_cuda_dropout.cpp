// CUDA dropout (kernels/cuda/dropout.cu) against kernels/cpu and ops::dropout_keep: the keep mask is
// the CPU's bit for bit and every output equals the CPU's fp32 result rounded to bf16, exactly, for
// odd sizes (partial Philox groups and a partial 8-element tail), a seed and offset using their high
// words, both the 128-bit and the scalar (misaligned) path, in place, backward = forward, p = 0 a copy.
// Outputs are poisoned with NaN and fenced by NaN guards.
#include <cmath>
#include <cstddef>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/gpu/cuda_test_util.h"

namespace {

namespace cpu = bert::cpu;
namespace cuda = bert::cuda;
namespace ops = bert::ops;
using bert::ops::DropoutSpec;
using cuda::bf16;
using cuda::DeviceBuffer;
using namespace bert::cuda::test;

// Nonzero values (so a dropped element is recognisable as 0), rounded to bf16.
std::vector<float> nonzero_values(std::mt19937_64& rng, size_t count) {
  std::vector<float> values = random_bf16_values(rng, count, 0.5f, 1.5f);
  for (size_t i = 0; i < count; i += 2) values[i] = -values[i];
  return values;
}

std::vector<uint16_t> expected_bits(const std::vector<float>& cpu_result) {
  std::vector<uint16_t> bits(cpu_result.size());
  for (size_t i = 0; i < cpu_result.size(); ++i) bits[i] = bits_of(float_to_bf16(cpu_result[i]));
  return bits;
}

// The bits of the tensor's elements (without the guards).
std::vector<uint16_t> element_bits(const Bf16Tensor& tensor, size_t offset, size_t count) {
  const std::vector<uint16_t> all = tensor.bits();
  return std::vector<uint16_t>(all.begin() + static_cast<std::ptrdiff_t>(offset),
                               all.begin() + static_cast<std::ptrdiff_t>(offset + count));
}

void check_dropout(int64_t numel, float probability, size_t offset, uint64_t seed) {
  INFO("numel " << numel << " p " << probability << " offset " << offset);
  const size_t n = static_cast<size_t>(numel);
  DropoutSpec spec;
  spec.probability = probability;
  spec.seed = 0x0123456789ABCDEFull ^ seed;
  spec.offset = (uint64_t{7} << 32) + 12345 + seed;  // a high word the Philox counter must carry
  std::mt19937_64 rng(seed);
  const std::vector<float> x = nonzero_values(rng, n);

  cpu::Context cpu_ctx(1);
  std::vector<float> y_ref(n);
  cpu::dropout_forward<float>(cpu_ctx, numel, spec, x.data(), y_ref.data());
  const std::vector<uint16_t> want = expected_bits(y_ref);

  cuda::Context ctx;
  Bf16Tensor d_x = Bf16Tensor::input(x, offset);
  Bf16Tensor d_y = Bf16Tensor::output(n, offset), d_dx = Bf16Tensor::output(n, offset);
  Bf16Tensor d_inplace = Bf16Tensor::input(x, offset);
  cuda::dropout_forward(ctx, numel, spec, d_x.data(), d_y.data());
  cuda::dropout_backward(ctx, numel, spec, d_x.data(), d_dx.data());
  cuda::dropout_forward(ctx, numel, spec, d_inplace.data(), d_inplace.data());
  ctx.synchronize();
  CHECK(d_y.guards_intact());
  CHECK(d_dx.guards_intact());
  CHECK(d_inplace.guards_intact());

  const std::vector<uint16_t> got = element_bits(d_y, offset, n);
  CHECK(got == want);
  CHECK(element_bits(d_dx, offset, n) == want);       // backward: the same mask and scale
  CHECK(element_bits(d_inplace, offset, n) == want);  // in place

  // The mask, straight from ops::dropout_keep (independent of the CPU op's loop).
  int64_t mismatches = 0, kept = 0;
  for (int64_t i = 0; i < numel; ++i) {
    const bool keep = ops::dropout_keep(spec, static_cast<uint64_t>(i));
    const bool nonzero = (got[static_cast<size_t>(i)] & 0x7FFF) != 0;
    if (keep != nonzero) ++mismatches;
    if (keep) ++kept;
  }
  CHECK(mismatches == 0);
  if (numel >= 100000 && probability > 0.0f)
    CHECK(std::fabs(static_cast<double>(kept) / static_cast<double>(numel) - (1.0 - probability)) < 0.01);
}

}  // namespace

TEST_CASE("cuda dropout matches the CPU mask and values bit for bit", "[dropout]") {
  const int64_t sizes[] = {1, 3, 4, 5, 7, 8, 9, 15, 17, 1000, 4099, (int64_t{1} << 20) + 3};
  uint64_t seed = 500;
  for (const float probability : {0.0f, 0.1f, 0.5f, 0.9f})
    for (const int64_t numel : sizes)
      for (const size_t offset : {size_t{0}, size_t{1}}) check_dropout(numel, probability, offset, seed++);
}

TEST_CASE("cuda dropout: zero elements is a no-op, bad probabilities throw", "[dropout]") {
  cuda::Context ctx;
  Bf16Tensor x = Bf16Tensor::input({1.0f, 2.0f}, 0);
  Bf16Tensor y = Bf16Tensor::output(2, 0);
  DropoutSpec spec;
  spec.probability = 0.5f;
  cuda::dropout_forward(ctx, 0, spec, x.data(), y.data());
  cuda::dropout_backward(ctx, 0, spec, x.data(), y.data());
  ctx.synchronize();
  CHECK(y.guards_intact());
  CHECK(y.bits()[0] == 0xFFFF);

  for (const float bad : {1.0f, -0.1f, 1.5f, std::nanf("")}) {
    spec.probability = bad;
    CHECK_THROWS_AS(cuda::dropout_forward(ctx, 2, spec, x.data(), y.data()), std::invalid_argument);
    CHECK_THROWS_AS(cuda::dropout_backward(ctx, 2, spec, x.data(), y.data()), std::invalid_argument);
  }
  spec.probability = 0.5f;
  CHECK_THROWS_AS(cuda::dropout_forward(ctx, -1, spec, x.data(), y.data()), std::invalid_argument);
}
