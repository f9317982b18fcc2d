// BERT for pre-training on one GPU (H100/H200, sm_90a): the model of engine/bert.h (same HF names,
// parameter table, arena layout, dropout sites and losses) run on the bert::cuda ops of
// kernels/cuda/ops_cuda.h. Plain C++: the kernels live in bert_ops_cuda, this file only plans memory
// and issues ops, all asynchronously on one stream (a data-parallel step's gradient sums on a second:
// forward_backward_summed); the host waits only when asked for a result (losses, gradient norm,
// parameters) or when a plan grows.
//
// Precision (ops_cuda.h's contract; llm.c / Megatron mixed precision):
//   master weights fp32, AdamW moments fp32 .... updated by adamw_step, which also writes
//   working weights bf16 ........................ what forward/backward read
//   parameter gradients fp32 .................... accumulated over micro-batches (zero_grads between steps)
//   activations and their gradients bf16 ........ LayerNorm mean/rstd and attention logsumexp fp32
//   losses, counts, gradient norms, the AdamW update count .. device memory; read on request
// Compared with the fp32 CPU model on the same weights: losses agree to ~1e-2 relative, parameter
// gradients to a few 1e-2 (max |diff| / max |cpu| per tensor), dropout masks bit for bit.
//
// Arenas (one cudaMalloc each; offsets are BertForPreTraining's, so a tensor has the same element
// offset in every parameter-shaped arena):
//   parameters   fp32 master, bf16 working, fp32 grads, fp32 exp_avg + exp_avg_sq: 4+2+4+8 = 18 B/param,
//                allocated by the constructor
//   activations  bf16, saved for backward: per token embeddings (hidden) + per layer 8*hidden +
//                2*intermediate; + 4 x [tokens, hidden] for the MLM head rows (capacity: all tokens)
//   workspace    bf16, backward's gradients: 7*hidden + intermediate per token + 3 x [tokens, hidden]
//                for the MLM head + the decoder's logits chunk [min(tokens, decoder_chunk_rows), vocab]
//                (ModelOptions' default on CUDA: kCudaDecoderChunkRows = 4,096 rows, engine/bert.h)
//   statistics   fp32: LayerNorm mean/rstd (2 per LayerNorm per token), logsumexp (heads per token per layer)
//   inputs       int32: input ids, token types, attention mask, MLM positions and labels [tokens], NSP labels
//                [batch] (+ a pinned host mirror for the asynchronous upload)
// reserve(max_batch, max_seq_len) plans and allocates the batch-sized arenas once; memory_plan()
// returns the same numbers without a device (the trainer prints "needs X GiB, device has Y").
// Not in the arenas: the ops' Context scratch (largest user the embedding backward, ~tokens * hidden
// * 4 B; allocated by reserve at its estimate, grown by an op that needs more) and the 32 MiB cuBLASLt
// workspace: op_scratch_bytes estimates them.
//
// Napkin math (memory_plan's numbers, decoder_chunk_rows 4096; tests/test_cuda_plan.cpp checks them):
//   BERT-base (110.1M params), batch 32 x 128 (4096 tokens):
//     parameters 1.98 GB (master 0.44, working 0.22, grads 0.44, moments 0.88)
//     activations 1.24 GB (12 layers x 4096 tokens x 24.6 KB, + 25 MB for the MLM rows)
//     workspace 0.34 GB (the logits chunk 250 MB), statistics 3.1 MB, inputs 82 KB
//     total 3.6 GB (3.4 GiB) + ~50 MB of op scratch; at 32 x 512 it is 7.6 GB.
//   BERT-large (336.2M params), batch 32 x 512 (16384 tokens):
//     parameters 6.05 GB, activations 13.1 GB (24 layers x 16384 x 32.8 KB), workspace 0.72 GB:
//     20.0 GB (18.6 GiB); 64 x 512 needs 33 GB, 128 x 512 60 GB (fits an 80 GB H100 and the H200).
// Time per step is the CPU model's FLOP count (BertForPreTraining::training_flops) at the GEMMs'
// speed: BERT-base 32 x 128 = 2.24 TFLOP, at best ~4 ms (~550 bf16 TFLOP/s sustained).
//
// One optimizer step (as engine/trainer.cpp does it on the CPU), with no host sync until logging:
//   zero_grads(); per micro-batch k of K: set_dropout(seed, micro_step++, true); forward_backward(batch_k, 1/K);
//   optimizer_step({lr, ...}, max_grad_norm); when logging: take_loss_stats(), take_grad_norms().
// Whether a step's update was applied (a finite norm) is decided on the device, which also counts
// the applied updates for AdamW's bias correction, so the host never waits to know it; the count is
// the trainer's optimizer_steps (set_optimizer_steps on resume).
//
// The forward and backward are the CPU model's, op for op: both run engine/bert_graph.h (here on a
// backend of bert::cuda ops), so the two cannot drift apart. Differences from the CPU model: seq_len
// is at most 512 (the fused attention kernel's limit), and unsupported configs throw
// std::invalid_argument naming the field before anything touches the device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/bert.h"
#include "kernels/cuda/ops_cuda.h"

