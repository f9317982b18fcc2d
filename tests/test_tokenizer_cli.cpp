// bert_tokenizer train/encode driven through tokenizer_main(), as the binary runs them.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "tests/legacy_text.h"
#include "tests/test_dirs.h"
#include "tokenizer/commands.h"
#include "tokenizer/tokenizer.h"

using namespace bert;

namespace {

struct Run {
  int code;
  std::string out, err;
};

Run run(std::vector<std::string> args, const std::string& stdin_text = "") {
  std::istringstream in(stdin_text);
  std::ostringstream out, err;
  const int code = tokenizer_main(args, in, out, err);
  return {code, out.str(), err.str()};
}


std::string corpus() {
  make_directories(test_dir());
  std::string text;
  const char* sentences[] = {"이순신은 조선 중기의 무신이다.", "한산도 대첩에서 일본 수군을 크게 물리쳤다.",
                             "BERT는 마스크 언어 모델로 사전 학습된다.", "漢字와 한글을 함께 쓴 문장도 있다.",
                             "The quick brown fox jumps over the lazy dog."};
  for (int i = 0; i < 400; ++i) text += std::string(sentences[i % 5]) + " " + std::to_string(i % 13) + "\n";
  write_file_atomic(test_dir() + "/corpus.txt", text);
  return test_dir() + "/corpus.txt";
}

}  // namespace

TEST_CASE("train writes an HF-loadable tokenizer directory") {
  const std::string input = corpus();
  const Run r = run({"train", "--input", input, "--out", test_dir() + "/tok", "--vocab-size", "200", "--min-frequency", "2"});
  REQUIRE(r.code == 0);
  CHECK(r.out.find("trained WordPiece vocabulary: 200 tokens") != std::string::npos);
  const Tokenizer tok = Tokenizer::from_dir(test_dir() + "/tok");
  CHECK(tok.vocab().size() == 200);
  CHECK(tok.vocab().token(0) == "[PAD]");
  CHECK(tok.mask_id() == 4);
  CHECK_FALSE(tok.config().normalizer.lowercase);
  CHECK(file_exists(test_dir() + "/tok/special_tokens_map.json"));
  // deterministic: a second run gives the same bytes
  REQUIRE(run({"train", "--input", input, "--out", test_dir() + "/tok2", "--vocab-size", "200", "--threads", "1"}).code == 0);
  CHECK(read_file(test_dir() + "/tok/vocab.txt") == read_file(test_dir() + "/tok2/vocab.txt"));
}

TEST_CASE("encode: ids, tokens, jsonl, specials, pairs, [MASK] survives normalisation") {
  corpus();
  REQUIRE(run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/tok", "--vocab-size", "300"}).code == 0);
  const Run tokens = run({"encode", "--tokenizer", test_dir() + "/tok", "--format", "tokens"}, "이순신은 [MASK] 중기의 무신이다.\n");
  REQUIRE(tokens.code == 0);
  CHECK(tokens.out.find("[MASK]") != std::string::npos);
  CHECK(tokens.out.back() == '\n');
  const Run special = run({"encode", "--tokenizer", test_dir() + "/tok", "--add-special-tokens"}, "이순신\n");
  CHECK(special.out.rfind("2 ", 0) == 0);  // [CLS] first
  CHECK(special.out.find(" 3\n") != std::string::npos);
  const Run pair = run({"encode", "--tokenizer", test_dir() + "/tok", "--pair", "--add-special-tokens", "--format", "jsonl",
                        "--max-length", "8"},
                       "이순신은 조선 중기의 무신이다.\t한산도 대첩에서 일본 수군을 크게 물리쳤다.\n");
  REQUIRE(pair.code == 0);
  CHECK(pair.out.find("\"type_ids\": [0, 0, 0, 0, 1, 1, 1, 1]") != std::string::npos);
}

TEST_CASE("encode keeps line order on many threads and handles blank lines") {
  corpus();
  REQUIRE(run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/tok", "--vocab-size", "300"}).code == 0);
  std::string input;
  for (int i = 0; i < 5000; ++i) input += (i % 7 == 0 ? std::string() : "문장 " + std::to_string(i)) + "\n";
  const Run one = run({"encode", "--tokenizer", test_dir() + "/tok", "--threads", "1"}, input);
  const Run four = run({"encode", "--tokenizer", test_dir() + "/tok", "--threads", "4"}, input);
  CHECK(one.out == four.out);
  CHECK(std::count(one.out.begin(), one.out.end(), '\n') == 5000);

  // A line ends at "\n" only: a "\r" inside one is whitespace, as for transformers given the line (the
  // conformance tests draw lines that hold one).
  CHECK(run({"encode", "--tokenizer", test_dir() + "/tok"}, "문장\r문장 1\r\n").out ==
        run({"encode", "--tokenizer", test_dir() + "/tok"}, "문장 문장 1\n").out);
}

TEST_CASE("bad input: one clear error each") {
  corpus();
  CHECK_THROWS_WITH(run({"train", "--input", test_dir() + "/nope.txt", "--out", test_dir() + "/x"}), Catch::Contains("nope.txt: input file not found"));
  write_file_atomic(test_dir() + "/empty.txt", "\n \n\u200b\n");
  CHECK_THROWS_WITH(run({"train", "--input", test_dir() + "/empty.txt", "--out", test_dir() + "/x"}), Catch::Contains("empty corpus"));
  CHECK_THROWS_WITH(run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/x", "--vocab-size", "10"}),
                    Catch::Contains("vocab_size 10 is below"));
  CHECK_THROWS_WITH(run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/x", "--vocab-size", "ten"}),
                    Catch::Contains("--vocab-size") && Catch::Contains("integer"));
  CHECK_THROWS_WITH(run({"train", "--bogus"}), Catch::Contains("unknown option '--bogus'"));
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", "a", "--format", "ids", "--format=tokens"}),
                    Catch::Contains("option '--format' given twice ('ids' and 'tokens')"));
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/missing"}), Catch::Contains("tokenizer directory not found"));
  make_directories(test_dir() + "/badtok");
  write_file_atomic(test_dir() + "/badtok/vocab.txt", "[UNK]\nab\nab\n");
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/badtok"}), Catch::Contains("vocab.txt:3:"));
  REQUIRE(run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/tok", "--vocab-size", "300"}).code == 0);
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/tok", "--format", "xml"}), Catch::Contains("--format"));
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/tok", "--add-special-tokens", "--max-length", "1"}),
                    Catch::Contains("--max-length 1 leaves no room for the 2 special tokens"));
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/tok", "--add-special-tokens", "--pair", "--max-length",
                         "2"}),
                    Catch::Contains("--max-length 2 leaves no room for the 3 special tokens"));
  const Run no_clean = run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/noclean",
                            "--vocab-size", "300", "--no-clean-text", "--quiet"});
  CHECK(no_clean.code == 0);
  CHECK(no_clean.err.find("--no-clean-text: transformers' BertTokenizerFast.from_pretrained ignores") !=
        std::string::npos);
  CHECK(run({"encode", "--tokenizer", test_dir() + "/tok", "--add-special-tokens", "--max-length", "2"}, "조선\n").out ==
        "2 3\n");
  CHECK_THROWS_WITH(run({"frobnicate"}), Catch::Contains("unknown command"));
  // A stray argument is not taken for nothing (reading stdin instead); '-' is stdin.
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/tok", "lines.txt"}),
                    Catch::Contains("unexpected argument 'lines.txt' (the input file goes after --input)"));
  CHECK(run({"encode", "--tokenizer", test_dir() + "/tok", "--input", "-"}, "조선\n").out ==
        run({"encode", "--tokenizer", test_dir() + "/tok"}, "조선\n").out);
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/tok", "--threads", "100000"}),
                    Catch::Contains("--threads") && Catch::Contains("1024"));
  // An output that would replace its input (the ids written over the text), or a file train writes.
  write_file_atomic(test_dir() + "/lines.txt", "조선\n");
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/lines.txt", "--output",
                         test_dir() + "/./lines.txt"}),
                    test_dir() + "/./lines.txt: is also the --input file; write the output elsewhere");
  CHECK(read_file(test_dir() + "/lines.txt") == "조선\n");
  const std::string vocab_before = read_file(test_dir() + "/tok/vocab.txt");
  CHECK_THROWS_WITH(run({"train", "--input", test_dir() + "/corpus.txt", test_dir() + "/tok/vocab.txt", "--out",
                         test_dir() + "/tok/", "--vocab-size", "300"}),
                    test_dir() + "/tok/vocab.txt: is the vocab.txt that --out " + test_dir() +
                        "/tok would replace; write to another --out");
  CHECK(read_file(test_dir() + "/tok/vocab.txt") == vocab_before);
  // BertTokenizerFast would add a missing [MASK] as a new id past vocab.txt: refused, not warned about.
  CHECK_THROWS_WITH(run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/nomask",
                         "--vocab-size", "300", "--special-tokens", "[PAD]", "[UNK]", "[CLS]", "[SEP]"}),
                    Catch::Contains("--special-tokens lacks [MASK]"));
  CHECK_FALSE(file_exists(test_dir() + "/nomask/vocab.txt"));
  // A special token vocab.txt cannot hold as a line; an alphabet of no characters (HF's 0 keeps none,
  // leaving a vocabulary of special tokens only).
  for (const std::string bad : {"a\nb", "[X] ", "[X]\r"})
    CHECK_THROWS_WITH(
        run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/badspecial", "--vocab-size", "300",
             "--special-tokens", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", bad}),
        "bert_tokenizer train: special token " + Json(bad).dump() +
            " holds a line break or ends in whitespace, so it cannot be a line of vocab.txt");
  CHECK_THROWS_WITH(run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/badspecial",
                         "--vocab-size", "300", "--limit-alphabet", "0"}),
                    Catch::Contains("option '--limit-alphabet' must be at least 1, got 0"));
  CHECK_FALSE(file_exists(test_dir() + "/badspecial"));
  CHECK(run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/alphabet1", "--vocab-size", "300",
             "--limit-alphabet", "1", "--quiet"})
            .code == 0);
  // A vocabulary without [CLS]: one error before encoding, on one thread or many (an exception in a
  // worker thread must not end in std::terminate).
  make_directories(test_dir() + "/nocls");
  std::string vocab = read_file(test_dir() + "/tok/vocab.txt");
  vocab.replace(vocab.find("[CLS]\n"), 6, "");
  write_file_atomic(test_dir() + "/nocls/vocab.txt", vocab);
  std::string many;
  for (int i = 0; i < 500; ++i) many += "조선 " + std::to_string(i) + "\n";
  for (const char* threads : {"1", "3"})
    CHECK_THROWS_WITH(
        run({"encode", "--tokenizer", test_dir() + "/nocls", "--add-special-tokens", "--threads", threads}, many),
        test_dir() + "/nocls/vocab.txt: has no cls_token '[CLS]' (HF's default: " + test_dir() +
            "/nocls has no tokenizer_config.json); --add-special-tokens needs it");
}

