// BertForPreTraining's op sequence, written once: the forward, the manual backward and the heads, as
// calls to the op set of kernels/ops.h on a backend chosen at compile time. The CPU model
// (engine/bert.cpp, bert::cpu ops, fp32 / fp64) and the CUDA model (engine/bert_cuda.cpp, bert::cuda
// ops, bf16 activations with fp32 gradients and statistics) both run this file; neither repeats it.
//
// A Backend supplies:
//   types   Act     activations, their gradients and the working weights (float, double; bf16)
//           Grad    parameter gradients, accumulated (T; float)
//           Stat    LayerNorm mean/rstd and attention logsumexp (T; float)
//           Scalar  eps, loss and gradient scales (T; float)
//   ops     every op of kernels/ops.h as a member function with the backend's context bound, same
//           names and argument order as the backend's namespace functions, plus gather_rows and
//           scatter_add_rows
//   softmax_cross_entropy(shape, logits, labels, grad_scale, dlogits, slot)
//           the call's totals go to slot `slot` (the MLM chunks: 0 .. chunks-1; NSP:
//           BatchArenaPlan::max_mlm_chunks); the model turns them into LossStats (combine_loss_stats)
//           now (CPU) or when they are read (CUDA: device memory, no host sync in a step)
//   fill_zero(Act*, count)
//   gradients_final(offset)
//           called during the backward pass, with decreasing offsets ending at 0: every parameter
//           gradient at an arena offset >= `offset` is complete for this backward (nothing issued
//           later writes it). The CUDA model sums finished ranges over the ranks while the backward
//           goes on (BertForPreTrainingCuda::forward_backward_summed); the CPU model ignores it.
// The host-side batch (HostBatch: shapes, the MLM rows' counts per decoder chunk) is known before any
// op is issued, so the sequence never waits on the backend.
//
// Order of one forward_backward (ops.h's overwrite/accumulate rules make each step's role explicit):
//   embeddings+LN -> dropout -> L x [QKV GEMM -> attention -> dense -> dropout -> residual LN
//                                    -> up GEMM -> bias+GELU -> down GEMM -> dropout -> residual LN]
//   MLM head: gather labelled rows -> dense -> bias+GELU -> LN -> per chunk: decoder GEMM (tied
//             word embeddings) -> fused cross-entropy (logits become dlogits) -> decoder backward;
//             then LN, GELU, dense backward -> zero d(encoder out) -> scatter-add the rows' gradient
//   NSP head: pooler -> linear -> cross-entropy -> linear backward -> pooler backward (adds into the
//             [CLS] rows of d(encoder out))
//   encoder backward, last layer first, then the embeddings (table gradients scattered).
// The parameter table (make_parameter_table) lays out the embeddings, the layers in order, then the
// heads, so the gradients finish from the top of the arena down: the heads' (pooler, MLM transform and
// decoder bias, NSP) after the heads, each layer's after its backward, the embeddings' (the word
// embeddings also get the tied decoder's gradient) last.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/bert.h"

