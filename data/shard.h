// The shard format: NSP examples as token ids, little-endian, memory-mappable.
//
//   header (64 bytes)
//     char     magic[8]        "BERTSHRD"
//     u32      version         1
//     u32      token_width     2 or 4 (bytes per id; 2 when vocab_size <= 65536)
//     u32      vocab_size
//     u32      max_seq_len     every example has len(A) + len(B) + 3 <= max_seq_len
//     u64      example_count
//     u64      token_count     A and B tokens, no [CLS]/[SEP]
//     u64      checksum        hash64 of the payload (everything after the header)
//     u32      split           0 = train, 1 = validation
//     u8[12]   reserved (0)
//   payload
//     tokens       token_count * token_width, zero-padded to a multiple of 8 bytes
//     offsets      u64[example_count + 1]   example i = tokens[offsets[i], offsets[i+1])
//     a_lengths    u16[example_count]       the first a_lengths[i] tokens are segment A
//     nsp_labels   u8[example_count]        1 = B is a random next sentence (HF's label)
//
// Examples are stored without special tokens; the loader adds [CLS] A [SEP] B [SEP].
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/file.h"
#include "common/hash.h"

namespace bert {

inline constexpr char kShardMagic[8] = {'B', 'E', 'R', 'T', 'S', 'H', 'R', 'D'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 64;

enum class Split : uint32_t { kTrain = 0, kValid = 1 };
const char* split_name(Split s);

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t token_width = 2;
  uint32_t vocab_size = 0;
  uint32_t max_seq_len = 0;
  uint64_t example_count = 0;
  uint64_t token_count = 0;
  uint64_t checksum = 0;
  Split split = Split::kTrain;
};

// Accumulates examples in memory, then writes one shard atomically.
class ShardWriter {
 public:
  ShardWriter(uint32_t vocab_size, uint32_t max_seq_len, Split split);
  void add(std::span<const int32_t> a, std::span<const int32_t> b, bool random_next);
  size_t examples() const { return a_lengths_.size(); }
  size_t tokens() const { return tokens_.size(); }
  // Writes to `path` (temp file + rename). Returns the header written.
  ShardHeader write(const std::string& path) const;

 private:
  uint32_t vocab_size_, max_seq_len_;
  Split split_;
  std::vector<int32_t> tokens_;
  std::vector<uint64_t> offsets_{0};
  std::vector<uint16_t> a_lengths_;
  std::vector<uint8_t> labels_;
};

// A memory-mapped shard, validated on open: magic, version, sizes, checksum, and (when
// expected_vocab_size > 0) the vocabulary size. Errors name the file and what is wrong.
class Shard {
 public:
  explicit Shard(const std::string& path, uint32_t expected_vocab_size = 0, bool verify_checksum = true);

  const ShardHeader& header() const { return header_; }
  const std::string& path() const { return file_.path(); }
  size_t size() const { return static_cast<size_t>(header_.example_count); }
  uint32_t length(size_t i) const { return static_cast<uint32_t>(offsets_[i + 1] - offsets_[i]); }
  uint32_t a_length(size_t i) const { return a_lengths_[i]; }
  uint8_t nsp_label(size_t i) const { return labels_[i]; }
  // Token id j of example i.
  int32_t token(size_t i, size_t j) const {
    const uint64_t k = offsets_[i] + j;
    return header_.token_width == 2 ? static_cast<int32_t>(tokens16_[k]) : tokens32_[k];
  }
  // Copies example i's A and B ids.
  void example(size_t i, std::vector<int32_t>& a, std::vector<int32_t>& b) const;

 private:
  MappedFile file_;
  ShardHeader header_;
  const uint16_t* tokens16_ = nullptr;
  const int32_t* tokens32_ = nullptr;
  const uint64_t* offsets_ = nullptr;
  const uint16_t* a_lengths_ = nullptr;
  const uint8_t* labels_ = nullptr;
};

}  // namespace bert
