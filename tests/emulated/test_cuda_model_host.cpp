// BertForPreTrainingCuda's host logic on the emulated device (tests/emulated/emulated_runtime.cpp: deferred
// execution, poisoned allocations, bounds-checked op arguments, fault injection), in the scenarios a
// real-device run rarely reaches. The same tiny BERT as tests/gpu/test_cuda_model.cpp (hidden 64,
// 2 layers, vocab 300) against the fp32 CPU model on the same bf16 weights:
//   - a training step queues its work: no stream or device sync, uploads only from pinned staging,
//     the caller's batch arrays reusable at once, and the step's losses and gradient norm right
//   - reserve() growing while forwards' losses wait in their device slots keeps every loss
//   - more forwards than the device's loss slots: every loss, in order, one drain per full set; the
//     same for optimizer steps and their gradient-norm slots, with the device's update count
//   - mlm_logits_at: repeated positions in the caller's order, several decoder chunks, equal to the
//     CPU model's logits; it leaves the loss slots and the dropout setting alone and no batch behind
//   - mlm_logits_at failing midway (a failed launch, a failed copy of the second chunk) and a rejected
//     upload leave no batch to train on, and the model keeps working
//   - the dense MLM head: mlm_logits_at still runs on the requested rows; a positions-only batch
//   - a batch without labels: zero losses and exactly zero gradients
//   - an inference-only model: the bf16 weights alone on the device, two layers' activation buffers,
//     the training model's answers
//   - forward_backward_summed (a stand-in for NCCL that doubles): the buckets cover the gradient arena
//     once, top down, cut as bucket_elements says; each range is handed over final (equal to an
//     unsummed step's, bit for bit), with no host wait; the update's norm includes the last sum;
//     sum_gradients hands over the same ranges in the same order and waits for them
//   - set_wait_watch: the waits poll (no blocking wait), asking the watch each time; behind a sum that
//     never finishes the watch is asked with growing times until it throws
// Tolerances as test_cuda_model.cpp: losses rel 2e-2, logits and gradients rel 3e-2 of the tensor's
// (here: the logits row's) largest CPU value.
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/error.h"
#include "engine/bert.h"
#include "engine/bert_cuda.h"
#include "kernels/cpu/ops_cpu.h"
#include "kernels/device.h"
#include "tests/emulated/emulated_cuda.h"
#include "tests/emulated/emulated_runtime.h"  // run_queued, enqueue: DoublingSum plays NCCL
#include "tests/gpu/cuda_model_fixture.h"
#include "tests/gpu/cuda_test_util.h"

namespace {

using bert::BatchView;
using bert::BertConfig;
using bert::BertForPreTraining;
using bert::BertForPreTrainingCuda;
using bert::LossStats;
using bert::ModelOptions;
using bert::cuda::test::relative_error;

constexpr int64_t kVocab = bert::cuda::test::kTinyVocab;

BertConfig tiny_config(double dropout = 0.0) { return bert::cuda::test::tiny_bert_config(dropout); }
void share_bf16_weights(BertForPreTraining<float>& cpu, BertForPreTrainingCuda& gpu) {
  bert::cuda::test::share_bf16_weights(cpu, gpu, 20261202);
}

// A padded batch: the first sequence full, the others of random lengths; two segments; ~15% MLM
// labels (at least one per sequence); random NSP labels.
struct TestBatch {
  int64_t batch_size = 0, seq_len = 0;
  std::vector<int32_t> input_ids, token_type_ids, attention_mask, labels, nsp_labels;
  std::vector<int32_t> masked_positions, masked_labels;  // masked_labels empty: targets from labels

  TestBatch(uint64_t seed, int64_t rows = 4, int64_t sequence_length = 32)
      : batch_size(rows), seq_len(sequence_length) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int32_t> id(5, kVocab - 1), nsp(0, 1);
    std::uniform_int_distribution<int64_t> length(seq_len / 4, seq_len);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    const size_t tokens = static_cast<size_t>(batch_size * seq_len);
    input_ids.assign(tokens, 0);
    token_type_ids.assign(tokens, 0);
    attention_mask.assign(tokens, 0);
    labels.assign(tokens, bert::ops::kIgnoreIndex);
    for (int64_t b = 0; b < batch_size; ++b) {
      const int64_t used = b == 0 ? seq_len : length(rng);
      for (int64_t s = 0; s < used; ++s) {
        const size_t t = static_cast<size_t>(b * seq_len + s);
        input_ids[t] = s == 0 ? 2 : id(rng);  // 2 plays [CLS]
        token_type_ids[t] = s >= used / 2 ? 1 : 0;
        attention_mask[t] = 1;
        if (s > 0 && (s == 1 || unit(rng) < 0.15)) {
          labels[t] = id(rng);
          input_ids[t] = 4;  // plays [MASK]
          masked_positions.push_back(static_cast<int32_t>(t));
        }
      }
      nsp_labels.push_back(nsp(rng));
    }
  }

  BatchView view() const {
    BatchView v = bert::batch_view(*this);
    v.masked_positions = nullptr;  // the labels are the MLM rows (the loader's path)
    v.masked_labels = nullptr;
    v.num_masked = 0;
    return v;
  }

