// Helpers shared by the CUDA op families (kernels/cuda/<family>.cu; device code, so .cu files only):
// host argument checks, warp and block sums in a fixed order, 128-bit bf16x8 loads and stores, the
// deterministic column reduction behind dgamma/dbeta/dbias (per-chunk fp32 partials, then a
// fixed-order finalize), and the row-wise LayerNorm kernels of layernorm.cu and embeddings.cu (the
// two differ only in how a row's input z is formed and where its gradient goes).
// Everything here is inline or a template (the kernels too), so any number of .cu files can include
// it without clashing at link time. The napkin math stays in the purpose block of each op's file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda::detail {

// ---- host: argument checks and launch arithmetic ---------------------------------------------------

// Throws std::invalid_argument("<op>: <what>") unless ok.
inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

__host__ __device__ __forceinline__ bool aligned_to(const void* pointer, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

// 16 bytes: one 128-bit access (8 bf16, 4 floats).
__host__ __device__ __forceinline__ bool aligned16(const void* pointer) { return aligned_to(pointer, 16); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A MatrixShape of rows >= 0 and cols > 0.
inline void check_matrix_shape(const MatrixShape& shape, const char* op) {
  require(shape.rows >= 0 && shape.cols > 0, op,
          "need rows >= 0 and cols > 0, got [" + std::to_string(shape.rows) + ", " + std::to_string(shape.cols) + "]");
}

// ---- warp and block sums ---------------------------------------------------------------------------

constexpr int kWarpSize = 32;

// Sum over the 32 lanes of a full warp.
__device__ __forceinline__ float warp_sum(float value) {
  // Butterfly: IEEE addition is commutative, so every lane ends with the same bits.
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Sum over a block of kThreads threads in a fixed tree; valid in thread 0. Every thread of the block
// must call it (it holds two barriers).
template <int kThreads, class T>
__device__ T block_sum(T value) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps");
  __shared__ T warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kThreads / 32 ? warp_sums[lane] : T(0);
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  __syncthreads();  // warp_sums is free again: a second block_sum in the same kernel may reuse it
  return value;
}

// ---- 128-bit bf16 access (the address 16-byte aligned) ---------------------------------------------

constexpr int kVectorWidth = 8;  // bf16 per 128-bit access

// 8 bf16 <-> 8 floats.
__device__ __forceinline__ void load_bf16x8(const bf16* src, float (&out)[kVectorWidth]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVectorWidth / 2; ++i) {
    const float2 pair = __bfloat1622float2(pairs[i]);
    out[2 * i] = pair.x;
    out[2 * i + 1] = pair.y;
  }
}

__device__ __forceinline__ void store_bf16x8(bf16* dst, const float (&in)[kVectorWidth]) {
  uint4 raw;
  __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVectorWidth / 2; ++i) pairs[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
  *reinterpret_cast<uint4*>(dst) = raw;
}

// 8 bf16 kept as bf16.
struct alignas(16) Bf16x8 {
  bf16 value[kVectorWidth];
};

__device__ __forceinline__ Bf16x8 load_bf16_pack(const bf16* source) {
  const uint4 raw = *reinterpret_cast<const uint4*>(source);
  Bf16x8 out;
  memcpy(&out, &raw, sizeof(raw));
  return out;
}

// 8 floats rounded to bf16 (store_bf16x8's rounding), kept in registers.
__device__ __forceinline__ Bf16x8 pack_bf16x8(const float (&in)[kVectorWidth]) {
  Bf16x8 out;
#pragma unroll
  for (int i = 0; i < kVectorWidth; ++i) out.value[i] = __float2bfloat16_rn(in[i]);
  return out;
}

__device__ __forceinline__ void store_bf16_pack(bf16* destination, const Bf16x8& values) {
  uint4 raw;
  memcpy(&raw, &values, sizeof(raw));
  *reinterpret_cast<uint4*>(destination) = raw;
}

// ---- dropout multipliers (dropout.cu, layernorm.cu) ------------------------------------------------
// A dropout site as the kernels apply it: keep iff the element's Philox word >= threshold
// (ops::dropout_keep), kept elements times scale = 1 / (1 - p) in fp32 (the CPU's IEEE division).
struct DropoutMask {
  ops::DropoutSpec spec;
  uint64_t threshold;
  float scale;
};
inline DropoutMask make_dropout_mask(const ops::DropoutSpec& spec) {
  return DropoutMask{spec, ops::dropout_drop_threshold(spec.probability), 1.0f / (1.0f - spec.probability)};
}

// The multipliers (0 or scale) of the site's elements first .. first + 7; first % 4 == 0, so two
// Philox groups serve them. Applied as value * multiplier, as on the CPU (a dropped negative value
// gives -0, a dropped NaN stays NaN).
__device__ __forceinline__ void dropout_multipliers8(const DropoutMask& mask, int64_t first,
                                                     float (&multiplier)[kVectorWidth]) {
  const uint64_t group = static_cast<uint64_t>(first) / 4;
  const ops::Philox4x32Result low = ops::dropout_random_group(mask.spec, group);
  const ops::Philox4x32Result high = ops::dropout_random_group(mask.spec, group + 1);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    multiplier[i] = low.word[i] >= mask.threshold ? mask.scale : 0.0f;
    multiplier[4 + i] = high.word[i] >= mask.threshold ? mask.scale : 0.0f;
  }
}

