// The bert::cuda ops (kernels/cuda/ops_cuda.h) that engine/bert_cuda.cpp uses, emulated on the host
// through kernels/cpu, in place of bert_ops_cuda and cuBLASLt; with the runtime emulation
// (emulated_runtime.cpp) the CUDA model's HOST logic runs in every CI job, none of which has a GPU
// (test_cuda_model_emulated: tests/gpu/test_cuda_model.cpp unmodified plus
// tests/emulated/test_cuda_model_host.cpp; test_cuda_trainer_emulated).
//
// What a test run against it verifies, beyond the runtime's checks (memory, ordering, handshakes):
//   - the op sequence and its arguments (shapes, arena offsets, which buffer each op reads and
//     writes, dropout specs, loss scales), through the results: each op is the bert::cpu fp32 op on
//     its bf16 inputs widened to float, and its outputs are rounded to bf16 exactly where the real
//     kernel writes bf16 (fp32 gradients, statistics, moments and master weights stay fp32). So the
//     CUDA model must match the CPU model within the real kernels' tolerances, and the rounding
//     points of the mixed-precision scheme are the real ones.
//   - gathered and scattered rows, ids, token types and labels must be in range when the op
//     executes (a device fault otherwise, as the real kernels trap or would read out of bounds).
//   - the real ops' preconditions that depend on the caller: attention_supported, attention's 16-byte
//     operand alignment, adamw_step's clipping arguments (std::invalid_argument, as the real ops).
// What it does NOT verify: the CUDA kernels and cuBLASLt. The kernels run on the host, thread by
// thread, in test_cuda_kernels_emulated (tests/kernel_emu/); on a device in the gpu-labelled tests.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/cuda/ops_cuda.h"
#include "tests/emulated/emulated_runtime.h"

namespace {

using bert::cuda::bf16;
using bert::emulated::detail::device_arg;
using bert::emulated::detail::device_fault;
using bert::emulated::detail::inside_device_allocation;
using bert::emulated::detail::optional_device_arg;

// Queues a bert::cuda op on ctx's stream (after its issue-time checks).
void launch(bert::cuda::Context& ctx, const char* op, std::function<void()> run) {
  if (bert::emulated::detail::injected_failure(op))
    throw bert::cuda::CudaError(std::string("emulated CUDA: ") + op + ": injected launch failure");
  bert::emulated::detail::count_op();
  bert::emulated::detail::enqueue(ctx.stream(), op, std::move(run));
  CUDA_CHECK_LAUNCH();  // as every real op checks its launch: an error left behind counts as its own
}

bert::cpu::Context& cpu_ctx() {
  static bert::cpu::Context context(1);  // one thread: ctest runs the cases in parallel
  return context;
}

std::vector<float> widen(const bf16* p, int64_t count) {
  std::vector<float> out(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (size_t i = 0; i < out.size(); ++i) out[i] = __bfloat162float(p[i]);
  return out;
}
std::vector<float> widen_optional(const bf16* p, int64_t count) { return p ? widen(p, count) : std::vector<float>(); }
const float* data_or_null(const std::vector<float>& values) { return values.empty() ? nullptr : values.data(); }
void store(bf16* p, const float* values, int64_t count) {
  for (int64_t i = 0; i < count; ++i) p[i] = __float2bfloat16_rn(values[i]);
}
void store(bf16* p, const std::vector<float>& values) { store(p, values.data(), static_cast<int64_t>(values.size())); }
// Elements spanned by `rows` rows of `cols` values, `ld` apart; only those rows' values are stored (the
// padding between rows is never written, as by the real kernels and cuBLASLt).
int64_t strided_extent(int64_t rows, int64_t cols, int64_t ld) { return rows > 0 ? (rows - 1) * ld + cols : 0; }
void store_rows(bf16* p, const std::vector<float>& values, int64_t rows, int64_t cols, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) store(p + r * ld, values.data() + r * ld, cols);
}

// Execution-time check of indices the real kernels trap on (or would read out of bounds with).
void check_indices(const char* op, const char* name, const int32_t* values, int64_t count, int64_t limit) {
  if (values == nullptr) return;
  for (int64_t i = 0; i < count; ++i)
    if (values[i] < 0 || values[i] >= limit)
      device_fault(std::string(op) + ": " + name + "[" + std::to_string(i) + "] = " + std::to_string(values[i]) +
                   " is outside [0, " + std::to_string(limit) + ")");
}
// Row r of a [*, cols] bf16 matrix at `base` must lie inside base's allocation.
void check_row(const char* op, const char* name, const bf16* base, int32_t row, int64_t cols) {
  if (row < 0 || !inside_device_allocation(base + int64_t{row} * cols, static_cast<size_t>(cols) * sizeof(bf16)))
    device_fault(std::string(op) + ": row " + std::to_string(row) + " of " + name + " is outside its allocation");
}

// Extent in elements of a strided q/k/v operand of attention.
int64_t qkv_extent(const bert::ops::AttentionShape& s) { return (s.tokens() - 1) * s.qkv_row_stride + s.hidden(); }

void check_attention(const char* op, const bert::ops::AttentionShape& shape, const bert::ops::DropoutSpec& dropout) {
  std::string why_not;
  if (!bert::cuda::attention_supported(shape, &why_not)) throw std::invalid_argument(std::string(op) + ": " + why_not);
  if (!(dropout.probability >= 0.0f && dropout.probability < 1.0f))
    throw std::invalid_argument(std::string(op) + ": dropout probability outside [0, 1)");
}
void check_aligned16(const char* op, const char* name, const void* p) {
  if (p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 != 0)
    throw std::invalid_argument(std::string(op) + ": " + name + " is null or not 16-byte aligned");
}

}  // namespace

