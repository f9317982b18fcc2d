// `bert_train`: the pre-training loop on the CPU (fp32), Hugging Face Trainer semantics.
//
//   bert_train --config run.toml [--resume [CHECKPOINT_DIR]]     train (resume: default the latest checkpoint)
//   mpirun -np N bert_train --config run.toml ...                 data parallel: N ranks (CPU)
//   bert_train plot OUTPUT_DIR/metrics.jsonl [--out loss.svg]     draw the loss curves
//
// One optimizer step = gradient_accumulation_steps micro-batches of per_device_train_batch_size
// sequences on each of the R data-parallel ranks (1 without mpirun; engine/communicator.h), each
// forward_backward'ed with loss_scale 1/(accumulation x R) (HF), the gradients summed over the ranks,
// then the global gradient norm (clipped to max_grad_norm; a non-finite norm skips the update), then
// AdamW (decay flags from params()) at base_lr * lr_factor(step). Logging, evaluation and checkpoints
// every logging_steps, eval_steps and save_steps optimizer steps. With R > 1, rank 0 alone prints and
// writes files; evaluation shares the single-rank batches out among the ranks.
//
// Exact resume: everything a step depends on is a pure function of state saved in the checkpoint:
// batches of (seed, epoch, index), masks of (seed, epoch, example), dropout of (seed, micro step),
// AdamW moments and step count, the LR schedule of the step, and the running sums of the logging
// window. So a run stopped at step k and resumed logs the same losses, bit for bit, as one that was
// never stopped (CPU, same thread count).
//
// Checkpoint dir (engine/checkpoint_dir.h writes it atomically and rotates it):
//   model.safetensors, config.json, vocab.txt, tokenizer_config.json, special_tokens_map.json
//       -> transformers' BertForPreTraining / BertTokenizerFast.from_pretrained(dir)
//   trainer_state.safetensors   AdamW moments: "exp_avg.<HF name>", "exp_avg_sq.<HF name>" (F32)
//   trainer_state.json          TrainerState below
//   run_config.toml             the run config it was trained with (a copy, for the record)
//
// Napkin math: a step costs model.training_flops() (~6 * parameters * tokens + attention); one
// AVX2 core sustains ~50-100 GFLOP/s in sgemm, so on 2 cores a 4-layer, hidden-256 model with
// 32 x 128-token batches (~30 GFLOP/step with the sparse MLM head) runs ~1 step/s.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "common/json.h"
#include "engine/config.h"

namespace bert {

// Running sums since the last logged step (restored on resume, so the first record after a resume
// equals the uninterrupted run's).
struct LogWindow {
  int64_t micro_batches = 0;
  // Micro-batches with at least one masked token: mlm_loss_sum's divisor. One without has no MLM loss (HF's
  // would be NaN and its Trainer would log around it); counting it as 0 would pull the logged loss down.
  int64_t mlm_batches = 0;
  double loss_sum = 0, mlm_loss_sum = 0, nsp_loss_sum = 0;  // of per-micro-batch means
  int64_t mlm_correct = 0, mlm_count = 0, nsp_correct = 0, nsp_count = 0;
  int64_t tokens = 0;  // real (unpadded) tokens
  double train_seconds = 0;
};

// trainer_state.json: where a run is and what it was started with.
struct TrainerState {
  int64_t global_step = 0;      // optimizer steps done, skipped ones included
  int64_t optimizer_steps = 0;  // AdamW updates applied: the bias-correction step count
  // Counted in single-rank units, so they mean the same for any number of ranks: with R ranks, rank r's
  // micro-batch is batch data_index + r of the epoch (data/loader.h) with dropout stream micro_step + r,
  // and both advance by R per micro-batch.
  int64_t micro_step = 0;   // micro-batches consumed: the dropout stream index of the next one
  uint64_t data_epoch = 0;  // loader cursor of the next micro-batch
  uint64_t data_index = 0;
  double epoch = 0;  // fractional epochs done, for logs
  int64_t total_steps = 0;
  int64_t warmup_steps = 0;
  uint64_t seed = 0;
  double elapsed_s = 0;  // training wall time so far, across resumes
  std::string config_path;
  std::string config_hash;        // hash64 of the run config's text, hex
  int64_t batches_per_epoch = 0;  // single-rank batches: R x each rank's
  int per_device_train_batch_size = 0;
  int gradient_accumulation_steps = 0;
  int world_size = 1;  // data-parallel ranks (engine/communicator.h); absent in older states: 1
  std::string train_data_fingerprint;  // Dataset::fingerprint of the training shards, hex; absent in older states
  BertConfig model;    // vocab_size resolved
  LogWindow window;

  Json to_json() const;
  // Errors name `path` and the field.
  static TrainerState from_json(const Json& json, const std::string& path);
  static TrainerState load(const std::string& path);
};

// HF TrainingArguments: max_steps when > 0, else ceil(num_train_epochs * batches_per_epoch /
// gradient_accumulation_steps) (at least 1).
int64_t total_train_steps(const TrainingConfig& training, size_t batches_per_epoch);

// The program as the user ran it (main's argv[0]: "build/bert_train"), so that the commands printed
// (resume, plot) run as they are; "bert_train" until set.
void set_program_path(const std::string& argv0);
const std::string& program_path();

// "bert_train --config CONFIG --resume CHECKPOINT", shell-quoted where needed; for a run of several
// ranks, under "mpirun -np RANKS" (another launcher, or another rank count, resumes it as well).
std::string resume_command(const std::string& config_path, const std::string& checkpoint_dir, int ranks = 1);

// What the SIGINT/SIGTERM/SIGUSR1 handler does on the first signal: the running loop finishes its
// current optimizer step, saves a checkpoint, prints the resume command and returns
// stopped_run_exit_code() (with several ranks: all of them, after the same step, when any one is
// signalled). A second signal exits at once, with 128 + its number. train_main clears the request when
// it starts.
void request_training_stop();
bool training_stop_requested();
// 128 + the number of the signal that stopped the run (130 for Ctrl-C, 143 for SIGTERM, 138 for
// SIGUSR1; 130 when the stop was requested without one): non-zero, as the run did not finish (a
// `bert_train ... && next` chain or a scheduler's afterok dependency must not go on with an unfinished
// model), and the shell's code for a program ended by that signal. A stop at the last step is no stop.
int stopped_run_exit_code();

// Test seams.
struct TrainHooks {
  // After every optimizer step (before its logging/eval/save), with the step number just done.
  std::function<void(int64_t global_step)> after_step;
};

// The whole program; returns the exit code. User errors are thrown as bert::Error (one line).
int train_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int train_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err, const TrainHooks& hooks);

// libgomp and OpenBLAS read their spin-wait settings once, when loaded. On a box with few cores
// their busy-waiting threads steal each other's cores, so main() calls this first: when the user
// has not set them, it sets OMP_WAIT_POLICY=PASSIVE and OPENBLAS_THREAD_TIMEOUT (plus a marker) and
// re-executes the program (execv of /proc/self/exe). Returns only when no re-exec happened.
void reexec_with_thread_settings(char** argv);

}  // namespace bert
