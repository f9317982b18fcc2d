// bench_kernels: times every op of kernels/cuda/ops_cuda.h at BERT-base and BERT-large shapes
// (16k tokens per batch; seq 128 and 512 where the op cares) against ceilings measured in the same
// run, and prints one table (plus JSON with --json).
//
//   bench_kernels [--list] [--filter NAME] [--json FILE] [--repeats N] [--tokens N] [--smoke]
//                 [--gemm-autotune N]
//
// After the cases it prints the cuBLASLt algorithm each GEMM shape ran (Context::gemm_plans: id, tile,
// stages, split-k); --gemm-autotune N has the first call of each class of shapes time up to N of the
// heuristic's algorithms and keep the fastest (the times of all of them are printed), so one run shows what the
// heuristic's first choice leaves on the table. The ceilings keep the heuristic's first either way.
// Then the attention kernels' registers, shared and local bytes and blocks an SM on this device
// (attention_kernel_resources; also in the JSON), the numbers attention.cu's napkin math assumes.
//
// Cases named "<op>_baseline/..." run the same op on the same buffers with KernelPaths::baseline()
// (ops_cuda.h): the general kernels that the specialised ones replaced, timed beside them in the
// same run, so whether each replacement pays is read off one table on whatever card ran it.
//
// --smoke checks the program rather than the device: 512 tokens per batch, one run per case (no
// warm-up: half the time on the emulation, where the runs are the whole cost), small ceilings, one
// encoder layer in the optimizer cases, at most 16 masked rows for the MLM decoder and cross-entropy. tests/kernel_emu
// runs it on the host emulation of the kernels in every suite (kernel_emu/bench_kernels_smoke), with
// bench_attention_torch.py's side-by-side reading its JSON, so the one device run is not the first.
//
// Ceilings (measured first, same process): a 1 GiB device-to-device copy (bytes read + written per
// second) and an 8192^3 bf16 GEMM through our own linear_forward (cuBLASLt), on random data.
// Each case: inputs filled with random values (never zeros), one untimed run whose outputs must all
// be finite (correctness against kernels/cpu is the job of tests/gpu/test_cuda_*, which
// scripts/gpu_check.sh runs first), warm-up, then `repeats` timed runs, each after a write of twice
// the L2 size (so no input is served from L2), timed with CUDA events; the median is reported.
// Numbers per case: the bytes the op must move (each input read once, each output written once;
// read-modify-write counts twice) and the FLOPs it must do; GB/s or TFLOP/s, and the percentage of
// the matching ceiling (memory-bound ops against the copy, matrix ops against the GEMM).
//
// FLOP formulas (stated once, as FlashAttention's benchmarks do):
//   linear forward 2*rows*in*out; backward (dx + dW) 4*rows*in*out; its parts (linear_bwd_dx,
//   linear_bwd_dw: 2*rows*in*out each; linear_bwd_db: memory bound, dy read once).
//   attention forward 4*batch*heads*seq^2*head_dim (QK^T and PV); backward 2.5x forward (QK^T
//   recomputed, dV, dP, dQ, dK).
// The attention reference (PyTorch SDPA, flash and cuDNN backends, same shapes and layout) is
// bench/bench_attention_torch.py, which prints its numbers beside these from this program's JSON.
#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/ops_cuda.h"
#include "kernels/device.h"

namespace {

using namespace bert::cuda;

// ---- random inputs and the finite check ------------------------------------------------------------

__device__ uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__device__ float uniform01(uint64_t seed, int64_t i) {
  return static_cast<float>(mix64(seed * 0x100000001B3ull ^ static_cast<uint64_t>(i)) >> 40) * (1.0f / 16777216.0f);
}

__global__ void fill_uniform_bf16_kernel(bf16* out, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(lo + (hi - lo) * uniform01(seed, i));
}
__global__ void fill_uniform_f32_kernel(float* out, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = lo + (hi - lo) * uniform01(seed, i);
}
// Integers uniform in [0, modulo).
__global__ void fill_ids_kernel(int32_t* out, int64_t n, uint64_t seed, int32_t modulo) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<int32_t>(mix64(seed ^ (static_cast<uint64_t>(i) << 1)) % static_cast<uint64_t>(modulo));
}
__global__ void fill_i32_kernel(int32_t* out, int64_t n, int32_t value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = value;
}

__device__ float as_float(bf16 v) { return __bfloat162float(v); }
__device__ float as_float(float v) { return v; }
template <class T>
__global__ void count_nonfinite_kernel(const T* data, int64_t n, unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    local += isfinite(as_float(data[i])) ? 0 : 1;
  if (local) atomicAdd(count, local);  // a count, not a result: order does not matter
}

// ----------------------------------------------------------------------------------------------------

constexpr unsigned kFillBlocks = 1024, kFillThreads = 256;

void fill_uniform(Context& ctx, bf16* p, int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  fill_uniform_bf16_kernel<<<kFillBlocks, kFillThreads, 0, ctx.stream()>>>(p, n, seed, lo, hi);
  CUDA_CHECK_LAUNCH();
}
void fill_uniform(Context& ctx, float* p, int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  fill_uniform_f32_kernel<<<kFillBlocks, kFillThreads, 0, ctx.stream()>>>(p, n, seed, lo, hi);
  CUDA_CHECK_LAUNCH();
}
void fill_ids(Context& ctx, int32_t* p, int64_t n, uint64_t seed, int32_t modulo) {
  fill_ids_kernel<<<kFillBlocks, kFillThreads, 0, ctx.stream()>>>(p, n, seed, modulo);
  CUDA_CHECK_LAUNCH();
}
void fill_value(Context& ctx, int32_t* p, int64_t n, int32_t value) {
  fill_i32_kernel<<<kFillBlocks, kFillThreads, 0, ctx.stream()>>>(p, n, value);
  CUDA_CHECK_LAUNCH();
}

// Device buffers of one case, freed when the case is done.
class Arena {
 public:
  template <class T>
  T* make(size_t count) {
    auto buffer = std::make_shared<DeviceBuffer<T>>(count);
    T* data = buffer->data();
    keep_.push_back(std::move(buffer));
    return data;
  }
  template <class T, class... Args>
  T& own(Args&&... args) {
    auto object = std::make_shared<T>(std::forward<Args>(args)...);
    T& ref = *object;
    keep_.push_back(std::move(object));
    return ref;
  }

 private:
  std::vector<std::shared_ptr<void>> keep_;
};

struct Output {
  const void* data;
  int64_t count;
  bool is_bf16;
};

// A case ready to time: run() enqueues one call of the op on ctx.stream().
struct Prepared {
  std::shared_ptr<Arena> arena = std::make_shared<Arena>();
  std::function<void()> run;
  std::vector<Output> outputs;
  double bytes = 0;  // what the op must move
  double flops = 0;  // what it must compute (0: memory-bound op)
};

struct Case {
  std::string name;   // op/model[/detail]
  std::string op;     // the ops_cuda.h function(s)
  std::string shape;  // human-readable
  std::function<Prepared(Context&)> prepare;
};

struct Model {
  const char* name;
  int64_t hidden, heads, intermediate, vocab, layers;
  int64_t head_dim() const { return hidden / heads; }
};
constexpr Model kModels[] = {
    {"bert-base", 768, 12, 3072, 30522, 12},
    {"bert-large", 1024, 16, 4096, 30522, 24},
};
constexpr int64_t kDefaultTokens = 16384;  // tokens per batch
constexpr int64_t kSeqLens[] = {128, 512};
constexpr int64_t kMaxPositions = 512, kTypeVocab = 2;
constexpr float kLayerNormEps = 1e-12f;

// What the cases are sized by: the tokens per batch (a multiple of every sequence length) and, for
// the optimizer cases, the encoder layers (0: the model's own; --smoke lists one).
struct Sizes {
  int64_t tokens = kDefaultTokens;
  int64_t optimizer_layers = 0;
  // At most this many masked rows (0: no cap). --smoke's 16: the decoder's vocabulary-wide GEMMs
  // are most of an emulated run's time at 15% of its 512 tokens.
  int64_t masked_rows_cap = 0;
  // MLM: 15% of tokens are predicted; the decoder and the cross-entropy see only those rows.
  int64_t masked_rows() const {
    const int64_t rows = tokens * 15 / 100;
    return masked_rows_cap > 0 ? std::min(rows, masked_rows_cap) : rows;
  }
  std::string masked_rows_text() const {
    return "rows " + std::to_string(masked_rows()) + " (15% of " + std::to_string(tokens) + " tokens" +
           (masked_rows() < tokens * 15 / 100 ? ", capped by --smoke" : "") + ")";
  }
};

std::string str(int64_t v) { return std::to_string(v); }

// ---- cases -----------------------------------------------------------------------------------------

