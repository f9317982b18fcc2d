// Fill-mask and [MASK] probing on a checkpoint dir: what `bert_infer` runs, as testable functions.
//
//   prompt ─▶ Tokenizer (specials matched in raw text) ─▶ [CLS] ids [SEP]           [1, S]
//          ─▶ BertForPreTraining<float>::mlm_logits_at(mask positions)             [masks, vocab]
//          ─▶ softmax (double) ─▶ top-k by probability (ties: lower id first)
//          ─▶ HF-shaped candidates {score, token, token_str, sequence}
//
// fill_mask() equals transformers' pipeline("fill-mask", model=DIR, top_k=k) with BertTokenizerFast:
// token_str = tokenizer.decode([id]) (a lone "##x" keeps its "##", as HF's WordPiece decoder does),
// sequence = tokenizer.decode(ids with the candidate in place, pads removed, skip_special_tokens only
// when the prompt has a single [MASK]); the decoder's per-token cleanup always runs and
// clean_up_tokenization() runs on the whole text when tokenizer_config.json's
// clean_up_tokenization_spaces is true (BertTokenizer's default).
//
// probe() is the LAMA measurement (Petroni et al. 2019) of the "[MASK] attack": cloze prompts with one
// [MASK] and a gold single-token answer; the rank of the gold token among the whole vocabulary gives
// P@1, P@10 and MRR, per relation and overall, plus mean P@1 averaged per relation (LAMA's headline).
// High scores on facts seen only in the training corpus (names, phone numbers, addresses) mean the
// model memorised them and leaks them to anyone who can query [MASK].
//
// Napkin math: one prompt = one encoder forward over S tokens (2 * params * S FLOPs; BERT-base, S = 32:
// ~7 GFLOP) + the MLM head on the mask rows only (2 * hidden * vocab per mask: 47 MFLOP for 30k vocab).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/json.h"
#include "engine/bert.h"
#include "engine/config.h"
#include "tokenizer/tokenizer.h"

namespace bert {

// A checkpoint dir loaded for inference (eval mode: no dropout).
struct InferenceCheckpoint {
  std::string dir;
  BertConfig config;
  Tokenizer tokenizer;
  // tokenizer_config.json; else transformers' default: true for a vocab.txt tokenizer, false for tokenizer.json
  bool clean_up_tokenization_spaces = true;
  BertForPreTraining<float> model;
  std::vector<std::string> notes;  // for stderr: defaults taken where a file was missing
};

// The files a checkpoint dir must hold for bert_infer. tokenizer_config.json may be missing, as for
// transformers: BertTokenizer's defaults then apply (lowercase, accents stripped), with a note.
// ... and vocab.txt, or tokenizer.json instead (Tokenizer::from_dir).
inline constexpr const char* kCheckpointFiles[] = {"model.safetensors", "config.json"};

// Loads DIR (model.safetensors, config.json, vocab.txt or tokenizer.json; tokenizer_config.json and
// special_tokens_map.json when present). One-line bert::Errors: a missing dir, the missing files by
// name, a tokenizer without [CLS]/[SEP]/[MASK], a vocabulary larger than the model's vocab_size.
InferenceCheckpoint load_inference_checkpoint(const std::string& dir, int num_threads = 0);

// HF's PreTrainedTokenizerBase.clean_up_tokenization: " ." -> ".", " ?", " !", " ,", " ' " -> "'",
// " n't", " 'm", " 's", " 've", " 're" lose their leading space (each replaced left to right, in order).
std::string clean_up_tokenization(std::string_view text);

// BertTokenizerFast.decode(ids): skip_special_tokens drops every special token ([PAD] [UNK] [CLS] [SEP]
// [MASK] and additional ones) first; then the WordPiece decoder (a "##" piece after the first token is
// glued to the one before, others get a space; each token cleaned up); then clean_up_tokenization on
// the whole text when clean_up_tokenization_spaces. Ids outside the vocabulary are dropped.
std::string hf_decode(const Tokenizer& tokenizer, std::span<const int32_t> ids, bool skip_special_tokens,
                      bool clean_up_tokenization_spaces = true);

// "'TOKEN' (id N), past the model's vocab_size V (...)" for the first of `ids` past `vocab_size`
// (a token added to the tokenizer after the model was made), else empty.
std::string token_past_vocab(const Tokenizer& tokenizer, std::span<const int32_t> ids, int vocab_size);

// [CLS] prompt [SEP] as the pipeline tokenizes it. bert::Error (no location; callers prefix one) when the
// prompt has no mask token, when it is longer than max_positions tokens, or when it holds a token whose
// id is past the model's vocab_size.
std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, std::string_view prompt, int max_positions,
                                   int vocab_size);

