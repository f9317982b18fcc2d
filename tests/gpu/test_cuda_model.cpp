// BertForPreTrainingCuda (engine/bert_cuda.h) against the fp32 CPU model (engine/bert.h) on the same
// weights: a tiny BERT (hidden 64, 2 layers, 2 heads of 32, intermediate 128, vocab 300) on a padded
// batch of 4 x 32 with MLM labels and NSP labels.
//   - same parameter table, same HF initialisation (bitwise), working copy = bf16(master)
//   - losses within bf16 tolerance (rel 2e-2), counts exact; every parameter gradient within rel 3e-2
//     (max |gpu - cpu| / max |cpu| per tensor), accumulated over micro-batches
//   - dropout on: the same masks, so the same losses and gradients
//   - a few AdamW steps (clipped) on both: the losses still agree
//   - the dense MLM head and small decoder chunks give the sparse head's loss and gradients
//   - head_dim 64 (BERT-base's) and 128 (with gelu_new) as well as the tiny model's 32
//   - checkpoints interchangeable (fp32, bitwise); memory_plan == what reserve allocates
// The weights are rounded to bf16 first (both models get the same bf16-exact fp32 values), so the
// differences come from bf16 activations only.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"
#include "engine/bert.h"
#include "engine/bert_cuda.h"
#include "kernels/cpu/ops_cpu.h"
#include "tests/gpu/cuda_model_fixture.h"
#include "tests/gpu/cuda_test_util.h"
#include "tests/test_dirs.h"

namespace {

using bert::BatchView;
using bert::BertConfig;
using bert::BertForPreTraining;
using bert::BertForPreTrainingCuda;
using bert::LossStats;
using bert::ModelOptions;
using bert::cuda::test::relative_error;

BertConfig tiny_config(double dropout = 0.0) { return bert::cuda::test::tiny_bert_config(dropout); }
void share_bf16_weights(BertForPreTraining<float>& cpu, BertForPreTrainingCuda& gpu) {
  bert::cuda::test::share_bf16_weights(cpu, gpu, 20261201);
}

// A padded batch of 4 x 32: lengths 32, 27, 20, 9; two segments; ~15% MLM labels; NSP labels.
struct TestBatch {
  int64_t batch_size = 4, seq_len = 32;
  std::vector<int32_t> input_ids, token_type_ids, attention_mask, labels, nsp_labels;
  std::vector<int32_t> masked_positions, masked_labels;

  explicit TestBatch(uint64_t seed) {
    std::mt19937_64 rng(seed);
    const int64_t lengths[] = {32, 27, 20, 9};
    const size_t tokens = static_cast<size_t>(batch_size * seq_len);
    input_ids.assign(tokens, 0);
    token_type_ids.assign(tokens, 0);
    attention_mask.assign(tokens, 0);
    labels.assign(tokens, bert::ops::kIgnoreIndex);
    std::uniform_int_distribution<int32_t> id(5, 299);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    for (int64_t b = 0; b < batch_size; ++b) {
      for (int64_t s = 0; s < lengths[b]; ++s) {
        const size_t t = static_cast<size_t>(b * seq_len + s);
        input_ids[t] = s == 0 ? 2 : id(rng);  // 2 plays [CLS]
        token_type_ids[t] = s >= lengths[b] / 2 ? 1 : 0;
        attention_mask[t] = 1;
        if (s > 0 && (unit(rng) < 0.15 || s == 1)) {  // at least one label per sequence
          labels[t] = id(rng);
          input_ids[t] = 4;  // plays [MASK]
          masked_positions.push_back(static_cast<int32_t>(t));
          masked_labels.push_back(labels[t]);
        }
      }
    }
    // Not balanced: with {0, 1, 0, 1} the NSP head sits at p ~ 0.5 and the four rows' gradients cancel
    // in the pooler/NSP weight sums down to bf16 rounding noise (a 10-27% "error" on a correct model).
    nsp_labels = {0, 0, 0, 1};
  }

