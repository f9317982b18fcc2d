// Scaled dot-product self-attention, HF BertSelfAttention after the Q/K/V projections:
// per sequence b and head h, P = softmax(Q K^T / sqrt(D) + key-padding mask), context = dropout(P) V.
// q/k/v (and dq/dk/dv): [tokens, *] rows of stride qkv_row_stride, head h at columns [h*D, (h+1)*D);
// context [tokens, H*D]; saved logsumexp [B, H, S]. Masking and the all-padding rule: kernels/ops.h.
// Like FlashAttention, P is not stored: backward recomputes it from q, k and logsumexp, and the
// dropout mask from the Philox counter, so the CPU and CUDA backends save the same tensors.
//
// Napkin math (BERT-base, B = 32, S = 128, H = 12, D = 64): forward 4*B*S^2*H*D = 1.6 GFLOP,
// backward ~2.5x that (with the recompute), ~5% of the layer's GEMM FLOPs. One (b, h) task touches
// 3 * S * D * 4 = 98 KB (L2 resident), so each task is plain loops, one query row at a time. K and V
// of the head are first transposed to [D, S] so that q K^T and dO V^T run as axpys over the keys:
// every inner loop is unit-stride and vectorises without reassociating a sum (no -ffast-math),
// and each sum keeps the order d = 0..D-1.
// Backward, per query i: dP~ = dO V^T, dV += P~^T dO, dS = P * (mask_scale * dP~ - rowsum(dO * O)),
// dQ = dS K / sqrt(D), dK += dS^T Q / sqrt(D); every (b, h) owns its dq/dk/dv slice, so no races.
//
// With OpenBLAS's OpenMP build (openblas_get_parallel() == 2) each (b, h) task instead runs its
// products as BLAS GEMMs on an [S, S] scores block (forward: Q K^T, P~ V; backward: Q K^T, P~^T dO,
// dO V^T, dS K, dS^T Q): that build runs a GEMM called inside our parallel loop on the calling thread
// alone, with its vector kernels, ~2x faster than the loops above on AVX-512. Per thread 3 S^2
// scratch values (backward; 192 KB at S = 128). Another BLAS (whose own threads a call from inside a
// parallel region would contend for) keeps the loops. Same semantics, but the sums' order differs and
// the GEMMs multiply the zero weights of padded or dropped keys too, so a non-finite K or V row
// there reaches the outputs (as in the CUDA kernel's tiles); the loops skip such keys.
#include "kernels/cpu/ops_cpu_detail.h"
#include "kernels/cpu/vector_math.h"

extern "C" int openblas_get_parallel() __attribute__((weak));  // OpenBLAS: 0 serial, 1 pthreads, 2 OpenMP

