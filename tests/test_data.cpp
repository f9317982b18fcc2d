// Shards, NSP instance creation, MLM masking, the loader and bert_prepare build/inspect.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "data/loader.h"
#include "data/masking.h"
#include "data/nsp.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "tests/test_dirs.h"
#include "tokenizer/commands.h"
#include "tokenizer/tokenizer.h"

using namespace bert;

namespace {

// Binomial acceptance: |x - n p| <= 5 sigma.
bool within_binomial(double x, double n, double p) {
  return std::fabs(x - n * p) <= 5.0 * std::sqrt(n * p * (1 - p)) + 1;
}

// Token = doc * 1000 + position in the document: identifies where every token came from.
DocumentPool synthetic_pool(size_t docs, Rng& rng) {
  DocumentPool pool;
  for (size_t d = 0; d < docs; ++d) {
    const size_t sentences = static_cast<size_t>(rng.randint(1, 12));
    int32_t pos = 0;
    for (size_t s = 0; s < sentences; ++s) {
      std::vector<int32_t> ids(static_cast<size_t>(rng.randint(1, 40)));
      for (auto& id : ids) id = static_cast<int32_t>(d * 1000) + pos++;
      pool.add_sentence(ids);
    }
    pool.end_document();
  }
  return pool;
}

}  // namespace

TEST_CASE("shard round trip, 16- and 32-bit ids") {
  make_directories(test_dir());
  for (uint32_t vocab : {30000u, 100000u}) {
    ShardWriter w(vocab, 16, Split::kValid);
    w.add(std::vector<int32_t>{5, 6, 7}, std::vector<int32_t>{8, static_cast<int32_t>(vocab - 1)}, true);
    w.add(std::vector<int32_t>{9}, std::vector<int32_t>{10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21}, false);
    const std::string path = test_dir() + "/rt.bin";
    const ShardHeader h = w.write(path);
    CHECK(h.token_width == (vocab <= 65536 ? 2u : 4u));
    const Shard s(path, vocab);
    REQUIRE(s.size() == 2);
    CHECK(s.header().split == Split::kValid);
    std::vector<int32_t> a, b;
    s.example(0, a, b);
    CHECK(a == std::vector<int32_t>{5, 6, 7});
    CHECK(b == std::vector<int32_t>{8, static_cast<int32_t>(vocab - 1)});
    CHECK(s.nsp_label(0) == 1);
    s.example(1, a, b);
    CHECK(b.size() == 12);
    CHECK(s.nsp_label(1) == 0);
  }
}

TEST_CASE("corrupted shards are rejected with a clear error") {
  make_directories(test_dir());
  ShardWriter w(30000, 32, Split::kTrain);
  for (int i = 0; i < 50; ++i) w.add(std::vector<int32_t>{1, 2, i + 3}, std::vector<int32_t>{4, 5}, i % 2);
  const std::string good = test_dir() + "/good.bin";
  w.write(good);
  const std::string bytes = read_file(good);
  auto variant = [&](const std::string& name, std::string content) {
    write_file_atomic(test_dir() + "/" + name, content);
    return test_dir() + "/" + name;
  };
  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  CHECK_THROWS_WITH(Shard(variant("magic.bin", bad_magic)),
                    Catch::Contains("magic.bin") && Catch::Contains("bad magic"));
  CHECK_THROWS_WITH(Shard(variant("trunc.bin", bytes.substr(0, bytes.size() - 7))), Catch::Contains("truncated"));
  CHECK_THROWS_WITH(Shard(variant("short.bin", bytes.substr(0, 20))), Catch::Contains("shorter than the header"));
  std::string flipped = bytes;
  flipped[kShardHeaderBytes + 3] ^= 0x40;
  CHECK_THROWS_WITH(Shard(variant("flip.bin", flipped)), Catch::Contains("checksum mismatch"));
  std::string version = bytes;
  version[8] = 9;
  CHECK_THROWS_WITH(Shard(variant("ver.bin", version)), Catch::Contains("format version 9"));
  CHECK_THROWS_WITH(Shard(good, 31999), Catch::Contains("vocabulary of 30000") && Catch::Contains("31999"));
  CHECK_NOTHROW(Shard(good, 30000));
}

TEST_CASE("NSP instances: length bound, non-empty segments, random next never from the same document") {
  Rng data_rng(7);
  const DocumentPool pool = synthetic_pool(300, data_rng);
  for (uint32_t max_len : {16u, 64u, 128u}) {
    NspOptions o;
    o.max_seq_len = max_len;
    o.dupe_factor = 2;
    Rng rng(11);
    NspStats st;
    size_t random_next = 0, total = 0;
    create_nsp_instances(
        pool, o, rng,
        [&](std::span<const int32_t> a, std::span<const int32_t> b, bool is_random) {
          REQUIRE(!a.empty());
          REQUIRE(!b.empty());
          REQUIRE(a.size() + b.size() + 3 <= max_len);
          const int32_t doc_a = a[0] / 1000, doc_b = b[0] / 1000;
          for (int32_t t : a) REQUIRE(t / 1000 == doc_a);
          for (int32_t t : b) REQUIRE(t / 1000 == doc_b);
          if (is_random) {
            REQUIRE(doc_b != doc_a);
          } else {
            REQUIRE(doc_b == doc_a);
            REQUIRE(b.front() > a.back());  // B continues A within the document
          }
          random_next += is_random;
          ++total;
        },
        st);
    CHECK(st.instances == total);
    CHECK(st.random_next == random_next);
    // Single-sentence chunks are always random-next, so the fraction is at least nsp_prob.
    const double frac = static_cast<double>(random_next) / static_cast<double>(total);
    CHECK(frac > 0.45);
  }
}

TEST_CASE("NSP label balance follows nsp_prob on multi-sentence chunks") {
  DocumentPool pool;
  for (int d = 0; d < 400; ++d) {  // 20 short sentences per document: chunks always have >= 2
    for (int s = 0; s < 20; ++s) pool.add_sentence(std::vector<int32_t>(5, d * 1000 + s));
    pool.end_document();
  }
  for (double p : {0.5, 0.2}) {
    NspOptions o;
    o.max_seq_len = 64;
    o.nsp_prob = p;
    o.short_seq_prob = 0;
    Rng rng(3);
    NspStats st;
    create_nsp_instances(
        pool, o, rng, [](auto, auto, bool) {}, st);
    CHECK(within_binomial(static_cast<double>(st.random_next), static_cast<double>(st.instances), p));
  }
}

