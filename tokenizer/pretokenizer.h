// BertPreTokenizer: split on whitespace (dropped), then each punctuation character is a word of
// its own. Yields [begin, end) code-point spans into the normalised text; allocation-free.
#pragma once

#include <cstddef>
#include <string_view>

#include "tokenizer/unicode.h"

namespace bert {

struct WordSpan {
  size_t begin, end;
};

// Calls on_word(WordSpan) for each pre-token of `text`, in order.
template <typename OnWord>
void bert_pre_tokenize(std::u32string_view text, OnWord&& on_word) {
  size_t start = 0;
  const size_t n = text.size();
  for (size_t i = 0; i < n; ++i) {
    const char32_t c = text[i];
    const bool ws = c == U' ' || unicode::is_whitespace(c);
    if (ws || unicode::is_punctuation(c)) {
      if (i > start) on_word(WordSpan{start, i});
      if (!ws) on_word(WordSpan{i, i + 1});
      start = i + 1;
    }
  }
  if (n > start) on_word(WordSpan{start, n});
}

}  // namespace bert
