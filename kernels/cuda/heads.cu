// The BERT pooler (HF BertPooler) and the row gather/scatter of the sparse MLM head (kernels/ops.h;
// CPU reference: kernels/cpu/pooler.cpp).
//   pooler_forward:  pooled[b] = tanh(W h_cls[b] + bias), h_cls[b] = encoder_out row b * seq_len.
//                    encoder_out bf16 [batch * seq_len, hidden], W bf16 [hidden, hidden], bias bf16
//                    [hidden] (may be nullptr: no bias), pooled bf16 [batch, hidden].
//   pooler_backward: dz = dpooled * (1 - pooled^2) (formed on the fly, never stored);
//                    dW (fp32) += dz^T h_cls, dbias (fp32) += sum_b dz, and d_encoder_out's [CLS]
//                    rows (bf16) += dz W; the other rows are untouched.
//   gather_rows:     dst[i] = src[rows[i]];  scatter_add_rows: dst[rows[i]] += src[i] (distinct rows).
// rows[i] must index a row of src (gather) / dst (scatter): the op cannot know those tensors' row
// counts, so it does not check them.
//
// The pooler is a handful of tiny GEMMs (batch <= 512, hidden <= 1024), so it uses one small
// self-contained tiled kernel (32x32 output tile, 32-deep k tiles in shared memory, fp32
// accumulation, each output summed by one thread in k order: deterministic) with a per-use loader
// and epilogue, rather than cuBLASLt descriptors for ~1 GFLOP of work.
//
// Napkin math (batch 32, hidden 768): forward 2 * 32 * 768^2 = 38 MFLOP; backward 2x that plus the
// 2.4 MB dW read-modify-write: a few microseconds, launch bound. At the limits (batch 512, hidden
// 1024) ~1 GFLOP per GEMM: ~0.1 ms on CUDA cores, still negligible beside the encoder.
// gather/scatter (600 masked rows x 768): 0.9 MB each way, launch bound.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

using namespace detail;  // kernels/cuda/common.cuh

constexpr int kTile = 32;         // output tile edge and k-tile depth
constexpr int kTileRows = 8;      // thread rows of a (32, 8) block; each thread owns 4 outputs
constexpr int kRowThreads = 128;  // gather / scatter: threads per row

// ---- loaders: element (row, col) of a stored row-major matrix, as float --------------------------

struct Bf16Matrix {
  const bf16* data;
  int64_t row_stride;
  __device__ float operator()(int64_t row, int64_t col) const { return __bfloat162float(data[row * row_stride + col]); }
};

// dz = dpooled * (1 - pooled^2), both bf16 [batch, hidden]; the CPU reference's operation order.
struct TanhGrad {
  const bf16* dpooled;
  const bf16* pooled;
  int64_t row_stride;
  __device__ float operator()(int64_t row, int64_t col) const {
    const int64_t i = row * row_stride + col;
    const float p = __bfloat162float(pooled[i]);
    return __fmul_rn(__bfloat162float(dpooled[i]), __fsub_rn(1.0f, __fmul_rn(p, p)));
  }
};

// ---- epilogues: what happens to C(m, n) ----------------------------------------------------------

struct TanhBiasStore {  // pooled[m, n] = tanh(acc + bias[n])
  bf16* out;
  const bf16* bias;
  int64_t row_stride;
  __device__ void operator()(int64_t m, int64_t n, float acc) const {
    const float b = bias != nullptr ? __bfloat162float(bias[n]) : 0.0f;
    out[m * row_stride + n] = __float2bfloat16_rn(tanhf(acc + b));
  }
};

struct AddToBf16 {  // out[m, n] += acc, in fp32, rounded once
  bf16* out;
  int64_t row_stride;
  __device__ void operator()(int64_t m, int64_t n, float acc) const {
    bf16& slot = out[m * row_stride + n];
    slot = __float2bfloat16_rn(__bfloat162float(slot) + acc);
  }
};

struct AddToF32 {  // out[m, n] += acc
  float* out;
  int64_t row_stride;
  __device__ void operator()(int64_t m, int64_t n, float acc) const { out[m * row_stride + n] += acc; }
};

// ------------------------------------------------------------------------------------------------

