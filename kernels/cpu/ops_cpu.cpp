// Shared machinery of the CPU backend: the Context (threads + scratch), argument checks, the BLAS
// GEMM wrapper every matmul goes through, and the deterministic column reduction behind dgamma,
// dbeta and bias gradients.
//
// GEMM: row-major C[m,n] = alpha op(A) op(B) + beta C via cblas_{s,d}gemm, 2*m*n*k FLOPs. One AVX2
// core does ~60-100 GFLOP/s fp32 in OpenBLAS; BERT-base is ~6 * 110M FLOPs per token per step, so
// a 2-core box trains at a few hundred tokens/s: this backend is the reference and the demo, not a
// race.
// Column sums: rows * cols adds reading rows * cols * sizeof(T) bytes once, memory bound; summed per
// fixed block of 64 columns in row order, so the bits do not depend on the thread count.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <stdexcept>

#include "kernels/cpu/ops_cpu_detail.h"

namespace bert::cpu {

Context::Context(int num_threads) : num_threads_(num_threads > 0 ? num_threads : omp_get_max_threads()) {}

namespace detail {

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

namespace {

int blas_int(int64_t value, const char* what) {
  require(value >= 0 && value <= INT_MAX, "gemm", std::string(what) + " does not fit a BLAS int");
  return static_cast<int>(value);
}

void cblas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float* a, int lda,
                const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha, const double* a, int lda,
                const double* b, int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace

template <class T>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // nothing to multiply; keep the beta = 0 contract (C never read) without BLAS
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  // BLAS (reference and OpenBLAS) writes C = alpha AB without reading C when beta == 0.
  cblas_gemm(transpose_a ? CblasTrans : CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, blas_int(m, "m"),
             blas_int(n, "n"), blas_int(k, "k"), alpha, a, blas_int(lda, "lda"), b, blas_int(ldb, "ldb"), beta, c,
             blas_int(ldc, "ldc"));
}

template <class T>
void accumulate_column_sums(Context& ctx, int64_t rows, int64_t cols, const T* matrix, T* out, int64_t ld) {
  constexpr int64_t kColumnsPerBlock = 64;
  if (ld == 0) ld = cols;
  const int64_t blocks = (cols + kColumnsPerBlock - 1) / kColumnsPerBlock;
#pragma omp parallel for schedule(static) num_threads(ctx.num_threads())
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * kColumnsPerBlock, width = std::min(kColumnsPerBlock, cols - first);
    T sums[kColumnsPerBlock] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = matrix + r * ld + first;
      for (int64_t j = 0; j < width; ++j) sums[j] += row[j];
    }
    for (int64_t j = 0; j < width; ++j) out[first + j] += sums[j];
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);
template void accumulate_column_sums<float>(Context&, int64_t, int64_t, const float*, float*, int64_t);
template void accumulate_column_sums<double>(Context&, int64_t, int64_t, const double*, double*, int64_t);

}  // namespace detail
}  // namespace bert::cpu
