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

// 16 lower-case hex digits, and back (nullopt unless exactly 16 hex digits).
std::string hex64(uint64_t value);
std::optional<uint64_t> parse_hex64(std::string_view text);

}  // namespace bert
