// CPU backend of kernels/ops.h: every op in float (the CPU trainer) and double (gradient checks).
// Semantics, shapes and the overwrite/accumulate conventions are documented once, in kernels/ops.h;
// this header only adds the C++ types. OpenMP parallelises over rows (or heads); BLAS sgemm/dgemm
// does every matmul (OpenBLAS keeps its own thread pool: OPENBLAS_NUM_THREADS).
// All functions throw std::invalid_argument on a bad shape or an out-of-range id/label.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/ops.h"

namespace bert::cpu {

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

// Per-caller state for CPU ops: the thread count, and scratch memory reused across calls (grown on
// demand, never shrunk) so a training step allocates nothing once warm. Not shareable between
// threads that call ops concurrently: give each its own Context.
class Context {
 public:
  // num_threads <= 0: OpenMP's default (OMP_NUM_THREADS, else the core count).
  explicit Context(int num_threads = 0);

  int num_threads() const { return num_threads_; }

  // `count` elements of scratch, valid until the next scratch() call of the same type. An op that
  // needs several arrays takes one region and splits it.
  template <class T>
  T* scratch(size_t count) {
    std::vector<T>& storage = scratch_storage<T>();
    if (storage.size() < count) storage.resize(count);
    return storage.data();
  }

 private:
  template <class T>
  std::vector<T>& scratch_storage();

