// The CPU training loop behind `bert_train` (see engine/trainer.h for the contract and the
// checkpoint layout). Order of one optimizer step, as in HF Trainer:
//   zero grads -> k x (next batch, dropout stream = micro step, forward_backward with 1/k)
//   -> grad norm -> clip coefficient -> AdamW at lr(step) -> step += 1 -> log / eval / save.
#include "engine/trainer.h"

#include <fcntl.h>
#include <omp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <ostream>
#include <span>
#include <stdexcept>
#include <type_traits>

#include "common/args.h"
#include "common/error.h"
#include "common/file.h"
#include "common/hash.h"
#include "common/progress.h"
#include "common/utf8.h"
#include "data/loader.h"
#include "data/shard.h"
#include "engine/bert.h"
#include "engine/checkpoint_dir.h"
#include "engine/communicator.h"
#include "engine/metrics.h"
#include "engine/safetensors.h"
#include "engine/schedule.h"
#include "engine/toml.h"
#include "kernels/cpu/ops_cpu.h"
#include "tokenizer/tokenizer.h"

#if defined(BERT_TRAINER_CUDA)
#include "engine/bert_cuda.h"
#if defined(BERT_TRAINER_NCCL)
#include "engine/communicator_nccl.h"
#endif
#include "kernels/device.h"
#endif

// OpenBLAS's own thread pool size (weak: another BLAS simply has no such call).
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace bert {

namespace fs = std::filesystem;

namespace {

// The globals: how many stop signals arrived and the first one's number. Written by the signal handler,
// read between steps.
volatile std::sig_atomic_t g_stop_signals = 0;
volatile std::sig_atomic_t g_stop_signal_number = 0;

constexpr size_t kMaxEvalBatches = 200;  // bounds evaluation time; always the same batches
constexpr const char* kStateFormat = "bertforge-trainer-state";
constexpr int kStateVersion = 1;

void write_stderr(const char* message) {
  // write() is async-signal-safe; a short write of a diagnostic is acceptable.
  const ssize_t ignored = ::write(2, message, std::strlen(message));
  (void)ignored;
}

void handle_stop_signal(int signal_number) {
  if (g_stop_signals > 0) {
    write_stderr("\nbert_train: second interrupt: exiting now without saving\n");
    ::_exit(128 + signal_number);
  }
  g_stop_signal_number = signal_number;
  // A hangup usually takes the reader of our output with it (`bert_train ... | tee log` over ssh): a
  // write to that pipe must not kill the run before it has saved. (sigaction is async-signal-safe.)
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ::sigaction(SIGPIPE, &ignore, nullptr);
  request_training_stop();
}

// Installs the SIGINT/SIGTERM/SIGUSR1/SIGHUP handler for the duration of a run, restoring the previous
// ones after. SIGUSR1 is how a run under mpirun is stopped cleanly: mpirun forwards it to every rank,
// while its own Ctrl-C (SIGINT) handling kills the ranks a second after sending them SIGTERM. SIGHUP
// (the terminal or ssh session went away) saves too, unless it was ignored (nohup): then it stays so.
class StopSignalGuard {
 public:
  StopSignalGuard() {
    g_stop_signals = 0;
    g_stop_signal_number = 0;
    struct sigaction action {};
    action.sa_handler = handle_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &action, &previous_int_);
    ::sigaction(SIGTERM, &action, &previous_term_);
    ::sigaction(SIGUSR1, &action, &previous_usr1_);
    ::sigaction(SIGHUP, nullptr, &previous_hup_);
    if (previous_hup_.sa_handler != SIG_IGN) ::sigaction(SIGHUP, &action, nullptr);
    ::sigaction(SIGPIPE, nullptr, &previous_pipe_);  // the handler ignores SIGPIPE once a stop is asked
  }
  ~StopSignalGuard() {
    ::sigaction(SIGINT, &previous_int_, nullptr);
    ::sigaction(SIGTERM, &previous_term_, nullptr);
    ::sigaction(SIGUSR1, &previous_usr1_, nullptr);
    ::sigaction(SIGHUP, &previous_hup_, nullptr);
    ::sigaction(SIGPIPE, &previous_pipe_, nullptr);
    g_stop_signals = 0;
    g_stop_signal_number = 0;
  }
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
  struct sigaction previous_usr1_ {};
  struct sigaction previous_hup_ {};
  struct sigaction previous_pipe_ {};
};

// ---- small formatting helpers -------------------------------------------------------------------

std::string printf_string(const char* fmt, auto... values) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, values...);
  return buf;
}

// Appends "key was -> now" to a comma-separated list of differences when the two differ.
void note_difference(std::string& list, const char* key, auto was, auto now) {
  if (was == now) return;
  const auto text = [](auto value) {
    if constexpr (std::is_same_v<decltype(value), bool>)
      return std::string(value ? "true" : "false");
    else
      return std::to_string(value);
  };
  list += std::string(list.empty() ? "" : ", ") + key + " " + text(was) + " -> " + text(now);
}

// The keys whose values differ between two run configs' texts: ": [training] learning_rate 0.0001 ->
// 5e-05, [data] shuffle (removed)"; empty when either does not parse or only comments and layout
// differ.
std::string config_key_changes(std::string_view before, std::string_view after) {
  std::map<std::string, std::string> a, b;
  try {
    for (auto [text, values] : {std::pair{before, &a}, std::pair{after, &b}})
      for (const TomlTable& table : parse_toml(text, "run_config.toml").tables)
        for (const TomlEntry& entry : table.entries)
          (*values)["[" + table.name + "] " + entry.key] = entry.value.to_string();
  } catch (const Error&) {
    return {};
  }
  std::vector<std::string> changes;
  for (const auto& [key, value] : a) {
    const auto it = b.find(key);
    if (it == b.end())
      changes.push_back(key + " " + value + " (now unset)");
    else if (it->second != value)
      changes.push_back(key + " " + value + " -> " + it->second);
  }
  for (const auto& [key, value] : b)
    if (!a.count(key)) changes.push_back(key + " = " + value + " (newly set)");
  std::string list;
  for (size_t i = 0; i < changes.size() && i < 8; ++i) list += (i ? ", " : ": ") + changes[i];
  if (changes.size() > 8) list += ", and " + std::to_string(changes.size() - 8) + " more";
  return list;
}

// 1234567 -> "1,234,567".
std::string with_commas(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return value < 0 ? "-" + out : out;
}

std::string human_flops(double flops) {
  const char* units[] = {"FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP"};
  int unit = 0;
  while (flops >= 1000 && unit < 5) {
    flops /= 1000;
    ++unit;
  }
  return printf_string("%.1f %s", flops, units[unit]);
}

std::string human_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return printf_string("%llds", static_cast<long long>(s));
  if (s < 3600) return printf_string("%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return printf_string("%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
}

std::string shell_quote(const std::string& word) {
  const bool plain = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("-_./=:,+@%", c) != nullptr;
  });
  if (plain) return word;
  std::string out = "'";
  for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Doubles that must round-trip exactly through JSON (which we print with 9 digits) go as hex floats.
std::string exact_double(double value) { return printf_string("%a", value); }

// ---- trainer_state.json field access ---------------------------------------------------------------

struct StateReader {
  const Json& json;
  const std::string& path;

  const Json& at(const Json& object, std::string_view key) const {
    const Json* value = object.find(key);
    if (!value) throw Error(path + ": missing '" + std::string(key) + "' (not a bert_train trainer_state.json?)");
    return *value;
  }
  int64_t integer(const Json& object, std::string_view key) const {
    const Json& value = at(object, key);
    if (!value.is_number() || value.as_number() != std::floor(value.as_number()) ||
        !(std::fabs(value.as_number()) < 9.2e18))
      throw Error(path + ": '" + std::string(key) + "' must be a 64-bit integer, got " + value.dump());
    return value.as_int();
  }
  // An integer in [lo, hi]; `name` as the message shows it ("data_cursor.epoch").
  int64_t bounded(const Json& object, std::string_view key, int64_t lo, int64_t hi, std::string_view name) const {
    const int64_t v = integer(object, key);
    if (v < lo || v > hi)
      throw Error(path + ": '" + std::string(name) + "' is " + std::to_string(v) + ", not between " +
                  std::to_string(lo) + " and " + std::to_string(hi));
    return v;
  }
  double number(const Json& object, std::string_view key) const {
    const Json& value = at(object, key);
    if (!value.is_number()) throw Error(path + ": '" + std::string(key) + "' must be a number, got " + value.dump());
    return value.as_number();
  }
  const std::string& string(const Json& object, std::string_view key) const {
    const Json& value = at(object, key);
    if (!value.is_string()) throw Error(path + ": '" + std::string(key) + "' must be a string, got " + value.dump());
    return value.as_string();
  }
  double exact(const Json& object, std::string_view key) const {
    const std::string& text = string(object, key);
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0') throw Error(path + ": '" + std::string(key) + "' is not a number: " + text);
    return value;
  }
  uint64_t unsigned_text(const Json& object, std::string_view key) const {
    const std::string& text = string(object, key);
    const std::optional<uint64_t> value = parse_decimal_u64(text);
    if (!value) throw Error(path + ": '" + std::string(key) + "' is not an unsigned integer: " + text);
    return *value;
  }
};

}  // namespace

// ---- public helpers -------------------------------------------------------------------------------

void request_training_stop() {
  g_stop_signals = 1;
  write_stderr("\nbert_train: stop requested: finishing this step, then saving a checkpoint (again to quit now)\n");
}

bool training_stop_requested() { return g_stop_signals > 0; }

int stopped_run_exit_code() { return 128 + (g_stop_signal_number > 0 ? g_stop_signal_number : SIGINT); }

namespace {
// The checkpoint-N.superseded directories a resume set aside in output_dir: starting over removes them too.
std::vector<fs::path> superseded_checkpoint_dirs(const std::string& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_directory() && is_superseded_checkpoint_name(entry.path().filename().string()))
      out.push_back(entry.path());
  return out;
}
}  // namespace

namespace {
// Whether output_dir holds anything but a run's lock file.
bool holds_files(const std::string& dir) {
  std::error_code ec;
  if (is_directory(dir))
    for (const auto& entry : fs::directory_iterator(dir, ec))
      if (entry.path().filename() != OutputDirLock::kFileName) return true;
  return false;
}
}  // namespace

int64_t total_train_steps(const TrainingConfig& training, size_t batches_per_epoch) {
  if (training.max_steps > 0) return training.max_steps;
  const double micro_batches = training.num_train_epochs * static_cast<double>(batches_per_epoch);
  const double steps = std::ceil(micro_batches / static_cast<double>(training.gradient_accumulation_steps));
  // Beyond 2^53 the count is not even exact; the int64 conversion of more would be undefined.
  if (!(steps <= 0x1p53))
    throw Error("[training] num_train_epochs = " + printf_string("%g", training.num_train_epochs) + " makes " +
                printf_string("%g", steps) + " steps, more than can be counted; set fewer epochs or max_steps");
  return std::max<int64_t>(static_cast<int64_t>(steps), 1);
}

namespace {
std::string g_program = "bert_train";  // as the user ran it: the commands we print are runnable as they are
}  // namespace

void set_program_path(const std::string& argv0) {
  if (!argv0.empty()) g_program = argv0;
}

const std::string& program_path() { return g_program; }

std::string resume_command(const std::string& config_path, const std::string& checkpoint_dir, int ranks) {
  return (ranks > 1 ? "mpirun -np " + std::to_string(ranks) + " " : std::string()) + shell_quote(g_program) +
         " --config " + shell_quote(config_path) + " --resume " + shell_quote(checkpoint_dir);
}

Json TrainerState::to_json() const {
  Json j = Json::object();
  j.set("format", kStateFormat);
  j.set("version", kStateVersion);
  j.set("global_step", global_step);
  j.set("optimizer_steps", optimizer_steps);
  j.set("micro_step", micro_step);
  j.set("epoch", epoch);
  Json cursor = Json::object();
  cursor.set("epoch", data_epoch);
  cursor.set("batch_index", data_index);
  j.set("data_cursor", cursor);
  j.set("total_steps", total_steps);
  j.set("warmup_steps", warmup_steps);
  j.set("seed", std::to_string(seed));  // a string: JSON numbers are doubles
  j.set("elapsed_s", elapsed_s);
  j.set("config_path", config_path);
  j.set("config_hash", config_hash);
  j.set("batches_per_epoch", batches_per_epoch);
  j.set("per_device_train_batch_size", per_device_train_batch_size);
  j.set("gradient_accumulation_steps", gradient_accumulation_steps);
  j.set("world_size", world_size);
  if (!train_data_fingerprint.empty()) j.set("train_data_fingerprint", train_data_fingerprint);
  j.set("model_config", model.to_hf_json());
  Json w = Json::object();
  w.set("micro_batches", window.micro_batches);
  w.set("mlm_batches", window.mlm_batches);
  w.set("loss_sum", exact_double(window.loss_sum));
  w.set("mlm_loss_sum", exact_double(window.mlm_loss_sum));
  w.set("nsp_loss_sum", exact_double(window.nsp_loss_sum));
  w.set("mlm_correct", window.mlm_correct);
  w.set("mlm_count", window.mlm_count);
  w.set("nsp_correct", window.nsp_correct);
  w.set("nsp_count", window.nsp_count);
  w.set("tokens", window.tokens);
  w.set("train_seconds", window.train_seconds);
  j.set("log_window", w);
  return j;
}