struct FillMaskCandidate {
  double score = 0;  // softmax probability over the vocabulary
  int32_t token = 0;
  std::string token_str;
  std::string sequence;
};

struct FillMaskResult {
  std::vector<int32_t> input_ids;                        // [CLS] ... [SEP]
  std::vector<int64_t> mask_positions;                   // indices into input_ids, ascending
  std::vector<std::vector<FillMaskCandidate>> per_mask;  // [masks][top_k], best first
};

// The length of each of `batch` equal-length sequences in `ids`; bert::Error when they cannot be.
inline size_t batch_seq_len(const std::vector<int32_t>& ids, int64_t batch) {
  if (batch <= 0 || ids.size() % static_cast<size_t>(batch) != 0)
    throw Error("batch_logits_at: " + std::to_string(ids.size()) + " ids are not " + std::to_string(batch) +
                " sequences of equal length");
  return ids.size() / static_cast<size_t>(batch);
}

// Softmax of one row of logits in double: probability(j) = exp(logit_j - max) / sum; returns {max, sum}.
// A NaN or infinite logit is a bert::Error (the model's weights overflow it: a diverged run), not a
// table of nan scores; require_finite_logits is that check alone, for a caller that must not throw
// where it calls this (inside an OpenMP loop, where an exception ends the process).
std::pair<double, double> softmax_max_and_sum(std::span<const float> logits);
void require_finite_logits(std::span<const float> logits);

// What fill-mask and the probe need from a model, whichever device it runs on: its config and the
// MLM logits at positions of one sequence ([positions, vocab_size], row-major).
class MlmLogitsSource {
 public:
  virtual ~MlmLogitsSource() = default;
  virtual const BertConfig& config() const = 0;
  virtual std::vector<float> logits_at(const std::vector<int32_t>& ids, const std::vector<int32_t>& positions) = 0;
  // `batch` sequences of equal length in `ids` ([batch, seq_len] row-major), positions flat
  // (b * seq_len + t, any order): [positions, vocab_size].
  std::vector<float> batch_logits_at(const std::vector<int32_t>& ids, int64_t batch,
                                     const std::vector<int32_t>& positions) {
    return padded_logits_at(ids, batch, positions, {});
  }
  // The same for right-padded sequences: sequence b is its first lengths[b] ids, the rest padding
  // the model must not attend to (lengths empty: none is padded), and each position falls in its
  // sequence's real tokens. This default runs one unpadded sequence at a time.
  virtual std::vector<float> padded_logits_at(const std::vector<int32_t>& ids, int64_t batch,
                                              const std::vector<int32_t>& positions, std::span<const int32_t> lengths) {
    const size_t seq_len = batch_seq_len(ids, batch);
    const size_t vocab = static_cast<size_t>(config().vocab_size);
    if (!lengths.empty() && lengths.size() != static_cast<size_t>(batch))
      throw Error("padded_logits_at: " + std::to_string(lengths.size()) + " lengths for " + std::to_string(batch) +
                  " sequences");
    for (const int32_t length : lengths)
      if (length < 1 || static_cast<size_t>(length) > seq_len)
        throw Error("padded_logits_at: a sequence length of " + std::to_string(length) + ", outside [1, " +
                    std::to_string(seq_len) + "]");
    std::vector<float> logits(positions.size() * vocab);
    for (size_t b = 0; b < static_cast<size_t>(batch); ++b) {
      std::vector<int32_t> local;
      std::vector<size_t> rows;
      for (size_t i = 0; i < positions.size(); ++i)
        if (positions[i] >= 0 && static_cast<size_t>(positions[i]) / seq_len == b) {
          local.push_back(static_cast<int32_t>(static_cast<size_t>(positions[i]) - b * seq_len));
          rows.push_back(i);
        }
      if (local.empty()) continue;
      const size_t length = lengths.empty() ? seq_len : static_cast<size_t>(lengths[b]);
      const std::vector<int32_t> one(ids.begin() + static_cast<std::ptrdiff_t>(b * seq_len),
                                     ids.begin() + static_cast<std::ptrdiff_t>(b * seq_len + length));
      const std::vector<float> part = logits_at(one, local);
      for (size_t r = 0; r < rows.size(); ++r)
        std::copy_n(part.begin() + static_cast<std::ptrdiff_t>(r * vocab), vocab,
                    logits.begin() + static_cast<std::ptrdiff_t>(rows[r] * vocab));
    }
    return logits;
  }
};

