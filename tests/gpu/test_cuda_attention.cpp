// CUDA fused attention (kernels/cuda/attention.cu) against kernels/cpu's fp32 attention on the same
// bf16-rounded inputs: context and logsumexp of the forward, dq/dk/dv of the backward (fed the CPU's
// context rounded to bf16 and its logsumexp, so each pass is checked on its own), for head_dim
// 32/64/128, seq_len 1..512 (also not multiples of the 64-row tile), separate q/k/v, fused QKV rows
// of 3*hidden and rows with spare columns (NaN inputs there must not leak in, NaN-poisoned outputs
// there must stay untouched), dropout off and on (same Philox spec both sides), a batch mixing no
// padding, a padded tail with a hole, a fully padded sequence and a random mask; each (batch, head)
// block is compared on its own scale as well as the whole tensor. Also: padded keys do not change
// anything, a null mask equals an all-ones one, gradients are bitwise deterministic, an empty batch
// is a no-op, and unsupported shapes throw std::invalid_argument naming the limit.
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/cpu/ops_cpu.h"
#include "tests/gpu/cuda_test_util.h"

namespace {

using bert::cuda::AttentionKernel;
using bert::cuda::bf16;
using bert::cuda::Context;
using bert::cuda::DeviceBuffer;
using bert::ops::AttentionShape;
using bert::ops::DropoutSpec;
using namespace bert::cuda::test;

constexpr double kBf16Tolerance = 1e-2;       // context, dq, dk, dv
constexpr double kLogsumexpTolerance = 1e-4;  // fp32 statistic of exact bf16 products, fp32 sums

enum class QkvLayout {
  kSeparate,              // three [tokens, hidden] blocks, stride hidden
  kSeparateSpareColumns,  // three blocks, stride hidden + 8: columns beyond hidden belong to no head
  kFused,                 // one [tokens, 3*hidden] buffer: k = q + hidden, v = q + 2*hidden
};

const char* layout_name(QkvLayout layout) {
  switch (layout) {
    case QkvLayout::kSeparate:
      return "separate";
    case QkvLayout::kSeparateSpareColumns:
      return "separate+spare";
    case QkvLayout::kFused:
      return "fused";
  }
  return "?";
}

// Padding patterns by sequence b % 4: none; a tail (the last third) plus a hole; all padding; random.
std::vector<int32_t> make_mask(int64_t batch, int64_t seq_len, std::mt19937_64& rng) {
  std::vector<int32_t> mask(static_cast<size_t>(batch * seq_len));
  std::bernoulli_distribution coin(0.5);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq_len; ++s) {
      int32_t attend = 0;
      switch (b % 4) {
        case 0:
          attend = 1;
          break;
        case 1:
          attend = s < (2 * seq_len + 2) / 3 && !(seq_len >= 6 && s == seq_len / 3);
          break;
        case 2:
          attend = 0;
          break;
        default:
          attend = coin(rng) ? 1 : 0;
          break;
      }
      mask[static_cast<size_t>(b * seq_len + s)] = attend;
    }
  return mask;
}

// One attention call's inputs, bf16-representable, as the device sees them.
struct Problem {
  AttentionShape shape;
  QkvLayout layout = QkvLayout::kSeparate;
  DropoutSpec dropout;
  std::vector<int32_t> mask;  // empty: no padding (nullptr)
  std::vector<float> qkv;     // the whole q/k/v buffer; NaN in columns that belong to no head
  std::vector<float> dcontext;

  int64_t hidden() const { return shape.hidden(); }
  int64_t tokens() const { return shape.tokens(); }
  int64_t stride() const { return shape.qkv_row_stride; }
  size_t buffer_size() const {
    return static_cast<size_t>(layout == QkvLayout::kFused ? tokens() * stride() : 3 * tokens() * stride());
  }
  // Offset of q (0), k (1), v (2) inside the buffer.
  int64_t offset(int which) const {
    return layout == QkvLayout::kFused ? which * hidden() : which * tokens() * stride();
  }
  const int32_t* mask_or_null() const { return mask.empty() ? nullptr : mask.data(); }
  std::string describe() const {
    return "batch=" + std::to_string(shape.batch) + " seq_len=" + std::to_string(shape.seq_len) +
           " heads=" + std::to_string(shape.num_heads) + " head_dim=" + std::to_string(shape.head_dim) +
           " layout=" + layout_name(layout) + " stride=" + std::to_string(stride()) +
           " dropout=" + std::to_string(dropout.probability) + (mask.empty() ? " no mask" : " masked");
  }
};

