// BertForPreTraining: parameter table, arena planning, forward, manual backward, checkpoints.
// The model, the shapes and the FLOP budget are described in engine/bert.h.
#include "engine/bert.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <set>
#include <type_traits>
#include <utility>

#include "common/error.h"
#include "data/rng.h"
#include "engine/safetensors.h"

namespace bert {

namespace {

// Tensors start on 64-byte boundaries (fp32) inside the arenas; the fused QKV blocks are the exception.
constexpr size_t kAlignElements = 16;
size_t align_up(size_t count) { return (count + kAlignElements - 1) / kAlignElements * kAlignElements; }

// Dropout sites per layer: attention probabilities, attention output, FFN output.
constexpr uint64_t kDropoutSitesPerLayer = 3;

ops::GeluKind gelu_kind_of(const std::string& hidden_act) {
  if (hidden_act == "gelu") return ops::GeluKind::kErf;
  if (hidden_act == "gelu_new" || hidden_act == "gelu_pytorch_tanh") return ops::GeluKind::kTanh;
  throw Error("BertConfig: hidden_act \"" + hidden_act +
              "\" is not supported: use \"gelu\" (exact erf) or \"gelu_new\" (tanh approximation)");
}

void validate_config(const BertConfig& config) {
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw Error("BertConfig: " + message);
  };
  require(config.vocab_size > 0, "vocab_size must be > 0 (resolve it from the tokenizer first)");
  require(config.hidden_size > 0, "hidden_size must be > 0");
  require(config.num_hidden_layers >= 0, "num_hidden_layers must be >= 0");
  require(config.num_attention_heads > 0, "num_attention_heads must be > 0");
  require(config.hidden_size % config.num_attention_heads == 0, "hidden_size " + std::to_string(config.hidden_size) +
                                                                    " is not a multiple of num_attention_heads " +
                                                                    std::to_string(config.num_attention_heads));
  require(config.intermediate_size > 0, "intermediate_size must be > 0");
  require(config.max_position_embeddings > 0, "max_position_embeddings must be > 0");
  require(config.type_vocab_size > 0, "type_vocab_size must be > 0");
  require(config.pad_token_id >= -1 && config.pad_token_id < config.vocab_size,
          "pad_token_id " + std::to_string(config.pad_token_id) + " is outside the vocabulary");
  require(config.hidden_dropout_prob >= 0 && config.hidden_dropout_prob < 1, "hidden_dropout_prob must be in [0, 1)");
  require(config.attention_probs_dropout_prob >= 0 && config.attention_probs_dropout_prob < 1,
          "attention_probs_dropout_prob must be in [0, 1)");
  require(config.layer_norm_eps > 0, "layer_norm_eps must be > 0");
  require(config.initializer_range >= 0, "initializer_range must be >= 0");
  (void)gelu_kind_of(config.hidden_act);
}

// Box-Muller on our portable Rng: the same draws on every platform (std::normal_distribution is not).
double standard_normal(Rng& rng) {
  const double radius = std::sqrt(-2.0 * std::log(1.0 - rng.uniform()));  // 1 - u is in (0, 1]
  return radius * std::cos(2.0 * std::numbers::pi * rng.uniform());
}

std::string layer_prefix(int layer) { return "bert.encoder.layer." + std::to_string(layer) + "."; }

// Names older checkpoints (TF-converted BERT) use for the same tensor.
std::vector<std::string> legacy_names(const std::string& name) {
  auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  const std::string stem = name.substr(0, name.rfind('.') + 1);
  if (ends_with("LayerNorm.weight")) return {stem + "gamma"};
  if (ends_with("LayerNorm.bias")) return {stem + "beta"};
  if (name == "cls.predictions.bias") return {"cls.predictions.decoder.bias"};
  return {};
}

// Present in HF checkpoints, not parameters of ours: the tied decoder aliases and an old buffer.
bool is_ignorable_tensor(const std::string& name) {
  return name == "cls.predictions.decoder.weight" || name == "cls.predictions.decoder.bias" ||
         name == "bert.embeddings.position_ids";
}

}  // namespace

// ---- the parameter table (shared with the CUDA model) -----------------------------------------------

