// hf_parity_driver: our side of tests/conformance/test_hf_parity.py, which runs the same steps in
// transformers' BertForPreTraining and compares. Not a Catch test: a small CLI over engine/bert.h.
//
//   init    --config C --seed S --out W.safetensors                  our HF-style initial weights (fp32)
//   forward --weights W [--config C] --batch B.json --losses L.json  losses of one eval-mode forward
//   grads   --weights W [--config C] --batch B.json --losses L.json --out G.safetensors
//           gradient of `loss` (mlm + nsp) for every parameter under its HF name
//   train   --weights W [--config C] --batches B1.json B2.json ... --steps N --lr X
//           [--weight-decay D] [--max-grad-norm M] --out F.safetensors [--losses L.json]
//           N AdamW steps (torch.optim.AdamW: betas 0.9/0.999, eps 1e-8; decay only where params()
//           says so, as HF's Trainer groups them; M > 0 clips like clip_grad_norm_), batch i % count
//
// --precision double|float (default double) picks BertForPreTraining<double> or <float>; tensors written
// by grads/train are F64 or F32 to match. --config defaults to config.json next to the weights.
// Batch JSON: {"input_ids": [[..]], "token_type_ids": [[..]], "attention_mask": [[..]],
//              "labels": [[..]] (-100 = ignore), "next_sentence_label": [..]}. Dropout is off throughout.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "common/args.h"
#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "engine/bert.h"
#include "engine/config.h"
#include "engine/safetensors.h"

namespace {

using bert::Error;
using bert::Json;

struct BatchArrays {
  std::string path;
  int64_t batch = 0, seq_len = 0;
  std::vector<int32_t> input_ids, token_type_ids, attention_mask, labels, nsp_labels;