namespace bert {

// The lowest arena offset of the heads' parameters, and of one layer's (see the layout above): where
// the backward's gradients_final calls draw their lines.
inline size_t heads_gradients_begin(const BertParamOffsets& p) {
  return std::min({p.pooler_weight, p.pooler_bias, p.mlm_decoder_bias, p.mlm_transform_weight, p.mlm_transform_bias,
                   p.mlm_layernorm_weight, p.mlm_layernorm_bias, p.nsp_weight, p.nsp_bias});
}
inline size_t layer_gradients_begin(const BertLayerParamOffsets& lp) {
  return std::min({lp.qkv_weight, lp.qkv_bias, lp.attention_output_weight, lp.attention_output_bias,
                   lp.attention_layernorm_weight, lp.attention_layernorm_bias, lp.intermediate_weight,
                   lp.intermediate_bias, lp.output_weight, lp.output_bias, lp.output_layernorm_weight,
                   lp.output_layernorm_bias});
}
// The offsets of a backward's gradients_final calls, in order: the heads', each layer's from the last,
// then 0 (the embeddings'). BertForPreTrainingCuda::sum_gradients hands over the same ranges.
inline std::vector<size_t> gradients_final_offsets(const BertParamOffsets& p) {
  std::vector<size_t> offsets{heads_gradients_begin(p)};
  for (size_t l = p.layers.size(); l-- > 0;) offsets.push_back(layer_gradients_begin(p.layers[l]));
  offsets.push_back(0);
  return offsets;
}

// Pointers into one model's memory (host or device, the backend's): the parameter-table layout for
// params and grads, BatchArenaPlan's for the rest.
template <class Act, class Grad, class Stat>
struct GraphArenas {
  const Act* params = nullptr;  // the working weights forward/backward read
  Grad* grads = nullptr;
  Act* activations = nullptr;
  Act* workspace = nullptr;
  Stat* statistics = nullptr;
};

// The batch's integer inputs in the backend's memory; nullptr = absent (no token types: all 0; no
// attention mask: no padding; no NSP labels: no NSP head). mlm_positions / mlm_labels hold
// HostBatch::mlm_rows() values.
struct GraphInputs {
  const int32_t* input_ids = nullptr;
  const int32_t* token_type_ids = nullptr;
  const int32_t* attention_mask = nullptr;
  const int32_t* nsp_labels = nullptr;
  const int32_t* mlm_positions = nullptr;
  const int32_t* mlm_labels = nullptr;
};

// Dropout of one forward: set_dropout's (seed, step), or off (eval mode).
struct GraphDropout {
  uint64_t seed = 0, step = 0;
  bool enabled = false;
};

template <class Backend>
class BertGraph {
 public:
  using Act = typename Backend::Act;
  using Grad = typename Backend::Grad;
  using Stat = typename Backend::Stat;
  using Scalar = typename Backend::Scalar;
  using Arenas = GraphArenas<Act, Grad, Stat>;

  // The config, options, offsets, plan and batch are borrowed and must outlive the graph (one graph per
  // forward_backward call); the arenas' and inputs' pointers are copied.
  BertGraph(Backend& ops, const BertConfig& config, const ModelOptions& options, const BertParamOffsets& params,
            const BatchArenaPlan& plan, const Arenas& arenas, const HostBatch& batch, const GraphInputs& inputs,
            const GraphDropout& dropout)
      : ops_(ops),
        config_(config),
        options_(options),
        p_(params),
        plan_(plan),
        arenas_(arenas),
        batch_(batch),
        inputs_(inputs),
        dropout_(dropout),
        gelu_(gelu_kind_of(config.hidden_act)),
        tokens_(batch.tokens()),
        hidden_(config.hidden_size),
        intermediate_(config.intermediate_size),
        eps_(static_cast<Scalar>(config.layer_norm_eps)) {}

  // Forward, the heads' losses into the backend's slots, and with compute_grads the backward:
  // gradients of loss_scale * (mlm_loss + nsp_loss) accumulate into arenas.grads.
  void forward_backward(Scalar loss_scale, bool compute_grads) {
    forward_encoder();
    mlm_head(loss_scale, compute_grads);
    nsp_head(loss_scale, compute_grads);
    if (!compute_grads) return;
    ops_.gradients_final(heads_begin());
    backward_encoder();
  }

