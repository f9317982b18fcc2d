// BertForPreTraining (engine/bert.*) on a tiny config (vocab 23, hidden 8, 2 layers, 2 heads,
// intermediate 12, 16 positions), batches of 7-token sequences with padding:
//  (a) whole-model gradients against 4-point central differences in double (~200 coordinates over
//      every tensor; also with dropout on, whose masks are a fixed function of (seed, step));
//  (b) the sparse MLM head (masked rows only, chunked decoder) == the dense head, loss and every grad;
//  (c) float forward == double forward to ~1e-5;
//  (d) gradient accumulation: two half batches (loss_scale 1/2 each) == the full batch;
//  (e) save -> load reproduces parameters and outputs bit for bit; the file holds HF's untied set;
//  (f) a missing tensor, a wrong shape or a foreign tensor is a clear bert::Error; old names load;
//  (g) dropout is reproducible per (seed, step) and differs across steps; eval mode has none.
#include <stdlib.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/error.h"
#include "data/rng.h"
#include "engine/bert.h"
#include "engine/safetensors.h"

namespace {

using bert::BatchView;
using bert::BertConfig;
using bert::LossStats;
using bert::ModelOptions;
using bert::ParamInfo;
template <class T>
using Model = bert::BertForPreTraining<T>;

constexpr int32_t kIgnore = -100;

BertConfig tiny_config() {
  BertConfig config;
  config.vocab_size = 23;
  config.hidden_size = 8;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.intermediate_size = 12;
  config.max_position_embeddings = 16;
  config.type_vocab_size = 2;
  config.hidden_dropout_prob = 0;
  config.attention_probs_dropout_prob = 0;
  config.pad_token_id = 0;
  return config;
}

double normal(bert::Rng& rng) {
  const double radius = std::sqrt(-2.0 * std::log(1.0 - rng.uniform()));
  return radius * std::cos(6.283185307179586 * rng.uniform());
}

// Padded, masked sequences shaped like data/loader.h's Batch.
struct TestBatch {
  int batch_size = 0, seq_len = 0;
  std::vector<int32_t> input_ids, token_type_ids, attention_mask, labels, nsp_labels, masked_positions, masked_labels;

