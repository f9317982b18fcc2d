// Files: whole-file reads, atomic writes, read-only mappings. Every failure is a bert::Error that
// names the path and the OS reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/signal_cleanup.h"

namespace bert {

std::string read_file(const std::string& path);
// Writes to "<path>.tmp.<pid>", fsyncs, renames over `path`, fsyncs the directory. A symlink's target is
// replaced (not the link; a dangling link is replaced by the file); a device, FIFO or socket is written
// in place, /dev/stdout and the like through the descriptor they name (AtomicOutputFile); a directory
// is a bert::Error.
void write_file_atomic(const std::string& path, std::string_view content);

// write_file_atomic for output written piece by piece: commit() makes it the file at `path`; without
// a commit (an error on the way; a signal, where install_signal_cleanup is) the temporary file is
// removed and `path` is untouched. Errors name
// `path` (the temporary file in parentheses). /dev/stdout, /dev/stderr, /dev/fd/N and
// /proc/self/fd/N write to a copy of that descriptor (whatever the shell opened there, at its offset).
class AtomicOutputFile {
 public:
  explicit AtomicOutputFile(const std::string& path);
  ~AtomicOutputFile();
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  AtomicOutputFile& operator=(const AtomicOutputFile&) = delete;
  void write(std::string_view content);      // buffered
  uint64_t bytes() const { return bytes_; }  // written so far
  void commit();

 private:
  static constexpr size_t kBufferBytes = size_t{1} << 20;
  std::string via() const;
  void flush();
  [[noreturn]] void fail(const char* what);
  std::string requested_, target_, tmp_;  // tmp_ empty: a special file, written in place
  SignalCleanup tmp_cleanup_;             // tmp_, until committed or removed
  int fd_ = -1;
  bool committed_ = false;
  std::string buffer_;
  uint64_t bytes_ = 0;
};
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
size_t file_size(const std::string& path);
void make_directories(const std::string& path);
// "runs/demo/" -> "runs/demo" ("/" stays "/"), so that the paths we build from a user's directory and
// print ("runs/demo/checkpoint-5") carry no "//".
std::string without_trailing_slashes(std::string path);
// Whether `path` is `dir` or lies inside it, as both resolve on disk (symlinks, "..", a path that
// does not exist yet); false when either cannot be resolved.
bool path_within(const std::string& path, const std::string& dir);

// Holds an exclusive flock on "<dir>/<file_name>" (the directory is created if need be) for its
// lifetime, so that two processes do not write into one directory at once: a second is refused with a
// one-line error, "<dir>: another <tool> is writing to this <role> (pid N, holding <lock file>); wait
// for it to end, or choose another <role>". The holder removes the lock file when it lets go; a lock
// taken on a file that was removed meanwhile is taken again on the new one, so two never hold it at once.
// A killed holder leaves its file, which the next one locks.
class DirectoryLock {
 public:
  DirectoryLock(const std::string& dir, const std::string& file_name, const std::string& tool, const std::string& role);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  // Why there is no lock, where the file system cannot hold one (Lustre without flock, some NFS
  // mounts, a read-only directory): the caller goes on unlocked, and says so. Empty when locked.
  const std::string& unsupported() const { return unsupported_; }

 private:
  int fd_ = -1;
  std::string path_;
  SignalCleanup on_signal_;  // path_, where install_signal_cleanup is
  std::string unsupported_;
};

// A read-only memory mapping of a whole file (empty files map to an empty view). A file that is not
// a regular file (a pipe, "<(zcat corpus.gz)"; a device) cannot be mapped: it is read whole into
// memory instead, and release() keeps it.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  std::string_view view() const { return {static_cast<const char*>(data_), size_}; }
  const void* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Tells the kernel the pages of [begin, end) are no longer needed (they leave the RSS; a later
  // read faults them back in from the file).
  void release(size_t begin, size_t end) const;

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_bytes_ = 0;  // an anonymous mapping's capacity (>= size_)
  bool anonymous_ = false;   // read from a stream, not mapped from the file
  std::string path_;

  void read_stream(int fd);
};

}  // namespace bert
