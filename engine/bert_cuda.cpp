// BertForPreTrainingCuda: device arenas, batch upload, the CUDA backend of engine/bert_graph.h (the
// one forward/backward both models run), loss slots, AdamW, checkpoints. The model, the precision
// scheme and the memory budget are described in engine/bert_cuda.h.
#include "engine/bert_cuda.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <thread>
#include <utility>

#include "common/error.h"
#include "engine/bert_graph.h"

namespace bert {

namespace {

using cuda::bf16;

// The fused attention kernel's sequence limit.
constexpr int64_t kMaxSeqLen = cuda::kAttentionMaxSeqLen;

// Context scratch (not part of the arenas; reserve allocates it with them), an upper bound of its
// largest user, the embeddings backward (cuda::embeddings_layernorm_backward_scratch_bytes; a test holds
// this to it at BERT's shapes): per token its fp32 dz row (ld = hidden rounded up to 4), the
// dgamma/dbeta partials (<= 2 rows of hidden per 16 tokens), the scatter slots (2 rows of ld per 32
// tokens), three index arrays and the radix sort's key/value copies (~8 B); per batch the token-type
// partials (<= 4 types x positions x hidden); and 4 MiB for the small users (cross-entropy, the
// column sums, the grad norm) and CUB's histograms. An op that needs more grows it (one stream sync).
size_t context_scratch_estimate(const BertConfig& config, int64_t tokens) {
  const size_t hidden = static_cast<size_t>(config.hidden_size), ld = (hidden + 3) / 4 * 4;
  const size_t per_token = ld * sizeof(float) + (hidden + ld) / 2 + 32;
  const size_t type_partials = 4 * static_cast<size_t>(config.max_position_embeddings) * hidden * sizeof(float);
  return static_cast<size_t>(tokens) * per_token + type_partials + (size_t{4} << 20);
}

// The same + the cuBLASLt workspace.
size_t op_scratch_estimate(const BertConfig& config, int64_t tokens) {
  return (size_t{32} << 20) + context_scratch_estimate(config, tokens);
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
      {"workspace (bf16)", workspace_bytes},  // the backward's buffers and the decoder's logits
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
                ", the fused attention kernel's limit (use shards built with bert_prepare --max-seq-len <= " +
                std::to_string(kMaxSeqLen) + " and [data] max_seq_length <= " + std::to_string(kMaxSeqLen) + ")");
  std::string why_not;
  if (!cuda::attention_supported(ops::AttentionShape{1, seq_len, 1, 64, 64}, &why_not))
    unsupported("seq_len: " + why_not);
}

BertForPreTrainingCuda::ArenaPlan BertForPreTrainingCuda::plan_arenas(const BertConfig& config,
                                                                      const ModelOptions& options,
                                                                      int64_t capacity_batch, int64_t capacity_tokens) {
  ArenaPlan plan;
  plan.graph = plan_batch_arenas(config, options, capacity_batch, capacity_tokens);
  // Batch inputs (int32).
  ArenaCursor inputs;
  plan.input_ids = inputs.allocate(capacity_tokens);
  plan.token_type_ids = inputs.allocate(capacity_tokens);
  plan.attention_mask = inputs.allocate(capacity_tokens);
  plan.nsp_labels = inputs.allocate(capacity_batch);
  plan.mlm_positions = inputs.allocate(capacity_tokens);
  plan.mlm_labels = inputs.allocate(capacity_tokens);
  plan.input_elements = inputs.size();
  plan.loss_slot_stride = static_cast<size_t>(plan.graph.max_mlm_chunks) + 1;
  return plan;
}

CudaMemoryPlan BertForPreTrainingCuda::memory_plan(const BertConfig& config, int64_t max_batch, int64_t max_seq_len,
                                                   const ModelOptions& requested) {
  check_supported(config);
  const ModelOptions options = resolve_model_options(requested, kCudaDecoderChunkRows);
  check_capacity(config, max_batch, max_seq_len);
  const ParameterTable table = make_parameter_table(config);
  const ArenaPlan plan = plan_arenas(config, options, max_batch, max_batch * max_seq_len);

  CudaMemoryPlan memory;
  memory.max_batch = max_batch;
  memory.max_seq_len = max_seq_len;
  for (const ParamInfo& info : table.params) memory.num_parameters += static_cast<int64_t>(info.numel);
  const size_t n = table.arena_elements;
  const bool training = !options.inference_only;
  memory.master_params_bytes = training ? n * sizeof(float) : 0;
  memory.working_params_bytes = n * sizeof(bf16);
  memory.grads_bytes = training ? n * sizeof(float) : 0;
  memory.optimizer_bytes = training ? 2 * n * sizeof(float) : 0;
  memory.activations_bytes = plan.graph.activation_elements * sizeof(bf16);
  memory.workspace_bytes = plan.graph.workspace_elements * sizeof(bf16);
  memory.statistics_bytes = plan.graph.statistics_elements * sizeof(float);
  memory.inputs_bytes = plan.input_elements * sizeof(int32_t);
  memory.loss_stats_bytes = kLossSlots * plan.loss_slot_stride * sizeof(cuda::CrossEntropyDeviceStats) +
                            (training ? kNormSlots * sizeof(float) + sizeof(int64_t) : 0);
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

void BertForPreTrainingCuda::StreamDeleter::operator()(cudaStream_t stream) const noexcept {
  if (stream != nullptr) cudaStreamDestroy(stream);
}

BertForPreTrainingCuda::BertForPreTrainingCuda(const BertConfig& config, const ModelOptions& options)
    : config_(config), options_(resolve_model_options(options, kCudaDecoderChunkRows)), table_(checked_table(config)) {
  context_ = std::make_unique<cuda::Context>();
  for (auto* event : {&staging_copied_, &stream_done_}) {
    cudaEvent_t created = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&created, cudaEventDisableTiming));
    event->reset(created);
  }

