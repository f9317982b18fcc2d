#include "tokenizer/trainer.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <queue>
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

WordCounts::WordCounts() { slots_.assign(1 << 12, Slot{0, 0, 0, 0}); }

void WordCounts::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.size() * 2, Slot{0, 0, 0, 0});
  const uint64_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (!s.count) continue;
    uint64_t i = s.hash & mask;
    while (slots_[i].count) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

void WordCounts::add(std::string_view word, uint64_t count) {
  if (count == 0) return;
  total_ += count;
  const uint64_t h = hash_bytes(word);
  const uint64_t mask = slots_.size() - 1;
  for (uint64_t i = h & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (!s.count) {
      s = Slot{h, count, arena_.size(), static_cast<uint32_t>(word.size())};
      arena_.append(word);
      if (++used_ * 2 > slots_.size()) grow();
      return;
    }
    if (s.hash == h && s.length == word.size() && std::memcmp(arena_.data() + s.offset, word.data(), word.size()) == 0) {
      s.count += count;
      return;
    }
  }
}

void WordCounts::merge_from(const WordCounts& other) {
  other.for_each([&](std::string_view w, uint64_t c) { add(w, c); });
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
  for (size_t t = 1; t < local.size(); ++t) {
    local[0].merge_from(local[t]);
    local[t] = WordCounts();
  }

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
  return std::move(local[0]);
}

// ---------------------------------------------------------------------------------------------
// BPE merges (BpeTrainer semantics)

namespace {

using PairKey = uint64_t;
inline PairKey pair_key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }
inline uint32_t pair_first(PairKey p) { return static_cast<uint32_t>(p >> 32); }
inline uint32_t pair_second(PairKey p) { return static_cast<uint32_t>(p); }

