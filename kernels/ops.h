// The op set that both backends implement (kernels/cpu: fp32 + double; kernels/cuda: bf16
// activations, fp32 accumulation), documented once here. engine/bert.* is written once against it.
//
// This header holds what the backends share: the conventions, the shape structs, the hyper-parameter
// and result structs, and the counter-based dropout RNG (usable from host and device code). The
// typed declarations live per backend (kernels/cpu/ops_cpu.h: namespace bert::cpu, templated on the
// scalar T). It must stay C++17 and free of host-only types: nvcc compiles it.
//
// ---- Conventions --------------------------------------------------------------------------------
// Layout: every tensor is row-major and contiguous unless a stride is named. Activations are
//   [tokens, features] with tokens = batch * seq_len, token t = b * seq_len + s. Linear weights are
//   [out_features, in_features] like PyTorch (y = x W^T + b). Attention heads are split from the
//   feature axis exactly as HF does: head h of a [tokens, H*D] tensor is columns [h*D, (h+1)*D).
//   Ids, token types, attention masks and labels are int32 [batch, seq_len] (or [rows]).
// Forward ops overwrite their outputs (every element is written).
// Backward ops OVERWRITE input gradients (dx) and ACCUMULATE (+=) parameter gradients (dW, db,
//   dgamma, dbeta, embedding tables), so gradient accumulation over micro-batches needs no copies.
//   Two documented exceptions exist because the engine needs them: linear_backward takes an
//   InputGrad mode (kAccumulate = dx += ..., free through GEMM beta = 1; it sums the residual branch
//   into the same buffer), and pooler_backward adds into the [CLS] rows of the encoder-output
//   gradient (that tensor also receives the MLM head's gradient).
// Statistics saved for backward (LayerNorm mean/rstd, attention log-sum-exp) are explicit outputs of
//   forward and inputs of backward; nothing is cached behind the caller's back.
// No global state: each call gets the backend's context (CPU: threads + reusable scratch; CUDA:
//   stream, handles, workspace). Dropout is a pure function of (seed, offset, element index), so a
//   backward regenerates the forward's mask from the same DropoutSpec; no mask is stored.
// Parameter gradients and reductions (dgamma, dbeta, bias grads, embedding-table scatter, loss sums,
//   gradient norm) are deterministic: bitwise the same for any thread count.
//
// ---- The ops (shapes; T = the backend's scalar) ---------------------------------------------------
// linear_forward / linear_backward                          LinearShape {rows, in, out, out_stride}
//   y[rows,out] = x[rows,in] W[out,in]^T + b[out] (b optional)
//   dx = dy W (mode), dW += dy^T x, db += sum_rows dy. Used for Q/K/V (or fused QKV [3*hidden,
//   hidden]), attention output, FFN, MLM transform, the decoder tied to word embeddings, NSP head.
// embeddings_layernorm_forward / _backward                  EmbeddingShape
//   out[t] = LN((word[ids[t]] + type[type_ids[t]]) + pos[s]) with s = t % seq_len (HF's default
//   absolute position ids). d_word/d_position/d_token_type += scatter-add of the LN input gradient;
//   the row padding_idx of the word table gets no gradient (nn.Embedding(padding_idx)).
// layernorm_forward / _backward, residual_layernorm_forward / _backward      MatrixShape {rows, cols}
//   y = (z - mean) * rstd * gamma + beta, z = x (+ residual), rstd = 1/sqrt(biased var + eps).
//   Saved: mean[rows], rstd[rows]. Backward takes x (and residual), not y, so gamma may be zero.
//   Residual backward writes one dz, the gradient of both x and residual (they are summed).
// bias_gelu_forward / _backward                               MatrixShape, GeluKind
//   y = gelu(x + b[cols]); dx = dy * gelu'(x + b), db += sum_rows dx.
//   kErf = 0.5 z (1 + erf(z / sqrt 2)) (HF "gelu"); kTanh = 0.5 z (1 + tanh(sqrt(2/pi)(z + 0.044715 z^3)))
//   (HF "gelu_new").
// attention_forward / _backward                               AttentionShape
//   q, k, v: [tokens, *] with qkv_row_stride elements between tokens (hidden for separate tensors,
//   3*hidden for a fused QKV output where k = q + hidden, v = q + 2*hidden); dq/dk/dv use the same
//   layout. context: [tokens, hidden] contiguous. logsumexp: [batch, heads, seq_len] (saved).
//   scores = q k^T / sqrt(D) + additive key-padding mask from attention_mask [batch, seq_len]
//   (nonzero = attend, 0 = padding; nullptr = no padding), probs = softmax over keys,
//   context = dropout(probs) v. Padded keys get probability exactly 0 (HF adds finfo.min, whose
//   exp underflows to 0). A sequence whose keys are ALL padding attends uniformly (1/seq_len) to all
//   its keys, as HF does (every score + finfo.min rounds to finfo.min, so the softmax is uniform),
//   NaN-free; its logsumexp is log(seq_len). Its q and k get zero gradient: the exact derivative of
//   that constant. HF's autograd differs here: it differentiates through the rounded addition and
//   gives q/k the ordinary softmax gradient with uniform P. Deliberate (our backward stays the true
//   derivative of our forward, checked by finite differences); the loader never emits such rows.
//   Attention dropout element index: ((b * heads + h) * seq_len + i) * seq_len + j (query i, key j).
//   Backward takes q, k, v, the mask, the same DropoutSpec, and the forward's context and
//   logsumexp (probabilities and the dropout mask are recomputed, never stored).
// dropout_forward / _backward                                 numel, DropoutSpec
//   y = x * keep / (1 - p), keep = dropout_keep(spec, i). In place allowed. p = 0 is a copy.
// pooler_forward / _backward                                  PoolerShape
//   pooled[b] = tanh(W h[b, 0] + bias) on the [CLS] row of each sequence. W [hidden, hidden].
// gather_rows / scatter_add_rows                              num_rows, cols, rows[num_rows]
//   gather: dst[i] = src[rows[i]]; scatter_add: dst[rows[i]] += src[i] (rows distinct). The sparse
//   MLM head's input rows and the return of their gradient.
// softmax_cross_entropy                                       LogitsShape {rows, classes, row_stride}
//   Fused forward + backward over logits [rows, classes], labels [rows] (kIgnoreIndex = skip); rows
//   are row_stride elements apart in logits and dlogits (the elements between are never touched).
//   loss = mean over counted rows of -log softmax(logits)[label] (0 counted rows: loss 0, grad 0);
//   dlogits = grad_scale * (softmax - onehot) / counted, zero on ignored rows; dlogits may alias
//   logits. Also counts correct argmax (first maximum wins). Used for MLM (C = vocab) and NSP (C = 2).
// adamw_step                                                  AdamWHyperparams + a list of tensors
//   PyTorch torch.optim.AdamW (single-tensor path): g = grad * grad_scale; p *= 1 - lr*wd (only
//   tensors flagged for decay); m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2;
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps). t = step, from the caller, >= 1.
// grad_norm                                                   a list of tensors
//   sqrt(sum of squares) over all of them, accumulated in double, in a fixed order. Clip with
//   clip_grad_coefficient (torch.nn.utils.clip_grad_norm_) and pass it as AdamWHyperparams::grad_scale.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define BERT_HOST_DEVICE __host__ __device__
#else
#define BERT_HOST_DEVICE
#endif