  BatchView view(bool with_positions = false) const {
    BatchView v = bert::batch_view(*this);
    if (!with_positions) {
      v.masked_positions = nullptr;  // the labels are the MLM rows (the loader's path)
      v.masked_labels = nullptr;
      v.num_masked = 0;
    }
    return v;
  }
};

void check_losses(const LossStats& gpu, const LossStats& cpu, double tolerance) {
  INFO("mlm loss gpu " << gpu.mlm_loss << " cpu " << cpu.mlm_loss << "; nsp loss gpu " << gpu.nsp_loss << " cpu "
                       << cpu.nsp_loss);
  CHECK(gpu.mlm_count == cpu.mlm_count);
  CHECK(gpu.nsp_count == cpu.nsp_count);
  CHECK(std::fabs(gpu.mlm_loss - cpu.mlm_loss) <= tolerance * std::fabs(cpu.mlm_loss));
  CHECK(std::fabs(gpu.nsp_loss - cpu.nsp_loss) <= tolerance * std::fabs(cpu.nsp_loss));
  CHECK(std::fabs(gpu.loss - cpu.loss) <= tolerance * std::fabs(cpu.loss));
}

double max_abs(std::span<const float> values) {
  double out = 0;
  for (const float v : values) out = std::max(out, static_cast<double>(std::fabs(v)));
  return out;
}

// Every tensor's gradient within `tolerance` (max |diff| / max |cpu|); prints the worst five.
// The key bias is the exception: its exact gradient is 0 (a constant added to every score of a row
// does not change the softmax), so the CPU's is rounding noise; its GPU gradient is measured against
// the scale of the same layer's query-bias gradient instead.
void check_grads(const BertForPreTraining<float>& cpu, const BertForPreTrainingCuda& gpu, double tolerance) {
  const std::vector<float> gpu_grads = gpu.download_grads();
  std::vector<std::pair<double, std::string>> errors;
  const std::string key_bias = "attention.self.key.bias";
  for (const bert::ParamInfo& info : cpu.params()) {
    const std::span<const float> expected = cpu.grad(info);
    const std::span<const float> actual(gpu_grads.data() + info.offset, info.numel);
    if (info.name.size() > key_bias.size() &&
        info.name.compare(info.name.size() - key_bias.size(), key_bias.size(), key_bias) == 0) {
      const std::string query_bias =
          info.name.substr(0, info.name.size() - key_bias.size()) + "attention.self.query.bias";
      const double scale = max_abs(cpu.grad(cpu.param_info(query_bias)));
      double diff = 0;
      for (size_t i = 0; i < actual.size(); ++i)
        diff = std::isfinite(actual[i]) ? std::max(diff, std::fabs(static_cast<double>(actual[i]) - expected[i]))
                                        : INFINITY;
      errors.emplace_back(diff / std::max(scale, 1e-30), info.name);
      continue;
    }
    errors.emplace_back(relative_error(actual, expected), info.name);
  }
  std::sort(errors.rbegin(), errors.rend());
  for (size_t i = 0; i < errors.size() && i < 5; ++i)
    std::printf("  grad rel error %.3e  %s\n", errors[i].first, errors[i].second.c_str());
  for (const auto& [error, name] : errors) {
    INFO(name << ": gradient relative error " << error << " (tolerance " << tolerance << ")");
    CHECK(error <= tolerance);
  }
}

// In the test case's own scratch directory (tests/test_dirs.h): parallel runs never share files.
std::string temp_path(const std::string& name) { return test_dir() + "/" + name; }

}  // namespace

TEST_CASE("cuda model: the CPU model's parameter table and initialisation", "[cuda][model]") {
  ModelOptions options;
  options.init_seed = 7;
  BertForPreTraining<float> cpu(tiny_config(), options);
  BertForPreTrainingCuda gpu(tiny_config(), options);
  REQUIRE(gpu.params().size() == cpu.params().size());
  for (size_t i = 0; i < cpu.params().size(); ++i) {
    INFO(cpu.params()[i].name);
    CHECK(gpu.params()[i].name == cpu.params()[i].name);
    CHECK(gpu.params()[i].shape == cpu.params()[i].shape);
    CHECK(gpu.params()[i].offset == cpu.params()[i].offset);
    CHECK(gpu.params()[i].apply_weight_decay == cpu.params()[i].apply_weight_decay);
  }
  CHECK(gpu.num_parameters() == cpu.num_parameters());
  CHECK(gpu.param_info("cls.predictions.bias").numel == 300);
  CHECK_THROWS_AS(gpu.param_info("cls.predictions.decoder.weight"), bert::Error);

  const std::vector<float> master = gpu.download_parameters();
  const std::span<const float> expected = cpu.parameters();
  CHECK(bert::cuda::test::same_bits(master, std::vector<float>(expected.begin(), expected.end())));
  const std::vector<float> working = gpu.download_working_parameters();
  CHECK(bert::cuda::test::same_bits(working, bert::cuda::test::round_to_bf16(master)));
}