  BatchView view() const { return bert::batch_view(*this); }
  // Without masked_positions/masked_labels: the model finds the labelled rows from labels.
  BatchView view_from_labels() const {
    BatchView v = view();
    v.masked_positions = v.masked_labels = nullptr;
    v.num_masked = 0;
    return v;
  }
  // Rows [first, first + count) as a batch of their own.
  TestBatch rows(int first, int count) const {
    TestBatch part;
    part.batch_size = count;
    part.seq_len = seq_len;
    const auto slice = [&](const std::vector<int32_t>& all, int width) {
      return std::vector<int32_t>(all.begin() + first * width, all.begin() + (first + count) * width);
    };
    part.input_ids = slice(input_ids, seq_len);
    part.token_type_ids = slice(token_type_ids, seq_len);
    part.attention_mask = slice(attention_mask, seq_len);
    part.labels = slice(labels, seq_len);
    part.nsp_labels = slice(nsp_labels, 1);
    for (size_t t = 0; t < part.labels.size(); ++t)
      if (part.labels[t] != kIgnore) {
        part.masked_positions.push_back(static_cast<int32_t>(t));
        part.masked_labels.push_back(part.labels[t]);
      }
    return part;
  }
};

// Row b has lengths[b] real tokens ([CLS] first, real ids never the pad id 0, segment B in the
// second half) then padding (id 0, mask 0); masks[b] labelled positions among its real tokens.
TestBatch make_batch(const std::vector<int>& lengths, const std::vector<int>& masks, int seq_len, uint64_t seed,
                     int vocab = 23) {
  bert::Rng rng(seed);
  TestBatch batch;
  batch.batch_size = static_cast<int>(lengths.size());
  batch.seq_len = seq_len;
  const size_t tokens = lengths.size() * static_cast<size_t>(seq_len);
  batch.input_ids.assign(tokens, 0);
  batch.token_type_ids.assign(tokens, 0);
  batch.attention_mask.assign(tokens, 0);
  batch.labels.assign(tokens, kIgnore);
  for (int b = 0; b < batch.batch_size; ++b) {
    const int length = lengths[static_cast<size_t>(b)];
    for (int t = 0; t < length; ++t) {
      const size_t index = static_cast<size_t>(b * seq_len + t);
      batch.input_ids[index] = t == 0 ? 1 : static_cast<int32_t>(rng.randint(1, vocab - 1));
      batch.token_type_ids[index] = t >= (length + 1) / 2 ? 1 : 0;
      batch.attention_mask[index] = 1;
    }
    std::vector<int> candidates;
    for (int t = 1; t < length; ++t) candidates.push_back(t);
    rng.shuffle(candidates.data(), candidates.size());
    for (int m = 0; m < masks[static_cast<size_t>(b)]; ++m) {
      const size_t index = static_cast<size_t>(b * seq_len + candidates[static_cast<size_t>(m)]);
      batch.labels[index] = static_cast<int32_t>(rng.randint(0, vocab - 1));
      batch.input_ids[index] = 3;  // the [MASK] id of this toy vocabulary
    }
    batch.nsp_labels.push_back(static_cast<int32_t>(rng.randint(0, 1)));
  }
  for (size_t t = 0; t < tokens; ++t)
    if (batch.labels[t] != kIgnore) {
      batch.masked_positions.push_back(static_cast<int32_t>(t));
      batch.masked_labels.push_back(batch.labels[t]);
    }
  return batch;
}

// The gradient-check batch: a full row and a mostly padded one.
TestBatch check_batch() { return make_batch({7, 2}, {3, 1}, 7, 11); }

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Far from HF's init (gamma 1, zero biases) so every term of every gradient is exercised.
template <class T>
void randomize(Model<T>& model, uint64_t seed) {
  bert::Rng rng(seed);
  for (const ParamInfo& info : model.params()) {
    const bool layernorm_weight = ends_with(info.name, "LayerNorm.weight");
    const bool bias = ends_with(info.name, "bias");
    for (T& value : model.parameter(info))
      value = static_cast<T>(layernorm_weight ? 1.0 + 0.2 * normal(rng) : (bias ? 0.2 : 0.5) * normal(rng));
  }
}

template <class To, class From>
void copy_parameters(const Model<From>& from, Model<To>& to) {
  REQUIRE(from.parameters().size() == to.parameters().size());
  std::transform(from.parameters().begin(), from.parameters().end(), to.parameters().begin(),
                 [](From value) { return static_cast<To>(value); });
}

template <class T>
LossStats run(Model<T>& model, const BatchView& batch, bool compute_grads, T loss_scale = T(1)) {
  LossStats stats;
  model.forward_backward(batch, stats, compute_grads, loss_scale);
  return stats;
}

template <class T>
std::vector<T> gradients_of(Model<T>& model, const BatchView& batch) {
  model.zero_grads();
  run(model, batch, true);
  return std::vector<T>(model.grads().begin(), model.grads().end());
}

double max_abs(const std::vector<double>& values) {
  double largest = 0;
  for (double value : values) largest = std::max(largest, std::abs(value));
  return largest;
}

// Whole-model gradient check: ~per_tensor coordinates of every tensor (plus the padding row of the
// word embeddings and unused position rows), 4-point central differences (O(h^4) truncation error).
void check_gradients(Model<double>& model, const BatchView& batch, int per_tensor, uint64_t seed) {
  const std::vector<double> analytic = gradients_of(model, batch);
  std::span<double> parameters = model.parameters();
  const auto loss_at = [&](size_t index, double value) {
    const double saved = parameters[index];
    parameters[index] = value;
    const double loss = run(model, batch, false).loss;
    parameters[index] = saved;
    return loss;
  };
  bert::Rng rng(seed);
  std::vector<std::pair<std::string, size_t>> coordinates;  // (tensor, element)
  for (const ParamInfo& info : model.params())
    for (int k = 0; k < per_tensor; ++k) coordinates.emplace_back(info.name, rng.below(info.numel));
  coordinates.emplace_back("bert.embeddings.word_embeddings.weight", 5);                // pad row 0
  coordinates.emplace_back("bert.embeddings.position_embeddings.weight", 7 * 8 + 3);    // unused row 7
  coordinates.emplace_back("bert.embeddings.token_type_embeddings.weight", 1 * 8 + 2);  // segment B

  // O(h^4) truncation: ~1e-6 relative at h = 1e-3 on this (deliberately curvy) point, ~1e-8 here,
  // while rounding stays ~1e-16 / h.
  const double step = 3e-4;
  int checked = 0, near_zero = 0;
  double worst_relative = 0;
  for (const auto& [name, element] : coordinates) {
    const size_t index = model.param_info(name).offset + element;
    const double x = parameters[index];
    const double numeric = (8 * (loss_at(index, x + step) - loss_at(index, x - step)) -
                            (loss_at(index, x + 2 * step) - loss_at(index, x - 2 * step))) /
                           (12 * step);
    const double exact = analytic[index];
    const double magnitude = std::abs(exact) + std::abs(numeric);
    INFO(name << "[" << element << "]: analytic " << exact << ", numeric " << numeric);
    if (magnitude < 1e-7) {  // near-zero gradients: absolute agreement
      CHECK(std::abs(exact - numeric) < 1e-10);
      ++near_zero;
    } else {
      const double relative = std::abs(exact - numeric) / std::max(magnitude, 1e-8);
      worst_relative = std::max(worst_relative, relative);
      CHECK(relative < 1e-6);
    }
    ++checked;
  }
  INFO("checked " << checked << " coordinates (" << near_zero << " near zero), worst relative error "
                  << worst_relative);
  CHECK(checked >= static_cast<int>(model.params().size()) * per_tensor);
  WARN("gradient check: " << checked << " coordinates, " << near_zero << " near zero, worst relative error "
                          << worst_relative);
}

// RAII temporary directory.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "bert_test_model_XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Every parameter of `model` through SafetensorsWriter, with per-name overrides of name or shape.
void write_params(const Model<float>& model, const std::string& path,
                  const std::map<std::string, std::string>& renamed = {}, const std::string& skipped = "",
                  const std::string& reshaped = "", const std::vector<std::string>& extra = {}) {
  bert::SafetensorsWriter writer;
  std::vector<float> spare(64, 0.5f);
  for (const ParamInfo& info : model.params()) {
    if (info.name == skipped) continue;
    const auto rename = renamed.find(info.name);
    const std::string name = rename != renamed.end() ? rename->second : info.name;
    std::span<const float> values = model.parameter(info);
    if (info.name == reshaped) {
      writer.add_f32(name, {static_cast<int64_t>(info.numel) - 1}, values.first(info.numel - 1));
    } else {
      writer.add_f32(name, info.shape, values);
    }
  }
  for (const std::string& name : extra) {
    if (name == "cls.predictions.decoder.weight") {
      const ParamInfo& word = model.param_info("bert.embeddings.word_embeddings.weight");
      writer.add_f32(name, word.shape, model.parameter(word));
    } else if (name == "cls.predictions.decoder.bias") {
      const ParamInfo& bias = model.param_info("cls.predictions.bias");
      writer.add_f32(name, bias.shape, model.parameter(bias));
    } else {
      writer.add_f32(name, {4}, std::span<const float>(spare).first(4));
    }
  }
  writer.write(path);
}

}  // namespace

