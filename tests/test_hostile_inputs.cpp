// Every file a user hands us, mutated thousands of ways: truncated at every length, bytes replaced
// with structural characters, ranges deleted and duplicated (which nests brackets), length fields set
// to edge values. Each mutant must either load or throw one bert::Error of one line that names the
// file; never another exception type, a crash, or (under scripts/sanitize.sh: ASan and UBSan) an
// out-of-bounds read. The loaders covered: JSON (config.json, trainer_state.json,
// tokenizer_config.json, metrics.jsonl), the run TOML, safetensors through the model's parameter
// reader, shards and their manifest.json, vocab.txt, gzip corpora.
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <typeinfo>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/text_reader.h"
#include "engine/bert.h"
#include "engine/config.h"
#include "engine/metrics.h"
#include "engine/toml.h"
#include "engine/trainer.h"
#include "tests/test_dirs.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab.h"

using namespace bert;

namespace {

// splitmix64: the mutants are the same on every run.
struct Mutator {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }

  // A byte a parser treats specially, or any byte.
  char interesting_byte() {
    static const std::string kSpecial = std::string("[]{}\",:='#\\\n\r\t .-+eE0179xu") + '\0' + "\x80\xFF\xC3\xED";
    return below(4) == 0 ? static_cast<char>(next()) : kSpecial[below(kSpecial.size())];
  }

  // `count` mutants of `valid`, each 1-3 edits: replace a byte, delete a range, duplicate a range.
  // Edits land in [0, focus) when focus > 0 (a binary file's header), else anywhere.
  std::vector<std::string> mutants(const std::string& valid, size_t count, size_t focus = 0) {
    std::vector<std::string> out;
    for (size_t k = 0; k < count; ++k) {
      std::string m = valid;
      const size_t edits = 1 + below(3);
      for (size_t e = 0; e < edits && !m.empty(); ++e) {
        const size_t span = focus ? std::min(focus, m.size()) : m.size();
        const size_t at = below(span);
        const size_t len = 1 + below(std::min<size_t>(24, m.size() - at));
        switch (below(3)) {
          case 0:
            m[at] = interesting_byte();
            break;
          case 1:
            m.erase(at, len);
            break;
          default:
            m.insert(below(span), m.substr(at, len));
            break;
        }
      }
      out.push_back(std::move(m));
    }
    return out;
  }
};

// Every prefix of `valid` (all lengths up to `dense`, then every `stride`-th).
std::vector<std::string> truncations(const std::string& valid, size_t dense = SIZE_MAX, size_t stride = 1) {
  std::vector<std::string> out;
  for (size_t n = 0; n < valid.size(); n += (n < dense ? 1 : stride)) out.push_back(valid.substr(0, n));
  return out;
}

// A plain overwrite: write_file_atomic's fsync would make the sweeps take seconds.
void put(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f);
  REQUIRE(std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
  REQUIRE(std::fclose(f) == 0);
}

struct Tally {
  size_t accepted = 0, rejected = 0;
};

// Runs `load` on every variant. A bert::Error must be one line naming `must_name`; anything else
// fails the test with the variant's index.
void sweep(const std::vector<std::string>& variants, const std::string& must_name,
           const std::function<void(const std::string&)>& load, Tally& tally) {
  for (size_t k = 0; k < variants.size(); ++k) {
    try {
      load(variants[k]);
      ++tally.accepted;
    } catch (const Error& e) {
      ++tally.rejected;
      const std::string what = e.what();
      if (what.find_first_of("\n\r") != std::string::npos || what.find(must_name) == std::string::npos) {
        INFO("variant " << k << " of " << variants.size());
        FAIL("error is not one line naming " << must_name << ": " << what);
      }
    } catch (const std::exception& e) {
      INFO("variant " << k << " of " << variants.size());
      FAIL("not a bert::Error but " << typeid(e).name() << ": " << e.what());
    }
  }
}

BertConfig tiny_config() {
  BertConfig c;
  c.vocab_size = 40;
  c.hidden_size = 8;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.intermediate_size = 16;
  c.max_position_embeddings = 16;
  return c;
}

}  // namespace