TEST_CASE("NSP in a pool of one document: actual next kept and counted, single-sentence chunks skipped") {
  DocumentPool pool;
  // Sentences of 14, 5, 5, 14, 5, 5, ... tokens: the first chunk is the 14-token sentence alone.
  for (int s = 0; s < 40; ++s) pool.add_sentence(std::vector<int32_t>(s % 3 == 0 ? 14u : 5u, s));
  pool.end_document();
  NspOptions o;
  o.max_seq_len = 16;
  o.nsp_prob = 1.0;  // every pair would be random-next with a second document
  Rng rng(4);
  NspStats st;
  create_nsp_instances(
      pool, o, rng,
      [&](std::span<const int32_t> a, std::span<const int32_t> b, bool is_random) {
        CHECK_FALSE(is_random);
        CHECK(b.front() > a.back());  // the actual continuation
      },
      st);
  CHECK(st.random_next == 0);
  CHECK(st.instances > 0);
  CHECK(st.kept_next_no_other_document == st.instances);
  CHECK(st.skipped_no_other_document == 1);
}

TEST_CASE("NSP creation is deterministic for a seed and differs across seeds") {
  Rng data_rng(5);
  const DocumentPool pool = synthetic_pool(100, data_rng);
  auto run = [&](uint64_t seed) {
    std::vector<int32_t> flat;
    Rng rng(seed);
    NspStats st;
    NspOptions o;
    create_nsp_instances(
        pool, o, rng,
        [&](std::span<const int32_t> a, std::span<const int32_t> b, bool r) {
          flat.insert(flat.end(), a.begin(), a.end());
          flat.push_back(-1);
          flat.insert(flat.end(), b.begin(), b.end());
          flat.push_back(r ? -2 : -3);
        },
        st);
    return flat;
  };
  CHECK(run(1) == run(1));
  CHECK(run(1) != run(2));
}

TEST_CASE("MLM masking: 15% selected, 80/10/10, specials never touched") {
  MaskingVocab v;
  v.vocab_size = 1000;
  v.mask_id = 4;
  v.is_special.assign(1000, 0);
  v.is_continuation.assign(1000, 0);
  v.is_special[0] = v.is_special[2] = v.is_special[3] = 1;  // PAD CLS SEP
  MaskingOptions o;
  size_t candidates = 0, selected = 0, to_mask = 0, unchanged = 0, other = 0;
  Rng rng(123);
  for (int seq = 0; seq < 2000; ++seq) {
    std::vector<int32_t> ids(128);
    ids[0] = 2;
    for (size_t i = 1; i < 127; ++i) ids[i] = static_cast<int32_t>(10 + rng.below(990));
    ids[127] = 3;
    const std::vector<int32_t> original = ids;
    std::vector<int32_t> labels(128);
    apply_mlm_masking(ids, labels, v, o, rng);
    CHECK(ids[0] == 2);
    CHECK(ids[127] == 3);
    CHECK(labels[0] == kIgnoreIndex);
    CHECK(labels[127] == kIgnoreIndex);
    for (size_t i = 1; i < 127; ++i) {
      ++candidates;
      if (labels[i] == kIgnoreIndex) {
        REQUIRE(ids[i] == original[i]);
        continue;
      }
      REQUIRE(labels[i] == original[i]);
      ++selected;
      if (ids[i] == 4)
        ++to_mask;
      else if (ids[i] == original[i])
        ++unchanged;
      else
        ++other;
    }
  }
  CHECK(within_binomial(static_cast<double>(selected), static_cast<double>(candidates), 0.15));
  CHECK(within_binomial(static_cast<double>(to_mask), static_cast<double>(selected), 0.8));
  // "random" can draw the original id (1/1000): unchanged ~ 0.1 + 0.1/1000
  CHECK(within_binomial(static_cast<double>(unchanged), static_cast<double>(selected), 0.1 + 0.1 / 1000));
  CHECK(within_binomial(static_cast<double>(other), static_cast<double>(selected), 0.1 * 999 / 1000));
}

TEST_CASE("masking_vocab never selects a special token of the tokenizer, as HF's all_special_ids") {
  TokenizerConfig config;
  config.additional_special_tokens = {"<PHONE>", "<absent>"};
  const Tokenizer tok(Vocab({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<PHONE>", "a", "##b", "[unused0]"}),
                      config);
  const MaskingVocab v = masking_vocab(tok);
  CHECK(v.mask_id == 4);
  CHECK(v.vocab_size == 9);
  CHECK(v.is_special == std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 0, 0, 0});
  CHECK(v.is_continuation == std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 0, 1, 0});
  // A sequence of nothing but specials and one word: only the word's tokens are ever selected.
  MaskingOptions o;
  o.mlm_probability = 0.9;
  Rng rng(5);
  size_t selected = 0;
  for (int seq = 0; seq < 200; ++seq) {
    std::vector<int32_t> ids = {2, 1, 4, 5, 6, 7, 1, 3, 0};
    std::vector<int32_t> labels(ids.size());
    selected += apply_mlm_masking(ids, labels, v, o, rng);
    for (const size_t i : {0, 1, 2, 3, 6, 7, 8}) CHECK(labels[i] == kIgnoreIndex);
  }
  CHECK(selected > 300);  // ~0.9 * 2 * 200
}

