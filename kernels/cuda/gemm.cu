// Linear layers on cuBLASLt: y = x W^T + b (forward), dx = dy W, dW += dy^T x, db += sum_rows dy.
// Shapes (row-major, PyTorch layout): x [rows, in], W [out, in], b [out], y/dy [rows, out],
// dx [rows, in]; bf16 operands, fp32 accumulation; dW and db are fp32 and accumulated (+=).
//
// Napkin math (BERT-base FFN up-projection at 16k tokens: rows 16384, in 768, out 3072):
//   forward 2*rows*in*out = 77 GFLOP; backward dx + dW = 155 GFLOP.
//   bytes (each operand once): (rows*in + in*out + rows*out)*2 = 130 MB forward.
//   intensity ~600 FLOP/byte, far above H200's ~200 FLOP/byte ridge: compute bound, so every product
//   is one cuBLASLt GEMM on the tensor cores (~0.1 ms each at ~750 TFLOP/s). The bias add is fused
//   into the forward GEMM's epilogue (CUBLASLT_EPILOGUE_BIAS). The bias gradient alone is memory
//   bound: one read of dy (rows*out*2 = 100 MB, ~25 us at ~4 TB/s) in our own two-pass column sum. The
//   weight gradient's GEMM reads dy anyway (as its B, reduced over k = rows), so where cuBLASLt offers
//   CUBLASLT_EPILOGUE_BGRADB for it, that GEMM also writes the column sums (fp32, D's type) into
//   scratch and one small kernel adds them to dbias (the epilogue overwrites; dbias accumulates):
//   at BERT-base's 16k tokens ~125 MB of reads (~40 us) and three launches fewer a layer (qkv,
//   attn_out, ffn_down: one add for two column-sum passes each; ffn_up's db is the GELU backward's).
//   KernelPaths::gemm_bias_gradient_epilogue selects the column-sum kernels instead (bench_kernels' linear_bwd_baseline
//   cases).
//
// Row-major to cuBLASLt's column-major: a row-major [r, c] matrix is a column-major [c, r] one with
// leading dimension c, i.e. its transpose. So each product is computed transposed:
//   forward  y^T  [out, rows] = op_T(W: cm [in, out])  * x^T  (cm [in, rows])     m=out n=rows k=in
//   input    dx^T [in, rows]  = W^T   (cm [in, out])   * dy^T (cm [out, rows])    m=in  n=rows k=out
//   weight   dW^T [in, out]   = x^T   (cm [in, rows])  * op_T(dy^T: cm [out, rows]) m=in n=out k=rows
// Types: compute CUBLAS_COMPUTE_32F, scale fp32, A/B bf16; C/D bf16 (y, dx) or fp32 (dW, beta = 1).
// bf16 A/B with fp32 C/D is one of the combinations the cuBLAS docs list for cublasLtMatmul (the
// same one Transformer Engine uses for fused weight-gradient accumulation).
//
// Shapes and alignment: cuBLASLt takes any m, n, k >= 1 and any leading dimension. Its fast Hopper
// kernels (TMA + wgmma) want 16-byte aligned pointers and leading dimensions (features a multiple of
// 8 in bf16); other shapes run on slower kernels. We pass every operand's real pointer alignment to
// the heuristic (so it never picks a kernel that assumes more; the bias's is folded into C/D's) and
// key the plan cache on it. If no algorithm fits, the call throws std::invalid_argument saying so,
// with the fix (pad features to a multiple of 8, 16-byte align the buffers). Pointers must be
// aligned to their element size.
//
// Plans: a cuBLASLt heuristic query costs tens of microseconds, so the descriptors and the chosen
// algorithm are cached per (product, m, n, k, leading dimensions, beta, bias, alignments, autotune
// setting) in the Context (Context::GemmPlans), never in global state. The algorithm is the heuristic's
// first unless Context::set_gemm_autotune(N) asked for up to N candidates to be timed on the first
// call's operands (D redirected to a temporary buffer of the same layout, so an accumulating dW or dx
// is not added to more than once) and the fastest kept; once per class of shapes (sizes rounded up to
// powers of two), later shapes of the class taking the same rank of their own heuristic answer. Context::gemm_plans()
// reports each plan's algorithm (id, tile, stages, split-k) and, autotuned, every candidate's median time: the BERT
// shapes include long-k weight gradients with small outputs (dW of attn_out: 768 x 768 x 16384, 36 tiles of 128 x 128
// for 132 SMs), where the choice of split-k and tile decides more than the kernel does.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <iterator>
#include <map>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublaslt_library.h"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

using namespace detail;  // kernels/cuda/common.cuh

// ---- bias gradient: deterministic two-pass column sums of dy ------------------------------------
// Pass 1: block (x: a strip of 32*kVec columns, y: a chunk of kRowsPerChunk rows); 8 row lanes of
// 32 threads each sum their rows in order, the lanes are summed in lane order through shared memory,
// and the chunk's sums go to partial[chunk, column] (or straight into dbias when there is one chunk).
// Pass 2: accumulate_partials_kernel (common.cuh: 32 columns x 32 chunk groups a block, the groups
// added in order) adds the chunks' sums to dbias; one thread per column walking all 128 chunks of a
// 16k-row dy in turn was latency bound (3 blocks at 768 columns). The chunking depends on the shape
// alone, so the result is bitwise the same on every run (and every GPU).