TEST_CASE("an Error is one line: control characters become escapes and UTF-8 is kept") {
  CHECK(std::string(Error("a.toml:3: got '\r\n'").what()) == "a.toml:3: got '\\r\\n'");
  CHECK(std::string(Error(std::string("x\ty\x01z\x7f") + '\0' + "이순신\xFF").what()) ==
        "x\\ty\\x01z\\x7f\\x00이순신\xFF");
  CHECK(std::string(Error(located("f.json", 2, "plain")).what()) == "f.json:2: plain");
}

TEST_CASE("JSON nested deeper than 128 levels is an error not a stack overflow") {
  // A safetensors header may be 100 MB: a million '[' used to recurse a million frames deep.
  for (const std::string& open : {std::string("["), std::string("{\"k\":")}) {
    std::string text;
    for (int i = 0; i < 1000000; ++i) text += open;
    CHECK_THROWS_WITH(Json::parse(text, "deep.json"), Catch::StartsWith("deep.json:1:") && Catch::Contains("128 deep"));
  }
  std::string ok, too_deep;
  for (int i = 0; i < 128; ++i) ok = "[" + ok + "]";
  too_deep = "[" + ok + "]";
  CHECK(Json::parse(ok).is_array());
  CHECK_THROWS_WITH(Json::parse(too_deep), Catch::Contains("128 deep"));
  // Depth is per path, not a count of brackets: wide and shallow is fine.
  std::string wide = "[";
  for (int i = 0; i < 10000; ++i) wide += std::string(i ? "," : "") + "[[1],{\"a\":[2]}]";
  CHECK(Json::parse(wide + "]").as_array().size() == 10000);
}

TEST_CASE("JSON lone surrogate escapes are errors") {
  CHECK(Json::parse(R"("\ud83d\ude00")").as_string() == "\xF0\x9F\x98\x80");
  CHECK_THROWS_WITH(Json::parse(R"("\ude00")", "s.json"),
                    Catch::Contains("s.json:1:") && Catch::Contains("low surrogate"));
  CHECK_THROWS_WITH(Json::parse(R"("\ud83d")"), Catch::Contains("high surrogate"));
  CHECK_THROWS_WITH(Json::parse(R"("\ud83dx")"), Catch::Contains("high surrogate"));
  CHECK_THROWS_WITH(Json::parse(R"("\ud83d\u0041")"), Catch::Contains("high surrogate"));
}

TEST_CASE("JSON duplicate keys keep the first position and the last value, and wide objects parse fast") {
  const Json j = Json::parse(R"({"a": 1, "b": 2, "a": 3, "c": 4, "b": 5, "a": 6})");
  REQUIRE(j.as_object().size() == 3);
  CHECK(j.as_object()[0].first == "a");
  CHECK(j.as_object()[0].second.as_number() == 6);
  CHECK(j.as_object()[1].first == "b");
  CHECK(j.as_object()[1].second.as_number() == 5);
  CHECK(j.as_object()[2].first == "c");
  CHECK(j.dump() == Json::parse(R"({"a": 6, "b": 5, "c": 4})").dump());
  // 300k keys: a quadratic duplicate search would take minutes here (and under the sanitizer).
  std::string text = "{";
  for (int i = 0; i < 300000; ++i) text += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":" + std::to_string(i);
  const Json wide = Json::parse(text + "}");
  REQUIRE(wide.as_object().size() == 300000);
  CHECK(wide.as_object()[123456].first == "k123456");
  CHECK(wide.find("k299999")->as_int() == 299999);
}

TEST_CASE("TOML arrays nested deeper than 32 levels are an error not a stack overflow") {
  CHECK_THROWS_WITH(parse_toml("a = " + std::string(1000000, '['), "deep.toml"),
                    Catch::StartsWith("deep.toml:1:") && Catch::Contains("32 deep"));
  std::string ok = "1";
  for (int i = 0; i < 32; ++i) ok = "[" + ok + "]";
  CHECK_NOTHROW(parse_toml("a = " + ok, "ok.toml"));
  CHECK_THROWS_WITH(parse_toml("a = [" + ok + "]", "deep.toml"), Catch::Contains("32 deep"));
}

