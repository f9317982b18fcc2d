// Softmax cross-entropy, forward and backward fused (kernels/ops.h; CPU reference:
// kernels/cpu/cross_entropy.cpp). logits bf16 [rows, classes], labels int32 [rows]
// (ops::kIgnoreIndex skips a row), dlogits bf16 [rows, classes] (may alias logits, may be nullptr);
// rows are shape.stride() elements apart in both (the padding between is never read or written),
// stats: one CrossEntropyDeviceStats in device memory, overwritten.
//
// Three launches on ctx.stream(), no host sync:
//   1. count_labels: one block counts the rows whose label != kIgnoreIndex -> stats->num_counted
//      (the gradient divides by it, so it must exist before any gradient is written).
//   2. the row kernel: one block per row. Pass 1 reads the row once with 16-byte loads and keeps
//      an online (max, sum of exp, first argmax) per thread, merged by a fixed shuffle tree; the
//      row's loss log(sum) + max - logit[label] and its correct flag go to fp32/int32 scratch.
//      Pass 2 (dlogits only) writes grad_scale * (softmax - onehot) / num_counted in bf16. Up to
//      32,768 classes the row stays in registers between the passes (cross_entropy_resident_rows,
//      all of a thread's loads issued at once); beyond, pass 2 re-reads it (L2-hot). Each element is
//      read before it is written by the same thread, and logit[label] is read before pass 1, so
//      aliasing is safe.
//   3. finalize: one block sums the per-row losses (double) and correct flags in a fixed order
//      -> stats->loss_sum, stats->num_correct. Bitwise repeatable for a given shape.
//
// Policy for a label outside [0, classes) and != kIgnoreIndex (the CPU reference throws; a device
// cannot without a sync): the row counts in num_counted, its loss is NaN (so loss_sum is NaN), it is
// never correct, and its dlogits row is NaN. The NaN then reaches grad_norm, and adamw_step with
// clip_norm skips the update: a bad label is loud in the log and never silently trains.
// Argmax: the first maximum wins (like the CPU). A row whose logits are all -inf/NaN has no argmax
// (never correct); its loss is NaN/inf as on the CPU.
//
// Napkin math (MLM on the ~15% masked rows: 2,458 rows x 30,522 classes at 16k tokens, bf16): 150 MB
// of logits read + 150 MB of dlogits written, ~71 us at the H200's 4.25 TB/s copy bandwidth; 2 exp2
// per element (150M) ~36 us of the SFUs, overlapped. Measured (2026-12-04, H200): 0.142 ms, 50% of
// copy bandwidth, with the streaming kernel: 512 threads a row, 7-8 dependent 16-byte loads a
// thread in pass 1, and the row re-read in pass 2 from an L2 that 528 rows in flight (32 MB) mostly
// overflow. The resident kernel (1,024 threads, <= 4 vectors each, 59 registers, so one row an SM
// with 64 KB in flight) reads each logit once. Not timed yet: KernelPaths::cross_entropy_resident =
// false keeps the streaming kernels at every size, so bench_kernels times both in one run
// (cross_entropy_baseline). NSP (classes 2) is launch bound.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

using namespace detail;  // kernels/cuda/common.cuh

constexpr float kLog2e = 1.4426950408889634f;
constexpr int32_t kNoIndex = std::numeric_limits<int32_t>::max();
constexpr int kReduceThreads = 1024;  // count_labels and finalize: one block each

// Elements before the first 16-byte boundary of a bf16 row (0..7, at most `count`).
__device__ __forceinline__ int64_t misaligned_head(const bf16* row, int64_t count) {
  const int64_t head = static_cast<int64_t>((16 - (reinterpret_cast<uintptr_t>(row) & 15)) & 15) / 2;
  return head < count ? head : count;
}

// The running softmax statistics of a set of logits: their maximum, sum of exp(x - max), and the
// lowest index holding the maximum.
struct SoftmaxState {
  float max;
  float sum;
  int32_t argmax;
};

// Absorbs logit x at `index`; a thread visits its indices in increasing order, so a strict `>`
// keeps the first maximum. NaN never becomes the max but poisons the sum (the loss is NaN, as on
// the CPU); -inf contributes exactly 0.
__device__ __forceinline__ void absorb(SoftmaxState& state, float x, int32_t index) {
  if (x > state.max) {
    state.sum = state.sum * exp2f((state.max - x) * kLog2e) + 1.0f;
    state.max = x;
    state.argmax = index;
  } else if (x != -INFINITY) {
    state.sum += exp2f((x - state.max) * kLog2e);
  }
}

