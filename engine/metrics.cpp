#include "engine/metrics.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "common/error.h"
#include "common/file.h"

namespace bert {

namespace {

// The non-empty lines of a JSON-lines text: fn(line number, line, torn). `torn`: the last line lacks
// its newline, a write cut short (a crash, or the trainer writing it right now).
template <class Fn>
void for_each_jsonl_line(std::string_view text, Fn&& fn) {
  size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    const bool torn = nl == std::string_view::npos;
    if (torn) nl = text.size();
    const std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (!line.empty()) fn(line_no, line, torn);
  }
}

}  // namespace

MetricsLog::MetricsLog(const std::string& path, int64_t resume_step) : path_(path) {
  if (resume_step >= 0 && file_exists(path)) {
    const std::string text = read_file(path);
    std::string kept;
    for_each_jsonl_line(text, [&](size_t line_no, std::string_view line, bool torn) {
      try {
        const Json j = Json::parse(line, path);
        const Json* step = j.find("step");
        if (step && step->is_number() && step->as_int() > resume_step) return;
      } catch (const Error&) {
        if (!torn) dropped_lines_.push_back(line_no);
        return;
      }
      kept.append(line);
      kept.push_back('\n');
    });
    write_file_atomic(path, kept);
  }
  file_ = std::fopen(path.c_str(), "a");
  if (!file_) throw Error(path + ": cannot open metrics log for appending: " + std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write(const Json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    throw Error(path_ + ": write failed");
}

void plot_metrics_svg(const std::string& jsonl_path, const std::string& svg_path) {
  const std::string text = read_file(jsonl_path);
  const std::vector<std::string> keys = {"loss", "mlm_loss", "nsp_loss", "eval_loss", "eval_mlm_loss"};
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"};
  std::map<std::string, std::vector<std::pair<double, double>>> series;
  for_each_jsonl_line(text, [&](size_t line_no, std::string_view line, bool torn) {
    Json j;
    try {
      j = Json::parse(line, jsonl_path, line_no);
    } catch (const Error&) {
      if (torn) return;  // plotted without it, as the trainer's resume drops it
      throw;
    }
    const Json* step = j.find("step");
    if (!step || !step->is_number()) throw Error(located(jsonl_path, line_no, "record without a numeric 'step'"));
    for (const auto& k : keys) {
      const Json* v = j.find(k);
      if (v && v->is_number() && std::isfinite(v->as_number()))
        series[k].emplace_back(step->as_number(), v->as_number());
    }
  });
  if (series.empty()) throw Error(jsonl_path + ": no loss values to plot");
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& [k, pts] : series)
    for (const auto& [x, y] : pts) {
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + std::max(1.0, std::abs(y0) * 1e-9);  // + 1 would vanish at -1e300
  y0 = std::min(0.0, y0);
  const double W = 800, H = 480, L = 70, R = 170, T = 30, B = 50;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  // Halves, so that a span of values near the largest double (a diverged loss of 1e308) does not
  // overflow to inf; the grid's values interpolate between the ends for the same reason.
  const double half_span = y1 * 0.5 - y0 * 0.5;
  auto py = [&](double y) { return T + (1 - (y * 0.5 - y0 * 0.5) / half_span) * (H - T - B); };
  std::string svg;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
                "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                W, H);
  svg += buf;
  for (int i = 0; i <= 5; ++i) {
    const double y = y0 * (1 - 0.2 * i) + y1 * (0.2 * i);
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.1f\" "
                  "text-anchor=\"end\">%.3g</text>\n",
                  L, py(y), W - R, py(y), L - 6, py(y) + 4, y);
    svg += buf;
  }
  // Step labels: at most 5 intervals, on whole steps (a 3-step run gets 1, 2, 3, not 1, 1, 2, 2, 3, 3).
  const int x_intervals = static_cast<int>(std::clamp(std::floor(x1 - x0), 1.0, 5.0));
  for (int i = 0; i <= x_intervals; ++i) {
    const double x = std::round(x0 + (x1 - x0) * i / x_intervals);
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.0f</text>\n", px(x), H - B + 18, x);
    svg += buf;
  }
  std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n", (L + W - R) / 2, H - 12);
  svg += buf;
  int legend = 0;
  for (size_t k = 0; k < keys.size(); ++k) {
    auto it = series.find(keys[k]);
    if (it == series.end()) continue;
    svg += "<polyline fill=\"none\" stroke-width=\"1.8\" stroke=\"" + std::string(colors[k]) + "\" points=\"";
    for (const auto& [x, y] : it->second) {
      std::snprintf(buf, sizeof buf, "%.1f,%.1f ", px(x), py(y));
      svg += buf;
    }
    svg += "\"/>\n";
    if (it->second.size() == 1) {  // a one-point polyline draws nothing: a dot
      std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(it->second[0].first),
                    py(it->second[0].second), colors[k]);
      svg += buf;
    }
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"3\"/><text x=\"%.1f\" "
                  "y=\"%.1f\">%s</text>\n",
                  W - R + 15, T + 20.0 * legend, W - R + 40, T + 20.0 * legend, colors[k], W - R + 46, T + 20.0 * legend + 4,
                  keys[k].c_str());
    svg += buf;
    ++legend;
  }
  svg += "</svg>\n";
  write_file_atomic(svg_path, svg);
}

}  // namespace bert
