// bert_train end to end on a tiny model (hidden 16, 2 layers, seq 32) and a tiny Korean corpus:
// the loss falls, a stopped + resumed run equals an uninterrupted one bit for bit, checkpoints are
// complete and rotated, and user mistakes are one-line errors.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "data/prepare.h"
#include "engine/bert.h"
#include "engine/checkpoint_dir.h"
#include "engine/communicator.h"
#include "engine/config.h"
#include "engine/trainer.h"
#include "kernels/device.h"
#include "tests/test_dirs.h"
#include "tests/trainer_fixture.h"
#include "tokenizer/commands.h"
#include "tokenizer/tokenizer.h"

using namespace bert;

using namespace bert::test;

TEST_CASE("total steps and trainer state round trip") {
  TrainingConfig training;
  training.num_train_epochs = 2.5;
  training.gradient_accumulation_steps = 4;
  CHECK(total_train_steps(training, 10) == 7);  // ceil(25 / 4)
  training.max_steps = 3;
  CHECK(total_train_steps(training, 10) == 3);

  TrainerState state;
  state.global_step = 5;
  state.optimizer_steps = 4;
  state.micro_step = 10;
  state.data_epoch = 1;
  state.data_index = 3;
  state.total_steps = 20;
  state.batches_per_epoch = 8;
  state.per_device_train_batch_size = 4;
  state.gradient_accumulation_steps = 2;
  state.seed = 18446744073709551615ull;  // more than a double holds exactly
  state.model.vocab_size = 100;
  state.window.micro_batches = 2;
  state.window.loss_sum = 0.1 + 0.2;  // needs all 17 digits
  const TrainerState back = TrainerState::from_json(Json::parse(state.to_json().dump(2)), "state.json");
  CHECK(back.seed == state.seed);
  CHECK(back.window.loss_sum == state.window.loss_sum);
  CHECK(back.data_epoch == 1);
  CHECK(back.data_index == 3);
  CHECK(back.model.vocab_size == 100);
  CHECK(back.world_size == 1);
  state.world_size = 4;
  Json json = state.to_json();
  CHECK(TrainerState::from_json(json, "state.json").world_size == 4);
  json.set("seed", "-1");  // not 2^64 - 1
  CHECK_THROWS_WITH(TrainerState::from_json(json, "state.json"),
                    Catch::Contains("state.json: 'seed' is not an unsigned integer: -1"));
  json.set("seed", " 7");
  CHECK_THROWS_WITH(TrainerState::from_json(json, "state.json"), Catch::Contains("'seed' is not an unsigned integer"));
  json.set("seed", std::to_string(state.seed));
  json.set("world_size", 0);
  CHECK_THROWS_WITH(TrainerState::from_json(json, "state.json"),
                    "state.json: 'world_size' is 0, not between 1 and 2147483647");
  json.set("world_size", 1);
  // Values a hand edit or damage leaves out of range: refused naming the file and the field, not
  // met later as a shape error in the middle of a step.
  const auto refused = [&](const std::string& key, const Json& value, bool in_cursor = false) {
    Json edited = json;
    if (in_cursor) {
      Json cursor = *edited.find("data_cursor");
      cursor.set(key, value);
      edited.set("data_cursor", cursor);
    } else {
      edited.set(key, value);
    }
    try {
      (void)TrainerState::from_json(edited, "state.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(loaded)");
  };
  CHECK(refused("epoch", -1, true) == "state.json: 'data_cursor.epoch' is -1, not between 0 and 9007199254740992");
  CHECK(refused("batch_index", 8, true) == "state.json: 'data_cursor.batch_index' is 8, not between 0 and 7");
  CHECK(refused("batch_index", 7, true) == "(loaded)");
  CHECK(refused("batches_per_epoch", 0) == "state.json: 'batches_per_epoch' is 0, not between 1 and 9007199254740992");
  CHECK(refused("warmup_steps", -3) == "state.json: 'warmup_steps' is -3, not between 0 and 9007199254740992");
  CHECK(refused("gradient_accumulation_steps", 4294967297.0) ==
        "state.json: 'gradient_accumulation_steps' is 4294967297, not between 1 and 2147483647");
  CHECK_THAT(refused("micro_step", 3), Catch::StartsWith("state.json: inconsistent step counters (global_step 5"));
  CHECK_THAT(refused("epoch", -0.5), Catch::Contains("'epoch' and 'elapsed_s' must be finite and not negative"));
  // A state written before data parallelism (no world_size) is a single rank's.
  const Json current = state.to_json();
  Json older = Json::object();
  for (const auto& [key, value] : current.as_object())
    if (key != "world_size") older.set(key, value);
  CHECK(TrainerState::from_json(older, "state.json").world_size == 1);
  {
    // A --config path in another locale's bytes: written with U+FFFD now; a file written raw before
    // that still loads (the path is for messages only).
    TrainerState path_state = state;
    path_state.config_path = "/data/\xc7\xd1\xb1\xdb/run.toml";  // EUC-KR bytes of 한글
    const std::string dir = "test_trainer_loop_state";
    std::filesystem::create_directories(dir);
    write_file_atomic(dir + "/trainer_state.json", path_state.to_json().dump(2));
    CHECK(TrainerState::load(dir + "/trainer_state.json").config_path ==
          "/data/\xef\xbf\xbd\xd1\xb1\xef\xbf\xbd/run.toml");
    std::string raw = path_state.to_json().dump(2);
    const std::string written = "/data/\xef\xbf\xbd\xd1\xb1\xef\xbf\xbd/run.toml";
    REQUIRE(raw.find(written) != std::string::npos);
    raw.replace(raw.find(written), written.size(), path_state.config_path);  // as the old writer left it
    write_file_atomic(dir + "/trainer_state.json", raw);
    const TrainerState old = TrainerState::load(dir + "/trainer_state.json");
    CHECK(old.config_path == written);
    CHECK(old.global_step == 5);
    std::filesystem::remove_all(dir);
  }
  CHECK(resume_command("run.toml", "out dir/checkpoint-5") ==
        "bert_train --config run.toml --resume 'out dir/checkpoint-5'");
  CHECK(resume_command("run.toml", "out/checkpoint-5", 4) ==
        "mpirun -np 4 bert_train --config run.toml --resume out/checkpoint-5");
  // As the user ran it (main sets it from argv[0]), so that the printed command runs from where they are.
  set_program_path("build dir/bert_train");
  CHECK(resume_command("run.toml", "out/checkpoint-5") ==
        "'build dir/bert_train' --config run.toml --resume out/checkpoint-5");
  set_program_path("bert_train");
}

TEST_CASE("the MPI launcher's rank comes from its environment") {
  const char* names[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"};
  for (const char* name : names) ::unsetenv(name);
  CHECK_FALSE(launcher_world_rank().has_value());
  ::setenv("PMIX_RANK", "2", 1);
  CHECK(launcher_world_rank() == 2);
  ::setenv("PMI_RANK", "0", 1);
  CHECK(launcher_world_rank() == 0);
  ::setenv("OMPI_COMM_WORLD_RANK", "5", 1);
  CHECK(launcher_world_rank() == 5);
  ::setenv("OMPI_COMM_WORLD_RANK", "-1", 1);
  CHECK_THROWS_WITH(launcher_world_rank(), Catch::Contains("OMPI_COMM_WORLD_RANK='-1' is not a rank"));
  for (const char* name : names) ::unsetenv(name);
}

TEST_CASE("the MPI launcher's world size comes from its environment") {
  const char* names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"};
  for (const char* name : names) ::unsetenv(name);
  CHECK_FALSE(launcher_world_size().has_value());
  CHECK(make_communicator()->size() == 1);  // not launched by MPI: one process, no MPI_Init
  ::setenv("SLURM_NTASKS", "4", 1);         // Slurm without PMIx: not an MPI launch by itself
  CHECK_FALSE(launcher_world_size().has_value());
  ::setenv("PMIX_RANK", "0", 1);
  std::string variable;
  CHECK(launcher_world_size(&variable) == 4);
  CHECK(variable == "SLURM_NTASKS");
  ::setenv("PMI_SIZE", "3", 1);
  CHECK(launcher_world_size(&variable) == 3);
  CHECK(variable == "PMI_SIZE");
  ::setenv("OMPI_COMM_WORLD_SIZE", "1", 1);
  CHECK(launcher_world_size(&variable) == 1);
  CHECK(make_communicator()->description() == "single process");  // a world of one needs no MPI
  ::setenv("OMPI_COMM_WORLD_SIZE", "2x", 1);
  CHECK_THROWS_WITH(launcher_world_size(), Catch::Contains("OMPI_COMM_WORLD_SIZE='2x' is not a process count"));
  if (!communicator_has_mpi()) {
    ::setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    CHECK_THROWS_WITH(make_communicator(), Catch::Contains("this build has no MPI"));
  }
  for (const char* name : names) ::unsetenv(name);

  const std::unique_ptr<Communicator> single = make_single_communicator();
  std::vector<float> values = {1.5f, -2.0f};
  single->allreduce_sum(values);
  CHECK(values == std::vector<float>{1.5f, -2.0f});
  CHECK(single->any(true));
  CHECK_FALSE(single->any(false));
  CHECK(single->all_equal(42));
  CHECK(single->broadcast_string("out/checkpoint-5", 0) == "out/checkpoint-5");
  CHECK(single->broadcast_string("", 0).empty());
  CHECK(single->allgather(7) == std::vector<uint64_t>{7});
  const RankPlacement placement = place_ranks(*single);
  CHECK(placement.cpu_sharers == 1);
  CHECK(placement.host_rank == 0);
  CHECK(placement.host_ranks == 1);
}

TEST_CASE("the collectives' watchdog reports an operation that outlasts its limit, once, and no other") {
  using namespace std::chrono_literals;
  std::mutex mutex;
  std::vector<std::string> expired;
  const auto reported = [&] {
    std::lock_guard<std::mutex> lock(mutex);
    return expired;
  };
  const auto wait_for_reports = [&](size_t n) {
    for (int i = 0; i < 500 && reported().size() < n; ++i) std::this_thread::sleep_for(10ms);
  };
  Watchdog dog(300ms, [&](const char* operation) {
    std::lock_guard<std::mutex> lock(mutex);
    expired.emplace_back(operation);
  });
  // Operations that each end in time, together lasting well over the limit.
  for (int i = 0; i < 100; ++i) {
    const Watchdog::Guard guard = dog.watch("short");
    std::this_thread::sleep_for(5ms);
  }
  CHECK(reported().empty());
  {
    const Watchdog::Guard guard = dog.watch("long");
    wait_for_reports(1);
    std::this_thread::sleep_for(700ms);  // over two more limits: still one report
  }
  CHECK(reported() == std::vector<std::string>{"long"});
  { const Watchdog::Guard guard = dog.watch("ended"); }
  std::this_thread::sleep_for(700ms);  // an operation that ended is not reported later
  CHECK(reported() == std::vector<std::string>{"long"});
  {
    const Watchdog::Guard guard = dog.watch("again");  // the next one is watched as the first was
    wait_for_reports(2);
  }
  CHECK(reported() == std::vector<std::string>{"long", "again"});

  // Destroying a watchdog whose thread sleeps towards a far deadline returns at once.
  const auto start = std::chrono::steady_clock::now();
  {
    Watchdog patient(std::chrono::hours(1), [](const char*) { FAIL("reported"); });
    const Watchdog::Guard guard = patient.watch("pending");
  }
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("the loss falls, checkpoints hold an HF model, tokenizer and trainer state, plot") {
  make_tiny_data();
  const std::string config = write_config("run", "out",
                                          "max_steps = 30\nper_device_train_batch_size = 16\nlearning_rate = 5e-3\n"
                                          "warmup_steps = 3\nlogging_steps = 3\neval_steps = 15\nsave_steps = 15\n");
  const RunResult run = train({"--config", config});
  REQUIRE(run.code == 0);
  INFO(run.out);
  CHECK(run.out.find("parameters") != std::string::npos);
  CHECK(run.out.find("FLOPs/step") != std::string::npos);
  CHECK(run.out.find("cpu, 2 threads") != std::string::npos);

  const std::vector<Json> records = read_metrics(test_dir() + "/out/metrics.jsonl");
  REQUIRE(records.size() == 10);
  const double first = records.front().find("loss")->as_number();
  const double last = (records[8].find("loss")->as_number() + records[9].find("loss")->as_number()) / 2;
  CHECK(last < first - 0.4);
  for (const char* key : {"step", "epoch", "loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "grad_norm",
                          "tokens_per_s", "elapsed_s"})
    CHECK(records.back().find(key) != nullptr);
  CHECK(records.back().find("eval_loss") != nullptr);  // the valid split of the shards
  CHECK(records.back().find("eval_mlm_acc") != nullptr);
  CHECK(records[4].find("eval_loss") != nullptr);  // step 15
  CHECK(records[3].find("eval_loss") == nullptr);

  const std::string checkpoint = test_dir() + "/out/checkpoint-30";
  for (const char* file : {"model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json",
                           "special_tokens_map.json", "trainer_state.json", "trainer_state.safetensors"})
    CHECK(file_exists(checkpoint + "/" + file));
  CHECK(file_exists(test_dir() + "/out/checkpoint-15/model.safetensors"));
  const BertConfig saved = BertConfig::load_hf_json(checkpoint + "/config.json");
  const Tokenizer tokenizer = Tokenizer::from_dir(checkpoint);
  CHECK(saved.vocab_size == static_cast<int>(tokenizer.vocab().size()));
  CHECK(saved.hidden_size == 16);
  // Its tokenizer truncates to what the model reads (the tokenizer trained with the default 512).
  CHECK(tokenizer.config().model_max_length == 32);
  CHECK(TokenizerConfig::load(test_dir() + "/tok").model_max_length == 512);
  BertForPreTraining<float> model(saved);
  model.load_safetensors(checkpoint + "/model.safetensors");
  CHECK(read_file(test_dir() + "/out/model.safetensors") == read_file(checkpoint + "/model.safetensors"));
  const TrainerState state = TrainerState::load(checkpoint + "/trainer_state.json");
  CHECK(state.global_step == 30);
  CHECK(state.micro_step == 30);

  std::ostringstream out, err;
  REQUIRE(train_main({"plot", test_dir() + "/out/metrics.jsonl", "--out", test_dir() + "/loss.svg"}, out, err) == 0);
  CHECK(read_file(test_dir() + "/loss.svg").find("<polyline") != std::string::npos);

  // Resuming a finished run has nothing to do.
  const RunResult again = train({"--config", config, "--resume"});
  CHECK(again.code == 0);
  CHECK(again.out.find("nothing to do") != std::string::npos);
}

TEST_CASE("a run stopped by SIGINT and resumed equals an uninterrupted run bit for bit") {
  check_stop_and_resume_bitwise("device = \"cpu\"\n", kTinyModel);
}

TEST_CASE("save_total_limit keeps the newest checkpoints") {
  make_tiny_data();
  const std::string config = write_config("run", "out",
                                          "max_steps = 7\nper_device_train_batch_size = 8\nlogging_steps = 10\n"
                                          "save_steps = 2\nsave_total_limit = 2\n");
  REQUIRE(train({"--config", config}).code == 0);
  const auto checkpoints = list_checkpoints(test_dir() + "/out");
  REQUIRE(checkpoints.size() == 2);
  CHECK(checkpoints[0].step == 6);
  CHECK(checkpoints[1].step == 7);
  CHECK(read_metrics(test_dir() + "/out/metrics.jsonl").size() == 1);  // the last step is always logged

  // Killed after its last checkpoint's rename, before the rotation and the final model (here: one
  // of its files written, one half-written): the resume with nothing to train finishes both.
  const std::string out = test_dir() + "/out";
  std::filesystem::copy(out + "/checkpoint-6", out + "/checkpoint-4", std::filesystem::copy_options::recursive);
  std::filesystem::remove(out + "/model.safetensors");
  std::filesystem::remove(out + "/tokenizer_config.json");
  write_file_atomic(out + "/model.safetensors.tmp.999999999", "half");
  write_file_atomic(out + "/vocab.txt.tmp.1", "a live process's");  // pid 1: not ours, left alone
  const RunResult resumed = train({"--config", config, "--resume"});
  INFO(resumed.out << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK(resumed.out.find("nothing to do") != std::string::npos);
  CHECK(resumed.out.find("removed " + out +
                         "/checkpoint-4 (save_total_limit = 2; the run ended before its "
                         "rotation)\n") != std::string::npos);
  CHECK(resumed.out.find("wrote the final model to " + out + " from " + out +
                         "/checkpoint-7: the run that saved it "
                         "ended before it wrote its final model\n") != std::string::npos);
  CHECK(read_file(out + "/model.safetensors") == read_file(out + "/checkpoint-7/model.safetensors"));
  CHECK(read_file(out + "/tokenizer_config.json") == read_file(out + "/checkpoint-7/tokenizer_config.json"));
  CHECK_FALSE(file_exists(out + "/model.safetensors.tmp.999999999"));
  CHECK(file_exists(out + "/vocab.txt.tmp.1"));
  std::filesystem::remove(out + "/vocab.txt.tmp.1");
  const auto rotated = list_checkpoints(out);
  REQUIRE(rotated.size() == 2);
  CHECK(rotated[0].step == 6);
  // An older run's final model (the run was resumed with a larger max_steps): replaced too. A final
  // model that is the checkpoint's is left as it is.
  std::filesystem::copy_file(out + "/checkpoint-6/model.safetensors", out + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  const RunResult stale = train({"--config", config, "--resume"});
  CHECK(stale.out.find("wrote the final model") != std::string::npos);
  CHECK(read_file(out + "/model.safetensors") == read_file(out + "/checkpoint-7/model.safetensors"));
  const RunResult finished = train({"--config", config, "--resume"});
  CHECK(finished.out.find("nothing to do") != std::string::npos);
  CHECK(finished.out.find("wrote the final model") == std::string::npos);
  // An earlier checkpoint with nothing to train (a smaller max_steps) is not where the run ended: the
  // final model stays checkpoint-7's.
  std::string text = read_file(config);
  text.replace(text.find("max_steps = 7"), 13, "max_steps = 6");
  write_file_atomic(test_dir() + "/six.toml", text);
  const RunResult earlier = train({"--config", test_dir() + "/six.toml", "--resume", out + "/checkpoint-6"});
  CHECK(earlier.out.find("nothing to do") != std::string::npos);
  CHECK(earlier.out.find("wrote the final model") == std::string::npos);
  CHECK(read_file(out + "/model.safetensors") == read_file(out + "/checkpoint-7/model.safetensors"));
}

TEST_CASE("a checkpoint of another run resumes into an output_dir without checkpoints, not into another run's") {
  make_tiny_data();
  const std::string settings = "max_steps = 4\nper_device_train_batch_size = 8\nsave_steps = 2\nlogging_steps = 1\n";
  REQUIRE(train({"--config", write_config("a", "a", settings)}).code == 0);
  REQUIRE(train({"--config", write_config("b", "b", settings)}).code == 0);
  const std::string a = test_dir() + "/a", b = test_dir() + "/b";
  const std::string b_metrics = read_file(b + "/metrics.jsonl"), b_model = read_file(b + "/model.safetensors");
  // Into b, which holds a run: its checkpoints would pass for this run's. With overwrite_output_dir too
  // (it would clear b before knowing whether anything is left to train).
  const std::string expected = "[training] output_dir '" + b + "' holds another run's checkpoints, and --resume " + a +
                               "/checkpoint-2 is not one of them: they would be taken for this run's; choose another "
                               "output_dir, or remove them from it (a checkpoint of that run, copied away: put it "
                               "back in " +
                               b + ")";
  CHECK(error_of([&] {
          train({"--config", test_dir() + "/b.toml", "--resume", a + "/checkpoint-2"});
        }) == test_dir() + "/b.toml:13: " + expected);
  const std::string overwrite = write_config("b2", "b", settings + "overwrite_output_dir = true\n");
  CHECK_THAT(error_of([&] {
               train({"--config", overwrite, "--resume", a + "/checkpoint-4"});
             }),
             Catch::EndsWith("holds another run's checkpoints, and --resume " + a +
                             "/checkpoint-4 is not one of them: they would be taken for this run's; choose another "
                             "output_dir, or remove them from it (a checkpoint of that run, copied away: put it back "
                             "in " +
                             b + ")"));
  CHECK(read_file(b + "/metrics.jsonl") == b_metrics);
  CHECK(read_file(b + "/model.safetensors") == b_model);
  CHECK(list_checkpoints(b).size() == 2);
  // b's own checkpoint through a symlink is b's.
  std::filesystem::create_directory_symlink("b/checkpoint-2", test_dir() + "/b_latest");
  const RunResult own = train({"--config", test_dir() + "/b.toml", "--resume", test_dir() + "/b_latest"});
  INFO(own.out << own.err);
  CHECK(own.code == 0);
  // Into an empty output_dir, and into one holding only metrics (a run resumed from a's checkpoint and
  // stopped before its first save: the command it printed goes on): a's run, from its step 2 on.
  const RunResult fresh = train({"--config", write_config("c", "c", settings), "--resume", a + "/checkpoint-2"});
  REQUIRE(fresh.code == 0);
  const std::string d = test_dir() + "/d";
  make_directories(d);
  write_file_atomic(d + "/metrics.jsonl", read_file(test_dir() + "/c/metrics.jsonl").substr(0, 20));
  const RunResult metrics_only = train({"--config", write_config("d", "d", settings), "--resume", a + "/checkpoint-2"});
  INFO(metrics_only.out << metrics_only.err);
  REQUIRE(metrics_only.code == 0);
  for (const std::string& dir : {test_dir() + "/c", d}) {
    CHECK(read_file(dir + "/model.safetensors") == read_file(a + "/model.safetensors"));
    const auto records = read_metrics(dir + "/metrics.jsonl");
    REQUIRE(records.size() == 2);
    CHECK(records[0].find("step")->as_int() == 3);
    const auto checkpoints = list_checkpoints(dir);
    REQUIRE(checkpoints.size() == 1);
    CHECK(checkpoints[0].step == 4);
  }
}

TEST_CASE("paths of the config that cannot be read or created name their key") {
  make_tiny_data();
  std::string text = read_file(write_config("nodata", "out", "max_steps = 2\nper_device_train_batch_size = 8\n"));
  text.replace(text.find("/shards\""), 8, "/absent\"");
  write_file_atomic(test_dir() + "/nodata.toml", text);
  CHECK_THAT(error_of([&] {
               train({"--config", test_dir() + "/nodata.toml"});
             }),
             Catch::StartsWith(test_dir() + "/nodata.toml:10: [data] train_data: " + test_dir() + "/absent"));
  write_file_atomic(test_dir() + "/a_file", "");
  const std::string blocked = write_config("blocked", "a_file/out", "max_steps = 2\nper_device_train_batch_size = 8\n");
  CHECK_THAT(error_of([&] {
               train({"--config", blocked});
             }),
             Catch::StartsWith(test_dir() + "/blocked.toml:13: [training] output_dir: " + test_dir() + "/a_file/out") &&
                 Catch::Contains("cannot create directory"));
}

TEST_CASE("user mistakes are one-line errors") {
  make_tiny_data();
  const auto one_line = [](const std::string& message) { return message.find('\n') == std::string::npos; };

  // An unknown key names the file, the line and a suggestion.
  const std::string typo = write_config("typo", "out", "max_step = 5\n");
  std::string message = error_of([&] { train({"--config", typo}); });
  CHECK_THAT(message, Catch::Contains("typo.toml:") && Catch::Contains("unknown key 'max_step'") &&
                          Catch::Contains("max_steps"));
  CHECK(one_line(message));

  // --resume without a checkpoint.
  const std::string config = write_config("run", "out", "max_steps = 2\nper_device_train_batch_size = 8\n");
  message = error_of([&] { train({"--config", config, "--resume"}); });
  CHECK_THAT(message, Catch::Contains("no checkpoint-N"));
  CHECK(one_line(message));

  // A non-empty output_dir without --resume or overwrite_output_dir (HF's rule).
  REQUIRE(train({"--config", config}).code == 0);
  // A directory of the user's under a checkpoint's name (no trainer_state.json): refused before
  // training, whether starting over or resuming, and left as it is (a save of its step would replace it).
  make_directories(test_dir() + "/foreign/checkpoint-2");
  write_file_atomic(test_dir() + "/foreign/checkpoint-2/mine.txt", "mine");
  const std::string foreign = write_config(
      "foreign", "foreign", "max_steps = 2\nper_device_train_batch_size = 8\noverwrite_output_dir = true\n");
  for (const bool resume : {false, true}) {
    message = error_of([&] {
      train(resume ? std::vector<std::string>{"--config", foreign, "--resume"}
                   : std::vector<std::string>{"--config", foreign});
    });
    CHECK_THAT(message, Catch::EndsWith("[training] output_dir '" + test_dir() + "/foreign' holds " + test_dir() +
                                        "/foreign/checkpoint-2, which is not a bert_train checkpoint (no "
                                        "trainer_state.json) but has a checkpoint's name; move it out"));
  }
  CHECK(read_file(test_dir() + "/foreign/checkpoint-2/mine.txt") == "mine");
  // A file of that name too (the run would fail when it saves that step).
  std::filesystem::remove_all(test_dir() + "/foreign/checkpoint-2");
  write_file_atomic(test_dir() + "/foreign/checkpoint-2", "mine");
  CHECK_THAT(error_of([&] {
               train({"--config", foreign});
             }),
             Catch::EndsWith("/foreign/checkpoint-2, which is not a bert_train checkpoint (not a directory) but "
                             "has a checkpoint's name; move it out"));
  // --resume given the output_dir rather than one of its checkpoints: the checkpoint to pass.
  message = error_of([&] { train({"--config", config, "--resume", test_dir() + "/out"}); });
  CHECK(message == "--resume " + test_dir() + "/out: is a run's output_dir, not a checkpoint; its latest is " +
                       test_dir() +
                       "/out/checkpoint-2 (pass that, or --resume alone to go on from the config's "
                       "output_dir)");
  // An empty value (a script's unset variable) is not taken for a bare --resume.
  for (const std::vector<std::string>& empty : {std::vector<std::string>{"--config", config, "--resume", ""},
                                                std::vector<std::string>{"--resume=", "--config", config}})
    CHECK(error_of([&] { train(empty); }) ==
          "bert_train: --resume was given an empty value; pass a checkpoint directory, or --resume alone for the "
          "latest checkpoint in output_dir");
  message = error_of([&] { train({"--config", config}); });
  CHECK_THAT(message, Catch::Contains("output_dir") && Catch::Contains("not empty") && Catch::Contains("--resume") &&
                          Catch::Contains("overwrite_output_dir"));
  CHECK(one_line(message));
  // A run stopped before its first save left metrics.jsonl and no checkpoint: neither message sends the
  // user to the other.
  make_directories(test_dir() + "/early");
  write_file_atomic(test_dir() + "/early/metrics.jsonl", "");
  const std::string early = write_config("early", "early", "max_steps = 2\nper_device_train_batch_size = 8\n");
  message = error_of([&] { train({"--config", early}); });
  CHECK_THAT(message, Catch::Contains("not empty, with no checkpoint-N in it to resume") &&
                          Catch::Contains("overwrite_output_dir = true") && !Catch::Contains("--resume"));
  message = error_of([&] { train({"--config", early, "--resume"}); });
  CHECK_THAT(message, Catch::Contains("start without --resume (with [training] overwrite_output_dir = true: it is "
                                      "not empty)"));
  const std::string overwrite =
      write_config("overwrite", "out", "max_steps = 2\nper_device_train_batch_size = 8\noverwrite_output_dir = true\n");
  REQUIRE(file_exists(test_dir() + "/out/model.safetensors"));
  write_file_atomic(test_dir() + "/out/loss.svg", "<svg/>");  // as `bert_train plot` leaves it
  make_directories(test_dir() + "/out/checkpoint-9.superseded");  // as a resume from an earlier step leaves it
  write_file_atomic(test_dir() + "/out/checkpoint-9.superseded/trainer_state.json", "{}");
  // A mistake in the config costs nothing: overwrite_output_dir clears only once the data and the
  // model are known good, and never a checkpoint that [data] reads from.
  const auto listing = [&](const std::string& dir) {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) names.push_back(entry.path().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  const std::vector<std::string> before_mistakes = listing(test_dir() + "/out");
  std::string data_typo = read_file(overwrite);
  data_typo.replace(data_typo.find("/shards\""), 8, "/shardz\"");
  write_file_atomic(test_dir() + "/data_typo.toml", data_typo);
  CHECK_THAT(error_of([&] {
               train({"--config", test_dir() + "/data_typo.toml"});
             }),
             Catch::Contains("[data] train_data") && Catch::Contains("shardz"));
  std::string from_checkpoint = read_file(overwrite);
  from_checkpoint.replace(from_checkpoint.find("/tok\""), 5, "/out/checkpoint-2\"");
  write_file_atomic(test_dir() + "/from_checkpoint.toml", from_checkpoint);
  CHECK_THAT(error_of([&] {
               train({"--config", test_dir() + "/from_checkpoint.toml"});
             }),
             Catch::EndsWith("[data] tokenizer '" + test_dir() + "/out/checkpoint-2' is inside " + test_dir() +
                             "/out/checkpoint-2, which overwrite_output_dir = true would remove; copy it out of " +
                             test_dir() + "/out first"));
  CHECK(listing(test_dir() + "/out") == before_mistakes);
  const RunResult overwritten = train({"--config", overwrite});
  CHECK(overwritten.code == 0);
  // The last run's final model and loss plot go with its checkpoints: nothing of it answers for this run's.
  CHECK_THAT(overwritten.out, Catch::Contains("overwrite_output_dir: removed from " + test_dir() +
                                              "/out: 1 old checkpoint(s), 1 set aside by a resume "
                                              "(checkpoint-N.superseded), metrics.jsonl, model.safetensors, "
                                              "config.json, vocab.txt, tokenizer_config.json"));
  CHECK_THAT(overwritten.out, Catch::Contains(", loss.svg\n"));
  CHECK(!file_exists(test_dir() + "/out/loss.svg"));
  CHECK(!file_exists(test_dir() + "/out/checkpoint-9.superseded"));
  // An output_dir that holds the run's own tokenizer: overwriting never removes it. (And a directory
  // without checkpoints or metrics shows no bert_train run: its files stay.)
  {
    const std::string same = test_dir() + "/same";
    make_directories(same);
    for (const char* name : {"vocab.txt", "tokenizer_config.json", "special_tokens_map.json"})
      write_file_atomic(same + "/" + name, read_file(test_dir() + "/tok/" + name));
    write_file_atomic(same + "/config.json", "{}");
    const std::string in_place = write_config(
        "in_place", "same", "max_steps = 2\nper_device_train_batch_size = 8\noverwrite_output_dir = true\n");
    std::string text = read_file(in_place);
    text.replace(text.find("/tok\""), 5, "/same\"");
    write_file_atomic(in_place, text);
    const RunResult first_in_place = train({"--config", in_place});
    REQUIRE(first_in_place.code == 0);
    CHECK(first_in_place.out.find("overwrite_output_dir: removed") == std::string::npos);
    const RunResult again_in_place = train({"--config", in_place});
    INFO(again_in_place.out << again_in_place.err);
    REQUIRE(again_in_place.code == 0);
    CHECK_THAT(again_in_place.out, Catch::Contains("overwrite_output_dir: removed from " + same +
                                                   ": 1 old checkpoint(s), metrics.jsonl, model.safetensors, "
                                                   "config.json\n"));
    CHECK(read_file(same + "/vocab.txt") == read_file(test_dir() + "/tok/vocab.txt"));
  }

  // A second run into an output_dir a run is writing to (its saves would delete the first's temporary
  // checkpoint, its rotation the first's checkpoints) is refused; the lock goes with the run.
  {
    const OutputDirLock held(test_dir() + "/out");
    message = error_of([&] { train({"--config", config, "--resume"}); });
    CHECK_THAT(message, Catch::Contains(test_dir() + "/out: another bert_train is writing to this output_dir (pid " +
                                        std::to_string(::getpid()) + ", holding "));
    CHECK(one_line(message));
  }
  // More threads than cores, and a warm-up longer than the run: warnings.
  const std::string oversubscribed = write_config("oversubscribed", "oversubscribed",
                                                  "max_steps = 1\nper_device_train_batch_size = 8\nwarmup_steps = 5\n");
  {
    std::string text = read_file(oversubscribed);
    text.replace(text.find("threads = 2\n"), 12,
                 "threads = " + std::to_string(2 * std::thread::hardware_concurrency() + 1) + "\n");
    write_file_atomic(oversubscribed, text);
  }
  const RunResult crowded = train({"--config", oversubscribed});
  CHECK(crowded.code == 0);
  CHECK_THAT(crowded.err, Catch::Contains("core(s): more threads than cores slows every step down") &&
                              Catch::Contains("[training] warmup_steps = 5 is more than the 1 steps of the run"));

  // An update that overflows the weights (non-finite gradients skip theirs; finite ones can still
  // overflow): nothing is saved over the last good checkpoint.
  const std::string absurd = write_config("absurd", "absurd",
                                          "max_steps = 4\nper_device_train_batch_size = 8\nlearning_rate = 1e38\n"
                                          "warmup_steps = 1\nsave_steps = 1\n");  // step 1's rate is 0
  message = error_of([&] { train({"--config", absurd}); });
  CHECK_THAT(message, Catch::StartsWith("step 2 left ") && Catch::Contains(" non-finite weight(s) (the first in ") &&
                          Catch::Contains("absurd.toml [training] learning_rate = 1e+38 too large?); not saved, "
                                          "checkpoint-1 is the last good one"));
  CHECK(one_line(message));
  const std::optional<CheckpointInfo> last_good = latest_checkpoint(test_dir() + "/absurd");
  REQUIRE(last_good.has_value());
  CHECK(last_good->step == 1);
  // Found at the next step, whose gradients those weights make non-finite, not at the next save:
  // the run stops instead of skipping every update until then.
  const std::string absurd_unsaved = write_config("absurd_unsaved", "absurd_unsaved",
                                                  "max_steps = 40\nper_device_train_batch_size = 8\n"
                                                  "learning_rate = 1e38\nwarmup_steps = 1\nsave_steps = 1000\n");
  message = error_of([&] { train({"--config", absurd_unsaved}); });
  CHECK_THAT(message, Catch::StartsWith("step 3: its gradients are not finite because the model holds ") &&
                          Catch::Contains(" non-finite weight(s) (the first in ") &&
                          Catch::Contains("absurd_unsaved.toml [training] learning_rate = 1e+38 too large?), and no "
                                          "later update can be applied; stopped, no checkpoint was written"));
  CHECK(one_line(message));

  // Resuming with a different model shape.
  const std::string wider = test_dir() + "/wider.toml";
  write_file_atomic(
      wider,
      std::string(read_file(config)).replace(read_file(config).find("hidden_size = 16"), 16, "hidden_size = 32"));
  message = error_of([&] { train({"--config", wider, "--resume"}); });
  CHECK_THAT(message, Catch::Contains("hidden_size 16 -> 32"));
  CHECK(one_line(message));
  // Resuming with another seed: a warning, and the run goes on.
  const std::string reseeded = test_dir() + "/reseeded.toml";
  write_file_atomic(reseeded,
                    std::string(read_file(config)).replace(read_file(config).find("seed = 7"), 8, "seed = 8"));
  const RunResult reseeded_run = train({"--config", reseeded, "--resume"});
  CHECK(reseeded_run.code == 0);
  CHECK_THAT(reseeded_run.err, Catch::Contains("with changed settings (seed 7 -> 8): the run will not repeat"));
  // Other settings (a learning rate, a new key): a note that names each change.
  {
    const std::string retuned = test_dir() + "/retuned.toml";
    std::string text = read_file(config);
    text += "learning_rate = 7e-4\n";
    text.replace(text.find("max_steps = 2"), 13, "max_steps = 3");
    write_file_atomic(retuned, text);
    const RunResult retuned_run = train({"--config", retuned, "--resume", test_dir() + "/out/checkpoint-2"});
    CHECK(retuned_run.code == 0);
    CHECK_THAT(retuned_run.err, Catch::Contains("with changed settings (total_steps 2 -> 3)"));
    std::filesystem::remove_all(test_dir() + "/out/checkpoint-3");
    text.replace(text.find("max_steps = 3"), 13, "max_steps = 2");
    write_file_atomic(retuned, "# retuned\n" + text);
    const RunResult noted = train({"--config", retuned, "--resume", test_dir() + "/out/checkpoint-2"});
    CHECK(noted.code == 0);
    CHECK_THAT(noted.err,
               Catch::Contains("differs from the config " + test_dir() + "/out/checkpoint-2 was trained with (" +
                               overwrite + "): [training] overwrite_output_dir true (now unset), " +
                               "[training] learning_rate = 0.0007 (newly set)\n"));
  }
  // Shards rebuilt in place keep the counts, not the examples: the state's fingerprint of them says so.
  {
    const std::string state_path = test_dir() + "/out/checkpoint-2/trainer_state.json";
    const std::string state_text = read_file(state_path);
    Json state = Json::parse(state_text);
    REQUIRE(state.find("train_data_fingerprint") != nullptr);
    CHECK(state.find("train_data_fingerprint")->as_string().size() == 16);
    const RunResult same = train({"--config", config, "--resume"});  // nothing to do, no warning
    CHECK(same.err.find("training data") == std::string::npos);
    state.set("train_data_fingerprint", "0123456789abcdef");
    write_file_atomic(state_path, state.dump(2));
    const RunResult rebuilt = train({"--config", config, "--resume"});
    CHECK_THAT(rebuilt.err, Catch::Contains("with changed settings (training data (") &&
                                Catch::Contains(": other shards than the checkpoint's)): the run will not repeat"));
    write_file_atomic(state_path, state_text);
  }

  // One flipped bit in the optimizer state is still a float: the data hash refuses it, naming the file.
  const std::string moments = test_dir() + "/out/checkpoint-2/trainer_state.safetensors";
  const std::string moment_bytes = read_file(moments);
  std::string flipped = moment_bytes;
  flipped[flipped.size() - 5] ^= 0x10;
  write_file_atomic(moments, flipped);
  message = error_of([&] { train({"--config", config, "--resume"}); });
  CHECK_THAT(message, Catch::Contains("cannot resume from") &&
                          Catch::Contains(moments + ": the tensor data hashes to ") && Catch::Contains("damaged"));
  CHECK(one_line(message));
  write_file_atomic(moments, moment_bytes);

  // A truncated model.safetensors: --resume fails naming the file.
  const std::string model = test_dir() + "/out/checkpoint-2/model.safetensors";
  const std::string bytes = read_file(model);
  write_file_atomic(model, bytes.substr(0, bytes.size() / 2));
  message = error_of([&] { train({"--config", config, "--resume"}); });
  CHECK_THAT(message, Catch::Contains("cannot resume from") && Catch::Contains("model.safetensors"));
  CHECK(one_line(message));

  // device = "cuda" without a usable device (every CI machine): a one-line error before anything loads.
  if (!cuda_device_info().available) {
    const std::string gpu =
        write_config("gpu", "gpu", "max_steps = 2\nper_device_train_batch_size = 8\ndevice = \"cuda\"\n");
    message = error_of([&] { train({"--config", gpu}); });
    CHECK_THAT(message, Catch::Matches(".*gpu\\.toml:[0-9]+: \\[training\\] device = \"cuda\": .*") &&
                            Catch::Contains("set device = \"cpu\""));
    CHECK(one_line(message));
    CHECK_FALSE(file_exists(test_dir() + "/gpu"));
  }

  // A tokenizer of the same size as the shards' but another vocabulary (two tokens swapped).
  const std::string swapped_tok = test_dir() + "/tok_swapped";
  std::filesystem::create_directories(swapped_tok);
  std::filesystem::copy_file(test_dir() + "/tok/tokenizer_config.json", swapped_tok + "/tokenizer_config.json");
  std::vector<std::string> tokens = Tokenizer::from_dir(test_dir() + "/tok").vocab().tokens();
  std::swap(tokens[tokens.size() - 1], tokens[tokens.size() - 2]);
  Vocab(tokens).save(swapped_tok + "/vocab.txt");
  const std::string swapped = write_config("swapped", "swapped", "max_steps = 2\nper_device_train_batch_size = 8\n");
  write_file_atomic(swapped,
                    std::string(read_file(swapped))
                        .replace(read_file(swapped).find(test_dir() + "/tok\""), test_dir().size() + 4, swapped_tok));
  message = error_of([&] { train({"--config", swapped}); });
  CHECK_THAT(message, Catch::Contains("shards/manifest.json: the shards were built with another vocabulary than " +
                                      swapped_tok + "/vocab.txt") &&
                          Catch::Contains("shards/tokenizer"));
  CHECK(one_line(message));
  // Shards rebuilt with that tokenizer pass, but a checkpoint trained with the first one cannot resume.
  std::ostringstream prepare_out, prepare_err;
  REQUIRE(prepare_main({"build", "--tokenizer", swapped_tok, "--input", test_dir() + "/clean.txt", "--out",
                        test_dir() + "/shards_swapped", "--max-seq-len", "32", "--seed", "3", "--quiet"},
                       prepare_out, prepare_err) == 0);
  std::string resumed = read_file(swapped);
  resumed.replace(resumed.find("/swapped\""), 9, "/out\"");
  resumed.replace(resumed.find("/shards\""), 8, "/shards_swapped\"");
  write_file_atomic(swapped, resumed);
  message = error_of([&] { train({"--config", swapped, "--resume"}); });
  CHECK_THAT(message, Catch::Contains("cannot resume from " + test_dir() +
                                      "/out/checkpoint-2: its vocab.txt differs "
                                      "from " +
                                      swapped_tok + "/vocab.txt"));
  CHECK(one_line(message));
  // Tokens appended to the vocabulary (into a fixed vocab_size) keep every trained id: that resumes. A
  // checkpoint's unreadable vocab.txt is an error about the checkpoint.
  const std::vector<std::string> trained_tokens = Tokenizer::from_dir(test_dir() + "/tok").vocab().tokens();
  const std::string fixed_vocab =
      std::string(kTinyModel) + "vocab_size = " + std::to_string(trained_tokens.size() + 8) + "\n";
  const std::string grown =
      write_config("grown", "grown", "max_steps = 2\nper_device_train_batch_size = 8\n", fixed_vocab);
  REQUIRE(train({"--config", grown}).code == 0);
  const std::string grown_tok = test_dir() + "/tok_grown";
  std::filesystem::create_directories(grown_tok);
  std::filesystem::copy_file(test_dir() + "/tok/tokenizer_config.json", grown_tok + "/tokenizer_config.json");
  std::vector<std::string> grown_tokens = trained_tokens;
  grown_tokens.push_back("appended1");
  grown_tokens.push_back("appended2");
  Vocab(grown_tokens).save(grown_tok + "/vocab.txt");
  REQUIRE(prepare_main({"build", "--tokenizer", grown_tok, "--input", test_dir() + "/clean.txt", "--out",
                        test_dir() + "/shards_grown", "--max-seq-len", "32", "--seed", "3", "--quiet"},
                       prepare_out, prepare_err) == 0);
  std::string grown_text = read_file(grown);
  grown_text.replace(grown_text.find(test_dir() + "/tok\""), test_dir().size() + 4, grown_tok);
  grown_text.replace(grown_text.find("/shards\""), 8, "/shards_grown\"");
  write_file_atomic(grown, grown_text);
  const RunResult grown_run = train({"--config", grown, "--resume"});
  INFO(grown_run.err);
  CHECK(grown_run.code == 0);
  // Without a written vocab_size the tokenizer sets it: tokens appended after the run started change
  // the model's shape, and the message names the tokenizer (not [model], which did not change).
  std::string appended = read_file(config);
  appended.replace(appended.find(test_dir() + "/tok\""), test_dir().size() + 4, grown_tok);
  appended.replace(appended.find("/shards\""), 8, "/shards_grown\"");
  const std::string appended_config = test_dir() + "/appended.toml";
  write_file_atomic(appended_config, appended);
  message = error_of([&] { train({"--config", appended_config, "--resume"}); });
  CHECK_THAT(message, Catch::Contains("cannot resume from " + test_dir() + "/out/checkpoint-") &&
                          Catch::Contains(": it was trained with vocab_size " + std::to_string(trained_tokens.size()) +
                                          " and " + grown_tok + " ([data] tokenizer of " + appended_config +
                                          ", which sets the model's vocab_size) now has " +
                                          std::to_string(grown_tokens.size()) + " tokens") &&
                          Catch::Contains("give [model] vocab_size room for them"));
  CHECK(one_line(message));
  const std::string grown_checkpoint = latest_checkpoint(test_dir() + "/grown")->path;
  write_file_atomic(grown_checkpoint + "/vocab.txt", "[PAD]\n\n[UNK]\n");
  message = error_of([&] { train({"--config", grown, "--resume"}); });
  CHECK_THAT(message,
             Catch::Contains("cannot resume from " + grown_checkpoint + ": " + grown_checkpoint + "/vocab.txt:2"));
  CHECK(one_line(message));

  // The same vocabulary with another normaliser and another special token than the tokenizer that
  // encoded the shards: a warning each.
  const std::string recased_tok = test_dir() + "/tok_recased";
  std::filesystem::create_directories(recased_tok);
  std::filesystem::copy_file(test_dir() + "/tok/vocab.txt", recased_tok + "/vocab.txt");
  TokenizerConfig recased = TokenizerConfig::load(test_dir() + "/tok");
  recased.normalizer.lowercase = !recased.normalizer.lowercase;
  const std::string promoted = Vocab::load(test_dir() + "/tok/vocab.txt").token(10);
  recased.additional_special_tokens.push_back(promoted);
  recased.save(recased_tok);
  const std::string recased_config =
      write_config("recased", "recased", "max_steps = 1\nper_device_train_batch_size = 8\n");
  std::string recased_text = read_file(recased_config);
  recased_text.replace(recased_text.find(test_dir() + "/tok\""), test_dir().size() + 4, recased_tok);
  write_file_atomic(recased_config, recased_text);
  const RunResult recased_run = train({"--config", recased_config});
  CHECK(recased_run.code == 0);
  CHECK_THAT(recased_run.err,
             Catch::Contains("warning: " + recased_tok + " normalises text otherwise than " + test_dir() +
                             "/shards/tokenizer, which encoded the shards (do_lower_case false -> true)"));
  CHECK_THAT(recased_run.err, Catch::Contains("warning: " + recased_tok + " has other special tokens than " +
                                              test_dir() + "/shards/tokenizer, which encoded the shards (only " +
                                              recased_tok + ": " + promoted + "): text holding them was encoded"));
  const RunResult plain_run =
      train({"--config", write_config("plain", "plain", "max_steps = 1\nper_device_train_batch_size = 8\n")});
  CHECK_THAT(plain_run.err, !Catch::Contains("normalises text otherwise") && !Catch::Contains("other special tokens"));

  // A checkpoint without vocab.txt: nothing shows which vocabulary it was trained with.
  std::filesystem::remove(grown_checkpoint + "/vocab.txt");
  message = error_of([&] { train({"--config", grown, "--resume"}); });
  CHECK_THAT(message, Catch::Contains("cannot resume from " + grown_checkpoint + ": it has no vocab.txt"));
  CHECK(one_line(message));

  // Model settings the data or the tokenizer rule out, before anything is built.
  const std::string one_step = "max_steps = 1\n";
  message = error_of([&] {
    train({"--config", write_config("types", "types", one_step, std::string(kTinyModel) + "type_vocab_size = 1\n")});
  });
  CHECK_THAT(message, Catch::Matches(".*types\\.toml:[0-9]+: \\[model\\] type_vocab_size = 1: the NSP pairs.*"));
  CHECK(one_line(message));
  message = error_of([&] {
    train({"--config", write_config("pad", "pad", one_step, std::string(kTinyModel) + "pad_token_id = 5000\n")});
  });
  CHECK_THAT(message,
             Catch::Matches(".*pad\\.toml:[0-9]+: \\[model\\] pad_token_id = 5000 is outside the vocabulary of.*"));
  CHECK(one_line(message));
  CHECK_FALSE(file_exists(test_dir() + "/pad"));
  // A tokenizer directory that is not there: the config's line that names it.
  {
    const std::string lost = write_config("lost", "lost", one_step);
    std::string text = read_file(lost);
    text.replace(text.find("/tok\""), 5, "/nowhere\"");
    write_file_atomic(lost, text);
    message = error_of([&] { train({"--config", lost}); });
    CHECK_THAT(message, Catch::Matches(".*lost\\.toml:[0-9]+: \\[data\\] tokenizer: .*/nowhere: tokenizer directory "
                                       "not found.*"));
    CHECK(one_line(message));
  }

  // A tokenizer whose tokenizer_config.json names special tokens its vocab.txt lacks: the fields, before
  // anything is built (the masking of the first batch used to throw them as token id -1).
  {
    const std::string odd_tok = test_dir() + "/tok_odd";
    std::filesystem::create_directories(odd_tok);
    write_file_atomic(odd_tok + "/vocab.txt", read_file(test_dir() + "/tok/vocab.txt"));
    TokenizerConfig odd = TokenizerConfig::load(test_dir() + "/tok");
    odd.cls_token = "[NOPE]";
    odd.save(odd_tok);
    const std::string odd_config = write_config("odd", "odd", one_step);
    std::string text = read_file(odd_config);
    text.replace(text.find(test_dir() + "/tok\""), test_dir().size() + 4, odd_tok);
    write_file_atomic(odd_config, text);
    message = error_of([&] { train({"--config", odd_config}); });
    CHECK_THAT(message,
               Catch::Contains("odd.toml:") &&
                   Catch::EndsWith(": [data] tokenizer: " + odd_tok + "/vocab.txt: has no cls_token '[NOPE]' (set by " +
                                   odd_tok + "/tokenizer_config.json, else HF's default); BERT pretraining needs it"));
    CHECK(one_line(message));
    odd.cls_token = "[CLS]";
    odd.pad_token = "[PADX]";
    odd.mask_token = "[MASKX]";
    odd.save(odd_tok);
    message = error_of([&] { train({"--config", odd_config}); });
    CHECK_THAT(message,
               Catch::EndsWith(odd_tok + "/vocab.txt: has no pad_token '[PADX]', mask_token '[MASKX]' (set by " +
                               odd_tok + "/tokenizer_config.json, else HF's default); BERT pretraining needs them"));
    CHECK_FALSE(file_exists(test_dir() + "/odd"));
  }

  // eval_steps written in a config whose data has no validation split: said, as nothing is evaluated.
  {
    std::ostringstream prepare_out, prepare_err;
    REQUIRE(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt", "--out",
                          test_dir() + "/shards_novalid", "--max-seq-len", "32", "--valid-fraction", "0", "--quiet"},
                         prepare_out, prepare_err) == 0);
    for (const bool written : {true, false}) {
      const std::string name = written ? "noeval" : "noeval_default";
      const std::string path = write_config(
          name, name,
          "max_steps = 1\nper_device_train_batch_size = 8\n" + std::string(written ? "eval_steps = 1\n" : ""));
      std::string text = read_file(path);
      text.replace(text.find("/shards\""), 8, "/shards_novalid\"");
      write_file_atomic(path, text);
      const RunResult run = train({"--config", path});
      INFO(run.err);
      CHECK(run.code == 0);
      if (written)
        CHECK_THAT(run.err, Catch::Contains("noeval.toml:") &&
                                Catch::Contains(": [training] eval_steps = 1: nothing to evaluate, " + test_dir() +
                                                "/shards_novalid has no valid split (its manifest.json lists no valid "
                                                "shards) and [data] valid_data is not set\n"));
      else
        CHECK_THAT(run.err, !Catch::Contains("eval_steps"));
    }
    // valid_data naming train_data, which has no valid split: its train split would be scored, the
    // examples trained on. Another directory of shards without a valid split is taken whole (eval-only
    // shards); a shard file names the directory to give.
    const auto with_valid = [&](const std::string& name, const std::string& train_dir, const std::string& valid) {
      std::string text = read_file(write_config(name, name, "max_steps = 1\nper_device_train_batch_size = 8\n"));
      text.replace(text.find("/shards\""), 8, train_dir + "\"\nvalid_data = \"" + valid + "\"");
      write_file_atomic(test_dir() + "/" + name + ".toml", text);
      return test_dir() + "/" + name + ".toml";
    };
    message = error_of([&] {
      train({"--config", with_valid("selfeval", "/shards_novalid", test_dir() + "/shards_novalid/")});
    });
    CHECK_THAT(
        message,
        Catch::Contains("selfeval.toml:") &&
            Catch::EndsWith(": [data] valid_data = '" + test_dir() +
                            "/shards_novalid' is train_data, which has no valid split: evaluating on its train split "
                            "would score the examples trained on; rebuild it with bert_prepare build "
                            "--valid-fraction, or name other shards"));
    const RunResult other = train({"--config", with_valid("othereval", "/shards", test_dir() + "/shards_novalid")});
    INFO(other.err);
    CHECK(other.code == 0);
    CHECK_THAT(other.out,
               Catch::Contains(" batches per evaluation, from " + test_dir() + "/shards_novalid (train split)\n"));
    message = error_of([&] {
      train({"--config", with_valid("fileeval", "/shards", test_dir() + "/shards/valid-00000.bin")});
    });
    CHECK(message == test_dir() + "/fileeval.toml:11: [data] valid_data: " + test_dir() +
                         "/shards/valid-00000.bin: a file; shards are read by directory, the bert_prepare "
                         "build output that holds manifest.json ('" +
                         test_dir() + "/shards'?)");
  }

  // A model far beyond the machine's memory: the bytes it needs, not std::bad_alloc or the OOM killer.
  std::string giant_model = kTinyModel;
  giant_model.replace(giant_model.find("max_position_embeddings = 32"), 28, "max_position_embeddings = 2000000000");
  message = error_of([&] { train({"--config", write_config("giant", "giant", one_step, giant_model)}); });
  CHECK_THAT(message, Catch::Contains("giant.toml: [model] the model (") &&
                          Catch::Contains("parameters) and a batch") &&
                          Catch::Contains("available; make the model or per_device_train_batch_size smaller"));
  CHECK(one_line(message));

  // An eval batch larger than the validation data takes the memory of the data it has, not of the setting.
  std::string eval_text = read_file(write_config("eval_batch", "eval_batch",
                                                 one_step + "per_device_train_batch_size = 8\n"
                                                            "per_device_eval_batch_size = 2000000000\n"));
  eval_text.replace(eval_text.find("[training]"), 10, "valid_data = \"" + test_dir() + "/shards\"\n[training]");
  write_file_atomic(test_dir() + "/eval_batch.toml", eval_text);
  const RunResult eval_run = train({"--config", test_dir() + "/eval_batch.toml"});
  INFO(eval_run.err);
  CHECK(eval_run.code == 0);
  CHECK_THAT(eval_run.out, Catch::Contains("| eval loss "));

  // Batch larger than the data; unknown command-line option.
  const std::string huge = write_config("huge", "huge", "max_steps = 2\nper_device_train_batch_size = 100000\n");
  message = error_of([&] { train({"--config", huge}); });
  CHECK_THAT(message, Catch::Contains("per_device_train_batch_size"));
  message = error_of([&] { train({"--config", config, "--resum"}); });
  CHECK_THAT(message, Catch::Contains("unknown option '--resum'"));
}

TEST_CASE("user mistakes found before training: eval shards, epochs, an unwritable output_dir, a warmup ignored") {
  make_tiny_data();
  std::string message;
  const std::string one_step = "max_steps = 1\n";
  // The constant schedule ignores a warm-up (as HF's): said, and the run table shows none.
  const RunResult constant = train({"--config", write_config("constant", "constant",
                                                             "max_steps = 1\nper_device_train_batch_size = 8\n"
                                                             "warmup_steps = 5\nlr_scheduler_type = \"constant\"\n")});
  CHECK(constant.code == 0);
  CHECK_THAT(
      constant.err,
      Catch::Contains("[training] warmup_steps (a warm-up of 5 steps) is ignored by lr_scheduler_type = \"constant\" "
                      "(as in HF); \"constant_with_warmup\" warms up\n") &&
          !Catch::Contains("is more than the 1 steps"));
  CHECK_THAT(constant.out, Catch::Contains(" epochs), warmup 0, lr "));
  // An output_dir nothing can be written in: said before anything else is done.
  std::string unwritable = read_file(write_config("unwritable", "x", "max_steps = 1\n"));
  unwritable.replace(unwritable.find("output_dir = \""), 14 + test_dir().size() + 3,
                     "output_dir = \"/proc/self/fdinfo\"");
  write_file_atomic(test_dir() + "/unwritable.toml", unwritable);
  CHECK_THAT(error_of([&] {
               train({"--config", test_dir() + "/unwritable.toml"});
             }),
             Catch::Contains("[training] output_dir '/proc/self/fdinfo': cannot write in it: "));

  // A fixed max_seq_length shorter than the evaluation's shards (the training's fit): named with them.
  {
    std::ostringstream o, e;
    REQUIRE(prepare_main({"build", "--tokenizer", test_dir() + "/tok", "--input", test_dir() + "/clean.txt", "--out",
                          test_dir() + "/long_shards", "--max-seq-len", "48", "--valid-fraction", "0.5", "--quiet"},
                         o, e) == 0);
    std::string model(kTinyModel);
    model.replace(model.find("max_position_embeddings = 32"), 28, "max_position_embeddings = 64");
    std::string text = read_file(write_config("long_valid", "long_valid", one_step, model));
    text.replace(text.find("[training]"), 10,
                 "valid_data = \"" + test_dir() + "/long_shards\"\nmax_seq_length = 40\n[training]");
    write_file_atomic(test_dir() + "/long_valid.toml", text);
    message = error_of([&] { train({"--config", test_dir() + "/long_valid.toml"}); });
    CHECK_THAT(message,
               Catch::EndsWith("[data] max_seq_length = 40 is shorter than the shards' max length 48 (" + test_dir() +
                               "/long_shards (valid split)); set it to 0 (pad each batch to its longest "
                               "example) or >= 48"));
  }

  // num_train_epochs that makes more steps than can be counted: an error, not a 1-step run.
  message = error_of([&] {
    train({"--config", write_config("epochs", "epochs", "max_steps = -1\nnum_train_epochs = 1e16\n")});
  });
  CHECK_THAT(message, Catch::Contains("epochs.toml: [training] num_train_epochs = 1e+16 makes ") &&
                          Catch::EndsWith(" steps, more than can be counted; set fewer epochs or max_steps"));
}

TEST_CASE("SIGHUP (a closed terminal) stops and saves as Ctrl-C does, unless nohup ignores it") {
  make_tiny_data();
  const std::string run = "max_steps = 4\nper_device_train_batch_size = 8\nsave_steps = 10\n";
  TrainHooks hooks;
  hooks.after_step = [](int64_t step) {
    if (step == 2) std::raise(SIGHUP);
  };
  // Sets SIGHUP's disposition, returning the one before.
  const auto set_hup = [](void (*handler)(int)) {
    struct sigaction action {
    }, previous{};
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    REQUIRE(::sigaction(SIGHUP, &action, &previous) == 0);
    return previous;
  };
  // The suite itself may run under nohup (SIGHUP ignored, inherited): the default disposition first.
  const struct sigaction inherited = set_hup(SIG_DFL);
  struct sigaction pipe_before {};
  ::sigaction(SIGPIPE, nullptr, &pipe_before);
  const RunResult hung_up = train({"--config", write_config("hup", "hup", run)}, hooks);
  INFO(hung_up.out << hung_up.err);
  CHECK(hung_up.code == 128 + SIGHUP);
  CHECK_THAT(hung_up.out, Catch::Contains("stopped at step 2 of 4"));
  CHECK(file_exists(test_dir() + "/hup/checkpoint-2/trainer_state.json"));
  struct sigaction pipe_after {};
  ::sigaction(SIGPIPE, nullptr, &pipe_after);
  // Ignored during the stop only (a dead `| tee`), then as it was.
  CHECK(pipe_after.sa_handler == pipe_before.sa_handler);
  // Started under nohup (SIGHUP ignored): the run goes on, and the disposition is left as it was.
  set_hup(SIG_IGN);
  const RunResult nohup = train({"--config", write_config("nohup", "nohup", run)}, hooks);
  struct sigaction after {};
  ::sigaction(SIGHUP, &inherited, &after);
  CHECK(nohup.code == 0);
  CHECK(after.sa_handler == SIG_IGN);
  CHECK_THAT(nohup.out, Catch::Contains("done: 4 steps"));
}

TEST_CASE("a non-finite gradient skips the update with a warning, and the run goes on") {
  make_tiny_data();
  // A learning rate of 1e30 sends AdamW's first update (~lr * sign(g)) to weights of ~1e30, still
  // finite: the second forward's products (~1e60) overflow, its gradient norm is not finite, and every
  // update from then on is skipped. The run must neither crash nor apply them; the log says so, the
  // (finite) weights are saved, and the run exits 1: its loss ends non-finite, the model is of no use.
  // (At 1e38 the update itself overflows: "user mistakes" above.)
  const std::string config =
      write_config("blowup", "out",
                   "max_steps = 4\nper_device_train_batch_size = 8\nlearning_rate = 1e30\nwarmup_steps = 0\n"
                   "lr_scheduler_type = \"constant\"\nlogging_steps = 1\nsave_steps = 4\n");
  const RunResult run = train({"--config", config});
  INFO(run.out << run.err);
  REQUIRE(run.code == 1);
  CHECK_THAT(run.err,
             Catch::Matches("(.|\n)*\nerror: the last step's loss is (-?nan|inf) \\(3 of 4 update\\(s\\) of this "
                            "run skipped\\): the weights diverged; lower \\[training\\] learning_rate in " +
                            test_dir() + "/blowup.toml \\(the checkpoint is saved for inspection\\)\n"));
  CHECK(run.err.find("step 2: gradient norm is") != std::string::npos);
  CHECK(run.err.find("skipping this update") != std::string::npos);
  CHECK(run.out.find("3 update(s) skipped (non-finite gradients)") != std::string::npos);
  const std::vector<Json> records = read_metrics(test_dir() + "/out/metrics.jsonl");
  REQUIRE(records.size() == 4);
  CHECK(records[0].find("grad_norm")->is_number());
  for (size_t i = 1; i < 4; ++i) CHECK(records[i].find("grad_norm")->is_null());
  // The bias-correction count holds the one update applied; the saved weights are that update's.
  const TrainerState state = TrainerState::load(test_dir() + "/out/checkpoint-4/trainer_state.json");
  CHECK(state.global_step == 4);
  CHECK(state.optimizer_steps == 1);

  // A run none of whose updates applied (weights that overflow from the first forward) changed
  // nothing: it saves, as any run does, and then exits 1 saying so, so that a script stops there.
  const RunResult dead = train({"--config", write_config("dead", "dead",
                                                         "max_steps = 2\nper_device_train_batch_size = 8\n"
                                                         "save_steps = 2\n",
                                                         std::string(kTinyModel) + "initializer_range = 1e30\n")});
  INFO(dead.out << dead.err);
  CHECK(dead.code == 1);
  CHECK_THAT(dead.err, Catch::EndsWith("error: all 2 update(s) of this run were skipped (non-finite gradients), so "
                                       "the weights did not change; check [model] initializer_range and [training] "
                                       "learning_rate in " +
                                       test_dir() + "/dead.toml\n"));
  CHECK_THAT(dead.out, Catch::Contains("2 update(s) skipped (non-finite gradients)"));
  CHECK(file_exists(test_dir() + "/dead/checkpoint-2/model.safetensors"));
}

TEST_CASE("a micro-batch without a masked token has no MLM loss: the logged mlm_loss averages the others") {
  make_tiny_data();
  // One sequence per micro-batch and mlm_probability 0.02: most micro-batches mask nothing. The same run
  // logged every step and every 4 steps: each 4-step record's mlm_loss is the mean of the per-step
  // values that exist (null where none does), not a mean that counts the maskless steps as 0. (A step's
  // loss is summed in float, so it equals mlm + nsp to ~1e-7.)
  const auto config = [](const std::string& name, int logging_steps) {
    const std::string path = write_config(name, name,
                                          "max_steps = 16\nper_device_train_batch_size = 1\nlogging_steps = " +
                                              std::to_string(logging_steps) + "\nsave_steps = 100\n");
    std::string text = read_file(path);
    const size_t at = text.find("[data]\n");
    REQUIRE(at != std::string::npos);
    text.insert(at + 7, "mlm_probability = 0.02\n");
    write_file_atomic(path, text);
    return path;
  };
  const RunResult every = train({"--config", config("every", 1)});
  INFO(every.out << every.err);
  REQUIRE(every.code == 0);
  const RunResult fourth = train({"--config", config("fourth", 4)});
  INFO(fourth.out << fourth.err);
  REQUIRE(fourth.code == 0);
  const std::vector<Json> steps = read_metrics(test_dir() + "/every/metrics.jsonl");
  const std::vector<Json> windows = read_metrics(test_dir() + "/fourth/metrics.jsonl");
  REQUIRE(steps.size() == 16);
  REQUIRE(windows.size() == 4);
  int without = 0, with = 0;
  for (const Json& r : steps) {
    const Json* mlm = r.find("mlm_loss");
    REQUIRE(mlm != nullptr);
    if (mlm->is_null()) {
      ++without;
      CHECK(r.find("mlm_acc")->is_null());  // no accuracy of 0 from no masked token
      CHECK(r.find("loss")->as_number() == r.find("nsp_loss")->as_number());
    } else {
      ++with;
      CHECK(std::abs(r.find("loss")->as_number() - mlm->as_number() - r.find("nsp_loss")->as_number()) < 1e-6);
    }
  }
  REQUIRE(without > 0);  // the case under test happened
  REQUIRE(with > 0);
  CHECK(every.out.find("(mlm -, nsp ") != std::string::npos);
  CHECK(every.out.find("acc mlm - nsp ") != std::string::npos);
  for (size_t w = 0; w < 4; ++w) {
    double mlm_sum = 0, nsp_sum = 0;
    int mlm_n = 0;
    for (size_t i = 4 * w; i < 4 * w + 4; ++i) {
      nsp_sum += steps[i].find("nsp_loss")->as_number();
      if (!steps[i].find("mlm_loss")->is_null()) mlm_sum += steps[i].find("mlm_loss")->as_number(), ++mlm_n;
    }
    const Json& r = windows[w];
    INFO("window " << w);
    CHECK(std::abs(r.find("nsp_loss")->as_number() - nsp_sum / 4) < 1e-6);
    if (mlm_n == 0) {
      CHECK(r.find("mlm_loss")->is_null());
      CHECK(std::abs(r.find("loss")->as_number() - nsp_sum / 4) < 1e-6);
    } else {
      REQUIRE(r.find("mlm_loss")->is_number());
      CHECK(std::abs(r.find("mlm_loss")->as_number() - mlm_sum / mlm_n) < 1e-6);
      CHECK(std::abs(r.find("loss")->as_number() - (mlm_sum / mlm_n + nsp_sum / 4)) < 1e-6);
    }
  }
  // The count travels in the trainer state, so a resumed window divides as the uninterrupted one does;
  // a state without it (older runs) counted every micro-batch.
  TrainerState state;
  state.model.vocab_size = 100;
  state.total_steps = 4;
  state.batches_per_epoch = 4;
  state.per_device_train_batch_size = 1;
  state.gradient_accumulation_steps = 1;
  state.window.micro_batches = 4;
  state.window.mlm_batches = 1;
  Json json = state.to_json();
  CHECK(TrainerState::from_json(json, "s.json").window.mlm_batches == 1);
  Json window = *json.find("log_window");
  window.set("mlm_batches", 5);
  json.set("log_window", window);
  CHECK_THROWS_WITH(TrainerState::from_json(json, "s.json"),
                    Catch::Contains("s.json: log_window.mlm_batches 5 is not between 0 and micro_batches (4)"));
  Json older = Json::object();
  for (const auto& [key, value] : window.as_object())
    if (key != "mlm_batches") older.set(key, value);
  json.set("log_window", older);
  CHECK(TrainerState::from_json(json, "s.json").window.mlm_batches == 4);
}

TEST_CASE("bert_train --dump-batches writes the starting weights and every micro-batch trained on") {
  make_tiny_data();
  const std::string config =
      write_config("dump", "out", "max_steps = 3\nper_device_train_batch_size = 4\ngradient_accumulation_steps = 2\n");
  const std::string dump = test_dir() + "/dump";
  const RunResult run = train({"--config", config, "--dump-batches", dump});
  INFO(run.out << run.err);
  REQUIRE(run.code == 0);

  // The starting weights: the HF initialisation of the run's seed (7), as an HF model directory.
  const BertConfig saved = BertConfig::load_hf_json(dump + "/init/config.json");
  BertForPreTraining<float> init(saved);
  init.load_safetensors(dump + "/init/model.safetensors");
  ModelOptions options;
  options.init_seed = 7;  // the fixture config's seed
  const BertForPreTraining<float> expected(saved, options);
  CHECK(std::equal(init.parameters().begin(), init.parameters().end(), expected.parameters().begin()));
  CHECK(file_exists(dump + "/init/vocab.txt"));

  // 3 steps x 2 micro-batches of 4 sequences, each record sized by its own header.
  const std::string bytes = read_file(dump + "/batches.bin");
  REQUIRE(bytes.compare(0, 8, "BFBATCH1") == 0);
  size_t offset = 8, records = 0;
  while (offset < bytes.size()) {
    int32_t shape[2];
    REQUIRE(offset + sizeof(shape) <= bytes.size());
    std::memcpy(shape, bytes.data() + offset, sizeof(shape));
    CHECK(shape[0] == 4);
    CHECK((shape[1] > 0 && shape[1] <= 32));
    offset += sizeof(shape) + sizeof(int32_t) * (4 * static_cast<size_t>(shape[0]) * shape[1] + shape[0]);
    ++records;
  }
  CHECK(offset == bytes.size());
  CHECK(records == 6);

  // A dump directory that cannot be made is a one-line error before training starts.
  write_file_atomic(test_dir() + "/a_file", "x");
  const std::string blocked = write_config("blocked", "out2", "max_steps = 1\nper_device_train_batch_size = 4\n");
  const std::string message = error_of([&] {
    train({"--config", blocked, "--dump-batches", test_dir() + "/a_file/d"});
  });
  CHECK_THAT(message, Catch::Contains("a_file/d"));
  CHECK(message.find('\n') == std::string::npos);
  CHECK(!file_exists(test_dir() + "/out2/metrics.jsonl"));
}

TEST_CASE(
    "[model] model_name_or_path starts a run from a pretrained model's weights, a BertForMaskedLM's or BertModel's "
    "too") {
  make_tiny_data();
  const std::string dir = test_dir();
  const std::string first = write_config("first", "first", "max_steps = 4\nper_device_train_batch_size = 4\n");
  REQUIRE(train({"--config", first}).code == 0);
  const std::string pretrained = dir + "/first";  // its final model
  BertForPreTraining<float> trained(BertConfig::load_hf_json(pretrained + "/config.json"));
  trained.load_safetensors(pretrained + "/model.safetensors");

  // Its weights start the next run; a dropout probability may change, a shape key may be repeated.
  const std::string second =
      write_config("second", "second", "max_steps = 2\nper_device_train_batch_size = 4\n",
                   "model_name_or_path = \"" + pretrained + "\"\nhidden_dropout_prob = 0.0\nhidden_size = 16\n");
  const RunResult run = train({"--config", second, "--dump-batches", dir + "/dump"});
  INFO(run.out << run.err);
  REQUIRE(run.code == 0);
  CHECK_THAT(run.out,
             Catch::Contains("  weights      from " + pretrained + "/model.safetensors (model_name_or_path)\n"));
  BertForPreTraining<float> start(BertConfig::load_hf_json(dir + "/dump/init/config.json"));
  start.load_safetensors(dir + "/dump/init/model.safetensors");
  CHECK(std::ranges::equal(start.parameters(), trained.parameters()));
  const BertConfig second_model = BertConfig::load_hf_json(dir + "/second/config.json");
  CHECK(second_model.hidden_dropout_prob == 0.0);
  CHECK(second_model.attention_probs_dropout_prob == 0.1);
  CHECK(second_model.num_hidden_layers == 2);

  // A BertForMaskedLM save has no pooler and no NSP head: those start as a fresh run's would.
  const std::string mlm = dir + "/mlm";
  std::filesystem::create_directories(mlm);
  for (const char* name : {"config.json", "vocab.txt", "tokenizer_config.json"})
    std::filesystem::copy_file(pretrained + "/" + name, mlm + "/" + name);
  std::vector<ParamInfo> masked_lm;
  for (const ParamInfo& info : trained.params())
    if (!info.name.starts_with("bert.pooler.") && !info.name.starts_with("cls.seq_relationship."))
      masked_lm.push_back(info);
  write_parameter_arena(mlm + "/model.safetensors", masked_lm, trained.parameters());
  const std::string third =
      write_config("third", "third", "max_steps = 2\nsave_steps = 1\nper_device_train_batch_size = 4\n",
                   "model_name_or_path = \"" + mlm + "\"\n");
  const RunResult heads = train({"--config", third, "--dump-batches", dir + "/dump3"});
  INFO(heads.out << heads.err);
  REQUIRE(heads.code == 0);
  CHECK_THAT(heads.out, Catch::Contains("  weights      from " + mlm +
                                        "/model.safetensors (model_name_or_path); newly initialised, as it has none: "
                                        "bert.pooler.dense.weight, bert.pooler.dense.bias, "
                                        "cls.seq_relationship.weight, cls.seq_relationship.bias\n"));
  BertForPreTraining<float> start3(BertConfig::load_hf_json(dir + "/dump3/init/config.json"));
  start3.load_safetensors(dir + "/dump3/init/model.safetensors");
  ModelOptions options;
  options.init_seed = 7;  // the fixture config's seed
  const BertForPreTraining<float> fresh(start3.config(), options);
  size_t from_file = 0, from_init = 0;
  for (const ParamInfo& info : start3.params()) {
    INFO(info.name);
    const bool head = info.name.starts_with("bert.pooler.") || info.name.starts_with("cls.seq_relationship.");
    const auto* source = head ? &fresh : &trained;
    CHECK(std::equal(start3.parameters().begin() + info.offset, start3.parameters().begin() + info.offset + info.numel,
                     source->parameters().begin() + info.offset));
    ++(head ? from_init : from_file);
  }
  CHECK(from_init == 4);
  CHECK(from_file > 4);

  // A resumed run's weights are its checkpoint's: the pretrained file is no longer read, nor, once the
  // directory is gone, its config.json.
  std::filesystem::remove(mlm + "/model.safetensors");
  const RunResult resumed = train({"--config", third, "--resume", dir + "/third/checkpoint-1"});
  INFO(resumed.out << resumed.err);
  CHECK(resumed.code == 0);
  CHECK_THAT(resumed.out, !Catch::Contains("(model_name_or_path)"));
  std::filesystem::remove_all(mlm);
  const RunResult gone = train({"--config", third, "--resume", dir + "/third/checkpoint-1"});
  INFO(gone.out << gone.err);
  CHECK(gone.code == 0);
  CHECK_THAT(gone.err, Catch::Contains("note: " + third + ":2: [model] model_name_or_path '" + mlm +
                                       "' has no config.json any more; resuming with the model " + dir +
                                       "/third/checkpoint-1 was trained with"));
  CHECK(read_file(dir + "/third/checkpoint-2/model.safetensors") ==
        read_file(dir + "/third/model.safetensors"));  // the final model is the last checkpoint's
  CHECK_THAT(error_of([&] { train({"--config", third}); }), Catch::Contains("not a directory"));

  // A BertModel save (transformers' base model): its tensors without the "bert." prefix, no heads but
  // the pooler. The MLM head and the NSP head start fresh.
  const std::string base = dir + "/base";
  std::filesystem::create_directories(base);
  for (const char* name : {"config.json", "vocab.txt", "tokenizer_config.json"})
    std::filesystem::copy_file(pretrained + "/" + name, base + "/" + name);
  std::vector<ParamInfo> base_model;
  for (ParamInfo info : trained.params())
    if (info.name.starts_with("bert.")) {
      info.name = info.name.substr(5);
      base_model.push_back(info);
    }
  write_parameter_arena(base + "/model.safetensors", base_model, trained.parameters());
  const std::string fourth = write_config("fourth", "fourth", "max_steps = 1\nper_device_train_batch_size = 4\n",
                                          "model_name_or_path = \"" + base + "\"\n");
  const RunResult from_base = train({"--config", fourth, "--dump-batches", dir + "/dump4"});
  INFO(from_base.out << from_base.err);
  REQUIRE(from_base.code == 0);
  CHECK_THAT(from_base.out, Catch::Contains("(model_name_or_path); newly initialised, as it has none: "
                                            "cls.predictions.bias, cls.predictions.transform.dense.weight, "
                                            "cls.predictions.transform.dense.bias, "
                                            "cls.predictions.transform.LayerNorm.weight, "
                                            "cls.predictions.transform.LayerNorm.bias, cls.seq_relationship.weight, "
                                            "cls.seq_relationship.bias\n"));
  BertForPreTraining<float> start4(BertConfig::load_hf_json(dir + "/dump4/init/config.json"));
  start4.load_safetensors(dir + "/dump4/init/model.safetensors");
  for (const ParamInfo& info : start4.params()) {
    INFO(info.name);
    const auto* source = info.name.starts_with("cls.") ? &fresh : &trained;
    CHECK(std::equal(start4.parameters().begin() + info.offset, start4.parameters().begin() + info.offset + info.numel,
                     source->parameters().begin() + info.offset));
  }
}

TEST_CASE("[model] model_name_or_path grows the vocabulary for tokens [data] tokenizer appends to the model's") {
  make_tiny_data();
  const std::string dir = test_dir();
  const std::string first = write_config("first", "first", "max_steps = 2\nper_device_train_batch_size = 4\n");
  REQUIRE(train({"--config", first}).code == 0);
  BertForPreTraining<float> trained(BertConfig::load_hf_json(dir + "/first/config.json"));
  trained.load_safetensors(dir + "/first/model.safetensors");
  const auto vocab = static_cast<int64_t>(trained.config().vocab_size);
  const int64_t hidden = trained.config().hidden_size, added = 3, rows = vocab - added;

  // A model of the tokenizer's tokens but the last three: its vocab.txt, config.json and two tensors
  // shorter by three rows (a published model, [data] tokenizer its vocabulary with domain tokens appended).
  const std::string small = dir + "/small";
  std::filesystem::create_directories(small);
  std::filesystem::copy_file(dir + "/first/tokenizer_config.json", small + "/tokenizer_config.json");
  std::string tokens = read_file(dir + "/first/vocab.txt");
  for (int64_t i = 0; i < added; ++i) tokens.erase(tokens.rfind('\n', tokens.size() - 2) + 1);
  write_file_atomic(small + "/vocab.txt", tokens);
  BertConfig small_config = trained.config();
  small_config.vocab_size = static_cast<int>(rows);
  write_file_atomic(small + "/config.json", small_config.to_hf_json().dump(2) + "\n");
  std::vector<ParamInfo> shorter = trained.params();
  for (ParamInfo& info : shorter)
    if (info.name == "bert.embeddings.word_embeddings.weight" || info.name == "cls.predictions.bias") {
      info.shape[0] = rows;
      info.numel = static_cast<size_t>(rows * (info.shape.size() == 2 ? hidden : 1));
    }
  write_parameter_arena(small + "/model.safetensors", shorter, trained.parameters());

  const std::string grow =
      write_config("grow", "grow", "max_steps = 2\nsave_steps = 1\nper_device_train_batch_size = 4\n",
                   "model_name_or_path = \"" + small + "\"\n");
  const RunResult run = train({"--config", grow, "--dump-batches", dir + "/dump"});
  INFO(run.out << run.err);
  REQUIRE(run.code == 0);
  CHECK_THAT(run.out, Catch::Contains("(model_name_or_path); vocabulary grown by 3 tokens to " + std::to_string(vocab) +
                                      " (new embedding rows at the mean of its " + std::to_string(rows) +
                                      ", decoder bias 0)\n"));
  CHECK_THAT(run.err, Catch::Contains("has 3 tokens past " + small + "'s vocab_size " + std::to_string(rows) +
                                      ": their embeddings start at the mean of its rows"));
  CHECK(BertConfig::load_hf_json(dir + "/grow/config.json").vocab_size == vocab);

  BertForPreTraining<float> start(BertConfig::load_hf_json(dir + "/dump/init/config.json"));
  start.load_safetensors(dir + "/dump/init/model.safetensors");
  REQUIRE(start.config().vocab_size == vocab);
  for (const ParamInfo& info : start.params()) {
    INFO(info.name);
    const auto at = [&](const auto& model, size_t i) { return model.parameters()[info.offset + i]; };
    if (info.name == "bert.embeddings.word_embeddings.weight") {
      for (size_t i = 0; i < static_cast<size_t>(rows * hidden); ++i) REQUIRE(at(start, i) == at(trained, i));
      for (int64_t c = 0; c < hidden; ++c) {
        double mean = 0;
        for (int64_t r = 0; r < rows; ++r) mean += at(trained, static_cast<size_t>(r * hidden + c));
        mean /= static_cast<double>(rows);
        for (int64_t r = rows; r < vocab; ++r)
          CHECK(at(start, static_cast<size_t>(r * hidden + c)) == Approx(mean).margin(1e-7));
      }
    } else if (info.name == "cls.predictions.bias") {
      for (size_t i = 0; i < static_cast<size_t>(rows); ++i) REQUIRE(at(start, i) == at(trained, i));
      for (size_t i = static_cast<size_t>(rows); i < static_cast<size_t>(vocab); ++i) CHECK(at(start, i) == 0.0f);
    } else {
      CHECK(std::equal(start.parameters().begin() + info.offset, start.parameters().begin() + info.offset + info.numel,
                       trained.parameters().begin() + info.offset));
    }
  }
  // The resumed run has the grown shape too, and lands where the uninterrupted one did.
  const std::string uninterrupted = read_file(dir + "/grow/model.safetensors");
  std::filesystem::remove(dir + "/grow/model.safetensors");
  const RunResult resumed = train({"--config", grow, "--resume", dir + "/grow/checkpoint-1"});
  INFO(resumed.out << resumed.err);
  CHECK(resumed.code == 0);
  CHECK(read_file(dir + "/grow/model.safetensors") == uninterrupted);

  // vocab_size = 0 (the tokenizer's, as every config in configs/ writes it) grows the vocabulary too.
  const std::string zero = write_config("zero", "zero", "max_steps = 1\nper_device_train_batch_size = 4\n",
                                        "model_name_or_path = \"" + small + "\"\nvocab_size = 0\n");
  const RunResult from_zero = train({"--config", zero});
  INFO(from_zero.out << from_zero.err);
  CHECK(from_zero.code == 0);
  CHECK_THAT(from_zero.out, Catch::Contains("vocabulary grown by 3 tokens"));
  // [model] vocab_size written beside it (its config.json's) would be silently overridden: refused.
  const std::string written =
      write_config("written", "written", "max_steps = 1\n",
                   "model_name_or_path = \"" + small + "\"\nvocab_size = " + std::to_string(rows) + "\n");
  CHECK_THAT(error_of([&] {
               train({"--config", written});
             }),
             Catch::Contains("written.toml:3: [model] vocab_size = " + std::to_string(rows) + " (" + small +
                             "/config.json's) is smaller than the " + std::to_string(vocab) + " tokens of " + dir +
                             "/tok ([data] tokenizer); leave it out and the model's vocabulary grows to them"));

  // A tokenizer that is not the model's with tokens appended is still refused.
  std::string other = tokens;
  other.replace(other.find("[MASK]\n") + 7, 0, "다른\n");
  other.erase(other.rfind('\n', other.size() - 2) + 1);
  write_file_atomic(small + "/vocab.txt", other);
  const std::string refused =
      write_config("refused", "refused", "max_steps = 1\n", "model_name_or_path = \"" + small + "\"\n");
  CHECK_THAT(error_of([&] {
               train({"--config", refused});
             }),
             Catch::Contains("its vocabulary differs from " + dir + "/tok's ([data] tokenizer): id 5 is '다른' there"));
}

TEST_CASE("[model] model_name_or_path mistakes are one-line errors naming the key") {
  make_tiny_data();
  const std::string dir = test_dir();
  const std::string first = write_config("first", "first", "max_steps = 1\nper_device_train_batch_size = 4\n");
  REQUIRE(train({"--config", first}).code == 0);
  const std::string pretrained = dir + "/first";
  // The error of a run of config `name` into output_dir `name`, or into `output`, which it must leave as it was.
  const auto error_for = [&](const std::string& name, const std::string& model, const std::string& training = "",
                             const std::string& output = "") {
    const std::string config = write_config(name, output.empty() ? name : output,
                                            "max_steps = 1\nper_device_train_batch_size = 4\n" + training, model);
    const std::string before = output.empty() ? "" : read_file(dir + "/" + output + "/metrics.jsonl");
    const std::string message = error_of([&] { train({"--config", config}); });
    CHECK(message.find('\n') == std::string::npos);
    if (output.empty())
      CHECK_FALSE(file_exists(dir + "/" + name + "/metrics.jsonl"));
    else
      CHECK(read_file(dir + "/" + output + "/metrics.jsonl") == before);
    return message;
  };
  const std::string key = "model_name_or_path = \"" + pretrained + "\"\n";

  CHECK_THAT(error_for("shape", key + "hidden_size = 32\n"),
             Catch::Contains("shape.toml:3: [model] hidden_size = 32 differs from " + pretrained +
                             "/config.json's 16: a model started from its weights has its shape; leave hidden_size "
                             "out of [model]"));
  CHECK_THAT(
      error_for("act", key + "hidden_act = \"gelu_new\"\n"),
      Catch::Contains("[model] hidden_act = \"gelu_new\" differs from " + pretrained + "/config.json's \"gelu\""));
  CHECK_THAT(error_for("nodir", "model_name_or_path = \"" + dir + "/nope\"\n"),
             Catch::Contains("nodir.toml:2: [model] model_name_or_path = \"" + dir +
                             "/nope\": not a directory; name a local model directory"));
  CHECK_THAT(error_for("empty", "model_name_or_path = \"\"\n"),
             Catch::Contains("[model] model_name_or_path = \"\": name the model directory to start from"));
  CHECK_THAT(error_for("typo", "model_name_or_pth = \"" + pretrained + "\"\n"),
             Catch::Contains("did you mean 'model_name_or_path'?"));
  CHECK_THAT(error_for("section", std::string(kTinyModel), key),
             Catch::Contains("key 'model_name_or_path' belongs in [model], not [training]"));
  CHECK_THAT(error_for("number", "model_name_or_path = 3\n"), Catch::Contains("expected a string, got"));
  // overwrite_output_dir would remove the model the run starts from.
  CHECK_THAT(error_for("into_first", key, "overwrite_output_dir = true\n", "first"),
             Catch::Contains("[model] model_name_or_path '" + pretrained +
                             "' is output_dir, whose model "
                             "overwrite_output_dir = true would remove"));
  CHECK(file_exists(pretrained + "/model.safetensors"));
  CHECK_THAT(error_for("into_first2", "model_name_or_path = \"" + pretrained + "/checkpoint-1\"\n",
                       "overwrite_output_dir = true\n", "first"),
             Catch::Contains("[model] model_name_or_path '" + pretrained + "/checkpoint-1' is inside " + pretrained +
                             "/checkpoint-1, which overwrite_output_dir = true would remove"));

  // A directory without safetensors weights, without a vocabulary, or with another vocabulary.
  const auto copy_of = [&](const std::string& name, const std::vector<std::string>& files) {
    const std::string copy = dir + "/" + name + "_model";
    std::filesystem::create_directories(copy);
    for (const std::string& file : files) std::filesystem::copy_file(pretrained + "/" + file, copy + "/" + file);
    return copy;
  };
  const std::string pickled = copy_of("pickled", {"config.json", "vocab.txt", "tokenizer_config.json"});
  write_file_atomic(pickled + "/pytorch_model.bin", "not read");
  CHECK_THAT(error_for("pickled", "model_name_or_path = \"" + pickled + "\"\n"),
             Catch::Contains(pickled + "/model.safetensors not found; there is a pytorch_model.bin, which bertforge "
                                       "does not read"));
  const std::string sharded = copy_of("sharded", {"config.json", "vocab.txt", "tokenizer_config.json"});
  write_file_atomic(sharded + "/model.safetensors.index.json", "{}");
  CHECK_THAT(error_for("sharded", "model_name_or_path = \"" + sharded + "\"\n"),
             Catch::Contains(sharded + "/model.safetensors not found; there is a model.safetensors.index.json: a save "
                                       "in shards"));
  // Its positions cannot grow: a config.json shorter than the shards is named, with the fix.
  const std::string short_positions =
      copy_of("short", {"model.safetensors", "vocab.txt", "tokenizer_config.json", "config.json"});
  std::string json = read_file(short_positions + "/config.json");
  const size_t at = json.find("\"max_position_embeddings\": 32");
  REQUIRE(at != std::string::npos);
  json.replace(at, std::strlen("\"max_position_embeddings\": 32"), "\"max_position_embeddings\": 16");
  write_file_atomic(short_positions + "/config.json", json);
  CHECK_THAT(error_for("short", "model_name_or_path = \"" + short_positions + "\"\n"),
             Catch::Contains("[model] model_name_or_path: " + short_positions +
                             "/config.json's max_position_embeddings 16 is shorter than the 32-token sequences of the "
                             "shards (the model has no positions past it); rebuild the shards with --max-seq-len 16 or "
                             "less"));
  const std::string data_config =
      write_config("short_data", "short_data", "max_steps = 1\n", "model_name_or_path = \"" + short_positions + "\"\n");
  std::string text = read_file(data_config);
  text.replace(text.find("[data]\n"), 7, "[data]\nmax_seq_length = 24\n");
  write_file_atomic(data_config, text);
  CHECK_THAT(error_of([&] {
               train({"--config", data_config});
             }),
             Catch::Contains("[data] max_seq_length = 24: must be <= [model] max_position_embeddings 16 (" +
                             short_positions + "/config.json's)"));
  const std::string novocab = copy_of("novocab", {"config.json", "model.safetensors"});
  CHECK_THAT(error_for("novocab", "model_name_or_path = \"" + novocab + "\"\n"),
             Catch::Contains("it has no vocab.txt or tokenizer.json, so nothing shows which tokens its embeddings are "
                             "for"));
  const std::string other = copy_of("other", {"config.json", "model.safetensors", "tokenizer_config.json"});
  std::string vocab = read_file(pretrained + "/vocab.txt");
  const size_t line = vocab.find("\n", vocab.find("[MASK]"));
  vocab.insert(line + 1, "다른\n");
  vocab.erase(vocab.rfind('\n', vocab.size() - 2) + 1);  // the same size
  write_file_atomic(other + "/vocab.txt", vocab);
  const std::string message = error_for("other", "model_name_or_path = \"" + other + "\"\n");
  CHECK_THAT(message,
             Catch::Contains("its vocabulary differs from " + dir + "/tok's ([data] tokenizer): id 5 is '다른' there"));
  CHECK_THAT(message, Catch::Contains("build the shards with it (bert_prepare build --tokenizer " + other + ")"));
}
