// CUDA softmax_cross_entropy (kernels/cuda/cross_entropy.cu) against kernels/cpu in fp32 on the same
// bf16 logits: stats, dlogits (element by element, so the tiny probabilities count too), ignored
// rows, ties (first maximum wins), aliasing, nullptr dlogits, misaligned and strided rows, the bad-label policy
// and bitwise repeatability.
// The ops run on the legacy default stream (Context(cudaStreamLegacy)): DeviceBuffer's copies and
// poisoned()'s cudaMemset use that stream too, so all are ordered without explicit syncs (a
// Context's own stream is non-blocking and would race with them).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/gpu/cuda_test_util.h"

namespace {

using bert::cuda::bf16;
using bert::cuda::Context;
using bert::cuda::CrossEntropyDeviceStats;
using bert::cuda::CrossEntropyStats;
using bert::cuda::DeviceBuffer;
using bert::cuda::LogitsShape;
using namespace bert::cuda::test;

constexpr int32_t kIgnore = bert::ops::kIgnoreIndex;

enum class Ignored { kNone, kSome, kAll };

const char* to_string(Ignored pattern) {
  switch (pattern) {
    case Ignored::kNone:
      return "no ignored labels";
    case Ignored::kSome:
      return "some ignored labels";
    case Ignored::kAll:
      return "all labels ignored";
  }
  return "?";
}

int32_t first_argmax(const float* row, int64_t classes) {
  int64_t best = 0;
  for (int64_t c = 1; c < classes; ++c)
    if (row[c] > row[best]) best = c;
  return static_cast<int32_t>(best);
}

// Random logits in [-4, 4) (bf16), and labels: every 4th counted row is labelled with its argmax
// (so num_correct is exercised), and every 5th row (classes >= 3) has a planted tie between two
// columns at 5.0, labelled alternately with the first and the second of them.
void make_case(std::mt19937_64& rng, int64_t rows, int64_t classes, Ignored pattern, std::vector<float>& logits,
               std::vector<int32_t>& labels) {
  logits = random_bf16_values(rng, static_cast<size_t>(rows * classes), -4.0f, 4.0f);
  labels.assign(static_cast<size_t>(rows), 0);
  std::uniform_int_distribution<int64_t> column(0, classes - 1);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = logits.data() + r * classes;
    const bool ignored = pattern == Ignored::kAll || (pattern == Ignored::kSome && r % 3 == 1);
    if (ignored) {
      labels[r] = kIgnore;
      continue;
    }
    if (classes >= 3 && r % 5 == 0) {
      int64_t first = column(rng), second = column(rng);
      while (second == first) second = column(rng);
      if (first > second) std::swap(first, second);
      row[first] = row[second] = 5.0f;
      labels[r] = static_cast<int32_t>(r % 10 == 0 ? first : second);
    } else if (r % 4 == 0) {
      labels[r] = first_argmax(row, classes);
    } else {
      labels[r] = static_cast<int32_t>(column(rng));
    }
  }
}

CrossEntropyDeviceStats download_stats(const DeviceBuffer<CrossEntropyDeviceStats>& stats) {
  return stats.download().at(0);
}