namespace bert::cpu {

namespace detail {

namespace {
int attention_blas_setting = -1;  // -1: automatic
}  // namespace

bool attention_uses_blas() {
  if (attention_blas_setting >= 0) return attention_blas_setting == 1;
  static const bool openmp_blas = openblas_get_parallel != nullptr && openblas_get_parallel() == 2;
  return openmp_blas;
}

void set_attention_blas(int setting) { attention_blas_setting = setting; }

}  // namespace detail

namespace {

void check_shape(const AttentionShape& shape, const char* op) {
  detail::require(shape.batch >= 0 && shape.seq_len > 0 && shape.num_heads > 0 && shape.head_dim > 0, op,
                  "need batch >= 0 and seq_len, num_heads, head_dim > 0");
  detail::require(
      shape.qkv_row_stride >= shape.hidden(), op,
      "qkv_row_stride " + std::to_string(shape.qkv_row_stride) + " is below hidden " + std::to_string(shape.hidden()));
}

// The BLAS path's GEMMs run on the calling thread alone, whatever the thread count: with several
// threads OpenBLAS sees an active parallel region and stays serial, but with num_threads(1) the region
// is inactive and OpenBLAS would fork omp_get_max_threads() threads of its own, partitioning each GEMM
// differently, which changes the bits on some CPUs (AMD EPYC with OpenBLAS's Zen kernels did). This
// sets nthreads-var of the calling implicit task only (OpenMP's rule for omp_set_num_threads inside a
// region): the threads after the region are as they were.
void serial_blas_in_this_task() { omp_set_num_threads(1); }

int64_t count_valid_keys(const int32_t* key_mask, int64_t seq_len) {
  if (key_mask == nullptr) return seq_len;
  int64_t valid = 0;
  for (int64_t j = 0; j < seq_len; ++j) valid += key_mask[j] != 0;
  return valid;
}

// transposed[d * seq_len + j] = head[j * stride + d].
template <class T>
void transpose_head(const T* head, int64_t stride, int64_t seq_len, int64_t head_dim, T* transposed) {
  for (int64_t j = 0; j < seq_len; ++j)
    for (int64_t d = 0; d < head_dim; ++d) transposed[d * seq_len + j] = head[j * stride + d];
}

// out[j] = sum_d row[d] * transposed[d][j] for all keys j.
template <class T>
void row_times_transposed(const T* row, const T* transposed, int64_t seq_len, int64_t head_dim, T* out) {
  for (int64_t j = 0; j < seq_len; ++j) out[j] = T(0);
  for (int64_t d = 0; d < head_dim; ++d) {
    const T value = row[d];
    const T* column = transposed + d * seq_len;
    for (int64_t j = 0; j < seq_len; ++j) out[j] += value * column[j];
  }
}

// Softmax of one query row over its keys (probs holds the raw q.k on entry); returns the
// log-sum-exp, log(seq_len) for an all-padding row, which attends uniformly.
template <class T>
T softmax_row(int64_t seq_len, const int32_t* key_mask, int64_t valid_keys, T scale, T* probs) {
  if (valid_keys == 0) {
    for (int64_t j = 0; j < seq_len; ++j) probs[j] = T(1) / static_cast<T>(seq_len);
    return std::log(static_cast<T>(seq_len));
  }
  T max_score = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < seq_len; ++j) {
    probs[j] *= scale;
    if (key_mask == nullptr || key_mask[j] != 0) max_score = std::max(max_score, probs[j]);
  }
  detail::exp_affine(probs, T(1), max_score, probs, seq_len);
  if (key_mask != nullptr)
    for (int64_t j = 0; j < seq_len; ++j) probs[j] = key_mask[j] == 0 ? T(0) : probs[j];
  T sum = 0;
  for (int64_t j = 0; j < seq_len; ++j) sum += probs[j];
  for (int64_t j = 0; j < seq_len; ++j) probs[j] /= sum;
  return max_score + std::log(sum);
}

// The same probabilities rebuilt from the saved log-sum-exp (probs holds the raw q.k on entry).
template <class T>
void softmax_row_recompute(int64_t seq_len, const int32_t* key_mask, int64_t valid_keys, T scale, T logsumexp,
                           T* probs) {
  if (valid_keys == 0) {
    for (int64_t j = 0; j < seq_len; ++j) probs[j] = T(1) / static_cast<T>(seq_len);
    return;
  }
  detail::exp_affine(probs, scale, logsumexp, probs, seq_len);
  if (key_mask != nullptr)
    for (int64_t j = 0; j < seq_len; ++j) probs[j] = key_mask[j] == 0 ? T(0) : probs[j];
}

// attention_backward's GEMM form (see the top): per (b, h), P [S, S] recomputed from the scores and
// logsumexp, the dropout multipliers M [S, S], and one [S, S] buffer that holds P~ = P * M (for dV),
// then dP~ = dO V^T, then dS in place (for dQ and dK).
template <class T>
void attention_backward_blas(Context& ctx, const AttentionShape& shape, const T* dcontext, const T* q, const T* k,
                             const T* v, const int32_t* attention_mask, const DropoutSpec& dropout, const T* context,
                             const T* logsumexp, T* dq, T* dk, T* dv) {
  const int64_t seq_len = shape.seq_len, heads = shape.num_heads, head_dim = shape.head_dim;
  const int64_t hidden = shape.hidden(), stride = shape.qkv_row_stride, square = seq_len * seq_len;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  const int threads = ctx.num_threads();
  const int64_t per_thread = 3 * square;
  T* scratch = ctx.scratch<T>(static_cast<size_t>(threads * per_thread));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t batch_head = 0; batch_head < shape.batch * heads; ++batch_head) {
    serial_blas_in_this_task();
    T* probs = scratch + omp_get_thread_num() * per_thread;
    T* multipliers = probs + square;
    T* work = multipliers + square;  // P~, then dP~, then dS
    const int64_t b = batch_head / heads, h = batch_head % heads;
    const int32_t* key_mask = attention_mask != nullptr ? attention_mask + b * seq_len : nullptr;
    const int64_t valid_keys = count_valid_keys(key_mask, seq_len);
    const int64_t head_offset = b * seq_len * stride + h * head_dim;
    const int64_t out_offset = b * seq_len * hidden + h * head_dim;
    detail::gemm<T>(false, true, seq_len, seq_len, head_dim, T(1), q + head_offset, stride, k + head_offset, stride,
                    T(0), probs, seq_len);
    for (int64_t i = 0; i < seq_len; ++i) {
      T* p = probs + i * seq_len;
      T* m = multipliers + i * seq_len;
      softmax_row_recompute(seq_len, key_mask, valid_keys, scale, logsumexp[batch_head * seq_len + i], p);
      detail::dropout_multipliers(dropout, static_cast<uint64_t>((batch_head * seq_len + i) * seq_len), seq_len, m);
      for (int64_t j = 0; j < seq_len; ++j) work[i * seq_len + j] = p[j] * m[j];
    }
    detail::gemm<T>(true, false, seq_len, head_dim, seq_len, T(1), work, seq_len, dcontext + out_offset, hidden, T(0),
                    dv + head_offset, stride);
    detail::gemm<T>(false, true, seq_len, seq_len, head_dim, T(1), dcontext + out_offset, hidden, v + head_offset,
                    stride, T(0), work, seq_len);
    for (int64_t i = 0; i < seq_len; ++i) {
      const T* dout = dcontext + out_offset + i * hidden;
      const T* out = context + out_offset + i * hidden;
      T dout_dot_out = 0;  // = sum_j P_ij dP_ij
      for (int64_t d = 0; d < head_dim; ++d) dout_dot_out += dout[d] * out[d];
      const T* p = probs + i * seq_len;
      const T* m = multipliers + i * seq_len;
      T* ds = work + i * seq_len;
      for (int64_t j = 0; j < seq_len; ++j)  // all-padding rows and masked keys: no gradient to q or k
        ds[j] = valid_keys == 0 || p[j] == T(0) ? T(0) : scale * p[j] * (ds[j] * m[j] - dout_dot_out);
    }
    detail::gemm<T>(false, false, seq_len, head_dim, seq_len, T(1), work, seq_len, k + head_offset, stride, T(0),
                    dq + head_offset, stride);
    detail::gemm<T>(true, false, seq_len, head_dim, seq_len, T(1), work, seq_len, q + head_offset, stride, T(0),
                    dk + head_offset, stride);
  }
}

}  // namespace

