#include "tokenizer/trainer.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include "common/error.h"
#include "common/file.h"
#include "common/parallel.h"
#include "common/utf8.h"
#include "tokenizer/pretokenizer.h"

namespace bert {

// ---------------------------------------------------------------------------------------------
// Word counting

static uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, then a final mix
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

WordCounts::WordCounts() : shards_(size_t{1} << kShardBits) {
  for (Shard& shard : shards_) shard.slots.assign(64, Slot{0, 0, 0, 0});
}

void WordCounts::Shard::grow() {
  std::vector<Slot> old = std::move(slots);
  slots.assign(old.size() * 2, Slot{0, 0, 0, 0});
  const uint64_t mask = slots.size() - 1;
  for (const Slot& s : old) {
    if (!s.count) continue;
    uint64_t i = s.hash & mask;
    while (slots[i].count) i = (i + 1) & mask;
    slots[i] = s;
  }
}

void WordCounts::Shard::add(uint32_t hash, std::string_view word, uint64_t count) {
  const uint64_t mask = slots.size() - 1;
  for (uint64_t i = hash & mask;; i = (i + 1) & mask) {
    Slot& s = slots[i];
    if (!s.count) {
      if (word.size() > UINT32_MAX)
        throw Error("a word of " + std::to_string(word.size()) + " bytes: words are at most 4 GB");
      s = Slot{count, arena.size(), hash, static_cast<uint32_t>(word.size())};
      arena.append(word);
      if (++used * 2 > slots.size()) grow();
      return;
    }
    if (s.hash == hash && s.length == word.size() &&
        std::memcmp(arena.data() + s.offset, word.data(), word.size()) == 0) {
      s.count += count;
      return;
    }
  }
}

WordCounts::WordCounts(WordCounts&& other) noexcept
    : shards_(std::move(other.shards_)), used_(std::exchange(other.used_, 0)), total_(std::exchange(other.total_, 0)) {
  other.shards_.clear();
}

WordCounts& WordCounts::operator=(WordCounts&& other) noexcept {
  shards_ = std::move(other.shards_);
  other.shards_.clear();
  used_ = std::exchange(other.used_, 0);
  total_ = std::exchange(other.total_, 0);
  return *this;
}

void WordCounts::add(std::string_view word, uint64_t count) {
  if (count == 0) return;
  if (shards_.empty()) *this = WordCounts();  // moved from
  total_ += count;
  const uint64_t h = hash_bytes(word);
  Shard& shard = shards_[h >> (64 - kShardBits)];
  const size_t before = shard.used;
  shard.add(static_cast<uint32_t>(h), word, count);
  used_ += shard.used - before;
}

void WordCounts::merge_from(std::vector<WordCounts>& others, size_t threads) {
  if (shards_.empty()) *this = WordCounts();  // moved from
  std::atomic<size_t> next{0};
  run_parallel(std::max<size_t>(1, std::min(threads, shards_.size())), [&](size_t) {
    for (size_t k = next++; k < shards_.size(); k = next++) {
      Shard& into = shards_[k];
      for (WordCounts& other : others) {
        if (other.shards_.empty()) continue;  // moved from: nothing in it
        Shard& from = other.shards_[k];
        for (const Slot& s : from.slots)
          if (s.count) into.add(s.hash, std::string_view(from.arena.data() + s.offset, s.length), s.count);
        from = Shard{};
        from.slots.assign(64, Slot{0, 0, 0, 0});
      }
    }
  });
  used_ = 0;
  for (const Shard& shard : shards_) used_ += shard.used;
  for (WordCounts& other : others) {
    total_ += other.total_;
    other.total_ = 0;
    other.used_ = 0;
  }
}

namespace {

struct Chunk {
  size_t file;
  size_t begin, end;  // byte range, ending after a '\n' (or at EOF)
};

}  // namespace

WordCounts count_words(const std::vector<std::string>& files, const CountOptions& options, CountStats* stats) {
  std::vector<MappedFile> maps;
  maps.reserve(files.size());
  for (const auto& f : files) {
    maps.emplace_back(f);
    const std::string_view v = maps.back().view();
    const std::string problem = utf8_text_problem(v.substr(0, kTextSniffBytes), v.size() <= kTextSniffBytes);
    if (!problem.empty()) throw Error(f + ": " + problem);
  }

  constexpr size_t kChunkBytes = 4 << 20;
  std::vector<Chunk> chunks;
  uint64_t total_bytes = 0;
  for (size_t f = 0; f < maps.size(); ++f) {
    const std::string_view v = maps[f].view();
    total_bytes += v.size();
    size_t pos = 0;
    while (pos < v.size()) {
      size_t end = std::min(v.size(), pos + kChunkBytes);
      if (end < v.size()) {
        const size_t nl = v.find('\n', end);
        end = nl == std::string_view::npos ? v.size() : nl + 1;
      }
      chunks.push_back({f, pos, end});
      pos = end;
    }
  }

  int threads = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = std::max(1, std::min<int>(threads, static_cast<int>(std::max<size_t>(1, chunks.size()))));
  std::vector<WordCounts> local(static_cast<size_t>(threads));
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> bytes_done{0}, words_done{0}, lines_done{0}, bad_lines{0};
  struct BadLine {
    size_t file, offset_of_line, byte_in_line;
  };
  std::mutex bad_mutex;
  std::vector<BadLine> bad_samples;
  const BertNormalizer normalizer(options.normalizer);

  auto worker = [&](size_t t) {
    WordCounts& counts = local[t];
    std::u32string decoded, normalized;
    std::string word;
    for (size_t c = next++; c < chunks.size(); c = next++) {
      const Chunk& ch = chunks[c];
      const std::string_view text = maps[ch.file].view().substr(ch.begin, ch.end - ch.begin);
      uint64_t words = 0, lines = 0;
      size_t pos = 0;
      while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        if (nl == std::string_view::npos) nl = text.size();
        const std::string_view line = text.substr(pos, nl - pos);
        size_t first_bad = 0;
        if (utf8_decode(line, decoded, &first_bad) != 0) {
          ++bad_lines;
          std::lock_guard<std::mutex> lock(bad_mutex);
          if (bad_samples.size() < 16) bad_samples.push_back({ch.file, ch.begin + pos, first_bad});
        }
        normalizer.normalize(decoded, normalized);
        const std::u32string_view norm = normalized;
        bert_pre_tokenize(norm, [&](WordSpan w) {
          word.clear();
          for (size_t i = w.begin; i < w.end; ++i) utf8_append(word, norm[i]);
          counts.add(word);
          ++words;
        });
        ++lines;
        pos = nl + 1;
      }
      bytes_done += text.size();
      maps[ch.file].release(ch.begin, ch.end);  // drop counted pages from RSS
      words_done += words;
      lines_done += lines;
    }
  };