// ---- bert::cuda: MultiTensorList and the ops ------------------------------------------------------------

namespace bert::cuda {

// No cuBLASLt plans: linear_forward / linear_backward below are kernels/cpu products.
struct Context::GemmPlans {};
void Context::GemmPlansDeleter::operator()(GemmPlans* plans) const noexcept { delete plans; }
std::vector<GemmPlanInfo> Context::gemm_plans() const { return {}; }

MultiTensorList::MultiTensorList(std::span<const AdamWTensor> tensors) {
  const char* op = "MultiTensorList";
  for (const AdamWTensor& t : tensors) {
    device_arg(op, "param", t.param, t.numel);
    optional_device_arg(op, "param_bf16", t.param_bf16, t.numel);
    device_arg(op, "grad", t.grad, t.numel);
    device_arg(op, "exp_avg", t.exp_avg, t.numel);
    device_arg(op, "exp_avg_sq", t.exp_avg_sq, t.numel);
    total_numel_ += t.numel;
  }
  count_ = tensors.size();
  // The table lives in device memory, as on the GPU (emulated device memory is host-readable).
  table_.upload(
      std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(tensors.data()), tensors.size_bytes()));
}

// attention_supported: kernels/cuda/attention_limits.cpp, compiled into the test as is.

void linear_forward(Context& ctx, const LinearShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y) {
  const char* op = "linear_forward";
  device_arg(op, "x", x, s.rows * s.in_features);
  device_arg(op, "weight", w, s.out_features * s.in_features);
  optional_device_arg(op, "bias", b, s.out_features);
  const int64_t y_extent = strided_extent(s.rows, s.out_features, s.y_stride());
  device_arg(op, "y", y, y_extent);
  launch(ctx, op, [=] {
    const auto xf = widen(x, s.rows * s.in_features), wf = widen(w, s.out_features * s.in_features),
               bf = widen_optional(b, s.out_features);
    std::vector<float> yf(static_cast<size_t>(y_extent));
    cpu::linear_forward<float>(cpu_ctx(), s, xf.data(), wf.data(), data_or_null(bf), yf.data());
    store_rows(y, yf, s.rows, s.out_features, s.y_stride());
  });
}

void linear_backward(Context& ctx, const LinearShape& s, const bf16* dy, const bf16* x, const bf16* w, bf16* dx,
                     float* dw, float* db, InputGrad mode) {
  const char* op = "linear_backward";
  const int64_t dy_extent = strided_extent(s.rows, s.out_features, s.y_stride());
  device_arg(op, "dy", dy, dy_extent);
  optional_device_arg(op, "x", x, s.rows * s.in_features);
  optional_device_arg(op, "weight", w, s.out_features * s.in_features);
  optional_device_arg(op, "dx", dx, s.rows * s.in_features);
  optional_device_arg(op, "dweight", dw, s.out_features * s.in_features);
  optional_device_arg(op, "dbias", db, s.out_features);
  launch(ctx, op, [=] {
    const auto dyf = widen(dy, dy_extent), xf = widen_optional(x, s.rows * s.in_features),
               wf = widen_optional(w, s.out_features * s.in_features);
    std::vector<float> dxf;
    if (dx != nullptr)
      dxf = mode == InputGrad::kAccumulate ? widen(dx, s.rows * s.in_features)
                                           : std::vector<float>(static_cast<size_t>(s.rows * s.in_features));
    cpu::linear_backward<float>(cpu_ctx(), s, dyf.data(), data_or_null(xf), data_or_null(wf),
                                dx != nullptr ? dxf.data() : nullptr, dw, db, mode);
    if (dx != nullptr) store(dx, dxf);
  });
}

