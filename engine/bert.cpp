// BertForPreTraining: parameter table, arena planning, forward, manual backward, checkpoints.
// The model, the shapes and the FLOP budget are described in engine/bert.h.
#include "engine/bert.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numbers>
#include <set>
#include <type_traits>
#include <utility>

#include "common/error.h"
#include "data/rng.h"
#include "engine/bert_graph.h"
#include "engine/safetensors.h"

namespace bert {

namespace {

// Dropout sites per layer: attention probabilities, attention output, FFN output.
constexpr uint64_t kDropoutSitesPerLayer = 3;

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

// Present in HF checkpoints, not parameters of ours: the tied decoder aliases (checked equal to what
// they alias below) and the embeddings' buffers (position_ids 0..n-1, token_type_ids zeros).
bool is_ignorable_tensor(const std::string& name) {
  return name == "cls.predictions.decoder.weight" || name == "cls.predictions.decoder.bias" ||
         name == "bert.embeddings.position_ids" || name == "bert.embeddings.token_type_ids";
}

}  // namespace

ops::GeluKind gelu_kind_of(const std::string& hidden_act) {
  if (hidden_act == "gelu" || hidden_act == "gelu_python") return ops::GeluKind::kErf;
  if (hidden_act == "gelu_new" || hidden_act == "gelu_pytorch_tanh") return ops::GeluKind::kTanh;
  throw Error("BertConfig: hidden_act \"" + hidden_act +
              "\" is not supported: use \"gelu\" / \"gelu_python\" (exact erf) or \"gelu_new\" / "
              "\"gelu_pytorch_tanh\" (tanh approximation)");
}

// ---- the parameter table (shared with the CUDA model) -----------------------------------------------

ParameterTable make_parameter_table(const BertConfig& config) {
  validate_config(config);
  ParameterTable table;
  const int64_t hidden = config.hidden_size, intermediate = config.intermediate_size;
  const int64_t vocab = config.vocab_size;
  ArenaCursor cursor;
  auto allocate = [&](int64_t count) { return cursor.allocate(count); };
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
  table.arena_elements = cursor.size();
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

namespace {

// What read_arena accepts a file to lack (left zero, names appended to `absent_names`): nothing, the
// pooler and the NSP head (a BertForMaskedLM), or every head (a BertModel too, whose tensors have no
// "bert." prefix: transformers' base model, which BertForPreTraining.from_pretrained loads the same way).
enum class Absent { kNothing, kPretrainingHeads, kAnyHead };

// The parameters with a row per token: the word embeddings and the MLM decoder's bias.
bool has_vocab_rows(std::string_view name) {
  return name == "bert.embeddings.word_embeddings.weight" || name == "cls.predictions.bias";
}

// Every parameter of `table` into `loaded` (arena_elements long; its gaps are left as they are): the
// file's values, or zero for an absent one. grow_from > 0: the file's vocab-row parameters
// (has_vocab_rows) have that many rows, fewer than the table's; the rows past them are new tokens':
// the word embeddings' start at the mean of the file's rows, the decoder bias at 0. On an error
// `loaded` may be partly written.
void read_arena(const std::string& path, const BertConfig& config, const ParameterTable& table,
                std::vector<std::string>* absent_names, Absent absent, std::span<float> loaded, int64_t grow_from = 0) {
  if (loaded.size() != table.arena_elements)
    throw Error("read_parameter_arena: the arena holds " + std::to_string(loaded.size()) + " values, the table needs " +
                std::to_string(table.arena_elements));
  const SafetensorsFile file(path);
  file.verify_data_hash();
  std::set<std::string, std::less<>> used;
  const bool base_model =
      file.contains("embeddings.word_embeddings.weight") && !file.contains("bert.embeddings.word_embeddings.weight");
  if (base_model && absent != Absent::kAnyHead)
    throw Error(path + ": a BertModel checkpoint (transformers' base model: no \"bert.\" prefix, no MLM head), " +
                "which has no fill-mask predictions to load; bert_train's [model] model_name_or_path can pretrain one "
                "from it");
  for (const ParamInfo& info : table.params) {
    const std::string stored = base_model && info.name.starts_with("bert.") ? info.name.substr(5) : info.name;
    std::string found = file.contains(stored) ? stored : std::string();
    if (found.empty())
      for (const std::string& legacy : legacy_names(stored))
        if (file.contains(legacy)) found = legacy;
    const bool pretraining_head =
        info.name.starts_with("bert.pooler.") || info.name.starts_with("cls.seq_relationship.");
    if (found.empty() && ((absent != Absent::kNothing && pretraining_head) ||
                          (absent == Absent::kAnyHead && info.name.starts_with("cls.predictions.")))) {
      absent_names->push_back(info.name);
      std::fill_n(loaded.begin() + static_cast<std::ptrdiff_t>(info.offset), info.numel, 0.0f);
      continue;
    }
    std::vector<int64_t> file_shape = info.shape;  // what the file should hold
    if (grow_from > 0 && has_vocab_rows(info.name)) file_shape[0] = grow_from;
    if (found.empty())
      throw Error(
          path + ": tensor '" + stored + "' " + shape_string(file_shape) + " is missing; is this a " +
          (absent == Absent::kAnyHead ? "BertForPreTraining, BertForMaskedLM or BertModel" : "BertForPreTraining") +
          " checkpoint of this config (" + std::to_string(config.num_hidden_layers) + " layers, hidden " +
          std::to_string(config.hidden_size) + ", vocab " +
          std::to_string(grow_from > 0 ? grow_from : int64_t{config.vocab_size}) + ")?");
    const std::span<float> values = loaded.subspan(info.offset, info.numel);
    if (grow_from > 0 && has_vocab_rows(info.name)) {
      const size_t width = info.numel / static_cast<size_t>(info.shape[0]);
      const size_t old_values = static_cast<size_t>(grow_from) * width;
      file.read_f32(found, file_shape, values.first(old_values));
      if (info.shape.size() == 2) {  // transformers' resize_token_embeddings(mean_resizing=True), less its noise
        std::vector<double> mean(width, 0.0);
        for (size_t i = 0; i < old_values; ++i) mean[i % width] += values[i];
        for (size_t i = old_values; i < values.size(); ++i)
          values[i] = static_cast<float>(mean[i % width] / static_cast<double>(grow_from));
      }
    } else {
      file.read_f32(found, info.shape, values);
    }
    // Training never writes one (a non-finite step is skipped), so it is damage: refuse it by name
    // rather than resume into NaN losses or serve NaN scores.
    const auto bad = std::find_if(values.begin(), values.end(), [](float v) { return !std::isfinite(v); });
    if (bad != values.end())
      throw Error(path + ": tensor '" + found + "' holds " + std::to_string(*bad) + " at element " +
                  std::to_string(bad - values.begin()) + "; the file is damaged");
    file.release(file.info(found));  // read: the arena's copy is all the process keeps resident
    used.insert(found);
  }
  // A tied alias in the file (HF leaves them out of safetensors, but a file may hold them) must equal
  // the parameter it aliases, found by name (the caller's table may carry names and offsets only).
  const auto alias_differs = [&](const std::string& alias, std::string_view target) {
    const auto info =
        std::find_if(table.params.begin(), table.params.end(), [&](const ParamInfo& p) { return p.name == target; });
    if (info == table.params.end()) throw Error("read_parameter_arena: no parameter '" + std::string(target) + "'");
    std::vector<int64_t> shape = info->shape;
    if (grow_from > 0 && has_vocab_rows(target)) shape[0] = grow_from;  // the file's rows: the first ones
    std::vector<float> values(shape_numel(shape));
    file.read_f32(alias, shape, values);
    return !std::equal(values.begin(), values.end(), loaded.begin() + static_cast<std::ptrdiff_t>(info->offset));
  };
  // Another matrix as the decoder's weight is an untied model's output layer, which this model would
  // silently replace by the word embeddings.
  if (const std::string decoder = "cls.predictions.decoder.weight";
      file.contains(decoder) && alias_differs(decoder, "bert.embeddings.word_embeddings.weight"))
    throw Error(path + ": tensor '" + decoder +
                "' differs from 'bert.embeddings.word_embeddings.weight': an untied output layer; only tied "
                "output embeddings are supported");
  // Another decoder bias: HF serves the file's decoder.bias when the two differ, this model
  // cls.predictions.bias. Such a file comes from a converter or an edit, never from save_pretrained;
  // refuse it rather than pick one.
  if (const std::string bias = "cls.predictions.decoder.bias";
      file.contains(bias) && used.contains("cls.predictions.bias") && alias_differs(bias, "cls.predictions.bias"))
    throw Error(path + ": tensor '" + bias +
                "' differs from 'cls.predictions.bias' (they are one parameter in BertForMaskedLM); the file is "
                "inconsistent: keep one of them");
  std::vector<std::string> unexpected;
  for (const TensorInfo& tensor : file.tensors())
    if (!used.contains(tensor.name) && !is_ignorable_tensor(tensor.name) &&
        !(base_model && is_ignorable_tensor("bert." + tensor.name)))
      unexpected.push_back(tensor.name);
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 5; ++i) list += (i > 0 ? ", '" : "'") + unexpected[i] + "'";
    if (unexpected.size() > 5) list += ", ... (" + std::to_string(unexpected.size()) + " in all)";
    // A layer past the config's count points at num_hidden_layers; anything else is another model's.
    const bool extra_layer = std::any_of(unexpected.begin(), unexpected.end(), [&](const std::string& name) {
      const std::string_view prefix = base_model ? "encoder.layer." : "bert.encoder.layer.";
      if (!name.starts_with(prefix)) return false;
      const int index = std::atoi(name.c_str() + prefix.size());
      return index >= config.num_hidden_layers;
    });
    throw Error(path + ": unexpected tensor(s) " + list + ": the checkpoint is not a BertForPreTraining of this " +
                (extra_layer ? "config (check num_hidden_layers in config.json)"
                             : "config (a tensor BertForPreTraining and BertForMaskedLM do not have)"));
  }
}

}  // namespace