  if (options.progress) {
    // A thread of its own reports while the others count.
    std::atomic<bool> done{false};
    std::thread reporter([&] {
      while (!done) {
        options.progress(bytes_done.load(), words_done.load());
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    });
    try {
      run_parallel(static_cast<size_t>(threads), worker);
    } catch (...) {
      done = true;
      reporter.join();
      throw;
    }
    done = true;
    reporter.join();
    options.progress(bytes_done.load(), words_done.load());
  } else {
    run_parallel(static_cast<size_t>(threads), worker);
  }

  // Merge the smaller tables into the largest.
  std::sort(local.begin(), local.end(), [](const WordCounts& a, const WordCounts& b) { return a.distinct() > b.distinct(); });
  WordCounts merged = std::move(local[0]);
  local.erase(local.begin());
  merged.merge_from(local, static_cast<size_t>(threads));
  local.clear();

  if (options.on_invalid_utf8) {
    std::sort(bad_samples.begin(), bad_samples.end(), [](const BadLine& a, const BadLine& b) {
      return a.file != b.file ? a.file < b.file : a.offset_of_line < b.offset_of_line;
    });
    for (const BadLine& b : bad_samples) {
      const std::string_view v = maps[b.file].view();
      const size_t line = 1 + static_cast<size_t>(std::count(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(b.offset_of_line), '\n'));
      options.on_invalid_utf8(files[b.file], line, b.byte_in_line);
    }
  }
  if (stats) {
    stats->bytes = total_bytes;
    stats->lines = lines_done;
    stats->invalid_utf8_lines = bad_lines;
  }
  return merged;
}

// ---------------------------------------------------------------------------------------------
// BPE merges (BpeTrainer semantics)

namespace {

using PairKey = uint64_t;
inline PairKey pair_key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }
inline uint32_t pair_first(PairKey p) { return static_cast<uint32_t>(p >> 32); }
inline uint32_t pair_second(PairKey p) { return static_cast<uint32_t>(p); }

// A heap entry. The words it was created from (HF's `pos`) are pool[begin, begin + length) of one
// flat pool shared by all entries: no allocation per pair (a vector each cost ~70 bytes a pair
// beside its contents, with millions of pairs).
struct Merge {
  uint64_t count;
  PairKey pair;
  uint64_t begin;
  uint64_t length;
};

// Max-heap order: larger count first; on ties the smaller pair (HF: other.pair.cmp(&self.pair)).
struct MergeLess {
  bool operator()(const Merge& x, const Merge& y) const {
    if (x.count != y.count) return x.count < y.count;
    return x.pair > y.pair;
  }
};

struct Change {
  PairKey pair;
  int32_t delta;
};

// Pair -> 64-bit count, open addressing, grow-only (BpeTrainer never forgets a pair). Several
// times faster and smaller than std::unordered_map at tens of millions of pairs.
class PairCounts {
 public:
  PairCounts() { resize(1 << 16); }
  int64_t& operator[](PairKey key) {
    uint64_t i = slot(key);
    if (keys_[i] == kEmpty) {
      if ((used_ + 1) * 4 > keys_.size() * 3) {
        resize(keys_.size() * 2);
        i = slot(key);
      }
      keys_[i] = key;
      ++used_;
    }
    return values_[i];
  }
  int64_t get(PairKey key) const {
    const uint64_t i = slot(key);
    return keys_[i] == kEmpty ? 0 : values_[i];
  }
  size_t size() const { return used_; }
  template <typename F>
  void for_each(F&& f) const {
    for (size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i] != kEmpty) f(keys_[i], values_[i]);
  }