  // Embeddings and every layer: the sequence output and what backward reads.
  void forward_encoder() {
    const ops::EmbeddingShape embedding_shape = embedding_shape_();
    Act* embeddings = activation(plan_.embeddings_output);
    ops_.embeddings_layernorm_forward(embedding_shape, inputs_.input_ids, inputs_.token_type_ids,
                                      param(p_.word_embeddings), param(p_.position_embeddings),
                                      param(p_.token_type_embeddings), param(p_.embeddings_layernorm_weight),
                                      param(p_.embeddings_layernorm_bias), eps_, embeddings,
                                      statistic(plan_.embeddings_mean), statistic(plan_.embeddings_rstd));
    dropout_in_place(DropoutSite::kEmbeddings, 0, embeddings);

    const ops::AttentionShape attention_shape = attention_shape_();
    const Act* layer_input = embeddings;
    for (int layer = 0; layer < config_.num_hidden_layers; ++layer) {
      const BertLayerParamOffsets& lp = p_.layers[static_cast<size_t>(layer)];
      const BertLayerActivationOffsets& la = plan_.layers[static_cast<size_t>(layer)];
      const BertLayerStatisticOffsets& ls = plan_.layer_statistics[static_cast<size_t>(layer)];
      Act* qkv = activation(la.qkv);
      ops_.linear_forward({tokens_, hidden_, 3 * hidden_}, layer_input, param(lp.qkv_weight), param(lp.qkv_bias), qkv);
      ops_.attention_forward(attention_shape, qkv, qkv + hidden_, qkv + 2 * hidden_, inputs_.attention_mask,
                             dropout_spec(DropoutSite::kAttentionProbs, layer), activation(la.context),
                             statistic(ls.logsumexp));
      Act* attention_output = activation(la.attention_output);
      ops_.linear_forward({tokens_, hidden_, hidden_}, activation(la.context), param(lp.attention_output_weight),
                          param(lp.attention_output_bias), attention_output);
      Act* attention_layernorm = activation(la.attention_layernorm);
      dropout_residual_layernorm(DropoutSite::kAttentionOutput, layer, attention_output, layer_input,
                                 param(lp.attention_layernorm_weight), param(lp.attention_layernorm_bias),
                                 attention_layernorm, statistic(ls.attention_layernorm_mean),
                                 statistic(ls.attention_layernorm_rstd));
      ops_.linear_forward({tokens_, hidden_, intermediate_}, attention_layernorm, param(lp.intermediate_weight),
                          nullptr, activation(la.ffn_pre_activation));
      ops_.bias_gelu_forward(gelu_, {tokens_, intermediate_}, activation(la.ffn_pre_activation),
                             param(lp.intermediate_bias), activation(la.ffn_activation));
      Act* ffn_output = activation(la.ffn_output);
      ops_.linear_forward({tokens_, intermediate_, hidden_}, activation(la.ffn_activation), param(lp.output_weight),
                          param(lp.output_bias), ffn_output);
      dropout_residual_layernorm(DropoutSite::kFfnOutput, layer, ffn_output, attention_layernorm,
                                 param(lp.output_layernorm_weight), param(lp.output_layernorm_bias),
                                 activation(la.layer_output), statistic(ls.output_layernorm_mean),
                                 statistic(ls.output_layernorm_rstd));
      layer_input = activation(la.layer_output);
    }
  }

  // [tokens, hidden]: the last layer's output (the embeddings without layers).
  const Act* sequence_output() const {
    if (plan_.layers.empty()) return activation(plan_.embeddings_output);
    return activation(plan_.layers.back().layer_output);
  }

  // Gathers the batch's MLM rows and runs the transform (dense -> bias+GELU -> LayerNorm) on them:
  // the decoder's input, at mlm_transform_output.
  void mlm_transform_forward() {
    const int64_t rows = batch_.mlm_rows();
    Act* mlm_input = activation(plan_.mlm_input);
    ops_.gather_rows(rows, hidden_, inputs_.mlm_positions, sequence_output(), mlm_input);
    ops_.linear_forward({rows, hidden_, hidden_}, mlm_input, param(p_.mlm_transform_weight), nullptr,
                        activation(plan_.mlm_transform_pre_activation));
    ops_.bias_gelu_forward(gelu_, {rows, hidden_}, activation(plan_.mlm_transform_pre_activation),
                           param(p_.mlm_transform_bias), activation(plan_.mlm_transform_activation));
    ops_.layernorm_forward({rows, hidden_}, activation(plan_.mlm_transform_activation), param(p_.mlm_layernorm_weight),
                           param(p_.mlm_layernorm_bias), eps_, activation(plan_.mlm_transform_output),
                           statistic(plan_.mlm_layernorm_mean), statistic(plan_.mlm_layernorm_rstd));
  }