TrainerState TrainerState::from_json(const Json& json, const std::string& path) {
  if (!json.is_object()) throw Error(path + ": expected a JSON object (a bert_train trainer_state.json)");
  const StateReader r{json, path};
  if (r.string(json, "format") != kStateFormat)
    throw Error(path + ": 'format' is not \"" + std::string(kStateFormat) + "\"");
  if (r.integer(json, "version") != kStateVersion)
    throw Error(path + ": trainer state version " + std::to_string(r.integer(json, "version")) + " is not supported (" +
                std::to_string(kStateVersion) + " is)");
  TrainerState s;
  s.global_step = r.integer(json, "global_step");
  s.optimizer_steps = r.integer(json, "optimizer_steps");
  s.micro_step = r.integer(json, "micro_step");
  s.epoch = r.number(json, "epoch");
  // Ranges (a hand-edited or damaged file is refused here, naming it, not in the middle of a step).
  constexpr int64_t kMax = int64_t{1} << 53, kMaxInt = 2147483647;
  s.batches_per_epoch = r.bounded(json, "batches_per_epoch", 1, kMax, "batches_per_epoch");
  const Json& cursor = r.at(json, "data_cursor");
  s.data_epoch = static_cast<uint64_t>(r.bounded(cursor, "epoch", 0, kMax, "data_cursor.epoch"));
  s.data_index =
      static_cast<uint64_t>(r.bounded(cursor, "batch_index", 0, s.batches_per_epoch - 1, "data_cursor.batch_index"));
  s.total_steps = r.bounded(json, "total_steps", 1, kMax, "total_steps");
  s.warmup_steps = r.bounded(json, "warmup_steps", 0, kMax, "warmup_steps");
  s.seed = r.unsigned_text(json, "seed");
  s.elapsed_s = r.number(json, "elapsed_s");
  if (!(s.epoch >= 0) || !(s.elapsed_s >= 0) || !std::isfinite(s.epoch) || !std::isfinite(s.elapsed_s))
    throw Error(path + ": 'epoch' and 'elapsed_s' must be finite and not negative");
  s.config_path = r.string(json, "config_path");
  s.config_hash = r.string(json, "config_hash");
  s.per_device_train_batch_size =
      static_cast<int>(r.bounded(json, "per_device_train_batch_size", 1, kMaxInt, "per_device_train_batch_size"));
  s.gradient_accumulation_steps =
      static_cast<int>(r.bounded(json, "gradient_accumulation_steps", 1, kMaxInt, "gradient_accumulation_steps"));
  s.world_size =
      json.find("world_size") ? static_cast<int>(r.bounded(json, "world_size", 1, kMaxInt, "world_size")) : 1;
  if (json.find("train_data_fingerprint")) s.train_data_fingerprint = r.string(json, "train_data_fingerprint");
  s.model = BertConfig::from_hf_json(r.at(json, "model_config"), path + ": model_config");
  const Json& w = r.at(json, "log_window");
  s.window.micro_batches = r.integer(w, "micro_batches");
  // Absent in states written before it was kept: every micro-batch then counted.
  s.window.mlm_batches = w.find("mlm_batches") ? r.integer(w, "mlm_batches") : s.window.micro_batches;
  if (s.window.mlm_batches < 0 || s.window.mlm_batches > s.window.micro_batches)
    throw Error(path + ": log_window.mlm_batches " + std::to_string(s.window.mlm_batches) +
                " is not between 0 and micro_batches (" + std::to_string(s.window.micro_batches) + ")");
  s.window.loss_sum = r.exact(w, "loss_sum");
  s.window.mlm_loss_sum = r.exact(w, "mlm_loss_sum");
  s.window.nsp_loss_sum = r.exact(w, "nsp_loss_sum");
  s.window.mlm_correct = r.integer(w, "mlm_correct");
  s.window.mlm_count = r.integer(w, "mlm_count");
  s.window.nsp_correct = r.integer(w, "nsp_correct");
  s.window.nsp_count = r.integer(w, "nsp_count");
  s.window.tokens = r.integer(w, "tokens");
  s.window.train_seconds = r.number(w, "train_seconds");
  // Every step took a micro-batch at least (micro_step counts them over the ranks; dropout is drawn by it).
  if (s.global_step < 0 || s.optimizer_steps < 0 || s.optimizer_steps > s.global_step || s.micro_step < s.global_step)
    throw Error(path + ": inconsistent step counters (global_step " + std::to_string(s.global_step) +
                ", optimizer_steps " + std::to_string(s.optimizer_steps) + ", micro_step " +
                std::to_string(s.micro_step) + ")");
  return s;
}

TrainerState TrainerState::load(const std::string& path) {
  if (!file_exists(path)) throw Error(path + ": not found (is this a bert_train checkpoint directory?)");
  std::string text = read_file(path);
  // Written before JSON strings were kept UTF-8, a --config path in another locale's bytes sits in
  // config_path raw (used in messages only): read such a file with U+FFFD for those bytes.
  if (std::string repaired; !utf8_valid(text) && utf8_repair(text, repaired) > 0) text.swap(repaired);
  return from_json(Json::parse(text, path), path);
}

// ---- the trainer ------------------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// The window's sums and counts (not its time) added up over the ranks; counts travel as doubles, exact
// up to 2^53.
void sum_over_ranks(LogWindow& w, Communicator& comm) {
  std::array<double, 10> sums = {static_cast<double>(w.micro_batches),
                                 static_cast<double>(w.mlm_batches),
                                 w.loss_sum,
                                 w.mlm_loss_sum,
                                 w.nsp_loss_sum,
                                 static_cast<double>(w.mlm_correct),
                                 static_cast<double>(w.mlm_count),
                                 static_cast<double>(w.nsp_correct),
                                 static_cast<double>(w.nsp_count),
                                 static_cast<double>(w.tokens)};
  comm.allreduce_sum(sums);
  w.micro_batches = std::llround(sums[0]);
  w.mlm_batches = std::llround(sums[1]);
  w.loss_sum = sums[2];
  w.mlm_loss_sum = sums[3];
  w.nsp_loss_sum = sums[4];
  w.mlm_correct = std::llround(sums[5]);
  w.mlm_count = std::llround(sums[6]);
  w.nsp_correct = std::llround(sums[7]);
  w.nsp_count = std::llround(sums[8]);
  w.tokens = std::llround(sums[9]);
}

void merge_window(LogWindow& into, const LogWindow& w) {
  into.micro_batches += w.micro_batches;
  into.mlm_batches += w.mlm_batches;
  into.loss_sum += w.loss_sum;
  into.mlm_loss_sum += w.mlm_loss_sum;
  into.nsp_loss_sum += w.nsp_loss_sum;
  into.mlm_correct += w.mlm_correct;
  into.mlm_count += w.mlm_count;
  into.nsp_correct += w.nsp_correct;
  into.nsp_count += w.nsp_count;
  into.tokens += w.tokens;
}

// One micro-batch's losses into a window (its tokens are the caller's to add).
void add_micro_batch(LogWindow& window, const LossStats& stats) {
  LogWindow one;
  one.micro_batches = 1;
  one.mlm_batches = stats.mlm_count > 0 ? 1 : 0;
  one.loss_sum = stats.loss;
  one.mlm_loss_sum = stats.mlm_loss;
  one.nsp_loss_sum = stats.nsp_loss;
  one.mlm_correct = stats.mlm_correct;
  one.mlm_count = stats.mlm_count;
  one.nsp_correct = stats.nsp_correct;
  one.nsp_count = stats.nsp_count;
  merge_window(window, one);
}

struct EvalResult {
  double loss = 0, mlm_loss = 0, nsp_loss = 0, mlm_acc = 0, nsp_acc = 0;
  size_t batches = 0;
};

class Trainer {
 public:
  // With several ranks, `out` and `err` are rank 0's streams there and discarded elsewhere.
  Trainer(RunConfig config, std::optional<std::string> resume, std::optional<std::string> dump_dir, std::ostream& out,
          std::ostream& err, const TrainHooks& hooks, Communicator& comm, const RankPlacement& placement)
      : config_(std::move(config)),
        resume_(resume ? std::optional(without_trailing_slashes(*resume)) : std::nullopt),
        dump_dir_(std::move(dump_dir)),
        out_(out),
        err_(err),
        hooks_(hooks),
        comm_(comm),
        placement_(placement) {}

  // Everything before the first step, in two phases that train_main runs one after the other on
  // every rank (a failure on any rank ends both before the next): prepare() checks the device and the
  // output_dir, where rank 0 finishes interrupted saves and, without --resume, finds what
  // overwrite_output_dir removes; setup() then lists the checkpoints (the same ones on every rank, since
  // rank 0 is done with them), reads the data, builds the model and resumes. setup() returns false when
  // there is nothing to train (already said why).
  void prepare();
  bool setup();
  // overwrite_output_dir without --resume: what check_output_dir found to remove goes, once every
  // rank's setup() has read the data and built the model (train_main runs it after them; rank 0's job).
  void clear_output_dir();
  // With several ranks on GPUs, once every rank's setup succeeded: checks that no two ranks share a GPU
  // and starts NCCL (engine/communicator_nccl.h). A collective; a no-op otherwise.
  void connect_ranks();
  // The training loop; returns the exit code.
  int train();

 private:
  const TrainingConfig& training() const { return config_.training; }
  const DataConfig& data() const { return config_.data; }
  bool on_cuda() const { return training().device == "cuda"; }
  bool lead() const { return comm_.rank() == 0; }  // the rank that logs and writes files
  int world() const { return comm_.size(); }
  // With several ranks: every rank holds the same weights (a hash of them agrees), else an error.
  // The fp32 weights on the host: the CPU model's own, or the CUDA model's master weights copied into
  // `scratch` (a synchronous copy: at the start and at checkpoints).
  std::span<const float> host_weights(std::vector<float>& scratch) const;
  void check_replicas(const char* when, std::span<const float> weights);
  // At a checkpoint (`skipped_step` 0), or after step `skipped_step` was skipped for non-finite gradients.
  void check_finite_weights(std::span<const float> weights, int64_t skipped_step = 0) const;
  // config_key_changes from the run_config.toml a checkpoint holds to this run's config ("" if absent).
  std::string config_changes(const std::string& saved_config_path) const {
    return file_exists(saved_config_path) ? config_key_changes(read_file(saved_config_path), config_text_)
                                          : std::string();
  }
  void lock_output_dir();
  const std::vector<ParamInfo>& params() const;
  int64_t num_parameters() const;
  // The tokens/s -> MFU factor: model FLOPs per real token over the device's peak (0: unknown peak).
  double mfu_per_token_per_s() const;
  // Rows the MLM head runs on for a batch of `batch` sequences: the expected masked tokens, or every
  // token with the dense head. The run table's FLOPs and MFU both count these.
  int64_t mlm_rows_per_batch(int64_t batch) const;
  // The largest batch the model runs: the training batch, or the eval batch when there is eval data.
  int64_t max_batch_size() const {
    return std::max<int64_t>(training().per_device_train_batch_size, valid_data_ ? eval_batch_size() : 1);
  }
  // per_device_eval_batch_size, or all the validation examples when there are fewer (the same
  // batches: evaluation keeps the last, short one); buffers are sized for this, not the setting.
  int eval_batch_size() const {
    return static_cast<int>(std::min<uint64_t>(training().per_device_eval_batch_size, valid_data_->size()));
  }

  void setup_threads();
  void check_cuda_device();  // device = "cuda": before anything is loaded
  void check_cuda_model();   // device = "cuda": the kernels support the config, and it fits in memory
  void warm_up_gradient_sums();   // several ranks on GPUs: NCCL's buffers set up before the first step
  void check_cpu_memory() const;  // device = "cpu": the model and its buffers fit in the memory available
  void train_step_cuda();
  // The CUDA steps queued since the last call: their losses and gradient norms (one wait), and with
  // them the window's losses, the update count and the skipped-step warnings. A no-op on the CPU.
  void settle_steps();
  EvalResult evaluate_cuda();
  // Shared by both devices' steps.
  void advance_cursor();
  cpu::AdamWHyperparams adamw_hyperparams(double lr) const;
  // A step's outcome (step: its 1-based number): the update count or a skipped-step warning.
  void count_update(int64_t step, double norm, double step_loss);
  // The step counter, epoch, learning rate and step time, once a step is done (CPU) or queued (CUDA).
  void advance_step(double lr, Clock::time_point start);
  // Means over every labelled token / sequence of the batches every rank evaluated.
  EvalResult summarize_eval(const std::vector<LossStats>& batches);
  void check_output_dir();
  std::string resolve_resume_dir() const;
  void load_tokenizer_and_data();
  void warn_if_normalizer_differs();
  void build_model(bool resuming);
  // [model] model_name_or_path: its vocabulary checked against [data] tokenizer's, its weights loaded.
  void load_pretrained();
  void restore(const std::string& checkpoint);
  void print_run_table() const;

  double learning_rate(int64_t step) const;
  void train_step();
  EvalResult evaluate();
  void write_log_record(bool log_train, const std::optional<EvalResult>& eval);
  void write_model_files(const std::string& dir) const;
  void finish_ended_run(const std::string& checkpoint);
  // Whether `path` (relative, through symlinks) is a directory right inside output_dir.
  bool in_output_dir(const std::string& path) const;
  std::string save_checkpoint();
  void update_progress(Progress& progress) const;
  // --dump-batches DIR: the weights before the first step of this session (DIR/init, an HF model
  // directory) and every micro-batch as it is trained on (DIR/batches.bin), so another framework can
  // replay the run exactly (tests/conformance/test_hf_training_curve.py does, with transformers).
  void start_dump();
  void dump_batch(const Batch& batch);

  RunConfig config_;
  std::optional<std::string> resume_;
  std::string weights_source_;  // the run table's "weights" row: where a new run's weights came from, if not its seed
  int pretrained_vocab_size_ = 0;  // model_name_or_path's vocab_size when [data] tokenizer has more tokens
  bool vocab_size_from_tokenizer_ = false;  // [model] vocab_size is [data] tokenizer's size (unset, or grown)
  std::optional<std::string> dump_dir_;
  std::ofstream dump_;
  std::ostream& out_;
  std::ostream& err_;
  const TrainHooks& hooks_;
  Communicator& comm_;
  RankPlacement placement_;  // this rank's host and cores, shared with which other ranks

  int threads_ = 1;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Dataset> train_data_, valid_data_;
  std::optional<OutputDirLock> output_lock_;  // rank 0's, for the whole run
  std::string valid_description_;
  std::unique_ptr<Loader> loader_, eval_loader_;
  int64_t seq_len_ = 0;                               // the longest batch the loader can make
  std::unique_ptr<BertForPreTraining<float>> model_;  // device = "cpu"
#if defined(BERT_TRAINER_CUDA)
  std::unique_ptr<BertForPreTrainingCuda> cuda_model_;  // device = "cuda"
  DeviceInfo device_;                                   // this rank's GPU
#endif
#if defined(BERT_TRAINER_NCCL)
  std::unique_ptr<DeviceCommunicator> device_comm_;  // several ranks on GPUs
  GradientSum gradient_sum_;                         // device_comm_'s all-reduce, in ddp_bucket_cap_mb buckets
#endif
  std::unique_ptr<cpu::Context> context_;
  // Laid out like the parameter arena. On a GPU the moments live on the device and these are the
  // checkpoints' staging, freed once written or uploaded (8 bytes a parameter of host memory a rank).
  std::vector<float> exp_avg_, exp_avg_sq_;
  std::vector<cpu::AdamWTensor<float>> adam_tensors_;
  std::vector<cpu::GradView<float>> grad_views_;
  LrSchedule schedule_ = LrSchedule::kLinear;

  TrainerState state_;
  std::string config_text_;
  std::unique_ptr<MetricsLog> metrics_;
  Batch batch_, eval_batch_;

  // This session (for speed, ETA and elapsed time).
  Clock::time_point session_start_ = Clock::now();
  int64_t session_first_step_ = 0;
  double elapsed_at_start_ = 0;
  double last_loss_ = 0, last_grad_norm_ = 0, last_lr_ = 0;
  int64_t last_saved_step_ = -1;
  // The checkpoint this run would go on from after a failure (every rank: the one resumed from, then
  // each one rank 0 wrote and broadcast); empty before there is one.
  std::string latest_checkpoint_;
  int64_t latest_checkpoint_step_ = -1;
  // Records `path` (at state_.global_step) as latest_checkpoint_, also for the ddp_timeout line.
  void set_latest_checkpoint(const std::string& path);
  // "; latest checkpoint: step N (<the command that resumes from it> goes on from it)"; "" before one.
  std::string latest_checkpoint_note() const;
  int64_t skipped_steps_ = 0;
  bool resumed_ = false;
  bool clear_pending_ = false;            // clear_output_dir() is due once every rank's setup() succeeded
  std::vector<int64_t> unsettled_steps_;  // CUDA: queued steps whose outcome the host has not read
  int64_t unsettled_tokens_ = 0;          // CUDA: this rank's real tokens in those steps
};

void Trainer::setup_threads() {
  // threads = 0: the cores this process may run on, shared with the ranks that may run on the same ones.
  threads_ = training().threads > 0 ? training().threads : std::max(1, omp_get_num_procs() / placement_.cpu_sharers);
  // The ops take their thread count from the Context; OpenMP's default and OpenBLAS's pool follow it
  // so neither oversubscribes the cores.
  if (training().threads > omp_get_num_procs())
    err_ << "warning: " << config_.where("training", "threads") << " = " << training().threads << " on "
         << omp_get_num_procs() << " core(s): more threads than cores slows every step down\n";
  omp_set_num_threads(threads_);
  if (openblas_set_num_threads) openblas_set_num_threads(threads_);
  context_ = std::make_unique<cpu::Context>(threads_);
}

