// CUDA backend of kernels/ops.h: the same ops, bf16 activations with fp32 accumulation, on H100/H200
// (sm_90a). Semantics, shapes and the overwrite/accumulate conventions are documented once, in
// kernels/ops.h; this header adds the CUDA types and the precision of every argument.
//
// Precision contract (the engine's mixed-precision scheme, as llm.c / Megatron):
//   activations and their gradients .......... bf16  (x, y, dy, dx, q/k/v, context, logits, dlogits)
//   parameters read by forward/backward ....... bf16  (the working copy that adamw_step writes)
//   parameter gradients (dW, db, dgamma, ...) . fp32, ACCUMULATED (+=) as ops.h says
//   master weights, AdamW moments ............. fp32
//   saved statistics (mean, rstd, logsumexp) .. fp32
//   every reduction ........................... fp32 (or double), in a fixed order: deterministic
// All ops are asynchronous on ctx.stream(); none synchronises with the host. Results that the host
// may want (loss, counts, gradient norm) go to device memory and are read only when logged.
// Bad shapes / unsupported configurations throw std::invalid_argument before launching; CUDA and
// cuBLAS failures throw CudaError with file:line (kernels/cuda/check.h).
//
// One op family per file (kernels/cuda/<family>.cu), each opening with a purpose block and the
// napkin math; its test is tests/gpu/test_cuda_<family>.cpp, its benchmark a case of bench_kernels.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/ops.h"