 private:
  static constexpr PairKey kEmpty = ~0ull;  // never a real pair: ids are < 2^32 - 1
  std::vector<PairKey> keys_;
  std::vector<int64_t> values_;
  size_t used_ = 0;
  uint64_t slot(PairKey key) const {
    const uint64_t mask = keys_.size() - 1;
    uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> 20 & mask;
    while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask;
    return i;
  }
  void resize(size_t cap) {
    std::vector<PairKey> old_keys = std::move(keys_);
    std::vector<int64_t> old_values = std::move(values_);
    keys_.assign(cap, kEmpty);
    values_.assign(cap, 0);
    for (size_t j = 0; j < old_keys.size(); ++j) {
      if (old_keys[j] == kEmpty) continue;
      const uint64_t i = slot(old_keys[j]);
      keys_[i] = old_keys[j];
      values_[i] = old_values[j];
    }
  }
};

// The max-heap of merges (std::priority_queue's operations, so ties pop in the same order) and the
// pool their word lists live in. A popped entry's list becomes garbage; the pool is compacted in
// place before it would grow where a quarter of it is garbage, so it stays near the live lists'
// size.
class MergeQueue {
 public:
  // `entries` with their lists in `pool` (disjoint ranges); `garbage` = pool elements no entry owns.
  MergeQueue(std::vector<Merge> entries, std::vector<uint32_t> pool, size_t garbage)
      : heap_(std::move(entries)), pool_(std::move(pool)), garbage_(garbage) {
    std::make_heap(heap_.begin(), heap_.end(), MergeLess{});
  }
  bool empty() const { return heap_.empty(); }
  Merge pop() {
    std::pop_heap(heap_.begin(), heap_.end(), MergeLess{});
    const Merge top = heap_.back();
    heap_.pop_back();
    return top;
  }
  // Pushes an entry popped before, its list still its own.
  void push_again(const Merge& m) {
    heap_.push_back(m);
    std::push_heap(heap_.begin(), heap_.end(), MergeLess{});
  }
  uint32_t* words(const Merge& m) { return pool_.data() + m.begin; }
  // The list of a popped entry that is not pushed again.
  void discard(const Merge& m) { garbage_ += m.length; }
  // (pair, word) occurrences -> one entry per pair with its distinct words, in pair order (so
  // deterministic whatever order the occurrences were found in); `count(pair)` 0 drops the pair.
  template <typename Count>
  void push_grouped(std::vector<std::pair<PairKey, uint32_t>>& occ, Count&& count) {
    std::sort(occ.begin(), occ.end());
    if (pool_.size() + occ.size() > pool_.capacity()) {
      // Compact where a quarter is garbage (so compactions stay rare); grow by half only if the
      // live lists still do not leave the room.
      if (garbage_ * 4 >= pool_.size()) compact();
      const size_t need = pool_.size() + occ.size();
      if (need > pool_.capacity()) {
        pool_.reserve(std::max(need, pool_.capacity() + pool_.capacity() / 2));
        ++growths_;
      }
    }
    size_t i = 0;
    while (i < occ.size()) {
      const PairKey p = occ[i].first;
      const uint64_t begin = pool_.size();
      for (; i < occ.size() && occ[i].first == p; ++i)
        if (pool_.size() == begin || pool_.back() != occ[i].second) pool_.push_back(occ[i].second);
      const int64_t c = count(p);
      if (c > 0) {
        heap_.push_back(Merge{static_cast<uint64_t>(c), p, begin, pool_.size() - begin});
        std::push_heap(heap_.begin(), heap_.end(), MergeLess{});
      } else {
        pool_.resize(begin);
      }
    }
    occ.clear();
  }
  size_t compactions() const { return compactions_; }
  size_t growths() const { return growths_; }

