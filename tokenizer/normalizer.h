// BertNormalizer: clean_text -> handle_chinese_chars -> strip_accents -> lowercase, character by
// character, with the canonical reordering NFD would do among the marks strip_accents keeps (and
// the starters it drops still blocking it).
// Semantics: ../shared/REFERENCES.md ("Normaliser"). Works on code points; no allocation once
// `out` has grown to the longest line.
#pragma once

#include <string>
#include <string_view>

namespace bert {

struct NormalizerOptions {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = false;
  bool lowercase = false;
};

class BertNormalizer {
 public:
  explicit BertNormalizer(NormalizerOptions options = {}) : options_(options) {}
  const NormalizerOptions& options() const { return options_; }

  // Clears `out` and writes the normalised form of `in`.
  void normalize(std::u32string_view in, std::u32string& out) const;

 private:
  NormalizerOptions options_;
  void emit(char32_t c, std::u32string& out, size_t& run_start) const;
};

}  // namespace bert