__device__ __forceinline__ SoftmaxState merge(const SoftmaxState& a, const SoftmaxState& b) {
  SoftmaxState out;
  out.max = fmaxf(a.max, b.max);
  // An empty side (sum 0, max -inf) adds nothing; this also avoids exp2(-inf - -inf) = NaN.
  const float part_a = a.sum != 0.0f ? a.sum * exp2f((a.max - out.max) * kLog2e) : 0.0f;
  const float part_b = b.sum != 0.0f ? b.sum * exp2f((b.max - out.max) * kLog2e) : 0.0f;
  out.sum = part_a + part_b;
  const bool take_b = b.max > a.max || (b.max == a.max && b.argmax < a.argmax);
  out.argmax = take_b ? b.argmax : a.argmax;
  return out;
}

// Merges the states of a warp's 32 lanes in a fixed tree (shuffle down); the result is valid in lane 0.
__device__ __forceinline__ SoftmaxState warp_merge(SoftmaxState state) {
  for (int offset = 16; offset > 0; offset /= 2) {
    SoftmaxState other;
    other.max = __shfl_down_sync(0xffffffffu, state.max, offset);
    other.sum = __shfl_down_sync(0xffffffffu, state.sum, offset);
    other.argmax = __shfl_down_sync(0xffffffffu, state.argmax, offset);
    state = merge(state, other);
  }
  return state;
}

// Merges every thread's state in a fixed tree; the result is valid in all threads.
template <int kThreads>
__device__ SoftmaxState block_merge(SoftmaxState state) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps");
  constexpr int kWarps = kThreads / 32;
  __shared__ SoftmaxState warp_states[kWarps];
  __shared__ SoftmaxState result;
  state = warp_merge(state);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_states[warp] = state;
  __syncthreads();
  if (warp == 0) {
    state = warp_merge(lane < kWarps ? warp_states[lane] : SoftmaxState{-INFINITY, 0.0f, kNoIndex});
    if (lane == 0) result = state;
  }
  __syncthreads();
  return result;
}

// Writes `value` to every element of a row, 16 bytes at a time where aligned.
template <int kThreads>
__device__ void fill_row(bf16* row, int64_t classes, bf16 value) {
  const int64_t head = misaligned_head(row, classes);
  const int64_t vectors = (classes - head) / 8;
  if (threadIdx.x < head) row[threadIdx.x] = value;
  Bf16x8 pack;
  for (int j = 0; j < 8; ++j) pack.value[j] = value;
  for (int64_t v = threadIdx.x; v < vectors; v += kThreads) store_bf16_pack(row + head + v * 8, pack);
  for (int64_t c = head + vectors * 8 + threadIdx.x; c < classes; c += kThreads) row[c] = value;
}

// ------------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kReduceThreads)
    count_labels_kernel(int64_t rows, const int32_t* labels, CrossEntropyDeviceStats* stats) {
  int32_t counted = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kReduceThreads) counted += labels[r] != ops::kIgnoreIndex ? 1 : 0;
  counted = block_sum<kReduceThreads>(counted);
  if (threadIdx.x == 0) stats->num_counted = counted;
}

// ------------------------------------------------------------------------------------------------

// A row whose label is kIgnoreIndex or out of range: its loss (0 or NaN), flag and gradient row (0 or
// NaN) are written and the row kernel returns.
template <int kThreads>
__device__ bool finish_unlabelled_row(int64_t r, int32_t label, int64_t classes, bf16* grad, float* row_loss,
                                      int32_t* row_correct) {
  if (label != ops::kIgnoreIndex && label >= 0 && label < classes) return false;
  const bool ignored = label == ops::kIgnoreIndex;
  if (threadIdx.x == 0) {
    row_loss[r] = ignored ? 0.0f : NAN;
    row_correct[r] = 0;
  }
  if (grad != nullptr) fill_row<kThreads>(grad, classes, __float2bfloat16_rn(ignored ? 0.0f : NAN));
  return true;
}

// The row's loss log(sum) + max - logit[label] and correct flag, from the merged state (thread 0).
__device__ __forceinline__ void write_row_loss(int64_t r, int32_t label, float label_logit, const SoftmaxState& total,
                                               float* row_loss, int32_t* row_correct) {
  if (threadIdx.x == 0) {
    row_loss[r] = logf(total.sum) + total.max - label_logit;
    row_correct[r] = total.argmax == label ? 1 : 0;
  }
}