  // logits[rows, vocab] (rows logits_stride apart) = the decoder (tied to the word embeddings) on
  // transformed MLM rows first .. first + rows - 1.
  void decoder_forward(int64_t first, int64_t rows, Act* logits, int64_t logits_stride) {
    ops_.linear_forward({rows, hidden_, config_.vocab_size, logits_stride},
                        activation(plan_.mlm_transform_output) + first * hidden_, param(p_.word_embeddings),
                        param(p_.mlm_decoder_bias), logits);
  }

  // The MLM head on the batch's rows, its loss in slots 0 .. chunks-1; with compute_grads it writes
  // d(sequence output) (zeros + the rows' gradients) to workspace grad_hidden.
  void mlm_head(Scalar loss_scale, bool compute_grads) {
    const int64_t rows = batch_.mlm_rows();
    Act* grad_hidden = workspace(plan_.grad_hidden);
    if (rows == 0 || batch_.mlm_counted == 0) {  // no MLM targets: no loss, no gradient
      if (compute_grads) ops_.fill_zero(grad_hidden, tokens_ * hidden_);
      return;
    }
    mlm_transform_forward();

    // The decoder in row chunks: each chunk's mean-loss gradient is rescaled by its share of the
    // counted rows, so the sum is the gradient of the mean over all rows.
    const Act* transform_output = activation(plan_.mlm_transform_output);
    Act* grad_transform_output = workspace(plan_.grad_mlm_transform_output);
    Act* logits = workspace(plan_.mlm_logits);
    const int64_t chunk_rows = options_.decoder_chunk_rows;
    for (size_t c = 0; c < batch_.mlm_chunk_counted.size(); ++c) {
      const int64_t first = static_cast<int64_t>(c) * chunk_rows;
      const int64_t chunk = std::min(chunk_rows, rows - first);
      const int64_t chunk_counted = batch_.mlm_chunk_counted[c];
      if (chunk_counted == 0) {
        if (compute_grads) ops_.fill_zero(grad_transform_output + first * hidden_, chunk * hidden_);
        continue;
      }
      const ops::LinearShape decoder_shape{chunk, hidden_, config_.vocab_size, plan_.mlm_logits_stride};
      decoder_forward(first, chunk, logits, plan_.mlm_logits_stride);
      const Scalar grad_scale =
          loss_scale * static_cast<Scalar>(chunk_counted) / static_cast<Scalar>(batch_.mlm_counted);
      ops_.softmax_cross_entropy({chunk, config_.vocab_size, plan_.mlm_logits_stride}, logits,
                                 inputs_.mlm_labels + first, grad_scale, compute_grads ? logits : nullptr, c);
      if (compute_grads)
        ops_.linear_backward(decoder_shape, logits, transform_output + first * hidden_, param(p_.word_embeddings),
                             grad_transform_output + first * hidden_, grad_at(p_.word_embeddings),
                             grad_at(p_.mlm_decoder_bias), ops::InputGrad::kOverwrite);
    }
    if (!compute_grads) return;

    Act* grad_activation = workspace(plan_.grad_mlm_transform_activation);
    Act* grad_mlm_input = workspace(plan_.grad_mlm_input);
    ops_.layernorm_backward({rows, hidden_}, grad_transform_output, activation(plan_.mlm_transform_activation),
                            param(p_.mlm_layernorm_weight), statistic(plan_.mlm_layernorm_mean),
                            statistic(plan_.mlm_layernorm_rstd), grad_activation, grad_at(p_.mlm_layernorm_weight),
                            grad_at(p_.mlm_layernorm_bias));
    ops_.bias_gelu_backward(gelu_, {rows, hidden_}, grad_activation, activation(plan_.mlm_transform_pre_activation),
                            param(p_.mlm_transform_bias), grad_activation, grad_at(p_.mlm_transform_bias));
    ops_.linear_backward({rows, hidden_, hidden_}, grad_activation, activation(plan_.mlm_input),
                         param(p_.mlm_transform_weight), grad_mlm_input, grad_at(p_.mlm_transform_weight), nullptr,
                         ops::InputGrad::kOverwrite);
    // d(sequence output): the rows' gradients at their positions, zero elsewhere.
    ops_.fill_zero(grad_hidden, tokens_ * hidden_);
    ops_.scatter_add_rows(rows, hidden_, inputs_.mlm_positions, grad_mlm_input, grad_hidden);
  }