Problem make_problem(int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, QkvLayout layout,
                     float dropout_probability, uint64_t seed, bool with_mask = true) {
  Problem p;
  p.layout = layout;
  const int64_t hidden = heads * head_dim;
  const int64_t stride = layout == QkvLayout::kFused      ? 3 * hidden
                         : layout == QkvLayout::kSeparate ? hidden
                                                          : hidden + 8;
  p.shape = AttentionShape{batch, seq_len, heads, head_dim, stride};
  // Offset above 2^32: the counter's high word matters too.
  p.dropout = DropoutSpec{dropout_probability, seed * 7919 + 3, (uint64_t{5} << 32) + seed};
  std::mt19937_64 rng(seed);
  if (with_mask) p.mask = make_mask(batch, seq_len, rng);
  // q and k in [-2, 2] make the softmax peaked (score std ~1.3), v and dcontext in [-1, 1].
  std::uniform_real_distribution<float> wide(-2.0f, 2.0f), narrow(-1.0f, 1.0f);
  p.qkv.assign(p.buffer_size(), std::numeric_limits<float>::quiet_NaN());
  for (int which = 0; which < 3; ++which)
    for (int64_t t = 0; t < p.tokens(); ++t)
      for (int64_t c = 0; c < hidden; ++c)
        p.qkv[static_cast<size_t>(p.offset(which) + t * stride + c)] =
            bf16_to_float(float_to_bf16(which == 2 ? narrow(rng) : wide(rng)));
  p.dcontext = random_bf16_values(rng, static_cast<size_t>(p.tokens() * hidden));
  return p;
}

// [tokens, hidden] view of q (0), k (1) or v (2) columns of a buffer laid out like p.qkv.
std::vector<float> head_columns(const Problem& p, const std::vector<float>& buffer, int which) {
  std::vector<float> out(static_cast<size_t>(p.tokens() * p.hidden()));
  for (int64_t t = 0; t < p.tokens(); ++t)
    for (int64_t c = 0; c < p.hidden(); ++c)
      out[static_cast<size_t>(t * p.hidden() + c)] = buffer[static_cast<size_t>(p.offset(which) + t * p.stride() + c)];
  return out;
}

struct ForwardResult {
  std::vector<float> context, logsumexp;
};
struct BackwardResult {
  std::vector<float> dq, dk, dv;  // [tokens, hidden] each
  std::vector<bf16> raw;          // GPU only: the whole dq/dk/dv buffer as written
};

ForwardResult cpu_forward(const Problem& p) {
  bert::cpu::Context cpu;
  ForwardResult r;
  r.context.assign(static_cast<size_t>(p.tokens() * p.hidden()), 0.0f);
  r.logsumexp.assign(static_cast<size_t>(p.shape.batch * p.shape.num_heads * p.shape.seq_len), 0.0f);
  bert::cpu::attention_forward<float>(cpu, p.shape, p.qkv.data() + p.offset(0), p.qkv.data() + p.offset(1),
                                      p.qkv.data() + p.offset(2), p.mask_or_null(), p.dropout, r.context.data(),
                                      r.logsumexp.data());
  return r;
}

// context: bf16-representable (what the GPU forward would have saved).
BackwardResult cpu_backward(const Problem& p, const std::vector<float>& context, const std::vector<float>& logsumexp) {
  bert::cpu::Context cpu;
  std::vector<float> dqkv(p.buffer_size(), 0.0f);
  bert::cpu::attention_backward<float>(cpu, p.shape, p.dcontext.data(), p.qkv.data() + p.offset(0),
                                       p.qkv.data() + p.offset(1), p.qkv.data() + p.offset(2), p.mask_or_null(),
                                       p.dropout, context.data(), logsumexp.data(), dqkv.data() + p.offset(0),
                                       dqkv.data() + p.offset(1), dqkv.data() + p.offset(2));
  return BackwardResult{head_columns(p, dqkv, 0), head_columns(p, dqkv, 1), head_columns(p, dqkv, 2), {}};
}

// The device copies of a problem's inputs.
struct DeviceProblem {
  DeviceBuffer<bf16> qkv, dcontext;
  DeviceBuffer<int32_t> mask;
  explicit DeviceProblem(const Problem& p) : qkv(upload_bf16(p.qkv)), dcontext(upload_bf16(p.dcontext)) {
    if (!p.mask.empty()) mask = upload<int32_t>(p.mask);
  }
  const bf16* q(const Problem& p) const { return qkv.data() + p.offset(0); }
  const bf16* k(const Problem& p) const { return qkv.data() + p.offset(1); }
  const bf16* v(const Problem& p) const { return qkv.data() + p.offset(2); }
  const int32_t* mask_or_null() const { return mask.size() > 0 ? mask.data() : nullptr; }
};

// Every kernel of each direction is held to the same checks (kMmaRecomputeDq's forward is kMma's, so
// only its backward runs: up to 128 keys its kernel pair, where kMma's is the fused kernel).
constexpr AttentionKernel kKernels[] = {AttentionKernel::kWmma, AttentionKernel::kMma,
                                        AttentionKernel::kMmaRecomputeDq};
const char* kernel_name(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::kMma:
      return "mma.sync";
    case AttentionKernel::kMmaRecomputeDq:
      return "mma.sync, dQ recomputed";
    default:
      return "wmma";
  }
}

ForwardResult gpu_forward(Context& ctx, const Problem& p, const DeviceProblem& d,
                          AttentionKernel kernel = AttentionKernel::kWmma) {
  DeviceBuffer<bf16> context = poisoned<bf16>(static_cast<size_t>(p.tokens() * p.hidden()));
  DeviceBuffer<float> logsumexp =
      poisoned<float>(static_cast<size_t>(p.shape.batch * p.shape.num_heads * p.shape.seq_len));
  bert::cuda::attention_forward(ctx, p.shape, d.q(p), d.k(p), d.v(p), d.mask_or_null(), p.dropout, context.data(),
                                logsumexp.data(), kernel);
  ctx.synchronize();
  return ForwardResult{download_float(context), download_float(logsumexp)};
}