// grad = g * softmax, minus g at the label (the CPU's order of operations), g = grad_scale / counted.
// Explicitly rounded operations: the aligned (vector) and unaligned (scalar) paths must give the same
// bits whatever ptxas decides to fuse (the aliasing test compares them bitwise).
struct RowGradient {
  float grad_per_row, max_logit, inv_sum;
  int64_t label;
  __device__ __forceinline__ bf16 operator()(float x, int64_t c) const {
    float value = __fmul_rn(grad_per_row, __fmul_rn(exp2f(__fmul_rn(__fsub_rn(x, max_logit), kLog2e)), inv_sum));
    if (c == label) value = __fsub_rn(value, grad_per_row);
    return __float2bfloat16_rn(value);
  }
};

__device__ __forceinline__ RowGradient row_gradient(float grad_scale, const CrossEntropyDeviceStats* stats,
                                                    const SoftmaxState& total, int32_t label) {
  return RowGradient{grad_scale / static_cast<float>(stats->num_counted), total.max, 1.0f / total.sum, label};
}

// The row, held in registers: the body's 16-byte vectors v = threadIdx.x + k * kThreads (k < kVectors)
// and at most one head and one tail element a thread (both fewer than 8 a row), all loaded before
// the first is absorbed: one DRAM round trip a row, and pass 2 writes from registers instead of
// re-reading the row. The absorption order is cross_entropy_rows_kernel's (head, body in v order,
// tail): at the same kThreads the two give the same bits (the launcher's choice of kernel and
// kThreads is fixed by the shape). Needs vectors <= kThreads * kVectors.
template <int kThreads, int kVectors>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_resident_rows_kernel(int64_t classes, int64_t stride, const bf16* logits, const int32_t* labels,
                                       float grad_scale, const CrossEntropyDeviceStats* stats, bf16* dlogits,
                                       float* row_loss, int32_t* row_correct) {
  const int64_t r = blockIdx.x;
  const int32_t label = labels[r];
  const bf16* row = logits + r * stride;
  bf16* grad = dlogits != nullptr ? dlogits + r * stride : nullptr;
  if (finish_unlabelled_row<kThreads>(r, label, classes, grad, row_loss, row_correct)) return;

  // Read before pass 2 may overwrite it (dlogits aliasing logits); the merge's barriers order it.
  const float label_logit = threadIdx.x == 0 ? __bfloat162float(row[label]) : 0.0f;
  const int64_t head = misaligned_head(row, classes);
  const int64_t vectors = (classes - head) / 8;
  const int64_t tail = head + vectors * 8 + threadIdx.x;  // this thread's tail element, if < classes
  Bf16x8 body[kVectors] = {};
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const int64_t v = threadIdx.x + int64_t{k} * kThreads;
    if (v < vectors) body[k] = load_bf16_pack(row + head + v * 8);
  }
  const float head_x = threadIdx.x < head ? __bfloat162float(row[threadIdx.x]) : 0.0f;
  const float tail_x = tail < classes ? __bfloat162float(row[tail]) : 0.0f;

  SoftmaxState state{-INFINITY, 0.0f, kNoIndex};
  if (threadIdx.x < head) absorb(state, head_x, static_cast<int32_t>(threadIdx.x));
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const int64_t v = threadIdx.x + int64_t{k} * kThreads;
    if (v >= vectors) break;
    const int32_t first = static_cast<int32_t>(head + v * 8);
#pragma unroll
    for (int j = 0; j < 8; ++j) absorb(state, __bfloat162float(body[k].value[j]), first + j);
  }
  if (tail < classes) absorb(state, tail_x, static_cast<int32_t>(tail));
  const SoftmaxState total = block_merge<kThreads>(state);
  write_row_loss(r, label, label_logit, total, row_loss, row_correct);
  if (grad == nullptr) return;

  const RowGradient gradient = row_gradient(grad_scale, stats, total, label);
  const bool vector_stores = misaligned_head(grad, classes) == head;
  if (threadIdx.x < head) grad[threadIdx.x] = gradient(head_x, threadIdx.x);
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const int64_t v = threadIdx.x + int64_t{k} * kThreads;
    if (v >= vectors) break;
    const int64_t first = head + v * 8;
    Bf16x8 out;
#pragma unroll
    for (int j = 0; j < 8; ++j) out.value[j] = gradient(__bfloat162float(body[k].value[j]), first + j);
    if (vector_stores) {
      store_bf16_pack(grad + first, out);
    } else {  // dlogits is a distinct buffer with a different alignment
#pragma unroll
      for (int j = 0; j < 8; ++j) grad[first + j] = out.value[j];
    }
  }
  if (tail < classes) grad[tail] = gradient(tail_x, tail);
}