 private:
  // Moves every entry's list down over the garbage, in pool order (ranges are disjoint).
  void compact() {
    if (heap_.size() >= UINT32_MAX) throw Error("more than 4G merge candidates");
    std::vector<uint32_t> order(heap_.size());
    for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return heap_[a].begin < heap_[b].begin; });
    uint64_t to = 0;
    for (const uint32_t i : order) {
      Merge& m = heap_[i];
      if (m.begin != to) std::memmove(pool_.data() + to, pool_.data() + m.begin, m.length * sizeof(uint32_t));
      m.begin = to;
      to += m.length;
    }
    pool_.resize(to);
    garbage_ = 0;
    ++compactions_;
  }

  std::vector<Merge> heap_;
  std::vector<uint32_t> pool_;
  size_t garbage_;
  size_t compactions_ = 0, growths_ = 0;
};

// HF's Word::merge on one word's symbols, in place; records the pair changes in `changes`.
// (The merged pair itself is not decremented: BpeTrainer does the same.)
void merge_word(std::vector<uint32_t>& symbols, uint32_t begin, uint32_t& length, uint32_t c1, uint32_t c2,
                uint32_t replacement, std::vector<Change>& changes) {
  uint32_t* s = symbols.data() + begin;
  uint32_t n = length;
  uint32_t i = 0;
  while (i < n) {
    if (s[i] == c1 && i + 1 < n && s[i + 1] == c2) {
      const uint32_t second = s[i + 1];
      if (i > 0) {
        changes.push_back({pair_key(s[i - 1], c1), -1});
        changes.push_back({pair_key(s[i - 1], replacement), 1});
      }
      s[i] = replacement;
      std::memmove(s + i + 1, s + i + 2, (n - i - 2) * sizeof(uint32_t));
      --n;
      if (i + 1 < n) {
        changes.push_back({pair_key(second, s[i + 1]), -1});
        changes.push_back({pair_key(replacement, s[i + 1]), 1});
      }
    }
    ++i;
  }
  length = n;
}

}  // namespace

