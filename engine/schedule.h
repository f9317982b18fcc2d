// Learning-rate schedules, exactly as Hugging Face's get_scheduler (LambdaLR): the optimizer step
// with 0-based index `step` uses base_lr * factor(step). With warmup, step 0 therefore runs at
// lr 0, as in HF Trainer.
#pragma once

#include <cstdint>
#include <string>

namespace bert {

enum class LrSchedule { kLinear, kCosine, kConstant, kConstantWithWarmup };

// Throws bert::Error for an unknown name.
LrSchedule parse_lr_schedule(const std::string& name);
const char* lr_schedule_name(LrSchedule s);

// factor in [0, 1] for optimizer step `step` of `total_steps` with `warmup_steps` of warmup.
double lr_factor(LrSchedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps);

}  // namespace bert
