// BERT embeddings fused with their LayerNorm (HF BertEmbeddings without the dropout):
// out[t] = LN((word[input_ids[t]] + token_type[token_type_ids[t]]) + position[t % seq_len]).
// input_ids/token_type_ids [batch, seq_len] int32; tables [vocab | max_positions | types, hidden];
// out [tokens, hidden]; saved mean/rstd [tokens]. The sum order is HF's, for float agreement.
// Backward: the LN input gradient dz [tokens, hidden] is scatter-added into the three tables
// (the word row padding_idx excluded, as nn.Embedding(padding_idx) does), dgamma/dbeta +=.
//
// Napkin math (4096 tokens, hidden 768, fp32): forward gathers 3 rows and writes 1 per token,
// ~50 MB: memory bound, a few ms. Backward: ~4 passes of 12.6 MB plus the scatter. The scatter is
// deterministic without atomics: each thread owns a fixed block of 64 columns of all three tables
// and walks the tokens in order, so every element's sum order is the token order for any thread
// count; dgamma/dbeta use the fixed 32-row chunk partials of layernorm.cpp.
#include "kernels/cpu/ops_cpu_detail.h"

namespace bert::cpu {

namespace {

void check_inputs(const EmbeddingShape& shape, const int32_t* input_ids, const int32_t* token_type_ids,
                  const char* op) {
  detail::require(
      shape.batch >= 0 && shape.seq_len > 0 && shape.hidden > 0 && shape.vocab_size > 0 && shape.type_vocab_size > 0,
      op, "need batch >= 0 and seq_len, hidden, vocab_size, type_vocab_size > 0");
  detail::require(shape.seq_len <= shape.max_position_embeddings, op,
                  "seq_len " + std::to_string(shape.seq_len) + " exceeds max_position_embeddings " +
                      std::to_string(shape.max_position_embeddings));
  for (int64_t t = 0; t < shape.tokens(); ++t) {
    detail::require(input_ids[t] >= 0 && input_ids[t] < shape.vocab_size, op,
                    "input id " + std::to_string(input_ids[t]) + " at token " + std::to_string(t) +
                        " is outside the vocabulary of " + std::to_string(shape.vocab_size));
    if (token_type_ids != nullptr)
      detail::require(token_type_ids[t] >= 0 && token_type_ids[t] < shape.type_vocab_size, op,
                      "token type " + std::to_string(token_type_ids[t]) + " at token " + std::to_string(t) +
                          " is outside type_vocab_size " + std::to_string(shape.type_vocab_size));
  }
}

// z = (word + type) + position for token t.
template <class T>
void embedding_sum_row(const EmbeddingShape& shape, int64_t t, const int32_t* input_ids, const int32_t* token_type_ids,
                       const T* word_embeddings, const T* position_embeddings, const T* token_type_embeddings, T* z) {
  const int64_t hidden = shape.hidden;
  const T* word = word_embeddings + int64_t{input_ids[t]} * hidden;
  const T* type = token_type_embeddings + (token_type_ids != nullptr ? int64_t{token_type_ids[t]} : 0) * hidden;
  const T* position = position_embeddings + (t % shape.seq_len) * hidden;
  for (int64_t j = 0; j < hidden; ++j) z[j] = (word[j] + type[j]) + position[j];
}

}  // namespace

template <class T>
void embeddings_layernorm_forward(Context& ctx, const EmbeddingShape& shape, const int32_t* input_ids,
                                  const int32_t* token_type_ids, const T* word_embeddings, const T* position_embeddings,
                                  const T* token_type_embeddings, const T* gamma, const T* beta, T eps, T* out, T* mean,
                                  T* rstd) {
  check_inputs(shape, input_ids, token_type_ids, "embeddings_layernorm_forward");
  const int64_t hidden = shape.hidden;
  T* z_rows = ctx.scratch<T>(static_cast<size_t>(ctx.num_threads() * hidden));
#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t t = 0; t < shape.tokens(); ++t) {
    T* z = z_rows + omp_get_thread_num() * hidden;
    embedding_sum_row(shape, t, input_ids, token_type_ids, word_embeddings, position_embeddings, token_type_embeddings,
                      z);
    detail::layernorm_row_forward(z, gamma, beta, eps, hidden, out + t * hidden, mean + t, rstd + t);
  }
}