TEST_CASE("cuda model: losses and gradients match the CPU model (dropout off)", "[cuda][model]") {
  BertForPreTraining<float> cpu(tiny_config());
  BertForPreTrainingCuda gpu(tiny_config());
  share_bf16_weights(cpu, gpu);
  const TestBatch batch(11);
  cpu.set_dropout(1, 0, false);
  gpu.set_dropout(1, 0, false);

  LossStats cpu_stats;
  cpu.zero_grads();
  cpu.forward_backward(batch.view(), cpu_stats, true, 1.0f);
  gpu.zero_grads();
  gpu.forward_backward(batch.view(), 1.0f);
  const LossStats gpu_stats = gpu.read_loss_stats();
  check_losses(gpu_stats, cpu_stats, 2e-2);
  CHECK(gpu_stats.mlm_count == static_cast<int64_t>(batch.masked_positions.size()));
  check_grads(cpu, gpu, 3e-2);

  SECTION("gradients accumulate over micro-batches") {
    LossStats second;
    cpu.forward_backward(batch.view(), second, true, 0.5f);
    gpu.forward_backward(batch.view(true), 0.5f);  // the same rows, given as positions
    check_grads(cpu, gpu, 3e-2);
    const std::vector<LossStats> taken = gpu.take_loss_stats();
    REQUIRE(taken.size() == 2);
    CHECK(taken[1].mlm_loss == taken[0].mlm_loss);  // deterministic, and positions == labels
    CHECK(taken[1].nsp_loss == taken[0].nsp_loss);
    CHECK(gpu.take_loss_stats().empty());
  }

  SECTION("small decoder chunks give the same loss and gradients") {
    CHECK(gpu.options().decoder_chunk_rows == bert::kCudaDecoderChunkRows);  // the default: one chunk here
    CHECK(cpu.options().decoder_chunk_rows == bert::kCpuDecoderChunkRows);
    ModelOptions options;
    options.decoder_chunk_rows = 5;
    BertForPreTrainingCuda chunked(tiny_config(), options);
    chunked.copy_parameters_from(cpu);
    chunked.set_dropout(1, 0, false);
    chunked.forward_backward(batch.view(), 1.0f);
    check_losses(chunked.read_loss_stats(), cpu_stats, 2e-2);
    check_grads(cpu, chunked, 3e-2);
  }

  SECTION("the dense MLM head (every token, HF's way) gives the same loss and gradients") {
    ModelOptions options;
    options.mlm_on_masked_positions_only = false;
    options.decoder_chunk_rows = 48;  // 128 rows: three chunks, the last one partial
    BertForPreTrainingCuda dense(tiny_config(), options);
    dense.copy_parameters_from(cpu);
    dense.set_dropout(1, 0, false);
    dense.forward_backward(batch.view(), 1.0f);
    CHECK(dense.uploaded_batch().mlm_rows() == 128);  // the dense path ran: every token is a row
    CHECK(dense.uploaded_batch().mlm_chunk_counted.size() == 3);
    const LossStats dense_stats = dense.read_loss_stats();
    check_losses(dense_stats, cpu_stats, 2e-2);
    CHECK(dense_stats.mlm_count == cpu_stats.mlm_count);
    check_grads(cpu, dense, 3e-2);
  }

  SECTION("forward only: losses, no gradients") {
    gpu.zero_grads();
    gpu.forward_backward(batch.view(), 1.0f, /*compute_grads=*/false);
    check_losses(gpu.read_loss_stats(), cpu_stats, 2e-2);
    for (const float g : gpu.download_grads()) REQUIRE(g == 0.0f);
  }
}

TEST_CASE("cuda model: head_dim 64 (BERT-base's) and 128 match the CPU model, with GELU tanh", "[cuda][model]") {
  for (const int64_t head_dim : {64, 128}) {
    INFO("head_dim " << head_dim);
    BertConfig config = tiny_config();
    config.hidden_size = static_cast<int>(2 * head_dim);  // 2 heads
    config.intermediate_size = static_cast<int>(4 * head_dim);
    config.hidden_act = head_dim == 128 ? "gelu_new" : "gelu";
    BertForPreTraining<float> cpu(config);
    BertForPreTrainingCuda gpu(config);
    share_bf16_weights(cpu, gpu);
    const TestBatch batch(static_cast<uint64_t>(head_dim));
    LossStats cpu_stats;
    cpu.zero_grads();
    cpu.forward_backward(batch.view(), cpu_stats, true, 1.0f);
    gpu.zero_grads();
    gpu.forward_backward(batch.view(), 1.0f);
    check_losses(gpu.read_loss_stats(), cpu_stats, 2e-2);
    check_grads(cpu, gpu, 3e-2);
  }
}