struct Merge {
  PairKey pair;
  uint64_t count;
  std::vector<uint32_t> pos;  // words this entry was created from
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
  std::vector<PairKey> keys() const {
    std::vector<PairKey> out;
    out.reserve(used_);
    for (PairKey k : keys_)
      if (k != kEmpty) out.push_back(k);
    return out;
  }
  void reserve(size_t n) {
    size_t cap = keys_.size();
    while (n * 4 > cap * 3) cap *= 2;
    if (cap != keys_.size()) resize(cap);
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

// (pair, word) occurrences -> heap entries: sorted by pair then word, one entry per pair with its
// distinct words. Deterministic whatever order the occurrences were found in.
template <typename Push>
void group_occurrences(std::vector<std::pair<PairKey, uint32_t>>& occ, Push&& push) {
  std::sort(occ.begin(), occ.end());
  size_t i = 0;
  while (i < occ.size()) {
    const PairKey p = occ[i].first;
    std::vector<uint32_t> pos;
    size_t j = i;
    while (j < occ.size() && occ[j].first == p) {
      if (pos.empty() || pos.back() != occ[j].second) pos.push_back(occ[j].second);
      ++j;
    }
    push(p, std::move(pos));
    i = j;
  }
  occ.clear();
}

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

Vocab train_wordpiece(const WordCounts& counts, const TrainerOptions& options, TrainStats* stats) {
  if (counts.distinct() == 0) throw Error("empty corpus: no words to train on (are the input files empty?)");
  TrainStats local_stats;
  TrainStats& st = stats ? *stats : local_stats;

  // Words in an order that does not depend on how the counting threads interleaved: by hash, then
  // bytes. (The vocabulary does not depend on word order; determinism of ties must not either.)
  struct WordRef {
    std::string_view text;
    uint64_t count, hash;
  };
  std::vector<WordRef> words;
  words.reserve(counts.distinct());
  counts.for_each_hashed([&](std::string_view w, uint64_t c, uint64_t h) { words.push_back({w, c, h}); });
  std::sort(words.begin(), words.end(), [](const WordRef& a, const WordRef& b) {
    return a.hash != b.hash ? a.hash < b.hash : a.text < b.text;
  });

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
  for (const WordRef& w : words) {
    utf8_decode(w.text, cps);
    for (char32_t c : cps) char_counts[c] += w.count;
  }
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
  for (const WordRef& w : words) {
    utf8_decode(w.text, cps);
    for (size_t i = 1; i < cps.size(); ++i)
      if (in_alphabet_small[cps[i]]) continues[cps[i]] = true;
  }
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

  // Symbols of every word, packed.
  std::vector<uint32_t> symbols;
  std::vector<uint32_t> word_begin(words.size()), word_len(words.size());
  std::vector<uint64_t> word_count(words.size());
  std::string piece;
  for (size_t w = 0; w < words.size(); ++w) {
    utf8_decode(words[w].text, cps);
    word_begin[w] = static_cast<uint32_t>(symbols.size());
    for (size_t i = 0; i < cps.size(); ++i) {
      if (!in_alphabet_small[cps[i]]) continue;  // HF skips characters outside the alphabet
      piece.clear();
      if (i > 0) piece = prefix;
      utf8_append(piece, cps[i]);
      symbols.push_back(word_to_id.at(piece));
    }
    word_len[w] = static_cast<uint32_t>(symbols.size() - word_begin[w]);
    word_count[w] = words[w].count;
  }
  if (symbols.size() >= UINT32_MAX) throw Error("corpus too large: more than 4G symbols in distinct words");

  // Initial pair counts and where each pair occurs, in two passes so the word lists are built at
  // their exact size (4 bytes per occurrence; no (pair, word) list of the whole corpus).
  PairCounts pair_counts;
  for (uint32_t w = 0; w < words.size(); ++w) {
    const uint32_t* s = symbols.data() + word_begin[w];
    for (uint32_t i = 0; i + 1 < word_len[w]; ++i) pair_counts[pair_key(s[i], s[i + 1])] += static_cast<int64_t>(word_count[w]);
  }
  std::vector<PairKey> keys = pair_counts.keys();
  std::sort(keys.begin(), keys.end());
  PairCounts pair_index;  // pair -> its rank in `keys`
  pair_index.reserve(keys.size());
  for (size_t k = 0; k < keys.size(); ++k) pair_index[keys[k]] = static_cast<int64_t>(k);
  std::vector<Merge> heap_storage(keys.size());
  {
    std::vector<uint32_t> sizes(keys.size(), 0), last(keys.size(), UINT32_MAX);
    for (int pass = 0; pass < 2; ++pass) {
      for (uint32_t w = 0; w < words.size(); ++w) {
        const uint32_t* s = symbols.data() + word_begin[w];
        for (uint32_t i = 0; i + 1 < word_len[w]; ++i) {
          const size_t k = static_cast<size_t>(pair_index.get(pair_key(s[i], s[i + 1])));
          if (last[k] == w) continue;
          last[k] = w;
          if (pass == 0) ++sizes[k];
          else heap_storage[k].pos.push_back(w);
        }
      }
      if (pass == 0) {
        for (size_t k = 0; k < keys.size(); ++k) heap_storage[k].pos.reserve(sizes[k]);
        std::fill(last.begin(), last.end(), UINT32_MAX);
      }
    }
  }
  for (size_t k = 0; k < keys.size(); ++k) {
    heap_storage[k].pair = keys[k];
    heap_storage[k].count = static_cast<uint64_t>(pair_counts.get(keys[k]));
  }
  std::erase_if(heap_storage, [](const Merge& m) { return m.count == 0; });
  keys = {};
  pair_index = PairCounts();
  std::priority_queue<Merge, std::vector<Merge>, MergeLess> queue(MergeLess{}, std::move(heap_storage));
  std::vector<std::pair<PairKey, uint32_t>> occurrences;  // new pairs of one merge step

  std::vector<Change> changes;
  st.stop_reason = "queue empty";
  while (true) {
    if (id_to_word.size() >= options.vocab_size) {
      st.stop_reason = "vocab_size reached";
      break;
    }
    if (queue.empty()) break;
    Merge top = std::move(const_cast<Merge&>(queue.top()));
    queue.pop();
    const int64_t current = pair_counts.get(top.pair);
    if (static_cast<int64_t>(top.count) != current) {
      top.count = static_cast<uint64_t>(current < 0 ? 0 : current);
      queue.push(std::move(top));
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

    std::sort(top.pos.begin(), top.pos.end());
    for (uint32_t w : top.pos) {
      changes.clear();
      merge_word(symbols, word_begin[w], word_len[w], a, b, new_id, changes);
      for (const Change& ch : changes) {
        pair_counts[ch.pair] += static_cast<int64_t>(ch.delta) * static_cast<int64_t>(word_count[w]);
        if (ch.delta > 0) occurrences.emplace_back(ch.pair, w);
      }
    }
    group_occurrences(occurrences, [&](PairKey p, std::vector<uint32_t> pos) {
      const int64_t c = pair_counts.get(p);
      if (c > 0) queue.push(Merge{p, static_cast<uint64_t>(c), std::move(pos)});
    });
    if (options.progress && (st.merges & 255) == 0) options.progress(st.merges, id_to_word.size());
  }
  if (options.progress) options.progress(st.merges, id_to_word.size());
  return Vocab(std::move(id_to_word));
}

}  // namespace bert