  // Overwrites every array with valid but different values: what a caller reusing its buffers does.
  void scribble() {
    std::fill(input_ids.begin(), input_ids.end(), 7);
    std::fill(token_type_ids.begin(), token_type_ids.end(), 1);
    std::fill(attention_mask.begin(), attention_mask.end(), 1);
    std::fill(labels.begin(), labels.end(), 9);
    std::fill(nsp_labels.begin(), nsp_labels.end(), 1);
  }
};

LossStats cpu_losses(BertForPreTraining<float>& cpu, const BatchView& batch) {
  LossStats stats;
  cpu.forward_backward(batch, stats, /*compute_grads=*/false, 1.0f);
  return stats;
}

void check_losses(const LossStats& gpu, const LossStats& cpu) {
  INFO("loss gpu " << gpu.loss << " cpu " << cpu.loss << " (mlm " << gpu.mlm_loss << " / " << cpu.mlm_loss << ", nsp "
                   << gpu.nsp_loss << " / " << cpu.nsp_loss << ")");
  CHECK(gpu.mlm_count == cpu.mlm_count);
  CHECK(gpu.nsp_count == cpu.nsp_count);
  CHECK(std::fabs(gpu.mlm_loss - cpu.mlm_loss) <= 2e-2 * std::fabs(cpu.mlm_loss));
  CHECK(std::fabs(gpu.nsp_loss - cpu.nsp_loss) <= 2e-2 * std::fabs(cpu.nsp_loss));
  CHECK(std::fabs(gpu.loss - cpu.loss) <= 2e-2 * std::fabs(cpu.loss));
}

std::span<const float> row(const std::vector<float>& logits, size_t i) {
  return std::span<const float>(logits).subspan(i * kVocab, kVocab);
}

// Every row of the CUDA logits within 3e-2 of the CPU's, and each row far from the CPU row of the
// next row's position (so a row mapped to the wrong position cannot pass).
void check_logits(const std::vector<float>& gpu, const std::vector<float>& cpu, std::span<const int32_t> positions) {
  REQUIRE(gpu.size() == positions.size() * kVocab);
  REQUIRE(cpu.size() == gpu.size());
  for (size_t i = 0; i < positions.size(); ++i) {
    INFO("row " << i << " (position " << positions[i] << ")");
    CHECK(relative_error(row(gpu, i), row(cpu, i)) <= 3e-2);
    const size_t other = (i + 1) % positions.size();
    if (positions[other] != positions[i]) CHECK(relative_error(row(gpu, i), row(cpu, other)) > 0.1);
  }
}

}  // namespace

TEST_CASE("cuda model host: deferred execution shows a copy that is not waited for", "[emulated]") {
  // The premise of the ordering checks below: an async copy reads its host memory when the host
  // waits, not when it is issued; fresh device memory is NaN.
  bert::cuda::Context ctx;
  bert::cuda::DeviceBuffer<int32_t> device(4);
  int32_t* pinned = nullptr;
  REQUIRE(cudaMallocHost(reinterpret_cast<void**>(&pinned), 4 * sizeof(int32_t)) == cudaSuccess);
  for (int32_t i = 0; i < 4; ++i) pinned[i] = i + 1;
  const int64_t pending = bert::emulated::pending_operations();
  CUDA_CHECK(cudaMemcpyAsync(device.data(), pinned, 4 * sizeof(int32_t), cudaMemcpyHostToDevice, ctx.stream()));
  CHECK(bert::emulated::pending_operations() == pending + 1);
  pinned[0] = 99;  // rewritten before the copy ran
  ctx.synchronize();
  CHECK(bert::emulated::pending_operations() == pending);
  CHECK(device.download() == std::vector<int32_t>{99, 2, 3, 4});
  REQUIRE(cudaFreeHost(pinned) == cudaSuccess);
  for (const float value : bert::cuda::DeviceBuffer<float>(3).download()) CHECK(std::isnan(value));
}

TEST_CASE("cuda model host: a training step queues its work and waits for no kernel", "[emulated]") {
  BertForPreTraining<float> cpu(tiny_config(0.1));
  BertForPreTrainingCuda gpu(tiny_config(0.1));
  share_bf16_weights(cpu, gpu);
  gpu.reserve(4, 32);
  const std::vector<TestBatch> batches = {TestBatch(1), TestBatch(2), TestBatch(3)};
  const float scale = 1.0f / static_cast<float>(batches.size());

  const bert::emulated::Counters before = bert::emulated::counters();
  int64_t ops_before_last = 0;
  gpu.zero_grads();
  for (size_t k = 0; k < batches.size(); ++k) {
    ops_before_last = bert::emulated::counters().ops;
    gpu.set_dropout(7, k, true);
    TestBatch reused = batches[k];
    gpu.forward_backward(reused.view(), scale);
    reused.scribble();  // the caller's arrays may be reused as soon as the upload returns
  }
  bert::ops::AdamWHyperparams hyper;
  hyper.learning_rate = 1e-3;
  gpu.optimizer_step(hyper, 1.0f);
  const bert::emulated::Counters after = bert::emulated::counters();

  CHECK(after.stream_syncs == before.stream_syncs);
  CHECK(after.device_syncs == before.device_syncs);
  CHECK(after.event_syncs - before.event_syncs <= static_cast<int64_t>(batches.size()));  // one per upload at most
  CHECK(after.copies_to_device > before.copies_to_device);
  CHECK(after.copies_to_device_from_pageable == before.copies_to_device_from_pageable);  // pinned staging only
  CHECK(after.device_allocations == before.device_allocations);  // reserved up front: nothing grows
  // Nothing of the last micro-batch's forward/backward, nor the update, has run yet.
  CHECK(bert::emulated::pending_operations() >= after.ops - ops_before_last);

  cpu.zero_grads();
  std::vector<LossStats> expected;
  for (size_t k = 0; k < batches.size(); ++k) {
    cpu.set_dropout(7, k, true);
    LossStats stats;
    cpu.forward_backward(batches[k].view(), stats, true, scale);
    expected.push_back(stats);
  }
  const std::vector<LossStats> losses = gpu.take_loss_stats();
  REQUIRE(losses.size() == expected.size());
  for (size_t k = 0; k < losses.size(); ++k) {
    INFO("micro-batch " << k);
    check_losses(losses[k], expected[k]);
  }
  bert::cpu::Context cpu_ctx(1);
  std::vector<bert::cpu::GradView<float>> grads;
  for (const bert::ParamInfo& info : cpu.params())
    grads.push_back({cpu.grads().data() + info.offset, static_cast<int64_t>(info.numel)});
  const double norm = bert::cpu::grad_norm<float>(cpu_ctx, grads);
  INFO("grad norm gpu " << gpu.read_grad_norm() << " cpu " << norm);
  CHECK(std::fabs(gpu.read_grad_norm() - norm) <= 3e-2 * norm);
}