TEST_CASE("parameter table: HF names and shapes and decay flags and initialisation", "[model]") {
  const BertConfig config = tiny_config();
  Model<double> model(config);
  const auto& params = model.params();
  // embeddings (5) + 16 per layer + pooler (2) + MLM head (5) + NSP (2)
  REQUIRE(params.size() == 5 + 16 * 2 + 2 + 5 + 2);
  CHECK(params.front().name == "bert.embeddings.word_embeddings.weight");
  CHECK(params[5].name == "bert.encoder.layer.0.attention.self.query.weight");
  CHECK(params[6].name == "bert.encoder.layer.0.attention.self.query.bias");
  CHECK(params[10].name == "bert.encoder.layer.0.attention.self.value.bias");
  CHECK(params.back().name == "cls.seq_relationship.bias");
  CHECK(model.param_info("cls.seq_relationship.weight").shape == std::vector<int64_t>{2, 8});
  CHECK(model.param_info("bert.encoder.layer.1.intermediate.dense.weight").shape == std::vector<int64_t>{12, 8});
  CHECK(model.param_info("bert.encoder.layer.1.output.dense.weight").shape == std::vector<int64_t>{8, 12});
  CHECK(model.param_info("cls.predictions.bias").shape == std::vector<int64_t>{23});
  CHECK_THROWS_AS(model.param_info("cls.predictions.decoder.weight"), bert::Error);

  // HF's count: embeddings + layers + pooler + MLM head (decoder tied) + NSP.
  const int64_t h = 8, i = 12, v = 23;
  const int64_t expected = (v + 16 + 2) * h + 2 * h +
                           2 * (4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h) + (h * h + h) + v +
                           (h * h + h) + 2 * h + (2 * h + 2);
  CHECK(model.num_parameters() == expected);

  // Q, K, V weights are one [3*hidden, hidden] block; tensors never overlap.
  const size_t query = model.param_info("bert.encoder.layer.0.attention.self.query.weight").offset;
  CHECK(model.param_info("bert.encoder.layer.0.attention.self.key.weight").offset == query + 64);
  CHECK(model.param_info("bert.encoder.layer.0.attention.self.value.weight").offset == query + 128);
  std::vector<std::pair<size_t, size_t>> ranges;
  for (const ParamInfo& info : params) ranges.emplace_back(info.offset, info.offset + info.numel);
  std::sort(ranges.begin(), ranges.end());
  for (size_t k = 1; k < ranges.size(); ++k) CHECK(ranges[k].first >= ranges[k - 1].second);
  CHECK(ranges.back().second <= model.parameters().size());

  for (const ParamInfo& info : params) {
    INFO(info.name);
    const bool no_decay = ends_with(info.name, "bias") || info.name.find("LayerNorm") != std::string::npos;
    CHECK(info.apply_weight_decay == !no_decay);
    const auto values = model.parameter(info);
    if (ends_with(info.name, "LayerNorm.weight")) {
      CHECK(std::all_of(values.begin(), values.end(), [](double x) { return x == 1.0; }));
    } else if (ends_with(info.name, "bias")) {
      CHECK(std::all_of(values.begin(), values.end(), [](double x) { return x == 0.0; }));
    } else {  // normal(0, 0.02)
      double sum_squares = 0;
      for (double x : values) sum_squares += x * x;
      const double stddev = std::sqrt(sum_squares / static_cast<double>(values.size()));
      CHECK(stddev > 0.01);
      CHECK(stddev < 0.03);
    }
  }
  const auto word = model.parameter(model.param_info("bert.embeddings.word_embeddings.weight"));
  CHECK(std::all_of(word.begin(), word.begin() + 8, [](double x) { return x == 0.0; }));  // pad row
  CHECK(word[8] != 0.0);

  // Deterministic in the seed, float == double (drawn in double).
  Model<float> same_seed(config);
  for (size_t k = 0; k < model.parameters().size(); ++k)
    REQUIRE(same_seed.parameters()[k] == static_cast<float>(model.parameters()[k]));
  ModelOptions other;
  other.init_seed = 43;
  Model<double> other_seed(config, other);
  CHECK(other_seed.parameters()[word.size() + 100] != model.parameters()[word.size() + 100]);
}

TEST_CASE("config validation names the field", "[model]") {
  BertConfig config = tiny_config();
  config.num_attention_heads = 3;
  CHECK_THROWS_WITH(Model<float>(config), Catch::Contains("num_attention_heads"));
  config = tiny_config();
  config.hidden_act = "relu";
  CHECK_THROWS_WITH(Model<float>(config), Catch::Contains("hidden_act"));
  config = tiny_config();
  ModelOptions negative;
  negative.decoder_chunk_rows = -1;
  CHECK_THROWS_WITH(Model<float>(config, negative), Catch::Contains("decoder_chunk_rows must be > 0"));
  Model<float> model(config);  // decoder_chunk_rows 0: the CPU's default
  CHECK(model.options().decoder_chunk_rows == bert::kCpuDecoderChunkRows);
  const TestBatch long_batch = make_batch({17}, {1}, 17, 1);
  LossStats stats;
  CHECK_THROWS_WITH(model.forward_backward(long_batch.view(), stats, false), Catch::Contains("max_position"));
}

