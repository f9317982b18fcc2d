#include "tokenizer/normalizer.h"

#include <span>

#include "tokenizer/unicode.h"

namespace bert {

// Appends one character after strip_accents/lowercase. strip_accents is NFD of the whole string,
// then every Mn dropped, then lowercase: each character's decomposition is appended, a non-starter
// (combining class > 0) moved back past the marks of higher class since the last starter (NFD's
// stable sort of each run of non-starters), Mn marks dropped as they come. Dropping a mark of class
// > 0 first does not change how the others sort; a dropped starter still ends the run, so
// `run_start` is where the current run began in `out` (nothing before it moves).
void BertNormalizer::emit(char32_t c, std::u32string& out, size_t& run_start) const {
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
  if (!unicode::decompose(c, decomposed, hangul)) decomposed = std::span<const char32_t>(&c, 1);
  for (char32_t d : decomposed) {
    const uint8_t ccc = unicode::combining_class(d);
    if (ccc == 0) {
      if (!unicode::is_nonspacing_mark(d)) push_lower(d);
      run_start = out.size();
      continue;
    }
    if (unicode::is_nonspacing_mark(d)) continue;
    size_t pos = out.size();
    while (pos > run_start && unicode::combining_class(out[pos - 1]) > ccc) --pos;
    out.insert(out.begin() + static_cast<std::ptrdiff_t>(pos), d);
  }
}

void BertNormalizer::normalize(std::u32string_view in, std::u32string& out) const {
  out.clear();
  size_t run_start = 0;  // see emit()
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
      emit(c, out, run_start);
      out.push_back(U' ');
      continue;
    }
    emit(c, out, run_start);
  }
}

}  // namespace bert
