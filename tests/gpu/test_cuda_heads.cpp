// CUDA pooler forward/backward and row gather/scatter (kernels/cuda/heads.cu) against
// kernels/cpu/pooler.cpp in fp32 on the same bf16 inputs. Checks that only the [CLS] rows of
// d_encoder_out change, that parameter gradients accumulate, that nullptr gradients are skipped,
// bitwise repeatability, and exact gather / scatter-add on aligned and misaligned rows.
// The ops run on the legacy default stream (Context(cudaStreamLegacy)): DeviceBuffer's copies and
// poisoned()'s cudaMemset use that stream too, so all are ordered without explicit syncs (a
// Context's own stream is non-blocking and would race with them).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/gpu/cuda_test_util.h"

namespace {

using bert::cuda::bf16;
using bert::cuda::Context;
using bert::cuda::DeviceBuffer;
using bert::cuda::PoolerShape;
using namespace bert::cuda::test;

const PoolerShape kPoolerShapes[] = {{1, 1, 7}, {3, 5, 64}, {2, 3, 100}, {33, 4, 768}, {40, 2, 33}};

}  // namespace

TEST_CASE("cuda pooler_forward matches the CPU reference", "[cuda][heads]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(21);
  for (const PoolerShape& shape : kPoolerShapes) {
    INFO("batch " << shape.batch << ", seq_len " << shape.seq_len << ", hidden " << shape.hidden);
    const size_t tokens = static_cast<size_t>(shape.batch * shape.seq_len), hidden = static_cast<size_t>(shape.hidden);
    const std::vector<float> encoder_out = random_bf16_values(rng, tokens * hidden);
    const float weight_range = 2.0f / std::sqrt(static_cast<float>(hidden));
    const std::vector<float> weight = random_bf16_values(rng, hidden * hidden, -weight_range, weight_range);
    const std::vector<float> bias = random_bf16_values(rng, hidden, -0.5f, 0.5f);

    bert::cpu::Context cpu_ctx(1);
    std::vector<float> expected(static_cast<size_t>(shape.batch) * hidden);
    bert::cpu::pooler_forward<float>(cpu_ctx, shape, encoder_out.data(), weight.data(), bias.data(), expected.data());

    DeviceBuffer<bf16> encoder_out_device = upload_bf16(encoder_out), weight_device = upload_bf16(weight),
                       bias_device = upload_bf16(bias);
    DeviceBuffer<bf16> pooled = poisoned<bf16>(expected.size());
    bert::cuda::pooler_forward(ctx, shape, encoder_out_device.data(), weight_device.data(), bias_device.data(),
                               pooled.data());
    const std::vector<bf16> first = pooled.download();
    check_elementwise("pooled", to_float(first), expected, 5e-3, 1e-5);

    bert::cuda::pooler_forward(ctx, shape, encoder_out_device.data(), weight_device.data(), bias_device.data(),
                               pooled.data());
    CHECK(same_bits(pooled.download(), first));
  }
}

