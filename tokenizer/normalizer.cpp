#include "tokenizer/normalizer.h"

#include <span>

#include "tokenizer/unicode.h"

namespace bert {

// Appends one character after strip_accents/lowercase. With strip_accents, NFD would also sort
// each run of non-starters by combining class; the Mn marks are gone, so only the few marks that
// survive (e.g. the Hangul tone marks U+302E/F) can need moving.
void BertNormalizer::emit(char32_t c, std::u32string& out) const {
  auto push_lower = [&](char32_t d) {
    std::span<const char32_t> lower;
    if (options_.lowercase && unicode::to_lowercase(d, lower)) {
      out.append(lower.begin(), lower.end());
    } else {
      out.push_back(d);
    }
  };
  if (!options_.strip_accents) {
    push_lower(c);
    return;
  }
  std::span<const char32_t> decomposed;
  char32_t hangul[3];
  if (!unicode::strip_accents(c, decomposed, hangul)) decomposed = std::span<const char32_t>(&c, 1);
  for (char32_t d : decomposed) {
    const uint8_t ccc = unicode::combining_class(d);
    if (ccc == 0) {
      push_lower(d);
      continue;
    }
    size_t pos = out.size();
    while (pos > 0 && unicode::combining_class(out[pos - 1]) > ccc) --pos;
    out.insert(out.begin() + static_cast<std::ptrdiff_t>(pos), d);
  }
}

void BertNormalizer::normalize(std::u32string_view in, std::u32string& out) const {
  out.clear();
  for (char32_t c : in) {
    if (options_.clean_text) {
      if (c == 0 || c == 0xFFFD || unicode::is_control(c)) continue;
      if (unicode::is_whitespace(c)) c = U' ';
    }
    if (c < 0x80 && !options_.lowercase) {  // fast path: ASCII is its own NFD
      out.push_back(c);
      continue;
    }
    if (options_.handle_chinese_chars && unicode::is_chinese_char(c)) {
      out.push_back(U' ');
      emit(c, out);
      out.push_back(U' ');
      continue;
    }
    emit(c, out);
  }
}

}  // namespace bert