BackwardResult gpu_backward(Context& ctx, const Problem& p, const DeviceProblem& d, const std::vector<float>& context,
                            const std::vector<float>& logsumexp, AttentionKernel kernel = AttentionKernel::kWmma) {
  DeviceBuffer<bf16> context_dev = upload_bf16(context);
  DeviceBuffer<float> logsumexp_dev = upload<float>(logsumexp);
  DeviceBuffer<bf16> dqkv = poisoned<bf16>(p.buffer_size());
  bert::cuda::attention_backward(ctx, p.shape, d.dcontext.data(), d.q(p), d.k(p), d.v(p), d.mask_or_null(), p.dropout,
                                 context_dev.data(), logsumexp_dev.data(), dqkv.data() + p.offset(0),
                                 dqkv.data() + p.offset(1), dqkv.data() + p.offset(2), kernel);
  ctx.synchronize();
  BackwardResult r;
  r.raw = dqkv.download();
  const std::vector<float> all = to_float(r.raw);
  r.dq = head_columns(p, all, 0);
  r.dk = head_columns(p, all, 1);
  r.dv = head_columns(p, all, 2);
  return r;
}

// Whether sequence b has at least one attended key.
bool sequence_attends(const Problem& p, int64_t b) {
  for (int64_t s = 0; s < p.shape.seq_len; ++s)
    if (p.mask[static_cast<size_t>(b * p.shape.seq_len + s)] != 0) return true;
  return false;
}

double max_abs(const std::vector<float>& values) {
  double m = 0;
  for (float v : values) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

// relative_error with a floor under the scale: dq and dk come from dS = P (dP - Delta), which
// cancels (to exactly 0 on the CPU for seq_len 1 without dropout), so "relative to the largest
// expected value" would divide fp32 rounding noise by zero. The floor is a per cent of max |dv|,
// the same products without the cancellation.
double gradient_error(const std::vector<float>& actual, const std::vector<float>& expected, double floor) {
  REQUIRE(actual.size() == expected.size());
  double diff = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (!std::isfinite(actual[i])) return INFINITY;
    diff = std::max(diff, std::fabs(static_cast<double>(actual[i]) - expected[i]));
  }
  return diff / std::max({max_abs(expected), floor, 1e-30});
}

// ---- per (batch, head) comparison ----------------------------------------------------------------
// A relative error over the whole tensor divides by its largest value, so a bug confined to a
// small-valued part of it passes: the fully padded sequence's context is a mean of seq_len rows of v
// (~1/sqrt(seq_len) of the others' at seq_len 512), and a head or a sequence may simply have smaller
// values than another. So each (batch, head) block is also compared on its own scale:
//   error(b, h) = max |actual - expected| over the block / max(max |expected| over the block, floor(b, h))
// and every block must be within the tolerance. The floors (documented where they are chosen, in
// check_against_cpu) only matter where a block's expected values are (close to) zero.

enum class BlockLayout {
  kTokensHidden,  // [tokens, hidden]: block (b, h) is rows b*seq_len.., columns h*head_dim..
  kLogsumexp,     // [batch, heads, seq_len]: block (b, h) is seq_len consecutive values
};

int64_t block_elements(const Problem& p, BlockLayout layout) {
  return layout == BlockLayout::kLogsumexp ? p.shape.seq_len : p.shape.seq_len * p.shape.head_dim;
}
// Index of element i (0 <= i < block_elements) of block (b, h).
size_t block_index(const Problem& p, BlockLayout layout, int64_t b, int64_t h, int64_t i) {
  const int64_t seq_len = p.shape.seq_len, head_dim = p.shape.head_dim;
  if (layout == BlockLayout::kLogsumexp) return static_cast<size_t>((b * p.shape.num_heads + h) * seq_len + i);
  return static_cast<size_t>((b * seq_len + i / head_dim) * p.hidden() + h * head_dim + i % head_dim);
}

double block_max_abs(const Problem& p, BlockLayout layout, const std::vector<float>& values, int64_t b, int64_t h) {
  double m = 0;
  for (int64_t i = 0; i < block_elements(p, layout); ++i)
    m = std::max(m, static_cast<double>(std::fabs(values[block_index(p, layout, b, h, i)])));
  return m;
}

struct BlockError {
  double error = 0;  // the worst block's error
  int64_t batch = -1, head = -1;
  double scale = 0;  // that block's denominator
};

