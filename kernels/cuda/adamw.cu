// AdamW (PyTorch torch.optim.AdamW, single-tensor path) and the global gradient L2 norm over many
// tensors per launch, plus fp32 <-> bf16 conversions (kernels/ops.h; CPU reference:
// kernels/cpu/adamw.cpp). fp32 master params, grads and moments; an optional bf16 working copy of
// each param is written after its update.
//
// MultiTensorList uploads, once, a table of AdamWTensor and a list of chunks (tensor index, start,
// length <= kChunkElements): one block per chunk, so a single launch covers every tensor of the
// model, big or small. A chunk whose pointers are all 16-byte aligned moves float4s; otherwise it
// goes element by element (the same per-element arithmetic, so the same bits).
//
// grad_norm: block per chunk sums grad^2 in double (fixed thread-stride + shuffle tree) into scratch,
// then one block sums the chunk partials in a fixed order and writes sqrt as float. Deterministic.
// adamw_step: a one-thread prologue forms the step's scalars on the device, so nothing waits for
// the host: the clip coefficient (ops::clip_grad_coefficient in double from a device clip_norm; a
// non-finite norm marks the step skipped) and, with a device step counter, which step this is
// (count + 1; the counter advances only when the update is applied). The bias corrections and step
// size come from the host, formed in double from hyper.step and rounded to float as the CPU
// reference does; with a counter they are used when count + 1 == hyper.step (the caller's
// expectation: always, unless a skip it has not seen yet intervened), else the prologue forms them
// with the device's double pow (within 2 ulp of glibc's: the float result can differ in the last
// bit). The element update uses explicitly rounded fp32 operations (__fmul_rn, __fdiv_rn,
// __fsqrt_rn, ...: no FMA contraction), so it reproduces the CPU fp32 reference bit for bit when both
// see the same scalars; every block of a skipped step returns at once.
//
// Napkin math (BERT-base, 110M params): AdamW reads param, grad, m, v (16 B) and writes param, m, v
// (12 B) + the bf16 copy (2 B): 30 B/param = 3.3 GB per step, ~0.8 ms at ~4 TB/s (H200). The norm
// reads the grads once: 0.44 GB, ~0.1 ms. 64K-element chunks: ~1.7K blocks for BERT-base, about 13
// per SM on 132 SMs, plus one small block for each bias / LayerNorm vector.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

using namespace detail;  // kernels/cuda/common.cuh

constexpr int64_t kChunkElements = 65536;
constexpr int kChunkThreads = 512;
constexpr int kFinalThreads = 1024;

// One chunk of one tensor: elements [start, start + length) of tensors[tensor].
struct TensorChunk {
  int64_t start;
  int32_t tensor;
  int32_t length;
};

// Per-launch scalars, formed on the host in double and rounded to float (the CPU reference's order).
struct AdamWScalars {
  float beta2;
  float one_minus_beta1;
  float one_minus_beta2;
  float epsilon;
  float decay_factor;  // 1 - lr * weight_decay
  int decay_enabled;   // weight_decay != 0
};

// The host's view of the per-step scalars, and what adamw_prologue_kernel makes of them on the device.
struct AdamWStepInput {
  double learning_rate, beta1, beta2;
  int64_t step;                 // hyper.step: the host's t (with a counter: the step it expects)
  float step_size;              // lr / (1 - beta1^t)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  float grad_scale;             // without a device clip norm
  float max_grad_norm;
};
struct AdamWStepScalars {
  float step_size;
  float bias_correction2_sqrt;
  float grad_scale;
  int skip;  // the clip norm is not finite: no update at all
};

// ------------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kChunkThreads)
    chunk_sum_of_squares_kernel(const AdamWTensor* tensors, const TensorChunk* chunks, double* partial_sums) {
  const TensorChunk chunk = chunks[blockIdx.x];
  const float* grad = tensors[chunk.tensor].grad + chunk.start;
  const int32_t length = chunk.length;
  double sum = 0;
  if (aligned16(grad)) {
    const int32_t vectors = length / 4;
    const float4* grad4 = reinterpret_cast<const float4*>(grad);
    for (int32_t v = threadIdx.x; v < vectors; v += kChunkThreads) {
      const float4 g = grad4[v];
      sum += static_cast<double>(g.x) * g.x;
      sum += static_cast<double>(g.y) * g.y;
      sum += static_cast<double>(g.z) * g.z;
      sum += static_cast<double>(g.w) * g.w;
    }
    for (int32_t i = vectors * 4 + static_cast<int32_t>(threadIdx.x); i < length; i += kChunkThreads)
      sum += static_cast<double>(grad[i]) * grad[i];
  } else {
    for (int32_t i = threadIdx.x; i < length; i += kChunkThreads) sum += static_cast<double>(grad[i]) * grad[i];
  }
  sum = block_sum<kChunkThreads>(sum);
  if (threadIdx.x == 0) partial_sums[blockIdx.x] = sum;
}

