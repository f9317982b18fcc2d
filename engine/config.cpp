#include "engine/config.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <variant>

#include "common/error.h"
#include "common/file.h"
#include "engine/toml.h"

namespace bert {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string number_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// A closed/open numeric interval, with its wording for messages.
struct Range {
  double min = -kInf, max = kInf;
  bool min_open = false, max_open = false;

  bool contains(double v) const {
    if (!std::isfinite(v)) return false;
    if (min_open ? v <= min : v < min) return false;
    if (max_open ? v >= max : v > max) return false;
    return true;
  }
  std::string describe() const {
    if (std::isfinite(min) && std::isfinite(max))
      return "must be in " + std::string(min_open ? "(" : "[") + number_text(min) + ", " + number_text(max) +
             (max_open ? ")" : "]");
    if (std::isfinite(min)) return std::string("must be ") + (min_open ? "> " : ">= ") + number_text(min);
    if (std::isfinite(max)) return std::string("must be ") + (max_open ? "< " : "<= ") + number_text(max);
    return "must be finite";
  }
};

constexpr Range kAtLeast0{0, kInf};
constexpr Range kAtLeast1{1, kInf};
constexpr Range kPositive{0, kInf, true, false};
constexpr Range kProbability{0, 1};               // [0, 1]
constexpr Range kDropout{0, 1, false, true};      // [0, 1)
constexpr Range kNonZeroProb{0, 1, true, false};  // (0, 1]

// One key of a section: where it lives in the struct and what it accepts.
template <class S>
struct Field {
  using Member = std::variant<int S::*, int64_t S::*, uint64_t S::*, double S::*, bool S::*, std::string S::*>;
  Field(const char* name_, Member member_, Range range_ = Range(), std::vector<std::string> choices_ = {},
        bool is_path_ = false)
      : name(name_), member(member_), range(range_), choices(std::move(choices_)), is_path(is_path_) {}