// The worst block's error; +inf (for the first block with one) if actual or expected holds a NaN or
// an Inf. floor(b, h) gives the floor under block (b, h)'s scale.
template <class Floor>
BlockError worst_block_error(const Problem& p, BlockLayout layout, const std::vector<float>& actual,
                             const std::vector<float>& expected, Floor floor) {
  REQUIRE(actual.size() == expected.size());
  REQUIRE(expected.size() == static_cast<size_t>(p.shape.batch * p.shape.num_heads * block_elements(p, layout)));
  BlockError worst;
  for (int64_t b = 0; b < p.shape.batch; ++b)
    for (int64_t h = 0; h < p.shape.num_heads; ++h) {
      double diff = 0, scale = 0;
      for (int64_t i = 0; i < block_elements(p, layout); ++i) {
        const size_t at = block_index(p, layout, b, h, i);
        if (!std::isfinite(actual[at]) || !std::isfinite(expected[at])) {
          diff = INFINITY;
          break;
        }
        diff = std::max(diff, std::fabs(static_cast<double>(actual[at]) - expected[at]));
        scale = std::max(scale, std::fabs(static_cast<double>(expected[at])));
      }
      scale = std::max({scale, static_cast<double>(floor(b, h)), 1e-30});
      const double error = diff / scale;
      if (worst.batch < 0 || error > worst.error) worst = BlockError{error, b, h, scale};
    }
  return worst;
}

void check_blocks(const char* name, const BlockError& worst, double tolerance) {
  INFO(name << ": worst (batch, head) block (" << worst.batch << ", " << worst.head << "): relative error "
            << worst.error << " of its scale " << worst.scale << " (tolerance " << tolerance << ")");
  CHECK(worst.error <= tolerance);
}

bool all_finite(const std::vector<float>& values) {
  return std::all_of(values.begin(), values.end(), [](float v) { return std::isfinite(v); });
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

uint16_t bits(bf16 value) {
  uint16_t out;
  std::memcpy(&out, &value, sizeof(out));
  return out;
}

// The block floors of the per-(batch, head) comparisons (worst_block_error):
//   context: 1e-2 * the block's max |v|. The context is an average of the block's v rows (scaled by
//     1/(1 - p) under dropout), so its rounding error is a fraction of |v|; the floor only matters
//     where the context is ~0 throughout the block (seq_len 1 whose only key was dropped).
//   logsumexp: 1. A logsumexp error e scales the row's probabilities by exp(e) ~ 1 + e, so below
//     |lse| = 1 the error that matters is absolute (seq_len 1: lse is one score, which can be ~0).
//   dv: 1e-2 * the block's max |dcontext|, dv being P^T dcontext (same reasoning as the context).
//   dq, dk: 1e-2 * the block's max |expected dv| (the whole-tensor floor in check_against_cpu, per
//     block), and at least 1e-4 * the block's max |dcontext| for a block whose dv is exactly zero
//     (seq_len 1 with its only key dropped: dq and dk are then exactly zero too).
auto fraction_of(const Problem& p, const std::vector<float>& reference, double fraction) {
  return [&p, &reference, fraction](int64_t b, int64_t h) {
    return fraction * block_max_abs(p, BlockLayout::kTokensHidden, reference, b, h);
  };
}

// One forward kernel's context and logsumexp against kernels/cpu's, whole and per block, and the
// all-padding rule: a fully padded sequence attends uniformly, logsumexp log(S).
void check_forward(const Problem& p, const ForwardResult& actual, const ForwardResult& expected) {
  CHECK_CLOSE_REL("context", actual.context, expected.context, kBf16Tolerance);
  CHECK_CLOSE_REL("logsumexp", actual.logsumexp, expected.logsumexp, kLogsumexpTolerance);
  const std::vector<float> v = head_columns(p, p.qkv, 2);  // [tokens, hidden]
  check_blocks(
      "context per block",
      worst_block_error(p, BlockLayout::kTokensHidden, actual.context, expected.context, fraction_of(p, v, 1e-2)),
      kBf16Tolerance);
  check_blocks("logsumexp per block",
               worst_block_error(p, BlockLayout::kLogsumexp, actual.logsumexp, expected.logsumexp,
                                 [](int64_t, int64_t) { return 1.0; }),
               kLogsumexpTolerance);
  if (p.mask.empty()) return;
  const int64_t seq_len = p.shape.seq_len, heads = p.shape.num_heads;
  size_t bad_uniform = 0;
  for (int64_t b = 0; b < p.shape.batch; ++b) {
    if (sequence_attends(p, b)) continue;
    for (int64_t s = 0; s < seq_len; ++s)
      for (int64_t h = 0; h < heads; ++h)
        bad_uniform += std::fabs(actual.logsumexp[static_cast<size_t>((b * heads + h) * seq_len + s)] -
                                 std::log(static_cast<float>(seq_len))) > 1e-5f;
  }
  CHECK(bad_uniform == 0);
}

// One backward kernel's dq, dk, dv against kernels/cpu's, whole and per block, plus the exact
// properties of padding and of columns outside every head.
void check_backward(const Problem& p, const BackwardResult& grad, const BackwardResult& expected_grad) {
  const int64_t batch = p.shape.batch, seq_len = p.shape.seq_len, hidden = p.hidden();
  const double floor = 1e-2 * max_abs(expected_grad.dv);
  const double dq_error = gradient_error(grad.dq, expected_grad.dq, floor);
  const double dk_error = gradient_error(grad.dk, expected_grad.dk, floor);
  const double dv_error = gradient_error(grad.dv, expected_grad.dv, 0.0);
  INFO("dq error " << dq_error << ", dk error " << dk_error << ", dv error " << dv_error << " (tolerance "
                   << kBf16Tolerance << ")");
  CHECK(dq_error <= kBf16Tolerance);
  CHECK(dk_error <= kBf16Tolerance);
  CHECK(dv_error <= kBf16Tolerance);

  // The same comparisons per (batch, head) block, each on its own scale (floors: fraction_of above).
  const auto dq_dk_floor = [&](int64_t b, int64_t h) {
    return std::max(fraction_of(p, expected_grad.dv, 1e-2)(b, h), fraction_of(p, p.dcontext, 1e-4)(b, h));
  };
  check_blocks("dq per block", worst_block_error(p, BlockLayout::kTokensHidden, grad.dq, expected_grad.dq, dq_dk_floor),
               kBf16Tolerance);
  check_blocks("dk per block", worst_block_error(p, BlockLayout::kTokensHidden, grad.dk, expected_grad.dk, dq_dk_floor),
               kBf16Tolerance);
  check_blocks(
      "dv per block",
      worst_block_error(p, BlockLayout::kTokensHidden, grad.dv, expected_grad.dv, fraction_of(p, p.dcontext, 1e-2)),
      kBf16Tolerance);

  // Columns that belong to no head keep their poison (0xFFFF) bit for bit.
  if (p.layout == QkvLayout::kSeparateSpareColumns) {
    size_t touched = 0;
    for (int which = 0; which < 3; ++which)
      for (int64_t t = 0; t < p.tokens(); ++t)
        for (int64_t c = hidden; c < p.stride(); ++c)
          touched += bits(grad.raw[static_cast<size_t>(p.offset(which) + t * p.stride() + c)]) != 0xFFFFu;
    CHECK(touched == 0);
  }

  if (p.mask.empty()) return;
  // Exact padding properties (ops.h): a fully padded sequence (its uniform logsumexp: check_forward)
  // gives q and k exactly zero gradient; padded keys of the others get exactly zero dk, dv.
  size_t bad_uniform = 0, bad_padded_key = 0, fully_padded = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const bool all_padding = !sequence_attends(p, b);
    fully_padded += all_padding;
    for (int64_t s = 0; s < seq_len; ++s) {
      const int64_t token = b * seq_len + s;
      if (all_padding) {
        for (int64_t c = 0; c < hidden; ++c)
          bad_uniform += grad.dq[static_cast<size_t>(token * hidden + c)] != 0.0f ||
                         grad.dk[static_cast<size_t>(token * hidden + c)] != 0.0f;
      } else if (p.mask[static_cast<size_t>(token)] == 0) {
        for (int64_t c = 0; c < hidden; ++c)
          bad_padded_key += grad.dk[static_cast<size_t>(token * hidden + c)] != 0.0f ||
                            grad.dv[static_cast<size_t>(token * hidden + c)] != 0.0f;
      }
    }
  }
  if (batch >= 3) CHECK(fully_padded > 0);  // make_mask's sequence 2 is all padding
  CHECK(bad_uniform == 0);
  CHECK(bad_padded_key == 0);
}