void add_linear_cases(std::vector<Case>& cases, const Model& m, const Sizes& sizes) {
  struct Layer {
    const char* name;
    int64_t rows, in, out, stride;
  };
  // The decoder as the engine runs it (logits rows padded to a multiple of 64, engine/bert.cpp) and
  // dense (vocab 30522 apart: an odd leading dimension), to show what the padding buys in one run.
  const int64_t padded_vocab = (m.vocab + 63) / 64 * 64;
  const Layer layers[] = {
      {"qkv", sizes.tokens, m.hidden, 3 * m.hidden, 0},
      {"attn_out", sizes.tokens, m.hidden, m.hidden, 0},
      {"ffn_up", sizes.tokens, m.hidden, m.intermediate, 0},
      {"ffn_down", sizes.tokens, m.intermediate, m.hidden, 0},
      {"mlm_decoder", sizes.masked_rows(), m.hidden, m.vocab, padded_vocab},
      {"mlm_decoder_dense", sizes.masked_rows(), m.hidden, m.vocab, 0},
  };
  for (const Layer& layer : layers) {
    const LinearShape shape{layer.rows, layer.in, layer.out, layer.stride};
    const std::string shape_text = "rows " + str(layer.rows) + ", in " + str(layer.in) + ", out " + str(layer.out) +
                                   (layer.stride != 0 ? ", rows of y " + str(layer.stride) + " apart" : "");
    const double r = layer.rows, i = layer.in, o = layer.out;
    // y / dy span this many elements; the padding between rows gets finite values (never written).
    const int64_t y_extent = shape.rows * shape.y_stride();
    cases.push_back({std::string("linear_fwd/") + m.name + "/" + layer.name, "linear_forward", shape_text,
                     [shape, r, i, o, y_extent](Context& ctx) {
                       Prepared p;
                       bf16* x = p.arena->make<bf16>(shape.rows * shape.in_features);
                       bf16* w = p.arena->make<bf16>(shape.out_features * shape.in_features);
                       bf16* b = p.arena->make<bf16>(shape.out_features);
                       bf16* y = p.arena->make<bf16>(y_extent);
                       fill_uniform(ctx, y, y_extent, 9);
                       fill_uniform(ctx, x, shape.rows * shape.in_features, 1);
                       fill_uniform(ctx, w, shape.out_features * shape.in_features, 2, -0.05f, 0.05f);
                       fill_uniform(ctx, b, shape.out_features, 3);
                       p.run = [&ctx, shape, x, w, b, y] { linear_forward(ctx, shape, x, w, b, y); };
                       p.outputs = {{y, y_extent, true}};
                       p.flops = 2 * r * i * o;
                       p.bytes = (r * i + o * i + o + r * o) * 2;
                       return p;
                     }});
    cases.push_back({std::string("linear_bwd/") + m.name + "/" + layer.name, "linear_backward (dx, dW, db)", shape_text,
                     [shape, r, i, o, y_extent](Context& ctx) {
                       Prepared p;
                       bf16* x = p.arena->make<bf16>(shape.rows * shape.in_features);
                       bf16* w = p.arena->make<bf16>(shape.out_features * shape.in_features);
                       bf16* dy = p.arena->make<bf16>(y_extent);
                       bf16* dx = p.arena->make<bf16>(shape.rows * shape.in_features);
                       float* dw = p.arena->make<float>(shape.out_features * shape.in_features);
                       float* db = p.arena->make<float>(shape.out_features);
                       fill_uniform(ctx, x, shape.rows * shape.in_features, 4);
                       fill_uniform(ctx, w, shape.out_features * shape.in_features, 5, -0.05f, 0.05f);
                       fill_uniform(ctx, dy, y_extent, 6, -1e-3f, 1e-3f);
                       fill_uniform(ctx, dw, shape.out_features * shape.in_features, 7, -1e-3f, 1e-3f);
                       fill_uniform(ctx, db, shape.out_features, 8, -1e-3f, 1e-3f);
                       p.run = [&ctx, shape, x, w, dy, dx, dw, db] {
                         linear_backward(ctx, shape, dy, x, w, dx, dw, db, InputGrad::kOverwrite);
                       };
                       p.outputs = {{dx, shape.rows * shape.in_features, true},
                                    {dw, shape.out_features * shape.in_features, false},
                                    {db, shape.out_features, false}};
                       p.flops = 4 * r * i * o;
                       // dy, x, W read; dx written; dW and db read-modify-write in fp32.
                       p.bytes = (r * o + r * i + o * i) * 2 + r * i * 2 + (o * i + o) * 8;
                       return p;
                     }});
    if (layer.stride != 0 || std::string(layer.name) == "mlm_decoder_dense") continue;
    // The backward's three parts alone (linear_backward with the other two outputs null), so a run
    // shows which of them falls short: dx = dy W, dW += dy^T x (a long-k product with a small output),
    // db += column sums of dy (memory bound).
    enum class Part { kDx, kDw, kDb };
    for (const Part part : {Part::kDx, Part::kDw, Part::kDb}) {
      const char* suffix = part == Part::kDx ? "_dx" : part == Part::kDw ? "_dw" : "_db";
      const char* op = part == Part::kDx   ? "linear_backward (dx only)"
                       : part == Part::kDw ? "linear_backward (dW only)"
                                           : "linear_backward (db only)";
      cases.push_back({std::string("linear_bwd") + suffix + "/" + m.name + "/" + layer.name, op, shape_text,
                       [shape, r, i, o, part](Context& ctx) {
                         Prepared p;
                         bf16* dy = p.arena->make<bf16>(shape.rows * shape.out_features);
                         fill_uniform(ctx, dy, shape.rows * shape.out_features, 6, -1e-3f, 1e-3f);
                         if (part == Part::kDx) {
                           bf16* w = p.arena->make<bf16>(shape.out_features * shape.in_features);
                           bf16* dx = p.arena->make<bf16>(shape.rows * shape.in_features);
                           fill_uniform(ctx, w, shape.out_features * shape.in_features, 5, -0.05f, 0.05f);
                           p.run = [&ctx, shape, dy, w, dx] {
                             linear_backward(ctx, shape, dy, nullptr, w, dx, nullptr, nullptr, InputGrad::kOverwrite);
                           };
                           p.outputs = {{dx, shape.rows * shape.in_features, true}};
                           p.flops = 2 * r * i * o;
                           p.bytes = (r * o + o * i + r * i) * 2;  // dy, W read; dx written
                         } else if (part == Part::kDw) {
                           bf16* x = p.arena->make<bf16>(shape.rows * shape.in_features);
                           float* dw = p.arena->make<float>(shape.out_features * shape.in_features);
                           fill_uniform(ctx, x, shape.rows * shape.in_features, 4);
                           fill_uniform(ctx, dw, shape.out_features * shape.in_features, 7, -1e-3f, 1e-3f);
                           p.run = [&ctx, shape, dy, x, dw] {
                             linear_backward(ctx, shape, dy, x, nullptr, nullptr, dw, nullptr);
                           };
                           p.outputs = {{dw, shape.out_features * shape.in_features, false}};
                           p.flops = 2 * r * i * o;
                           p.bytes = (r * o + r * i) * 2 + o * i * 8;  // dy, x read; dW read-modify-write
                         } else {
                           float* db = p.arena->make<float>(shape.out_features);
                           fill_uniform(ctx, db, shape.out_features, 8, -1e-3f, 1e-3f);
                           p.run = [&ctx, shape, dy, db] {
                             linear_backward(ctx, shape, dy, nullptr, nullptr, nullptr, nullptr, db);
                           };
                           p.outputs = {{db, shape.out_features, false}};
                           p.bytes = r * o * 2 + o * 8;  // dy read; db read-modify-write
                         }
                         return p;
                       }});
    }
  }
}

// A LayerNorm forward's buffers in the case's arena: x, residual, gamma, beta filled from seeds
// seed .. seed + 3 (gamma in [0.5, 1.5]); y, mean, rstd for the outputs.
struct LayerNormBuffers {
  bf16 *x, *res, *gamma, *beta, *y;
  float *mean, *rstd;
  static LayerNormBuffers make(Prepared& p, Context& ctx, const MatrixShape& shape, uint64_t seed) {
    const int64_t count = shape.rows * shape.cols;
    LayerNormBuffers b{p.arena->make<bf16>(count),      p.arena->make<bf16>(count), p.arena->make<bf16>(shape.cols),
                       p.arena->make<bf16>(shape.cols), p.arena->make<bf16>(count), p.arena->make<float>(shape.rows),
                       p.arena->make<float>(shape.rows)};
    fill_uniform(ctx, b.x, count, seed);
    fill_uniform(ctx, b.res, count, seed + 1);
    fill_uniform(ctx, b.gamma, shape.cols, seed + 2, 0.5f, 1.5f);
    fill_uniform(ctx, b.beta, shape.cols, seed + 3);
    return b;
  }
};