// A (fused LayerNorm backward) sink writing the bf16 input gradient d_sum [rows, cols] and d_x =
// dropout_backward(d_sum) (each element the bf16 d_sum times its multiplier, rounded to bf16): the
// two ops in sequence, bit for bit. cols % 8 == 0 and 16-byte aligned pointers (the 128-bit path).
struct DroppedBf16Rows {
  static constexpr bool kWritesDropped = true;
  bf16* d_sum;
  bf16* d_x;
  DropoutMask mask;
  struct Row {
    bf16* d_sum;
    bf16* d_x;
    const DropoutMask* mask;
    int64_t first;  // the row's first element in the dropout site
    __device__ __forceinline__ void store_pack(int64_t j, const Bf16x8& values) const {
      store_bf16_pack(d_sum + j, values);
    }
    __device__ __forceinline__ void store_dropped8(int64_t j, const Bf16x8& values) const {
      float multiplier[kVectorWidth], out[kVectorWidth];
      dropout_multipliers8(*mask, first + j, multiplier);
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) out[i] = __bfloat162float(values.value[i]) * multiplier[i];
      store_bf16x8(d_x + j, out);
    }
  };
  __device__ __forceinline__ Row row(int64_t r, int64_t cols) const {
    return Row{d_sum + r * cols, d_x + r * cols, &mask, r * cols};
  }
};

// Whether a sink is a DroppedBf16Rows-like one (has kWritesDropped).
template <class Out, class = void>
struct WritesDropped : std::false_type {};
template <class Out>
struct WritesDropped<Out, std::void_t<decltype(Out::kWritesDropped)>> : std::bool_constant<Out::kWritesDropped> {};

// ---- deterministic column sums: per-chunk fp32 partials, then a fixed-order finalize ---------------
// A column kernel's block is (row chunk = blockIdx.x, column tile = blockIdx.y); each thread owns one
// column vector (kWidth consecutive columns) and walks its chunk's rows in order, writing
// partial[chunk, cols] in ctx.scratch; accumulate_partials_kernel then adds the partials to the
// fp32 gradient in a fixed order. No float atomics, and the chunking depends on the shape alone
// (never the device's SM count): bitwise the same result every run, on every GPU.

constexpr int kColumnThreads = 64;        // threads (column vectors) per block of a column kernel
constexpr int64_t kMinRowsPerChunk = 16;  // rows walked by one thread
constexpr int64_t kMaxChunks = 1024;      // bounds a partial buffer to [1024, cols]
// Finalize block: 32 columns x 32 groups of chunks (1024 threads). At the 1024 chunks of a 16k-row
// column kernel that is 32 loads a thread; 8 groups (the first device run's setting) left 128 loads a
// thread in each of only cols / 32 blocks (96 at 3072 columns): latency bound, ~32 rounds of dependent
// DRAM loads (napkin: ~20 us) of bias+GELU backward's 0.151 ms (47% of copy bandwidth on the H200; the
// change is not measured yet). The summation order stays fixed by the shape.
constexpr int kFinalizeColumns = 32;
constexpr int kFinalizeGroups = 32;

// Rows per chunk, fixed for a shape.
inline int64_t rows_per_chunk(int64_t rows) {
  const int64_t spread = ceil_div(rows, kMaxChunks);
  return spread > kMinRowsPerChunk ? spread : kMinRowsPerChunk;
}

// The column tiles go on grid.y (at most 65535); `name` is what the op calls its columns.
inline void check_column_tiles(int64_t cols, const char* name, const char* op) {
  require(ceil_div(cols, kColumnThreads) <= 65535, op,
          std::string(name) + " " + std::to_string(cols) + " exceeds the supported " +
              std::to_string(65535 * kColumnThreads));
}