// device = "cuda": one-line errors before any data or weights are loaded.
void Trainer::check_cuda_device() {
  const std::string where = config_.where("training", "device") + " = \"cuda\": ";
#if defined(BERT_TRAINER_CUDA)
  device_ = cuda_device_info();
  if (!device_.available) throw Error(where + device_.reason + "; set device = \"cpu\" to train on the CPU");
  if (world() > 1) {
#if !defined(BERT_TRAINER_NCCL)
    throw Error(where + std::to_string(world()) +
                " MPI ranks, but this bert_train was built without NCCL (CMake found no nccl.h): run one process "
                "on one GPU, or install NCCL's headers (libnccl-dev) and rebuild");
#endif
    // Rank r of a host's ranks takes its visible device r; a launcher that shows each rank one device
    // (CUDA_VISIBLE_DEVICES per rank, Slurm's --gpus-per-task) leaves that one. connect_ranks() refuses
    // two ranks on one GPU.
    int ordinal = 0;
    if (device_.count >= placement_.host_ranks) {
      ordinal = placement_.host_rank;
    } else if (device_.count != 1) {
      throw Error(where + std::to_string(placement_.host_ranks) + " ranks run on this host, which has " +
                  std::to_string(device_.count) +
                  " visible GPUs: data parallelism runs one rank per GPU (mpirun -np <GPUs>)");
    }
    if (const std::string why = cuda_select_device(ordinal); !why.empty()) throw Error(where + why);
    device_ = cuda_device_info(ordinal);
    if (!device_.available) throw Error(where + device_.reason);
  }
  // A GPU this build has no code for (an A100 under the default sm_90a build) fails here, not at the
  // first kernel launch after the data and weights are loaded.
  if (const std::string why = cuda_check_kernels(); !why.empty()) throw Error(where + why);
#else
  throw Error(where + "this bert_train was built without CUDA (no nvcc at build time); set device = \"cpu\"");
#endif
}

// device = "cuda", once the sequence length is known: the kernels support the shapes, and the model
// with its batch-sized arenas fits in the device's memory (else the bytes it would need).
void Trainer::check_cuda_model() {
#if defined(BERT_TRAINER_CUDA)
  try {
    BertForPreTrainingCuda::check_supported(config_.model);
    BertForPreTrainingCuda::check_supported_seq_len(seq_len_);
  } catch (const std::invalid_argument& e) {
    throw Error(config_.where("training", "device") + " = \"cuda\": " + e.what());
  }
  const int64_t max_batch = max_batch_size();
  ModelOptions options;
  options.init_seed = training().seed;
  const CudaMemoryPlan plan = BertForPreTrainingCuda::memory_plan(config_.model, max_batch, seq_len_, options);
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();
    free_bytes = device_.memory_bytes;
  }
  if (plan.total_bytes() > free_bytes)
    throw Error(config_.where("training", "device") + " = \"cuda\": the model and a batch of " +
                std::to_string(max_batch) + " x " + std::to_string(seq_len_) + " tokens need " +
                human_bytes(static_cast<double>(plan.total_bytes())) + " of device memory, " + device_.name + " has " +
                human_bytes(static_cast<double>(free_bytes)) + " free; " +
                (max_batch > training().per_device_train_batch_size
                     ? std::string("lower per_device_eval_batch_size")
                     : std::string("lower per_device_train_batch_size (use gradient_accumulation_steps for the "
                                   "same batch)")));
#endif
}

// MemAvailable of /proc/meminfo in bytes; 0 where it cannot be read.
static double available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

// device = "cpu", before anything model-sized is allocated: a lower bound on the bytes the model
// takes (fp32 weights, gradients and both AdamW moments; per token and layer at least four
// hidden-sized and one intermediate-sized activation kept for backward) against MemAvailable. A
// model far beyond the machine is a clear error here instead of std::bad_alloc or the OOM killer.
void Trainer::check_cpu_memory() const {
  const BertConfig& m = config_.model;
  const double h = m.hidden_size, inter = m.intermediate_size, vocab = m.vocab_size, layers = m.num_hidden_layers;
  const double params = (vocab + m.max_position_embeddings + m.type_vocab_size) * h + 2 * h +  // embeddings
                        layers * (4 * h * h + 2 * h * inter + 9 * h + inter) +               // encoder
                        (h * h + h) + (h * h + 3 * h + vocab) + (2 * h + 2);                  // pooler, heads
  const double tokens = static_cast<double>(max_batch_size()) * static_cast<double>(seq_len_);
  const double activations = tokens * layers * (4 * h + inter) * sizeof(float);
  const double needed = params * 4 * sizeof(float) + activations;
  const double available = available_memory_bytes();
  if (available > 0 && needed > available)
    throw Error(config_.path + ": [model] the model (" + human_count(params) + " parameters) and a batch of " +
                std::to_string(max_batch_size()) + " x " + std::to_string(seq_len_) + " tokens need at least " +
                human_bytes(needed) + " of memory (" + human_bytes(params * 4 * sizeof(float)) +
                " for the fp32 weights, gradients and AdamW moments), this machine has " + human_bytes(available) +
                " available; make the model or " +
                (max_batch_size() > training().per_device_train_batch_size ? "per_device_eval_batch_size"
                                                                             : "per_device_train_batch_size") +
                " smaller");
}

const std::vector<ParamInfo>& Trainer::params() const {
#if defined(BERT_TRAINER_CUDA)
  if (cuda_model_) return cuda_model_->params();
#endif
  return model_->params();
}

int64_t Trainer::num_parameters() const {
#if defined(BERT_TRAINER_CUDA)
  if (cuda_model_) return cuda_model_->num_parameters();
#endif
  return model_->num_parameters();
}

int64_t Trainer::mlm_rows_per_batch(int64_t batch) const {
  const int64_t tokens = batch * seq_len_;
  if (!data().mlm_masked_positions_only) return tokens;
  return static_cast<int64_t>(std::llround(data().mlm_probability * static_cast<double>(tokens)));
}

double Trainer::mfu_per_token_per_s() const {
#if defined(BERT_TRAINER_CUDA)
  if (!on_cuda()) return 0;
  // Dense bf16 tensor-core peaks (NVIDIA datasheets); MFU is left out for other devices.
  double peak = 0;
  const std::string& name = device_.name;
  if (name.find("H100") != std::string::npos)
    peak = name.find("PCIe") != std::string::npos ? 756e12 : 989.4e12;
  else if (name.find("H200") != std::string::npos || name.find("GH200") != std::string::npos)
    peak = 989.4e12;
  else if (name.find("A100") != std::string::npos)
    peak = 312e12;
  if (peak == 0) return 0;
  const int64_t batch = training().per_device_train_batch_size;
  const double flops_per_token = bert_training_flops(config_.model, batch, seq_len_, mlm_rows_per_batch(batch)) /
                                 static_cast<double>(batch * seq_len_);
  return flops_per_token / (peak * world());  // the logged tokens/s are every rank's, each on its own GPU
#else
  return 0;
#endif
}

void Trainer::lock_output_dir() {
  output_lock_.emplace(training().output_dir);
  if (!output_lock_->unsupported().empty())
    err_ << "warning: " << training().output_dir << ": not locked (" << output_lock_->unsupported()
         << "): nothing stops a second bert_train from writing to it at the same time\n";
}

void Trainer::check_output_dir() {
  const std::string& dir = training().output_dir;
  const std::string where = config_.where("training", "output_dir") + " '" + dir + "'";
  if (file_exists(dir) && !is_directory(dir)) throw Error(where + " exists and is not a directory");
  // One that cannot be written in (read-only, another user's) fails now, not after the model is built.
  if (lead() && is_directory(dir)) {
    const std::string probe = dir + "/.bert_train.probe." + std::to_string(::getpid());
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw Error(where + ": cannot write in it: " + std::strerror(errno));
    ::close(fd);
    ::unlink(probe.c_str());
  }
  // Locked now when it exists (before anything in it is read or removed), else when training starts:
  // a config error leaves no directory behind.
  if (lead() && is_directory(dir)) lock_output_dir();
  // A directory of the user's under a checkpoint's name: the run would fail when it saves that step.
  if (const auto foreign = foreign_checkpoint_dirs(dir); !foreign.empty())
    throw Error(where + " holds " + foreign.front() + ", which is not a bert_train checkpoint (" +
                (is_directory(foreign.front()) ? "no trainer_state.json" : "not a directory") +
                ") but has a checkpoint's name; move it out");
  if (resume_) {
    if (lead()) recover_interrupted_saves(dir);  // before the checkpoints are listed
    // A checkpoint from elsewhere into an output_dir holding another run's checkpoints: they would be
    // taken for this run's (the rotation, a bare --resume), and its metrics.jsonl continued. Refused,
    // with overwrite_output_dir too (clearing here would come before setup() knows whether anything
    // is left to train). Metrics without a checkpoint are let be: a run resumed from elsewhere and
    // stopped before its first save leaves them, and the command it prints goes on from there.
    if (!resume_->empty() && file_exists(*resume_ + "/trainer_state.json") && !in_output_dir(*resume_) &&
        !list_checkpoints(dir).empty())
      throw Error(where + " holds another run's checkpoints, and --resume " + *resume_ +
                  " is not one of them: they would be taken for this run's; choose another output_dir, or remove "
                  "them from it (a checkpoint of that run, copied away: put it back in " +
                  dir + ")");
    return;
  }
  if (!holds_files(dir)) return;
  if (!training().overwrite_output_dir) {
    // Without a checkpoint (a run stopped before its first save) there is nothing to resume; a re-save
    // cut short (checkpoint-N.old-PID) is one, which --resume recovers.
    bool any_checkpoint = !list_checkpoints(dir).empty();
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec))
      any_checkpoint = any_checkpoint || (entry.path().filename().string().starts_with("checkpoint-") &&
                                          !is_superseded_checkpoint_name(entry.path().filename().string()));
    if (!any_checkpoint)
      throw Error(where +
                  " already exists and is not empty, with no checkpoint-N in it to resume (a run stopped "
                  "before its first save?); set [training] overwrite_output_dir = true to start over, or "
                  "choose another output_dir");
    throw Error(where + " already exists and is not empty; continue it with --resume, set [training] " +
                "overwrite_output_dir = true to start over, or choose another output_dir");
  }
  // overwrite_output_dir: start over, but only once setup() has read the tokenizer and the data and
  // built the model, so that a mistake in the config does not cost the last run (clear_output_dir).
  // Nothing [data] reads may be in a checkpoint that goes. (Rank 0's job.)
  if (!lead()) return;
  recover_interrupted_saves(dir);  // an old run's half-done re-save is one of its checkpoints, removed later
  std::vector<std::string> going;
  for (const CheckpointInfo& checkpoint : list_checkpoints(dir)) going.push_back(checkpoint.path);
  for (const fs::path& path : superseded_checkpoint_dirs(dir)) going.push_back(path.string());
  for (const auto& [key, path] : {std::pair<const char*, const std::string&>{"tokenizer", data().tokenizer},
                                  {"train_data", data().train_data},
                                  {"valid_data", data().valid_data}})
    for (const std::string& doomed : going)
      if (!path.empty() && path_within(path, doomed))
        throw Error(config_.where("data", key) + " '" + path + "' is inside " + doomed +
                    ", which overwrite_output_dir = true would remove; copy it out of " + dir + " first");
  // Nor the model a new run starts from: a checkpoint that goes, or output_dir's final model, which
  // goes too and which this run's would replace.
  if (const std::string& pretrained = config_.model_name_or_path; !pretrained.empty()) {
    const std::string key = config_.where("model", "model_name_or_path") + " '" + pretrained + "'";
    for (const std::string& doomed : going)
      if (path_within(pretrained, doomed))
        throw Error(key + " is inside " + doomed + ", which overwrite_output_dir = true would remove; copy it out of " +
                    dir + " first");
    std::error_code ec;
    if (fs::equivalent(pretrained, dir, ec))
      throw Error(key +
                  " is output_dir, whose model overwrite_output_dir = true would remove and this run's would "
                  "replace; copy it out of " +
                  dir + " first, or choose another output_dir");
  }
  clear_pending_ = true;
}

void Trainer::clear_output_dir() {
  if (!clear_pending_) return;
  clear_pending_ = false;
  // Old checkpoints would otherwise be taken for this run's (rotation, --resume), and old metrics
  // lines would mix with the new ones. The last run's final model goes too (bert_infer --model
  // output_dir would answer with it, all through this run and after it if it stops early), when the
  // directory shows a bert_train run (checkpoints or metrics), and never the tokenizer this run reads
  // from it.
  const std::string& dir = training().output_dir;
  std::error_code ec;
  const auto old = list_checkpoints(dir);
  const bool trained_here = !old.empty() || file_exists(dir + "/metrics.jsonl");
  for (const CheckpointInfo& checkpoint : old) fs::remove_all(checkpoint.path, ec);
  const std::vector<fs::path> superseded = superseded_checkpoint_dirs(dir);
  for (const fs::path& path : superseded) fs::remove_all(path, ec);
  std::vector<std::string> removed;
  if (fs::remove(dir + "/metrics.jsonl", ec)) removed.emplace_back("metrics.jsonl");
  std::vector<const char*> model_files;
  if (trained_here) model_files = {"model.safetensors", "config.json"};
  if (trained_here && !fs::equivalent(dir, data().tokenizer, ec))
    model_files.insert(model_files.end(), {"vocab.txt", "tokenizer_config.json", "special_tokens_map.json"});
  // And the old run's loss plot at bert_train plot's default place: it would pass for this run's.
  if (trained_here) model_files.push_back("loss.svg");
  for (const char* name : model_files)
    if (fs::remove(dir + "/" + name, ec)) removed.emplace_back(name);
  if (old.empty() && superseded.empty() && removed.empty()) return;
  out_ << "overwrite_output_dir: removed from " << dir << ": " << old.size() << " old checkpoint(s)";
  if (!superseded.empty()) out_ << ", " << superseded.size() << " set aside by a resume (checkpoint-N.superseded)";
  for (const std::string& name : removed) out_ << ", " << name;
  out_ << "\n";
}

std::string Trainer::resolve_resume_dir() const {
  if (!resume_->empty()) {
    if (!is_directory(*resume_)) throw Error("--resume " + *resume_ + ": no such checkpoint directory");
    if (!file_exists(*resume_ + "/trainer_state.json"))
      if (const auto inside = latest_checkpoint(*resume_))
        throw Error("--resume " + *resume_ + ": is a run's output_dir, not a checkpoint; its latest is " +
                    inside->path + " (pass that, or --resume alone to go on from the config's output_dir)");
    return *resume_;
  }
  const std::string& dir = training().output_dir;
  const auto latest = latest_checkpoint(dir);
  if (!latest)
    throw Error("--resume: no checkpoint-N directory in '" + dir + "' (" + config_.path +
                " [training] output_dir); start without --resume" +
                (holds_files(dir) ? std::string(" (with [training] overwrite_output_dir = true: it is not empty)")
                                  : std::string()) +
                ", or pass --resume CHECKPOINT_DIR");
  return latest->path;
}