// The full comparison of one problem with kernels/cpu, every kernel of each direction.
void check_against_cpu(Context& ctx, const Problem& p) {
  INFO(p.describe());
  const DeviceProblem d(p);
  const ForwardResult expected = cpu_forward(p);
  // Backward from the CPU's saved tensors (context rounded to bf16 as the GPU would save it).
  const std::vector<float> saved_context = round_to_bf16(expected.context);
  const BackwardResult expected_grad = cpu_backward(p, saved_context, expected.logsumexp);
  for (const AttentionKernel kernel : kKernels) {
    INFO("kernel " << kernel_name(kernel));
#if defined(__SANITIZE_ADDRESS__)
    // (Sanitized: kMma's backward runs the kernel pair past 128 keys, and the fused kernel below.)
    if (kernel == AttentionKernel::kMmaRecomputeDq) continue;
#endif
    if (kernel != AttentionKernel::kMmaRecomputeDq) check_forward(p, gpu_forward(ctx, p, d, kernel), expected);
    check_backward(p, gpu_backward(ctx, p, d, saved_context, expected.logsumexp, kernel), expected_grad);
  }
}

}  // namespace

TEST_CASE("cuda attention matches kernels/cpu: forward context/logsumexp, backward dq/dk/dv") {
  Context ctx;
  const int head_dim = GENERATE(32, 64, 128);
  const int seq_len = GENERATE(1, 7, 64, 128, 129, 512);
  const QkvLayout layout = GENERATE(QkvLayout::kSeparate, QkvLayout::kFused, QkvLayout::kSeparateSpareColumns);
  const float dropout = GENERATE(0.0f, 0.1f);
#if defined(__SANITIZE_ADDRESS__)
  // Under AddressSanitizer (kernel_emu_asan) the question is where the kernels read and write, which
  // dropout does not change: each shape runs once, with dropout. Without dropout this case took half of
  // the sanitized run's ~870 s, 40% of the suite's time on a 2-core runner; the unsanitized emulation
  // (kernel_emu/) and the GPU run every section.
  // Seq 512 (the longest supported, 88% of the work) runs with the layout the model uses, kFused: the
  // other layouts' strides are checked at every shorter length, which crosses the same tile boundaries
  // (129: a partial tile). That took the sanitized case from 505 s to 232 s on a 2-core runner,
  // and the suite back under 20 minutes.
  if (dropout == 0.0f) return;
  if (seq_len == 512 && layout != QkvLayout::kFused) return;
#endif
  // 4 sequences: one of each padding pattern (make_mask).
  const uint64_t seed =
      static_cast<uint64_t>(head_dim * 100003 + seq_len * 17 + static_cast<int>(layout) * 3) + (dropout > 0 ? 1 : 0);
  const Problem p = make_problem(4, seq_len, 2, head_dim, layout, dropout, seed);
  check_against_cpu(ctx, p);
}

