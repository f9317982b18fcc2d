// Data parallelism over MPI (engine/communicator.h): `mpirun -np 2 bert_train` against bert_train in
// one process, on the tiny corpus of tests/trainer_fixture.h.
//   - 2 ranks x batch 4 train the model 1 rank trains with batch 4 x accumulation 2: the same losses,
//     accuracies, gradient norms and evaluations in metrics.jsonl, and the same weights (to fp32 sums'
//     order); rank 0 alone prints and writes
//   - a 2-rank checkpoint resumes on 1 rank (accumulation 2) and ends where the 1-rank run ends
//   - SIGUSR1 to mpirun (forwarded to every rank) stops both ranks after the same step with one
//     checkpoint, and resuming it on 2 ranks ends bit for bit where an uninterrupted 2-rank run ends
//   - a re-save cut short (checkpoint-N.old-PID) is put back by rank 0 before any rank lists the
//     checkpoints: both ranks resume from it
//   - unbound ranks on one host divide its cores (threads = 0) instead of each taking all of them
//   - a rank's error before training is one line, once, and every rank exits 1; so is an error in the
//     arguments, and --help prints once
//   - a rank that freezes (SIGSTOP) mid-run: the other aborts the job after ddp_timeout with the reason
//   - [emulated] device = "cuda": 2 ranks on 2 GPUs (the CUDA emulation, NCCL emulated over MPI:
//     bert_train_emulated) train the model 1 GPU trains with twice the accumulation, and their
//     checkpoint resumes on the CPU; ranks that would share a GPU, or outnumber a host's GPUs, are
//     refused before training in one line; a rank whose NCCL communicator fails to start, whose sums
//     never finish (ddp_timeout, also the warm-up sum before training) or whose NCCL reports an error
//     ends the job with its reason; rank 1 failing mid-run names the latest checkpoint (one rank 0
//     saved, or the one resumed from) and the command that goes on from it
// Needs a build with MPI and its launcher (CMake passes BERT_MPIEXEC); bert_train's path is BERT_TRAIN.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/communicator.h"
#include "engine/safetensors.h"
#include "kernels/device.h"
#include "tests/trainer_fixture.h"

extern char** environ;

namespace fs = std::filesystem;

namespace bert::test {
namespace {

// Output of a finished process: exit code, stdout, stderr.
struct Process {
  pid_t pid = -1;
  std::string out_path, err_path;
};

Process spawn(const std::vector<std::string>& args, const std::string& log_prefix) {
  Process p{-1, log_prefix + ".out", log_prefix + ".err"};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, p.out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, p.err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const int rc = posix_spawn(&p.pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(rc == 0);
  return p;
}

// What a process that ended with wait status `status` did.
RunResult result(const Process& p, int status) {
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return {code, read_file(p.out_path), read_file(p.err_path)};
}

RunResult finish(const Process& p) {
  int status = 0;
  REQUIRE(::waitpid(p.pid, &status, 0) == p.pid);
  return result(p, status);
}

// mpirun -np `ranks` bert_train ARGS (root may run it: the test VM's and CI's user).
std::vector<std::string> mpirun_args(int ranks, const std::vector<std::string>& args,
                                     const std::string& program = BERT_TRAIN) {
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  ::setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);  // more ranks than cores is fine here
  // Containers often forbid the cross-memory attach of Open MPI's shared-memory transport ("Read -1,
  // errno = 1"); plain copies through the shared segment work everywhere.
  ::setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
  // A session directory base of this test process's own: under the shared /tmp/ompi.<host>.<uid>, an
  // mpirun of a test running beside this one removes that directory as it ends, and an mpirun starting
  // then fails ("A call to mkdir was unable to create the desired directory ... orte_init failed").
  static char session_base[] = "/tmp/bf-ompi-XXXXXX";  // no destructor: the atexit handler outlives nothing
  static const bool made = [] {
    REQUIRE(::mkdtemp(session_base) != nullptr);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(session_base, ec);
    });
    return true;
  }();
  (void)made;
  ::setenv("OMPI_MCA_orte_tmpdir_base", session_base, 1);
  std::vector<std::string> all = {BERT_MPIEXEC, "-np", std::to_string(ranks), program};
  all.insert(all.end(), args.begin(), args.end());
  return all;
}