  const char* name;
  Member member;
  Range range;
  std::vector<std::string> choices;  // allowed strings (empty = any)
  bool is_path;                      // "~/" expands to $HOME, trailing slashes go
};

// A value from TOML or JSON, reduced to what the fields need.
struct Value {
  enum class Kind { kString, kInteger, kFloat, kBool, kOther } kind = Kind::kOther;
  std::string string;
  int64_t integer = 0;
  double number = 0;  // integer or float
  bool boolean = false;
  std::string kind_name;  // "a string", ...
  std::string text;       // as written, for messages
};

Value from_toml(const TomlValue& v) {
  Value out;
  out.kind_name = std::string(v.kind_name());
  out.text = v.to_string();
  switch (v.kind) {
    case TomlValue::Kind::kString:
      out.kind = Value::Kind::kString;
      out.string = v.string;
      break;
    case TomlValue::Kind::kInteger:
      out.kind = Value::Kind::kInteger;
      out.integer = v.integer;
      out.number = static_cast<double>(v.integer);
      break;
    case TomlValue::Kind::kFloat:
      out.kind = Value::Kind::kFloat;
      out.number = v.floating;
      break;
    case TomlValue::Kind::kBool:
      out.kind = Value::Kind::kBool;
      out.boolean = v.boolean;
      break;
    case TomlValue::Kind::kArray:
      break;
  }
  return out;
}

Value from_json(const Json& v) {
  Value out;
  out.text = v.dump();
  if (v.is_string()) {
    out.kind = Value::Kind::kString;
    out.string = v.as_string();
    out.kind_name = "a string";
  } else if (v.is_bool()) {
    out.kind = Value::Kind::kBool;
    out.boolean = v.as_bool();
    out.kind_name = "a boolean";
  } else if (v.is_number()) {
    out.number = v.as_number();
    if (out.number == std::floor(out.number) && std::fabs(out.number) < 9.2e18) {
      out.kind = Value::Kind::kInteger;
      out.integer = static_cast<int64_t>(out.number);
      out.kind_name = "an integer";
    } else {
      out.kind = Value::Kind::kFloat;
      out.kind_name = "a float";
    }
  } else {
    out.kind_name = v.is_null() ? "null" : v.is_array() ? "an array" : "an object";
  }
  return out;
}

std::string expand_home(const std::string& path) {
  if (path == "~" || path.starts_with("~/")) {
    const char* home = std::getenv("HOME");
    if (home && *home) return std::string(home) + path.substr(1);
  }
  return path;
}

// Stores `value` into the field of `target`; `where` ("path:line: [section] key") prefixes errors.
template <class S>
void assign(const Field<S>& field, S& target, const Value& value, const std::string& where) {
  const std::string prefix = where + " = " + value.text + ": ";
  const auto integer = [&](int64_t lo, int64_t hi) -> int64_t {
    if (value.kind != Value::Kind::kInteger) throw Error(prefix + "expected an integer, got " + value.kind_name);
    if (!field.range.contains(value.number)) throw Error(prefix + field.range.describe());
    if (value.integer < lo || value.integer > hi)
      throw Error(prefix + "out of range (" +
                  (value.integer < lo ? "at least " + std::to_string(lo) : "at most " + std::to_string(hi)) + ")");
    return value.integer;
  };
  std::visit(
      [&](auto member) {
        using T = std::remove_reference_t<decltype(target.*member)>;
        if constexpr (std::is_same_v<T, int>) {
          target.*member = static_cast<int>(integer(INT_MIN, INT_MAX));
        } else if constexpr (std::is_same_v<T, int64_t>) {
          target.*member = integer(INT64_MIN, INT64_MAX);
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          target.*member = static_cast<uint64_t>(integer(0, INT64_MAX));
        } else if constexpr (std::is_same_v<T, double>) {
          if (value.kind != Value::Kind::kInteger && value.kind != Value::Kind::kFloat)
            throw Error(prefix + "expected a number, got " + value.kind_name);
          if (!std::isfinite(value.number)) throw Error(prefix + "must be finite");
          if (!field.range.contains(value.number)) throw Error(prefix + field.range.describe());
          target.*member = value.number;
        } else if constexpr (std::is_same_v<T, bool>) {
          if (value.kind != Value::Kind::kBool) throw Error(prefix + "expected true or false, got " + value.kind_name);
          target.*member = value.boolean;
        } else {
          if (value.kind != Value::Kind::kString) throw Error(prefix + "expected a string, got " + value.kind_name);
          if (!field.choices.empty()) {
            bool known = false;
            std::string list;
            for (const auto& c : field.choices) {
              known = known || c == value.string;
              list += (list.empty() ? "\"" : ", \"") + c + "\"";
            }
            if (!known) {
              const std::string guess = closest_match(value.string, field.choices);
              throw Error(prefix + "must be one of " + list +
                          (guess.empty() ? std::string() : "; did you mean \"" + guess + "\"?"));
            }
          }
          if (field.is_path && value.string.find('\0') != std::string::npos)
            throw Error(prefix + "a path cannot contain a NUL character");
          target.*member = field.is_path ? without_trailing_slashes(expand_home(value.string)) : value.string;
        }
      },
      field.member);
}

template <class S>
const Field<S>* find_field(const std::vector<Field<S>>& fields, std::string_view name) {
  for (const auto& f : fields)
    if (name == f.name) return &f;
  return nullptr;
}

template <class S>
std::vector<std::string> field_names(const std::vector<Field<S>>& fields) {
  std::vector<std::string> names;
  for (const auto& f : fields) names.emplace_back(f.name);
  return names;
}

const std::vector<Field<BertConfig>>& model_fields() {
  using C = BertConfig;
  static const std::vector<Field<C>> fields = {
      {"vocab_size", &C::vocab_size, kAtLeast0},
      {"hidden_size", &C::hidden_size, kAtLeast1},
      {"num_hidden_layers", &C::num_hidden_layers, kAtLeast1},
      {"num_attention_heads", &C::num_attention_heads, kAtLeast1},
      {"intermediate_size", &C::intermediate_size, kAtLeast1},
      {"hidden_act", &C::hidden_act, Range(), {"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_python"}},
      {"hidden_dropout_prob", &C::hidden_dropout_prob, kDropout},
      {"attention_probs_dropout_prob", &C::attention_probs_dropout_prob, kDropout},
      {"max_position_embeddings", &C::max_position_embeddings, kAtLeast1},
      {"type_vocab_size", &C::type_vocab_size, kAtLeast1},
      {"initializer_range", &C::initializer_range, kAtLeast0},
      {"layer_norm_eps", &C::layer_norm_eps, kPositive},
      {"pad_token_id", &C::pad_token_id, kAtLeast0},
  };
  return fields;
}

const std::vector<Field<DataConfig>>& data_fields() {
  using C = DataConfig;
  static const std::vector<Field<C>> fields = {
      {"tokenizer", &C::tokenizer, Range(), {}, true},
      {"train_data", &C::train_data, Range(), {}, true},
      {"valid_data", &C::valid_data, Range(), {}, true},
      {"mlm_probability", &C::mlm_probability, kNonZeroProb},
      {"mask_replace_prob", &C::mask_replace_prob, kProbability},
      {"random_replace_prob", &C::random_replace_prob, kProbability},
      {"whole_word_mask", &C::whole_word_mask},
      {"fixed_mask_count", &C::fixed_mask_count},
      {"max_seq_length", &C::max_seq_length, kAtLeast0},
      {"mlm_masked_positions_only", &C::mlm_masked_positions_only},
      {"shuffle", &C::shuffle},
      {"prefetch", &C::prefetch, Range{0, 1024}},
  };
  return fields;
}

const std::vector<Field<TrainingConfig>>& training_fields() {
  using C = TrainingConfig;
  static const std::vector<Field<C>> fields = {
      {"output_dir", &C::output_dir, Range(), {}, true},
      {"overwrite_output_dir", &C::overwrite_output_dir},
      {"num_train_epochs", &C::num_train_epochs, kPositive},
      {"max_steps", &C::max_steps, Range{-1, kInf}},
      {"per_device_train_batch_size", &C::per_device_train_batch_size, kAtLeast1},
      {"per_device_eval_batch_size", &C::per_device_eval_batch_size, kAtLeast1},
      {"gradient_accumulation_steps", &C::gradient_accumulation_steps, kAtLeast1},
      {"learning_rate", &C::learning_rate, kPositive},
      {"weight_decay", &C::weight_decay, kAtLeast0},
      {"adam_beta1", &C::adam_beta1, kDropout},
      {"adam_beta2", &C::adam_beta2, kDropout},
      {"adam_epsilon", &C::adam_epsilon, kPositive},
      {"max_grad_norm", &C::max_grad_norm, kAtLeast0},
      {"warmup_steps", &C::warmup_steps, kAtLeast0},
      {"warmup_ratio", &C::warmup_ratio, kProbability},
      {"lr_scheduler_type", &C::lr_scheduler_type, Range(), {"linear", "cosine", "constant", "constant_with_warmup"}},
      {"logging_steps", &C::logging_steps, kAtLeast1},
      {"eval_steps", &C::eval_steps, kAtLeast1},
      {"save_steps", &C::save_steps, kAtLeast1},
      {"save_total_limit", &C::save_total_limit, kAtLeast0},
      {"seed", &C::seed, kAtLeast0},
      {"device", &C::device, Range(), {"cpu", "cuda"}},
      {"threads", &C::threads, Range{0, 4096}},
      {"ddp_bucket_cap_mb", &C::ddp_bucket_cap_mb, Range{0, 65536}},
      {"ddp_timeout", &C::ddp_timeout, kAtLeast1},
      {"gemm_autotune", &C::gemm_autotune, Range{0, 32}},
  };
  return fields;
}

// Where a key is, for messages: "path:line: [section] key" (TOML) or "path: key" (JSON).
using Locate = std::function<std::string(std::string_view key)>;
// Whether the key was written in the file (a default is never "wrong" on its own).
using IsSet = std::function<bool(std::string_view key)>;

void check_model(const BertConfig& m, const Locate& where, const IsSet& is_set) {
  if (m.hidden_size % m.num_attention_heads != 0) {
    const char* key = is_set("num_attention_heads") || !is_set("hidden_size") ? "num_attention_heads" : "hidden_size";
    throw Error(where(key) + ": hidden_size " + std::to_string(m.hidden_size) +
                " is not divisible by num_attention_heads " + std::to_string(m.num_attention_heads) +
                " (each head gets hidden_size / num_attention_heads dims)");
  }
  if (m.vocab_size > 0 && m.pad_token_id >= m.vocab_size)
    throw Error(where("pad_token_id") + " = " + std::to_string(m.pad_token_id) + ": must be < vocab_size " +
                std::to_string(m.vocab_size));
}

}  // namespace