// How fill-mask and the probe share model calls: sequences sorted by length, up to max_sequences a
// call and max_tokens tokens once padded to the call's longest (the padding is masked out of
// attention, so an answer differs from the one its prompt gets alone by float rounding only: the
// GEMMs sum in another order). At BERT-base a lone 20-token prompt reads all 440 MB of weights for
// 2 * 110M * 20 FLOPs; 64 of them in one call read them once.
struct PromptBatching {
  int64_t max_tokens = 1024;  // BERT-base on the CPU, forward only: ~0.1 MB of activations a token
  int64_t max_sequences = 64;
  double max_padding = 0.125;  // padding tokens a call may add, as a fraction of its real tokens
  std::function<void(size_t done, size_t total)> progress;  // sequences run so far, after each call
};

// The MLM logits at positions[i] of sequences[i] for every i with positions: fn(i, logits
// [positions[i].size(), vocab_size]), sequences sharing calls (PromptBatching), in ascending length,
// ties in input order. Sequences without positions are not run. bert::Error when the two
// lists differ in size or a position is outside its sequence.
void for_each_mlm_logits(MlmLogitsSource& model, const std::vector<std::vector<int32_t>>& sequences,
                         const std::vector<std::vector<int32_t>>& positions, const PromptBatching& batching,
                         const std::function<void(size_t, std::span<const float>)>& fn);

// The CPU model as a logits source (batch_logits_at runs the whole batch in one forward).
std::unique_ptr<MlmLogitsSource> logits_source(BertForPreTraining<float>& model);
// The checkpoint's model on `device` ("cpu", or "cuda": its weights copied to the GPU in bf16; both
// run batch_logits_at in one forward). A bert::Error for a CUDA device this process cannot use.
std::unique_ptr<MlmLogitsSource> logits_source(InferenceCheckpoint& checkpoint, const std::string& device);

// The pipeline's `targets=`: the ids fill-mask may answer with, ascending, each once. A target that is a
// vocabulary entry as written (added tokens included; "##에서" too) is that entry; else the first token
// the tokenizer makes of it, with a note in `notes` ("target \"Seoul\" is not a vocabulary entry; scoring
// its first token 'seoul' (id 812)"), and a target the tokenizer leaves nothing of (blank) is ignored
// with a note. A target that is invalid UTF-8, or whose id is past the model's vocab_size, or a list left
// with none (or an empty list), is a bert::Error naming it.
std::vector<int32_t> fill_mask_target_ids(const Tokenizer& tokenizer, const std::vector<std::string>& targets,
                                          int vocab_size, std::vector<std::string>& notes);

// top_k is capped at the vocabulary size (HF raises instead), or at the number of `targets` when given
// (fill_mask_target_ids; empty = the whole vocabulary; an id given twice counts once). With targets,
// the candidates are those ids only, best first, and each score stays its probability over the whole
// vocabulary, as HF's.
FillMaskResult fill_mask(MlmLogitsSource& model, const Tokenizer& tokenizer, std::string_view prompt, int top_k,
                         bool clean_up_tokenization_spaces = true, std::span<const int32_t> targets = {});
FillMaskResult fill_mask(BertForPreTraining<float>& model, const Tokenizer& tokenizer, std::string_view prompt,
                         int top_k, bool clean_up_tokenization_spaces = true, std::span<const int32_t> targets = {});