void embeddings_layernorm_forward(Context& ctx, const EmbeddingShape& s, const int32_t* ids, const int32_t* types,
                                  const bf16* word, const bf16* pos, const bf16* type, const bf16* gamma,
                                  const bf16* beta, float eps, bf16* out, float* mean, float* rstd) {
  const char* op = "embeddings_layernorm_forward";
  device_arg(op, "input_ids", ids, s.tokens());
  optional_device_arg(op, "token_type_ids", types, s.tokens());
  device_arg(op, "word_embeddings", word, s.vocab_size * s.hidden);
  device_arg(op, "position_embeddings", pos, s.max_position_embeddings * s.hidden);
  device_arg(op, "token_type_embeddings", type, s.type_vocab_size * s.hidden);
  device_arg(op, "gamma", gamma, s.hidden);
  device_arg(op, "beta", beta, s.hidden);
  device_arg(op, "out", out, s.tokens() * s.hidden);
  device_arg(op, "mean", mean, s.tokens());
  device_arg(op, "rstd", rstd, s.tokens());
  launch(ctx, op, [=] {
    check_indices(op, "input_ids", ids, s.tokens(), s.vocab_size);
    check_indices(op, "token_type_ids", types, s.tokens(), s.type_vocab_size);
    const auto wf = widen(word, s.vocab_size * s.hidden), pf = widen(pos, s.max_position_embeddings * s.hidden),
               tf = widen(type, s.type_vocab_size * s.hidden), gf = widen(gamma, s.hidden), bf = widen(beta, s.hidden);
    std::vector<float> of(static_cast<size_t>(s.tokens() * s.hidden));
    cpu::embeddings_layernorm_forward<float>(cpu_ctx(), s, ids, types, wf.data(), pf.data(), tf.data(), gf.data(),
                                             bf.data(), eps, of.data(), mean, rstd);
    store(out, of);
  });
}

void embeddings_layernorm_backward(Context& ctx, const EmbeddingShape& s, const bf16* dout, const int32_t* ids,
                                   const int32_t* types, const bf16* word, const bf16* pos, const bf16* type,
                                   const bf16* gamma, const float* mean, const float* rstd, float* dword, float* dpos,
                                   float* dtype, float* dgamma, float* dbeta) {
  const char* op = "embeddings_layernorm_backward";
  device_arg(op, "dout", dout, s.tokens() * s.hidden);
  device_arg(op, "input_ids", ids, s.tokens());
  optional_device_arg(op, "token_type_ids", types, s.tokens());
  device_arg(op, "word_embeddings", word, s.vocab_size * s.hidden);
  device_arg(op, "position_embeddings", pos, s.max_position_embeddings * s.hidden);
  device_arg(op, "token_type_embeddings", type, s.type_vocab_size * s.hidden);
  device_arg(op, "gamma", gamma, s.hidden);
  device_arg(op, "mean", mean, s.tokens());
  device_arg(op, "rstd", rstd, s.tokens());
  optional_device_arg(op, "d_word_embeddings", dword, s.vocab_size * s.hidden);
  optional_device_arg(op, "d_position_embeddings", dpos, s.max_position_embeddings * s.hidden);
  optional_device_arg(op, "d_token_type_embeddings", dtype, s.type_vocab_size * s.hidden);
  optional_device_arg(op, "dgamma", dgamma, s.hidden);
  optional_device_arg(op, "dbeta", dbeta, s.hidden);
  launch(ctx, op, [=] {
    check_indices(op, "input_ids", ids, s.tokens(), s.vocab_size);
    check_indices(op, "token_type_ids", types, s.tokens(), s.type_vocab_size);
    const auto df = widen(dout, s.tokens() * s.hidden), wf = widen(word, s.vocab_size * s.hidden),
               pf = widen(pos, s.max_position_embeddings * s.hidden), tf = widen(type, s.type_vocab_size * s.hidden),
               gf = widen(gamma, s.hidden);
    cpu::embeddings_layernorm_backward<float>(cpu_ctx(), s, df.data(), ids, types, wf.data(), pf.data(), tf.data(),
                                              gf.data(), mean, rstd, dword, dpos, dtype, dgamma, dbeta);
  });
}