TEST_CASE("mutated config.json and trainer_state.json load or fail with one line naming the file") {
  Mutator rng{1};
  const BertConfig model = tiny_config();
  const std::string config_text = model.to_hf_json().dump(2);
  TrainerState state;
  state.global_step = 12;
  state.optimizer_steps = 12;
  state.micro_step = 24;
  state.total_steps = 100;
  state.seed = 42;
  state.config_path = "run.toml";
  state.config_hash = "00ff";
  state.batches_per_epoch = 7;
  state.per_device_train_batch_size = 4;
  state.gradient_accumulation_steps = 2;
  state.model = model;
  const std::string state_text = state.to_json().dump(2);
  REQUIRE_NOTHROW(BertConfig::from_hf_json(Json::parse(config_text, "config.json"), "config.json"));
  REQUIRE_NOTHROW(TrainerState::from_json(Json::parse(state_text, "trainer_state.json"), "trainer_state.json"));

  // Integral but past int64: converting it would be undefined behaviour.
  std::string huge = state_text;
  const std::string step_field = "\"global_step\": 12";
  REQUIRE(huge.find(step_field) != std::string::npos);
  huge.replace(huge.find(step_field), step_field.size(), "\"global_step\": 1e300");
  CHECK_THROWS_WITH(TrainerState::from_json(Json::parse(huge), "trainer_state.json"),
                    Catch::Contains("trainer_state.json: 'global_step' must be a 64-bit integer, got 1e+300"));

  Tally config_tally, state_tally;
  const auto config_load = [](const std::string& text) {
    make_parameter_table(BertConfig::from_hf_json(Json::parse(text, "config.json"), "config.json"));
  };
  sweep(truncations(config_text), "config.json", config_load, config_tally);
  sweep(rng.mutants(config_text, 3000), "config.json", config_load, config_tally);
  const auto state_load = [](const std::string& text) {
    TrainerState::from_json(Json::parse(text, "trainer_state.json"), "trainer_state.json");
  };
  sweep(truncations(state_text), "trainer_state.json", state_load, state_tally);
  sweep(rng.mutants(state_text, 3000), "trainer_state.json", state_load, state_tally);
  // The mutations reach the validation, not only the syntax: some mutants load.
  CHECK(config_tally.accepted > 50);
  CHECK(config_tally.rejected > 1000);
  CHECK(state_tally.accepted > 50);
  CHECK(state_tally.rejected > 1000);
}

TEST_CASE("mutated run configs load or fail with one line naming the file") {
  Mutator rng{2};
  Tally tally;
  for (const char* name : {"demo_cpu.toml", "bert_base_seq128_cuda.toml"}) {
    const std::string path = std::string(BERT_SOURCE_DIR) + "/configs/" + name;
    const std::string text = read_file(path);
    REQUIRE_NOTHROW(parse_run_config(text, name));
    const auto load = [&](const std::string& t) { parse_run_config(t, name); };
    sweep(truncations(text, 400, 7), name, load, tally);
    sweep(rng.mutants(text, 3000), name, load, tally);
  }
  CHECK(tally.accepted > 50);
  CHECK(tally.rejected > 1000);
}

TEST_CASE("mutated tokenizer files load or fail with one line naming the file") {
  Mutator rng{3};
  const std::string dir = test_dir();
  std::vector<std::string> tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "이",
                                     "##순",  "신",    "##은",  "a",     "##b"};
  std::string vocab_text;
  for (const auto& t : tokens) vocab_text += t + "\n";
  TokenizerConfig config;
  config.save(dir);
  const std::string config_text = read_file(dir + "/tokenizer_config.json");
  put(dir + "/vocab.txt", vocab_text);
  REQUIRE_NOTHROW(Tokenizer::from_dir(dir));

  Tally vocab_tally, config_tally;
  // Writes `name` into the tokenizer directory, then loads the tokenizer and encodes with it.
  const auto writing = [&dir](const std::string& name) {
    return [&dir, name](const std::string& text) {
      put(dir + "/" + name, text);
      const Tokenizer tok = Tokenizer::from_dir(dir);
      std::vector<int32_t> ids;
      EncodeScratch scratch;
      tok.encode(std::string_view("이순신은 ab [MASK]"), ids, scratch);
    };
  };
  sweep(truncations(vocab_text), "vocab.txt", writing("vocab.txt"), vocab_tally);
  sweep(rng.mutants(vocab_text, 1000), "vocab.txt", writing("vocab.txt"), vocab_tally);
  put(dir + "/vocab.txt", vocab_text);
  sweep(truncations(config_text), "tokenizer_config.json", writing("tokenizer_config.json"), config_tally);
  sweep(rng.mutants(config_text, 2000), "tokenizer_config.json", writing("tokenizer_config.json"), config_tally);
  CHECK(vocab_tally.accepted > 50);
  CHECK(vocab_tally.rejected > 20);
  CHECK(config_tally.accepted > 50);
  CHECK(config_tally.rejected > 500);
}