// C[m, n] = sum_k A(m, k) B(k, n), then epilogue(m, n, C). kTransA: A(m, k) = load_a(k, m), else
// load_a(m, k); kTransB: B(k, n) = load_b(n, k), else load_b(k, n). Tiles are loaded so that
// consecutive threads read consecutive stored columns (coalesced either way).
template <bool kTransA, bool kTransB, class LoadA, class LoadB, class Epilogue>
__global__ void __launch_bounds__(kTile* kTileRows)
    tiled_gemm_kernel(int64_t m_size, int64_t n_size, int64_t k_size, LoadA load_a, LoadB load_b, Epilogue epilogue) {
  __shared__ float a_tile[kTile][kTile + 1];  // [m][k]
  __shared__ float b_tile[kTile][kTile + 1];  // [k][n]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile, n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  float acc[kTile / kTileRows] = {};
  for (int64_t k0 = 0; k0 < k_size; k0 += kTile) {
    for (int i = ty; i < kTile; i += kTileRows) {
      if constexpr (kTransA) {  // stored [k, m]: a thread row i reads stored row k0 + i, columns m0 + tx
        const int64_t k = k0 + i, m = m0 + tx;
        a_tile[tx][i] = (k < k_size && m < m_size) ? load_a(k, m) : 0.0f;
      } else {  // stored [m, k]
        const int64_t m = m0 + i, k = k0 + tx;
        a_tile[i][tx] = (m < m_size && k < k_size) ? load_a(m, k) : 0.0f;
      }
      if constexpr (kTransB) {  // stored [n, k]
        const int64_t n = n0 + i, k = k0 + tx;
        b_tile[tx][i] = (n < n_size && k < k_size) ? load_b(n, k) : 0.0f;
      } else {  // stored [k, n]
        const int64_t k = k0 + i, n = n0 + tx;
        b_tile[i][tx] = (k < k_size && n < n_size) ? load_b(k, n) : 0.0f;
      }
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTile; ++kk) {
      const float b = b_tile[kk][tx];
#pragma unroll
      for (int r = 0; r < kTile / kTileRows; ++r) acc[r] += a_tile[ty + r * kTileRows][kk] * b;
    }
    __syncthreads();
  }
  const int64_t n = n0 + tx;
#pragma unroll
  for (int r = 0; r < kTile / kTileRows; ++r) {
    const int64_t m = m0 + ty + r * kTileRows;
    if (m < m_size && n < n_size) epilogue(m, n, acc[r]);
  }
}

template <bool kTransA, bool kTransB, class LoadA, class LoadB, class Epilogue>
void launch_tiled_gemm(Context& ctx, int64_t m_size, int64_t n_size, int64_t k_size, LoadA load_a, LoadB load_b,
                       Epilogue epilogue) {
  const dim3 grid(static_cast<unsigned>(ceil_div(n_size, kTile)), static_cast<unsigned>(ceil_div(m_size, kTile)));
  tiled_gemm_kernel<kTransA, kTransB>
      <<<grid, dim3(kTile, kTileRows), 0, ctx.stream()>>>(m_size, n_size, k_size, load_a, load_b, epilogue);
  CUDA_CHECK_LAUNCH();
}

// ------------------------------------------------------------------------------------------------

// dbias[j] += sum over b, in order, of dz[b, j]: one thread per column.
__global__ void pooler_bias_grad_kernel(int64_t batch, int64_t hidden, TanhGrad dz, float* dbias) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= hidden) return;
  float sum = 0.0f;
  for (int64_t b = 0; b < batch; ++b) sum += dz(b, j);
  dbias[j] += sum;
}

// ------------------------------------------------------------------------------------------------

// One block per output row; kVector: cols % 8 == 0 and 16-byte aligned src/dst (host-checked).
template <bool kVector>
__global__ void __launch_bounds__(kRowThreads)
    gather_rows_kernel(int64_t cols, const int32_t* rows, const bf16* src, bf16* dst) {
  const int64_t i = blockIdx.x;
  const bf16* from = src + static_cast<int64_t>(rows[i]) * cols;
  bf16* to = dst + i * cols;
  if (kVector) {
    for (int64_t v = threadIdx.x; v < cols / 8; v += kRowThreads)
      reinterpret_cast<uint4*>(to)[v] = reinterpret_cast<const uint4*>(from)[v];
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += kRowThreads) to[c] = from[c];
  }
}

template <bool kVector>
__global__ void __launch_bounds__(kRowThreads)
    scatter_add_rows_kernel(int64_t cols, const int32_t* rows, const bf16* src, bf16* dst) {
  const int64_t i = blockIdx.x;
  const bf16* from = src + i * cols;
  bf16* to = dst + static_cast<int64_t>(rows[i]) * cols;
  if (kVector) {
    for (int64_t v = threadIdx.x; v < cols / 8; v += kRowThreads) {
      const Bf16x8 add = load_bf16_pack(from + v * 8);
      Bf16x8 old = load_bf16_pack(to + v * 8);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        old.value[j] = __float2bfloat16_rn(__bfloat162float(old.value[j]) + __bfloat162float(add.value[j]));
      store_bf16_pack(to + v * 8, old);
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += kRowThreads)
      to[c] = __float2bfloat16_rn(__bfloat162float(to[c]) + __bfloat162float(from[c]));
  }
}

void check_pooler_shape(const PoolerShape& shape, const char* op) {
  require(shape.batch >= 0 && shape.seq_len > 0 && shape.hidden > 0, op,
          "need batch >= 0 and seq_len, hidden > 0 (got batch " + std::to_string(shape.batch) + ", seq_len " +
              std::to_string(shape.seq_len) + ", hidden " + std::to_string(shape.hidden) + ")");
  // Grid y counts 32-row tiles of batch (forward) and of hidden (dW).
  constexpr int64_t kMaxRows = int64_t{65535} * kTile;
  require(shape.batch <= kMaxRows && shape.hidden <= kMaxRows, op, "batch and hidden must be <= 65535 * 32");
}