void layernorm_forward(Context& ctx, const MatrixShape& s, const bf16* x, const bf16* gamma, const bf16* beta,
                       float eps, bf16* y, float* mean, float* rstd) {
  const char* op = "layernorm_forward";
  device_arg(op, "x", x, s.rows * s.cols);
  device_arg(op, "gamma", gamma, s.cols);
  device_arg(op, "beta", beta, s.cols);
  device_arg(op, "y", y, s.rows * s.cols);
  device_arg(op, "mean", mean, s.rows);
  device_arg(op, "rstd", rstd, s.rows);
  launch(ctx, op, [=] {
    const auto xf = widen(x, s.rows * s.cols), gf = widen(gamma, s.cols), bf = widen(beta, s.cols);
    std::vector<float> yf(static_cast<size_t>(s.rows * s.cols));
    cpu::layernorm_forward<float>(cpu_ctx(), s, xf.data(), gf.data(), bf.data(), eps, yf.data(), mean, rstd);
    store(y, yf);
  });
}

void layernorm_backward(Context& ctx, const MatrixShape& s, const bf16* dy, const bf16* x, const bf16* gamma,
                        const float* mean, const float* rstd, bf16* dx, float* dgamma, float* dbeta) {
  const char* op = "layernorm_backward";
  device_arg(op, "dy", dy, s.rows * s.cols);
  device_arg(op, "x", x, s.rows * s.cols);
  device_arg(op, "gamma", gamma, s.cols);
  device_arg(op, "mean", mean, s.rows);
  device_arg(op, "rstd", rstd, s.rows);
  device_arg(op, "dx", dx, s.rows * s.cols);
  optional_device_arg(op, "dgamma", dgamma, s.cols);
  optional_device_arg(op, "dbeta", dbeta, s.cols);
  launch(ctx, op, [=] {
    const auto dyf = widen(dy, s.rows * s.cols), xf = widen(x, s.rows * s.cols), gf = widen(gamma, s.cols);
    std::vector<float> dxf(static_cast<size_t>(s.rows * s.cols));
    cpu::layernorm_backward<float>(cpu_ctx(), s, dyf.data(), xf.data(), gf.data(), mean, rstd, dxf.data(), dgamma,
                                   dbeta);
    store(dx, dxf);
  });
}

void residual_layernorm_forward(Context& ctx, const MatrixShape& s, const bf16* x, const bf16* r, const bf16* gamma,
                                const bf16* beta, float eps, bf16* y, float* mean, float* rstd) {
  const char* op = "residual_layernorm_forward";
  device_arg(op, "x", x, s.rows * s.cols);
  device_arg(op, "residual", r, s.rows * s.cols);
  device_arg(op, "gamma", gamma, s.cols);
  device_arg(op, "beta", beta, s.cols);
  device_arg(op, "y", y, s.rows * s.cols);
  device_arg(op, "mean", mean, s.rows);
  device_arg(op, "rstd", rstd, s.rows);
  launch(ctx, op, [=] {
    const auto xf = widen(x, s.rows * s.cols), rf = widen(r, s.rows * s.cols), gf = widen(gamma, s.cols),
               bf = widen(beta, s.cols);
    std::vector<float> yf(static_cast<size_t>(s.rows * s.cols));
    cpu::residual_layernorm_forward<float>(cpu_ctx(), s, xf.data(), rf.data(), gf.data(), bf.data(), eps, yf.data(),
                                           mean, rstd);
    store(y, yf);
  });
}

// The composition the fused kernel must equal (kernels/cuda/layernorm.cu).
void dropout_residual_layernorm_forward(Context& ctx, const MatrixShape& s, const DropoutSpec& spec, bf16* x,
                                        const bf16* r, const bf16* gamma, const bf16* beta, float eps, bf16* y,
                                        float* mean, float* rstd) {
  if (x == y || x == r)
    throw std::invalid_argument("dropout_residual_layernorm_forward: x must not alias y or residual");
  dropout_forward(ctx, s.rows * s.cols, spec, x, x);
  residual_layernorm_forward(ctx, s, x, r, gamma, beta, eps, y, mean, rstd);
}