// A LayerNorm backward's own buffers: dy and the accumulating dgamma/dbeta, filled from seeds seed ..
// seed + 2; and the statistics it reads (f.mean, f.rstd) saved by a real forward of f's inputs.
struct LayerNormGradBuffers {
  bf16* dy;
  float *dgamma, *dbeta;
  static LayerNormGradBuffers make(Prepared& p, Context& ctx, const MatrixShape& shape, const LayerNormBuffers& f,
                                   bool residual, uint64_t seed) {
    const int64_t count = shape.rows * shape.cols;
    LayerNormGradBuffers g{p.arena->make<bf16>(count), p.arena->make<float>(shape.cols),
                           p.arena->make<float>(shape.cols)};
    fill_uniform(ctx, g.dy, count, seed, -1e-2f, 1e-2f);
    fill_uniform(ctx, g.dgamma, shape.cols, seed + 1, -1e-3f, 1e-3f);
    fill_uniform(ctx, g.dbeta, shape.cols, seed + 2, -1e-3f, 1e-3f);
    if (residual)
      residual_layernorm_forward(ctx, shape, f.x, f.res, f.gamma, f.beta, kLayerNormEps, f.y, f.mean, f.rstd);
    else
      layernorm_forward(ctx, shape, f.x, f.gamma, f.beta, kLayerNormEps, f.y, f.mean, f.rstd);
    return g;
  }
};