// The shards were encoded by the tokenizer copy bert_prepare stored beside them. With the same
// vocabulary but another normaliser or other special tokens, training is unaffected, but the
// checkpoints would carry a tokenizer that reads text otherwise than the model learnt it (a special
// token such as [PHONE] that the shards hold as the pieces [, P, ##H, ... is one id the model never saw).
void Trainer::warn_if_normalizer_differs() {
  const std::string copy = data().train_data + "/tokenizer";
  if (!file_exists(copy + "/tokenizer_config.json")) return;
  TokenizerConfig encoded_config;
  try {
    encoded_config = TokenizerConfig::load(copy);
  } catch (const Error& e) {
    err_ << "warning: cannot compare the tokenizers: " << e.what() << "\n";
    return;
  }
  const auto sorted_specials = [](const TokenizerConfig& c) {
    std::vector<std::string> v = c.special_tokens();
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    return v;
  };
  const std::vector<std::string> encoded_specials = sorted_specials(encoded_config),
                                 used_specials = sorted_specials(tokenizer_->config());
  if (encoded_specials != used_specials) {
    std::vector<std::string> only_used, only_encoded;
    std::set_difference(used_specials.begin(), used_specials.end(), encoded_specials.begin(), encoded_specials.end(),
                        std::back_inserter(only_used));
    std::set_difference(encoded_specials.begin(), encoded_specials.end(), used_specials.begin(), used_specials.end(),
                        std::back_inserter(only_encoded));
    err_ << "warning: " << data().tokenizer << " has other special tokens than " << copy
         << ", which encoded the shards (";
    const auto list = [&](const std::string& whose, const std::vector<std::string>& tokens, bool first) {
      if (tokens.empty()) return;
      err_ << (first ? "" : "; ") << "only " << whose << ":";
      for (const std::string& t : tokens) err_ << " " << t;
    };
    list(data().tokenizer, only_used, true);
    list("the shards'", only_encoded, only_used.empty());
    err_ << "): text holding them was encoded otherwise than the checkpoints' tokenizer will encode it; rebuild "
            "the shards with "
         << data().tokenizer << "\n";
  }
  const NormalizerOptions& encoded = encoded_config.normalizer;
  const NormalizerOptions& used = tokenizer_->config().normalizer;
  std::string diff;
  note_difference(diff, "do_lower_case", encoded.lowercase, used.lowercase);
  note_difference(diff, "strip_accents", encoded.strip_accents, used.strip_accents);
  note_difference(diff, "tokenize_chinese_chars", encoded.handle_chinese_chars, used.handle_chinese_chars);
  note_difference(diff, "clean_text", encoded.clean_text, used.clean_text);
  if (!diff.empty())
    err_ << "warning: " << data().tokenizer << " normalises text otherwise than " << copy
         << ", which encoded the shards (" << diff << "); the checkpoints carry " << data().tokenizer << "'s\n";
}

void Trainer::load_tokenizer_and_data() {
  try {
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_dir(data().tokenizer));
    tokenizer_->require({SpecialToken::kCls, SpecialToken::kSep, SpecialToken::kPad, SpecialToken::kMask},
                        data().tokenizer, "BERT pretraining");
  } catch (const Error& e) {
    throw Error(config_.where("data", "tokenizer") + ": " + e.what());
  }
  const auto vocab = static_cast<int>(tokenizer_->vocab().size());
  BertConfig& model = config_.model;
  if (model.vocab_size == 0) {
    model.vocab_size = vocab;
    vocab_size_from_tokenizer_ = true;
  } else if (model.vocab_size < vocab && !config_.model_name_or_path.empty()) {
    // Tokens appended to the pretrained model's (load_pretrained checks that they are): its embeddings
    // grow, as transformers' resize_token_embeddings does.
    if (config_.pretrained_vocab_size_written)
      throw Error(config_.where("model", "vocab_size") + " = " + std::to_string(model.vocab_size) + " (" +
                  config_.model_name_or_path + "/config.json's) is smaller than the " + std::to_string(vocab) +
                  " tokens of " + data().tokenizer +
                  " ([data] tokenizer); leave it out and the model's vocabulary "
                  "grows to them");
    pretrained_vocab_size_ = model.vocab_size;
    model.vocab_size = vocab;
    vocab_size_from_tokenizer_ = true;
  } else if (model.vocab_size < vocab) {
    throw Error(config_.where("model", "vocab_size") + " = " + std::to_string(model.vocab_size) +
                " is smaller than the " + std::to_string(vocab) + " tokens of " + data().tokenizer +
                "; set it to 0 to use the tokenizer's");
  }
  if (model.pad_token_id >= model.vocab_size)
    throw Error(config_.where("model", "pad_token_id") + " = " + std::to_string(model.pad_token_id) +
                " is outside the vocabulary of " + std::to_string(model.vocab_size) + " tokens (" + data().tokenizer +
                "'s [PAD] is id " + std::to_string(tokenizer_->pad_id()) + ")");
  if (model.type_vocab_size < 2)
    throw Error(config_.where("model", "type_vocab_size") + " = " + std::to_string(model.type_vocab_size) +
                ": the NSP pairs BERT pretrains on use token types 0 and 1; set it to 2");
  if (model.pad_token_id != tokenizer_->pad_id())
    err_ << "warning: [model] pad_token_id = " << model.pad_token_id << " but the tokenizer's [PAD] is id "
         << tokenizer_->pad_id() << "\n";

  // The shards' errors (no manifest.json, a damaged shard) name the config's key too.
  const auto open_data = [&](const char* key, const std::string& dir, Split split) {
    try {
      return std::make_unique<Dataset>(dir, split, static_cast<uint32_t>(vocab));
    } catch (const Error& e) {
      throw Error(config_.where("data", key) + ": " + e.what());
    }
  };
  train_data_ = open_data("train_data", data().train_data, Split::kTrain);
  if (train_data_->size() == 0)
    throw Error(data().train_data + ": no training examples (manifest.json lists no train shards)");
  if (!data().valid_data.empty()) {
    valid_data_ = open_data("valid_data", data().valid_data, Split::kValid);
    valid_description_ = data().valid_data + " (valid split)";
    if (valid_data_->size() == 0) {  // a shard dir made only for evaluation keeps it in "train"
      std::error_code ec;
      if (fs::equivalent(data().valid_data, data().train_data, ec))
        throw Error(config_.where("data", "valid_data") + " = '" + data().valid_data +
                    "' is train_data, which has no valid split: evaluating on its train split would score the "
                    "examples trained on; rebuild it with bert_prepare build --valid-fraction, or name other shards");
      valid_data_ = open_data("valid_data", data().valid_data, Split::kTrain);
      valid_description_ = data().valid_data + " (train split)";
    }
  } else {
    valid_data_ = open_data("train_data", data().train_data, Split::kValid);
    valid_description_ = data().train_data + " (valid split)";
  }
  if (valid_data_->size() == 0) {
    valid_data_.reset();
    valid_description_.clear();
    if (config_.lines.count("training.eval_steps"))
      err_ << "warning: " << config_.where("training", "eval_steps") << " = " << training().eval_steps
           << ": nothing to evaluate, "
           << (data().valid_data.empty() ? data().train_data +
                                               " has no valid split (its manifest.json lists no valid shards) "
                                               "and [data] valid_data is not set"
                                         : data().valid_data + " ([data] valid_data) holds no examples")
           << "\n";
  }
  train_data_->check_vocabulary(tokenizer_->vocab(), data().tokenizer);
  if (valid_data_) valid_data_->check_vocabulary(tokenizer_->vocab(), data().tokenizer);
  warn_if_normalizer_differs();

  // A fixed length pads every batch, the evaluation's too: both sets of shards must fit in it.
  const auto shard_len = static_cast<int64_t>(train_data_->max_seq_len());
  for (const auto& [dataset, name] : {std::pair<const Dataset*, std::string>{train_data_.get(), data().train_data},
                                      {valid_data_.get(), valid_description_}}) {
    const auto len = dataset ? static_cast<int64_t>(dataset->max_seq_len()) : 0;
    if (data().max_seq_length > 0 && data().max_seq_length < len)
      throw Error(config_.where("data", "max_seq_length") + " = " + std::to_string(data().max_seq_length) +
                  " is shorter than the shards' max length " + std::to_string(len) + " (" + name +
                  "); set it to 0 (pad each batch to its longest example) or >= " + std::to_string(len));
  }
  seq_len_ = data().max_seq_length > 0 ? data().max_seq_length : shard_len;
  if (valid_data_) seq_len_ = std::max<int64_t>(seq_len_, valid_data_->max_seq_len());
  if (seq_len_ > model.max_position_embeddings && !config_.model_name_or_path.empty())
    throw Error(config_.where("model", "model_name_or_path") + ": " + config_.model_name_or_path +
                "/config.json's max_position_embeddings " + std::to_string(model.max_position_embeddings) +
                " is shorter than the " + std::to_string(seq_len_) + "-token sequences of the shards (the model has " +
                "no positions past it); rebuild the shards with --max-seq-len " +
                std::to_string(model.max_position_embeddings) + " or less");
  if (seq_len_ > model.max_position_embeddings)
    throw Error(config_.where("model", "max_position_embeddings") + " = " +
                std::to_string(model.max_position_embeddings) + " is shorter than the " + std::to_string(seq_len_) +
                "-token sequences of the shards; raise it or rebuild the shards with a smaller --max-seq-len");

  LoaderOptions options;
  options.batch_size = training().per_device_train_batch_size;
  options.rank = comm_.rank();
  options.world_size = world();
  options.seed = training().seed;
  options.shuffle = data().shuffle;
  options.drop_last = true;
  options.fixed_length = data().max_seq_length;
  options.prefetch = data().prefetch;
  options.masking.mlm_probability = data().mlm_probability;
  options.masking.mask_replace_prob = data().mask_replace_prob;
  options.masking.random_replace_prob = data().random_replace_prob;
  options.masking.whole_word = data().whole_word_mask;
  options.masking.fixed_count = data().fixed_mask_count;
  if (train_data_->size() < static_cast<size_t>(options.batch_size) * static_cast<size_t>(world()))
    throw Error(config_.where("training", "per_device_train_batch_size") + " = " + std::to_string(options.batch_size) +
                (world() > 1 ? " on each of " + std::to_string(world()) + " ranks" : std::string()) +
                " is more than the " + std::to_string(train_data_->size()) + " training examples");
  const MaskingVocab masking = masking_vocab(*tokenizer_);
  loader_ = std::make_unique<Loader>(*train_data_, masking, tokenizer_->cls_id(), tokenizer_->sep_id(),
                                     tokenizer_->pad_id(), options);
  if (valid_data_) {
    // Evaluation: same masking rules, a fixed order and a fixed (seed, epoch 0) mask, every time; the
    // single-rank batches, shared out among the ranks (evaluate()).
    LoaderOptions eval_options = options;
    eval_options.rank = 0;
    eval_options.world_size = 1;
    eval_options.batch_size = eval_batch_size();
    eval_options.shuffle = false;
    eval_options.drop_last = false;
    eval_options.prefetch = 0;
    eval_loader_ = std::make_unique<Loader>(*valid_data_, masking, tokenizer_->cls_id(), tokenizer_->sep_id(),
                                            tokenizer_->pad_id(), eval_options);
  }
}

void Trainer::build_model(bool resuming) {
  ModelOptions options;
  options.mlm_on_masked_positions_only = data().mlm_masked_positions_only;
  options.num_threads = threads_;
  options.init_seed = training().seed;
  options.initialize_parameters = !resuming;  // the checkpoint's weights replace every one
  const int64_t max_batch = max_batch_size();
#if defined(BERT_TRAINER_CUDA)
  if (on_cuda()) {  // AdamW moments live on the device; exp_avg_/exp_avg_sq_ are checkpoint staging
    cuda_model_ = std::make_unique<BertForPreTrainingCuda>(config_.model, options);
    cuda_model_->reserve(max_batch, seq_len_);
    cuda_model_->context().set_gemm_autotune(training().gemm_autotune);
    return;
  }
#endif
  model_ = std::make_unique<BertForPreTraining<float>>(config_.model, options);
  model_->reserve(max_batch, seq_len_);
  exp_avg_.assign(model_->parameters().size(), 0.0f);
  exp_avg_sq_.assign(model_->parameters().size(), 0.0f);
}

void Trainer::load_pretrained() {
  const std::string& dir = config_.model_name_or_path;
  const std::string key = config_.where("model", "model_name_or_path") + " = \"" + dir + "\"";
  // Its embeddings are rows for its own tokens: the shards' ids must mean the same pieces. Tokens the
  // training tokenizer appends after them take rows of vocab_size's padding, then new rows.
  if (!file_exists(dir + "/vocab.txt") && !file_exists(dir + "/tokenizer.json"))
    throw Error(key + ": it has no vocab.txt or tokenizer.json, so nothing shows which tokens its embeddings are " +
                "for; copy the tokenizer files it was trained with into it");
  std::vector<std::string> pieces;
  try {
    const Tokenizer pretrained = Tokenizer::from_dir(dir);
    pieces.assign(pretrained.vocab().tokens().begin(),
                  pretrained.vocab().tokens().begin() + static_cast<std::ptrdiff_t>(pretrained.piece_count()));
  } catch (const Error& e) {
    throw Error(key + ": " + e.what());
  }
  const std::vector<std::string>& now = tokenizer_->vocab().tokens();
  const auto [theirs, ours] = std::mismatch(pieces.begin(), pieces.end(), now.begin(), now.end());
  if (theirs != pieces.end()) {
    const auto id = theirs - pieces.begin();
    throw Error(key + ": its vocabulary differs from " + data().tokenizer + "'s ([data] tokenizer): id " +
                std::to_string(id) + " is '" + *theirs + "' there" +
                (ours != now.end() ? ", '" + *ours + "' here"
                                   : ", past the end here (" + std::to_string(now.size()) + " tokens)") +
                "; its embeddings are for its own tokens: set [data] tokenizer = \"" + dir +
                "\" and build the shards with it (bert_prepare build --tokenizer " + dir + ")");
  }
  const std::string weights = dir + "/model.safetensors";
  if (!file_exists(weights))
    throw Error(key + ": " + weights + " not found" +
                (file_exists(dir + "/model.safetensors.index.json")
                     ? "; there is a model.safetensors.index.json: a save in shards, which bertforge does not read; "
                       "save it in one file, save_pretrained(DIR, max_shard_size=\"100GB\")"
                 : file_exists(dir + "/pytorch_model.bin")
                     ? "; there is a pytorch_model.bin, which bertforge does not read (a pickle can run code): "
                       "convert it with transformers, BertForPreTraining.from_pretrained(DIR).save_pretrained(DIR) "
                       "writes model.safetensors"
                     : std::string()));
  std::vector<std::string> kept;
  try {
#if defined(BERT_TRAINER_CUDA)
    if (cuda_model_)
      cuda_model_->load_pretrained(weights, kept, pretrained_vocab_size_);
    else
#endif
      model_->load_pretrained(weights, kept, pretrained_vocab_size_);
  } catch (const Error& e) {
    throw Error(key + ": " + e.what());
  }
  weights_source_ = "from " + weights + " (model_name_or_path)";
  for (size_t k = 0; k < kept.size(); ++k)
    weights_source_ += (k == 0 ? "; newly initialised, as it has none: " : ", ") + kept[k];
  if (pretrained_vocab_size_ > 0) {
    const std::string grown = std::to_string(config_.model.vocab_size - pretrained_vocab_size_);
    weights_source_ += "; vocabulary grown by " + grown + " tokens to " + std::to_string(config_.model.vocab_size) +
                       " (new embedding rows at the mean of its " + std::to_string(pretrained_vocab_size_) +
                       ", decoder bias 0)";
    if (lead())
      err_ << "note: " << data().tokenizer << " ([data] tokenizer) has " << grown << " tokens past " << dir
           << "'s vocab_size " << pretrained_vocab_size_ << ": their embeddings start at the mean of its rows, as "
           << "transformers' resize_token_embeddings does\n";
  }
}