namespace bert {

// Device bytes of one BertForPreTrainingCuda, per arena.
struct CudaMemoryPlan {
  int64_t max_batch = 0, max_seq_len = 0;
  int64_t num_parameters = 0;
  size_t master_params_bytes = 0;   // fp32 master weights
  size_t working_params_bytes = 0;  // bf16 copy read by forward/backward
  size_t grads_bytes = 0;           // fp32 parameter gradients
  size_t optimizer_bytes = 0;       // fp32 exp_avg + exp_avg_sq
  size_t activations_bytes = 0;     // bf16 activations saved for backward
  size_t workspace_bytes = 0;       // bf16 backward workspace and MLM logits chunk
  size_t statistics_bytes = 0;      // fp32 LayerNorm mean/rstd, attention logsumexp
  size_t inputs_bytes = 0;          // int32 batch inputs
  size_t loss_stats_bytes = 0;      // device loss/count slots, gradient-norm slots, the update count
  size_t op_scratch_bytes = 0;      // ESTIMATE: cuBLASLt workspace + the ops' Context scratch

  size_t parameter_arena_bytes() const {
    return master_params_bytes + working_params_bytes + grads_bytes + optimizer_bytes;
  }
  size_t batch_arena_bytes() const {
    return activations_bytes + workspace_bytes + statistics_bytes + inputs_bytes + loss_stats_bytes;
  }
  size_t total_bytes() const { return parameter_arena_bytes() + batch_arena_bytes() + op_scratch_bytes; }
  // One line per arena, sizes in MiB / GiB, for the trainer's start-up table.
  std::string table() const;
};

// How BertForPreTrainingCuda::forward_backward_summed sums the parameter gradients over the ranks of
// a data-parallel run (the trainer: NCCL's all-reduce, engine/communicator_nccl.h).
struct GradientSum {
  // Queues on `stream` the in-place sum over the ranks of the device range [data, data + count).
  std::function<void(float* data, size_t count, cudaStream_t stream)> sum;
  // Finished gradients are handed over once at least this many are waiting (the last range, ending
  // at the embeddings, whatever its size); 0: each range as soon as it is finished (the heads', then
  // one per layer, then the embeddings').
  size_t bucket_elements = 0;
};

class GradientBuckets;  // forward_backward_summed's bookkeeping (bert_cuda.cpp)

// Device time per op of the model's graph (bench_train_step --profile): while attached
// (BertForPreTrainingCuda::set_profiler), every op the graph issues is bracketed by two CUDA events
// on the model's stream, named by the op and, for the ops whose cost depends on it, its shape
// ("linear_forward 768x2304": in x out features). Costs two event records per op (a few us of host
// time each, next to nothing on the device): for a breakdown, not for the timed steps.
class OpProfiler {
 public:
  struct Entry {
    std::string name;
    int64_t calls = 0;
    double ms = 0;  // device time between the op's two events, summed over its calls
  };