template <class T>
void attention_forward(Context& ctx, const AttentionShape& shape, const T* q, const T* k, const T* v,
                       const int32_t* attention_mask, const DropoutSpec& dropout, T* context, T* logsumexp) {
  check_shape(shape, "attention_forward");
  detail::require(dropout.probability >= 0.0f && dropout.probability < 1.0f, "attention_forward",
                  "dropout probability must be in [0, 1)");
  const int64_t seq_len = shape.seq_len, heads = shape.num_heads, head_dim = shape.head_dim;
  const int64_t hidden = shape.hidden(), stride = shape.qkv_row_stride;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  const int threads = ctx.num_threads();
  if (detail::attention_uses_blas()) {
    // Per thread: scores [S, S] (softmax and dropout in place: P~), dropout multipliers [S].
    const int64_t per_thread = seq_len * seq_len + seq_len;
    T* scratch = ctx.scratch<T>(static_cast<size_t>(threads * per_thread));
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t batch_head = 0; batch_head < shape.batch * heads; ++batch_head) {
      serial_blas_in_this_task();
      T* scores = scratch + omp_get_thread_num() * per_thread;
      T* dropout_scale = scores + seq_len * seq_len;
      const int64_t b = batch_head / heads, h = batch_head % heads;
      const int32_t* key_mask = attention_mask != nullptr ? attention_mask + b * seq_len : nullptr;
      const int64_t valid_keys = count_valid_keys(key_mask, seq_len);
      const int64_t head_offset = b * seq_len * stride + h * head_dim;
      detail::gemm<T>(false, true, seq_len, seq_len, head_dim, T(1), q + head_offset, stride, k + head_offset, stride,
                      T(0), scores, seq_len);
      for (int64_t i = 0; i < seq_len; ++i) {
        T* row = scores + i * seq_len;
        logsumexp[batch_head * seq_len + i] = softmax_row(seq_len, key_mask, valid_keys, scale, row);
        detail::dropout_multipliers(dropout, static_cast<uint64_t>((batch_head * seq_len + i) * seq_len), seq_len,
                                    dropout_scale);
        for (int64_t j = 0; j < seq_len; ++j) row[j] *= dropout_scale[j];
      }
      detail::gemm<T>(false, false, seq_len, head_dim, seq_len, T(1), scores, seq_len, v + head_offset, stride, T(0),
                      context + b * seq_len * hidden + h * head_dim, hidden);
    }
    return;
  }
  // Per thread: probs [S], dropout multipliers [S], K^T [D, S].
  const int64_t per_thread = 2 * seq_len + head_dim * seq_len;
  T* scratch = ctx.scratch<T>(static_cast<size_t>(threads * per_thread));

