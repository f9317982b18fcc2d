#include "engine/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "common/error.h"

namespace bert {

LrSchedule parse_lr_schedule(const std::string& name) {
  if (name == "linear") return LrSchedule::kLinear;
  if (name == "cosine") return LrSchedule::kCosine;
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "constant_with_warmup") return LrSchedule::kConstantWithWarmup;
  throw Error("unknown lr_scheduler_type '" + name + "' (linear, cosine, constant, constant_with_warmup)");
}

const char* lr_schedule_name(LrSchedule s) {
  switch (s) {
    case LrSchedule::kLinear: return "linear";
    case LrSchedule::kCosine: return "cosine";
    case LrSchedule::kConstant: return "constant";
    case LrSchedule::kConstantWithWarmup: return "constant_with_warmup";
  }
  return "?";
}

double lr_factor(LrSchedule schedule, int64_t step, int64_t warmup, int64_t total) {
  const double s = static_cast<double>(step), w = static_cast<double>(warmup), t = static_cast<double>(total);
  if (schedule == LrSchedule::kConstant) return 1.0;
  if (step < warmup) return s / std::max(1.0, w);
  switch (schedule) {
    case LrSchedule::kConstantWithWarmup:
      return 1.0;
    case LrSchedule::kLinear:
      return std::max(0.0, (t - s) / std::max(1.0, t - w));
    case LrSchedule::kCosine: {
      const double progress = (s - w) / std::max(1.0, t - w);
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress)));
    }
    default:
      return 1.0;
  }
}

}  // namespace bert
