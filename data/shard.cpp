#include "data/shard.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/error.h"

namespace bert {

const char* split_name(Split s) { return s == Split::kTrain ? "train" : "valid"; }

ShardWriter::ShardWriter(uint32_t vocab_size, uint32_t max_seq_len, Split split)
    : vocab_size_(vocab_size), max_seq_len_(max_seq_len), split_(split) {}

void ShardWriter::add(std::span<const int32_t> a, std::span<const int32_t> b, bool random_next) {
  if (a.size() + b.size() + 3 > max_seq_len_) throw Error("internal: example longer than max_seq_len");
  // What Shard's open checks, so a shard that was written can be read.
  if (a.empty() || b.empty()) throw Error("internal: an NSP example needs non-empty segments A and B");
  if (a.size() > UINT16_MAX) throw Error("internal: segment A longer than 65535 tokens");
  for (const auto segment : {a, b})
    for (const int32_t id : segment)
      if (id < 0 || static_cast<uint32_t>(id) >= vocab_size_)
        throw Error("internal: token id " + std::to_string(id) + " outside the vocabulary of " +
                    std::to_string(vocab_size_));
  tokens_.insert(tokens_.end(), a.begin(), a.end());
  tokens_.insert(tokens_.end(), b.begin(), b.end());
  offsets_.push_back(tokens_.size());
  a_lengths_.push_back(static_cast<uint16_t>(a.size()));
  labels_.push_back(random_next ? 1 : 0);
}

template <typename T>
static void append_pod(std::string& out, const T* data, size_t n) {
  out.append(reinterpret_cast<const char*>(data), n * sizeof(T));
}

ShardHeader ShardWriter::write(const std::string& path) const {
  ShardHeader h;
  h.token_width = vocab_size_ <= 65536 ? 2 : 4;
  h.vocab_size = vocab_size_;
  h.max_seq_len = max_seq_len_;
  h.example_count = a_lengths_.size();
  h.token_count = tokens_.size();
  h.split = split_;
  // Header and payload are built in one buffer (the header is filled in last, once the payload's
  // checksum is known), so the shard is copied once.
  std::string file(kShardHeaderBytes, '\0');
  file.reserve(kShardHeaderBytes + tokens_.size() * h.token_width + offsets_.size() * 8 + a_lengths_.size() * 3 + 8);
  if (h.token_width == 2) {
    const size_t at = file.size();
    file.resize(at + tokens_.size() * 2);
    auto* dst = reinterpret_cast<uint16_t*>(file.data() + at);
    for (size_t i = 0; i < tokens_.size(); ++i) dst[i] = static_cast<uint16_t>(tokens_[i]);
  } else {
    append_pod(file, tokens_.data(), tokens_.size());
  }
  file.append((8 - (file.size() - kShardHeaderBytes) % 8) % 8, '\0');
  append_pod(file, offsets_.data(), offsets_.size());
  append_pod(file, a_lengths_.data(), a_lengths_.size());
  append_pod(file, labels_.data(), labels_.size());
  h.checksum = hash64(file.data() + kShardHeaderBytes, file.size() - kShardHeaderBytes);

  char* p = file.data();
  std::memcpy(p, kShardMagic, 8);
  std::memcpy(p + 8, &h.version, 4);
  std::memcpy(p + 12, &h.token_width, 4);
  std::memcpy(p + 16, &h.vocab_size, 4);
  std::memcpy(p + 20, &h.max_seq_len, 4);
  std::memcpy(p + 24, &h.example_count, 8);
  std::memcpy(p + 32, &h.token_count, 8);
  std::memcpy(p + 40, &h.checksum, 8);
  const uint32_t split = static_cast<uint32_t>(h.split);
  std::memcpy(p + 48, &split, 4);
  write_file_atomic(path, file);
  return h;
}

Shard::Shard(const std::string& path, uint32_t expected_vocab_size, bool verify_checksum) : file_(path) {
  const std::string_view v = file_.view();
  auto fail = [&](const std::string& what) { throw Error(path + ": not a valid shard: " + what); };
  if (v.size() < kShardHeaderBytes) fail("file is " + std::to_string(v.size()) + " bytes, shorter than the header");
  if (std::memcmp(v.data(), kShardMagic, 8) != 0) fail("bad magic (expected BERTSHRD)");
  std::memcpy(&header_.version, v.data() + 8, 4);
  std::memcpy(&header_.token_width, v.data() + 12, 4);
  std::memcpy(&header_.vocab_size, v.data() + 16, 4);
  std::memcpy(&header_.max_seq_len, v.data() + 20, 4);
  std::memcpy(&header_.example_count, v.data() + 24, 8);
  std::memcpy(&header_.token_count, v.data() + 32, 8);
  std::memcpy(&header_.checksum, v.data() + 40, 8);
  uint32_t split = 0;
  std::memcpy(&split, v.data() + 48, 4);
  if (header_.version != kShardVersion)
    fail("format version " + std::to_string(header_.version) + ", this build reads version " +
         std::to_string(kShardVersion));
  if (header_.token_width != 2 && header_.token_width != 4) fail("token width must be 2 or 4 bytes");
  if (split > 1) fail("unknown split " + std::to_string(split));
  header_.split = static_cast<Split>(split);
  const uint64_t n = header_.example_count;
  // The header is outside the checksum: counts so large that the size arithmetic would wrap get their
  // own message rather than a size mismatch against a wrapped number.
  uint64_t token_bytes = 0, expected = 0;
  const bool overflow = __builtin_mul_overflow(header_.token_count, header_.token_width, &token_bytes) ||
                        token_bytes > UINT64_MAX - 8 || n > (UINT64_MAX - kShardHeaderBytes - 8) / 11 ||
                        __builtin_add_overflow(kShardHeaderBytes + (n + 1) * 8 + n * 2 + n,
                                               token_bytes + (8 - token_bytes % 8) % 8, &expected);
  if (overflow)
    fail(std::to_string(n) + " examples of " + std::to_string(header_.token_count) +
         " tokens in the header cannot fit in a file (corrupt header)");
  token_bytes += (8 - token_bytes % 8) % 8;
  if (v.size() != expected)
    fail("size " + std::to_string(v.size()) + " bytes, header implies " + std::to_string(expected) +
         " (truncated or corrupt)");
  const char* payload = v.data() + kShardHeaderBytes;
  if (verify_checksum && hash64(payload, v.size() - kShardHeaderBytes) != header_.checksum)
    fail("checksum mismatch (corrupt payload)");
  if (expected_vocab_size && header_.vocab_size != expected_vocab_size)
    throw Error(path + ": shard was built with a vocabulary of " + std::to_string(header_.vocab_size) +
                " tokens but the tokenizer has " + std::to_string(expected_vocab_size) +
                " (rebuild the shards with this tokenizer)");
  if (header_.token_width == 2) tokens16_ = reinterpret_cast<const uint16_t*>(payload);
  else tokens32_ = reinterpret_cast<const int32_t*>(payload);
  offsets_ = reinterpret_cast<const uint64_t*>(payload + token_bytes);
  a_lengths_ = reinterpret_cast<const uint16_t*>(payload + token_bytes + (n + 1) * 8);
  labels_ = reinterpret_cast<const uint8_t*>(payload + token_bytes + (n + 1) * 8 + n * 2);
  if (offsets_[0] != 0 || offsets_[n] != header_.token_count) fail("offsets do not cover the tokens");
  for (uint64_t i = 0; i < n; ++i) {
    if (offsets_[i + 1] < offsets_[i]) fail("offsets not increasing at example " + std::to_string(i));
    const uint64_t len = offsets_[i + 1] - offsets_[i];
    if (a_lengths_[i] == 0 || a_lengths_[i] >= len) fail("segment lengths invalid at example " + std::to_string(i));
    if (len + 3 > header_.max_seq_len) fail("example " + std::to_string(i) + " longer than max_seq_len");
    if (labels_[i] > 1) fail("NSP label not 0/1 at example " + std::to_string(i));
  }
  // An id outside the vocabulary fails the CPU embedding op mid-run and traps the GPU gather (the CUDA
  // context is lost, with no message): refuse it here, with the file and the example named.
  const uint64_t vocab = header_.vocab_size;
  for (uint64_t k = 0; k < header_.token_count; ++k) {
    const int64_t id = header_.token_width == 2 ? tokens16_[k] : tokens32_[k];
    if (id < 0 || static_cast<uint64_t>(id) >= vocab) {
      const uint64_t example = static_cast<uint64_t>(std::upper_bound(offsets_, offsets_ + n + 1, k) - offsets_) - 1;
      fail("token id " + std::to_string(id) + " of example " + std::to_string(example) + " is outside the " +
           std::to_string(vocab) + "-token vocabulary");
    }
  }
}

void Shard::example(size_t i, std::vector<int32_t>& a, std::vector<int32_t>& b) const {
  const uint32_t len = length(i), al = a_length(i);
  a.resize(al);
  b.resize(len - al);
  for (uint32_t j = 0; j < al; ++j) a[j] = token(i, j);
  for (uint32_t j = al; j < len; ++j) b[j - al] = token(i, j);
}

}  // namespace bert
