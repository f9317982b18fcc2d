// BERT for pre-training: Hugging Face `BertForPreTraining` on the CPU (bert::cpu ops, T = float for
// training, double for gradient checks). The forward and manual backward are written once, in
// engine/bert_graph.h, against the op set of kernels/ops.h; this model and the CUDA one
// (engine/bert_cuda.h) both run that sequence. What both share is declared here too: the parameter
// table, the batch-arena plan, batch validation, dropout sites and loss bookkeeping.
//
//   input_ids, token_type_ids, attention_mask [B, S]
//   -> embeddings: LN(word + token_type + position) -> dropout                        [B*S, hidden]
//   -> L post-LN layers: x = LN(x + dropout(dense(attention(QKV(x)))))                 (attention dropout)
//                        x = LN(x + dropout(dense(gelu(dense(x)))))
//   -> MLM head on the labelled rows: LN(gelu(dense(x))) @ word_embeddings^T + cls.predictions.bias
//   -> NSP head: linear(tanh(dense(x[CLS])), 2)
//   loss = CE(MLM logits, labels; ignore -100; mean) + CE(NSP logits, nsp_labels; mean)
//
// Memory: one arena each for parameters, gradients (same layout), activations saved for backward,
// backward workspace and statistics (LayerNorm mean/rstd, attention logsumexp), planned once for a maximum (batch,
// seq_len) by reserve(); a step allocates nothing. Parameters are listed in HF order under HF names (params()); Q/K/V
// keep HF's separate [hidden, hidden] tensors but sit next to each other in the arena, so each layer runs them as one
// [3*hidden, hidden] GEMM. Saved per token per layer: 8*hidden + 2*intermediate values
// (BERT-base: 48 KB fp32, so 4096 tokens x 12 layers = 2.4 GB).
//
// Napkin math per training step (forward + backward = 3x forward FLOPs), tokens = B*S:
//   encoder GEMMs   6 * N_layers * tokens,  N_layers = L * (4*hidden^2 + 2*hidden*intermediate)
//   attention       12 * L * S * hidden * tokens          (QK^T and PV, forward 4*S*hidden per token)
//   MLM head        6 * (hidden^2 + hidden*vocab) * mlm_rows   (mlm_rows = masked tokens, or all tokens)
//   BERT-base, B = 32, S = 128 (4096 tokens), 15% masked (614 rows):
//     encoder 6 * 84.9M * 4096 = 2.09 TFLOP, attention 0.06 TFLOP, MLM head 0.09 TFLOP (dense: 0.59)
//   = 2.24 TFLOP per step; running the head on the masked rows only saves ~18% of the step.
//   training_flops() gives the same numbers for MFU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/config.h"
#include "kernels/cpu/ops_cpu.h"

namespace bert {

// One (micro-)batch, as pointers into the caller's int32 arrays. Only input_ids is required.
struct BatchView {
  int64_t batch = 0;
  int64_t seq_len = 0;
  const int32_t* input_ids = nullptr;       // [batch, seq_len]
  const int32_t* token_type_ids = nullptr;  // [batch, seq_len]; nullptr = all segment 0
  const int32_t* attention_mask = nullptr;  // [batch, seq_len]; nonzero = real token; nullptr = no padding
  const int32_t* labels = nullptr;          // [batch, seq_len] MLM targets, -100 = ignore; nullptr = none
  const int32_t* nsp_labels = nullptr;      // [batch], 0 = IsNext, 1 = random, -100 = ignore; nullptr = none
  // Optional: the labelled tokens as flat b*seq_len+t positions (strictly ascending) and their targets
  // (masked_labels nullptr = read labels at the positions). Absent: found from labels != -100.
  const int32_t* masked_positions = nullptr;  // [num_masked]
  const int32_t* masked_labels = nullptr;     // [num_masked]
  int64_t num_masked = 0;