TEST_CASE("encode --output: a file appears whole or not at all, a special file is written in place") {
  corpus();
  REQUIRE(
      run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/tok", "--vocab-size", "300"}).code ==
      0);
  const std::string expected = run({"encode", "--tokenizer", test_dir() + "/tok"}, "조선\n무신\n").out;
  REQUIRE(!expected.empty());
  const std::string output = test_dir() + "/ids.txt";
  REQUIRE(run({"encode", "--tokenizer", test_dir() + "/tok", "--output", output}, "조선\n무신\n").code == 0);
  CHECK(read_file(output) == expected);
  // Through a symlink: its target is written, the link stays.
  std::filesystem::remove(test_dir() + "/link.txt");
  std::filesystem::create_symlink("ids.txt", test_dir() + "/link.txt");
  REQUIRE(run({"encode", "--tokenizer", test_dir() + "/tok", "--output", test_dir() + "/link.txt"}, "조선\n").code ==
          0);
  CHECK(std::filesystem::is_symlink(test_dir() + "/link.txt"));
  CHECK(read_file(output) == run({"encode", "--tokenizer", test_dir() + "/tok"}, "조선\n").out);
  // /dev/null stays a device.
  REQUIRE(run({"encode", "--tokenizer", test_dir() + "/tok", "--output", "/dev/null"}, "조선\n").code == 0);
  CHECK(std::filesystem::is_character_file("/dev/null"));
  // An error leaves neither the output nor a temporary file (AtomicOutputFile removes its own).
  std::filesystem::remove(output);
  make_directories(test_dir() + "/nocls2");
  std::string vocab = read_file(test_dir() + "/tok/vocab.txt");
  vocab.replace(vocab.find("[SEP]\n"), 6, "");
  write_file_atomic(test_dir() + "/nocls2/vocab.txt", vocab);
  CHECK_THROWS(
      run({"encode", "--tokenizer", test_dir() + "/nocls2", "--add-special-tokens", "--output", output}, "a\n"));
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/tok", "--output", test_dir() + "/tok"}, "a\n"),
                    Catch::Contains("/tok: is a directory, expected a file to write"));
  for (const auto& entry : std::filesystem::directory_iterator(test_dir())) {
    INFO(entry.path());
    CHECK(entry.path().filename().string().find(".tmp") == std::string::npos);
  }
  CHECK_FALSE(file_exists(output));
}

TEST_CASE("invalid UTF-8 is replaced, reported with its line, and does not stop encoding") {
  corpus();
  REQUIRE(run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/tok", "--vocab-size", "300"}).code == 0);
  const Run r = run({"encode", "--tokenizer", test_dir() + "/tok"}, "이순신\n조선\xff중기\n");
  CHECK(r.code == 0);
  CHECK(r.err.find("<stdin>:2: warning: invalid UTF-8") != std::string::npos);
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 2);
}

TEST_CASE("train reads a pipe (--input <(zcat corpus.gz)) as it reads the file, bad lines located in it") {
  const std::string text = read_file(corpus()) + "조선\xff중기\n";
  write_file_atomic(test_dir() + "/corpus_bad.txt", text);
  const std::string fifo = test_dir() + "/corpus.fifo";
  std::filesystem::remove(fifo);
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::thread writer([&] {
    std::ofstream pipe(fifo, std::ios::binary);  // blocks until train opens the other end
    pipe << text;
  });
  Run piped;
  try {
    piped = run({"train", "--input", fifo, "--out", test_dir() + "/tok_fifo", "--vocab-size", "300"});
  } catch (...) {
    // Train failed, perhaps before it opened the pipe: a reader of our own lets the writer's open and
    // write finish (kept open until it has: a write with no reader would be a SIGPIPE).
    const int unblock = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
    writer.join();
    if (unblock >= 0) ::close(unblock);
    throw;
  }
  writer.join();
  const Run file = run(
      {"train", "--input", test_dir() + "/corpus_bad.txt", "--out", test_dir() + "/tok_file", "--vocab-size", "300"});
  REQUIRE(piped.code == 0);
  CHECK(read_file(test_dir() + "/tok_fifo/vocab.txt") == read_file(test_dir() + "/tok_file/vocab.txt"));
  CHECK(piped.err.find(fifo + ":401: warning: invalid UTF-8 at byte 6") != std::string::npos);
  CHECK(file.err.find("corpus_bad.txt:401: warning: invalid UTF-8 at byte 6") != std::string::npos);
}

