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

// True if `in` is entirely valid UTF-8.
bool utf8_valid(std::string_view in);
// The byte offset of the first invalid sequence in `in`, or nullopt when it is all valid UTF-8.
std::optional<size_t> utf8_first_invalid(std::string_view in);

}  // namespace bert