constexpr int kBiasLanes = 8;           // row lanes per block (threadIdx.y)
constexpr int kBiasThreadsX = 32;       // column threads per block (threadIdx.x)
constexpr int64_t kRowsPerChunk = 128;  // rows per block of pass 1 (raised only if gridDim.y would overflow)

template <int kVec>
struct BiasLoad;
template <>
struct BiasLoad<1> {
  __device__ static void add(const bf16* p, float (&acc)[1]) { acc[0] += __bfloat162float(*p); }
};
template <>
struct BiasLoad<2> {
  __device__ static void add(const bf16* p, float (&acc)[2]) {
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    acc[0] += v.x;
    acc[1] += v.y;
  }
};
template <>
struct BiasLoad<8> {
  __device__ static void add(const bf16* p, float (&acc)[8]) {
    float v[8];
    load_bf16x8(p, v);  // 16 bytes: 8 bf16
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] += v[i];
  }
};

// kVec consecutive columns per thread; requires cols and ld (dy's row stride) % kVec == 0 and dy aligned
// to kVec * 2 bytes.
template <int kVec>
__global__ void __launch_bounds__(kBiasThreadsX* kBiasLanes)
    bias_grad_partial_kernel(const bf16* __restrict__ dy, int64_t rows, int64_t cols, int64_t ld,
                             int64_t rows_per_chunk, float* __restrict__ out, bool accumulate) {
  constexpr int kStripCols = kBiasThreadsX * kVec;
  __shared__ float lane_sums[kBiasLanes][kStripCols];
  const int64_t strip_begin = static_cast<int64_t>(blockIdx.x) * kStripCols;
  const int64_t col = strip_begin + static_cast<int64_t>(threadIdx.x) * kVec;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t row_end = row_begin + rows_per_chunk < rows ? row_begin + rows_per_chunk : rows;

  float acc[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) acc[i] = 0.0f;
  if (col < cols) {
    const bf16* p = dy + (row_begin + threadIdx.y) * ld + col;
    const int64_t step = static_cast<int64_t>(kBiasLanes) * ld;
#pragma unroll 4
    for (int64_t r = row_begin + threadIdx.y; r < row_end; r += kBiasLanes, p += step) BiasLoad<kVec>::add(p, acc);
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) lane_sums[threadIdx.y][threadIdx.x * kVec + i] = acc[i];
  __syncthreads();

  const int tid = threadIdx.y * kBiasThreadsX + threadIdx.x;
  for (int c = tid; c < kStripCols; c += kBiasThreadsX * kBiasLanes) {
    const int64_t column = strip_begin + c;
    if (column >= cols) continue;
    float sum = 0.0f;
#pragma unroll
    for (int lane = 0; lane < kBiasLanes; ++lane) sum += lane_sums[lane][c];
    float* target = out + static_cast<int64_t>(blockIdx.y) * cols + column;
    *target = accumulate ? *target + sum : sum;
  }
}

// dbias[col] += gradient[col] (add_bias_grad: the BGRADB epilogue's column sums).
__global__ void bias_grad_add_kernel(const float* __restrict__ gradient, int64_t cols, float* __restrict__ dbias) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col < cols) dbias[col] += gradient[col];
}

// ----------------------------------------------------------------------------------------------------

template <int kVec>
void launch_bias_grad_partial(Context& ctx, const bf16* dy, int64_t rows, int64_t cols, int64_t ld,
                              int64_t rows_per_chunk, int64_t num_chunks, float* out, bool accumulate) {
  constexpr int64_t kStripCols = kBiasThreadsX * kVec;
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kStripCols)), static_cast<unsigned>(num_chunks));
  const dim3 block(kBiasThreadsX, kBiasLanes);
  bias_grad_partial_kernel<kVec><<<grid, block, 0, ctx.stream()>>>(dy, rows, cols, ld, rows_per_chunk, out, accumulate);
  CUDA_CHECK_LAUNCH();
}

// dbias[cols] += sum over rows of dy[rows, cols] (rows ld elements apart).
void accumulate_bias_grad(Context& ctx, const bf16* dy, int64_t rows, int64_t cols, int64_t ld, float* dbias) {
  constexpr int64_t kMaxGridY = 65535;
  int64_t rows_per_chunk = kRowsPerChunk;
  if (ceil_div(rows, rows_per_chunk) > kMaxGridY)
    rows_per_chunk = ceil_div(ceil_div(rows, kMaxGridY), kBiasLanes) * kBiasLanes;
  const int64_t num_chunks = ceil_div(rows, rows_per_chunk);
  float* out = dbias;
  if (num_chunks > 1) out = static_cast<float*>(ctx.scratch(static_cast<size_t>(num_chunks * cols) * sizeof(float)));
  const bool accumulate = num_chunks == 1;  // one chunk: add straight into dbias

  if (cols % 8 == 0 && ld % 8 == 0 && aligned_to(dy, 16))
    launch_bias_grad_partial<8>(ctx, dy, rows, cols, ld, rows_per_chunk, num_chunks, out, accumulate);
  else if (cols % 2 == 0 && ld % 2 == 0 && aligned_to(dy, 4))
    launch_bias_grad_partial<2>(ctx, dy, rows, cols, ld, rows_per_chunk, num_chunks, out, accumulate);
  else
    launch_bias_grad_partial<1>(ctx, dy, rows, cols, ld, rows_per_chunk, num_chunks, out, accumulate);

  if (num_chunks > 1) {
    launch_accumulate_partials(ctx.stream(), num_chunks, cols, out, dbias);
    CUDA_CHECK_LAUNCH();
  }
}