TEST_CASE("mutated safetensors checkpoints load or fail with one line naming the file") {
  Mutator rng{4};
  const BertConfig config = tiny_config();
  const ParameterTable table = make_parameter_table(config);
  std::vector<float> arena(table.arena_elements);
  init_parameters<float>(config, table, 7, arena);
  const std::string path = test_dir() + "/model.safetensors";
  write_parameter_arena(path, table.params, arena);
  const std::string valid = read_file(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, valid.data(), 8);
  REQUIRE(read_parameter_arena(path, config, table) == arena);

  std::vector<std::string> variants = truncations(valid, 8 + header_len + 64, 97);
  for (auto& m : rng.mutants(valid, 3000, 8 + header_len)) variants.push_back(std::move(m));
  // The length field at edge values.
  for (const uint64_t len : {uint64_t{0}, uint64_t{1}, header_len - 1, header_len + 1, uint64_t{valid.size()} - 8,
                             uint64_t{valid.size()} - 7, uint64_t{1} << 32, uint64_t{1} << 63, UINT64_MAX}) {
    std::string m = valid;
    std::memcpy(m.data(), &len, 8);
    variants.push_back(std::move(m));
  }
  // A NaN or an infinity in a weight: refused, naming the tensor.
  for (const float poison : {std::nanf(""), -INFINITY}) {
    std::vector<float> damaged = arena;
    const ParamInfo& info = table.params[3];
    damaged[info.offset + 5] = poison;
    write_parameter_arena(path, table.params, damaged);
    CHECK_THROWS_WITH(read_parameter_arena(path, config, table),
                      Catch::StartsWith(path + ": tensor '" + info.name + "' holds ") &&
                          Catch::Contains(" at element 5; the file is damaged"));
  }
  // A byte of the data buffer replaced: any bit pattern is a float, so only the data hash in the
  // header catches it.
  for (int k = 0; k < 200; ++k) {
    std::string m = valid;
    const size_t at = 8 + header_len + rng.below(valid.size() - 8 - header_len);
    m[at] = static_cast<char>(m[at] ^ static_cast<char>(1 + rng.below(255)));
    put(path, m);
    CHECK_THROWS_WITH(read_parameter_arena(path, config, table),
                      Catch::StartsWith(path + ": the tensor data hashes to ") &&
                          Catch::Contains("the file was damaged after it was written"));
  }
  Tally tally;
  sweep(
      variants, "model.safetensors",
      [&](const std::string& bytes) {
        put(path, bytes);
        (void)read_parameter_arena(path, config, table);
      },
      tally);
  CHECK(tally.accepted > 0);  // the few header edits that leave it valid (a metadata value, white space)
  CHECK(tally.rejected > 2000);
}