std::vector<float> read_parameter_arena(const std::string& path, const BertConfig& config, const ParameterTable& table,
                                        std::vector<std::string>* zero_filled) {
  std::vector<float> loaded(table.arena_elements, 0.0f);
  read_parameter_arena_into(path, config, table, loaded, zero_filled);
  return loaded;
}

void read_parameter_arena_into(const std::string& path, const BertConfig& config, const ParameterTable& table,
                               std::span<float> arena, std::vector<std::string>* zero_filled) {
  read_arena(path, config, table, zero_filled, zero_filled ? Absent::kPretrainingHeads : Absent::kNothing, arena);
}

std::vector<float> read_pretrained_arena(const std::string& path, const BertConfig& config, const ParameterTable& table,
                                         std::span<const float> initial, std::vector<std::string>& kept,
                                         int64_t grow_vocab_from) {
  if (initial.size() != table.arena_elements)
    throw Error("read_pretrained_arena: the initial arena holds " + std::to_string(initial.size()) +
                " values, the table needs " + std::to_string(table.arena_elements));
  const size_t first = kept.size();
  if (grow_vocab_from < 0 || grow_vocab_from > config.vocab_size)
    throw Error("read_pretrained_arena: the file's " + std::to_string(grow_vocab_from) +
                " vocabulary rows cannot grow to vocab_size " + std::to_string(config.vocab_size));
  std::vector<float> loaded(table.arena_elements, 0.0f);
  read_arena(path, config, table, &kept, Absent::kAnyHead, loaded,
             grow_vocab_from == config.vocab_size ? 0 : grow_vocab_from);
  for (size_t k = first; k < kept.size(); ++k) {
    const auto info =
        std::find_if(table.params.begin(), table.params.end(), [&](const ParamInfo& p) { return p.name == kept[k]; });
    std::copy_n(initial.begin() + static_cast<std::ptrdiff_t>(info->offset), info->numel,
                loaded.begin() + static_cast<std::ptrdiff_t>(info->offset));
  }
  return loaded;
}