ParameterTable make_parameter_table(const BertConfig& config) {
  validate_config(config);
  ParameterTable table;
  const int64_t hidden = config.hidden_size, intermediate = config.intermediate_size;
  const int64_t vocab = config.vocab_size;
  size_t cursor = 0;
  auto allocate = [&](int64_t count) {
    const size_t offset = cursor;
    cursor = align_up(cursor + static_cast<size_t>(count));
    return offset;
  };
  auto add_param = [&](std::string name, std::vector<int64_t> shape, size_t offset, bool decay, ParamInit init) {
    ParamInfo info;
    info.name = std::move(name);
    info.shape = std::move(shape);
    info.offset = offset;
    info.numel = shape_numel(info.shape);
    info.apply_weight_decay = decay;
    table.params.push_back(std::move(info));
    table.init.push_back(init);
  };
  // HF's nn.Linear(in, out): weight [out, in] decayed, bias [out] not.
  auto add_linear = [&](const std::string& prefix, int64_t in, int64_t out, size_t& weight, size_t& bias) {
    weight = allocate(out * in);
    bias = allocate(out);
    add_param(prefix + "weight", {out, in}, weight, true, ParamInit::kNormal);
    add_param(prefix + "bias", {out}, bias, false, ParamInit::kZero);
  };
  auto add_layernorm = [&](const std::string& prefix, size_t& weight, size_t& bias) {
    weight = allocate(hidden);
    bias = allocate(hidden);
    add_param(prefix + "weight", {hidden}, weight, false, ParamInit::kOne);
    add_param(prefix + "bias", {hidden}, bias, false, ParamInit::kZero);
  };

  BertParamOffsets& offsets = table.offsets;
  offsets.word_embeddings = allocate(vocab * hidden);
  add_param("bert.embeddings.word_embeddings.weight", {vocab, hidden}, offsets.word_embeddings, true,
            ParamInit::kNormal);
  offsets.position_embeddings = allocate(int64_t{config.max_position_embeddings} * hidden);
  add_param("bert.embeddings.position_embeddings.weight", {config.max_position_embeddings, hidden},
            offsets.position_embeddings, true, ParamInit::kNormal);
  offsets.token_type_embeddings = allocate(int64_t{config.type_vocab_size} * hidden);
  add_param("bert.embeddings.token_type_embeddings.weight", {config.type_vocab_size, hidden},
            offsets.token_type_embeddings, true, ParamInit::kNormal);
  add_layernorm("bert.embeddings.LayerNorm.", offsets.embeddings_layernorm_weight, offsets.embeddings_layernorm_bias);

  offsets.layers.resize(static_cast<size_t>(config.num_hidden_layers));
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    BertLayerParamOffsets& p = offsets.layers[static_cast<size_t>(layer)];
    const std::string prefix = layer_prefix(layer);
    // One contiguous [3*hidden, hidden] weight and [3*hidden] bias; HF's three tensors are views of it.
    p.qkv_weight = allocate(3 * hidden * hidden);
    p.qkv_bias = allocate(3 * hidden);
    const char* projections[] = {"query", "key", "value"};
    for (size_t i = 0; i < 3; ++i) {
      const std::string name = prefix + "attention.self." + projections[i] + ".";
      add_param(name + "weight", {hidden, hidden}, p.qkv_weight + i * static_cast<size_t>(hidden * hidden), true,
                ParamInit::kNormal);
      add_param(name + "bias", {hidden}, p.qkv_bias + i * static_cast<size_t>(hidden), false, ParamInit::kZero);
    }
    add_linear(prefix + "attention.output.dense.", hidden, hidden, p.attention_output_weight, p.attention_output_bias);
    add_layernorm(prefix + "attention.output.LayerNorm.", p.attention_layernorm_weight, p.attention_layernorm_bias);
    add_linear(prefix + "intermediate.dense.", hidden, intermediate, p.intermediate_weight, p.intermediate_bias);
    add_linear(prefix + "output.dense.", intermediate, hidden, p.output_weight, p.output_bias);
    add_layernorm(prefix + "output.LayerNorm.", p.output_layernorm_weight, p.output_layernorm_bias);
  }
  add_linear("bert.pooler.dense.", hidden, hidden, offsets.pooler_weight, offsets.pooler_bias);
  offsets.mlm_decoder_bias = allocate(vocab);
  add_param("cls.predictions.bias", {vocab}, offsets.mlm_decoder_bias, false, ParamInit::kZero);
  add_linear("cls.predictions.transform.dense.", hidden, hidden, offsets.mlm_transform_weight,
             offsets.mlm_transform_bias);
  add_layernorm("cls.predictions.transform.LayerNorm.", offsets.mlm_layernorm_weight, offsets.mlm_layernorm_bias);
  add_linear("cls.seq_relationship.", hidden, 2, offsets.nsp_weight, offsets.nsp_bias);
  table.arena_elements = cursor;
  return table;
}

template <class T>
void init_parameters(const BertConfig& config, const ParameterTable& table, uint64_t seed, std::span<T> arena) {
  if (arena.size() != table.arena_elements)
    throw Error("init_parameters: the arena holds " + std::to_string(arena.size()) + " values, the table needs " +
                std::to_string(table.arena_elements));
  std::fill(arena.begin(), arena.end(), T(0));
  for (size_t i = 0; i < table.params.size(); ++i) {
    std::span<T> values = arena.subspan(table.params[i].offset, table.params[i].numel);
    switch (table.init[i]) {
      case ParamInit::kZero:
        std::fill(values.begin(), values.end(), T(0));
        break;
      case ParamInit::kOne:
        std::fill(values.begin(), values.end(), T(1));
        break;
      case ParamInit::kNormal: {
        Rng rng(mix_seed(seed, i));
        for (T& value : values) value = static_cast<T>(config.initializer_range * standard_normal(rng));
        break;
      }
    }
  }
  // nn.Embedding(padding_idx) and HF _init_weights zero the padding row.
  if (config.pad_token_id >= 0) {
    T* pad_row = arena.data() + table.offsets.word_embeddings + int64_t{config.pad_token_id} * config.hidden_size;
    std::fill(pad_row, pad_row + config.hidden_size, T(0));
  }
}

template void init_parameters<float>(const BertConfig&, const ParameterTable&, uint64_t, std::span<float>);
template void init_parameters<double>(const BertConfig&, const ParameterTable&, uint64_t, std::span<double>);

std::vector<float> read_parameter_arena(const std::string& path, const BertConfig& config,
                                        const ParameterTable& table) {
  const SafetensorsFile file(path);
  std::vector<float> loaded(table.arena_elements, 0.0f);
  std::set<std::string, std::less<>> used;
  for (const ParamInfo& info : table.params) {
    std::string found = file.contains(info.name) ? info.name : std::string();
    if (found.empty())
      for (const std::string& legacy : legacy_names(info.name))
        if (file.contains(legacy)) found = legacy;
    if (found.empty())
      throw Error(path + ": tensor '" + info.name + "' " + shape_string(info.shape) +
                  " is missing; is this a BertForPreTraining checkpoint of this config (" +
                  std::to_string(config.num_hidden_layers) + " layers, hidden " + std::to_string(config.hidden_size) +
                  ", vocab " + std::to_string(config.vocab_size) + ")?");
    file.read_f32(found, info.shape, std::span<float>(loaded).subspan(info.offset, info.numel));
    used.insert(found);
  }
  std::vector<std::string> unexpected;
  for (const TensorInfo& tensor : file.tensors())
    if (!used.contains(tensor.name) && !is_ignorable_tensor(tensor.name)) unexpected.push_back(tensor.name);
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 5; ++i) list += (i > 0 ? ", '" : "'") + unexpected[i] + "'";
    if (unexpected.size() > 5) list += ", ... (" + std::to_string(unexpected.size()) + " in all)";
    throw Error(path + ": unexpected tensor(s) " + list + ": the checkpoint is not a BertForPreTraining of this " +
                "config (check num_hidden_layers in config.json)");
  }
  return loaded;
}