void residual_layernorm_backward(Context& ctx, const MatrixShape& s, const bf16* dy, const bf16* x, const bf16* r,
                                 const bf16* gamma, const float* mean, const float* rstd, bf16* dsum, float* dgamma,
                                 float* dbeta) {
  const char* op = "residual_layernorm_backward";
  device_arg(op, "dy", dy, s.rows * s.cols);
  device_arg(op, "x", x, s.rows * s.cols);
  device_arg(op, "residual", r, s.rows * s.cols);
  device_arg(op, "gamma", gamma, s.cols);
  device_arg(op, "mean", mean, s.rows);
  device_arg(op, "rstd", rstd, s.rows);
  device_arg(op, "d_sum", dsum, s.rows * s.cols);
  optional_device_arg(op, "dgamma", dgamma, s.cols);
  optional_device_arg(op, "dbeta", dbeta, s.cols);
  launch(ctx, op, [=] {
    const auto dyf = widen(dy, s.rows * s.cols), xf = widen(x, s.rows * s.cols), rf = widen(r, s.rows * s.cols),
               gf = widen(gamma, s.cols);
    std::vector<float> df(static_cast<size_t>(s.rows * s.cols));
    cpu::residual_layernorm_backward<float>(cpu_ctx(), s, dyf.data(), xf.data(), rf.data(), gf.data(), mean, rstd,
                                            df.data(), dgamma, dbeta);
    store(dsum, df);
  });
}

void residual_layernorm_dropout_backward(Context& ctx, const MatrixShape& s, const DropoutSpec& spec, const bf16* dy,
                                         const bf16* x, const bf16* r, const bf16* gamma, const float* mean,
                                         const float* rstd, bf16* dsum, bf16* dx, float* dgamma, float* dbeta) {
  if (dx == dsum) throw std::invalid_argument("residual_layernorm_dropout_backward: d_x must not alias d_sum");
  residual_layernorm_backward(ctx, s, dy, x, r, gamma, mean, rstd, dsum, dgamma, dbeta);
  dropout_backward(ctx, s.rows * s.cols, spec, dsum, dx);
}

void bias_gelu_forward(Context& ctx, GeluKind kind, const MatrixShape& s, const bf16* x, const bf16* b, bf16* y) {
  const char* op = "bias_gelu_forward";
  device_arg(op, "x", x, s.rows * s.cols);
  optional_device_arg(op, "bias", b, s.cols);
  device_arg(op, "y", y, s.rows * s.cols);
  launch(ctx, op, [=] {
    const auto xf = widen(x, s.rows * s.cols), bf = widen_optional(b, s.cols);
    std::vector<float> yf(static_cast<size_t>(s.rows * s.cols));
    cpu::bias_gelu_forward<float>(cpu_ctx(), kind, s, xf.data(), data_or_null(bf), yf.data());
    store(y, yf);
  });
}

void bias_gelu_backward(Context& ctx, GeluKind kind, const MatrixShape& s, const bf16* dy, const bf16* x, const bf16* b,
                        bf16* dx, float* db) {
  const char* op = "bias_gelu_backward";
  device_arg(op, "dy", dy, s.rows * s.cols);
  device_arg(op, "x", x, s.rows * s.cols);
  optional_device_arg(op, "bias", b, s.cols);
  device_arg(op, "dx", dx, s.rows * s.cols);
  optional_device_arg(op, "dbias", db, s.cols);
  launch(ctx, op, [=] {
    const auto dyf = widen(dy, s.rows * s.cols), xf = widen(x, s.rows * s.cols), bf = widen_optional(b, s.cols);
    std::vector<float> dxf(static_cast<size_t>(s.rows * s.cols));
    cpu::bias_gelu_backward<float>(cpu_ctx(), kind, s, dyf.data(), xf.data(), data_or_null(bf), dxf.data(), db);
    store(dx, dxf);
  });
}

// Both kernels are the same op here (kernels/cpu's).
void attention_forward(Context& ctx, const AttentionShape& s, const bf16* q, const bf16* k, const bf16* v,
                       const int32_t* mask, const DropoutSpec& dropout, bf16* context, float* lse, AttentionKernel) {
  const char* op = "attention_forward";
  check_attention(op, s, dropout);
  if (s.batch == 0) return;
  for (const auto& [name, p] : {std::pair<const char*, const void*>{"q", q}, {"k", k}, {"v", v}, {"context", context}})
    check_aligned16(op, name, p);
  const int64_t n = qkv_extent(s);
  device_arg(op, "q", q, n);
  device_arg(op, "k", k, n);
  device_arg(op, "v", v, n);
  optional_device_arg(op, "attention_mask", mask, s.tokens());
  device_arg(op, "context", context, s.tokens() * s.hidden());
  device_arg(op, "logsumexp", lse, s.batch * s.num_heads * s.seq_len);
  launch(ctx, op, [=] {
    const auto qf = widen(q, n), kf = widen(k, n), vf = widen(v, n);
    std::vector<float> cf(static_cast<size_t>(s.tokens() * s.hidden()));
    cpu::attention_forward<float>(cpu_ctx(), s, qf.data(), kf.data(), vf.data(), mask, dropout, cf.data(), lse);
    store(context, cf);
  });
}

