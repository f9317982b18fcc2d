// The training data loader: memory-mapped shards -> padded, masked batches.
//
//  - Dataset: every shard of one split of a shard directory (manifest.json), validated on open
//    (magic, version, size, checksum, vocabulary size), addressed by one global example index.
//  - Epoch order: a permutation seeded by (seed, epoch), cut into global batches of R x batch_size
//    positions. Rank r of R takes the r-th block of batch_size positions of each: batch b of rank r
//    is batch b * R + r of a single rank with the same batch_size, so R ranks together see what one
//    rank sees over R micro-batches (gradient accumulation), and the ranks' slices are disjoint and
//    cover the epoch (less the tail that does not fill a global batch, when drop_last).
//  - Batch b of epoch e is a pure function of (seed, e, b, rank): a resumed run sees identical
//    batches. Masking is seeded by (seed, epoch, example index).
//  - A background thread prefetches the next batches.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/masking.h"
#include "data/shard.h"

namespace bert {

class Tokenizer;
class Json;
class Vocab;

// What bert_prepare records in manifest.json as "vocab_hash": hash64 of the vocabulary as loaded
// (vocab.txt's tokens, one per line, and the special tokens a tokenizer config names beyond them).
uint64_t vocabulary_hash(const Vocab& vocab);

// The "vocab_hash" of a manifest.json read from manifest_path: none when absent (older manifests),
// an error naming the file when it is not a decimal string.
std::optional<uint64_t> manifest_vocab_hash(const Json& manifest, const std::string& manifest_path);

// Throws unless the manifest's entry `index` for `shard` records its checksum and example count (each
// checked when present): a shard rewritten after its manifest (an interrupted build into the same
// directory) would otherwise mix two builds.
void check_manifest_entry(const Json& entry, size_t index, const Shard& shard, const std::string& manifest_path);

// Throws unless `recorded` (manifest_vocab_hash) is none or the hash of `vocab`, the vocabulary of the
// tokenizer in tokenizer_dir: token ids mean nothing under another vocabulary, even one of the same size.
void check_vocab_hash(std::optional<uint64_t> recorded, const std::string& manifest_path, const Vocab& vocab,
                      const std::string& tokenizer_dir);

class Dataset {
 public:
  // `dir`: a bert_prepare build output. expected_vocab_size 0 = do not check.
  Dataset(const std::string& dir, Split split, uint32_t expected_vocab_size = 0);
  // check_vocab_hash on this dataset's manifest.json.
  void check_vocabulary(const Vocab& vocab, const std::string& tokenizer_dir) const;
  size_t size() const { return total_; }
  uint32_t max_seq_len() const { return max_seq_len_; }
  uint32_t vocab_size() const { return vocab_size_; }
  // Global example i: its shard and local index.
  const Shard& shard_of(size_t i, size_t& local) const;
  size_t shard_count() const { return shards_.size(); }
  // What the examples are: a hash of every shard's checksum and example count, in order. Equal for the
  // same build wherever it lies; another build (other seed, corpus or settings) differs.
  uint64_t fingerprint() const;

 private:
  std::string manifest_path_;
  std::optional<uint64_t> vocab_hash_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<size_t> starts_;  // global index of each shard's first example
  size_t total_ = 0;
  uint32_t max_seq_len_ = 0, vocab_size_ = 0;
};

struct Batch {
  int batch_size = 0, seq_len = 0;
  uint64_t epoch = 0, index = 0;
  std::vector<int32_t> input_ids, token_type_ids, attention_mask;  // [batch_size, seq_len]
  std::vector<int32_t> labels;                                     // [batch_size, seq_len], -100 = ignore
  std::vector<int32_t> nsp_labels;                                 // [batch_size], 1 = random next
  std::vector<int32_t> masked_positions;  // flat b*seq_len+t of every selected token, ascending
  std::vector<int32_t> masked_labels;     // original ids at masked_positions
  std::vector<uint64_t> example_ids;      // global example index per row
  size_t real_tokens() const;
};

struct LoaderOptions {
  int batch_size = 32;
  int rank = 0, world_size = 1;
  uint64_t seed = 42;
  bool shuffle = true;
  bool drop_last = true;
  int fixed_length = 0;  // 0 = pad to the longest example of the batch
  int prefetch = 2;      // batches prepared ahead by the background thread (0 = none)
  MaskingOptions masking;
};

// Specials and "##" flags from a tokenizer, for masking.
MaskingVocab masking_vocab(const Tokenizer& tokenizer);

class Loader {
 public:
  Loader(const Dataset& dataset, MaskingVocab vocab, int32_t cls_id, int32_t sep_id, int32_t pad_id,
         LoaderOptions options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  size_t batches_per_epoch() const;
  // Builds batch `index` of `epoch` for this rank (no state; thread-safe).
  void make_batch(uint64_t epoch, size_t index, Batch& out) const;
  // Global example indices of this rank's batch.
  std::vector<uint64_t> batch_examples(uint64_t epoch, size_t index) const;

  // Sequential reading with prefetch, from (epoch, index) on; next() rolls over to the next epoch.
  void start(uint64_t epoch, size_t index);
  void next(Batch& out);

 private:
  const Dataset& dataset_;
  MaskingVocab vocab_;
  int32_t cls_id_, sep_id_, pad_id_;
  LoaderOptions options_;
  mutable std::mutex perm_mutex_;
  mutable uint64_t perm_epoch_ = UINT64_MAX;
  mutable std::vector<uint32_t> perm_;

  // prefetch state
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Batch> ready_;
  bool stop_ = false;
  uint64_t next_epoch_ = 0;
  size_t next_index_ = 0;
  uint64_t consume_epoch_ = 0;
  size_t consume_index_ = 0;
  void stop_worker();
  void advance(uint64_t& epoch, size_t& index) const;
  const std::vector<uint32_t>& permutation(uint64_t epoch) const;
};

}  // namespace bert