TEST_CASE("whole-word masking selects ## pieces with their word, fixed count is exact") {
  MaskingVocab v;
  v.vocab_size = 100;
  v.mask_id = 4;
  v.is_special.assign(100, 0);
  v.is_continuation.assign(100, 0);
  v.is_special[2] = v.is_special[3] = 1;
  for (int i = 50; i < 100; ++i) v.is_continuation[static_cast<size_t>(i)] = 1;  // ids >= 50 are "##x"
  MaskingOptions o;
  o.whole_word = true;
  o.mask_replace_prob = 1.0;  // make selections visible
  o.random_replace_prob = 0.0;
  Rng rng(9);
  for (int seq = 0; seq < 500; ++seq) {
    // words: [10 ##60 ##61] [11] [12 ##62] ...
    std::vector<int32_t> ids = {2, 10, 60, 61, 11, 12, 62, 13, 63, 64, 65, 3};
    std::vector<int32_t> labels(ids.size());
    apply_mlm_masking(ids, labels, v, o, rng);
    auto sel = [&](size_t i) { return labels[i] != kIgnoreIndex; };
    CHECK((sel(1) == sel(2) && sel(2) == sel(3)));
    CHECK(sel(5) == sel(6));
    CHECK((sel(7) == sel(8) && sel(8) == sel(9) && sel(9) == sel(10)));
  }
  MaskingOptions f;
  f.fixed_count = true;
  for (int seq = 0; seq < 200; ++seq) {
    std::vector<int32_t> ids(102, 20);
    ids[0] = 2;
    ids[101] = 3;
    std::vector<int32_t> labels(ids.size());
    CHECK(apply_mlm_masking(ids, labels, v, f, rng) == 15);  // round(0.15 * 100)
  }
}

