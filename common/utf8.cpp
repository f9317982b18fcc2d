#include "common/utf8.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>

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

size_t utf8_repair(std::string_view in, std::string& out) {
  std::u32string cps;
  const size_t invalid = utf8_decode(in, cps);
  out = utf8_encode(cps);
  return invalid;
}

bool utf8_valid(std::string_view in) { return !utf8_first_invalid(in).has_value(); }

// utf8_decode's rules without decoding: no allocation (the JSON reader checks every string it reads,
// a safetensors header may be 100 MB), ASCII eight bytes at a time.
std::optional<size_t> utf8_first_invalid(std::string_view in) {
  const auto* s = reinterpret_cast<const unsigned char*>(in.data());
  const size_t n = in.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, s + i, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + need >= n) return i;
    for (size_t j = 1; j <= need; ++j) {
      const unsigned char cc = s[i + j];
      if (j == 1 ? (cc < lo || cc > hi) : (cc < 0x80 || cc > 0xBF)) return i;
    }
    i += need + 1;
  }
  return std::nullopt;
}

namespace {

// "UTF-16LE" or "UTF-16BE": the byte order in which at least 90% of head's code units (at least
// `min_units` of them) pass `accept`, else nullptr.
template <typename Accept>
const char* utf16_order_where(std::string_view head, size_t min_units, Accept accept) {
  const size_t units = head.size() / 2;
  if (units < min_units) return nullptr;
  for (const bool little : {true, false}) {
    size_t accepted = 0;
    for (size_t k = 0; k < units; ++k) {
      const auto lo = static_cast<unsigned char>(head[2 * k + (little ? 0 : 1)]);
      const auto hi = static_cast<unsigned char>(head[2 * k + (little ? 1 : 0)]);
      accepted += accept(static_cast<unsigned>(hi << 8 | lo));
    }
    if (accepted * 10 >= units * 9) return little ? "UTF-16LE" : "UTF-16BE";
  }
  return nullptr;
}

// The byte order in which `head` (NUL bytes in it) reads as text: its code units text-like (ASCII,
// Latin, Greek, Cyrillic, general punctuation, CJK and Hangul syllables, fullwidth forms). NULs alone do
// not tell: ASCII puts them on one side of each unit, and common syllables such as 가 (U+AC00) and 대
// (U+B300) on the other.
const char* utf16_order(std::string_view head) {
  return utf16_order_where(head, 2, [](unsigned u) {
    return u == 0x09 || u == 0x0A || u == 0x0D || (u >= 0x20 && u < 0x7F) || (u >= 0xA0 && u < 0x530) ||
           (u >= 0x2000 && u < 0x2070) || (u >= 0x3000 && u < 0xA000) || (u >= 0xAC00 && u <= 0xD7A3) ||
           (u >= 0xFF00 && u < 0xFFF0);
  });
}

// The byte order in which head's code units are Hangul syllables: Korean text without spaces or digits
// has few NULs (only syllables such as 가, U+AC00, give one) or none, too few for utf16_order's test.
// Neither ASCII (units below U+7F00) nor UTF-8 Korean (its 3-byte characters fall across the units)
// comes near 90%.
const char* utf16_hangul_order(std::string_view head) {
  return utf16_order_where(head, 8, [](unsigned u) { return u >= 0xAC00 && u <= 0xD7A3; });
}

}  // namespace

