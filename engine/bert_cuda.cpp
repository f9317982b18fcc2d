// BertForPreTrainingCuda: arena planning, batch upload, forward, manual backward, AdamW, checkpoints.
// The model, the precision scheme and the memory budget are described in engine/bert_cuda.h; every
// step mirrors engine/bert.cpp op for op, with the bert::cuda ops in place of the bert::cpu ones.
#include "engine/bert_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <utility>

#include "common/error.h"

namespace bert {

namespace {

using cuda::bf16;

// Tensors start on 16-element boundaries in every arena (32 B in bf16, 64 B in fp32 / int32), as in
// the CPU model: every pointer an op sees is 16-byte aligned when hidden % 8 == 0.
constexpr size_t kAlignElements = 16;
size_t align_up(size_t count) { return (count + kAlignElements - 1) / kAlignElements * kAlignElements; }

// The fused attention kernel's sequence limit (kernels/cuda/attention.cu, ops_cuda.h).
constexpr int64_t kMaxSeqLen = 512;

// Estimated Context scratch + cuBLASLt workspace (not part of the arenas): the embedding backward's
// fp32 [tokens, hidden] plus its sort buffers dominate; the column-sum partials are far smaller.
size_t op_scratch_estimate(const BertConfig& config, int64_t tokens) {
  const size_t gemm_workspace = size_t{32} << 20;
  const size_t ld = (static_cast<size_t>(config.hidden_size) + 3) / 4 * 4;
  return gemm_workspace + static_cast<size_t>(tokens) * (ld * sizeof(float) + 64) + (size_t{4} << 20);
}

ops::GeluKind gelu_kind_of(const std::string& hidden_act) {
  // make_parameter_table has already rejected anything else.
  return hidden_act == "gelu" ? ops::GeluKind::kErf : ops::GeluKind::kTanh;
}

[[noreturn]] void unsupported(const std::string& message) {
  throw std::invalid_argument("BertForPreTrainingCuda: " + message);
}

ParameterTable checked_table(const BertConfig& config) {
  BertForPreTrainingCuda::check_supported(config);
  return make_parameter_table(config);
}

void check_capacity(const BertConfig& config, int64_t max_batch, int64_t max_seq_len) {
  if (max_batch <= 0 || max_seq_len <= 0)
    throw Error("BertForPreTrainingCuda::reserve: max_batch and max_seq_len must be > 0");
  if (max_seq_len > config.max_position_embeddings)
    throw Error("BertForPreTrainingCuda: seq_len " + std::to_string(max_seq_len) + " exceeds max_position_embeddings " +
                std::to_string(config.max_position_embeddings));
  BertForPreTrainingCuda::check_supported_seq_len(max_seq_len);
}

std::string mib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%10.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return text;
}

}  // namespace

std::string CudaMemoryPlan::table() const {
  std::string out = "device memory for batch " + std::to_string(max_batch) + " x " + std::to_string(max_seq_len) +
                    " (" + std::to_string(num_parameters) + " parameters)\n";
  const std::pair<const char*, size_t> rows[] = {
      {"master weights (fp32)", master_params_bytes},
      {"working weights (bf16)", working_params_bytes},
      {"gradients (fp32)", grads_bytes},
      {"AdamW moments (fp32)", optimizer_bytes},
      {"activations (bf16)", activations_bytes},
      {"backward workspace (bf16)", workspace_bytes},
      {"statistics (fp32)", statistics_bytes},
      {"batch inputs (int32)", inputs_bytes},
      {"loss stats", loss_stats_bytes},
      {"op scratch (estimate)", op_scratch_bytes},
  };
  for (const auto& [name, bytes] : rows) {
    std::string line = "  " + std::string(name);
    line.resize(30, ' ');
    out += line + mib(bytes) + "\n";
  }
  char total[64];
  std::snprintf(total, sizeof(total), "  total                       %10.2f GiB\n",
                static_cast<double>(total_bytes()) / (1024.0 * 1024.0 * 1024.0));
  return out + total;
}

// ---- configuration checks and planning ----------------------------------------------------------------

void BertForPreTrainingCuda::check_supported(const BertConfig& config) {
  (void)make_parameter_table(config);  // bert::Error for a config that is invalid on any device
  if (config.hidden_size % 8 != 0)
    unsupported("hidden_size " + std::to_string(config.hidden_size) +
                " is not a multiple of 8 (the CUDA kernels read the fused QKV rows as 16-byte vectors)");
  const int64_t head_dim = config.head_dim();
  if (head_dim != 32 && head_dim != 64 && head_dim != 128)
    unsupported("num_attention_heads " + std::to_string(config.num_attention_heads) + " gives head_dim " +
                std::to_string(config.hidden_size) + " / " + std::to_string(config.num_attention_heads) + " = " +
                std::to_string(head_dim) + "; the fused attention kernel supports head_dim 32, 64 and 128");
  std::string why_not;
  const ops::AttentionShape shape{1, 1, config.num_attention_heads, head_dim, 3 * int64_t{config.hidden_size}};
  if (!cuda::attention_supported(shape, &why_not)) unsupported("num_attention_heads: " + why_not);
}

void BertForPreTrainingCuda::check_supported_seq_len(int64_t seq_len) {
  if (seq_len < 1 || seq_len > kMaxSeqLen)
    unsupported("seq_len " + std::to_string(seq_len) + " is outside 1.." + std::to_string(kMaxSeqLen) +
                ", the fused attention kernel's limit (set [data] max_seq_length <= " + std::to_string(kMaxSeqLen) +
                ")");
  std::string why_not;
  if (!cuda::attention_supported(ops::AttentionShape{1, seq_len, 1, 64, 64}, &why_not))
    unsupported("seq_len: " + why_not);
}

