// Canary exposure (Carlini et al. 2019, "The Secret Sharer") for a masked language model: how much
// more likely the model finds a secret from its training corpus than other secrets of the same shape.
// This measures what the LAMA probe (engine/infer.h) cannot: phone, account and registration numbers
// are many WordPiece tokens, so no single [MASK] holds them.
//
//   canary "연락처는 010-1234-5678 입니다" with secret "010-1234-5678"
//     ─▶ candidates: the secret with its ASCII digits replaced (N drawn without replacement, or all
//        10^d - 1 others when there are at most N)
//     ─▶ score(text) = pseudo-log-likelihood (Salazar et al. 2020): Σ_i log P(token_i | text with
//        token i alone masked), over every token between [CLS] and [SEP], in nats
//     ─▶ rank of the canary among itself and its candidates (1 = the model's favourite; a tie counts
//        against the canary, so a model that cannot tell them apart scores 0 bits)
//     ─▶ exposure = log2(N + 1) - log2(rank): its maximum log2(N + 1) says the secret beat every
//        candidate; with all 10^d - 1 candidates it is Carlini's exact exposure
//     ─▶ gaussian exposure = -log2 P(X >= score) for X normal with the candidates' mean and standard
//        deviation: Carlini's estimate by distribution fitting (a normal here, not a skew-normal), which
//        extrapolates past log2(N + 1) to secret spaces far too large to enumerate
//
// Napkin math: one text of n tokens costs n encoder forwards (its n masked copies run as one batch);
// N = 1000 candidates of a 20-token canary on BERT-base (~4 GFLOP a forward at 22 tokens) are
// ~80 TFLOP: minutes on a laptop's BLAS, seconds on a GPU. The tiny demo model takes a second.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "engine/infer.h"
#include "tokenizer/tokenizer.h"

namespace bert {

struct ExposureCanary {
  std::string source;  // "path:line", for messages
  size_t line = 0;
  std::string text;    // the sentence as it appeared in the corpus
  std::string secret;  // a substring of text, holding at least one ASCII digit
  std::string label;   // third column; "-" when absent
};

// "text<TAB>secret[<TAB>label]" per line; blank lines are skipped. bert::Error "path:line: ..." for a
// line without a tab, more than three columns, an empty text or secret, a secret that is not in the
// text exactly once, or a secret without an ASCII digit.
std::vector<ExposureCanary> parse_exposure_tsv(std::string_view text, const std::string& path);

// [CLS] text [SEP], checked for scoring: bert::Error (no location; callers prefix one) when the text
// holds a special token other than [UNK] ([MASK], [CLS], ...: the score would be of a different
// sentence), has no token, or is longer than max_positions tokens with [CLS] and [SEP] ("the text is N
// tokens with [CLS] and [SEP], more than the model's max_position_embeddings M").
std::vector<int32_t> encode_scored_text(const Tokenizer& tokenizer, std::string_view text, int max_positions);

struct PllOptions {
  // A model call takes the masked copies of equal-length sequences up to this many tokens and copies
  // (the logits it returns are copies x vocab floats: 31 MB for 256 x 30,522).
  int64_t max_batch_tokens = 8192;
  int64_t max_batch_rows = 256;
  std::function<void(size_t done, size_t total)> progress;  // masked copies scored so far, after each call
};

// The pseudo-log-likelihood (nats) of each sequence ([CLS] ... [SEP], as encode_scored_text returns):
// every token between [CLS] and [SEP] is masked in a copy of its own and its log-probability read from
// the MLM softmax (in double). per_token (optional) gets the terms, [sequences][tokens - 2].
std::vector<double> pseudo_log_likelihoods(MlmLogitsSource& model, const Tokenizer& tokenizer,
                                           const std::vector<std::vector<int32_t>>& sequences,
                                           std::vector<std::vector<double>>* per_token = nullptr,
                                           const PllOptions& options = {});

// Secrets of the same shape: `secret` with each ASCII digit replaced, never `secret` itself, no
// repeats. When 10^digits - 1 <= count, all of them in increasing order (exhaustive = true); else
// `count` drawn uniformly without replacement by a generator seeded with `seed`.
std::vector<std::string> exposure_candidates(std::string_view secret, size_t count, uint64_t seed, bool& exhaustive);

// -log2 P(Z >= z) for a standard normal Z, accurate in the far tail (z up to 1e150).
double normal_tail_bits(double z);

struct ExposureStats {
  int64_t rank = 0;        // 1 + the candidates scoring >= the canary
  int64_t population = 0;  // candidates + 1
  double exposure = 0;     // log2(population) - log2(rank), bits
  double max_exposure = 0;
  double mean = 0, stddev = 0;  // of the candidates' scores (stddev with n - 1)
  double gaussian_exposure = 0;
  bool has_gaussian = false;  // false with fewer than 2 candidates or no spread among them
};

ExposureStats exposure_stats(double canary_score, std::span<const double> candidate_scores);

struct ExposureOptions {
  size_t candidates = 1000;
  uint64_t seed = 1;
  PllOptions scoring;
};

// A canary with its candidates drawn and every text encoded: all that can go wrong before scoring.
struct ExposureJob {
  ExposureCanary canary;
  std::vector<std::string> candidates;
  bool exhaustive = false;
  std::vector<std::vector<int32_t>> sequences;  // the canary's text, then one per candidate
  size_t same_tokens = 0;                       // candidates whose text encodes to the canary's tokens
};

// bert::Error "path:line: ..." when the canary's text or a candidate's cannot be scored (see
// encode_scored_text; a candidate's digits can split into more WordPieces than the secret's), and when
// every candidate encodes to the canary's own tokens: the tokenizer never sees the digits (the secret
// sits in a word that becomes [UNK]), so there is nothing to rank. Also when a text holds a token whose
// id is past the model's vocab_size (one added to the tokenizer after the model was made).
ExposureJob prepare_exposure(const Tokenizer& tokenizer, const ExposureCanary& canary, const ExposureOptions& options,
                             int max_positions, int vocab_size = std::numeric_limits<int>::max());

struct ExposureResult {
  ExposureCanary canary;
  double score = 0;         // the canary's pseudo-log-likelihood
  double space_bits = 0;    // log2(10^digits): the exposure of a secret the model gives away outright
  bool exhaustive = false;  // every other secret of the shape was scored: the exposure is exact
  size_t same_tokens = 0;   // candidates the tokenizer cannot tell from the secret: they tie with it
  ExposureStats stats;
  std::vector<std::string> candidates;  // the secrets
  std::vector<double> candidate_scores;
  size_t best_candidate = 0;  // index of the highest-scoring candidate (the first of equals)
};

// Scores the job's texts. Equal token sequences are scored once, so they tie exactly (a model call's
// float rounding depends on its batch: the same text in another batch can differ by ~1e-6 nats).
ExposureResult score_exposure(MlmLogitsSource& model, const Tokenizer& tokenizer, const ExposureJob& job,
                              const PllOptions& scoring = {});
// prepare_exposure, then score_exposure.
ExposureResult measure_exposure(MlmLogitsSource& model, const Tokenizer& tokenizer, const ExposureCanary& canary,
                                const ExposureOptions& options);

// {"candidates": N, "seed": S, "canaries": [{line, label, secret, text, score, rank, population,
// exposure, max_exposure, space_bits, exhaustive, same_tokens, candidate_mean, candidate_stddev,
// gaussian_exposure (null without spread), best_candidate, best_candidate_score}, ...]}
Json exposure_json(const std::vector<ExposureResult>& results, const ExposureOptions& options);

}  // namespace bert
