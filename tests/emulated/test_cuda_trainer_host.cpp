// bert_train with device = "cuda" on the emulated device (tests/emulated/emulated_cuda.cpp), in the
// cases a real-device run rarely reaches or cannot show:
//   - a model that does not fit the device's free memory, and a config the kernels do not support:
//     one-line errors naming the cause (the bytes needed and free), before any output is written
//   - MFU in the log line and in metrics.jsonl, formed from the model's FLOPs and the device's peak
// The same tiny data and configs as tests/gpu/test_cuda_trainer.cpp (tests/trainer_fixture.h).
#include <catch2/catch.hpp>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "common/file.h"
#include "common/json.h"
#include "tests/test_dirs.h"
#include "tests/trainer_fixture.h"

using namespace bert;
using namespace bert::test;

namespace {

constexpr const char* kGpuModel =
    "hidden_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 2\nintermediate_size = 128\n"
    "max_position_embeddings = 32\n";
constexpr const char* kSettings =
    "device = \"cuda\"\nper_device_train_batch_size = 16\nlearning_rate = 2e-3\nwarmup_steps = 2\n";

std::string error_of(const std::function<void()>& run) {
  try {
    run();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

bool one_line(const std::string& message) { return message.find('\n') == std::string::npos; }

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_.empty())
      unsetenv(name_);
    else
      setenv(name_, old_.c_str(), 1);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::string old_;
};

}  // namespace

TEST_CASE("cuda trainer host: no room on the device, or a config the kernels lack: one line, nothing written",
          "[emulated]") {
  make_tiny_data();
  const std::string settings = std::string(kSettings) + "max_steps = 4\n";
  {
    const ScopedEnv small_device("BERT_EMULATED_DEVICE_MEMORY", std::to_string(1 << 20));
    const std::string config = write_config("small", "small", settings, kGpuModel);
    const std::string message = error_of([&] { train({"--config", config}); });
    CHECK_THAT(message,
               Catch::Contains("small.toml: [training] device = \"cuda\": the model and a batch of 16 x ") &&
                   Catch::Contains("of device memory, NVIDIA H200 (bertforge host emulation) has 1.0 MB free") &&
                   Catch::Contains("lower per_device_train_batch_size"));
    CHECK(one_line(message));
    CHECK_FALSE(file_exists(test_dir() + "/small"));
  }
  // head_dim 24: the fused attention kernel has 32, 64 and 128.
  const std::string model =
      "hidden_size = 48\nnum_hidden_layers = 1\nnum_attention_heads = 2\nintermediate_size = 96\n"
      "max_position_embeddings = 32\n";
  const std::string config = write_config("heads", "heads", settings, model);
  const std::string message = error_of([&] { train({"--config", config}); });
  CHECK_THAT(message, Catch::Contains("heads.toml: [training] device = \"cuda\": ") &&
                          Catch::Contains("head_dim 48 / 2 = 24") &&
                          Catch::Contains("supports head_dim 32, 64 and 128"));
  CHECK(one_line(message));
  CHECK_FALSE(file_exists(test_dir() + "/heads"));
  // The same config trains on the CPU.
  const std::string cpu = write_config("heads_cpu", "heads_cpu", "device = \"cpu\"\nmax_steps = 2\n", model);
  CHECK(train({"--config", cpu}).code == 0);
}

TEST_CASE("cuda trainer host: MFU in the log and in metrics.jsonl, from the model's FLOPs and the peak", "[emulated]") {
  make_tiny_data();
  const std::string config =
      write_config("mfu", "mfu", std::string(kSettings) + "max_steps = 6\nlogging_steps = 3\n", kGpuModel);
  const RunResult run = train({"--config", config});
  INFO(run.out << run.err);
  REQUIRE(run.code == 0);
  CHECK_THAT(run.out, Catch::Contains("device       cuda: NVIDIA H200 (bertforge host emulation)"));
  CHECK_THAT(run.out, Catch::Contains("| MFU "));
  int with_mfu = 0;
  for (const Json& record : read_metrics(test_dir() + "/mfu/metrics.jsonl")) {
    const Json* mfu = record.find("mfu");
    if (record.find("loss") == nullptr) continue;
    REQUIRE(mfu != nullptr);
    REQUIRE(record.find("tokens_per_s") != nullptr);
    ++with_mfu;
    // A tiny model on a host emulation: far below the device's peak (the record keeps 4 decimals).
    CHECK(mfu->as_number() >= 0.0);
    CHECK(mfu->as_number() < 1e-3);
  }
  CHECK(with_mfu == 2);
}
