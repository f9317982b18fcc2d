// BertForPreTrainingCuda's memory plan and config checks (engine/bert_cuda.h). Neither touches a
// device, so this is a CPU test: it runs wherever the CUDA model is built (the toolkit is present),
// GPU or not. The plan's arena sizes are checked against the formulas of bert_cuda.h's purpose block.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "common/error.h"
#include "engine/bert_cuda.h"
#include "engine/config.h"

namespace {

bert::BertConfig bert_base() {
  bert::BertConfig config;
  config.vocab_size = 30522;
  return config;  // HF defaults: hidden 768, 12 layers, 12 heads, intermediate 3072, 512 positions
}

bert::BertConfig bert_large() {
  bert::BertConfig config = bert_base();
  config.hidden_size = 1024;
  config.num_hidden_layers = 24;
  config.num_attention_heads = 16;
  config.intermediate_size = 4096;
  return config;
}

// Parameters of BertForPreTraining (decoder weight tied, counted once), from HF's module list.
int64_t expected_parameters(const bert::BertConfig& c) {
  const int64_t h = c.hidden_size, i = c.intermediate_size, v = c.vocab_size;
  const int64_t embeddings = (v + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h;
  const int64_t layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h;
  const int64_t heads = (h * h + h) + (h * h + h + 2 * h + v) + (2 * h + 2);  // pooler, MLM head, NSP
  return embeddings + c.num_hidden_layers * layer + heads;
}

template <class Exception, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Exception& error) {
    return error.what();
  }
  FAIL("no exception was thrown");
  return {};
}

}  // namespace