// ---- cuBLASLt plumbing -------------------------------------------------------------------------------

// Owning wrappers of the cuBLASLt descriptors (destroy never throws).
struct MatmulDesc {
  cublasLtMatmulDesc_t handle = nullptr;
  MatmulDesc() = default;
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;
  ~MatmulDesc() {
    if (handle) cublaslt_api().cublasLtMatmulDescDestroy(handle);
  }
};
struct MatrixLayout {
  cublasLtMatrixLayout_t handle = nullptr;
  MatrixLayout() = default;
  MatrixLayout(const MatrixLayout&) = delete;
  MatrixLayout& operator=(const MatrixLayout&) = delete;
  ~MatrixLayout() {
    if (handle) cublaslt_api().cublasLtMatrixLayoutDestroy(handle);
  }
};
struct MatmulPreference {
  cublasLtMatmulPreference_t handle = nullptr;
  MatmulPreference() = default;
  MatmulPreference(const MatmulPreference&) = delete;
  MatmulPreference& operator=(const MatmulPreference&) = delete;
  ~MatmulPreference() {
    if (handle) cublaslt_api().cublasLtMatmulPreferenceDestroy(handle);
  }
};

// The three products of a linear layer.
enum class Product : int { kForward = 0, kInputGrad = 1, kWeightGrad = 2 };

const char* product_name(Product product) {
  switch (product) {
    case Product::kForward:
      return "linear_forward (y = x W^T + b)";
    case Product::kInputGrad:
      return "linear_backward (dx = dy W)";
    case Product::kWeightGrad:
      return "linear_backward (dW += dy^T x)";
  }
  return "linear";
}

// Largest power of two (<= 256, cuBLASLt's default assumption) dividing the address.
uint32_t pointer_alignment(const void* p) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// One GEMM D = alpha op(A) op(B) + beta C in column-major terms, C == D.
struct GemmCall {
  Product product = Product::kForward;
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldd = 0;
  cudaDataType_t d_type = CUDA_R_16BF;
  const void* a = nullptr;
  const void* b = nullptr;
  void* d = nullptr;
  const void* bias = nullptr;  // bf16 [m], forward only
  // fp32 [n], weight gradient only: dbias += the column sums of op(B) over k (dy's over its rows),
  // from the epilogue into `bias_grad_out` (scratch) where the library offers it, else our kernels.
  float* dbias = nullptr;
  float* bias_grad_out = nullptr;
  float beta = 0.0f;
};

using PlanKey = std::array<int64_t, 15>;

PlanKey plan_key(const GemmCall& call, int autotune) {
  return {static_cast<int64_t>(call.product),
          call.m,
          call.n,
          call.k,
          call.lda,
          call.ldb,
          call.ldd,
          call.beta != 0.0f ? 1 : 0,
          call.bias != nullptr    ? 1
          : call.dbias != nullptr ? 2
                                  : 0,
          static_cast<int64_t>(call.d_type),
          pointer_alignment(call.a),
          pointer_alignment(call.b),
          pointer_alignment(call.d),
          call.bias != nullptr ? pointer_alignment(call.bias) : 0,
          std::max(1, autotune)};  // 0 and 1 both mean the heuristic's first
}

// The class of shapes an autotuned rank is shared by (Context::set_gemm_autotune): the plan key with
// m, n and k rounded up to powers of two.
PlanKey tuning_class(PlanKey key) {
  for (size_t i : {size_t{1}, size_t{2}, size_t{3}}) {
    int64_t rounded = 1;
    while (rounded < key[i]) rounded *= 2;
    key[i] = rounded;
  }
  return key;
}

struct GemmPlan {
  MatmulDesc desc;
  MatrixLayout a, b, d;  // C uses D's layout
  cublasLtMatmulAlgo_t algo{};
  bool has_bias = false;    // the bias epilogue adds it
  bool bias_after = false;  // no epilogue kernel at these alignments: add_bias_rows after the GEMM
  bool has_bias_grad = false;       // the BGRADB epilogue writes the bias gradient into call.bias_grad_out
  bool bias_grad_separate = false;  // no BGRADB kernel for this call: accumulate_bias_grad reads dy again
  bool ran = false;                 // cublasLtMatmul accepted this plan once
  GemmPlanInfo info;        // what Context::gemm_plans reports
  int64_t sequence = 0;     // the order plans were made in
};

// "algo 66, tile 128x256, stages #19, split-k 1, reduction 0, swizzle 0, cluster #0": the chosen
// algorithm's configuration, for the plan report (attributes the library does not report are left out).
template <class Value>
bool algorithm_attribute(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attribute,
                         Value& value) {
  size_t written = 0;
  return cublaslt_api().cublasLtMatmulAlgoConfigGetAttribute(&algo, attribute, &value, sizeof(value), &written) ==
             CUBLAS_STATUS_SUCCESS &&
         written == sizeof(value);
}