TEST_CASE("cuda pooler_backward matches the CPU reference", "[cuda][heads]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(22);
  for (const PoolerShape& shape : kPoolerShapes) {
    INFO("batch " << shape.batch << ", seq_len " << shape.seq_len << ", hidden " << shape.hidden);
    const size_t batch = static_cast<size_t>(shape.batch), hidden = static_cast<size_t>(shape.hidden);
    const size_t tokens = batch * static_cast<size_t>(shape.seq_len);
    const std::vector<float> dpooled = random_bf16_values(rng, batch * hidden);
    const std::vector<float> pooled = random_bf16_values(rng, batch * hidden, -0.99f, 0.99f);
    const std::vector<float> encoder_out = random_bf16_values(rng, tokens * hidden);
    const float weight_range = 2.0f / std::sqrt(static_cast<float>(hidden));
    const std::vector<float> weight = random_bf16_values(rng, hidden * hidden, -weight_range, weight_range);
    // Existing gradients: the op adds to them.
    const std::vector<float> d_encoder_out_init = random_bf16_values(rng, tokens * hidden);
    const std::vector<float> dweight_init = random_floats(rng, hidden * hidden);
    const std::vector<float> dbias_init = random_floats(rng, hidden);

    bert::cpu::Context cpu_ctx(1);
    std::vector<float> cpu_d_encoder_out = d_encoder_out_init, cpu_dweight = dweight_init, cpu_dbias = dbias_init;
    bert::cpu::pooler_backward<float>(cpu_ctx, shape, dpooled.data(), encoder_out.data(), weight.data(), pooled.data(),
                                      cpu_d_encoder_out.data(), cpu_dweight.data(), cpu_dbias.data());

    DeviceBuffer<bf16> dpooled_device = upload_bf16(dpooled), pooled_device = upload_bf16(pooled),
                       encoder_out_device = upload_bf16(encoder_out), weight_device = upload_bf16(weight);
    auto run = [&](bool want_dx, bool want_dweight, bool want_dbias) {
      struct Out {
        std::vector<bf16> d_encoder_out;
        std::vector<float> dweight, dbias;
      };
      DeviceBuffer<bf16> d_encoder_out = upload_bf16(d_encoder_out_init);
      DeviceBuffer<float> dweight = upload<float>(dweight_init), dbias = upload<float>(dbias_init);
      bert::cuda::pooler_backward(ctx, shape, dpooled_device.data(), encoder_out_device.data(), weight_device.data(),
                                  pooled_device.data(), want_dx ? d_encoder_out.data() : nullptr,
                                  want_dweight ? dweight.data() : nullptr, want_dbias ? dbias.data() : nullptr);
      return Out{d_encoder_out.download(), dweight.download(), dbias.download()};
    };

    const auto full = run(true, true, true);
    const std::vector<float> gpu_d_encoder_out = to_float(full.d_encoder_out);
    // Only the [CLS] rows change (bitwise), and those match the CPU.
    const std::vector<bf16> init_bits = to_bf16(d_encoder_out_init);
    std::vector<float> gpu_cls, cpu_cls;
    size_t changed_elsewhere = 0;
    for (size_t t = 0; t < tokens; ++t) {
      const bool cls = t % static_cast<size_t>(shape.seq_len) == 0;
      for (size_t j = 0; j < hidden; ++j) {
        const size_t i = t * hidden + j;
        if (cls) {
          gpu_cls.push_back(gpu_d_encoder_out[i]);
          cpu_cls.push_back(cpu_d_encoder_out[i]);
        } else {
          changed_elsewhere += bits_of(full.d_encoder_out[i]) != bits_of(init_bits[i]) ? 1 : 0;
        }
      }
    }
    CHECK(changed_elsewhere == 0);
    check_elementwise("d_encoder_out [CLS] rows", gpu_cls, cpu_cls, 5e-3, 1e-5);
    CHECK_CLOSE_REL("dweight increment", difference(full.dweight, dweight_init), difference(cpu_dweight, dweight_init),
                    1e-5);
    CHECK_CLOSE_REL("dbias increment", difference(full.dbias, dbias_init), difference(cpu_dbias, dbias_init), 1e-5);

    // Repeatable bit for bit; each output independent of which others are wanted.
    const auto repeat = run(true, true, true);
    CHECK(same_bits(repeat.d_encoder_out, full.d_encoder_out));
    CHECK(same_bits(repeat.dweight, full.dweight));
    CHECK(same_bits(repeat.dbias, full.dbias));
    const auto only_dbias = run(false, false, true);
    CHECK(same_bits(only_dbias.d_encoder_out, init_bits));
    CHECK(same_bits(only_dbias.dweight, dweight_init));
    CHECK(same_bits(only_dbias.dbias, full.dbias));
    const auto only_dx = run(true, false, false);
    CHECK(same_bits(only_dx.d_encoder_out, full.d_encoder_out));
    CHECK(same_bits(only_dx.dbias, dbias_init));
  }
}