TEST_CASE("memory_plan of BERT-base at 32 x 128 matches the arena formulas", "[cuda_plan]") {
  const bert::BertConfig config = bert_base();
  const bert::CudaMemoryPlan plan = bert::BertForPreTrainingCuda::memory_plan(config, 32, 128);
  INFO(plan.table());
  const int64_t params = expected_parameters(config);
  CHECK(plan.num_parameters == params);
  CHECK(params > 110'000'000);
  CHECK(params < 110'200'000);
  // Parameter arenas: the CPU table's layout (alignment gaps of < 16 elements per tensor).
  const bert::ParameterTable table = bert::make_parameter_table(config);
  CHECK(plan.master_params_bytes == table.arena_elements * 4);
  CHECK(table.arena_elements >= static_cast<size_t>(params));
  CHECK(table.arena_elements < static_cast<size_t>(params) + 16 * table.params.size());
  CHECK(plan.master_params_bytes > 440'000'000);
  CHECK(plan.master_params_bytes < 441'000'000);
  CHECK(plan.working_params_bytes * 2 == plan.master_params_bytes);
  CHECK(plan.grads_bytes == plan.master_params_bytes);
  CHECK(plan.optimizer_bytes == 2 * plan.master_params_bytes);
  CHECK(plan.parameter_arena_bytes() == table.arena_elements * 18);

  // Batch arenas (4096 tokens; every size below is a multiple of 16, so no gaps).
  const size_t tokens = 4096, batch = 32, h = 768, i = 3072, layers = 12, heads = 12, vocab = 30522;
  const size_t activations = tokens * h + layers * tokens * (8 * h + 2 * i) + batch * h + batch * 2 /* NSP logits */ +
                             4 * tokens * h /* MLM rows */;
  CHECK(plan.activations_bytes == activations * 2);
  const size_t logits_stride = 30528;  // the decoder's rows: vocab rounded up to 64 (engine/bert.cpp)
  CHECK(logits_stride % 64 == 0);
  CHECK(logits_stride - vocab < 64);
  // The decoder's logits: ModelOptions' default on CUDA, kCudaDecoderChunkRows (4,096) rows, here all tokens.
  CHECK(bert::kCudaDecoderChunkRows == 4096);
  const size_t workspace = tokens * (10 * h + i) + batch * h + 4096 * logits_stride;
  CHECK(plan.workspace_bytes == (workspace + 15) / 16 * 16 * 2);
  CHECK(plan.statistics_bytes == tokens * (2 + layers * (heads + 4) + 2) * 4);
  CHECK(plan.inputs_bytes == (5 * tokens + batch) * 4);
  // Napkin math of the purpose block: ~1.98 GB of parameters, ~1.24 GB of activations, ~3.6 GB in all.
  CHECK(plan.parameter_arena_bytes() / 10'000'000 == 198);
  CHECK(plan.activations_bytes / 10'000'000 == 123);
  CHECK(plan.total_bytes() > 3'500'000'000);
  CHECK(plan.total_bytes() < 3'700'000'000);

  // Forward only (bert_infer --device cuda): the bf16 weights, two layers' activations (layer l's
  // buffers are layer l - 2's), the decoder's logits as the only workspace.
  bert::ModelOptions inference;
  inference.inference_only = true;
  const bert::CudaMemoryPlan served = bert::BertForPreTrainingCuda::memory_plan(config, 32, 128, inference);
  INFO(served.table());
  CHECK(served.master_params_bytes == 0);
  CHECK(served.grads_bytes == 0);
  CHECK(served.optimizer_bytes == 0);
  CHECK(served.working_params_bytes == plan.working_params_bytes);
  CHECK(served.activations_bytes ==
        (tokens * h + 2 * tokens * (8 * h + 2 * i) + batch * h + batch * 2 + 4 * tokens * h) * 2);
  CHECK(served.workspace_bytes == 4096 * logits_stride * 2);
  CHECK(served.statistics_bytes == tokens * (2 + 2 * (heads + 4) + 2) * 4);
  CHECK(served.total_bytes() < plan.total_bytes() / 3);
}

TEST_CASE("memory_plan grows with the batch and the decoder chunk", "[cuda_plan]") {
  const bert::BertConfig config = bert_large();
  const bert::CudaMemoryPlan small = bert::BertForPreTrainingCuda::memory_plan(config, 8, 512);
  const bert::CudaMemoryPlan large = bert::BertForPreTrainingCuda::memory_plan(config, 32, 512);
  INFO(large.table());
  CHECK(large.parameter_arena_bytes() == small.parameter_arena_bytes());
  CHECK(large.activations_bytes > 3 * small.activations_bytes);
  CHECK(large.num_parameters > 334'000'000);
  CHECK(large.num_parameters < 337'000'000);
  // BERT-large at 32 x 512: activations 24 layers x 16384 tokens x 32.8 KB + the MLM rows = 13.1 GB.
  CHECK(large.activations_bytes / 100'000'000 == 130);

  bert::ModelOptions options;
  options.decoder_chunk_rows = 256;
  const bert::CudaMemoryPlan chunked = bert::BertForPreTrainingCuda::memory_plan(config, 32, 512, options);
  CHECK(large.workspace_bytes - chunked.workspace_bytes == (4096 - 256) * size_t{30528} * 2);  // padded rows
  options.decoder_chunk_rows = -1;
  const std::string message =
      message_of<bert::Error>([&] { bert::BertForPreTrainingCuda::memory_plan(config, 32, 512, options); });
  CHECK(message.find("decoder_chunk_rows") != std::string::npos);
}

TEST_CASE("configs the CUDA kernels cannot run are one-line errors naming the field", "[cuda_plan]") {
  using bert::BertForPreTrainingCuda;
  bert::BertConfig odd_heads = bert_base();
  odd_heads.hidden_size = 96;
  odd_heads.num_attention_heads = 2;  // head_dim 48
  std::string message = message_of<std::invalid_argument>([&] { BertForPreTrainingCuda::check_supported(odd_heads); });
  CHECK(message.find("num_attention_heads") != std::string::npos);
  CHECK(message.find("head_dim") != std::string::npos);
  CHECK(message.find('\n') == std::string::npos);
  // The constructor checks before it touches a device (so this runs without one).
  CHECK_THROWS_AS(BertForPreTrainingCuda(odd_heads), std::invalid_argument);
  CHECK_THROWS_AS(BertForPreTrainingCuda::memory_plan(odd_heads, 8, 128), std::invalid_argument);

  bert::BertConfig unaligned = bert_base();
  unaligned.hidden_size = 100;
  unaligned.num_attention_heads = 4;
  message = message_of<std::invalid_argument>([&] { BertForPreTrainingCuda::check_supported(unaligned); });
  CHECK(message.find("hidden_size") != std::string::npos);

  bert::BertConfig long_positions = bert_base();
  long_positions.max_position_embeddings = 2048;
  CHECK_NOTHROW(BertForPreTrainingCuda::check_supported(long_positions));
  message = message_of<std::invalid_argument>([&] { BertForPreTrainingCuda::memory_plan(long_positions, 8, 1024); });
  CHECK(message.find("seq_len 1024") != std::string::npos);
  CHECK(message.find("512") != std::string::npos);

  // Invalid on any device: the CPU model's bert::Error.
  bert::BertConfig no_vocab = bert_base();
  no_vocab.vocab_size = 0;
  message = message_of<bert::Error>([&] { BertForPreTrainingCuda::check_supported(no_vocab); });
  CHECK(message.find("vocab_size") != std::string::npos);
  message = message_of<bert::Error>([&] { BertForPreTrainingCuda::memory_plan(bert_base(), 8, 1000); });
  CHECK(message.find("max_position_embeddings") != std::string::npos);
  CHECK_THROWS_AS(BertForPreTrainingCuda::memory_plan(bert_base(), 0, 128), bert::Error);

  // head_dim 32, 64 and 128 are all supported.
  for (const int heads : {24, 12, 6}) {
    bert::BertConfig config = bert_base();
    config.num_attention_heads = heads;
    CHECK_NOTHROW(BertForPreTrainingCuda::check_supported(config));
  }
}

TEST_CASE("the repository's CUDA presets run on the kernels and fit an 80 GB GPU", "[cuda_plan]") {
  const std::filesystem::path presets = std::filesystem::path(BERT_SOURCE_DIR) / "configs";
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(presets)) {
    if (entry.path().extension() != ".toml") continue;
    const bert::RunConfig run = bert::load_run_config(entry.path().string());
    if (run.training.device != "cuda") continue;
    INFO(entry.path().string());
    bert::BertConfig model = run.model;
    if (model.vocab_size == 0) model.vocab_size = 32000;  // "the tokenizer's": a typical Korean vocabulary
    CHECK_NOTHROW(bert::BertForPreTrainingCuda::check_supported(model));
    CHECK_NOTHROW(bert::BertForPreTrainingCuda::check_supported_seq_len(model.max_position_embeddings));
    const bert::CudaMemoryPlan plan = bert::BertForPreTrainingCuda::memory_plan(
        model, std::max(run.training.per_device_train_batch_size, run.training.per_device_eval_batch_size),
        model.max_position_embeddings);
    CHECK(plan.total_bytes() < (size_t{80} << 30) * 3 / 4);  // headroom for the CUDA context and fragmentation
    ++checked;
  }
  CHECK(checked == 4);  // BERT-base and BERT-large, seq 128 and 512
}