TEST_CASE("cuda model: dropout masks equal the CPU model's", "[cuda][model]") {
  BertForPreTraining<float> cpu(tiny_config(0.2));
  BertForPreTrainingCuda gpu(tiny_config(0.2));
  share_bf16_weights(cpu, gpu);
  const TestBatch batch(12);
  cpu.set_dropout(123, 5, true);
  gpu.set_dropout(123, 5, true);
  LossStats cpu_stats;
  cpu.forward_backward(batch.view(), cpu_stats, true, 1.0f);
  gpu.forward_backward(batch.view(), 1.0f);
  check_losses(gpu.read_loss_stats(), cpu_stats, 2e-2);
  check_grads(cpu, gpu, 3e-2);

  // Another step's masks differ: the gradients move far outside the tolerance.
  gpu.zero_grads();
  gpu.set_dropout(123, 6, true);
  gpu.forward_backward(batch.view(), 1.0f);
  const std::vector<float> other = gpu.download_grads();
  const bert::ParamInfo& info = cpu.param_info("bert.encoder.layer.0.intermediate.dense.weight");
  CHECK(relative_error(std::span<const float>(other.data() + info.offset, info.numel), cpu.grad(info)) > 0.1);
}

TEST_CASE("cuda model: AdamW steps keep the CPU and GPU models together", "[cuda][model]") {
  BertForPreTraining<float> cpu(tiny_config());
  BertForPreTrainingCuda gpu(tiny_config());
  share_bf16_weights(cpu, gpu);
  const TestBatch batch(13);
  cpu.set_dropout(1, 0, false);
  gpu.set_dropout(1, 0, false);

  bert::cpu::Context cpu_ctx(1);
  std::vector<float> exp_avg(cpu.parameters().size(), 0.0f), exp_avg_sq(cpu.parameters().size(), 0.0f);
  std::vector<bert::cpu::AdamWTensor<float>> tensors;
  std::vector<bert::cpu::GradView<float>> grads;
  for (const bert::ParamInfo& info : cpu.params()) {
    tensors.push_back({cpu.parameters().data() + info.offset, cpu.grads().data() + info.offset,
                       exp_avg.data() + info.offset, exp_avg_sq.data() + info.offset, static_cast<int64_t>(info.numel),
                       info.apply_weight_decay});
    grads.push_back({cpu.grads().data() + info.offset, static_cast<int64_t>(info.numel)});
  }
  const float max_grad_norm = 1.0f;
  LossStats cpu_stats, first_cpu_stats;
  for (int step = 1; step <= 4; ++step) {
    INFO("step " << step);
    cpu.zero_grads();
    cpu.forward_backward(batch.view(), cpu_stats, true, 1.0f);
    if (step == 1) first_cpu_stats = cpu_stats;
    gpu.zero_grads();
    gpu.forward_backward(batch.view(), 1.0f);
    check_losses(gpu.read_loss_stats(), cpu_stats, 2e-2);

    bert::ops::AdamWHyperparams hyper;
    hyper.learning_rate = 2e-3;
    hyper.weight_decay = 0.01;
    hyper.step = step;
    const double norm = bert::cpu::grad_norm<float>(cpu_ctx, grads);
    hyper.grad_scale = bert::ops::clip_grad_coefficient(norm, max_grad_norm);
    bert::cpu::adamw_step<float>(cpu_ctx, hyper, tensors);
    gpu.optimizer_step(hyper, max_grad_norm);
    const float gpu_norm = gpu.read_grad_norm();
    INFO("grad norm gpu " << gpu_norm << " cpu " << norm);
    CHECK(std::fabs(gpu_norm - norm) <= 3e-2 * norm);
  }
  cpu.forward_backward(batch.view(), cpu_stats, false, 1.0f);
  gpu.forward_backward(batch.view(), 1.0f, false);
  const LossStats gpu_stats = gpu.read_loss_stats();
  check_losses(gpu_stats, cpu_stats, 2e-2);
  CHECK(gpu_stats.loss < first_cpu_stats.loss);  // it learned something

  SECTION("a non-finite gradient skips the update") {
    const std::vector<float> before = gpu.download_parameters();
    std::vector<float> moments_avg, moments_avg_sq;
    gpu.download_moments(moments_avg, moments_avg_sq);
    // A NaN weight in the NSP head makes the NSP loss, its gradients and so the norm NaN.
    std::vector<float> weights = before;
    weights[gpu.param_info("cls.seq_relationship.bias").offset] = NAN;
    gpu.upload_parameters(weights);
    gpu.zero_grads();
    gpu.forward_backward(batch.view(), 1.0f);
    bert::ops::AdamWHyperparams hyper;
    hyper.learning_rate = 3e-3;
    hyper.step = 5;
    gpu.optimizer_step(hyper, max_grad_norm);
    CHECK(std::isnan(gpu.read_grad_norm()));
    const std::vector<float> after = gpu.download_parameters();
    CHECK(bert::cuda::test::same_bits(after, weights));
    std::vector<float> avg_after, avg_sq_after;
    gpu.download_moments(avg_after, avg_sq_after);
    CHECK(bert::cuda::test::same_bits(avg_after, moments_avg));
    CHECK(bert::cuda::test::same_bits(avg_sq_after, moments_avg_sq));
  }
}