TEST_CASE("batch validation (shared with the CUDA model) names the value and its position", "[model]") {
  const BertConfig config = tiny_config();
  Model<float> model(config);
  LossStats stats;
  const TestBatch good = check_batch();
  auto rejects = [&](const TestBatch& bad, const std::string& what) {
    CHECK_THROWS_WITH(model.forward_backward(bad.view(), stats, true),
                      Catch::Contains("BertForPreTraining: ") && Catch::Contains(what));
  };
  TestBatch bad = good;
  bad.input_ids[3] = 23;
  rejects(bad, "input id 23 at position 3 is outside the vocabulary [0, 23)");
  bad = good;
  bad.input_ids[9] = -1;
  rejects(bad, "input id -1 at position 9");
  bad = good;
  bad.token_type_ids[5] = 2;
  rejects(bad, "token type id 2 at position 5 is outside [0, type_vocab_size 2)");
  bad = good;
  bad.nsp_labels[1] = 2;
  rejects(bad, "NSP label 2 of sequence 1 is not 0, 1 or -100");
  bad = good;
  bad.masked_labels[0] = 99;
  rejects(bad, "MLM label 99 at position " + std::to_string(bad.masked_positions[0]) + " is outside the vocabulary");
  bad = good;
  std::swap(bad.masked_positions[0], bad.masked_positions[1]);
  rejects(bad, "strictly ascending");
  // A rejected batch leaves the model usable: the good one still runs, with the same loss as before.
  const LossStats first = run(model, good.view(), false);
  rejects(bad, "strictly ascending");
  CHECK(run(model, good.view(), false).loss == first.loss);
}

TEST_CASE("prepare_batch lists the MLM rows and their per-chunk counts for both heads", "[model]") {
  const BertConfig config = tiny_config();
  const TestBatch batch = check_batch();  // 2 x 7 tokens, 4 labelled
  ModelOptions options;
  options.decoder_chunk_rows = 3;
  bert::HostBatch host;
  for (const bool from_labels : {false, true}) {
    INFO("from labels: " << from_labels);
    bert::prepare_batch(from_labels ? batch.view_from_labels() : batch.view(), config, options, "test", host);
    CHECK(host.mlm_positions == batch.masked_positions);
    CHECK(host.mlm_labels == batch.masked_labels);
    CHECK(host.mlm_counted == 4);
    CHECK(host.mlm_chunk_counted == std::vector<int64_t>{3, 1});
    CHECK(host.nsp_counted == 2);
  }
  ModelOptions unresolved;  // decoder_chunk_rows 0: the models resolve it, prepare_batch refuses it
  CHECK_THROWS_WITH(bert::prepare_batch(batch.view(), config, unresolved, "test", host),
                    Catch::Contains("decoder_chunk_rows must be resolved"));
  options.mlm_on_masked_positions_only = false;  // dense: every token, -100 where unlabelled
  bert::prepare_batch(batch.view(), config, options, "test", host);
  REQUIRE(host.mlm_rows() == 14);
  CHECK(host.mlm_labels == batch.labels);
  CHECK(host.mlm_counted == 4);
  int64_t total = 0;
  for (const int64_t counted : host.mlm_chunk_counted) total += counted;
  CHECK(host.mlm_chunk_counted.size() == 5);
  CHECK(total == 4);
  // No labels at all: no rows; NSP ignored labels are not counted.
  TestBatch unlabelled = batch;
  unlabelled.labels.clear();
  unlabelled.masked_positions.clear();
  unlabelled.masked_labels.clear();
  unlabelled.nsp_labels[0] = kIgnore;
  bert::prepare_batch(unlabelled.view(), config, options, "test", host);
  CHECK(host.mlm_rows() == 0);
  CHECK(host.mlm_chunk_counted.empty());
  CHECK(host.nsp_counted == 1);
}

TEST_CASE("(a) whole-model gradients match finite differences (double)", "[model][gradcheck]") {
  const TestBatch batch = check_batch();
  SECTION("gelu (erf), sparse MLM head") {
    Model<double> model(tiny_config());
    randomize(model, 1);
    check_gradients(model, batch.view(), 4, 100);
  }
  SECTION("gelu_new (tanh), dense MLM head") {
    BertConfig config = tiny_config();
    config.hidden_act = "gelu_new";
    ModelOptions options;
    options.mlm_on_masked_positions_only = false;
    Model<double> model(config, options);
    randomize(model, 2);
    check_gradients(model, batch.view(), 1, 200);
  }
  SECTION("dropout on (fixed seed and step)") {
    BertConfig config = tiny_config();
    config.hidden_dropout_prob = 0.2;
    config.attention_probs_dropout_prob = 0.25;
    Model<double> model(config);
    randomize(model, 3);
    model.set_dropout(5, 9, true);
    check_gradients(model, batch.view(), 1, 300);
  }
}

