#include "common/utf8.h"

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

std::string utf8_text_problem(std::string_view head, bool whole) {
  if (head.size() > kTextSniffBytes) {
    head = head.substr(0, kTextSniffBytes);
    whole = false;
  }
  const auto starts = [&](std::string_view magic) { return head.substr(0, magic.size()) == magic; };
  if (starts("BERTSHRD")) return "a bert_prepare shard (binary), not text";
  if (starts("\x1f\x8b")) return "gzip-compressed, and this command reads plain text: decompress it (gunzip)";
  if (starts("BZh") && head.size() > 3 && head[3] >= '1' && head[3] <= '9')
    return "bzip2-compressed; only gzip is read: decompress it (bunzip2)";
  if (starts(std::string_view("\xfd"
                              "7zXZ\0",
                              6)))
    return "xz-compressed; only gzip is read: decompress it (unxz)";
  if (starts("\x28\xb5\x2f\xfd")) return "zstd-compressed; only gzip is read: decompress it (unzstd)";
  if (starts("PK\x03\x04")) return "a zip archive; extract its text files (unzip)";
  if (starts("%PDF-")) return "a PDF; extract its text first (pdftotext)";
  if (starts("\xff\xfe") || starts("\xfe\xff"))
    return "UTF-16 text (it starts with a UTF-16 byte-order mark); convert it: iconv -f UTF-16 -t UTF-8";
  if (const void* nul = std::memchr(head.data(), 0, head.size())) {
    const size_t at = static_cast<size_t>(static_cast<const char*>(nul) - head.data());
    size_t nuls = 0;
    for (const char c : head) nuls += c == 0;
    std::string why = "binary data (a NUL byte at offset " + std::to_string(at) + "), not text";
    if (nuls * 4 >= head.size()) why += "; if it is UTF-16 text, convert it: iconv -f UTF-16 -t UTF-8";
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
  if (invalid >= 32 && invalid > valid)
    return "not UTF-8 text (" + std::to_string(invalid) + " of the first " + std::to_string(non_ascii) +
           " non-ASCII characters are invalid UTF-8); convert it, e.g. Korean in EUC-KR/CP949: iconv -f CP949 -t "
           "UTF-8";
  return "";
}

}  // namespace bert