RunResult mpirun(int ranks, const std::vector<std::string>& args, const std::string& name,
                 const std::string& program = BERT_TRAIN) {
  return finish(spawn(mpirun_args(ranks, args, program), test_dir() + "/" + name));
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The attention key biases get a zero gradient in exact arithmetic: adding b to every key adds q.b to
// each row of scores, which the softmax ignores. What reaches AdamW for them is rounding noise, which
// it normalises to steps of about lr, so two runs whose gradient sums round differently anywhere (one
// fp32 ulp is enough) agree on them only to about lr x steps, whatever else agrees.
bool is_key_bias(const std::string& name) { return name.ends_with(".attention.self.key.bias"); }

enum class Params { kAll, kAllButKeyBiases, kKeyBiases };

std::vector<float> weights(const std::string& dir, Params which = Params::kAll) {
  const SafetensorsFile file(dir + "/model.safetensors");
  std::vector<float> all;
  for (const TensorInfo& tensor : file.tensors()) {
    if (which != Params::kAll && is_key_bias(tensor.name) != (which == Params::kKeyBiases)) continue;
    const std::vector<float> values = file.read_f32(tensor.name);
    all.insert(all.end(), values.begin(), values.end());
  }
  return all;
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
  return diff;
}

// Largest |a - b| over the largest |b|.
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

void check_same_metrics(const std::vector<Json>& a, const std::vector<Json>& b, double tolerance) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("record " << i << ": " << a[i].dump() << " vs " << b[i].dump());
    CHECK(a[i].find("step")->as_int() == b[i].find("step")->as_int());
    for (const char* key : {"loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "grad_norm", "lr", "eval_loss",
                            "eval_mlm_loss", "eval_mlm_acc", "eval_nsp_acc"}) {
      const Json* x = a[i].find(key);
      const Json* y = b[i].find(key);
      REQUIRE((x == nullptr) == (y == nullptr));
      if (x == nullptr) continue;
      INFO(key);
      CHECK(std::abs(x->as_number() - y->as_number()) <= tolerance * std::max(1.0, std::abs(y->as_number())));
    }
  }
}

// The final weights of two 10-step runs of settings() whose gradient sums were added in different
// orders: within the CPU ranks' bound, the key biases within lr x steps (see is_key_bias).
void check_same_weights(const std::string& x, const std::string& y) {
  CHECK(relative_difference(weights(x, Params::kAllButKeyBiases), weights(y, Params::kAllButKeyBiases)) < 1e-5);
  // Each run moves a key bias by at most about lr per step (lr 3e-3, 10 steps).
  const std::vector<float> x_key_biases = weights(x, Params::kKeyBiases);
  REQUIRE(!x_key_biases.empty());
  CHECK(max_abs_difference(x_key_biases, weights(y, Params::kKeyBiases)) < 2 * 10 * 3e-3);
}

// Dropout on (the default 0.1), clipping, warmup + decay, evaluation, checkpoints at 5 and 10.
// A 2-rank run (batch 4, accumulation 1) in test_dir()/ranks against a 1-rank one (accumulation 2)
// in test_dir()/single, 10 steps each: the same metrics, the same weights (check_same_weights), and
// the 2-rank checkpoint in single-rank units.
void check_same_run(const std::string& ranks, const std::string& single) {
  const auto a = read_metrics(test_dir() + "/" + ranks + "/metrics.jsonl");
  const auto b = read_metrics(test_dir() + "/" + single + "/metrics.jsonl");
  REQUIRE(a.size() == 6);  // steps 2, 4, 5 (eval), 6, 8, 10 (eval)
  check_same_metrics(a, b, 1e-5);
  check_same_weights(test_dir() + "/" + ranks, test_dir() + "/" + single);
  const TrainerState state = TrainerState::load(test_dir() + "/" + ranks + "/checkpoint-10/trainer_state.json");
  CHECK(state.world_size == 2);
  CHECK(state.micro_step == 20);  // single-rank units: 2 per step
}

std::string settings(int batch, int accumulation, int steps = 10) {
  return "max_steps = " + std::to_string(steps) + "\nper_device_train_batch_size = " + std::to_string(batch) +
         "\ngradient_accumulation_steps = " + std::to_string(accumulation) +
         "\nlearning_rate = 3e-3\nwarmup_steps = 2\nweight_decay = 0.01\nmax_grad_norm = 0.5\nlogging_steps = 2\n"
         "eval_steps = 5\nsave_steps = 5\nper_device_eval_batch_size = 8\n";
}

}  // namespace