// ---- config.json --------------------------------------------------------------------------------

Json BertConfig::to_hf_json() const {
  if (vocab_size <= 0)
    throw Error("BertConfig::to_hf_json: vocab_size is " + std::to_string(vocab_size) +
                "; set it from the tokenizer before writing config.json");
  // Keys sorted, as transformers' to_json_string writes them.
  Json j = Json::object();
  j.set("architectures", Json(Json::Array{Json("BertForPreTraining")}));
  j.set("attention_probs_dropout_prob", attention_probs_dropout_prob);
  j.set("classifier_dropout", nullptr);
  j.set("hidden_act", hidden_act);
  j.set("hidden_dropout_prob", hidden_dropout_prob);
  j.set("hidden_size", hidden_size);
  j.set("initializer_range", initializer_range);
  j.set("intermediate_size", intermediate_size);
  j.set("layer_norm_eps", layer_norm_eps);
  j.set("max_position_embeddings", max_position_embeddings);
  j.set("model_type", "bert");
  j.set("num_attention_heads", num_attention_heads);
  j.set("num_hidden_layers", num_hidden_layers);
  if (pad_token_id >= 0)
    j.set("pad_token_id", pad_token_id);
  else
    j.set("pad_token_id", nullptr);
  j.set("position_embedding_type", "absolute");
  j.set("torch_dtype", "float32");
  j.set("transformers_version", "4.46.3");
  j.set("type_vocab_size", type_vocab_size);
  j.set("use_cache", true);
  j.set("vocab_size", vocab_size);
  return j;
}

