#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/utf8.h"
#include "tokenizer/vocab.h"
#include "tokenizer/wordpiece.h"

using namespace bert;

static std::vector<int32_t> enc(const WordPiece& wp, const std::string& word) {
  std::u32string cps;
  utf8_decode(word, cps);
  std::vector<int32_t> ids;
  wp.encode_word(cps, ids);
  return ids;
}

TEST_CASE("greedy longest match first with ## continuations") {
  //                   0        1     2    3     4      5      6     7      8
  const Vocab v({"[UNK]", "un", "unaff", "##aff", "##able", "##a", "이", "##순신", "##순"});
  const WordPiece wp(v);
  CHECK(enc(wp, "unaffable") == std::vector<int32_t>{2, 4});
  CHECK(enc(wp, "unable") == std::vector<int32_t>{1, 4});
  CHECK(enc(wp, "이순신") == std::vector<int32_t>{6, 7});
  CHECK(enc(wp, "이순") == std::vector<int32_t>{6, 8});
}

TEST_CASE("an empty continuation prefix looks continuations up as whole tokens") {
  const Vocab v({"[UNK]", "un", "aff", "able", "##able"});
  const WordPiece wp(v, "[UNK]", "");
  CHECK(enc(wp, "unaffable") == std::vector<int32_t>{1, 2, 3});
  CHECK(enc(wp, "unx") == std::vector<int32_t>{0});
}

TEST_CASE("any unmatched position makes the whole word [UNK]") {
  const Vocab v({"[UNK]", "ab", "##c"});
  const WordPiece wp(v);
  CHECK(enc(wp, "abcd") == std::vector<int32_t>{0});
  CHECK(enc(wp, "xab") == std::vector<int32_t>{0});
  CHECK(enc(wp, "abc") == std::vector<int32_t>{1, 2});
}

TEST_CASE("words over 100 characters are [UNK]") {
  const Vocab v({"[UNK]", "a", "##a"});
  const WordPiece wp(v);
  CHECK(enc(wp, std::string(100, 'a')).size() == 100);
  CHECK(enc(wp, std::string(101, 'a')) == std::vector<int32_t>{0});
}

TEST_CASE("missing unknown token is an error") {
  CHECK_THROWS_AS(WordPiece(Vocab({"a", "b"})), Error);
}

TEST_CASE("vocab.txt: CRLF taken, malformed or ambiguous files rejected with the line") {
  const std::string dir = "test_vocab_tmp";
  make_directories(dir);
  write_file_atomic(dir + "/ok.txt", "[UNK]\r\nab\r\n##c\n");
  const Vocab v = Vocab::load(dir + "/ok.txt");
  CHECK(v.size() == 3);
  CHECK(v.id("ab") == 1);
  CHECK(v.id("##c") == 2);
  // transformers and tokenizers read these two differently: refused rather than matching one of them.
  write_file_atomic(dir + "/blank.txt", "[UNK]\nab \n");
  CHECK_THROWS_WITH(Vocab::load(dir + "/blank.txt"),
                    Catch::Contains("blank.txt:2:") && Catch::Contains("'ab ' ends in a space or tab"));
  write_file_atomic(dir + "/cr.txt", "[UNK]\na\rb\n");
  CHECK_THROWS_WITH(Vocab::load(dir + "/cr.txt"),
                    Catch::Contains("cr.txt:2:") && Catch::Contains("carriage return inside a line"));
  write_file_atomic(dir + "/dup.txt", "[UNK]\nab\nab\n");
  CHECK_THROWS_WITH(Vocab::load(dir + "/dup.txt"), Catch::Contains("dup.txt:3:") && Catch::Contains("duplicate"));
  write_file_atomic(dir + "/empty_line.txt", "[UNK]\n\nab\n");
  CHECK_THROWS_WITH(Vocab::load(dir + "/empty_line.txt"), Catch::Contains("empty_line.txt:2:"));
  write_file_atomic(dir + "/bad_utf8.txt", "[UNK]\nab\xff\n");
  CHECK_THROWS_WITH(Vocab::load(dir + "/bad_utf8.txt"), Catch::Contains("bad_utf8.txt:2:") && Catch::Contains("UTF-8"));
  CHECK_THROWS_WITH(Vocab::load(dir + "/missing.txt"), Catch::Contains("missing.txt") && Catch::Contains("cannot open"));
}