TEST_CASE("2 MPI ranks train the model 1 rank trains with twice the accumulation", "[mpi]") {
  make_tiny_data();
  const std::string ranks = write_config("ranks", "ranks", settings(4, 1));
  const std::string single = write_config("single", "single", settings(4, 2));
  const RunResult two = mpirun(2, {"--config", ranks}, "ranks");
  INFO(two.out << two.err);
  REQUIRE(two.code == 0);
  REQUIRE(train({"--config", single}).code == 0);

  // Rank 0 alone speaks: one run table, one summary, and it names the ranks.
  CHECK(count(two.out, "bert_train: ") == 1);
  CHECK(count(two.out, "done: 10 steps") == 1);
  CHECK(two.out.find("4 sequences x 1 accumulation x 2 ranks = 8 sequences/step") != std::string::npos);
  CHECK(two.out.find("gradients summed by MPI (") != std::string::npos);
  {  // none but, where mpirun binds each rank to one core, that the fixture's 2 threads share it
    std::istringstream lines(two.err);
    for (std::string line; std::getline(lines, line);)
      if (line.find("more threads than cores") == std::string::npos) CHECK(line.find("warning") == std::string::npos);
  }

  check_same_run("ranks", "single");

  // The 2-rank checkpoint at step 5 resumes on 1 rank with accumulation 2 and ends as the 1-rank run.
  const std::string resumed = write_config("resumed", "resumed", settings(4, 2));
  const RunResult cross = train({"--config", resumed, "--resume", test_dir() + "/ranks/checkpoint-5"});
  INFO(cross.err);
  REQUIRE(cross.code == 0);
  CHECK(cross.err.find("world_size (ranks) 2 -> 1") != std::string::npos);
  check_same_weights(test_dir() + "/resumed", test_dir() + "/single");
}

TEST_CASE("SIGUSR1 to mpirun stops every rank after the same step and the checkpoint resumes bit for bit", "[mpi]") {
  make_tiny_data();
  // Long enough to be signalled midway (a step takes about a millisecond); no checkpoint but the stop's.
  const std::string run =
      "max_steps = 1000\nper_device_train_batch_size = 4\nlearning_rate = 1e-3\nlogging_steps = 1\n"
      "save_steps = 5000\neval_steps = 5000\n";
  const std::string straight = write_config("straight", "straight", run);
  const std::string stopped = write_config("stopped", "stopped", run);
  REQUIRE(mpirun(2, {"--config", straight}, "straight").code == 0);

  const Process p = spawn(mpirun_args(2, {"--config", stopped}), test_dir() + "/stopped");
  const std::string metrics = test_dir() + "/stopped/metrics.jsonl";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  const auto records = [&] {
    if (!file_exists(metrics)) return 0L;
    const std::string text = read_file(metrics);
    return static_cast<long>(std::count(text.begin(), text.end(), '\n'));
  };
  while (std::chrono::steady_clock::now() < deadline && records() < 3)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  REQUIRE(::kill(p.pid, SIGUSR1) == 0);
  const RunResult first = finish(p);
  INFO(first.out << first.err);
  REQUIRE(first.code == 128 + SIGUSR1);  // every rank saved and returned it: mpirun passes it on
  REQUIRE(count(first.out, "stopped at step ") == 1);
  const auto checkpoints = list_checkpoints(test_dir() + "/stopped");
  REQUIRE(checkpoints.size() == 1);
  const int64_t step = checkpoints[0].step;
  CHECK(step < 1000);
  CHECK(first.out.find("stopped at step " + std::to_string(step) + " of 1000; resume with:\n  mpirun -np 2 " +
                       std::string(BERT_TRAIN) + " --config ") != std::string::npos);
  CHECK(count(first.err, "stop requested") >= 1);  // each rank's handler says so; rank 0's is not discarded

  const RunResult second = mpirun(2, {"--config", stopped, "--resume"}, "resumed");
  INFO(second.out << second.err);
  REQUIRE(second.code == 0);
  CHECK(weights(test_dir() + "/stopped") == weights(test_dir() + "/straight"));
  const auto a = read_metrics(test_dir() + "/straight/metrics.jsonl");
  const auto b = read_metrics(metrics);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* key : {"step", "loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "grad_norm", "lr"}) {
      INFO("record " << i << " " << key);
      CHECK(a[i].find(key)->dump() == b[i].find(key)->dump());
    }
}