TEST_CASE("(b) sparse MLM head == dense MLM head (loss and every grad)", "[model]") {
  const TestBatch batch = check_batch();
  Model<double> model(tiny_config());
  randomize(model, 4);

  model.set_mlm_on_masked_positions_only(false);
  const LossStats dense = run(model, batch.view(), false);
  const std::vector<double> dense_grads = gradients_of(model, batch.view());
  const double tolerance = 1e-12 * std::max(1.0, max_abs(dense_grads));

  model.set_mlm_on_masked_positions_only(true);
  for (const bool positions_given : {true, false}) {
    INFO("masked positions given: " << positions_given);
    const BatchView view = positions_given ? batch.view() : batch.view_from_labels();
    const LossStats sparse = run(model, view, false);
    CHECK(sparse.mlm_count == 4);
    CHECK(sparse.mlm_count == dense.mlm_count);
    CHECK(sparse.mlm_correct == dense.mlm_correct);
    CHECK(std::abs(sparse.mlm_loss - dense.mlm_loss) < 1e-12);
    CHECK(std::abs(sparse.loss - dense.loss) < 1e-12);
    const std::vector<double> sparse_grads = gradients_of(model, view);
    double worst = 0;
    for (size_t k = 0; k < dense_grads.size(); ++k) worst = std::max(worst, std::abs(sparse_grads[k] - dense_grads[k]));
    CHECK(worst <= tolerance);
  }

  // The dense head given only masked positions and their labels.
  model.set_mlm_on_masked_positions_only(false);
  BatchView positions_only = batch.view();
  positions_only.labels = nullptr;
  CHECK(std::abs(run(model, positions_only, false).loss - dense.loss) < 1e-12);
  model.set_mlm_on_masked_positions_only(true);

  // A decoder run in chunks of 3 rows (dense: 14 rows over 5 chunks, some with no label).
  for (const bool sparse_head : {true, false}) {
    ModelOptions options;
    options.decoder_chunk_rows = 3;
    options.mlm_on_masked_positions_only = sparse_head;
    Model<double> chunked(tiny_config(), options);
    copy_parameters(model, chunked);
    CHECK(std::abs(run(chunked, batch.view(), false).loss - dense.loss) < 1e-12);
    const std::vector<double> chunked_grads = gradients_of(chunked, batch.view());
    double worst = 0;
    for (size_t k = 0; k < dense_grads.size(); ++k)
      worst = std::max(worst, std::abs(chunked_grads[k] - dense_grads[k]));
    CHECK(worst <= tolerance);
  }
}

TEST_CASE("(c) float forward agrees with double", "[model]") {
  const TestBatch batch = make_batch({7, 4, 2}, {2, 2, 1}, 7, 21);
  Model<double> reference(tiny_config());
  randomize(reference, 5);
  Model<float> model(tiny_config());
  copy_parameters(reference, model);

  const LossStats exact = run(reference, batch.view(), false);
  const LossStats single = run(model, batch.view(), false);
  CHECK(single.mlm_count == exact.mlm_count);
  CHECK(std::abs(single.mlm_loss - exact.mlm_loss) < 1e-5 * std::max(1.0, exact.mlm_loss));
  CHECK(std::abs(single.nsp_loss - exact.nsp_loss) < 1e-5 * std::max(1.0, exact.nsp_loss));

  const std::vector<int32_t> positions = {0, 3, 6, 9, 20};
  std::vector<double> exact_logits(positions.size() * 23);
  std::vector<float> single_logits(positions.size() * 23);
  reference.mlm_logits_at(batch.view(), positions, exact_logits);
  model.mlm_logits_at(batch.view(), positions, single_logits);
  const double scale = std::max(1.0, max_abs(exact_logits));
  for (size_t k = 0; k < exact_logits.size(); ++k) CHECK(std::abs(single_logits[k] - exact_logits[k]) < 1e-5 * scale);

  // Gradients too, at float precision.
  const std::vector<double> exact_grads = gradients_of(reference, batch.view());
  const std::vector<float> single_grads = gradients_of(model, batch.view());
  const double grad_scale = std::max(1e-3, max_abs(exact_grads));
  for (size_t k = 0; k < exact_grads.size(); ++k) CHECK(std::abs(single_grads[k] - exact_grads[k]) < 1e-4 * grad_scale);
}

TEST_CASE("mlm_logits_at gives the logits behind the MLM loss", "[model]") {
  const TestBatch batch = check_batch();
  Model<double> model(tiny_config());
  randomize(model, 6);
  const LossStats stats = run(model, batch.view(), false);
  std::vector<double> logits(batch.masked_positions.size() * 23);
  model.mlm_logits_at(batch.view(), batch.masked_positions, logits);
  double loss = 0;
  for (size_t row = 0; row < batch.masked_positions.size(); ++row) {
    const double* z = logits.data() + row * 23;
    double largest = *std::max_element(z, z + 23), sum = 0;
    for (int c = 0; c < 23; ++c) sum += std::exp(z[c] - largest);
    loss += std::log(sum) + largest - z[batch.masked_labels[row]];
  }
  CHECK(std::abs(loss / static_cast<double>(batch.masked_positions.size()) - stats.mlm_loss) < 1e-12);
  std::vector<double> wrong_size(5);
  CHECK_THROWS_AS(model.mlm_logits_at(batch.view(), batch.masked_positions, wrong_size), bert::Error);
}

