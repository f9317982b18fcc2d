// Shared helpers of the CUDA op tests (tests/gpu/test_cuda_*.cpp): random host data, bf16 round
// trips, device buffers poisoned with NaN before an op (so an element the op forgets to write
// fails the comparison), bf16 and fp32 tensors fenced by NaN guards (and optionally misaligned), and
// the error measures and bitwise comparisons the tests use.
//
// Tolerances (DEVELOPERS.md): compare the CUDA result with kernels/cpu run in fp32 on the SAME
// bf16-rounded inputs; relative error = max |gpu - cpu| / max(max |cpu|, tiny) over the tensor.
//   bf16 outputs: ~1e-2;  fp32 outputs of fp32 paths (AdamW, grad norm, statistics): ~1e-5.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/ops_cuda.h"

#if defined(BERT_KERNEL_EMULATION)
namespace emu {
std::vector<std::string> take_launched_kernels();           // tests/kernel_emu/cuda_emu.h
void refuse_bias_gradient_epilogue_at_matmul(bool refuse);  // tests/kernel_emu/cuda_emu.h
void refuse_algorithm_at_matmul(int id);                    // tests/kernel_emu/cuda_emu.h
}
#endif

namespace bert::cuda::test {

// The names of the kernels launched since the last call ("kernel<T>", in issue order) under the
// kernel emulation, which records them (the first call starts the record); std::nullopt on a
// device, where nothing does: tests of which kernel an op chose check it where they can.
inline std::optional<std::vector<std::string>> launched_kernels() {
#if defined(BERT_KERNEL_EMULATION)
  return ::emu::take_launched_kernels();
#else
  return std::nullopt;
#endif
}

// Whether any of `names` contains `kernel` (a kernel's name without its template arguments).
inline bool launched(const std::vector<std::string>& names, const std::string& kernel) {
  return std::any_of(names.begin(), names.end(),
                     [&](const std::string& name) { return name.rfind(kernel + "<", 0) == 0 || name == kernel; });
}

inline float bf16_to_float(bf16 value) { return __bfloat162float(value); }
inline bf16 float_to_bf16(float value) { return __float2bfloat16(value); }  // round to nearest even

inline std::vector<bf16> to_bf16(std::span<const float> values) {
  std::vector<bf16> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = float_to_bf16(values[i]);
  return out;
}
inline std::vector<float> to_float(std::span<const bf16> values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = bf16_to_float(values[i]);
  return out;
}
// Rounds each value to bf16 and back: the CPU reference's inputs, equal to what the GPU reads.
inline std::vector<float> round_to_bf16(std::vector<float> values) {
  for (float& v : values) v = bf16_to_float(float_to_bf16(v));
  return values;
}

// Uniform in [lo, hi), rounded to bf16 (so host and device see the same numbers).
inline std::vector<float> random_bf16_values(std::mt19937_64& rng, size_t count, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(count);
  for (float& v : values) v = bf16_to_float(float_to_bf16(dist(rng)));
  return values;
}
inline std::vector<float> random_floats(std::mt19937_64& rng, size_t count, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(count);
  for (float& v : values) v = dist(rng);
  return values;
}

template <class T>
DeviceBuffer<T> upload(std::span<const T> host) {
  DeviceBuffer<T> buffer;
  buffer.upload(host);
  return buffer;
}
inline DeviceBuffer<bf16> upload_bf16(std::span<const float> host) {
  const std::vector<bf16> converted = to_bf16(host);
  return upload<bf16>(converted);
}

// A device buffer of `count` elements whose every byte is 0xFF: NaN in fp32 and bf16.
template <class T>
DeviceBuffer<T> poisoned(size_t count) {
  DeviceBuffer<T> buffer(count);
  if (count > 0) CUDA_CHECK(cudaMemset(buffer.data(), 0xFF, buffer.bytes()));
  CUDA_CHECK(cudaDeviceSynchronize());  // the op's non-blocking stream does not wait for the legacy one
  return buffer;
}

inline std::vector<float> download_float(const DeviceBuffer<bf16>& buffer) { return to_float(buffer.download()); }
inline std::vector<float> download_float(const DeviceBuffer<float>& buffer) { return buffer.download(); }

// The 16 bits of a bf16.
inline uint16_t bits_of(bf16 value) {
  uint16_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}
// The bf16 whose bits are all ones (a NaN): what poisoned() fills a bf16 buffer with.
inline bf16 nan_bf16() {
  __nv_bfloat16_raw raw;
  raw.x = 0xFFFF;
  return bf16(raw);
}

// A bf16 device tensor `offset` elements into its allocation (offset 1 leaves the pointer 2-byte
// aligned only: the kernels' scalar path), NaN before and for kGuard elements after it.
class Bf16Tensor {
 public:
  static constexpr size_t kGuard = 16;  // NaN elements after the tensor