  const size_t n = table_.arena_elements;
  working_.resize(n);
  const cudaStream_t stream = context_->stream();
  if (options_.inference_only) {  // the bf16 working copy only
    if (options_.initialize_parameters) {
      std::vector<float> host(n);
      init_parameters<float>(config_, table_, options_.init_seed, host);
      upload_parameters(host);
    } else {  // zero (bf16 0 is all zero bits) without a host arena to upload
      CUDA_CHECK(cudaMemsetAsync(working_.data(), 0, working_.bytes(), stream));
      context_->synchronize();
    }
    return;
  }
  master_.resize(n);
  grads_.resize(n);
  moments_.resize(2 * n);
  grad_norms_.resize(kNormSlots);
  update_count_.resize(1);
  CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(moments_.data(), 0, moments_.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(grad_norms_.data(), 0, grad_norms_.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(update_count_.data(), 0, update_count_.bytes(), stream));

  if (options_.initialize_parameters) {
    std::vector<float> host(n);
    init_parameters<float>(config_, table_, options_.init_seed, host);
    upload_parameters(host);
  } else {
    CUDA_CHECK(cudaMemsetAsync(master_.data(), 0, master_.bytes(), stream));
    CUDA_CHECK(cudaMemsetAsync(working_.data(), 0, working_.bytes(), stream));
    context_->synchronize();
  }

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
  // Queued kernels and sums may still use the arenas and the pinned staging: wait before they are freed.
  if (sum_stream_) cudaStreamSynchronize(sum_stream_.get());
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
  if (max_batch <= plan_.graph.capacity_batch && tokens <= plan_.graph.capacity_tokens) return;
  // Growing: the slots and buffers in use are read or released first.
  drain_loss_stats();
  context_->synchronize();
  CUDA_CHECK(cudaEventSynchronize(staging_copied_.get()));

  ArenaPlan plan = plan_arenas(config_, options_, std::max(max_batch, plan_.graph.capacity_batch),
                               std::max(tokens, plan_.graph.capacity_tokens));
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
  activations_.resize(plan.graph.activation_elements);
  workspace_.resize(plan.graph.workspace_elements);
  statistics_.resize(plan.graph.statistics_elements);
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
  // The ops' scratch too: an out-of-memory error here, before training, not in a step's first op;
  // and no step synchronises to grow it (a cudaFree waits for the whole device, NCCL's stream too).
  context_->scratch(context_scratch_estimate(config_, plan.graph.capacity_tokens));
  context_->synchronize();
  plan_ = std::move(plan);
}

CudaMemoryPlan BertForPreTrainingCuda::allocated() const {
  CudaMemoryPlan memory;
  memory.max_batch = plan_.graph.capacity_batch;
  memory.max_seq_len = plan_.graph.capacity_batch > 0 ? plan_.graph.capacity_tokens / plan_.graph.capacity_batch : 0;
  memory.num_parameters = num_parameters();
  memory.master_params_bytes = master_.bytes();
  memory.working_params_bytes = working_.bytes();
  memory.grads_bytes = grads_.bytes();
  memory.optimizer_bytes = moments_.bytes();
  memory.activations_bytes = activations_.bytes();
  memory.workspace_bytes = workspace_.bytes();
  memory.statistics_bytes = statistics_.bytes();
  memory.inputs_bytes = inputs_.bytes();
  memory.loss_stats_bytes = loss_stats_.bytes() + grad_norms_.bytes() + update_count_.bytes();
  memory.op_scratch_bytes = context_->gemm_workspace_bytes() + context_->scratch_bytes();
  return memory;
}

// ---- batch upload -------------------------------------------------------------------------------------

void BertForPreTrainingCuda::set_dropout(uint64_t seed, uint64_t step, bool training) {
  dropout_seed_ = seed;
  dropout_step_ = step;
  dropout_training_ = training;
}

void BertForPreTrainingCuda::upload_batch(const BatchView& batch) { upload(batch, options_); }

void BertForPreTrainingCuda::upload(const BatchView& batch, const ModelOptions& options) {
  batch_uploaded_ = false;  // a rejected batch leaves none: the previous one is never re-run by mistake
  prepare_batch(batch, config_, options, "BertForPreTrainingCuda", pending_);
  reserve(batch.batch, batch.seq_len);

  // The previous upload's copies read the staging buffer: wait for them (not for the kernels).
  wait_for_event(staging_copied_.get());
  int32_t* staging = staging_.get();
  const HostBatch& next = pending_;
  const size_t token_count = static_cast<size_t>(next.tokens()), batch_count = static_cast<size_t>(next.batch);
  const size_t rows = static_cast<size_t>(next.mlm_rows());
  std::copy_n(batch.input_ids, token_count, staging + plan_.input_ids);
  if (next.has_token_types) std::copy_n(batch.token_type_ids, token_count, staging + plan_.token_type_ids);
  if (next.has_attention_mask) std::copy_n(batch.attention_mask, token_count, staging + plan_.attention_mask);
  if (next.has_nsp_labels) std::copy_n(batch.nsp_labels, batch_count, staging + plan_.nsp_labels);
  std::copy_n(next.mlm_positions.data(), rows, staging + plan_.mlm_positions);
  std::copy_n(next.mlm_labels.data(), rows, staging + plan_.mlm_labels);

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
  copy(plan_.mlm_positions, rows);
  copy(plan_.mlm_labels, rows);
  CUDA_CHECK(cudaEventRecord(staging_copied_.get(), stream));
  std::swap(batch_, pending_);
  batch_uploaded_ = true;
}

// ---- the CUDA backend of engine/bert_graph.h -----------------------------------------------------------

// forward_backward_summed's buckets. The graph reports finished gradients top down
// (gradients_final(offset): everything at >= offset is final); [offset, end_) is what is finished and
// not yet handed over. Once it holds bucket_elements values, or reaches the arena's start, the model's
// stream records `ready`, the sum stream waits for it and the sum is queued there. One event serves
// every bucket: a stream waits for the work an event had captured when cudaStreamWaitEvent was called.
class GradientBuckets {
 public:
  GradientBuckets(const GradientSum& sum, float* grads, size_t elements, cudaStream_t compute, cudaStream_t summing,
                  cudaEvent_t ready)
      : sum_(sum), grads_(grads), end_(elements), compute_(compute), summing_(summing), ready_(ready) {}

