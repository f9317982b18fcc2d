#include "common/utf8.h"

namespace bert {

size_t utf8_decode(std::string_view in, std::u32string& out, size_t* first_bad_byte) {
  out.clear();
  out.reserve(in.size());
  size_t bad = 0;
  const auto* s = reinterpret_cast<const unsigned char*>(in.data());
  const size_t n = in.size();
  size_t i = 0;
  auto mark_bad = [&](size_t at) {
    if (bad == 0 && first_bad_byte) *first_bad_byte = at;
    ++bad;
    out.push_back(kReplacementChar);
  };
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      out.push_back(c);
      ++i;
      continue;
    }
    size_t need;
    char32_t cp;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte (WHATWG / Unicode 3.9)
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      cp = c & 0x0F;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      cp = c & 0x07;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      mark_bad(i);
      ++i;
      continue;
    }
    size_t j = 1;
    for (; j <= need; ++j) {
      if (i + j >= n) break;
      const unsigned char cc = s[i + j];
      if (j == 1 ? (cc < lo || cc > hi) : (cc < 0x80 || cc > 0xBF)) break;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (j <= need) {  // truncated or invalid continuation: one U+FFFD for the maximal prefix
      mark_bad(i);
      i += j;
      continue;
    }
    out.push_back(cp);
    i += need + 1;
  }
  return bad;
}

std::string utf8_encode(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size() * 3);
  for (char32_t cp : cps) utf8_append(out, cp);
  return out;
}

bool utf8_valid(std::string_view in) {
  std::u32string tmp;
  return utf8_decode(in, tmp) == 0;
}

std::optional<size_t> utf8_first_invalid(std::string_view in) {
  std::u32string tmp;
  size_t first = 0;
  if (utf8_decode(in, tmp, &first) == 0) return std::nullopt;
  return first;
}

}  // namespace bert