BertForPreTrainingCuda::ArenaPlan BertForPreTrainingCuda::plan_arenas(const BertConfig& config,
                                                                      const ModelOptions& options,
                                                                      int64_t capacity_batch, int64_t capacity_tokens) {
  ArenaPlan plan;
  plan.capacity_batch = capacity_batch;
  plan.capacity_tokens = capacity_tokens;
  plan.mlm_chunk_rows = std::min(capacity_tokens, options.decoder_chunk_rows);
  plan.max_mlm_chunks = (capacity_tokens + options.decoder_chunk_rows - 1) / options.decoder_chunk_rows;
  const int64_t tokens = capacity_tokens, batch = capacity_batch;
  const int64_t hidden = config.hidden_size, intermediate = config.intermediate_size;
  const int64_t heads = config.num_attention_heads, vocab = config.vocab_size;

  size_t cursor = 0;
  auto allocate = [&](int64_t count) {
    const size_t offset = cursor;
    cursor = align_up(cursor + static_cast<size_t>(count));
    return offset;
  };

  // Activations (bf16). The MLM head's rows: at most one per token.
  plan.embeddings_output = allocate(tokens * hidden);
  plan.layers.assign(static_cast<size_t>(config.num_hidden_layers), LayerActivations{});
  for (LayerActivations& layer : plan.layers) {
    layer.qkv = allocate(tokens * 3 * hidden);
    layer.context = allocate(tokens * hidden);
    layer.attention_output = allocate(tokens * hidden);
    layer.attention_layernorm = allocate(tokens * hidden);
    layer.ffn_pre_activation = allocate(tokens * intermediate);
    layer.ffn_activation = allocate(tokens * intermediate);
    layer.ffn_output = allocate(tokens * hidden);
    layer.layer_output = allocate(tokens * hidden);
  }
  plan.pooled = allocate(batch * hidden);
  plan.nsp_logits = allocate(batch * 2);
  plan.mlm_input = allocate(tokens * hidden);
  plan.mlm_transform_pre_activation = allocate(tokens * hidden);
  plan.mlm_transform_activation = allocate(tokens * hidden);
  plan.mlm_transform_output = allocate(tokens * hidden);
  plan.activation_elements = cursor;

  // Backward workspace (bf16).
  cursor = 0;
  plan.grad_hidden = allocate(tokens * hidden);
  plan.grad_residual = allocate(tokens * hidden);
  plan.grad_branch = allocate(tokens * hidden);
  plan.grad_context = allocate(tokens * hidden);
  plan.grad_ffn = allocate(tokens * intermediate);
  plan.grad_qkv = allocate(tokens * 3 * hidden);
  plan.grad_mlm_input = allocate(tokens * hidden);
  plan.grad_mlm_transform_output = allocate(tokens * hidden);
  plan.grad_mlm_transform_activation = allocate(tokens * hidden);
  plan.grad_pooled = allocate(batch * hidden);
  plan.mlm_logits = allocate(plan.mlm_chunk_rows * vocab);
  plan.workspace_elements = cursor;

  // Statistics (fp32).
  cursor = 0;
  plan.embeddings_mean = allocate(tokens);
  plan.embeddings_rstd = allocate(tokens);
  plan.layer_statistics.assign(static_cast<size_t>(config.num_hidden_layers), LayerStatistics{});
  for (LayerStatistics& layer : plan.layer_statistics) {
    layer.logsumexp = allocate(tokens * heads);
    layer.attention_layernorm_mean = allocate(tokens);
    layer.attention_layernorm_rstd = allocate(tokens);
    layer.output_layernorm_mean = allocate(tokens);
    layer.output_layernorm_rstd = allocate(tokens);
  }
  plan.mlm_layernorm_mean = allocate(tokens);
  plan.mlm_layernorm_rstd = allocate(tokens);
  plan.statistics_elements = cursor;

  // Batch inputs (int32).
  cursor = 0;
  plan.input_ids = allocate(tokens);
  plan.token_type_ids = allocate(tokens);
  plan.attention_mask = allocate(tokens);
  plan.nsp_labels = allocate(batch);
  plan.mlm_positions = allocate(tokens);
  plan.mlm_labels = allocate(tokens);
  plan.input_elements = cursor;

  plan.loss_slot_stride = static_cast<size_t>(plan.max_mlm_chunks) + 1;
  return plan;
}

CudaMemoryPlan BertForPreTrainingCuda::memory_plan(const BertConfig& config, int64_t max_batch, int64_t max_seq_len,
                                                   const ModelOptions& options) {
  check_supported(config);
  if (options.decoder_chunk_rows <= 0) throw Error("ModelOptions: decoder_chunk_rows must be > 0");
  check_capacity(config, max_batch, max_seq_len);
  const ParameterTable table = make_parameter_table(config);
  const ArenaPlan plan = plan_arenas(config, options, max_batch, max_batch * max_seq_len);

  CudaMemoryPlan memory;
  memory.max_batch = max_batch;
  memory.max_seq_len = max_seq_len;
  for (const ParamInfo& info : table.params) memory.num_parameters += static_cast<int64_t>(info.numel);
  const size_t n = table.arena_elements;
  memory.master_params_bytes = n * sizeof(float);
  memory.working_params_bytes = n * sizeof(bf16);
  memory.grads_bytes = n * sizeof(float);
  memory.optimizer_bytes = 2 * n * sizeof(float);
  memory.activations_bytes = plan.activation_elements * sizeof(bf16);
  memory.workspace_bytes = plan.workspace_elements * sizeof(bf16);
  memory.statistics_bytes = plan.statistics_elements * sizeof(float);
  memory.inputs_bytes = plan.input_elements * sizeof(int32_t);
  memory.loss_stats_bytes = kLossSlots * plan.loss_slot_stride * sizeof(cuda::CrossEntropyDeviceStats) + sizeof(float);
  memory.op_scratch_bytes = op_scratch_estimate(config, max_batch * max_seq_len);
  return memory;
}

// ---- construction -------------------------------------------------------------------------------------

void BertForPreTrainingCuda::PinnedDeleter::operator()(int32_t* pointer) const noexcept {
  if (pointer != nullptr) cudaFreeHost(pointer);
}

void BertForPreTrainingCuda::EventDeleter::operator()(cudaEvent_t event) const noexcept {
  if (event != nullptr) cudaEventDestroy(event);
}

BertForPreTrainingCuda::BertForPreTrainingCuda(const BertConfig& config, const ModelOptions& options)
    : config_(config), options_(options), table_(checked_table(config)) {
  if (options_.decoder_chunk_rows <= 0) throw Error("ModelOptions: decoder_chunk_rows must be > 0");
  gelu_kind_ = gelu_kind_of(config_.hidden_act);
  context_ = std::make_unique<cuda::Context>();
  cudaEvent_t event = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  staging_copied_.reset(event);

  const size_t n = table_.arena_elements;
  master_.resize(n);
  working_.resize(n);
  grads_.resize(n);
  moments_.resize(2 * n);
  grad_norm_.resize(1);
  const cudaStream_t stream = context_->stream();
  CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(moments_.data(), 0, moments_.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(grad_norm_.data(), 0, grad_norm_.bytes(), stream));

  std::vector<float> host(n);
  init_parameters<float>(config_, table_, options_.init_seed, host);
  upload_parameters(host);

  std::vector<cuda::AdamWTensor> tensors;
  tensors.reserve(table_.params.size());
  for (const ParamInfo& info : table_.params) {
    cuda::AdamWTensor tensor;
    tensor.param = master_.data() + info.offset;
    tensor.param_bf16 = working_.data() + info.offset;
    tensor.grad = grads_.data() + info.offset;
    tensor.exp_avg = moments_.data() + info.offset;
    tensor.exp_avg_sq = moments_.data() + n + info.offset;
    tensor.numel = static_cast<int64_t>(info.numel);
    tensor.apply_weight_decay = info.apply_weight_decay;
    tensors.push_back(tensor);
  }
  tensor_list_.emplace(tensors);
  context_->synchronize();
}