__global__ void __launch_bounds__(kFinalThreads)
    final_norm_kernel(int64_t num_chunks, const double* partial_sums, float* norm) {
  double sum = 0;
  for (int64_t c = threadIdx.x; c < num_chunks; c += kFinalThreads) sum += partial_sums[c];
  sum = block_sum<kFinalThreads>(sum);
  if (threadIdx.x == 0) *norm = static_cast<float>(sqrt(sum));
}

// ------------------------------------------------------------------------------------------------

// One thread: the step's scalars (see the file comment), into *out for adamw_kernel.
__global__ void adamw_prologue_kernel(AdamWStepInput in, const float* clip_norm, int64_t* step_count,
                                      AdamWStepScalars* out) {
  AdamWStepScalars s{in.step_size, in.bias_correction2_sqrt, in.grad_scale, 0};
  if (clip_norm != nullptr) {
    const float norm = *clip_norm;
    if (isfinite(norm))
      s.grad_scale = static_cast<float>(ops::clip_grad_coefficient(static_cast<double>(norm), in.max_grad_norm));
    else
      s.skip = 1;  // params, moments, the bf16 copy and the step count stay as they are
  }
  if (step_count != nullptr && s.skip == 0) {
    const int64_t step = *step_count + 1;
    if (step != in.step) {  // not the step the host formed the scalars for
      s.step_size = static_cast<float>(in.learning_rate / (1.0 - pow(in.beta1, static_cast<double>(step))));
      s.bias_correction2_sqrt = static_cast<float>(sqrt(1.0 - pow(in.beta2, static_cast<double>(step))));
    }
    *step_count = step;
  }
  *out = s;
}

// One element of the update; the CPU reference's operations in its order, each rounded once.
__device__ __forceinline__ void adamw_element(const AdamWScalars& s, const AdamWStepScalars& t, bool decay,
                                              float raw_grad, float& param, float& exp_avg, float& exp_avg_sq) {
  const float grad = __fmul_rn(raw_grad, t.grad_scale);
  float p = param;
  if (decay) p = __fmul_rn(p, s.decay_factor);
  // torch lerp_(end, weight): weight < 0.5 ? self + weight * (end - self) : end - (end - self) * (1 - weight).
  const float m = s.one_minus_beta1 < 0.5f
                      ? __fadd_rn(exp_avg, __fmul_rn(s.one_minus_beta1, __fsub_rn(grad, exp_avg)))
                      : __fsub_rn(grad, __fmul_rn(__fsub_rn(grad, exp_avg), __fsub_rn(1.0f, s.one_minus_beta1)));
  const float v = __fadd_rn(__fmul_rn(exp_avg_sq, s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, grad), grad));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), t.bias_correction2_sqrt), s.epsilon);
  param = __fsub_rn(p, __fmul_rn(t.step_size, __fdiv_rn(m, denom)));
  exp_avg = m;
  exp_avg_sq = v;
}

