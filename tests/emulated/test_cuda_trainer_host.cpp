// bert_train with device = "cuda" on the emulated device (tests/emulated/emulated_runtime.cpp, emulated_ops.cpp), in
// the cases a real-device run rarely reaches or cannot show:
//   - a model that does not fit the device's free memory, and a config the kernels do not support:
//     one-line errors naming the cause (the bytes needed and free), before any output is written
//   - a GPU the build has no kernels for (sm_80 under the sm_90a build): bert_train and bert_infer
//     refuse it in one line that says how to rebuild, before anything is read or written
//   - MFU in the log line and in metrics.jsonl, formed from the model's FLOPs and the device's peak
//   - no host wait inside a step: the host waits for the device (stream or device synchronisation)
//     only at steps that log, evaluate or save; between them only for the previous upload's copy
//   - non-finite gradients found on the device: the updates are skipped there, and the trainer,
//     learning of it only when it logs, still names each skipped step and counts the applied ones
//   - Ctrl-C: a stopped and resumed run equals an uninterrupted one bit for bit (tests/trainer_fixture.h)
// The same tiny data and configs as tests/gpu/test_cuda_trainer.cpp (tests/trainer_fixture.h).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "common/file.h"
#include "common/json.h"
#include "engine/infer.h"
#include "engine/trainer.h"
#include "tests/emulated/emulated_cuda.h"
#include "tests/test_dirs.h"
#include "tests/trainer_fixture.h"

using namespace bert;
using namespace bert::test;