void Trainer::restore(const std::string& checkpoint) {
  const TrainerState saved = TrainerState::load(checkpoint + "/trainer_state.json");
  // A different model shape cannot continue; other changes can, but the run then differs from an
  // uninterrupted one, so say so.
  const BertConfig& a = saved.model;
  const BertConfig& b = config_.model;
  std::string shape_diff;
  const auto compare = [&](const char* key, auto was, auto now) { note_difference(shape_diff, key, was, now); };
  compare("hidden_size", a.hidden_size, b.hidden_size);
  compare("num_hidden_layers", a.num_hidden_layers, b.num_hidden_layers);
  compare("num_attention_heads", a.num_attention_heads, b.num_attention_heads);
  compare("intermediate_size", a.intermediate_size, b.intermediate_size);
  compare("max_position_embeddings", a.max_position_embeddings, b.max_position_embeddings);
  compare("type_vocab_size", a.type_vocab_size, b.type_vocab_size);
  if (a.hidden_act != b.hidden_act) shape_diff += std::string(shape_diff.empty() ? "" : ", ") + "hidden_act";
  if (vocab_size_from_tokenizer_ && a.vocab_size != b.vocab_size && shape_diff.empty())  // the tokenizer changed
    throw Error("cannot resume from " + checkpoint + ": it was trained with vocab_size " +
                std::to_string(a.vocab_size) + " and " + data().tokenizer + " ([data] tokenizer of " + config_.path +
                ", which sets the model's vocab_size) now has " + std::to_string(b.vocab_size) +
                " tokens; resume with the tokenizer it was trained with, or start a new output_dir (to append tokens "
                "during a run, give [model] vocab_size room for them from its start)");
  std::string vocab_diff;
  note_difference(vocab_diff, "vocab_size", a.vocab_size, b.vocab_size);
  if (!vocab_diff.empty()) shape_diff = vocab_diff + (shape_diff.empty() ? "" : ", ") + shape_diff;
  if (!shape_diff.empty())
    throw Error("cannot resume from " + checkpoint + ": its model differs from " + config_.path + " [model] (" +
                shape_diff + "); resume with the config it was trained with, or start a new output_dir");
  // Other tokens under the ids it was trained with: the embeddings would go on under ids that now mean
  // other pieces. Tokens appended after them (into vocab_size's padding) keep every trained id.
  const std::string checkpoint_vocab = checkpoint + "/vocab.txt";
  if (!file_exists(checkpoint_vocab))
    throw Error("cannot resume from " + checkpoint + ": it has no vocab.txt, so nothing shows it was trained with " +
                data().tokenizer + "'s vocabulary; copy the vocab.txt it was trained with into it");
  {
    std::vector<std::string> trained;
    try {
      trained = Vocab::load(checkpoint_vocab).tokens();
    } catch (const Error& e) {
      throw Error("cannot resume from " + checkpoint + ": " + e.what());
    }
    const std::vector<std::string>& now = tokenizer_->vocab().tokens();
    if (trained.size() > now.size() || !std::equal(trained.begin(), trained.end(), now.begin()))
      throw Error("cannot resume from " + checkpoint + ": its vocab.txt differs from " + data().tokenizer +
                  "/vocab.txt ([data] tokenizer of " + config_.path +
                  "); resume with the tokenizer it was trained with, or start a new output_dir");
  }

  std::string changed;
  const auto note = [&](const char* what, auto was, auto now) { note_difference(changed, what, was, now); };
  note("seed", saved.seed, state_.seed);
  note("per_device_train_batch_size", saved.per_device_train_batch_size, state_.per_device_train_batch_size);
  note("gradient_accumulation_steps", saved.gradient_accumulation_steps, state_.gradient_accumulation_steps);
  note("world_size (ranks)", saved.world_size, state_.world_size);
  note("batches_per_epoch", saved.batches_per_epoch, state_.batches_per_epoch);
  note("total_steps", saved.total_steps, state_.total_steps);
  note("warmup_steps", saved.warmup_steps, state_.warmup_steps);
  // Shards rebuilt in place (another seed or corpus) can keep every count above: other examples all the same.
  if (!saved.train_data_fingerprint.empty() && saved.train_data_fingerprint != state_.train_data_fingerprint)
    changed += std::string(changed.empty() ? "" : ", ") + "training data (" + data().train_data +
               ": other shards than the checkpoint's)";
  if (!changed.empty())
    err_ << "warning: resuming " << checkpoint << " with changed settings (" << changed
         << "): the run will not repeat an uninterrupted one exactly\n";
  else if (saved.config_hash != state_.config_hash)
    err_ << "note: " << config_.path << " differs from the config " << checkpoint << " was trained with ("
         << saved.config_path << ")" << config_changes(checkpoint + "/run_config.toml") << "\n";

  try {
#if defined(BERT_TRAINER_CUDA)
    if (cuda_model_) {
      cuda_model_->load_safetensors(checkpoint + "/model.safetensors");
      exp_avg_.assign(cuda_model_->arena_elements(), 0.0f);
      exp_avg_sq_.assign(cuda_model_->arena_elements(), 0.0f);
    } else
#endif
      model_->load_safetensors(checkpoint + "/model.safetensors");
    const std::string optimizer_path = checkpoint + "/trainer_state.safetensors";
    if (!file_exists(optimizer_path)) throw Error(optimizer_path + ": not found");
    const SafetensorsFile optimizer(optimizer_path);
    optimizer.verify_data_hash();
    const std::string* step = optimizer.metadata_value("global_step");
    if (!step || *step != std::to_string(saved.global_step))
      throw Error(optimizer_path + ": global_step metadata " + (step ? *step : std::string("(missing)")) +
                  " does not match trainer_state.json's " + std::to_string(saved.global_step));
    for (const ParamInfo& info : params())
      for (const auto& [prefix, arena] : {std::pair{"exp_avg.", &exp_avg_}, std::pair{"exp_avg_sq.", &exp_avg_sq_}}) {
        const std::string name = prefix + info.name;
        optimizer.read_f32(name, info.shape, std::span<float>(arena->data() + info.offset, info.numel));
        optimizer.release(optimizer.info(name));  // read: the arena's copy is all that stays resident
      }
#if defined(BERT_TRAINER_CUDA)
    if (cuda_model_) {
      cuda_model_->upload_moments(exp_avg_, exp_avg_sq_);
      cuda_model_->set_optimizer_steps(saved.optimizer_steps);  // AdamW's bias-correction count
      // Staging: on the device now.
      std::vector<float>().swap(exp_avg_);
      std::vector<float>().swap(exp_avg_sq_);
    }
#endif
  } catch (const Error& e) {
    throw Error("cannot resume from " + checkpoint + ": " + e.what());
  }

  state_.global_step = saved.global_step;
  state_.optimizer_steps = saved.optimizer_steps;
  state_.micro_step = saved.micro_step;
  state_.data_epoch = saved.data_epoch;
  state_.data_index = saved.data_index;
  // Fewer or more ranks: rank 0 starts at a multiple of the new world size (skipping < R batches).
  const auto ranks = static_cast<uint64_t>(world());
  if (state_.data_index % ranks != 0) state_.data_index += ranks - state_.data_index % ranks;
  if (state_.data_index >= static_cast<uint64_t>(state_.batches_per_epoch)) {  // the data shrank
    state_.data_epoch += 1;
    state_.data_index = 0;
  }
  state_.epoch = saved.epoch;
  state_.elapsed_s = saved.elapsed_s;
  state_.window = saved.window;
  last_saved_step_ = saved.global_step;
}

void Trainer::print_run_table() const {
  const BertConfig& m = config_.model;
  const TrainingConfig& t = training();
  const int64_t batch = t.per_device_train_batch_size, accumulation = t.gradient_accumulation_steps;
  const int64_t sequences = batch * accumulation;
  const int64_t tokens = sequences * world() * seq_len_;
  const double flops =
      bert_training_flops(m, batch, seq_len_, mlm_rows_per_batch(batch)) * static_cast<double>(accumulation * world());
  const auto bpe = static_cast<int64_t>(loader_->batches_per_epoch());
  const double epochs = static_cast<double>(state_.total_steps * accumulation) / static_cast<double>(bpe);
  const char* padding = data().max_seq_length > 0 ? "fixed length" : "at most; each batch padded to its longest";

  out_ << "bert_train: " << config_.path << "\n";
  out_ << "  model        BertForPreTraining: " << m.num_hidden_layers << " layers, hidden " << m.hidden_size << ", "
       << m.num_attention_heads << " heads, intermediate " << m.intermediate_size << ", vocab " << m.vocab_size
       << ", max positions " << m.max_position_embeddings << ", " << m.hidden_act << ", dropout "
       << printf_string("%g/%g", m.hidden_dropout_prob, m.attention_probs_dropout_prob) << "\n";
  out_ << "  parameters   " << human_count(static_cast<double>(num_parameters())) << " ("
       << with_commas(num_parameters()) << ")\n";
  if (!weights_source_.empty()) out_ << "  weights      " << weights_source_ << "\n";
  out_ << "  batch        " << batch << " sequences x " << accumulation << " accumulation"
       << (world() > 1 ? " x " + std::to_string(world()) + " ranks" : std::string()) << " = " << sequences * world()
       << " sequences/step, " << seq_len_ << " tokens each (" << padding << ")\n";
  out_ << "  tokens/step  " << with_commas(tokens) << " (padded), MLM " << printf_string("%g", data().mlm_probability)
       << (data().whole_word_mask ? " whole-word" : "") << ", head on "
       << (data().mlm_masked_positions_only ? "masked positions only" : "every position") << "\n";
  out_ << "  FLOPs/step   " << human_flops(flops) << " (forward + backward, full-length batches)\n";
#if defined(BERT_TRAINER_CUDA)
  if (on_cuda()) {
    out_ << "  device       cuda: " << device_.name << " (sm_" << device_.sm_major << device_.sm_minor << ", "
         << human_bytes(static_cast<double>(device_.memory_bytes)) << ")"
         << (world() > 1 ? ", one on each of " + std::to_string(world()) + " ranks" : std::string()) << "\n";
    out_
        << "  precision    bf16 activations and working weights; fp32 master weights, gradients, AdamW moments, loss\n";
    const int64_t max_batch = max_batch_size();
    out_ << "  memory       "
         << human_bytes(static_cast<double>(cuda_model_->memory_plan(max_batch, seq_len_).total_bytes()))
         << " planned (parameters, moments, activations for " << max_batch << " x " << seq_len_ << ")\n";
    if (training().gemm_autotune > 1)
      out_ << "  GEMMs        cuBLASLt, up to " << training().gemm_autotune
           << " algorithms timed per GEMM shape class in the first steps, the fastest kept (a resume is not "
              "bit-exact)\n";
  } else
#endif
  {
    out_ << "  device       cpu, " << threads_ << " thread" << (threads_ == 1 ? "" : "s") << " (OpenMP + "
         << (openblas_set_num_threads ? "OpenBLAS" : "BLAS") << ")"
         << (world() > 1
                 ? " on each of " + std::to_string(world()) + " ranks, gradients summed by " + comm_.description()
                 : std::string())
         << (placement_.cpu_sharers > 1 ? "; " + std::to_string(placement_.cpu_sharers) + " ranks share this rank's " +
                                              std::to_string(omp_get_num_procs()) + " cores"
                                        : std::string())
         << "\n";
    out_ << "  precision    fp32 (parameters, activations, AdamW moments)\n";
  }
  out_ << "  data         train " << with_commas(static_cast<int64_t>(train_data_->size())) << " examples ("
       << with_commas(bpe) << " batches/epoch" << (world() > 1 ? " per rank" : "") << "), valid "
       << (valid_data_
               ? with_commas(static_cast<int64_t>(valid_data_->size())) + " examples, at most " +
                     std::to_string(std::min(kMaxEvalBatches, eval_loader_->batches_per_epoch())) +
                     (std::min(kMaxEvalBatches, eval_loader_->batches_per_epoch()) == 1 ? " batch" : " batches") +
                     " per evaluation" + (data().valid_data.empty() ? std::string() : ", from " + valid_description_)
               : std::string("none"))
       << "\n";
  out_ << "  steps        " << with_commas(state_.total_steps) << " total (" << printf_string("%.2f", epochs)
       << " epochs), warmup " << (schedule_ == LrSchedule::kConstant ? 0 : state_.warmup_steps) << ", lr "
       << printf_string("%g", t.learning_rate) << " " << lr_schedule_name(schedule_) << ", weight decay "
       << printf_string("%g", t.weight_decay) << ", max grad norm " << printf_string("%g", t.max_grad_norm) << "\n";
  out_ << "  every        log " << t.logging_steps << ", eval " << (valid_data_ ? std::to_string(t.eval_steps) : "-")
       << ", save " << t.save_steps << " steps (keep "
       << (t.save_total_limit > 0 ? std::to_string(t.save_total_limit) : "all") << "), seed " << t.seed << "\n";
  out_ << "  output       " << t.output_dir << "\n";
  if (state_.global_step > 0)
    out_ << "  resumed      at step " << state_.global_step << " (epoch " << printf_string("%.2f", state_.epoch)
         << ", data cursor " << state_.data_epoch << ":" << state_.data_index << ")\n";
  out_.flush();
}

double Trainer::learning_rate(int64_t step) const {
  return training().learning_rate * lr_factor(schedule_, step, state_.warmup_steps, state_.total_steps);
}

// The loader cursor after one micro-batch (batch_ holds it): the next batch index, wrapping to the
// next epoch. Both counters are in single-rank units (TrainerState): R per micro-batch.
void Trainer::advance_cursor() {
  const auto ranks = static_cast<uint64_t>(world());
  state_.micro_step += world();
  state_.data_epoch = batch_.epoch;
  state_.data_index = (batch_.index + 1) * ranks;
  if (state_.data_index >= static_cast<uint64_t>(state_.batches_per_epoch)) {
    state_.data_epoch += 1;
    state_.data_index = 0;
  }
}

cpu::AdamWHyperparams Trainer::adamw_hyperparams(double lr) const {
  cpu::AdamWHyperparams hyper;
  hyper.learning_rate = lr;
  hyper.beta1 = training().adam_beta1;
  hyper.beta2 = training().adam_beta2;
  hyper.epsilon = training().adam_epsilon;
  hyper.weight_decay = training().weight_decay;
  hyper.step = state_.optimizer_steps + 1;  // counted only when the update is applied
  return hyper;
}

// The update was applied (a finite norm) or skipped (the optimizer state is unchanged).
void Trainer::count_update(int64_t step, double norm, double step_loss) {
  if (std::isfinite(norm)) {
    ++state_.optimizer_steps;
  } else {
    ++skipped_steps_;
    err_ << "warning: step " << step << ": gradient norm is " << norm << "; skipping this update (loss " << step_loss
         << ")\n";
  }
  last_loss_ = step_loss;
  last_grad_norm_ = norm;
}

void Trainer::advance_step(double lr, Clock::time_point start) {
  ++state_.global_step;
  state_.epoch = static_cast<double>(state_.micro_step) / static_cast<double>(state_.batches_per_epoch);
  last_lr_ = lr;
  state_.window.train_seconds += seconds_since(start);
}