  void finished(size_t offset) {
    if (offset > end_)
      throw Error("internal: gradients_final(" + std::to_string(offset) + ") after gradients_final(" +
                  std::to_string(end_) + "): the backward must finish the arena top down");
    if (offset != 0 && end_ - offset < sum_.bucket_elements) return;  // wait for more
    if (offset == end_) return;
    CUDA_CHECK(cudaEventRecord(ready_, compute_));
    CUDA_CHECK(cudaStreamWaitEvent(summing_, ready_, 0));
    sum_.sum(grads_ + offset, end_ - offset, summing_);
    end_ = offset;
  }
  // Every gradient was handed over (the backward reached the embeddings).
  bool complete() const { return end_ == 0; }

 private:
  const GradientSum& sum_;
  float* const grads_;
  size_t end_;
  const cudaStream_t compute_, summing_;
  const cudaEvent_t ready_;
};

// ---- OpProfiler -------------------------------------------------------------------------------------------

OpProfiler::~OpProfiler() {
  for (const Record& record : records_) {
    cudaEventDestroy(record.start);
    cudaEventDestroy(record.stop);
  }
}

void OpProfiler::begin(cudaStream_t stream, std::string name) {
  if (open_) --used_;  // the last op threw before its end: its record is reused
  if (used_ == records_.size()) {
    Record record;
    CUDA_CHECK(cudaEventCreate(&record.start));
    const cudaError_t made = cudaEventCreate(&record.stop);
    if (made != cudaSuccess) cudaEventDestroy(record.start);
    CUDA_CHECK(made);
    records_.push_back(std::move(record));
  }
  Record& record = records_[used_++];
  record.name = std::move(name);
  CUDA_CHECK(cudaEventRecord(record.start, stream));
  open_ = true;
}

void OpProfiler::end(cudaStream_t stream) {
  if (!open_) throw Error("OpProfiler::end without a begin");
  CUDA_CHECK(cudaEventRecord(records_[used_ - 1].stop, stream));
  open_ = false;
}

std::vector<OpProfiler::Entry> OpProfiler::collect() {
  if (open_) --used_;
  open_ = false;
  std::vector<Entry> entries;
  if (used_ > 0) CUDA_CHECK(cudaEventSynchronize(records_[used_ - 1].stop));
  for (size_t i = 0; i < used_; ++i) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, records_[i].start, records_[i].stop));
    auto it = std::find_if(entries.begin(), entries.end(), [&](const Entry& e) { return e.name == records_[i].name; });
    if (it == entries.end()) it = entries.insert(entries.end(), Entry{records_[i].name, 0, 0.0});
    ++it->calls;
    it->ms += static_cast<double>(ms);
  }
  used_ = 0;
  return entries;
}

namespace {

// The bert::cuda ops with the model's Context bound; cross-entropy totals go to a device loss slot.
// With a profiler, each op is timed under its name and, where the cost depends on it, its shape.
class CudaGraphBackend {
 public:
  using Act = bf16;
  using Grad = float;
  using Stat = float;
  using Scalar = float;

  CudaGraphBackend(cuda::Context& ctx, cuda::CrossEntropyDeviceStats* slot, GradientBuckets* buckets,
                   OpProfiler* profiler)
      : ctx_(ctx), slot_(slot), buckets_(buckets), profiler_(profiler) {}