// Beside cuda_test_util.h's same_bits for vectors (the using-declaration keeps both in view).
using bert::cuda::test::same_bits;
bool same_bits(const CrossEntropyDeviceStats& a, const CrossEntropyDeviceStats& b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

// Runs one case on both backends and compares; `offset` shifts the logits by that many elements
// inside their allocation (misaligned rows, and a dlogits buffer with different alignment); with
// `stride` (> classes) the device rows are that many elements apart, the padding between them a
// finite value far above every logit (read by mistake, it would be the max) in logits and NaN in
// dlogits, and both must come back untouched.
void run_case(Context& ctx, std::mt19937_64& rng, int64_t rows, int64_t classes, Ignored pattern, float grad_scale,
              int64_t offset = 0, int64_t stride = 0) {
  INFO("rows " << rows << ", classes " << classes << ", " << to_string(pattern) << ", grad_scale " << grad_scale
               << ", offset " << offset << ", row stride " << stride);
  std::vector<float> logits;
  std::vector<int32_t> labels;
  make_case(rng, rows, classes, pattern, logits, labels);
  const LogitsShape shape{rows, classes, stride};
  const int64_t ld = shape.stride();
  const size_t numel = static_cast<size_t>(rows * classes), extent = static_cast<size_t>(rows * ld);

  bert::cpu::Context cpu_ctx(1);
  std::vector<float> cpu_dlogits(numel);
  const CrossEntropyStats cpu = bert::cpu::softmax_cross_entropy<float>(
      cpu_ctx, LogitsShape{rows, classes}, logits.data(), labels.data(), grad_scale, cpu_dlogits.data());

  constexpr float kPadding = 1000.0f;
  std::vector<float> padded(static_cast<size_t>(offset) + extent, kPadding);
  for (int64_t r = 0; r < rows; ++r)
    std::copy_n(logits.begin() + r * classes, classes, padded.begin() + offset + r * ld);
  DeviceBuffer<bf16> logits_device = upload_bf16(padded);
  const bf16* logits_view = logits_device.data() + offset;
  DeviceBuffer<int32_t> labels_device = upload<int32_t>(labels);
  DeviceBuffer<bf16> dlogits_device = poisoned<bf16>(extent);
  DeviceBuffer<CrossEntropyDeviceStats> stats_device = poisoned<CrossEntropyDeviceStats>(1);
  // The rows of a [rows, ld] download, and whether its padding still holds `value`'s bits.
  auto rows_of = [&](const std::vector<bf16>& all) {
    std::vector<bf16> out(numel);
    for (int64_t r = 0; r < rows; ++r) std::copy_n(all.begin() + r * ld, classes, out.begin() + r * classes);
    return out;
  };
  auto padding_is = [&](const std::vector<bf16>& all, bf16 value) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = classes; c < ld; ++c)
        if (bits_of(all[static_cast<size_t>(r * ld + c)]) != bits_of(value)) return false;
    return true;
  };

  bert::cuda::softmax_cross_entropy(ctx, shape, logits_view, labels_device.data(), grad_scale, dlogits_device.data(),
                                    stats_device.data());
  const CrossEntropyStats gpu = bert::cuda::read_cross_entropy_stats(ctx, stats_device.data());
  const CrossEntropyDeviceStats gpu_raw = download_stats(stats_device);

  CHECK(gpu.num_counted == cpu.num_counted);
  CHECK(gpu.num_correct == cpu.num_correct);
  INFO("loss gpu " << gpu.loss << " cpu " << cpu.loss);
  CHECK(std::fabs(gpu.loss - cpu.loss) <= 1e-5 * std::fabs(cpu.loss));
  if (cpu.num_counted == 0) CHECK(gpu_raw.loss_sum == 0.0f);

  const std::vector<bf16> gpu_dlogits_all = dlogits_device.download();
  CHECK(padding_is(gpu_dlogits_all, nan_bf16()));
  const std::vector<bf16> gpu_dlogits_bits = rows_of(gpu_dlogits_all);
  const std::vector<float> gpu_dlogits = to_float(gpu_dlogits_bits);
  // bf16 rounding is <= 2^-8 relative; the absolute slack covers g * (p - 1) when p_label ~ 1.
  const double per_row_grad = cpu.num_counted > 0 ? grad_scale / static_cast<double>(cpu.num_counted) : 0.0;
  check_elementwise("dlogits", gpu_dlogits, cpu_dlogits, 5e-3, 1e-5 * std::fabs(per_row_grad));
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] != kIgnore) continue;
    bool all_zero = true;
    for (int64_t c = 0; c < classes; ++c) all_zero = all_zero && gpu_dlogits[r * classes + c] == 0.0f;
    INFO("ignored row " << r);
    CHECK(all_zero);
  }

  // Repeat: bitwise the same stats and dlogits.
  DeviceBuffer<bf16> repeat_dlogits = poisoned<bf16>(extent);
  bert::cuda::softmax_cross_entropy(ctx, shape, logits_view, labels_device.data(), grad_scale, repeat_dlogits.data(),
                                    stats_device.data());
  CHECK(same_bits(download_stats(stats_device), gpu_raw));
  CHECK(same_bits(rows_of(repeat_dlogits.download()), gpu_dlogits_bits));

  // dlogits = nullptr: the same stats.
  bert::cuda::softmax_cross_entropy(ctx, shape, logits_view, labels_device.data(), grad_scale, nullptr,
                                    stats_device.data());
  CHECK(same_bits(download_stats(stats_device), gpu_raw));

  // dlogits aliasing logits: the same stats and gradient, written over the logits (not the padding).
  bert::cuda::softmax_cross_entropy(ctx, shape, logits_device.data() + offset, labels_device.data(), grad_scale,
                                    logits_device.data() + offset, stats_device.data());
  CHECK(same_bits(download_stats(stats_device), gpu_raw));
  const std::vector<bf16> aliased = logits_device.download();
  const std::vector<bf16> aliased_view(aliased.begin() + offset, aliased.end());
  CHECK(same_bits(rows_of(aliased_view), gpu_dlogits_bits));
  CHECK(padding_is(aliased_view, float_to_bf16(kPadding)));
}

}  // namespace

