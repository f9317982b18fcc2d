// WordPiece encoder: greedy longest-match-first, as HF's WordPiece model.
//
// HF tries every substring from the longest down and hashes each (O(n^2) lookups and a String per
// try). Here the vocabulary is two tries over code points (word-initial pieces, and the `##`
// continuation pieces with the prefix removed), so one walk from each position finds the longest
// piece: O(n * longest-piece) steps, no allocation. Trie edges live in one open-addressing hash
// table keyed by (node, code point).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/vocab.h"

namespace bert {

class WordPiece {
 public:
  WordPiece() = default;
  // `unk_token` must be in the vocabulary. Only its first `model_size` ids are pieces: the tokens
  // after them are added tokens (appended specials, tokenizer.json's added tokens past its model),
  // which transformers matches in the raw text only, never as a piece of a word.
  WordPiece(const Vocab& vocab, std::string unk_token = "[UNK]", std::string prefix = "##",
            size_t max_input_chars_per_word = 100, size_t model_size = SIZE_MAX);

  // Appends the ids of one pre-tokenised word to `out`. A word longer than
  // max_input_chars_per_word, or with any position no piece matches, is one [UNK].
  void encode_word(std::u32string_view word, std::vector<int32_t>& out) const;

  int32_t unk_id() const { return unk_id_; }

 private:
  struct Edge {
    uint64_t key;  // (node << 21 | code point) + 1; 0 = empty slot
    uint32_t child;
  };
  std::vector<Edge> edges_;
  uint64_t mask_ = 0;
  std::vector<int32_t> node_token_;  // token id ending at a node, -1 if none
  uint32_t root_ = 0, continuation_root_ = 1;
  int32_t unk_id_ = -1;
  size_t max_chars_ = 100;

  uint32_t child(uint32_t node, char32_t c) const {
    const uint64_t key = ((static_cast<uint64_t>(node) << 21) | c) + 1;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    for (uint64_t i = (h >> 20) & mask_;; i = (i + 1) & mask_) {
      const Edge& e = edges_[i];
      if (e.key == key) return e.child;
      if (e.key == 0) return UINT32_MAX;
    }
  }
  void insert(uint32_t root, std::u32string_view piece, int32_t id);
};

}  // namespace bert
