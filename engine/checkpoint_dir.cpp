#include "engine/checkpoint_dir.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>
#include <utility>

#include "common/error.h"
#include "common/file.h"

namespace bert {

namespace fs = std::filesystem;

static void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open for fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw Error(path + ": fsync failed: " + std::strerror(errno));
}

void fsync_directory_tree(const std::string& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) fsync_path(e.path().string(), false);
  fsync_path(dir, true);
}

namespace {

// The checkpoint-N entries of output_dir, each with whether it is a directory holding trainer_state.json.
// Every checkpoint bert_train writes does (it is renamed into place complete); one without it is not ours.
std::vector<std::pair<CheckpointInfo, bool>> checkpoint_named_dirs(const std::string& output_dir) {
  std::vector<std::pair<CheckpointInfo, bool>> out;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("checkpoint-", 0) != 0) continue;
    const std::string digits = name.substr(11);
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    // A file of that name is nobody's checkpoint either: saving that step would fail on it.
    out.push_back({{std::stoll(digits), e.path().string()},
                   e.is_directory(ec) && fs::exists(e.path() / "trainer_state.json", ec)});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first.step < b.first.step; });
  return out;
}

}  // namespace

std::vector<CheckpointInfo> list_checkpoints(const std::string& output_dir) {
  std::vector<CheckpointInfo> out;
  for (const auto& [info, ours] : checkpoint_named_dirs(output_dir))
    if (ours) out.push_back(info);
  return out;
}

std::vector<std::string> foreign_checkpoint_dirs(const std::string& output_dir) {
  std::vector<std::string> out;
  for (const auto& [info, ours] : checkpoint_named_dirs(output_dir))
    if (!ours) out.push_back(info.path);
  return out;
}

