// The cuBLASLt calls kernels/cuda/gemm.cu makes, for the kernel emulation (tests/kernel_emu/README.md):
// descriptors, the algorithm heuristic and cublasLtMatmul as an fp64-accumulated reference GEMM
// queued on the stream (tests/emulated/emulated_runtime.cpp). What gemm.cu's use of the library is
// checked for:
//   - the column-major contract: D (m x n, ldd) = alpha op(A) op(B) + beta C (+ bias[i] on row i),
//     op(A) m x k and op(B) k x n from the stored shapes and CUBLASLT_MATMUL_DESC_TRANSA/B;
//     leading dimensions >= the stored rows; C == D with the same layout (the only in-place form
//     gemm.cu uses); beta == 0 never reads C (it may be poisoned); A/B bf16, C/D bf16 or fp32,
//     CUBLAS_COMPUTE_32F with fp32 scalars, the bias bf16;
//   - every operand's extent inside one live cudaMalloc allocation (a device fault otherwise);
//   - alignment: the heuristic's algorithm records the minimum alignments the preference promised,
//     and cublasLtMatmul fails (CUBLAS_STATUS_INVALID_VALUE) on a pointer less aligned than that, as
//     a kernel that assumed it would fault. The bias epilogue is offered only when C/D's promised
//     alignment and the bias pointer's are 16 bytes or more (NOT_SUPPORTED otherwise): a stricter
//     library than the real one may be, so gemm.cu's fallback (plain GEMM, then add_bias_rows) runs
//     in the misaligned test cases. Likewise the bias-gradient epilogue (CUBLASLT_EPILOGUE_BGRADB:
//     the column sums of op(B) over k, in D's type, fp32 only, written to the bias pointer) only when
//     B's promised alignment and the gradient pointer's are 16 bytes or more (INVALID_VALUE
//     otherwise, so gemm.cu's fallback meets both answers); and
//     emu::refuse_bias_gradient_epilogue_at_matmul(true) makes cublasLtMatmul decline BGRADB
//     algorithms the heuristic still offers (NOT_SUPPORTED), for gemm.cu's fallback on that path;
//     emu::refuse_algorithm_at_matmul(id) likewise any algorithm of that id (rank), for the fallback
//     from a rank autotuned for another shape of the class;
//   - autotuning (Context::set_gemm_autotune): the heuristic offers up to three algorithms, the
//     last of which refuses to run, and reports each one's id, tile and split-k count;
// Not modelled: the library's own rounding (results are exact products summed in fp64, rounded once
// to D's type), workspace use, performance.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tests/emulated/emulated_runtime.h"

namespace {

using bert::emulated::detail::device_fault;

struct Desc {
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale = CUDA_R_32F;
  int32_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int32_t bias_type = -1;  // unset: D's type
};

struct Layout {
  cudaDataType_t type = CUDA_R_32F;
  uint64_t rows = 0, cols = 0;
  int64_t ld = 0;
};

struct Preference {
  uint64_t max_workspace = 0;
  uint32_t align_a = 256, align_b = 256, align_c = 256, align_d = 256;  // cuBLASLt's default assumption
};

// What an emulated algorithm remembers (inside cublasLtMatmulAlgo_t's 64 bytes).
struct Algo {
  uint64_t magic;
  uint32_t align_a, align_b, align_c, align_d;
  uint32_t epilogue;
  int32_t variant;  // its rank in the heuristic's answer
};
// The heuristic offers up to this many algorithms; they compute the same D, except that the last
// refuses to run (CUBLAS_STATUS_NOT_SUPPORTED from cublasLtMatmul), as a real candidate may.
constexpr int kEmulatedAlgorithms = 3;
constexpr int32_t kRefusingVariant = kEmulatedAlgorithms - 1;
constexpr uint64_t kAlgoMagic = 0x62657274656D756CULL;  // "bertemul"
static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t));

template <class T, class Handle>
T* from(Handle handle) {
  if (handle == nullptr) device_fault("cuBLASLt: a null descriptor");
  return reinterpret_cast<T*>(handle);
}

uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

size_t element_bytes(cudaDataType_t type) {
  switch (type) {
    case CUDA_R_16BF:
      return 2;
    case CUDA_R_32F:
      return 4;
    default:
      return 0;
  }
}