void write_parameter_arena(const std::string& path, const std::vector<ParamInfo>& params,
                           std::span<const float> arena) {
  SafetensorsWriter writer;
  for (const ParamInfo& info : params) writer.add_f32(info.name, info.shape, arena.subspan(info.offset, info.numel));
  writer.write(path);
}

// ---- construction and parameters -------------------------------------------------------------------

template <class T>
BertForPreTraining<T>::BertForPreTraining(const BertConfig& config, const ModelOptions& options)
    : config_(config), options_(options), context_(options.num_threads) {
  ParameterTable table = make_parameter_table(config_);
  if (options_.decoder_chunk_rows <= 0) throw Error("ModelOptions: decoder_chunk_rows must be > 0");
  gelu_kind_ = gelu_kind_of(config_.hidden_act);
  params_ = std::move(table.params);
  param_init_ = std::move(table.init);
  param_offsets_ = std::move(table.offsets);
  parameters_.assign(table.arena_elements, T(0));
  grads_.assign(table.arena_elements, T(0));
  init_weights(options_.init_seed);
}

template <class T>
const ParamInfo& BertForPreTraining<T>::param_info(std::string_view name) const {
  for (const ParamInfo& info : params_)
    if (info.name == name) return info;
  throw Error("BertForPreTraining: no parameter named '" + std::string(name) + "'");
}

template <class T>
int64_t BertForPreTraining<T>::num_parameters() const {
  int64_t total = 0;
  for (const ParamInfo& info : params_) total += static_cast<int64_t>(info.numel);
  return total;
}

template <class T>
void BertForPreTraining<T>::init_weights(uint64_t seed) {
  // The table's vectors are ours; the offsets and init kinds are all init_parameters reads.
  ParameterTable table;
  table.params = params_;
  table.init = param_init_;
  table.offsets = param_offsets_;
  table.arena_elements = parameters_.size();
  init_parameters<T>(config_, table, seed, parameters_);
}

template <class T>
void BertForPreTraining<T>::zero_grads() {
  std::fill(grads_.begin(), grads_.end(), T(0));
}

// ---- planning --------------------------------------------------------------------------------------

template <class T>
void BertForPreTraining<T>::reserve(int64_t max_batch, int64_t max_seq_len) {
  if (max_batch <= 0 || max_seq_len <= 0)
    throw Error("BertForPreTraining::reserve: max_batch and max_seq_len must be > 0");
  if (max_seq_len > config_.max_position_embeddings)
    throw Error("BertForPreTraining: seq_len " + std::to_string(max_seq_len) + " exceeds max_position_embeddings " +
                std::to_string(config_.max_position_embeddings));
  const int64_t tokens = max_batch * max_seq_len;
  if (max_batch <= capacity_batch_ && tokens <= capacity_tokens_) return;
  const int64_t batch = std::max(max_batch, capacity_batch_);
  const int64_t capacity = std::max(tokens, capacity_tokens_);
  const int64_t hidden = config_.hidden_size, intermediate = config_.intermediate_size;
  const int64_t heads = config_.num_attention_heads;

  size_t cursor = 0;
  auto allocate = [&](int64_t count) {
    const size_t offset = cursor;
    cursor = align_up(cursor + static_cast<size_t>(count));
    return offset;
  };
  ActivationOffsets& a = activation_offsets_;
  a.embeddings_output = allocate(capacity * hidden);
  a.embeddings_mean = allocate(capacity);
  a.embeddings_rstd = allocate(capacity);
  a.layers.assign(static_cast<size_t>(config_.num_hidden_layers), LayerActivations{});
  for (LayerActivations& layer : a.layers) {
    layer.qkv = allocate(capacity * 3 * hidden);
    layer.context = allocate(capacity * hidden);
    layer.logsumexp = allocate(capacity * heads);
    layer.attention_output = allocate(capacity * hidden);
    layer.attention_layernorm = allocate(capacity * hidden);
    layer.attention_layernorm_mean = allocate(capacity);
    layer.attention_layernorm_rstd = allocate(capacity);
    layer.ffn_pre_activation = allocate(capacity * intermediate);
    layer.ffn_activation = allocate(capacity * intermediate);
    layer.ffn_output = allocate(capacity * hidden);
    layer.layer_output = allocate(capacity * hidden);
    layer.output_layernorm_mean = allocate(capacity);
    layer.output_layernorm_rstd = allocate(capacity);
  }
  a.pooled = allocate(batch * hidden);
  a.nsp_logits = allocate(batch * 2);
  a.mlm_input = allocate(capacity * hidden);
  a.mlm_transform_pre_activation = allocate(capacity * hidden);
  a.mlm_transform_activation = allocate(capacity * hidden);
  a.mlm_transform_output = allocate(capacity * hidden);
  a.mlm_layernorm_mean = allocate(capacity);
  a.mlm_layernorm_rstd = allocate(capacity);
  const size_t activation_count = cursor;

  cursor = 0;
  WorkspaceOffsets& w = workspace_offsets_;
  w.grad_hidden = allocate(capacity * hidden);
  w.grad_residual = allocate(capacity * hidden);
  w.grad_branch = allocate(capacity * hidden);
  w.grad_context = allocate(capacity * hidden);
  w.grad_ffn = allocate(capacity * intermediate);
  w.grad_qkv = allocate(capacity * 3 * hidden);
  w.grad_mlm_input = allocate(capacity * hidden);
  w.grad_mlm_transform_output = allocate(capacity * hidden);
  w.grad_mlm_transform_activation = allocate(capacity * hidden);
  w.grad_pooled = allocate(batch * hidden);
  w.mlm_logits = allocate(std::min(capacity, options_.decoder_chunk_rows) * config_.vocab_size);
  const size_t workspace_count = cursor;

  // Replace rather than resize: nothing survives between steps, and this frees the old arenas first.
  activations_ = std::vector<T>();
  workspace_ = std::vector<T>();
  activations_.assign(activation_count, T(0));
  workspace_.assign(workspace_count, T(0));
  mlm_positions_.assign(static_cast<size_t>(capacity), 0);
  mlm_labels_.assign(static_cast<size_t>(capacity), 0);
  capacity_batch_ = batch;
  capacity_tokens_ = capacity;
}