BertConfig BertConfig::from_hf_json(const Json& json, const std::string& path) {
  if (!json.is_object()) throw Error(path + ": expected a JSON object (a BertConfig config.json)");
  const auto where = [&](std::string_view key) { return path + ": " + std::string(key); };
  if (const Json* type = json.find("model_type"); type && !(type->is_string() && type->as_string() == "bert"))
    throw Error(where("model_type") + " = " + type->dump() + ": expected \"bert\"");
  if (const Json* pos = json.find("position_embedding_type");
      pos && !(pos->is_string() && pos->as_string() == "absolute"))
    throw Error(where("position_embedding_type") + " = " + pos->dump() + ": only \"absolute\" is supported");
  // Fields that change the model's maths in ways this engine does not implement. HF's BertForMaskedLM
  // with is_decoder = true attends causally (it only logs a warning); served bidirectionally it would
  // give other numbers.
  if (const Json* decoder = json.find("is_decoder"); decoder && !(decoder->is_bool() && !decoder->as_bool()))
    throw Error(where("is_decoder") + " = " + decoder->dump() +
                ": only encoder models are supported (a decoder attends causally; BERT is bidirectional)");
  if (const Json* cross = json.find("add_cross_attention"); cross && !(cross->is_bool() && !cross->as_bool()))
    throw Error(where("add_cross_attention") + " = " + cross->dump() + ": cross-attention layers are not supported");
  if (const Json* pruned = json.find("pruned_heads");
      pruned && !pruned->is_null() && !(pruned->is_object() && pruned->as_object().empty()))
    throw Error(where("pruned_heads") + " = " + pruned->dump() +
                ": models with pruned attention heads are not supported (every layer needs all its heads)");
  // HF's default is true (BertForMaskedLM ties cls.predictions.decoder.weight to the word embeddings);
  // a model saved untied has its own output matrix, which this model has no place for.
  if (const Json* tie = json.find("tie_word_embeddings"); tie && !(tie->is_bool() && tie->as_bool()))
    throw Error(where("tie_word_embeddings") + " = " + tie->dump() +
                ": only tied output embeddings are supported (cls.predictions.decoder.weight = the word "
                "embeddings, as in BERT); this model has its own output layer");

  // A key left out takes HF BertConfig's default, as from_pretrained does (vocab_size 30522; the
  // rest are BertConfig's own defaults); the tensors' shapes then say whether that was right.
  BertConfig config;
  config.vocab_size = 30522;
  for (const auto& field : model_fields()) {
    const Json* value = json.find(field.name);
    if (!value) continue;
    // pad_token_id: null is HF's "no padding row" (nn.Embedding without padding_idx).
    if (std::string_view(field.name) == "pad_token_id" && value->is_null()) {
      config.pad_token_id = -1;
      continue;
    }
    assign(field, config, from_json(*value), where(field.name));
  }
  if (config.vocab_size < 1)
    throw Error(where("vocab_size") + " = " + std::to_string(config.vocab_size) + ": must be >= 1");
  check_model(config, where, [&](std::string_view key) { return json.find(key) != nullptr; });
  return config;
}