BertForPreTrainingCuda::~BertForPreTrainingCuda() {
  // Queued kernels may still read the arenas and the pinned staging: wait before they are freed.
  if (context_) cudaStreamSynchronize(context_->stream());
}

const ParamInfo& BertForPreTrainingCuda::param_info(std::string_view name) const {
  for (const ParamInfo& info : table_.params)
    if (info.name == name) return info;
  throw Error("BertForPreTrainingCuda: no parameter named '" + std::string(name) + "'");
}

int64_t BertForPreTrainingCuda::num_parameters() const {
  int64_t total = 0;
  for (const ParamInfo& info : table_.params) total += static_cast<int64_t>(info.numel);
  return total;
}

// ---- planning -----------------------------------------------------------------------------------------

void BertForPreTrainingCuda::reserve(int64_t max_batch, int64_t max_seq_len) {
  check_capacity(config_, max_batch, max_seq_len);
  const int64_t tokens = max_batch * max_seq_len;
  if (max_batch <= plan_.capacity_batch && tokens <= plan_.capacity_tokens) return;
  // Growing: the slots and buffers in use are read or released first.
  drain_loss_stats();
  context_->synchronize();
  CUDA_CHECK(cudaEventSynchronize(staging_copied_.get()));

  ArenaPlan plan = plan_arenas(config_, options_, std::max(max_batch, plan_.capacity_batch),
                               std::max(tokens, plan_.capacity_tokens));
  // Until every arena exists the model has no capacity (an out-of-memory error leaves it empty, and
  // the next batch tries again), and nothing uploaded survives.
  plan_ = ArenaPlan{};
  batch_uploaded_ = false;
  activations_ = cuda::DeviceBuffer<bf16>();  // free the old arenas before the new ones are made
  workspace_ = cuda::DeviceBuffer<bf16>();
  statistics_ = cuda::DeviceBuffer<float>();
  inputs_ = cuda::DeviceBuffer<int32_t>();
  loss_stats_ = cuda::DeviceBuffer<cuda::CrossEntropyDeviceStats>();
  staging_.reset();
  activations_.resize(plan.activation_elements);
  workspace_.resize(plan.workspace_elements);
  statistics_.resize(plan.statistics_elements);
  inputs_.resize(plan.input_elements);
  loss_stats_.resize(kLossSlots * plan.loss_slot_stride);
  int32_t* pinned = nullptr;
  CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned), plan.input_elements * sizeof(int32_t)));
  staging_.reset(pinned);
  std::fill_n(pinned, plan.input_elements, 0);
  // Zeros everywhere once, so no uninitialised value can ever reach a kernel.
  const cudaStream_t stream = context_->stream();
  CUDA_CHECK(cudaMemsetAsync(activations_.data(), 0, activations_.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(workspace_.data(), 0, workspace_.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(statistics_.data(), 0, statistics_.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(inputs_.data(), 0, inputs_.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(loss_stats_.data(), 0, loss_stats_.bytes(), stream));
  context_->synchronize();
  plan_ = std::move(plan);
}

CudaMemoryPlan BertForPreTrainingCuda::allocated() const {
  CudaMemoryPlan memory;
  memory.max_batch = plan_.capacity_batch;
  memory.max_seq_len = plan_.capacity_batch > 0 ? plan_.capacity_tokens / plan_.capacity_batch : 0;
  memory.num_parameters = num_parameters();
  memory.master_params_bytes = master_.bytes();
  memory.working_params_bytes = working_.bytes();
  memory.grads_bytes = grads_.bytes();
  memory.optimizer_bytes = moments_.bytes();
  memory.activations_bytes = activations_.bytes();
  memory.workspace_bytes = workspace_.bytes();
  memory.statistics_bytes = statistics_.bytes();
  memory.inputs_bytes = inputs_.bytes();
  memory.loss_stats_bytes = loss_stats_.bytes() + grad_norm_.bytes();
  memory.op_scratch_bytes = context_->gemm_workspace_bytes();
  return memory;
}

// ---- batch upload -------------------------------------------------------------------------------------

void BertForPreTrainingCuda::set_dropout(uint64_t seed, uint64_t step, bool training) {
  dropout_seed_ = seed;
  dropout_step_ = step;
  dropout_training_ = training;
}

ops::DropoutSpec BertForPreTrainingCuda::dropout_spec(DropoutSite site, int layer) const {
  if (!dropout_training_) return ops::DropoutSpec{};  // probability 0: identity
  return dropout_spec_for(config_, dropout_seed_, dropout_step_, site, layer);
}

void BertForPreTrainingCuda::upload_batch(const BatchView& batch) {
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw Error("BertForPreTrainingCuda: " + message);
  };
  require(batch.batch > 0 && batch.seq_len > 0, "batch and seq_len must be > 0");
  require(batch.input_ids != nullptr, "input_ids is missing");
  require(batch.seq_len <= config_.max_position_embeddings, "seq_len " + std::to_string(batch.seq_len) +
                                                                " exceeds max_position_embeddings " +
                                                                std::to_string(config_.max_position_embeddings));
  const int64_t tokens = batch.tokens();
  // Ids index tables on the device, where an out-of-range id is a fatal trap: refuse them here.
  for (int64_t t = 0; t < tokens; ++t) {
    require(batch.input_ids[t] >= 0 && batch.input_ids[t] < config_.vocab_size,
            "input id " + std::to_string(batch.input_ids[t]) + " at position " + std::to_string(t) +
                " is outside the vocabulary [0, " + std::to_string(config_.vocab_size) + ")");
    if (batch.token_type_ids != nullptr)
      require(batch.token_type_ids[t] >= 0 && batch.token_type_ids[t] < config_.type_vocab_size,
              "token type id " + std::to_string(batch.token_type_ids[t]) + " at position " + std::to_string(t) +
                  " is outside [0, type_vocab_size " + std::to_string(config_.type_vocab_size) + ")");
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
  reserve(batch.batch, batch.seq_len);

  // The previous upload's copies read the staging buffer: wait for them (not for the kernels).
  CUDA_CHECK(cudaEventSynchronize(staging_copied_.get()));
  int32_t* staging = staging_.get();
  DeviceBatch next;
  next.batch = batch.batch;
  next.seq_len = batch.seq_len;
  next.has_token_types = batch.token_type_ids != nullptr;
  next.has_attention_mask = batch.attention_mask != nullptr;
  next.has_nsp_labels = batch.nsp_labels != nullptr;
  const size_t token_count = static_cast<size_t>(tokens), batch_count = static_cast<size_t>(batch.batch);
  std::copy_n(batch.input_ids, token_count, staging + plan_.input_ids);
  if (next.has_token_types) std::copy_n(batch.token_type_ids, token_count, staging + plan_.token_type_ids);
  if (next.has_attention_mask) std::copy_n(batch.attention_mask, token_count, staging + plan_.attention_mask);
  if (next.has_nsp_labels) {
    std::copy_n(batch.nsp_labels, batch_count, staging + plan_.nsp_labels);
    for (size_t b = 0; b < batch_count; ++b) {
      const int32_t label = batch.nsp_labels[b];
      require(label == ops::kIgnoreIndex || label == 0 || label == 1,
              "NSP label " + std::to_string(label) + " of sequence " + std::to_string(b) + " is not 0, 1 or -100");
      next.nsp_counted += label != ops::kIgnoreIndex;
    }
  }

  // The MLM head's rows: the labelled positions, ascending, and their targets.
  int32_t* positions = staging + plan_.mlm_positions;
  int32_t* labels = staging + plan_.mlm_labels;
  int64_t rows = 0;
  if (batch.masked_positions != nullptr) {
    for (int64_t i = 0; i < batch.num_masked; ++i) {
      const int32_t position = batch.masked_positions[i];
      positions[i] = position;
      labels[i] = batch.masked_labels != nullptr ? batch.masked_labels[i] : batch.labels[position];
    }
    rows = batch.num_masked;
  } else if (batch.labels != nullptr) {
    for (int64_t t = 0; t < tokens; ++t) {
      if (batch.labels[t] == ops::kIgnoreIndex) continue;
      positions[rows] = static_cast<int32_t>(t);
      labels[rows] = batch.labels[t];
      ++rows;
    }
  }
  for (int64_t i = 0; i < rows; ++i)
    require(labels[i] == ops::kIgnoreIndex || (labels[i] >= 0 && labels[i] < config_.vocab_size),
            "MLM label " + std::to_string(labels[i]) + " at position " + std::to_string(positions[i]) +
                " is outside the vocabulary (and not -100)");
  next.mlm_rows = rows;
  for (int64_t first = 0; first < rows; first += options_.decoder_chunk_rows) {
    const int64_t chunk = std::min(options_.decoder_chunk_rows, rows - first);
    int64_t counted = 0;
    for (int64_t r = first; r < first + chunk; ++r) counted += labels[r] != ops::kIgnoreIndex;
    next.mlm_chunk_counted.push_back(counted);
    next.mlm_counted += counted;
  }

  const cudaStream_t stream = context_->stream();
  auto copy = [&](size_t offset, size_t count) {
    if (count == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(inputs_.data() + offset, staging + offset, count * sizeof(int32_t),
                               cudaMemcpyHostToDevice, stream));
  };
  copy(plan_.input_ids, token_count);
  if (next.has_token_types) copy(plan_.token_type_ids, token_count);
  if (next.has_attention_mask) copy(plan_.attention_mask, token_count);
  if (next.has_nsp_labels) copy(plan_.nsp_labels, batch_count);
  copy(plan_.mlm_positions, static_cast<size_t>(rows));
  copy(plan_.mlm_labels, static_cast<size_t>(rows));
  CUDA_CHECK(cudaEventRecord(staging_copied_.get(), stream));
  batch_ = std::move(next);
  batch_uploaded_ = true;
}

// ---- forward ------------------------------------------------------------------------------------------

const bf16* BertForPreTrainingCuda::sequence_output() const {
  if (plan_.layers.empty()) return activation(plan_.embeddings_output);
  return activation(plan_.layers.back().layer_output);
}

void BertForPreTrainingCuda::forward_backward(float loss_scale, bool compute_grads) {
  if (!batch_uploaded_) throw Error("BertForPreTrainingCuda::forward_backward: no batch; call upload_batch first");
  if (loss_slots_.size() == kLossSlots) drain_loss_stats();
  cuda::CrossEntropyDeviceStats* slot = loss_stats_.data() + loss_slots_.size() * plan_.loss_slot_stride;
  CUDA_CHECK(
      cudaMemsetAsync(slot, 0, plan_.loss_slot_stride * sizeof(cuda::CrossEntropyDeviceStats), context_->stream()));

  forward_encoder();
  mlm_head(loss_scale, compute_grads, slot);
  nsp_head(loss_scale, compute_grads, slot + plan_.max_mlm_chunks);
  if (compute_grads) backward_encoder();
  loss_slots_.push_back(LossSlot{static_cast<int64_t>(batch_.mlm_chunk_counted.size()), batch_.has_nsp_labels});
}

void BertForPreTrainingCuda::mlm_logits_at(const BatchView& batch, std::span<const int32_t> positions,
                                           std::span<float> logits) {
  const int64_t rows = static_cast<int64_t>(positions.size()), hidden = config_.hidden_size,
                vocab = config_.vocab_size;
  if (logits.size() != static_cast<size_t>(rows * vocab))
    throw Error("BertForPreTrainingCuda::mlm_logits_at: logits must hold positions x vocab_size = " +
                std::to_string(rows * vocab) + " values, got " + std::to_string(logits.size()));
  if (rows == 0) return;
  // The positions travel as the batch's labelled positions (strictly ascending, as upload_batch
  // requires) with placeholder labels; rows come back in the caller's order.
  std::vector<int32_t> order(positions.begin(), positions.end());
  std::sort(order.begin(), order.end());
  if (std::adjacent_find(order.begin(), order.end()) != order.end())
    throw Error("BertForPreTrainingCuda::mlm_logits_at: positions must be distinct");
  const std::vector<int32_t> placeholder_labels(order.size(), 0);
  BatchView view = batch;
  view.labels = nullptr;
  view.nsp_labels = nullptr;
  view.masked_positions = order.data();
  view.masked_labels = placeholder_labels.data();
  view.num_masked = rows;
  upload_batch(view);

  {
    // Eval mode for this forward only, restored even if it throws.
    struct RestoreDropout {
      bool& flag;
      bool saved;
      ~RestoreDropout() { flag = saved; }
    } restore{dropout_training_, dropout_training_};
    dropout_training_ = false;
    forward_encoder();
  }

  cuda::Context& ctx = *context_;
  const BertParamOffsets& p = table_.offsets;
  bf16* mlm_input = activation(plan_.mlm_input);
  bf16* pre_activation = activation(plan_.mlm_transform_pre_activation);
  bf16* transform_activation = activation(plan_.mlm_transform_activation);
  bf16* transform_output = activation(plan_.mlm_transform_output);
  cuda::gather_rows(ctx, rows, hidden, input(plan_.mlm_positions), sequence_output(), mlm_input);
  cuda::linear_forward(ctx, {rows, hidden, hidden}, mlm_input, working(p.mlm_transform_weight), nullptr,
                       pre_activation);
  cuda::bias_gelu_forward(ctx, gelu_kind_, {rows, hidden}, pre_activation, working(p.mlm_transform_bias),
                          transform_activation);
  cuda::layernorm_forward(ctx, {rows, hidden}, transform_activation, working(p.mlm_layernorm_weight),
                          working(p.mlm_layernorm_bias), static_cast<float>(config_.layer_norm_eps), transform_output,
                          statistic(plan_.mlm_layernorm_mean), statistic(plan_.mlm_layernorm_rstd));
  bf16* chunk_logits = workspace(plan_.mlm_logits);
  std::vector<bf16> host(static_cast<size_t>(std::min<int64_t>(rows, options_.decoder_chunk_rows) * vocab));
  for (int64_t first = 0; first < rows; first += options_.decoder_chunk_rows) {
    const int64_t chunk = std::min<int64_t>(options_.decoder_chunk_rows, rows - first);
    cuda::linear_forward(ctx, {chunk, hidden, vocab}, transform_output + first * hidden, working(p.word_embeddings),
                         working(p.mlm_decoder_bias), chunk_logits);
    CUDA_CHECK(cudaMemcpyAsync(host.data(), chunk_logits, static_cast<size_t>(chunk * vocab) * sizeof(bf16),
                               cudaMemcpyDeviceToHost, ctx.stream()));
    ctx.synchronize();
    for (int64_t r = 0; r < chunk; ++r) {
      // Row first + r of the sorted positions goes back to where the caller listed that position.
      const int32_t position = order[static_cast<size_t>(first + r)];
      const auto caller_row = static_cast<int64_t>(
          std::find(positions.begin(), positions.end(), position) - positions.begin());
      for (int64_t v = 0; v < vocab; ++v)
        logits[static_cast<size_t>(caller_row * vocab + v)] = __bfloat162float(host[static_cast<size_t>(r * vocab + v)]);
    }
  }
  batch_uploaded_ = false;  // its placeholder labels must never be trained on
}

void BertForPreTrainingCuda::forward_encoder() {
  cuda::Context& ctx = *context_;
  const int64_t tokens = batch_.tokens(), hidden = config_.hidden_size, intermediate = config_.intermediate_size;
  const float eps = static_cast<float>(config_.layer_norm_eps);
  const BertParamOffsets& p = table_.offsets;
  const int32_t* attention_mask = batch_.has_attention_mask ? input(plan_.attention_mask) : nullptr;
  auto dropout_in_place = [&](const ops::DropoutSpec& spec, bf16* values) {
    if (spec.probability != 0.0f) cuda::dropout_forward(ctx, tokens * hidden, spec, values, values);
  };

  const ops::EmbeddingShape embedding_shape{batch_.batch,
                                            batch_.seq_len,
                                            hidden,
                                            config_.vocab_size,
                                            config_.max_position_embeddings,
                                            config_.type_vocab_size,
                                            config_.pad_token_id};
  bf16* embeddings = activation(plan_.embeddings_output);
  cuda::embeddings_layernorm_forward(
      ctx, embedding_shape, input(plan_.input_ids), batch_.has_token_types ? input(plan_.token_type_ids) : nullptr,
      working(p.word_embeddings), working(p.position_embeddings), working(p.token_type_embeddings),
      working(p.embeddings_layernorm_weight), working(p.embeddings_layernorm_bias), eps, embeddings,
      statistic(plan_.embeddings_mean), statistic(plan_.embeddings_rstd));
  dropout_in_place(dropout_spec(DropoutSite::kEmbeddings, 0), embeddings);

  const ops::AttentionShape attention_shape{batch_.batch, batch_.seq_len, config_.num_attention_heads,
                                            config_.head_dim(), 3 * hidden};
  const bf16* layer_input = embeddings;
  for (int layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const BertLayerParamOffsets& lp = p.layers[static_cast<size_t>(layer)];
    const LayerActivations& la = plan_.layers[static_cast<size_t>(layer)];
    const LayerStatistics& ls = plan_.layer_statistics[static_cast<size_t>(layer)];
    bf16* qkv = activation(la.qkv);
    cuda::linear_forward(ctx, {tokens, hidden, 3 * hidden}, layer_input, working(lp.qkv_weight), working(lp.qkv_bias),
                         qkv);
    cuda::attention_forward(ctx, attention_shape, qkv, qkv + hidden, qkv + 2 * hidden, attention_mask,
                            dropout_spec(DropoutSite::kAttentionProbs, layer), activation(la.context),
                            statistic(ls.logsumexp));
    bf16* attention_output = activation(la.attention_output);
    cuda::linear_forward(ctx, {tokens, hidden, hidden}, activation(la.context), working(lp.attention_output_weight),
                         working(lp.attention_output_bias), attention_output);
    dropout_in_place(dropout_spec(DropoutSite::kAttentionOutput, layer), attention_output);
    bf16* attention_layernorm = activation(la.attention_layernorm);
    cuda::residual_layernorm_forward(ctx, {tokens, hidden}, attention_output, layer_input,
                                     working(lp.attention_layernorm_weight), working(lp.attention_layernorm_bias), eps,
                                     attention_layernorm, statistic(ls.attention_layernorm_mean),
                                     statistic(ls.attention_layernorm_rstd));
    cuda::linear_forward(ctx, {tokens, hidden, intermediate}, attention_layernorm, working(lp.intermediate_weight),
                         nullptr, activation(la.ffn_pre_activation));
    cuda::bias_gelu_forward(ctx, gelu_kind_, {tokens, intermediate}, activation(la.ffn_pre_activation),
                            working(lp.intermediate_bias), activation(la.ffn_activation));
    bf16* ffn_output = activation(la.ffn_output);
    cuda::linear_forward(ctx, {tokens, intermediate, hidden}, activation(la.ffn_activation), working(lp.output_weight),
                         working(lp.output_bias), ffn_output);
    dropout_in_place(dropout_spec(DropoutSite::kFfnOutput, layer), ffn_output);
    cuda::residual_layernorm_forward(ctx, {tokens, hidden}, ffn_output, attention_layernorm,
                                     working(lp.output_layernorm_weight), working(lp.output_layernorm_bias), eps,
                                     activation(la.layer_output), statistic(ls.output_layernorm_mean),
                                     statistic(ls.output_layernorm_rstd));
    layer_input = activation(la.layer_output);
  }
}

void BertForPreTrainingCuda::mlm_head(float loss_scale, bool compute_grads, cuda::CrossEntropyDeviceStats* stats) {
  cuda::Context& ctx = *context_;
  const int64_t tokens = batch_.tokens(), hidden = config_.hidden_size, vocab = config_.vocab_size;
  const int64_t rows = batch_.mlm_rows;
  const BertParamOffsets& p = table_.offsets;
  bf16* grad_hidden = workspace(plan_.grad_hidden);
  if (rows == 0 || batch_.mlm_counted == 0) {  // no MLM targets: no loss, no gradient
    if (compute_grads)
      CUDA_CHECK(cudaMemsetAsync(grad_hidden, 0, static_cast<size_t>(tokens * hidden) * sizeof(bf16), ctx.stream()));
    return;
  }

  const int32_t* positions = input(plan_.mlm_positions);
  const int32_t* labels = input(plan_.mlm_labels);
  bf16* mlm_input = activation(plan_.mlm_input);
  bf16* pre_activation = activation(plan_.mlm_transform_pre_activation);
  bf16* transform_activation = activation(plan_.mlm_transform_activation);
  bf16* transform_output = activation(plan_.mlm_transform_output);
  float* layernorm_mean = statistic(plan_.mlm_layernorm_mean);
  float* layernorm_rstd = statistic(plan_.mlm_layernorm_rstd);
  cuda::gather_rows(ctx, rows, hidden, positions, sequence_output(), mlm_input);
  cuda::linear_forward(ctx, {rows, hidden, hidden}, mlm_input, working(p.mlm_transform_weight), nullptr,
                       pre_activation);
  cuda::bias_gelu_forward(ctx, gelu_kind_, {rows, hidden}, pre_activation, working(p.mlm_transform_bias),
                          transform_activation);
  cuda::layernorm_forward(ctx, {rows, hidden}, transform_activation, working(p.mlm_layernorm_weight),
                          working(p.mlm_layernorm_bias), static_cast<float>(config_.layer_norm_eps), transform_output,
                          layernorm_mean, layernorm_rstd);

  // The decoder (tied to the word embeddings) in row chunks, as the CPU model: each chunk's mean-loss
  // gradient is rescaled by its share of the counted rows.
  bf16* grad_transform_output = workspace(plan_.grad_mlm_transform_output);
  bf16* logits = workspace(plan_.mlm_logits);
  const int64_t chunk_rows = options_.decoder_chunk_rows;
  for (size_t c = 0; c < batch_.mlm_chunk_counted.size(); ++c) {
    const int64_t first = static_cast<int64_t>(c) * chunk_rows;
    const int64_t chunk = std::min(chunk_rows, rows - first);
    const int64_t chunk_counted = batch_.mlm_chunk_counted[c];
    if (chunk_counted == 0) {
      if (compute_grads)
        CUDA_CHECK(cudaMemsetAsync(grad_transform_output + first * hidden, 0,
                                   static_cast<size_t>(chunk * hidden) * sizeof(bf16), ctx.stream()));
      continue;
    }
    const ops::LinearShape decoder_shape{chunk, hidden, vocab};
    cuda::linear_forward(ctx, decoder_shape, transform_output + first * hidden, working(p.word_embeddings),
                         working(p.mlm_decoder_bias), logits);
    const float grad_scale = loss_scale * static_cast<float>(chunk_counted) / static_cast<float>(batch_.mlm_counted);
    cuda::softmax_cross_entropy(ctx, {chunk, vocab}, logits, labels + first, grad_scale,
                                compute_grads ? logits : nullptr, stats + c);
    if (compute_grads)
      cuda::linear_backward(ctx, decoder_shape, logits, transform_output + first * hidden, working(p.word_embeddings),
                            grad_transform_output + first * hidden, grad_at(p.word_embeddings),
                            grad_at(p.mlm_decoder_bias));
  }
  if (!compute_grads) return;

  bf16* grad_activation = workspace(plan_.grad_mlm_transform_activation);
  bf16* grad_mlm_input = workspace(plan_.grad_mlm_input);
  cuda::layernorm_backward(ctx, {rows, hidden}, grad_transform_output, transform_activation,
                           working(p.mlm_layernorm_weight), layernorm_mean, layernorm_rstd, grad_activation,
                           grad_at(p.mlm_layernorm_weight), grad_at(p.mlm_layernorm_bias));
  cuda::bias_gelu_backward(ctx, gelu_kind_, {rows, hidden}, grad_activation, pre_activation,
                           working(p.mlm_transform_bias), grad_activation, grad_at(p.mlm_transform_bias));
  cuda::linear_backward(ctx, {rows, hidden, hidden}, grad_activation, mlm_input, working(p.mlm_transform_weight),
                        grad_mlm_input, grad_at(p.mlm_transform_weight), nullptr);
  // d(encoder output): the head's row gradients at their positions, zero elsewhere.
  CUDA_CHECK(cudaMemsetAsync(grad_hidden, 0, static_cast<size_t>(tokens * hidden) * sizeof(bf16), ctx.stream()));
  cuda::scatter_add_rows(ctx, rows, hidden, positions, grad_mlm_input, grad_hidden);
}

void BertForPreTrainingCuda::nsp_head(float loss_scale, bool compute_grads, cuda::CrossEntropyDeviceStats* stats) {
  if (!batch_.has_nsp_labels) return;
  cuda::Context& ctx = *context_;
  const int64_t hidden = config_.hidden_size;
  const BertParamOffsets& p = table_.offsets;
  const ops::PoolerShape pooler_shape{batch_.batch, batch_.seq_len, hidden};
  bf16* pooled = activation(plan_.pooled);
  bf16* nsp_logits = activation(plan_.nsp_logits);
  cuda::pooler_forward(ctx, pooler_shape, sequence_output(), working(p.pooler_weight), working(p.pooler_bias), pooled);
  cuda::linear_forward(ctx, {batch_.batch, hidden, 2}, pooled, working(p.nsp_weight), working(p.nsp_bias), nsp_logits);
  cuda::softmax_cross_entropy(ctx, {batch_.batch, 2}, nsp_logits, input(plan_.nsp_labels), loss_scale,
                              compute_grads ? nsp_logits : nullptr, stats);
  if (!compute_grads || batch_.nsp_counted == 0) return;
  bf16* grad_pooled = workspace(plan_.grad_pooled);
  cuda::linear_backward(ctx, {batch_.batch, hidden, 2}, nsp_logits, pooled, working(p.nsp_weight), grad_pooled,
                        grad_at(p.nsp_weight), grad_at(p.nsp_bias));
  // Adds into the [CLS] rows of d(encoder output), which mlm_head has written.
  cuda::pooler_backward(ctx, pooler_shape, grad_pooled, sequence_output(), working(p.pooler_weight), pooled,
                        workspace(plan_.grad_hidden), grad_at(p.pooler_weight), grad_at(p.pooler_bias));
}

// ---- backward -----------------------------------------------------------------------------------------

void BertForPreTrainingCuda::backward_encoder() {
  cuda::Context& ctx = *context_;
  const int64_t tokens = batch_.tokens(), hidden = config_.hidden_size, intermediate = config_.intermediate_size;
  const BertParamOffsets& p = table_.offsets;
  const int32_t* attention_mask = batch_.has_attention_mask ? input(plan_.attention_mask) : nullptr;
  bf16* grad_hidden = workspace(plan_.grad_hidden);  // d(layer output) on entry to a layer, d(layer input) on exit
  bf16* grad_residual = workspace(plan_.grad_residual);
  bf16* grad_branch = workspace(plan_.grad_branch);
  bf16* grad_context = workspace(plan_.grad_context);
  bf16* grad_ffn = workspace(plan_.grad_ffn);
  bf16* grad_qkv = workspace(plan_.grad_qkv);
  // d(dropout input) from d(dropout output); with dropout off that is the same buffer.
  auto dropout_input_grad = [&](const ops::DropoutSpec& spec, const bf16* grad_output) -> const bf16* {
    if (spec.probability == 0.0f) return grad_output;
    cuda::dropout_backward(ctx, tokens * hidden, spec, grad_output, grad_branch);
    return grad_branch;
  };
  const ops::AttentionShape attention_shape{batch_.batch, batch_.seq_len, config_.num_attention_heads,
                                            config_.head_dim(), 3 * hidden};

  for (int layer = config_.num_hidden_layers - 1; layer >= 0; --layer) {
    const BertLayerParamOffsets& lp = p.layers[static_cast<size_t>(layer)];
    const LayerActivations& la = plan_.layers[static_cast<size_t>(layer)];
    const LayerStatistics& ls = plan_.layer_statistics[static_cast<size_t>(layer)];
    const bf16* layer_input = layer == 0 ? activation(plan_.embeddings_output)
                                         : activation(plan_.layers[static_cast<size_t>(layer - 1)].layer_output);
    // Output LayerNorm: grad_residual = d(ffn_output) = d(attention_layernorm) through the residual.
    cuda::residual_layernorm_backward(
        ctx, {tokens, hidden}, grad_hidden, activation(la.ffn_output), activation(la.attention_layernorm),
        working(lp.output_layernorm_weight), statistic(ls.output_layernorm_mean), statistic(ls.output_layernorm_rstd),
        grad_residual, grad_at(lp.output_layernorm_weight), grad_at(lp.output_layernorm_bias));
    // FFN: down-projection, bias + GELU, up-projection (adds onto the residual gradient).
    const bf16* grad_ffn_output = dropout_input_grad(dropout_spec(DropoutSite::kFfnOutput, layer), grad_residual);
    cuda::linear_backward(ctx, {tokens, intermediate, hidden}, grad_ffn_output, activation(la.ffn_activation),
                          working(lp.output_weight), grad_ffn, grad_at(lp.output_weight), grad_at(lp.output_bias));
    cuda::bias_gelu_backward(ctx, gelu_kind_, {tokens, intermediate}, grad_ffn, activation(la.ffn_pre_activation),
                             working(lp.intermediate_bias), grad_ffn, grad_at(lp.intermediate_bias));
    cuda::linear_backward(ctx, {tokens, hidden, intermediate}, grad_ffn, activation(la.attention_layernorm),
                          working(lp.intermediate_weight), grad_residual, grad_at(lp.intermediate_weight), nullptr,
                          ops::InputGrad::kAccumulate);
    // Attention LayerNorm: grad_hidden = d(attention_output) = d(layer input) through the residual.
    cuda::residual_layernorm_backward(ctx, {tokens, hidden}, grad_residual, activation(la.attention_output),
                                      layer_input, working(lp.attention_layernorm_weight),
                                      statistic(ls.attention_layernorm_mean), statistic(ls.attention_layernorm_rstd),
                                      grad_hidden, grad_at(lp.attention_layernorm_weight),
                                      grad_at(lp.attention_layernorm_bias));
    const bf16* grad_attention_output =
        dropout_input_grad(dropout_spec(DropoutSite::kAttentionOutput, layer), grad_hidden);
    cuda::linear_backward(ctx, {tokens, hidden, hidden}, grad_attention_output, activation(la.context),
                          working(lp.attention_output_weight), grad_context, grad_at(lp.attention_output_weight),
                          grad_at(lp.attention_output_bias));
    const bf16* qkv = activation(la.qkv);
    cuda::attention_backward(ctx, attention_shape, grad_context, qkv, qkv + hidden, qkv + 2 * hidden, attention_mask,
                             dropout_spec(DropoutSite::kAttentionProbs, layer), activation(la.context),
                             statistic(ls.logsumexp), grad_qkv, grad_qkv + hidden, grad_qkv + 2 * hidden);
    cuda::linear_backward(ctx, {tokens, hidden, 3 * hidden}, grad_qkv, layer_input, working(lp.qkv_weight), grad_hidden,
                          grad_at(lp.qkv_weight), grad_at(lp.qkv_bias), ops::InputGrad::kAccumulate);
  }

  const ops::EmbeddingShape embedding_shape{batch_.batch,
                                            batch_.seq_len,
                                            hidden,
                                            config_.vocab_size,
                                            config_.max_position_embeddings,
                                            config_.type_vocab_size,
                                            config_.pad_token_id};
  const bf16* grad_embeddings = dropout_input_grad(dropout_spec(DropoutSite::kEmbeddings, 0), grad_hidden);
  cuda::embeddings_layernorm_backward(
      ctx, embedding_shape, grad_embeddings, input(plan_.input_ids),
      batch_.has_token_types ? input(plan_.token_type_ids) : nullptr, working(p.word_embeddings),
      working(p.position_embeddings), working(p.token_type_embeddings), working(p.embeddings_layernorm_weight),
      statistic(plan_.embeddings_mean), statistic(plan_.embeddings_rstd), grad_at(p.word_embeddings),
      grad_at(p.position_embeddings), grad_at(p.token_type_embeddings), grad_at(p.embeddings_layernorm_weight),
      grad_at(p.embeddings_layernorm_bias));
}

// ---- losses, optimizer --------------------------------------------------------------------------------

void BertForPreTrainingCuda::drain_loss_stats() {
  if (loss_slots_.empty()) return;
  context_->synchronize();
  std::vector<cuda::CrossEntropyDeviceStats> host(loss_slots_.size() * plan_.loss_slot_stride);
  CUDA_CHECK(cudaMemcpy(host.data(), loss_stats_.data(), host.size() * sizeof(cuda::CrossEntropyDeviceStats),
                        cudaMemcpyDeviceToHost));
  for (size_t s = 0; s < loss_slots_.size(); ++s) {
    const cuda::CrossEntropyDeviceStats* slot = host.data() + s * plan_.loss_slot_stride;
    LossStats stats;
    double mlm_loss_sum = 0;
    for (int64_t c = 0; c < loss_slots_[s].mlm_chunks; ++c) {
      mlm_loss_sum += slot[c].loss_sum;
      stats.mlm_count += slot[c].num_counted;
      stats.mlm_correct += slot[c].num_correct;
    }
    stats.mlm_loss = stats.mlm_count > 0 ? mlm_loss_sum / static_cast<double>(stats.mlm_count) : 0.0;
    if (loss_slots_[s].has_nsp) {
      const cuda::CrossEntropyDeviceStats& nsp = slot[plan_.max_mlm_chunks];
      stats.nsp_count = nsp.num_counted;
      stats.nsp_correct = nsp.num_correct;
      stats.nsp_loss = nsp.num_counted > 0 ? nsp.loss_sum / static_cast<double>(nsp.num_counted) : 0.0;
    }
    stats.loss = stats.mlm_loss + stats.nsp_loss;
    drained_.push_back(stats);
    last_loss_ = stats;
  }
  loss_slots_.clear();
}

std::vector<LossStats> BertForPreTrainingCuda::take_loss_stats() {
  drain_loss_stats();
  return std::exchange(drained_, {});
}

LossStats BertForPreTrainingCuda::read_loss_stats() {
  drain_loss_stats();
  if (!last_loss_) throw Error("BertForPreTrainingCuda::read_loss_stats: no forward has run yet");
  return *last_loss_;
}

void BertForPreTrainingCuda::zero_grads() {
  CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), context_->stream()));
}