  // The NSP head on the pooled [CLS] rows, its loss in slot max_mlm_chunks; the pooler's backward
  // adds into the [CLS] rows of grad_hidden (which mlm_head has written).
  void nsp_head(Scalar loss_scale, bool compute_grads) {
    if (inputs_.nsp_labels == nullptr) return;
    const ops::PoolerShape pooler_shape{batch_.batch, batch_.seq_len, hidden_};
    Act* pooled = activation(plan_.pooled);
    Act* nsp_logits = activation(plan_.nsp_logits);
    ops_.pooler_forward(pooler_shape, sequence_output(), param(p_.pooler_weight), param(p_.pooler_bias), pooled);
    ops_.linear_forward({batch_.batch, hidden_, 2}, pooled, param(p_.nsp_weight), param(p_.nsp_bias), nsp_logits);
    ops_.softmax_cross_entropy({batch_.batch, 2}, nsp_logits, inputs_.nsp_labels, loss_scale,
                               compute_grads ? nsp_logits : nullptr, static_cast<size_t>(plan_.max_mlm_chunks));
    if (!compute_grads || batch_.nsp_counted == 0) return;
    Act* grad_pooled = workspace(plan_.grad_pooled);
    ops_.linear_backward({batch_.batch, hidden_, 2}, nsp_logits, pooled, param(p_.nsp_weight), grad_pooled,
                         grad_at(p_.nsp_weight), grad_at(p_.nsp_bias), ops::InputGrad::kOverwrite);
    ops_.pooler_backward(pooler_shape, grad_pooled, sequence_output(), param(p_.pooler_weight), pooled,
                         workspace(plan_.grad_hidden), grad_at(p_.pooler_weight), grad_at(p_.pooler_bias));
  }