// Rows [first_row, last_row) of chunk blockIdx.x and the first column of this thread's vector;
// false when the thread has no column (the tail of the last tile).
struct ColumnWork {
  int64_t first_row, last_row, column;
};
template <int kWidth>
__device__ __forceinline__ bool column_work(int64_t rows, int64_t cols, int64_t chunk_rows, ColumnWork& work) {
  const int64_t vector = static_cast<int64_t>(blockIdx.y) * kColumnThreads + threadIdx.x;
  if (vector >= cols / kWidth) return false;
  work.column = vector * kWidth;
  work.first_row = static_cast<int64_t>(blockIdx.x) * chunk_rows;
  work.last_row = work.first_row + chunk_rows < rows ? work.first_row + chunk_rows : rows;
  return true;
}

// out[j] += sum over chunks of partial[chunk, j] (blockIdx.y picks partial0/out0 or partial1/out1).
// Thread group g sums chunks g, g + kGroups, ... in order, then group 0 adds the group sums in
// order: a fixed order.
template <int kColumns, int kGroups>
__global__ void __launch_bounds__(kColumns* kGroups)
    accumulate_partials_kernel(int64_t chunks, int64_t cols, const float* partial0, float* out0, const float* partial1,
                               float* out1) {
  __shared__ float group_sums[kGroups][kColumns];
  const float* partial = blockIdx.y == 0 ? partial0 : partial1;
  float* out = blockIdx.y == 0 ? out0 : out1;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColumns + threadIdx.x;
  float sum = 0.0f;
  if (j < cols) {
#pragma unroll 4
    for (int64_t chunk = threadIdx.y; chunk < chunks; chunk += kGroups) sum += partial[chunk * cols + j];
  }
  group_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    float total = group_sums[0][threadIdx.x];
#pragma unroll
    for (int group = 1; group < kGroups; ++group) total += group_sums[group][threadIdx.x];
    out[j] += total;
  }
}

// Enqueues out0 += the column sums of partial0 [chunks, cols], and the same for partial1/out1 when
// partial1 is given. The caller checks the launch (CUDA_CHECK_LAUNCH), so an error names its line.
template <int kColumns = kFinalizeColumns, int kGroups = kFinalizeGroups>
void launch_accumulate_partials(cudaStream_t stream, int64_t chunks, int64_t cols, const float* partial0, float* out0,
                                const float* partial1 = nullptr, float* out1 = nullptr) {
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kColumns)), partial1 != nullptr ? 2 : 1);
  accumulate_partials_kernel<kColumns, kGroups>
      <<<grid, dim3(kColumns, kGroups), 0, stream>>>(chunks, cols, partial0, out0, partial1, out1);
}

// ---- LayerNorm rows (layernorm.cu, embeddings.cu) --------------------------------------------------
// y = (z - mean) * rstd * gamma + beta over rows of `cols` elements; all math in fp32. The row kernels
// run one warp per row; kVectorized: 128-bit accesses (cols % 8 == 0 and every pointer 16-byte
// aligned), else scalar. Where z comes from is a Rows source: source.row(r, cols) returns an object
// with
//   float load(int64_t j) const                            element j of row r of z
//   void load8(int64_t j, float (&z)[8]) const             elements j .. j + 7 (kVectorized only)
// and where the input gradient dz goes is an Out sink: dz.row(r, cols) returns an object with
//   void store(int64_t j, float value) const               element j of row r of dz
//   void store8(int64_t j, const float (&v)[8]) const      elements j .. j + 7 (kVectorized only)
//   void pad(int lane) const                               after the scalar path: fill any row padding

constexpr int kRowWarpsPerBlock = 4;  // row kernels: one warp per row

