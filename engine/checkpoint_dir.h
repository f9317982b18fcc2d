// Checkpoint directories: "<output_dir>/checkpoint-<step>", written atomically and rotated.
//
// A checkpoint is first written into "<output_dir>/.checkpoint-<step>.tmp-<pid>"; every file is
// fsync'ed, then the directory is renamed to its final name and the parent fsync'ed. A crash at any
// point leaves either the previous complete checkpoints or the new one, never a half-written one
// under a final name (leftover temp dirs are ignored and cleaned on the next save). Rotation keeps
// the newest `save_total_limit` complete checkpoints and never deletes the newest.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/file.h"

namespace bert {

struct CheckpointInfo {
  int64_t step;
  std::string path;
};

// Complete checkpoints in `output_dir` (checkpoint-N directories holding trainer_state.json), oldest
// first.
std::vector<CheckpointInfo> list_checkpoints(const std::string& output_dir);
std::optional<CheckpointInfo> latest_checkpoint(const std::string& output_dir);
// checkpoint-N directories without trainer_state.json, and files of such a name: not bert_train's,
// never listed, rotated or removed; a save of step N refuses to replace one.
std::vector<std::string> foreign_checkpoint_dirs(const std::string& output_dir);

// Writes a checkpoint: `write_files(tmp_dir)` fills the temporary directory (files written there
// should be complete when it returns); then fsync + rename + rotation. Returns the final path.
std::string save_checkpoint_dir(const std::string& output_dir, int64_t step, int save_total_limit,
                                const std::function<void(const std::string& tmp_dir)>& write_files);

// The final model bert_train leaves in output_dir beside its checkpoints (HF's trainer.save_model()).
inline constexpr const char* kFinalModelFiles[] = {"model.safetensors", "config.json", "vocab.txt",
                                                   "tokenizer_config.json", "special_tokens_map.json"};

// Finishes what a crash interrupted: a re-save of checkpoint-N moves the old copy aside as
// "checkpoint-N.old-<pid>" first, so when checkpoint-N is missing that copy is put back; when both are
// there the old one is removed. Also removes temporary ".checkpoint-*.tmp-*" directories, and the
// temporary files of the final model's atomic writes ("model.safetensors.tmp.<pid>", the tokenizer
// files'; not loss.svg's: `bert_train plot` may be writing it from another host), all of a process
// that has ended. Called before listing checkpoints to resume and
// before each save (save_checkpoint_dir does).
void recover_interrupted_saves(const std::string& output_dir);

// save_total_limit's rotation (0: none): removes the oldest checkpoints of output_dir until at most
// `limit` are left, never `keep` nor one after it; returns the paths removed. save_checkpoint_dir does
// it after each save.
std::vector<std::string> rotate_checkpoints(const std::string& output_dir, int save_total_limit,
                                            const std::string& keep);

// Holds an exclusive lock on "<output_dir>/.bert_train.lock" (the directory is created if need be)
// for its lifetime: a second run into the same output_dir (its checkpoint saves would remove this
// run's temporary directories, its rotation this run's checkpoints) is refused with a one-line error
// naming the holder's pid. unsupported(): DirectoryLock's.
class OutputDirLock : public DirectoryLock {
 public:
  static constexpr const char* kFileName = ".bert_train.lock";
  explicit OutputDirLock(const std::string& output_dir)
      : DirectoryLock(output_dir, kFileName, "bert_train", "output_dir") {}
};

// A run resumed from step K that goes on into `output_dir` branches off the run that wrote its
// checkpoints after K: those are renamed "checkpoint-N.superseded" ("...superseded-2", ... if taken), so
// that neither the rotation nor a bare --resume takes them for the new run's, and nothing is deleted.
// Returns the new names, oldest step first.
std::vector<std::string> set_aside_checkpoints_after(const std::string& output_dir, int64_t step);
// "checkpoint-<step>.superseded" or "checkpoint-<step>.superseded-<k>": a name the above gives.
bool is_superseded_checkpoint_name(std::string_view name);

// fsyncs every regular file in `dir` and the directory itself.
void fsync_directory_tree(const std::string& dir);

}  // namespace bert