// Means over every labelled token / sequence of the evaluation set (not of per-batch means), summed
// over the ranks' shares (counts are exact in doubles up to 2^53).
EvalResult Trainer::summarize_eval(const std::vector<LossStats>& batches) {
  enum { kMlmSum, kNspSum, kMlmCorrect, kMlmCount, kNspCorrect, kNspCount, kBatches, kFields };
  std::array<double, kFields> sums{};
  for (const LossStats& stats : batches) {
    sums[kMlmSum] += stats.mlm_loss * static_cast<double>(stats.mlm_count);
    sums[kNspSum] += stats.nsp_loss * static_cast<double>(stats.nsp_count);
    sums[kMlmCorrect] += static_cast<double>(stats.mlm_correct);
    sums[kMlmCount] += static_cast<double>(stats.mlm_count);
    sums[kNspCorrect] += static_cast<double>(stats.nsp_correct);
    sums[kNspCount] += static_cast<double>(stats.nsp_count);
  }
  sums[kBatches] = static_cast<double>(batches.size());
  comm_.allreduce_sum(sums);
  const auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  EvalResult result;
  result.batches = static_cast<size_t>(sums[kBatches]);
  result.mlm_loss = ratio(sums[kMlmSum], sums[kMlmCount]);
  result.nsp_loss = ratio(sums[kNspSum], sums[kNspCount]);
  result.loss = result.mlm_loss + result.nsp_loss;
  result.mlm_acc = ratio(sums[kMlmCorrect], sums[kMlmCount]);
  result.nsp_acc = ratio(sums[kNspCorrect], sums[kNspCount]);
  return result;
}

// With R ranks, each runs its share of the step's micro-batches and the gradients (and the window's
// sums) are summed over the ranks before the norm, so every rank applies the same update.
void Trainer::train_step() {
  if (on_cuda()) return train_step_cuda();
  const Clock::time_point start = Clock::now();
  const int accumulation = training().gradient_accumulation_steps;
  const float loss_scale = 1.0f / static_cast<float>(accumulation * world());
  model_->zero_grads();
  LogWindow step;  // this rank's micro-batches
  for (int micro = 0; micro < accumulation; ++micro) {
    loader_->next(batch_);
    dump_batch(batch_);
    model_->set_dropout(state_.seed, static_cast<uint64_t>(state_.micro_step + comm_.rank()), true);
    LossStats stats;
    model_->forward_backward(batch_view(batch_), stats, true, loss_scale);
    advance_cursor();
    add_micro_batch(step, stats);
    step.tokens += static_cast<int64_t>(batch_.real_tokens());
  }
  if (world() > 1) {
    comm_.allreduce_sum(model_->grads());
    sum_over_ranks(step, comm_);
  }
  merge_window(state_.window, step);
  const double step_loss = step.loss_sum / static_cast<double>(step.micro_batches);

  const double norm = cpu::grad_norm<float>(*context_, grad_views_);
  const double lr = learning_rate(state_.global_step);
  if (std::isfinite(norm)) {
    cpu::AdamWHyperparams hyper = adamw_hyperparams(lr);
    hyper.grad_scale = training().max_grad_norm > 0 ? ops::clip_grad_coefficient(norm, training().max_grad_norm) : 1.0;
    cpu::adamw_step<float>(*context_, hyper, adam_tensors_);
  }
  count_update(state_.global_step + 1, norm, step_loss);
  // Weights an earlier update overflowed give non-finite gradients at every step from now on: stop
  // here, not at the next save (which could be hours away).
  if (!std::isfinite(norm)) check_finite_weights(model_->parameters(), state_.global_step + 1);
  advance_step(lr, start);
}

// Rank r of R evaluates batches r, r + R, ... of the single-rank evaluation set.
EvalResult Trainer::evaluate() {
  if (on_cuda()) return evaluate_cuda();
  model_->set_dropout(state_.seed, 0, false);
  const size_t total = std::min(kMaxEvalBatches, eval_loader_->batches_per_epoch());
  std::vector<LossStats> batches;
  for (size_t i = static_cast<size_t>(comm_.rank()); i < total; i += static_cast<size_t>(world())) {
    eval_loader_->make_batch(0, i, eval_batch_);
    model_->forward_backward(batch_view(eval_batch_), batches.emplace_back(), false);
  }
  return summarize_eval(batches);
}

// The CPU step on the CUDA model: the same batches, dropout streams, loss scale, clipping and AdamW
// step count. Nothing here waits for the device: whether the update is applied (a finite norm) and
// its bias-correction step are decided on the device, which counts the applied updates as the CPU
// trainer does. The host only stays within one micro-batch of the device (upload_batch waits for the
// previous batch's copy), and reads the outcome of the queued steps when it logs, evaluates or saves
// (settle_steps); a device error in a step also surfaces there (or at the next upload), not at once.
void Trainer::train_step_cuda() {
#if defined(BERT_TRAINER_CUDA)
  const Clock::time_point start = Clock::now();
  const int accumulation = training().gradient_accumulation_steps;
  cuda_model_->zero_grads();
  for (int micro = 0; micro < accumulation; ++micro) {
    loader_->next(batch_);
    dump_batch(batch_);
    cuda_model_->set_dropout(state_.seed, static_cast<uint64_t>(state_.micro_step + comm_.rank()), true);
    cuda_model_->upload_batch(batch_view(batch_));
    const float loss_scale = 1.0f / static_cast<float>(accumulation * world());
#if defined(BERT_TRAINER_NCCL)
    // The ranks' gradients summed on the devices as the last backward pass finishes them, before the
    // norm and the update.
    if (device_comm_ && micro + 1 == accumulation)
      cuda_model_->forward_backward_summed(loss_scale, gradient_sum_);
    else
#endif
      cuda_model_->forward_backward(loss_scale, true);
    advance_cursor();
    state_.window.tokens += static_cast<int64_t>(batch_.real_tokens());  // this rank's, until settle_steps
    unsettled_tokens_ += static_cast<int64_t>(batch_.real_tokens());
  }
  const double lr = learning_rate(state_.global_step);
  cuda_model_->optimizer_step(adamw_hyperparams(lr), static_cast<float>(training().max_grad_norm));
  unsettled_steps_.push_back(state_.global_step + 1);
  advance_step(lr, start);
#endif
}

void Trainer::settle_steps() {
#if defined(BERT_TRAINER_CUDA)
  if (!cuda_model_ || unsettled_steps_.empty()) return;
  const Clock::time_point start = Clock::now();
  const std::vector<float> norms = cuda_model_->take_grad_norms();  // the wait
  const std::vector<LossStats> losses = cuda_model_->take_loss_stats();
  const auto accumulation = static_cast<size_t>(training().gradient_accumulation_steps);
  if (norms.size() != unsettled_steps_.size() || losses.size() != unsettled_steps_.size() * accumulation)
    throw Error("internal: " + std::to_string(unsettled_steps_.size()) + " queued steps, but the device has " +
                std::to_string(norms.size()) + " gradient norms and " + std::to_string(losses.size()) + " losses");
  // This rank's micro-batches, and each step's loss sum; with several ranks, summed over them (every
  // rank settles the same steps: logging, evaluation and saving are at the same steps on all).
  LogWindow settled;
  std::vector<double> step_loss_sums(unsettled_steps_.size(), 0.0);
  for (size_t i = 0; i < unsettled_steps_.size(); ++i)
    for (size_t m = 0; m < accumulation; ++m) {
      add_micro_batch(settled, losses[i * accumulation + m]);
      step_loss_sums[i] += losses[i * accumulation + m].loss;
    }
  settled.tokens = unsettled_tokens_;
  if (world() > 1) {
    sum_over_ranks(settled, comm_);
    comm_.allreduce_sum(step_loss_sums);
  }
  settled.tokens -= unsettled_tokens_;  // this rank's were counted as its steps were queued
  merge_window(state_.window, settled);
  const double micro_batches_per_step = static_cast<double>(accumulation) * world();
  int64_t skipped_since_applied = 0;  // the first step skipped after the last applied one
  for (size_t i = 0; i < unsettled_steps_.size(); ++i) {
    count_update(unsettled_steps_[i], norms[i], step_loss_sums[i] / micro_batches_per_step);
    if (std::isfinite(norms[i]))
      skipped_since_applied = 0;
    else if (skipped_since_applied == 0)
      skipped_since_applied = unsettled_steps_[i];
  }
  // As train_step's check, once for the settled steps (the weights are those after all of them, copied
  // from the device): where the last ones were skipped, an overflow of the weights ends the run here.
  if (skipped_since_applied > 0) {
    std::vector<float> scratch;
    check_finite_weights(host_weights(scratch), skipped_since_applied);
  }
  unsettled_steps_.clear();
  unsettled_tokens_ = 0;
  state_.window.train_seconds += seconds_since(start);  // the queued steps' device time, as seen by the host
#endif
}

EvalResult Trainer::evaluate_cuda() {
#if defined(BERT_TRAINER_CUDA)
  settle_steps();  // their losses are taken first
  cuda_model_->set_dropout(state_.seed, 0, false);
  const size_t total = std::min(kMaxEvalBatches, eval_loader_->batches_per_epoch());
  for (size_t i = static_cast<size_t>(comm_.rank()); i < total; i += static_cast<size_t>(world())) {
    eval_loader_->make_batch(0, i, eval_batch_);
    cuda_model_->upload_batch(batch_view(eval_batch_));
    cuda_model_->forward_backward(1.0f, false);
  }
  return summarize_eval(cuda_model_->take_loss_stats());
#else
  return EvalResult{};
#endif
}

void Trainer::write_log_record(bool log_train, const std::optional<EvalResult>& eval) {
  const double elapsed = elapsed_at_start_ + seconds_since(session_start_);
  Json record = Json::object();
  record.set("step", state_.global_step);
  record.set("epoch", std::round(state_.epoch * 1e4) / 1e4);
  std::string line =
      printf_string("step %*lld/%lld", static_cast<int>(std::to_string(state_.total_steps).size()),
                    static_cast<long long>(state_.global_step), static_cast<long long>(state_.total_steps));
  line += printf_string(" | epoch %.2f", state_.epoch);
  if (log_train && state_.window.micro_batches > 0) {
    const LogWindow& w = state_.window;
    const auto n = static_cast<double>(w.micro_batches);
    const auto ratio = [](int64_t a, int64_t b) {
      return b > 0 ? static_cast<double>(a) / static_cast<double>(b) : 0.0;
    };
    const double tokens_per_s = w.train_seconds > 0 ? static_cast<double>(w.tokens) / w.train_seconds : 0.0;
    // mlm_loss over the micro-batches that had a masked token (none: null, and loss is the NSP loss).
    const bool has_mlm = w.mlm_batches > 0;
    const double mlm_loss = has_mlm ? w.mlm_loss_sum / static_cast<double>(w.mlm_batches) : 0.0;
    const double nsp_loss = w.nsp_loss_sum / n;
    const double loss = w.mlm_batches == w.micro_batches ? w.loss_sum / n : mlm_loss + nsp_loss;
    record.set("loss", loss);
    record.set("mlm_loss", has_mlm ? Json(mlm_loss) : Json());
    record.set("nsp_loss", nsp_loss);
    // (no masked token in the window: null, as its mlm_loss, not an accuracy of 0)
    record.set("mlm_acc", w.mlm_count > 0 ? Json(ratio(w.mlm_correct, w.mlm_count)) : Json());
    record.set("nsp_acc", ratio(w.nsp_correct, w.nsp_count));
    record.set("lr", last_lr_);
    record.set("grad_norm", std::isfinite(last_grad_norm_) ? Json(last_grad_norm_) : Json());
    record.set("tokens_per_s", std::round(tokens_per_s * 10) / 10);
    const double mfu = tokens_per_s * mfu_per_token_per_s();
    if (mfu > 0) record.set("mfu", std::round(mfu * 1e4) / 1e4);
    line +=
        printf_string(" | loss %.4f (mlm %s, nsp %.4f) | acc mlm %s nsp %.3f | lr %.3e | grad_norm %.3f | %s tok/s",
                      loss, has_mlm ? printf_string("%.4f", mlm_loss).c_str() : "-", nsp_loss,
                      w.mlm_count > 0 ? printf_string("%.3f", ratio(w.mlm_correct, w.mlm_count)).c_str() : "-",
                      ratio(w.nsp_correct, w.nsp_count), last_lr_, last_grad_norm_, human_count(tokens_per_s).c_str());
    if (mfu > 0) line += printf_string(" | MFU %.1f%%", 100 * mfu);
    state_.window = LogWindow{};
  }
  if (eval) {
    record.set("eval_loss", eval->loss);
    record.set("eval_mlm_loss", eval->mlm_loss);
    record.set("eval_nsp_loss", eval->nsp_loss);
    record.set("eval_mlm_acc", eval->mlm_acc);
    record.set("eval_nsp_acc", eval->nsp_acc);
    line += printf_string(" | eval loss %.4f (mlm %.4f, nsp %.4f) acc mlm %.3f nsp %.3f", eval->loss, eval->mlm_loss,
                          eval->nsp_loss, eval->mlm_acc, eval->nsp_acc);
  }
  record.set("elapsed_s", std::round(elapsed * 100) / 100);
  const int64_t session_steps = state_.global_step - session_first_step_;
  const double eta = session_steps > 0 ? seconds_since(session_start_) / static_cast<double>(session_steps) *
                                             static_cast<double>(state_.total_steps - state_.global_step)
                                       : NAN;
  line +=
      " | " + human_duration(elapsed) + (state_.global_step < state_.total_steps ? ", ETA " + human_duration(eta) : "");
  if (metrics_) metrics_->write(record);  // rank 0's
  out_ << line << "\n";
  out_.flush();
}

void Trainer::start_dump() {
  make_directories(*dump_dir_ + "/init");
  write_model_files(*dump_dir_ + "/init");
  const std::string path = *dump_dir_ + "/batches.bin";
  dump_.open(path, std::ios::binary | std::ios::trunc);
  if (!dump_) throw Error("bert_train: --dump-batches: cannot write " + path);
  dump_.write("BFBATCH1", 8);
  out_ << "dumping the initial weights to " << *dump_dir_ << "/init and every micro-batch to " << path << "\n";
}

// One record: int32 batch_size, seq_len, then int32 input_ids, token_type_ids, attention_mask, labels
// ([batch_size, seq_len] each, -100 = no MLM label) and nsp_labels [batch_size], little-endian.
void Trainer::dump_batch(const Batch& batch) {
  if (!dump_.is_open()) return;
  auto write = [&](const void* data, size_t bytes) {
    dump_.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  };
  const int32_t shape[2] = {batch.batch_size, batch.seq_len};
  write(shape, sizeof(shape));
  const size_t cells = static_cast<size_t>(batch.batch_size) * static_cast<size_t>(batch.seq_len);
  for (const std::vector<int32_t>* values :
       {&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, &batch.labels}) {
    if (values->size() != cells) throw Error("bert_train: --dump-batches: a batch without all of its arrays");
    write(values->data(), cells * sizeof(int32_t));
  }
  write(batch.nsp_labels.data(), static_cast<size_t>(batch.batch_size) * sizeof(int32_t));
  dump_.flush();
  if (!dump_) throw Error("bert_train: --dump-batches: writing " + *dump_dir_ + "/batches.bin failed (disk full?)");
}

bool Trainer::in_output_dir(const std::string& path) const {
  std::error_code ec;
  const fs::path resolved = fs::weakly_canonical(fs::absolute(path, ec), ec);
  return !ec && fs::equivalent(resolved.parent_path(), training().output_dir, ec);
}