TEST_CASE("cuda softmax_cross_entropy matches the CPU reference", "[cuda][cross_entropy]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(1234);
  for (const Ignored pattern : {Ignored::kNone, Ignored::kSome, Ignored::kAll}) {
    // Many rows for the small class counts: the count/finalize blocks loop past 1024 rows.
    run_case(ctx, rng, 2500, 2, pattern, 1.0f);
    run_case(ctx, rng, 2500, 7, pattern, 0.5f);
    run_case(ctx, rng, 301, 300, pattern, 1.0f);
    run_case(ctx, rng, 24, 30522, pattern, 1.0f);
    run_case(ctx, rng, 20, 32003, pattern, 2.0f);
  }
}

TEST_CASE("cuda softmax_cross_entropy handles misaligned rows and a differently aligned dlogits",
          "[cuda][cross_entropy]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(99);
  run_case(ctx, rng, 16, 32000, Ignored::kSome, 1.0f, 0);  // every row 16-byte aligned: no head/tail
  run_case(ctx, rng, 16, 32000, Ignored::kSome, 1.0f, 1);  // head 7, tail 1; scalar pass 2
  run_case(ctx, rng, 9, 4099, Ignored::kNone, 1.0f, 3);
  run_case(ctx, rng, 33, 5, Ignored::kSome, 1.0f, 1);
}

// Up to 32,768 classes the row kernel keeps the row in registers (1,024 threads x 4 vectors); beyond,
// the streaming kernel reads it twice. Both sides of the boundary, aligned and not.
TEST_CASE("cuda softmax_cross_entropy: the register-resident and the streaming row kernels", "[cuda][cross_entropy]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(4242);
  run_case(ctx, rng, 5, 32768, Ignored::kSome, 1.0f, 0);         // resident, every vector slot used
  run_case(ctx, rng, 5, 32768, Ignored::kNone, 1.0f, 1);         // resident, head 7 + tail 1
  run_case(ctx, rng, 4, 32769, Ignored::kSome, 1.0f, 0);         // streaming
  run_case(ctx, rng, 3, 70001, Ignored::kNone, 0.5f, 3);         // streaming, misaligned
  run_case(ctx, rng, 4, 40000, Ignored::kSome, 1.0f, 0, 40005);  // streaming, strided
}

// KernelPaths::cross_entropy_resident = false: the streaming kernels at every size (the kernels
// before the resident ones, kept to time against them), held to the CPU like the default; under the
// kernel emulation, which records launches, each setting is seen to choose its kernel.
TEST_CASE("cuda softmax_cross_entropy with KernelPaths::baseline() streams every row and matches the CPU",
          "[cuda][cross_entropy]") {
  Context ctx(cudaStreamLegacy);
  ctx.set_kernel_paths(bert::cuda::KernelPaths::baseline());
  std::mt19937_64 rng(4343);
  (void)launched_kernels();
  run_case(ctx, rng, 300, 2, Ignored::kSome, 1.0f);
  run_case(ctx, rng, 31, 300, Ignored::kNone, 1.0f);
  run_case(ctx, rng, 8, 30522, Ignored::kSome, 1.0f, 0, 30528);  // the MLM decoder's padded rows
  run_case(ctx, rng, 5, 32768, Ignored::kNone, 1.0f, 1);
  if (const auto names = launched_kernels()) {
    CHECK(launched(*names, "cross_entropy_rows_kernel"));
    CHECK_FALSE(launched(*names, "cross_entropy_resident_rows_kernel"));
    ctx.set_kernel_paths({});
    run_case(ctx, rng, 8, 30522, Ignored::kSome, 1.0f, 0, 30528);
    const auto resident = launched_kernels();
    CHECK(launched(*resident, "cross_entropy_resident_rows_kernel"));
    CHECK_FALSE(launched(*resident, "cross_entropy_rows_kernel"));
  } else {
    WARN("which kernel ran is not checked on a device: only the kernel emulation records it");
  }
}