  void linear_forward(const ops::LinearShape& shape, const bf16* x, const bf16* weight, const bf16* bias, bf16* y) {
    timed(
        __func__, [&] { return dims(shape); }, [&] { cuda::linear_forward(ctx_, shape, x, weight, bias, y); });
  }
  void linear_backward(const ops::LinearShape& shape, const bf16* dy, const bf16* x, const bf16* weight, bf16* dx,
                       float* dweight, float* dbias, ops::InputGrad dx_mode) {
    timed(
        __func__, [&] { return dims(shape); },
        [&] { cuda::linear_backward(ctx_, shape, dy, x, weight, dx, dweight, dbias, dx_mode); });
  }
  void embeddings_layernorm_forward(const ops::EmbeddingShape& shape, const int32_t* input_ids,
                                    const int32_t* token_type_ids, const bf16* word, const bf16* position,
                                    const bf16* type, const bf16* gamma, const bf16* beta, float eps, bf16* out,
                                    float* mean, float* rstd) {
    timed(__func__, [&] {
      cuda::embeddings_layernorm_forward(ctx_, shape, input_ids, token_type_ids, word, position, type, gamma, beta, eps,
                                         out, mean, rstd);
    });
  }
  void embeddings_layernorm_backward(const ops::EmbeddingShape& shape, const bf16* dout, const int32_t* input_ids,
                                     const int32_t* token_type_ids, const bf16* word, const bf16* position,
                                     const bf16* type, const bf16* gamma, const float* mean, const float* rstd,
                                     float* d_word, float* d_position, float* d_type, float* dgamma, float* dbeta) {
    timed(__func__, [&] {
      cuda::embeddings_layernorm_backward(ctx_, shape, dout, input_ids, token_type_ids, word, position, type, gamma,
                                          mean, rstd, d_word, d_position, d_type, dgamma, dbeta);
    });
  }
  void layernorm_forward(const ops::MatrixShape& shape, const bf16* x, const bf16* gamma, const bf16* beta, float eps,
                         bf16* y, float* mean, float* rstd) {
    timed(__func__, [&] { cuda::layernorm_forward(ctx_, shape, x, gamma, beta, eps, y, mean, rstd); });
  }
  void layernorm_backward(const ops::MatrixShape& shape, const bf16* dy, const bf16* x, const bf16* gamma,
                          const float* mean, const float* rstd, bf16* dx, float* dgamma, float* dbeta) {
    timed(__func__, [&] { cuda::layernorm_backward(ctx_, shape, dy, x, gamma, mean, rstd, dx, dgamma, dbeta); });
  }
  void residual_layernorm_forward(const ops::MatrixShape& shape, const bf16* x, const bf16* residual, const bf16* gamma,
                                  const bf16* beta, float eps, bf16* y, float* mean, float* rstd) {
    timed(__func__,
          [&] { cuda::residual_layernorm_forward(ctx_, shape, x, residual, gamma, beta, eps, y, mean, rstd); });
  }
  void dropout_residual_layernorm_forward(const ops::MatrixShape& shape, const ops::DropoutSpec& dropout, bf16* x,
                                          const bf16* residual, const bf16* gamma, const bf16* beta, float eps,
                                          bf16* y, float* mean, float* rstd) {
    timed(__func__, [&] {
      cuda::dropout_residual_layernorm_forward(ctx_, shape, dropout, x, residual, gamma, beta, eps, y, mean, rstd);
    });
  }
  void residual_layernorm_backward(const ops::MatrixShape& shape, const bf16* dy, const bf16* x, const bf16* residual,
                                   const bf16* gamma, const float* mean, const float* rstd, bf16* d_sum, float* dgamma,
                                   float* dbeta) {
    timed(__func__, [&] {
      cuda::residual_layernorm_backward(ctx_, shape, dy, x, residual, gamma, mean, rstd, d_sum, dgamma, dbeta);
    });
  }
  void residual_layernorm_dropout_backward(const ops::MatrixShape& shape, const ops::DropoutSpec& dropout,
                                           const bf16* dy, const bf16* x, const bf16* residual, const bf16* gamma,
                                           const float* mean, const float* rstd, bf16* d_sum, bf16* d_x, float* dgamma,
                                           float* dbeta) {
    timed(__func__, [&] {
      cuda::residual_layernorm_dropout_backward(ctx_, shape, dropout, dy, x, residual, gamma, mean, rstd, d_sum, d_x,
                                                dgamma, dbeta);
    });
  }
  void bias_gelu_forward(ops::GeluKind kind, const ops::MatrixShape& shape, const bf16* x, const bf16* bias, bf16* y) {
    timed(
        __func__, [&] { return std::to_string(shape.cols); },
        [&] { cuda::bias_gelu_forward(ctx_, kind, shape, x, bias, y); });
  }
  void bias_gelu_backward(ops::GeluKind kind, const ops::MatrixShape& shape, const bf16* dy, const bf16* x,
                          const bf16* bias, bf16* dx, float* dbias) {
    timed(
        __func__, [&] { return std::to_string(shape.cols); },
        [&] { cuda::bias_gelu_backward(ctx_, kind, shape, dy, x, bias, dx, dbias); });
  }
  void attention_forward(const ops::AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v,
                         const int32_t* attention_mask, const ops::DropoutSpec& dropout, bf16* context,
                         float* logsumexp) {
    timed(__func__,
          [&] { cuda::attention_forward(ctx_, shape, q, k, v, attention_mask, dropout, context, logsumexp); });
  }
  void attention_backward(const ops::AttentionShape& shape, const bf16* dcontext, const bf16* q, const bf16* k,
                          const bf16* v, const int32_t* attention_mask, const ops::DropoutSpec& dropout,
                          const bf16* context, const float* logsumexp, bf16* dq, bf16* dk, bf16* dv) {
    timed(__func__, [&] {
      cuda::attention_backward(ctx_, shape, dcontext, q, k, v, attention_mask, dropout, context, logsumexp, dq, dk, dv);
    });
  }
  void dropout_forward(int64_t numel, const ops::DropoutSpec& dropout, const bf16* x, bf16* y) {
    timed(__func__, [&] { cuda::dropout_forward(ctx_, numel, dropout, x, y); });
  }
  void dropout_backward(int64_t numel, const ops::DropoutSpec& dropout, const bf16* dy, bf16* dx) {
    timed(__func__, [&] { cuda::dropout_backward(ctx_, numel, dropout, dy, dx); });
  }
  void pooler_forward(const ops::PoolerShape& shape, const bf16* encoder_out, const bf16* weight, const bf16* bias,
                      bf16* pooled) {
    timed(__func__, [&] { cuda::pooler_forward(ctx_, shape, encoder_out, weight, bias, pooled); });
  }
  void pooler_backward(const ops::PoolerShape& shape, const bf16* dpooled, const bf16* encoder_out, const bf16* weight,
                       const bf16* pooled, bf16* d_encoder_out, float* dweight, float* dbias) {
    timed(__func__, [&] {
      cuda::pooler_backward(ctx_, shape, dpooled, encoder_out, weight, pooled, d_encoder_out, dweight, dbias);
    });
  }
  void gather_rows(int64_t num_rows, int64_t cols, const int32_t* rows, const bf16* src, bf16* dst) {
    timed(__func__, [&] { cuda::gather_rows(ctx_, num_rows, cols, rows, src, dst); });
  }
  void scatter_add_rows(int64_t num_rows, int64_t cols, const int32_t* rows, const bf16* src, bf16* dst) {
    timed(__func__, [&] { cuda::scatter_add_rows(ctx_, num_rows, cols, rows, src, dst); });
  }
  void softmax_cross_entropy(const ops::LogitsShape& shape, const bf16* logits, const int32_t* labels, float grad_scale,
                             bf16* dlogits, size_t slot) {
    if (slot_ == nullptr) throw Error("BertForPreTrainingCuda: a loss was computed without a loss slot");
    timed(
        __func__, [&] { return std::to_string(shape.classes); },
        [&] { cuda::softmax_cross_entropy(ctx_, shape, logits, labels, grad_scale, dlogits, slot_ + slot); });
  }
  void fill_zero(bf16* values, int64_t count) {
    timed(__func__,
          [&] { CUDA_CHECK(cudaMemsetAsync(values, 0, static_cast<size_t>(count) * sizeof(bf16), ctx_.stream())); });
  }
  void gradients_final(size_t offset) {
    if (buckets_ != nullptr) buckets_->finished(offset);
  }

