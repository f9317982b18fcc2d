#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file.h"
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