void attention_backward(Context& ctx, const AttentionShape& s, const bf16* dcontext, const bf16* q, const bf16* k,
                        const bf16* v, const int32_t* mask, const DropoutSpec& dropout, const bf16* context,
                        const float* lse, bf16* dq, bf16* dk, bf16* dv, AttentionKernel) {
  const char* op = "attention_backward";
  check_attention(op, s, dropout);
  if (s.batch == 0) return;
  for (const auto& [name, p] : {std::pair<const char*, const void*>{"dcontext", dcontext},
                                {"q", q},
                                {"k", k},
                                {"v", v},
                                {"context", context},
                                {"dq", dq},
                                {"dk", dk},
                                {"dv", dv}})
    check_aligned16(op, name, p);
  const int64_t n = qkv_extent(s);
  device_arg(op, "dcontext", dcontext, s.tokens() * s.hidden());
  device_arg(op, "q", q, n);
  device_arg(op, "k", k, n);
  device_arg(op, "v", v, n);
  optional_device_arg(op, "attention_mask", mask, s.tokens());
  device_arg(op, "context", context, s.tokens() * s.hidden());
  device_arg(op, "logsumexp", lse, s.batch * s.num_heads * s.seq_len);
  device_arg(op, "dq", dq, n);
  device_arg(op, "dk", dk, n);
  device_arg(op, "dv", dv, n);
  launch(ctx, op, [=] {
    const auto qf = widen(q, n), kf = widen(k, n), vf = widen(v, n);
    const auto dcf = widen(dcontext, s.tokens() * s.hidden()), cf = widen(context, s.tokens() * s.hidden());
    std::vector<float> dqf(static_cast<size_t>(n)), dkf(static_cast<size_t>(n)), dvf(static_cast<size_t>(n));
    cpu::attention_backward<float>(cpu_ctx(), s, dcf.data(), qf.data(), kf.data(), vf.data(), mask, dropout, cf.data(),
                                   lse, dqf.data(), dkf.data(), dvf.data());
    // Only each token's hidden elements: dq, dk and dv interleave in one [tokens, 3 * hidden] buffer.
    for (int64_t t = 0; t < s.tokens(); ++t) {
      const int64_t o = t * s.qkv_row_stride;
      store(dq + o, dqf.data() + o, s.hidden());
      store(dk + o, dkf.data() + o, s.hidden());
      store(dv + o, dvf.data() + o, s.hidden());
    }
  });
}

void dropout_forward(Context& ctx, int64_t numel, const DropoutSpec& spec, const bf16* x, bf16* y) {
  const char* op = "dropout_forward";
  device_arg(op, "x", x, numel);
  device_arg(op, "y", y, numel);
  launch(ctx, op, [=] {
    const auto xf = widen(x, numel);
    std::vector<float> yf(static_cast<size_t>(numel));
    cpu::dropout_forward<float>(cpu_ctx(), numel, spec, xf.data(), yf.data());
    store(y, yf);
  });
}

void dropout_backward(Context& ctx, int64_t numel, const DropoutSpec& spec, const bf16* dy, bf16* dx) {
  const char* op = "dropout_backward";
  device_arg(op, "dy", dy, numel);
  device_arg(op, "dx", dx, numel);
  launch(ctx, op, [=] {
    const auto dyf = widen(dy, numel);
    std::vector<float> dxf(static_cast<size_t>(numel));
    cpu::dropout_backward<float>(cpu_ctx(), numel, spec, dyf.data(), dxf.data());
    store(dx, dxf);
  });
}