template <class T>
void BertForPreTraining<T>::set_dropout(uint64_t seed, uint64_t step, bool training) {
  dropout_seed_ = seed;
  dropout_step_ = step;
  dropout_training_ = training;
}

ops::DropoutSpec dropout_spec_for(const BertConfig& config, uint64_t seed, uint64_t step, DropoutSite site, int layer) {
  ops::DropoutSpec spec;
  const uint64_t sites = 1 + kDropoutSitesPerLayer * static_cast<uint64_t>(config.num_hidden_layers);
  uint64_t site_index = 0;
  if (site != DropoutSite::kEmbeddings)
    site_index = 1 + kDropoutSitesPerLayer * static_cast<uint64_t>(layer) + static_cast<uint64_t>(site) - 1;
  spec.probability = static_cast<float>(site == DropoutSite::kAttentionProbs ? config.attention_probs_dropout_prob
                                                                             : config.hidden_dropout_prob);
  spec.seed = seed;
  spec.offset = step * sites + site_index;
  return spec;
}

template <class T>
ops::DropoutSpec BertForPreTraining<T>::dropout_spec(DropoutSite site, int layer, bool enabled) const {
  if (!enabled) return ops::DropoutSpec{};  // probability 0: identity
  return dropout_spec_for(config_, dropout_seed_, dropout_step_, site, layer);
}

template <class T>
void BertForPreTraining<T>::check_batch(const BatchView& batch) const {
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw Error("BertForPreTraining: " + message);
  };
  require(batch.batch > 0 && batch.seq_len > 0, "batch and seq_len must be > 0");
  require(batch.input_ids != nullptr, "input_ids is missing");
  require(batch.seq_len <= config_.max_position_embeddings, "seq_len " + std::to_string(batch.seq_len) +
                                                                " exceeds max_position_embeddings " +
                                                                std::to_string(config_.max_position_embeddings));
  if (batch.masked_positions != nullptr) {
    require(batch.num_masked >= 0 && batch.num_masked <= batch.tokens(), "num_masked is out of range");
    for (int64_t i = 0; i < batch.num_masked; ++i) {
      const int64_t position = batch.masked_positions[i];
      require(position >= 0 && position < batch.tokens(),
              "masked position " + std::to_string(position) + " is outside [0, batch * seq_len)");
      require(i == 0 || position > batch.masked_positions[i - 1], "masked positions must be strictly ascending");
    }
    require(batch.masked_labels != nullptr || batch.labels != nullptr, "masked_positions need masked_labels or labels");
  }
}

// ---- forward ---------------------------------------------------------------------------------------

template <class T>
const T* BertForPreTraining<T>::sequence_output() const {
  if (activation_offsets_.layers.empty()) return activation(activation_offsets_.embeddings_output);
  return activation(activation_offsets_.layers.back().layer_output);
}