namespace bert::ops {

// Labels equal to this are skipped by softmax_cross_entropy (PyTorch's default ignore_index).
constexpr int32_t kIgnoreIndex = -100;

// ---- Shapes ---------------------------------------------------------------------------------------

// A row-major matrix [rows, cols].
struct MatrixShape {
  int64_t rows = 0;
  int64_t cols = 0;
};

// y[rows, out_features] = x[rows, in_features] W[out_features, in_features]^T + b.
// y and dy may be rows of a wider matrix: out_stride elements apart (0: out_features, dense). The MLM
// decoder pads its logits' rows (vocab 30522 -> 30528) so that every row starts 16-byte aligned: an
// odd leading dimension keeps cuBLASLt off its fast kernels (26-28% of the GEMM ceiling on an H200).
struct LinearShape {
  int64_t rows = 0;
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t out_stride = 0;
  BERT_HOST_DEVICE int64_t y_stride() const { return out_stride != 0 ? out_stride : out_features; }
};

// Logits [rows, classes] whose rows are row_stride elements apart (0: classes, dense).
struct LogitsShape {
  int64_t rows = 0;
  int64_t classes = 0;
  int64_t row_stride = 0;
  BERT_HOST_DEVICE int64_t stride() const { return row_stride != 0 ? row_stride : classes; }
};

// Word + position + token-type embedding tables, all [*, hidden].
struct EmbeddingShape {
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t hidden = 0;
  int64_t vocab_size = 0;               // word table rows
  int64_t max_position_embeddings = 0;  // position table rows, >= seq_len
  int64_t type_vocab_size = 0;          // token-type table rows
  int64_t padding_idx = -1;             // word row that receives no gradient (HF: pad_token_id); -1 = none
  int64_t tokens() const { return batch * seq_len; }
};

// Multi-head self-attention over [batch, seq_len] tokens, num_heads heads of head_dim each.
struct AttentionShape {
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  int64_t qkv_row_stride = 0;  // elements between consecutive tokens of q/k/v (and dq/dk/dv)
  int64_t hidden() const { return num_heads * head_dim; }
  int64_t tokens() const { return batch * seq_len; }
};

// Pooler over the first token of each sequence of a [batch * seq_len, hidden] encoder output.
struct PoolerShape {
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t hidden = 0;
};

enum class GeluKind {
  kErf,   // HF "gelu": exact, 0.5 z (1 + erf(z / sqrt 2))
  kTanh,  // HF "gelu_new": 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))
};

// How an op writes an input gradient that the caller may want summed with another branch.
enum class InputGrad {
  kOverwrite,
  kAccumulate,
};

// ---- Results and hyper-parameters -----------------------------------------------------------------

struct CrossEntropyStats {
  double loss = 0;          // mean over counted rows; 0 when none
  int64_t num_counted = 0;  // rows whose label is not kIgnoreIndex
  int64_t num_correct = 0;  // counted rows whose argmax equals the label
};

struct AdamWHyperparams {
  double learning_rate = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double weight_decay = 0;  // applied to tensors flagged for decay only
  int64_t step = 1;         // 1 on the first update (bias correction)
  double grad_scale = 1;    // multiplies every gradient first: the clipping coefficient
};

// torch.nn.utils.clip_grad_norm_: min(1, max_norm / (total_norm + 1e-6)). A NaN norm gives NaN, so
// the caller sees it (and should skip the step) instead of silently training on garbage.
BERT_HOST_DEVICE inline double clip_grad_coefficient(double total_norm, double max_norm) {
  const double coefficient = max_norm / (total_norm + 1e-6);
  return coefficient > 1.0 ? 1.0 : coefficient;
}

// ---- Counter-based dropout RNG --------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., SC'11; Random123's known-answer vectors are in the tests). Element i
// of a dropout site uses counter (lo(i/4), hi(i/4), lo(offset), hi(offset)), key (lo(seed),
// hi(seed)), and word i % 4 of the result, so one Philox call serves 4 consecutive elements.
// The element is kept iff that word >= floor(p * 2^32): keep probability 1 - p to within 2^-32.
// The engine gives each dropout site of each step its own offset; seed is the run's seed.

struct DropoutSpec {
  float probability = 0;  // p in [0, 1): chance an element is zeroed; 0 disables dropout
  uint64_t seed = 0;
  uint64_t offset = 0;
};

struct Philox4x32Result {
  uint32_t word[4];
};

BERT_HOST_DEVICE inline Philox4x32Result philox4x32_10(uint32_t counter0, uint32_t counter1, uint32_t counter2,
                                                       uint32_t counter3, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMultiplier0 = 0xD2511F53u, kMultiplier1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key0 += kWeyl0;
      key1 += kWeyl1;
    }
    const uint64_t product0 = static_cast<uint64_t>(kMultiplier0) * counter0;
    const uint64_t product1 = static_cast<uint64_t>(kMultiplier1) * counter2;
    const uint32_t hi0 = static_cast<uint32_t>(product0 >> 32), lo0 = static_cast<uint32_t>(product0);
    const uint32_t hi1 = static_cast<uint32_t>(product1 >> 32), lo1 = static_cast<uint32_t>(product1);
    counter0 = hi1 ^ counter1 ^ key0;
    counter1 = lo1;
    counter2 = hi0 ^ counter3 ^ key1;
    counter3 = lo0;
  }
  return Philox4x32Result{{counter0, counter1, counter2, counter3}};
}

// The four random words shared by elements 4*group .. 4*group + 3 of a dropout site.
BERT_HOST_DEVICE inline Philox4x32Result dropout_random_group(const DropoutSpec& spec, uint64_t group) {
  return philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                       static_cast<uint32_t>(spec.offset), static_cast<uint32_t>(spec.offset >> 32),
                       static_cast<uint32_t>(spec.seed), static_cast<uint32_t>(spec.seed >> 32));
}

// Words below this are dropped.
BERT_HOST_DEVICE inline uint64_t dropout_drop_threshold(float probability) {
  return static_cast<uint64_t>(static_cast<double>(probability) * 4294967296.0);
}

BERT_HOST_DEVICE inline bool dropout_keep(const DropoutSpec& spec, uint64_t index) {
  const Philox4x32Result random = dropout_random_group(spec, index / 4);
  return random.word[index % 4] >= dropout_drop_threshold(spec.probability);
}

}  // namespace bert::ops