  int64_t tokens() const { return batch * seq_len; }
};

// A view of anything shaped like data/loader.h's Batch (batch_size, seq_len and int32 vectors).
template <class BatchLike>
BatchView batch_view(const BatchLike& batch) {
  BatchView view;
  view.batch = batch.batch_size;
  view.seq_len = batch.seq_len;
  view.input_ids = batch.input_ids.data();
  view.token_type_ids = batch.token_type_ids.empty() ? nullptr : batch.token_type_ids.data();
  view.attention_mask = batch.attention_mask.empty() ? nullptr : batch.attention_mask.data();
  view.labels = batch.labels.empty() ? nullptr : batch.labels.data();
  view.nsp_labels = batch.nsp_labels.empty() ? nullptr : batch.nsp_labels.data();
  if (!batch.masked_positions.empty()) {
    view.masked_positions = batch.masked_positions.data();
    view.masked_labels =
        batch.masked_labels.size() == batch.masked_positions.size() ? batch.masked_labels.data() : nullptr;
    view.num_masked = static_cast<int64_t>(batch.masked_positions.size());
  }
  return view;
}

// One parameter tensor: where it lives in parameters() / grads() and how HF names and shapes it.
struct ParamInfo {
  std::string name;            // HF state-dict name, e.g. "bert.encoder.layer.0.attention.self.query.weight"
  std::vector<int64_t> shape;  // PyTorch shape; Linear weights are [out_features, in_features]
  size_t offset = 0;           // element offset in parameters() and grads()
  size_t numel = 0;
  bool apply_weight_decay = true;  // HF Trainer get_decay_parameter_names: false for biases and LayerNorm
};

// How HF _init_weights initialises a parameter.
enum class ParamInit { kNormal, kZero, kOne };

// Element offsets of BertForPreTraining's tensors in its parameter arena. The CPU model's parameters
// and grads and the CUDA model's master weights, working copy, grads and moments all use this layout.
struct BertLayerParamOffsets {
  size_t qkv_weight = 0, qkv_bias = 0;  // [3*hidden, hidden], [3*hidden]: query, key, value stacked
  size_t attention_output_weight = 0, attention_output_bias = 0;
  size_t attention_layernorm_weight = 0, attention_layernorm_bias = 0;
  size_t intermediate_weight = 0, intermediate_bias = 0;
  size_t output_weight = 0, output_bias = 0;
  size_t output_layernorm_weight = 0, output_layernorm_bias = 0;
};
struct BertParamOffsets {
  size_t word_embeddings = 0, position_embeddings = 0, token_type_embeddings = 0;
  size_t embeddings_layernorm_weight = 0, embeddings_layernorm_bias = 0;
  std::vector<BertLayerParamOffsets> layers;
  size_t pooler_weight = 0, pooler_bias = 0;
  size_t mlm_decoder_bias = 0, mlm_transform_weight = 0, mlm_transform_bias = 0;
  size_t mlm_layernorm_weight = 0, mlm_layernorm_bias = 0;
  size_t nsp_weight = 0, nsp_bias = 0;
};

// Element offsets in an arena under construction: each tensor starts on a 16-element boundary (64 B
// in fp32, 32 B in bf16, so every pointer an op sees is 16-byte aligned when hidden % 8 == 0).
class ArenaCursor {
 public:
  size_t allocate(int64_t count) {
    const size_t offset = size_;
    size_ = (size_ + static_cast<size_t>(count) + kAlign - 1) / kAlign * kAlign;
    return offset;
  }
  size_t size() const { return size_; }

