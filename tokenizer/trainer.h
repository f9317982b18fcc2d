// WordPiece trainer = HF's WordPieceTrainer (a BpeTrainer with the "##" prefix) made deterministic
// and scalable. Semantics: ../shared/REFERENCES.md ("Trainer").
//
// 1. count words (normalised + pre-tokenised) on all threads into hash tables sharded by hash: memory
//    is O(distinct words), counts are 64-bit (HF's pair counts are i32 and overflow past 2^31);
// 2. vocabulary = special tokens, alphabet sorted by code point (optionally the limit_alphabet most
//    frequent), then the "##c" forms sorted by code point (HF adds them in hash-map order: the
//    nondeterminism REFERENCES.md mentions);
// 3. merges exactly as BpeTrainer: a max-heap of (count, pair) with smaller pair ids first on ties,
//    lazy count refresh, "a" + "##b" -> "ab", stop at vocab_size, an empty queue or count <
//    min_frequency. The heap entries carry the words they came from, as HF's do (in one pool).
// Memory (bench/RESULTS.md): the word table is let go before the merges' tables are built, which
// hold ~50-75 bytes per distinct pair and 4 per (pair, word).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/normalizer.h"
#include "tokenizer/vocab.h"

namespace bert {

// Distinct words with 64-bit counts: 64 open-addressing tables by the words' hashes, each with its
// keys packed in an arena of its own. Shards keep growth (a table and its double, briefly) and the
// merge of the counting threads' tables to one shard's worth of memory at a time.
class WordCounts {
 public:
  static constexpr int kShardBits = 6;
  WordCounts();
  // A moved-from table is empty and usable.
  WordCounts(WordCounts&& other) noexcept;
  WordCounts& operator=(WordCounts&& other) noexcept;
  void add(std::string_view word, uint64_t count = 1);
  // Moves the words of `others` into this table, shard by shard on up to `threads` threads, freeing
  // each of their shards once merged (`others` end empty, as if just constructed).
  void merge_from(std::vector<WordCounts>& others, size_t threads = 1);
  size_t distinct() const { return used_; }
  uint64_t total() const { return total_; }
  // Calls f(word, count) for every word, in no particular order (it depends on the order of adds).
  template <typename F>
  void for_each(F&& f) const {
    for (const Shard& shard : shards_)
      for (const Slot& s : shard.slots)
        if (s.count) f(std::string_view(shard.arena.data() + s.offset, s.length), s.count);
  }

 private:
  struct Slot {
    uint64_t count;  // 0 = empty
    uint64_t offset;
    uint32_t hash;  // the low half of the word's hash; its top bits chose the shard
    uint32_t length;
  };
  struct Shard {
    std::vector<Slot> slots;
    std::string arena;
    size_t used = 0;
    void add(uint32_t hash, std::string_view word, uint64_t count);
    void grow();
  };
  std::vector<Shard> shards_;
  size_t used_ = 0;
  uint64_t total_ = 0;
};

struct CountOptions {
  NormalizerOptions normalizer;
  int threads = 0;  // 0 = all hardware threads
  // Called now and then from the counting threads' coordinator: bytes read so far, words so far.
  std::function<void(uint64_t bytes, uint64_t words)> progress;
  // Called for lines with invalid UTF-8 (file, 1-based line, byte offset in line); they are decoded
  // lossily (each bad sequence becomes U+FFFD, which clean_text removes).
  std::function<void(const std::string& file, size_t line, size_t byte)> on_invalid_utf8;
};

struct CountStats {
  uint64_t bytes = 0, lines = 0, invalid_utf8_lines = 0;
};

// Counts the words of every line of `files` (memory-mapped, a pipe read whole; chunks of lines spread
// over threads). A file that is not UTF-8 text (utf8_text_problem) is a bert::Error naming it.
WordCounts count_words(const std::vector<std::string>& files, const CountOptions& options, CountStats* stats = nullptr);

struct TrainerOptions {
  size_t vocab_size = 30000;
  uint64_t min_frequency = 2;
  std::optional<size_t> limit_alphabet;  // unset: every character seen is kept
  std::vector<std::string> special_tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  std::string continuing_subword_prefix = "##";
  std::function<void(size_t merges_done, size_t vocab_now)> progress;
};

struct TrainStats {
  size_t alphabet = 0, continuation_forms = 0, merges = 0, dropped_characters = 0;
  size_t pool_compactions = 0;  // times the merges' word lists were compacted (memory, not results)
  size_t pool_growths = 0;      // times their pool outgrew its first reservation
  std::string stop_reason;
};

// Throws bert::Error when there is nothing to learn from or vocab_size cannot hold the alphabet.
Vocab train_wordpiece(const WordCounts& counts, const TrainerOptions& options, TrainStats* stats = nullptr);
// The same, emptying `counts` as soon as the words are decoded, before the merges' tables are built
// (the word table is the largest thing alive until then: ~0.9 GB for 10M distinct words).
Vocab train_wordpiece(WordCounts&& counts, const TrainerOptions& options, TrainStats* stats = nullptr);

}  // namespace bert