BertConfig BertConfig::load_hf_json(const std::string& path) {
  return from_hf_json(Json::parse(read_file(path), path), path);
}

int64_t TrainingConfig::warmup_steps_for(int64_t total_steps) const {
  if (warmup_steps > 0) return warmup_steps;
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * warmup_ratio));
}

// ---- run config ---------------------------------------------------------------------------------

namespace {

const std::vector<std::string>& section_names() {
  static const std::vector<std::string> names = {"model", "data", "training"};
  return names;
}

// [model]'s key outside BertConfig: the model directory a run starts from (RunConfig::model_name_or_path).
constexpr std::string_view kPretrainedKey = "model_name_or_path";

// The section whose schema has `key`, or "".
std::string section_of(std::string_view key) {
  if (find_field(model_fields(), key) || key == kPretrainedKey) return "model";
  if (find_field(data_fields(), key)) return "data";
  if (find_field(training_fields(), key)) return "training";
  return "";
}

// `extra`: the section's keys read elsewhere (skipped here, offered as spelling suggestions).
template <class S>
void read_section(const TomlTable& table, const std::vector<Field<S>>& fields, S& target, const std::string& path,
                  const std::vector<std::string>& extra = {}) {
  for (const auto& entry : table.entries) {
    if (std::find(extra.begin(), extra.end(), entry.key) != extra.end()) continue;
    const Field<S>* field = find_field(fields, entry.key);
    if (!field) {
      const std::string home = section_of(entry.key);
      if (!home.empty() && home != table.name)
        throw Error(
            located(path, entry.line, "key '" + entry.key + "' belongs in [" + home + "], not [" + table.name + "]"));
      std::vector<std::string> names = field_names(fields);
      names.insert(names.end(), extra.begin(), extra.end());
      const std::string guess = closest_match(entry.key, names);
      throw Error(located(path, entry.line,
                          "unknown key '" + entry.key + "' in [" + table.name + "]" +
                              (guess.empty() ? std::string() : "; did you mean '" + guess + "'?")));
    }
    assign(*field, target, from_toml(entry.value), located(path, entry.line, "[" + table.name + "] " + entry.key));
  }
}

// [model] model_name_or_path: DIR/config.json becomes config.model. [model] keys written beside it
// must agree with it (a pretrained model has its shape), except those that only change training or the
// tensors DIR lacks: the dropout probabilities and initializer_range, which override it (as
// from_pretrained(DIR, hidden_dropout_prob=...) does).
void apply_pretrained_config(RunConfig& config, const Locate& where, const IsSet& is_set) {
  const std::string& dir = config.model_name_or_path;
  const std::string key = where(kPretrainedKey) + " = \"" + dir + "\"";
  if (!is_directory(dir))
    throw Error(key +
                ": not a directory; name a local model directory (config.json, model.safetensors and its "
                "tokenizer files, as save_pretrained writes them): bert_train downloads nothing");
  const std::string json_path = dir + "/config.json";
  if (!file_exists(json_path)) throw Error(key + ": " + json_path + " not found (a model directory has one)");
  BertConfig pretrained = BertConfig::load_hf_json(json_path);
  const BertConfig& written = config.model;
  config.pretrained_vocab_size_written = is_set("vocab_size") && written.vocab_size != 0;
  for (const auto& field : model_fields()) {
    const std::string_view name = field.name;
    if (!is_set(name) || (name == "vocab_size" && written.vocab_size == 0)) continue;
    const bool overrides =
        name == "hidden_dropout_prob" || name == "attention_probs_dropout_prob" || name == "initializer_range";
    std::visit(
        [&](auto member) {
          if (overrides) {
            pretrained.*member = written.*member;
            return;
          }
          if (written.*member == pretrained.*member) return;
          const auto text = [](const auto& v) {
            using T = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<T, std::string>)
              return "\"" + v + "\"";
            else if constexpr (std::is_same_v<T, double>)
              return number_text(v);
            else if constexpr (std::is_same_v<T, bool>)
              return std::string(v ? "true" : "false");
            else
              return std::to_string(v);
          };
          const bool null_pad = name == "pad_token_id" && pretrained.pad_token_id < 0;
          throw Error(where(name) + " = " + text(written.*member) + " differs from " + json_path + "'s " +
                      (null_pad ? std::string("null") : text(pretrained.*member)) +
                      ": a model started from its weights has its shape; leave " + std::string(name) +
                      " out of [model]");
        },
        field.member);
  }
  config.model = pretrained;
}

}  // namespace