namespace {

constexpr const char* kGpuModel = kCudaTinyModel;
constexpr const char* kSettings =
    "device = \"cuda\"\nper_device_train_batch_size = 16\nlearning_rate = 2e-3\nwarmup_steps = 2\n";

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
    CHECK_THAT(
        message,
        Catch::Matches(".*small\\.toml:[0-9]+: \\[training\\] device = \"cuda\": the model and a batch of 16 x .*") &&
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
  CHECK_THAT(message, Catch::Matches(".*heads\\.toml:[0-9]+: \\[training\\] device = \"cuda\": .*") &&
                          Catch::Contains("head_dim 48 / 2 = 24") &&
                          Catch::Contains("supports head_dim 32, 64 and 128"));
  CHECK(one_line(message));
  CHECK_FALSE(file_exists(test_dir() + "/heads"));
  // The same config trains on the CPU.
  const std::string cpu = write_config("heads_cpu", "heads_cpu", "device = \"cpu\"\nmax_steps = 2\n", model);
  CHECK(train({"--config", cpu}).code == 0);
}

TEST_CASE("cuda trainer host: a GPU the build has no kernels for: one line saying how to rebuild, nothing written",
          "[emulated]") {
  make_tiny_data();
  const ScopedEnv a100("BERT_EMULATED_DEVICE_SM", "80");
  const auto check_message = [](const std::string& message) {
    CHECK_THAT(message, Catch::Contains("CUDA device 0 (sm_80) cannot run this build's kernels: no kernel image is "
                                        "available for execution on the device") &&
                            Catch::Contains("rebuild for this GPU: cmake -B build "
                                            "-DBERT_CUDA_GENCODE=\"-gencode=arch=compute_80,code=sm_80\", then "
                                            "scripts/build.sh") &&
                            Catch::Contains("(this build has BERT_CUDA_GENCODE=\"-gencode="));
    CHECK(one_line(message));
  };
  const std::string config = write_config("sm80", "sm80", std::string(kSettings) + "max_steps = 2\n", kGpuModel);
  const std::string message = error_of([&] { train({"--config", config}); });
  CHECK_THAT(message, Catch::Matches(".*sm80\\.toml:[0-9]+: \\[training\\] device = \"cuda\": CUDA device 0 .*"));
  check_message(message);
  CHECK_FALSE(file_exists(test_dir() + "/sm80"));

  // bert_infer: refused before the model directory is read (this one does not exist).
  std::istringstream in;
  std::ostringstream out, err;
  const std::string infer_message = error_of([&] {
    infer_main({"--model", test_dir() + "/no_such_model", "--mask", "[MASK] 대첩", "--device", "cuda"}, in, out, err);
  });
  CHECK_THAT(infer_message, Catch::StartsWith("bert_infer: --device cuda: CUDA device 0 (sm_80)") &&
                                Catch::EndsWith(" (--device cpu runs without it)"));
  check_message(infer_message);
  CHECK(out.str().empty());

  // sm_90 (the H100 / H200 the build is for) and newer (PTX): the same config trains.
  for (const char* sm : {"90", "100"}) {
    const ScopedEnv hopper("BERT_EMULATED_DEVICE_SM", sm);
    const std::string ok = write_config(std::string("sm") + sm, std::string("sm") + sm,
                                        std::string(kSettings) + "max_steps = 2\n", kGpuModel);
    const RunResult run = train({"--config", ok});
    INFO(run.out << run.err);
    CHECK(run.code == 0);
    CHECK_THAT(run.out, Catch::Contains(std::string("(sm_") + sm));
  }
}

TEST_CASE(
    "cuda trainer host: a CUDA failure mid-run names the run's latest checkpoint and the command that goes on from it",
    "[emulated]") {
  make_tiny_data();
  const std::string settings = std::string(kSettings) + "max_steps = 8\nsave_steps = 2\nlogging_steps = 2\n";
  const std::string config = write_config("fault", "fault", settings, kGpuModel);
  // After step 5 (checkpoint-4 is the latest), step 6's first gather fails as a faulting launch would.
  TrainHooks hooks;
  hooks.after_step = [](int64_t step) {
    if (step == 5) bert::emulated::fail_launch("gather_rows");
  };
  const std::string message = error_of([&] { train({"--config", config}, hooks); });
  bert::emulated::clear_injected_failure();
  const std::string checkpoint = test_dir() + "/fault/checkpoint-4";
  CHECK_THAT(message, Catch::Contains("gather_rows: injected launch failure") &&
                          Catch::EndsWith("; latest checkpoint: step 4 (" + resume_command(config, checkpoint) +
                                          " goes on from it)"));
  CHECK(one_line(message));
  // The command does: the run ends as an uninterrupted one would.
  const RunResult resumed = train({"--config", config, "--resume", checkpoint});
  INFO(resumed.out << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK_THAT(resumed.out, Catch::Contains("done: 8 steps (4 this run)"));

  // Resumed from checkpoint-4 of a finished run (checkpoint-6 and -8 of that run stay in output_dir)
  // and failing at step 5: checkpoint-4 is the one to go on from, not the other timeline's checkpoint-8.
  hooks.after_step = [](int64_t step) {
    if (step == 5) bert::emulated::fail_launch("gather_rows");
  };
  const std::string again = error_of([&] { train({"--config", config, "--resume", checkpoint}, hooks); });
  bert::emulated::clear_injected_failure();
  CHECK_THAT(again, Catch::EndsWith("; latest checkpoint: step 4 (" + resume_command(config, checkpoint) +
                                    " goes on from it)"));

  // A failure before any checkpoint: the error alone.
  const std::string early = write_config("early", "early", settings, kGpuModel);
  hooks.after_step = [](int64_t step) {
    if (step == 1) bert::emulated::fail_launch("gather_rows");
  };
  const std::string first = error_of([&] { train({"--config", early}, hooks); });
  bert::emulated::clear_injected_failure();
  CHECK_THAT(first, Catch::Contains("gather_rows: injected launch failure"));
  CHECK_THAT(first, !Catch::Contains("--resume"));
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

TEST_CASE("cuda trainer host: the host waits for the device only where it logs, evaluates or saves", "[emulated]") {
  make_tiny_data();
  const std::string config =
      write_config("waits", "waits",
                   std::string(kSettings) +
                       "max_steps = 48\ngradient_accumulation_steps = 2\nlogging_steps = 40\neval_steps = 45\n"
                       "save_steps = 48\n",
                   kGpuModel);
  // The first window holds 80 micro-batches (more than an earlier, smaller set of device loss slots
  // allowed without a drain). Host waits that drain the device's queue, per step: counted at the end of each step
  // (after its kernels are queued, before its logging), so step s's count covers step s - 1's logging and step s's own
  // work.
  std::vector<int64_t> waits_at{0}, staging_waits_at{0};
  const auto waits = [] {
    const emulated::Counters c = emulated::counters();
    return c.stream_syncs + c.device_syncs;
  };
  const int64_t waits_before = waits(), staging_before = emulated::counters().event_syncs;
  TrainHooks hooks;
  hooks.after_step = [&](int64_t) {
    waits_at.push_back(waits() - waits_before);
    staging_waits_at.push_back(emulated::counters().event_syncs - staging_before);
  };
  const RunResult run = train({"--config", config}, hooks);
  INFO(run.out << run.err);
  REQUIRE(run.code == 0);
  REQUIRE(waits_at.size() == 49);
  const auto reports = [](int64_t step) { return step % 40 == 0 || step % 45 == 0; };
  int quiet_steps = 0;
  for (int64_t step = 2; step <= 48; ++step) {
    INFO("step " << step);
    const int64_t step_waits = waits_at[step] - waits_at[step - 1];
    if (reports(step - 1)) continue;
    CHECK(step_waits == 0);
    // Each micro-batch's upload waits for the previous one's copy, which leaves the device the
    // previous batch's kernels queued: at most one such wait per micro-batch.
    CHECK(staging_waits_at[step] - staging_waits_at[step - 1] <= 2);
    ++quiet_steps;
  }
  CHECK(quiet_steps == 45);
  // What was logged is still every step's: the windows' losses are finite and the counts add up.
  const TrainerState state = TrainerState::load(test_dir() + "/waits/checkpoint-48/trainer_state.json");
  CHECK(state.optimizer_steps == 48);
  int train_records = 0;
  for (const Json& record : read_metrics(test_dir() + "/waits/metrics.jsonl"))
    if (const Json* loss = record.find("loss")) {
      CHECK(std::isfinite(loss->as_number()));
      ++train_records;
    }
  CHECK(train_records == 2);
}

TEST_CASE("cuda trainer host: non-finite gradients skip updates on the device, the log names each step", "[emulated]") {
  make_tiny_data();
  // As the CPU trainer's test (tests/test_trainer_loop.cpp): a learning rate of 1e30 sends the
  // first update's weights to ~1e30, so every later gradient norm is non-finite. Here
  // the device decides each skip; the host learns of them when it logs, every 4 steps. The run saves,
  // and exits 1: its loss ends non-finite.
  const std::string config = write_config(
      "blowup", "blowup",
      "device = \"cuda\"\nmax_steps = 8\nper_device_train_batch_size = 8\nlearning_rate = 1e30\nwarmup_steps = 0\n"
      "lr_scheduler_type = \"constant\"\nlogging_steps = 4\nsave_steps = 8\n",
      kGpuModel);
  const RunResult run = train({"--config", config});
  INFO(run.out << run.err);
  REQUIRE(run.code == 1);
  CHECK_THAT(run.err, Catch::Contains("\nerror: the last step's loss is ") &&
                          Catch::EndsWith(" (7 of 8 update(s) of this run skipped): the weights diverged; lower "
                                          "[training] learning_rate in " +
                                          config + " (the checkpoint is saved for inspection)\n"));
  for (int step = 2; step <= 8; ++step)
    CHECK_THAT(run.err, Catch::Contains("warning: step " + std::to_string(step) + ": gradient norm is"));
  CHECK_THAT(run.err, !Catch::Contains("warning: step 1:"));
  CHECK_THAT(run.out, Catch::Contains("7 update(s) skipped (non-finite gradients)"));
  const std::vector<Json> records = read_metrics(test_dir() + "/blowup/metrics.jsonl");
  REQUIRE(records.size() == 2);
  CHECK(records[1].find("grad_norm")->is_null());  // the last step's norm
  // The device counted the one applied update (save_checkpoint checks the host agrees).
  const TrainerState state = TrainerState::load(test_dir() + "/blowup/checkpoint-8/trainer_state.json");
  CHECK(state.global_step == 8);
  CHECK(state.optimizer_steps == 1);
}

TEST_CASE("cuda trainer host: weights an update overflowed stop the run when the skipped steps are settled",
          "[emulated]") {
  make_tiny_data();
  // As the CPU trainer's test: step 2's update overflows the weights, step 3's gradients are then
  // non-finite; the host learns of both at the log of step 4 and stops there, naming step 3, long
  // before the save.
  const std::string config = write_config(
      "overflow", "overflow",
      "device = \"cuda\"\nmax_steps = 40\nper_device_train_batch_size = 8\nlearning_rate = 1e38\nwarmup_steps = 1\n"
      "logging_steps = 4\nsave_steps = 1000\n",
      kGpuModel);
  const std::string message = error_of([&] { train({"--config", config}); });
  CHECK_THAT(message, Catch::StartsWith("step 3: its gradients are not finite because the model holds ") &&
                          Catch::Contains("no later update can be applied; stopped, no checkpoint was written"));
}

TEST_CASE("cuda trainer host: a run stopped by SIGINT and resumed equals an uninterrupted run bit for bit",
          "[emulated]") {
  // The queued steps' losses and norms are read before the stop's checkpoint, so the logging window
  // cut by the stop carries on after the resume exactly as in the CPU trainer's test.
  check_stop_and_resume_bitwise("device = \"cuda\"\n", kGpuModel);
}