void BertForPreTrainingCuda::optimizer_step(const ops::AdamWHyperparams& hyper, float max_grad_norm) {
  cuda::grad_norm(*context_, *tensor_list_, grad_norm_.data());
  // Without clipping the norm still gates the step: a non-finite norm skips it.
  const float max_norm = max_grad_norm > 0.0f ? max_grad_norm : std::numeric_limits<float>::max();
  cuda::adamw_step(*context_, hyper, *tensor_list_, grad_norm_.data(), max_norm);
  optimizer_stepped_ = true;
}

float BertForPreTrainingCuda::read_grad_norm() {
  if (!optimizer_stepped_) return std::numeric_limits<float>::quiet_NaN();
  context_->synchronize();
  float norm = 0;
  CUDA_CHECK(cudaMemcpy(&norm, grad_norm_.data(), sizeof(float), cudaMemcpyDeviceToHost));
  return norm;
}

// ---- host copies and checkpoints ----------------------------------------------------------------------

std::vector<float> BertForPreTrainingCuda::download_parameters() const { return master_.download(); }

std::vector<float> BertForPreTrainingCuda::download_working_parameters() const {
  const std::vector<bf16> values = working_.download();
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = __bfloat162float(values[i]);
  return out;
}

std::vector<float> BertForPreTrainingCuda::download_grads() const { return grads_.download(); }

