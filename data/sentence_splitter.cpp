#include "data/sentence_splitter.h"

#include <algorithm>
#include <array>

namespace bert {

namespace {

// Decodes the code point at s[i] (valid UTF-8 assumed; a stray byte decodes as itself).
char32_t decode_at(std::string_view s, size_t i, size_t& len) {
  const auto c = static_cast<unsigned char>(s[i]);
  auto cont = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) & 0x3Fu : 0u; };
  if (c < 0x80) {
    len = 1;
    return c;
  }
  if (c >= 0xF0) {
    len = std::min<size_t>(4, s.size() - i);
    return ((c & 0x07u) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
  }
  if (c >= 0xE0) {
    len = std::min<size_t>(3, s.size() - i);
    return ((c & 0x0Fu) << 12) | (cont(1) << 6) | cont(2);
  }
  if (c >= 0xC0) {
    len = std::min<size_t>(2, s.size() - i);
    return ((c & 0x1Fu) << 6) | cont(1);
  }
  len = 1;
  return c;
}

char32_t decode_at(std::string_view s, size_t i) {
  size_t len;
  return decode_at(s, i, len);
}

// The code point that ends at byte `end` (0 at the start of the text).
char32_t decode_before(std::string_view s, size_t end) {
  if (end == 0) return 0;
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80 && end - b < 4) --b;
  return decode_at(s, b);
}