TEST_CASE("cuda gather_rows and scatter_add_rows are exact", "[cuda][heads]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(23);
  const int64_t table_rows = 50, num_rows = 17;
  for (const int64_t cols : {int64_t{768}, int64_t{7}, int64_t{24}}) {
    for (const int64_t offset : {int64_t{0}, int64_t{1}}) {  // 1: misaligned rows, the scalar path
      INFO("cols " << cols << ", offset " << offset);
      std::vector<int32_t> all_rows(static_cast<size_t>(table_rows));
      std::iota(all_rows.begin(), all_rows.end(), 0);
      std::shuffle(all_rows.begin(), all_rows.end(), rng);
      const std::vector<int32_t> rows(all_rows.begin(), all_rows.begin() + num_rows);  // distinct
      DeviceBuffer<int32_t> rows_device = upload<int32_t>(rows);

      const size_t table_numel = static_cast<size_t>(table_rows * cols),
                   picked_numel = static_cast<size_t>(num_rows * cols);
      const std::vector<bf16> table = to_bf16(random_bf16_values(rng, table_numel + 1));
      DeviceBuffer<bf16> table_device = upload<bf16>(table);
      DeviceBuffer<bf16> picked = poisoned<bf16>(picked_numel + 1);
      bert::cuda::gather_rows(ctx, num_rows, cols, rows_device.data(), table_device.data() + offset,
                              picked.data() + offset);
      const std::vector<bf16> gathered = picked.download();
      size_t gather_bad = 0;
      for (int64_t i = 0; i < num_rows; ++i)
        for (int64_t c = 0; c < cols; ++c)
          gather_bad += bits_of(gathered[offset + i * cols + c]) != bits_of(table[offset + rows[i] * cols + c]) ? 1 : 0;
      CHECK(gather_bad == 0);

      const std::vector<bf16> addend = to_bf16(random_bf16_values(rng, picked_numel + 1));
      DeviceBuffer<bf16> addend_device = upload<bf16>(addend);
      bert::cuda::scatter_add_rows(ctx, num_rows, cols, rows_device.data(), addend_device.data() + offset,
                                   table_device.data() + offset);
      std::vector<bf16> expected = table;
      for (int64_t i = 0; i < num_rows; ++i)
        for (int64_t c = 0; c < cols; ++c) {
          bf16& slot = expected[offset + rows[i] * cols + c];
          slot = float_to_bf16(bf16_to_float(slot) + bf16_to_float(addend[offset + i * cols + c]));
        }
      CHECK(same_bits(table_device.download(), expected));
    }
  }
  // Zero rows: nothing to do, nothing thrown.
  bert::cuda::gather_rows(ctx, 0, 768, nullptr, nullptr, nullptr);
  bert::cuda::scatter_add_rows(ctx, 0, 768, nullptr, nullptr, nullptr);
}

TEST_CASE("cuda heads reject bad arguments before launching", "[cuda][heads]") {
  Context ctx(cudaStreamLegacy);
  DeviceBuffer<bf16> buffer(64);
  CHECK_THROWS_AS(bert::cuda::pooler_forward(ctx, PoolerShape{-1, 1, 8}, buffer.data(), buffer.data(), buffer.data(),
                                             buffer.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(
      bert::cuda::pooler_forward(ctx, PoolerShape{1, 1, 0}, buffer.data(), buffer.data(), buffer.data(), buffer.data()),
      std::invalid_argument);
  CHECK_THROWS_AS(
      bert::cuda::pooler_forward(ctx, PoolerShape{1, 1, 8}, nullptr, buffer.data(), buffer.data(), buffer.data()),
      std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::pooler_backward(ctx, PoolerShape{1, 0, 8}, buffer.data(), buffer.data(), buffer.data(),
                                              buffer.data(), buffer.data(), nullptr, nullptr),
                  std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::gather_rows(ctx, -1, 8, nullptr, buffer.data(), buffer.data()), std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::scatter_add_rows(ctx, 2, 8, nullptr, buffer.data(), buffer.data()),
                  std::invalid_argument);
}