 private:
  static std::string dims(const ops::LinearShape& shape) {  // rows x in x out
    return std::to_string(shape.rows) + "x" + std::to_string(shape.in_features) + "x" +
           std::to_string(shape.out_features);
  }
  // call(), bracketed by the profiler's events when one is attached: named `op`, or "op detail()".
  template <class Call>
  void timed(const char* op, const Call& call) {
    timed(
        op, [] { return std::string(); }, call);
  }
  template <class Detail, class Call>
  void timed(const char* op, const Detail& detail, const Call& call) {
    if (profiler_ == nullptr) return call();
    const std::string suffix = detail();
    profiler_->begin(ctx_.stream(), suffix.empty() ? std::string(op) : std::string(op) + " " + suffix);
    call();
    profiler_->end(ctx_.stream());
  }

  cuda::Context& ctx_;
  cuda::CrossEntropyDeviceStats* slot_;
  GradientBuckets* buckets_;
  OpProfiler* profiler_;
};

}  // namespace

// ---- forward and backward -----------------------------------------------------------------------------

template <class Run>
void BertForPreTrainingCuda::run_graph(bool dropout_enabled, cuda::CrossEntropyDeviceStats* slot,
                                       GradientBuckets* buckets, Run&& run) {
  CudaGraphBackend backend(*context_, slot, buckets, profiler_);
  const GraphArenas<bf16, float, float> arenas{working_.data(), grads_.data(), activations_.data(), workspace_.data(),
                                               statistics_.data()};
  GraphInputs inputs;
  inputs.input_ids = input(plan_.input_ids);
  inputs.token_type_ids = batch_.has_token_types ? input(plan_.token_type_ids) : nullptr;
  inputs.attention_mask = batch_.has_attention_mask ? input(plan_.attention_mask) : nullptr;
  inputs.nsp_labels = batch_.has_nsp_labels ? input(plan_.nsp_labels) : nullptr;
  inputs.mlm_positions = input(plan_.mlm_positions);
  inputs.mlm_labels = input(plan_.mlm_labels);
  const GraphDropout dropout{dropout_seed_, dropout_step_, dropout_enabled};
  BertGraph<CudaGraphBackend> graph(backend, config_, options_, table_.offsets, plan_.graph, arenas, batch_, inputs,
                                    dropout);
  run(graph);
}