#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t batch_head = 0; batch_head < shape.batch * heads; ++batch_head) {
    T* probs = scratch + omp_get_thread_num() * per_thread;
    T* dropout_scale = probs + seq_len;
    T* k_transposed = dropout_scale + seq_len;
    const int64_t b = batch_head / heads, h = batch_head % heads;
    const int32_t* key_mask = attention_mask != nullptr ? attention_mask + b * seq_len : nullptr;
    const int64_t valid_keys = count_valid_keys(key_mask, seq_len);
    const T* v_head = v + b * seq_len * stride + h * head_dim;
    transpose_head(k + b * seq_len * stride + h * head_dim, stride, seq_len, head_dim, k_transposed);
    for (int64_t i = 0; i < seq_len; ++i) {
      const T* q_row = q + (b * seq_len + i) * stride + h * head_dim;
      row_times_transposed(q_row, k_transposed, seq_len, head_dim, probs);
      logsumexp[batch_head * seq_len + i] = softmax_row(seq_len, key_mask, valid_keys, scale, probs);
      detail::dropout_multipliers(dropout, static_cast<uint64_t>((batch_head * seq_len + i) * seq_len), seq_len,
                                  dropout_scale);
      T* out = context + (b * seq_len + i) * hidden + h * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) out[d] = T(0);
      for (int64_t j = 0; j < seq_len; ++j) {
        const T weight = probs[j] * dropout_scale[j];
        if (weight == T(0)) continue;
        const T* v_row = v_head + j * stride;
        for (int64_t d = 0; d < head_dim; ++d) out[d] += weight * v_row[d];
      }
    }
  }
}