void write_parameter_arena(const std::string& path, const std::vector<ParamInfo>& params,
                           std::span<const float> arena) {
  SafetensorsWriter writer;
  writer.add_data_hash();
  for (const ParamInfo& info : params) writer.add_f32(info.name, info.shape, arena.subspan(info.offset, info.numel));
  writer.write(path);
}

// ---- construction and parameters -------------------------------------------------------------------

template <class T>
BertForPreTraining<T>::BertForPreTraining(const BertConfig& config, const ModelOptions& options)
    : config_(config), options_(resolve_model_options(options, kCpuDecoderChunkRows)), context_(options.num_threads) {
  ParameterTable table = make_parameter_table(config_);
  params_ = std::move(table.params);
  param_init_ = std::move(table.init);
  param_offsets_ = std::move(table.offsets);
  parameters_.assign(table.arena_elements, T(0));
  if (!options_.inference_only) grads_.assign(table.arena_elements, T(0));
  if (options_.initialize_parameters) init_weights(options_.init_seed);
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

// ---- shared with the CUDA model: planning, batch preparation, losses --------------------------------

ModelOptions resolve_model_options(ModelOptions options, int64_t default_chunk_rows) {
  if (options.decoder_chunk_rows < 0)
    throw Error("ModelOptions: decoder_chunk_rows must be > 0 (or 0 for the model's default), not " +
                std::to_string(options.decoder_chunk_rows));
  if (options.decoder_chunk_rows == 0) options.decoder_chunk_rows = default_chunk_rows;
  return options;
}

BatchArenaPlan plan_batch_arenas(const BertConfig& config, const ModelOptions& options, int64_t capacity_batch,
                                 int64_t capacity_tokens) {
  if (options.decoder_chunk_rows <= 0) throw Error("ModelOptions: decoder_chunk_rows must be > 0");
  BatchArenaPlan plan;
  plan.capacity_batch = capacity_batch;
  plan.capacity_tokens = capacity_tokens;
  plan.mlm_chunk_rows = std::min(capacity_tokens, options.decoder_chunk_rows);
  plan.max_mlm_chunks = (capacity_tokens + options.decoder_chunk_rows - 1) / options.decoder_chunk_rows;
  const int64_t tokens = capacity_tokens, batch = capacity_batch;
  const int64_t hidden = config.hidden_size, intermediate = config.intermediate_size;
  const int64_t heads = config.num_attention_heads, vocab = config.vocab_size;

  ArenaCursor activations, workspace, statistics;
  // Forward only (ModelOptions::inference_only: no backward reads a layer's buffers once the next
  // layer has run): layer l's buffers and statistics are layer l - 2's, so that layer l's input
  // (layer l - 1's output) never shares memory with what layer l writes: 2 layers' worth instead of
  // num_hidden_layers' (BERT-base: ~100 instead of ~590 KB a token in fp32).
  const bool forward_only = options.inference_only;
  const size_t distinct_layers = forward_only ? std::min<size_t>(2, static_cast<size_t>(config.num_hidden_layers))
                                              : static_cast<size_t>(config.num_hidden_layers);

  // Activations. The MLM head's rows: at most one per token.
  plan.embeddings_output = activations.allocate(tokens * hidden);
  plan.layers.assign(static_cast<size_t>(config.num_hidden_layers), BertLayerActivationOffsets{});
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    BertLayerActivationOffsets& layer = plan.layers[l];
    if (l >= distinct_layers) {
      layer = plan.layers[l - distinct_layers];
      continue;
    }
    layer.qkv = activations.allocate(tokens * 3 * hidden);
    layer.context = activations.allocate(tokens * hidden);
    layer.attention_output = activations.allocate(tokens * hidden);
    layer.attention_layernorm = activations.allocate(tokens * hidden);
    layer.ffn_pre_activation = activations.allocate(tokens * intermediate);
    layer.ffn_activation = activations.allocate(tokens * intermediate);
    layer.ffn_output = activations.allocate(tokens * hidden);
    layer.layer_output = activations.allocate(tokens * hidden);
  }
  plan.pooled = activations.allocate(batch * hidden);
  plan.nsp_logits = activations.allocate(batch * 2);
  plan.mlm_input = activations.allocate(tokens * hidden);
  plan.mlm_transform_pre_activation = activations.allocate(tokens * hidden);
  plan.mlm_transform_activation = activations.allocate(tokens * hidden);
  plan.mlm_transform_output = activations.allocate(tokens * hidden);
  plan.activation_elements = activations.size();

  // Backward workspace (forward only: none; the gradient offsets stay 0, read by nothing).
  if (!forward_only) {
    plan.grad_hidden = workspace.allocate(tokens * hidden);
    plan.grad_residual = workspace.allocate(tokens * hidden);
    plan.grad_branch = workspace.allocate(tokens * hidden);
    plan.grad_context = workspace.allocate(tokens * hidden);
    plan.grad_ffn = workspace.allocate(tokens * intermediate);
    plan.grad_qkv = workspace.allocate(tokens * 3 * hidden);
    plan.grad_mlm_input = workspace.allocate(tokens * hidden);
    plan.grad_mlm_transform_output = workspace.allocate(tokens * hidden);
    plan.grad_mlm_transform_activation = workspace.allocate(tokens * hidden);
    plan.grad_pooled = workspace.allocate(batch * hidden);
  }
  plan.mlm_logits_stride = (vocab + 63) / 64 * 64;
  plan.mlm_logits = workspace.allocate(plan.mlm_chunk_rows * plan.mlm_logits_stride);
  plan.workspace_elements = workspace.size();

  // Statistics.
  plan.embeddings_mean = statistics.allocate(tokens);
  plan.embeddings_rstd = statistics.allocate(tokens);
  plan.layer_statistics.assign(static_cast<size_t>(config.num_hidden_layers), BertLayerStatisticOffsets{});
  for (size_t l = 0; l < plan.layer_statistics.size(); ++l) {
    BertLayerStatisticOffsets& layer = plan.layer_statistics[l];
    if (l >= distinct_layers) {
      layer = plan.layer_statistics[l - distinct_layers];
      continue;
    }
    layer.logsumexp = statistics.allocate(tokens * heads);
    layer.attention_layernorm_mean = statistics.allocate(tokens);
    layer.attention_layernorm_rstd = statistics.allocate(tokens);
    layer.output_layernorm_mean = statistics.allocate(tokens);
    layer.output_layernorm_rstd = statistics.allocate(tokens);
  }
  plan.mlm_layernorm_mean = statistics.allocate(tokens);
  plan.mlm_layernorm_rstd = statistics.allocate(tokens);
  plan.statistics_elements = statistics.size();
  return plan;
}

