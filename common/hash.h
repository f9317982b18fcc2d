// hash64: a fast, non-cryptographic 64-bit hash of a byte range (8 bytes at a time). It catches
// damage, not tampering: the shard checksum, the manifest's vocab_hash, the checkpoint data checksum
// (engine/safetensors.h), the replicas' agreement check.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace bert {

uint64_t hash64(const void* data, size_t bytes);

// The same hash over a range given in pieces (a file hashed a window at a time): the total length up
// front (it seeds the state), then update() with each piece in order, every one but the last a
// multiple of 8 bytes long (std::logic_error otherwise), then value() once all of them are in.
class Hash64 {
 public:
  explicit Hash64(size_t total_bytes);
  void update(const void* data, size_t bytes);
  uint64_t value() const;

 private:
  uint64_t h_;
  size_t total_, seen_ = 0;
  uint64_t tail_ = 0;  // the last 1-7 bytes, once the piece holding them is in
};

// 16 lower-case hex digits, and back (nullopt unless exactly 16 hex digits).
std::string hex64(uint64_t value);
std::optional<uint64_t> parse_hex64(std::string_view text);

}  // namespace bert
