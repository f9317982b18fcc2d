#include <catch2/catch.hpp>
#include <map>
#include <queue>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/utf8.h"
#include "tokenizer/trainer.h"

using namespace bert;

static std::vector<std::string> merged_tokens(const Vocab& v, size_t first) {
  return std::vector<std::string>(v.tokens().begin() + static_cast<std::ptrdiff_t>(first), v.tokens().end());
}

TEST_CASE("vocabulary layout: specials, alphabet by code point, ##-forms by code point, merges") {
  WordCounts wc;
  wc.add("abc", 5);
  wc.add("ab", 4);
  wc.add("ca", 1);
  TrainerOptions o;
  o.vocab_size = 100;
  o.min_frequency = 1;
  o.special_tokens = {"[UNK]"};
  const Vocab v = train_wordpiece(wc, o);
  // alphabet a b c; continuations ##a ##b ##c (a follows c in "ca")
  REQUIRE(v.size() >= 7);
  CHECK(std::vector<std::string>(v.tokens().begin(), v.tokens().begin() + 7) ==
        std::vector<std::string>{"[UNK]", "a", "b", "c", "##a", "##b", "##c"});
  // (a,##b) occurs 9 times -> "ab"; then (ab,##c) 5 times -> "abc"; then (c,##a) once -> "ca".
  CHECK(merged_tokens(v, 7) == std::vector<std::string>{"ab", "abc", "ca"});
}

TEST_CASE("ties go to the smaller pair ids, and min_frequency stops merging") {
  WordCounts wc;
  wc.add("xy", 3);
  wc.add("ab", 3);
  wc.add("pq", 1);
  TrainerOptions o;
  o.vocab_size = 100;
  o.min_frequency = 2;
  o.special_tokens = {"[UNK]"};
  TrainStats st;
  const Vocab v = train_wordpiece(wc, o, &st);
  const size_t base = 1 + 6 + 3;
  CHECK(merged_tokens(v, base) == std::vector<std::string>{"ab", "xy"});  // "a" < "x" by id
  CHECK(st.stop_reason == "min_frequency");
}