  bert::BatchView view() const {
    bert::BatchView v;
    v.batch = batch;
    v.seq_len = seq_len;
    v.input_ids = input_ids.data();
    v.token_type_ids = token_type_ids.empty() ? nullptr : token_type_ids.data();
    v.attention_mask = attention_mask.empty() ? nullptr : attention_mask.data();
    v.labels = labels.empty() ? nullptr : labels.data();
    v.nsp_labels = nsp_labels.empty() ? nullptr : nsp_labels.data();
    return v;
  }
};

std::vector<int32_t> read_matrix(const Json& root, const char* key, const std::string& path, int64_t& rows,
                                 int64_t& cols, bool required) {
  const Json* value = root.find(key);
  if (!value || value->is_null()) {
    if (required) throw Error(path + ": '" + key + "' is missing");
    return {};
  }
  if (!value->is_array() || value->as_array().empty())
    throw Error(path + ": '" + key + "' must be a non-empty [batch, seq_len] array");
  std::vector<int32_t> flat;
  const int64_t row_count = static_cast<int64_t>(value->as_array().size());
  int64_t col_count = -1;
  for (const Json& row : value->as_array()) {
    if (!row.is_array()) throw Error(path + ": '" + key + "' must be an array of arrays");
    if (col_count < 0) col_count = static_cast<int64_t>(row.as_array().size());
    if (static_cast<int64_t>(row.as_array().size()) != col_count)
      throw Error(path + ": '" + key + "' rows differ in length");
    for (const Json& x : row.as_array()) flat.push_back(static_cast<int32_t>(x.as_int()));
  }
  if (rows == 0) {
    rows = row_count;
    cols = col_count;
  } else if (rows != row_count || cols != col_count) {
    throw Error(path + ": '" + key + "' is not shaped like input_ids");
  }
  return flat;
}

BatchArrays load_batch(const std::string& path) {
  const Json root = Json::parse(bert::read_file(path), path);
  BatchArrays b;
  b.path = path;
  b.input_ids = read_matrix(root, "input_ids", path, b.batch, b.seq_len, true);
  b.token_type_ids = read_matrix(root, "token_type_ids", path, b.batch, b.seq_len, false);
  b.attention_mask = read_matrix(root, "attention_mask", path, b.batch, b.seq_len, false);
  b.labels = read_matrix(root, "labels", path, b.batch, b.seq_len, false);
  if (const Json* nsp = root.find("next_sentence_label"); nsp && !nsp->is_null()) {
    for (const Json& x : nsp->as_array()) b.nsp_labels.push_back(static_cast<int32_t>(x.as_int()));
    if (static_cast<int64_t>(b.nsp_labels.size()) != b.batch)
      throw Error(path + ": next_sentence_label needs one per row");
  }
  return b;
}

std::string number(double value) {
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.17g", value);
  return buffer;
}

std::string losses_object(const bert::LossStats& stats) {
  return "{\"loss\": " + number(stats.loss) + ", \"mlm_loss\": " + number(stats.mlm_loss) +
         ", \"nsp_loss\": " + number(stats.nsp_loss) + ", \"mlm_count\": " + std::to_string(stats.mlm_count) +
         ", \"nsp_count\": " + std::to_string(stats.nsp_count) + "}";
}

// Every parameter (or gradient) tensor under its HF name, F64 for double models and F32 for float.
template <class T>
void write_tensors(const bert::BertForPreTraining<T>& model, bool gradients, const std::string& path) {
  bert::SafetensorsWriter writer;
  for (const bert::ParamInfo& info : model.params()) {
    const std::span<const T> values = gradients ? model.grad(info) : model.parameter(info);
    writer.add_raw(info.name, std::is_same_v<T, double> ? bert::Dtype::kF64 : bert::Dtype::kF32, info.shape,
                   std::as_bytes(values));
  }
  writer.write(path);
}

template <class T>
int run(const std::string& command, const bert::Args& args) {
  const std::string weights = args.str("--weights");
  const std::string config_path =
      args.maybe("--config").value_or((std::filesystem::path(weights).parent_path() / "config.json").string());
  bert::BertForPreTraining<T> model(bert::BertConfig::load_hf_json(config_path));
  model.load_safetensors(weights);
  model.set_dropout(0, 0, /*training=*/false);
  bert::LossStats stats;

  if (command == "forward" || command == "grads") {
    const BatchArrays batch = load_batch(args.str("--batch"));
    model.zero_grads();
    model.forward_backward(batch.view(), stats, /*compute_grads=*/command == "grads");
    bert::write_file_atomic(args.str("--losses"), losses_object(stats) + "\n");
    if (command == "grads") write_tensors(model, /*gradients=*/true, args.str("--out"));
    return 0;
  }

  // train
  std::vector<BatchArrays> batches;
  for (const std::string& path : args.values("--batches")) batches.push_back(load_batch(path));
  if (batches.empty()) throw Error("train: --batches needs at least one batch file");
  const int64_t steps = args.integer("--steps", 1, 1000000);
  const double max_grad_norm = args.number("--max-grad-norm");
  bert::ops::AdamWHyperparams hyper;
  hyper.learning_rate = args.number("--lr");
  hyper.weight_decay = args.number("--weight-decay");
  hyper.beta1 = 0.9;
  hyper.beta2 = 0.999;
  hyper.epsilon = 1e-8;
  std::vector<T> exp_avg(model.parameters().size(), T(0)), exp_avg_sq(model.parameters().size(), T(0));
  bert::cpu::Context context;
  std::string log = "{\"steps\": [";
  for (int64_t step = 1; step <= steps; ++step) {
    const BatchArrays& batch = batches[static_cast<size_t>(step - 1) % batches.size()];
    model.zero_grads();
    model.forward_backward(batch.view(), stats, /*compute_grads=*/true);
    std::vector<bert::cpu::GradView<T>> grad_views;
    std::vector<bert::cpu::AdamWTensor<T>> tensors;
    for (const bert::ParamInfo& info : model.params()) {
      const int64_t numel = static_cast<int64_t>(info.numel);
      grad_views.push_back({model.grad(info).data(), numel});
      tensors.push_back({model.parameter(info).data(), model.grad(info).data(), exp_avg.data() + info.offset,
                         exp_avg_sq.data() + info.offset, numel, info.apply_weight_decay});
    }
    const double norm = bert::cpu::grad_norm<T>(context, grad_views);
    hyper.grad_scale = max_grad_norm > 0 ? bert::ops::clip_grad_coefficient(norm, max_grad_norm) : 1.0;
    hyper.step = step;
    bert::cpu::adamw_step<T>(context, hyper, tensors);
    std::string entry = losses_object(stats);
    entry.insert(entry.size() - 1, ", \"grad_norm\": " + number(norm));
    log += (step > 1 ? ", " : "") + entry;
  }
  log += "]}\n";
  if (args.has("--losses")) bert::write_file_atomic(args.str("--losses"), log);
  write_tensors(model, /*gradients=*/false, args.str("--out"));
  return 0;
}

int driver_main(const std::vector<std::string>& argv) {
  const std::string usage = "hf_parity_driver init|forward|grads|train [options] (see the top of hf_parity_driver.cpp)";
  if (argv.empty()) throw Error("usage: " + usage);
  const std::string command = argv[0];
  bert::Args args("hf_parity_driver " + command, usage);
  args.option("--config", "config.json (default: next to --weights)")
      .option("--weights", "model.safetensors to start from")
      .option("--seed", "init: weight seed", "42")
      .option("--out", "output safetensors")
      .option("--batch", "batch JSON")
      .list("--batches", "train: batch JSONs, used in turn")
      .option("--losses", "output losses JSON")
      .option("--precision", "double | float", "double")
      .option("--steps", "train: optimizer steps", "3")
      .option("--lr", "train: learning rate", "1e-3")
      .option("--weight-decay", "train: AdamW weight decay (decayed tensors only)", "0.01")
      .option("--max-grad-norm", "train: clip the global gradient norm (0 = no clipping)", "0");
  if (!args.parse(std::vector<std::string>(argv.begin() + 1, argv.end()))) {
    std::cout << args.help();
    return 0;
  }
  if (command == "init") {
    bert::ModelOptions options;
    options.init_seed = static_cast<uint64_t>(args.integer("--seed", 0));
    bert::BertForPreTraining<double> model(bert::BertConfig::load_hf_json(args.str("--config")), options);
    model.save_safetensors(args.str("--out"));
    return 0;
  }
  if (command != "forward" && command != "grads" && command != "train")
    throw Error("unknown command '" + command + "' (expected init, forward, grads or train)");
  const std::string precision = args.str("--precision");
  if (precision == "double") return run<double>(command, args);
  if (precision == "float") return run<float>(command, args);
  throw Error("--precision must be double or float, got '" + precision + "'");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return driver_main(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