 private:
  static constexpr size_t kAlign = 16;
  size_t size_ = 0;
};

// BertForPreTraining's parameter table, shared by the CPU model and the CUDA model (engine/bert_cuda.h):
// HF names, shapes and order, decay flags, init kinds and arena offsets. Tensors start on 16-element
// boundaries (64 B in fp32, 32 B in bf16); each layer's query/key/value weights (and biases) are
// adjacent, forming one fused [3*hidden, hidden] QKV matrix.
struct ParameterTable {
  std::vector<ParamInfo> params;  // HF order
  std::vector<ParamInit> init;    // parallel to params
  BertParamOffsets offsets;
  size_t arena_elements = 0;  // the arena's size, alignment gaps included
};
// Validates the config (bert::Error naming the field) and lays out its parameters.
ParameterTable make_parameter_table(const BertConfig& config);
// HF _init_weights into `arena` (arena_elements long; gaps zeroed): Linear weights and embeddings ~
// normal(0, initializer_range) (our Rng, one stream per tensor, drawn in double so float and double
// arenas agree), biases 0, LayerNorm 1 / 0, the pad_token_id row of the word embeddings 0.
template <class T>
void init_parameters(const BertConfig& config, const ParameterTable& table, uint64_t seed, std::span<T> arena);
// Every parameter of `table` from a safetensors checkpoint into a new fp32 arena (arena_elements
// long, gaps zero). Errors and accepted aliases: BertForPreTraining::load_safetensors. With
// `zero_filled`, the pooler and the NSP head may be absent (a BertForMaskedLM checkpoint, which has
// neither; fill-mask uses neither): they are left zero and their names appended there.
std::vector<float> read_parameter_arena(const std::string& path, const BertConfig& config, const ParameterTable& table,
                                        std::vector<std::string>* zero_filled = nullptr);
// The same into `arena` (arena_elements long), which needs no second arena: every parameter is
// overwritten (the zero-filled ones with zeros), the gaps are left as they are; on an error the
// arena may be partly written.
void read_parameter_arena_into(const std::string& path, const BertConfig& config, const ParameterTable& table,
                               std::span<float> arena, std::vector<std::string>* zero_filled = nullptr);
// A pretrained model's parameters to train on from (bert_train's [model] model_name_or_path): those of
// a BertForPreTraining safetensors file, of a BertForMaskedLM one, which has no pooler and no NSP head,
// or of a BertModel one (transformers' base model: no "bert." prefix, no head but the pooler). What
// the file lacks keeps its values in `initial` (a freshly initialised arena, arena_elements long), the
// names appended to `kept`. grow_vocab_from (0: no growth): the file's embeddings have that many rows,
// fewer than config.vocab_size (a tokenizer that appends tokens to the model's): the new tokens' word
// embeddings start at the mean of the file's rows (transformers' resize_token_embeddings with
// mean_resizing, without its 1e-9-covariance noise), their decoder bias at 0. Errors as
// read_parameter_arena's.
std::vector<float> read_pretrained_arena(const std::string& path, const BertConfig& config, const ParameterTable& table,
                                         std::span<const float> initial, std::vector<std::string>& kept,
                                         int64_t grow_vocab_from = 0);
// The parameters of `arena` under HF names, fp32, untied tensors only: BertForPreTraining::save_safetensors.
void write_parameter_arena(const std::string& path, const std::vector<ParamInfo>& params, std::span<const float> arena);

// The dropout sites of one forward, and their DropoutSpec at (seed, step): offset = step * sites + site
// with sites = 1 + 3 * layers (the embeddings, then per layer the attention probabilities, the
// attention output and the FFN output). Shared by the CPU and CUDA models, so their masks are equal.
enum class DropoutSite { kEmbeddings, kAttentionProbs, kAttentionOutput, kFfnOutput };
ops::DropoutSpec dropout_spec_for(const BertConfig& config, uint64_t seed, uint64_t step, DropoutSite site, int layer);

// The losses of one forward. Each loss is the mean over its counted rows (0 when none is counted).
struct LossStats {
  double loss = 0;  // mlm_loss + nsp_loss, what HF BertForPreTraining returns as `loss`
  double mlm_loss = 0;
  double nsp_loss = 0;
  int64_t mlm_correct = 0, mlm_count = 0;  // argmax == label among labelled tokens
  int64_t nsp_correct = 0, nsp_count = 0;
};

struct ModelOptions {
  // Run the MLM transform and the vocab-sized decoder only on labelled tokens (gathered before the
  // transform, gradient scattered back): the same loss and gradients as the dense head, ~7x less work.
  bool mlm_on_masked_positions_only = true;
  // MLM logits rows materialised at once ([rows, vocab] workspace); the loss and gradients do not
  // depend on it beyond rounding. 0: the model's default, kCpuDecoderChunkRows or kCudaDecoderChunkRows.
  int64_t decoder_chunk_rows = 0;
  int num_threads = 0;      // CPU op threads; 0 = OpenMP's default
  uint64_t init_seed = 42;  // for the HF initialisation done by the constructor
  // Forward only (fill-mask, evaluation: mlm_logits_at, forward_backward without gradients): no
  // gradient arena, and on the GPU no fp32 master weights or optimizer state either (the bf16
  // working copy is all it keeps: 2 instead of 18 bytes per parameter), and activation buffers for
  // two layers instead of every layer's (plan_batch_arenas). Training calls throw.
  bool inference_only = false;
  // false: the constructor leaves every parameter zero instead of drawing HF's initialisation, for a
  // model whose weights are loaded next (load_safetensors overwrites every parameter; copying
  // another model's weights in does too; load_pretrained, which keeps the initial values of what its
  // file lacks, refuses such a model). Drawing 110M normals is ~2.5 s of a BERT-base load.
  bool initialize_parameters = true;
};

// The decoder's row chunk when ModelOptions::decoder_chunk_rows is 0. The CPU's fp32 logits of 1,024
// rows are 125 MB at vocab 30,522. On the GPU each chunk is a decoder GEMM, a cross-entropy, a dx GEMM
// and a dW GEMM that reads and writes the word embeddings' whole fp32 gradient (94 MB each way), and
// a BERT-base batch of 16k tokens masks ~2,460 rows: 4,096 bf16 rows (250 MB) run it as one chunk,
// saving two of each a step (~0.1-0.3 ms of ~37, napkin math; bench_train_step --decoder-chunk-rows).
inline constexpr int64_t kCpuDecoderChunkRows = 1024;
inline constexpr int64_t kCudaDecoderChunkRows = 4096;

// `options` with decoder_chunk_rows 0 replaced by `default_chunk_rows`; bert::Error if it is negative.
ModelOptions resolve_model_options(ModelOptions options, int64_t default_chunk_rows);

// Forward + backward FLOPs of one batch (the napkin math above): the same count for the CPU and CUDA
// models, for the run table and MFU.
double bert_training_flops(const BertConfig& config, int64_t batch, int64_t seq_len, int64_t mlm_rows);

// ---- shared by the CPU and CUDA models (engine/bert_graph.h runs the ops on either) ------------------

// HF hidden_act -> our GELU form ("gelu": erf; "gelu_new" / "gelu_pytorch_tanh": tanh); bert::Error
// for anything else.
ops::GeluKind gelu_kind_of(const std::string& hidden_act);

// A validated batch and the rows its MLM head runs on, in host memory.
struct HostBatch {
  int64_t batch = 0, seq_len = 0;
  bool has_token_types = false, has_attention_mask = false, has_nsp_labels = false;
  // The MLM head's rows: flat b*seq_len+t positions and their targets (-100 = ignored). Sparse head:
  // the labelled positions, ascending. Dense head: every token.
  std::vector<int32_t> mlm_positions, mlm_labels;
  int64_t mlm_counted = 0;                 // rows whose label is not -100
  std::vector<int64_t> mlm_chunk_counted;  // the same per decoder chunk of ModelOptions::decoder_chunk_rows
  int64_t nsp_counted = 0;                 // NSP labels that are not -100

