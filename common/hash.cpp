#include "common/hash.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace bert {

uint64_t hash64(const void* data, size_t bytes) {
  Hash64 hash(bytes);
  hash.update(data, bytes);
  return hash.value();
}

Hash64::Hash64(size_t total_bytes)
    : h_(0x9E3779B97F4A7C15ull ^ (total_bytes * 0xFF51AFD7ED558CCDull)), total_(total_bytes) {}

void Hash64::update(const void* data, size_t bytes) {
  if (seen_ % 8 != 0 || bytes > total_ - seen_)
    throw std::logic_error("Hash64::update: a piece after one that was not a multiple of 8 bytes, or past the total");
  const auto* p = static_cast<const unsigned char*>(data);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    w *= 0x87C37B91114253D5ull;
    w = (w << 31) | (w >> 33);
    h_ ^= w * 0x4CF5AD432745937Full;
    h_ = ((h_ << 27) | (h_ >> 37)) * 5 + 0x52DCE729;
  }
  if (i < bytes) std::memcpy(&tail_, p + i, bytes - i);
  seen_ += bytes;
}

uint64_t Hash64::value() const {
  if (seen_ != total_) throw std::logic_error("Hash64::value: " + std::to_string(total_ - seen_) + " bytes not hashed");
  uint64_t h = h_ ^ tail_ * 0x87C37B91114253D5ull;
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  return h;
}

std::string hex64(uint64_t value) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, value >>= 4) s[static_cast<size_t>(i)] = kDigits[value & 15];
  return s;
}

std::optional<uint64_t> parse_hex64(std::string_view text) {
  if (text.size() != 16) return std::nullopt;
  uint64_t value = 0;
  for (const char c : text) {
    int digit;
    if (c >= '0' && c <= '9')
      digit = c - '0';
    else if (c >= 'a' && c <= 'f')
      digit = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      digit = c - 'A' + 10;
    else
      return std::nullopt;
    value = value << 4 | static_cast<uint64_t>(digit);
  }
  return value;
}

}  // namespace bert
