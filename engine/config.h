// The run configuration of `bert_train --config run.toml`, and the model's HF config.json.
//
// Sections and keys are named exactly as Hugging Face names them, and every default equals HF's
// where HF has the key:
//   [model]     BertConfig fields (vocab_size = 0: take the tokenizer's vocabulary size)
//   [data]      tokenizer dir, shard dirs, DataCollatorForLanguageModeling's masking, loader options
//   [training]  TrainingArguments fields, plus device and threads
// Unknown sections/keys, wrong types and out-of-range values are bert::Errors "path:line: [section]
// key ...: what is wrong" (unknown names come with a "did you mean" suggestion).
//
// warmup: as in HF, warmup_steps > 0 wins over warmup_ratio; setting both is allowed but adds a line
// to RunConfig::warnings (HF logs the same warning). Relative paths are used as written (relative to
// the working directory, as with HF); a leading "~/" expands to $HOME.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"

namespace bert {

// The model's shape and regularisation: HF BertConfig's fields and defaults.
struct BertConfig {
  int vocab_size = 0;  // 0 (run config only) = the tokenizer's; HF's default is 30522
  int hidden_size = 768;
  int num_hidden_layers = 12;
  int num_attention_heads = 12;
  int intermediate_size = 3072;
  // "gelu" / "gelu_python" (exact erf) or "gelu_new" / "gelu_pytorch_tanh" (tanh approximation)
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  int max_position_embeddings = 512;
  int type_vocab_size = 2;
  double initializer_range = 0.02;
  double layer_norm_eps = 1e-12;
  int pad_token_id = 0;  // -1: none (config.json's null)

  int head_dim() const { return hidden_size / num_attention_heads; }

  // HF's config.json for BertForPreTraining (keys sorted as HF writes them). Throws when vocab_size
  // is still 0 (resolve it from the tokenizer first).
  Json to_hf_json() const;
  // Reads a config.json written by us or by transformers. A key left out takes HF's default (vocab_size
  // 30522, the rest as above), as from_pretrained does. Keys that change the maths in ways this
  // engine does not implement are refused by name (model_type other than "bert",
  // position_embedding_type other than "absolute", is_decoder, add_cross_attention, pruned_heads,
  // tie_word_embeddings = false); other extra HF keys are ignored. Validates like the run config;
  // errors name `path` and the key.
  static BertConfig from_hf_json(const Json& json, const std::string& path);
  static BertConfig load_hf_json(const std::string& path);
};

struct DataConfig {
  std::string tokenizer;   // tokenizer dir (vocab.txt + tokenizer_config.json); required
  std::string train_data;  // shard dir written by bert_prepare; required
  std::string valid_data;  // optional shard dir for evaluation ("" = none)
  double mlm_probability = 0.15;
  double mask_replace_prob = 0.8;         // of the selected tokens: -> [MASK]
  double random_replace_prob = 0.1;       // -> a random token; the rest stay unchanged
  bool whole_word_mask = false;           // select whole words (a token and its "##" pieces)
  bool fixed_mask_count = false;          // exactly round(p * n) tokens per sequence instead of Bernoulli(p)
  int max_seq_length = 0;                 // 0 = the shards' max length; else pad every batch to this length
  bool mlm_masked_positions_only = true;  // run the MLM head only on masked positions
  bool shuffle = true;                    // a new example order every epoch (seeded)
  int prefetch = 2;                       // batches prepared ahead by the loader thread (0 = none)
};

struct TrainingConfig {
  std::string output_dir;  // required
  bool overwrite_output_dir = false;
  double num_train_epochs = 3.0;
  int64_t max_steps = -1;  // > 0 overrides num_train_epochs
  int per_device_train_batch_size = 8;
  int per_device_eval_batch_size = 8;
  int gradient_accumulation_steps = 1;
  double learning_rate = 5e-5;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;  // 0 = no clipping
  int64_t warmup_steps = 0;    // > 0 wins over warmup_ratio
  double warmup_ratio = 0.0;
  std::string lr_scheduler_type = "linear";  // linear | cosine | constant | constant_with_warmup
  int64_t logging_steps = 500;
  int64_t eval_steps = 500;  // load_run_config: defaults to logging_steps
  int64_t save_steps = 500;
  int save_total_limit = 0;  // 0 = keep every checkpoint
  uint64_t seed = 42;
  std::string device = "cpu";  // cpu | cuda
  int threads = 0;             // 0 = all cores
  // Data parallel on GPUs: gradients are summed over the ranks in buckets of at least this many MiB
  // of finished gradients while the backward pass goes on (0: each layer's on its own). HF's name;
  // torch DDP's default size.
  int ddp_bucket_cap_mb = 25;
  // Data parallel: a rank that has waited this many seconds for the other ranks ends the job, in a
  // host collective (MPI) or, on GPUs, for its GPU's step (whose gradient sums wait for every rank; an
  // error NCCL reports ends it too). HF's name and default.
  int ddp_timeout = 1800;
  // device = "cuda": cuBLASLt algorithms timed per class of GEMM shapes in the first steps, the fastest kept
  // (kernels/cuda/ops_cuda.h, Context::set_gemm_autotune; PyTorch's TunableOp does the same). 0 (the
  // default): the library heuristic's first, the same every run, so a resumed run continues bit for
  // bit; with N >= 2 the choice follows the timings, and a resumed run may differ in the last bits.
  int gemm_autotune = 0;

  // HF's TrainingArguments.get_warmup_steps: warmup_steps if > 0, else ceil(total * warmup_ratio).
  int64_t warmup_steps_for(int64_t total_steps) const;
};

struct RunConfig {
  std::string path;  // the TOML file it came from
  BertConfig model;
  // [model] model_name_or_path (HF run_mlm.py's --model_name_or_path; a local directory only): train
  // on from that model's weights (model.safetensors of a BertForPreTraining, a BertForMaskedLM or a
  // BertModel, whose missing heads start fresh) instead of random ones, with a new optimizer and schedule.
  // Its config.json gives `model`; [model] keys written beside it must agree with it, except the
  // dropout probabilities and initializer_range (used for the fresh tensors), which override it.
  std::string model_name_or_path;
  // Parsed for a resume (load_run_config's `resuming`) while model_name_or_path's directory (or its
  // config.json) is gone: `model` is not merged with it; the trainer takes the checkpoint's shape.
  bool pretrained_config_missing = false;
  // [model] vocab_size written, and not 0 (0: the tokenizer's), beside model_name_or_path.
  bool pretrained_vocab_size_written = false;
  DataConfig data;
  TrainingConfig training;
  std::vector<std::string> warnings;  // valid but suspicious settings, "path:line: ..." each
  // Lines for messages: "section" is its [header]'s, "section.key" the key's, where written.
  std::map<std::string, size_t> lines;

  // "path:line: [section] key" for checks made after parsing: the key's line when written, else its
  // section's, else "path: [section] key".
  std::string where(std::string_view section, std::string_view key) const;
};

// `resuming`: a run that continues a checkpoint, whose weights and shape do not need
// [model] model_name_or_path's directory any more (RunConfig::pretrained_config_missing).
RunConfig load_run_config(const std::string& path, bool resuming = false);
// The same from text (`path` names it in messages).
RunConfig parse_run_config(std::string_view text, const std::string& path, bool resuming = false);

}  // namespace bert