TEST_CASE("an inference-only model has no gradient arena and answers as the training model", "[model]") {
  const TestBatch batch = check_batch();
  Model<float> trained(tiny_config());
  randomize(trained, 8);
  bert::ModelOptions options;
  options.inference_only = true;
  Model<float> inference(tiny_config(), options);
  copy_parameters(trained, inference);
  CHECK(inference.grads().empty());
  CHECK(trained.grads().size() == trained.parameters().size());
  const LossStats a = run(trained, batch.view(), false), b = run(inference, batch.view(), false);
  CHECK(a.loss == b.loss);
  CHECK(a.mlm_correct == b.mlm_correct);
  std::vector<float> logits_a(batch.masked_positions.size() * 23), logits_b(logits_a.size());
  trained.mlm_logits_at(batch.view(), batch.masked_positions, logits_a);
  inference.mlm_logits_at(batch.view(), batch.masked_positions, logits_b);
  CHECK(logits_a == logits_b);
  LossStats stats;
  CHECK_THROWS_WITH(inference.forward_backward(batch.view(), stats, true),
                    Catch::Contains("gradients of an inference-only model"));

  // Forward only, layer l's buffers are layer l - 2's and there is no backward workspace: a deeper
  // model answers as its training twin, bit for bit, in a fraction of the activation memory.
  BertConfig deep = tiny_config();
  deep.num_hidden_layers = 5;
  Model<float> deep_trained(deep);
  randomize(deep_trained, 9);
  Model<float> deep_inference(deep, options);
  copy_parameters(deep_trained, deep_inference);
  const LossStats c = run(deep_trained, batch.view(), false), d = run(deep_inference, batch.view(), false);
  CHECK(c.loss == d.loss);
  CHECK(c.mlm_correct == d.mlm_correct);
  deep_trained.mlm_logits_at(batch.view(), batch.masked_positions, logits_a);
  deep_inference.mlm_logits_at(batch.view(), batch.masked_positions, logits_b);
  CHECK(logits_a == logits_b);
  CHECK(logits_a != std::vector<float>(logits_a.size(), 0.0f));
  const bert::BatchArenaPlan full = bert::plan_batch_arenas(deep, deep_trained.options(), 4, 64);
  const bert::BatchArenaPlan forward = bert::plan_batch_arenas(deep, deep_inference.options(), 4, 64);
  const size_t layer_elements = full.layers[1].qkv - full.layers[0].qkv;
  CHECK(layer_elements == 64 * size_t{8 * 8 + 2 * 12});  // [tokens, 8 hidden + 2 intermediate] a layer
  CHECK(full.activation_elements - forward.activation_elements == 3 * layer_elements);
  for (size_t l = 0; l < 5; ++l) {
    INFO("layer " << l);
    CHECK(forward.layers[l].qkv == forward.layers[l % 2].qkv);
    CHECK(forward.layers[l].layer_output == forward.layers[l % 2].layer_output);
    CHECK(forward.layer_statistics[l].logsumexp == forward.layer_statistics[l % 2].logsumexp);
  }
  CHECK(forward.layers[1].qkv != forward.layers[0].qkv);
  CHECK(forward.statistics_elements < full.statistics_elements);
  CHECK(forward.workspace_elements == static_cast<size_t>(forward.mlm_chunk_rows * forward.mlm_logits_stride));
  CHECK(forward.workspace_elements < full.workspace_elements);
}

TEST_CASE("(d) gradient accumulation: two half batches == one full batch", "[model]") {
  // Each half has 3 labelled tokens and 2 sequences, so the mean of the halves' means (HF's
  // per-micro-batch averaging with loss_scale 1/2) equals the full batch's mean.
  const TestBatch full = make_batch({7, 3, 7, 5}, {2, 1, 1, 2}, 7, 31);
  const TestBatch first = full.rows(0, 2), second = full.rows(2, 2);
  Model<double> model(tiny_config());
  randomize(model, 7);

  const std::vector<double> full_grads = gradients_of(model, full.view());
  const LossStats full_stats = run(model, full.view(), false);

  model.zero_grads();
  const LossStats first_stats = run(model, first.view(), true, 0.5);
  const LossStats second_stats = run(model, second.view(), true, 0.5);
  REQUIRE(first_stats.mlm_count == 3);
  REQUIRE(second_stats.mlm_count == 3);
  CHECK(std::abs((first_stats.loss + second_stats.loss) / 2 - full_stats.loss) < 1e-12);
  const std::vector<double> accumulated(model.grads().begin(), model.grads().end());
  const double tolerance = 1e-12 * std::max(1.0, max_abs(full_grads));
  for (size_t k = 0; k < full_grads.size(); ++k) CHECK(std::abs(accumulated[k] - full_grads[k]) <= tolerance);

  // Accumulation is plain addition in general (unequal counts: grads of the sum of the two means).
  const TestBatch uneven = full.rows(1, 1), other = full.rows(2, 2);
  const std::vector<double> uneven_grads = gradients_of(model, uneven.view());
  const std::vector<double> other_grads = gradients_of(model, other.view());
  model.zero_grads();
  run(model, uneven.view(), true);
  run(model, other.view(), true);
  for (size_t k = 0; k < full_grads.size(); ++k)
    CHECK(std::abs(model.grads()[k] - (uneven_grads[k] + other_grads[k])) <= tolerance);
}