// Two-pass mean / variance (as the CPU; the row is re-read from L1), then y.
template <bool kVectorized, class Rows>
__global__ void __launch_bounds__(kRowWarpsPerBlock* kWarpSize)
    layernorm_rows_forward_kernel(int64_t rows, int64_t cols, Rows source, const bf16* gamma, const bf16* beta,
                                  float eps, bf16* y, float* mean_out, float* rstd_out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  if (row >= rows) return;  // uniform per warp: the shuffles below see full warps
  const auto z_row = source.row(row, cols);
  bf16* y_row = y + row * cols;
  const float count = static_cast<float>(cols);

  float sum = 0.0f;
  if constexpr (kVectorized) {
    for (int64_t j = lane * kVectorWidth; j < cols; j += kWarpSize * kVectorWidth) {
      float z[kVectorWidth];
      z_row.load8(j, z);
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) sum += z[i];
    }
  } else {
    for (int64_t j = lane; j < cols; j += kWarpSize) sum += z_row.load(j);
  }
  const float mean = warp_sum(sum) / count;

  float squares = 0.0f;
  if constexpr (kVectorized) {
    for (int64_t j = lane * kVectorWidth; j < cols; j += kWarpSize * kVectorWidth) {
      float z[kVectorWidth];
      z_row.load8(j, z);
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) squares += (z[i] - mean) * (z[i] - mean);
    }
  } else {
    for (int64_t j = lane; j < cols; j += kWarpSize) {
      const float centered = z_row.load(j) - mean;
      squares += centered * centered;
    }
  }
  const float rstd = 1.0f / sqrtf(warp_sum(squares) / count + eps);

  if constexpr (kVectorized) {
    for (int64_t j = lane * kVectorWidth; j < cols; j += kWarpSize * kVectorWidth) {
      float z[kVectorWidth], g[kVectorWidth], b[kVectorWidth], out[kVectorWidth];
      z_row.load8(j, z);
      load_bf16x8(gamma + j, g);
      load_bf16x8(beta + j, b);
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) out[i] = (z[i] - mean) * rstd * g[i] + b[i];
      store_bf16x8(y_row + j, out);
    }
  } else {
    for (int64_t j = lane; j < cols; j += kWarpSize) {
      const float z = z_row.load(j);
      y_row[j] = __float2bfloat16_rn((z - mean) * rstd * __bfloat162float(gamma[j]) + __bfloat162float(beta[j]));
    }
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// The forward for the 128-bit path up to kResidentMaxCols columns (BERT-base and -large): each lane
// issues all its loads of the row (<= 4 vectors) before the first reduction, then runs the two passes
// and y from registers: one DRAM round trip a row, where layernorm_rows_forward_kernel waits for three
// dependent passes (the row re-read from L1 twice). gamma / beta are read at the end (L1 hits after
// the first rows): loaded up front they cost 88 registers a thread at 768 columns instead of 46, and
// half the warps an SM (ptxas sm_90a).
// Lane l owns columns (v * 32 + l) * 8 .. + 7 for v < kVectors and adds them in the general kernel's
// order (its loop visits the same j), so the two give the same bits.
constexpr int kResidentMaxVectors = 4;  // 128-bit vectors per lane and row
constexpr int64_t kResidentMaxCols = int64_t{kResidentMaxVectors} * kWarpSize * kVectorWidth;  // 1024

template <int kVectors, class Rows>
__global__ void __launch_bounds__(kRowWarpsPerBlock* kWarpSize)
    layernorm_rows_forward_resident_kernel(int64_t rows, int64_t cols, Rows source, const bf16* gamma, const bf16* beta,
                                           float eps, bf16* y, float* mean_out, float* rstd_out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  if (row >= rows) return;  // uniform per warp: the shuffles below see full warps
  const auto z_row = source.row(row, cols);
  const float count = static_cast<float>(cols);

  // = {}: the compiler cannot see that a skipped vector (j >= cols) is never read.
  float z[kVectors][kVectorWidth] = {};
  // A source whose rows write back (dropout's kept branch) hands the values over from load8 and
  // writes them after every load is issued: a store between them would keep the compiler from
  // issuing the next vector's loads before it (they might alias).
  using SourceRow = decltype(z_row);
  constexpr bool kWritesBack = requires(const SourceRow& row, float (&values)[kVectorWidth], Bf16x8& pending) {
    row.load8(int64_t{0}, values, pending);
    row.write_back(int64_t{0}, pending);
  };
  Bf16x8 pending[kWritesBack ? kVectors : 1] = {};
#pragma unroll
  for (int v = 0; v < kVectors; ++v) {
    const int64_t j = (int64_t{v} * kWarpSize + lane) * kVectorWidth;
    if (j >= cols) continue;
    if constexpr (kWritesBack)
      z_row.load8(j, z[v], pending[v]);
    else
      z_row.load8(j, z[v]);
  }
  if constexpr (kWritesBack) {
#pragma unroll
    for (int v = 0; v < kVectors; ++v) {
      const int64_t j = (int64_t{v} * kWarpSize + lane) * kVectorWidth;
      if (j < cols) z_row.write_back(j, pending[v]);
    }
  }
  float sum = 0.0f;
#pragma unroll
  for (int v = 0; v < kVectors; ++v)
    if ((int64_t{v} * kWarpSize + lane) * kVectorWidth < cols)
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) sum += z[v][i];
  const float mean = warp_sum(sum) / count;
  float squares = 0.0f;
#pragma unroll
  for (int v = 0; v < kVectors; ++v)
    if ((int64_t{v} * kWarpSize + lane) * kVectorWidth < cols)
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) squares += (z[v][i] - mean) * (z[v][i] - mean);
  const float rstd = 1.0f / sqrtf(warp_sum(squares) / count + eps);

  bf16* y_row = y + row * cols;
