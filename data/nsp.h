// NSP instance creation, exactly Google's create_pretraining_data.py (create_instances_from_document
// + truncate_seq_pair), on tokenised documents held in a pool:
//   max_num_tokens = max_seq_len - 3; with short_seq_prob the target is randint(2, max_num_tokens);
//   sentences accumulate to the target; A = the first randint(1, n-1) of them; with nsp_prob (or
//   when the chunk has one sentence) B is taken from a random OTHER document starting at a random
//   sentence, and the unused sentences are put back; else B = the rest. truncate_seq_pair trims the
//   longer side, from the front or the back at random, until len(A)+len(B) <= max_num_tokens.
//   Every document of the pool is visited dupe_factor times, then the instances are shuffled.
//
// Differences, all deliberate: Google retries 10 times to avoid picking the same document and then
// gives up; we draw uniformly among the other documents, so a random-next B never comes from the
// same document. A pool with a single document has no other document: its single-sentence chunks
// are skipped (they cannot form a pair) and its longer chunks keep their actual next segment (label 0)
// where Google would draw a random one, both counted, so all its labels are 0 (bert_prepare warns).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "data/rng.h"

namespace bert {

struct NspOptions {
  uint32_t max_seq_len = 128;
  double short_seq_prob = 0.1;
  double nsp_prob = 0.5;
  uint32_t dupe_factor = 1;
};

// Tokenised documents, flat: document d holds sentences [doc_begin[d], doc_begin[d+1]), sentence s
// holds tokens [sentence_begin[s], sentence_begin[s+1]).
struct DocumentPool {
  std::vector<int32_t> tokens;
  std::vector<uint64_t> sentence_begin{0};
  std::vector<uint32_t> doc_begin{0};

  size_t documents() const { return doc_begin.size() - 1; }
  size_t sentences() const { return sentence_begin.size() - 1; }
  void add_sentence(std::span<const int32_t> ids) {
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    sentence_begin.push_back(tokens.size());
  }
  void end_document() {
    if (sentences() > doc_begin.back()) doc_begin.push_back(static_cast<uint32_t>(sentences()));
  }
  std::span<const int32_t> sentence(size_t s) const {
    return {tokens.data() + sentence_begin[s], static_cast<size_t>(sentence_begin[s + 1] - sentence_begin[s])};
  }
  void clear() {
    tokens.clear();
    sentence_begin.assign(1, 0);
    doc_begin.assign(1, 0);
  }
};

struct NspStats {
  uint64_t instances = 0, random_next = 0, truncated = 0, skipped_no_other_document = 0,
           kept_next_no_other_document = 0;
};

// Receives each instance after the final shuffle.
using NspSink = std::function<void(std::span<const int32_t> a, std::span<const int32_t> b, bool random_next)>;

// Creates the instances of one pool. `rng` drives every random choice, so (pool, options, seed)
// determine the output completely.
void create_nsp_instances(const DocumentPool& pool, const NspOptions& options, Rng& rng, const NspSink& sink,
                          NspStats& stats);

}  // namespace bert