TEST_CASE("cuda model: checkpoints are interchangeable with the CPU model's", "[cuda][model]") {
  ModelOptions options;
  options.init_seed = 99;
  BertForPreTrainingCuda gpu(tiny_config(), options);
  // Move the master weights off the bf16 grid with one AdamW step.
  const TestBatch batch(14);
  gpu.forward_backward(batch.view(), 1.0f);
  bert::ops::AdamWHyperparams hyper;
  hyper.learning_rate = 1e-3;
  gpu.optimizer_step(hyper, 1.0f);
  const std::vector<float> master = gpu.download_parameters();

  const std::string gpu_file = temp_path("gpu.safetensors"), cpu_file = temp_path("cpu.safetensors");
  gpu.save_safetensors(gpu_file);
  BertForPreTraining<float> cpu(tiny_config());
  cpu.load_safetensors(gpu_file);
  CHECK(bert::cuda::test::same_bits(std::vector<float>(cpu.parameters().begin(), cpu.parameters().end()), master));

  ModelOptions other_options;
  other_options.init_seed = 5;
  BertForPreTraining<float> other(tiny_config(), other_options);
  other.save_safetensors(cpu_file);
  gpu.load_safetensors(cpu_file);
  CHECK(bert::cuda::test::same_bits(gpu.download_parameters(),
                                    std::vector<float>(other.parameters().begin(), other.parameters().end())));
  CHECK(bert::cuda::test::same_bits(gpu.download_working_parameters(),
                                    bert::cuda::test::round_to_bf16(gpu.download_parameters())));
  std::filesystem::remove(gpu_file);
  std::filesystem::remove(cpu_file);

  BertConfig deeper = tiny_config();
  deeper.num_hidden_layers = 3;
  BertForPreTrainingCuda deeper_gpu(deeper);
  other.save_safetensors(cpu_file);
  CHECK_THROWS_AS(deeper_gpu.load_safetensors(cpu_file), bert::Error);
  CHECK_THROWS_AS(deeper_gpu.copy_parameters_from(other), bert::Error);
  std::filesystem::remove(cpu_file);
}

#if !defined(BERT_EMULATED_OPS)
// reserve allocates the ops' scratch at memory_plan's estimate, so that no step grows it (a cudaFree
// waits for the whole device, NCCL's stream too): the estimate must cover its largest user, the
// embeddings backward, at the shapes the configs train (the case below checks a tiny model's step).
TEST_CASE("cuda model: the ops' scratch estimate covers the embeddings backward at BERT's shapes", "[cuda][model]") {
  bert::cuda::Context ctx;
  struct Size {
    int hidden, layers, heads;
  };
  for (const Size size : {Size{768, 12, 12}, Size{1024, 24, 16}}) {
    bert::BertConfig config;
    config.hidden_size = size.hidden;
    config.num_hidden_layers = size.layers;
    config.num_attention_heads = size.heads;
    config.intermediate_size = 4 * size.hidden;
    config.vocab_size = 30522;
    config.max_position_embeddings = 512;
    for (const auto& [batch, seq] :
         {std::pair<int64_t, int64_t>{128, 128}, {32, 512}, {64, 128}, {16, 512}, {64, 512}, {1, 8}, {3, 100}}) {
      INFO("hidden " << size.hidden << ", batch " << batch << " x " << seq);
      const bert::CudaMemoryPlan plan = BertForPreTrainingCuda::memory_plan(config, batch, seq);
      REQUIRE(plan.op_scratch_bytes > ctx.gemm_workspace_bytes());
      const size_t estimate = plan.op_scratch_bytes - ctx.gemm_workspace_bytes();
      const bert::ops::EmbeddingShape shape{batch, seq, size.hidden, config.vocab_size, 512, 2, 0};
      for (const bool token_types : {true, false}) {
        const size_t need = bert::cuda::embeddings_layernorm_backward_scratch_bytes(ctx, shape, token_types);
        CHECK(need > static_cast<size_t>(batch * seq * size.hidden) * sizeof(float));  // dz at least
        CHECK(estimate >= need);
        CHECK(estimate < need + need / 2 + (size_t{16} << 20));  // an upper bound, not a waste
      }
    }
  }
}
#endif