TEST_CASE("(e) save -> load round trip is bit exact", "[model]") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const TestBatch batch = make_batch({7, 5}, {2, 2}, 7, 41);
  Model<float> saved(tiny_config());
  randomize(saved, 8);
  saved.save_safetensors(path);

  const bert::SafetensorsFile file(path);
  REQUIRE(file.tensors().size() == saved.params().size());
  for (size_t k = 0; k < saved.params().size(); ++k) {
    CHECK(file.tensors()[k].name == saved.params()[k].name);
    CHECK(file.tensors()[k].shape == saved.params()[k].shape);
    CHECK(file.tensors()[k].dtype == bert::Dtype::kF32);
  }
  CHECK_FALSE(file.contains("cls.predictions.decoder.weight"));
  REQUIRE(file.metadata_value("format") != nullptr);
  CHECK(*file.metadata_value("format") == "pt");

  ModelOptions options;
  options.init_seed = 99;
  Model<float> loaded(tiny_config(), options);
  loaded.load_safetensors(path);
  CHECK(std::equal(saved.parameters().begin(), saved.parameters().end(), loaded.parameters().begin()));
  const LossStats before = run(saved, batch.view(), false), after = run(loaded, batch.view(), false);
  CHECK(before.loss == after.loss);
  CHECK(before.mlm_loss == after.mlm_loss);
  CHECK(before.nsp_loss == after.nsp_loss);
  const std::vector<int32_t> positions = {1, 2, 8};
  std::vector<float> logits_before(3 * 23), logits_after(3 * 23);
  saved.mlm_logits_at(batch.view(), positions, logits_before);
  loaded.mlm_logits_at(batch.view(), positions, logits_after);
  CHECK(logits_before == logits_after);

  // A double model writes fp32: loading that into float reproduces the rounded values exactly.
  Model<double> wide(tiny_config());
  randomize(wide, 9);
  wide.save_safetensors(path);
  loaded.load_safetensors(path);
  for (size_t k = 0; k < wide.parameters().size(); ++k)
    REQUIRE(loaded.parameters()[k] == static_cast<float>(wide.parameters()[k]));

  // initialize_parameters = false (bert_infer, a resume): zeros until the load, then the file's values.
  options.initialize_parameters = false;
  Model<float> blank(tiny_config(), options);
  CHECK(std::all_of(blank.parameters().begin(), blank.parameters().end(), [](float v) { return v == 0.0f; }));
  const Model<float> drawn(tiny_config());  // (the default draws them)
  CHECK(std::any_of(drawn.parameters().begin(), drawn.parameters().end(), [](float v) { return v != 0.0f; }));
  std::vector<std::string> kept;
  CHECK_THROWS_WITH(blank.load_pretrained(path, kept), Catch::Contains("initialize_parameters = false"));
  saved.save_safetensors(path);
  blank.load_safetensors(path);
  CHECK(std::equal(saved.parameters().begin(), saved.parameters().end(), blank.parameters().begin()));

  // Such a model reads the file in place (no second arena): a tensor the file lacks (zero_filled) is
  // zeroed even where an earlier load wrote it, and a failed load leaves every parameter zero, not
  // part of a checkpoint.
  write_params(saved, path, {}, "bert.pooler.dense.weight");
  std::vector<std::string> zero_filled;
  blank.load_safetensors(path, &zero_filled);
  CHECK(zero_filled == std::vector<std::string>{"bert.pooler.dense.weight"});
  const auto all_zero = [](std::span<const float> values) {
    return std::all_of(values.begin(), values.end(), [](float v) { return v == 0.0f; });
  };
  for (const ParamInfo& info : blank.params()) {
    INFO(info.name);
    if (info.name == "bert.pooler.dense.weight") {
      CHECK(all_zero(blank.parameter(info)));
      CHECK_FALSE(all_zero(saved.parameter(info)));
    } else {
      CHECK(std::ranges::equal(blank.parameter(info), saved.parameter(info)));
    }
  }
  write_params(saved, path, {}, "", "cls.predictions.transform.dense.weight");  // read after most others
  CHECK_THROWS_WITH(blank.load_safetensors(path), Catch::Contains("expected shape [8, 8], got [63]"));
  CHECK(all_zero(blank.parameters()));
}

TEST_CASE("(f) loading a wrong checkpoint is a clear error and HF aliases load", "[model]") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  Model<float> source(tiny_config());
  randomize(source, 10);
  Model<float> target(tiny_config());
  const std::vector<float> untouched(target.parameters().begin(), target.parameters().end());
  const auto unchanged = [&] { return std::equal(untouched.begin(), untouched.end(), target.parameters().begin()); };

  write_params(source, path, {}, "bert.encoder.layer.1.attention.self.key.bias");
  CHECK_THROWS_WITH(target.load_safetensors(path),
                    Catch::Contains("'bert.encoder.layer.1.attention.self.key.bias'") && Catch::Contains("missing"));
  CHECK(unchanged());

  write_params(source, path, {}, "", "cls.predictions.transform.dense.weight");
  CHECK_THROWS_WITH(target.load_safetensors(path), Catch::Contains("'cls.predictions.transform.dense.weight'") &&
                                                       Catch::Contains("expected shape [8, 8], got [63]"));
  CHECK(unchanged());

  write_params(source, path, {}, "", "", {"bert.encoder.layer.2.output.dense.bias"});
  CHECK_THROWS_WITH(target.load_safetensors(path),
                    Catch::Contains("'bert.encoder.layer.2.output.dense.bias'") && Catch::Contains("unexpected"));
  CHECK(unchanged());

  Model<float> bigger_vocab_source([] {
    BertConfig config = tiny_config();
    config.vocab_size = 30;
    return config;
  }());
  bigger_vocab_source.save_safetensors(path);
  CHECK_THROWS_WITH(target.load_safetensors(path),
                    Catch::Contains("'bert.embeddings.word_embeddings.weight'") && Catch::Contains("[23, 8]"));

  // TF-era names (gamma/beta), the tied decoder aliases and the old position_ids buffer.
  std::map<std::string, std::string> renamed;
  for (const ParamInfo& info : source.params()) {
    if (ends_with(info.name, "LayerNorm.weight"))
      renamed[info.name] = info.name.substr(0, info.name.size() - 6) + "gamma";
    if (ends_with(info.name, "LayerNorm.bias")) renamed[info.name] = info.name.substr(0, info.name.size() - 4) + "beta";
  }
  write_params(source, path, renamed, "", "",
               {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "bert.embeddings.position_ids",
                "bert.embeddings.token_type_ids"});
  target.load_safetensors(path);
  CHECK(std::equal(source.parameters().begin(), source.parameters().end(), target.parameters().begin()));

  // A tensor no BERT has is not blamed on num_hidden_layers; a layer past the config's count is.
  write_params(source, path, {}, "", "", {"foo.bar"});
  CHECK_THROWS_WITH(target.load_safetensors(path),
                    Catch::Contains("'foo.bar'") &&
                        Catch::Contains("a tensor BertForPreTraining and BertForMaskedLM "
                                        "do not have") &&
                        !Catch::Contains("num_hidden_layers"));
  write_params(source, path, {}, "", "", {"bert.encoder.layer.7.output.dense.bias"});
  CHECK_THROWS_WITH(target.load_safetensors(path), Catch::Contains("check num_hidden_layers in config.json"));

  // Float64 tensors (a converter's, or torch's .double()) load rounded to fp32, as from_pretrained does.
  {
    bert::SafetensorsWriter writer;
    std::vector<std::vector<double>> wide;  // the writer holds spans until write()
    for (const ParamInfo& info : source.params()) {
      std::vector<double>& values = wide.emplace_back();
      for (const float v : source.parameter(info)) values.push_back(static_cast<double>(v) + 1e-12);
      writer.add_raw(info.name, bert::Dtype::kF64, info.shape, std::as_bytes(std::span<const double>(values)));
    }
    writer.write(path);
  }
  target.load_safetensors(path);
  CHECK(std::equal(source.parameters().begin(), source.parameters().end(), target.parameters().begin()));

  // A decoder matrix other than the word embeddings (an untied output layer) is refused, not replaced
  // by the word embeddings.
  {
    bert::SafetensorsWriter writer;
    for (const ParamInfo& info : source.params()) writer.add_f32(info.name, info.shape, source.parameter(info));
    const ParamInfo& word = source.param_info("bert.embeddings.word_embeddings.weight");
    std::vector<float> decoder(source.parameter(word).begin(), source.parameter(word).end());
    decoder[decoder.size() - 3] += 0.25f;
    writer.add_f32("cls.predictions.decoder.weight", word.shape, decoder);
    writer.write(path);
  }
  CHECK_THROWS_WITH(target.load_safetensors(path),
                    Catch::Contains("'cls.predictions.decoder.weight' differs from "
                                    "'bert.embeddings.word_embeddings.weight': an untied output layer"));

  // Likewise a decoder bias other than cls.predictions.bias (transformers would serve the decoder's).
  {
    bert::SafetensorsWriter writer;
    for (const ParamInfo& info : source.params()) writer.add_f32(info.name, info.shape, source.parameter(info));
    const ParamInfo& bias = source.param_info("cls.predictions.bias");
    std::vector<float> other(source.parameter(bias).begin(), source.parameter(bias).end());
    other[5] += 1.0f;
    writer.add_f32("cls.predictions.decoder.bias", bias.shape, other);
    writer.write(path);
  }
  CHECK_THROWS_WITH(target.load_safetensors(path),
                    Catch::Contains("'cls.predictions.decoder.bias' differs from 'cls.predictions.bias'"));
}