TEST_CASE("bert_prepare build + loader: determinism, rank slices, resume, padding") {
  make_directories(test_dir());
  std::string text;
  const char* sentences[] = {"이순신은 조선 중기의 무신이다.",
                             "한산도 대첩에서 일본 수군을 크게 물리쳤다.",
                             "그는 전라좌도 수군절도사로 임명되었다.",
                             "거북선을 만들어 왜군을 막았다.",
                             "노량 해전에서 전사하였다.",
                             "BERT는 마스크 언어 모델로 학습된다."};
  for (int d = 0; d < 120; ++d) {
    for (int s = 0; s < 2 + d % 5; ++s)
      text += std::string(sentences[(d + s) % 6]) + " 문서 " + std::to_string(d) + "\n";
    text += "\n";
  }
  write_file_atomic(test_dir() + "/clean.txt", text);
  std::istringstream in;
  std::ostringstream out, err;
  REQUIRE(tokenizer_main({"train", "--input", test_dir() + "/clean.txt", "--out", test_dir() + "/tok", "--vocab-size",
                          "400", "--quiet"},
                         in, out, err) == 0);
  auto build = [&](const std::string& dir, const std::string& threads) {
    std::ostringstream o, e;
    return prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt", "--out",
                         dir, "--max-seq-len", "32", "--dupe-factor", "3", "--valid-fraction", "0.1", "--seed", "7",
                         "--threads", threads, "--quiet"},
                        o, e);
  };
  REQUIRE(build(test_dir() + "/s1", "1") == 0);
  REQUIRE(build(test_dir() + "/s2", "2") == 0);
  CHECK(read_file(test_dir() + "/s1/train-00000.bin") == read_file(test_dir() + "/s2/train-00000.bin"));
  CHECK(read_file(test_dir() + "/s1/valid-00000.bin") == read_file(test_dir() + "/s2/valid-00000.bin"));

  std::ostringstream inspect_out, inspect_err;
  REQUIRE(prepare_main({"inspect", test_dir() + "/s1", "--json", "--decode", "2"}, inspect_out, inspect_err) == 0);
  const Json stats = Json::parse(inspect_out.str());
  const Json* train = stats.find("splits")->find("train");
  REQUIRE(train);
  CHECK(train->find("max_length")->as_int() <= 32);
  CHECK(train->find("nsp_random_next_fraction")->as_number() > 0.3);
  CHECK(stats.find("decoded")->as_array().size() == 2);
  CHECK(stats.find("decoded")->as_array()[0].as_string().rfind("[CLS] A: ", 0) == 0);

  const Tokenizer tok = Tokenizer::from_dir(test_dir() + "/tok");
  const Dataset data(test_dir() + "/s1", Split::kTrain, static_cast<uint32_t>(tok.vocab().size()));
  REQUIRE(data.size() > 100);
  CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kTrain, 401), Catch::Contains("rebuild the shards"));

  // The manifest records the vocabulary: the tokenizer it was built with passes, one of the same size
  // with two tokens swapped does not, in the trainer's check and in inspect --decode.
  CHECK(Json::parse(read_file(test_dir() + "/s1/manifest.json")).find("vocab_hash")->as_string() ==
        std::to_string(vocabulary_hash(tok.vocab())));
  CHECK_NOTHROW(data.check_vocabulary(tok.vocab(), test_dir() + "/tok"));
  // The hash is of the tokens as read, not of the file's bytes: the same vocab.txt edited on Windows
  // (CRLF) is the same vocabulary.
  std::string crlf;
  for (const std::string& t : tok.vocab().tokens()) crlf += t + "\r\n";
  make_directories(test_dir() + "/tok_crlf");
  write_file_atomic(test_dir() + "/tok_crlf/vocab.txt", crlf);
  tok.config().save(test_dir() + "/tok_crlf");
  CHECK_NOTHROW(data.check_vocabulary(Tokenizer::from_dir(test_dir() + "/tok_crlf").vocab(), test_dir() + "/tok_crlf"));
  std::vector<std::string> swapped_tokens = tok.vocab().tokens();
  std::swap(swapped_tokens[300], swapped_tokens[301]);
  const Vocab swapped(swapped_tokens);
  CHECK(vocabulary_hash(swapped) != vocabulary_hash(tok.vocab()));
  CHECK_THROWS_WITH(data.check_vocabulary(swapped, "other"),
                    Catch::Contains("s1/manifest.json: the shards were built with another vocabulary than "
                                    "other/vocab.txt") &&
                        Catch::Contains("s1/tokenizer"));
  make_directories(test_dir() + "/tok_swapped");
  swapped.save(test_dir() + "/tok_swapped/vocab.txt");
  tok.config().save(test_dir() + "/tok_swapped");
  std::ostringstream swapped_out, swapped_err;
  CHECK_THROWS_WITH(
      prepare_main({"inspect", test_dir() + "/s1", "--decode", "2", "--tokenizer", test_dir() + "/tok_swapped"},
                   swapped_out, swapped_err),
      Catch::Contains("another vocabulary"));
  // So does one shard of the directory given alone (its manifest entry found beside it), which also
  // decodes with the directory's copy of the tokenizer by default; a shard no manifest lists needs
  // --tokenizer and is decoded with whichever is given.
  std::ostringstream one_out, one_err;
  CHECK_THROWS_WITH(prepare_main({"inspect", test_dir() + "/s1/valid-00000.bin", "--decode", "2", "--tokenizer",
                                  test_dir() + "/tok_swapped"},
                                 one_out, one_err),
                    Catch::Contains("s1/manifest.json: the shards were built with another vocabulary"));
  REQUIRE(prepare_main({"inspect", test_dir() + "/s1/valid-00000.bin", "--decode", "1", "--json"}, one_out, one_err) ==
          0);
  CHECK(Json::parse(one_out.str()).find("decoded")->as_array().size() == 1);
  make_directories(test_dir() + "/loose");
  write_file_atomic(test_dir() + "/loose/valid-00000.bin", read_file(test_dir() + "/s1/valid-00000.bin"));
  CHECK_THROWS_WITH(prepare_main({"inspect", test_dir() + "/loose/valid-00000.bin", "--decode", "1"}, one_out, one_err),
                    "bert_prepare inspect: --decode on a shard not listed in a manifest.json beside it needs "
                    "--tokenizer DIR");
  CHECK(prepare_main({"inspect", test_dir() + "/loose/valid-00000.bin", "--decode", "1", "--tokenizer",
                      test_dir() + "/tok_swapped"},
                     one_out, one_err) == 0);
  // A manifest beside it that does not list it is named in a note; one that cannot be read is an
  // error (exit 1), and the shard is inspected all the same.
  write_file_atomic(test_dir() + "/loose/manifest.json", read_file(test_dir() + "/s1/manifest.json"));
  write_file_atomic(test_dir() + "/loose/other.bin", read_file(test_dir() + "/s1/valid-00000.bin"));
  std::ostringstream note_out, note_err;
  CHECK(prepare_main({"inspect", test_dir() + "/loose/other.bin"}, note_out, note_err) == 0);
  CHECK(note_err.str() == "note: " + test_dir() +
                              "/loose/manifest.json does not list other.bin: the shard is not "
                              "checked against it, nor its vocabulary\n");
  // The manifest named instead of its directory: the directory is what is inspected.
  std::ostringstream dir_out, manifest_out, manifest_err;
  REQUIRE(prepare_main({"inspect", test_dir() + "/s1"}, dir_out, one_err) == 0);
  CHECK(prepare_main({"inspect", test_dir() + "/s1/manifest.json"}, manifest_out, manifest_err) == 0);
  CHECK(manifest_err.str().empty());
  const auto after_label = [](const std::string& text) { return text.substr(text.find(": ")); };
  CHECK(after_label(manifest_out.str()) == after_label(dir_out.str()));
  write_file_atomic(test_dir() + "/loose/manifest.json", "{\"shards\": [");
  std::ostringstream broken_out, broken_err;
  CHECK(prepare_main({"inspect", test_dir() + "/loose/valid-00000.bin"}, broken_out, broken_err) == 1);
  CHECK_THAT(broken_err.str(),
             Catch::StartsWith("error: " + test_dir() + "/loose/manifest.json") &&
                 Catch::EndsWith(" (inspecting " + test_dir() + "/loose/valid-00000.bin without it)\n"));
  CHECK_THAT(broken_out.str(), Catch::Contains("valid: "));
  // A manifest without vocab_hash (older builds) is not checked; a malformed one is an error.
  const std::string manifest_text = read_file(test_dir() + "/s1/manifest.json");
  for (const char* value : {"12", "\"\"", "\"12x\"", "\"-1\"", "\"99999999999999999999\""}) {
    Json edited = Json::parse(manifest_text);
    edited.set("vocab_hash", Json::parse(value));
    write_file_atomic(test_dir() + "/s1/manifest.json", edited.dump());
    CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kTrain),
                      Catch::Contains("s1/manifest.json: \"vocab_hash\" must be a string of decimal digits"));
  }
  std::string without = manifest_text;
  without.erase(without.find("\"vocab_hash\""),
                without.find('\n', without.find("\"vocab_hash\"")) - without.find("\"vocab_hash\"") + 1);
  write_file_atomic(test_dir() + "/s1/manifest.json", without);
  CHECK_NOTHROW(Dataset(test_dir() + "/s1", Split::kTrain).check_vocabulary(swapped, "other"));
  // A split name other than train or valid would drop its shard from both splits without a word.
  Json misnamed = Json::parse(manifest_text);
  Json::Array entries = misnamed.find("shards")->as_array();
  entries[0].set("split", "Train");
  misnamed.set("shards", entries);
  write_file_atomic(test_dir() + "/s1/manifest.json", misnamed.dump());
  CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kValid),
                    Catch::Contains("s1/manifest.json: shard entry 0 has split 'Train'; expected 'train' or 'valid'"));
  // Each entry records its shard's checksum and example count: a shard from another build (what an
  // interrupted rebuild into the same directory leaves) is refused, and so are malformed records.
  std::ostringstream other_out, other_err;
  REQUIRE(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt", "--out",
                        test_dir() + "/s3", "--max-seq-len", "32", "--dupe-factor", "3", "--valid-fraction", "0.1",
                        "--seed", "8", "--quiet"},
                       other_out, other_err) == 0);
  write_file_atomic(test_dir() + "/s1/manifest.json", manifest_text);
  const std::string own_shard = read_file(test_dir() + "/s1/train-00000.bin");
  write_file_atomic(test_dir() + "/s1/train-00000.bin", read_file(test_dir() + "/s3/train-00000.bin"));
  CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kTrain),
                    Catch::Contains("s1/train-00000.bin: checksum differs from ") &&
                        Catch::Contains("s1/manifest.json shard entry 0's: the shard was rewritten after the "
                                        "manifest"));
  // inspect reports it and inspects the directory all the same, exiting 1.
  std::ostringstream stale_out, stale_err;
  CHECK(prepare_main({"inspect", test_dir() + "/s1"}, stale_out, stale_err) == 1);
  CHECK_THAT(stale_err.str(), Catch::StartsWith("error: ") && Catch::Contains("s1/train-00000.bin: checksum differs"));
  CHECK_THAT(stale_out.str(), Catch::Contains("train: ") && Catch::Contains("valid: "));
  write_file_atomic(test_dir() + "/s1/train-00000.bin", own_shard);
  // One shard given alone is checked against its own entry, named by its index in the manifest.
  size_t valid_index = 0;
  while (Json::parse(manifest_text).find("shards")->as_array().at(valid_index).find("file")->as_string() !=
         "valid-00000.bin")
    ++valid_index;
  REQUIRE(valid_index > 0);
  const std::string own_valid = read_file(test_dir() + "/s1/valid-00000.bin");
  write_file_atomic(test_dir() + "/s1/valid-00000.bin", read_file(test_dir() + "/s3/valid-00000.bin"));
  std::ostringstream lone_out, lone_err;
  CHECK(prepare_main({"inspect", test_dir() + "/s1/valid-00000.bin"}, lone_out, lone_err) == 1);
  CHECK_THAT(lone_err.str(), Catch::Contains("s1/valid-00000.bin: checksum differs from ") &&
                                 Catch::Contains("manifest.json shard entry " + std::to_string(valid_index) + "'s"));
  write_file_atomic(test_dir() + "/s1/valid-00000.bin", own_valid);
  const auto with_entry_field = [&](const char* key, const Json& value) {
    Json edited = Json::parse(manifest_text);
    Json::Array list = edited.find("shards")->as_array();
    list[0].set(key, value);
    edited.set("shards", list);
    write_file_atomic(test_dir() + "/s1/manifest.json", edited.dump());
  };
  // A train shard listed as valid: the loader and inspect both refuse it.
  with_entry_field("split", Json("valid"));
  CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kValid),
                    Catch::Contains("s1/train-00000.bin: its header says split 'train', ") &&
                        Catch::Contains("s1/manifest.json shard entry 0 says 'valid'"));
  std::ostringstream split_out, split_err;
  CHECK(prepare_main({"inspect", test_dir() + "/s1"}, split_out, split_err) == 1);
  CHECK_THAT(split_err.str(), Catch::Contains("its header says split 'train'"));
  with_entry_field("examples", Json(1));
  CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kTrain), Catch::Contains("example count differs from"));
  for (const Json& count : {Json("12"), Json(3.5), Json(-1)}) {
    with_entry_field("examples", count);
    CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kTrain),
                      Catch::Contains("s1/manifest.json shard entry 0: \"examples\" must be a count"));
  }
  with_entry_field("checksum", Json(12));
  CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kTrain),
                    Catch::Contains("s1/manifest.json shard entry 0: \"checksum\" must be a string of decimal digits"));
  // The set's vocab_size and max_seq_len must be each shard header's (a shard copied in from another
  // build whose checksum entry was copied along).
  for (const char* key : {"vocab_size", "max_seq_len"}) {
    Json edited = Json::parse(manifest_text);
    REQUIRE(edited.find(key) != nullptr);
    const uint64_t recorded = static_cast<uint64_t>(edited.find(key)->as_number());
    edited.set(key, recorded + 1);
    write_file_atomic(test_dir() + "/s1/manifest.json", edited.dump());
    CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kTrain),
                      Catch::Contains("s1/train-00000.bin: its header says " + std::string(key) + " " +
                                      std::to_string(recorded) + ", ") &&
                          Catch::Contains("s1/manifest.json says " + std::to_string(recorded + 1) +
                                          ": the shard is not from this build"));
    edited.set(key, Json("128"));
    write_file_atomic(test_dir() + "/s1/manifest.json", edited.dump());
    CHECK_THROWS_WITH(Dataset(test_dir() + "/s1", Split::kTrain),
                      Catch::Contains("s1/manifest.json: \"" + std::string(key) + "\" must be a count"));
  }
  write_file_atomic(test_dir() + "/s1/manifest.json", manifest_text);
  CHECK_NOTHROW(Dataset(test_dir() + "/s1", Split::kTrain));

  // Rank slices: disjoint, and together they cover every example of the epoch's full batches. Batch b
  // of rank r is batch b * world + r of one rank (what gradient accumulation over `world` micro-batches
  // sees), masks and padding included.
  const int world = 3, batch = 4;
  std::multiset<uint64_t> seen;
  size_t per_rank_batches = 0;
  LoaderOptions single_options;
  single_options.batch_size = batch;
  single_options.prefetch = 0;
  const Loader single(data, masking_vocab(tok), tok.cls_id(), tok.sep_id(), tok.pad_id(), single_options);
  for (int r = 0; r < world; ++r) {
    LoaderOptions o = single_options;
    o.rank = r;
    o.world_size = world;
    Loader loader(data, masking_vocab(tok), tok.cls_id(), tok.sep_id(), tok.pad_id(), o);
    per_rank_batches = loader.batches_per_epoch();
    CHECK(per_rank_batches == single.batches_per_epoch() / world);
    for (size_t b = 0; b < loader.batches_per_epoch(); ++b) {
      const std::vector<uint64_t> examples = loader.batch_examples(1, b);
      CHECK(examples == single.batch_examples(1, b * world + static_cast<size_t>(r)));
      for (uint64_t e : examples) seen.insert(e);
    }
    Batch ours, theirs;
    loader.make_batch(2, 1, ours);
    single.make_batch(2, world + static_cast<size_t>(r), theirs);
    CHECK(ours.input_ids == theirs.input_ids);
    CHECK(ours.labels == theirs.labels);
    CHECK(ours.seq_len == theirs.seq_len);
  }
  CHECK(seen.size() == per_rank_batches * batch * world);
  CHECK(std::set<uint64_t>(seen.begin(), seen.end()).size() == seen.size());
  CHECK(data.size() - seen.size() < static_cast<size_t>(batch * world));

  // Determinism and resume: a prefetching loader started mid-epoch yields exactly make_batch().
  LoaderOptions o;
  o.batch_size = 8;
  o.prefetch = 3;
  Loader loader(data, masking_vocab(tok), tok.cls_id(), tok.sep_id(), tok.pad_id(), o);
  const size_t nb = loader.batches_per_epoch();
  loader.start(0, nb - 2);
  for (int k = 0; k < 5; ++k) {
    Batch got, want;
    loader.next(got);
    const uint64_t epoch = (nb - 2 + static_cast<size_t>(k)) / nb;
    const size_t index = (nb - 2 + static_cast<size_t>(k)) % nb;
    loader.make_batch(epoch, index, want);
    CHECK(got.input_ids == want.input_ids);
    CHECK(got.labels == want.labels);
    CHECK(got.epoch == epoch);
    CHECK(got.index == index);
  }
  Batch b0, b1;
  loader.make_batch(0, 0, b0);
  loader.make_batch(1, 0, b1);
  CHECK(b0.example_ids != b1.example_ids);  // shuffled per epoch
  // Layout: [CLS] A [SEP] B [SEP] then padding; mask, types and sparse positions consistent.
  for (int r = 0; r < b0.batch_size; ++r) {
    const int32_t* ids = b0.input_ids.data() + r * b0.seq_len;
    const int32_t* mask = b0.attention_mask.data() + r * b0.seq_len;
    CHECK(ids[0] == tok.cls_id());
    int len = 0;
    while (len < b0.seq_len && mask[len]) ++len;
    for (int t = len; t < b0.seq_len; ++t) {
      CHECK(ids[t] == tok.pad_id());
      CHECK(mask[t] == 0);
      CHECK(b0.labels[static_cast<size_t>(r * b0.seq_len + t)] == kIgnoreIndex);
    }
    CHECK(b0.token_type_ids[static_cast<size_t>(r * b0.seq_len + len - 1)] == 1);
  }
  size_t dense = 0;
  for (int32_t l : b0.labels) dense += l != kIgnoreIndex;
  CHECK(dense == b0.masked_positions.size());
  for (size_t k = 0; k < b0.masked_positions.size(); ++k)
    CHECK(b0.labels[static_cast<size_t>(b0.masked_positions[k])] == b0.masked_labels[k]);
}