template <class T>
void attention_backward(Context& ctx, const AttentionShape& shape, const T* dcontext, const T* q, const T* k,
                        const T* v, const int32_t* attention_mask, const DropoutSpec& dropout, const T* context,
                        const T* logsumexp, T* dq, T* dk, T* dv) {
  check_shape(shape, "attention_backward");
  detail::require(dropout.probability >= 0.0f && dropout.probability < 1.0f, "attention_backward",
                  "dropout probability must be in [0, 1)");
  const int64_t seq_len = shape.seq_len, heads = shape.num_heads, head_dim = shape.head_dim;
  const int64_t hidden = shape.hidden(), stride = shape.qkv_row_stride;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  const int threads = ctx.num_threads();
  if (detail::attention_uses_blas()) {
    attention_backward_blas(ctx, shape, dcontext, q, k, v, attention_mask, dropout, context, logsumexp, dq, dk, dv);
    return;
  }
  // Per thread: probs, dropout multipliers, dP~ [S] each; K^T and V^T [D, S] each.
  const int64_t per_thread = 3 * seq_len + 2 * head_dim * seq_len;
  T* scratch = ctx.scratch<T>(static_cast<size_t>(threads * per_thread));

#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t batch_head = 0; batch_head < shape.batch * heads; ++batch_head) {
    T* probs = scratch + omp_get_thread_num() * per_thread;
    T* dropout_scale = probs + seq_len;
    T* dprobs = dropout_scale + seq_len;
    T* k_transposed = dprobs + seq_len;
    T* v_transposed = k_transposed + head_dim * seq_len;
    const int64_t b = batch_head / heads, h = batch_head % heads;
    const int32_t* key_mask = attention_mask != nullptr ? attention_mask + b * seq_len : nullptr;
    const int64_t valid_keys = count_valid_keys(key_mask, seq_len);
    const int64_t head_offset = b * seq_len * stride + h * head_dim;
    const T* k_head = k + head_offset;
    T* dk_head = dk + head_offset;
    T* dv_head = dv + head_offset;
    transpose_head(k_head, stride, seq_len, head_dim, k_transposed);
    transpose_head(v + head_offset, stride, seq_len, head_dim, v_transposed);
    for (int64_t j = 0; j < seq_len; ++j)
      for (int64_t d = 0; d < head_dim; ++d) dk_head[j * stride + d] = dv_head[j * stride + d] = T(0);

    for (int64_t i = 0; i < seq_len; ++i) {
      const int64_t row = b * seq_len + i;
      const T* q_row = q + row * stride + h * head_dim;
      row_times_transposed(q_row, k_transposed, seq_len, head_dim, probs);
      softmax_row_recompute(seq_len, key_mask, valid_keys, scale, logsumexp[batch_head * seq_len + i], probs);
      detail::dropout_multipliers(dropout, static_cast<uint64_t>((batch_head * seq_len + i) * seq_len), seq_len,
                                  dropout_scale);
      const T* dout = dcontext + row * hidden + h * head_dim;
      const T* out = context + row * hidden + h * head_dim;
      T dout_dot_out = 0;  // = sum_j P_ij dP_ij
      for (int64_t d = 0; d < head_dim; ++d) dout_dot_out += dout[d] * out[d];
      row_times_transposed(dout, v_transposed, seq_len, head_dim, dprobs);
      T* dq_row = dq + row * stride + h * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) dq_row[d] = T(0);
      for (int64_t j = 0; j < seq_len; ++j) {
        const T weight = probs[j] * dropout_scale[j];
        if (weight != T(0)) {
          T* dv_row = dv_head + j * stride;
          for (int64_t d = 0; d < head_dim; ++d) dv_row[d] += weight * dout[d];
        }
        // All-padding rows are constant (uniform) in the scores: no gradient to q or k.
        if (valid_keys == 0 || probs[j] == T(0)) continue;
        const T dscore = scale * probs[j] * (dprobs[j] * dropout_scale[j] - dout_dot_out);
        const T* k_row = k_head + j * stride;
        T* dk_row = dk_head + j * stride;
        for (int64_t d = 0; d < head_dim; ++d) {
          dq_row[d] += dscore * k_row[d];
          dk_row[d] += dscore * q_row[d];
        }
      }
    }
  }
}

#define BERT_INSTANTIATE_ATTENTION(T)                                                                               \
  template void attention_forward<T>(Context&, const AttentionShape&, const T*, const T*, const T*, const int32_t*, \
                                     const DropoutSpec&, T*, T*);                                                   \
  template void attention_backward<T>(Context&, const AttentionShape&, const T*, const T*, const T*, const T*,      \
                                      const int32_t*, const DropoutSpec&, const T*, const T*, T*, T*, T*);
BERT_INSTANTIATE_ATTENTION(float)
BERT_INSTANTIATE_ATTENTION(double)
#undef BERT_INSTANTIATE_ATTENTION

}  // namespace bert::cpu