TEST_CASE("cuda model host: reserve growing while losses wait in their device slots keeps every loss", "[emulated]") {
  BertForPreTraining<float> cpu(tiny_config());
  BertForPreTrainingCuda gpu(tiny_config());
  share_bf16_weights(cpu, gpu);
  gpu.reserve(2, 16);
  TestBatch small(31, 2, 16), large(32), other(33);
  const std::vector<LossStats> expected = {cpu_losses(cpu, small.view()), cpu_losses(cpu, large.view()),
                                           cpu_losses(cpu, other.view())};

  gpu.forward_backward(small.view(), 1.0f, false);
  small.scribble();
  gpu.forward_backward(large.view(), 1.0f, false);  // grows to 4 x 32 with the first loss pending
  CHECK(gpu.allocated().max_batch == 4);
  CHECK(gpu.allocated().activations_bytes == gpu.memory_plan(4, 32).activations_bytes);
  gpu.forward_backward(other.view(), 1.0f, false);
  std::vector<LossStats> losses = gpu.take_loss_stats();
  REQUIRE(losses.size() == 3);
  for (size_t k = 0; k < losses.size(); ++k) {
    INFO("forward " << k);
    check_losses(losses[k], expected[k]);
  }

  // mlm_logits_at growing the arenas (8 x 32) with a forward's loss pending.
  gpu.forward_backward(other.view(), 1.0f, false);
  const TestBatch wide(34, 8, 32);
  const std::vector<int32_t> positions = {200, 3};
  std::vector<float> logits(positions.size() * kVocab);
  gpu.mlm_logits_at(wide.view(), positions, logits);
  CHECK(gpu.allocated().max_batch == 8);
  losses = gpu.take_loss_stats();
  REQUIRE(losses.size() == 1);
  check_losses(losses[0], expected[2]);
  std::vector<float> cpu_logits(logits.size());
  cpu.mlm_logits_at(wide.view(), positions, cpu_logits);
  check_logits(logits, cpu_logits, positions);
}

TEST_CASE("cuda model host: more forwards than loss slots keep every loss in order", "[emulated]") {
  BertForPreTraining<float> cpu(tiny_config());
  BertForPreTrainingCuda gpu(tiny_config());
  share_bf16_weights(cpu, gpu);
  const std::vector<TestBatch> batches = {TestBatch(41), TestBatch(42), TestBatch(43)};
  gpu.reserve(4, 32);

  const int64_t syncs_before = bert::emulated::counters().stream_syncs;
  const int slots = static_cast<int>(BertForPreTrainingCuda::kLossSlots);
  for (int i = 0; i < slots + 36; ++i) gpu.forward_backward(batches[i % 3].view(), 1.0f, false);
  // The device slots filled once: one drain (one stream sync), not one per forward.
  CHECK(bert::emulated::counters().stream_syncs - syncs_before == 1);
  const LossStats last = gpu.read_loss_stats();  // does not consume the list
  for (int i = slots + 36; i < slots + 86; ++i) gpu.forward_backward(batches[i % 3].view(), 1.0f, false);
  const std::vector<LossStats> losses = gpu.take_loss_stats();
  REQUIRE(losses.size() == static_cast<size_t>(slots + 86));
  CHECK(gpu.take_loss_stats().empty());
  CHECK(last.loss == losses[static_cast<size_t>(slots + 35)].loss);

  for (size_t k = 0; k < batches.size(); ++k) {
    INFO("batch " << k);
    check_losses(losses[k], cpu_losses(cpu, batches[k].view()));
  }
  REQUIRE(losses[0].loss != losses[1].loss);  // distinct batches: a reordering would show
  REQUIRE(losses[1].loss != losses[2].loss);
  REQUIRE(losses[0].loss != losses[2].loss);
  int64_t misplaced = 0;
  for (size_t i = 0; i < losses.size(); ++i)
    if (losses[i].loss != losses[i % 3].loss || losses[i].mlm_count != losses[i % 3].mlm_count) ++misplaced;
  CHECK(misplaced == 0);
}

