#include "tokenizer/wordpiece.h"

#include <algorithm>

#include "common/error.h"
#include "common/utf8.h"

namespace bert {

WordPiece::WordPiece(const Vocab& vocab, std::string unk_token, std::string prefix, size_t max_input_chars_per_word,
                     size_t model_size)
    : max_chars_(max_input_chars_per_word) {
  const size_t pieces = std::min(model_size, vocab.size());
  unk_id_ = vocab.id(unk_token);
  if (unk_id_ < 0 || static_cast<size_t>(unk_id_) >= pieces)
    throw Error("vocabulary has no unknown token '" + unk_token + "'");
  size_t total_chars = 0;
  for (size_t id = 0; id < pieces; ++id) total_chars += vocab.tokens()[id].size();
  size_t cap = 1024;
  while (cap < 2 * (total_chars + 16)) cap <<= 1;
  edges_.assign(cap, Edge{0, 0});
  mask_ = cap - 1;
  node_token_ = {-1, -1};
  // With no prefix a continuation is looked up as a token of its own, as HF's WordPiece does.
  if (prefix.empty()) continuation_root_ = root_;
  std::u32string cps;
  for (size_t id = 0; id < pieces; ++id) {
    const std::string& t = vocab.tokens()[id];
    utf8_decode(t, cps);
    // Later duplicates cannot exist (Vocab rejects them); HF's map keeps the last id anyway.
    insert(root_, cps, static_cast<int32_t>(id));
    if (!prefix.empty() && t.size() > prefix.size() && t.compare(0, prefix.size(), prefix) == 0) {
      std::u32string rest;
      utf8_decode(std::string_view(t).substr(prefix.size()), rest);
      insert(continuation_root_, rest, static_cast<int32_t>(id));
    }
  }
}

void WordPiece::insert(uint32_t root, std::u32string_view piece, int32_t id) {
  uint32_t node = root;
  for (char32_t c : piece) {
    uint32_t next = child(node, c);
    if (next == UINT32_MAX) {
      next = static_cast<uint32_t>(node_token_.size());
      node_token_.push_back(-1);
      const uint64_t key = ((static_cast<uint64_t>(node) << 21) | c) + 1;
      uint64_t h = key * 0x9E3779B97F4A7C15ull;
      uint64_t i = (h >> 20) & mask_;
      while (edges_[i].key != 0) i = (i + 1) & mask_;
      edges_[i] = Edge{key, next};
    }
    node = next;
  }
  node_token_[node] = id;
}

void WordPiece::encode_word(std::u32string_view word, std::vector<int32_t>& out) const {
  const size_t n = word.size();
  if (n > max_chars_) {
    out.push_back(unk_id_);
    return;
  }
  const size_t mark = out.size();
  size_t start = 0;
  while (start < n) {
    uint32_t node = start == 0 ? root_ : continuation_root_;
    int32_t best_id = -1;
    size_t best_end = start;
    for (size_t i = start; i < n; ++i) {
      node = child(node, word[i]);
      if (node == UINT32_MAX) break;
      if (node_token_[node] >= 0) {
        best_id = node_token_[node];
        best_end = i + 1;
      }
    }
    if (best_id < 0) {
      out.resize(mark);
      out.push_back(unk_id_);
      return;
    }
    out.push_back(best_id);
    start = best_end;
  }
}

}  // namespace bert