void BertForPreTrainingCuda::upload_parameters(std::span<const float> arena) {
  if (arena.size() != table_.arena_elements)
    throw Error("BertForPreTrainingCuda::upload_parameters: " + std::to_string(arena.size()) +
                " values for an arena of " + std::to_string(table_.arena_elements));
  context_->synchronize();  // queued kernels may still read the master weights
  master_.upload(arena);
  cuda::convert_f32_to_bf16(*context_, static_cast<int64_t>(arena.size()), master_.data(), working_.data());
  context_->synchronize();
}

void BertForPreTrainingCuda::download_moments(std::vector<float>& exp_avg, std::vector<float>& exp_avg_sq) const {
  const std::vector<float> moments = moments_.download();
  const auto n = static_cast<std::ptrdiff_t>(table_.arena_elements);
  exp_avg.assign(moments.begin(), moments.begin() + n);
  exp_avg_sq.assign(moments.begin() + n, moments.end());
}

void BertForPreTrainingCuda::upload_moments(std::span<const float> exp_avg, std::span<const float> exp_avg_sq) {
  if (exp_avg.size() != table_.arena_elements || exp_avg_sq.size() != table_.arena_elements)
    throw Error("BertForPreTrainingCuda::upload_moments: the moments must have " +
                std::to_string(table_.arena_elements) + " values each");
  std::vector<float> moments(exp_avg.begin(), exp_avg.end());
  moments.insert(moments.end(), exp_avg_sq.begin(), exp_avg_sq.end());
  context_->synchronize();
  moments_.upload(moments);
}

void BertForPreTrainingCuda::copy_parameters_from(const BertForPreTraining<float>& model) {
  const std::vector<ParamInfo>& theirs = model.params();
  bool same = theirs.size() == table_.params.size() && model.parameters().size() == table_.arena_elements;
  for (size_t i = 0; same && i < theirs.size(); ++i)
    same = theirs[i].name == table_.params[i].name && theirs[i].offset == table_.params[i].offset &&
           theirs[i].shape == table_.params[i].shape;
  if (!same) throw Error("BertForPreTrainingCuda::copy_parameters_from: the CPU model has a different config");
  upload_parameters(model.parameters());
}

void BertForPreTrainingCuda::save_safetensors(const std::string& path) const {
  write_parameter_arena(path, table_.params, download_parameters());
}

void BertForPreTrainingCuda::load_safetensors(const std::string& path) {
  upload_parameters(read_parameter_arena(path, config_, table_));
}

}  // namespace bert