  int64_t tokens() const { return batch * seq_len; }
  int64_t mlm_rows() const { return static_cast<int64_t>(mlm_positions.size()); }
};
// Checks `batch` against `config` and lists its MLM rows into `out` (reused: no allocation once
// warm). Errors are bert::Error "<who>: ..." naming the value and its position: batch or seq_len not
// > 0, seq_len beyond max_position_embeddings, a missing input_ids, an input id outside the vocabulary
// or a token type outside type_vocab_size, masked positions out of range or not strictly ascending,
// an MLM label outside the vocabulary (and not -100), an NSP label other than 0, 1 and -100.
void prepare_batch(const BatchView& batch, const BertConfig& config, const ModelOptions& options, std::string_view who,
                   HostBatch& out);

// Element offsets of the batch-sized arenas, both backends: activations saved for backward and the
// backward workspace (the activation type: fp32/fp64 on the CPU, bf16 on the GPU), and the
// statistics (LayerNorm mean/rstd, attention logsumexp: the activation type on the CPU, fp32 on the
// GPU). A pure function of (config, options, capacity): the CUDA memory plan uses it without a device.
// With options.inference_only (forward only) there is no backward workspace (its offsets are 0) and
// layer l's activations and statistics share layer l - 2's offsets.
struct BertLayerActivationOffsets {  // [tokens, *] unless noted
  size_t qkv = 0;                    // [tokens, 3*hidden] fused projection output (with biases)
  size_t context = 0;                // attention output before the output dense
  size_t attention_output = 0;       // output dense after dropout: x of the first residual LayerNorm
  size_t attention_layernorm = 0;    // LN(attention_output + layer input): the FFN input
  size_t ffn_pre_activation = 0;     // [tokens, intermediate] up-projection without its bias
  size_t ffn_activation = 0;         // [tokens, intermediate] gelu(pre_activation + bias)
  size_t ffn_output = 0;             // down-projection after dropout
  size_t layer_output = 0;           // LN(ffn_output + attention_layernorm): the next layer's input
};
struct BertLayerStatisticOffsets {
  size_t logsumexp = 0;                                               // [batch, heads, seq_len]
  size_t attention_layernorm_mean = 0, attention_layernorm_rstd = 0;  // [tokens]
  size_t output_layernorm_mean = 0, output_layernorm_rstd = 0;        // [tokens]
};
struct BatchArenaPlan {
  int64_t capacity_batch = 0, capacity_tokens = 0;
  int64_t mlm_chunk_rows = 0;  // rows of the decoder's logits chunk: min(capacity_tokens, decoder_chunk_rows)
  int64_t max_mlm_chunks = 0;  // decoder chunks of a batch whose every token is an MLM row
  // activations
  size_t embeddings_output = 0;  // after LayerNorm and dropout: layer 0's input
  std::vector<BertLayerActivationOffsets> layers;
  size_t pooled = 0, nsp_logits = 0;  // [batch, hidden], [batch, 2] (the logits become their gradient)
  size_t mlm_input = 0;               // [mlm rows, hidden] gathered encoder rows
  size_t mlm_transform_pre_activation = 0, mlm_transform_activation = 0, mlm_transform_output = 0;
  size_t activation_elements = 0;
  // backward workspace: alive within one step
  size_t grad_hidden = 0;    // d(layer output), then d(layer input): flows down the encoder
  size_t grad_residual = 0;  // d(x + residual) of a residual LayerNorm
  size_t grad_branch = 0;    // a dropout's input gradient
  size_t grad_context = 0, grad_ffn = 0, grad_qkv = 0;
  size_t grad_mlm_input = 0, grad_mlm_transform_output = 0, grad_mlm_transform_activation = 0;
  size_t grad_pooled = 0;
  size_t mlm_logits = 0;  // [mlm_chunk_rows, vocab] rows mlm_logits_stride apart; becomes its own gradient
  // vocab rounded up to 64 (30522 -> 30528): every logits row starts 16-byte aligned (the arena aligns
  // each buffer to 16 elements), which cuBLASLt's fast kernels need of the decoder GEMMs' leading
  // dimension (kernels/ops.h, LinearShape).
  int64_t mlm_logits_stride = 0;
  size_t workspace_elements = 0;
  // statistics
  size_t embeddings_mean = 0, embeddings_rstd = 0;
  std::vector<BertLayerStatisticOffsets> layer_statistics;
  size_t mlm_layernorm_mean = 0, mlm_layernorm_rstd = 0;
  size_t statistics_elements = 0;
};
BatchArenaPlan plan_batch_arenas(const BertConfig& config, const ModelOptions& options, int64_t capacity_batch,
                                 int64_t capacity_tokens);

// The totals of one cross-entropy call: a decoder chunk of the MLM head, or the NSP head.
struct CrossEntropyTotals {
  double loss_sum = 0;  // sum over counted rows of -log p[label]
  int64_t num_counted = 0, num_correct = 0;
};
// One forward's LossStats from its MLM chunks' totals and the NSP head's (nullptr: no NSP labels).
LossStats combine_loss_stats(std::span<const CrossEntropyTotals> mlm_chunks, const CrossEntropyTotals* nsp);

template <class T>
class BertForPreTraining {
 public:
  // Validates the config (bert::Error naming the field) and initialises the weights as HF does.
  explicit BertForPreTraining(const BertConfig& config, const ModelOptions& options = {});
  BertForPreTraining(const BertForPreTraining&) = delete;
  BertForPreTraining& operator=(const BertForPreTraining&) = delete;
  BertForPreTraining(BertForPreTraining&&) = default;
  BertForPreTraining& operator=(BertForPreTraining&&) = default;