TEST_CASE("a file that is not UTF-8 text is one error naming it and the fix (HF's trainer refuses it too)") {
  corpus();
  REQUIRE(
      run({"train", "--input", test_dir() + "/corpus.txt", "--out", test_dir() + "/tok", "--vocab-size", "300"}).code ==
      0);
  const std::string cp949 = cp949_korean(100);
  const std::string korean = test_dir() + "/cp949.txt", zipped = test_dir() + "/corpus.txt.gz";
  write_file_atomic(korean, cp949);
  write_file_atomic(zipped, std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00", 8));
  CHECK_THROWS_WITH(run({"train", "--input", test_dir() + "/corpus.txt", korean, "--out", test_dir() + "/cp"}),
                    Catch::StartsWith(korean + ": not UTF-8 text (") && Catch::EndsWith("iconv -f CP949 -t UTF-8"));
  CHECK_FALSE(file_exists(test_dir() + "/cp"));
  CHECK_THROWS_WITH(run({"train", "--input", zipped, "--out", test_dir() + "/cp"}),
                    zipped + ": gzip-compressed; decompress it (gunzip)");
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/tok", "--input", korean}),
                    Catch::StartsWith(korean + ": not UTF-8 text ("));
  CHECK_THROWS_WITH(run({"encode", "--tokenizer", test_dir() + "/tok"}, std::string("\xff\xfe\x74\x00", 4)),
                    Catch::StartsWith("<stdin>: UTF-16 text"));
}