// The run's last checkpoint is saved before the final model goes to output_dir (and the rotation
// runs after its rename): a run killed in between left output_dir without its final model, or with
// an older run's, and more checkpoints than save_total_limit. A resume with nothing left to train
// finishes that, when the checkpoint is output_dir's own (another run's output_dir is not touched).
void Trainer::finish_ended_run(const std::string& checkpoint) {
  const std::string& dir = training().output_dir;
  std::error_code ec;
  // Only output_dir's latest: an earlier one resumed with nothing to train (a smaller max_steps) is
  // not where the run ended.
  const std::optional<CheckpointInfo> latest = latest_checkpoint(dir);
  if (!in_output_dir(checkpoint) || !latest || !fs::equivalent(latest->path, checkpoint, ec)) return;
  for (const std::string& removed : rotate_checkpoints(dir, training().save_total_limit, latest->path))
    out_ << "removed " << removed << " (save_total_limit = " << training().save_total_limit
         << "; the run ended before its rotation)\n";
  const auto same_model = [&] {
    for (const char* name : {"model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json"})
      if (!file_exists(dir + "/" + name)) return false;
    try {
      const SafetensorsFile final_model(dir + "/model.safetensors"), saved_model(checkpoint + "/model.safetensors");
      const std::string* ours = final_model.metadata_value(kDataHashKey);
      const std::string* saved = saved_model.metadata_value(kDataHashKey);
      return ours && saved && *ours == *saved &&
             read_file(dir + "/config.json") == read_file(checkpoint + "/config.json");
    } catch (const Error&) {
      return false;
    }
  };
  if (same_model()) return;
  write_model_files(dir);
  out_ << "wrote the final model to " << dir << " from " << checkpoint
       << ": the run that saved it ended before it wrote its final model\n";
}

void Trainer::write_model_files(const std::string& dir) const {
#if defined(BERT_TRAINER_CUDA)
  if (cuda_model_)
    cuda_model_->save_safetensors(dir + "/model.safetensors");  // fp32 master weights: the CPU format
  else
#endif
    model_->save_safetensors(dir + "/model.safetensors");
  write_file_atomic(dir + "/config.json", config_.model.to_hf_json().dump(2) + "\n");
  // The model reads at most max_position_embeddings tokens: a tokenizer that truncates to more (the
  // default 512 beside a 128-position model) makes transformers' pipeline(..., truncation=True) fail
  // on a long text instead of cutting it.
  tokenizer_->save(dir, static_cast<size_t>(config_.model.max_position_embeddings));
}

std::string Trainer::save_checkpoint() {
  settle_steps();
#if defined(BERT_TRAINER_CUDA)
  // The device counted the updates it applied; the host counted the finite norms it read back.
  if (cuda_model_) {
    const int64_t device_steps = cuda_model_->read_optimizer_steps();
    if (device_steps != state_.optimizer_steps)
      throw Error("internal: the device applied " + std::to_string(device_steps) +
                  " AdamW updates, the trainer counted " + std::to_string(state_.optimizer_steps));
  }
#endif
  {
    std::vector<float> scratch;
    const std::span<const float> weights = host_weights(scratch);
    check_replicas("at the checkpoint", weights);
    check_finite_weights(weights);
  }
  state_.elapsed_s = elapsed_at_start_ + seconds_since(session_start_);
  last_saved_step_ = state_.global_step;
  std::string path;
  if (lead())  // rank 0 writes it (every rank holds the same state)
    path = save_checkpoint_dir(
        training().output_dir, state_.global_step, training().save_total_limit, [&](const std::string& dir) {
          write_model_files(dir);
          SafetensorsWriter optimizer;
          optimizer.add_data_hash();
          optimizer.set_metadata("global_step", std::to_string(state_.global_step));
          optimizer.set_metadata("optimizer", "AdamW");
#if defined(BERT_TRAINER_CUDA)
          if (cuda_model_) cuda_model_->download_moments(exp_avg_, exp_avg_sq_);
#endif
          for (const ParamInfo& info : params()) {
            optimizer.add_f32("exp_avg." + info.name, info.shape,
                              std::span<const float>(exp_avg_.data() + info.offset, info.numel));
            optimizer.add_f32("exp_avg_sq." + info.name, info.shape,
                              std::span<const float>(exp_avg_sq_.data() + info.offset, info.numel));
          }
          optimizer.write(dir + "/trainer_state.safetensors");
#if defined(BERT_TRAINER_CUDA)
          if (cuda_model_) {  // staging, written: free it until the next checkpoint
            std::vector<float>().swap(exp_avg_);
            std::vector<float>().swap(exp_avg_sq_);
          }
#endif
          write_file_atomic(dir + "/trainer_state.json", state_.to_json().dump(2) + "\n");
          write_file_atomic(dir + "/run_config.toml", config_text_);
        });
  // The other ranks learn that it is whole (rank 0 failing to write it ends the job instead), so that
  // whichever rank later reports a failure names it.
  if (world() > 1) path = comm_.broadcast_string(path, 0);
  set_latest_checkpoint(path);
  return path;
}

void Trainer::set_latest_checkpoint(const std::string& path) {
  latest_checkpoint_ = path;
  latest_checkpoint_step_ = state_.global_step;
  comm_.set_timeout_note(latest_checkpoint_note());
}

std::string Trainer::latest_checkpoint_note() const {
  if (latest_checkpoint_.empty()) return "";
  return "; latest checkpoint: step " + std::to_string(latest_checkpoint_step_) + " (" +
         resume_command(config_.path, latest_checkpoint_, world()) + " goes on from it)";
}

// Non-finite gradients skip their update, but a finite update can still overflow the weights (an
// absurd learning rate): such weights are not saved over the last good checkpoint. Every rank checks
// (they hold the same weights), so all stop alike.
void Trainer::check_finite_weights(std::span<const float> weights, int64_t skipped_step) const {
  const auto bad = std::find_if(weights.begin(), weights.end(), [](float v) { return !std::isfinite(v); });
  if (bad == weights.end()) return;
  const auto offset = static_cast<size_t>(bad - weights.begin());
  std::string name = "?";
  for (const ParamInfo& info : params())
    if (offset >= info.offset && offset < info.offset + info.numel) name = info.name;
  const int64_t count = std::count_if(bad, weights.end(), [](float v) { return !std::isfinite(v); });
  const std::string weights_text = std::to_string(count) + " non-finite weight(s) (the first in " + name + ": " +
                                   printf_string("%g", static_cast<double>(*bad)) + ")";
  const std::string cause =
      config_.path + " [training] learning_rate = " + printf_string("%g", training().learning_rate) + " too large?";
  const std::string last_good = last_saved_step_ > 0
                                    ? "checkpoint-" + std::to_string(last_saved_step_) + " is the last good one"
                                    : std::string("no checkpoint was written");
  if (skipped_step > 0)
    throw Error("step " + std::to_string(skipped_step) + ": its gradients are not finite because the model holds " +
                weights_text + ": an earlier update overflowed (" + cause +
                "), and no later update can be applied; stopped, " + last_good);
  throw Error("step " + std::to_string(state_.global_step) + " left " + weights_text + ": an update overflowed (" +
              cause + "); not saved, " + last_good);
}

std::span<const float> Trainer::host_weights(std::vector<float>& scratch) const {
#if defined(BERT_TRAINER_CUDA)
  if (cuda_model_) {
    scratch = cuda_model_->download_parameters();
    return scratch;
  }
#endif
  (void)scratch;
  return model_->parameters();
}

void Trainer::check_replicas(const char* when, std::span<const float> weights) {
  if (world() == 1) return;
  if (!comm_.all_equal(hash64(weights.data(), weights.size_bytes())))
    throw Error("internal: the " + std::to_string(world()) + " ranks' weights differ " + when + " (step " +
                std::to_string(state_.global_step) + "): the replicas went apart; the last checkpoint is intact");
}

void Trainer::update_progress(Progress& progress) const {
  if (!progress.enabled()) return;
  const int64_t done = state_.global_step - session_first_step_;
  const double seconds = seconds_since(session_start_);
  const double eta =
      done > 0 ? seconds / static_cast<double>(done) * static_cast<double>(state_.total_steps - state_.global_step)
               : NAN;
  const double tokens_per_s =
      state_.window.train_seconds > 0 ? static_cast<double>(state_.window.tokens) / state_.window.train_seconds : 0;
  const int width = 24;
  const auto filled = static_cast<int>(width * state_.global_step / std::max<int64_t>(1, state_.total_steps));
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(width - filled), '.');
  progress.update(printf_string(
      "[%s] %lld/%lld | loss %.4f | lr %.2e | %s tok/s | ETA %s", bar.c_str(),
      static_cast<long long>(state_.global_step), static_cast<long long>(state_.total_steps), last_loss_, last_lr_,
      state_.window.tokens > 0 ? human_count(tokens_per_s).c_str() : "-", human_duration(eta).c_str()));
}

void Trainer::prepare() {
  for (const std::string& warning : config_.warnings) err_ << "warning: " << warning << "\n";
  comm_.set_timeout(training().ddp_timeout, "ddp_timeout");  // a frozen rank ends the job, not hangs it
  if (world() > 1 && dump_dir_)
    throw Error("bert_train: --dump-batches records one process's batches; run it without mpirun (" +
                std::to_string(world()) + " ranks here)");
  if (on_cuda()) check_cuda_device();
  config_text_ = read_file(config_.path);
  setup_threads();
  check_output_dir();
}

bool Trainer::setup() {
  const std::optional<std::string> checkpoint = resume_ ? std::optional(resolve_resume_dir()) : std::nullopt;
  // model_name_or_path's directory is gone: the checkpoint has the weights, and its shape.
  if (checkpoint && config_.pretrained_config_missing) {
    const BertConfig written = config_.model;  // the keys that override model_name_or_path's still do
    config_.model = TrainerState::load(*checkpoint + "/trainer_state.json").model;
    for (const auto& [key, value] : {std::pair{"hidden_dropout_prob", &BertConfig::hidden_dropout_prob},
                                     {"attention_probs_dropout_prob", &BertConfig::attention_probs_dropout_prob},
                                     {"initializer_range", &BertConfig::initializer_range}})
      if (config_.lines.count(std::string("model.") + key)) config_.model.*value = written.*value;
    if (lead())
      err_ << "note: " << config_.where("model", "model_name_or_path") << " '" << config_.model_name_or_path
           << "' has no config.json any more; resuming with the model " << *checkpoint << " was trained with\n";
  }
  load_tokenizer_and_data();
  if (on_cuda()) check_cuda_model();
  else check_cpu_memory();
  try {
    build_model(checkpoint.has_value());
  } catch (const std::bad_alloc&) {  // the estimate above is a lower bound
    throw Error(config_.path + ": [model] out of memory allocating the model and its buffers for a batch of " +
                std::to_string(max_batch_size()) + " x " + std::to_string(seq_len_) + " tokens");
  } catch (const std::length_error&) {
    throw Error(config_.path + ": [model] the model and its buffers for a batch of " +
                std::to_string(max_batch_size()) + " x " + std::to_string(seq_len_) +
                " tokens are too large to allocate");
  }
  // A resumed run's weights are its checkpoint's.
  if (!checkpoint && !config_.model_name_or_path.empty()) load_pretrained();
  schedule_ = parse_lr_schedule(training().lr_scheduler_type);

  state_.batches_per_epoch = static_cast<int64_t>(loader_->batches_per_epoch()) * world();
  try {
    state_.total_steps = total_train_steps(training(), loader_->batches_per_epoch());
  } catch (const Error& e) {
    throw Error(config_.path + ": " + e.what());
  }
  state_.warmup_steps = training().warmup_steps_for(state_.total_steps);
  if (schedule_ == LrSchedule::kConstant && state_.warmup_steps > 0 && lead()) {
    const char* key = config_.lines.count("training.warmup_steps") ? "warmup_steps" : "warmup_ratio";
    err_ << "warning: " << config_.where("training", key) << " (a warm-up of " << state_.warmup_steps
         << " steps) is ignored by lr_scheduler_type = \"constant\" (as in HF); \"constant_with_warmup\" warms up\n";
  } else if (state_.warmup_steps > state_.total_steps && lead())
    err_ << "warning: " << config_.where("training", "warmup_steps") << " = " << state_.warmup_steps
         << " is more than the " << state_.total_steps
         << " steps of the run: the learning rate never reaches learning_rate (HF accepts "
         << "this too)\n";
  state_.seed = training().seed;
  state_.config_path = config_.path;
  state_.config_hash = hex64(hash64(config_text_.data(), config_text_.size()));
  state_.per_device_train_batch_size = training().per_device_train_batch_size;
  state_.gradient_accumulation_steps = training().gradient_accumulation_steps;
  state_.world_size = world();
  state_.train_data_fingerprint = hex64(train_data_->fingerprint());
  state_.model = config_.model;
  if (checkpoint) restore(*checkpoint);
  // CPU AdamW tensors (the CUDA model keeps its own list on the device).
  for (const ParamInfo& info :
       model_ ? model_->params() : std::span<const ParamInfo>{}) {  // after restore: loading replaces the arena
    cpu::AdamWTensor<float> tensor;
    tensor.param = model_->parameters().data() + info.offset;
    tensor.grad = model_->grads().data() + info.offset;
    tensor.exp_avg = exp_avg_.data() + info.offset;
    tensor.exp_avg_sq = exp_avg_sq_.data() + info.offset;
    tensor.numel = static_cast<int64_t>(info.numel);
    tensor.apply_weight_decay = info.apply_weight_decay;
    adam_tensors_.push_back(tensor);
    grad_views_.push_back({tensor.grad, tensor.numel});
  }

  print_run_table();
  if (checkpoint) out_ << "resuming from " << *checkpoint << "\n";
  resumed_ = checkpoint.has_value();
  if (checkpoint) set_latest_checkpoint(*checkpoint);  // every rank: any of them may be the one to report
  if (state_.global_step >= state_.total_steps) {
    out_ << "nothing to do: " << (checkpoint ? *checkpoint : training().output_dir) << " is at step "
         << state_.global_step << " of " << state_.total_steps
         << "; raise max_steps or num_train_epochs in the config to train further\n";
    if (checkpoint && lead()) finish_ended_run(*checkpoint);
    return false;
  }
  if (checkpoint && lead())
    for (const std::string& name : set_aside_checkpoints_after(training().output_dir, state_.global_step))
      out_ << "set aside " << name << ": a later checkpoint than step " << state_.global_step
           << ", of the run this one branches off (kept, but no longer taken for this run's by the rotation or a "
              "bare --resume)\n";
  return true;
}

void Trainer::connect_ranks() {
#if defined(BERT_TRAINER_NCCL)
  if (world() == 1 || !cuda_model_) return;
  const std::vector<uint64_t> gpus = comm_.allgather(hash64(device_.uuid.data(), device_.uuid.size()));
  for (size_t a = 0; a < gpus.size(); ++a)
    for (size_t b = a + 1; b < gpus.size(); ++b)
      if (gpus[a] == gpus[b])
        throw Error(config_.where("training", "device") + " = \"cuda\": ranks " + std::to_string(a) + " and " +
                    std::to_string(b) + " would share one GPU (" + device_.name +
                    "): data parallelism runs one rank per GPU; start at most as many ranks per host as it has "
                    "GPUs, or give each rank its own CUDA_VISIBLE_DEVICES");
  device_comm_ = make_nccl_communicator(comm_);
  DeviceCommunicator* summing = device_comm_.get();
  gradient_sum_.sum = [summing](float* data, size_t count, cudaStream_t stream) {
    summing->allreduce_sum(data, count, stream);
  };
  gradient_sum_.bucket_elements = (size_t{1} << 20) / sizeof(float) * static_cast<size_t>(training().ddp_bucket_cap_mb);
  // The host's waits for the device poll: a sum waiting for a rank that stopped would otherwise hang
  // this rank for ever in a blocking wait. The error ends the job (train_main: every rank).
  const int timeout = training().ddp_timeout;
  cuda_model_->set_wait_watch([summing, timeout](double waited) {
    if (const std::string error = summing->async_error(); !error.empty())
      throw Error("NCCL: " + error + " (reported while this rank waited for its GPU; NCCL_DEBUG=WARN says more)");
    if (waited > timeout)
      throw Error("this rank's GPU is still busy after " + std::to_string(timeout) +
                  " s (ddp_timeout): its gradient sums wait for a rank that stopped or cannot be reached "
                  "(NCCL_DEBUG=WARN says more)");
  });
  out_ << "gradients summed over " << world() << " GPUs by " << device_comm_->description() << ", in buckets of "
       << (training().ddp_bucket_cap_mb == 0 ? std::string("one layer")
                                             : std::to_string(training().ddp_bucket_cap_mb) + " MiB")
       << " during the backward pass\n";
#endif
}