__global__ void __launch_bounds__(kChunkThreads)
    adamw_kernel(const AdamWTensor* tensors, const TensorChunk* chunks, AdamWScalars scalars,
                 const AdamWStepScalars* step_scalars) {
  const AdamWStepScalars step = *step_scalars;
  if (step.skip != 0) return;  // the step is skipped: params, moments and the bf16 copy unchanged
  const TensorChunk chunk = chunks[blockIdx.x];
  const AdamWTensor tensor = tensors[chunk.tensor];
  const bool decay = tensor.apply_weight_decay && scalars.decay_enabled != 0;
  float* param = tensor.param + chunk.start;
  const float* grad = tensor.grad + chunk.start;
  float* exp_avg = tensor.exp_avg + chunk.start;
  float* exp_avg_sq = tensor.exp_avg_sq + chunk.start;
  bf16* param_bf16 = tensor.param_bf16 != nullptr ? tensor.param_bf16 + chunk.start : nullptr;
  const int32_t length = chunk.length;

  int32_t vector_end = 0;  // elements [0, vector_end) go 4 at a time
  if (aligned16(param) && aligned16(grad) && aligned16(exp_avg) && aligned16(exp_avg_sq) &&
      (param_bf16 == nullptr || (reinterpret_cast<uintptr_t>(param_bf16) & 7) == 0)) {
    vector_end = length / 4 * 4;
    for (int32_t v = threadIdx.x; v < length / 4; v += kChunkThreads) {
      float4 p = reinterpret_cast<float4*>(param)[v];
      float4 m = reinterpret_cast<float4*>(exp_avg)[v];
      float4 s = reinterpret_cast<float4*>(exp_avg_sq)[v];
      const float4 g = reinterpret_cast<const float4*>(grad)[v];
      adamw_element(scalars, step, decay, g.x, p.x, m.x, s.x);
      adamw_element(scalars, step, decay, g.y, p.y, m.y, s.y);
      adamw_element(scalars, step, decay, g.z, p.z, m.z, s.z);
      adamw_element(scalars, step, decay, g.w, p.w, m.w, s.w);
      reinterpret_cast<float4*>(param)[v] = p;
      reinterpret_cast<float4*>(exp_avg)[v] = m;
      reinterpret_cast<float4*>(exp_avg_sq)[v] = s;
      if (param_bf16 != nullptr) {
        const __nv_bfloat162 low = __floats2bfloat162_rn(p.x, p.y), high = __floats2bfloat162_rn(p.z, p.w);
        uint2 packed;
        memcpy(&packed.x, &low, 4);
        memcpy(&packed.y, &high, 4);
        reinterpret_cast<uint2*>(param_bf16)[v] = packed;
      }
    }
  }
  for (int32_t i = vector_end + static_cast<int32_t>(threadIdx.x); i < length; i += kChunkThreads) {
    float p = param[i], m = exp_avg[i], s = exp_avg_sq[i];
    adamw_element(scalars, step, decay, grad[i], p, m, s);
    param[i] = p;
    exp_avg[i] = m;
    exp_avg_sq[i] = s;
    if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16_rn(p);
  }
}

// ------------------------------------------------------------------------------------------------

__global__ void f32_to_bf16_kernel(int64_t numel, const float* src, bf16* dst) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride)
    dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void bf16_to_f32_kernel(int64_t numel, const bf16* src, float* dst) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride)
    dst[i] = __bfloat162float(src[i]);
}

unsigned elementwise_blocks(const Context& ctx, int64_t numel, int threads) {
  const int64_t wanted = (numel + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(ctx.multiprocessors() > 0 ? ctx.multiprocessors() : 132) * 16;
  return static_cast<unsigned>(wanted < cap ? wanted : cap);
}

}  // namespace

MultiTensorList::MultiTensorList(std::span<const AdamWTensor> tensors) {
  const char* op = "MultiTensorList";
  require(tensors.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()), op, "too many tensors");
  std::vector<TensorChunk> chunks;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const AdamWTensor& tensor = tensors[t];
    const std::string which = "tensor " + std::to_string(t);
    require(tensor.numel >= 0, op, which + " has numel < 0");
    if (tensor.numel == 0) continue;
    require(
        tensor.param != nullptr && tensor.grad != nullptr && tensor.exp_avg != nullptr && tensor.exp_avg_sq != nullptr,
        op, which + ": param, grad, exp_avg and exp_avg_sq must not be nullptr (param_bf16 may)");
    require(aligned_to(tensor.param, 4) && aligned_to(tensor.grad, 4) && aligned_to(tensor.exp_avg, 4) &&
                aligned_to(tensor.exp_avg_sq, 4) && aligned_to(tensor.param_bf16, 2),
            op, which + ": every pointer must be aligned to its element size");
    for (int64_t start = 0; start < tensor.numel; start += kChunkElements) {
      const int64_t length = tensor.numel - start < kChunkElements ? tensor.numel - start : kChunkElements;
      chunks.push_back(TensorChunk{start, static_cast<int32_t>(t), static_cast<int32_t>(length)});
    }
    total_numel_ += tensor.numel;
  }
  require(chunks.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()), op,
          "too many chunks for one launch");
  count_ = tensors.size();
  num_chunks_ = chunks.size();
  const auto* table_bytes = reinterpret_cast<const unsigned char*>(tensors.data());
  table_.upload(std::span<const unsigned char>(table_bytes, tensors.size_bytes()));
  const auto* chunk_bytes = reinterpret_cast<const unsigned char*>(chunks.data());
  chunks_.upload(std::span<const unsigned char>(chunk_bytes, chunks.size() * sizeof(TensorChunk)));
}