// transformers' legacy loading: without added_tokens_decoder in tokenizer_config.json (or without the
// file), special_tokens_map.json's tokens override the config's and add its additional ones; with
// added_tokens_decoder the map is not read. Without tokenizer_config.json, BertTokenizer's defaults.
TEST_CASE("tokenizer config: special_tokens_map.json as transformers reads it") {
  const std::string dir = test_dir() + "/special_map";
  std::filesystem::remove_all(dir);
  make_directories(dir);
  const auto write = [&](const std::string& name, const std::string& text) { write_file_atomic(dir + "/" + name, text); };

  TokenizerConfig bare = TokenizerConfig::load(dir);
  CHECK(bare.normalizer.lowercase);
  CHECK(bare.normalizer.strip_accents);
  CHECK(bare.mask_token == "[MASK]");

  write("special_tokens_map.json",
        R"({"mask_token": {"content": "<mask>", "lstrip": true}, "additional_special_tokens": ["<a>", "<b>"]})");
  TokenizerConfig from_map = TokenizerConfig::load(dir);
  CHECK(from_map.mask_token == "<mask>");
  CHECK(from_map.additional_special_tokens == std::vector<std::string>{"<a>", "<b>"});

  write("tokenizer_config.json",
        R"({"do_lower_case": false, "mask_token": "[M]", "cls_token": "[C]", "additional_special_tokens": ["<b>", "<c>"]})");
  TokenizerConfig legacy = TokenizerConfig::load(dir);
  CHECK_FALSE(legacy.normalizer.lowercase);
  CHECK(legacy.mask_token == "<mask>");  // the map wins
  CHECK(legacy.cls_token == "[C]");      // the map does not name it
  CHECK(legacy.additional_special_tokens == std::vector<std::string>{"<b>", "<c>", "<a>"});

  write("tokenizer_config.json", R"({"mask_token": "[M]", "added_tokens_decoder": {}})");
  CHECK(TokenizerConfig::load(dir).mask_token == "[M]");

  write("tokenizer_config.json", "{}");
  write("special_tokens_map.json", R"({"mask_token": {"content": "<mask>", "single_word": true}})");
  CHECK_THROWS_WITH(TokenizerConfig::load(dir), dir +
                                                    "/special_tokens_map.json: field 'mask_token' has single_word "
                                                    "= true: only tokens matched as written are supported (set it "
                                                    "to false)");
  write("special_tokens_map.json", R"({"mask_token": 7})");
  write("tokenizer_config.json", "{}");
  CHECK_THROWS_WITH(TokenizerConfig::load(dir), dir + "/special_tokens_map.json: field 'mask_token' must be a string");
  std::filesystem::remove(dir + "/special_tokens_map.json");

  // BertTokenizerFast ignores wordpieces_prefix and always uses "##": another one is refused.
  write("tokenizer_config.json", R"({"wordpieces_prefix": "@@"})");
  CHECK_THROWS_WITH(TokenizerConfig::load(dir),
                    Catch::Contains("wordpieces_prefix = \"@@\": only \"##\" is supported"));

  // Special tokens vocab.txt lacks are appended after it, in transformers' order; require() still wants
  // the needed ones in vocab.txt itself.
  write("vocab.txt", "[UNK]\n[CLS]\n[SEP]\na\n");
  write("tokenizer_config.json", R"({"additional_special_tokens": ["<e>"]})");
  const Tokenizer appended = Tokenizer::from_dir(dir);
  CHECK(appended.file_vocab_size() == 4);
  REQUIRE(appended.vocab().size() == 7);
  CHECK(appended.vocab().token(4) == "[PAD]");
  CHECK(appended.vocab().token(5) == "[MASK]");
  CHECK(appended.vocab().token(6) == "<e>");
  CHECK(appended.mask_id() == 5);
  CHECK_THROWS_WITH(appended.require({SpecialToken::kMask}, dir, "fill-mask"),
                    Catch::Contains("vocab.txt: has no mask_token '[MASK]'"));

  // added_tokens_decoder: tokens at vocab.txt's ids (or the next one); not single_word, and special
  // ones not normalised.
  const auto decoder = [&](const std::string& entries) {
    write("tokenizer_config.json", R"({"added_tokens_decoder": {)" + entries + "}}");
    try {
      (void)Tokenizer::from_dir(dir);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(decoder(R"("3": {"content": "a", "special": true})").empty());
  CHECK(decoder(R"("4": {"content": "<x>", "special": true})").empty());
  CHECK_THAT(decoder(R"("2": {"content": "a", "special": true})"),
             Catch::Contains("added_tokens_decoder[\"2\"] 'a': vocab.txt has it as id 3"));
  CHECK_THAT(decoder(R"("9": {"content": "<x>", "special": true})"),
             Catch::Contains("'<x>': not in vocab.txt, nor the next id after it (4)"));
  CHECK(decoder(R"("3": {"content": "a", "special": false})").empty());
  CHECK(decoder(R"("4": {"content": "<x>", "special": false, "normalized": false})").empty());
  CHECK_THAT(decoder(R"("3": {"content": "a", "special": true, "normalized": true})"),
             Catch::Contains("'a': a special token with normalized = true (matched in the normalised text) is not "
                             "supported"));
  CHECK_THAT(decoder(R"("3": {"content": "a", "single_word": true})"),
             Catch::Contains("added_tokens_decoder[\"3\"] 'a': single_word = true (a match only as a whole word) is "
                             "not supported"));
  CHECK_THAT(decoder(R"("4": {"content": "", "special": false})"), Catch::Contains("\"4\"] '': an empty token"));
  CHECK(decoder(R"("3": {"content": "a", "special": true, "lstrip": true})").empty());  // no BERT id changes
  CHECK_THAT(decoder(R"("x": {"content": "a"})"), Catch::Contains("the key must be a token id"));
}

TEST_CASE("added tokens that are not special: matched as their flags say, not special, saved with their flags") {
  const std::string dir = test_dir() + "/added_plain";
  std::filesystem::remove_all(dir);
  make_directories(dir);
  write_file_atomic(dir + "/vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n##a\n##b\nab\nx\n##x\n");
  // "ab" (in the vocabulary) and "Xa" (appended) normalised, so lowercased and found inside words;
  // "XB" (appended) as written. The ids are BertTokenizerFast's on this directory.
  write_file_atomic(dir + "/tokenizer_config.json", R"({"do_lower_case": true, "added_tokens_decoder": {
      "9": {"content": "ab", "special": false, "normalized": true},
      "12": {"content": "Xa", "special": false},
      "13": {"content": "XB", "special": false, "normalized": false}}})");
  const Tokenizer tokenizer = Tokenizer::from_dir(dir);
  REQUIRE(tokenizer.vocab().size() == 14);
  CHECK(tokenizer.vocab().token(12) == "Xa");
  const auto ids = [](const Tokenizer& t, const std::string& text) {
    std::vector<int32_t> out;
    EncodeScratch scratch;
    t.encode(text, out, scratch);
    return out;
  };
  CHECK(ids(tokenizer, "bbab") == std::vector<int32_t>{6, 8, 9});      // b ##b, then "ab" split out of the word
  CHECK(ids(tokenizer, "xxab") == std::vector<int32_t>{10, 12, 6});    // the leftmost match wins: "xa" before "ab"
  CHECK(ids(tokenizer, "XAb xa") == std::vector<int32_t>{12, 6, 12});  // "xa" normalised, then b as a word
  CHECK(ids(tokenizer, "XB xb aXBa") == std::vector<int32_t>{13, 10, 8, 5, 13, 5});  // as written only
  CHECK(ids(tokenizer, "[MASK]ab") == std::vector<int32_t>{4, 9});
  const std::vector<std::string> specials = tokenizer.config().special_tokens();
  for (const char* token : {"ab", "Xa", "XB"})
    CHECK(std::find(specials.begin(), specials.end(), token) == specials.end());  // masked as any word

  const std::string copy = test_dir() + "/added_plain_copy";
  std::filesystem::remove_all(copy);
  make_directories(copy);
  tokenizer.save(copy);
  CHECK(read_file(copy + "/vocab.txt") == read_file(dir + "/vocab.txt"));
  const Json config = Json::parse(read_file(copy + "/tokenizer_config.json"));
  const Json& decoder = *config.find("added_tokens_decoder");
  CHECK(decoder.find("9")->find("normalized")->as_bool());
  CHECK_FALSE(decoder.find("9")->find("special")->as_bool());
  CHECK(decoder.find("12")->find("normalized")->as_bool());
  CHECK_FALSE(decoder.find("13")->find("normalized")->as_bool());
  CHECK(decoder.find("4") == nullptr);  // in-vocabulary specials stay special_tokens' business
  const Tokenizer again = Tokenizer::from_dir(copy);
  for (const char* text : {"bbab", "xxab", "XAb xa", "XB xb aXBa", "[MASK]ab"})
    CHECK(ids(again, text) == ids(tokenizer, text));

  // What BertTokenizerFast reads otherwise than we could follow is refused by name: a normalised
  // token that normalises to nothing (tokenizers then splits every character apart), and lstrip or
  // rstrip where another token holds whitespace (it extends matches over it). A named special token
  // whose entry says normalized = true (tokenizer.add_tokens(["[MASK]"]) writes one) is matched in the
  // normalised text, as it says. The ids are BertTokenizerFast's on these directories.
  const auto refusal = [&](const std::string& decoder) {
    write_file_atomic(dir + "/tokenizer_config.json",
                      R"({"do_lower_case": true, "added_tokens_decoder": {)" + decoder + "}}");
    try {
      (void)Tokenizer::from_dir(dir);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(loaded)");
  };
  CHECK_THAT(refusal(R"("12": {"content": "\u200b", "special": false})"),
             Catch::EndsWith("normalized = true, and it normalises to nothing (transformers would then split the "
                             "text into single characters); remove it or set normalized to false"));
  CHECK_THAT(refusal(R"("12": {"content": "x y", "special": false}, "13": {"content": "Q", "special": false,
                        "normalized": false, "lstrip": true})"),
             Catch::EndsWith("added_tokens_decoder: 'Q' has lstrip = true and 'x y' holds whitespace as matched: how "
                             "the two meet is not supported (set lstrip and rstrip to false; they change no id "
                             "otherwise)"));
  CHECK(refusal(R"("12": {"content": "Q", "special": false, "normalized": false, "lstrip": true})") == "(loaded)");
  write_file_atomic(dir + "/tokenizer_config.json", R"({"do_lower_case": true, "added_tokens_decoder": {
      "4": {"content": "[MASK]", "special": false, "normalized": true},
      "12": {"content": "a[", "special": false, "normalized": true}}})");
  CHECK(ids(Tokenizer::from_dir(dir), "a[MASK]") == std::vector<int32_t>{12, 1, 1});  // a[ MASK ]
  CHECK(ids(Tokenizer::from_dir(dir), "b[mask]") == std::vector<int32_t>{6, 4});      // lowercased, it matches

  // A special token that vocab.txt lacks but added_tokens_decoder lists is in the files: what
  // Tokenizer::save writes for tokenizer.json's added specials reads back as usable.
  const std::string no_sep = test_dir() + "/added_no_sep";
  std::filesystem::remove_all(no_sep);
  make_directories(no_sep);
  write_file_atomic(no_sep + "/vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[MASK]\na\n");
  write_file_atomic(no_sep + "/tokenizer_config.json",
                    R"({"added_tokens_decoder": {"5": {"content": "[SEP]", "special": true, "normalized": false}}})");
  const Tokenizer listed = Tokenizer::from_dir(no_sep);
  CHECK(listed.sep_id() == 5);
  CHECK_NOTHROW(listed.require({SpecialToken::kSep, SpecialToken::kCls}, no_sep, "pairs"));
  write_file_atomic(no_sep + "/tokenizer_config.json", "{}");  // appended, not in the files
  CHECK_THROWS_WITH(Tokenizer::from_dir(no_sep).require({SpecialToken::kSep}, no_sep, "pairs"),
                    Catch::Contains("has no sep_token '[SEP]'"));

  // tokenizer.json's added tokens and added_tokens_decoder must agree on how a token is matched.
  const std::string both = test_dir() + "/added_both";
  std::filesystem::remove_all(both);
  make_directories(both);
  write_file_atomic(both + "/tokenizer.json", R"({"version": "1.0",
      "added_tokens": [{"id": 0, "content": "[PAD]", "special": true}, {"id": 1, "content": "[UNK]", "special": true},
                       {"id": 2, "content": "[CLS]", "special": true}, {"id": 3, "content": "[SEP]", "special": true},
                       {"id": 4, "content": "[MASK]", "special": true},
                       {"id": 6, "content": "ab", "special": false, "normalized": true}],
      "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "lowercase": false},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
      "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100,
                "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5}}})");
  CHECK(ids(Tokenizer::from_dir(both), "aab") == std::vector<int32_t>{5, 6});
  write_file_atomic(both + "/tokenizer_config.json",
                    R"({"added_tokens_decoder": {"6": {"content": "ab", "special": false, "normalized": false}}})");
  CHECK_THROWS_WITH(Tokenizer::from_dir(both),
                    both +
                        "/tokenizer_config.json: added_tokens_decoder[\"6\"] is 'ab' (special false, normalized "
                        "false) where tokenizer.json's added_tokens has 'ab' (special false, normalized true); make "
                        "them agree");

  // A normalised added token is matched as tokenizer.json's normalizer makes it, in text normalised as
  // tokenizer_config.json says: where the two make it differently, refused by name.
  const auto mixed = [&](const std::string& content, const std::string& strip_accents) {
    std::string json = read_file(both + "/tokenizer.json");
    const std::string named = "\"content\": \"ab\"";
    json.replace(json.find(named), named.size(), "\"content\": \"" + content + "\"");
    const std::string cased = R"("lowercase": false})";
    json.replace(json.find(cased), cased.size(), R"("lowercase": true, "strip_accents": )" + strip_accents + "}");
    write_file_atomic(both + "/tokenizer.json", json);
    write_file_atomic(both + "/tokenizer_config.json", R"({"do_lower_case": false})");
  };
  const std::string original = read_file(both + "/tokenizer.json");
  mixed("ab", "null");
  CHECK(ids(Tokenizer::from_dir(both), "aab") == std::vector<int32_t>{5, 6});  // the same form either way
  write_file_atomic(both + "/tokenizer.json", original);
  mixed("Ab", "null");
  CHECK_THROWS_WITH(Tokenizer::from_dir(both),
                    Catch::StartsWith(both + "/tokenizer.json: added_tokens[\"6\"] 'Ab': normalized = "
                                             "true, and tokenizer.json's normalizer makes it 'ab' (lowercase true, "
                                             "strip_accents true, handle_chinese_chars true) where "
                                             "tokenizer_config.json's settings make it 'Ab' (lowercase false, "
                                             "strip_accents false, handle_chinese_chars true); transformers looks "
                                             "for the first in text normalised the second way, so it does not "
                                             "match the token as written: set tokenizer.json's normalizer to "
                                             "tokenizer_config.json's settings"));
  write_file_atomic(both + "/tokenizer.json", original);
  mixed(
      "\xC3\xA1"
      "b",
      "false");  // "áb": lowercase without stripping accents keeps it
  CHECK_NOTHROW(Tokenizer::from_dir(both));
  write_file_atomic(both + "/tokenizer.json", original);
  mixed(
      "\xC3\xA1"
      "b",
      "null");  // null follows lowercase: stripped to "ab"
  CHECK_THROWS_WITH(Tokenizer::from_dir(both), Catch::Contains("tokenizer.json's normalizer makes it 'ab'"));
  write_file_atomic(both + "/tokenizer.json", original);
  mixed("\xEB\xB2\x95", "null");  // 법: its jamo print as the syllable, and the message says so
  CHECK_THROWS_WITH(Tokenizer::from_dir(both), Catch::Contains("(Hangul decomposed into jamo) (lowercase true"));
  write_file_atomic(both + "/tokenizer.json", original);
  mixed("ab", "\"no\"");
  CHECK_THROWS_WITH(Tokenizer::from_dir(both),
                    Catch::Contains("normalizer.strip_accents") && Catch::Contains("must be true, false or null"));
}