#pragma unroll
  for (int v = 0; v < kVectors; ++v) {
    const int64_t j = (int64_t{v} * kWarpSize + lane) * kVectorWidth;
    if (j >= cols) continue;
    float g[kVectorWidth], b[kVectorWidth], out[kVectorWidth];
    load_bf16x8(gamma + j, g);
    load_bf16x8(beta + j, b);
#pragma unroll
    for (int i = 0; i < kVectorWidth; ++i) out[i] = (z[v][i] - mean) * rstd * g[i] + b[i];
    store_bf16x8(y_row + j, out);
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// Launches the row-resident forward (needs the 128-bit path and cols <= kResidentMaxCols). The only
// launcher for Rows sources that may be read once per element only (load8 with side effects).
template <class Rows>
void launch_layernorm_rows_forward_resident(cudaStream_t stream, int64_t rows, int64_t cols, Rows source,
                                            const bf16* gamma, const bf16* beta, float eps, bf16* y, float* mean,
                                            float* rstd) {
  require(cols % kVectorWidth == 0 && cols <= kResidentMaxCols, "launch_layernorm_rows_forward_resident",
          "internal: cols " + std::to_string(cols) + " is not a multiple of 8 up to 1024");
  const dim3 grid(static_cast<unsigned>(ceil_div(rows, kRowWarpsPerBlock)));
  const dim3 block(kRowWarpsPerBlock * kWarpSize);
  switch (ceil_div(cols, int64_t{kWarpSize} * kVectorWidth)) {
    case 1:
      layernorm_rows_forward_resident_kernel<1>
          <<<grid, block, 0, stream>>>(rows, cols, source, gamma, beta, eps, y, mean, rstd);
      return;
    case 2:
      layernorm_rows_forward_resident_kernel<2>
          <<<grid, block, 0, stream>>>(rows, cols, source, gamma, beta, eps, y, mean, rstd);
      return;
    case 3:
      layernorm_rows_forward_resident_kernel<3>
          <<<grid, block, 0, stream>>>(rows, cols, source, gamma, beta, eps, y, mean, rstd);
      return;
    default:
      layernorm_rows_forward_resident_kernel<4>
          <<<grid, block, 0, stream>>>(rows, cols, source, gamma, beta, eps, y, mean, rstd);
      return;
  }
}

// Launches the LayerNorm forward over `rows` rows of `source` on `stream`: the resident kernel where
// it applies (vectorized and cols <= kResidentMaxCols) and `resident` allows it (the caller's
// KernelPaths::layernorm_resident_forward), else layernorm_rows_forward_kernel.
template <class Rows>
void launch_layernorm_rows_forward(cudaStream_t stream, bool vectorized, bool resident, int64_t rows, int64_t cols,
                                   Rows source, const bf16* gamma, const bf16* beta, float eps, bf16* y, float* mean,
                                   float* rstd) {
  if (vectorized && resident && cols <= kResidentMaxCols)
    return launch_layernorm_rows_forward_resident(stream, rows, cols, source, gamma, beta, eps, y, mean, rstd);
  const dim3 grid(static_cast<unsigned>(ceil_div(rows, kRowWarpsPerBlock)));
  const dim3 block(kRowWarpsPerBlock * kWarpSize);
  if (vectorized)
    layernorm_rows_forward_kernel<true><<<grid, block, 0, stream>>>(rows, cols, source, gamma, beta, eps, y, mean, rstd);
  else
    layernorm_rows_forward_kernel<false><<<grid, block, 0, stream>>>(rows, cols, source, gamma, beta, eps, y, mean, rstd);
}

// The input gradient dz = rstd * (g - mean(g) - zhat * mean(g * zhat)), g = dy * gamma, from the
// saved mean / rstd (dgamma/dbeta come from layernorm_param_partials_kernel).
template <bool kVectorized, class Rows, class Out>
__global__ void __launch_bounds__(kRowWarpsPerBlock* kWarpSize)
    layernorm_rows_backward_kernel(int64_t rows, int64_t cols, Rows source, const bf16* dy, const bf16* gamma,
                                   const float* mean, const float* rstd, Out dz) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  if (row >= rows) return;  // uniform per warp
  const auto z_row = source.row(row, cols);
  const bf16* dy_row = dy + row * cols;
  const auto dz_row = dz.row(row, cols);
  const float row_mean = mean[row], row_rstd = rstd[row];
  const float count = static_cast<float>(cols);

  float sum_g = 0.0f, sum_g_zhat = 0.0f;
  if constexpr (kVectorized) {
    for (int64_t j = lane * kVectorWidth; j < cols; j += kWarpSize * kVectorWidth) {
      float d[kVectorWidth], z[kVectorWidth], g[kVectorWidth];
      load_bf16x8(dy_row + j, d);
      z_row.load8(j, z);
      load_bf16x8(gamma + j, g);
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) {
        const float scaled = d[i] * g[i];
        sum_g += scaled;
        sum_g_zhat += scaled * ((z[i] - row_mean) * row_rstd);
      }
    }
  } else {
    for (int64_t j = lane; j < cols; j += kWarpSize) {
      const float scaled = __bfloat162float(dy_row[j]) * __bfloat162float(gamma[j]);
      sum_g += scaled;
      sum_g_zhat += scaled * ((z_row.load(j) - row_mean) * row_rstd);
    }
  }
  const float mean_g = warp_sum(sum_g) / count;
  const float mean_g_zhat = warp_sum(sum_g_zhat) / count;

  if constexpr (kVectorized) {
    for (int64_t j = lane * kVectorWidth; j < cols; j += kWarpSize * kVectorWidth) {
      float d[kVectorWidth], z[kVectorWidth], g[kVectorWidth], out[kVectorWidth];
      load_bf16x8(dy_row + j, d);
      z_row.load8(j, z);
      load_bf16x8(gamma + j, g);
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) {
        const float zhat = (z[i] - row_mean) * row_rstd;
        out[i] = row_rstd * (d[i] * g[i] - mean_g - zhat * mean_g_zhat);
      }
      dz_row.store8(j, out);
    }
  } else {
    for (int64_t j = lane; j < cols; j += kWarpSize) {
      const float zhat = (z_row.load(j) - row_mean) * row_rstd;
      const float scaled = __bfloat162float(dy_row[j]) * __bfloat162float(gamma[j]);
      dz_row.store(j, row_rstd * (scaled - mean_g - zhat * mean_g_zhat));
    }
    dz_row.pad(lane);
  }
}