  OpProfiler() = default;
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;
  ~OpProfiler();

  void begin(cudaStream_t stream, std::string name);
  void end(cudaStream_t stream);
  // Totals by name in the order the names were first issued, over every op since the last collect
  // (waits for the last one); then starts over.
  std::vector<Entry> collect();

 private:
  struct Record {
    cudaEvent_t start = nullptr, stop = nullptr;
    std::string name;
  };
  std::vector<Record> records_;  // events are kept for reuse: [0, used_) are this round's
  size_t used_ = 0;
  bool open_ = false;
};

class BertForPreTrainingCuda {
 public:
  // Device slots for results not yet read back: one forward's losses each, one optimizer step's
  // gradient norm each. When all are in use the next forward / step drains them first (one wait);
  // a trainer logging every N steps of K micro-batches waits once per window while N*K <= kLossSlots.
  static constexpr size_t kLossSlots = 1024;
  static constexpr size_t kNormSlots = 1024;

  // Throws std::invalid_argument "BertForPreTrainingCuda: <field> ..." when the kernels cannot run
  // `config` (head_dim = hidden_size / num_attention_heads must be 32, 64 or 128; hidden_size a
  // multiple of 8), and bert::Error for a config that is invalid on any device (as the CPU model).
  static void check_supported(const BertConfig& config);
  // seq_len must be 1..512 (the fused attention kernel); std::invalid_argument otherwise.
  static void check_supported_seq_len(int64_t seq_len);
  // The device bytes the constructor plus reserve(max_batch, max_seq_len) allocate. No device needed.
  static CudaMemoryPlan memory_plan(const BertConfig& config, int64_t max_batch, int64_t max_seq_len,
                                    const ModelOptions& options = {});

  // Checks the config (above), then allocates the parameter arenas and initialises the weights as
  // the CPU model does for options.init_seed (identical fp32 master weights), moments and grads 0.
  // options.inference_only: the bf16 working copy only (no master weights, grads, moments, norms).
  explicit BertForPreTrainingCuda(const BertConfig& config, const ModelOptions& options = {});
  ~BertForPreTrainingCuda();
  BertForPreTrainingCuda(const BertForPreTrainingCuda&) = delete;
  BertForPreTrainingCuda& operator=(const BertForPreTrainingCuda&) = delete;

  const BertConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }  // decoder_chunk_rows resolved (never 0)
  cuda::Context& context() { return *context_; }
  // Every op of later forward_backward calls is timed into `profiler` (nullptr: none, the default).
  // The caller keeps it alive while attached.
  void set_profiler(OpProfiler* profiler) { profiler_ = profiler; }

  // ---- parameters (BertForPreTraining's table: HF names, order, shapes, offsets, decay flags) ----
  const std::vector<ParamInfo>& params() const { return table_.params; }
  const ParamInfo& param_info(std::string_view name) const;  // throws bert::Error for an unknown name
  int64_t num_parameters() const;                            // the word embeddings once (tied decoder)
  size_t arena_elements() const { return table_.arena_elements; }

  // ---- planning ----
  CudaMemoryPlan memory_plan(int64_t max_batch, int64_t max_seq_len) const {
    return memory_plan(config_, max_batch, max_seq_len, options_);
  }
  // Allocates the batch-sized arenas for up to max_batch sequences of up to max_seq_len tokens (any
  // batch * seq_len <= max_batch * max_seq_len with batch <= max_batch fits). A larger batch later
  // re-plans once (synchronising; grows, never shrinks): call it up front to allocate exactly once.
  void reserve(int64_t max_batch, int64_t max_seq_len);
  // The bytes allocated now, in memory_plan's fields (op_scratch_bytes: the cuBLASLt workspace and
  // the Context's scratch).
  CudaMemoryPlan allocated() const;
  // The uploaded batch as the host knows it: shapes, the MLM rows and their per-chunk counts.
  const HostBatch& uploaded_batch() const { return batch_; }