template <class T>
void BertForPreTraining<T>::forward_encoder(const BatchView& batch, bool dropout_enabled) {
  const int64_t tokens = batch.tokens(), hidden = config_.hidden_size, intermediate = config_.intermediate_size;
  const T eps = static_cast<T>(config_.layer_norm_eps);
  const ParamOffsets& p = param_offsets_;
  const ActivationOffsets& a = activation_offsets_;

  const ops::EmbeddingShape embedding_shape{batch.batch,
                                            batch.seq_len,
                                            hidden,
                                            config_.vocab_size,
                                            config_.max_position_embeddings,
                                            config_.type_vocab_size,
                                            config_.pad_token_id};
  T* embeddings = activation(a.embeddings_output);
  cpu::embeddings_layernorm_forward(context_, embedding_shape, batch.input_ids, batch.token_type_ids,
                                    param(p.word_embeddings), param(p.position_embeddings),
                                    param(p.token_type_embeddings), param(p.embeddings_layernorm_weight),
                                    param(p.embeddings_layernorm_bias), eps, embeddings, activation(a.embeddings_mean),
                                    activation(a.embeddings_rstd));
  cpu::dropout_forward(context_, tokens * hidden, dropout_spec(DropoutSite::kEmbeddings, 0, dropout_enabled),
                       embeddings, embeddings);

  const ops::AttentionShape attention_shape{batch.batch, batch.seq_len, config_.num_attention_heads, config_.head_dim(),
                                            3 * hidden};
  const T* layer_input = embeddings;
  for (int layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const LayerParams& lp = p.layers[static_cast<size_t>(layer)];
    const LayerActivations& la = a.layers[static_cast<size_t>(layer)];
    T* qkv = activation(la.qkv);
    cpu::linear_forward(context_, {tokens, hidden, 3 * hidden}, layer_input, param(lp.qkv_weight), param(lp.qkv_bias),
                        qkv);
    cpu::attention_forward(context_, attention_shape, qkv, qkv + hidden, qkv + 2 * hidden, batch.attention_mask,
                           dropout_spec(DropoutSite::kAttentionProbs, layer, dropout_enabled), activation(la.context),
                           activation(la.logsumexp));
    T* attention_output = activation(la.attention_output);
    cpu::linear_forward(context_, {tokens, hidden, hidden}, activation(la.context), param(lp.attention_output_weight),
                        param(lp.attention_output_bias), attention_output);
    cpu::dropout_forward(context_, tokens * hidden, dropout_spec(DropoutSite::kAttentionOutput, layer, dropout_enabled),
                         attention_output, attention_output);
    T* attention_layernorm = activation(la.attention_layernorm);
    cpu::residual_layernorm_forward(context_, {tokens, hidden}, attention_output, layer_input,
                                    param(lp.attention_layernorm_weight), param(lp.attention_layernorm_bias), eps,
                                    attention_layernorm, activation(la.attention_layernorm_mean),
                                    activation(la.attention_layernorm_rstd));
    cpu::linear_forward<T>(context_, {tokens, hidden, intermediate}, attention_layernorm, param(lp.intermediate_weight),
                           nullptr, activation(la.ffn_pre_activation));
    cpu::bias_gelu_forward(context_, gelu_kind_, {tokens, intermediate}, activation(la.ffn_pre_activation),
                           param(lp.intermediate_bias), activation(la.ffn_activation));
    T* ffn_output = activation(la.ffn_output);
    cpu::linear_forward(context_, {tokens, intermediate, hidden}, activation(la.ffn_activation),
                        param(lp.output_weight), param(lp.output_bias), ffn_output);
    cpu::dropout_forward(context_, tokens * hidden, dropout_spec(DropoutSite::kFfnOutput, layer, dropout_enabled),
                         ffn_output, ffn_output);
    cpu::residual_layernorm_forward(context_, {tokens, hidden}, ffn_output, attention_layernorm,
                                    param(lp.output_layernorm_weight), param(lp.output_layernorm_bias), eps,
                                    activation(la.layer_output), activation(la.output_layernorm_mean),
                                    activation(la.output_layernorm_rstd));
    layer_input = activation(la.layer_output);
  }
}

template <class T>
typename BertForPreTraining<T>::MlmRows BertForPreTraining<T>::select_mlm_rows(const BatchView& batch) {
  MlmRows rows;
  const int64_t tokens = batch.tokens(), hidden = config_.hidden_size;
  const bool have_positions = batch.masked_positions != nullptr;
  if (!have_positions && batch.labels == nullptr) return rows;  // no MLM targets

  if (!options_.mlm_on_masked_positions_only) {
    rows.input = sequence_output();
    rows.rows = tokens;
    if (batch.labels != nullptr) {
      rows.labels = batch.labels;
    } else {  // dense labels from the positions
      std::fill(mlm_labels_.begin(), mlm_labels_.begin() + tokens, ops::kIgnoreIndex);
      for (int64_t i = 0; i < batch.num_masked; ++i)
        mlm_labels_[static_cast<size_t>(batch.masked_positions[i])] = batch.masked_labels[i];
      rows.labels = mlm_labels_.data();
    }
    return rows;
  }

  int64_t count = 0;
  if (have_positions) {
    for (int64_t i = 0; i < batch.num_masked; ++i) {
      const int32_t position = batch.masked_positions[i];
      mlm_positions_[static_cast<size_t>(i)] = position;
      mlm_labels_[static_cast<size_t>(i)] =
          batch.masked_labels != nullptr ? batch.masked_labels[i] : batch.labels[position];
    }
    count = batch.num_masked;
  } else {
    for (int64_t t = 0; t < tokens; ++t) {
      if (batch.labels[t] == ops::kIgnoreIndex) continue;
      mlm_positions_[static_cast<size_t>(count)] = static_cast<int32_t>(t);
      mlm_labels_[static_cast<size_t>(count)] = batch.labels[t];
      ++count;
    }
  }
  T* gathered = activation(activation_offsets_.mlm_input);
  const T* encoder_rows = sequence_output();
  for (int64_t i = 0; i < count; ++i)
    std::copy_n(encoder_rows + int64_t{mlm_positions_[static_cast<size_t>(i)]} * hidden, hidden, gathered + i * hidden);
  rows.input = gathered;
  rows.labels = mlm_labels_.data();
  rows.rows = count;
  return rows;
}

template <class T>
void BertForPreTraining<T>::mlm_transform_forward(const T* input, int64_t rows) {
  const int64_t hidden = config_.hidden_size;
  const ParamOffsets& p = param_offsets_;
  const ActivationOffsets& a = activation_offsets_;
  cpu::linear_forward<T>(context_, {rows, hidden, hidden}, input, param(p.mlm_transform_weight), nullptr,
                         activation(a.mlm_transform_pre_activation));
  cpu::bias_gelu_forward(context_, gelu_kind_, {rows, hidden}, activation(a.mlm_transform_pre_activation),
                         param(p.mlm_transform_bias), activation(a.mlm_transform_activation));
  cpu::layernorm_forward(context_, {rows, hidden}, activation(a.mlm_transform_activation),
                         param(p.mlm_layernorm_weight), param(p.mlm_layernorm_bias),
                         static_cast<T>(config_.layer_norm_eps), activation(a.mlm_transform_output),
                         activation(a.mlm_layernorm_mean), activation(a.mlm_layernorm_rstd));
}