TEST_CASE("cuda model host: more optimizer steps than norm slots keep every norm and the update count", "[emulated]") {
  BertForPreTrainingCuda gpu(tiny_config());
  gpu.reserve(4, 32);
  const TestBatch batch(44);
  gpu.forward_backward(batch.view(), 1.0f);  // one set of gradients, kept: every step sees them
  bert::ops::AdamWHyperparams hyper;
  hyper.learning_rate = 1e-6;
  const int steps = static_cast<int>(BertForPreTrainingCuda::kNormSlots) + 10;
  const int64_t syncs_before = bert::emulated::counters().stream_syncs;
  for (int i = 0; i < steps; ++i) gpu.optimizer_step(hyper, 1.0f);
  CHECK(bert::emulated::counters().stream_syncs - syncs_before == 1);  // the one full set drained
  const std::vector<float> norms = gpu.take_grad_norms();
  REQUIRE(norms.size() == static_cast<size_t>(steps));
  for (const float norm : norms) REQUIRE(std::isfinite(norm));
  CHECK(norms.front() > 0);
  CHECK(gpu.read_optimizer_steps() == steps);
  CHECK(gpu.take_grad_norms().empty());
  CHECK(gpu.read_grad_norm() == norms.back());
  gpu.set_optimizer_steps(7);  // resume
  CHECK(gpu.read_optimizer_steps() == 7);
}

TEST_CASE("cuda model host: mlm_logits_at gives repeated positions in the caller's order", "[emulated]") {
  ModelOptions options;
  options.decoder_chunk_rows = 2;  // 6 distinct positions: 3 chunks
  BertForPreTraining<float> cpu(tiny_config(0.2));
  BertForPreTrainingCuda gpu(tiny_config(0.2), options);
  share_bf16_weights(cpu, gpu);
  cpu.set_dropout(5, 9, true);
  gpu.set_dropout(5, 9, true);
  const TestBatch train(51), query(52);
  gpu.forward_backward(train.view(), 1.0f, false);  // its loss stays in its device slot

  const std::vector<int32_t> positions = {70, 3, 70, 127, 3, 0, 66, 127, 5};
  std::vector<float> gpu_logits(positions.size() * kVocab), cpu_logits(gpu_logits.size());
  gpu.mlm_logits_at(query.view(), positions, gpu_logits);
  cpu.mlm_logits_at(query.view(), positions, cpu_logits);  // eval mode on both, whatever set_dropout said
  check_logits(gpu_logits, cpu_logits, positions);
  for (const auto& [a, b] : {std::pair<size_t, size_t>{0, 2}, {1, 4}, {3, 7}}) {
    INFO("rows " << a << " and " << b << " (the same position)");
    CHECK(std::equal(row(gpu_logits, a).begin(), row(gpu_logits, a).end(), row(gpu_logits, b).begin()));
  }

  // No batch is left to train on; the pending loss and the dropout setting are untouched.
  CHECK_THROWS_AS(gpu.forward_backward(1.0f), bert::Error);
  std::vector<LossStats> losses = gpu.take_loss_stats();
  REQUIRE(losses.size() == 1);
  check_losses(losses[0], cpu_losses(cpu, train.view()));
  gpu.forward_backward(query.view(), 1.0f, false);
  check_losses(gpu.read_loss_stats(), cpu_losses(cpu, query.view()));  // dropout (5, 9) on both
}

TEST_CASE("cuda model host: an inference-only model keeps the bf16 weights only and answers as the training one",
          "[emulated]") {
  BertConfig config = tiny_config();
  config.num_hidden_layers = 4;  // forward only, layer l's activation buffers are layer l - 2's
  BertForPreTraining<float> cpu(config);
  BertForPreTrainingCuda trained(config);
  share_bf16_weights(cpu, trained);
  ModelOptions options;
  options.inference_only = true;
  options.initialize_parameters = false;  // zero until the upload: no host arena to upload
  BertForPreTrainingCuda inference(config, options);
  const std::vector<float> blank = inference.download_parameters();
  CHECK(std::all_of(blank.begin(), blank.end(), [](float v) { return v == 0.0f; }));
  inference.upload_parameters(trained.download_parameters());  // bf16 values: the same working copy
  inference.reserve(4, 32);
  trained.reserve(4, 32);

  // Memory: the working copy alone, as memory_plan says; 1/9 of a training model's parameter bytes.
  const bert::CudaMemoryPlan plan = inference.memory_plan(4, 32), got = inference.allocated();
  CHECK(got.master_params_bytes == 0);
  CHECK(got.grads_bytes == 0);
  CHECK(got.optimizer_bytes == 0);
  CHECK(got.working_params_bytes == inference.arena_elements() * sizeof(bert::cuda::bf16));
  CHECK(got.parameter_arena_bytes() == plan.parameter_arena_bytes());
  CHECK(got.batch_arena_bytes() == plan.batch_arena_bytes());
  CHECK(got.activations_bytes * 3 < trained.allocated().activations_bytes * 2);  // 2 of 4 layers, + the heads'
  CHECK(got.workspace_bytes < trained.allocated().workspace_bytes);
  CHECK(trained.allocated().parameter_arena_bytes() == 9 * got.parameter_arena_bytes());
  CHECK(bert::cuda::test::same_bits(inference.download_parameters(), trained.download_working_parameters()));

  // The same ops on the same bf16 weights: the same logits and losses, bit for bit.
  const TestBatch batch(71);
  const std::vector<int32_t> positions = {3, 40, 77, 127};
  std::vector<float> a(positions.size() * kVocab), b(a.size());
  trained.mlm_logits_at(batch.view(), positions, a);
  inference.mlm_logits_at(batch.view(), positions, b);
  CHECK(bert::cuda::test::same_bits(a, b));
  trained.forward_backward(batch.view(), 1.0f, false);
  inference.forward_backward(batch.view(), 1.0f, false);
  const LossStats trained_loss = trained.read_loss_stats(), inference_loss = inference.read_loss_stats();
  CHECK(trained_loss.loss == inference_loss.loss);
  CHECK(trained_loss.nsp_correct == inference_loss.nsp_correct);

  // Training calls are errors that say why.
  CHECK_THROWS_WITH(inference.forward_backward(batch.view(), 1.0f, true), Catch::Contains("inference-only model"));
  CHECK_THROWS_WITH(inference.zero_grads(), Catch::Contains("inference-only model"));
  CHECK_THROWS_WITH(inference.optimizer_step(bert::ops::AdamWHyperparams{}, 1.0f),
                    Catch::Contains("inference-only model"));
  CHECK_THROWS_WITH(inference.download_grads(), Catch::Contains("inference-only model"));
  CHECK_THROWS_WITH(inference.set_optimizer_steps(3), Catch::Contains("inference-only model"));
}