void add_layernorm_cases(std::vector<Case>& cases, const Model& m, const Sizes& sizes) {
  const MatrixShape shape{sizes.tokens, m.hidden};
  const std::string shape_text = "rows " + str(sizes.tokens) + ", cols " + str(m.hidden);
  const double n = static_cast<double>(sizes.tokens) * m.hidden, h = m.hidden, rows = sizes.tokens;
  for (const bool residual : {false, true}) {
    const std::string prefix = residual ? "residual_layernorm" : "layernorm";
    cases.push_back(
        {prefix + "_fwd/" + m.name, prefix + "_forward", shape_text, [shape, residual, n, h, rows](Context& ctx) {
           Prepared p;
           const int64_t count = shape.rows * shape.cols;
           const auto [x, res, gamma, beta, y, mean, rstd] = LayerNormBuffers::make(p, ctx, shape, 11);
           p.run = [&ctx, shape, residual, x, res, gamma, beta, y, mean, rstd] {
             if (residual)
               residual_layernorm_forward(ctx, shape, x, res, gamma, beta, kLayerNormEps, y, mean, rstd);
             else
               layernorm_forward(ctx, shape, x, gamma, beta, kLayerNormEps, y, mean, rstd);
           };
           p.outputs = {{y, count, true}, {mean, shape.rows, false}, {rstd, shape.rows, false}};
           p.bytes = n * 2 * (residual ? 3 : 2) + h * 4 + rows * 8;
           return p;
         }});
    cases.push_back(
        {prefix + "_bwd/" + m.name, prefix + "_backward", shape_text, [shape, residual, n, h, rows](Context& ctx) {
           Prepared p;
           const int64_t count = shape.rows * shape.cols;
           const LayerNormBuffers f = LayerNormBuffers::make(p, ctx, shape, 15);
           const auto [dy, dgamma, dbeta] = LayerNormGradBuffers::make(p, ctx, shape, f, residual, 19);
           const auto [x, res, gamma, beta, y, mean, rstd] = f;
           bf16* dx = p.arena->make<bf16>(count);
           p.run = [&ctx, shape, residual, x, res, gamma, mean, rstd, dy, dx, dgamma, dbeta] {
             if (residual)
               residual_layernorm_backward(ctx, shape, dy, x, res, gamma, mean, rstd, dx, dgamma, dbeta);
             else
               layernorm_backward(ctx, shape, dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
           };
           p.outputs = {{dx, count, true}, {dgamma, shape.cols, false}, {dbeta, shape.cols, false}};
           // dy, x (+ residual) read, dx written; gamma read; stats read; dgamma/dbeta RMW.
           p.bytes = n * 2 * (residual ? 4 : 3) + h * 2 + rows * 8 + h * 16;
           return p;
         }});
  }
  // The engine's hidden dropout fused into the residual LayerNorm; unfused it is dropout_fwd plus
  // residual_layernorm_fwd (both above, same shape), which move 2 more bytes an element.
  cases.push_back({std::string("dropout_residual_layernorm_fwd/") + m.name, "dropout_residual_layernorm_forward",
                   shape_text + ", p 0.1", [shape, n, h, rows](Context& ctx) {
                     Prepared p;
                     const int64_t count = shape.rows * shape.cols;
                     const auto [x, res, gamma, beta, y, mean, rstd] = LayerNormBuffers::make(p, ctx, shape, 22);
                     // x is dropped in place on every repeat: a kept value grows by 1/0.9, and each is
                     // zeroed with p 0.1 a run, so after a few hundred runs x is zeros (1.11^n never
                     // reaches bf16's range first: 0.9^n of 16M elements survive n runs). The work
                     // does not depend on the values.
                     const DropoutSpec spec{0.1f, 1234, 0};
                     p.run = [&ctx, shape, spec, x, res, gamma, beta, y, mean, rstd] {
                       dropout_residual_layernorm_forward(ctx, shape, spec, x, res, gamma, beta, kLayerNormEps, y,
                                                          mean, rstd);
                     };
                     p.outputs = {{y, count, true}, {x, count, true}, {mean, shape.rows, false},
                                  {rstd, shape.rows, false}};
                     // x read and written back, residual read, y written; gamma/beta; stats written.
                     p.bytes = n * 2 * 4 + h * 4 + rows * 8;
                     return p;
                   }});
  // Its backward: residual_layernorm_bwd's work plus the dropout's output in the same pass; unfused
  // (the baseline twin) dropout_bwd re-reads d_sum.
  cases.push_back(
      {std::string("residual_layernorm_dropout_bwd/") + m.name, "residual_layernorm_dropout_backward",
       shape_text + ", p 0.1", [shape, n, h, rows](Context& ctx) {
         Prepared p;
         const int64_t count = shape.rows * shape.cols;
         const LayerNormBuffers f = LayerNormBuffers::make(p, ctx, shape, 23);
         const auto [dy, dgamma, dbeta] = LayerNormGradBuffers::make(p, ctx, shape, f, /*residual=*/true, 24);
         const auto [x, res, gamma, beta, y, mean, rstd] = f;
         bf16* d_sum = p.arena->make<bf16>(count);
         bf16* d_x = p.arena->make<bf16>(count);
         const DropoutSpec spec{0.1f, 1234, 0};
         p.run = [&ctx, shape, spec, dy, x, res, gamma, mean, rstd, d_sum, d_x, dgamma, dbeta] {
           residual_layernorm_dropout_backward(ctx, shape, spec, dy, x, res, gamma, mean, rstd, d_sum, d_x, dgamma,
                                               dbeta);
         };
         p.outputs = {
             {d_sum, count, true}, {d_x, count, true}, {dgamma, shape.cols, false}, {dbeta, shape.cols, false}};
         // dy, x, residual read, d_sum and d_x written; gamma; stats read; dgamma/dbeta RMW.
         p.bytes = n * 2 * 5 + h * 2 + rows * 8 + h * 16;
         return p;
       }});
}

void add_gelu_cases(std::vector<Case>& cases, const Model& m, const Sizes& sizes) {
  const MatrixShape shape{sizes.tokens, m.intermediate};
  const std::string shape_text = "rows " + str(sizes.tokens) + ", cols " + str(m.intermediate) + ", erf";
  const double n = static_cast<double>(sizes.tokens) * m.intermediate, cols = m.intermediate;
  cases.push_back(
      {std::string("bias_gelu_fwd/") + m.name, "bias_gelu_forward", shape_text, [shape, n, cols](Context& ctx) {
         Prepared p;
         const int64_t count = shape.rows * shape.cols;
         bf16* x = p.arena->make<bf16>(count);
         bf16* bias = p.arena->make<bf16>(shape.cols);
         bf16* y = p.arena->make<bf16>(count);
         fill_uniform(ctx, x, count, 31, -3.0f, 3.0f);
         fill_uniform(ctx, bias, shape.cols, 32);
         p.run = [&ctx, shape, x, bias, y] { bias_gelu_forward(ctx, GeluKind::kErf, shape, x, bias, y); };
         p.outputs = {{y, count, true}};
         p.bytes = n * 4 + cols * 2;
         return p;
       }});
  cases.push_back(
      {std::string("bias_gelu_bwd/") + m.name, "bias_gelu_backward", shape_text, [shape, n, cols](Context& ctx) {
         Prepared p;
         const int64_t count = shape.rows * shape.cols;
         bf16* x = p.arena->make<bf16>(count);
         bf16* bias = p.arena->make<bf16>(shape.cols);
         bf16* dy = p.arena->make<bf16>(count);
         bf16* dx = p.arena->make<bf16>(count);
         float* dbias = p.arena->make<float>(shape.cols);
         fill_uniform(ctx, x, count, 33, -3.0f, 3.0f);
         fill_uniform(ctx, bias, shape.cols, 34);
         fill_uniform(ctx, dy, count, 35, -1e-3f, 1e-3f);
         fill_uniform(ctx, dbias, shape.cols, 36, -1e-3f, 1e-3f);
         p.run = [&ctx, shape, x, bias, dy, dx, dbias] {
           bias_gelu_backward(ctx, GeluKind::kErf, shape, dy, x, bias, dx, dbias);
         };
         p.outputs = {{dx, count, true}, {dbias, shape.cols, false}};
         p.bytes = n * 6 + cols * 2 + cols * 8;
         return p;
       }});
}

void add_embedding_cases(std::vector<Case>& cases, const Model& m, const Sizes& sizes, int64_t seq) {
  EmbeddingShape shape;
  shape.batch = sizes.tokens / seq;
  shape.seq_len = seq;
  shape.hidden = m.hidden;
  shape.vocab_size = m.vocab;
  shape.max_position_embeddings = kMaxPositions;
  shape.type_vocab_size = kTypeVocab;
  shape.padding_idx = 0;
  const std::string shape_text =
      "batch " + str(shape.batch) + ", seq " + str(seq) + ", hidden " + str(m.hidden) + ", vocab " + str(m.vocab);
  const double t = sizes.tokens, h = m.hidden, s = seq;
  struct Tables {
    int32_t *ids, *types;
    bf16 *word, *pos, *type, *gamma, *beta, *out;
    float *mean, *rstd;
  };
  auto make_tables = [](Context& ctx, Arena& arena, const EmbeddingShape& e) {
    Tables tb{};
    const int64_t tokens = e.tokens();
    tb.ids = arena.make<int32_t>(tokens);
    tb.types = arena.make<int32_t>(tokens);
    tb.word = arena.make<bf16>(e.vocab_size * e.hidden);
    tb.pos = arena.make<bf16>(e.max_position_embeddings * e.hidden);
    tb.type = arena.make<bf16>(e.type_vocab_size * e.hidden);
    tb.gamma = arena.make<bf16>(e.hidden);
    tb.beta = arena.make<bf16>(e.hidden);
    tb.out = arena.make<bf16>(tokens * e.hidden);
    tb.mean = arena.make<float>(tokens);
    tb.rstd = arena.make<float>(tokens);
    fill_ids(ctx, tb.ids, tokens, 41, static_cast<int32_t>(e.vocab_size));
    fill_ids(ctx, tb.types, tokens, 42, static_cast<int32_t>(e.type_vocab_size));
    fill_uniform(ctx, tb.word, e.vocab_size * e.hidden, 43, -0.05f, 0.05f);
    fill_uniform(ctx, tb.pos, e.max_position_embeddings * e.hidden, 44, -0.05f, 0.05f);
    fill_uniform(ctx, tb.type, e.type_vocab_size * e.hidden, 45, -0.05f, 0.05f);
    fill_uniform(ctx, tb.gamma, e.hidden, 46, 0.5f, 1.5f);
    fill_uniform(ctx, tb.beta, e.hidden, 47);
    return tb;
  };
  const std::string suffix = std::string(m.name) + "/s" + str(seq);
  cases.push_back({"embeddings_fwd/" + suffix, "embeddings_layernorm_forward", shape_text,
                   [shape, make_tables, t, h, s](Context& ctx) {
                     Prepared p;
                     const Tables tb = make_tables(ctx, *p.arena, shape);
                     p.run = [&ctx, shape, tb] {
                       embeddings_layernorm_forward(ctx, shape, tb.ids, tb.types, tb.word, tb.pos, tb.type, tb.gamma,
                                                    tb.beta, kLayerNormEps, tb.out, tb.mean, tb.rstd);
                     };
                     p.outputs = {{tb.out, shape.tokens() * shape.hidden, true},
                                  {tb.mean, shape.tokens(), false},
                                  {tb.rstd, shape.tokens(), false}};
                     // ids + types; one word row per token; position and type tables once; LN params;
                     // output and statistics.
                     p.bytes = t * 8 + t * h * 2 + (s + kTypeVocab) * h * 2 + h * 4 + t * h * 2 + t * 8;
                     return p;
                   }});
  cases.push_back({"embeddings_bwd/" + suffix, "embeddings_layernorm_backward", shape_text,
                   [shape, make_tables, t, h, s](Context& ctx) {
                     Prepared p;
                     const Tables tb = make_tables(ctx, *p.arena, shape);
                     const int64_t tokens = shape.tokens();
                     bf16* dout = p.arena->make<bf16>(tokens * shape.hidden);
                     float* d_word = p.arena->make<float>(shape.vocab_size * shape.hidden);
                     float* d_pos = p.arena->make<float>(shape.max_position_embeddings * shape.hidden);
                     float* d_type = p.arena->make<float>(shape.type_vocab_size * shape.hidden);
                     float* dgamma = p.arena->make<float>(shape.hidden);
                     float* dbeta = p.arena->make<float>(shape.hidden);
                     fill_uniform(ctx, dout, tokens * shape.hidden, 48, -1e-3f, 1e-3f);
                     fill_uniform(ctx, d_word, shape.vocab_size * shape.hidden, 49, -1e-3f, 1e-3f);
                     fill_uniform(ctx, d_pos, shape.max_position_embeddings * shape.hidden, 50, -1e-3f, 1e-3f);
                     fill_uniform(ctx, d_type, shape.type_vocab_size * shape.hidden, 51, -1e-3f, 1e-3f);
                     fill_uniform(ctx, dgamma, shape.hidden, 52, -1e-3f, 1e-3f);
                     fill_uniform(ctx, dbeta, shape.hidden, 53, -1e-3f, 1e-3f);
                     embeddings_layernorm_forward(ctx, shape, tb.ids, tb.types, tb.word, tb.pos, tb.type, tb.gamma,
                                                  tb.beta, kLayerNormEps, tb.out, tb.mean, tb.rstd);
                     p.run = [&ctx, shape, tb, dout, d_word, d_pos, d_type, dgamma, dbeta] {
                       embeddings_layernorm_backward(ctx, shape, dout, tb.ids, tb.types, tb.word, tb.pos, tb.type,
                                                     tb.gamma, tb.mean, tb.rstd, d_word, d_pos, d_type, dgamma, dbeta);
                     };
                     p.outputs = {{d_word, shape.vocab_size * shape.hidden, false},
                                  {d_pos, shape.max_position_embeddings * shape.hidden, false},
                                  {d_type, shape.type_vocab_size * shape.hidden, false},
                                  {dgamma, shape.hidden, false},
                                  {dbeta, shape.hidden, false}};
                     // dout, ids, types, statistics read; the LN input rebuilt from the tables; one
                     // word-gradient row per token read-modify-written (fp32; an upper bound: repeated
                     // ids share a row); position/type gradients and dgamma/dbeta read-modify-written.
                     p.bytes = t * h * 2 + t * 16 + t * h * 2 + (s + kTypeVocab) * h * 2 + h * 2 + t * h * 8 +
                               (s + kTypeVocab) * h * 8 + h * 16;
                     return p;
                   }});
}

void add_dropout_cases(std::vector<Case>& cases, const Model& m, const Sizes& sizes) {
  const int64_t numel = sizes.tokens * m.hidden;
  const std::string shape_text = "numel " + str(numel) + " (tokens x hidden), p 0.1";
  const DropoutSpec spec{0.1f, 1234, 0};
  for (const bool backward : {false, true}) {
    cases.push_back({std::string(backward ? "dropout_bwd/" : "dropout_fwd/") + m.name,
                     backward ? "dropout_backward" : "dropout_forward", shape_text,
                     [numel, spec, backward](Context& ctx) {
                       Prepared p;
                       bf16* x = p.arena->make<bf16>(numel);
                       bf16* y = p.arena->make<bf16>(numel);
                       fill_uniform(ctx, x, numel, 61);
                       p.run = [&ctx, numel, spec, backward, x, y] {
                         if (backward)
                           dropout_backward(ctx, numel, spec, x, y);
                         else
                           dropout_forward(ctx, numel, spec, x, y);
                       };
                       p.outputs = {{y, numel, true}};
                       p.bytes = static_cast<double>(numel) * 4;
                       return p;
                     }});
  }
}

void add_attention_cases(std::vector<Case>& cases, const Model& m, const Sizes& sizes, int64_t seq) {
  AttentionShape shape;
  shape.batch = sizes.tokens / seq;
  shape.seq_len = seq;
  shape.num_heads = m.heads;
  shape.head_dim = m.head_dim();
  shape.qkv_row_stride = 3 * m.hidden;  // fused QKV projection output
  const double forward_flops = 4.0 * shape.batch * shape.num_heads * static_cast<double>(seq) * seq * shape.head_dim;
  const double t = sizes.tokens, h = m.hidden;
  const double lse_bytes = 4.0 * shape.batch * shape.num_heads * seq;
  // "plain": no mask, no dropout (what bench_attention_torch.py measures with SDPA);
  // "train": key-padding mask (all keys valid) and attention dropout 0.1, as in pretraining.
  for (const bool train : {false, true}) {
    const std::string variant = train ? "attention_train" : "attention";
    const std::string shape_text = "batch " + str(shape.batch) + ", seq " + str(seq) + ", heads " + str(m.heads) +
                                   ", head_dim " + str(shape.head_dim) + ", fused qkv" +
                                   (train ? ", mask, dropout 0.1" : "");
    const DropoutSpec dropout{train ? 0.1f : 0.0f, 99, 7};
    auto make_inputs = [shape, train](Context& ctx, Arena& arena, bf16*& qkv, int32_t*& mask, bf16*& context,
                                      float*& lse) {
      std::string why;
      if (!attention_supported(shape, &why)) throw std::invalid_argument("attention_supported: " + why);
      const int64_t tokens = shape.tokens();
      qkv = arena.make<bf16>(tokens * shape.qkv_row_stride);
      context = arena.make<bf16>(tokens * shape.hidden());
      lse = arena.make<float>(shape.batch * shape.num_heads * shape.seq_len);
      mask = nullptr;
      if (train) {
        mask = arena.make<int32_t>(tokens);
        fill_value(ctx, mask, tokens, 1);
      }
      fill_uniform(ctx, qkv, tokens * shape.qkv_row_stride, 71, -2.0f, 2.0f);
    };
    // Kernels (ops_cuda.h): "_fwd"/"_bwd" wmma, "_fwd_mma"/"_bwd_mma" mma.sync (the default), and below.
    for (const AttentionKernel kernel : {AttentionKernel::kWmma, AttentionKernel::kMma}) {
      const bool mma = kernel == AttentionKernel::kMma;
      cases.push_back({variant + (mma ? "_fwd_mma/" : "_fwd/") + m.name + "/s" + str(seq),
                       mma ? "attention_forward (kMma)" : "attention_forward", shape_text,
                       [shape, dropout, kernel, make_inputs, forward_flops, t, h, lse_bytes](Context& ctx) {
                         Prepared p;
                         bf16 *qkv, *context;
                         int32_t* mask;
                         float* lse;
                         make_inputs(ctx, *p.arena, qkv, mask, context, lse);
                         const int64_t hidden = shape.hidden();
                         p.run = [&ctx, shape, dropout, kernel, qkv, mask, context, lse, hidden] {
                           attention_forward(ctx, shape, qkv, qkv + hidden, qkv + 2 * hidden, mask, dropout, context,
                                             lse, kernel);
                         };
                         p.outputs = {{context, shape.tokens() * hidden, true},
                                      {lse, shape.batch * shape.num_heads * shape.seq_len, false}};
                         p.flops = forward_flops;
                         p.bytes = t * h * 2 * 3 + t * h * 2 + lse_bytes;
                         return p;
                       }});
    }
    // Backward: also "_bwd_mma_recompute_dq" (kMmaRecomputeDq) where it differs from kMma's (up to 128
    // keys, where kMma's is the fused kernel): the kernel pair against it in the same run.
    for (const AttentionKernel kernel :
         {AttentionKernel::kWmma, AttentionKernel::kMma, AttentionKernel::kMmaRecomputeDq}) {
      if (kernel == AttentionKernel::kMmaRecomputeDq && seq > 128) continue;
      const char* suffix = kernel == AttentionKernel::kMma              ? "_bwd_mma/"
                           : kernel == AttentionKernel::kMmaRecomputeDq ? "_bwd_mma_recompute_dq/"
                                                                        : "_bwd/";
      const char* op = kernel == AttentionKernel::kMma              ? "attention_backward (kMma)"
                       : kernel == AttentionKernel::kMmaRecomputeDq ? "attention_backward (kMmaRecomputeDq)"
                                                                    : "attention_backward";
      cases.push_back({variant + suffix + m.name + "/s" + str(seq), op, shape_text,
                       [shape, dropout, kernel, make_inputs, forward_flops, t, h, lse_bytes](Context& ctx) {
                         Prepared p;
                         bf16 *qkv, *context;
                         int32_t* mask;
                         float* lse;
                         make_inputs(ctx, *p.arena, qkv, mask, context, lse);
                         const int64_t tokens = shape.tokens(), hidden = shape.hidden();
                         bf16* dcontext = p.arena->make<bf16>(tokens * hidden);
                         bf16* dqkv = p.arena->make<bf16>(tokens * shape.qkv_row_stride);
                         fill_uniform(ctx, dcontext, tokens * hidden, 72, -1e-2f, 1e-2f);
                         attention_forward(ctx, shape, qkv, qkv + hidden, qkv + 2 * hidden, mask, dropout, context,
                                           lse);
                         p.run = [&ctx, shape, dropout, kernel, qkv, mask, context, lse, dcontext, dqkv, hidden] {
                           attention_backward(ctx, shape, dcontext, qkv, qkv + hidden, qkv + 2 * hidden, mask, dropout,
                                              context, lse, dqkv, dqkv + hidden, dqkv + 2 * hidden, kernel);
                         };
                         p.outputs = {{dqkv, tokens * shape.qkv_row_stride, true}};
                         p.flops = 2.5 * forward_flops;
                         // q, k, v, context, dcontext, logsumexp read; dq, dk, dv written.
                         p.bytes = t * h * 2 * 3 + t * h * 2 * 2 + lse_bytes + t * h * 2 * 3;
                         return p;
                       }});
    }
  }
}

void add_cross_entropy_case(std::vector<Case>& cases, const Model& m, const Sizes& sizes) {
  // Rows padded as the engine's decoder writes them (engine/bert.cpp: vocab rounded up to 64).
  const LogitsShape shape{sizes.masked_rows(), m.vocab, (m.vocab + 63) / 64 * 64};
  const std::string shape_text =
      sizes.masked_rows_text() + ", classes " + str(m.vocab) + ", rows " + str(shape.stride()) + " apart";
  const double n = static_cast<double>(shape.rows) * shape.classes;
  const int64_t extent = shape.rows * shape.stride();
  cases.push_back(
      {std::string("cross_entropy/") + m.name, "softmax_cross_entropy", shape_text, [shape, n, extent](Context& ctx) {
         Prepared p;
         bf16* logits = p.arena->make<bf16>(extent);
         bf16* dlogits = p.arena->make<bf16>(extent);
         int32_t* labels = p.arena->make<int32_t>(shape.rows);
         auto* stats = p.arena->make<CrossEntropyDeviceStats>(1);
         fill_uniform(ctx, logits, extent, 81, -4.0f, 4.0f);
         fill_uniform(ctx, dlogits, extent, 83);  // the padding between rows is never written
         fill_ids(ctx, labels, shape.rows, 82, static_cast<int32_t>(shape.classes));
         p.run = [&ctx, shape, logits, labels, dlogits, stats] {
           softmax_cross_entropy(ctx, shape, logits, labels, 1.0f, dlogits, stats);
         };
         p.outputs = {{dlogits, extent, true}, {&stats->loss_sum, 1, false}};
         p.bytes = n * 4 + shape.rows * 4;
         return p;
       }});
}

// Parameter tensors of BertForPreTraining (HF layout, decoder weight tied to the word embeddings),
// with AdamW's weight-decay flag (none on biases and LayerNorm, as HF's Trainer sets it).
std::vector<std::pair<int64_t, bool>> bert_parameters(const Model& m, int64_t layers) {
  const int64_t h = m.hidden, in = m.intermediate;
  std::vector<std::pair<int64_t, bool>> p = {
      {m.vocab * h, true}, {kMaxPositions * h, true}, {kTypeVocab * h, true}, {h, false}, {h, false}};
  for (int64_t layer = 0; layer < layers; ++layer) {
    for (int i = 0; i < 4; ++i) p.insert(p.end(), {{h * h, true}, {h, false}});    // q, k, v, attention out
    p.insert(p.end(), {{h, false}, {h, false}});                                   // attention LayerNorm
    p.insert(p.end(), {{in * h, true}, {in, false}, {h * in, true}, {h, false}});  // FFN
    p.insert(p.end(), {{h, false}, {h, false}});                                   // output LayerNorm
  }
  p.insert(p.end(), {{h * h, true}, {h, false}});                          // pooler
  p.insert(p.end(), {{h * h, true}, {h, false}, {h, false}, {h, false}});  // MLM transform + LN
  p.insert(p.end(), {{m.vocab, false}, {2 * h, true}, {2, false}});        // decoder bias, NSP head
  return p;
}

void add_optimizer_cases(std::vector<Case>& cases, const Model& m, const Sizes& sizes) {
  const auto params = bert_parameters(m, sizes.optimizer_layers > 0 ? sizes.optimizer_layers : m.layers);
  int64_t total = 0;
  for (const auto& tensor : params) total += tensor.first;
  const std::string shape_text = str(static_cast<int64_t>(params.size())) + " tensors, " + str(total) + " params";
  // Slices of one allocation per kind, each starting 64-element (256-byte) aligned.
  struct Optimizer {
    MultiTensorList* list;
    float* param;
    bf16* param_bf16;
    int64_t padded;
  };
  auto make_list = [params](Context& ctx, Arena& arena) {
    Optimizer o{};
    o.padded = 0;
    for (const auto& tensor : params) o.padded += (tensor.first + 63) / 64 * 64;
    o.param = arena.make<float>(o.padded);
    o.param_bf16 = arena.make<bf16>(o.padded);
    float* grad = arena.make<float>(o.padded);
    float* exp_avg = arena.make<float>(o.padded);
    float* exp_avg_sq = arena.make<float>(o.padded);
    fill_uniform(ctx, o.param, o.padded, 91, -0.05f, 0.05f);
    fill_uniform(ctx, o.param_bf16, o.padded, 95, -0.05f, 0.05f);  // padding slots are never written
    fill_uniform(ctx, grad, o.padded, 92, -1e-3f, 1e-3f);
    fill_uniform(ctx, exp_avg, o.padded, 93, -1e-4f, 1e-4f);
    fill_uniform(ctx, exp_avg_sq, o.padded, 94, 0.0f, 1e-6f);
    std::vector<AdamWTensor> tensors;
    int64_t offset = 0;
    for (const auto& [numel, decay] : params) {
      AdamWTensor tensor;
      tensor.param = o.param + offset;
      tensor.param_bf16 = o.param_bf16 + offset;
      tensor.grad = grad + offset;
      tensor.exp_avg = exp_avg + offset;
      tensor.exp_avg_sq = exp_avg_sq + offset;
      tensor.numel = numel;
      tensor.apply_weight_decay = decay;
      tensors.push_back(tensor);
      offset += (numel + 63) / 64 * 64;
    }
    o.list = &arena.own<MultiTensorList>(std::span<const AdamWTensor>(tensors));
    return o;
  };
  const double p_count = static_cast<double>(total);
  cases.push_back({std::string("adamw/") + m.name, "adamw_step", shape_text, [make_list, p_count](Context& ctx) {
                     Prepared p;
                     const Optimizer o = make_list(ctx, *p.arena);
                     MultiTensorList& list = *o.list;
                     AdamWHyperparams hyper;
                     hyper.learning_rate = 1e-4;
                     hyper.weight_decay = 0.01;
                     hyper.step = 10;
                     p.run = [&ctx, &list, hyper] { adamw_step(ctx, hyper, list); };
                     p.outputs = {{o.param, o.padded, false}, {o.param_bf16, o.padded, true}};
                     // param, grad, m, v read (fp32); param, m, v written (fp32); bf16 copy written.
                     p.bytes = p_count * (16 + 12 + 2);
                     return p;
                   }});
  cases.push_back({std::string("grad_norm/") + m.name, "grad_norm", shape_text, [make_list, p_count](Context& ctx) {
                     Prepared p;
                     MultiTensorList& list = *make_list(ctx, *p.arena).list;
                     float* norm = p.arena->make<float>(1);
                     p.run = [&ctx, &list, norm] { grad_norm(ctx, list, norm); };
                     p.outputs = {{norm, 1, false}};
                     p.bytes = p_count * 4;
                     return p;
                   }});
}

// The ops whose specialised kernels replaced general ones (ops_cuda.h: KernelPaths) get a second
// case right after their own, "<op>_baseline/...": the same shape and buffers, run with
// KernelPaths::baseline(), so the replacement and what it replaced are timed in the same run on the
// same device. (The attention backward's pair is attention*_bwd_mma_recompute_dq. The dense MLM
// decoder, itself the padded one's twin, gets none.)
std::vector<Case> with_baseline_cases(const std::vector<Case>& cases) {
  static const char* const kReplaced[] = {"linear_bwd/",
                                          "layernorm_fwd/",
                                          "residual_layernorm_fwd/",
                                          "layernorm_bwd/",
                                          "residual_layernorm_bwd/",
                                          "dropout_residual_layernorm_fwd/",
                                          "residual_layernorm_dropout_bwd/",
                                          "bias_gelu_fwd/",
                                          "bias_gelu_bwd/",
                                          "cross_entropy/",
                                          "embeddings_fwd/",
                                          "embeddings_bwd/",
                                          "attention_fwd_mma/",
                                          "attention_train_fwd_mma/"};
  std::vector<Case> out;
  for (const Case& c : cases) {
    out.push_back(c);
    if (c.name.ends_with("_dense")) continue;
    for (const char* prefix : kReplaced) {
      const std::string head(prefix);
      if (c.name.compare(0, head.size(), head) != 0) continue;
      Case baseline = c;
      baseline.name = head.substr(0, head.size() - 1) + "_baseline/" + c.name.substr(head.size());
      baseline.op = c.op + " (KernelPaths::baseline)";
      baseline.prepare = [prepare = c.prepare](Context& ctx) {
        Prepared p = prepare(ctx);
        p.run = [&ctx, run = std::move(p.run)] {
          // Restored however run() ends: a throwing case must not leave the later ones on the baseline.
          struct Restore {
            Context& ctx;
            const KernelPaths saved;
            ~Restore() { ctx.set_kernel_paths(saved); }
          } restore{ctx, ctx.kernel_paths()};
          ctx.set_kernel_paths(KernelPaths::baseline());
          run();
        };
        return p;
      };
      out.push_back(std::move(baseline));
    }
  }
  return out;
}

std::vector<Case> make_cases(const Sizes& sizes) {
  std::vector<Case> cases;
  for (const Model& m : kModels) {
    add_linear_cases(cases, m, sizes);
    add_layernorm_cases(cases, m, sizes);
    add_gelu_cases(cases, m, sizes);
    for (const int64_t seq : kSeqLens) add_embedding_cases(cases, m, sizes, seq);
    add_dropout_cases(cases, m, sizes);
    for (const int64_t seq : kSeqLens) add_attention_cases(cases, m, sizes, seq);
    add_cross_entropy_case(cases, m, sizes);
    add_optimizer_cases(cases, m, sizes);
  }
  return with_baseline_cases(cases);
}

// ---- timing ------------------------------------------------------------------------------------------

class Event {
 public:
  Event() { CUDA_CHECK(cudaEventCreate(&event_)); }
  ~Event() { cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Writes twice the L2 size between timed runs, so inputs come from device memory.
class L2Flusher {
 public:
  explicit L2Flusher(size_t l2_bytes) : buffer_(std::max<size_t>(2 * l2_bytes, size_t{1} << 20)) {}
  void flush(cudaStream_t stream) {
    CUDA_CHECK(cudaMemsetAsync(buffer_.data(), static_cast<int>(++round_ & 0xFF), buffer_.bytes(), stream));
  }

 private:
  DeviceBuffer<unsigned char> buffer_;
  unsigned round_ = 0;
};

struct Timing {
  double median_ms = 0, min_ms = 0;
};

Timing time_runs(Context& ctx, L2Flusher& flusher, const std::function<void()>& run, int repeats, int warmup) {
  for (int i = 0; i < warmup; ++i) run();
  std::vector<Event> start(static_cast<size_t>(repeats)), stop(static_cast<size_t>(repeats));
  for (int i = 0; i < repeats; ++i) {
    flusher.flush(ctx.stream());
    CUDA_CHECK(cudaEventRecord(start[i].get(), ctx.stream()));
    run();
    CUDA_CHECK(cudaEventRecord(stop[i].get(), ctx.stream()));
  }
  ctx.synchronize();
  std::vector<double> ms(static_cast<size_t>(repeats));
  for (int i = 0; i < repeats; ++i) {
    float elapsed = 0;
    CUDA_CHECK(cudaEventElapsedTime(&elapsed, start[i].get(), stop[i].get()));
    ms[i] = elapsed;
  }
  std::sort(ms.begin(), ms.end());
  Timing timing;
  timing.min_ms = ms.front();
  timing.median_ms = repeats % 2 ? ms[repeats / 2] : 0.5 * (ms[repeats / 2 - 1] + ms[repeats / 2]);
  return timing;
}

uint64_t count_nonfinite(Context& ctx, const std::vector<Output>& outputs) {
  DeviceBuffer<unsigned long long> count(1);
  CUDA_CHECK(cudaMemsetAsync(count.data(), 0, sizeof(unsigned long long), ctx.stream()));
  for (const Output& out : outputs) {
    if (out.is_bf16)
      count_nonfinite_kernel<<<kFillBlocks, kFillThreads, 0, ctx.stream()>>>(static_cast<const bf16*>(out.data),
                                                                             out.count, count.data());
    else
      count_nonfinite_kernel<<<kFillBlocks, kFillThreads, 0, ctx.stream()>>>(static_cast<const float*>(out.data),
                                                                             out.count, count.data());
    CUDA_CHECK_LAUNCH();
  }
  ctx.synchronize();
  return count.download()[0];
}

// How a run is done: the full measurement by default; --smoke shrinks everything so that a slow
// machine (the host emulation of tests/kernel_emu) can check that every case runs.
struct Settings {
  Sizes sizes;
  int repeats = 50;  // timed runs per case
  int warmup = 3;    // untimed runs before them
  int ceiling_repeats = 30;
  size_t copy_bytes = size_t{1} << 30;  // the copy ceiling's buffer
  int64_t gemm_n = 8192;                // the GEMM ceiling's n^3
  bool smoke = false;
  int gemm_autotune = 0;  // Context::set_gemm_autotune for the cases (the ceilings keep the heuristic's first)
  std::string copy_text() const {
    return copy_bytes % (size_t{1} << 30) == 0 ? str(static_cast<int64_t>(copy_bytes >> 30)) + " GiB"
                                               : str(static_cast<int64_t>(copy_bytes >> 20)) + " MiB";
  }
};

struct Ceilings {
  double copy_gb_per_s = 0, gemm_tflop_per_s = 0;
  double copy_ms = 0, gemm_ms = 0;
};

Ceilings measure_ceilings(Context& ctx, L2Flusher& flusher, const Settings& settings) {
  Ceilings c;
  const int repeats = settings.ceiling_repeats, warmup = settings.warmup;
  {
    const size_t bytes = settings.copy_bytes;
    DeviceBuffer<unsigned char> src(bytes), dst(bytes);
    fill_uniform(ctx, reinterpret_cast<float*>(src.data()), static_cast<int64_t>(bytes / 4), 1);
    const Timing t = time_runs(
        ctx, flusher,
        [&] { CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, ctx.stream())); },
        repeats, warmup);
    c.copy_ms = t.median_ms;
    c.copy_gb_per_s = 2.0 * bytes / (t.median_ms * 1e-3) / 1e9;
  }
  {
    const int64_t n = settings.gemm_n;
    const LinearShape shape{n, n, n};
    DeviceBuffer<bf16> x(static_cast<size_t>(n * n)), w(static_cast<size_t>(n * n)), y(static_cast<size_t>(n * n));
    fill_uniform(ctx, x.data(), n * n, 2);
    fill_uniform(ctx, w.data(), n * n, 3);
    const Timing t = time_runs(
        ctx, flusher, [&] { linear_forward(ctx, shape, x.data(), w.data(), nullptr, y.data()); }, repeats, warmup);
    c.gemm_ms = t.median_ms;
    c.gemm_tflop_per_s = 2.0 * n * n * n / (t.median_ms * 1e-3) / 1e12;
  }
  return c;
}

// ---- output ------------------------------------------------------------------------------------------

struct Result {
  const Case* c = nullptr;
  std::string status = "ok";  // ok | nonfinite | error
  std::string error;
  Timing timing;
  double bytes = 0, flops = 0;
  double gb_per_s = 0, tflop_per_s = 0, percent_of_ceiling = 0;
  std::string bound;  // memory | compute
};

std::string json_escape(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(ch)));
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out;
}

