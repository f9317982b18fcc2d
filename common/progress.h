// A one-line progress display on stderr, redrawn at most every 200 ms, and only when stderr is a
// terminal (logs and CI stay clean).
#pragma once

#include <chrono>
#include <string>

namespace bert {

class Progress {
 public:
  explicit Progress(bool enabled);
  ~Progress();
  // Redraws the line if enough time has passed (or force is set).
  void update(const std::string& line, bool force = false);
  // Clears the line.
  void finish();
  bool enabled() const { return enabled_; }

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

bool stderr_is_tty();
bool stdin_is_tty();
// "12.3 MB", "1.2 GB".
std::string human_bytes(double bytes);
// "12.3k", "4.5M".
std::string human_count(double n);
// Peak resident set size of this process, bytes (from /proc/self/status VmHWM).
size_t peak_rss_bytes();

}  // namespace bert