  // ---- running ----
  // As BertForPreTraining::set_dropout: the same sites, offsets and Philox masks.
  void set_dropout(uint64_t seed, uint64_t step, bool training);
  // Validates `batch` on the host (bert::Error as the CPU model), lists its labelled positions, and
  // copies it to the device through pinned staging, asynchronously (the host waits only for the
  // previous upload's copy). The BatchView's memory may be reused as soon as this returns.
  void upload_batch(const BatchView& batch);
  // Forward (and with compute_grads backward) of the uploaded batch. Gradients of
  // loss_scale * (mlm_loss + nsp_loss) ACCUMULATE into the fp32 grads. No host sync.
  void forward_backward(float loss_scale = 1.0f, bool compute_grads = true);
  void forward_backward(const BatchView& batch, float loss_scale = 1.0f, bool compute_grads = true) {
    upload_batch(batch);
    forward_backward(loss_scale, compute_grads);
  }
  // forward_backward(loss_scale) that also sums the gradient arena over the ranks: the call for a
  // step's last micro-batch. As the backward pass finishes a range of the gradients (bert_graph.h's
  // gradients_final: the heads', each layer's from the last, the embeddings'), whole buckets of them
  // are handed to sum.sum on a stream of the model's own, behind an event on the model's stream, so
  // the sums run while the backward pass goes on; the model's stream then waits for the last sum, so
  // optimizer_step and every download see the summed gradients. The buckets cover the arena once, top
  // down, and depend only on the config and sum.bucket_elements: every rank makes the same calls in
  // the same order, as NCCL requires. No host sync.
  void forward_backward_summed(float loss_scale, const GradientSum& sum);
  // The gradient arena summed over the ranks as forward_backward_summed sums it (the same calls of
  // sum.sum, same ranges, same order, on the same stream), without a forward or backward, then waits
  // for the sums as set_wait_watch says. The trainer's warm-up before its first step: NCCL (2.22 and
  // later) sets up its connections and buffers at a communicator's first collectives, after the memory
  // check of the model; run on zero gradients (zero_grads first), it leaves them zero.
  void sum_gradients(const GradientSum& sum);
  // How the host waits for the device while training (an upload waiting for the previous upload's
  // copies; draining the loss and norm slots, which take_loss_stats and take_grad_norms do). Empty
  // (the default): blocking waits. Set: the waits poll the device, calling watch(seconds waited so
  // far) first and then about every 0.1 ms until the work is done; an exception from watch ends the
  // wait and leaves the model unusable. For data-parallel runs, whose device work includes sums that
  // wait for the other ranks: the trainer's watch reports NCCL's errors and ddp_timeout.
  using WaitWatch = std::function<void(double seconds_waited)>;
  void set_wait_watch(WaitWatch watch) { wait_watch_ = std::move(watch); }
  // The losses of every forward since the last call, in order (synchronises once). Each forward
  // keeps its stats in a device slot; when all slots are in use a forward drains them first.
  std::vector<LossStats> take_loss_stats();
  // The last forward's losses (synchronises; does not consume take_loss_stats()'s list).
  LossStats read_loss_stats();