std::string describe_algorithm(const cublasLtMatmulAlgo_t& algo) {
  // cublasLtMatmulTile_t's first ids, rows x columns of D (cublasLt.h); later ids by number.
  static constexpr const char* kTiles[] = {
      "undefined", "8x8",    "8x16",    "16x8",    "8x32",    "16x16",   "32x8",    "8x64",   "16x32",
      "32x16",     "64x8",   "32x32",   "32x64",   "64x32",   "32x128",  "64x64",   "128x32", "64x128",
      "128x64",    "64x256", "128x128", "256x64",  "64x512",  "128x256", "256x128", "512x64", "64x96",
      "96x64",     "96x128", "128x160", "160x128", "192x128", "128x192", "128x96",  "32x256", "256x32"};
  std::string text;
  auto add = [&](const std::string& part) { text += (text.empty() ? "" : ", ") + part; };
  int32_t id = 0, splitk = 0;
  uint32_t tile = 0, stages = 0, reduction = 0, swizzle = 0;
  uint16_t cluster = 0;
  if (algorithm_attribute(algo, CUBLASLT_ALGO_CONFIG_ID, id)) add("algo " + std::to_string(id));
  if (algorithm_attribute(algo, CUBLASLT_ALGO_CONFIG_TILE_ID, tile))
    add(std::string("tile ") + (tile < std::size(kTiles) ? std::string(kTiles[tile]) : "#" + std::to_string(tile)));
  if (algorithm_attribute(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, stages)) add("stages #" + std::to_string(stages));
  if (algorithm_attribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, splitk)) add("split-k " + std::to_string(splitk));
  if (algorithm_attribute(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, reduction))
    add("reduction " + std::to_string(reduction));
  if (algorithm_attribute(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, swizzle)) add("swizzle " + std::to_string(swizzle));
  if (algorithm_attribute(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, cluster))
    add("cluster #" + std::to_string(cluster));
  return text.empty() ? "(not reported)" : text;
}

// A CUDA event pair, destroyed on every path.
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    CUDA_CHECK(cudaEventCreate(&start));
    try {
      CUDA_CHECK(cudaEventCreate(&stop));
    } catch (...) {
      cudaEventDestroy(start);
      throw;
    }
  }
  ~EventPair() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
};

// y[r, c] += bias[c] on a bf16 [rows, cols] y (rows ld apart): the fallback when cuBLASLt offers no bias-epilogue
// kernel for the pointers' alignments (odd offsets only; the engine's 16-byte aligned buffers always
// get the epilogue). One more rounding to bf16 than the epilogue; memory-bound and rare.
__global__ void add_bias_rows_kernel(int64_t rows, int64_t cols, int64_t ld, const bf16* __restrict__ bias,
                                     bf16* __restrict__ y) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    bf16& out = y[(i / cols) * ld + i % cols];
    out = __float2bfloat16_rn(__bfloat162float(out) + __bfloat162float(bias[i % cols]));
  }
}

void add_bias_rows(Context& ctx, int64_t rows, int64_t cols, int64_t ld, const bf16* bias, bf16* y) {
  const int64_t total = rows * cols;
  if (total == 0) return;
  constexpr int kThreads = 256;
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(ctx.multiprocessors() > 0 ? ctx.multiprocessors() : 132) * 8;
  add_bias_rows_kernel<<<static_cast<unsigned>(wanted < cap ? wanted : cap), kThreads, 0, ctx.stream()>>>(rows, cols,
                                                                                                          ld, bias, y);
  CUDA_CHECK_LAUNCH();
}