void pooler_forward(Context& ctx, const PoolerShape& s, const bf16* enc, const bf16* w, const bf16* b, bf16* pooled) {
  const char* op = "pooler_forward";
  if (s.batch == 0) return;
  device_arg(op, "encoder_out", enc, s.batch * s.seq_len * s.hidden);
  device_arg(op, "weight", w, s.hidden * s.hidden);
  optional_device_arg(op, "bias", b, s.hidden);
  device_arg(op, "pooled", pooled, s.batch * s.hidden);
  launch(ctx, op, [=] {
    const auto ef = widen(enc, s.batch * s.seq_len * s.hidden), wf = widen(w, s.hidden * s.hidden),
               bf = widen_optional(b, s.hidden);
    std::vector<float> pf(static_cast<size_t>(s.batch * s.hidden));
    cpu::pooler_forward<float>(cpu_ctx(), s, ef.data(), wf.data(), data_or_null(bf), pf.data());
    store(pooled, pf);
  });
}

void pooler_backward(Context& ctx, const PoolerShape& s, const bf16* dpooled, const bf16* enc, const bf16* w,
                     const bf16* pooled, bf16* denc, float* dw, float* db) {
  const char* op = "pooler_backward";
  if (s.batch == 0) return;
  const int64_t n = s.batch * s.seq_len * s.hidden;
  device_arg(op, "dpooled", dpooled, s.batch * s.hidden);
  device_arg(op, "encoder_out", enc, n);
  device_arg(op, "weight", w, s.hidden * s.hidden);
  device_arg(op, "pooled", pooled, s.batch * s.hidden);
  optional_device_arg(op, "d_encoder_out", denc, n);
  optional_device_arg(op, "dweight", dw, s.hidden * s.hidden);
  optional_device_arg(op, "dbias", db, s.hidden);
  launch(ctx, op, [=] {
    const auto dpf = widen(dpooled, s.batch * s.hidden), ef = widen(enc, n), wf = widen(w, s.hidden * s.hidden),
               pf = widen(pooled, s.batch * s.hidden);
    std::vector<float> def = denc != nullptr ? widen(denc, n) : std::vector<float>();
    cpu::pooler_backward<float>(cpu_ctx(), s, dpf.data(), ef.data(), wf.data(), pf.data(),
                                denc != nullptr ? def.data() : nullptr, dw, db);
    // The real kernel adds into the [CLS] rows only; the other rows are not touched.
    if (denc != nullptr)
      for (int64_t b = 0; b < s.batch; ++b) {
        const int64_t row = b * s.seq_len * s.hidden;
        store(denc + row, def.data() + row, s.hidden);
      }
  });
}

void gather_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const bf16* src, bf16* dst) {
  const char* op = "gather_rows";
  if (num_rows == 0 || cols == 0) return;
  device_arg(op, "rows", rows, num_rows);
  device_arg(op, "src", src, cols);
  device_arg(op, "dst", dst, num_rows * cols);
  launch(ctx, op, [=] {
    for (int64_t i = 0; i < num_rows; ++i) {
      check_row(op, "src", src, rows[i], cols);
      std::memcpy(dst + i * cols, src + int64_t{rows[i]} * cols, static_cast<size_t>(cols) * sizeof(bf16));
    }
  });
}

void scatter_add_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const bf16* src, bf16* dst) {
  const char* op = "scatter_add_rows";
  if (num_rows == 0 || cols == 0) return;
  device_arg(op, "rows", rows, num_rows);
  device_arg(op, "src", src, num_rows * cols);
  device_arg(op, "dst", dst, cols);
  launch(ctx, op, [=] {
    std::vector<int32_t> sorted(rows, rows + num_rows);
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
      device_fault(std::string(op) + ": rows must be distinct (a repeated row is a data race on the device)");
    for (int64_t i = 0; i < num_rows; ++i) {
      check_row(op, "dst", dst, rows[i], cols);
      bf16* out = dst + int64_t{rows[i]} * cols;
      for (int64_t c = 0; c < cols; ++c)
        out[c] = __float2bfloat16_rn(__bfloat162float(out[c]) + __bfloat162float(src[i * cols + c]));
    }
  });
}