template <class T>
cpu::CrossEntropyStats BertForPreTraining<T>::mlm_head_forward_backward(const MlmRows& rows, bool compute_grads,
                                                                        T loss_scale) {
  const int64_t hidden = config_.hidden_size, vocab = config_.vocab_size;
  const ParamOffsets& p = param_offsets_;
  const ActivationOffsets& a = activation_offsets_;
  const WorkspaceOffsets& w = workspace_offsets_;
  cpu::CrossEntropyStats total;
  for (int64_t r = 0; r < rows.rows; ++r) total.num_counted += rows.labels[r] != ops::kIgnoreIndex;
  if (total.num_counted == 0) {
    if (compute_grads) std::fill_n(workspace(w.grad_mlm_input), rows.rows * hidden, T(0));
    return total;
  }

  mlm_transform_forward(rows.input, rows.rows);
  const T* transform_output = activation(a.mlm_transform_output);
  T* grad_transform_output = workspace(w.grad_mlm_transform_output);
  T* logits = workspace(w.mlm_logits);
  double loss_sum = 0;
  // The decoder (tied to the word embeddings) in row chunks; each chunk's mean-loss gradient is
  // rescaled by its share of the counted rows, so the sum is the gradient of the mean over all rows.
  for (int64_t first = 0; first < rows.rows; first += options_.decoder_chunk_rows) {
    const int64_t chunk = std::min(options_.decoder_chunk_rows, rows.rows - first);
    int64_t chunk_counted = 0;
    for (int64_t r = first; r < first + chunk; ++r) chunk_counted += rows.labels[r] != ops::kIgnoreIndex;
    if (chunk_counted == 0) {
      if (compute_grads) std::fill_n(grad_transform_output + first * hidden, chunk * hidden, T(0));
      continue;
    }
    const ops::LinearShape decoder_shape{chunk, hidden, vocab};
    cpu::linear_forward(context_, decoder_shape, transform_output + first * hidden, param(p.word_embeddings),
                        param(p.mlm_decoder_bias), logits);
    const T grad_scale = loss_scale * static_cast<T>(chunk_counted) / static_cast<T>(total.num_counted);
    const cpu::CrossEntropyStats chunk_stats = cpu::softmax_cross_entropy(
        context_, {chunk, vocab}, logits, rows.labels + first, grad_scale, compute_grads ? logits : nullptr);
    loss_sum += chunk_stats.loss * static_cast<double>(chunk_stats.num_counted);
    total.num_correct += chunk_stats.num_correct;
    if (compute_grads)
      cpu::linear_backward(context_, decoder_shape, logits, transform_output + first * hidden, param(p.word_embeddings),
                           grad_transform_output + first * hidden, grad_at(p.word_embeddings),
                           grad_at(p.mlm_decoder_bias));
  }
  total.loss = loss_sum / static_cast<double>(total.num_counted);
  if (!compute_grads) return total;

  T* grad_activation = workspace(w.grad_mlm_transform_activation);
  cpu::layernorm_backward(context_, {rows.rows, hidden}, grad_transform_output, activation(a.mlm_transform_activation),
                          param(p.mlm_layernorm_weight), activation(a.mlm_layernorm_mean),
                          activation(a.mlm_layernorm_rstd), grad_activation, grad_at(p.mlm_layernorm_weight),
                          grad_at(p.mlm_layernorm_bias));
  cpu::bias_gelu_backward(context_, gelu_kind_, {rows.rows, hidden}, grad_activation,
                          activation(a.mlm_transform_pre_activation), param(p.mlm_transform_bias), grad_activation,
                          grad_at(p.mlm_transform_bias));
  cpu::linear_backward<T>(context_, {rows.rows, hidden, hidden}, grad_activation, rows.input,
                          param(p.mlm_transform_weight), workspace(w.grad_mlm_input), grad_at(p.mlm_transform_weight),
                          nullptr);
  return total;
}

template <class T>
void BertForPreTraining<T>::forward_backward(const BatchView& batch, LossStats& stats, bool compute_grads,
                                             T loss_scale) {
  check_batch(batch);
  reserve(batch.batch, batch.seq_len);
  const int64_t tokens = batch.tokens(), hidden = config_.hidden_size;
  const ParamOffsets& p = param_offsets_;
  const ActivationOffsets& a = activation_offsets_;
  const WorkspaceOffsets& w = workspace_offsets_;
  stats = LossStats{};

  forward_encoder(batch, dropout_training_);

  // MLM head; its input gradient becomes d(sequence output).
  T* grad_hidden = workspace(w.grad_hidden);
  const MlmRows mlm_rows = select_mlm_rows(batch);
  const cpu::CrossEntropyStats mlm = mlm_head_forward_backward(mlm_rows, compute_grads, loss_scale);
  stats.mlm_loss = mlm.loss;
  stats.mlm_count = mlm.num_counted;
  stats.mlm_correct = mlm.num_correct;
  if (compute_grads) {
    const T* grad_mlm_input = workspace(w.grad_mlm_input);
    if (mlm_rows.input == sequence_output()) {  // dense head: one row per token
      std::copy_n(grad_mlm_input, tokens * hidden, grad_hidden);
    } else {
      std::fill_n(grad_hidden, tokens * hidden, T(0));
      for (int64_t i = 0; i < mlm_rows.rows; ++i)
        std::copy_n(grad_mlm_input + i * hidden, hidden,
                    grad_hidden + int64_t{mlm_positions_[static_cast<size_t>(i)]} * hidden);
    }
  }

  // NSP head on the pooled [CLS] rows; the pooler adds its gradient into the [CLS] rows.
  if (batch.nsp_labels != nullptr) {
    const ops::PoolerShape pooler_shape{batch.batch, batch.seq_len, hidden};
    T* pooled = activation(a.pooled);
    T* nsp_logits = activation(a.nsp_logits);
    cpu::pooler_forward(context_, pooler_shape, sequence_output(), param(p.pooler_weight), param(p.pooler_bias),
                        pooled);
    cpu::linear_forward(context_, {batch.batch, hidden, 2}, pooled, param(p.nsp_weight), param(p.nsp_bias), nsp_logits);
    const cpu::CrossEntropyStats nsp = cpu::softmax_cross_entropy(
        context_, {batch.batch, 2}, nsp_logits, batch.nsp_labels, loss_scale, compute_grads ? nsp_logits : nullptr);
    stats.nsp_loss = nsp.loss;
    stats.nsp_count = nsp.num_counted;
    stats.nsp_correct = nsp.num_correct;
    if (compute_grads && nsp.num_counted > 0) {
      T* grad_pooled = workspace(w.grad_pooled);
      cpu::linear_backward(context_, {batch.batch, hidden, 2}, nsp_logits, pooled, param(p.nsp_weight), grad_pooled,
                           grad_at(p.nsp_weight), grad_at(p.nsp_bias));
      cpu::pooler_backward(context_, pooler_shape, grad_pooled, sequence_output(), param(p.pooler_weight), pooled,
                           grad_hidden, grad_at(p.pooler_weight), grad_at(p.pooler_bias));
    }
  }
  stats.loss = stats.mlm_loss + stats.nsp_loss;

  if (compute_grads) backward_encoder(batch);
}

