// metrics.jsonl: one JSON object per logging step, appended and flushed line by line so a crash
// loses at most the line being written; and the loss-curve plot made from it (SVG, no dependencies).
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "common/json.h"

namespace bert {

class MetricsLog {
 public:
  // Opens `path` for appending (creating it). When resuming at `resume_step`, lines with a larger
  // step (written after that checkpoint by the interrupted run) are dropped first, and so are lines
  // that do not parse: the last one when a crash tore it, any other one is listed in dropped_lines().
  MetricsLog(const std::string& path, int64_t resume_step = -1);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const Json& record);
  // The 1-based numbers of the unreadable lines dropped on resume, a torn last line (one without its
  // newline) aside: the caller warns about them, as they leave a gap in the curve.
  const std::vector<size_t>& dropped_lines() const { return dropped_lines_; }

 private:
  std::string path_;
  std::vector<size_t> dropped_lines_;
  std::FILE* file_ = nullptr;
};

// Draws every numeric series of the given keys (default: loss, mlm_loss, nsp_loss, eval_loss)
// against "step" into an SVG file. Throws bert::Error naming the file/line for unreadable input.
void plot_metrics_svg(const std::string& jsonl_path, const std::string& svg_path);

}  // namespace bert