void BertForPreTrainingCuda::forward_backward(float loss_scale, bool compute_grads) {
  if (compute_grads) require_training("forward_backward with gradients");
  run_forward_backward("forward_backward", loss_scale, compute_grads, nullptr);
}

void BertForPreTrainingCuda::forward_backward_summed(float loss_scale, const GradientSum& sum) {
  require_training("forward_backward_summed");
  if (!sum.sum) throw Error("BertForPreTrainingCuda::forward_backward_summed: no sum function");
  make_sum_stream();
  const cudaStream_t stream = context_->stream();
  GradientBuckets buckets(sum, grads_.data(), grads_.size(), stream, sum_stream_.get(), grads_ready_.get());
  run_forward_backward("forward_backward_summed", loss_scale, true, &buckets);
  if (!buckets.complete())
    throw Error("internal: the backward pass did not finish every gradient (no gradients_final(0))");
  CUDA_CHECK(cudaEventRecord(grads_summed_.get(), sum_stream_.get()));
  CUDA_CHECK(cudaStreamWaitEvent(stream, grads_summed_.get(), 0));
}

void BertForPreTrainingCuda::sum_gradients(const GradientSum& sum) {
  require_training("sum_gradients");
  if (!sum.sum) throw Error("BertForPreTrainingCuda::sum_gradients: no sum function");
  make_sum_stream();
  const cudaStream_t stream = context_->stream();
  GradientBuckets buckets(sum, grads_.data(), grads_.size(), stream, sum_stream_.get(), grads_ready_.get());
  for (const size_t offset : gradients_final_offsets(table_.offsets)) buckets.finished(offset);
  if (!buckets.complete()) throw Error("internal: sum_gradients did not hand over every gradient");
  CUDA_CHECK(cudaEventRecord(grads_summed_.get(), sum_stream_.get()));
  CUDA_CHECK(cudaStreamWaitEvent(stream, grads_summed_.get(), 0));
  wait_for_stream();
}

void BertForPreTrainingCuda::make_sum_stream() {
  if (sum_stream_) return;
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  sum_stream_.reset(stream);
  for (auto* event : {&grads_ready_, &grads_summed_}) {
    cudaEvent_t created = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&created, cudaEventDisableTiming));
    event->reset(created);
  }
}

void BertForPreTrainingCuda::run_forward_backward(const char* caller, float loss_scale, bool compute_grads,
                                                  GradientBuckets* buckets) {
  if (!batch_uploaded_)
    throw Error(std::string("BertForPreTrainingCuda::") + caller + ": no batch; call upload_batch first");
  if (loss_slots_.size() == kLossSlots) drain_loss_stats();
  cuda::CrossEntropyDeviceStats* slot = loss_stats_.data() + loss_slots_.size() * plan_.loss_slot_stride;
  CUDA_CHECK(
      cudaMemsetAsync(slot, 0, plan_.loss_slot_stride * sizeof(cuda::CrossEntropyDeviceStats), context_->stream()));
  run_graph(dropout_training_, slot, buckets, [&](auto& graph) { graph.forward_backward(loss_scale, compute_grads); });
  loss_slots_.push_back(LossSlot{static_cast<int64_t>(batch_.mlm_chunk_counted.size()), batch_.has_nsp_labels});
}