std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

// The cuBLASLt algorithm of every GEMM shape the cases ran (with --gemm-autotune, each candidate's time).
void print_gemm_plans(const std::vector<GemmPlanInfo>& plans) {
  if (plans.empty()) return;
  std::printf("\nGEMM plans (cuBLASLt column-major m x n x k; the algorithm each shape ran):\n");
  for (const GemmPlanInfo& plan : plans) std::printf("  %s\n", describe_gemm_plan(plan).c_str());
}

// The attention kernels' registers, shared and local memory and blocks an SM on this device.
void print_kernel_resources(const std::vector<KernelResources>& kernels) {
  std::printf(
      "\nKernel resources (cudaFuncGetAttributes; blocks an SM from the occupancy calculator at the launch's block "
      "and dynamic shared memory):\n");
  for (const KernelResources& k : kernels)
    std::printf("  %-48s %4d threads %4d registers %7zu + %6zu B shared %5zu B local %3d blocks/SM\n", k.name.c_str(),
                k.threads, k.registers, k.static_shared_bytes, k.dynamic_shared_bytes, k.local_bytes, k.blocks_per_sm);
}

void write_json(const std::string& path, const bert::DeviceInfo& device, const std::string& command,
                const Ceilings& ceilings, const Settings& settings, size_t l2_bytes, const std::vector<Result>& results,
                const std::vector<GemmPlanInfo>& plans, const std::vector<KernelResources>& kernels) {
  std::ostringstream o;
  o << "{\n  \"device\": \"" << json_escape(device.name) << "\",\n  \"sm\": " << device.sm_major * 10 + device.sm_minor
    << ",\n  \"multiprocessors\": " << device.multiprocessors << ",\n  \"l2_bytes\": " << l2_bytes
    << ",\n  \"command\": \"" << json_escape(command) << "\",\n  \"repeats\": " << settings.repeats
    << ",\n  \"smoke\": " << (settings.smoke ? "true" : "false")
    << ",\n  \"tokens_per_batch\": " << settings.sizes.tokens
    << ",\n  \"ceilings\": {\"copy_gb_per_s\": " << num(ceilings.copy_gb_per_s)
    << ", \"gemm_bf16_tflop_per_s\": " << num(ceilings.gemm_tflop_per_s) << ", \"copy\": \"" << settings.copy_text()
    << " device-to-device, read + write\", \"gemm\": \"" << settings.gemm_n << "^3 bf16 linear_forward (cuBLASLt)\"},\n"
    << "  \"cases\": [";
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    o << (i ? ",\n" : "\n") << "    {\"name\": \"" << json_escape(r.c->name) << "\", \"op\": \"" << json_escape(r.c->op)
      << "\", \"shape\": \"" << json_escape(r.c->shape) << "\", \"status\": \"" << r.status << "\"";
    if (!r.error.empty()) o << ", \"error\": \"" << json_escape(r.error) << "\"";
    if (r.status != "error") {
      o << ", \"median_ms\": " << num(r.timing.median_ms) << ", \"min_ms\": " << num(r.timing.min_ms)
        << ", \"bytes\": " << num(r.bytes) << ", \"flops\": " << num(r.flops) << ", \"gb_per_s\": " << num(r.gb_per_s)
        << ", \"tflop_per_s\": " << num(r.tflop_per_s) << ", \"bound\": \"" << r.bound
        << "\", \"percent_of_ceiling\": " << num(r.percent_of_ceiling);
    }
    o << "}";
  }
  o << "\n  ],\n  \"gemm_autotune\": " << settings.gemm_autotune << ",\n  \"gemm_plans\": [";
  for (size_t i = 0; i < plans.size(); ++i) {
    const GemmPlanInfo& plan = plans[i];
    o << (i ? ",\n" : "\n") << "    {\"product\": \"" << json_escape(plan.product) << "\", \"m\": " << plan.m
      << ", \"n\": " << plan.n << ", \"k\": " << plan.k
      << ", \"bias_epilogue\": " << (plan.bias_epilogue ? "true" : "false")
      << ", \"bias_gradient_epilogue\": " << (plan.bias_gradient_epilogue ? "true" : "false")
      << ", \"accumulate\": " << (plan.accumulate ? "true" : "false")
      << ", \"rank_reused\": " << (plan.rank_reused ? "true" : "false") << ", \"algorithm\": \""
      << json_escape(plan.algorithm) << "\", \"offered\": " << plan.offered << ", \"chosen\": " << plan.chosen
      << ", \"candidate_ms\": [";
    for (size_t j = 0; j < plan.candidate_ms.size(); ++j)
      o << (j ? ", " : "") << (plan.candidate_ms[j] < 0 ? std::string("null") : num(plan.candidate_ms[j]));
    o << "]}";
  }
  o << "\n  ],\n  \"kernel_resources\": [";
  for (size_t i = 0; i < kernels.size(); ++i) {
    const KernelResources& k = kernels[i];
    o << (i ? ",\n" : "\n") << "    {\"kernel\": \"" << json_escape(k.name) << "\", \"threads\": " << k.threads
      << ", \"registers\": " << k.registers << ", \"static_shared_bytes\": " << k.static_shared_bytes
      << ", \"dynamic_shared_bytes\": " << k.dynamic_shared_bytes << ", \"local_bytes\": " << k.local_bytes
      << ", \"blocks_per_sm\": " << k.blocks_per_sm << "}";
  }
  o << "\n  ]\n}\n";
  std::ofstream file(path);
  if (!file) throw std::runtime_error("cannot write " + path);
  file << o.str();
  if (!file) throw std::runtime_error("cannot write " + path);
}