TEST_CASE("cuda softmax_cross_entropy reads and writes only the rows of strided logits", "[cuda][cross_entropy]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(2718);
  run_case(ctx, rng, 24, 30522, Ignored::kSome, 1.0f, 0, 30528);  // the MLM decoder's padded rows
  run_case(ctx, rng, 24, 30522, Ignored::kNone, 1.0f, 1, 30528);  // rows misaligned by one element
  run_case(ctx, rng, 17, 300, Ignored::kSome, 0.5f, 0, 333);      // odd stride: each row aligned differently
  run_case(ctx, rng, 40, 7, Ignored::kNone, 1.0f, 0, 8);
  // A stride below the classes is refused before launching.
  DeviceBuffer<CrossEntropyDeviceStats> stats(1);
  DeviceBuffer<bf16> logits(64);
  DeviceBuffer<int32_t> labels(4);
  CHECK_THROWS_AS(bert::cuda::softmax_cross_entropy(ctx, LogitsShape{4, 16, 15}, logits.data(), labels.data(), 1.0f,
                                                    nullptr, stats.data()),
                  std::invalid_argument);
}

TEST_CASE("cuda softmax_cross_entropy with no rows writes zero stats", "[cuda][cross_entropy]") {
  Context ctx(cudaStreamLegacy);
  DeviceBuffer<CrossEntropyDeviceStats> stats = poisoned<CrossEntropyDeviceStats>(1);
  bert::cuda::softmax_cross_entropy(ctx, LogitsShape{0, 30522}, nullptr, nullptr, 1.0f, nullptr, stats.data());
  const CrossEntropyStats host = bert::cuda::read_cross_entropy_stats(ctx, stats.data());
  CHECK(host.loss == 0.0);
  CHECK(host.num_counted == 0);
  CHECK(host.num_correct == 0);
  CHECK(download_stats(stats).loss_sum == 0.0f);
}

TEST_CASE("cuda softmax_cross_entropy: an out-of-range label gives NaN loss and a NaN gradient row",
          "[cuda][cross_entropy]") {
  Context ctx(cudaStreamLegacy);
  std::mt19937_64 rng(5);
  const int64_t rows = 6, classes = 1000;
  const std::vector<float> logits = random_bf16_values(rng, static_cast<size_t>(rows * classes));
  const std::vector<int32_t> labels = {3, kIgnore, static_cast<int32_t>(classes), 7, -1, 999};
  DeviceBuffer<bf16> logits_device = upload_bf16(logits);
  DeviceBuffer<int32_t> labels_device = upload<int32_t>(labels);
  DeviceBuffer<bf16> dlogits = poisoned<bf16>(static_cast<size_t>(rows * classes));
  DeviceBuffer<CrossEntropyDeviceStats> stats = poisoned<CrossEntropyDeviceStats>(1);
  bert::cuda::softmax_cross_entropy(ctx, LogitsShape{rows, classes}, logits_device.data(), labels_device.data(), 1.0f,
                                    dlogits.data(), stats.data());
  const CrossEntropyStats host = bert::cuda::read_cross_entropy_stats(ctx, stats.data());
  CHECK(host.num_counted == 5);  // every label but the ignore index counts
  CHECK(std::isnan(host.loss));
  const std::vector<float> grad = download_float(dlogits);
  for (int64_t r = 0; r < rows; ++r) {
    const bool bad = r == 2 || r == 4;
    for (int64_t c = 0; c < classes; ++c) {
      const float g = grad[r * classes + c];
      if (bad ? !std::isnan(g) : !std::isfinite(g)) {
        INFO("row " << r << " column " << c << " gradient " << g);
        CHECK(false);
        break;
      }
    }
  }
  // The CPU reference throws instead.
  bert::cpu::Context cpu_ctx(1);
  CHECK_THROWS_AS(bert::cpu::softmax_cross_entropy<float>(cpu_ctx, LogitsShape{rows, classes}, logits.data(),
                                                          labels.data(), 1.0f, nullptr),
                  std::invalid_argument);
}

TEST_CASE("cuda softmax_cross_entropy rejects bad shapes before launching", "[cuda][cross_entropy]") {
  Context ctx(cudaStreamLegacy);
  DeviceBuffer<CrossEntropyDeviceStats> stats(1);
  CHECK_THROWS_AS(
      bert::cuda::softmax_cross_entropy(ctx, LogitsShape{4, 0}, nullptr, nullptr, 1.0f, nullptr, stats.data()),
      std::invalid_argument);
  CHECK_THROWS_AS(
      bert::cuda::softmax_cross_entropy(ctx, LogitsShape{-1, 5}, nullptr, nullptr, 1.0f, nullptr, stats.data()),
      std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::softmax_cross_entropy(ctx, LogitsShape{4, 5}, nullptr, nullptr, 1.0f, nullptr, nullptr),
                  std::invalid_argument);
  CHECK_THROWS_AS(bert::cuda::read_cross_entropy_stats(ctx, nullptr), std::invalid_argument);
}