void BertForPreTrainingCuda::mlm_logits_at(const BatchView& batch, std::span<const int32_t> positions,
                                           std::span<float> logits) {
  const int64_t rows = static_cast<int64_t>(positions.size()), vocab = config_.vocab_size;
  if (logits.size() != static_cast<size_t>(rows * vocab))
    throw Error("BertForPreTrainingCuda::mlm_logits_at: logits must hold positions x vocab_size = " +
                std::to_string(rows * vocab) + " values, got " + std::to_string(logits.size()));
  // The batch and the positions are checked as the CPU model checks them, whatever follows.
  BatchView unlabelled = batch;
  unlabelled.labels = nullptr;
  unlabelled.nsp_labels = nullptr;
  unlabelled.masked_positions = nullptr;
  unlabelled.masked_labels = nullptr;
  unlabelled.num_masked = 0;
  prepare_batch(unlabelled, config_, options_, "BertForPreTrainingCuda::mlm_logits_at", pending_);
  for (const int32_t position : positions)
    if (position < 0 || position >= batch.tokens())
      throw Error("BertForPreTrainingCuda::mlm_logits_at: position " + std::to_string(position) +
                  " is outside [0, batch * seq_len)");
  if (rows == 0) return;
  // The distinct positions travel as the batch's labelled positions (strictly ascending, as
  // upload_batch requires) with ignored labels; rows come back in the caller's order (repeats included).
  std::vector<int32_t> order(positions.begin(), positions.end());
  std::sort(order.begin(), order.end());
  order.erase(std::unique(order.begin(), order.end()), order.end());
  const auto distinct = static_cast<int64_t>(order.size());
  const std::vector<int32_t> ignored_labels(order.size(), ops::kIgnoreIndex);
  BatchView view = unlabelled;
  view.masked_positions = order.data();
  view.masked_labels = ignored_labels.data();
  view.num_masked = distinct;
  // The sparse head's rows whatever options_ says: the dense head would list every token.
  ModelOptions sparse = options_;
  sparse.mlm_on_masked_positions_only = true;
  upload(view, sparse);
  // This batch is never trained on, even if what follows throws.
  struct Forget {
    bool& uploaded;
    ~Forget() { uploaded = false; }
  } forget{batch_uploaded_};

  cuda::Context& ctx = *context_;
  bf16* chunk_logits = workspace_.data() + plan_.graph.mlm_logits;
  // Each caller row's index among the distinct sorted positions.
  std::vector<int64_t> row_of(positions.size());
  for (size_t i = 0; i < positions.size(); ++i)
    row_of[i] = std::lower_bound(order.begin(), order.end(), positions[i]) - order.begin();
  std::vector<bf16> host(static_cast<size_t>(std::min<int64_t>(distinct, options_.decoder_chunk_rows) * vocab));
  run_graph(/*dropout_enabled=*/false, nullptr, nullptr, [&](auto& graph) {
    graph.forward_encoder();
    graph.mlm_transform_forward();
    for (int64_t first = 0; first < distinct; first += options_.decoder_chunk_rows) {
      const int64_t chunk = std::min<int64_t>(options_.decoder_chunk_rows, distinct - first);
      graph.decoder_forward(first, chunk, chunk_logits, plan_.graph.mlm_logits_stride);
      // The chunk's rows are mlm_logits_stride apart on the device (the padding is never written).
      CUDA_CHECK(cudaMemcpy2DAsync(host.data(), static_cast<size_t>(vocab) * sizeof(bf16), chunk_logits,
                                   static_cast<size_t>(plan_.graph.mlm_logits_stride) * sizeof(bf16),
                                   static_cast<size_t>(vocab) * sizeof(bf16), static_cast<size_t>(chunk),
                                   cudaMemcpyDeviceToHost, ctx.stream()));
      ctx.synchronize();
      for (size_t i = 0; i < positions.size(); ++i) {
        const int64_t r = row_of[i] - first;
        if (r < 0 || r >= chunk) continue;
        for (int64_t v = 0; v < vocab; ++v)
          logits[i * static_cast<size_t>(vocab) + static_cast<size_t>(v)] =
              __bfloat162float(host[static_cast<size_t>(r * vocab + v)]);
      }
    }
  });
}

// ---- losses, optimizer --------------------------------------------------------------------------------