TEST_CASE("mutated shards load or fail with one line naming the file") {
  Mutator rng{5};
  const std::string path = test_dir() + "/train-00000.bin";
  for (const uint32_t vocab : {1000u, 70000u}) {
    ShardWriter writer(vocab, 32, Split::kTrain);
    for (int i = 0; i < 40; ++i) {
      std::vector<int32_t> a(1 + rng.below(10)), b(1 + rng.below(15));
      for (auto& id : a) id = static_cast<int32_t>(rng.below(vocab));
      for (auto& id : b) id = static_cast<int32_t>(rng.below(vocab));
      writer.add(a, b, i % 2);
    }
    writer.write(path);
    const std::string valid = read_file(path);
    std::vector<std::string> variants = truncations(valid, kShardHeaderBytes + 16, 13);
    for (auto& m : rng.mutants(valid, 1500, kShardHeaderBytes)) variants.push_back(std::move(m));
    for (auto& m : rng.mutants(valid, 1500)) variants.push_back(std::move(m));
    // Header counts at edge values, including ones whose size arithmetic wraps around.
    for (const size_t field : {size_t{24}, size_t{32}})
      for (const uint64_t v :
           {uint64_t{0}, uint64_t{1}, uint64_t{1} << 61, (UINT64_MAX - 71) / 11 + 1, UINT64_MAX / 2 + 1, UINT64_MAX}) {
        std::string m = valid;
        std::memcpy(m.data() + field, &v, 8);
        variants.push_back(std::move(m));
      }
    for (const bool verify : {true, false}) {
      Tally tally;
      sweep(
          variants, "train-00000.bin",
          [&](const std::string& bytes) {
            put(path, bytes);
            const Shard shard(path, 0, verify);
            std::vector<int32_t> a, b;
            for (size_t i = 0; i < shard.size(); ++i) {
              shard.example(i, a, b);
              for (const auto* segment : {&a, &b})
                for (const int32_t id : *segment)
                  if (id < 0 || static_cast<uint32_t>(id) >= shard.header().vocab_size)
                    FAIL("id " << id << " accepted");
            }
          },
          tally);
      CHECK(tally.rejected > 1000);
      if (!verify) CHECK(tally.accepted > 10);  // payload edits that keep every invariant
    }
  }
  // What the writer would refuse to read back, it refuses to write.
  ShardWriter writer(100, 32, Split::kTrain);
  CHECK_THROWS_WITH(writer.add(std::vector<int32_t>{1}, std::vector<int32_t>{100}, false),
                    Catch::Contains("token id 100"));
  CHECK_THROWS_WITH(writer.add(std::vector<int32_t>{-1}, std::vector<int32_t>{2}, false),
                    Catch::Contains("token id -1"));
  CHECK_THROWS(writer.add(std::vector<int32_t>{}, std::vector<int32_t>{2}, false));
  CHECK_THROWS(writer.add(std::vector<int32_t>{1}, std::vector<int32_t>{}, false));
}

TEST_CASE("a shard with an id outside its vocabulary and a valid checksum is refused") {
  const std::string path = test_dir() + "/bad-id.bin";
  ShardWriter writer(1000, 32, Split::kTrain);
  writer.add(std::vector<int32_t>{5, 6}, std::vector<int32_t>{7}, false);
  writer.add(std::vector<int32_t>{8}, std::vector<int32_t>{9, 999}, true);
  writer.write(path);
  std::string bytes = read_file(path);
  // vocab_size (offset 16) lowered to 999 makes id 999 of example 1 out of range; the header is not
  // under the checksum, so only the id check catches it.
  const uint32_t smaller = 999;
  std::memcpy(bytes.data() + 16, &smaller, 4);
  put(path, bytes);
  CHECK_THROWS_WITH(Shard(path), Catch::Contains("bad-id.bin") && Catch::Contains("token id 999 of example 1") &&
                                     Catch::Contains("999-token vocabulary"));
  // Counts whose size arithmetic would wrap around get their own message.
  for (const size_t field : {size_t{24}, size_t{32}}) {
    std::string wrapped = read_file(path);
    const uint64_t count = UINT64_MAX / 2 + 1;
    std::memcpy(wrapped.data() + field, &count, 8);
    put(path, wrapped);
    CHECK_THROWS_WITH(Shard(path), Catch::Contains("bad-id.bin") && Catch::Contains("cannot fit in a file"));
  }
}