// `release`: the caller's counts (== &counts), emptied once the words are symbols.
static Vocab train(const WordCounts& counts, WordCounts* release, const TrainerOptions& options, TrainStats* stats) {
  if (counts.distinct() == 0) throw Error("empty corpus: no words to train on (are the input files empty?)");
  TrainStats local_stats;
  TrainStats& st = stats ? *stats : local_stats;

  // Words are numbered in the table's order, which depends on how the counting threads interleaved;
  // the vocabulary does not: a merge's word lists are sets, sorted by number before use, and the
  // count changes it makes add up in any order (test_trainer trains a std::map's order against it).

  std::vector<std::string> id_to_word;
  std::unordered_map<std::string, uint32_t> word_to_id;
  auto add_token = [&](const std::string& t) -> uint32_t {
    auto [it, inserted] = word_to_id.emplace(t, static_cast<uint32_t>(id_to_word.size()));
    if (inserted) id_to_word.push_back(t);
    return it->second;
  };
  for (const auto& t : options.special_tokens) add_token(t);

  // Alphabet with 64-bit frequencies.
  std::unordered_map<char32_t, uint64_t> char_counts;
  std::u32string cps;
  counts.for_each([&](std::string_view word, uint64_t count) {
    utf8_decode(word, cps);
    for (char32_t c : cps) char_counts[c] += count;
  });
  std::vector<std::pair<char32_t, uint64_t>> alphabet(char_counts.begin(), char_counts.end());
  if (options.limit_alphabet && alphabet.size() > *options.limit_alphabet) {
    // Keep the most frequent; on equal counts keep the smaller code point (HF: unstable sort).
    std::sort(alphabet.begin(), alphabet.end(), [](const auto& a, const auto& b) {
      return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    st.dropped_characters = alphabet.size() - *options.limit_alphabet;
    alphabet.resize(*options.limit_alphabet);
  }
  std::sort(alphabet.begin(), alphabet.end());
  std::vector<bool> in_alphabet_small(0x110000, false);
  for (const auto& [c, n] : alphabet) in_alphabet_small[c] = true;
  // HF keeps a character whenever it is already a token, so a one-character special token stays
  // in the words even where --limit-alphabet dropped it from the alphabet.
  for (const auto& t : options.special_tokens) {
    std::u32string special;
    utf8_decode(t, special);
    if (special.size() == 1) in_alphabet_small[special[0]] = true;
  }
  for (const auto& [c, n] : alphabet) add_token(utf8_encode(std::u32string(1, c)));
  st.alphabet = alphabet.size();

  // "##c" for every alphabet character seen after a word's first position, by code point.
  std::vector<bool> continues(0x110000, false);
  counts.for_each([&](std::string_view word, uint64_t) {
    utf8_decode(word, cps);
    for (size_t i = 1; i < cps.size(); ++i)
      if (in_alphabet_small[cps[i]]) continues[cps[i]] = true;
  });
  const std::string& prefix = options.continuing_subword_prefix;
  const size_t before_continuations = id_to_word.size();
  for (char32_t c = 0; c < 0x110000; ++c)
    if (continues[c]) add_token(prefix + utf8_encode(std::u32string(1, c)));
  st.continuation_forms = id_to_word.size() - before_continuations;

  if (options.vocab_size < id_to_word.size()) {
    throw Error("vocab_size " + std::to_string(options.vocab_size) + " is below the " +
                std::to_string(id_to_word.size()) + " tokens the corpus alphabet needs (" +
                std::to_string(options.special_tokens.size()) + " special + " + std::to_string(st.alphabet) +
                " characters + " + std::to_string(st.continuation_forms) +
                " ##-continuations); raise --vocab-size or set --limit-alphabet");
  }

  // Symbols of every word, packed, reserved at the words' characters (never copied to grow).
  const size_t num_words = counts.distinct();
  if (num_words >= UINT32_MAX) throw Error("corpus too large: more than 4G distinct words");
  std::vector<uint32_t> symbols;
  size_t characters = 0;
  counts.for_each([&](std::string_view word, uint64_t) {
    for (const char c : word) characters += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  });
  if (characters >= UINT32_MAX) throw Error("corpus too large: more than 4G characters in distinct words");
  symbols.reserve(characters);
  std::vector<uint32_t> word_begin(num_words), word_len(num_words);
  std::vector<uint64_t> word_count(num_words);
  std::string piece;
  size_t n = 0;
  counts.for_each([&](std::string_view word, uint64_t count) {
    utf8_decode(word, cps);
    word_begin[n] = static_cast<uint32_t>(symbols.size());
    for (size_t i = 0; i < cps.size(); ++i) {
      if (!in_alphabet_small[cps[i]]) continue;  // HF skips characters outside the alphabet
      piece.clear();
      if (i > 0) piece = prefix;
      utf8_append(piece, cps[i]);
      symbols.push_back(word_to_id.at(piece));
    }
    word_len[n] = static_cast<uint32_t>(symbols.size() - word_begin[n]);
    word_count[n] = count;
    ++n;
  });
  if (symbols.size() >= UINT32_MAX) throw Error("corpus too large: more than 4G symbols in distinct words");
  if (n != num_words)
    throw Error("internal error: the word table holds " + std::to_string(n) + " words, not " +
                std::to_string(num_words));
  // The words' text is not read again.
  if (release) *release = WordCounts();

  // Initial pair counts, then one heap entry per pair with the words it occurs in, built in two
  // passes at their exact size in one pool (4 bytes per (pair, word), no list of the whole corpus's
  // occurrences). While the lists are built, pair_counts holds each pair's entry index instead of
  // its count.
  PairCounts pair_counts;
  for (uint32_t w = 0; w < num_words; ++w) {
    const uint32_t* s = symbols.data() + word_begin[w];
    for (uint32_t i = 0; i + 1 < word_len[w]; ++i) pair_counts[pair_key(s[i], s[i + 1])] += static_cast<int64_t>(word_count[w]);
  }
  // Room for the merges' new entries, so the heap is not copied to grow (untouched pages cost no
  // memory): at 10M words it holds ~0.6 GB.
  std::vector<Merge> entries;
  entries.reserve(2 * pair_counts.size());
  pair_counts.for_each([&](PairKey key, int64_t count) {
    entries.push_back(Merge{static_cast<uint64_t>(count), key, 0, 0});
  });
  std::sort(entries.begin(), entries.end(), [](const Merge& x, const Merge& y) { return x.pair < y.pair; });
  for (size_t k = 0; k < entries.size(); ++k) pair_counts[entries[k].pair] = static_cast<int64_t>(k);
  std::vector<uint32_t> pool;
  {
    std::vector<uint32_t> last(entries.size(), UINT32_MAX);
    for (int pass = 0; pass < 2; ++pass) {
      for (uint32_t w = 0; w < num_words; ++w) {
        const uint32_t* s = symbols.data() + word_begin[w];
        for (uint32_t i = 0; i + 1 < word_len[w]; ++i) {
          const size_t k = static_cast<size_t>(pair_counts.get(pair_key(s[i], s[i + 1])));
          if (last[k] == w) continue;
          last[k] = w;
          if (pass == 0)
            ++entries[k].length;
          else
            pool[entries[k].begin + entries[k].length++] = w;
        }
      }
      if (pass == 0) {
        uint64_t total = 0;
        for (Merge& m : entries) {
          m.begin = total;
          total += m.length;
          m.length = 0;
        }
        pool.reserve(total + total / 2);  // room for the merges' new lists; untouched pages cost nothing
        pool.resize(total);
        std::fill(last.begin(), last.end(), UINT32_MAX);
      }
    }
  }
  for (const Merge& m : entries) pair_counts[m.pair] = static_cast<int64_t>(m.count);
  size_t garbage = 0;
  std::erase_if(entries, [&](const Merge& m) { return m.count == 0 ? (garbage += m.length, true) : false; });
  MergeQueue queue(std::move(entries), std::move(pool), garbage);
  std::vector<std::pair<PairKey, uint32_t>> occurrences;  // new pairs of one merge step

  std::vector<Change> changes;
  st.stop_reason = "queue empty";
  while (true) {
    if (id_to_word.size() >= options.vocab_size) {
      st.stop_reason = "vocab_size reached";
      break;
    }
    if (queue.empty()) break;
    Merge top = queue.pop();
    const int64_t current = pair_counts.get(top.pair);
    if (static_cast<int64_t>(top.count) != current) {
      top.count = static_cast<uint64_t>(current < 0 ? 0 : current);
      queue.push_again(top);
      continue;
    }
    if (top.count < 1 || options.min_frequency > top.count) {
      st.stop_reason = "min_frequency";
      break;
    }
    const uint32_t a = pair_first(top.pair), b = pair_second(top.pair);
    std::string part_b = id_to_word[b];
    if (!prefix.empty() && part_b.compare(0, prefix.size(), prefix) == 0) part_b.erase(0, prefix.size());
    const uint32_t new_id = add_token(id_to_word[a] + part_b);
    ++st.merges;

    uint32_t* pos = queue.words(top);
    std::sort(pos, pos + top.length);
    for (uint64_t j = 0; j < top.length; ++j) {
      const uint32_t w = pos[j];
      changes.clear();
      merge_word(symbols, word_begin[w], word_len[w], a, b, new_id, changes);
      for (const Change& ch : changes) {
        pair_counts[ch.pair] += static_cast<int64_t>(ch.delta) * static_cast<int64_t>(word_count[w]);
        if (ch.delta > 0) occurrences.emplace_back(ch.pair, w);
      }
    }
    queue.discard(top);
    queue.push_grouped(occurrences, [&](PairKey p) { return pair_counts.get(p); });
    if (options.progress && (st.merges & 255) == 0) options.progress(st.merges, id_to_word.size());
  }
  st.pool_compactions = queue.compactions();
  st.pool_growths = queue.growths();
  if (options.progress) options.progress(st.merges, id_to_word.size());
  return Vocab(std::move(id_to_word));
}

Vocab train_wordpiece(const WordCounts& counts, const TrainerOptions& options, TrainStats* stats) {
  return train(counts, nullptr, options, stats);
}

Vocab train_wordpiece(WordCounts&& counts, const TrainerOptions& options, TrainStats* stats) {
  return train(counts, &counts, options, stats);
}

}  // namespace bert
