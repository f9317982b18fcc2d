// bert_train test fixture: a tiny Korean corpus -> tokenizer -> shards under test_dir(), run configs
// and a train_main wrapper. Shared by tests/test_trainer_loop.cpp and tests/gpu/test_cuda_trainer.cpp.
#pragma once

#include <catch2/catch.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "common/file.h"
#include "common/json.h"
#include "data/prepare.h"
#include "engine/trainer.h"
#include "tests/test_dirs.h"
#include "tokenizer/commands.h"

namespace bert::test {

// Corpus -> tokenizer -> shards (train + valid) under test_dir().
inline void make_tiny_data() {
  const std::string dir = test_dir();
  const char* sentences[] = {"이순신은 조선 중기의 무신이다.",          "한산도 대첩에서 일본 수군을 크게 물리쳤다.",
                             "그는 전라좌도 수군절도사로 임명되었다.", "거북선을 만들어 왜군을 막았다.",
                             "노량 해전에서 전사하였다.",              "세종은 훈민정음을 창제하였다.",
                             "집현전 학자들이 한글 연구를 도왔다.",    "BERT는 마스크 언어 모델로 학습된다."};
  std::string text;
  for (int d = 0; d < 160; ++d) {
    for (int s = 0; s < 3 + d % 4; ++s) text += std::string(sentences[(d * 3 + s) % 8]) + "\n";
    text += "\n";
  }
  write_file_atomic(dir + "/clean.txt", text);
  std::istringstream in;
  std::ostringstream out, err;
  REQUIRE(tokenizer_main({"train", "--input", dir + "/clean.txt", "--out", dir + "/tok", "--vocab-size", "300",
                          "--quiet"},
                         in, out, err) == 0);
  REQUIRE(prepare_main({"build", "--tokenizer", dir + "/tok", "--input", dir + "/clean.txt", "--out", dir + "/shards",
                        "--max-seq-len", "32", "--dupe-factor", "2", "--valid-fraction", "0.1", "--seed", "3",
                        "--threads", "1", "--quiet"},
                       out, err) == 0);
}

constexpr const char* kTinyModel =
    "hidden_size = 16\nnum_hidden_layers = 2\nnum_attention_heads = 2\nintermediate_size = 64\n"
    "max_position_embeddings = 32\n";

// A tiny run config; `training` adds/overrides [training] lines, `model` is the [model] body.
inline std::string write_config(const std::string& name, const std::string& output_dir, const std::string& training,
                                const std::string& model = kTinyModel) {
  const std::string dir = test_dir();
  const std::string path = dir + "/" + name + ".toml";
  write_file_atomic(path, "[model]\n" + model + "\n" +
                              "[data]\ntokenizer = \"" + dir + "/tok\"\ntrain_data = \"" + dir + "/shards\"\n\n"
                              "[training]\noutput_dir = \"" + dir + "/" + output_dir + "\"\nthreads = 2\nseed = 7\n" +
                              training);
  return path;
}

struct RunResult {
  int code;
  std::string out, err;
};

inline RunResult train(const std::vector<std::string>& args, const TrainHooks& hooks = {}) {
  std::ostringstream out, err;
  const int code = train_main(args, out, err, hooks);
  return {code, out.str(), err.str()};
}

inline std::vector<Json> read_metrics(const std::string& path) {
  std::vector<Json> records;
  std::istringstream lines(read_file(path));
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) records.push_back(Json::parse(line, path));
  return records;
}

}  // namespace bert::test
