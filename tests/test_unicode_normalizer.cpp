// Normaliser and pre-tokeniser stages on their own (the conformance test checks them end to end
// against HF on >20k lines; these pin down the individual rules).
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "common/utf8.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

using namespace bert;

static std::string norm(const std::string& s, NormalizerOptions o = {}) {
  std::u32string in, out;
  utf8_decode(s, in);
  BertNormalizer(o).normalize(in, out);
  return utf8_encode(out);
}

static std::vector<std::string> pretok(const std::string& s) {
  std::u32string in;
  utf8_decode(s, in);
  std::vector<std::string> words;
  bert_pre_tokenize(std::u32string_view(in), [&](WordSpan w) { words.push_back(utf8_encode(std::u32string_view(in).substr(w.begin, w.end - w.begin))); });
  return words;
}

TEST_CASE("character classes") {
  CHECK(unicode::is_control(0x200B));   // zero-width space is Cf
  CHECK(unicode::is_control(0xFEFF));
  CHECK(unicode::is_control(0xE000));   // private use
  CHECK_FALSE(unicode::is_control('\t'));
  CHECK_FALSE(unicode::is_control(0x50000));  // unassigned is not "other" for HF
  CHECK(unicode::is_whitespace(0x3000));
  CHECK(unicode::is_whitespace(0x85));
  CHECK(unicode::is_punctuation('$'));  // ASCII symbols count as punctuation
  CHECK(unicode::is_punctuation(0x3002));  // 。
  CHECK_FALSE(unicode::is_punctuation(0x20A9));  // ₩ is a symbol (Sc)
  CHECK(unicode::is_chinese_char(0x6F22));
  CHECK(unicode::is_chinese_char(0x2B920));
  CHECK_FALSE(unicode::is_chinese_char(0x2B820));  // Google's bound, not the Rust crate's
  CHECK_FALSE(unicode::is_chinese_char(0xAC00));   // Hangul is not CJK here
}

TEST_CASE("clean_text drops controls and maps whitespace") {
  CHECK(norm("a\u200Bb\u3000c\td\x01") == "ab c d");
  CHECK(norm(std::string("x\0y", 3)) == "xy");
  CHECK(norm("a\xEF\xBF\xBD" "b") == "ab");  // U+FFFD
  NormalizerOptions raw;
  raw.clean_text = false;
  CHECK(norm("a\u200Bb", raw) == "a\u200Bb");
}

TEST_CASE("Korean passes through the default normaliser unchanged") {
  CHECK(norm("이순신은 조선 중기의 무신이다.") == "이순신은 조선 중기의 무신이다.");
}

TEST_CASE("CJK ideographs are padded, Hangul and kana are not") {
  CHECK(norm("漢字와한글") == " 漢  字 와한글");
  CHECK(norm("カタカナ") == "カタカナ");
  NormalizerOptions o;
  o.handle_chinese_chars = false;
  CHECK(norm("漢字", o) == "漢字");
}

TEST_CASE("strip_accents decomposes and drops Mn, lowercase is per character") {
  NormalizerOptions strip;
  strip.strip_accents = true;
  CHECK(norm("Café naïve", strip) == "Cafe naive");
  CHECK(norm("한", strip) == "\u1112\u1161\u11AB");  // syllable -> jamo, never recomposed
  NormalizerOptions lower;
  lower.lowercase = true;
  CHECK(norm("ÀB İ ΣΑΣ", lower) == "àb i\u0307 σασ");  // no final-sigma rule
  NormalizerOptions both = lower;
  both.strip_accents = true;
  CHECK(norm("ÀB İ", both) == "ab i");
}

TEST_CASE("strip_accents reorders surviving combining marks by class") {
  NormalizerOptions strip;
  strip.strip_accents = true;
  // U+302E (ccc 224) then U+1D165 (ccc 216): NFD puts 216 first; U+0301 (Mn) is dropped.
  const std::string in = "a\u302E\u0301\U0001D165";
  CHECK(norm(in, strip) == "a\U0001D165\u302E");
  // A dropped Mn starter (U+034F, class 0) still ends the run: nothing moves across it.
  CHECK(norm("a\u302E\u034F\U0001D165", strip) == "a\u302E\U0001D165");
  // Also one inside a decomposition: U+0B48 = U+0B47 U+0B56 (Mn, class 0).
  CHECK(norm("\u0B48", strip) == "\u0B47");
  // Classes as HF's older Unicode has them: U+0C3C (class 7 since Unicode 14) is a starter there and
  // not Mn, so it stays, and U+1D16D (class 226) does not move past it.
  CHECK(norm("a\U0001D16D\u0C3C", strip) == "a\U0001D16D\u0C3C");
  CHECK(unicode::combining_class(0x0C3C) == 0);
  CHECK(unicode::combining_class(0x1D16D) == 226);
  CHECK(unicode::is_nonspacing_mark(0x0301));
  CHECK(!unicode::is_nonspacing_mark(0x0C3C));
  CHECK(!unicode::is_nonspacing_mark(0x1D165));
}

TEST_CASE("pre-tokeniser splits whitespace and isolates punctuation") {
  CHECK(pretok("Hello, world!!") == std::vector<std::string>{"Hello", ",", "world", "!", "!"});
  CHECK(pretok("  이순신은\u3000[MASK]  ") == std::vector<std::string>{"이순신은", "[", "MASK", "]"});
  CHECK(pretok("3.14₩") == std::vector<std::string>{"3", ".", "14₩"});
  CHECK(pretok("").empty());
}
