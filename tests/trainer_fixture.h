// bert_train test fixture: a tiny Korean corpus -> tokenizer -> shards under test_dir(), run configs
// and a train_main wrapper. Shared by tests/test_trainer_loop.cpp and tests/gpu/test_cuda_trainer.cpp.
#pragma once

#include <catch2/catch.hpp>
#include <csignal>
#include <exception>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "common/file.h"
#include "common/json.h"
#include "data/prepare.h"
#include "engine/checkpoint_dir.h"
#include "engine/trainer.h"
#include "tests/test_dirs.h"
#include "tokenizer/commands.h"

namespace bert::test {

// Corpus -> tokenizer -> shards (train + valid) under test_dir().
inline void make_tiny_data() {
  const std::string dir = test_dir();
  const char* sentences[] = {"이순신은 조선 중기의 무신이다.",
                             "한산도 대첩에서 일본 수군을 크게 물리쳤다.",
                             "그는 전라좌도 수군절도사로 임명되었다.",
                             "거북선을 만들어 왜군을 막았다.",
                             "노량 해전에서 전사하였다.",
                             "세종은 훈민정음을 창제하였다.",
                             "집현전 학자들이 한글 연구를 도왔다.",
                             "BERT는 마스크 언어 모델로 학습된다."};
  std::string text;
  for (int d = 0; d < 160; ++d) {
    for (int s = 0; s < 3 + d % 4; ++s) text += std::string(sentences[(d * 3 + s) % 8]) + "\n";
    text += "\n";
  }
  write_file_atomic(dir + "/clean.txt", text);
  std::istringstream in;
  std::ostringstream out, err;
  REQUIRE(
      tokenizer_main({"train", "--input", dir + "/clean.txt", "--out", dir + "/tok", "--vocab-size", "300", "--quiet"},
                     in, out, err) == 0);
  REQUIRE(prepare_main({"build", "--tokenizer", dir + "/tok", "--input", dir + "/clean.txt", "--out", dir + "/shards",
                        "--max-seq-len", "32", "--dupe-factor", "2", "--valid-fraction", "0.1", "--seed", "3",
                        "--threads", "1", "--quiet"},
                       out, err) == 0);
}

// The smallest model the CUDA kernels take (head_dim 32), for the GPU trainer tests and their
// emulated runs.
constexpr const char* kCudaTinyModel =
    "hidden_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 2\nintermediate_size = 128\n"
    "max_position_embeddings = 32\n";

// The message of what `run` throws ("(no error)" when nothing is thrown).
inline std::string error_of(const std::function<void()>& run) {
  try {
    run();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

constexpr const char* kTinyModel =
    "hidden_size = 16\nnum_hidden_layers = 2\nnum_attention_heads = 2\nintermediate_size = 64\n"
    "max_position_embeddings = 32\n";

// A tiny run config; `training` adds/overrides [training] lines, `model` is the [model] body.
inline std::string write_config(const std::string& name, const std::string& output_dir, const std::string& training,
                                const std::string& model = kTinyModel) {
  const std::string dir = test_dir();
  const std::string path = dir + "/" + name + ".toml";
  write_file_atomic(path, "[model]\n" + model + "\n" + "[data]\ntokenizer = \"" + dir + "/tok\"\ntrain_data = \"" +
                              dir +
                              "/shards\"\n\n"
                              "[training]\noutput_dir = \"" +
                              dir + "/" + output_dir + "\"\nthreads = 2\nseed = 7\n" + training);
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

// A run stopped by SIGINT after step 5 and resumed equals an uninterrupted run bit for bit (metrics,
// weights, optimizer state); resuming an earlier checkpoint repeats the same steps. `device` is a
// [training] line, `model` the [model] body.
inline void check_stop_and_resume_bitwise(const std::string& device, const std::string& model) {
  make_tiny_data();
  // Accumulation, dropout (default 0.1), clipping, warmup + linear decay, a logging window cut by the
  // stop (logging every 3, stop at 5), evaluation.
  const std::string settings =
      std::string(
          "max_steps = 12\nper_device_train_batch_size = 8\ngradient_accumulation_steps = 2\nlearning_rate = 3e-3\n"
          "warmup_steps = 2\nweight_decay = 0.01\nmax_grad_norm = 0.5\nlogging_steps = 3\neval_steps = 4\nsave_steps = "
          "4\n") +
      device;
  const std::string straight = write_config("straight", "straight", settings, model);
  const std::string stopped = write_config("stopped", "stopped", settings, model);
  REQUIRE(train({"--config", straight}).code == 0);

  TrainHooks hooks;
  hooks.after_step = [](int64_t step) {
    if (step == 5) std::raise(SIGINT);  // the real handler: finish the step, save, print, exit 130
  };
  const RunResult first = train({"--config", stopped}, hooks);
  REQUIRE(first.code == 128 + SIGINT);  // saved, but not finished: non-zero
  const std::string checkpoint = test_dir() + "/stopped/checkpoint-5";
  CHECK(first.out.find("stopped at step 5 of 12") != std::string::npos);
  CHECK(first.out.find(resume_command(stopped, checkpoint)) != std::string::npos);
  CHECK(file_exists(checkpoint + "/trainer_state.json"));
  CHECK(latest_checkpoint(test_dir() + "/stopped")->step == 5);
  CHECK_FALSE(training_stop_requested());  // cleared when the run ends

  const RunResult second = train({"--config", stopped, "--resume", checkpoint});
  REQUIRE(second.code == 0);
  INFO(second.err);

  const auto a = read_metrics(test_dir() + "/straight/metrics.jsonl");
  const auto b = read_metrics(test_dir() + "/stopped/metrics.jsonl");
  REQUIRE(a.size() == 6);  // steps 3, 4 (eval), 6, 8 (eval), 9, 12
  REQUIRE(b.size() == a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].find("step")->as_int() == b[i].find("step")->as_int());
    for (const char* key : {"loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "grad_norm", "eval_loss",
                            "eval_mlm_loss", "eval_nsp_acc"}) {
      const Json* x = a[i].find(key);
      const Json* y = b[i].find(key);
      REQUIRE((x == nullptr) == (y == nullptr));
      if (x) CHECK(x->dump() == y->dump());
    }
  }
  CHECK(read_file(test_dir() + "/straight/checkpoint-12/model.safetensors") ==
        read_file(test_dir() + "/stopped/checkpoint-12/model.safetensors"));
  CHECK(read_file(test_dir() + "/straight/checkpoint-12/trainer_state.safetensors") ==
        read_file(test_dir() + "/stopped/checkpoint-12/trainer_state.safetensors"));

  // Resuming an earlier checkpoint drops the metrics written after it and repeats the same steps; a
  // damaged line goes too, with a warning.
  const std::string model_before = read_file(test_dir() + "/straight/checkpoint-12/model.safetensors");
  const std::string metrics = test_dir() + "/straight/metrics.jsonl";
  const std::string log = read_file(metrics);
  write_file_atomic(metrics,
                    log.substr(0, log.find('\n') + 1) + "{\"step\": 3, \"lo\n" + log.substr(log.find('\n') + 1));
  const RunResult again = train({"--config", straight, "--resume", test_dir() + "/straight/checkpoint-8"});
  REQUIRE(again.code == 0);
  // The checkpoint after step 8 is the branched-off run's: set aside whole, not taken for this run's.
  CHECK_THAT(again.out, Catch::Contains("set aside " + test_dir() +
                                        "/straight/checkpoint-12.superseded: a later "
                                        "checkpoint than step 8"));
  CHECK(read_file(test_dir() + "/straight/checkpoint-12.superseded/model.safetensors") == model_before);
  CHECK_THAT(again.err, Catch::Contains("warning: " + test_dir() +
                                        "/straight/metrics.jsonl: dropped 1 unreadable line while resuming (line 2); "
                                        "the loss curve has a gap there"));
  const auto c = read_metrics(test_dir() + "/straight/metrics.jsonl");
  REQUIRE(c.size() == a.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* key : {"step", "loss", "eval_loss"}) {
      const Json* x = a[i].find(key);
      const Json* y = c[i].find(key);
      REQUIRE((x == nullptr) == (y == nullptr));
      if (x) CHECK(x->dump() == y->dump());
    }
  CHECK(read_file(test_dir() + "/straight/checkpoint-12/model.safetensors") == model_before);
}

}  // namespace bert::test