float load(cudaDataType_t type, const void* base, int64_t index) {
  if (type == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
  return static_cast<const float*>(base)[index];
}

template <class Value>
bool read_attribute(Value& out, const void* buf, size_t bytes) {
  if (bytes != sizeof(Value) || buf == nullptr) return false;
  std::memcpy(&out, buf, sizeof(Value));
  return true;
}

// Elements a column-major (rows x cols, ld) operand spans.
int64_t extent(const Layout& l) { return l.cols == 0 ? 0 : static_cast<int64_t>((l.cols - 1) * l.ld + l.rows); }

bool supported(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dl) {
  return d.compute == CUBLAS_COMPUTE_32F && d.scale == CUDA_R_32F && a.type == CUDA_R_16BF && b.type == CUDA_R_16BF &&
         (dl.type == CUDA_R_16BF || dl.type == CUDA_R_32F) && c.type == dl.type &&
         (d.trans_a == CUBLAS_OP_N || d.trans_a == CUBLAS_OP_T) &&
         (d.trans_b == CUBLAS_OP_N || d.trans_b == CUBLAS_OP_T) &&
         (d.epilogue == CUBLASLT_EPILOGUE_DEFAULT || d.epilogue == CUBLASLT_EPILOGUE_BIAS ||
          d.epilogue == CUBLASLT_EPILOGUE_BGRADB) &&
         (d.epilogue != CUBLASLT_EPILOGUE_BIAS || d.bias_type == CUDA_R_16BF) &&
         (d.epilogue != CUBLASLT_EPILOGUE_BGRADB ||
          (dl.type == CUDA_R_32F && (d.bias_type == -1 || d.bias_type == CUDA_R_32F)));
}

bool refuse_bgradb_at_matmul = false;  // emu::refuse_bias_gradient_epilogue_at_matmul
int refused_variant_at_matmul = -1;    // emu::refuse_algorithm_at_matmul

// sum a[p] b[p], p < k, over host copies of the operands. The O(m n k) part of a product, so left out
// of the sanitizers' instrumentation (4-5x slower under them): the device operands were read into the
// copies by instrumented code, and extents are checked against the allocations beforehand.
__attribute__((no_sanitize("address", "undefined"))) double dot(const double* a, const double* b, int64_t k) {
  double sums[4] = {0.0, 0.0, 0.0, 0.0};  // four chains: the loop is latency-bound otherwise
  int64_t p = 0;
  for (; p + 4 <= k; p += 4)
    for (int lane = 0; lane < 4; ++lane) sums[lane] += a[p + lane] * b[p + lane];
  for (; p < k; ++p) sums[0] += a[p] * b[p];
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

// op(A) m x k, op(B) k x n, C/D m x n: the shapes must agree, and each ld cover its stored rows.
bool consistent(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dl) {
  const uint64_t m = dl.rows, n = dl.cols;
  const uint64_t a_rows = d.trans_a == CUBLAS_OP_N ? a.rows : a.cols, k = d.trans_a == CUBLAS_OP_N ? a.cols : a.rows;
  const uint64_t b_rows = d.trans_b == CUBLAS_OP_N ? b.rows : b.cols,
                 b_cols = d.trans_b == CUBLAS_OP_N ? b.cols : b.rows;
  return a_rows == m && b_rows == k && b_cols == n && c.rows == m && c.cols == n && m > 0 && n > 0 && k > 0 &&
         a.ld >= static_cast<int64_t>(a.rows) && b.ld >= static_cast<int64_t>(b.rows) &&
         c.ld >= static_cast<int64_t>(c.rows) && dl.ld >= static_cast<int64_t>(dl.rows);
}

}  // namespace

extern "C" {

// The headers' version: the emulation stands in for the library they describe.
size_t cublasLtGetVersion() { return CUBLAS_VERSION; }

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  static char the_library = 0;
  *handle = reinterpret_cast<cublasLtHandle_t>(&the_library);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale) {
  auto* d = new Desc;
  d->compute = compute;
  d->scale = scale;
  *desc = reinterpret_cast<cublasLtMatmulDesc_t>(d);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete reinterpret_cast<Desc*>(desc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute,
                                              const void* buf, size_t bytes) {
  Desc& d = *from<Desc>(desc);
  bool ok = false;
  switch (attribute) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      ok = read_attribute(d.trans_a, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_TRANSB:
      ok = read_attribute(d.trans_b, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      ok = read_attribute(d.epilogue, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      ok = read_attribute(d.bias, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      ok = read_attribute(d.bias_type, buf, bytes);
      break;
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;  // an attribute gemm.cu does not use: extend the emulation
  }
  return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (element_bytes(type) == 0 || ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete reinterpret_cast<Layout*>(layout);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* preference) {
  *preference = reinterpret_cast<cublasLtMatmulPreference_t>(new Preference);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t preference) {
  delete reinterpret_cast<Preference*>(preference);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t preference,
                                                    cublasLtMatmulPreferenceAttributes_t attribute, const void* buf,
                                                    size_t bytes) {
  Preference& p = *from<Preference>(preference);
  bool ok = false;
  switch (attribute) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      ok = read_attribute(p.max_workspace, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
      ok = read_attribute(p.align_a, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
      ok = read_attribute(p.align_b, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
      ok = read_attribute(p.align_c, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      ok = read_attribute(p.align_d, buf, bytes);
      break;
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t operation,
                                              cublasLtMatrixLayout_t a_desc, cublasLtMatrixLayout_t b_desc,
                                              cublasLtMatrixLayout_t c_desc, cublasLtMatrixLayout_t d_desc,
                                              cublasLtMatmulPreference_t preference, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  const Desc& d = *from<Desc>(operation);
  const Layout &a = *from<Layout>(a_desc), &b = *from<Layout>(b_desc), &c = *from<Layout>(c_desc),
               &dl = *from<Layout>(d_desc);
  const Preference& p = *from<Preference>(preference);
  *returned = 0;
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  if (!consistent(d, a, b, c, dl)) return CUBLAS_STATUS_INVALID_VALUE;
  if (!supported(d, a, b, c, dl)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (d.epilogue == CUBLASLT_EPILOGUE_BIAS && (std::min(p.align_c, p.align_d) < 16 || alignment_of(d.bias) < 16))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  // (INVALID_VALUE here, NOT_SUPPORTED above: a library may answer either for what it does not take.)
  if (d.epilogue == CUBLASLT_EPILOGUE_BGRADB && (p.align_b < 16 || alignment_of(d.bias) < 16))
    return CUBLAS_STATUS_INVALID_VALUE;
  const int offered = std::min(requested, kEmulatedAlgorithms);
  for (int variant = 0; variant < offered; ++variant) {
    cublasLtMatmulHeuristicResult_t result{};
    const Algo algo{kAlgoMagic, p.align_a, p.align_b, p.align_c, p.align_d, d.epilogue, variant};
    std::memcpy(&result.algo, &algo, sizeof(algo));
    result.workspaceSize = 0;
    result.state = CUBLAS_STATUS_SUCCESS;
    result.wavesCount = 1.0f;
    results[variant] = result;
  }
  *returned = offered;
  return CUBLAS_STATUS_SUCCESS;
}

// The configuration attributes gemm.cu reports: the id (the variant), the tile (128x128) and the
// split-k count (1); the others are NOT_SUPPORTED, as a library may answer for some.
cublasStatus_t cublasLtMatmulAlgoConfigGetAttribute(const cublasLtMatmulAlgo_t* algo_ptr,
                                                    cublasLtMatmulAlgoConfigAttributes_t attribute, void* buf,
                                                    size_t bytes, size_t* written) {
  if (algo_ptr == nullptr || written == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  Algo algo;
  std::memcpy(&algo, algo_ptr, sizeof(algo));
  if (algo.magic != kAlgoMagic) return CUBLAS_STATUS_INVALID_VALUE;
  auto answer = [&](auto value) {
    *written = sizeof(value);
    if (buf == nullptr || bytes < sizeof(value)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(buf, &value, sizeof(value));
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (attribute) {
    case CUBLASLT_ALGO_CONFIG_ID:
      return answer(int32_t{algo.variant});
    case CUBLASLT_ALGO_CONFIG_TILE_ID:
      return answer(uint32_t{CUBLASLT_MATMUL_TILE_128x128});
    case CUBLASLT_ALGO_CONFIG_SPLITK_NUM:
      return answer(int32_t{1});
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t operation, const void* alpha_ptr,
                              const void* a_ptr, cublasLtMatrixLayout_t a_desc, const void* b_ptr,
                              cublasLtMatrixLayout_t b_desc, const void* beta_ptr, const void* c_ptr,
                              cublasLtMatrixLayout_t c_desc, void* d_ptr, cublasLtMatrixLayout_t d_desc,
                              const cublasLtMatmulAlgo_t* algo_ptr, void*, size_t, cudaStream_t stream) {
  const Desc d = *from<Desc>(operation);
  const Layout a = *from<Layout>(a_desc), b = *from<Layout>(b_desc), c = *from<Layout>(c_desc),
               dl = *from<Layout>(d_desc);
  if (algo_ptr == nullptr) return CUBLAS_STATUS_INVALID_VALUE;  // gemm.cu always passes the heuristic's
  Algo algo;
  std::memcpy(&algo, algo_ptr, sizeof(algo));
  if (algo.magic != kAlgoMagic || algo.epilogue != d.epilogue) return CUBLAS_STATUS_INVALID_VALUE;
  if (algo.variant == kRefusingVariant) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (d.epilogue == CUBLASLT_EPILOGUE_BGRADB && refuse_bgradb_at_matmul) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (algo.variant == refused_variant_at_matmul) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!consistent(d, a, b, c, dl) || !supported(d, a, b, c, dl)) return CUBLAS_STATUS_INVALID_VALUE;
  if (alignment_of(a_ptr) < algo.align_a || alignment_of(b_ptr) < algo.align_b || alignment_of(c_ptr) < algo.align_c ||
      alignment_of(d_ptr) < algo.align_d)
    return CUBLAS_STATUS_INVALID_VALUE;  // the algorithm was chosen for more alignment than these pointers have
  if (c_ptr != d_ptr) return CUBLAS_STATUS_NOT_SUPPORTED;  // gemm.cu's form only: C == D
  if (c.ld != dl.ld) return CUBLAS_STATUS_INVALID_VALUE;
  const float alpha = *static_cast<const float*>(alpha_ptr), beta = *static_cast<const float*>(beta_ptr);
  namespace emu = bert::emulated::detail;
  emu::device_arg("cublasLtMatmul", "A", static_cast<const unsigned char*>(a_ptr),
                  extent(a) * static_cast<int64_t>(element_bytes(a.type)));
  emu::device_arg("cublasLtMatmul", "B", static_cast<const unsigned char*>(b_ptr),
                  extent(b) * static_cast<int64_t>(element_bytes(b.type)));
  emu::device_arg("cublasLtMatmul", "D", static_cast<const unsigned char*>(d_ptr),
                  extent(dl) * static_cast<int64_t>(element_bytes(dl.type)));
  if (d.epilogue == CUBLASLT_EPILOGUE_BIAS)
    emu::device_arg("cublasLtMatmul", "bias", static_cast<const __nv_bfloat16*>(d.bias), static_cast<int64_t>(dl.rows));
  if (d.epilogue == CUBLASLT_EPILOGUE_BGRADB)
    emu::device_arg("cublasLtMatmul", "bias gradient", static_cast<const float*>(d.bias),
                    static_cast<int64_t>(dl.cols));
  emu::enqueue(stream, "cublasLtMatmul", [=] {
    const int64_t m = static_cast<int64_t>(dl.rows), n = static_cast<int64_t>(dl.cols);
    const int64_t k = static_cast<int64_t>(d.trans_a == CUBLAS_OP_N ? a.cols : a.rows);
    // op(A) by rows and op(B) by columns, widened once, so each D element is one contiguous dot product.
    std::vector<double> a_rows(static_cast<size_t>(m * k)), b_cols(static_cast<size_t>(n * k));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t p = 0; p < k; ++p)
        a_rows[static_cast<size_t>(i * k + p)] =
            load(a.type, a_ptr, d.trans_a == CUBLAS_OP_N ? p * a.ld + i : i * a.ld + p);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p)
        b_cols[static_cast<size_t>(j * k + p)] =
            load(b.type, b_ptr, d.trans_b == CUBLAS_OP_N ? j * b.ld + p : p * b.ld + j);
    for (int64_t j = 0; j < n; ++j) {
      const double* bj = b_cols.data() + j * k;
      for (int64_t i = 0; i < m; ++i) {
        double value = static_cast<double>(alpha) * dot(a_rows.data() + i * k, bj, k);
        if (beta != 0.0f) value += static_cast<double>(beta) * static_cast<double>(load(c.type, c_ptr, j * c.ld + i));
        if (d.epilogue == CUBLASLT_EPILOGUE_BIAS)
          value += static_cast<double>(__bfloat162float(static_cast<const __nv_bfloat16*>(d.bias)[i]));
        const auto out = static_cast<float>(value);
        if (dl.type == CUDA_R_16BF)
          static_cast<__nv_bfloat16*>(d_ptr)[j * dl.ld + i] = __float2bfloat16_rn(out);
        else
          static_cast<float*>(d_ptr)[j * dl.ld + i] = out;
      }
    }
    if (d.epilogue == CUBLASLT_EPILOGUE_BGRADB) {  // column j of op(B) summed over k, written (not added)
      for (int64_t j = 0; j < n; ++j) {
        const double* bj = b_cols.data() + j * k;
        double sum = 0.0;
        for (int64_t p = 0; p < k; ++p) sum += bj[p];
        static_cast<float*>(const_cast<void*>(d.bias))[j] = static_cast<float>(sum);
      }
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

namespace emu {
void refuse_bias_gradient_epilogue_at_matmul(bool refuse) { refuse_bgradb_at_matmul = refuse; }
void refuse_algorithm_at_matmul(int id) { refused_variant_at_matmul = id; }
}  // namespace emu