TEST_CASE("cuda model host: mlm_logits_at failing midway leaves no batch to train on", "[emulated]") {
  ModelOptions options;
  options.decoder_chunk_rows = 2;
  BertForPreTraining<float> cpu(tiny_config());
  BertForPreTrainingCuda gpu(tiny_config(), options);
  share_bf16_weights(cpu, gpu);
  const TestBatch train(61), query(62);
  const std::vector<int32_t> positions = {9, 40, 1, 77, 33};
  std::vector<float> logits(positions.size() * kVocab);
  gpu.forward_backward(train.view(), 1.0f, false);  // its loss stays in its device slot

  SECTION("a failed launch after the encoder") { bert::emulated::fail_launch("gather_rows"); }
  SECTION("a failed copy of the second decoder chunk") {
    bert::emulated::fail_launch("cudaMemcpy2DAsync", 1);  // the chunk's strided rows to the host
  }
  CHECK_THROWS_AS(gpu.mlm_logits_at(query.view(), positions, logits), bert::cuda::CudaError);
  bert::emulated::clear_injected_failure();

  CHECK_THROWS_AS(gpu.forward_backward(1.0f), bert::Error);
  std::vector<LossStats> losses = gpu.take_loss_stats();
  REQUIRE(losses.size() == 1);
  check_losses(losses[0], cpu_losses(cpu, train.view()));
  // The model keeps working.
  std::vector<float> cpu_logits(logits.size());
  gpu.mlm_logits_at(query.view(), positions, logits);
  cpu.mlm_logits_at(query.view(), positions, cpu_logits);
  check_logits(logits, cpu_logits, positions);
  gpu.forward_backward(train.view(), 1.0f, false);
  check_losses(gpu.read_loss_stats(), losses[0]);
}

TEST_CASE("cuda model host: a rejected upload leaves no batch to train on", "[emulated]") {
  BertConfig config = tiny_config();
  config.max_position_embeddings = 640;  // a seq_len the CPU model takes and the attention kernel does not
  BertForPreTraining<float> cpu(config);
  BertForPreTrainingCuda gpu(config);
  share_bf16_weights(cpu, gpu);
  const TestBatch good(71), other(72);
  gpu.upload_batch(good.view());
  gpu.forward_backward(1.0f, false);

  SECTION("an input id outside the vocabulary") {
    TestBatch bad = other;
    bad.input_ids[5] = kVocab;
    CHECK_THROWS_AS(gpu.upload_batch(bad.view()), bert::Error);
  }
  SECTION("an MLM label outside the vocabulary") {
    TestBatch bad = other;
    bad.labels[static_cast<size_t>(bad.masked_positions[0])] = 1000;
    CHECK_THROWS_AS(gpu.upload_batch(bad.view()), bert::Error);
  }
  SECTION("seq_len beyond the attention kernel's 512") {
    const TestBatch longer(73, 1, 600);
    try {
      gpu.upload_batch(longer.view());
      FAIL("a 600-token batch was accepted");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find("seq_len 600") != std::string::npos);
    }
  }
  CHECK_THROWS_AS(gpu.forward_backward(1.0f, false), bert::Error);  // not the previous batch again
  std::vector<LossStats> losses = gpu.take_loss_stats();
  REQUIRE(losses.size() == 1);  // only the accepted batch's forward
  check_losses(losses[0], cpu_losses(cpu, good.view()));
  gpu.upload_batch(other.view());
  gpu.forward_backward(1.0f, false);
  check_losses(gpu.read_loss_stats(), cpu_losses(cpu, other.view()));
}