namespace bert::cuda {

using bf16 = __nv_bfloat16;
using ops::AdamWHyperparams;
using ops::AttentionShape;
using ops::CrossEntropyStats;
using ops::DropoutSpec;
using ops::EmbeddingShape;
using ops::GeluKind;
using ops::InputGrad;
using ops::LinearShape;
using ops::LogitsShape;
using ops::MatrixShape;
using ops::PoolerShape;

// ---- memory -----------------------------------------------------------------------------------------

// An owning device array of T (cudaMalloc / cudaFree). Move-only.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) { resize(count); }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = other.data_;
      size_ = other.size_;
      other.data_ = nullptr;
      other.size_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Contents are not preserved.
  void resize(size_t count) {
    if (count == size_) return;
    reset();
    if (count > 0) CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)));
    size_ = count;
  }
  void reset() noexcept {
    if (data_) cudaFree(data_);
    data_ = nullptr;
    size_ = 0;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }

  // Synchronous copies (tests, setup, checkpoints; never inside a training step). They wait for the
  // whole device: a cudaMemcpy from pageable memory may return before its DMA lands, and ops run on
  // non-blocking streams that do not order against the legacy stream the copy used.
  void upload(std::span<const T> host) {
    CUDA_CHECK(cudaDeviceSynchronize());  // kernels still reading the old contents finish first
    resize(host.size());
    if (!host.empty()) CUDA_CHECK(cudaMemcpy(data_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  std::vector<T> download() const {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> host(size_);
    if (size_ > 0) CUDA_CHECK(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// ---- context ----------------------------------------------------------------------------------------

// One cuBLASLt plan of a Context (Context::gemm_plans): a GEMM shape and the algorithm it runs.
struct GemmPlanInfo {
  std::string product;          // "linear_forward (y = x W^T + b)", "linear_backward (dx = dy W)", ...
  int64_t m = 0, n = 0, k = 0;  // cuBLASLt's column-major sizes (gemm.cu's table)
  bool bias_epilogue = false;   // the forward's bias added by the GEMM (CUBLASLT_EPILOGUE_BIAS)
  bool bias_gradient_epilogue = false;  // the weight gradient's dbias from the GEMM (CUBLASLT_EPILOGUE_BGRADB)
  bool accumulate = false;              // beta = 1: D += the product
  // cublasLtMatmulAlgoConfigGetAttribute of the chosen algorithm, e.g. "algo 66, tile 128x256,
  // stages #19, split-k 1, reduction 0, swizzle 0, cluster #0".
  std::string algorithm;
  int offered = 1;  // algorithms the heuristic returned (autotuning asks for more than one)
  int chosen = 0;   // the chosen one's rank in the heuristic's order
  // Autotuned: the median ms of each offered algorithm in the heuristic's order (negative: it
  // failed to run); empty otherwise.
  std::vector<double> candidate_ms;
  // Autotuned without timing: the rank timed for an earlier shape of the same class (every size
  // rounded up to a power of two, same operands' alignments and epilogue), e.g. the MLM head's GEMMs,
  // whose rows are the batch's masked tokens.
  bool rank_reused = false;
};

// One line for a plan, as the benches print it: "linear_backward (dW += dy^T x)    768 x    768 x  16384:
// algo 21, tile 128x128, ...; rank 1 of 8, ms by rank: 0.0412 0.0398 - ... (rank 0 / chosen 1.04x)".
inline std::string describe_gemm_plan(const GemmPlanInfo& plan) {
  char head[160];
  std::snprintf(head, sizeof(head), "%-32s %6lld x %6lld x %6lld%s: ", plan.product.c_str(),
                static_cast<long long>(plan.m), static_cast<long long>(plan.n), static_cast<long long>(plan.k),
                plan.bias_epilogue            ? " +bias"
                : plan.bias_gradient_epilogue ? " += +dbias"
                : plan.accumulate             ? " +="
                                              : "");
  std::string line = head + plan.algorithm;
  if (plan.rank_reused)
    return line + "; rank " + std::to_string(plan.chosen) + " of " + std::to_string(plan.offered) +
           " (timed for a shape of its class)";
  if (plan.candidate_ms.empty()) return line;
  line += "; rank " + std::to_string(plan.chosen) + " of " + std::to_string(plan.offered) + ", ms by rank:";
  char number[32];
  for (const double ms : plan.candidate_ms) {
    std::snprintf(number, sizeof(number), " %.4f", ms);
    line += ms < 0 ? " -" : number;
  }
  const double first = plan.candidate_ms[0], chosen = plan.candidate_ms[static_cast<size_t>(plan.chosen)];
  if (first > 0 && chosen > 0) {
    std::snprintf(number, sizeof(number), " (rank 0 / chosen %.2fx)", first / chosen);
    line += number;
  }
  return line;
}

// Which kernel runs where an op has both a specialised kernel and the general one it replaced
// (Context::set_kernel_paths). The defaults are the specialised kernels. The general ones still run
// every shape the specialised ones do not take (over 1,024 columns, unaligned pointers, more than
// 32,768 classes, sequences over 128 keys; the erff GELU alone has no such shapes) and are held to
// kernels/cpu by the same tests. Selecting them for the BERT shapes serves one purpose: timing both
// in one run on one device (bench_kernels' "_baseline" cases, bench_train_step --kernel-paths
// baseline), so a device session can tell whether each replacement pays, on whichever card it gets.
// The two agree within the tests' tolerances, not bitwise in general (the LayerNorm backward adds
// dgamma/dbeta in another order, cross-entropy merges its row sums over another thread count, the
// attention pair sums dQ in another order, GELU's Phi comes from another approximation, cuBLASLt's
// bias-gradient epilogue sums db in its own order).
struct KernelPaths {
  // kMma's attention backward up to 128 keys: one fused kernel a (b, h), or the dK/dV + dQ pair.
  bool attention_fused_backward = true;
  // LayerNorm forwards (alone, with the residual, of the embeddings): the row held in registers, or
  // re-read from L1 for each pass. (The dropout-fused forward below is always row-resident.)
  bool layernorm_resident_forward = true;
  // (Residual) LayerNorm backward, and the embeddings' LayerNorm backward: one pass writing dz and
  // dgamma/dbeta partials, or a dz pass and a column pass.
  bool layernorm_fused_backward = true;
  // dropout_residual_layernorm_forward: the dropout inside the (row-resident) LayerNorm forward, or
  // dropout_forward and then residual_layernorm_forward.
  bool dropout_fused_layernorm = true;
  // residual_layernorm_dropout_backward: the dropout's backward as a second output of the fused
  // LayerNorm backward, or residual_layernorm_backward and then dropout_backward.
  bool dropout_fused_layernorm_backward = true;
  // softmax_cross_entropy up to 32,768 classes: the row held in registers, or two streaming passes.
  bool cross_entropy_resident = true;
  // Bias + GELU (erf): Phi through an erfc approximation and phi through exp2f, or erff and expf.
  bool gelu_fast_math = true;
  // Embeddings backward with <= 4 token types: the type gradient summed in the position gradient's
  // pass over dz, or radix-sorted and scattered as the word gradient.
  bool embeddings_direct_type_gradient = true;
  // kMma's attention forward: a persistent grid (as many blocks as run at once, each walking its run
  // of 64-query items with the next item's loads in flight), or one block an item.
  bool attention_persistent_forward = true;
  // linear_backward with dweight and dbias: the bias gradient from the weight-gradient GEMM's
  // epilogue (cuBLASLt's BGRADB, reducing dy over the rows it already reads, into scratch, then one
  // small kernel adding it to dbias), or the two-pass column-sum kernels reading dy once more.
  bool gemm_bias_gradient_epilogue = true;

  // Every field with its name (baseline() and describe() go through it).
  using Field = bool KernelPaths::*;
  static const std::array<std::pair<const char*, Field>, 10>& fields() {
    static const std::array<std::pair<const char*, Field>, 10> table = {{
        {"attention_fused_backward", &KernelPaths::attention_fused_backward},
        {"layernorm_resident_forward", &KernelPaths::layernorm_resident_forward},
        {"layernorm_fused_backward", &KernelPaths::layernorm_fused_backward},
        {"dropout_fused_layernorm", &KernelPaths::dropout_fused_layernorm},
        {"dropout_fused_layernorm_backward", &KernelPaths::dropout_fused_layernorm_backward},
        {"cross_entropy_resident", &KernelPaths::cross_entropy_resident},
        {"gelu_fast_math", &KernelPaths::gelu_fast_math},
        {"embeddings_direct_type_gradient", &KernelPaths::embeddings_direct_type_gradient},
        {"attention_persistent_forward", &KernelPaths::attention_persistent_forward},
        {"gemm_bias_gradient_epilogue", &KernelPaths::gemm_bias_gradient_epilogue},
    }};
    return table;
  }
  // Every field false: the kernels each specialised one replaced.
  static KernelPaths baseline() {
    KernelPaths paths;
    for (const auto& [name, field] : fields()) paths.*field = false;
    return paths;
  }
  // describe()'s inverse: "default", "baseline", or comma-separated "<field>=false" / "<field>=true"
  // over the default, e.g. "gelu_fast_math=false,attention_fused_backward=false". Throws
  // std::invalid_argument naming the first item it cannot read.
  static KernelPaths parse(const std::string& text) {
    if (text == "default") return KernelPaths{};
    if (text == "baseline") return baseline();
    KernelPaths paths;
    for (size_t begin = 0; begin <= text.size();) {
      const size_t comma = text.find(',', begin);
      const size_t end = comma == std::string::npos ? text.size() : comma;
      const std::string item = text.substr(begin, end - begin);
      const size_t equals = item.find('=');
      const std::string name = item.substr(0, equals);
      const std::string value = equals == std::string::npos ? "" : item.substr(equals + 1);
      bool* target = nullptr;
      std::string known;
      for (const auto& [field_name, field] : fields()) {
        if (name == field_name) target = &(paths.*field);
        known += std::string(known.empty() ? "" : ", ") + field_name;
      }
      if (target == nullptr || (value != "true" && value != "false"))
        throw std::invalid_argument("KernelPaths: '" + item + "' is not <field>=true|false (default, baseline, or " +
                                    "fields among " + known + ")");
      *target = value == "true";
      begin = end + 1;
    }
    return paths;
  }
  bool operator==(const KernelPaths&) const = default;
  // "default", "baseline", or the fields that differ from the default, e.g. "gelu_fast_math=false".
  std::string describe() const {
    if (*this == KernelPaths{}) return "default";
    if (*this == baseline()) return "baseline";
    std::string out;
    for (const auto& [name, field] : fields())
      if (!(this->*field)) out += std::string(out.empty() ? "" : ",") + name + "=false";
    return out;
  }
};
// A field added without its entry in fields() would be missing from baseline() and describe().
static_assert(sizeof(KernelPaths) == 10 * sizeof(bool), "every KernelPaths field is listed in fields()");

// Per-caller state for CUDA ops: the stream, the cuBLASLt handle and its workspace, and device
// scratch reused across calls (grown on demand, never shrunk, so a warm training step allocates
// nothing; with GEMM autotuning, a class of GEMM shapes first met later allocates its timing buffer
// then). Uses the current device. Not shareable between host threads issuing ops concurrently.
class Context {
 public:
  // stream nullptr: the context creates (and owns) a non-blocking stream of its own.
  explicit Context(cudaStream_t stream = nullptr, size_t gemm_workspace_bytes = size_t{32} << 20);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasLtHandle_t cublaslt() const { return cublaslt_; }
  void* gemm_workspace() const { return gemm_workspace_.data(); }
  size_t gemm_workspace_bytes() const { return gemm_workspace_.bytes(); }
  int multiprocessors() const { return multiprocessors_; }
  int sm_version() const { return sm_version_; }  // e.g. 90

  // `bytes` of device scratch, 256-byte aligned, valid until the next scratch() call. Growing
  // synchronises the stream (cudaFree of the old region), so size it once up front (the CUDA model's
  // reserve) or in a warm-up step.
  void* scratch(size_t bytes);
  size_t scratch_bytes() const { return scratch_.bytes(); }

  void synchronize() const { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  // Which cuBLASLt algorithm each GEMM shape runs (gemm.cu). candidates 0 or 1 (the default): the
  // heuristic's first, the same on every run of the same library and GPU. candidates N >= 2: the
  // first call of each class of GEMM shapes (sizes rounded up to powers of two; same alignments and
  // epilogue) asks the heuristic for up to N algorithms, times each on the call's own operands (5 runs
  // each, D in a temporary buffer of D's size, so nothing the caller owns is written twice; the host
  // waits for each run) and keeps the fastest; later shapes of the class take the heuristic's
  // algorithm of the same rank without timing. So tuning happens in the first steps, not whenever the
  // MLM head's row count (the batch's masked tokens) is new. Bitwise deterministic within the process;
  // across processes the choice follows the timings, and two algorithms may sum in different orders:
  // not for runs that must resume bit for bit. Plans made before the change are kept (the setting is
  // part of a plan's key). Throws std::invalid_argument outside 0..kMaxGemmAutotune.
  static constexpr int kMaxGemmAutotune = 32;
  void set_gemm_autotune(int candidates) {
    if (candidates < 0 || candidates > kMaxGemmAutotune)
      throw std::invalid_argument("Context::set_gemm_autotune: candidates must be 0.." +
                                  std::to_string(kMaxGemmAutotune) + " (0 or 1: the heuristic's first), got " +
                                  std::to_string(candidates));
    gemm_autotune_ = candidates;
  }
  int gemm_autotune() const { return gemm_autotune_; }
  // The kernels the ops launch where a specialised kernel and a general one both apply (KernelPaths
  // above; the default: the specialised ones). Takes effect at the next op.
  void set_kernel_paths(const KernelPaths& paths) { kernel_paths_ = paths; }
  const KernelPaths& kernel_paths() const { return kernel_paths_; }
  // The persistent kernels' grid (KernelPaths::attention_persistent_forward): at most this many blocks;
  // 0 (the default): as many as the device runs at once. Tests set a few, so that every block walks
  // several items. Throws std::invalid_argument below 0.
  void set_persistent_grid_limit(int blocks) {
    if (blocks < 0)
      throw std::invalid_argument("Context::set_persistent_grid_limit: blocks must be >= 0 (0: no limit), got " +
                                  std::to_string(blocks));
    persistent_grid_limit_ = blocks;
  }
  int persistent_grid_limit() const { return persistent_grid_limit_; }
  // Every GEMM plan made so far, in the order they were made (the algorithm, and with autotuning the
  // time of each candidate): what bench_kernels and bench_train_step print.
  std::vector<GemmPlanInfo> gemm_plans() const;

 private:
  cudaStream_t stream_ = nullptr;
  bool owns_stream_ = false;
  cublasLtHandle_t cublaslt_ = nullptr;
  mutable DeviceBuffer<unsigned char> gemm_workspace_;
  DeviceBuffer<unsigned char> scratch_;
  int multiprocessors_ = 0;
  int sm_version_ = 0;
  int gemm_autotune_ = 0;
  KernelPaths kernel_paths_;
  int persistent_grid_limit_ = 0;

  // gemm.cu: cuBLASLt plans (matmul/layout descriptors + the heuristic's algorithm) per GEMM shape
  // and operand alignment, made on first use and reused, so a warm step queries no heuristics.
  struct GemmPlans;
  struct GemmPlansDeleter {
    void operator()(GemmPlans* plans) const noexcept;
  };
  std::unique_ptr<GemmPlans, GemmPlansDeleter> gemm_plans_;
  friend void linear_forward(Context&, const LinearShape&, const bf16*, const bf16*, const bf16*, bf16*);
  friend void linear_backward(Context&, const LinearShape&, const bf16*, const bf16*, const bf16*, bf16*, float*,
                              float*, InputGrad);
};

// ---- linear: cuBLASLt GEMMs (gemm.cu) -----------------------------------------------------------------
// y = x W^T + b in one cuBLASLt call (bias epilogue). bias may be nullptr.
void linear_forward(Context& ctx, const LinearShape& shape, const bf16* x, const bf16* weight, const bf16* bias,
                    bf16* y);
// dx (bf16, mode as ops.h) = dy W; dweight (fp32) += dy^T x; dbias (fp32) += column sums of dy
// (deterministic). Each of dx, dweight, dbias may be nullptr. With dweight and dbias, the column sums
// come from the dW GEMM's epilogue (KernelPaths::gemm_bias_gradient_epilogue) where cuBLASLt offers one.
void linear_backward(Context& ctx, const LinearShape& shape, const bf16* dy, const bf16* x, const bf16* weight,
                     bf16* dx, float* dweight, float* dbias, InputGrad dx_mode = InputGrad::kOverwrite);

// ---- embeddings + LayerNorm (embeddings.cu) -------------------------------------------------------------
// token_type_ids may be nullptr. mean, rstd: [tokens] fp32.
void embeddings_layernorm_forward(Context& ctx, const EmbeddingShape& shape, const int32_t* input_ids,
                                  const int32_t* token_type_ids, const bf16* word_embeddings,
                                  const bf16* position_embeddings, const bf16* token_type_embeddings, const bf16* gamma,
                                  const bf16* beta, float eps, bf16* out, float* mean, float* rstd);
// Table gradients are deterministic (no float atomics): rows are grouped by id, each group summed
// in token order.
void embeddings_layernorm_backward(Context& ctx, const EmbeddingShape& shape, const bf16* dout,
                                   const int32_t* input_ids, const int32_t* token_type_ids, const bf16* word_embeddings,
                                   const bf16* position_embeddings, const bf16* token_type_embeddings,
                                   const bf16* gamma, const float* mean, const float* rstd, float* d_word_embeddings,
                                   float* d_position_embeddings, float* d_token_type_embeddings, float* dgamma,
                                   float* dbeta);
// The bytes of ctx.scratch() embeddings_layernorm_backward takes at `shape` with token_type_ids given
// or not: the largest over its paths (any alignment, any KernelPaths). The ops' largest scratch user,
// for checking BertForPreTrainingCuda's estimate (its memory plan has no device to ask CUB).
size_t embeddings_layernorm_backward_scratch_bytes(Context& ctx, const EmbeddingShape& shape, bool token_type_ids);

// ---- LayerNorm, residual + LayerNorm (layernorm.cu) -------------------------------------------------------
void layernorm_forward(Context& ctx, const MatrixShape& shape, const bf16* x, const bf16* gamma, const bf16* beta,
                       float eps, bf16* y, float* mean, float* rstd);
void layernorm_backward(Context& ctx, const MatrixShape& shape, const bf16* dy, const bf16* x, const bf16* gamma,
                        const float* mean, const float* rstd, bf16* dx, float* dgamma, float* dbeta);
void residual_layernorm_forward(Context& ctx, const MatrixShape& shape, const bf16* x, const bf16* residual,
                                const bf16* gamma, const bf16* beta, float eps, bf16* y, float* mean, float* rstd);
void residual_layernorm_backward(Context& ctx, const MatrixShape& shape, const bf16* dy, const bf16* x,
                                 const bf16* residual, const bf16* gamma, const float* mean, const float* rstd,
                                 bf16* d_sum, float* dgamma, float* dbeta);
// Dropout on the branch fused into the residual LayerNorm (BERT's hidden dropout, post-LN): x <-
// dropout(x) in place (kept: the backward reads it), then y = LN(x + residual). x must not alias y or
// residual. Bitwise dropout_forward(x, x) followed by residual_layernorm_forward.
void dropout_residual_layernorm_forward(Context& ctx, const MatrixShape& shape, const DropoutSpec& dropout, bf16* x,
                                        const bf16* residual, const bf16* gamma, const bf16* beta, float eps,
                                        bf16* y, float* mean, float* rstd);
// Its backward: d_sum = residual_layernorm_backward(dy, x, residual, ...) and d_x =
// dropout_backward(d_sum), the gradient of the branch before its dropout, in one pass (the fused
// LayerNorm backward's path: cols % 8 == 0 and <= 1,024, 16-byte aligned pointers; otherwise the two
// ops in sequence). Bitwise the two ops in sequence. d_x must not alias d_sum; either may alias dy,
// x or residual.
void residual_layernorm_dropout_backward(Context& ctx, const MatrixShape& shape, const DropoutSpec& dropout,
                                         const bf16* dy, const bf16* x, const bf16* residual, const bf16* gamma,
                                         const float* mean, const float* rstd, bf16* d_sum, bf16* d_x, float* dgamma,
                                         float* dbeta);

// ---- bias + GELU (gelu.cu) ----------------------------------------------------------------------------
// bias may be nullptr (then dbias too). y may alias x; dx may alias dy.
void bias_gelu_forward(Context& ctx, GeluKind kind, const MatrixShape& shape, const bf16* x, const bf16* bias, bf16* y);
void bias_gelu_backward(Context& ctx, GeluKind kind, const MatrixShape& shape, const bf16* dy, const bf16* x,
                        const bf16* bias, bf16* dx, float* dbias);

// ---- fused attention (attention.cu) ---------------------------------------------------------------------
// Flash-style: tiles of queries x keys with an online softmax on tensor cores; no [B, H, S, S] tensor
// exists. head_dim 32, 64 or 128; seq_len 1..512; dropout regenerated from the DropoutSpec in the
// backward (same element index as ops.h). Anything else: std::invalid_argument naming the limit.
// attention_supported() says beforehand (the engine checks its config before training starts); it is
// plain host code (attention_limits.cpp), so builds without nvcc (the emulated tests) share it.
constexpr int kAttentionMaxSeqLen = 512;
bool attention_supported(const AttentionShape& shape, std::string* why_not = nullptr);
// Implementations (attention.cu's purpose block), equal up to fp32 summation order and bf16 rounding
// of intermediate P~ / dS:
//   kMma             mma.sync fragments, the elementwise steps in registers (FlashAttention-2's scheme):
//                    the default, 1.9-3.0x the wmma kernels' speed on an H200 (bench/RESULTS.md,
//                    2026-12-04). Backward: up to 128 keys one fused kernel a (b, h) (dK, dV and dQ
//                    from one dS; the pair instead when ctx.kernel_paths().attention_fused_backward
//                    is false), longer sequences the dK/dV + dQ kernel pair.
//   kMmaRecomputeDq  kMma's forward; backward always the kernel pair, whose dQ kernel recomputes S
//                    and dP~ (kMma's backward before the fused kernel, kept to time against it)
//   kWmma            nvcuda::wmma tiles, the elementwise steps on fp32 score tiles in shared memory
// bench_kernels times them; the tests hold each to kernels/cpu.
enum class AttentionKernel { kWmma, kMma, kMmaRecomputeDq };

// A kernel's resources as the device loaded it (kernel_resources; attention.cu, its one user so far).
struct KernelResources {
  std::string name;  // "<kernel><template arguments>", e.g. "attention_forward_mma_kernel<64>"
  int threads = 0;   // the block the op launches
  size_t dynamic_shared_bytes = 0;
  int registers = 0;  // a thread
  size_t static_shared_bytes = 0;
  size_t local_bytes = 0;  // a thread: spills and stack
  int blocks_per_sm = 0;   // at `threads` and `dynamic_shared_bytes`
};
// cudaFuncGetAttributes and the occupancy of `function` (opted in to `dynamic_shared_bytes`).
KernelResources kernel_resources(const void* function, std::string name, int threads, size_t dynamic_shared_bytes);
void attention_forward(Context& ctx, const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v,
                       const int32_t* attention_mask, const DropoutSpec& dropout, bf16* context, float* logsumexp,
                       AttentionKernel kernel = AttentionKernel::kMma);
void attention_backward(Context& ctx, const AttentionShape& shape, const bf16* dcontext, const bf16* q, const bf16* k,
                        const bf16* v, const int32_t* attention_mask, const DropoutSpec& dropout, const bf16* context,
                        const float* logsumexp, bf16* dq, bf16* dk, bf16* dv,
                        AttentionKernel kernel = AttentionKernel::kMma);

// What the compiler and the occupancy calculator gave each attention kernel on this device: registers
// a thread, static shared and local (spill) bytes (cudaFuncGetAttributes), and blocks an SM at the
// block size and dynamic shared memory the op launches it with
// (cudaOccupancyMaxActiveBlocksPerMultiprocessor). attention.cu's napkin math assumes these (e.g. 3
// blocks an SM at head_dim 64); bench_kernels prints them, so a device run checks them.
std::vector<KernelResources> attention_kernel_resources();

// ---- tensor-core layout probe (mma_sync.cu) --------------------------------------------------------------
// One warp runs kernels/cuda/mma_sync.cuh's ldmatrix and mma.sync on A [16][16] (row-major), B given
// as b_nk [n][k] and as b_kn [k][n] (16 x 16 each, bf16), and writes every lane's registers and the
// products D = A B from both B loads (tests/gpu/test_cuda_mma_sync.cpp checks the documented layouts).
struct MmaSyncProbe {
  uint32_t a[32][4];     // ldmatrix_x4 of A, per lane
  uint32_t b_nk[32][4];  // ldmatrix_x4 of b_nk: the B operands of n tiles 0 (registers 0, 1) and 1 (2, 3)
  uint32_t b_kn[32][4];  // ldmatrix_x4_trans of b_kn: the same operands
  float d_nk[16][16];    // A B with the b_nk operands
  float d_kn[16][16];    // A B with the b_kn operands
};
void mma_sync_probe(Context& ctx, const bf16* a, const bf16* b_nk, const bf16* b_kn, MmaSyncProbe* out);

// ---- dropout (dropout.cu) -------------------------------------------------------------------------------
// In place allowed. Same keep mask as kernels/cpu for the same spec (ops::dropout_keep).
void dropout_forward(Context& ctx, int64_t numel, const DropoutSpec& dropout, const bf16* x, bf16* y);
void dropout_backward(Context& ctx, int64_t numel, const DropoutSpec& dropout, const bf16* dy, bf16* dx);

// ---- pooler and row gather/scatter (heads.cu) --------------------------------------------------------------
void pooler_forward(Context& ctx, const PoolerShape& shape, const bf16* encoder_out, const bf16* weight,
                    const bf16* bias, bf16* pooled);
// d_encoder_out's [CLS] rows are ADDED to (bf16), the others untouched.
void pooler_backward(Context& ctx, const PoolerShape& shape, const bf16* dpooled, const bf16* encoder_out,
                     const bf16* weight, const bf16* pooled, bf16* d_encoder_out, float* dweight, float* dbias);
// dst[i] = src[rows[i]] for i < num_rows (rows of `cols` elements): the sparse MLM head's input.
void gather_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const bf16* src, bf16* dst);
// dst[rows[i]] += src[i]; rows must be distinct (masked positions are).
void scatter_add_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const bf16* src, bf16* dst);

// ---- softmax cross-entropy (cross_entropy.cu) ---------------------------------------------------------------
// Device-side results of one call (read with read_cross_entropy_stats when logging).
struct CrossEntropyDeviceStats {
  float loss_sum;       // sum over counted rows of -log p[label] (fixed-order reduction)
  int32_t num_counted;  // rows with a label != kIgnoreIndex
  int32_t num_correct;  // counted rows whose argmax (first maximum) equals the label
};
// Fused over the vocabulary in one pass per row (online max/sum, never storing probabilities):
// loss and dlogits = grad_scale * (softmax - onehot) / num_counted (zero on ignored rows; dlogits
// may alias logits, may be nullptr). stats: device pointer, overwritten.
void softmax_cross_entropy(Context& ctx, const LogitsShape& shape, const bf16* logits, const int32_t* labels,
                           float grad_scale, bf16* dlogits, CrossEntropyDeviceStats* stats);
// Synchronises: the host view (loss = loss_sum / num_counted, 0 when none).
CrossEntropyStats read_cross_entropy_stats(Context& ctx, const CrossEntropyDeviceStats* stats);

// ---- AdamW and gradient norm, many tensors per launch (adamw.cu) -----------------------------------------------
struct AdamWTensor {
  float* param = nullptr;       // fp32 master weights
  bf16* param_bf16 = nullptr;   // the working copy forward/backward read; written after the update (may be nullptr)
  const float* grad = nullptr;  // fp32
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  int64_t numel = 0;
  bool apply_weight_decay = true;
};

// The tensor list on the device, built once (one upload), reused every step.
class MultiTensorList {
 public:
  explicit MultiTensorList(std::span<const AdamWTensor> tensors);
  size_t size() const { return count_; }
  int64_t total_numel() const { return total_numel_; }
  const void* device_table() const { return table_.data(); }
  const void* device_chunks() const { return chunks_.data(); }
  size_t num_chunks() const { return num_chunks_; }

 private:
  DeviceBuffer<unsigned char> table_, chunks_;
  size_t count_ = 0, num_chunks_ = 0;
  int64_t total_numel_ = 0;
};

// Global L2 norm of every tensor's grad: per-chunk partial sums in double, then one fixed-order
// final sum; deterministic. Writes sqrt(sum) to *norm (device).
void grad_norm(Context& ctx, const MultiTensorList& tensors, float* norm);
// One AdamW update of every tensor (ops.h semantics). With clip_norm != nullptr the gradient scale is
// clip_grad_coefficient(*clip_norm, max_grad_norm) read on the device (no host sync), and a non-finite
// *clip_norm skips the update entirely (params, moments unchanged); otherwise hyper.grad_scale.
// The bias-correction step is hyper.step (>= 1), or with step_count != nullptr (device memory: the
// number of updates applied so far) *step_count + 1, read on the device; an applied update then
// increments *step_count, a skipped one leaves it. hyper.step is the step the caller expects: when
// they agree the update is the CPU reference's bit for bit, otherwise (a skip the caller has not
// seen) the bias corrections are formed on the device, possibly an ulp apart.
void adamw_step(Context& ctx, const AdamWHyperparams& hyper, const MultiTensorList& tensors,
                const float* clip_norm = nullptr, float max_grad_norm = 0.0f, int64_t* step_count = nullptr);

// ---- conversions (adamw.cu) ------------------------------------------------------------------------------------
void convert_f32_to_bf16(Context& ctx, int64_t numel, const float* src, bf16* dst);
void convert_bf16_to_f32(Context& ctx, int64_t numel, const bf16* src, float* dst);

}  // namespace bert::cuda