// fill_mask on every prompt, prompts sharing forwards (PromptBatching): results in
// prompt order, each fill_mask's on that prompt alone up to float rounding. A prompt fill_mask refuses is a
// bert::Error "prompt N: ..." (1-based), raised before any forward.
std::vector<FillMaskResult> fill_mask_batch(MlmLogitsSource& model, const Tokenizer& tokenizer,
                                            const std::vector<std::string>& prompts, int top_k,
                                            bool clean_up_tokenization_spaces = true,
                                            std::span<const int32_t> targets = {}, const PromptBatching& batching = {});
// HF's pipeline output: a list of candidates for one [MASK], a list of such lists for several.
Json fill_mask_json(const FillMaskResult& result);

// `text` without leading and trailing ' '.
std::string trim_spaces(std::string_view text);

// The non-blank lines of a TSV text (CR and a leading UTF-8 byte order mark stripped), each split at every tab:
// fn(line_number, columns). A line of invalid UTF-8 is a bert::Error "path:line: invalid UTF-8 at byte B".
void for_each_tsv_line(std::string_view text, const std::string& path,
                       const std::function<void(size_t, const std::vector<std::string>&)>& fn);

// ---- probing ----------------------------------------------------------------------------------------

struct ProbeQuery {
  std::string source;  // "path:line", for messages
  size_t line = 0;
  std::string prompt;
  std::string gold;
  std::string relation;  // third column; "-" when absent
};

// "prompt with one [MASK]<TAB>gold[<TAB>relation]" per line; blank lines are skipped. A line without a
// tab, with an empty prompt or gold, or with more columns is a bert::Error "path:line: ..." (the [MASK]
// count is checked by probe(), which knows the tokenizer).
std::vector<ProbeQuery> parse_probe_tsv(std::string_view text, const std::string& path);

struct ProbeOutcome {
  ProbeQuery query;
  int32_t gold_id = -1;
  int64_t rank = 0;         // 1 = the model's top prediction; 0 = skipped
  std::string skip_reason;  // why the gold answer is not a single vocabulary token
  std::string top_token;    // the model's top prediction (decoded)
  double gold_score = 0;    // softmax probability of the gold token
};

struct ProbeRelationMetrics {
  std::string relation;  // "overall" for the total
  int64_t count = 0;     // scored queries
  int64_t skipped = 0;
  double p_at_1 = 0, p_at_10 = 0, mrr = 0;
};

struct ProbeMetrics {
  ProbeRelationMetrics overall;                 // over all scored queries
  double mean_p_at_1_by_relation = 0;           // LAMA: P@1 averaged over the relations with a scored query
  std::vector<ProbeRelationMetrics> relations;  // in order of first appearance
  std::vector<ProbeOutcome> outcomes;           // one per query, in input order
};

// The gold answer's id when it tokenizes to exactly one known token; else -1 and `why` says what it is.
int32_t single_token_id(const Tokenizer& tokenizer, std::string_view gold, std::string& why);
// Rank (1-based) of `gold` in `logits` in the order fill_mask uses: higher logit first, ties by lower id.
int64_t rank_of(std::span<const float> logits, int32_t gold);
// Metrics from outcomes (rank 0 = skipped).
ProbeMetrics summarize_probe(std::vector<ProbeOutcome> outcomes);
// Runs every query (each must hold exactly one [MASK], else bert::Error "path:line: ...", raised before
// any forward), prompts sharing forwards (PromptBatching; the scores are the ones each prompt gets
// alone up to float rounding).
ProbeMetrics probe(MlmLogitsSource& model, const Tokenizer& tokenizer, const std::vector<ProbeQuery>& queries,
                   const PromptBatching& batching = {});
ProbeMetrics probe(BertForPreTraining<float>& model, const Tokenizer& tokenizer,
                   const std::vector<ProbeQuery>& queries);
Json probe_json(const ProbeMetrics& metrics);

// `bert_infer` (see --help). Throws bert::Error for user mistakes (main prints "error: ..."); returns the
// exit code.
int infer_main(const std::vector<std::string>& args, std::istream& in, std::ostream& out, std::ostream& err);

}  // namespace bert