bool is_space(char32_t c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || c == 0x00A0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_cjk_terminator(char32_t c) { return c == 0x3002 || c == 0xFF1F || c == 0xFF01; }  // 。？！
bool is_question_or_exclaim(char32_t c) {
  return c == '?' || c == '!' || c == 0x203C || c == 0x2047 || c == 0x2048 || c == 0x2049;  // ‼ ⁇ ⁈ ⁉
}
bool is_terminator(char32_t c) {
  return c == '.' || c == 0xFF0E || c == 0x2026 || is_question_or_exclaim(c) || is_cjk_terminator(c);
}

bool is_closer(char32_t c) {
  switch (c) {
    case '"':
    case '\'':
    case ')':
    case ']':
    case '}':
    case 0x201D:
    case 0x2019:
    case 0x00BB:
    case 0x203A:  // ” ’ » ›
    case 0x300D:
    case 0x300F:
    case 0x300B:
    case 0x3009:
    case 0x3011:  // 」 』 》 〉 】
    case 0xFF09:
    case 0xFF3D:  // ） ］
      return true;
    default:
      return false;
  }
}

bool is_opener(char32_t c) {
  switch (c) {
    case '"':
    case '\'':
    case '(':
    case '[':
    case '{':
    case 0x201C:
    case 0x2018:
    case 0x00AB:
    case 0x2039:  // “ ‘ « ‹
    case 0x300C:
    case 0x300E:
    case 0x300A:
    case 0x3008:
    case 0x3010:  // 「 『 《 〈 【
    case 0xFF08:
    case 0xFF3B:  // （ ［
      return true;
    default:
      return false;
  }
}

bool is_hangul_syllable(char32_t c) { return c >= 0xAC00 && c <= 0xD7A3; }
bool is_ascii_upper(char32_t c) { return c >= 'A' && c <= 'Z'; }
bool is_ascii_lower(char32_t c) { return c >= 'a' && c <= 'z'; }
bool is_ascii_alpha(char32_t c) { return is_ascii_upper(c) || is_ascii_lower(c); }
bool is_ascii_digit(char32_t c) { return c >= '0' && c <= '9'; }

// Syllables that close a Korean sentence (했다, 해요, 하죠, 할까, 하네, 하는군).
bool is_korean_final(char32_t c) {
  return c == U'다' || c == U'요' || c == U'죠' || c == U'까' || c == U'네' || c == U'군';
}

size_t skip_spaces(std::string_view s, size_t i) {
  while (i < s.size()) {
    size_t len;
    if (!is_space(decode_at(s, i, len))) break;
    i += len;
  }
  return i;
}

bool starts_with(std::string_view s, size_t i, std::string_view prefix) { return s.substr(i, prefix.size()) == prefix; }

// After a closing quote: the quote is reported speech and the sentence goes on.
bool starts_with_quotative(std::string_view s, size_t i) {
  static constexpr std::string_view kParticles[] = {"라고",   "하고",   "라며",   "하며",   "라는",  "하는",
                                                    "이라고", "이라며", "이라는", "라면서", "하면서"};
  for (std::string_view p : kParticles)
    if (starts_with(s, i, p)) return true;
  return false;
}

// A Korean particle (or 및) as a whole word at s[i]: it follows a word written apart from it, an
// abbreviation or a name in Latin letters.
bool starts_with_particle_word(std::string_view s, size_t i) {
  // Only those no sentence starts with: not 이 (this), 가, 도, 만 (만 19세), 와, 등, 또는, ...
  static constexpr std::string_view kParticles[] = {"은",     "는",   "을",   "를",   "의",   "에",
                                                    "에서",   "에게", "께서", "으로", "에는", "에서는",
                                                    "으로는", "까지", "부터", "처럼", "및"};
  for (std::string_view p : kParticles) {
    if (!starts_with(s, i, p)) continue;
    const size_t e = i + p.size();
    if (e >= s.size()) return true;
    size_t len;
    const char32_t c = decode_at(s, e, len);
    if (is_space(c) || c == ',' || c == '.' || is_closer(c) || is_terminator(c)) return true;
  }
  return false;
}

bool in_list(std::string_view word, std::initializer_list<std::string_view> list) {
  return std::find(list.begin(), list.end(), word) != list.end();
}

// Abbreviations after which '.' never ends a sentence (lowercased, without the final dot).
bool is_title_abbreviation(std::string_view w) {
  return in_list(w, {"mr",   "mrs", "ms",  "dr",  "prof", "sr",   "st",  "mt",  "vs",  "e.g", "i.e", "cf",  "approx",
                     "dept", "gen", "gov", "lt",  "col",  "capt", "sgt", "rev", "hon", "viz", "jan", "feb", "mar",
                     "apr",  "jun", "jul", "aug", "sep",  "sept", "oct", "nov", "dec", "u.s", "u.k", "u.n", "ph.d"});
}
// ... only before a number ("No. 5", "Fig. 3", "pp. 10-12").
bool is_number_abbreviation(std::string_view w) {
  return in_list(
      w, {"no", "nos", "vol", "vols", "fig", "figs", "p", "pp", "ch", "chap", "sec", "art", "eq", "tab", "ver", "ed"});
}
// ... unless a capitalised or non-ASCII word follows (these often do end a sentence).
bool is_maybe_final_abbreviation(std::string_view w) {
  return in_list(w, {"etc", "inc", "ltd", "co", "corp", "llc", "jr", "al", "a.m", "p.m", "esq"});
}

constexpr std::string_view kKoreanMarkers[] = {"가", "나", "다", "라", "마", "바", "사",
                                               "아", "자", "차", "카", "타", "파", "하"};
constexpr std::string_view kRomanMarkers[] = {"i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii"};

// Roman numeral characters Ⅰ-Ⅻ (U+2160-216B) and ⅰ-ⅻ (U+2170-217B): 0-11, else -1.
int roman_numeral_char(std::string_view w) {
  if (w.size() != 3 || static_cast<unsigned char>(w[0]) != 0xE2 || static_cast<unsigned char>(w[1]) != 0x85) return -1;
  const int low = static_cast<unsigned char>(w[2]);
  if (low >= 0xA0 && low <= 0xAB) return low - 0xA0;
  if (low >= 0xB0 && low <= 0xBB) return low - 0xB0;
  return -1;
}

// Whether `next` is the marker after `w` in a list (1 -> 2, a -> b, 가 -> 나, i -> ii, Ⅱ -> Ⅲ; "i"
// is a letter and a Roman numeral: j and ii both follow it).
bool is_next_list_marker(std::string_view w, std::string_view next) {
  if (!w.empty() && w.size() <= 3 && std::all_of(w.begin(), w.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return next == std::to_string(std::stoi(std::string(w)) + 1);
  if (w.size() == 1 && next.size() == 1 && is_ascii_alpha(static_cast<unsigned char>(w[0])) && next[0] == w[0] + 1 &&
      (w[0] | 0x20) != 'z')
    return true;
  for (size_t k = 0; k + 1 < std::size(kKoreanMarkers); ++k)
    if (w == kKoreanMarkers[k]) return next == kKoreanMarkers[k + 1];
  if (const int r = roman_numeral_char(w); r >= 0)
    return r < 11 && roman_numeral_char(next) == r + 1 && next[2] - w[2] == 1;
  const auto lower = [](std::string_view x) {
    std::string out(x);
    for (char& c : out) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return out;
  };
  const std::string lw = lower(w), ln = lower(next);
  const bool upper_w = w[0] >= 'A' && w[0] <= 'Z', upper_next = next[0] >= 'A' && next[0] <= 'Z';
  for (size_t k = 0; k + 1 < std::size(kRomanMarkers); ++k)
    if (lw == kRomanMarkers[k] && ln == kRomanMarkers[k + 1] && upper_w == upper_next) return true;
  return false;
}

bool is_list_marker(std::string_view w) {
  if (w.empty()) return false;
  // 1.  2.3.  1.1.2.
  if (std::all_of(w.begin(), w.end(), [](char c) { return (c >= '0' && c <= '9') || c == '.'; }) && w.front() != '.')
    return true;
  if (w.size() == 1 && is_ascii_alpha(static_cast<unsigned char>(w[0]))) return true;  // a.  B.
  if (std::find(std::begin(kKoreanMarkers), std::end(kKoreanMarkers), w) != std::end(kKoreanMarkers)) return true;
  if (roman_numeral_char(w) >= 0) return true;
  std::string lower(w);
  for (char& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
  return std::find(std::begin(kRomanMarkers), std::end(kRomanMarkers), lower) != std::end(kRomanMarkers);
}

// Segments of 1-2 ASCII letters joined by dots: U.S, J.K, Ph.D, e.g.
bool is_dotted_acronym(std::string_view w) {
  size_t segments = 0, run = 0;
  for (char c : w) {
    if (c == '.') {
      if (run == 0 || run > 2) return false;
      ++segments;
      run = 0;
    } else if (is_ascii_alpha(static_cast<unsigned char>(c))) {
      ++run;
    } else {
      return false;
    }
  }
  return segments >= 1 && run >= 1 && run <= 2;
}

// True if "Y. M. " (Y 1-4 digits, M 1-4 digits, spaces optional) ends at `end`: the token that
// follows is the day of a Korean dotted date "2024. 1. 15.".
bool preceded_by_date_parts(std::string_view s, size_t end) {
  size_t p = end;
  for (int part = 0; part < 2; ++part) {
    if (p > 0 && s[p - 1] == ' ') --p;
    if (p == 0 || s[p - 1] != '.') return false;
    --p;
    const size_t e = p;
    while (p > 0 && s[p - 1] >= '0' && s[p - 1] <= '9') --p;
    if (e - p < 1 || e - p > 4) return false;
  }
  return true;
}

struct TerminatorRun {
  size_t begin = 0, end = 0;
  size_t dots = 0;  // '.' and '．'
  bool ellipsis_char = false, question_or_exclaim = false, cjk = false;
  bool ellipsis() const { return dots >= 2 || ellipsis_char; }
};

// The list marker the sentence at `start` opens with ("1" of "1. 미성년자"), or "".
std::string_view leading_marker(std::string_view s, size_t start) {
  size_t e = start;
  while (e < s.size() && s[e] != ' ' && s[e] != '.') ++e;
  if (e + 1 >= s.size() || s[e] != '.' || s[e + 1] != ' ') return {};
  const std::string_view word = s.substr(start, e - start);
  return is_list_marker(word) ? word : std::string_view();
}

// Whether the sentence that began at `start` ends after `run` and the closers up to `after`. When
// it does not but a new list item begins at the word `run` closes (the sentence opened with item
// "1." and this is "2."), sets `*item_begin` to that word: the sentence ends before it.
bool ends_sentence(std::string_view s, size_t start, const TerminatorRun& run, size_t after, size_t* item_begin) {
  const bool closed = after > run.end;
  if (after >= s.size() || run.cjk) return true;
  const char32_t prev = decode_before(s, run.begin);
  size_t len;
  if (!is_space(decode_at(s, after, len))) {
    // No space: only a plain terminator glued between Hangul syllables, and for '.' only after a
    // sentence-final ending ("했다.그리고", not "주.부.세부"); after one, also before a digit ("한다.1. 첫째
    // 호": a list pasted without spaces). Not before a Latin letter ("바다.com") nor a bracket, which
    // glued opens a note on the sentence ("반환됩니다.(선택 사항)", "아니하다.<개정 2015. 7. 24.>").
    if (closed || run.ellipsis() || !is_hangul_syllable(prev)) return false;
    // Not after 다 standing alone: the list marker ("나. 둘째 다.셋째", "다.1 셋째"; "네.알겠습니다" splits).
    const size_t prev_begin = run.begin - 3;  // (a Hangul syllable: 3 bytes)
    if (prev == U'다' && (prev_begin <= start || is_space(decode_before(s, prev_begin)))) return false;
    const char32_t glued = decode_at(s, after);
    if (is_hangul_syllable(glued)) return run.question_or_exclaim || is_korean_final(prev);
    return is_korean_final(prev) && is_ascii_digit(glued);
  }
  const size_t next = skip_spaces(s, after);
  if (next >= s.size()) return true;
  const char32_t first = decode_at(s, next);
  if (closed && starts_with_quotative(s, next)) return false;
  // A particle standing alone goes with what the terminator closes when that is a Latin word or the
  // quoted mark itself ("Samsung Co., Ltd. 는", "마침표 '.' 를", "마침표(.) 를"): no sentence starts with
  // one. (After a Korean sentence end or a closing bracket it does: text whose markup was stripped
  // loses the code a sentence began with, "…합니다. 는 …", "…(확장자 제외). 는 …".)
  if ((is_ascii_alpha(prev) || is_ascii_digit(prev) || (closed && is_opener(prev))) &&
      starts_with_particle_word(s, next))
    return false;
  if (run.question_or_exclaim) return !(closed && is_ascii_lower(first));
  if (run.ellipsis()) return closed || is_ascii_upper(first) || is_korean_final(prev);
  if (closed) return true;

  // A single '.': look at the word it closes.
  size_t word_begin = run.begin;
  while (word_begin > start) {
    const char32_t c = decode_before(s, word_begin);
    if (is_space(c)) break;
    size_t back = 1;
    while (back < word_begin && (static_cast<unsigned char>(s[word_begin - back]) & 0xC0) == 0x80) ++back;
    word_begin -= back;
  }
  const bool at_sentence_start = word_begin == start;
  const size_t unstripped_begin = word_begin;
  while (word_begin < run.begin) {  // strip opening quotes/brackets: ("Mr. → Mr
    const char32_t c = decode_at(s, word_begin, len);
    if (!is_opener(c)) break;
    word_begin += len;
  }
  const std::string_view word = s.substr(word_begin, run.begin - word_begin);
  if (word.empty()) return true;
  if (at_sentence_start && is_list_marker(word)) return false;
  // An enumeration flattened into one line ("1. 미성년자 2. 피성년후견인 3. ..."): each item is a
  // sentence, split before its marker rather than after it.
  if (unstripped_begin == word_begin && is_list_marker(word)) {
    // The first item must hold something: "J. K. Rowling" is initials, not items J and K.
    const std::string_view opening = leading_marker(s, start);
    if (!opening.empty() && skip_spaces(s, start + opening.size() + 1) < word_begin &&
        is_next_list_marker(opening, word)) {
      *item_begin = word_begin;
      return false;
    }
  }
  if (std::all_of(word.begin(), word.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return !(is_ascii_digit(first) || preceded_by_date_parts(s, word_begin));
  // An initial before a capitalised word (J. K. Rowling); "비타민 C. 다음" still ends there.
  if (word.size() == 1 && is_ascii_upper(static_cast<unsigned char>(word[0]))) return !is_ascii_upper(first);
  if (word.size() > 8) return true;  // longer than any abbreviation below
  std::string lower(word);
  for (char& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
  if (is_title_abbreviation(lower)) return false;
  if (is_number_abbreviation(lower)) return !is_ascii_digit(first);
  if (is_maybe_final_abbreviation(lower)) return is_ascii_upper(first) || first >= 0x80;
  return !is_dotted_acronym(word);
}

void push_trimmed(std::string_view s, size_t begin, size_t end, std::vector<std::string_view>& out) {
  begin = skip_spaces(s, begin);
  while (end > begin) {
    const char32_t c = decode_before(s, end);
    if (!is_space(c)) break;
    size_t back = 1;
    while (back < end - begin && (static_cast<unsigned char>(s[end - back]) & 0xC0) == 0x80) ++back;
    end -= back;
  }
  if (end > begin) out.push_back(s.substr(begin, end - begin));
}

}  // namespace

void split_sentences(std::string_view s, std::vector<std::string_view>& out) {
  const size_t n = s.size();
  size_t start = skip_spaces(s, 0);
  size_t i = start;
  while (i < n) {
    const auto b = static_cast<unsigned char>(s[i]);
    // Only these bytes can begin a terminator: . ? ! and the lead bytes of … ‼ 。 ？ ！ ．
    if (b != '.' && b != '?' && b != '!' && b != 0xE2 && b != 0xE3 && b != 0xEF) {
      ++i;
      continue;
    }
    size_t len;
    char32_t c = decode_at(s, i, len);
    if (!is_terminator(c)) {
      i += len;
      continue;
    }
    TerminatorRun run;
    run.begin = i;
    size_t j = i;
    while (j < n) {
      c = decode_at(s, j, len);
      if (!is_terminator(c)) break;
      run.dots += c == '.' || c == 0xFF0E;
      run.ellipsis_char |= c == 0x2026;
      run.question_or_exclaim |= is_question_or_exclaim(c);
      run.cjk |= is_cjk_terminator(c);
      j += len;
    }
    run.end = j;
    size_t after = j;
    while (after < n) {
      c = decode_at(s, after, len);
      if (!is_closer(c)) break;
      after += len;
    }
    size_t item_begin = std::string_view::npos;
    if (ends_sentence(s, start, run, after, &item_begin)) {
      push_trimmed(s, start, after, out);
      start = skip_spaces(s, after);
      i = start;
    } else {
      if (item_begin != std::string_view::npos) {
        push_trimmed(s, start, item_begin, out);
        start = item_begin;
      }
      i = after;
    }
  }
  push_trimmed(s, start, n, out);
}

std::vector<std::string> split_sentences(std::string_view paragraph) {
  std::vector<std::string_view> views;
  split_sentences(paragraph, views);
  return {views.begin(), views.end()};
}

}  // namespace bert