  const BertConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }  // decoder_chunk_rows resolved (never 0)
  bool mlm_on_masked_positions_only() const { return options_.mlm_on_masked_positions_only; }
  void set_mlm_on_masked_positions_only(bool sparse) { options_.mlm_on_masked_positions_only = sparse; }

  // ---- parameters and gradients ----
  // In HF order. Offsets are not monotonic: each layer's query/key/value weights (and biases) are
  // adjacent in the arena, in that order, to form one fused QKV matrix.
  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& param_info(std::string_view name) const;  // throws bert::Error for an unknown name
  // The whole arenas (alignment gaps between tensors hold zeros).
  std::span<T> parameters() { return parameters_; }
  std::span<const T> parameters() const { return parameters_; }
  std::span<T> grads() { return grads_; }
  std::span<const T> grads() const { return grads_; }
  std::span<T> parameter(const ParamInfo& info) { return {parameters_.data() + info.offset, info.numel}; }
  std::span<const T> parameter(const ParamInfo& info) const { return {parameters_.data() + info.offset, info.numel}; }
  std::span<T> grad(const ParamInfo& info) { return {grads_.data() + info.offset, info.numel}; }
  std::span<const T> grad(const ParamInfo& info) const { return {grads_.data() + info.offset, info.numel}; }
  int64_t num_parameters() const;  // sum of numel (the word embeddings once: the decoder is tied)