TEST_CASE("bert_prepare build warns when a pool holds a single document, all its NSP labels 0") {
  const std::string dir = test_dir() + "/single_doc";
  make_directories(dir);
  std::string one_document;
  for (int s = 0; s < 60; ++s) one_document += "조선 중기의 무신 이순신 " + std::to_string(s) + ".\n";
  write_file_atomic(dir + "/one.txt", one_document);
  std::ostringstream o, e;
  std::istringstream in;
  REQUIRE(
      tokenizer_main({"train", "--input", dir + "/one.txt", "--out", dir + "/tok", "--vocab-size", "300", "--quiet"},
                     in, o, e) == 0);
  std::ostringstream out, err;
  REQUIRE(prepare_main({"build", "--tokenizer", dir + "/tok", "--input", dir + "/one.txt", "--out", dir + "/shards",
                        "--max-seq-len", "32", "--valid-fraction", "0"},
                       out, err) == 0);
  CHECK_THAT(err.str(), Catch::Contains("warning: 1 pool(s) held a single document (train 1, valid 0)") &&
                            Catch::Contains(" pair(s) kept their actual next segment and ") &&
                            Catch::Contains("every NSP label there is 0") && !Catch::Contains("--valid-fraction"));
  CHECK_THAT(out.str(), Catch::Contains("random-next 0%"));
  // Two documents: no warning.
  write_file_atomic(dir + "/two.txt", one_document + "\n" + one_document);
  std::ostringstream out2, err2;
  REQUIRE(prepare_main({"build", "--tokenizer", dir + "/tok", "--input", dir + "/two.txt", "--out", dir + "/shards2",
                        "--max-seq-len", "32", "--valid-fraction", "0"},
                       out2, err2) == 0);
  CHECK_THAT(err2.str(), !Catch::Contains("single document"));
  CHECK_THAT(out2.str(), !Catch::Contains("random-next 0%"));
}