TEST_CASE("cuda model host: the dense MLM head in mlm_logits_at and on a positions-only batch", "[emulated]") {
  ModelOptions options;
  options.mlm_on_masked_positions_only = false;
  options.decoder_chunk_rows = 7;
  BertForPreTraining<float> cpu(tiny_config(), options);
  BertForPreTrainingCuda gpu(tiny_config(), options);
  share_bf16_weights(cpu, gpu);
  const TestBatch batch(81);

  const std::vector<int32_t> positions = {100, 5, 17, 9, 10, 11, 12, 13, 14, 15, 99};
  std::vector<float> gpu_logits(positions.size() * kVocab), cpu_logits(gpu_logits.size());
  gpu.mlm_logits_at(batch.view(), positions, gpu_logits);
  cpu.mlm_logits_at(batch.view(), positions, cpu_logits);
  CHECK(gpu.uploaded_batch().mlm_rows() == static_cast<int64_t>(positions.size()));  // the rows asked for only
  check_logits(gpu_logits, cpu_logits, positions);

  // Labels given as positions only (no labels array): the dense head still counts those rows.
  BatchView view = batch.view();
  view.labels = nullptr;
  std::vector<int32_t> masked_labels;
  for (const int32_t p : batch.masked_positions) masked_labels.push_back(batch.labels[static_cast<size_t>(p)]);
  view.masked_positions = batch.masked_positions.data();
  view.masked_labels = masked_labels.data();
  view.num_masked = static_cast<int64_t>(batch.masked_positions.size());
  gpu.forward_backward(view, 1.0f, false);
  CHECK(gpu.uploaded_batch().mlm_rows() == batch.batch_size * batch.seq_len);
  const LossStats losses = gpu.read_loss_stats();
  CHECK(losses.mlm_count == static_cast<int64_t>(batch.masked_positions.size()));
  check_losses(losses, cpu_losses(cpu, view));
}

TEST_CASE("cuda model host: a batch without labels has zero losses and zero gradients", "[emulated]") {
  BertForPreTrainingCuda gpu(tiny_config());
  const TestBatch labelled(91), batch(92);
  gpu.forward_backward(labelled.view(), 1.0f);  // gradients and workspace hold something first
  gpu.zero_grads();
  BatchView view = batch.view();
  view.labels = nullptr;
  view.nsp_labels = nullptr;
  gpu.forward_backward(view, 1.0f);
  const LossStats losses = gpu.read_loss_stats();
  CHECK(losses.loss == 0.0);
  CHECK(losses.mlm_count == 0);
  CHECK(losses.nsp_count == 0);
  int64_t nonzero = 0;
  for (const float g : gpu.download_grads())
    if (g != 0.0f) ++nonzero;
  CHECK(nonzero == 0);
}

namespace {

// A stand-in for NCCL's all-reduce over two ranks with the same gradients, for forward_backward_summed:
// at issue time it runs the sum stream's queue (as emulated_nccl.cpp does: the work the stream waits
// for has run), keeps the range as it is then, and queues a doubling of it on the sum stream.
struct DoublingSum {
  struct Range {
    size_t begin = 0, count = 0;  // arena offsets
    std::vector<float> at_issue;
  };
  size_t arena_elements = 0;
  const float* arena = nullptr;  // the device arena: the first range ends where it ends
  std::vector<Range> ranges;

  bert::GradientSum make(size_t bucket_elements) {
    bert::GradientSum sum;
    sum.bucket_elements = bucket_elements;
    sum.sum = [this](float* data, size_t count, cudaStream_t stream) {
      if (ranges.empty()) arena = data + count - arena_elements;
      bert::emulated::detail::run_queued(stream);
      ranges.push_back({static_cast<size_t>(data - arena), count, std::vector<float>(data, data + count)});
      bert::emulated::detail::enqueue(stream, "doubling sum", [data, count] {
        for (size_t i = 0; i < count; ++i) data[i] *= 2.0f;
      });
    };
    return sum;
  }
};

}  // namespace