// ---- backward --------------------------------------------------------------------------------------

template <class T>
void BertForPreTraining<T>::backward_encoder(const BatchView& batch) {
  const int64_t tokens = batch.tokens(), hidden = config_.hidden_size, intermediate = config_.intermediate_size;
  const ParamOffsets& p = param_offsets_;
  const ActivationOffsets& a = activation_offsets_;
  const WorkspaceOffsets& w = workspace_offsets_;
  T* grad_hidden = workspace(w.grad_hidden);  // d(layer output) on entry to a layer, d(layer input) on exit
  T* grad_residual = workspace(w.grad_residual);
  T* grad_branch = workspace(w.grad_branch);
  T* grad_context = workspace(w.grad_context);
  T* grad_ffn = workspace(w.grad_ffn);
  T* grad_qkv = workspace(w.grad_qkv);
  // d(dropout input) from d(dropout output); with dropout off that is the same buffer.
  auto dropout_input_grad = [&](const ops::DropoutSpec& spec, const T* grad_output) -> const T* {
    if (spec.probability == 0.0f) return grad_output;
    cpu::dropout_backward(context_, tokens * hidden, spec, grad_output, grad_branch);
    return grad_branch;
  };
  const ops::AttentionShape attention_shape{batch.batch, batch.seq_len, config_.num_attention_heads, config_.head_dim(),
                                            3 * hidden};

  for (int layer = config_.num_hidden_layers - 1; layer >= 0; --layer) {
    const LayerParams& lp = p.layers[static_cast<size_t>(layer)];
    const LayerActivations& la = a.layers[static_cast<size_t>(layer)];
    const T* layer_input = layer == 0 ? activation(a.embeddings_output)
                                      : activation(a.layers[static_cast<size_t>(layer - 1)].layer_output);
    // Output LayerNorm: grad_residual = d(ffn_output) = d(attention_layernorm) through the residual.
    cpu::residual_layernorm_backward(
        context_, {tokens, hidden}, grad_hidden, activation(la.ffn_output), activation(la.attention_layernorm),
        param(lp.output_layernorm_weight), activation(la.output_layernorm_mean), activation(la.output_layernorm_rstd),
        grad_residual, grad_at(lp.output_layernorm_weight), grad_at(lp.output_layernorm_bias));
    // FFN: down-projection, bias + GELU, up-projection (adds onto the residual gradient).
    const T* grad_ffn_output =
        dropout_input_grad(dropout_spec(DropoutSite::kFfnOutput, layer, dropout_training_), grad_residual);
    cpu::linear_backward(context_, {tokens, intermediate, hidden}, grad_ffn_output, activation(la.ffn_activation),
                         param(lp.output_weight), grad_ffn, grad_at(lp.output_weight), grad_at(lp.output_bias));
    cpu::bias_gelu_backward(context_, gelu_kind_, {tokens, intermediate}, grad_ffn, activation(la.ffn_pre_activation),
                            param(lp.intermediate_bias), grad_ffn, grad_at(lp.intermediate_bias));
    cpu::linear_backward<T>(context_, {tokens, hidden, intermediate}, grad_ffn, activation(la.attention_layernorm),
                            param(lp.intermediate_weight), grad_residual, grad_at(lp.intermediate_weight), nullptr,
                            ops::InputGrad::kAccumulate);
    // Attention LayerNorm: grad_hidden = d(attention_output) = d(layer input) through the residual.
    cpu::residual_layernorm_backward(context_, {tokens, hidden}, grad_residual, activation(la.attention_output),
                                     layer_input, param(lp.attention_layernorm_weight),
                                     activation(la.attention_layernorm_mean), activation(la.attention_layernorm_rstd),
                                     grad_hidden, grad_at(lp.attention_layernorm_weight),
                                     grad_at(lp.attention_layernorm_bias));
    const T* grad_attention_output =
        dropout_input_grad(dropout_spec(DropoutSite::kAttentionOutput, layer, dropout_training_), grad_hidden);
    cpu::linear_backward(context_, {tokens, hidden, hidden}, grad_attention_output, activation(la.context),
                         param(lp.attention_output_weight), grad_context, grad_at(lp.attention_output_weight),
                         grad_at(lp.attention_output_bias));
    const T* qkv = activation(la.qkv);
    cpu::attention_backward(context_, attention_shape, grad_context, qkv, qkv + hidden, qkv + 2 * hidden,
                            batch.attention_mask, dropout_spec(DropoutSite::kAttentionProbs, layer, dropout_training_),
                            activation(la.context), activation(la.logsumexp), grad_qkv, grad_qkv + hidden,
                            grad_qkv + 2 * hidden);
    cpu::linear_backward(context_, {tokens, hidden, 3 * hidden}, grad_qkv, layer_input, param(lp.qkv_weight),
                         grad_hidden, grad_at(lp.qkv_weight), grad_at(lp.qkv_bias), ops::InputGrad::kAccumulate);
  }

  const ops::EmbeddingShape embedding_shape{batch.batch,
                                            batch.seq_len,
                                            hidden,
                                            config_.vocab_size,
                                            config_.max_position_embeddings,
                                            config_.type_vocab_size,
                                            config_.pad_token_id};
  const T* grad_embeddings =
      dropout_input_grad(dropout_spec(DropoutSite::kEmbeddings, 0, dropout_training_), grad_hidden);
  cpu::embeddings_layernorm_backward(
      context_, embedding_shape, grad_embeddings, batch.input_ids, batch.token_type_ids, param(p.word_embeddings),
      param(p.position_embeddings), param(p.token_type_embeddings), param(p.embeddings_layernorm_weight),
      activation(a.embeddings_mean), activation(a.embeddings_rstd), grad_at(p.word_embeddings),
      grad_at(p.position_embeddings), grad_at(p.token_type_embeddings), grad_at(p.embeddings_layernorm_weight),
      grad_at(p.embeddings_layernorm_bias));
}