TEST_CASE("a re-save cut short under mpirun is recovered by rank 0 before any rank picks the checkpoint", "[mpi]") {
  make_tiny_data();
  const std::string first =
      write_config("recovered", "recovered", "max_steps = 8\nper_device_train_batch_size = 4\nsave_steps = 4\n");
  REQUIRE(mpirun(2, {"--config", first}, "recovered_first").code == 0);
  const std::string out = test_dir() + "/recovered";
  REQUIRE(latest_checkpoint(out)->step == 8);
  // A crash between a re-save's two renames left only checkpoint-8.old-PID (999999999: a process that
  // is gone), beside many dead saves' temp dirs, whose removal makes rank 0's recovery take a while: a
  // rank that listed the checkpoints without waiting for it would take checkpoint-4 and disagree with
  // rank 0 on the weights.
  fs::rename(out + "/checkpoint-8", out + "/checkpoint-8.old-999999999");
  for (int k = 0; k < 400; ++k) {
    const std::string tmp = out + "/.checkpoint-" + std::to_string(100 + k) + ".tmp-999999999";
    make_directories(tmp);
    for (int f = 0; f < 20; ++f) std::ofstream(tmp + "/part" + std::to_string(f)) << "x";
  }
  const std::string second =
      write_config("recovered_more", "recovered", "max_steps = 12\nper_device_train_batch_size = 4\nsave_steps = 4\n");
  const RunResult resumed = mpirun(2, {"--config", second, "--resume"}, "recovered_second");
  INFO(resumed.out << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK(count(resumed.out, "resuming from " + out + "/checkpoint-8\n") == 1);
  CHECK(latest_checkpoint(out)->step == 12);
  for (const auto& entry : fs::directory_iterator(out)) {
    INFO(entry.path());
    CHECK(entry.path().filename().string().find(".tmp-") == std::string::npos);
  }
}

TEST_CASE("ranks left unbound on one host split its cores between them (threads = 0)", "[mpi]") {
  make_tiny_data();
  // The fixture's config without its `threads = 2`.
  std::string text = read_file(write_config("run", "run", "max_steps = 2\nper_device_train_batch_size = 4\n"));
  text.erase(text.find("threads = 2\n"), 12);
  const std::string config = test_dir() + "/unbound.toml";
  write_file_atomic(config, text);
  cpu_set_t cpus;
  REQUIRE(::sched_getaffinity(0, sizeof cpus, &cpus) == 0);
  const int cores = CPU_COUNT(&cpus);  // what the unbound ranks inherit
  std::vector<std::string> args = mpirun_args(2, {"--config", config});
  args.insert(args.begin() + 1, {"--bind-to", "none"});
  const RunResult run = finish(spawn(args, test_dir() + "/unbound"));
  INFO(run.out << run.err);
  REQUIRE(run.code == 0);
  const int threads = std::max(1, cores / 2);
  CHECK(run.out.find("cpu, " + std::to_string(threads) + " thread") != std::string::npos);
  CHECK(run.out.find("2 ranks share this rank's " + std::to_string(cores) + " cores") != std::string::npos);
}

TEST_CASE("under mpirun a failure before training is one line from rank 0 and every rank exits 1", "[mpi]") {
  make_tiny_data();
  const std::string bad = write_config("bad", "bad", "max_steps = 3\nper_device_train_batch_size = 0\n");
  const RunResult config = mpirun(2, {"--config", bad}, "bad");
  CHECK(config.code != 0);
  CHECK(count(config.err, "error: ") == 1);
  CHECK(config.err.find("per_device_train_batch_size") != std::string::npos);
  CHECK(config.out.empty());

  const std::string ok = write_config("ok", "ok", "max_steps = 3\nper_device_train_batch_size = 4\n");
  const RunResult dump = mpirun(2, {"--config", ok, "--dump-batches", test_dir() + "/dump"}, "dump");
  CHECK(dump.code != 0);
  CHECK(count(dump.err, "error: ") == 1);
  CHECK(dump.err.find("--dump-batches records one process's batches; run it without mpirun") != std::string::npos);

  if (!cuda_device_info().available) {  // (with GPUs the ranks would train)
    const std::string cuda =
        write_config("cuda", "cuda", "max_steps = 3\nper_device_train_batch_size = 4\ndevice = \"cuda\"\n");
    const RunResult gpu = mpirun(2, {"--config", cuda}, "cuda");
    CHECK(gpu.code != 0);
    CHECK(count(gpu.err, "error: ") == 1);
    CHECK(gpu.err.find("device = \"cuda\": ") != std::string::npos);
  }
  CHECK_FALSE(file_exists(test_dir() + "/ok/metrics.jsonl"));

  // The arguments: the help once, an error in them once (every rank parses them, before MPI starts).
  const RunResult help = mpirun(2, {"--help"}, "help");
  CHECK(help.code == 0);
  CHECK(count(help.out, "bert_train plot OUTPUT_DIR/metrics.jsonl") == 1);
  const RunResult usage = mpirun(2, {"--config", ok, "stray"}, "usage");
  CHECK(usage.code != 0);
  CHECK(count(usage.err, "error: ") == 1);
  CHECK(usage.err.find("unexpected argument 'stray'") != std::string::npos);
}

TEST_CASE("a rank that freezes mid-run ends the job after ddp_timeout instead of hanging it", "[mpi]") {
  make_tiny_data();
  // A first run leaves checkpoint-3; the frozen run resumes from it and saves nothing (a checkpoint
  // written while the other rank waits under a 2 s ddp_timeout could end the job first).
  const std::string first = write_config("frozen_first", "frozen",
                                         "max_steps = 3\nper_device_train_batch_size = 4\nlogging_steps = 1\n"
                                         "save_steps = 3\neval_steps = 2000000\n");
  REQUIRE(mpirun(2, {"--config", first}, "frozen_first").code == 0);
  REQUIRE(file_exists(test_dir() + "/frozen/checkpoint-3/trainer_state.json"));
  const std::string config = write_config("frozen", "frozen",
                                          "max_steps = 1000000\nper_device_train_batch_size = 4\nlogging_steps = 1\n"
                                          "save_steps = 2000000\neval_steps = 2000000\nddp_timeout = 2\n");
  // Rank 1 writes its pid and becomes bert_train (exec keeps the pid), for the test to freeze it.
  const std::string pid_file = test_dir() + "/rank1.pid";
  const std::string script = "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then echo $$ > " + pid_file + "; fi; exec " +
                             std::string(BERT_TRAIN) + " --config " + config + " --resume";
  const Process p = spawn(mpirun_args(2, {"-c", script}, "/bin/sh"), test_dir() + "/frozen");
  const std::string metrics = test_dir() + "/frozen/metrics.jsonl";
  const auto records = [&] {
    if (!file_exists(metrics)) return 0L;
    const std::string text = read_file(metrics);
    return static_cast<long>(std::count(text.begin(), text.end(), '\n'));
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline && records() < 6)  // both ranks are training again
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  REQUIRE(records() >= 6);
  const pid_t rank1 = static_cast<pid_t>(std::stol(read_file(pid_file)));
  REQUIRE(::kill(rank1, SIGSTOP) == 0);  // alive, but never at its next collective
  const auto frozen = std::chrono::steady_clock::now();
  int status = 0;
  pid_t ended = 0;
  while ((ended = ::waitpid(p.pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() - frozen < std::chrono::seconds(90))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - frozen).count();
  if (ended == 0) {  // the job hangs: end it, then fail below
    ::kill(rank1, SIGKILL);
    ended = ::waitpid(p.pid, &status, 0);
  }
  REQUIRE(ended == p.pid);
  const RunResult run = result(p, status);
  // MPI_Abort has mpirun end every rank (a zombie has ended: orphans wait for init to reap them).
  bool left = true;
  for (int i = 0; i < 100 && left; ++i) {
    std::ifstream stat("/proc/" + std::to_string(rank1) + "/stat");
    std::string text;
    std::getline(stat, text);
    const size_t name_end = text.rfind(") ");
    left = name_end != std::string::npos && text.compare(name_end + 2, 1, "Z") != 0;
    if (left) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (left) ::kill(rank1, SIGKILL);
  INFO(run.out << run.err);
  CHECK_FALSE(left);
  CHECK(run.code != 0);
  CHECK(count(run.err, "error: rank 0 of 2: MPI_") == 1);
  CHECK(run.err.find(" has waited 2 s (ddp_timeout) for the other ranks: one of them stopped, froze or cannot be "
                     "reached; ending the job; latest checkpoint: step 3 (mpirun -np 2 " +
                     std::string(BERT_TRAIN) + " --config " + config + " --resume " + test_dir() +
                     "/frozen/checkpoint-3 goes on from it)\n") !=
        std::string::npos);  // rank 0's line: the checkpoint it resumed from, and the command
  CHECK(waited < 90);
}

#if defined(BERT_TRAIN_EMULATED)

// device = "cuda" as several ranks, one GPU each, on the CUDA emulation with NCCL emulated over MPI
// (bert_train_emulated: tests/emulated/emulated_nccl.cpp). BERT_EMULATED_DEVICE_COUNT sets how many
// GPUs each rank sees.
TEST_CASE("2 ranks on 2 GPUs train the model 1 GPU trains with twice the accumulation, NCCL emulated",
          "[mpi][emulated]") {
  make_tiny_data();
  ::setenv("BERT_EMULATED_DEVICE_COUNT", "2", 1);
  const std::string gpu = "device = \"cuda\"\n";
  // One bucket per layer: the sums are issued as the backward pass finishes each (every rank the same).
  const std::string ranks =
      write_config("gpu_ranks", "gpu_ranks", settings(4, 1) + gpu + "ddp_bucket_cap_mb = 0\n", kCudaTinyModel);
  const std::string single = write_config("gpu_single", "gpu_single", settings(4, 2) + gpu, kCudaTinyModel);
  const RunResult two = mpirun(2, {"--config", ranks}, "gpu_ranks", BERT_TRAIN_EMULATED);
  INFO(two.out << two.err);
  REQUIRE(two.code == 0);
  const RunResult one = finish(spawn({BERT_TRAIN_EMULATED, "--config", single}, test_dir() + "/gpu_single"));
  INFO(one.out << one.err);
  REQUIRE(one.code == 0);

  CHECK(count(two.out, "bert_train: ") == 1);
  CHECK(two.out.find("4 sequences x 1 accumulation x 2 ranks = 8 sequences/step") != std::string::npos);
  CHECK(two.out.find("), one on each of 2 ranks\n") != std::string::npos);
  CHECK(count(two.out, "gradients summed over 2 GPUs by NCCL ") == 1);
  CHECK(two.out.find(", in buckets of one layer during the backward pass\n") != std::string::npos);
  // The warm-up sum before the first step (NCCL's buffers), and the memory in use after it.
  CHECK(count(two.out, "first gradient sum over the ranks: ") == 1);
  CHECK(two.out.find(" in use, the model's arenas ") != std::string::npos);
  CHECK(two.out.find("(emulated)") != std::string::npos);
  CHECK(one.out.find("NCCL") == std::string::npos);

  // The same fp32 gradient sums up to rounding: most kernels add a micro-batch's gradient to the
  // accumulated one in one addition, as the all-reduce adds the ranks', but the embedding tables'
  // scatter adds its partial sums one by one, so the 1-GPU run's accumulation can round differently
  // there. How far apart the runs end depends on OpenBLAS's kernels (the emulated GEMMs): on a CPU
  // with AVX-512 it picks its SkylakeX ones, and the embeddings are one fp32 ulp apart at step 5 and
  // the key biases 3.9e-5 apart at step 10 (the rest 2.3e-6 relative); with OPENBLAS_CORETYPE=Haswell
  // or Zen on the same host, 1.5e-8 relative and the key biases equal. Thread count is not it (1 or
  // 2: the same). Within the CPU ranks' bound either way.
  check_same_run("gpu_ranks", "gpu_single");

  // The 2-GPU checkpoint at step 5 resumes on the CPU (accumulation 2) and ends as the 1-GPU run does.
  const std::string resumed = write_config("gpu_to_cpu", "gpu_to_cpu", settings(4, 2), kCudaTinyModel);
  const RunResult cross = train({"--config", resumed, "--resume", test_dir() + "/gpu_ranks/checkpoint-5"});
  INFO(cross.err);
  REQUIRE(cross.code == 0);
  CHECK(cross.err.find("world_size (ranks) 2 -> 1") != std::string::npos);
  CHECK(relative_difference(weights(test_dir() + "/gpu_to_cpu"), weights(test_dir() + "/gpu_single")) < 2e-2);
  ::unsetenv("BERT_EMULATED_DEVICE_COUNT");
}

// 2 ranks of bert_train_emulated on 2 GPUs (ddp_timeout `timeout` s) with the emulated NCCL failure
// `variable` = `value` (tests/emulated/emulated_nccl.cpp) from all-reduce number `from` on, in
// test_dir()/name. The tiny model's gradients are one bucket: all-reduce 0 is the warm-up before the
// first step, 1 the first step's.
RunResult run_with_nccl_failure(const std::string& name, const char* variable, const char* value,
                                const char* from = "1", int timeout = 2) {
  make_tiny_data();
  ::setenv("BERT_EMULATED_DEVICE_COUNT", "2", 1);
  ::setenv(variable, value, 1);
  ::setenv("BERT_EMULATED_NCCL_FAIL_FROM", from, 1);
  const std::string config =
      write_config(name, name, settings(4, 1) + "device = \"cuda\"\nddp_timeout = " + std::to_string(timeout) + "\n",
                   kCudaTinyModel);
  RunResult run = mpirun(2, {"--config", config}, name, BERT_TRAIN_EMULATED);
  ::unsetenv(variable);
  ::unsetenv("BERT_EMULATED_NCCL_FAIL_FROM");
  ::unsetenv("BERT_EMULATED_DEVICE_COUNT");
  return run;
}

TEST_CASE("a rank whose NCCL communicator fails to start ends the job with its reason, before training",
          "[mpi][emulated]") {
  // Rank 1's fails; rank 0 waits inside its own.
  const RunResult run = run_with_nccl_failure("nccl_init", "BERT_EMULATED_NCCL_INIT_FAILS", "1");
  INFO(run.out << run.err);
  CHECK(run.code != 0);
  CHECK(count(run.err,
              "error: rank 1 of 2: NCCL: ncclCommInitRank: remote process exited or there was a network "
              "error") == 1);
  CHECK(count(run.err, "error: ") == 1);
  CHECK_FALSE(file_exists(test_dir() + "/nccl_init/metrics.jsonl"));
}

TEST_CASE("a rank whose NCCL cannot set up its buffers ends the job before training, with the memory in use",
          "[mpi][emulated]") {
  // Rank 1's first all-reduce fails as NCCL's does when a cudaMalloc for its buffers fails: in the
  // warm-up sum before the first step; rank 0, inside its own sum, is ended with the job.
  const RunResult run = run_with_nccl_failure("nccl_memory", "BERT_EMULATED_NCCL_ALLREDUCE_FAILS", "1", "0");
  INFO(run.out << run.err);
  CHECK(run.code != 0);
  CHECK(count(run.err,
              "error: rank 1 of 2: the first sum of the gradients over the ranks (before training: NCCL sets up "
              "its buffers in it) failed: NCCL: ncclAllReduce: unhandled cuda error (emulated); device memory: ") == 1);
  CHECK(run.err.find(" in use, the model's arenas ") != std::string::npos);
  CHECK(run.err.find("; if NCCL ran out of device memory, lower per_device_train_batch_size or shrink NCCL's "
                     "buffers (NCCL_BUFFSIZE, NCCL_NVLS_ENABLE=0)\n") != std::string::npos);
  CHECK(count(run.err, "error: ") == 1);
  CHECK_FALSE(file_exists(test_dir() + "/nccl_memory/metrics.jsonl"));
}

TEST_CASE("ranks whose GPUs wait past ddp_timeout, or whose NCCL reports an error, end the job with the reason",
          "[mpi][emulated]") {
  // No sum finishes (the GPUs' network failed; the hosts still talk): each rank waits for its GPU 2 s.
  // Every rank times out alike; the first to end the job may stop the other before it says so.
  const auto start = std::chrono::steady_clock::now();
  const RunResult hung = run_with_nccl_failure("nccl_hang", "BERT_EMULATED_NCCL_STALLS", "1");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  {
    INFO(hung.out << hung.err);
    CHECK(hung.code != 0);
    const size_t errors = count(hung.err, "error: ");
    CHECK(errors >= 1);
    CHECK(count(hung.err,
                " of 2: this rank's GPU is still busy after 2 s (ddp_timeout): its gradient "
                "sums wait for a rank that stopped or cannot be reached") == errors);
    CHECK(seconds >= 2.0);
    CHECK_FALSE(file_exists(test_dir() + "/nccl_hang/checkpoint-5"));
  }

  // Rank 0's NCCL reports an error once it has issued a sum: rank 0 stops at its next wait for the GPU.
  const RunResult failed = run_with_nccl_failure("nccl_async", "BERT_EMULATED_NCCL_ASYNC_ERROR", "0");
  INFO(failed.out << failed.err);
  CHECK(failed.code != 0);
  CHECK(count(failed.err,
              "error: rank 0 of 2: NCCL: remote process exited or there was a network error (emulated) "
              "(reported while this rank waited for its GPU") == 1);
  CHECK(count(failed.err, "error: ") == 1);
}

TEST_CASE("GPUs whose first gradient sum (the warm-up before training) never finishes end the job with the reason",
          "[mpi][emulated]") {
  const RunResult hung = run_with_nccl_failure("nccl_warm_up_hang", "BERT_EMULATED_NCCL_STALLS", "1", "0");
  INFO(hung.out << hung.err);
  CHECK(hung.code != 0);
  const size_t errors = count(hung.err, "error: ");
  CHECK(errors >= 1);
  CHECK(count(hung.err,
              " of 2: the first sum of the gradients over the ranks (before training: NCCL sets up its buffers in "
              "it) failed: this rank's GPU is still busy after 2 s (ddp_timeout): its gradient sums wait for a rank "
              "that stopped or cannot be reached") == errors);
  CHECK_FALSE(file_exists(test_dir() + "/nccl_warm_up_hang/metrics.jsonl"));
}

TEST_CASE("a rank other than rank 0 that fails mid-run names the latest checkpoint, saved or resumed from",
          "[mpi][emulated]") {
  // Rank 1's NCCL reports an error in step 6's sum (the warm-up is sum 0), after checkpoint-5, which
  // rank 0 wrote: rank 1 names it, and the command that goes on from it. A ddp_timeout of 60 s: rank 1
  // waits for rank 0's write of the checkpoint, which a busy machine may make slow.
  const RunResult saved = run_with_nccl_failure("nccl_rank1", "BERT_EMULATED_NCCL_ASYNC_ERROR", "1", "6", 60);
  const std::string config = test_dir() + "/nccl_rank1.toml";
  const std::string note = "; latest checkpoint: step 5 (mpirun -np 2 " + std::string(BERT_TRAIN_EMULATED) +
                           " --config " + config + " --resume " + test_dir() +
                           "/nccl_rank1/checkpoint-5 goes on from it)\n";
  {
    INFO(saved.out << saved.err);
    CHECK(saved.code != 0);
    CHECK(count(saved.err, "error: ") == 1);
    CHECK(count(saved.err,
                "error: rank 1 of 2: NCCL: remote process exited or there was a network error "
                "(emulated) (reported while this rank waited for its GPU") == 1);
    CHECK(count(saved.err, note) == 1);
  }
  // That command (the run's config, --resume checkpoint-5) with the error in its first step: rank 1
  // names the checkpoint it resumed from.
  ::setenv("BERT_EMULATED_DEVICE_COUNT", "2", 1);
  ::setenv("BERT_EMULATED_NCCL_ASYNC_ERROR", "1", 1);
  ::setenv("BERT_EMULATED_NCCL_FAIL_FROM", "1", 1);
  const RunResult resumed = mpirun(2, {"--config", config, "--resume", test_dir() + "/nccl_rank1/checkpoint-5"},
                                   "nccl_rank1_resumed", BERT_TRAIN_EMULATED);
  ::unsetenv("BERT_EMULATED_NCCL_FAIL_FROM");
  ::unsetenv("BERT_EMULATED_NCCL_ASYNC_ERROR");
  ::unsetenv("BERT_EMULATED_DEVICE_COUNT");
  INFO(resumed.out << resumed.err);
  CHECK(resumed.code != 0);
  CHECK(count(resumed.err, "error: rank 1 of 2: NCCL: ") == 1);
  CHECK(count(resumed.err, note) == 1);
}

TEST_CASE("ranks that would share a GPU are refused before training, in one line", "[mpi][emulated]") {
  make_tiny_data();
  const std::string config =
      write_config("gpu_shared", "gpu_shared", "max_steps = 3\nper_device_train_batch_size = 4\ndevice = \"cuda\"\n",
                   kCudaTinyModel);
  // Each rank sees one GPU, the same one.
  ::setenv("BERT_EMULATED_DEVICE_COUNT", "1", 1);
  const RunResult shared = mpirun(2, {"--config", config}, "gpu_shared", BERT_TRAIN_EMULATED);
  CHECK(shared.code != 0);
  CHECK(count(shared.err, "error: ") == 1);
  CHECK(shared.err.find("ranks 0 and 1 would share one GPU") != std::string::npos);
  CHECK(shared.out.find("NCCL") == std::string::npos);
  CHECK_FALSE(file_exists(test_dir() + "/gpu_shared/metrics.jsonl"));
  // Three ranks on a host with two.
  ::setenv("BERT_EMULATED_DEVICE_COUNT", "2", 1);
  const RunResult three = mpirun(3, {"--config", config}, "gpu_three", BERT_TRAIN_EMULATED);
  CHECK(three.code != 0);
  CHECK(count(three.err, "error: ") == 1);
  CHECK(three.err.find("3 ranks run on this host, which has 2 visible GPUs") != std::string::npos);
  ::unsetenv("BERT_EMULATED_DEVICE_COUNT");
}

#endif

}  // namespace bert::test