std::optional<CheckpointInfo> latest_checkpoint(const std::string& output_dir) {
  auto all = list_checkpoints(output_dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

namespace {

bool all_digits(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "<prefix><step digits><middle><rest>": the rest, or none when `name` is not of that form.
std::optional<std::string_view> after_step(std::string_view name, std::string_view prefix, std::string_view middle) {
  if (name.substr(0, prefix.size()) != prefix) return std::nullopt;
  name.remove_prefix(prefix.size());
  const size_t at = name.find(middle);
  if (at == std::string_view::npos || !all_digits(name.substr(0, at))) return std::nullopt;
  return name.substr(at + middle.size());
}

// "<prefix><digits><middle><digits>" (e.g. "checkpoint-40.old-1234"): the second number, the pid of
// the process that wrote it, when that process is gone (another live one may still be saving) or is
// this one (whose saves run one after another: none is under way now).
std::optional<long> ended_or_own(std::optional<std::string_view> pid_text) {
  if (!pid_text || !all_digits(*pid_text) || pid_text->size() > 9) return std::nullopt;
  const long pid = std::stol(std::string(*pid_text));
  if (pid == ::getpid()) return pid;
  if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) return std::nullopt;
  return pid;
}

std::optional<long> dead_writer(std::string_view name, std::string_view prefix, std::string_view middle) {
  return ended_or_own(after_step(name, prefix, middle));
}

// "<file>.tmp.<pid>" (AtomicOutputFile's temporary name for `file`): as dead_writer.
std::optional<long> dead_file_writer(std::string_view name, std::string_view file) {
  if (!name.starts_with(file) || !name.substr(file.size()).starts_with(".tmp.")) return std::nullopt;
  return ended_or_own(name.substr(file.size() + 5));
}

}  // namespace

void recover_interrupted_saves(const std::string& output_dir) {
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return;
  std::vector<fs::path> entries;
  bool changed = false;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    if (e.is_directory()) {
      entries.push_back(e.path());
      continue;
    }
    // The final model's files, written as "<name>.tmp.<pid>" and renamed (AtomicOutputFile).
    const std::string name = e.path().filename().string();
    for (const char* file : kFinalModelFiles)
      if (e.is_regular_file() && dead_file_writer(name, file)) {
        fs::remove(e.path(), ec);
        changed = true;
      }
  }
  for (const fs::path& path : entries) {
    // Only names this code writes, "checkpoint-<step>.old-<pid>" and ".checkpoint-<step>.tmp-<pid>", of a
    // process that has ended: a user's "checkpoint-4.old-backup" is left alone.
    const std::string name = path.filename().string();
    if (dead_writer(name, ".checkpoint-", ".tmp-")) {
      fs::remove_all(path, ec);
      changed = true;
      continue;
    }
    if (!dead_writer(name, "checkpoint-", ".old-")) continue;
    const fs::path final_path = path.parent_path() / name.substr(0, name.find(".old-"));
    if (fs::exists(final_path, ec)) {
      fs::remove_all(path, ec);  // the re-save completed; only the removal of the old copy was cut short
    } else {
      fs::rename(path, final_path, ec);  // the crash came between the two renames: the old copy is the one
      if (ec) throw Error(path.string() + ": cannot put it back as " + final_path.string() + ": " + ec.message());
    }
    changed = true;
  }
  if (changed) fsync_path(output_dir, true);
}

bool is_superseded_checkpoint_name(std::string_view name) {
  const std::optional<std::string_view> rest = after_step(name, "checkpoint-", ".superseded");
  return rest && (rest->empty() || ((*rest)[0] == '-' && all_digits(rest->substr(1))));
}

std::vector<std::string> set_aside_checkpoints_after(const std::string& output_dir, int64_t step) {
  std::vector<std::string> renamed;
  for (const CheckpointInfo& later : list_checkpoints(output_dir)) {
    if (later.step <= step) continue;
    std::string name = later.path + ".superseded";
    for (int k = 2; fs::exists(name); ++k) name = later.path + ".superseded-" + std::to_string(k);
    std::error_code ec;
    fs::rename(later.path, name, ec);
    if (ec) throw Error(later.path + ": cannot set it aside as " + name + ": " + ec.message());
    renamed.push_back(name);
  }
  if (!renamed.empty()) fsync_path(output_dir, true);
  return renamed;
}

std::string save_checkpoint_dir(const std::string& output_dir, int64_t step, int save_total_limit,
                                const std::function<void(const std::string& tmp_dir)>& write_files) {
  make_directories(output_dir);
  std::error_code ec;
  recover_interrupted_saves(output_dir);
  const std::string final_path = output_dir + "/checkpoint-" + std::to_string(step);
  if (fs::exists(final_path, ec) && !fs::exists(fs::path(final_path) / "trainer_state.json", ec))
    throw Error(final_path +
                ": exists and is not a bert_train checkpoint (no trainer_state.json); not replaced: "
                "move it out of the output_dir");
  const std::string tmp = output_dir + "/.checkpoint-" + std::to_string(step) + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  make_directories(tmp);
  write_files(tmp);
  fsync_directory_tree(tmp);
  if (fs::exists(final_path, ec)) {
    // Re-saving the same step (e.g. Ctrl-C right after a scheduled save): replace it atomically
    // enough: move the old one aside first so a crash leaves one complete copy.
    const std::string old = final_path + ".old-" + std::to_string(::getpid());
    fs::rename(final_path, old, ec);
    if (ec) throw Error(final_path + ": cannot move previous checkpoint aside: " + ec.message());
    fs::rename(tmp, final_path, ec);
    if (ec) throw Error(final_path + ": cannot rename checkpoint into place: " + ec.message());
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, final_path, ec);
    if (ec) throw Error(final_path + ": cannot rename checkpoint into place: " + ec.message());
  }
  fsync_path(output_dir, true);
  rotate_checkpoints(output_dir, save_total_limit, final_path);
  return final_path;
}

std::vector<std::string> rotate_checkpoints(const std::string& output_dir, int save_total_limit,
                                            const std::string& keep) {
  std::vector<std::string> removed;
  if (save_total_limit <= 0) return removed;
  std::error_code ec;
  auto all = list_checkpoints(output_dir);
  while (static_cast<int>(all.size()) > save_total_limit && all.front().path != keep) {
    fs::remove_all(all.front().path, ec);
    removed.push_back(all.front().path);
    all.erase(all.begin());
  }
  return removed;
}

}  // namespace bert
