// UTF-8 <-> code points. Invalid input never throws here: decode() reports where the first bad
// byte was so the caller (who knows the file and line) can warn or fail.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace bert {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes `in` into `out` (cleared first). Each maximal invalid subsequence becomes U+FFFD, as
// Python's and Rust's lossy decoders do. Returns the number of invalid sequences; if non-zero,
// *first_bad_byte is the byte offset of the first one.
size_t utf8_decode(std::string_view in, std::u32string& out, size_t* first_bad_byte = nullptr);

// Appends the UTF-8 encoding of `cp` to `out`.
inline void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view cps);

// `in` with each maximal invalid subsequence replaced by U+FFFD (utf8_decode's rule), into `out`;
// returns the number replaced.
size_t utf8_repair(std::string_view in, std::string& out);

// True if `in` is entirely valid UTF-8.
bool utf8_valid(std::string_view in);
// The byte offset of the first invalid sequence in `in`, or nullopt when it is all valid UTF-8.
std::optional<size_t> utf8_first_invalid(std::string_view in);

// Why a file whose first bytes are `head` (the first 64 KiB are judged, as git and grep judge a
// binary file) is not UTF-8 text, or "" when it may be. `whole`: head is the entire file (else its
// last, possibly cut, line is not judged). Reasons: a binary format's magic number (a bert_prepare
// shard, gzip where the reader does not decompress, bzip2, xz, zstd, zip, PDF), UTF-16 (a byte-order
// mark, or NULs in one code unit of 8 and text-like units), a NUL byte, or more invalid than valid
// non-ASCII sequences (32 at least: EUC-KR/CP949 or Latin-1 text). A few bad bytes in real text are
// no reason: readers replace those and warn. The reason names the fix ("iconv -f CP949 -t UTF-8").
inline constexpr size_t kTextSniffBytes = size_t{64} << 10;
std::string utf8_text_problem(std::string_view head, bool whole);

}  // namespace bert
