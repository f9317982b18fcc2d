// Building blocks shared by the CPU op files (not part of the op API): argument checks, the BLAS GEMM
// wrapper, the deterministic column reduction, LayerNorm row kernels and dropout multipliers.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "kernels/cpu/ops_cpu.h"

namespace bert::cpu::detail {

// Throws std::invalid_argument("<op>: <what>") unless `ok`.
void require(bool ok, const char* op, const std::string& what);

// Row-major C[m, n] = alpha * op(A) op(B) + beta * C, op(A) [m, k], op(B) [k, n]; lda/ldb/ldc are
// the row strides of A, B, C as stored. beta = 0 never reads C (NaN in C does not leak).
template <class T>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Whether attention runs its per-head products as BLAS GEMMs (kernels/cpu/attention.cpp): yes with
// OpenBLAS's OpenMP build, else plain loops. set_attention_blas(1 / 0) forces either (tests),
// -1 restores the automatic choice.
bool attention_uses_blas();
void set_attention_blas(int setting);

// Rows per partial sum in deterministic column reductions. Fixed, so the summation order (and the
// bits of the result) never depend on the thread count.
constexpr int64_t kRowsPerChunk = 32;
inline int64_t chunk_count(int64_t rows) { return (rows + kRowsPerChunk - 1) / kRowsPerChunk; }

// out[j] += sum over r in order of matrix[r * ld + j] (ld 0: cols); parallel over fixed column blocks.
template <class T>
void accumulate_column_sums(Context& ctx, int64_t rows, int64_t cols, const T* matrix, T* out, int64_t ld = 0);

// multiplier[j] = keep(first_index + j) ? 1 / (1 - p) : 0 for j < count (all 1 when p == 0).
template <class T>
void dropout_multipliers(const DropoutSpec& dropout, uint64_t first_index, int64_t count, T* multiplier);

// ---- LayerNorm on one row of `cols` ------------------------------------------------------------------
// Two-pass mean and biased variance (PyTorch's definition); rstd = 1 / sqrt(var + eps).
template <class T>
inline void layernorm_row_forward(const T* z, const T* gamma, const T* beta, T eps, int64_t cols, T* y, T* mean_out,
                                  T* rstd_out) {
  T sum = 0;
  for (int64_t j = 0; j < cols; ++j) sum += z[j];
  const T mean = sum / static_cast<T>(cols);
  T squares = 0;
  for (int64_t j = 0; j < cols; ++j) {
    const T centered = z[j] - mean;
    squares += centered * centered;
  }
  const T rstd = T(1) / std::sqrt(squares / static_cast<T>(cols) + eps);
  for (int64_t j = 0; j < cols; ++j) y[j] = (z[j] - mean) * rstd * gamma[j] + beta[j];
  *mean_out = mean;
  *rstd_out = rstd;
}

// dz = rstd * (g - mean(g) - zhat * mean(g * zhat)), g = dy * gamma, zhat = (z - mean) * rstd.
// Adds dy * zhat and dy to the row-chunk partials of dgamma and dbeta.
template <class T>
inline void layernorm_row_backward(const T* dy, const T* z, const T* gamma, T mean, T rstd, int64_t cols, T* dz,
                                   T* dgamma_partial, T* dbeta_partial) {
  T sum_g = 0, sum_g_zhat = 0;
  for (int64_t j = 0; j < cols; ++j) {
    const T zhat = (z[j] - mean) * rstd;
    const T g = dy[j] * gamma[j];
    sum_g += g;
    sum_g_zhat += g * zhat;
    dgamma_partial[j] += dy[j] * zhat;
    dbeta_partial[j] += dy[j];
  }
  const T mean_g = sum_g / static_cast<T>(cols), mean_g_zhat = sum_g_zhat / static_cast<T>(cols);
  for (int64_t j = 0; j < cols; ++j) {
    const T zhat = (z[j] - mean) * rstd;
    dz[j] = rstd * (dy[j] * gamma[j] - mean_g - zhat * mean_g_zhat);
  }
}

}  // namespace bert::cpu::detail