void check_rows_args(const char* op, int64_t num_rows, int64_t cols, const int32_t* rows, const bf16* src,
                     const bf16* dst) {
  require(num_rows >= 0 && cols >= 0, op, "need num_rows >= 0 and cols >= 0");
  require(num_rows <= std::numeric_limits<int32_t>::max(), op, "num_rows must fit in int32 (one block per row)");
  require(num_rows == 0 || cols == 0 || (rows != nullptr && src != nullptr && dst != nullptr), op,
          "rows, src and dst must not be nullptr");
}

}  // namespace

void pooler_forward(Context& ctx, const PoolerShape& shape, const bf16* encoder_out, const bf16* weight,
                    const bf16* bias, bf16* pooled) {
  const char* op = "pooler_forward";
  check_pooler_shape(shape, op);
  if (shape.batch == 0) return;
  require(encoder_out != nullptr && weight != nullptr && pooled != nullptr, op,
          "encoder_out, weight and pooled must not be nullptr (bias may be)");
  const int64_t hidden = shape.hidden, cls_stride = shape.seq_len * shape.hidden;
  // C[b, j] = sum_k h_cls[b, k] W[j, k]: A stored [batch, hidden] (row stride cls_stride), B^T = W.
  launch_tiled_gemm<false, true>(ctx, shape.batch, hidden, hidden, Bf16Matrix{encoder_out, cls_stride},
                                 Bf16Matrix{weight, hidden}, TanhBiasStore{pooled, bias, hidden});
}

void pooler_backward(Context& ctx, const PoolerShape& shape, const bf16* dpooled, const bf16* encoder_out,
                     const bf16* weight, const bf16* pooled, bf16* d_encoder_out, float* dweight, float* dbias) {
  const char* op = "pooler_backward";
  check_pooler_shape(shape, op);
  if (shape.batch == 0) return;
  require(dpooled != nullptr && pooled != nullptr, op, "dpooled and pooled must not be nullptr");
  require(d_encoder_out == nullptr || weight != nullptr, op, "d_encoder_out needs weight");
  require(dweight == nullptr || encoder_out != nullptr, op, "dweight needs encoder_out");
  const int64_t batch = shape.batch, hidden = shape.hidden, cls_stride = shape.seq_len * shape.hidden;
  const TanhGrad dz{dpooled, pooled, hidden};
  if (d_encoder_out != nullptr) {
    // [CLS] rows += dz W: C[b, k] = sum_j dz[b, j] W[j, k].
    launch_tiled_gemm<false, false>(ctx, batch, hidden, hidden, dz, Bf16Matrix{weight, hidden},
                                    AddToBf16{d_encoder_out, cls_stride});
  }
  if (dweight != nullptr) {
    // dW[j, k] += sum_b dz[b, j] h_cls[b, k]: A(j, b) = dz stored [batch, hidden], transposed.
    launch_tiled_gemm<true, false>(ctx, hidden, hidden, batch, dz, Bf16Matrix{encoder_out, cls_stride},
                                   AddToF32{dweight, hidden});
  }
  if (dbias != nullptr) {
    constexpr int kThreads = 256;
    pooler_bias_grad_kernel<<<static_cast<unsigned>(ceil_div(hidden, kThreads)), kThreads, 0, ctx.stream()>>>(
        batch, hidden, dz, dbias);
    CUDA_CHECK_LAUNCH();
  }
}

void gather_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const bf16* src, bf16* dst) {
  check_rows_args("gather_rows", num_rows, cols, rows, src, dst);
  if (num_rows == 0 || cols == 0) return;
  const unsigned blocks = static_cast<unsigned>(num_rows);
  if (cols % 8 == 0 && aligned16(src) && aligned16(dst))
    gather_rows_kernel<true><<<blocks, kRowThreads, 0, ctx.stream()>>>(cols, rows, src, dst);
  else
    gather_rows_kernel<false><<<blocks, kRowThreads, 0, ctx.stream()>>>(cols, rows, src, dst);
  CUDA_CHECK_LAUNCH();
}

void scatter_add_rows(Context& ctx, int64_t num_rows, int64_t cols, const int32_t* rows, const bf16* src, bf16* dst) {
  check_rows_args("scatter_add_rows", num_rows, cols, rows, src, dst);
  if (num_rows == 0 || cols == 0) return;
  const unsigned blocks = static_cast<unsigned>(num_rows);
  if (cols % 8 == 0 && aligned16(src) && aligned16(dst))
    scatter_add_rows_kernel<true><<<blocks, kRowThreads, 0, ctx.stream()>>>(cols, rows, src, dst);
  else
    scatter_add_rows_kernel<false><<<blocks, kRowThreads, 0, ctx.stream()>>>(cols, rows, src, dst);
  CUDA_CHECK_LAUNCH();
}

}  // namespace bert::cuda
