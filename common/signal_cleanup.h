// What a command leaves half-written when Ctrl-C, SIGTERM or a closed terminal (SIGHUP) ends it: the
// temporary files of AtomicOutputFile and bert_prepare build's staging directory. Commands with no stop
// handling of their own (bert_prepare, bert_tokenizer) call install_signal_cleanup() in main: the
// signal then removes every path registered at that moment and ends the process as the signal would
// (exit status 128 + N to the shell). bert_train stops at a step boundary instead and cleans up itself;
// without the handlers installed, registering only records.
#pragma once

#include <string>

namespace bert {

// A signal that is ignored when the command starts (nohup's SIGHUP, SIGINT of a background job in a
// script) stays ignored.
void install_signal_cleanup();

// Registers `path` for removal by such a signal until released: a file, or a directory and the files
// in it; or, kEmptyDirectory, a directory only if it is empty once the others are gone (an output
// directory the command made). Registration is best effort: past 64 paths at once, or a path of 4096
// bytes or more, it records nothing (the path is then left, as without the handlers).
class SignalCleanup {
 public:
  enum Kind { kPath, kEmptyDirectory };
  SignalCleanup() = default;
  explicit SignalCleanup(const std::string& path, Kind kind = kPath);
  ~SignalCleanup() { release(); }
  SignalCleanup(const SignalCleanup&) = delete;
  SignalCleanup& operator=(const SignalCleanup&) = delete;
  SignalCleanup(SignalCleanup&& other) noexcept : slot_(other.slot_) { other.slot_ = -1; }
  SignalCleanup& operator=(SignalCleanup&& other) noexcept;
  // The path is committed (renamed into place) or removed: a signal from now on leaves it.
  void release();

 private:
  int slot_ = -1;
};

}  // namespace bert