void print_usage(std::FILE* out) {
  std::fprintf(out,
               "usage: bench_kernels [--list] [--filter NAME] [--json FILE] [--repeats N] [--tokens N] [--smoke]\n"
               "                     [--gemm-autotune N]\n"
               "  --list         print the case names and exit\n"
               "  --filter NAME  run only cases whose name contains NAME (e.g. attention, bert-base, linear_bwd)\n"
               "  --json FILE    also write every number, the device and the command line as JSON\n"
               "  --repeats N    timed runs per case (median reported; default 50)\n"
               "  --tokens N     tokens per batch, a multiple of 512 (default %lld)\n"
               "  --smoke        check that every case runs, not a measurement: 512 tokens, 1 repeat, no warm-up,\n"
               "                 16 MiB copy and 512^3 GEMM ceilings, one encoder layer in the optimizer cases,\n"
               "                 at most 16 masked rows (MLM decoder, cross-entropy)\n"
               "  --gemm-autotune N  time up to N cuBLASLt algorithms per GEMM shape and keep the fastest\n"
               "                 (default 0: the heuristic's first); the GEMM plans are printed at the end\n",
               static_cast<long long>(kDefaultTokens));
}

long parse_integer(const std::string& flag, const std::string& text, long lo, long hi, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  const long parsed = std::strtol(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != '\0' || errno != 0 || parsed < lo || parsed > hi)
    throw std::invalid_argument(flag + " needs " + what + ", got '" + text + "'");
  return parsed;
}