TEST_CASE("mutated shard manifests load or fail with one line naming the shard directory") {
  Mutator rng{8};
  const std::string dir = test_dir() + "/shards";
  make_directories(dir);
  std::vector<std::string> tokens;
  for (int i = 0; i < 500; ++i) tokens.push_back("t" + std::to_string(i));
  const Vocab vocab(tokens);
  Json shards = Json::array();
  for (const char* name : {"train-00000.bin", "train-00001.bin", "valid-00000.bin"}) {
    const Split split = name[0] == 't' ? Split::kTrain : Split::kValid;
    ShardWriter writer(500, 32, split);
    for (int i = 0; i < 10; ++i) writer.add(std::vector<int32_t>{1 + i, 2}, std::vector<int32_t>{3, 4 + i}, i % 2);
    const ShardHeader h = writer.write(dir + "/" + name);
    Json entry = Json::object();
    entry.set("file", name);
    entry.set("split", split_name(split));
    entry.set("examples", h.example_count);
    entry.set("checksum", std::to_string(h.checksum));
    shards.push(entry);
  }
  Json manifest = Json::object();
  manifest.set("format", "bertforge-shards");
  manifest.set("vocab_size", 500);
  manifest.set("vocab_hash", std::to_string(vocabulary_hash(vocab)));
  manifest.set("shards", shards);
  const std::string valid = manifest.dump(2);
  put(dir + "/manifest.json", valid);
  const Dataset whole(dir, Split::kTrain, 500);
  REQUIRE(whole.size() == 20);
  REQUIRE_NOTHROW(whole.check_vocabulary(vocab, "tok"));

  std::vector<std::string> variants = truncations(valid);
  for (auto& m : rng.mutants(valid, 3000)) variants.push_back(std::move(m));
  Tally tally;
  sweep(
      variants, dir,
      [&](const std::string& text) {
        put(dir + "/manifest.json", text);
        for (const Split split : {Split::kTrain, Split::kValid}) {
          const Dataset data(dir, split, 500);
          data.check_vocabulary(vocab, "tok");
          std::vector<int32_t> a, b;
          for (size_t i = 0; i < data.size(); ++i) {
            size_t local = 0;
            data.shard_of(i, local).example(local, a, b);
          }
        }
      },
      tally);
  CHECK(tally.accepted > 50);
  CHECK(tally.rejected > 1000);
}

TEST_CASE("mutated metrics.jsonl resumes or fails with one line naming the file") {
  Mutator rng{6};
  const std::string path = test_dir() + "/metrics.jsonl";
  std::string valid;
  for (int step = 1; step <= 12; ++step)
    valid += R"({"step":)" + std::to_string(step) + R"(,"loss":)" + std::to_string(10.0 / step) +
             R"(,"lr":0.0001,"epoch":0.5})" + "\n";
  Tally tally;
  sweep(
      rng.mutants(valid, 1500), "metrics.jsonl",
      [&](const std::string& text) {
        put(path, text);
        { MetricsLog log(path, 6); }
        plot_metrics_svg(path, test_dir() + "/loss.svg");
      },
      tally);
  CHECK(tally.accepted > 50);
  CHECK(tally.rejected > 100);
}

TEST_CASE("mutated gzip corpora read or fail with one line naming the file") {
  Mutator rng{7};
  const std::string path = test_dir() + "/corpus.txt.gz";
  std::string text;
  for (int i = 0; i < 60; ++i) text += "이순신은 조선 중기의 무신이다. 문서 " + std::to_string(i) + "번째 줄.\n";
  gzFile out = gzopen(path.c_str(), "wb");
  REQUIRE(out);
  REQUIRE(gzwrite(out, text.data(), static_cast<unsigned>(text.size())) == static_cast<int>(text.size()));
  REQUIRE(gzclose(out) == Z_OK);
  const std::string valid = read_file(path);
  std::vector<std::string> variants = truncations(valid);
  for (auto& m : rng.mutants(valid, 1500)) variants.push_back(std::move(m));
  // Bytes 4-9 of a gzip header (mtime, extra flags, OS) are informational: these load.
  for (size_t at = 4; at < 10; ++at) {
    std::string m = valid;
    m[at] = static_cast<char>(m[at] ^ 0x5A);
    variants.push_back(std::move(m));
  }
  Tally tally;
  sweep(
      variants, "corpus.txt.gz",
      [&](const std::string& bytes) {
        put(path, bytes);
        LineReader reader(path);
        std::string_view line;
        size_t lines = 0;
        while (reader.next(line)) ++lines;
        if (bytes == valid) CHECK(lines == 60);
      },
      tally);
  CHECK(tally.accepted >= 6);
  CHECK(tally.rejected > 1000);
}