TEST_CASE("cuda attention without a mask, more heads, and batches of one") {
  Context ctx;
  check_against_cpu(ctx, make_problem(2, 77, 3, 64, QkvLayout::kFused, 0.1f, 901, /*with_mask=*/false));
  check_against_cpu(ctx, make_problem(1, 200, 4, 32, QkvLayout::kSeparate, 0.0f, 902, /*with_mask=*/false));
  check_against_cpu(ctx, make_problem(1, 65, 1, 128, QkvLayout::kSeparateSpareColumns, 0.25f, 903));
  // BERT-base's shape (12 heads of 64, fused QKV), batch 4 with all four padding patterns.
  check_against_cpu(ctx, make_problem(4, 128, 12, 64, QkvLayout::kFused, 0.1f, 904));
}

TEST_CASE("cuda attention: padded keys change nothing, a null mask equals all ones, gradients deterministic") {
  Context ctx;
  const int head_dim = GENERATE(32, 128);
  // 7 and 100: kMma's fused backward with 4 and 8 warps (100: a partial second query step); 129: the
  // kernel pair.
  const int seq_len = GENERATE(7, 100, 129);
  const AttentionKernel kernel =
      GENERATE(AttentionKernel::kWmma, AttentionKernel::kMma, AttentionKernel::kMmaRecomputeDq);
  Problem p = make_problem(4, seq_len, 2, head_dim, QkvLayout::kFused, 0.1f, 777 + head_dim + seq_len);
  INFO(p.describe() << ", kernel " << kernel_name(kernel));

  const auto run = [&ctx, kernel](const Problem& problem) {
    const DeviceProblem d(problem);
    const ForwardResult forward = gpu_forward(ctx, problem, d, kernel);
    const BackwardResult grad = gpu_backward(ctx, problem, d, forward.context, forward.logsumexp, kernel);
    // Bitwise comparisons alone would pass NaN == NaN.
    CHECK(all_finite(forward.context));
    CHECK(all_finite(forward.logsumexp));
    CHECK(all_finite(grad.dq));
    CHECK(all_finite(grad.dk));
    CHECK(all_finite(grad.dv));
    return std::pair<ForwardResult, BackwardResult>{forward, grad};
  };
  const auto [forward, grad] = run(p);

  // Overwrite the k and v rows of every padded key of a partly padded sequence with large values.
  Problem changed = p;
  size_t padded_keys = 0;
  for (int64_t b = 0; b < p.shape.batch; ++b) {
    if (!sequence_attends(p, b)) continue;  // fully padded: it attends to all its keys, they matter
    for (int64_t s = 0; s < seq_len; ++s) {
      const int64_t token = b * seq_len + s;
      if (p.mask[static_cast<size_t>(token)] != 0) continue;
      ++padded_keys;
      for (int which = 1; which <= 2; ++which)
        for (int64_t c = 0; c < p.hidden(); ++c)
          changed.qkv[static_cast<size_t>(p.offset(which) + token * p.stride() + c)] = (c % 2 ? 48.0f : -40.0f);
    }
  }
  REQUIRE(padded_keys > 0);
  const auto [changed_forward, changed_grad] = run(changed);
  // Padded keys get P = 0 and dS = 0 exactly, so every product they touch is +-0: the outputs should
  // not move at all. Judged at 1e-6 relative rather than bitwise, in case a tensor core's internal
  // alignment of its partial sums sees the changed (zero-weighted) operands; a padded key that leaked
  // into the softmax moves them by O(1) with these +-40 values.
  CHECK_CLOSE_REL("context, padded keys changed", changed_forward.context, forward.context, 1e-6);
  CHECK_CLOSE_REL("logsumexp, padded keys changed", changed_forward.logsumexp, forward.logsumexp, 1e-6);
  CHECK_CLOSE_REL("dq, padded keys changed", changed_grad.dq, grad.dq, 1e-6);
  CHECK_CLOSE_REL("dk, padded keys changed", changed_grad.dk, grad.dk, 1e-6);
  CHECK_CLOSE_REL("dv, padded keys changed", changed_grad.dv, grad.dv, 1e-6);

  // Bitwise deterministic: the same call again.
  const auto [again_forward, again_grad] = run(p);
  CHECK(bitwise_equal(again_forward.context, forward.context));
  CHECK(bitwise_equal(again_grad.dq, grad.dq));
  CHECK(bitwise_equal(again_grad.dk, grad.dk));
  CHECK(bitwise_equal(again_grad.dv, grad.dv));

  // No mask and an all-ones mask are the same op.
  Problem unmasked = p;
  unmasked.mask.clear();
  Problem all_ones = p;
  std::fill(all_ones.mask.begin(), all_ones.mask.end(), 1);
  const auto [unmasked_forward, unmasked_grad] = run(unmasked);
  const auto [ones_forward, ones_grad] = run(all_ones);
  CHECK(bitwise_equal(unmasked_forward.context, ones_forward.context));
  CHECK(bitwise_equal(unmasked_forward.logsumexp, ones_forward.logsumexp));
  CHECK(bitwise_equal(unmasked_grad.dq, ones_grad.dq));
  CHECK(bitwise_equal(unmasked_grad.dk, ones_grad.dk));
  CHECK(bitwise_equal(unmasked_grad.dv, ones_grad.dv));
}