std::string RunConfig::where(std::string_view section, std::string_view key) const {
  const std::string name(section);
  auto it = lines.find(name + "." + std::string(key));
  if (it == lines.end()) it = lines.find(name);
  return located(path, it == lines.end() ? 0 : it->second, "[" + name + "] " + std::string(key));
}

RunConfig parse_run_config(std::string_view text, const std::string& path, bool resuming) {
  const TomlDocument doc = parse_toml(text, path);
  RunConfig config;
  config.path = path;

  for (const auto& table : doc.tables) {
    if (table.name.empty()) {
      for (const auto& entry : table.entries) {
        const std::string home = section_of(entry.key);
        throw Error(located(path, entry.line,
                            "key '" + entry.key + "' is outside any section" +
                                (home.empty() ? "; the sections are [model], [data] and [training]"
                                              : "; put it under [" + home + "]")));
      }
    } else if (table.name == "model") {
      read_section(table, model_fields(), config.model, path, {std::string(kPretrainedKey)});
      if (const TomlEntry* entry = table.find(kPretrainedKey)) {
        const Field<RunConfig> field(kPretrainedKey.data(), &RunConfig::model_name_or_path, Range(), {}, true);
        const std::string where = located(path, entry->line, "[model] " + entry->key);
        assign(field, config, from_toml(entry->value), where);
        if (config.model_name_or_path.empty())
          throw Error(where + " = \"\": name the model directory to start from, or leave the key out");
      }
    } else if (table.name == "data") {
      read_section(table, data_fields(), config.data, path);
    } else if (table.name == "training") {
      read_section(table, training_fields(), config.training, path);
    } else {
      const std::string guess = closest_match(table.name, section_names());
      throw Error(located(path, table.line,
                          "unknown section [" + table.name + "]" +
                              (guess.empty() ? "; the sections are [model], [data] and [training]"
                                             : "; did you mean [" + guess + "]?")));
    }
  }

  for (const TomlTable& table : doc.tables) {
    if (table.name.empty()) continue;
    config.lines[table.name] = table.line;
    for (const TomlEntry& entry : table.entries) config.lines[table.name + "." + entry.key] = entry.line;
  }

  // Locations for checks that involve defaults: the key's line when written, else its section's.
  const auto entry_of = [&](std::string_view section, std::string_view key) -> const TomlEntry* {
    const TomlTable* table = doc.find(section);
    return table ? table->find(key) : nullptr;
  };
  const auto locator = [&](std::string section) {
    return [&doc, &path, &entry_of, section](std::string_view key) {
      const TomlEntry* entry = entry_of(section, key);
      const TomlTable* table = doc.find(section);
      const size_t line = entry ? entry->line : table ? table->line : 0;
      return located(path, line, "[" + section + "] " + std::string(key));
    };
  };
  const auto is_set_in = [&](std::string section) {
    return [&entry_of, section](std::string_view key) { return entry_of(section, key) != nullptr; };
  };
  const Locate model_at = locator("model"), data_at = locator("data"), training_at = locator("training");
  const IsSet data_set = is_set_in("data"), training_set = is_set_in("training");

  if (!config.model_name_or_path.empty()) {
    if (resuming && !file_exists(config.model_name_or_path + "/config.json"))
      config.pretrained_config_missing = true;
    else
      apply_pretrained_config(config, model_at, is_set_in("model"));
  }
  check_model(config.model, model_at, is_set_in("model"));

  DataConfig& data = config.data;
  if (data.tokenizer.empty())
    throw Error(data_at("tokenizer") + " is required: the tokenizer dir (vocab.txt) from bert_tokenizer train");
  if (data.train_data.empty()) throw Error(data_at("train_data") + " is required: the shard dir from bert_prepare");
  if (data.mask_replace_prob + data.random_replace_prob > 1.0) {
    const char* key = data_set("random_replace_prob") ? "random_replace_prob" : "mask_replace_prob";
    throw Error(data_at(key) + ": mask_replace_prob + random_replace_prob = " +
                number_text(data.mask_replace_prob + data.random_replace_prob) + " must be <= 1");
  }
  if (data.max_seq_length > config.model.max_position_embeddings)
    throw Error(
        data_at("max_seq_length") + " = " + std::to_string(data.max_seq_length) +
        ": must be <= [model] max_position_embeddings " + std::to_string(config.model.max_position_embeddings) +
        (config.model_name_or_path.empty() ? std::string() : " (" + config.model_name_or_path + "/config.json's)"));

  TrainingConfig& training = config.training;
  if (training.output_dir.empty())
    throw Error(training_at("output_dir") + " is required: where checkpoints and metrics.jsonl go");
  if (training.max_steps == 0)
    throw Error(training_at("max_steps") + " = 0: must be -1 (train for num_train_epochs) or >= 1");
  if (!training_set("eval_steps")) training.eval_steps = training.logging_steps;
  if (training.warmup_steps > 0 && training.warmup_ratio > 0)
    config.warnings.push_back(training_at("warmup_ratio") +
                              ": both warmup_steps and warmup_ratio are set; warmup_steps " +
                              std::to_string(training.warmup_steps) + " wins (as in Hugging Face)");
  if (training.gemm_autotune > 1 && training.device != "cuda")
    config.warnings.push_back(training_at("gemm_autotune") + ": has no effect with device = \"" + training.device +
                              "\" (it tunes the cuBLASLt GEMMs of the CUDA backend)");
  return config;
}

RunConfig load_run_config(const std::string& path, bool resuming) {
  return parse_run_config(read_file(path), path, resuming);
}

}  // namespace bert