TEST_CASE("cuda model host: forward_backward_summed sums each range of gradients once final, top down, in buckets",
          "[emulated]") {
  const std::vector<TestBatch> batches = {TestBatch(101), TestBatch(102)};
  BertForPreTrainingCuda gpu(tiny_config(0.1));
  gpu.reserve(4, 32);
  const size_t arena = gpu.arena_elements();
  const auto offset_of = [&](const std::string& name) { return gpu.param_info(name).offset; };
  // Where the backward finishes gradients, top down: the heads, layer 1, layer 0, the embeddings.
  const std::vector<size_t> finished = {offset_of("bert.pooler.dense.weight"),
                                        offset_of("bert.encoder.layer.1.attention.self.query.weight"),
                                        offset_of("bert.encoder.layer.0.attention.self.query.weight"), 0};
  // One step of two micro-batches; the last one's backward sums when `sum` is given.
  const auto step = [&](const bert::GradientSum* sum) {
    gpu.zero_grads();
    for (size_t k = 0; k < batches.size(); ++k) {
      gpu.set_dropout(7, k, true);
      gpu.upload_batch(batches[k].view());
      if (sum != nullptr && k + 1 == batches.size())
        gpu.forward_backward_summed(0.5f, *sum);
      else
        gpu.forward_backward(0.5f);
    }
  };

  // Every range on its own; the heads merged into layer 1's bucket; one bucket.
  for (const size_t bucket : {size_t{0}, arena - finished[1] + 1, arena}) {
    INFO("bucket_elements " << bucket);
    step(nullptr);  // (each round's optimizer step changes the weights: the reference is per round)
    const std::vector<float> plain = gpu.download_grads();
    double plain_squares = 0;
    for (const float g : plain) plain_squares += static_cast<double>(g) * g;

    DoublingSum doubling;
    doubling.arena_elements = arena;
    const bert::GradientSum sum = doubling.make(bucket);
    const bert::emulated::Counters before = bert::emulated::counters();
    step(&sum);
    bert::ops::AdamWHyperparams hyper;
    hyper.learning_rate = 1e-3;
    gpu.optimizer_step(hyper, 0.0f);
    const bert::emulated::Counters after = bert::emulated::counters();
    CHECK(after.stream_syncs == before.stream_syncs);  // no host wait in the step
    CHECK(after.device_syncs == before.device_syncs);

    // The buckets: the finish points cut greedily, covering the arena once, top down.
    std::vector<size_t> cuts;
    size_t end = arena;
    for (const size_t at : finished)
      if (at == 0 || end - at >= bucket) {
        cuts.push_back(at);
        end = at;
      }
    REQUIRE(doubling.ranges.size() == cuts.size());
    end = arena;
    for (size_t i = 0; i < cuts.size(); ++i) {
      const DoublingSum::Range& range = doubling.ranges[i];
      INFO("range " << i << ": [" << range.begin << ", " << range.begin + range.count << ")");
      CHECK(range.begin == cuts[i]);
      CHECK(range.begin + range.count == end);
      end = range.begin;
      // Handed over final: as the plain step left it, bit for bit.
      CHECK(std::equal(range.at_issue.begin(), range.at_issue.end(),
                       plain.begin() + static_cast<std::ptrdiff_t>(range.begin)));
    }
    // The update's norm saw every sum, the last one included: the model's stream waited for it.
    const double expected_norm = 2.0 * std::sqrt(plain_squares);
    INFO("norm " << gpu.read_grad_norm() << ", expected " << expected_norm);
    CHECK(std::fabs(gpu.read_grad_norm() - expected_norm) <= 1e-5 * expected_norm);
    const std::vector<float> summed = gpu.download_grads();
    size_t doubled = 0;
    for (size_t i = 0; i < arena; ++i)
      if (summed[i] == 2.0f * plain[i]) ++doubled;
    CHECK(doubled == arena);

    // sum_gradients (bert_train's warm-up before its first step): the same ranges in the same order,
    // and the host waits for them.
    DoublingSum warm;
    warm.arena_elements = arena;
    const bert::GradientSum warm_sum = warm.make(bucket);
    const bert::emulated::Counters before_warm = bert::emulated::counters();
    gpu.sum_gradients(warm_sum);
    CHECK(bert::emulated::counters().stream_syncs > before_warm.stream_syncs);
    REQUIRE(warm.ranges.size() == doubling.ranges.size());
    for (size_t i = 0; i < warm.ranges.size(); ++i) {
      CHECK(warm.ranges[i].begin == doubling.ranges[i].begin);
      CHECK(warm.ranges[i].count == doubling.ranges[i].count);
    }
    const std::vector<float> twice = gpu.download_grads();
    size_t quadrupled = 0;
    for (size_t i = 0; i < arena; ++i)
      if (twice[i] == 4.0f * plain[i]) ++quadrupled;
    CHECK(quadrupled == arena);
  }
}

TEST_CASE("cuda model host: forward_backward_summed and sum_gradients refuse an inference-only model and a missing sum",
          "[emulated]") {
  ModelOptions inference;
  inference.inference_only = true;
  BertForPreTrainingCuda serving(tiny_config(), inference);
  const TestBatch batch(103);
  serving.upload_batch(batch.view());
  bert::GradientSum sum;
  sum.sum = [](float*, size_t, cudaStream_t) {};
  CHECK_THROWS_WITH(serving.forward_backward_summed(1.0f, sum), Catch::Contains("inference-only"));
  CHECK_THROWS_WITH(serving.sum_gradients(sum), Catch::Contains("inference-only"));
  BertForPreTrainingCuda gpu(tiny_config());
  gpu.upload_batch(batch.view());
  CHECK_THROWS_WITH(gpu.forward_backward_summed(1.0f, bert::GradientSum{}), Catch::Contains("no sum function"));
  CHECK_THROWS_WITH(gpu.sum_gradients(bert::GradientSum{}), Catch::Contains("no sum function"));
}