// KernelPaths::attention_fused_backward = false makes kMma's backward up to 128 keys the kernel pair:
// kMmaRecomputeDq's bits exactly (and, under the kernel emulation, its kernels).
TEST_CASE("cuda attention: KernelPaths without the fused backward runs kMma's backward as the kernel pair") {
  const Problem p = make_problem(2, 100, 2, 64, QkvLayout::kFused, 0.1f, 4711);
  INFO(p.describe());
  const DeviceProblem d(p);
  Context ctx;
  const ForwardResult forward = gpu_forward(ctx, p, d, AttentionKernel::kMma);
  const BackwardResult pair =
      gpu_backward(ctx, p, d, forward.context, forward.logsumexp, AttentionKernel::kMmaRecomputeDq);
  bert::cuda::KernelPaths paths;
  paths.attention_fused_backward = false;
  ctx.set_kernel_paths(paths);
  (void)launched_kernels();  // from here on: the unfused kMma backward's launches only
  const BackwardResult unfused = gpu_backward(ctx, p, d, forward.context, forward.logsumexp, AttentionKernel::kMma);
  const auto names = launched_kernels();
  ctx.set_kernel_paths({});
  const BackwardResult fused = gpu_backward(ctx, p, d, forward.context, forward.logsumexp, AttentionKernel::kMma);
  const auto fused_names = launched_kernels();
  CHECK(all_finite(unfused.dq));
  CHECK(bitwise_equal(unfused.dq, pair.dq));
  CHECK(bitwise_equal(unfused.dk, pair.dk));
  CHECK(bitwise_equal(unfused.dv, pair.dv));
  CHECK_CLOSE_REL("dq, fused against the pair", fused.dq, pair.dq, kBf16Tolerance);
  if (names) {
    CHECK_FALSE(launched(*names, "attention_backward_fused_mma_kernel"));
    CHECK(launched(*names, "attention_backward_dq_mma_kernel"));
    CHECK(launched(*fused_names, "attention_backward_fused_mma_kernel"));
  } else {
    WARN("which kernel ran is not checked on a device: only the kernel emulation records it");
  }
}

// KernelPaths::attention_persistent_forward: kMma's forward as a persistent grid, each block walking a
// run of 64-query items with the next item's Q, K/V and mask in flight, is the one-block-an-item kernel
// bit for bit, whatever the grid: one block walking every item (each (b, h)'s second item reusing the
// K/V in place at 65..128 keys, the all-padding sequence between padded ones), a few blocks splitting
// runs mid-(b, h), and the device's full grid.
TEST_CASE("cuda attention: the persistent forward is one block an item's, bit for bit, on any grid") {
  struct Shape {
    int64_t batch, seq_len, heads, head_dim;
    float dropout;
    bool with_mask;
  };
  const Shape shape =
      GENERATE(Shape{5, 1, 3, 64, 0.1f, true}, Shape{5, 7, 3, 64, 0.0f, true}, Shape{5, 64, 3, 64, 0.1f, true},
               Shape{5, 100, 3, 64, 0.1f, true}, Shape{5, 128, 3, 64, 0.0f, true}, Shape{5, 128, 3, 64, 0.1f, false},
               Shape{5, 129, 3, 64, 0.1f, true}, Shape{3, 300, 2, 64, 0.1f, true}, Shape{5, 100, 2, 32, 0.1f, true},
               Shape{5, 129, 2, 128, 0.0f, true});
  const Problem p = make_problem(shape.batch, shape.seq_len, shape.heads, shape.head_dim, QkvLayout::kFused,
                                 shape.dropout, 5150 + shape.seq_len + shape.head_dim, shape.with_mask);
  INFO(p.describe());
  const DeviceProblem d(p);
  Context ctx;
  bert::cuda::KernelPaths one_item;
  one_item.attention_persistent_forward = false;
  ctx.set_kernel_paths(one_item);
  (void)launched_kernels();
  const ForwardResult expected = gpu_forward(ctx, p, d, AttentionKernel::kMma);
  const auto expected_names = launched_kernels();
  CHECK(all_finite(expected.context));
  CHECK(all_finite(expected.logsumexp));
  ctx.set_kernel_paths({});
  for (const int limit : {1, 3, 7, 0}) {
    INFO("grid limit " << limit << " (0: the device's)");
    ctx.set_persistent_grid_limit(limit);
    const ForwardResult persistent = gpu_forward(ctx, p, d, AttentionKernel::kMma);
    const auto names = launched_kernels();
    CHECK(bitwise_equal(persistent.context, expected.context));
    CHECK(bitwise_equal(persistent.logsumexp, expected.logsumexp));
    if (names) {
      CHECK(launched(*names, "attention_forward_persistent_mma_kernel"));
      CHECK_FALSE(launched(*names, "attention_forward_mma_kernel"));
      CHECK(launched(*expected_names, "attention_forward_mma_kernel"));
      CHECK_FALSE(launched(*expected_names, "attention_forward_persistent_mma_kernel"));
    }
  }
  CHECK_THROWS_WITH(ctx.set_persistent_grid_limit(-1),
                    Catch::Contains("blocks must be >= 0") && Catch::Contains("got -1"));
}