  static Bf16Tensor input(const std::vector<float>& values, size_t offset) {
    std::vector<bf16> host(offset + values.size() + kGuard, nan_bf16());
    for (size_t i = 0; i < values.size(); ++i) host[offset + i] = float_to_bf16(values[i]);
    return Bf16Tensor(upload<bf16>(host), offset, values.size());
  }
  static Bf16Tensor output(size_t count, size_t offset) {
    return Bf16Tensor(poisoned<bf16>(offset + count + kGuard), offset, count);
  }
  bf16* data() { return buffer_.data() + offset_; }
  std::vector<float> values() const {
    const std::vector<float> all = download_float(buffer_);
    return std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>(offset_),
                              all.begin() + static_cast<std::ptrdiff_t>(offset_ + count_));
  }
  // The bits of the whole allocation, guards included.
  std::vector<uint16_t> bits() const {
    std::vector<uint16_t> out;
    for (const bf16 value : buffer_.download()) out.push_back(bits_of(value));
    return out;
  }
  // Nothing was written outside [offset, offset + count).
  bool guards_intact() const {
    const std::vector<uint16_t> all = bits();
    for (size_t i = 0; i < all.size(); ++i)
      if ((i < offset_ || i >= offset_ + count_) && all[i] != 0xFFFF) return false;
    return true;
  }

 private:
  Bf16Tensor(DeviceBuffer<bf16> buffer, size_t offset, size_t count)
      : buffer_(std::move(buffer)), offset_(offset), count_(count) {}
  DeviceBuffer<bf16> buffer_;
  size_t offset_, count_;
};

// The fp32 counterpart of Bf16Tensor (fp32 gradients, statistics): `offset` elements into its
// allocation (offset 1 leaves the pointer 4-byte aligned only), every bit set (a NaN) before and for
// kGuard elements after it. input() holds the given values (an accumulated output's prior), output()
// is NaN throughout.
class Fp32Tensor {
 public:
  static constexpr size_t kGuard = 16;  // NaN elements after the tensor

  static Fp32Tensor input(const std::vector<float>& values, size_t offset) {
    std::vector<float> host(offset + values.size() + kGuard);
    std::memset(host.data(), 0xFF, host.size() * sizeof(float));  // the guards' bits, exactly
    if (!values.empty()) std::memcpy(host.data() + offset, values.data(), values.size() * sizeof(float));
    return Fp32Tensor(upload<float>(host), offset, values.size());
  }
  static Fp32Tensor output(size_t count, size_t offset) {
    return Fp32Tensor(poisoned<float>(offset + count + kGuard), offset, count);
  }
  float* data() { return buffer_.data() + offset_; }
  std::vector<float> values() const {
    const std::vector<float> all = buffer_.download();
    return std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>(offset_),
                              all.begin() + static_cast<std::ptrdiff_t>(offset_ + count_));
  }
  // The bits of the whole allocation, guards included.
  std::vector<uint32_t> bits() const {
    const std::vector<float> all = buffer_.download();
    std::vector<uint32_t> out(all.size());
    if (!all.empty()) std::memcpy(out.data(), all.data(), all.size() * sizeof(float));
    return out;
  }
  // Nothing was written outside [offset, offset + count).
  bool guards_intact() const {
    const std::vector<uint32_t> all = bits();
    for (size_t i = 0; i < all.size(); ++i)
      if ((i < offset_ || i >= offset_ + count_) && all[i] != 0xFFFFFFFFu) return false;
    return true;
  }

 private:
  Fp32Tensor(DeviceBuffer<float> buffer, size_t offset, size_t count)
      : buffer_(std::move(buffer)), offset_(offset), count_(count) {}
  DeviceBuffer<float> buffer_;
  size_t offset_, count_;
};