// tokenizer.json as BertWordPieceTokenizer.save writes it (the conformance test compares the ids with
// BertTokenizerFast's on such directories); here, what is refused and how.
TEST_CASE("added_tokens.json: transformers' legacy added tokens, read without added_tokens_decoder") {
  const std::string dir = test_dir() + "/added_legacy";
  std::filesystem::remove_all(dir);
  make_directories(dir);
  write_file_atomic(dir + "/vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n##a\n##b\nab\nx\n##x\n");
  // As the added_tokens_decoder entries of the test above: a token no special token field names is
  // normalised and not special; one they name (as a string) is special. BertTokenizerFast's ids.
  write_file_atomic(dir + "/tokenizer_config.json", R"({"do_lower_case": true, "mask_token": "[MASK]"})");
  write_file_atomic(dir + "/added_tokens.json", R"({"Xa": 12, "ab": 9, "[MASK]": 4})");
  const auto ids = [](const Tokenizer& t, const std::string& text) {
    std::vector<int32_t> out;
    EncodeScratch scratch;
    t.encode(text, out, scratch);
    return out;
  };
  {
    const Tokenizer tokenizer = Tokenizer::from_dir(dir);
    REQUIRE(tokenizer.vocab().size() == 13);
    CHECK(tokenizer.vocab().token(12) == "Xa");
    CHECK(ids(tokenizer, "bbab") == std::vector<int32_t>{6, 8, 9});
    CHECK(ids(tokenizer, "XAb xa") == std::vector<int32_t>{12, 6, 12});
    CHECK(ids(tokenizer, "[MASK]ab [mask]") == std::vector<int32_t>{4, 9, 1, 1, 1});
    const std::vector<std::string> specials = tokenizer.config().special_tokens();
    CHECK(std::find(specials.begin(), specials.end(), "Xa") == specials.end());
  }
  // With added_tokens_decoder (even empty) transformers does not read the file.
  write_file_atomic(dir + "/tokenizer_config.json", R"({"do_lower_case": true, "added_tokens_decoder": {}})");
  CHECK(Tokenizer::from_dir(dir).vocab().size() == 12);
  write_file_atomic(dir + "/tokenizer_config.json", R"({"do_lower_case": true, "mask_token": "[MASK]"})");
  const auto refusal = [&](const std::string& legacy) {
    write_file_atomic(dir + "/added_tokens.json", legacy);
    try {
      (void)Tokenizer::from_dir(dir);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(loaded)");
  };
  CHECK(refusal("[]") == dir + "/added_tokens.json: expected a JSON object {\"token\": id, ...}");
  CHECK(refusal(R"({"Xa": "12"})") == dir + "/added_tokens.json: \"Xa\": \"12\": expected a token id");
  CHECK(refusal(R"({"Xa": -1})") == dir + "/added_tokens.json: \"Xa\": -1: expected a token id");
  CHECK(refusal(R"({"Xa": 13})") ==
        dir + "/added_tokens.json: id 13 'Xa': not in vocab.txt, nor the next id after it (12)");
  CHECK(refusal(R"({"ab": 4})") == dir + "/added_tokens.json: id 4 'ab': vocab.txt has it as id 9");
  // [PAD] is a special token by default only: transformers' legacy path adds it as a normalised one
  // too, which matches "[pad]" in lowercased text.
  CHECK_THAT(refusal(R"({"[PAD]": 0})"),
             Catch::StartsWith(dir + "/added_tokens.json: '[PAD]' is a special token that transformers' legacy "
                                     "path reads as a normalised added token here"));
  // So is one tokenizer_config.json names as an AddedToken object; special_tokens_map.json names it.
  write_file_atomic(dir + "/tokenizer_config.json",
                    R"({"mask_token": {"__type": "AddedToken", "content": "[MASK]", "special": true}})");
  CHECK_THAT(refusal(R"({"[MASK]": 4})"), Catch::Contains("'[MASK]' is a special token"));
  write_file_atomic(dir + "/special_tokens_map.json", R"({"mask_token": {"content": "[MASK]"}})");
  CHECK(refusal(R"({"[MASK]": 4})") == "(loaded)");
  std::filesystem::remove(dir + "/special_tokens_map.json");

  // One id twice (transformers keeps the last); an empty token (tokenizers adds none) is skipped.
  write_file_atomic(dir + "/tokenizer_config.json", R"({"do_lower_case": true})");
  CHECK(refusal(R"({"Xa": 12, "Xb": 12})") ==
        dir + "/added_tokens.json: id 12 is given twice ('Xa' and 'Xb'; transformers keeps the last): remove one");
  CHECK(refusal(R"({"": 13, "Xa": 12})") == "(loaded)");
  // A slip of transformers' legacy path: a field equal to special_tokens_map.json's last additional
  // special token becomes added_tokens.json's last token ('<x>' pad_token -> 'Xa'): refused.
  write_file_atomic(dir + "/tokenizer_config.json", R"({"pad_token": "<x>"})");
  write_file_atomic(dir + "/special_tokens_map.json", R"({"additional_special_tokens": ["<y>", "<x>"]})");
  CHECK_THAT(refusal(R"({"Xa": 12})"),
             Catch::StartsWith(dir + "/added_tokens.json: with it, transformers' legacy path makes pad_token 'Xa' "
                                     "instead of '<x>'"));
  write_file_atomic(dir + "/special_tokens_map.json", R"({"additional_special_tokens": ["<x>"]})");
  CHECK_THAT(refusal(R"({"Xa": 12, "": 13})"), Catch::Contains("makes pad_token '' instead of '<x>'"));
  std::filesystem::remove(dir + "/special_tokens_map.json");
  // null where BERT needs a token: transformers then has none, unless special_tokens_map.json (read
  // after it on the legacy path) names one.
  write_file_atomic(dir + "/tokenizer_config.json", R"({"mask_token": null})");
  CHECK(refusal("{}") == dir +
                             "/tokenizer_config.json: field 'mask_token' is null: transformers then has no mask_token, "
                             "which BERT needs; name the token or remove the field");
  write_file_atomic(dir + "/special_tokens_map.json", R"({"mask_token": "[MASK]"})");
  CHECK(refusal("{}") == "(loaded)");
  write_file_atomic(dir + "/special_tokens_map.json", R"({"mask_token": null})");
  write_file_atomic(dir + "/tokenizer_config.json", R"({"mask_token": "[MASK]"})");
  CHECK_THAT(refusal("{}"), Catch::StartsWith(dir + "/special_tokens_map.json: field 'mask_token' is null"));
  std::filesystem::remove(dir + "/special_tokens_map.json");
  write_file_atomic(dir + "/tokenizer_config.json", R"({"added_tokens_decoder": null})");
  CHECK_THAT(refusal("{}"), Catch::EndsWith("added_tokens_decoder is null, which transformers fails to read; remove "
                                            "the field or make it an object {\"id\": {\"content\": ...}}"));

  // What we write always has added_tokens_decoder, so an added_tokens.json left beside it is not read
  // (transformers' non-legacy path), neither by transformers nor by us.
  write_file_atomic(dir + "/tokenizer_config.json", R"({"do_lower_case": true})");
  std::filesystem::remove(dir + "/added_tokens.json");
  const std::string saved = test_dir() + "/added_legacy_saved";
  std::filesystem::remove_all(saved);
  make_directories(saved);
  Tokenizer::from_dir(dir).save(saved);
  CHECK(Json::parse(read_file(saved + "/tokenizer_config.json")).find("added_tokens_decoder")->as_object().empty());
  write_file_atomic(saved + "/added_tokens.json", R"({"Xa": 12})");
  CHECK(Tokenizer::from_dir(saved).vocab().size() == 12);
}

TEST_CASE("tokenizer.json: read instead of vocab.txt, checked against it, BERT's pipeline or a clear refusal") {
  const std::string dir = test_dir() + "/tokenizer_json";
  std::filesystem::remove_all(dir);
  make_directories(dir);
  const auto write = [&](const std::string& name, const std::string& text) {
    write_file_atomic(dir + "/" + name, text);
  };
  const auto spec = [](const std::string& model_extra, const std::string& rest) {
    return R"({"version": "1.0", "truncation": null, "padding": null,
      "added_tokens": [{"id": 0, "content": "[PAD]", "special": true, "normalized": false},
                       {"id": 1, "content": "[UNK]", "special": true, "normalized": false},
                       {"id": 7, "content": "<x>", "special": true, "normalized": false}],
      "normalizer": {"type": "BertNormalizer", "clean_text": false, "handle_chinese_chars": true,
                     "strip_accents": null, "lowercase": true},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},)" +
           rest + R"(
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100,
                "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 6, "##b": 5})" +
           model_extra + "}}";
  };
  const std::string bert_processing = R"("post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3],
      "cls": ["[CLS]", 2]},)";
  write("tokenizer.json", spec("", bert_processing));
  write("tokenizer_config.json", R"({"do_lower_case": false})");
  const Tokenizer t = Tokenizer::from_dir(dir);
  CHECK(t.vocab_file() == "tokenizer.json");
  REQUIRE(t.vocab().size() == 8);  // the model's 7 and the added "<x>" at 7
  CHECK(t.file_vocab_size() == 8);
  CHECK(t.vocab().token(5) == "##b");
  CHECK(t.vocab().token(7) == "<x>");
  CHECK_FALSE(t.config().normalizer.lowercase);   // tokenizer_config.json's, as BertTokenizerFast sets it
  CHECK_FALSE(t.config().normalizer.clean_text);  // tokenizer.json's
  std::vector<int32_t> ids;
  EncodeScratch scratch;
  t.encode("ab<x>A", ids, scratch);
  CHECK(ids == std::vector<int32_t>{6, 5, 7, 1});
  // A vocab.txt beside it must be the model's vocabulary, with or without the added tokens.
  write("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n##b\na\n");
  CHECK(Tokenizer::from_dir(dir).vocab().size() == 8);
  write("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n##b\n");
  CHECK_THROWS_WITH(Tokenizer::from_dir(dir),
                    dir +
                        "/vocab.txt: differs from tokenizer.json at id 5 ('a' against '##b'); transformers reads "
                        "tokenizer.json: remove the stale one");
  std::filesystem::remove(dir + "/vocab.txt");

  const auto error = [&](const std::string& text) {
    write("tokenizer.json", text);
    try {
      (void)Tokenizer::from_dir(dir);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  // The spec with one piece of it replaced.
  const auto with = [&](std::string text, const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
  };
  const std::string template_processing = R"("post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
      "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
               {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
      "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                         "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},)";
  CHECK(error(spec("", template_processing)).empty());
  const std::string swapped =
      with(template_processing, R"({"id": "[SEP]", "type_id": 1})", R"({"id": "[SEP]", "type_id": 0})");
  CHECK_THAT(error(spec("", swapped)),
             Catch::Contains("tokenizer.json: post_processor: the template '[CLS]:0! A:0 "
                             "[SEP]:0!' / '[CLS]:0! A:0 [SEP]:0! B:1 [SEP]:0!' is not BERT's"));
  CHECK_THAT(error(spec("", R"("post_processor": null,)")),
             Catch::Contains("tokenizer.json: post_processor: 'null': only BERT's [CLS] A [SEP] B [SEP]"));
  CHECK_THAT(error(spec(R"(, "unk_token": "<unk>")", bert_processing)),
             Catch::Contains("tokenizer.json: model.unk_token: '<unk>' is not the tokenizer's unk_token '[UNK]'"));
  CHECK_THAT(error(spec(R"(, "max_input_chars_per_word": 200)", bert_processing)),
             Catch::Contains("model.max_input_chars_per_word: 200: only 100 is supported"));
  CHECK_THAT(error(with(spec("", bert_processing), R"("a": 6)", R"("a": 9)")),
             Catch::Contains("tokenizer.json: model.vocab[\"a\"]: 9: ids must be 0..6, one a token"));
  CHECK_THAT(error(with(spec("", bert_processing), R"("type": "WordPiece", "unk)", R"("type": "BPE", "unk)")),
             Catch::Contains("tokenizer.json: model.type: 'BPE': only a WordPiece model is a BERT tokenizer"));
  CHECK_THAT(error(with(spec("", bert_processing), R"("<x>", "special": true, "normalized": false)",
                        R"("<x>", "special": true, "normalized": true)")),
             Catch::Contains("tokenizer.json: added_tokens '<x>': a special token with normalized = true"));
  CHECK_THAT(error(with(spec("", bert_processing), R"("id": 7)", R"("id": 9)")),
             Catch::Contains("added_tokens '<x>': id 9 where tokenizers gives it 7 (the ids past model.vocab "
                             "follow the array's order, without gaps)"));
  CHECK_THAT(error(with(spec("", bert_processing), R"("content": "<x>")", R"("content": "")")),
             Catch::Contains("tokenizer.json: added_tokens: an empty token (id 7)"));
  // The ids the post-processor adds are used as written: they must be the vocabulary's.
  CHECK_THAT(error(with(spec("", bert_processing), R"(["[CLS]", 2])", R"(["[CLS]", 4])")),
             Catch::Contains("tokenizer.json: post_processor: adds '[CLS]' as id 4, which is '[MASK]' in the "
                             "vocabulary (a post-processor left from another vocabulary)"));
  CHECK_THAT(error(with(spec("", template_processing), R"("ids": [3])", R"("ids": [30])")),
             Catch::Contains("post_processor: adds '[SEP]' as id 30, which is no token in the vocabulary"));
  CHECK_THAT(error(with(spec("", bert_processing), "BertPreTokenizer", "Metaspace")),
             Catch::Contains("tokenizer.json: pre_tokenizer: 'Metaspace': only BertPreTokenizer"));
  // Keys tokenizers requires (it refuses the file without them, so transformers cannot load it) are
  // required here too, with what tokenizers accepts for them; strip_accents alone may be left out.
  const std::string missing = ": missing (tokenizers requires it: transformers cannot load this file)";
  CHECK(error(with(spec("", bert_processing), R"("strip_accents": null, )", "")).empty());
  CHECK_THAT(error(with(spec("", bert_processing), R"("clean_text": false, )", "")),
             Catch::Contains("tokenizer.json: normalizer.clean_text" + missing));
  CHECK_THAT(error(with(spec("", bert_processing), R"("clean_text": false)", R"("clean_text": null)")),
             Catch::Contains("tokenizer.json: normalizer.clean_text: null: must be true or false"));
  CHECK_THAT(error(with(spec("", bert_processing), R"("handle_chinese_chars": true,)", "")),
             Catch::Contains("tokenizer.json: normalizer.handle_chinese_chars" + missing));
  CHECK_THAT(error(with(spec("", bert_processing), R"(, "lowercase": true})", "}")),
             Catch::Contains("tokenizer.json: normalizer.lowercase" + missing));
  CHECK_THAT(error(with(spec("", bert_processing), R"("strip_accents": null)", R"("strip_accents": 1)")),
             Catch::Contains("tokenizer.json: normalizer.strip_accents: 1: must be true, false or null"));
  CHECK_THAT(error(with(spec("", bert_processing), R"(, "cleanup": true)", "")),
             Catch::Contains("tokenizer.json: decoder.cleanup" + missing));
  CHECK_THAT(error(with(spec("", bert_processing), R"("prefix": "##", )", "")),
             Catch::Contains("tokenizer.json: decoder.prefix" + missing));
  CHECK_THAT(error(with(spec("", bert_processing), R"("continuing_subword_prefix": "##",)", "")),
             Catch::Contains("tokenizer.json: model.continuing_subword_prefix" + missing));
  CHECK_THAT(error(with(spec("", bert_processing), R"("max_input_chars_per_word": 100,)", "")),
             Catch::Contains("tokenizer.json: model.max_input_chars_per_word" + missing));
  // Tokens after the model's vocabulary (added in tokenizer.json, or specials it lacks) match the raw
  // text only, never as a piece of a word: "AB", lowercased, is a ##b, not the special "ab".
  write("tokenizer.json", spec("", bert_processing));
  write("tokenizer_config.json", R"({"do_lower_case": true, "additional_special_tokens": ["ab"]})");
  const Tokenizer added = Tokenizer::from_dir(dir);
  REQUIRE(added.vocab().id("ab") == 8);
  ids.clear();
  added.encode("AB ab", ids, scratch);
  CHECK(ids == std::vector<int32_t>{6, 5, 8});
  // "tokenizer_file": null or "from_slow": true: transformers builds from vocab.txt, tokenizer.json unread.
  write("tokenizer_config.json", R"({"do_lower_case": false, "tokenizer_file": null})");
  CHECK_THROWS_WITH(Tokenizer::from_dir(dir), Catch::Contains("vocab.txt: missing; ") &&
                                                  Catch::Contains("tokenizer_config.json sets \"tokenizer_file\": null "
                                                                  "or \"from_slow\": true"));
  write("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n##b\na\n");
  const Tokenizer slow = Tokenizer::from_dir(dir);
  CHECK(slow.vocab_file() == "vocab.txt");
  CHECK(slow.config().normalizer.clean_text);  // tokenizer.json's false is not read
  write("tokenizer_config.json", R"({"do_lower_case": false, "from_slow": true})");
  const Tokenizer from_slow = Tokenizer::from_dir(dir);
  CHECK(from_slow.vocab_file() == "vocab.txt");
  // ... and, without added_tokens_decoder in the config, tokenizer.json's added tokens count as that.
  REQUIRE(from_slow.vocab().size() == 8);
  CHECK(from_slow.vocab().token(7) == "<x>");
  ids.clear();
  from_slow.encode("a<x>", ids, scratch);
  CHECK(ids == std::vector<int32_t>{6, 7});

  // What save() writes tokenizes as the tokenizer it came from: the word pieces in vocab.txt, the
  // tokens after them ("<x>" from tokenizer.json, the appended special "ab") as added_tokens_decoder.
  write("tokenizer_config.json", R"({"do_lower_case": true, "additional_special_tokens": ["ab"]})");
  std::filesystem::remove(dir + "/vocab.txt");
  const Tokenizer source = Tokenizer::from_dir(dir);
  REQUIRE(source.vocab().size() == 9);
  const std::string saved_dir = dir + "/saved";
  make_directories(saved_dir);
  source.save(saved_dir, 64);
  CHECK(read_file(saved_dir + "/vocab.txt") == "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n##b\na\n");
  const Tokenizer reloaded = Tokenizer::from_dir(saved_dir);
  CHECK(reloaded.vocab().tokens() == source.vocab().tokens());
  CHECK(reloaded.config().model_max_length == 64);
  std::vector<int32_t> source_ids, reloaded_ids;
  source.encode("AB ab <x>Ab", source_ids, scratch);
  reloaded.encode("AB ab <x>Ab", reloaded_ids, scratch);
  CHECK(source_ids == std::vector<int32_t>{6, 5, 8, 7, 6, 5});
  CHECK(reloaded_ids == source_ids);
  std::filesystem::remove(dir + "/vocab.txt");
  write("tokenizer_config.json", R"({"do_lower_case": false})");
  CHECK_THAT(error("[1, 2]"), Catch::Contains("tokenizer.json: expected a JSON object"));
  CHECK_THAT(error("{\"model\": "), Catch::Contains("tokenizer.json:1: invalid JSON"));
  std::filesystem::remove(dir + "/tokenizer.json");
  CHECK_THROWS_WITH(Tokenizer::from_dir(dir), dir +
                                                  "/vocab.txt: missing, and so is tokenizer.json (is this a "
                                                  "tokenizer directory?)");
}

TEST_CASE("train --extend: a pretrained vocabulary with the pieces a domain corpus uses most appended") {
  const std::string general = corpus();
  const std::string dir = test_dir();
  REQUIRE(run({"train", "--input", general, "--out", dir + "/base", "--vocab-size", "150", "--lowercase"}).code == 0);
  std::string domain_text;
  const char* sentences[] = {"민법 제750조의 불법행위 책임은 고의 또는 과실을 요건으로 한다.",
                             "Tort Liability under the Civil Act requires intent or negligence.",
                             "불법행위로 인한 손해배상 청구권은 3년간 행사하지 않으면 소멸한다."};
  for (int i = 0; i < 300; ++i) domain_text += std::string(sentences[i % 3]) + "\n";
  write_file_atomic(dir + "/domain.txt", domain_text);

  const Run r = run({"train", "--input", dir + "/domain.txt", "--out", dir + "/ext", "--extend", dir + "/base", "--add",
                     "6", "--vocab-size", "400"});
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("by 6 pieces learned from the corpus -> " + dir + "/ext/vocab.txt (156 tokens)") !=
        std::string::npos);
  const Tokenizer base = Tokenizer::from_dir(dir + "/base"), ext = Tokenizer::from_dir(dir + "/ext");
  REQUIRE(ext.vocab().size() == 156);
  CHECK(std::equal(base.vocab().tokens().begin(), base.vocab().tokens().end(), ext.vocab().tokens().begin()));
  CHECK(ext.config().normalizer.lowercase);  // the base's settings, for the training too
  CHECK(ext.config().model_max_length == base.config().model_max_length);

  // Independently: the same corpus trained alone with the base's settings; its new tokens ranked by how
  // often its tokenizer uses them on the corpus (ties: lower id).
  REQUIRE(run({"train", "--input", dir + "/domain.txt", "--out", dir + "/alone", "--vocab-size", "400", "--lowercase"})
              .code == 0);
  const Tokenizer alone = Tokenizer::from_dir(dir + "/alone");
  std::vector<uint64_t> usage(alone.vocab().size(), 0);
  EncodeScratch scratch;
  std::vector<int32_t> ids;
  for (int i = 0; i < 300; ++i) {
    ids.clear();
    alone.encode(sentences[i % 3], ids, scratch);
    for (const int32_t id : ids) ++usage[static_cast<size_t>(id)];
  }
  std::vector<int32_t> fresh;
  for (int32_t id = 5; id < static_cast<int32_t>(alone.vocab().size()); ++id)
    if (usage[static_cast<size_t>(id)] > 0 && base.vocab().id(alone.vocab().token(id)) < 0) fresh.push_back(id);
  std::stable_sort(fresh.begin(), fresh.end(),
                   [&](int32_t a, int32_t b) { return usage[static_cast<size_t>(a)] > usage[static_cast<size_t>(b)]; });
  REQUIRE(fresh.size() > 6);
  for (size_t k = 0; k < 6; ++k) {
    INFO("added " << k);
    CHECK(ext.vocab().token(static_cast<int32_t>(150 + k)) == alone.vocab().token(fresh[k]));
  }
  for (size_t k = 150; k < 156; ++k) {
    const std::string& token = ext.vocab().token(static_cast<int32_t>(k));
    CHECK(std::none_of(token.begin(), token.end(), [](char c) { return c >= 'A' && c <= 'Z'; }));
  }

  // Fewer new pieces than asked: all of them, with a warning.
  const Run most = run({"train", "--input", dir + "/domain.txt", "--out", dir + "/ext2", "--extend", dir + "/base",
                        "--add", "100000", "--vocab-size", "400", "--quiet"});
  REQUIRE(most.code == 0);
  CHECK(most.err.find("warning: --add 100000: only " + std::to_string(fresh.size()) + " of the " +
                      std::to_string(alone.vocab().size()) + " tokens learned") != std::string::npos);
  CHECK(Tokenizer::from_dir(dir + "/ext2").vocab().size() == 150 + fresh.size());

  const auto error = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"train", "--input", dir + "/domain.txt"});
    try {
      (void)run(args);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  CHECK(error({"--out", dir + "/e", "--add", "3"}) == "bert_tokenizer train: --add goes with --extend DIR");
  CHECK(error({"--out", dir + "/e", "--extend", dir + "/base"}) ==
        "bert_tokenizer train --extend " + dir + "/base: give --add N, the number of pieces to append");
  CHECK(error({"--out", dir + "/e", "--extend", dir + "/base", "--add", "3", "--lowercase"}) ==
        "bert_tokenizer train --extend " + dir + "/base: --lowercase comes from that tokenizer's config; drop it");
  CHECK(error({"--out", dir + "/base/", "--extend", dir + "/base", "--add", "3"})
            .find("--out is that directory; write the extended tokenizer elsewhere") != std::string::npos);
  CHECK(error({"--out", dir + "/e", "--extend", dir + "/nope", "--add", "3"}) ==
        "bert_tokenizer train --extend " + dir + "/nope: not a directory");
  make_directories(dir + "/stale");
  write_file_atomic(dir + "/stale/tokenizer.json", "{}");
  CHECK(error({"--out", dir + "/stale", "--extend", dir + "/base", "--add", "3"}) ==
        "bert_tokenizer train: " + dir +
            "/stale/tokenizer.json exists, and transformers would read it instead of the vocab.txt written here; "
            "remove it or choose another --out");
  CHECK(error({"--out", dir + "/stale"}).find("/stale/tokenizer.json exists") != std::string::npos);  // plain too
  std::filesystem::remove(dir + "/stale/tokenizer.json");
  write_file_atomic(dir + "/stale/added_tokens.json", "{}");
  CHECK(error({"--out", dir + "/stale"}) ==
        "bert_tokenizer train: " + dir +
            "/stale/added_tokens.json exists, and transformers would add its tokens to the vocabulary written here; "
            "remove it or choose another --out");
  // A vocabulary whose [MASK] the tokenizer appends after the pieces: new pieces would take its id.
  make_directories(dir + "/nomask");
  std::string text = read_file(dir + "/base/vocab.txt");
  text.erase(text.find("[MASK]\n"), 7);
  write_file_atomic(dir + "/nomask/vocab.txt", text);
  write_file_atomic(dir + "/nomask/tokenizer_config.json", read_file(dir + "/base/tokenizer_config.json"));
  CHECK(error({"--out", dir + "/e", "--extend", dir + "/nomask", "--add", "3"})
            .find("its tokenizer has 1 added or appended token(s) after its 149 word pieces (ids from 149)") !=
        std::string::npos);
}