  // HF _init_weights: Linear weights and embeddings ~ normal(0, initializer_range) (our Rng, one
  // stream per tensor, drawn in double so float and double models agree), biases 0, LayerNorm 1 / 0,
  // the pad_token_id row of the word embeddings 0.
  void init_weights(uint64_t seed);
  void zero_grads();

  // ---- running ----
  // Plans the activation and workspace arenas for up to max_batch sequences of up to max_seq_len
  // tokens (any batch * seq_len <= max_batch * max_seq_len with batch <= max_batch fits). A larger
  // batch later re-plans once (grows, never shrinks); call this up front to allocate exactly once.
  void reserve(int64_t max_batch, int64_t max_seq_len);

  // Dropout of the following forwards: every dropout site gets DropoutSpec{p, seed, offset} with
  // offset = step * sites + site (sites = 1 + 3 * layers), so a (seed, step) pair reproduces a forward
  // bit for bit. Use a step that is unique per micro-batch (and mix the rank into the seed for data
  // parallelism). training = false: no dropout (HF eval mode). Default: eval mode.
  void set_dropout(uint64_t seed, uint64_t step, bool training);

  // Forward (and, with compute_grads, backward) of one micro-batch. Gradients of
  // loss_scale * stats.loss ACCUMULATE into grads(); call zero_grads() before the first micro-batch
  // of an optimizer step. Each micro-batch's loss is its own mean (HF: gradient accumulation over k
  // micro-batches = loss_scale 1/k each; that equals one big batch exactly only when the micro-batches
  // have equal counts of labelled tokens).
  void forward_backward(const BatchView& batch, LossStats& stats, bool compute_grads, T loss_scale = T(1));