  void zero_grads();  // asynchronous
  // grad_norm into the next device norm slot, then adamw_step with the clip coefficient formed on
  // the device from that norm (max_grad_norm <= 0: no clipping) and the bias-correction step from the
  // device's count of applied updates (count + 1). A non-finite norm skips the update (params,
  // moments and the count unchanged), as the CPU trainer does. hyper.grad_scale and hyper.step are
  // ignored (the model passes adamw_step the step it expects: the count at the last drain plus the
  // steps queued since, so the update is the CPU reference's bit for bit unless a skip it has not
  // read back yet intervened). No host sync (when every norm slot is in use they are drained first:
  // one wait); the host learns of a skipped step from the norms (take_grad_norms, read_grad_norm).
  void optimizer_step(const ops::AdamWHyperparams& hyper, float max_grad_norm);
  // The gradient norms of every optimizer_step since the last call, in order (synchronises once).
  std::vector<float> take_grad_norms();
  // The gradient norm of the last optimizer_step (synchronises; does not consume take_grad_norms()'s
  // list, which keeps 4 bytes per step until taken); NaN before the first.
  float read_grad_norm();
  // The device's count of applied updates (synchronises). 0 for a new model; set on resume.
  int64_t read_optimizer_steps();
  void set_optimizer_steps(int64_t steps);

  // Fill-mask, as BertForPreTraining::mlm_logits_at: MLM logits at flat positions b*seq_len+t of
  // `batch` (its labels ignored), always in eval mode, into host `logits` [positions.size(), vocab]
  // (the bf16 decoder output widened to float). Synchronises. Does not touch the loss-stat slots.
  void mlm_logits_at(const BatchView& batch, std::span<const int32_t> positions, std::span<float> logits);

  // ---- host copies (synchronous; setup, tests, checkpoints) ----
  std::vector<float> download_parameters() const;          // fp32 master arena (inference-only: the bf16 copy)
  std::vector<float> download_working_parameters() const;  // bf16 working arena, as float
  std::vector<float> download_grads() const;               // fp32 grads arena
  // Sets the master weights (arena_elements values) and their bf16 working copy (inference-only: the
  // bf16 copy alone, rounded on the host); moments untouched.
  void upload_parameters(std::span<const float> arena);
  void download_moments(std::vector<float>& exp_avg, std::vector<float>& exp_avg_sq) const;
  void upload_moments(std::span<const float> exp_avg, std::span<const float> exp_avg_sq);
  // The CPU model's weights (same config: same table), for parity tests.
  void copy_parameters_from(const BertForPreTraining<float>& model);

  // ---- checkpoints: the CPU model's format (HF names, fp32, untied tensors), interchangeable ----
  void save_safetensors(const std::string& path) const;
  void load_safetensors(const std::string& path);  // errors as BertForPreTraining::load_safetensors
  // As BertForPreTraining's.
  void load_pretrained(const std::string& path, std::vector<std::string>& kept, int64_t grow_vocab_from = 0);

 private:
  // The batch-sized arenas: BatchArenaPlan's (activations, workspace, statistics) plus the batch's
  // int32 inputs and the device loss slots. A pure function of (config, options, capacity), shared by
  // memory_plan and reserve.
  struct ArenaPlan {
    BatchArenaPlan graph;
    size_t input_ids = 0, token_type_ids = 0, attention_mask = 0, nsp_labels = 0, mlm_positions = 0, mlm_labels = 0;
    size_t input_elements = 0;
    // loss stats slots: kLossSlots forwards x (max_mlm_chunks MLM + 1 NSP) CrossEntropyDeviceStats
    size_t loss_slot_stride = 0;
  };
  // Host bookkeeping of one device loss slot.
  struct LossSlot {
    int64_t mlm_chunks = 0;
    bool has_nsp = false;
  };
  struct PinnedDeleter {
    void operator()(int32_t* pointer) const noexcept;
  };
  struct EventDeleter {
    void operator()(cudaEvent_t event) const noexcept;
  };
  struct StreamDeleter {
    void operator()(cudaStream_t stream) const noexcept;
  };