// Rows longer than the resident kernels hold (over 32,768 classes), and every row with
// KernelPaths::cross_entropy_resident off: pass 1 streams the row, pass 2 re-reads it (L2-hot).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_rows_kernel(int64_t classes, int64_t stride, const bf16* logits, const int32_t* labels,
                              float grad_scale, const CrossEntropyDeviceStats* stats, bf16* dlogits, float* row_loss,
                              int32_t* row_correct) {
  const int64_t r = blockIdx.x;
  const int32_t label = labels[r];
  const bf16* row = logits + r * stride;
  bf16* grad = dlogits != nullptr ? dlogits + r * stride : nullptr;
  if (finish_unlabelled_row<kThreads>(r, label, classes, grad, row_loss, row_correct)) return;

  // Read before pass 2 may overwrite it (dlogits aliasing logits); the merge's barriers order it.
  const float label_logit = threadIdx.x == 0 ? __bfloat162float(row[label]) : 0.0f;

  // Pass 1: head (scalar, up to the 16-byte boundary), body (8 per load), tail. Each thread's
  // indices increase across the three parts.
  const int64_t head = misaligned_head(row, classes);
  const int64_t vectors = (classes - head) / 8;
  const int64_t tail_begin = head + vectors * 8;
  SoftmaxState state{-INFINITY, 0.0f, kNoIndex};
  if (threadIdx.x < head) absorb(state, __bfloat162float(row[threadIdx.x]), static_cast<int32_t>(threadIdx.x));
  for (int64_t v = threadIdx.x; v < vectors; v += kThreads) {
    const Bf16x8 pack = load_bf16_pack(row + head + v * 8);
    const int32_t first = static_cast<int32_t>(head + v * 8);
#pragma unroll
    for (int j = 0; j < 8; ++j) absorb(state, __bfloat162float(pack.value[j]), first + j);
  }
  for (int64_t c = tail_begin + threadIdx.x; c < classes; c += kThreads)
    absorb(state, __bfloat162float(row[c]), static_cast<int32_t>(c));
  const SoftmaxState total = block_merge<kThreads>(state);
  write_row_loss(r, label, label_logit, total, row_loss, row_correct);
  if (grad == nullptr) return;

  // Pass 2.
  const RowGradient gradient = row_gradient(grad_scale, stats, total, label);
  if (misaligned_head(grad, classes) == head) {
    if (threadIdx.x < head) grad[threadIdx.x] = gradient(__bfloat162float(row[threadIdx.x]), threadIdx.x);
    for (int64_t v = threadIdx.x; v < vectors; v += kThreads) {
      const int64_t first = head + v * 8;
      const Bf16x8 pack = load_bf16_pack(row + first);
      Bf16x8 out;
#pragma unroll
      for (int j = 0; j < 8; ++j) out.value[j] = gradient(__bfloat162float(pack.value[j]), first + j);
      store_bf16_pack(grad + first, out);
    }
    for (int64_t c = tail_begin + threadIdx.x; c < classes; c += kThreads)
      grad[c] = gradient(__bfloat162float(row[c]), c);
  } else {
    // logits and dlogits are distinct buffers with different alignment: element by element.
    for (int64_t c = threadIdx.x; c < classes; c += kThreads) grad[c] = gradient(__bfloat162float(row[c]), c);
  }
}

// ------------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kReduceThreads)
    finalize_kernel(int64_t rows, const float* row_loss, const int32_t* row_correct, CrossEntropyDeviceStats* stats) {
  double loss = 0;
  int32_t correct = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kReduceThreads) {
    loss += static_cast<double>(row_loss[r]);
    correct += row_correct[r];
  }
  loss = block_sum<kReduceThreads>(loss);
  __syncthreads();  // the two reductions share no storage, but keep their phases apart
  correct = block_sum<kReduceThreads>(correct);
  if (threadIdx.x == 0) {
    stats->loss_sum = static_cast<float>(loss);
    stats->num_correct = correct;
  }
}