template <class T>
void embeddings_layernorm_backward(Context& ctx, const EmbeddingShape& shape, const T* dout, const int32_t* input_ids,
                                   const int32_t* token_type_ids, const T* word_embeddings,
                                   const T* position_embeddings, const T* token_type_embeddings, const T* gamma,
                                   const T* mean, const T* rstd, T* d_word_embeddings, T* d_position_embeddings,
                                   T* d_token_type_embeddings, T* dgamma, T* dbeta) {
  check_inputs(shape, input_ids, token_type_ids, "embeddings_layernorm_backward");
  const int64_t tokens = shape.tokens(), hidden = shape.hidden, chunks = detail::chunk_count(tokens);
  const int threads = ctx.num_threads();
  // dz [tokens, hidden], dgamma and dbeta chunk partials [chunks, hidden] each, one z row per thread.
  T* scratch = ctx.scratch<T>(static_cast<size_t>((tokens + 2 * chunks + threads) * hidden));
  T* dz = scratch;
  T* dgamma_partials = dz + tokens * hidden;
  T* dbeta_partials = dgamma_partials + chunks * hidden;
  T* z_rows = dbeta_partials + chunks * hidden;

#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    T* dgamma_partial = dgamma_partials + chunk * hidden;
    T* dbeta_partial = dbeta_partials + chunk * hidden;
    for (int64_t j = 0; j < hidden; ++j) dgamma_partial[j] = dbeta_partial[j] = T(0);
    T* z = z_rows + omp_get_thread_num() * hidden;
    const int64_t end = std::min(tokens, (chunk + 1) * detail::kRowsPerChunk);
    for (int64_t t = chunk * detail::kRowsPerChunk; t < end; ++t) {
      embedding_sum_row(shape, t, input_ids, token_type_ids, word_embeddings, position_embeddings,
                        token_type_embeddings, z);
      detail::layernorm_row_backward(dout + t * hidden, z, gamma, mean[t], rstd[t], hidden, dz + t * hidden,
                                     dgamma_partial, dbeta_partial);
    }
  }
  detail::accumulate_column_sums(ctx, chunks, hidden, dgamma_partials, dgamma);
  detail::accumulate_column_sums(ctx, chunks, hidden, dbeta_partials, dbeta);

  constexpr int64_t kColumnsPerBlock = 64;
  const int64_t blocks = (hidden + kColumnsPerBlock - 1) / kColumnsPerBlock;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * kColumnsPerBlock, last = std::min(hidden, first + kColumnsPerBlock);
    for (int64_t t = 0; t < tokens; ++t) {
      const T* dz_row = dz + t * hidden;
      const int64_t word = input_ids[t];
      const int64_t type = token_type_ids != nullptr ? token_type_ids[t] : 0;
      const int64_t position = t % shape.seq_len;
      if (word != shape.padding_idx)
        for (int64_t j = first; j < last; ++j) d_word_embeddings[word * hidden + j] += dz_row[j];
      for (int64_t j = first; j < last; ++j) d_position_embeddings[position * hidden + j] += dz_row[j];
      for (int64_t j = first; j < last; ++j) d_token_type_embeddings[type * hidden + j] += dz_row[j];
    }
  }
}

#define BERT_INSTANTIATE_EMBEDDINGS(T)                                                                             \
  template void embeddings_layernorm_forward<T>(Context&, const EmbeddingShape&, const int32_t*, const int32_t*,   \
                                                const T*, const T*, const T*, const T*, const T*, T, T*, T*, T*);  \
  template void embeddings_layernorm_backward<T>(Context&, const EmbeddingShape&, const T*, const int32_t*,        \
                                                 const int32_t*, const T*, const T*, const T*, const T*, const T*, \
                                                 const T*, T*, T*, T*, T*, T*);
BERT_INSTANTIATE_EMBEDDINGS(float)
BERT_INSTANTIATE_EMBEDDINGS(double)
#undef BERT_INSTANTIATE_EMBEDDINGS

}  // namespace bert::cpu