TEST_CASE("counts beyond 32 bits order merges correctly") {
  WordCounts wc;
  wc.add("ab", 3'000'000'000ull);
  wc.add("cd", 2'500'000'000ull);
  wc.add("ab", 2'000'000'000ull);  // 5e9 total: HF's i32 pair counts would wrap here
  TrainerOptions o;
  o.vocab_size = 1 + 4 + 2 + 1;
  o.special_tokens = {"[UNK]"};
  const Vocab v = train_wordpiece(wc, o);
  CHECK(v.tokens().back() == "ab");
  CHECK(wc.total() == 7'500'000'000ull);
}

TEST_CASE("limit_alphabet keeps the most frequent characters, the rest vanish from words") {
  WordCounts wc;
  wc.add("aab", 10);
  wc.add("z", 1);
  TrainerOptions o;
  o.vocab_size = 100;
  o.min_frequency = 1;
  o.special_tokens = {"[UNK]"};
  o.limit_alphabet = 2;
  TrainStats st;
  const Vocab v = train_wordpiece(wc, o, &st);
  CHECK(st.dropped_characters == 1);
  CHECK(v.id("z") == -1);
  CHECK(v.id("a") == 1);
}

TEST_CASE("limit_alphabet keeps a character that is a special token in the words, as HF does") {
  WordCounts wc;
  wc.add("aab", 10);
  wc.add("bz", 1);
  TrainerOptions o;
  o.vocab_size = 100;
  o.min_frequency = 1;
  o.special_tokens = {"[UNK]", "z"};
  o.limit_alphabet = 2;
  TrainStats st;
  const Vocab v = train_wordpiece(wc, o, &st);
  CHECK(st.dropped_characters == 1);
  // "z" is only its special token, but "##z" and the merge (b, ##z) exist as in HF's vocabulary.
  CHECK(v.id("z") == 1);
  CHECK(v.id("##z") != -1);
  CHECK(v.id("bz") != -1);
}

TEST_CASE("vocab_size below the alphabet and an empty corpus are clear errors") {
  WordCounts wc;
  wc.add("가나다", 3);
  TrainerOptions o;
  o.vocab_size = 4;
  CHECK_THROWS_WITH(train_wordpiece(wc, o), Catch::Contains("vocab_size 4 is below") && Catch::Contains("--limit-alphabet"));
  CHECK_THROWS_WITH(train_wordpiece(WordCounts(), o), Catch::Contains("empty corpus"));
}

TEST_CASE("word counting is identical on 1 and 2 threads and reports invalid UTF-8 lines") {
  const std::string dir = "test_trainer_tmp";
  make_directories(dir);
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "이순신은 조선 중기의 무신이다 " + std::to_string(i % 97) + ".\n";
  text += "bad \xff byte\n";
  write_file_atomic(dir + "/c.txt", text);
  CountOptions o1;
  o1.threads = 1;
  std::vector<std::pair<size_t, size_t>> bad;
  o1.on_invalid_utf8 = [&](const std::string&, size_t line, size_t byte) { bad.emplace_back(line, byte); };
  CountStats s1;
  const WordCounts c1 = count_words({dir + "/c.txt"}, o1, &s1);
  CountOptions o2;
  o2.threads = 2;
  const WordCounts c2 = count_words({dir + "/c.txt"}, o2);
  CHECK(c1.total() == c2.total());
  CHECK(c1.distinct() == c2.distinct());
  REQUIRE(bad.size() == 1);
  CHECK(bad[0].first == 20001);
  CHECK(bad[0].second == 4);
  CHECK(s1.invalid_utf8_lines == 1);
  TrainerOptions t;
  t.vocab_size = 200;
  CHECK(train_wordpiece(c1, t).tokens() == train_wordpiece(c2, t).tokens());
}

// HF's BpeTrainer::do_train with WordPiece's "##" prefix, transcribed with standard containers (a
// std::set of words per heap entry, std::map counts, no alphabet limit): the reference for the
// trainer's pooled word lists, their compaction, the sharded word table and the released counts.
// Like the trainer and unlike HF (hash-map order), it builds the heap and pushes a step's new pairs
// in pair order, so ties between equal (count, pair) entries pop alike: this checks the trainer's
// deterministic version of HF's loop.
static std::vector<std::string> reference_train(const std::vector<std::pair<std::string, uint64_t>>& words,
                                                size_t vocab_size, uint64_t min_frequency,
                                                const std::vector<std::string>& specials) {
  std::vector<std::string> vocab;
  std::map<std::string, uint32_t> ids;
  auto add = [&](const std::string& t) {
    const auto [it, inserted] = ids.emplace(t, static_cast<uint32_t>(vocab.size()));
    if (inserted) vocab.push_back(t);
    return it->second;
  };
  for (const std::string& t : specials) add(t);
  std::set<char32_t> chars, continuing;
  std::vector<std::u32string> decoded;
  for (const auto& [w, c] : words) {
    decoded.emplace_back();
    utf8_decode(w, decoded.back());
    for (size_t i = 0; i < decoded.back().size(); ++i) {
      chars.insert(decoded.back()[i]);
      if (i > 0) continuing.insert(decoded.back()[i]);
    }
  }
  for (const char32_t c : chars) add(utf8_encode(std::u32string(1, c)));
  for (const char32_t c : continuing) add("##" + utf8_encode(std::u32string(1, c)));
  using Pair = std::pair<uint32_t, uint32_t>;
  std::vector<std::vector<uint32_t>> symbols;
  std::map<Pair, int64_t> counts;
  std::map<Pair, std::set<size_t>> where;
  for (size_t w = 0; w < decoded.size(); ++w) {
    symbols.emplace_back();
    for (size_t i = 0; i < decoded[w].size(); ++i)
      symbols.back().push_back(ids.at((i > 0 ? "##" : "") + utf8_encode(std::u32string(1, decoded[w][i]))));
    for (size_t i = 0; i + 1 < symbols[w].size(); ++i) {
      const Pair p{symbols[w][i], symbols[w][i + 1]};
      counts[p] += static_cast<int64_t>(words[w].second);
      where[p].insert(w);
    }
  }
  struct Entry {
    uint64_t count;
    Pair pair;
    std::set<size_t> pos;
  };
  auto less = [](const Entry& x, const Entry& y) { return x.count != y.count ? x.count < y.count : x.pair > y.pair; };
  std::vector<Entry> initial;
  for (const auto& [p, pos] : where) initial.push_back({static_cast<uint64_t>(counts[p]), p, pos});
  std::priority_queue<Entry, std::vector<Entry>, decltype(less)> queue(less, std::move(initial));
  while (vocab.size() < vocab_size && !queue.empty()) {
    Entry top = queue.top();
    queue.pop();
    const int64_t current = counts[top.pair];
    if (static_cast<int64_t>(top.count) != current) {
      top.count = static_cast<uint64_t>(std::max<int64_t>(current, 0));
      queue.push(top);
      continue;
    }
    if (top.count < 1 || min_frequency > top.count) break;
    const auto [c1, c2] = top.pair;
    const uint32_t merged = add(vocab[c1] + vocab[c2].substr(vocab[c2].rfind("##", 0) == 0 ? 2 : 0));
    std::map<Pair, std::set<size_t>> created;
    for (const size_t w : top.pos) {
      std::vector<uint32_t>& s = symbols[w];
      const auto n = static_cast<int64_t>(words[w].second);
      for (size_t i = 0; i < s.size(); ++i) {  // HF's Word::merge
        if (s[i] != c1 || i + 1 >= s.size() || s[i + 1] != c2) continue;
        if (i > 0) {
          counts[{s[i - 1], c1}] -= n;
          counts[{s[i - 1], merged}] += n;
          created[{s[i - 1], merged}].insert(w);
        }
        s[i] = merged;
        s.erase(s.begin() + static_cast<std::ptrdiff_t>(i) + 1);
        if (i + 1 < s.size()) {
          counts[{c2, s[i + 1]}] -= n;
          counts[{merged, s[i + 1]}] += n;
          created[{merged, s[i + 1]}].insert(w);
        }
      }
    }
    for (const auto& [p, pos] : created)
      if (counts[p] > 0) queue.push({static_cast<uint64_t>(counts[p]), p, pos});
  }
  return vocab;
}

TEST_CASE("the trainer's pooled word lists and sharded word table train as HF's loop with standard containers") {
  // Words of 1-30 characters from 14 syllables and 3 letters, counts 1-40: thousands of merges, whose
  // word lists outgrow the pool's first reservation and get compacted.
  const std::vector<std::string> alphabet = {"가", "나", "다", "라", "마", "바", "사", "아", "자",
                                             "차", "카", "타", "파", "하", "x",  "y",  "z"};
  std::mt19937 rng(1234);
  std::map<std::string, uint64_t> corpus;
  for (int i = 0; i < 6000; ++i) {
    std::string w;
    const int length = 1 + static_cast<int>(rng() % 30);
    for (int j = 0; j < length; ++j) w += alphabet[rng() % (j == 0 ? alphabet.size() : 6)];  // skewed pairs
    corpus[w] += 1 + rng() % 40;
  }
  const std::vector<std::pair<std::string, uint64_t>> words(corpus.begin(), corpus.end());
  // "가나" as a special token: the merge of 가 and ##나 gets its id back (an existing token).
  const std::vector<std::vector<std::string>> special_sets = {{"[UNK]"}, {"[UNK]", "가나"}};
  for (const size_t vocab_size : {size_t{200}, size_t{1000000}}) {
    for (const uint64_t min_frequency : {uint64_t{1}, uint64_t{5}}) {
      for (const std::vector<std::string>& specials : special_sets) {
        CAPTURE(vocab_size, min_frequency, specials);
        WordCounts wc;
        for (const auto& [w, c] : words) wc.add(w, c);
        TrainerOptions o;
        o.vocab_size = vocab_size;
        o.min_frequency = min_frequency;
        o.special_tokens = specials;
        TrainStats st;
        const Vocab kept = train_wordpiece(wc, o, &st);
        const std::vector<std::string> expected = reference_train(words, vocab_size, min_frequency, specials);
        CHECK(kept.tokens() == expected);
        CHECK(wc.distinct() == words.size());  // the const& overload leaves the counts
        if (vocab_size > 1000) {
          // Merges that made a token already in the vocabulary: 가 + ##나 = the special "가나".
          const size_t reused = specials.size() + st.alphabet + st.continuation_forms + st.merges - kept.size();
          CHECK(reused == (specials.size() > 1 ? 1u : 0u));
          // The pool filled its first reservation twice here: the first time under a quarter of it
          // was garbage, so it grew by half; the second time compacting made the room (a pool that
          // grew at every fill grew twice).
          CHECK(st.pool_compactions >= 1);
          CHECK(st.pool_growths <= 1);
        }
        TrainStats moved_stats;
        const Vocab moved = train_wordpiece(std::move(wc), o, &moved_stats);
        CHECK(moved.tokens() == expected);
        CHECK(moved_stats.merges == st.merges);
        CHECK(wc.distinct() == 0);  // NOLINT(bugprone-use-after-move): the && overload empties them
        CHECK(wc.total() == 0);
        size_t left = 0;
        wc.for_each([&](std::string_view, uint64_t) { ++left; });
        CHECK(left == 0);
      }
    }
  }
}

TEST_CASE("merging word tables moves every word with its summed count, shard by shard") {
  // 50,000 adds of 40,000 words over a table and three parts: every shard grows several times.
  std::map<std::string, uint64_t> expected;
  auto fill = [&](WordCounts& into, std::vector<WordCounts>& parts) {
    expected.clear();
    std::mt19937 rng(7);
    for (int i = 0; i < 50000; ++i) {
      const std::string w = "w" + std::to_string(rng() % 40000);
      const uint64_t c = 1 + rng() % 3;
      expected[w] += c;
      (i % 4 == 3 ? into : parts[static_cast<size_t>(i % 3)]).add(w, c);
    }
  };
  for (const size_t threads : {size_t{1}, size_t{2}}) {
    CAPTURE(threads);
    WordCounts merged;
    std::vector<WordCounts> parts(3);
    fill(merged, parts);
    merged.merge_from(parts, threads);
    uint64_t total = 0;
    for (const auto& [w, c] : expected) total += c;
    CHECK(merged.distinct() == expected.size());
    CHECK(merged.total() == total);
    std::map<std::string, uint64_t> got;
    merged.for_each([&](std::string_view w, uint64_t c) { got[std::string(w)] += c; });
    CHECK((got == expected));
    for (WordCounts& part : parts) {
      CHECK(part.distinct() == 0);
      CHECK(part.total() == 0);
      part.add("again", 2);  // an emptied table is usable, and holds nothing else
      CHECK(part.distinct() == 1);
      std::map<std::string, uint64_t> left;
      part.for_each([&](std::string_view w, uint64_t c) { left[std::string(w)] += c; });
      CHECK((left == std::map<std::string, uint64_t>{{"again", 2}}));
    }
    // A moved-from table is empty and usable, as a source and as a table.
    WordCounts moved = std::move(merged);
    CHECK(moved.distinct() == expected.size());
    CHECK(merged.distinct() == 0);  // NOLINT(bugprone-use-after-move)
    CHECK(merged.total() == 0);
    std::vector<WordCounts> sources;
    sources.push_back(std::move(merged));
    WordCounts again;
    again.merge_from(sources, threads);
    CHECK(again.distinct() == 0);
    merged.add("x", 3);
    size_t words = 0;
    merged.for_each([&](std::string_view w, uint64_t c) { words += w == "x" && c == 3 ? 1 : 100; });
    CHECK(words == 1);
  }
}