// dbias[n] += gradient[n]: the BGRADB epilogue's column sums (it overwrites its output; dbias accumulates).
void add_bias_grad(Context& ctx, const float* gradient, int64_t n, float* dbias) {
  constexpr int kThreads = 256;
  bias_grad_add_kernel<<<static_cast<unsigned>(ceil_div(n, kThreads)), kThreads, 0, ctx.stream()>>>(gradient, n, dbias);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// Defined here, declared (opaque) in ops_cuda.h: the cache lives in the Context that owns the handle.
struct Context::GemmPlans {
  std::map<PlanKey, GemmPlan> plans;
  int64_t made = 0;                    // plans made so far (GemmPlan::sequence)
  std::map<PlanKey, int> tuned_ranks;  // tuning_class -> the rank autotuning chose for it
  // Keys whose BGRADB algorithm the library offered and then declined to run: planned without it.
  std::set<PlanKey> bias_grad_refused;
  // Keys whose class's autotuned rank the library declined to run for them: planned with rank 0.
  std::set<PlanKey> rank_reuse_refused;

  // Enqueues D = op(A) op(B) (+ bias) + beta D (and dbias += column sums of op(B)) on ctx.stream(),
  // with the cached plan of its key.
  void run(Context& ctx, const GemmCall& call) {
    GemmPlan* plan = &get(ctx, call);
    cublasStatus_t status = enqueue(ctx, call, *plan);
    // A plan's first call declined by cublasLtMatmul where the plan trusted something untimed: a
    // bias-gradient epilogue the heuristic offered (one newer than this library's kernels, say), then
    // a rank autotuned for another shape of the class. Plan the call again without it (the column
    // sums by our kernels; the heuristic's rank 0), that call and every later one. Nothing has been
    // enqueued for the declined attempt, so nothing is added twice.
    while (!plan->ran && (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) &&
           (plan->has_bias_grad || plan->info.rank_reused)) {
      const PlanKey key = plan_key(call, ctx.gemm_autotune());
      (plan->has_bias_grad ? bias_grad_refused : rank_reuse_refused).insert(key);
      plans.erase(key);
      plan = &get(ctx, call);
      status = enqueue(ctx, call, *plan);
    }
    CUBLAS_CHECK(status);
    plan->ran = true;
    // D is column-major m x n (leading dimension ldd): row-major [n, m] with rows ldd apart, the bias along m.
    if (plan->bias_after)
      add_bias_rows(ctx, call.n, call.m, call.ldd, static_cast<const bf16*>(call.bias), static_cast<bf16*>(call.d));
    if (plan->has_bias_grad) add_bias_grad(ctx, call.bias_grad_out, call.n, call.dbias);
    if (plan->bias_grad_separate)
      accumulate_bias_grad(ctx, static_cast<const bf16*>(call.b), call.k, call.n, call.ldb, call.dbias);
  }

 private:
  // The plan's GEMM on the call's operands; cublasLtMatmul's status, unchecked.
  static cublasStatus_t enqueue(Context& ctx, const GemmCall& call, GemmPlan& plan) {
    if (plan.has_bias)
      CUBLAS_CHECK(cublaslt_api().cublasLtMatmulDescSetAttribute(plan.desc.handle, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                                 &call.bias, sizeof(call.bias)));
    if (plan.has_bias_grad)
      CUBLAS_CHECK(cublaslt_api().cublasLtMatmulDescSetAttribute(plan.desc.handle, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                                 &call.bias_grad_out, sizeof(call.bias_grad_out)));
    const float alpha = 1.0f, beta = call.beta;
    return cublaslt_api().cublasLtMatmul(ctx.cublaslt(), plan.desc.handle, &alpha, call.a, plan.a.handle, call.b,
                                         plan.b.handle, &beta, call.d, plan.d.handle, call.d, plan.d.handle, &plan.algo,
                                         ctx.gemm_workspace(), ctx.gemm_workspace_bytes(), ctx.stream());
  }

  GemmPlan& get(Context& ctx, const GemmCall& call) {
    const PlanKey key = plan_key(call, ctx.gemm_autotune());
    auto found = plans.find(key);
    if (found != plans.end()) return found->second;
    GemmPlan& plan = plans.try_emplace(key).first->second;
    bool built = false;
    try {
      built = build(ctx, call, plan);
    } catch (...) {
      plans.erase(key);
      throw;
    }
    if (!built) {  // autotuning found that no BGRADB candidate runs: plan the call without the epilogue
      bias_grad_refused.insert(key);
      plans.erase(key);
      return get(ctx, call);
    }
    plan.sequence = made++;
    return plan;
  }

  // The median ms of `runs` timed calls of `algo` on the call's A, B (and bias) with D in `d_scratch`
  // (beta as the call's), after one untimed call; -1 when the algorithm refuses to run.
  static double time_algorithm(Context& ctx, const GemmCall& call, const GemmPlan& plan,
                               const cublasLtMatmulAlgo_t& algo, void* d_scratch, EventPair& events) {
    constexpr int kRuns = 5;
    const float alpha = 1.0f, beta = call.beta;
    auto matmul = [&] {
      return cublaslt_api().cublasLtMatmul(ctx.cublaslt(), plan.desc.handle, &alpha, call.a, plan.a.handle, call.b,
                                           plan.b.handle, &beta, d_scratch, plan.d.handle, d_scratch, plan.d.handle,
                                           &algo, ctx.gemm_workspace(), ctx.gemm_workspace_bytes(), ctx.stream());
    };
    // The library declining this algorithm for these operands is a result; any other failure is not.
    const cublasStatus_t first = matmul();
    if (first == CUBLAS_STATUS_NOT_SUPPORTED || first == CUBLAS_STATUS_INVALID_VALUE) return -1.0;
    CUBLAS_CHECK(first);
    std::vector<double> ms;
    for (int run = 0; run < kRuns; ++run) {
      CUDA_CHECK(cudaEventRecord(events.start, ctx.stream()));
      CUBLAS_CHECK(matmul());
      CUDA_CHECK(cudaEventRecord(events.stop, ctx.stream()));
      CUDA_CHECK(cudaEventSynchronize(events.stop));
      float elapsed = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&elapsed, events.start, events.stop));
      ms.push_back(elapsed);
    }
    std::sort(ms.begin(), ms.end());
    return ms[kRuns / 2];
  }

  // Times each of the heuristic's algorithms (Context::set_gemm_autotune) and keeps the fastest in
  // plan.algo; false when none of them ran.
  static bool autotune(Context& ctx, const GemmCall& call, GemmPlan& plan,
                       std::span<const cublasLtMatmulHeuristicResult_t> offered) {
    const size_t element_bytes = call.d_type == CUDA_R_32F ? sizeof(float) : sizeof(bf16);
    const size_t d_elements = static_cast<size_t>(call.ldd * (call.n - 1) + call.m);
    DeviceBuffer<unsigned char> d_scratch(d_elements * element_bytes);  // cudaMalloc: 256-byte aligned
    CUDA_CHECK(cudaMemsetAsync(d_scratch.data(), 0, d_scratch.bytes(), ctx.stream()));
    EventPair events;
    int best = -1;
    for (size_t i = 0; i < offered.size(); ++i) {
      const double ms = offered[i].state == CUBLAS_STATUS_SUCCESS
                            ? time_algorithm(ctx, call, plan, offered[i].algo, d_scratch.data(), events)
                            : -1.0;
      plan.info.candidate_ms.push_back(ms);
      if (ms >= 0 && (best < 0 || ms < plan.info.candidate_ms[static_cast<size_t>(best)])) best = static_cast<int>(i);
    }
    ctx.synchronize();
    if (best < 0) return false;
    plan.info.chosen = best;
    plan.algo = offered[static_cast<size_t>(best)].algo;
    return true;
  }

  // Makes `plan` for `call`; false (the plan unusable) only when autotuning found that none of the
  // heuristic's BGRADB algorithms runs, for get() to plan the call without the epilogue.
  bool build(Context& ctx, const GemmCall& call, GemmPlan& plan) {
    CUBLAS_CHECK(cublaslt_api().cublasLtMatmulDescCreate(&plan.desc.handle, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t trans_a = call.trans_a, trans_b = call.trans_b;
    CUBLAS_CHECK(cublaslt_api().cublasLtMatmulDescSetAttribute(plan.desc.handle, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                                               sizeof(trans_a)));
    CUBLAS_CHECK(cublaslt_api().cublasLtMatmulDescSetAttribute(plan.desc.handle, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                                               sizeof(trans_b)));
    auto set_epilogue = [&](uint32_t epilogue) {
      CUBLAS_CHECK(cublaslt_api().cublasLtMatmulDescSetAttribute(plan.desc.handle, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                                 &epilogue, sizeof(epilogue)));
    };
    plan.has_bias = call.bias != nullptr;
    // Not at k = 1 (a one-row MLM decoder chunk, NSP on a batch of one): OneFlow's BGRADB GEMM takes
    // the column sums itself there, having found "wrong bias grad in cublas_k == 1" (CUDA 11 era).
    plan.has_bias_grad =
        call.dbias != nullptr && call.k > 1 && !bias_grad_refused.contains(plan_key(call, ctx.gemm_autotune()));
    plan.bias_grad_separate = call.dbias != nullptr && !plan.has_bias_grad;
    if (plan.has_bias_grad) {
      // The gradient's type is D's (fp32), the library's default for BGRAD epilogues; the pointer is
      // set again at every call (scratch may move when it grows), its alignment (256 bytes) is fixed.
      set_epilogue(CUBLASLT_EPILOGUE_BGRADB);
      CUBLAS_CHECK(cublaslt_api().cublasLtMatmulDescSetAttribute(plan.desc.handle, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                                 &call.bias_grad_out, sizeof(call.bias_grad_out)));
    }
    if (plan.has_bias) {
      const int32_t bias_type = CUDA_R_16BF;
      set_epilogue(CUBLASLT_EPILOGUE_BIAS);
      CUBLAS_CHECK(cublaslt_api().cublasLtMatmulDescSetAttribute(plan.desc.handle, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                                 &bias_type, sizeof(bias_type)));
      // The real pointer is set again at every call; its alignment reaches the heuristic through C/D's.
      CUBLAS_CHECK(cublaslt_api().cublasLtMatmulDescSetAttribute(plan.desc.handle, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                                 &call.bias, sizeof(call.bias)));
    }
    // Stored (pre-op) shapes: op(A) is m x k, op(B) is k x n.
    const bool ta = call.trans_a == CUBLAS_OP_T, tb = call.trans_b == CUBLAS_OP_T;
    CUBLAS_CHECK(cublaslt_api().cublasLtMatrixLayoutCreate(&plan.a.handle, CUDA_R_16BF, ta ? call.k : call.m,
                                                           ta ? call.m : call.k, call.lda));
    CUBLAS_CHECK(cublaslt_api().cublasLtMatrixLayoutCreate(&plan.b.handle, CUDA_R_16BF, tb ? call.n : call.k,
                                                           tb ? call.k : call.n, call.ldb));
    CUBLAS_CHECK(cublaslt_api().cublasLtMatrixLayoutCreate(&plan.d.handle, call.d_type, call.m, call.n, call.ldd));

    MatmulPreference preference;
    CUBLAS_CHECK(cublaslt_api().cublasLtMatmulPreferenceCreate(&preference.handle));
    const uint64_t workspace_bytes = ctx.gemm_workspace_bytes();
    CUBLAS_CHECK(cublaslt_api().cublasLtMatmulPreferenceSetAttribute(
        preference.handle, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof(workspace_bytes)));
    // cuBLASLt has no alignment preference for the bias epilogue's pointer: fold it into C/D's, so a
    // misaligned bias never gets a kernel that assumes a 16-byte aligned one (PyTorch did the same).
    const uint32_t align_a = pointer_alignment(call.a), align_b = pointer_alignment(call.b);
    uint32_t align_d = call.bias != nullptr ? std::min(pointer_alignment(call.d), pointer_alignment(call.bias))
                                            : pointer_alignment(call.d);
    CUBLAS_CHECK(cublaslt_api().cublasLtMatmulPreferenceSetAttribute(
        preference.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
    CUBLAS_CHECK(cublaslt_api().cublasLtMatmulPreferenceSetAttribute(
        preference.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
    auto set_d_alignment = [&] {
      CUBLAS_CHECK(cublaslt_api().cublasLtMatmulPreferenceSetAttribute(
          preference.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof(align_d)));
      CUBLAS_CHECK(cublaslt_api().cublasLtMatmulPreferenceSetAttribute(
          preference.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d)));
    };
    set_d_alignment();

    const int requested = std::max(1, ctx.gemm_autotune());
    // (A std::array: nvcc 13.0's front end fails an internal assertion on std::vector of this struct.)
    std::array<cublasLtMatmulHeuristicResult_t, Context::kMaxGemmAutotune> results{};
    int found = 0;
    auto heuristic = [&] {
      found = 0;
      return cublaslt_api().cublasLtMatmulAlgoGetHeuristic(ctx.cublaslt(), plan.desc.handle, plan.a.handle,
                                                           plan.b.handle, plan.d.handle, plan.d.handle,
                                                           preference.handle, requested, results.data(), &found);
    };
    auto none_found = [&](cublasStatus_t status) {
      return status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0);
    };
    // For an epilogue, any failed answer means "not with it" (INVALID_VALUE for a combination the
    // library does not take, say): the plain GEMM's heuristic then answers for itself, and throws.
    auto no_epilogue_kernel = [&](cublasStatus_t status) { return status != CUBLAS_STATUS_SUCCESS || found == 0; };
    cublasStatus_t status = heuristic();
    if (plan.has_bias_grad && no_epilogue_kernel(status)) {
      // No BGRADB kernel for these operands: the plain GEMM, and accumulate_bias_grad after it.
      set_epilogue(CUBLASLT_EPILOGUE_DEFAULT);
      plan.has_bias_grad = false;
      plan.bias_grad_separate = true;
      status = heuristic();
    }
    if (plan.has_bias && no_epilogue_kernel(status)) {
      // No bias-epilogue kernel at these alignments: the plain GEMM, then add_bias_rows.
      set_epilogue(CUBLASLT_EPILOGUE_DEFAULT);
      plan.has_bias = false;
      plan.bias_after = true;
      align_d = pointer_alignment(call.d);
      set_d_alignment();
      status = heuristic();
    }
    if (none_found(status)) {
      throw std::invalid_argument(
          std::string(product_name(call.product)) + ": cuBLASLt has no algorithm for m=" + std::to_string(call.m) +
          " n=" + std::to_string(call.n) + " k=" + std::to_string(call.k) + " (pointer alignments " +
          std::to_string(align_a) + "/" + std::to_string(align_b) + "/" + std::to_string(align_d) +
          " bytes); hint: pad in/out features to a multiple of 8 and 16-byte align the buffers");
    }
    CUBLAS_CHECK(status);
    plan.info.product = product_name(call.product);
    plan.info.m = call.m;
    plan.info.n = call.n;
    plan.info.k = call.k;
    plan.info.bias_epilogue = plan.has_bias;
    plan.info.bias_gradient_epilogue = plan.has_bias_grad;
    plan.info.accumulate = call.beta != 0.0f;
    plan.info.offered = found;
    const PlanKey tuning = tuning_class(plan_key(call, requested));
    const auto tuned = tuned_ranks.find(tuning);
    if (requested > 1 && found > 1 && tuned != tuned_ranks.end() && tuned->second < found &&
        results[static_cast<size_t>(tuned->second)].state == CUBLAS_STATUS_SUCCESS &&
        !rank_reuse_refused.contains(plan_key(call, ctx.gemm_autotune()))) {
      // A shape of a class already timed (the MLM head's rows change with every batch): its rank.
      plan.info.chosen = tuned->second;
      plan.info.rank_reused = true;
      plan.algo = results[static_cast<size_t>(tuned->second)].algo;
    } else if (requested > 1 && found > 1 && tuned == tuned_ranks.end()) {
      if (!autotune(ctx, call, plan,
                    std::span<const cublasLtMatmulHeuristicResult_t>(results.data(), static_cast<size_t>(found)))) {
        if (plan.has_bias_grad) return false;
        throw std::runtime_error(std::string(product_name(call.product)) + ": none of the " + std::to_string(found) +
                                 " cuBLASLt algorithms offered for m=" + std::to_string(call.m) +
                                 " n=" + std::to_string(call.n) + " k=" + std::to_string(call.k) + " ran (autotuning)");
      }
      tuned_ranks.emplace(tuning, plan.info.chosen);
    } else {
      CUBLAS_CHECK(results[0].state);
      plan.algo = results[0].algo;
    }
    plan.info.algorithm = describe_algorithm(plan.algo);
    return true;
  }
};

std::vector<GemmPlanInfo> Context::gemm_plans() const {
  if (!gemm_plans_) return {};
  std::vector<const GemmPlan*> ordered;
  for (const auto& entry : gemm_plans_->plans) ordered.push_back(&entry.second);
  std::sort(ordered.begin(), ordered.end(),
            [](const GemmPlan* a, const GemmPlan* b) { return a->sequence < b->sequence; });
  std::vector<GemmPlanInfo> infos;
  for (const GemmPlan* plan : ordered) infos.push_back(plan->info);
  return infos;
}

void Context::GemmPlansDeleter::operator()(GemmPlans* plans) const noexcept { delete plans; }

namespace {

void check_shape(const LinearShape& shape, const char* op) {
  require(shape.rows >= 0 && shape.in_features > 0 && shape.out_features > 0, op,
          "need rows >= 0 and in_features, out_features > 0 (got rows=" + std::to_string(shape.rows) +
              " in=" + std::to_string(shape.in_features) + " out=" + std::to_string(shape.out_features) + ")");
  require(shape.out_stride == 0 || shape.out_stride >= shape.out_features, op,
          "out_stride " + std::to_string(shape.out_stride) + " is below out_features " +
              std::to_string(shape.out_features) + " (0 means dense)");
}

void check_pointer(const void* p, size_t element_bytes, const char* op, const char* name) {
  require(p != nullptr, op, std::string(name) + " is null");
  require(aligned_to(p, element_bytes), op,
          std::string(name) + " is not aligned to its element size (" + std::to_string(element_bytes) +
              " bytes); hint: allocate with cudaMalloc or an arena that keeps 16-byte alignment");
}

}  // namespace

void linear_forward(Context& ctx, const LinearShape& shape, const bf16* x, const bf16* weight, const bf16* bias,
                    bf16* y) {
  constexpr const char* kOp = "linear_forward";
  check_shape(shape, kOp);
  check_pointer(x, sizeof(bf16), kOp, "x");
  check_pointer(weight, sizeof(bf16), kOp, "weight");
  check_pointer(y, sizeof(bf16), kOp, "y");
  if (bias != nullptr) check_pointer(bias, sizeof(bf16), kOp, "bias");
  if (shape.rows == 0) return;
  if (!ctx.gemm_plans_) ctx.gemm_plans_.reset(new Context::GemmPlans());  // owned at once by the Context

  GemmCall call;
  call.product = Product::kForward;
  call.trans_a = CUBLAS_OP_T;
  call.trans_b = CUBLAS_OP_N;
  call.m = shape.out_features;
  call.n = shape.rows;
  call.k = shape.in_features;
  call.lda = shape.in_features;
  call.ldb = shape.in_features;
  call.ldd = shape.y_stride();
  call.d_type = CUDA_R_16BF;
  call.a = weight;
  call.b = x;
  call.d = y;
  call.bias = bias;
  call.beta = 0.0f;
  ctx.gemm_plans_->run(ctx, call);
}

void linear_backward(Context& ctx, const LinearShape& shape, const bf16* dy, const bf16* x, const bf16* weight,
                     bf16* dx, float* dweight, float* dbias, InputGrad dx_mode) {
  constexpr const char* kOp = "linear_backward";
  check_shape(shape, kOp);
  check_pointer(dy, sizeof(bf16), kOp, "dy");
  if (dx != nullptr) {
    check_pointer(dx, sizeof(bf16), kOp, "dx");
    check_pointer(weight, sizeof(bf16), kOp, "weight (needed for dx)");
  }
  if (dweight != nullptr) {
    check_pointer(dweight, sizeof(float), kOp, "dweight");
    check_pointer(x, sizeof(bf16), kOp, "x (needed for dweight)");
  }
  if (dbias != nullptr) check_pointer(dbias, sizeof(float), kOp, "dbias");
  require(dx_mode == InputGrad::kOverwrite || dx_mode == InputGrad::kAccumulate, kOp, "unknown InputGrad mode");
  if (shape.rows == 0) return;                                            // dx is empty; dW and db gain nothing
  if (!ctx.gemm_plans_) ctx.gemm_plans_.reset(new Context::GemmPlans());  // owned at once by the Context

  // With dW, the bias gradient rides on its GEMM (BGRADB, where cuBLASLt has a kernel for it: run()).
  const bool bias_grad_in_gemm =
      dbias != nullptr && dweight != nullptr && ctx.kernel_paths().gemm_bias_gradient_epilogue;
  if (dbias != nullptr && !bias_grad_in_gemm)
    accumulate_bias_grad(ctx, dy, shape.rows, shape.out_features, shape.y_stride(), dbias);

  if (dweight != nullptr) {
    GemmCall call;
    call.product = Product::kWeightGrad;
    call.trans_a = CUBLAS_OP_N;
    call.trans_b = CUBLAS_OP_T;
    call.m = shape.in_features;
    call.n = shape.out_features;
    call.k = shape.rows;
    call.lda = shape.in_features;
    call.ldb = shape.y_stride();
    call.ldd = shape.in_features;
    call.d_type = CUDA_R_32F;
    call.a = x;
    call.b = dy;
    call.d = dweight;
    call.beta = 1.0f;
    if (bias_grad_in_gemm) {
      call.dbias = dbias;
      call.bias_grad_out = static_cast<float*>(ctx.scratch(static_cast<size_t>(shape.out_features) * sizeof(float)));
    }
    ctx.gemm_plans_->run(ctx, call);
  }

  if (dx != nullptr) {
    GemmCall call;
    call.product = Product::kInputGrad;
    call.trans_a = CUBLAS_OP_N;
    call.trans_b = CUBLAS_OP_N;
    call.m = shape.in_features;
    call.n = shape.rows;
    call.k = shape.out_features;
    call.lda = shape.in_features;
    call.ldb = shape.y_stride();
    call.ldd = shape.in_features;
    call.d_type = CUDA_R_16BF;
    call.a = weight;
    call.b = dy;
    call.d = dx;
    call.beta = dx_mode == InputGrad::kAccumulate ? 1.0f : 0.0f;
    ctx.gemm_plans_->run(ctx, call);
  }
}

}  // namespace bert::cuda