  // Fill-mask: MLM logits at flat positions b*seq_len+t of `batch` (labels ignored), always in eval
  // mode. logits: [positions.size(), vocab_size].
  void mlm_logits_at(const BatchView& batch, std::span<const int32_t> positions, std::span<T> logits);

  // FLOPs of one forward_backward (see the top of this file); mlm_rows = rows the MLM head runs on.
  double training_flops(int64_t batch, int64_t seq_len, int64_t mlm_rows) const;

  // ---- checkpoints ----
  // HF names, fp32, metadata {"format": "pt"}; only the untied tensors (no cls.predictions.decoder.*),
  // which is what BertForPreTraining.from_pretrained expects (it re-ties the decoder).
  void save_safetensors(const std::string& path) const;
  // Every parameter must be present with its exact shape (F32, BF16 or F16); else a bert::Error naming
  // the tensor, and the model is left unchanged. Accepted and ignored: the tied aliases
  // cls.predictions.decoder.weight/.bias and bert.embeddings.position_ids. Old LayerNorm names
  // (gamma/beta) are accepted. Any other tensor is an error (a checkpoint of a different model).
  // `zero_filled`: as read_parameter_arena's (for inference from a BertForMaskedLM checkpoint). A
  // float model built with ModelOptions::initialize_parameters = false reads the file in place (no
  // second arena: half the peak memory of a load) and is left all zero on an error instead.
  void load_safetensors(const std::string& path, std::vector<std::string>* zero_filled = nullptr);
  // The weights of a pretrained model to train on from: read_pretrained_arena over this model's
  // (initialised) parameters, growing the vocabulary from grow_vocab_from rows when nonzero; the model
  // changes only on success.
  void load_pretrained(const std::string& path, std::vector<std::string>& kept, int64_t grow_vocab_from = 0);

 private:
  // The batch-sized arenas for up to capacity_batch sequences and capacity_tokens tokens.
  struct Arenas {
    BatchArenaPlan plan;
    std::vector<T> activations, workspace, statistics;
  };

  // Runs BertGraph (engine/bert_graph.h) on the CPU ops over this model's arenas and host_batch_.
  template <class Run>
  void run_graph(const int32_t* input_ids, const int32_t* token_type_ids, const int32_t* attention_mask,
                 const int32_t* nsp_labels, bool dropout_enabled, Run&& run);

  BertConfig config_;
  ModelOptions options_;
  cpu::Context context_;

  std::vector<ParamInfo> params_;
  std::vector<ParamInit> param_init_;  // parallel to params_
  BertParamOffsets param_offsets_;
  std::vector<T> parameters_;
  std::vector<T> grads_;

  Arenas arenas_;
  HostBatch host_batch_;                         // the batch being run, validated
  std::vector<CrossEntropyTotals> loss_totals_;  // one forward's cross-entropy calls: MLM chunks, then NSP

  uint64_t dropout_seed_ = 0, dropout_step_ = 0;
  bool dropout_training_ = false;
};

extern template class BertForPreTraining<float>;
extern template class BertForPreTraining<double>;

}  // namespace bert