// Same size and the same bytes.
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// after - before, element by element (the exact difference rounded once to fp32).
inline std::vector<float> difference(const std::vector<float>& after, const std::vector<float>& before) {
  std::vector<float> out(after.size());
  for (size_t i = 0; i < after.size(); ++i)
    out[i] = static_cast<float>(static_cast<double>(after[i]) - static_cast<double>(before[i]));
  return out;
}

// max |actual - expected| / max(max |expected|, 1e-30); a NaN or Inf anywhere in actual (or in the
// reference: a broken reference must not pass by default) gives +inf.
inline double relative_error(std::span<const float> actual, std::span<const float> expected) {
  REQUIRE(actual.size() == expected.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (!std::isfinite(actual[i]) || !std::isfinite(expected[i])) return INFINITY;
    diff = std::max(diff, std::fabs(static_cast<double>(actual[i]) - expected[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(expected[i])));
  }
  return diff / std::max(scale, 1e-30);
}

// |actual - expected| <= rel * |expected| + abs for every element; reports the first violation.
inline void check_elementwise(const char* name, const std::vector<float>& actual, const std::vector<float>& expected,
                              double rel, double abs) {
  REQUIRE(actual.size() == expected.size());
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    if (!(diff <= rel * std::fabs(expected[i]) + abs)) {
      if (bad == 0) first_bad = i;
      ++bad;
    }
  }
  std::ostringstream where;
  if (bad > 0) where << " first at " << first_bad << ": gpu " << actual[first_bad] << " cpu " << expected[first_bad];
  INFO(name << ": " << bad << " of " << actual.size() << " elements outside tolerance" << where.str());
  CHECK(bad == 0);
}

// CHECKs relative_error(actual, expected) <= tolerance with the name in the message.
// An fp32 gradient ADDED to a prior: max |(after - prior) - expected| / max |expected|, less the one
// rounding of prior + gradient the kernel cannot avoid (half an ulp of |prior + expected|), so a
// tensor of tiny gradients on a large prior is not failed for the fp32 grid it lands on.
inline double accumulated_error(const std::vector<float>& after, const std::vector<float>& prior,
                                const std::vector<float>& expected) {
  REQUIRE(after.size() == expected.size());
  REQUIRE(prior.size() == expected.size());
  double diff = 0, scale = 1e-30, slack = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (!std::isfinite(after[i]) || !std::isfinite(expected[i])) return INFINITY;
    diff = std::max(diff, std::fabs((static_cast<double>(after[i]) - prior[i]) - expected[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(expected[i])));
    slack = std::max(slack, std::ldexp(std::fabs(static_cast<double>(prior[i]) + expected[i]), -24));
  }
  return std::max(0.0, diff - slack) / scale;
}

// relative_error with the scale floored at 1: for values that are O(1) by nature (GELU outputs and
// gradients), where a tensor of tiny values (a single cancelled element) would otherwise be judged
// against its own rounding.
inline double relative_error_floor1(std::vector<float> actual, std::vector<float> expected) {
  actual.push_back(1.0f);
  expected.push_back(1.0f);
  return relative_error(actual, expected);
}

#define CHECK_ERROR_AT_MOST(name, error_expression, tolerance)                                \
  do {                                                                                        \
    const double bert_error_ = (error_expression);                                            \
    INFO(name << ": relative error " << bert_error_ << " (tolerance " << (tolerance) << ")"); \
    CHECK(bert_error_ <= (tolerance));                                                        \
  } while (0)

#define CHECK_CLOSE_REL(name, actual, expected, tolerance)                                        \
  do {                                                                                            \
    const double bert_rel_error_ = ::bert::cuda::test::relative_error((actual), (expected));      \
    INFO(name << ": relative error " << bert_rel_error_ << " (tolerance " << (tolerance) << ")"); \
    CHECK(bert_rel_error_ <= (tolerance));                                                        \
  } while (0)

}  // namespace bert::cuda::test