  // From d(sequence output) in grad_hidden down to the embedding tables.
  void backward_encoder() {
    Act* grad_hidden = workspace(plan_.grad_hidden);  // d(layer output) on entry to a layer, d(layer input) on exit
    Act* grad_residual = workspace(plan_.grad_residual);
    Act* grad_context = workspace(plan_.grad_context);
    Act* grad_ffn = workspace(plan_.grad_ffn);
    Act* grad_qkv = workspace(plan_.grad_qkv);
    const ops::AttentionShape attention_shape = attention_shape_();

    for (int layer = config_.num_hidden_layers - 1; layer >= 0; --layer) {
      const BertLayerParamOffsets& lp = p_.layers[static_cast<size_t>(layer)];
      const BertLayerActivationOffsets& la = plan_.layers[static_cast<size_t>(layer)];
      const BertLayerStatisticOffsets& ls = plan_.layer_statistics[static_cast<size_t>(layer)];
      const Act* layer_input = layer == 0 ? activation(plan_.embeddings_output)
                                          : activation(plan_.layers[static_cast<size_t>(layer - 1)].layer_output);
      // Output LayerNorm: grad_residual = d(ffn_output) = d(attention_layernorm) through the residual.
      // grad_ffn_output: through the output dropout as well.
      const Act* grad_ffn_output = residual_layernorm_dropout_backward(
          DropoutSite::kFfnOutput, layer, grad_hidden, activation(la.ffn_output), activation(la.attention_layernorm),
          param(lp.output_layernorm_weight), statistic(ls.output_layernorm_mean), statistic(ls.output_layernorm_rstd),
          grad_residual, grad_at(lp.output_layernorm_weight), grad_at(lp.output_layernorm_bias));
      // FFN: down-projection, bias + GELU, up-projection (adds onto the residual gradient).
      ops_.linear_backward({tokens_, intermediate_, hidden_}, grad_ffn_output, activation(la.ffn_activation),
                           param(lp.output_weight), grad_ffn, grad_at(lp.output_weight), grad_at(lp.output_bias),
                           ops::InputGrad::kOverwrite);
      ops_.bias_gelu_backward(gelu_, {tokens_, intermediate_}, grad_ffn, activation(la.ffn_pre_activation),
                              param(lp.intermediate_bias), grad_ffn, grad_at(lp.intermediate_bias));
      ops_.linear_backward({tokens_, hidden_, intermediate_}, grad_ffn, activation(la.attention_layernorm),
                           param(lp.intermediate_weight), grad_residual, grad_at(lp.intermediate_weight), nullptr,
                           ops::InputGrad::kAccumulate);
      // Attention LayerNorm: grad_hidden = d(attention_output) = d(layer input) through the residual.
      const Act* grad_attention_output = residual_layernorm_dropout_backward(
          DropoutSite::kAttentionOutput, layer, grad_residual, activation(la.attention_output), layer_input,
          param(lp.attention_layernorm_weight), statistic(ls.attention_layernorm_mean),
          statistic(ls.attention_layernorm_rstd), grad_hidden, grad_at(lp.attention_layernorm_weight),
          grad_at(lp.attention_layernorm_bias));
      ops_.linear_backward({tokens_, hidden_, hidden_}, grad_attention_output, activation(la.context),
                           param(lp.attention_output_weight), grad_context, grad_at(lp.attention_output_weight),
                           grad_at(lp.attention_output_bias), ops::InputGrad::kOverwrite);
      const Act* qkv = activation(la.qkv);
      ops_.attention_backward(attention_shape, grad_context, qkv, qkv + hidden_, qkv + 2 * hidden_,
                              inputs_.attention_mask, dropout_spec(DropoutSite::kAttentionProbs, layer),
                              activation(la.context), statistic(ls.logsumexp), grad_qkv, grad_qkv + hidden_,
                              grad_qkv + 2 * hidden_);
      ops_.linear_backward({tokens_, hidden_, 3 * hidden_}, grad_qkv, layer_input, param(lp.qkv_weight), grad_hidden,
                           grad_at(lp.qkv_weight), grad_at(lp.qkv_bias), ops::InputGrad::kAccumulate);
      ops_.gradients_final(layer_begin(lp));
    }

    const Act* grad_embeddings = dropout_input_grad(DropoutSite::kEmbeddings, 0, grad_hidden);
    ops_.embeddings_layernorm_backward(
        embedding_shape_(), grad_embeddings, inputs_.input_ids, inputs_.token_type_ids, param(p_.word_embeddings),
        param(p_.position_embeddings), param(p_.token_type_embeddings), param(p_.embeddings_layernorm_weight),
        statistic(plan_.embeddings_mean), statistic(plan_.embeddings_rstd), grad_at(p_.word_embeddings),
        grad_at(p_.position_embeddings), grad_at(p_.token_type_embeddings), grad_at(p_.embeddings_layernorm_weight),
        grad_at(p_.embeddings_layernorm_bias));
    ops_.gradients_final(0);
  }

 private:
  size_t heads_begin() const { return heads_gradients_begin(p_); }
  static size_t layer_begin(const BertLayerParamOffsets& lp) { return layer_gradients_begin(lp); }

