#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <cstddef>

namespace bert::unicode {
namespace {

struct CodePointRange {
  char32_t first, last;
};
struct CodePointMapping {
  char32_t code_point;
  uint32_t offset, length;
};
struct CombiningClass {
  char32_t code_point;
  uint8_t value;
};

#include "tokenizer/unicode_tables.inc"

constexpr char32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;

enum Flag : uint8_t {
  kControl = 1,
  kWhitespace = 2,
  kPunctuation = 4,
  kChinese = 8,
  kHasDecomposition = 16,
  kHasLower = 32,
  kCombining = 64,
  kNonspacing = 128,
};

template <size_t N>
bool in_ranges(const CodePointRange (&ranges)[N], char32_t c) {
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), c,
                             [](char32_t v, const CodePointRange& r) { return v < r.first; });
  return it != std::begin(ranges) && c <= std::prev(it)->last;
}

template <size_t N>
const CodePointMapping* find_mapping(const CodePointMapping (&map)[N], char32_t c) {
  auto it = std::lower_bound(std::begin(map), std::end(map), c,
                             [](const CodePointMapping& m, char32_t v) { return m.code_point < v; });
  return (it != std::end(map) && it->code_point == c) ? it : nullptr;
}

bool chinese_block(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

struct BmpFlags {
  std::array<uint8_t, 0x10000> flags{};
  BmpFlags() {
    auto mark = [&](const auto& ranges, uint8_t f) {
      for (const auto& r : ranges)
        for (char32_t c = r.first; c <= r.last && c < 0x10000; ++c) flags[c] |= f;
    };
    mark(kControlRanges, kControl);
    mark(kWhitespaceRanges, kWhitespace);
    mark(kPunctuationRanges, kPunctuation);
    for (char32_t c = 0; c < 0x10000; ++c)
      if (chinese_block(c)) flags[c] |= kChinese;
    mark(kNonspacingRanges, kNonspacing);
    for (const auto& m : kDecompositionMap)
      if (m.code_point < 0x10000) flags[m.code_point] |= kHasDecomposition;
    for (char32_t c = kHangulFirst; c <= kHangulLast; ++c) flags[c] |= kHasDecomposition;
    for (const auto& m : kLowercaseMap)
      if (m.code_point < 0x10000) flags[m.code_point] |= kHasLower;
    for (const auto& m : kCombiningClasses)
      if (m.code_point < 0x10000) flags[m.code_point] |= kCombining;
  }
};

const BmpFlags& bmp() {
  static const BmpFlags table;
  return table;
}

}  // namespace

bool is_control(char32_t c) {
  return c < 0x10000 ? (bmp().flags[c] & kControl) != 0 : in_ranges(kControlRanges, c);
}
bool is_whitespace(char32_t c) {
  return c < 0x10000 ? (bmp().flags[c] & kWhitespace) != 0 : in_ranges(kWhitespaceRanges, c);
}
bool is_punctuation(char32_t c) {
  return c < 0x10000 ? (bmp().flags[c] & kPunctuation) != 0 : in_ranges(kPunctuationRanges, c);
}
bool is_chinese_char(char32_t c) { return c < 0x10000 ? (bmp().flags[c] & kChinese) != 0 : chinese_block(c); }

bool decompose(char32_t c, std::span<const char32_t>& out, char32_t (&hangul)[3]) {
  if (c < 0x10000 && !(bmp().flags[c] & kHasDecomposition)) return false;
  if (c >= kHangulFirst && c <= kHangulLast) {
    const char32_t s = c - kHangulFirst;
    hangul[0] = 0x1100 + s / 588;
    hangul[1] = 0x1161 + (s % 588) / 28;
    hangul[2] = 0x11A7 + s % 28;
    out = std::span<const char32_t>(hangul, hangul[2] == 0x11A7 ? 2 : 3);
    return true;
  }
  const CodePointMapping* m = find_mapping(kDecompositionMap, c);
  if (!m) return false;
  out = std::span<const char32_t>(kDecompositionMap_pool + m->offset, m->length);
  return true;
}

bool is_nonspacing_mark(char32_t c) {
  return c < 0x10000 ? (bmp().flags[c] & kNonspacing) != 0 : in_ranges(kNonspacingRanges, c);
}

uint8_t combining_class(char32_t c) {
  if (c < 0x10000 && !(bmp().flags[c] & kCombining)) return 0;
  auto it = std::lower_bound(std::begin(kCombiningClasses), std::end(kCombiningClasses), c,
                             [](const CombiningClass& m, char32_t v) { return m.code_point < v; });
  return (it != std::end(kCombiningClasses) && it->code_point == c) ? it->value : 0;
}

bool to_lowercase(char32_t c, std::span<const char32_t>& out) {
  if (c < 0x80) {
    if (c >= 'A' && c <= 'Z') {
      static constexpr char32_t kLower[26] = {'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm',
                                              'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z'};
      out = std::span<const char32_t>(&kLower[c - 'A'], 1);
      return true;
    }
    return false;
  }
  if (c < 0x10000 && !(bmp().flags[c] & kHasLower)) return false;
  const CodePointMapping* m = find_mapping(kLowercaseMap, c);
  if (!m) return false;
  out = std::span<const char32_t>(kLowercaseMap_pool + m->offset, m->length);
  return true;
}

const char* tables_version() { return kTablesFromTokenizersVersion; }

}  // namespace bert::unicode
