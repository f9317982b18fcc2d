// The tiny BERT that the CUDA model's tests run (tests/gpu/test_cuda_model.cpp on a device,
// tests/emulated/test_cuda_model_host.cpp on the emulated one): its config, and bf16-exact weights
// shared by the fp32 CPU model and the CUDA model.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "engine/bert.h"
#include "engine/bert_cuda.h"
#include "tests/gpu/cuda_test_util.h"

namespace bert::cuda::test {

constexpr int64_t kTinyVocab = 300;

// Hidden 64, 2 layers, 2 heads of 32, intermediate 128, vocab 300, 64 positions.
inline BertConfig tiny_bert_config(double dropout = 0.0) {
  BertConfig config;
  config.vocab_size = kTinyVocab;
  config.hidden_size = 64;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;  // head_dim 32
  config.intermediate_size = 128;
  config.max_position_embeddings = 64;
  config.hidden_dropout_prob = dropout;
  config.attention_probs_dropout_prob = dropout;
  return config;
}

// Rounds the CPU model's weights to bf16 values and gives the same values to the GPU model. HF's
// init makes every bias and LayerNorm beta 0 and every gamma 1, so a forward that read the wrong bias
// or LayerNorm tensor would match the CPU anyway: each gets its own random values first.
inline void share_bf16_weights(BertForPreTraining<float>& cpu, BertForPreTrainingCuda& gpu, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> offset(-0.1f, 0.1f), scale(0.8f, 1.2f);
  const auto ends_with = [](const std::string& name, std::string_view suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (const ParamInfo& info : cpu.params()) {
    float* values = cpu.parameters().data() + info.offset;
    if (ends_with(info.name, "LayerNorm.weight"))
      for (size_t i = 0; i < info.numel; ++i) values[i] = scale(rng);
    else if (ends_with(info.name, "bias"))
      for (size_t i = 0; i < info.numel; ++i) values[i] = offset(rng);
  }
  for (float& value : cpu.parameters()) value = bf16_to_float(float_to_bf16(value));
  gpu.copy_parameters_from(cpu);
}

}  // namespace bert::cuda::test