void prepare_batch(const BatchView& batch, const BertConfig& config, const ModelOptions& options, std::string_view who,
                   HostBatch& out) {
  auto require = [&](bool ok, const std::string& message) {
    if (!ok) throw Error(std::string(who) + ": " + message);
  };
  require(options.decoder_chunk_rows > 0,
          "ModelOptions::decoder_chunk_rows must be resolved (> 0), not " + std::to_string(options.decoder_chunk_rows));
  require(batch.batch > 0 && batch.seq_len > 0, "batch and seq_len must be > 0");
  require(batch.input_ids != nullptr, "input_ids is missing");
  require(batch.seq_len <= config.max_position_embeddings, "seq_len " + std::to_string(batch.seq_len) +
                                                               " exceeds max_position_embeddings " +
                                                               std::to_string(config.max_position_embeddings));
  const int64_t tokens = batch.tokens();
  // Ids index tables (on the GPU an out-of-range id is a fatal trap): refuse them here, on any device.
  for (int64_t t = 0; t < tokens; ++t) {
    require(batch.input_ids[t] >= 0 && batch.input_ids[t] < config.vocab_size,
            "input id " + std::to_string(batch.input_ids[t]) + " at position " + std::to_string(t) +
                " is outside the vocabulary [0, " + std::to_string(config.vocab_size) + ")");
    if (batch.token_type_ids != nullptr)
      require(batch.token_type_ids[t] >= 0 && batch.token_type_ids[t] < config.type_vocab_size,
              "token type id " + std::to_string(batch.token_type_ids[t]) + " at position " + std::to_string(t) +
                  " is outside [0, type_vocab_size " + std::to_string(config.type_vocab_size) + ")");
  }
  if (batch.masked_positions != nullptr) {
    require(batch.num_masked >= 0 && batch.num_masked <= tokens, "num_masked is out of range");
    for (int64_t i = 0; i < batch.num_masked; ++i) {
      const int64_t position = batch.masked_positions[i];
      require(position >= 0 && position < tokens,
              "masked position " + std::to_string(position) + " is outside [0, batch * seq_len)");
      require(i == 0 || position > batch.masked_positions[i - 1], "masked positions must be strictly ascending");
    }
    require(batch.masked_labels != nullptr || batch.labels != nullptr, "masked_positions need masked_labels or labels");
  }

  out.batch = batch.batch;
  out.seq_len = batch.seq_len;
  out.has_token_types = batch.token_type_ids != nullptr;
  out.has_attention_mask = batch.attention_mask != nullptr;
  out.has_nsp_labels = batch.nsp_labels != nullptr;
  out.nsp_counted = 0;
  if (out.has_nsp_labels)
    for (int64_t b = 0; b < batch.batch; ++b) {
      const int32_t label = batch.nsp_labels[b];
      require(label == ops::kIgnoreIndex || label == 0 || label == 1,
              "NSP label " + std::to_string(label) + " of sequence " + std::to_string(b) + " is not 0, 1 or -100");
      out.nsp_counted += label != ops::kIgnoreIndex;
    }

  // The MLM head's rows.
  std::vector<int32_t>& positions = out.mlm_positions;
  std::vector<int32_t>& labels = out.mlm_labels;
  positions.clear();
  labels.clear();
  const bool have_positions = batch.masked_positions != nullptr;
  auto label_at_position = [&](int64_t i) {
    return batch.masked_labels != nullptr ? batch.masked_labels[i] : batch.labels[batch.masked_positions[i]];
  };
  if (!have_positions && batch.labels == nullptr) {
    // no MLM targets
  } else if (!options.mlm_on_masked_positions_only) {  // dense head: every token, -100 where unlabelled
    for (int64_t t = 0; t < tokens; ++t) positions.push_back(static_cast<int32_t>(t));
    if (!have_positions) {
      labels.assign(batch.labels, batch.labels + tokens);
    } else {
      labels.assign(static_cast<size_t>(tokens), ops::kIgnoreIndex);
      for (int64_t i = 0; i < batch.num_masked; ++i)
        labels[static_cast<size_t>(batch.masked_positions[i])] = label_at_position(i);
    }
  } else if (have_positions) {
    for (int64_t i = 0; i < batch.num_masked; ++i) {
      positions.push_back(batch.masked_positions[i]);
      labels.push_back(label_at_position(i));
    }
  } else {
    for (int64_t t = 0; t < tokens; ++t)
      if (batch.labels[t] != ops::kIgnoreIndex) {
        positions.push_back(static_cast<int32_t>(t));
        labels.push_back(batch.labels[t]);
      }
  }
  for (size_t i = 0; i < labels.size(); ++i)
    require(labels[i] == ops::kIgnoreIndex || (labels[i] >= 0 && labels[i] < config.vocab_size),
            "MLM label " + std::to_string(labels[i]) + " at position " + std::to_string(positions[i]) +
                " is outside the vocabulary (and not -100)");
  out.mlm_counted = 0;
  out.mlm_chunk_counted.clear();
  const int64_t rows = out.mlm_rows();
  for (int64_t first = 0; first < rows; first += options.decoder_chunk_rows) {
    const int64_t chunk = std::min(options.decoder_chunk_rows, rows - first);
    int64_t counted = 0;
    for (int64_t r = first; r < first + chunk; ++r) counted += labels[static_cast<size_t>(r)] != ops::kIgnoreIndex;
    out.mlm_chunk_counted.push_back(counted);
    out.mlm_counted += counted;
  }
}