// ---- inference -------------------------------------------------------------------------------------

template <class T>
void BertForPreTraining<T>::mlm_logits_at(const BatchView& batch, std::span<const int32_t> positions,
                                          std::span<T> logits) {
  check_batch(batch);
  const int64_t rows = static_cast<int64_t>(positions.size()), hidden = config_.hidden_size;
  if (logits.size() != positions.size() * static_cast<size_t>(config_.vocab_size))
    throw Error("BertForPreTraining::mlm_logits_at: logits holds " + std::to_string(logits.size()) +
                " values, need positions * vocab_size = " +
                std::to_string(positions.size() * static_cast<size_t>(config_.vocab_size)));
  if (rows > batch.tokens())
    throw Error("BertForPreTraining::mlm_logits_at: " + std::to_string(rows) + " positions for a batch of only " +
                std::to_string(batch.tokens()) + " tokens");
  reserve(batch.batch, batch.seq_len);
  forward_encoder(batch, /*dropout_enabled=*/false);
  T* gathered = activation(activation_offsets_.mlm_input);
  const T* encoder_rows = sequence_output();
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t position = positions[static_cast<size_t>(i)];
    if (position < 0 || position >= batch.tokens())
      throw Error("BertForPreTraining::mlm_logits_at: position " + std::to_string(position) +
                  " is outside [0, batch * seq_len)");
    std::copy_n(encoder_rows + position * hidden, hidden, gathered + i * hidden);
  }
  if (rows == 0) return;
  mlm_transform_forward(gathered, rows);
  cpu::linear_forward(context_, {rows, hidden, config_.vocab_size},
                      activation(activation_offsets_.mlm_transform_output), param(param_offsets_.word_embeddings),
                      param(param_offsets_.mlm_decoder_bias), logits.data());
}

double bert_training_flops(const BertConfig& config, int64_t batch, int64_t seq_len, int64_t mlm_rows) {
  const double hidden = config.hidden_size, intermediate = config.intermediate_size;
  const double layers = config.num_hidden_layers, vocab = config.vocab_size;
  const double tokens = static_cast<double>(batch) * static_cast<double>(seq_len);
  const double encoder_params = layers * (4 * hidden * hidden + 2 * hidden * intermediate);
  const double encoder = 6 * encoder_params * tokens;
  const double attention = 12 * layers * static_cast<double>(seq_len) * hidden * tokens;
  const double mlm_head = 6 * (hidden * hidden + hidden * vocab) * static_cast<double>(mlm_rows);
  const double heads = 6 * (hidden * hidden + 2 * hidden) * static_cast<double>(batch);  // pooler + NSP
  return encoder + attention + mlm_head + heads;
}

template <class T>
double BertForPreTraining<T>::training_flops(int64_t batch, int64_t seq_len, int64_t mlm_rows) const {
  return bert_training_flops(config_, batch, seq_len, mlm_rows);
}

// ---- checkpoints -----------------------------------------------------------------------------------

template <class T>
void BertForPreTraining<T>::save_safetensors(const std::string& path) const {
  if constexpr (std::is_same_v<T, float>) {
    write_parameter_arena(path, params_, parameters_);
  } else {
    const std::vector<float> staging(parameters_.begin(), parameters_.end());  // fp32 copy of the arena
    write_parameter_arena(path, params_, staging);
  }
}

template <class T>
void BertForPreTraining<T>::load_safetensors(const std::string& path) {
  ParameterTable table;  // read_parameter_arena needs the names, shapes, offsets and the arena size
  table.params = params_;
  table.arena_elements = parameters_.size();
  std::vector<float> loaded = read_parameter_arena(path, config_, table);  // the model changes only on success
  if constexpr (std::is_same_v<T, float>) {
    parameters_ = std::move(loaded);
  } else {
    parameters_.assign(loaded.begin(), loaded.end());
  }
}

template class BertForPreTraining<float>;
template class BertForPreTraining<double>;

}  // namespace bert