void softmax_cross_entropy(Context& ctx, const LogitsShape& s, const bf16* logits, const int32_t* labels,
                           float grad_scale, bf16* dlogits, CrossEntropyDeviceStats* stats) {
  const char* op = "softmax_cross_entropy";
  const int64_t extent = strided_extent(s.rows, s.classes, s.stride());
  device_arg(op, "logits", logits, extent);
  device_arg(op, "labels", labels, s.rows);
  optional_device_arg(op, "dlogits", dlogits, extent);
  device_arg(op, "stats", stats, 1);
  launch(ctx, op, [=] {
    for (int64_t r = 0; r < s.rows; ++r)
      if (labels[r] != ops::kIgnoreIndex && (labels[r] < 0 || labels[r] >= s.classes))
        device_fault(std::string(op) + ": label " + std::to_string(labels[r]) + " of row " + std::to_string(r) +
                     " is outside [0, " + std::to_string(s.classes) + ") (the host validates labels)");
    const auto lf = widen(logits, extent);
    std::vector<float> df(dlogits != nullptr ? lf.size() : 0);
    const CrossEntropyStats r = cpu::softmax_cross_entropy<float>(cpu_ctx(), s, lf.data(), labels, grad_scale,
                                                                  dlogits != nullptr ? df.data() : nullptr);
    stats->loss_sum = static_cast<float>(r.loss * static_cast<double>(r.num_counted));
    stats->num_counted = static_cast<int32_t>(r.num_counted);
    stats->num_correct = static_cast<int32_t>(r.num_correct);
    if (dlogits != nullptr) store_rows(dlogits, df, s.rows, s.classes, s.stride());
  });
}

CrossEntropyStats read_cross_entropy_stats(Context& ctx, const CrossEntropyDeviceStats* stats) {
  device_arg("read_cross_entropy_stats", "stats", stats, 1);
  ctx.synchronize();
  CrossEntropyStats r;
  r.num_counted = stats->num_counted;
  r.num_correct = stats->num_correct;
  r.loss = r.num_counted > 0 ? stats->loss_sum / static_cast<double>(r.num_counted) : 0.0;
  return r;
}

void grad_norm(Context& ctx, const MultiTensorList& tensors, float* norm) {
  device_arg("grad_norm", "norm", norm, 1);
  const auto* table = static_cast<const AdamWTensor*>(tensors.device_table());
  const size_t count = tensors.size();
  launch(ctx, "grad_norm", [=] {
    std::vector<cpu::GradView<float>> views;
    for (size_t i = 0; i < count; ++i) views.push_back({table[i].grad, table[i].numel});
    *norm = static_cast<float>(cpu::grad_norm<float>(cpu_ctx(), views));
  });
}

void adamw_step(Context& ctx, const AdamWHyperparams& hyper, const MultiTensorList& tensors, const float* clip_norm,
                float max_grad_norm, int64_t* step_count) {
  const char* op = "adamw_step";
  if (hyper.step < 1) throw std::invalid_argument("adamw_step: step must be >= 1");
  if (clip_norm != nullptr && !(max_grad_norm > 0))
    throw std::invalid_argument("adamw_step: max_grad_norm must be > 0 when clipping");
  optional_device_arg(op, "clip_norm", clip_norm, 1);
  optional_device_arg(op, "step_count", step_count, 1);
  const auto* table = static_cast<const AdamWTensor*>(tensors.device_table());
  const size_t count = tensors.size();
  launch(ctx, op, [=] {
    AdamWHyperparams h = hyper;
    if (clip_norm != nullptr) {
      const float norm = *clip_norm;  // read on the device: no host sync
      if (!std::isfinite(norm)) return;
      h.grad_scale = ops::clip_grad_coefficient(static_cast<double>(norm), max_grad_norm);
    }
    if (step_count != nullptr) {  // the device's count of applied updates
      if (*step_count < 0) device_fault("adamw_step: the step count is " + std::to_string(*step_count));
      h.step = ++*step_count;
    }
    std::vector<cpu::AdamWTensor<float>> list;
    for (size_t i = 0; i < count; ++i)
      list.push_back({table[i].param, table[i].grad, table[i].exp_avg, table[i].exp_avg_sq, table[i].numel,
                      table[i].apply_weight_decay});
    cpu::adamw_step<float>(cpu_ctx(), h, list);
    for (size_t i = 0; i < count; ++i)
      if (table[i].param_bf16 != nullptr) store(table[i].param_bf16, table[i].param, table[i].numel);
  });
}

void convert_f32_to_bf16(Context& ctx, int64_t numel, const float* src, bf16* dst) {
  device_arg("convert_f32_to_bf16", "src", src, numel);
  device_arg("convert_f32_to_bf16", "dst", dst, numel);
  launch(ctx, "convert_f32_to_bf16", [=] { store(dst, src, numel); });
}

void convert_bf16_to_f32(Context& ctx, int64_t numel, const bf16* src, float* dst) {
  device_arg("convert_bf16_to_f32", "src", src, numel);
  device_arg("convert_bf16_to_f32", "dst", dst, numel);
  launch(ctx, "convert_bf16_to_f32", [=] {
    for (int64_t i = 0; i < numel; ++i) dst[i] = __bfloat162float(src[i]);
  });
}

}  // namespace bert::cuda