LossStats combine_loss_stats(std::span<const CrossEntropyTotals> mlm_chunks, const CrossEntropyTotals* nsp) {
  LossStats stats;
  double mlm_loss_sum = 0;
  for (const CrossEntropyTotals& chunk : mlm_chunks) {
    mlm_loss_sum += chunk.loss_sum;
    stats.mlm_count += chunk.num_counted;
    stats.mlm_correct += chunk.num_correct;
  }
  stats.mlm_loss = stats.mlm_count > 0 ? mlm_loss_sum / static_cast<double>(stats.mlm_count) : 0.0;
  if (nsp != nullptr) {
    stats.nsp_count = nsp->num_counted;
    stats.nsp_correct = nsp->num_correct;
    stats.nsp_loss = nsp->num_counted > 0 ? nsp->loss_sum / static_cast<double>(nsp->num_counted) : 0.0;
  }
  stats.loss = stats.mlm_loss + stats.nsp_loss;
  return stats;
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

// ---- the CPU backend of engine/bert_graph.h ----------------------------------------------------------

namespace {

// The bert::cpu ops with the model's Context bound; cross-entropy totals go to the model's slots.
template <class T>
class CpuGraphBackend {
 public:
  using Act = T;
  using Grad = T;
  using Stat = T;
  using Scalar = T;

  CpuGraphBackend(cpu::Context& ctx, std::span<CrossEntropyTotals> totals) : ctx_(ctx), totals_(totals) {}

  void linear_forward(const ops::LinearShape& shape, const T* x, const T* weight, const T* bias, T* y) {
    cpu::linear_forward<T>(ctx_, shape, x, weight, bias, y);
  }
  void linear_backward(const ops::LinearShape& shape, const T* dy, const T* x, const T* weight, T* dx, T* dweight,
                       T* dbias, ops::InputGrad dx_mode) {
    cpu::linear_backward<T>(ctx_, shape, dy, x, weight, dx, dweight, dbias, dx_mode);
  }
  void embeddings_layernorm_forward(const ops::EmbeddingShape& shape, const int32_t* input_ids,
                                    const int32_t* token_type_ids, const T* word, const T* position, const T* type,
                                    const T* gamma, const T* beta, T eps, T* out, T* mean, T* rstd) {
    cpu::embeddings_layernorm_forward<T>(ctx_, shape, input_ids, token_type_ids, word, position, type, gamma, beta, eps,
                                         out, mean, rstd);
  }
  void embeddings_layernorm_backward(const ops::EmbeddingShape& shape, const T* dout, const int32_t* input_ids,
                                     const int32_t* token_type_ids, const T* word, const T* position, const T* type,
                                     const T* gamma, const T* mean, const T* rstd, T* d_word, T* d_position, T* d_type,
                                     T* dgamma, T* dbeta) {
    cpu::embeddings_layernorm_backward<T>(ctx_, shape, dout, input_ids, token_type_ids, word, position, type, gamma,
                                          mean, rstd, d_word, d_position, d_type, dgamma, dbeta);
  }
  void layernorm_forward(const ops::MatrixShape& shape, const T* x, const T* gamma, const T* beta, T eps, T* y, T* mean,
                         T* rstd) {
    cpu::layernorm_forward<T>(ctx_, shape, x, gamma, beta, eps, y, mean, rstd);
  }
  void layernorm_backward(const ops::MatrixShape& shape, const T* dy, const T* x, const T* gamma, const T* mean,
                          const T* rstd, T* dx, T* dgamma, T* dbeta) {
    cpu::layernorm_backward<T>(ctx_, shape, dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
  }
  void residual_layernorm_forward(const ops::MatrixShape& shape, const T* x, const T* residual, const T* gamma,
                                  const T* beta, T eps, T* y, T* mean, T* rstd) {
    cpu::residual_layernorm_forward<T>(ctx_, shape, x, residual, gamma, beta, eps, y, mean, rstd);
  }
  // x <- dropout(x) in place, then y = LN(x + residual): the CUDA backend fuses the two.
  void dropout_residual_layernorm_forward(const ops::MatrixShape& shape, const ops::DropoutSpec& dropout, T* x,
                                          const T* residual, const T* gamma, const T* beta, T eps, T* y, T* mean,
                                          T* rstd) {
    cpu::dropout_forward<T>(ctx_, shape.rows * shape.cols, dropout, x, x);
    cpu::residual_layernorm_forward<T>(ctx_, shape, x, residual, gamma, beta, eps, y, mean, rstd);
  }
  void residual_layernorm_backward(const ops::MatrixShape& shape, const T* dy, const T* x, const T* residual,
                                   const T* gamma, const T* mean, const T* rstd, T* d_sum, T* dgamma, T* dbeta) {
    cpu::residual_layernorm_backward<T>(ctx_, shape, dy, x, residual, gamma, mean, rstd, d_sum, dgamma, dbeta);
  }
  // d_sum = the residual LayerNorm backward, then d_x = dropout_backward(d_sum): the CUDA backend fuses
  // the two.
  void residual_layernorm_dropout_backward(const ops::MatrixShape& shape, const ops::DropoutSpec& dropout, const T* dy,
                                           const T* x, const T* residual, const T* gamma, const T* mean, const T* rstd,
                                           T* d_sum, T* d_x, T* dgamma, T* dbeta) {
    cpu::residual_layernorm_backward<T>(ctx_, shape, dy, x, residual, gamma, mean, rstd, d_sum, dgamma, dbeta);
    cpu::dropout_backward<T>(ctx_, shape.rows * shape.cols, dropout, d_sum, d_x);
  }
  void bias_gelu_forward(ops::GeluKind kind, const ops::MatrixShape& shape, const T* x, const T* bias, T* y) {
    cpu::bias_gelu_forward<T>(ctx_, kind, shape, x, bias, y);
  }
  void bias_gelu_backward(ops::GeluKind kind, const ops::MatrixShape& shape, const T* dy, const T* x, const T* bias,
                          T* dx, T* dbias) {
    cpu::bias_gelu_backward<T>(ctx_, kind, shape, dy, x, bias, dx, dbias);
  }
  void attention_forward(const ops::AttentionShape& shape, const T* q, const T* k, const T* v,
                         const int32_t* attention_mask, const ops::DropoutSpec& dropout, T* context, T* logsumexp) {
    cpu::attention_forward<T>(ctx_, shape, q, k, v, attention_mask, dropout, context, logsumexp);
  }
  void attention_backward(const ops::AttentionShape& shape, const T* dcontext, const T* q, const T* k, const T* v,
                          const int32_t* attention_mask, const ops::DropoutSpec& dropout, const T* context,
                          const T* logsumexp, T* dq, T* dk, T* dv) {
    cpu::attention_backward<T>(ctx_, shape, dcontext, q, k, v, attention_mask, dropout, context, logsumexp, dq, dk, dv);
  }
  void dropout_forward(int64_t numel, const ops::DropoutSpec& dropout, const T* x, T* y) {
    cpu::dropout_forward<T>(ctx_, numel, dropout, x, y);
  }
  void dropout_backward(int64_t numel, const ops::DropoutSpec& dropout, const T* dy, T* dx) {
    cpu::dropout_backward<T>(ctx_, numel, dropout, dy, dx);
  }
  void pooler_forward(const ops::PoolerShape& shape, const T* encoder_out, const T* weight, const T* bias, T* pooled) {
    cpu::pooler_forward<T>(ctx_, shape, encoder_out, weight, bias, pooled);
  }
  void pooler_backward(const ops::PoolerShape& shape, const T* dpooled, const T* encoder_out, const T* weight,
                       const T* pooled, T* d_encoder_out, T* dweight, T* dbias) {
    cpu::pooler_backward<T>(ctx_, shape, dpooled, encoder_out, weight, pooled, d_encoder_out, dweight, dbias);
  }
  void gather_rows(int64_t num_rows, int64_t cols, const int32_t* rows, const T* src, T* dst) {
    cpu::gather_rows<T>(ctx_, num_rows, cols, rows, src, dst);
  }
  void scatter_add_rows(int64_t num_rows, int64_t cols, const int32_t* rows, const T* src, T* dst) {
    cpu::scatter_add_rows<T>(ctx_, num_rows, cols, rows, src, dst);
  }
  void softmax_cross_entropy(const ops::LogitsShape& shape, const T* logits, const int32_t* labels, T grad_scale,
                             T* dlogits, size_t slot) {
    const ops::CrossEntropyStats stats =
        cpu::softmax_cross_entropy<T>(ctx_, shape, logits, labels, grad_scale, dlogits);
    totals_[slot] =
        CrossEntropyTotals{stats.loss * static_cast<double>(stats.num_counted), stats.num_counted, stats.num_correct};
  }
  void fill_zero(T* values, int64_t count) { std::fill_n(values, count, T(0)); }
  void gradients_final(size_t) {}  // one process: nothing to sum while the backward runs

 private:
  cpu::Context& ctx_;
  std::span<CrossEntropyTotals> totals_;
};

}  // namespace

// ---- planning and running ----------------------------------------------------------------------------

template <class T>
void BertForPreTraining<T>::reserve(int64_t max_batch, int64_t max_seq_len) {
  if (max_batch <= 0 || max_seq_len <= 0)
    throw Error("BertForPreTraining::reserve: max_batch and max_seq_len must be > 0");
  if (max_seq_len > config_.max_position_embeddings)
    throw Error("BertForPreTraining: seq_len " + std::to_string(max_seq_len) + " exceeds max_position_embeddings " +
                std::to_string(config_.max_position_embeddings));
  const int64_t tokens = max_batch * max_seq_len;
  const BatchArenaPlan& current = arenas_.plan;
  if (max_batch <= current.capacity_batch && tokens <= current.capacity_tokens) return;
  BatchArenaPlan plan = plan_batch_arenas(config_, options_, std::max(max_batch, current.capacity_batch),
                                          std::max(tokens, current.capacity_tokens));
  // Replace rather than resize: nothing survives between steps, and this frees the old arenas first.
  arenas_ = Arenas{};
  arenas_.activations.assign(plan.activation_elements, T(0));
  arenas_.workspace.assign(plan.workspace_elements, T(0));
  arenas_.statistics.assign(plan.statistics_elements, T(0));
  loss_totals_.assign(static_cast<size_t>(plan.max_mlm_chunks) + 1, CrossEntropyTotals{});
  host_batch_.mlm_positions.reserve(static_cast<size_t>(plan.capacity_tokens));
  host_batch_.mlm_labels.reserve(static_cast<size_t>(plan.capacity_tokens));
  arenas_.plan = std::move(plan);
}

template <class T>
void BertForPreTraining<T>::set_dropout(uint64_t seed, uint64_t step, bool training) {
  dropout_seed_ = seed;
  dropout_step_ = step;
  dropout_training_ = training;
}

template <class T>
template <class Run>
void BertForPreTraining<T>::run_graph(const int32_t* input_ids, const int32_t* token_type_ids,
                                      const int32_t* attention_mask, const int32_t* nsp_labels, bool dropout_enabled,
                                      Run&& run) {
  CpuGraphBackend<T> backend(context_, loss_totals_);
  const GraphArenas<T, T, T> arenas{parameters_.data(), grads_.data(), arenas_.activations.data(),
                                    arenas_.workspace.data(), arenas_.statistics.data()};
  GraphInputs inputs;
  inputs.input_ids = input_ids;
  inputs.token_type_ids = token_type_ids;
  inputs.attention_mask = attention_mask;
  inputs.nsp_labels = nsp_labels;
  inputs.mlm_positions = host_batch_.mlm_positions.data();
  inputs.mlm_labels = host_batch_.mlm_labels.data();
  const GraphDropout dropout{dropout_seed_, dropout_step_, dropout_enabled};
  BertGraph<CpuGraphBackend<T>> graph(backend, config_, options_, param_offsets_, arenas_.plan, arenas, host_batch_,
                                      inputs, dropout);
  run(graph);
}

template <class T>
void BertForPreTraining<T>::forward_backward(const BatchView& batch, LossStats& stats, bool compute_grads,
                                             T loss_scale) {
  if (compute_grads && options_.inference_only)
    throw Error("BertForPreTraining::forward_backward: gradients of an inference-only model (ModelOptions)");
  prepare_batch(batch, config_, options_, "BertForPreTraining", host_batch_);
  reserve(batch.batch, batch.seq_len);
  std::fill(loss_totals_.begin(), loss_totals_.end(), CrossEntropyTotals{});
  run_graph(batch.input_ids, batch.token_type_ids, batch.attention_mask, batch.nsp_labels, dropout_training_,
            [&](auto& graph) { graph.forward_backward(loss_scale, compute_grads); });
  const size_t chunks = host_batch_.mlm_counted > 0 ? host_batch_.mlm_chunk_counted.size() : 0;
  stats = combine_loss_stats(std::span<const CrossEntropyTotals>(loss_totals_).first(chunks),
                             batch.nsp_labels != nullptr ? &loss_totals_.back() : nullptr);
}

// ---- inference -------------------------------------------------------------------------------------

template <class T>
void BertForPreTraining<T>::mlm_logits_at(const BatchView& batch, std::span<const int32_t> positions,
                                          std::span<T> logits) {
  BatchView view = batch;  // labels ignored: the rows are the caller's positions
  view.labels = nullptr;
  view.nsp_labels = nullptr;
  view.masked_positions = nullptr;
  view.masked_labels = nullptr;
  view.num_masked = 0;
  prepare_batch(view, config_, options_, "BertForPreTraining::mlm_logits_at", host_batch_);
  const int64_t rows = static_cast<int64_t>(positions.size());
  if (logits.size() != positions.size() * static_cast<size_t>(config_.vocab_size))
    throw Error("BertForPreTraining::mlm_logits_at: logits holds " + std::to_string(logits.size()) +
                " values, need positions * vocab_size = " +
                std::to_string(positions.size() * static_cast<size_t>(config_.vocab_size)));
  if (rows > batch.tokens())
    throw Error("BertForPreTraining::mlm_logits_at: " + std::to_string(rows) + " positions for a batch of only " +
                std::to_string(batch.tokens()) + " tokens");
  for (const int32_t position : positions)
    if (position < 0 || position >= batch.tokens())
      throw Error("BertForPreTraining::mlm_logits_at: position " + std::to_string(position) +
                  " is outside [0, batch * seq_len)");
  reserve(batch.batch, batch.seq_len);
  host_batch_.mlm_positions.assign(positions.begin(), positions.end());  // any order, repeats allowed
  host_batch_.mlm_labels.assign(positions.size(), ops::kIgnoreIndex);
  run_graph(view.input_ids, view.token_type_ids, view.attention_mask, nullptr, /*dropout_enabled=*/false,
            [&](auto& graph) {
              graph.forward_encoder();
              if (rows == 0) return;
              graph.mlm_transform_forward();
              graph.decoder_forward(0, rows, logits.data(), config_.vocab_size);
            });
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
void BertForPreTraining<T>::load_pretrained(const std::string& path, std::vector<std::string>& kept,
                                            int64_t grow_vocab_from) {
  if (!options_.initialize_parameters)
    throw Error(
        "BertForPreTraining::load_pretrained: the model was built with initialize_parameters = false, so "
        "the tensors " +
        path + " lacks would start at zero");
  ParameterTable table;
  table.params = params_;
  table.arena_elements = parameters_.size();
  if constexpr (std::is_same_v<T, float>) {
    parameters_ = read_pretrained_arena(path, config_, table, parameters_, kept, grow_vocab_from);
  } else {
    const std::vector<float> initial(parameters_.begin(), parameters_.end());
    const std::vector<float> loaded = read_pretrained_arena(path, config_, table, initial, kept, grow_vocab_from);
    parameters_.assign(loaded.begin(), loaded.end());
  }
}

template <class T>
void BertForPreTraining<T>::load_safetensors(const std::string& path, std::vector<std::string>* zero_filled) {
  ParameterTable table;  // read_parameter_arena needs the names, shapes, offsets and the arena size
  table.params = params_;
  table.arena_elements = parameters_.size();
  if constexpr (std::is_same_v<T, float>) {
    if (!options_.initialize_parameters) {  // in place: no second arena
      try {
        read_parameter_arena_into(path, config_, table, parameters_, zero_filled);
      } catch (...) {
        std::fill(parameters_.begin(), parameters_.end(), 0.0f);  // not half a checkpoint
        throw;
      }
      return;
    }
  }
  // The model changes only on success.
  std::vector<float> loaded = read_parameter_arena(path, config_, table, zero_filled);
  if constexpr (std::is_same_v<T, float>) {
    parameters_ = std::move(loaded);
  } else {
    parameters_.assign(loaded.begin(), loaded.end());
  }
}

template class BertForPreTraining<float>;
template class BertForPreTraining<double>;

}  // namespace bert