int run(int argc, char** argv) {
  bool list = false;
  std::string filter, json_path;
  Settings settings;
  bool repeats_given = false, tokens_given = false;
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + " needs a value");
      return argv[++i];
    };
    if (arg == "--list") {
      list = true;
    } else if (arg == "--filter") {
      filter = value("--filter");
    } else if (arg == "--json") {
      json_path = value("--json");
    } else if (arg == "--repeats") {
      settings.repeats = static_cast<int>(parse_integer(arg, value("--repeats"), 1, 100000, "an integer in 1..100000"));
      repeats_given = true;
    } else if (arg == "--tokens") {
      const long tokens = parse_integer(arg, value("--tokens"), 512, 1L << 22, "a multiple of 512 in 512..4194304");
      if (tokens % 512 != 0)
        throw std::invalid_argument("--tokens needs a multiple of 512 in 512..4194304, got '" + std::to_string(tokens) +
                                    "'");
      settings.sizes.tokens = tokens;
      tokens_given = true;
    } else if (arg == "--smoke") {
      settings.smoke = true;
    } else if (arg == "--gemm-autotune") {
      settings.gemm_autotune =
          static_cast<int>(parse_integer(arg, value("--gemm-autotune"), 0, Context::kMaxGemmAutotune,
                                         "an integer in 0.." + str(Context::kMaxGemmAutotune)));
    } else if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      return 0;
    } else {
      print_usage(stderr);
      throw std::invalid_argument("unknown argument '" + arg + "'");
    }
  }
  if (settings.smoke) {
    if (!tokens_given) settings.sizes.tokens = 512;
    if (!repeats_given) settings.repeats = 1;
    settings.sizes.optimizer_layers = 1;
    settings.sizes.masked_rows_cap = 16;
    settings.warmup = 0;
    settings.ceiling_repeats = settings.repeats;
    settings.copy_bytes = size_t{16} << 20;
    settings.gemm_n = 512;
  } else {
    settings.ceiling_repeats = std::max(10, std::min(settings.repeats, 30));
  }

  const std::vector<Case> cases = make_cases(settings.sizes);
  std::vector<const Case*> selected;
  for (const Case& c : cases)
    if (filter.empty() || c.name.find(filter) != std::string::npos) selected.push_back(&c);
  if (list) {
    for (const Case* c : selected) std::printf("%-44s %-32s %s\n", c->name.c_str(), c->op.c_str(), c->shape.c_str());
    return 0;
  }
  if (selected.empty()) throw std::invalid_argument("no case matches --filter '" + filter + "' (see --list)");

  const bert::DeviceInfo device = bert::cuda_device_info();
  if (!device.available) {
    std::fprintf(stderr, "bench_kernels: %s\n", device.reason.c_str());
    return 1;
  }
  if (const std::string why = bert::cuda_check_kernels(); !why.empty()) {
    std::fprintf(stderr, "bench_kernels: %s\n", why.c_str());
    return 1;
  }
  int device_index = 0, l2_int = 0;
  CUDA_CHECK(cudaGetDevice(&device_index));
  CUDA_CHECK(cudaDeviceGetAttribute(&l2_int, cudaDevAttrL2CacheSize, device_index));
  const size_t l2_bytes = static_cast<size_t>(l2_int);

  Context ctx;
  L2Flusher flusher(l2_bytes);
  std::printf(
      "device: %s (sm_%d%d, %d SMs, L2 %.0f MB), %lld tokens per batch, %d repeats per case, median with "
      "L2 flushed\n",
      device.name.c_str(), device.sm_major, device.sm_minor, device.multiprocessors, l2_bytes / 1e6,
      static_cast<long long>(settings.sizes.tokens), settings.repeats);
  if (settings.smoke)
    std::printf("--smoke: a check that every case runs and writes finite outputs; its numbers are not measurements\n");
  const Ceilings ceilings = measure_ceilings(ctx, flusher, settings);
  std::printf("ceilings: copy %.0f GB/s (%s D2D, read + write), GEMM %.1f TFLOP/s (%lld^3 bf16, cuBLASLt)\n\n",
              ceilings.copy_gb_per_s, settings.copy_text().c_str(), ceilings.gemm_tflop_per_s,
              static_cast<long long>(settings.gemm_n));
  // The ceilings' GEMM ran on the heuristic's first algorithm; the cases on what --gemm-autotune says.
  const size_t ceiling_plans = ctx.gemm_plans().size();
  ctx.set_gemm_autotune(settings.gemm_autotune);
  if (settings.gemm_autotune > 1)
    std::printf(
        "--gemm-autotune %d: each GEMM shape's first call times up to %d cuBLASLt algorithms and keeps the "
        "fastest\n\n",
        settings.gemm_autotune, settings.gemm_autotune);
  std::printf("%-44s %10s %10s %10s %8s  %s\n", "case", "median ms", "GB/s", "TFLOP/s", "% ceil", "check");

  std::vector<Result> results;
  int failures = 0;
  for (const Case* c : selected) {
    Result r;
    r.c = c;
    try {
      Prepared p = c->prepare(ctx);
      p.run();
      const uint64_t bad = count_nonfinite(ctx, p.outputs);
      if (bad) {
        r.status = "nonfinite";
        r.error = std::to_string(bad) + " non-finite output elements after the first run";
      }
      r.timing = time_runs(ctx, flusher, p.run, settings.repeats, settings.warmup);
      r.bytes = p.bytes;
      r.flops = p.flops;
      const double seconds = r.timing.median_ms * 1e-3;
      r.gb_per_s = p.bytes / seconds / 1e9;
      r.tflop_per_s = p.flops / seconds / 1e12;
      r.bound = p.flops > 0 ? "compute" : "memory";
      r.percent_of_ceiling =
          p.flops > 0 ? 100.0 * r.tflop_per_s / ceilings.gemm_tflop_per_s : 100.0 * r.gb_per_s / ceilings.copy_gb_per_s;
      ctx.synchronize();
    } catch (const std::exception& e) {
      r.status = "error";
      r.error = e.what();
      cudaDeviceSynchronize();
      cudaGetLastError();  // a launch failure must not poison the next case's checks
    }
    if (r.status != "ok") ++failures;
    if (r.status == "error") {
      std::printf("%-44s %10s %10s %10s %8s  ERROR: %s\n", c->name.c_str(), "-", "-", "-", "-", r.error.c_str());
    } else {
      char tflops[32] = "-";
      if (r.flops > 0) std::snprintf(tflops, sizeof(tflops), "%.1f", r.tflop_per_s);
      std::printf("%-44s %10.4f %10.0f %10s %7.1f%%  %s\n", c->name.c_str(), r.timing.median_ms, r.gb_per_s, tflops,
                  r.percent_of_ceiling, r.status == "ok" ? "finite" : r.error.c_str());
    }
    std::fflush(stdout);
    results.push_back(r);
  }
  std::vector<GemmPlanInfo> plans = ctx.gemm_plans();
  plans.erase(plans.begin(), plans.begin() + static_cast<std::ptrdiff_t>(std::min(ceiling_plans, plans.size())));
  print_gemm_plans(plans);
  const std::vector<KernelResources> kernels = bert::cuda::attention_kernel_resources();
  print_kernel_resources(kernels);
  if (!json_path.empty()) {
    write_json(json_path, device, command, ceilings, settings, l2_bytes, results, plans, kernels);
    std::printf("\nwrote %s\n", json_path.c_str());
  }
  if (failures) std::printf("%d case(s) failed (non-finite output or error)\n", failures);
  return failures ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_kernels: %s\n", e.what());
    return 1;
  }
}