TEST_CASE("cuda attention: an empty batch is a no-op") {
  Context ctx;
  const AttentionShape empty{0, 128, 12, 64, 3 * 768};
  CHECK_NOTHROW(
      bert::cuda::attention_forward(ctx, empty, nullptr, nullptr, nullptr, nullptr, DropoutSpec{}, nullptr, nullptr));
  CHECK_NOTHROW(bert::cuda::attention_backward(ctx, empty, nullptr, nullptr, nullptr, nullptr, nullptr, DropoutSpec{},
                                               nullptr, nullptr, nullptr, nullptr, nullptr));
  ctx.synchronize();
}

TEST_CASE("cuda attention: unsupported shapes and arguments throw std::invalid_argument naming the limit") {
  Context ctx;
  // Buffers large enough for every shape tried below, so nothing runs out of bounds even if a check
  // were missing (then only the CHECK_THROWS fail).
  const size_t elements = size_t{2} * 600 * 3 * 512;
  DeviceBuffer<bf16> qkv = poisoned<bf16>(elements), dqkv = poisoned<bf16>(elements),
                     context = poisoned<bf16>(elements), dcontext = poisoned<bf16>(elements);
  DeviceBuffer<float> logsumexp = poisoned<float>(elements);

  const auto rejects = [&](const AttentionShape& shape, float dropout_probability, size_t misalign,
                           const std::string& words) {
    INFO("batch=" << shape.batch << " seq_len=" << shape.seq_len << " heads=" << shape.num_heads
                  << " head_dim=" << shape.head_dim << " stride=" << shape.qkv_row_stride
                  << " dropout=" << dropout_probability << " misalign=" << misalign << ": expecting '" << words << "'");
    const DropoutSpec dropout{dropout_probability, 1, 2};
    const bf16* q = qkv.data() + misalign;
    CHECK_THROWS_AS(
        bert::cuda::attention_forward(ctx, shape, q, q, q, nullptr, dropout, context.data(), logsumexp.data()),
        std::invalid_argument);
    CHECK_THROWS_WITH(
        bert::cuda::attention_forward(ctx, shape, q, q, q, nullptr, dropout, context.data(), logsumexp.data()),
        Catch::Contains(words));
    CHECK_THROWS_AS(
        bert::cuda::attention_backward(ctx, shape, dcontext.data(), q, q, q, nullptr, dropout, context.data(),
                                       logsumexp.data(), dqkv.data(), dqkv.data(), dqkv.data()),
        std::invalid_argument);
    CHECK_THROWS_WITH(
        bert::cuda::attention_backward(ctx, shape, dcontext.data(), q, q, q, nullptr, dropout, context.data(),
                                       logsumexp.data(), dqkv.data(), dqkv.data(), dqkv.data()),
        Catch::Contains(words));
    if (dropout_probability == 0.0f && misalign == 0) {
      std::string why_not;
      CHECK_FALSE(bert::cuda::attention_supported(shape, &why_not));
      CHECK_THAT(why_not, Catch::Contains(words));
    }
  };

  const AttentionShape good{2, 128, 4, 64, 256};
  CHECK(bert::cuda::attention_supported(good));
  rejects(AttentionShape{2, 128, 4, 48, 192}, 0.0f, 0, "head_dim 48");
  rejects(AttentionShape{2, 128, 2, 256, 512}, 0.0f, 0, "head_dim 256");
  rejects(AttentionShape{2, 128, 4, 16, 64}, 0.0f, 0, "head_dim 16");
  rejects(AttentionShape{1, 513, 2, 64, 128}, 0.0f, 0, "seq_len 513");
  rejects(AttentionShape{2, 0, 4, 64, 256}, 0.0f, 0, "seq_len 0");
  rejects(AttentionShape{2, 128, 4, 64, 255}, 0.0f, 0, "qkv_row_stride 255 is below hidden 256");
  rejects(AttentionShape{2, 128, 4, 64, 260}, 0.0f, 0, "multiple of 8");
  rejects(AttentionShape{2, 128, 0, 64, 256}, 0.0f, 0, "num_heads");
  rejects(AttentionShape{-1, 128, 4, 64, 256}, 0.0f, 0, "batch");
  rejects(good, 1.0f, 0, "dropout probability");
  rejects(good, -0.5f, 0, "dropout probability");
  rejects(good, 0.0f, 1, "16-byte aligned");
  ctx.synchronize();  // nothing was launched, nothing failed asynchronously
}