std::string utf8_text_problem(std::string_view head, bool whole) {
  if (head.size() > kTextSniffBytes) {
    head = head.substr(0, kTextSniffBytes);
    whole = false;
  }
  const auto starts = [&](std::string_view magic) { return head.substr(0, magic.size()) == magic; };
  if (starts("BERTSHRD")) return "a bert_prepare shard (binary), not text";
  if (starts("\x1f\x8b")) return "gzip-compressed; decompress it (gunzip)";
  // bzip2: "BZh" and a block size digit, then a block's magic (pi) or, for an empty stream, the end's
  // (sqrt pi); text such as "BZh9 is the block size" is text.
  if (starts("BZh") && head.size() >= 10 && head[3] >= '1' && head[3] <= '9' &&
      (head.substr(4, 6) == "1AY&SY" || head.substr(4, 6) == "\x17\x72\x45\x38\x50\x90"))
    return "bzip2-compressed; decompress it (bunzip2)";
  if (starts(std::string_view("\xfd"
                              "7zXZ\0",
                              6)))
    return "xz-compressed; decompress it (unxz)";
  if (starts("\x28\xb5\x2f\xfd")) return "zstd-compressed; decompress it (unzstd)";
  if (starts("PK\x03\x04")) return "a zip archive; extract its text files (unzip)";
  // A PDF: "%PDF-1.7" alone on the first line, or "%PDF-" and, within the first bytes, binary data
  // (the marker comment writers put on the second line, streams) or an object; "%PDF-1.7 is a file
  // format version" is text.
  if (starts("%PDF-")) {
    std::string_view lines = head.substr(0, 1024);
    if (lines.size() == 1024) {  // not a character cut at the window's end
      if (const size_t nl = lines.rfind('\n'); nl != std::string_view::npos) {
        lines = lines.substr(0, nl + 1);
      } else {
        size_t cut = lines.size();
        while (cut > 0 && cut > lines.size() - 4 && (static_cast<unsigned char>(lines[cut - 1]) & 0xC0) == 0x80) --cut;
        if (cut > 0 && static_cast<unsigned char>(lines[cut - 1]) >= 0xC0) lines = lines.substr(0, cut - 1);
      }
    }
    std::u32string cps;
    const std::string_view first = head.substr(0, head.find_first_of("\r\n"));
    const bool header_alone = first.size() == 8 && std::isdigit(static_cast<unsigned char>(first[5])) &&
                              first[6] == '.' && std::isdigit(static_cast<unsigned char>(first[7]));
    if (header_alone || head.find(" obj") != std::string_view::npos || head.find('\0') != std::string_view::npos ||
        utf8_decode(lines, cps) > 0)
      return "a PDF; extract its text first (pdftotext)";
  }
  if (starts("\xff\xfe") || starts("\xfe\xff"))
    return "UTF-16 text (it starts with a UTF-16 byte-order mark); convert it: iconv -f UTF-16 -t UTF-8";
  if (const void* nul = std::memchr(head.data(), 0, head.size())) {
    const size_t at = static_cast<size_t>(static_cast<const char*>(nul) - head.data());
    const auto nuls = static_cast<size_t>(std::count(head.begin(), head.end(), '\0'));
    // UTF-16 has many: its spaces, digits and punctuation give one in every few code units. (A stray
    // NUL in ASCII text must not pass: pairs of ASCII bytes read as UTF-16 are CJK, "text-like".)
    const char* order = nuls >= 4 && nuls * 16 >= head.size() ? utf16_order(head) : nullptr;
    if (!order) order = utf16_hangul_order(head);
    if (order)
      return std::string("UTF-16 text without a byte-order mark, it seems; convert it: iconv -f ") + order +
             " -t UTF-8";
    std::string why = "binary data (a NUL byte at offset " + std::to_string(at) + "), not text";
    if (nuls * 100 < head.size()) why += "; if it is text with stray NUL bytes, remove them: tr -d '\\000'";
    return why;
  }
  if (!whole) {  // the window may end inside a character
    const size_t nl = head.rfind('\n');
    if (nl != std::string_view::npos) head = head.substr(0, nl + 1);
  }
  std::u32string cps;
  const size_t invalid = utf8_decode(head, cps);
  size_t non_ascii = 0;
  for (const char32_t c : cps) non_ascii += c >= 0x80;
  const size_t valid = non_ascii - invalid;  // each invalid sequence decoded to one U+FFFD
  // Hangul in UTF-16LE with no syllable that has a zero byte: no NUL at all. (Not UTF-16BE: EUC-KR's
  // Hangul, read as big-endian units, falls in the Hangul syllables too; read as little-endian, half of
  // it does not.)
  if (invalid >= 32 && invalid > valid) {
    if (const char* order = utf16_hangul_order(head); order && std::string_view(order) == "UTF-16LE")
      return "UTF-16 text without a byte-order mark, it seems; convert it: iconv -f UTF-16LE -t UTF-8";
    return "not UTF-8 text (" + std::to_string(invalid) + " of the first " + std::to_string(non_ascii) +
           " non-ASCII characters are invalid UTF-8); convert it, e.g. Korean in EUC-KR/CP949: iconv -f CP949 -t "
           "UTF-8";
  }
  return "";
}

}  // namespace bert