  ops::DropoutSpec dropout_spec(DropoutSite site, int layer) const {
    if (!dropout_.enabled) return ops::DropoutSpec{};  // probability 0: identity
    return dropout_spec_for(config_, dropout_.seed, dropout_.step, site, layer);
  }
  void dropout_in_place(DropoutSite site, int layer, Act* values) {
    const ops::DropoutSpec spec = dropout_spec(site, layer);
    if (spec.probability != 0.0f) ops_.dropout_forward(tokens_ * hidden_, spec, values, values);
  }
  // branch <- dropout(branch) in place (what the backward reads), then y = LN(branch + residual): one
  // fused op where the backend has it.
  void dropout_residual_layernorm(DropoutSite site, int layer, Act* branch, const Act* residual, const Act* gamma,
                                  const Act* beta, Act* y, Stat* mean, Stat* rstd) {
    const ops::DropoutSpec spec = dropout_spec(site, layer);
    if (spec.probability == 0.0f)
      ops_.residual_layernorm_forward({tokens_, hidden_}, branch, residual, gamma, beta, eps_, y, mean, rstd);
    else
      ops_.dropout_residual_layernorm_forward({tokens_, hidden_}, spec, branch, residual, gamma, beta, eps_, y, mean,
                                              rstd);
  }
  // The backward of dropout_residual_layernorm: grad_sum = d(branch + residual) from dy, and the
  // returned d(branch before its dropout), in workspace grad_branch (grad_sum itself with dropout
  // off); one fused op where the backend has it.
  const Act* residual_layernorm_dropout_backward(DropoutSite site, int layer, const Act* dy, const Act* branch,
                                                 const Act* residual, const Act* gamma, const Stat* mean,
                                                 const Stat* rstd, Act* grad_sum, Grad* dgamma, Grad* dbeta) {
    const ops::DropoutSpec spec = dropout_spec(site, layer);
    if (spec.probability == 0.0f) {
      ops_.residual_layernorm_backward({tokens_, hidden_}, dy, branch, residual, gamma, mean, rstd, grad_sum, dgamma,
                                       dbeta);
      return grad_sum;
    }
    Act* grad_branch = workspace(plan_.grad_branch);
    ops_.residual_layernorm_dropout_backward({tokens_, hidden_}, spec, dy, branch, residual, gamma, mean, rstd,
                                             grad_sum, grad_branch, dgamma, dbeta);
    return grad_branch;
  }

  // d(dropout input) from d(dropout output), in workspace grad_branch; with dropout off that is the
  // same buffer.
  const Act* dropout_input_grad(DropoutSite site, int layer, const Act* grad_output) {
    const ops::DropoutSpec spec = dropout_spec(site, layer);
    if (spec.probability == 0.0f) return grad_output;
    Act* grad_branch = workspace(plan_.grad_branch);
    ops_.dropout_backward(tokens_ * hidden_, spec, grad_output, grad_branch);
    return grad_branch;
  }
  ops::EmbeddingShape embedding_shape_() const {
    return ops::EmbeddingShape{batch_.batch,
                               batch_.seq_len,
                               hidden_,
                               config_.vocab_size,
                               config_.max_position_embeddings,
                               config_.type_vocab_size,
                               config_.pad_token_id};
  }
  ops::AttentionShape attention_shape_() const {
    return ops::AttentionShape{batch_.batch, batch_.seq_len, config_.num_attention_heads, config_.head_dim(),
                               3 * hidden_};
  }

  const Act* param(size_t offset) const { return arenas_.params + offset; }
  Grad* grad_at(size_t offset) const { return arenas_.grads + offset; }
  Act* activation(size_t offset) const { return arenas_.activations + offset; }
  Act* workspace(size_t offset) const { return arenas_.workspace + offset; }
  Stat* statistic(size_t offset) const { return arenas_.statistics + offset; }

  Backend& ops_;
  const BertConfig& config_;
  const ModelOptions& options_;
  const BertParamOffsets& p_;
  const BatchArenaPlan& plan_;
  const Arenas arenas_;  // pointers: copied
  const HostBatch& batch_;
  const GraphInputs inputs_;
  const GraphDropout dropout_;
  const ops::GeluKind gelu_;
  const int64_t tokens_, hidden_, intermediate_;
  const Scalar eps_;
};

}  // namespace bert