// A column kernel (see above): partial[chunk, cols] = the sums of dy * zhat (dgamma) and of dy (dbeta)
// over the chunk's rows, in row order.
template <bool kVectorized, class Rows>
__global__ void __launch_bounds__(kColumnThreads)
    layernorm_param_partials_kernel(int64_t rows, int64_t cols, int64_t chunk_rows, Rows source, const bf16* dy,
                                    const float* mean, const float* rstd, float* dgamma_partial, float* dbeta_partial) {
  constexpr int kWidth = kVectorized ? kVectorWidth : 1;
  ColumnWork work;
  if (!column_work<kWidth>(rows, cols, chunk_rows, work)) return;
  const int64_t j = work.column;

  float dgamma_sum[kWidth], dbeta_sum[kWidth];
#pragma unroll
  for (int i = 0; i < kWidth; ++i) dgamma_sum[i] = dbeta_sum[i] = 0.0f;
#pragma unroll 4
  for (int64_t r = work.first_row; r < work.last_row; ++r) {
    const auto z_row = source.row(r, cols);
    const float row_mean = mean[r], row_rstd = rstd[r];
    float d[kWidth], z[kWidth];
    if constexpr (kVectorized) {
      load_bf16x8(dy + r * cols + j, d);
      z_row.load8(j, z);
    } else {
      d[0] = __bfloat162float(dy[r * cols + j]);
      z[0] = z_row.load(j);
    }
#pragma unroll
    for (int i = 0; i < kWidth; ++i) {
      dgamma_sum[i] += d[i] * ((z[i] - row_mean) * row_rstd);
      dbeta_sum[i] += d[i];
    }
  }
  const int64_t chunk = blockIdx.x;
  float* dgamma_out = dgamma_partial + chunk * cols + j;
  float* dbeta_out = dbeta_partial + chunk * cols + j;
#pragma unroll
  for (int i = 0; i < kWidth; ++i) {
    dgamma_out[i] = dgamma_sum[i];
    dbeta_out[i] = dbeta_sum[i];
  }
}

// ---- LayerNorm backward, fused (layernorm.cu's purpose block; embeddings.cu) -------------------------
// The 128-bit path up to kFusedMaxCols columns: one pass over the rows writes dz and per-block
// dgamma/dbeta partials [blocks, cols], then accumulate_partials_kernel adds them in block order.