// NCCL 2.22 and later (NCCL_RUNTIME_CONNECT, on by default) connect the ranks and allocate their
// buffers at a communicator's first collectives of each kind, after check_cuda_model's memory check
// (older ones in ncclCommInitRank, in connect_ranks): one sum of the (zero) gradients in the buckets
// of a step, before the first step, so that NCCL running out of device memory is an error before
// training that gives the memory figures, not a failure inside the first backward pass; then the
// memory in use is said.
// Runs inside train(): a failure here ends every rank at once (train_main aborts the job), where in
// connect_ranks the other ranks would wait in their sums until ddp_timeout.
void Trainer::warm_up_gradient_sums() {
#if defined(BERT_TRAINER_NCCL)
  if (world() == 1 || !cuda_model_) return;
  const auto memory = [this]() -> std::string {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
      cudaGetLastError();
      return "";
    }
    return human_bytes(static_cast<double>(total_bytes - free_bytes)) + " of " + device_.name + "'s " +
           human_bytes(static_cast<double>(total_bytes)) + " in use, the model's arenas " +
           human_bytes(static_cast<double>(cuda_model_->allocated().total_bytes()));
  };
  const auto start = Clock::now();
  try {
    cuda_model_->zero_grads();
    cuda_model_->sum_gradients(gradient_sum_);
  } catch (const std::exception& e) {
    const std::string in_use = memory();
    throw Error(std::string("the first sum of the gradients over the ranks (before training: NCCL sets up its "
                            "buffers in it) failed: ") +
                e.what() + (in_use.empty() ? std::string() : "; device memory: " + in_use) +
                "; if NCCL ran out of device memory, lower per_device_train_batch_size or shrink NCCL's buffers "
                "(NCCL_BUFFSIZE, NCCL_NVLS_ENABLE=0)" +
                latest_checkpoint_note());
  }
  const std::string in_use = memory();
  out_ << "first gradient sum over the ranks: " << printf_string("%.2f", seconds_since(start)) << " s"
       << (in_use.empty() ? std::string() : "; device memory after it: " + in_use) << "\n";
#endif
}

int Trainer::train() {
  if (world() > 1) {
    std::vector<float> scratch;
    check_replicas("at the start", host_weights(scratch));
    warm_up_gradient_sums();
  }
  if (lead()) {
    try {
      make_directories(training().output_dir);
    } catch (const Error& e) {
      throw Error(config_.where("training", "output_dir") + ": " + e.what());
    }
    if (!output_lock_) lock_output_dir();
    if (dump_dir_) start_dump();
    metrics_ =
        std::make_unique<MetricsLog>(training().output_dir + "/metrics.jsonl", resumed_ ? state_.global_step : -1);
    if (const std::vector<size_t>& dropped = metrics_->dropped_lines(); !dropped.empty()) {
      err_ << "warning: " << training().output_dir << "/metrics.jsonl: dropped " << dropped.size() << " unreadable line"
           << (dropped.size() == 1 ? "" : "s") << " while resuming (line";
      for (size_t i = 0; i < dropped.size() && i < 5; ++i) err_ << (i ? ", " : " ") << dropped[i];
      err_ << (dropped.size() > 5 ? ", ...)" : ")") << "; the loss curve has a gap there\n";
    }
  }

  StopSignalGuard signals;
  session_start_ = Clock::now();
  session_first_step_ = state_.global_step;
  elapsed_at_start_ = state_.elapsed_s;
  Progress progress(lead());
  loader_->start(state_.data_epoch, static_cast<size_t>(state_.data_index) / static_cast<size_t>(world()));
  bool stopped = false;
  try {
    while (state_.global_step < state_.total_steps) {
      train_step();
      if (hooks_.after_step) hooks_.after_step(state_.global_step);
      const int64_t step = state_.global_step;
      const bool last = step == state_.total_steps;
      // A stop at the last step is just the end. Any rank's signal stops every rank after this step.
      stopped = comm_.any(training_stop_requested()) && !last;
      const bool log_due = step % training().logging_steps == 0 || last;
      const bool eval_due = eval_loader_ && (step % training().eval_steps == 0 || last);
      const bool save_due = step % training().save_steps == 0 || last || stopped;
      if (log_due || eval_due || save_due) settle_steps();  // CUDA: the one wait since the last log
      if (log_due || eval_due) {
        progress.finish();
        std::optional<EvalResult> eval;
        if (eval_due) eval = evaluate();
        write_log_record(log_due, eval);
      }
      if (save_due) {
        progress.finish();
        const std::string path = save_checkpoint();
        out_ << "saved " << path << "\n";
        out_.flush();
      }
      if (stopped) break;
      update_progress(progress);
    }
  } catch (const std::exception& e) {
    // A failure mid-run (a CUDA fault, a full disk, an NCCL error): the checkpoints written so far are
    // whole (each written atomically); name the latest and the command that goes on from it.
    if (latest_checkpoint_.empty()) throw;
    throw Error(e.what() + latest_checkpoint_note());
  }
  progress.finish();
  comm_.set_timeout_note("");  // a wait from here on (MPI_Finalize's) has nothing to resume
  const double session_seconds = seconds_since(session_start_);
  const int64_t session_steps = state_.global_step - session_first_step_;
  if (stopped) {
    out_ << "stopped at step " << state_.global_step << " of " << state_.total_steps << "; resume with:\n  "
         << resume_command(config_.path, training().output_dir + "/checkpoint-" + std::to_string(state_.global_step),
                           world())
         << "\n";
    out_.flush();
    return stopped_run_exit_code();
  }
  // The final model also goes to output_dir itself (HF's trainer.save_model()), loadable as is.
  if (lead()) write_model_files(training().output_dir);
  out_ << "done: " << state_.global_step << " steps (" << session_steps << " this run) in "
       << human_duration(session_seconds) << ", "
       << printf_string("%.2f", session_steps > 0 ? session_seconds / static_cast<double>(session_steps) : 0.0)
       << " s/step; last step loss " << printf_string("%.4f", last_loss_);
  if (skipped_steps_ > 0) out_ << "; " << skipped_steps_ << " update(s) skipped (non-finite gradients)";
  out_ << "\n  model: " << training().output_dir << " (and checkpoint-" << state_.global_step
       << "), metrics: " << training().output_dir << "/metrics.jsonl, peak RSS "
       << human_bytes(static_cast<double>(peak_rss_bytes())) << "\n";
  out_ << "  plot: " << shell_quote(g_program) << " plot " << shell_quote(training().output_dir + "/metrics.jsonl")
       << " --out " << shell_quote(training().output_dir + "/loss.svg") << "\n";
  // Saved as any run is, but a run whose every update was skipped changed nothing: a failure for
  // whatever comes next in the user's pipeline.
  if (session_steps > 0 && skipped_steps_ == session_steps) {
    out_.flush();
    err_ << "error: all " << session_steps << " update(s) of this run were skipped (non-finite gradients), "
         << "so the weights did not change; check [model] initializer_range and [training] learning_rate in "
         << config_.path << "\n";
    return 1;
  }
  // Updates were skipped and the loss ends non-finite: the weights diverged (finite but so large
  // that the forward pass overflows), and the model saved is of no use.
  if (!std::isfinite(last_loss_)) {
    out_.flush();
    err_ << "error: the last step's loss is " << last_loss_ << " (" << skipped_steps_ << " of " << session_steps
         << " update(s) of this run skipped): the weights diverged; lower [training] learning_rate in " << config_.path
         << " (the checkpoint is saved for inspection)\n";
    return 1;
  }
  return 0;
}

int plot_main(const std::vector<std::string>& args, std::ostream& out) {
  Args parser("bert_train plot", "bert_train plot OUTPUT_DIR/metrics.jsonl [--out loss.svg]");
  parser.option("--out", "SVG file to write (default: loss.svg next to the metrics file)");
  if (!parser.parse(args)) {
    out << parser.help();
    return 0;
  }
  if (parser.positional().size() != 1) throw Error("bert_train plot: expected one metrics.jsonl path (see --help)");
  const std::string& metrics = parser.positional()[0];
  const fs::path parent = fs::path(metrics).parent_path();
  const std::string svg =
      parser.maybe("--out").value_or((parent.empty() ? fs::path("loss.svg") : parent / "loss.svg").string());
  plot_metrics_svg(metrics, svg);
  out << "wrote " << svg << "\n";
  return 0;
}

}  // namespace

int train_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  return train_main(args, out, err, TrainHooks{});
}

int train_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err, const TrainHooks& hooks) {
  if (!args.empty() && args[0] == "plot") return plot_main(std::vector<std::string>(args.begin() + 1, args.end()), out);
  // "--resume" takes an optional value: a bare one means "the latest checkpoint".
  // An empty value ("--resume \"$CKPT\"" with CKPT unset) is an error, not a bare --resume.
  std::vector<std::string> normalized;
  bool empty_resume = false;
  for (size_t i = 0; i < args.size(); ++i) {
    empty_resume =
        empty_resume || args[i] == "--resume=" || (args[i] == "--resume" && i + 1 < args.size() && args[i + 1].empty());
    if (args[i] == "--resume" && (i + 1 == args.size() || args[i + 1].rfind("--", 0) == 0))
      normalized.push_back("--resume=");
    else
      normalized.push_back(args[i]);
  }
  Args parser("bert_train",
              "bert_train --config run.toml [--resume [CHECKPOINT_DIR]] [--dump-batches DIR]\n"
              "       bert_train plot OUTPUT_DIR/metrics.jsonl [--out loss.svg]\n"
              "Ctrl-C, SIGTERM, SIGUSR1 or SIGHUP: finish the step, save a checkpoint, print the resume command and\n"
              "exit with 128 + the signal's number (130, 143, 138, 129); a second one exits at once without saving.");
  parser.option("--config", "the run config (TOML: [model], [data], [training])")
      .option("--resume", "continue from CHECKPOINT_DIR (bare --resume: the latest checkpoint in output_dir)")
      .option("--dump-batches",
              "also write the starting weights (DIR/init) and every micro-batch trained on (DIR/batches.bin), "
              "to replay the run elsewhere");
  // Under an MPI launcher every rank parses the same arguments: the help, or an error in them, is
  // said by rank 0 alone (before MPI starts), and every rank exits as it does.
  const bool speaks = launcher_world_rank().value_or(0) == 0;
  bool help = false;
  try {
    help = !parser.parse(normalized);
    if (!help && empty_resume)
      throw Error(
          "bert_train: --resume was given an empty value; pass a checkpoint directory, or --resume alone "
          "for the latest checkpoint in output_dir");
    if (!help && !parser.positional().empty())
      throw Error("bert_train: unexpected argument '" + parser.positional()[0] + "' (see --help)");
    if (!help && !parser.has("--config")) throw Error("bert_train: --config run.toml is required (see --help)");
  } catch (const std::exception&) {
    if (speaks) throw;
    return 1;
  }
  if (help) {
    if (speaks) out << parser.help();
    return 0;
  }

  // Several ranks (mpirun): rank 0 speaks and writes; a failure before training is reported once (by
  // rank 0 when it failed too, as every rank usually fails alike) and every rank exits 1; a failure
  // during training ends the whole job (the other ranks would wait for it forever).
  const std::unique_ptr<Communicator> comm = make_communicator();
  const bool lead = comm->rank() == 0;
  const RankPlacement placement = comm->size() > 1 ? place_ranks(*comm) : RankPlacement{};
  std::ostream discarded(nullptr);  // no buffer: every write is dropped
  std::ostream& rank_out = lead ? out : discarded;
  std::ostream& rank_err = lead ? err : discarded;
  // Runs `phase` on every rank. With several ranks every rank learns whether all succeeded, and a
  // failure is said once (by rank 0 when it failed too, as every rank usually fails alike) before any
  // rank returns false (mpirun kills the ranks still running once one exits non-zero).
  const auto all_succeed = [&](const std::function<void()>& phase) {
    std::string failure;
    try {
      phase();
    } catch (const std::exception& e) {
      if (comm->size() == 1) throw;
      failure = e.what();
    }
    if (comm->size() == 1) return true;
    std::array<double, 2> outcome = {failure.empty() ? 0.0 : 1.0, lead && !failure.empty() ? 1.0 : 0.0};
    comm->allreduce_sum(outcome);
    if (outcome[0] == 0) return true;
    if (!failure.empty() && (lead || outcome[1] == 0)) {
      err << "error: " +
                 (lead ? failure
                       : "rank " + std::to_string(comm->rank()) + " of " + std::to_string(comm->size()) + ": " +
                             failure) +
                 "\n";
      err.flush();
    }
    comm->any(false);  // every rank waits until the message is out
    return false;
  };
  std::optional<Trainer> trainer;
  bool ready = false;
  if (!all_succeed([&] {
        trainer.emplace(load_run_config(parser.str("--config"), parser.maybe("--resume").has_value()),
                        parser.maybe("--resume"), parser.maybe("--dump-batches"), rank_out, rank_err, hooks, *comm,
                        placement);
        trainer->prepare();
      }))
    return 1;
  // (all_succeed is a collective: every rank lists the checkpoints after rank 0 has recovered them)
  if (!all_succeed([&] { ready = trainer->setup(); })) return 1;
  if (comm->size() > 1 && !comm->all_equal(ready ? 1 : 0))
    throw Error("internal: the ranks disagree on whether there is anything to train");
  if (!ready) return 0;
  if (!all_succeed([&] { trainer->clear_output_dir(); })) return 1;
  if (!all_succeed([&] { trainer->connect_ranks(); })) return 1;
  try {
    return trainer->train();
  } catch (const std::exception& e) {
    if (comm->size() == 1) throw;
    // One write, so that two ranks' lines do not interleave.
    err << "error: rank " + std::to_string(comm->rank()) + " of " + std::to_string(comm->size()) + ": " + e.what() +
               "\n";
    err.flush();
    comm->abort(1);
  }
  return 1;  // (abort does not return)
}

void reexec_with_thread_settings(char** argv) {
  constexpr const char* kMarker = "BERT_TRAIN_THREAD_SETTINGS";
  if (std::getenv(kMarker) != nullptr) return;
  bool changed = false;
  // Threads that wait passively leave the core to whoever runs next: OpenMP regions and OpenBLAS
  // GEMMs alternate within every layer (with the pthread OpenBLAS, two pools; measured faster with
  // the OpenMP build too, bench/RESULTS.md). OPENBLAS_THREAD_TIMEOUT is the pthread build's.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) changed |= ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0;
  if (std::getenv("OPENBLAS_THREAD_TIMEOUT") == nullptr) changed |= ::setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1) == 0;
  if (!changed) return;
  ::setenv(kMarker, "1", 1);
  // The resolved path, not /proc/self/exe itself: the process keeps its name ("bert_train" in ps/top).
  std::error_code ec;
  const std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  if (!ec) ::execv(self.c_str(), argv);
  // No /proc, or execv failed: carry on with the settings as they were.
}

}  // namespace bert