TEST_CASE("cuda model: reserve allocates what memory_plan says", "[cuda][model]") {
  BertForPreTrainingCuda gpu(tiny_config());
  gpu.reserve(4, 32);
  const bert::CudaMemoryPlan plan = gpu.memory_plan(4, 32);
  const bert::CudaMemoryPlan allocated = gpu.allocated();
  INFO(plan.table() << allocated.table());
  CHECK(allocated.master_params_bytes == plan.master_params_bytes);
  CHECK(allocated.working_params_bytes == plan.working_params_bytes);
  CHECK(allocated.grads_bytes == plan.grads_bytes);
  CHECK(allocated.optimizer_bytes == plan.optimizer_bytes);
  CHECK(allocated.activations_bytes == plan.activations_bytes);
  CHECK(allocated.workspace_bytes == plan.workspace_bytes);
  CHECK(allocated.statistics_bytes == plan.statistics_bytes);
  CHECK(allocated.inputs_bytes == plan.inputs_bytes);
  CHECK(allocated.loss_stats_bytes == plan.loss_stats_bytes);
  CHECK(allocated.parameter_arena_bytes() + allocated.batch_arena_bytes() ==
        plan.parameter_arena_bytes() + plan.batch_arena_bytes());
  // The ops' scratch is allocated with the arenas, at the estimate (rounded up to its granularity).
  CHECK(allocated.op_scratch_bytes >= plan.op_scratch_bytes);
  CHECK(allocated.op_scratch_bytes < plan.op_scratch_bytes + (size_t{4} << 20));

  // A batch that fits allocates nothing new, scratch included (the estimate covers a step's ops);
  // a bigger one grows to the larger plan.
  const TestBatch batch(15);
  gpu.forward_backward(batch.view(), 1.0f);
  gpu.optimizer_step(bert::ops::AdamWHyperparams{}, 1.0f);
  CHECK(gpu.allocated().activations_bytes == plan.activations_bytes);
  CHECK(gpu.allocated().op_scratch_bytes == allocated.op_scratch_bytes);
  gpu.reserve(8, 32);
  CHECK(gpu.allocated().activations_bytes == gpu.memory_plan(8, 32).activations_bytes);
  CHECK_THROWS_AS(gpu.reserve(1, 128), bert::Error);  // beyond max_position_embeddings (64)
}

TEST_CASE("cuda model: loss stats survive many forwards, bad inputs are errors, not device traps", "[cuda][model]") {
  BertForPreTrainingCuda gpu(tiny_config());
  const TestBatch batch(16);
  gpu.upload_batch(batch.view());
  for (int i = 0; i < 70; ++i) gpu.forward_backward(1.0f, /*compute_grads=*/false);  // more than the 64 slots
  const std::vector<LossStats> stats = gpu.take_loss_stats();
  REQUIRE(stats.size() == 70);
  for (const LossStats& s : stats) {
    CHECK(s.mlm_loss == stats[0].mlm_loss);
    CHECK(s.nsp_loss == stats[0].nsp_loss);
  }
  CHECK(stats[0].mlm_loss > 5.0);  // ~log(300) at initialisation
  CHECK(stats[0].mlm_loss < 6.5);

  TestBatch bad = batch;
  bad.input_ids[3] = 300;
  CHECK_THROWS_AS(gpu.upload_batch(bad.view()), bert::Error);
  bad = batch;
  bad.labels[bad.masked_positions[0]] = 1000;
  CHECK_THROWS_AS(gpu.upload_batch(bad.view()), bert::Error);
  bad = batch;
  bad.token_type_ids[0] = 2;
  CHECK_THROWS_AS(gpu.upload_batch(bad.view()), bert::Error);
  // The model still works.
  gpu.forward_backward(batch.view(), 1.0f);
  CHECK(std::isfinite(gpu.read_loss_stats().loss));
}