constexpr int kFusedWarps = 8;
constexpr int kFusedMaxVectors = 4;  // 128-bit vectors per lane and row
constexpr int64_t kFusedMaxCols = int64_t{kFusedMaxVectors} * kWarpSize * kVectorWidth;  // 1024
// 4 rows a warp, 32 a block: 512 blocks at 16k rows (~2 waves of 2 blocks an SM on 132 SMs), 128 at
// 4k; more rows a warp only past 32k rows, to keep the partials at <= 1024 rows.
constexpr int64_t kFusedMinRowsPerWarp = 4;
constexpr int64_t kFusedMaxBlocks = 1024;  // bounds the partials to [1024, cols]
// Blocks an SM must hold: 2 (<= 128 registers a thread, 16 warps an SM) up to 768 columns; at 4
// vectors a lane 128 registers spill, so BERT-large's 1024 gets 1 block (8 warps) without spills.
// With a dropped second output (DroppedBf16Rows) the 128-register bound spilled 140 bytes at 768
// columns (the plain kernel sits at exactly 128), so that variant asks for 2 blocks only up to 512
// columns: 8 warps an SM at 768, whose ~36 KB of row loads in flight still cover the ~32 KB that
// copy bandwidth needs (layernorm.cu's napkin math), if the warps issue them back to back.
constexpr int fused_blocks_per_sm(int vectors, bool dropped = false) { return vectors <= (dropped ? 2 : 3) ? 2 : 1; }

// Rows per warp, fixed for a shape (never the device's): the partials' order depends on it.
inline int64_t fused_rows_per_warp(int64_t rows) {
  const int64_t spread = ceil_div(rows, kFusedMaxBlocks * kFusedWarps);
  return spread > kFusedMinRowsPerWarp ? spread : kFusedMinRowsPerWarp;
}

// kVectors = ceil(cols / 256): lane l owns columns (v * 32 + l) * 8 .. + 7 for v < kVectors (those
// below cols). Each row is read once, by one warp, before that warp writes its dz: dz may alias dy,
// x or residual.
template <int kVectors, class Rows, class Out>
__global__ void __launch_bounds__(kFusedWarps* kWarpSize, fused_blocks_per_sm(kVectors, WritesDropped<Out>::value))
    layernorm_backward_fused_kernel(int64_t rows, int64_t cols, int64_t rows_per_warp, Rows source, const bf16* dy,
                                    const bf16* gamma, const float* mean, const float* rstd, Out dz,
                                    float* dgamma_partial, float* dbeta_partial) {
  __shared__ float warp_sums[kFusedWarps][kFusedMaxCols];
  const int warp = static_cast<int>(threadIdx.x / kWarpSize);
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kFusedWarps + warp) * rows_per_warp;
  const int64_t last = first + rows_per_warp < rows ? first + rows_per_warp : rows;
  const float count = static_cast<float>(cols);

  float dgamma_sum[kVectors][kVectorWidth], dbeta_sum[kVectors][kVectorWidth];
#pragma unroll
  for (int v = 0; v < kVectors; ++v)
#pragma unroll
    for (int i = 0; i < kVectorWidth; ++i) dgamma_sum[v][i] = dbeta_sum[v][i] = 0.0f;

  for (int64_t r = first; r < last; ++r) {  // uniform per warp
    const auto z_row = source.row(r, cols);

    const bf16* dy_row = dy + r * cols;
    const float row_mean = mean[r], row_rstd = rstd[r];
    // Kept between the two loops: g = dy * gamma and zhat (the parameter sums need no row sum, so
    // they are added in the first loop and dy is not kept). = {}: GCC cannot see j < cols.
    float scaled[kVectors][kVectorWidth] = {}, zhat[kVectors][kVectorWidth] = {};
    float sum_g = 0.0f, sum_g_zhat = 0.0f;
#pragma unroll
    for (int v = 0; v < kVectors; ++v) {
      const int64_t j = (int64_t{v} * kWarpSize + lane) * kVectorWidth;
      if (j >= cols) continue;
      float d[kVectorWidth], z[kVectorWidth], g[kVectorWidth];
      load_bf16x8(dy_row + j, d);
      z_row.load8(j, z);
      load_bf16x8(gamma + j, g);  // from L1 after the first row
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) {
        zhat[v][i] = (z[i] - row_mean) * row_rstd;
        scaled[v][i] = d[i] * g[i];
        sum_g += scaled[v][i];
        sum_g_zhat += scaled[v][i] * zhat[v][i];
        dgamma_sum[v][i] += d[i] * zhat[v][i];
        dbeta_sum[v][i] += d[i];
      }
    }
    const float mean_g = warp_sum(sum_g) / count;
    const float mean_g_zhat = warp_sum(sum_g_zhat) / count;
    const auto dz_row = dz.row(r, cols);
    // A sink with a second, dropped output (DroppedBf16Rows) gets the row's bf16 dz again once the
    // row's dz is stored: by then scaled and zhat are dead, so the Philox draws do not compete with
    // them for registers (drawn inside the store loop, they spilled at 768 columns).
    constexpr bool kDropped = WritesDropped<Out>::value;
    [[maybe_unused]] Bf16x8 packed[kDropped ? kVectors : 1];