TEST_CASE("(g) dropout is a function of seed and step and eval mode has none", "[model]") {
  BertConfig config = tiny_config();
  config.hidden_dropout_prob = 0.1;
  config.attention_probs_dropout_prob = 0.1;
  const TestBatch batch = make_batch({7, 6, 7}, {2, 2, 3}, 7, 51);
  Model<float> model(config);
  randomize(model, 11);

  model.set_dropout(1234, 5, true);
  const LossStats first = run(model, batch.view(), false);
  const std::vector<float> first_grads = gradients_of(model, batch.view());
  const LossStats again = run(model, batch.view(), false);
  const std::vector<float> again_grads = gradients_of(model, batch.view());
  CHECK(first.loss == again.loss);
  CHECK(first_grads == again_grads);

  model.set_dropout(1234, 6, true);
  const LossStats next_step = run(model, batch.view(), false);
  CHECK(next_step.loss != first.loss);
  CHECK(gradients_of(model, batch.view()) != first_grads);
  model.set_dropout(1235, 5, true);
  CHECK(run(model, batch.view(), false).loss != first.loss);

  // Eval mode == a model without dropout; the fill-mask entry is always in eval mode.
  Model<float> no_dropout(tiny_config());
  copy_parameters(model, no_dropout);
  model.set_dropout(1234, 5, false);
  CHECK(run(model, batch.view(), false).loss == run(no_dropout, batch.view(), false).loss);
  CHECK(gradients_of(model, batch.view()) == gradients_of(no_dropout, batch.view()));
  model.set_dropout(1234, 5, true);
  std::vector<float> logits(23), reference(23);
  const std::vector<int32_t> position = {4};
  model.mlm_logits_at(batch.view(), position, logits);
  no_dropout.mlm_logits_at(batch.view(), position, reference);
  CHECK(logits == reference);
}

TEST_CASE("bigger batches re-plan and stats count what HF counts", "[model]") {
  Model<float> model(tiny_config());
  model.reserve(4, 7);
  const TestBatch small = make_batch({3, 2}, {1, 1}, 3, 61);
  const TestBatch big = make_batch({7, 7, 7, 7, 7}, {1, 1, 1, 1, 1}, 7, 62);
  const LossStats small_stats = run(model, small.view(), true);
  CHECK(small_stats.nsp_count == 2);
  CHECK(small_stats.mlm_count == 2);
  CHECK(std::abs(small_stats.loss - (small_stats.mlm_loss + small_stats.nsp_loss)) < 1e-6);
  const LossStats big_stats = run(model, big.view(), true);
  CHECK(big_stats.nsp_count == 5);
  CHECK(std::isfinite(big_stats.loss));
  // No labels at all: zero losses and counts, and a finite forward.
  BatchView unlabelled = big.view();
  unlabelled.labels = unlabelled.nsp_labels = unlabelled.masked_positions = unlabelled.masked_labels = nullptr;
  unlabelled.num_masked = 0;
  const LossStats none = run(model, unlabelled, true);
  CHECK(none.loss == 0);
  CHECK(none.mlm_count == 0);
  CHECK(none.nsp_count == 0);
  // FLOPs: 6 * (layer GEMM params) * tokens + 12 * L * S * hidden * tokens + head terms.
  const double h = 8, i = 12, layers = 2, v = 23, tokens = 5 * 7;
  const double expected = 6 * layers * (4 * h * h + 2 * h * i) * tokens + 12 * layers * 7 * h * tokens +
                          6 * (h * h + h * v) * 5 + 6 * (h * h + 2 * h) * 5;
  CHECK(model.training_flops(5, 7, 5) == Approx(expected).epsilon(1e-12));
}