TEST_CASE("cuda model host: with a wait watch the host polls, and the watch ends a wait for work that never finishes",
          "[emulated]") {
  BertForPreTrainingCuda gpu(tiny_config());
  gpu.reserve(4, 32);
  const TestBatch batch(104);
  std::vector<double> waits;
  double limit = 600;  // the emulated kernels run while the host polls: they take their time
  gpu.set_wait_watch([&](double waited) {
    waits.push_back(waited);
    if (waited > limit) throw bert::Error("the watch gave up after " + std::to_string(waited) + " s");
  });
  // Work that finishes: each wait asks the watch once at least, and nothing blocks. Each poll that
  // finds the work unfinished leaves "not ready" as the last error (see emulated_runtime.cpp): the
  // launches after the wait must not take it for their own failure.
  const bert::emulated::Counters before = bert::emulated::counters();
  gpu.forward_backward(batch.view(), 1.0f);
  gpu.optimizer_step(bert::ops::AdamWHyperparams{}, 1.0f);
  CHECK(gpu.take_grad_norms().size() == 1);
  CHECK(gpu.take_loss_stats().size() == 1);
  CHECK(bert::emulated::counters().stream_syncs == before.stream_syncs);
  CHECK(bert::emulated::counters().event_syncs == before.event_syncs);
  CHECK(waits.size() >= 2);  // the upload's wait and the drains'

  // A sum that never finishes (a stall on the sum stream): the next wait polls until the watch throws.
  bert::GradientSum stalled;
  stalled.sum = [](float*, size_t, cudaStream_t stream) {
    bert::emulated::detail::enqueue_stall(stream, "a stalled sum");
  };
  gpu.upload_batch(batch.view());
  gpu.forward_backward_summed(1.0f, stalled);
  gpu.optimizer_step(bert::ops::AdamWHyperparams{}, 1.0f);
  waits.clear();
  limit = 0.05;
  CHECK_THROWS_WITH(gpu.take_grad_norms(), Catch::Contains("the watch gave up after"));
  REQUIRE(waits.size() >= 2);
  CHECK(waits.front() < 0.05);
  CHECK(std::is_sorted(waits.begin(), waits.end()));
  CHECK(waits.back() > 0.05);
  bert::emulated::detail::release_stalls();  // (destroying the model waits for its streams)
}

TEST_CASE("cuda model host: a sticky CUDA error says the context is lost and how to find the kernel", "[emulated]") {
  // What the check of `status` throws: CUDA_CHECK for a cudaError_t, CUBLAS_CHECK for a cublasStatus_t.
  const auto message = [](auto status) {
    try {
      if constexpr (std::is_same_v<decltype(status), cudaError_t>)
        CUDA_CHECK(status);
      else
        CUBLAS_CHECK(status);
    } catch (const bert::cuda::CudaError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  for (const cudaError_t sticky : {cudaErrorIllegalAddress, cudaErrorMisalignedAddress, cudaErrorLaunchFailure}) {
    const std::string text = message(sticky);
    CHECK_THAT(text, Catch::Contains("test_cuda_model_host.cpp:") && Catch::Contains(": status failed: "));
    CHECK_THAT(text, Catch::Contains(cudaGetErrorName(sticky)) && Catch::Contains("context is lost") &&
                         Catch::Contains("CUDA_LAUNCH_BLOCKING=1") && Catch::Contains("compute-sanitizer"));
  }
  // An error of the call itself: its words alone.
  const std::string own = message(cudaErrorInvalidValue);
  CHECK_THAT(own, Catch::Contains(cudaGetErrorName(cudaErrorInvalidValue)));
  CHECK_THAT(own, !Catch::Contains("context is lost"));
  CHECK(message(cudaSuccess) == "no error");
  // cuBLAS(Lt)'s "its kernel did not run", as after a fault, points the same way; its other failures do not.
  CHECK_THAT(message(CUBLAS_STATUS_EXECUTION_FAILED),
             Catch::Contains("CUBLAS_STATUS_EXECUTION_FAILED") && Catch::Contains("compute-sanitizer"));
  CHECK_THAT(message(CUBLAS_STATUS_NOT_SUPPORTED),
             Catch::Contains("CUBLAS_STATUS_NOT_SUPPORTED") && !Catch::Contains("compute-sanitizer"));
}

TEST_CASE("cuda model host: the kernel-load error names the GPU, the cause and the remedy for each failure",
          "[emulated]") {
  using bert::KernelLoadFailure;
  const std::string gencode = "-gencode=arch=compute_90a,code=sm_90a";
  const std::string no_image =
      bert::kernel_load_error(1, 8, 6, "no kernel image", KernelLoadFailure::kNoImage, gencode);
  CHECK(no_image ==
        "CUDA device 1 (sm_86) cannot run this build's kernels: no kernel image; rebuild for this GPU: cmake -B build "
        "-DBERT_CUDA_GENCODE=\"-gencode=arch=compute_86,code=sm_86\", then scripts/build.sh (this build has "
        "BERT_CUDA_GENCODE=\"-gencode=arch=compute_90a,code=sm_90a\")");
  const std::string ptx = bert::kernel_load_error(0, 12, 0, "unsupported PTX", KernelLoadFailure::kPtx, gencode);
  CHECK_THAT(ptx, Catch::StartsWith("CUDA device 0 (sm_120) cannot run this build's kernels: unsupported PTX (the "
                                    "driver cannot compile the build's PTX for it); update the NVIDIA driver") &&
                      Catch::Contains("CUDA_DISABLE_PTX_JIT") &&
                      Catch::Contains("-DBERT_CUDA_GENCODE=\"-gencode=arch=compute_120,code=sm_120\""));
  // Older than the kernels' instructions: no rebuild would help.
  CHECK(bert::kernel_load_error(0, 7, 5, "no kernel image", KernelLoadFailure::kNoImage, gencode) ==
        "CUDA device 0 (sm_75) cannot run this build's kernels: no kernel image; they need sm_80 or newer (cp.async, "
        "bf16 tensor cores)");
  // The context itself failed: no rebuild would help.
  CHECK(bert::kernel_load_error(2, 9, 0, "busy or unavailable", KernelLoadFailure::kContext, gencode) ==
        "CUDA device 2 (sm_90): no CUDA context: busy or unavailable");
}