template <int kThreads, int kVectors>
void launch_rows(Context& ctx, const LogitsShape& shape, const bf16* logits, const int32_t* labels, float grad_scale,
                 const CrossEntropyDeviceStats* stats, bf16* dlogits, float* row_loss, int32_t* row_correct) {
  const unsigned grid = static_cast<unsigned>(shape.rows);
  if constexpr (kVectors == 0)
    cross_entropy_rows_kernel<kThreads><<<grid, kThreads, 0, ctx.stream()>>>(
        shape.classes, shape.stride(), logits, labels, grad_scale, stats, dlogits, row_loss, row_correct);
  else
    cross_entropy_resident_rows_kernel<kThreads, kVectors><<<grid, kThreads, 0, ctx.stream()>>>(
        shape.classes, shape.stride(), logits, labels, grad_scale, stats, dlogits, row_loss, row_correct);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void softmax_cross_entropy(Context& ctx, const LogitsShape& shape, const bf16* logits, const int32_t* labels,
                           float grad_scale, bf16* dlogits, CrossEntropyDeviceStats* stats) {
  constexpr const char* kOp = "softmax_cross_entropy";
  require(shape.rows >= 0 && shape.classes > 0, kOp,
          "need rows >= 0 and classes > 0 (got rows " + std::to_string(shape.rows) + ", classes " +
              std::to_string(shape.classes) + ")");
  require(shape.row_stride == 0 || shape.row_stride >= shape.classes, kOp,
          "row_stride " + std::to_string(shape.row_stride) + " is below classes " + std::to_string(shape.classes) +
              " (0 means dense)");
  require(shape.classes <= std::numeric_limits<int32_t>::max(), kOp, "classes must fit in int32");
  require(shape.rows <= std::numeric_limits<int32_t>::max(), kOp, "rows must fit in int32 (one block per row)");
  require(stats != nullptr, kOp, "stats is nullptr");
  require(shape.rows == 0 || (logits != nullptr && labels != nullptr), kOp, "logits and labels must not be nullptr");
  // The row kernel's 16-byte accesses start after a misaligned head, counted in whole elements.
  require(aligned_to(logits, alignof(bf16)) && aligned_to(dlogits, alignof(bf16)) && aligned_to(labels, 4), kOp,
          "logits, dlogits and labels must be aligned to their element size");

  const int64_t rows = shape.rows;
  float* row_loss = nullptr;
  int32_t* row_correct = nullptr;
  if (rows > 0) {
    // [rows] fp32 losses, then [rows] int32 flags (one scratch call: its region is reused).
    auto* scratch = static_cast<unsigned char*>(ctx.scratch(static_cast<size_t>(rows) * 8));
    row_loss = reinterpret_cast<float*>(scratch);
    row_correct = reinterpret_cast<int32_t*>(scratch + static_cast<size_t>(rows) * 4);
  }

  count_labels_kernel<<<1, kReduceThreads, 0, ctx.stream()>>>(rows, labels, stats);
  CUDA_CHECK_LAUNCH();
  if (rows > 0) {
    // Fixed by the shape (and ctx's KernelPaths) alone, so the reduction order (and the bits) never
    // depend on the device. Resident kernels hold kThreads * kVectors * 8 >= classes elements (a
    // row's body has at most classes / 8 vectors); kVectors = 0 is the streaming kernel, at every size
    // without KernelPaths::cross_entropy_resident (the kernels before the resident ones, kept to time
    // against them).
    const int64_t classes = shape.classes;
    const bool resident = ctx.kernel_paths().cross_entropy_resident;
    const auto launch = !resident                 ? (classes < 256    ? launch_rows<32, 0>
                                                     : classes < 4096 ? launch_rows<128, 0>
                                                                      : launch_rows<512, 0>)
                        : classes < 256           ? launch_rows<32, 1>
                        : classes < 4096          ? launch_rows<128, 4>
                        : classes <= 1024 * 4 * 8 ? launch_rows<1024, 4>
                                                  : launch_rows<512, 0>;
    launch(ctx, shape, logits, labels, grad_scale, stats, dlogits, row_loss, row_correct);
  }
  finalize_kernel<<<1, kReduceThreads, 0, ctx.stream()>>>(rows, row_loss, row_correct, stats);
  CUDA_CHECK_LAUNCH();
}

CrossEntropyStats read_cross_entropy_stats(Context& ctx, const CrossEntropyDeviceStats* stats) {
  require(stats != nullptr, "read_cross_entropy_stats", "stats is nullptr");
  CrossEntropyDeviceStats host{};
  CUDA_CHECK(cudaMemcpyAsync(&host, stats, sizeof(host), cudaMemcpyDeviceToHost, ctx.stream()));
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  CrossEntropyStats out;
  out.num_counted = host.num_counted;
  out.num_correct = host.num_correct;
  out.loss = host.num_counted > 0 ? static_cast<double>(host.loss_sum) / static_cast<double>(host.num_counted) : 0.0;
  return out;
}

}  // namespace bert::cuda