#pragma unroll
    for (int v = 0; v < kVectors; ++v) {
      const int64_t j = (int64_t{v} * kWarpSize + lane) * kVectorWidth;
      if (j >= cols) continue;
      float out[kVectorWidth];
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) out[i] = row_rstd * (scaled[v][i] - mean_g - zhat[v][i] * mean_g_zhat);
      if constexpr (kDropped) {
        packed[v] = pack_bf16x8(out);
        dz_row.store_pack(j, packed[v]);
      } else {
        dz_row.store8(j, out);
      }
    }
    if constexpr (kDropped) {
#pragma unroll
      for (int v = 0; v < kVectors; ++v) {
        const int64_t j = (int64_t{v} * kWarpSize + lane) * kVectorWidth;
        if (j < cols) dz_row.store_dropped8(j, packed[v]);
      }
    }
  }

  // The block's partial row: its warps' sums added in warp order, dgamma then dbeta.
  for (int pass = 0; pass < 2; ++pass) {
#pragma unroll
    for (int v = 0; v < kVectors; ++v) {
      const int64_t j = (int64_t{v} * kWarpSize + lane) * kVectorWidth;
      if (j >= cols) continue;
#pragma unroll
      for (int i = 0; i < kVectorWidth; ++i) warp_sums[warp][j + i] = pass == 0 ? dgamma_sum[v][i] : dbeta_sum[v][i];
    }
    __syncthreads();
    float* out = (pass == 0 ? dgamma_partial : dbeta_partial) + static_cast<int64_t>(blockIdx.x) * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float total = warp_sums[0][c];
#pragma unroll
      for (int w = 1; w < kFusedWarps; ++w) total += warp_sums[w][c];
      out[c] = total;
    }
    __syncthreads();  // warp_sums is free for the second pass
  }
}

// Blocks of the fused backward over `rows` rows: each of its two partials is [blocks, cols] floats.
inline int64_t layernorm_backward_fused_blocks(int64_t rows) {
  return ceil_div(rows, fused_rows_per_warp(rows) * kFusedWarps);
}

template <int kVectors, class Rows, class Out>
void launch_layernorm_backward_fused(cudaStream_t stream, int64_t rows, int64_t cols, const bf16* dy, Rows source,
                                     const bf16* gamma, const float* mean, const float* rstd, Out dz, float* partials,
                                     float* dgamma, float* dbeta) {
  const int64_t blocks = layernorm_backward_fused_blocks(rows);
  layernorm_backward_fused_kernel<kVectors><<<static_cast<unsigned>(blocks), kFusedWarps * kWarpSize, 0, stream>>>(
      rows, cols, fused_rows_per_warp(rows), source, dy, gamma, mean, rstd, dz, partials, partials + blocks * cols);
  CUDA_CHECK_LAUNCH();
  // 32 columns x 32 chunk groups a block: at 512 chunks, 16 loads a thread.
  launch_accumulate_partials(stream, blocks, cols, partials, dgamma, partials + blocks * cols, dbeta);
  CUDA_CHECK_LAUNCH();
}

// The fused backward (the caller checked cols % 8 == 0, cols <= kFusedMaxCols and 16-byte alignment)
// with z's source and dz's sink; partials: 2 * layernorm_backward_fused_blocks(rows) * cols floats of
// the caller's scratch, taken before this call (growing ctx.scratch synchronises the stream).
template <class Rows, class Out>
void launch_layernorm_backward_fused(cudaStream_t stream, int64_t rows, int64_t cols, const bf16* dy, Rows source,
                                     const bf16* gamma, const float* mean, const float* rstd, Out dz, float* partials,
                                     float* dgamma, float* dbeta) {
  switch (ceil_div(cols, int64_t{kWarpSize} * kVectorWidth)) {
    case 1:
      return launch_layernorm_backward_fused<1>(stream, rows, cols, dy, source, gamma, mean, rstd, dz, partials, dgamma,
                                                dbeta);
    case 2:
      return launch_layernorm_backward_fused<2>(stream, rows, cols, dy, source, gamma, mean, rstd, dz, partials, dgamma,
                                                dbeta);
    case 3:
      return launch_layernorm_backward_fused<3>(stream, rows, cols, dy, source, gamma, mean, rstd, dz, partials, dgamma,
                                                dbeta);
    default:
      return launch_layernorm_backward_fused<4>(stream, rows, cols, dy, source, gamma, mean, rstd, dz, partials, dgamma,
                                                dbeta);
  }
}

}  // namespace bert::cuda::detail