TEST_CASE("bert_prepare build: document boundaries as clean sees them, pools per file, its own output never read") {
  const std::string dir = test_dir() + "/boundaries";
  std::filesystem::remove_all(dir);
  make_directories(dir + "/corpus");
  std::string text;
  // Documents separated by lines that are blank to str.strip() and to clean: U+3000, NBSP, a form feed.
  const char* separators[] = {"\xE3\x80\x80\n", "\xC2\xA0 \n", "\f\n", "\n"};
  for (int d = 0; d < 40; ++d)
    text += "이순신은 조선 중기의 무신이다 " + std::to_string(d) + ".\n한산도 대첩 " + std::to_string(d) + ".\n" +
            separators[d % 4];
  write_file_atomic(dir + "/corpus/spaced.txt", text);
  std::ostringstream o, e;
  std::istringstream in;
  REQUIRE(tokenizer_main(
              {"train", "--input", dir + "/corpus/spaced.txt", "--out", dir + "/tok", "--vocab-size", "300", "--quiet"},
              in, o, e) == 0);
  const auto build = [&](const std::vector<std::string>& extra, std::string* err_text = nullptr) {
    std::vector<std::string> argv = {"build", "--tokenizer",      dir + "/tok", "--max-seq-len",
                                     "32",    "--valid-fraction", "0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::ostringstream out, err;
    const int code = prepare_main(argv, out, err);
    if (err_text) *err_text = err.str();
    REQUIRE(code == 0);
    return Json::parse(
        read_file(argv[std::find(argv.begin(), argv.end(), "--out") - argv.begin() + 1] + "/manifest.json"));
  };
  CHECK(build({"--input", dir + "/corpus/spaced.txt", "--out", dir + "/spaced"}).find("documents")->as_int() == 40);

  // A rebuild into a directory inside the input directory skips what the last build wrote there
  // (its tokenizer/vocab.txt would be read as a document).
  std::string warned;
  for (int run = 0; run < 2; ++run)
    CHECK(build({"--input", dir + "/corpus", "--out", dir + "/corpus/shards"}, &warned).find("documents")->as_int() ==
          40);
  CHECK_THAT(warned, Catch::Contains("corpus/shards/tokenizer/vocab.txt: warning: skipping a file inside the --out "
                                     "directory"));

  // One document a file, no blank lines: --pool-mb still bounds the pools (a shard per pool).
  std::string big;
  for (int s = 0; s < 6000; ++s) big += "한산도 대첩에서 일본 수군을 크게 물리쳤다 " + std::to_string(s) + ".\n";
  make_directories(dir + "/files");
  for (int f = 0; f < 4; ++f) write_file_atomic(dir + "/files/doc" + std::to_string(f) + ".txt", big);
  const Json pooled = build({"--input", dir + "/files", "--out", dir + "/pooled", "--pool-mb", "1"});
  CHECK(pooled.find("documents")->as_int() == 4);
  CHECK(pooled.find("shards")->as_array().size() >= 2);

  // One-sentence documents: every pair is random-next whatever --nsp-prob says, and the build says so.
  std::string lines;
  for (int d = 0; d < 200; ++d) lines += "이순신은 조선 중기의 무신이다 " + std::to_string(d) + ".\n\n";
  write_file_atomic(dir + "/lines.txt", lines);
  std::string nsp_warning;
  build({"--input", dir + "/lines.txt", "--out", dir + "/lines"}, &nsp_warning);
  CHECK_THAT(nsp_warning, Catch::Contains("warning: 100% of the train pairs are random-next (--nsp-prob 0.5): most "
                                          "documents hold a single sentence"));
  std::string quiet;
  build({"--input", dir + "/corpus/spaced.txt", "--out", dir + "/spaced"}, &quiet);
  CHECK_THAT(quiet, !Catch::Contains("random-next"));
  // Documents of several sentences, chunks of one: --max-seq-len is what leaves no room.
  std::ostringstream short_out, short_err;
  REQUIRE(prepare_main({"build", "--tokenizer", dir + "/tok", "--input", dir + "/corpus/spaced.txt", "--out",
                        dir + "/short", "--max-seq-len", "5", "--valid-fraction", "0"},
                       short_out, short_err) == 0);
  const std::string short_warning = short_err.str();
  CHECK_THAT(short_warning, Catch::Contains("pairs are random-next (--nsp-prob 0.5): a chunk of one sentence always "
                                            "takes a random B, and --max-seq-len 5 leaves room for one sentence a "
                                            "chunk; give it more room"));

  // Invalid UTF-8: the first ten lines located, then the total.
  std::string invalid;
  for (int d = 0; d < 12; ++d) invalid += "이순신은 \xFF 무신이다.\n한산도 대첩.\n\n";
  write_file_atomic(dir + "/invalid.txt", invalid);
  std::string utf8_warnings;
  build({"--input", dir + "/invalid.txt", "--out", dir + "/invalid"}, &utf8_warnings);
  CHECK_THAT(utf8_warnings, Catch::Contains("invalid.txt:28: warning: invalid UTF-8 replaced by U+FFFD\n") &&
                                !Catch::Contains("invalid.txt:31:") &&
                                Catch::Contains("warning: 12 line(s) with invalid UTF-8 in total\n"));
}

TEST_CASE("bert_prepare build: bad input is a clear error") {
  make_directories(test_dir());
  std::ostringstream o, e;
  CHECK_THROWS_WITH(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/none.txt",
                                  "--out", test_dir() + "/x"},
                                 o, e),
                    Catch::Contains("none.txt: input not found"));
  write_file_atomic(test_dir() + "/blank.txt", "\n\n  \n");
  std::string text;
  for (int d = 0; d < 30; ++d) text += "이순신은 조선 중기의 무신이다 " + std::to_string(d) + ".\n한산도 대첩.\n\n";
  write_file_atomic(test_dir() + "/clean.txt", text);
  std::istringstream in;
  REQUIRE(tokenizer_main({"train", "--input", test_dir() + "/clean.txt", "--out", test_dir() + "/tok", "--vocab-size",
                          "400", "--quiet"},
                         in, o, e) == 0);
  CHECK_THROWS_WITH(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/blank.txt",
                                  "--out", test_dir() + "/x"},
                                 o, e),
                    Catch::Contains("no examples produced"));
  CHECK_THROWS_WITH(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt",
                                  "--out", test_dir() + "/x", "--nsp-prob", "1.5"},
                                 o, e),
                    Catch::Contains("--nsp-prob must be in [0, 1]"));
  // --out is made, not its missing parents; an input file given as --out is named as such.
  CHECK_THROWS_WITH(
      prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt", "--out",
                    test_dir() + "/no/such/out"},
                   o, e),
      test_dir() + "/no/such/out: directory '" + test_dir() + "/no/such' does not exist (create it first)");
  CHECK_FALSE(file_exists(test_dir() + "/no"));
  CHECK_THROWS_WITH(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt",
                                  "--out", test_dir() + "/clean.txt"},
                                 o, e),
                    test_dir() + "/clean.txt: is also the --out path; --out names the directory the shards go to");
  // manifest.json records the seed as a JSON number: exact below 2^53 only.
  CHECK_THROWS_WITH(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt",
                                  "--out", test_dir() + "/x", "--seed", "9007199254740992"},
                                 o, e),
                    Catch::Contains("option '--seed' must be between 0 and 9007199254740991"));
  // Validation that leaves nothing to train on: refused, not shards bert_train then refuses.
  CHECK_THROWS_WITH(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt",
                                  "--out", test_dir() + "/x", "--valid-fraction", "1"},
                                 o, e),
                    "bert_prepare build: --valid-fraction 1 sends every document to validation and leaves none to "
                    "train on; it must be below 1");
  CHECK_THROWS_WITH(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt",
                                  "--out", test_dir() + "/x", "--valid-fraction", "0.99999999", "--quiet"},
                                 o, e),
                    Catch::Matches("bert_prepare build: no training examples: the validation split holds all [0-9]+ "
                                   "\\(--valid-fraction 0\\.99999999 of 30 document\\(s\\)\\); lower it or add input"));
  CHECK_FALSE(file_exists(test_dir() + "/x"));  // the validation shards it wrote are gone, and the directory
  // A fraction too small for the input: no valid split, said at build time rather than by bert_train.
  std::ostringstream tiny_out, tiny_err;
  REQUIRE(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt", "--out",
                        test_dir() + "/tiny_valid", "--valid-fraction", "0.000001", "--quiet"},
                       tiny_out, tiny_err) == 0);
  CHECK_THAT(tiny_err.str(), Catch::Contains("warning: --valid-fraction 0.000001 sent none of the 30 document(s) to "
                                             "validation (each goes with that probability): there is no valid split"));
  // Validation got a document, one sentence long: no example (seed 5 sends the second of two there).
  write_file_atomic(test_dir() + "/two_docs.txt",
                    "이순신은 조선 중기의 무신이다.\n한산도 대첩에서 일본 수군을 크게 물리쳤다.\n그는 전라좌도 "
                    "수군절도사로 임명되었다.\n\n세종은 훈민정음을 창제하였다.\n");
  std::ostringstream short_out, short_err;
  REQUIRE(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/two_docs.txt", "--out",
                        test_dir() + "/short_valid", "--valid-fraction", "0.5", "--seed", "5", "--quiet"},
                       short_out, short_err) == 0);
  CHECK_THAT(short_err.str(),
             Catch::Contains("warning: --valid-fraction 0.5 sent 1 of the 2 document(s) to validation, "
                             "and they gave no examples (too short to pair): there is no valid split"));
  // A tokenizer whose tokenizer_config.json names special tokens its vocab.txt lacks: the fields.
  const std::string odd_tok = test_dir() + "/tok_odd";
  make_directories(odd_tok);
  write_file_atomic(odd_tok + "/vocab.txt", read_file(test_dir() + "/tok/vocab.txt"));
  TokenizerConfig odd = TokenizerConfig::load(test_dir() + "/tok");
  odd.sep_token = "[NOPE]";
  odd.mask_token = "[MASKX]";
  odd.save(odd_tok);
  CHECK_THROWS_WITH(
      prepare_main({"build", "--tokenizer", odd_tok, "--input", test_dir() + "/clean.txt", "--out", test_dir() + "/x"},
                   o, e),
      odd_tok + "/vocab.txt: has no sep_token '[NOPE]', mask_token '[MASKX]' (set by " + odd_tok +
          "/tokenizer_config.json, else HF's default); BERT pretraining needs them");
  CHECK_THROWS_WITH(prepare_main({"inspect", test_dir() + "/nowhere"}, o, e), Catch::Contains("no such shard"));
  // A shard given as the text input (it ran on with a warning a line before).
  write_file_atomic(test_dir() + "/train-00000.bin", std::string("BERTSHRD\x01\0\0\0\x10\0\0\0", 16));
  CHECK_THROWS_WITH(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input",
                                  test_dir() + "/train-00000.bin", "--out", test_dir() + "/y"},
                                 o, e),
                    test_dir() + "/train-00000.bin: a bert_prepare shard (binary), not text");
  CHECK_FALSE(file_exists(test_dir() + "/y"));  // a failed build leaves no directory it made
  // A directory of the user's stays, with what was in it; the shards a failed build wrote go.
  make_directories(test_dir() + "/mine");
  write_file_atomic(test_dir() + "/mine/notes.txt", "mine");
  std::string big;  // over one 1 MB pool: a shard is written before the second input fails
  while (big.size() < (size_t{3} << 19)) big += text;
  write_file_atomic(test_dir() + "/big.txt", big);
  CHECK_THROWS_WITH(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/big.txt",
                                  test_dir() + "/train-00000.bin", "--out", test_dir() + "/mine", "--pool-mb", "1",
                                  "--dupe-factor", "1", "--quiet"},
                                 o, e),
                    Catch::EndsWith("a bert_prepare shard (binary), not text"));
  CHECK(read_file(test_dir() + "/mine/notes.txt") == "mine");
  size_t entries = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(test_dir() + "/mine")) ++entries;
  CHECK(entries == 1);
  // A failed rebuild over an earlier build leaves that build whole: it fails on its last input, after
  // its first pools' shards were written (into a staging directory, which goes too).
  const std::vector<std::string> rebuild = {"build",
                                            "--tokenizer",
                                            test_dir() + "/tok",
                                            "--input",
                                            test_dir() + "/big.txt",
                                            "--out",
                                            test_dir() + "/rebuilt",
                                            "--pool-mb",
                                            "1",
                                            "--dupe-factor",
                                            "1",
                                            "--quiet"};
  REQUIRE(prepare_main(rebuild, o, e) == 0);
  const auto snapshot = [&] {
    std::map<std::string, std::string> files;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(test_dir() + "/rebuilt"))
      files[entry.path().string()] = entry.is_regular_file() ? read_file(entry.path().string()) : "(dir)";
    return files;
  };
  const auto before = snapshot();
  REQUIRE(before.count(test_dir() + "/rebuilt/manifest.json") == 1);
  REQUIRE(before.count(test_dir() + "/rebuilt/train-00001.bin") == 1);  // several pools
  std::vector<std::string> failing = rebuild;
  failing.insert(failing.begin() + 5, test_dir() + "/train-00000.bin");
  CHECK_THROWS_WITH(prepare_main(failing, o, e), Catch::EndsWith("a bert_prepare shard (binary), not text"));
  CHECK(snapshot() == before);
  // A second build into a --out that a build is writing to is refused (their shards would interleave),
  // and touches nothing.
  std::vector<std::string> smaller = rebuild;
  smaller[smaller.size() - 4] = "64";  // --pool-mb: one pool
  {
    const DirectoryLock held(test_dir() + "/rebuilt", ".bert_prepare.lock", "bert_prepare build", "--out directory");
    std::string message;
    try {
      prepare_main(smaller, o, e);
    } catch (const Error& error) {
      message = error.what();
    }
    CHECK(message == test_dir() + "/rebuilt: another bert_prepare build is writing to this --out directory (pid " +
                         std::to_string(::getpid()) + ", holding " + test_dir() +
                         "/rebuilt/.bert_prepare.lock); wait for it to end, or choose another --out directory");
    const auto now = snapshot();
    CHECK(now.size() == before.size() + 1);  // the holder's lock file
    for (const auto& [path, content] : before) CHECK(now.count(path) == 1);
  }
  CHECK(snapshot() == before);
  // A build killed before it could clean up leaves its staging directory: the next build, holding the
  // lock, removes it (whatever its process number names now, here or on another host sharing the
  // directory), and a rebuild with fewer shards leaves none of the earlier ones, nor its lock file.
  for (const char* pid : {"999999999", "1"}) {
    make_directories(test_dir() + "/rebuilt/.building-" + pid);
    write_file_atomic(test_dir() + "/rebuilt/.building-" + pid + "/train-00000.bin", "partial");
  }
  REQUIRE(prepare_main(smaller, o, e) == 0);
  CHECK_FALSE(file_exists(test_dir() + "/rebuilt/.building-999999999"));
  CHECK_FALSE(file_exists(test_dir() + "/rebuilt/.building-1"));
  CHECK_FALSE(file_exists(test_dir() + "/rebuilt/train-00001.bin"));
  CHECK_FALSE(file_exists(test_dir() + "/rebuilt/.bert_prepare.lock"));
  CHECK(file_exists(test_dir() + "/rebuilt/train-00000.bin"));
}