void grad_norm(Context& ctx, const MultiTensorList& tensors, float* norm) {
  require(norm != nullptr, "grad_norm", "norm is nullptr");
  const size_t num_chunks = tensors.num_chunks();
  double* partial_sums = nullptr;
  if (num_chunks > 0) {
    partial_sums = static_cast<double*>(ctx.scratch(num_chunks * sizeof(double)));
    chunk_sum_of_squares_kernel<<<static_cast<unsigned>(num_chunks), kChunkThreads, 0, ctx.stream()>>>(
        static_cast<const AdamWTensor*>(tensors.device_table()),
        static_cast<const TensorChunk*>(tensors.device_chunks()), partial_sums);
    CUDA_CHECK_LAUNCH();
  }
  final_norm_kernel<<<1, kFinalThreads, 0, ctx.stream()>>>(static_cast<int64_t>(num_chunks), partial_sums, norm);
  CUDA_CHECK_LAUNCH();
}

void adamw_step(Context& ctx, const AdamWHyperparams& hyper, const MultiTensorList& tensors, const float* clip_norm,
                float max_grad_norm, int64_t* step_count) {
  const char* op = "adamw_step";
  require(hyper.step >= 1, op, "step must be >= 1 (the first update is step 1)");
  require(hyper.beta1 >= 0 && hyper.beta1 < 1 && hyper.beta2 >= 0 && hyper.beta2 < 1, op, "betas must be in [0, 1)");
  require(clip_norm == nullptr || max_grad_norm > 0, op, "max_grad_norm must be > 0 when clipping");
  AdamWScalars scalars;
  scalars.beta2 = static_cast<float>(hyper.beta2);
  scalars.one_minus_beta1 = static_cast<float>(1.0 - hyper.beta1);
  scalars.one_minus_beta2 = static_cast<float>(1.0 - hyper.beta2);
  scalars.epsilon = static_cast<float>(hyper.epsilon);
  scalars.decay_factor = static_cast<float>(1.0 - hyper.learning_rate * hyper.weight_decay);
  scalars.decay_enabled = hyper.weight_decay != 0.0 ? 1 : 0;

  const double step = static_cast<double>(hyper.step);
  AdamWStepInput input{hyper.learning_rate, hyper.beta1, hyper.beta2, hyper.step, 0.0f, 0.0f, 0.0f, max_grad_norm};
  input.step_size = static_cast<float>(hyper.learning_rate / (1.0 - std::pow(hyper.beta1, step)));
  input.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(hyper.beta2, step)));
  input.grad_scale = static_cast<float>(hyper.grad_scale);
  // The stream orders the prologue's write after every earlier reader of the scratch (grad_norm's
  // partial sums) and before adamw_kernel's read.
  auto* step_scalars = static_cast<AdamWStepScalars*>(ctx.scratch(sizeof(AdamWStepScalars)));
  adamw_prologue_kernel<<<1, 1, 0, ctx.stream()>>>(input, clip_norm, step_count, step_scalars);
  CUDA_CHECK_LAUNCH();
  if (tensors.num_chunks() == 0) return;  // the step still counts
  adamw_kernel<<<static_cast<unsigned>(tensors.num_chunks()), kChunkThreads, 0, ctx.stream()>>>(
      static_cast<const AdamWTensor*>(tensors.device_table()), static_cast<const TensorChunk*>(tensors.device_chunks()),
      scalars, step_scalars);
  CUDA_CHECK_LAUNCH();
}

void convert_f32_to_bf16(Context& ctx, int64_t numel, const float* src, bf16* dst) {
  require(numel >= 0, "convert_f32_to_bf16", "numel < 0");
  if (numel == 0) return;
  require(src != nullptr && dst != nullptr, "convert_f32_to_bf16", "src and dst must not be nullptr");
  constexpr int kThreads = 256;
  f32_to_bf16_kernel<<<elementwise_blocks(ctx, numel, kThreads), kThreads, 0, ctx.stream()>>>(numel, src, dst);
  CUDA_CHECK_LAUNCH();
}

void convert_bf16_to_f32(Context& ctx, int64_t numel, const bf16* src, float* dst) {
  require(numel >= 0, "convert_bf16_to_f32", "numel < 0");
  if (numel == 0) return;
  require(src != nullptr && dst != nullptr, "convert_bf16_to_f32", "src and dst must not be nullptr");
  constexpr int kThreads = 256;
  bf16_to_f32_kernel<<<elementwise_blocks(ctx, numel, kThreads), kThreads, 0, ctx.stream()>>>(numel, src, dst);
  CUDA_CHECK_LAUNCH();
}

}  // namespace bert::cuda