  static ArenaPlan plan_arenas(const BertConfig& config, const ModelOptions& options, int64_t capacity_batch,
                               int64_t capacity_tokens);
  // upload_batch with the MLM rows listed as `options` says.
  void upload(const BatchView& batch, const ModelOptions& options);
  // Runs BertGraph (engine/bert_graph.h) on the CUDA ops over the uploaded batch; cross-entropy
  // totals go to the device loss slot `slot` (nullptr: none are computed).
  // `buckets` (nullptr: none) receives the graph's gradients_final calls.
  template <class Run>
  void run_graph(bool dropout_enabled, cuda::CrossEntropyDeviceStats* slot, GradientBuckets* buckets, Run&& run);
  // The stream and events the gradient sums run on, made at the first call.
  void make_sum_stream();
  // forward_backward's work into the next loss slot; `caller` names it in errors.
  void run_forward_backward(const char* caller, float loss_scale, bool compute_grads, GradientBuckets* buckets);
  void drain_loss_stats();
  void drain_grad_norms();
  // Until `event` (wait_for_stream: all the model's stream has queued) is done, as set_wait_watch says.
  void wait_for_event(cudaEvent_t event);
  void wait_for_stream();
  void require_training(const char* what) const;  // bert::Error on an inference-only model

  int32_t* input(size_t offset) { return inputs_.data() + offset; }

  BertConfig config_;
  ModelOptions options_;
  ParameterTable table_;  // made (and the config checked) before anything touches the device
  std::unique_ptr<cuda::Context> context_;

  cuda::DeviceBuffer<float> master_, grads_, moments_;  // moments_: exp_avg then exp_avg_sq
  cuda::DeviceBuffer<cuda::bf16> working_;
  std::optional<cuda::MultiTensorList> tensor_list_;  // every parameter, for grad_norm and adamw_step
  cuda::DeviceBuffer<float> grad_norms_;              // [kNormSlots], one per optimizer_step until drained
  cuda::DeviceBuffer<int64_t> update_count_;          // [1]: AdamW updates applied (bias-correction step - 1)

  ArenaPlan plan_;
  cuda::DeviceBuffer<cuda::bf16> activations_, workspace_;
  cuda::DeviceBuffer<float> statistics_;
  cuda::DeviceBuffer<int32_t> inputs_;
  cuda::DeviceBuffer<cuda::CrossEntropyDeviceStats> loss_stats_;  // kLossSlots x loss_slot_stride
  std::unique_ptr<int32_t, PinnedDeleter> staging_;               // pinned mirror of inputs_
  std::unique_ptr<CUevent_st, EventDeleter> staging_copied_;      // the last upload's copies are done
  std::unique_ptr<CUevent_st, EventDeleter> stream_done_;         // wait_for_stream's
  WaitWatch wait_watch_;
  // forward_backward_summed's stream for the sums, and its events (made by its first call):
  std::unique_ptr<CUstream_st, StreamDeleter> sum_stream_;
  std::unique_ptr<CUevent_st, EventDeleter> grads_ready_;   // a bucket's gradients are finished
  std::unique_ptr<CUevent_st, EventDeleter> grads_summed_;  // the last bucket's sum is done

  HostBatch batch_;    // the uploaded batch as the host knows it (no sync needed to launch)
  HostBatch pending_;  // upload_batch's scratch, swapped with batch_
  bool batch_uploaded_ = false;
  std::vector<LossSlot> loss_slots_;  // slots in use, in forward order
  std::vector<LossStats> drained_;    // drained, not yet taken
  std::optional<LossStats> last_loss_;
  size_t norm_slots_used_ = 0;        // grad_norms_ slots written since the last drain
  int64_t drained_update_count_ = 0;  // the device's update count as of the last drain (or set)
  std::vector<float> drained_norms_;  // drained, not yet taken
  float last_norm_ = 0;
  bool optimizer_stepped_ = false;

  uint64_t dropout_seed_ = 0, dropout_step_ = 0;
  bool dropout_training_ = false;
  OpProfiler* profiler_ = nullptr;
};

}  // namespace bert