void BertForPreTrainingCuda::wait_for_event(cudaEvent_t event) {
  if (!wait_watch_) {
    CUDA_CHECK(cudaEventSynchronize(event));
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    wait_watch_(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    const cudaError_t state = cudaEventQuery(event);
    if (state == cudaSuccess) return;
    if (state != cudaErrorNotReady) CUDA_CHECK(state);
    // "Not ready" may stay behind as the last error, which the next launch's check would report as its
    // own failure (PyTorch clears it the same way). Every launch is checked at once, so nothing else is
    // pending here.
    (void)cudaGetLastError();
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

void BertForPreTrainingCuda::wait_for_stream() {
  if (!wait_watch_) {
    context_->synchronize();
    return;
  }
  CUDA_CHECK(cudaEventRecord(stream_done_.get(), context_->stream()));
  wait_for_event(stream_done_.get());
}

void BertForPreTrainingCuda::drain_loss_stats() {
  if (loss_slots_.empty()) return;
  wait_for_stream();
  std::vector<cuda::CrossEntropyDeviceStats> host(loss_slots_.size() * plan_.loss_slot_stride);
  CUDA_CHECK(cudaMemcpy(host.data(), loss_stats_.data(), host.size() * sizeof(cuda::CrossEntropyDeviceStats),
                        cudaMemcpyDeviceToHost));
  for (size_t s = 0; s < loss_slots_.size(); ++s) {
    const cuda::CrossEntropyDeviceStats* slot = host.data() + s * plan_.loss_slot_stride;
    auto totals = [](const cuda::CrossEntropyDeviceStats& stats) {
      return CrossEntropyTotals{stats.loss_sum, stats.num_counted, stats.num_correct};
    };
    std::vector<CrossEntropyTotals> mlm_chunks;
    for (int64_t c = 0; c < loss_slots_[s].mlm_chunks; ++c) mlm_chunks.push_back(totals(slot[c]));
    const CrossEntropyTotals nsp = totals(slot[plan_.graph.max_mlm_chunks]);
    const LossStats stats = combine_loss_stats(mlm_chunks, loss_slots_[s].has_nsp ? &nsp : nullptr);
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

void BertForPreTrainingCuda::require_training(const char* what) const {
  if (options_.inference_only)
    throw Error(std::string("BertForPreTrainingCuda: ") + what +
                " on an inference-only model (ModelOptions::inference_only: no gradients, master weights or "
                "optimizer state)");
}

void BertForPreTrainingCuda::zero_grads() {
  require_training("zero_grads");
  CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), context_->stream()));
}

void BertForPreTrainingCuda::optimizer_step(const ops::AdamWHyperparams& hyper, float max_grad_norm) {
  require_training("optimizer_step");
  if (norm_slots_used_ == kNormSlots) drain_grad_norms();
  float* norm = grad_norms_.data() + norm_slots_used_;
  cuda::grad_norm(*context_, *tensor_list_, norm);
  // Without clipping the norm still gates the step: a non-finite norm skips it.
  const float max_norm = max_grad_norm > 0.0f ? max_grad_norm : std::numeric_limits<float>::max();
  ops::AdamWHyperparams expected = hyper;  // the step if every queued one is applied (the device decides)
  expected.step = drained_update_count_ + static_cast<int64_t>(norm_slots_used_) + 1;
  cuda::adamw_step(*context_, expected, *tensor_list_, norm, max_norm, update_count_.data());
  ++norm_slots_used_;
  optimizer_stepped_ = true;
}

// One wait for every norm written since the last drain; the slots are free again afterwards.
void BertForPreTrainingCuda::drain_grad_norms() {
  if (norm_slots_used_ == 0) return;
  wait_for_stream();
  const size_t first = drained_norms_.size();
  drained_norms_.resize(first + norm_slots_used_);
  CUDA_CHECK(cudaMemcpy(drained_norms_.data() + first, grad_norms_.data(), norm_slots_used_ * sizeof(float),
                        cudaMemcpyDeviceToHost));
  for (size_t i = first; i < drained_norms_.size(); ++i)  // as adamw_step decided on the device
    if (std::isfinite(drained_norms_[i])) ++drained_update_count_;
  last_norm_ = drained_norms_.back();
  norm_slots_used_ = 0;
}

std::vector<float> BertForPreTrainingCuda::take_grad_norms() {
  drain_grad_norms();
  return std::exchange(drained_norms_, {});
}

float BertForPreTrainingCuda::read_grad_norm() {
  if (!optimizer_stepped_) return std::numeric_limits<float>::quiet_NaN();
  drain_grad_norms();
  return last_norm_;
}

int64_t BertForPreTrainingCuda::read_optimizer_steps() {
  require_training("read_optimizer_steps");
  context_->synchronize();
  int64_t steps = 0;
  CUDA_CHECK(cudaMemcpy(&steps, update_count_.data(), sizeof(steps), cudaMemcpyDeviceToHost));
  return steps;
}

void BertForPreTrainingCuda::set_optimizer_steps(int64_t steps) {
  require_training("set_optimizer_steps");
  if (steps < 0) throw Error("BertForPreTrainingCuda::set_optimizer_steps: " + std::to_string(steps) + " < 0");
  drain_grad_norms();  // queued updates advance the old count first
  const int64_t value[1] = {steps};
  update_count_.upload(value);
  drained_update_count_ = steps;
}

// ---- host copies and checkpoints ----------------------------------------------------------------------

std::vector<float> BertForPreTrainingCuda::download_parameters() const {
  return options_.inference_only ? download_working_parameters() : master_.download();
}

std::vector<float> BertForPreTrainingCuda::download_working_parameters() const {
  const std::vector<bf16> values = working_.download();
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = __bfloat162float(values[i]);
  return out;
}

std::vector<float> BertForPreTrainingCuda::download_grads() const {
  require_training("download_grads");
  return grads_.download();
}

void BertForPreTrainingCuda::upload_parameters(std::span<const float> arena) {
  if (arena.size() != table_.arena_elements)
    throw Error("BertForPreTrainingCuda::upload_parameters: " + std::to_string(arena.size()) +
                " values for an arena of " + std::to_string(table_.arena_elements));
  context_->synchronize();        // queued kernels may still read the master weights
  if (options_.inference_only) {  // no master copy: round on the host, as convert_f32_to_bf16 does
    std::vector<bf16> working(arena.size());
    for (size_t i = 0; i < arena.size(); ++i) working[i] = __float2bfloat16_rn(arena[i]);
    working_.upload(working);
    return;
  }
  master_.upload(arena);
  cuda::convert_f32_to_bf16(*context_, static_cast<int64_t>(arena.size()), master_.data(), working_.data());
  context_->synchronize();
}

void BertForPreTrainingCuda::download_moments(std::vector<float>& exp_avg, std::vector<float>& exp_avg_sq) const {
  require_training("download_moments");
  const std::vector<float> moments = moments_.download();
  const auto n = static_cast<std::ptrdiff_t>(table_.arena_elements);
  exp_avg.assign(moments.begin(), moments.begin() + n);
  exp_avg_sq.assign(moments.begin() + n, moments.end());
}

void BertForPreTrainingCuda::upload_moments(std::span<const float> exp_avg, std::span<const float> exp_avg_sq) {
  require_training("upload_moments");
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

void BertForPreTrainingCuda::load_pretrained(const std::string& path, std::vector<std::string>& kept,
                                             int64_t grow_vocab_from) {
  if (!options_.initialize_parameters)
    throw Error(
        "BertForPreTrainingCuda::load_pretrained: the model was built with initialize_parameters = false, "
        "so the tensors " +
        path + " lacks would start at zero");
  upload_parameters(read_pretrained_arena(path, config_, table_, download_parameters(), kept, grow_vocab_from));
}

}  // namespace bert