  int num_threads_ = 1;
  std::vector<float> scratch_float_;
  std::vector<double> scratch_double_;
};

template <>
inline std::vector<float>& Context::scratch_storage<float>() {
  return scratch_float_;
}
template <>
inline std::vector<double>& Context::scratch_storage<double>() {
  return scratch_double_;
}

// ---- linear (linear.cpp) -----------------------------------------------------------------------
template <class T>
void linear_forward(Context& ctx, const LinearShape& shape, const T* x, const T* weight, const T* bias, T* y);
// dx, dweight, dbias may each be nullptr (not wanted).
template <class T>
void linear_backward(Context& ctx, const LinearShape& shape, const T* dy, const T* x, const T* weight, T* dx,
                     T* dweight, T* dbias, InputGrad dx_mode = InputGrad::kOverwrite);

// ---- embeddings + LayerNorm (embeddings.cpp) -----------------------------------------------------
// token_type_ids may be nullptr (all type 0). mean, rstd: [tokens].
template <class T>
void embeddings_layernorm_forward(Context& ctx, const EmbeddingShape& shape, const int32_t* input_ids,
                                  const int32_t* token_type_ids, const T* word_embeddings, const T* position_embeddings,
                                  const T* token_type_embeddings, const T* gamma, const T* beta, T eps, T* out, T* mean,
                                  T* rstd);
template <class T>
void embeddings_layernorm_backward(Context& ctx, const EmbeddingShape& shape, const T* dout, const int32_t* input_ids,
                                   const int32_t* token_type_ids, const T* word_embeddings,
                                   const T* position_embeddings, const T* token_type_embeddings, const T* gamma,
                                   const T* mean, const T* rstd, T* d_word_embeddings, T* d_position_embeddings,
                                   T* d_token_type_embeddings, T* dgamma, T* dbeta);

// ---- LayerNorm, residual + LayerNorm (layernorm.cpp) ----------------------------------------------
template <class T>
void layernorm_forward(Context& ctx, const MatrixShape& shape, const T* x, const T* gamma, const T* beta, T eps, T* y,
                       T* mean, T* rstd);
template <class T>
void layernorm_backward(Context& ctx, const MatrixShape& shape, const T* dy, const T* x, const T* gamma, const T* mean,
                        const T* rstd, T* dx, T* dgamma, T* dbeta);
// y = LN(x + residual).
template <class T>
void residual_layernorm_forward(Context& ctx, const MatrixShape& shape, const T* x, const T* residual, const T* gamma,
                                const T* beta, T eps, T* y, T* mean, T* rstd);
// d_sum: the gradient of x and of residual alike.
template <class T>
void residual_layernorm_backward(Context& ctx, const MatrixShape& shape, const T* dy, const T* x, const T* residual,
                                 const T* gamma, const T* mean, const T* rstd, T* d_sum, T* dgamma, T* dbeta);

// ---- bias + GELU (gelu.cpp) --------------------------------------------------------------------
// bias may be nullptr (then dbias must be too). y may alias x; dx may alias dy.
template <class T>
void bias_gelu_forward(Context& ctx, GeluKind kind, const MatrixShape& shape, const T* x, const T* bias, T* y);
template <class T>
void bias_gelu_backward(Context& ctx, GeluKind kind, const MatrixShape& shape, const T* dy, const T* x, const T* bias,
                        T* dx, T* dbias);

// ---- scaled dot-product attention (attention.cpp) --------------------------------------------------
// attention_mask may be nullptr (no padding).
template <class T>
void attention_forward(Context& ctx, const AttentionShape& shape, const T* q, const T* k, const T* v,
                       const int32_t* attention_mask, const DropoutSpec& dropout, T* context, T* logsumexp);
template <class T>
void attention_backward(Context& ctx, const AttentionShape& shape, const T* dcontext, const T* q, const T* k,
                        const T* v, const int32_t* attention_mask, const DropoutSpec& dropout, const T* context,
                        const T* logsumexp, T* dq, T* dk, T* dv);

// ---- dropout (dropout.cpp) ---------------------------------------------------------------------
template <class T>
void dropout_forward(Context& ctx, int64_t numel, const DropoutSpec& dropout, const T* x, T* y);
template <class T>
void dropout_backward(Context& ctx, int64_t numel, const DropoutSpec& dropout, const T* dy, T* dx);

// ---- pooler and row gather/scatter (pooler.cpp) -----------------------------------------------
// encoder_out: [batch * seq_len, hidden]; pooled: [batch, hidden].
template <class T>
void pooler_forward(Context& ctx, const PoolerShape& shape, const T* encoder_out, const T* weight, const T* bias,
                    T* pooled);
// d_encoder_out: [batch * seq_len, hidden]; its [CLS] rows are ADDED to, the others untouched.
template <class T>
void pooler_backward(Context& ctx, const PoolerShape& shape, const T* dpooled, const T* encoder_out, const T* weight,
                     const T* pooled, T* d_encoder_out, T* dweight, T* dbias);
// dst[i] = src[rows[i]] for i < num_rows (rows of `cols` elements): the sparse MLM head's input.
template <class T>
void gather_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const T* src, T* dst);
// dst[rows[i]] += src[i]; rows must be distinct (masked positions are).
template <class T>
void scatter_add_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const T* src, T* dst);

// ---- softmax cross-entropy (cross_entropy.cpp) -------------------------------------------------------
// dlogits may be nullptr (loss only) or alias logits.
template <class T>
CrossEntropyStats softmax_cross_entropy(Context& ctx, const LogitsShape& shape, const T* logits, const int32_t* labels,
                                        T grad_scale, T* dlogits);

// ---- AdamW and gradient norm (adamw.cpp) ------------------------------------------------------------
template <class T>
struct AdamWTensor {
  T* param = nullptr;
  const T* grad = nullptr;
  T* exp_avg = nullptr;     // m
  T* exp_avg_sq = nullptr;  // v
  int64_t numel = 0;
  bool apply_weight_decay = true;  // HF: false for biases and LayerNorm weights
};

template <class T>
struct GradView {
  const T* grad = nullptr;
  int64_t numel = 0;
};

template <class T>
void adamw_step(Context& ctx, const AdamWHyperparams& hyper, std::span<const AdamWTensor<T>> tensors);

// L2 norm over all tensors; bitwise the same for any thread count.
template <class T>
double grad_norm(Context& ctx, std::span<const GradView<T>> grads);

}  // namespace bert::cpu
