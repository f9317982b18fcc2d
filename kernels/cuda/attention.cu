// Fused multi-head self-attention (flash-attention style) on tensor cores: per sequence b and head h,
// P = softmax(Q K^T / sqrt(D) + key-padding mask), context = dropout(P) V, and its backward.
// Semantics (padding, the all-padding rule, the dropout element index): kernels/ops.h. Reference:
// kernels/cpu/attention.cpp, whose saved statistic this reproduces exactly:
//   logsumexp[b, h, i] = m + log(sum_j exp(s_ij - m)), s_ij = q_i . k_j / sqrt(D) (the scale is
//   inside), m = max_j s_ij, over attended keys only; log(S) for a sequence with no attended key.
//
// Shapes: q, k, v, dq, dk, dv: bf16 rows of qkv_row_stride elements, head h at columns
// [h*D, (h+1)*D); context, dcontext: bf16 [B*S, H*D]; logsumexp: fp32 [B, H, S];
// attention_mask: int32 [B, S] or nullptr. D in {32, 64, 128} (one template instance each),
// S in 1..512 (the key flags of a sequence live in shared memory).
//
// Design. A block is 4 warps and owns 64 rows of one (b, h): 64 queries (forward, dQ) or 64 keys
// (dK/dV); each warp owns 16 of them and walks the other side in steps of 64. Matmuls are
// nvcuda::wmma bf16 16x16x16 with fp32 accumulation. WMMA accumulator layouts are opaque, so every
// elementwise step (mask, online softmax, dropout, dS) goes through a per-warp fp32 tile in shared
// memory with a known thread mapping, and its bf16 result is reloaded as a matrix_a fragment.
// Rows beyond S are zero-filled in shared memory (no garbage reaches a matmul), keys beyond S and
// padded keys get probability exactly 0, rows beyond S are never written.
//   forward       O (fp32, per warp in smem) is rescaled by exp(m_old - m_new) per key step, then
//                 O += P~ V with P~ = exp(s - m) * dropout (bf16); l sums the undropped p.
//   backward      1. Delta_i = rowsum(dO * O) (fp32 scratch). 2. per key block, over query steps:
//                 S^T = K Q^T, dP~^T = V dO^T, P = exp(s - lse), dS = P (dP~ * keep - Delta) / sqrt(D),
//                 dV += (P * keep)^T dO, dK += dS^T Q (registers). 3. per query block, over key
//                 steps: S, dP~ again, dQ += dS K. No atomics: every output row is written once by
//                 one warp, so results are bitwise deterministic.
// Shared memory (D = 128): forward 111 KB, dK/dV 121 KB, dQ 112 KB (D = 64: 71, 89, 80 KB): 2 blocks
// (8 warps) per SM, 1 for dK/dV at D = 128. Registers <= 255 per thread, no spills (ptxas -v, sm_90a).
//
// Napkin math (BERT-base layer: B = 32, S = 128, H = 12, D = 64). Forward 4*B*H*S^2*D = 1.6 GFLOP;
// backward executes 7 of those S x S x D matmuls = 3.5x forward (2.5x is the minimum; the extra S
// and dP recompute in the dQ pass is the price of no atomics). Bytes: forward reads q, k, v
// (3 * 6.3 MB) and writes context (6.3 MB); backward reads q, k, v, O, dO, writes dq, dk, dv
// (~50 MB). At ~4.8 TB/s and a few hundred bf16 TFLOP/s both are ~5-15 us per layer: a few per cent
// of the layer's GEMM time, so clarity wins over the last 2x of a hand-scheduled mma.sync kernel.
#include <cuda_bf16.h>
#include <mma.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

namespace wmma = nvcuda::wmma;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kFrag = 16;                   // wmma tile edge
constexpr int kBlockRows = kFrag * kWarps;  // rows of one (b, h) a block owns: queries or keys
constexpr int kStep = 64;                   // the other side's rows per step (4 fragments)
constexpr int kMaxSeqLen = kAttentionMaxSeqLen;
constexpr int kScoreLd = kStep + 4;  // fp32 [16][kStep] per warp; ldm multiple of 4 floats
constexpr int kProbLd = kStep + 8;   // bf16 [16][kStep] per warp; ldm multiple of 8 bf16
constexpr unsigned kFullMask = 0xffffffffu;

constexpr size_t align_up(size_t bytes) { return (bytes + 127) / 128 * 128; }
constexpr size_t kScoreBytes = align_up(size_t{kWarps} * kFrag * kScoreLd * sizeof(float));
constexpr size_t kProbBytes = align_up(size_t{kWarps} * kFrag * kProbLd * sizeof(bf16));
constexpr size_t kKeyFlagBytes = align_up(kMaxSeqLen);
constexpr size_t kRowStatBytes = align_up(size_t{kStep} * sizeof(float));

template <int D>
struct Tiles {
  static_assert(D == 32 || D == 64 || D == 128, "head_dim 32, 64 or 128");
  // bf16 [64][D] tiles, rows padded by 16 bytes: wmma's ldmatrix reads 8 rows without bank conflicts.
  static constexpr int kLd = D + 8;
  // fp32 [16][D] per warp: forward output accumulator, and the staging of every fp32 -> bf16 store.
  static constexpr int kAccLd = D + 4;
  static constexpr size_t kTileBytes = align_up(size_t{kBlockRows} * kLd * sizeof(bf16));
  static constexpr size_t kAccBytes = align_up(size_t{kWarps} * kFrag * kAccLd * sizeof(float));
  // The backward kernels stage their fp32 results in two adjacent (consumed) tiles.
  static_assert(2 * kTileBytes >= kAccBytes, "staging must fit in two tiles");

  static constexpr size_t kForwardBytes = 3 * kTileBytes + kScoreBytes + kProbBytes + kAccBytes + kKeyFlagBytes;
  static constexpr size_t kDkDvBytes =
      4 * kTileBytes + 2 * kScoreBytes + 2 * kProbBytes + 2 * kRowStatBytes + kKeyFlagBytes;
  static constexpr size_t kDqBytes = 4 * kTileBytes + 2 * kScoreBytes + kProbBytes + kKeyFlagBytes;
};

using FragA = wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::col_major>;
using FragAcc = wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float>;

struct DropoutSite {
  ops::DropoutSpec spec;
  uint64_t drop_below = 0;  // Philox words below this are dropped (ops::dropout_drop_threshold)
  float keep_scale = 1;     // 1 / (1 - p), computed as kernels/cpu does
  int enabled = 0;          // p > 0
};

// Everything a kernel needs about the call; the pointers are at token 0, column 0.
struct AttentionArgs {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const int32_t* mask;  // [B, S] or nullptr
  int64_t qkv_stride;
  int64_t hidden;  // row stride of context / dcontext
  int seq_len;
  int num_heads;
  int row_blocks;  // ceil(S / 64): blocks per (b, h)
  float scale;     // 1 / sqrt(D)
  DropoutSite dropout;
};

// Which (b, h) and which 64 rows a block owns; blockIdx.x = (b * H + h) * row_blocks + row block.
struct BlockCoords {
  int first_row;
  int batch_head;         // b * H + h: the [B, H, S] row of logsumexp / Delta
  int64_t qkv_offset;     // element offset of (token b*S, head h) in q/k/v/dq/dk/dv
  int64_t hidden_offset;  // the same in context / dcontext
};

template <int D>
__device__ BlockCoords block_coords(const AttentionArgs& args) {
  BlockCoords coords;
  coords.first_row = static_cast<int>(blockIdx.x % args.row_blocks) * kBlockRows;
  coords.batch_head = static_cast<int>(blockIdx.x / args.row_blocks);
  const int64_t batch = coords.batch_head / args.num_heads, head = coords.batch_head % args.num_heads;
  coords.qkv_offset = batch * args.seq_len * args.qkv_stride + head * D;
  coords.hidden_offset = batch * args.seq_len * args.hidden + head * D;
  return coords;
}

// Which keys of the block's sequence are attended. A sequence with no attended key attends to all.
struct KeyFlags {
  const unsigned char* valid;  // [S] in shared memory
  int seq_len;
  bool all_padding;
  __device__ bool attended(int key) const { return key < seq_len && (all_padding || valid[key] != 0); }
};

// Block-wide (every thread must call it): loads the mask row of batch b into shared memory.
__device__ KeyFlags load_key_flags(const AttentionArgs& args, int batch_head, unsigned char* flags) {
  const int32_t* mask_row =
      args.mask != nullptr ? args.mask + static_cast<int64_t>(batch_head / args.num_heads) * args.seq_len : nullptr;
  int any_attended = 0;
  for (int key = threadIdx.x; key < args.seq_len; key += kThreads) {
    const bool attended = mask_row == nullptr || mask_row[key] != 0;
    flags[key] = attended ? 1 : 0;
    any_attended |= attended ? 1 : 0;
  }
  // Also the barrier that publishes flags[].
  const bool all_padding = __syncthreads_or(any_attended) == 0;
  return KeyFlags{flags, args.seq_len, all_padding};
}

// Block-wide: tile[r][0, D) = rows[first + r] for r < 64, zeros where first + r >= seq_len.
// 16-byte vectors: the launcher checked the row stride (multiple of 8) and base alignment.
template <int D>
__device__ void load_tile(bf16* tile, const bf16* rows, int64_t row_stride, int first, int seq_len) {
  constexpr int kChunks = D / 8;
  for (int index = threadIdx.x; index < kBlockRows * kChunks; index += kThreads) {
    const int row = index / kChunks, chunk = index % kChunks;
    uint4 value = make_uint4(0u, 0u, 0u, 0u);
    if (first + row < seq_len)
      value = *reinterpret_cast<const uint4*>(rows + static_cast<int64_t>(first + row) * row_stride + chunk * 8);
    *reinterpret_cast<uint4*>(tile + row * Tiles<D>::kLd + chunk * 8) = value;
  }
}

// One warp: rows[r][0, D) (fp32 staging, row stride kAccLd) -> out row (first + r) as bf16, r < 16,
// rows at or beyond seq_len skipped.
template <int D>
__device__ void store_warp_rows(const float* rows, int first, int seq_len, bf16* out, int64_t out_stride, int lane) {
  for (int r = 0; r < kFrag && first + r < seq_len; ++r) {
    const float* source = rows + r * Tiles<D>::kAccLd;
    bf16* target = out + static_cast<int64_t>(first + r) * out_stride;
    for (int column = 2 * lane; column < D; column += 64)
      *reinterpret_cast<__nv_bfloat162*>(target + column) = __floats2bfloat162_rn(source[column], source[column + 1]);
  }
}

// The dropout multiplier of consecutive element indices; one Philox call serves 4 of them.
class DropoutCursor {
 public:
  __device__ float multiplier(const DropoutSite& site, uint64_t index) {
    if (!site.enabled) return 1.0f;
    const uint64_t group = index >> 2;
    if (group != group_) {
      random_ = ops::dropout_random_group(site.spec, group);
      group_ = group;
    }
    const unsigned word = static_cast<unsigned>(index & 3);
    const uint32_t value = word == 0   ? random_.word[0]
                           : word == 1 ? random_.word[1]
                           : word == 2 ? random_.word[2]
                                       : random_.word[3];
    return value >= site.drop_below ? site.keep_scale : 0.0f;
  }

 private:
  uint64_t group_ = ~uint64_t{0};  // no real group (indices stay below 2^62)
  ops::Philox4x32Result random_{};
};

// One warp: scores[16][64] (fp32, row stride kScoreLd) = A[16][D] B^T where A's rows are `a` (bf16,
// row stride kLd) and B's 64 rows are `b` (bf16 [64][D], row stride kLd).
template <int D>
__device__ void warp_matmul_abt(const bf16* a, const bf16* b, float* scores) {
  constexpr int ld = Tiles<D>::kLd;
  FragAcc accumulator[kStep / kFrag];
#pragma unroll
  for (int n = 0; n < kStep / kFrag; ++n) wmma::fill_fragment(accumulator[n], 0.0f);
#pragma unroll
  for (int kk = 0; kk < D / kFrag; ++kk) {
    FragA a_fragment;
    wmma::load_matrix_sync(a_fragment, a + kk * kFrag, ld);
#pragma unroll
    for (int n = 0; n < kStep / kFrag; ++n) {
      FragBCol b_fragment;  // B^T[d][row] = b[row][d]: column-major with ldm = ld
      wmma::load_matrix_sync(b_fragment, b + n * kFrag * ld + kk * kFrag, ld);
      wmma::mma_sync(accumulator[n], a_fragment, b_fragment, accumulator[n]);
    }
  }
#pragma unroll
  for (int n = 0; n < kStep / kFrag; ++n)
    wmma::store_matrix_sync(scores + n * kFrag, accumulator[n], kScoreLd, wmma::mem_row_major);
}

// ---- forward kernel ---------------------------------------------------------------------------------------

// Block: 64 queries of one (b, h); warp w: queries first_row + 16w .. +15. For the online softmax,
// lane = 2 * r + half owns query row r of its warp and keys [32 * half, 32 * half + 32) of each step
// (contiguous, so consecutive dropout indices share Philox calls); the two lanes of a row combine
// their max and sum with one shuffle.
template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(const AttentionArgs args, bf16* __restrict__ context, float* __restrict__ logsumexp) {
  using T = Tiles<D>;
  constexpr int ld = T::kLd, acc_ld = T::kAccLd;
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* q_tile = reinterpret_cast<bf16*>(shared);
  bf16* k_tile = reinterpret_cast<bf16*>(shared + T::kTileBytes);
  bf16* v_tile = reinterpret_cast<bf16*>(shared + 2 * T::kTileBytes);
  unsigned char* after_tiles = shared + 3 * T::kTileBytes;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scores = reinterpret_cast<float*>(after_tiles) + warp * kFrag * kScoreLd;
  bf16* probs = reinterpret_cast<bf16*>(after_tiles + kScoreBytes) + warp * kFrag * kProbLd;
  float* out_acc = reinterpret_cast<float*>(after_tiles + kScoreBytes + kProbBytes) + warp * kFrag * acc_ld;
  unsigned char* key_flags = after_tiles + kScoreBytes + kProbBytes + T::kAccBytes;

  const int seq_len = args.seq_len;
  const BlockCoords coords = block_coords<D>(args);
  const KeyFlags keys = load_key_flags(args, coords.batch_head, key_flags);
  load_tile<D>(q_tile, args.q + coords.qkv_offset, args.qkv_stride, coords.first_row, seq_len);
  for (int index = lane; index < kFrag * acc_ld; index += 32) out_acc[index] = 0.0f;
  __syncthreads();

  const int row = lane >> 1, half = lane & 1;
  // Lanes start their 32 columns at different offsets: score reads hit 32 distinct banks.
  const int rotation = (row >> 3) + 2 * half;
  const int query = coords.first_row + warp * kFrag + row;
  // Dropout element index of (query, key 0); meaningless (never used for output) past seq_len.
  const uint64_t dropout_row = (static_cast<uint64_t>(coords.batch_head) * seq_len + query) * seq_len;
  float row_max = -INFINITY;  // running max of the scaled scores of attended keys
  float row_sum = 0.0f;       // running sum of exp(s - row_max), undropped
  DropoutCursor dropout;

  for (int key0 = 0; key0 < seq_len; key0 += kStep) {
    __syncthreads();  // every warp is done with the previous K/V tile
    load_tile<D>(k_tile, args.k + coords.qkv_offset, args.qkv_stride, key0, seq_len);
    load_tile<D>(v_tile, args.v + coords.qkv_offset, args.qkv_stride, key0, seq_len);
    __syncthreads();

    warp_matmul_abt<D>(q_tile + warp * kFrag * ld, k_tile, scores);
    __syncwarp();

    // Online softmax over this step's keys. All-padding sequences score every key 0: uniform.
    const float* score_row = scores + row * kScoreLd + half * 32;
    bf16* prob_row = probs + row * kProbLd + half * 32;
    const int first_key = key0 + half * 32;
    float step_max = -INFINITY;
    for (int i = 0; i < 32; ++i) {
      const int c = (i + rotation) & 31;
      if (keys.attended(first_key + c)) step_max = fmaxf(step_max, keys.all_padding ? 0.0f : score_row[c] * args.scale);
    }
    step_max = fmaxf(step_max, __shfl_xor_sync(kFullMask, step_max, 1));
    const float new_max = fmaxf(row_max, step_max);
    // new_max = -inf: no attended key yet, nothing accumulated; row_max = -inf: exp(-inf) = 0.
    const float rescale = new_max == -INFINITY ? 1.0f : expf(row_max - new_max);
    float step_sum = 0.0f;
    for (int i = 0; i < 32; ++i) {
      const int c = (i + rotation) & 31;
      const int key = first_key + c;
      float kept = 0.0f;
      if (keys.attended(key)) {
        const float prob = expf((keys.all_padding ? 0.0f : score_row[c] * args.scale) - new_max);
        step_sum += prob;
        kept = prob * dropout.multiplier(args.dropout, dropout_row + key);
      }
      prob_row[c] = __float2bfloat16(kept);
    }
    step_sum += __shfl_xor_sync(kFullMask, step_sum, 1);
    row_sum = row_sum * rescale + step_sum;
    row_max = new_max;
    if (rescale != 1.0f) {
      float* out_row = out_acc + row * acc_ld + half * (D / 2);
      for (int c = 0; c < D / 2; ++c) out_row[c] *= rescale;
    }
    __syncwarp();

    // out_acc[16][D] += P~[16][64] V[64][D]
    FragA p_fragment[kStep / kFrag];
#pragma unroll
    for (int kk = 0; kk < kStep / kFrag; ++kk) wmma::load_matrix_sync(p_fragment[kk], probs + kk * kFrag, kProbLd);
#pragma unroll
    for (int n = 0; n < D / kFrag; ++n) {
      FragAcc out_fragment;
      wmma::load_matrix_sync(out_fragment, out_acc + n * kFrag, acc_ld, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kStep / kFrag; ++kk) {
        FragBRow v_fragment;
        wmma::load_matrix_sync(v_fragment, v_tile + kk * kFrag * ld + n * kFrag, ld);
        wmma::mma_sync(out_fragment, p_fragment[kk], v_fragment, out_fragment);
      }
      wmma::store_matrix_sync(out_acc + n * kFrag, out_fragment, acc_ld, wmma::mem_row_major);
    }
    __syncwarp();
  }

  // Every row has an attended key (or all keys, all-padding), so row_sum >= 1 for rows < seq_len.
  const float inverse_sum = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
  if (half == 0 && query < seq_len)
    logsumexp[static_cast<int64_t>(coords.batch_head) * seq_len + query] = row_max + logf(row_sum);
  float* out_row = out_acc + row * acc_ld + half * (D / 2);
  for (int c = 0; c < D / 2; ++c) out_row[c] *= inverse_sum;
  __syncwarp();
  store_warp_rows<D>(out_acc, coords.first_row + warp * kFrag, seq_len, context + coords.hidden_offset, args.hidden,
                     lane);
}

// ---- backward kernels ---------------------------------------------------------------------------------------

// delta[(b*H + h)*S + i] = sum_d dO[t, h*D + d] * O[t, h*D + d], t = b*S + i: one warp per (t, h).
__global__ void attention_delta_kernel(const bf16* __restrict__ dcontext, const bf16* __restrict__ context,
                                       int64_t tokens, int seq_len, int num_heads, int head_dim,
                                       float* __restrict__ delta) {
  const int64_t warp_index = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp_index >= tokens * num_heads) return;  // whole warps leave together
  const int64_t token = warp_index / num_heads;
  const int head = static_cast<int>(warp_index % num_heads);
  const int64_t offset = token * num_heads * head_dim + static_cast<int64_t>(head) * head_dim;
  float sum = 0.0f;
  for (int d = 2 * lane; d < head_dim; d += 64) {
    const float2 g = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dcontext + offset + d));
    const float2 o = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(context + offset + d));
    sum += g.x * o.x + g.y * o.y;
  }
  for (int width = 16; width > 0; width /= 2) sum += __shfl_xor_sync(kFullMask, sum, width);
  if (lane == 0) {
    const int64_t batch = token / seq_len, position = token % seq_len;
    delta[(batch * num_heads + head) * seq_len + position] = sum;
  }
}

// Block: 64 keys of one (b, h); warp w: keys first_row + 16w .. +15, accumulating dK, dV [16][D] in
// fragments over all query steps. Elementwise mapping: lane owns queries {lane, lane + 32} of the
// step and walks the warp's 16 keys (consecutive dropout indices share Philox calls).
template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_kernel(const AttentionArgs args, const bf16* __restrict__ dcontext,
                                   const float* __restrict__ logsumexp, const float* __restrict__ delta,
                                   bf16* __restrict__ dk, bf16* __restrict__ dv) {
  using T = Tiles<D>;
  constexpr int ld = T::kLd, acc_ld = T::kAccLd;
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* k_tile = reinterpret_cast<bf16*>(shared);
  bf16* v_tile = reinterpret_cast<bf16*>(shared + T::kTileBytes);
  bf16* q_tile = reinterpret_cast<bf16*>(shared + 2 * T::kTileBytes);
  bf16* dout_tile = reinterpret_cast<bf16*>(shared + 3 * T::kTileBytes);
  unsigned char* after_tiles = shared + 4 * T::kTileBytes;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scores_t = reinterpret_cast<float*>(after_tiles) + warp * kFrag * kScoreLd;  // S^T [16 keys][64 queries]
  float* dprobs_t = reinterpret_cast<float*>(after_tiles + kScoreBytes) + warp * kFrag * kScoreLd;  // dP~^T
  bf16* kept_t = reinterpret_cast<bf16*>(after_tiles + 2 * kScoreBytes) + warp * kFrag * kProbLd;   // (P keep)^T
  bf16* dscores_t = reinterpret_cast<bf16*>(after_tiles + 2 * kScoreBytes + kProbBytes) + warp * kFrag * kProbLd;
  float* step_lse = reinterpret_cast<float*>(after_tiles + 2 * kScoreBytes + 2 * kProbBytes);
  float* step_delta = reinterpret_cast<float*>(after_tiles + 2 * kScoreBytes + 2 * kProbBytes + kRowStatBytes);
  unsigned char* key_flags = after_tiles + 2 * kScoreBytes + 2 * kProbBytes + 2 * kRowStatBytes;

  const int seq_len = args.seq_len;
  const BlockCoords coords = block_coords<D>(args);
  const KeyFlags keys = load_key_flags(args, coords.batch_head, key_flags);
  load_tile<D>(k_tile, args.k + coords.qkv_offset, args.qkv_stride, coords.first_row, seq_len);
  load_tile<D>(v_tile, args.v + coords.qkv_offset, args.qkv_stride, coords.first_row, seq_len);
  const int warp_first_key = coords.first_row + warp * kFrag;
  const float* lse_row = logsumexp + static_cast<int64_t>(coords.batch_head) * seq_len;
  const float* delta_row = delta + static_cast<int64_t>(coords.batch_head) * seq_len;
  const float uniform_prob = 1.0f / static_cast<float>(seq_len);

  FragAcc dk_acc[D / kFrag], dv_acc[D / kFrag];
#pragma unroll
  for (int n = 0; n < D / kFrag; ++n) {
    wmma::fill_fragment(dk_acc[n], 0.0f);
    wmma::fill_fragment(dv_acc[n], 0.0f);
  }

  for (int query0 = 0; query0 < seq_len; query0 += kStep) {
    __syncthreads();  // every warp is done with the previous Q/dO tiles and row statistics
    load_tile<D>(q_tile, args.q + coords.qkv_offset, args.qkv_stride, query0, seq_len);
    load_tile<D>(dout_tile, dcontext + coords.hidden_offset, args.hidden, query0, seq_len);
    for (int c = threadIdx.x; c < kStep; c += kThreads) {
      const bool in_range = query0 + c < seq_len;
      step_lse[c] = in_range ? lse_row[query0 + c] : 0.0f;
      step_delta[c] = in_range ? delta_row[query0 + c] : 0.0f;
    }
    __syncthreads();  // (the first time, also publishes the K/V tiles)

    warp_matmul_abt<D>(k_tile + warp * kFrag * ld, q_tile, scores_t);
    warp_matmul_abt<D>(v_tile + warp * kFrag * ld, dout_tile, dprobs_t);
    __syncwarp();

    for (int which = 0; which < 2; ++which) {
      const int c = lane + 32 * which;  // conflict-free: consecutive lanes, consecutive columns
      const int query = query0 + c;
      const bool query_in_range = query < seq_len;
      const float lse = step_lse[c], dout_dot_out = step_delta[c];
      const uint64_t dropout_row = (static_cast<uint64_t>(coords.batch_head) * seq_len + query) * seq_len;
      DropoutCursor dropout;
      for (int r = 0; r < kFrag; ++r) {
        const int key = warp_first_key + r;
        float kept = 0.0f, dscore = 0.0f;
        if (query_in_range && keys.attended(key)) {
          const float prob = keys.all_padding ? uniform_prob : expf(scores_t[r * kScoreLd + c] * args.scale - lse);
          if (prob != 0.0f) {
            const float multiplier = dropout.multiplier(args.dropout, dropout_row + key);
            kept = prob * multiplier;
            // All-padding rows are constant in the scores: no gradient to q or k (ops.h).
            if (!keys.all_padding)
              dscore = args.scale * prob * (dprobs_t[r * kScoreLd + c] * multiplier - dout_dot_out);
          }
        }
        kept_t[r * kProbLd + c] = __float2bfloat16(kept);
        dscores_t[r * kProbLd + c] = __float2bfloat16(dscore);
      }
    }
    __syncwarp();

    // dV[16][D] += (P keep)^T[16][64] dO[64][D];  dK[16][D] += dS^T[16][64] Q[64][D]
    // Rolled: dK and dV already hold D registers per lane (unrolled, D = 128 spills).
#pragma unroll 1
    for (int kk = 0; kk < kStep / kFrag; ++kk) {
      FragA kept_fragment, dscore_fragment;
      wmma::load_matrix_sync(kept_fragment, kept_t + kk * kFrag, kProbLd);
      wmma::load_matrix_sync(dscore_fragment, dscores_t + kk * kFrag, kProbLd);
#pragma unroll
      for (int n = 0; n < D / kFrag; ++n) {
        FragBRow dout_fragment, q_fragment;
        wmma::load_matrix_sync(dout_fragment, dout_tile + kk * kFrag * ld + n * kFrag, ld);
        wmma::mma_sync(dv_acc[n], kept_fragment, dout_fragment, dv_acc[n]);
        wmma::load_matrix_sync(q_fragment, q_tile + kk * kFrag * ld + n * kFrag, ld);
        wmma::mma_sync(dk_acc[n], dscore_fragment, q_fragment, dk_acc[n]);
      }
    }
  }

  __syncthreads();  // the Q/dO tiles become the staging area
  float* staging = reinterpret_cast<float*>(q_tile) + warp * kFrag * acc_ld;
#pragma unroll
  for (int n = 0; n < D / kFrag; ++n)
    wmma::store_matrix_sync(staging + n * kFrag, dk_acc[n], acc_ld, wmma::mem_row_major);
  __syncwarp();
  store_warp_rows<D>(staging, warp_first_key, seq_len, dk + coords.qkv_offset, args.qkv_stride, lane);
  __syncwarp();
#pragma unroll
  for (int n = 0; n < D / kFrag; ++n)
    wmma::store_matrix_sync(staging + n * kFrag, dv_acc[n], acc_ld, wmma::mem_row_major);
  __syncwarp();
  store_warp_rows<D>(staging, warp_first_key, seq_len, dv + coords.qkv_offset, args.qkv_stride, lane);
}

// Block: 64 queries of one (b, h); warp w: queries first_row + 16w .. +15, accumulating dQ [16][D]
// over all key steps. Elementwise mapping as the forward: lane = 2 * r + half, 32 contiguous keys.
template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(const AttentionArgs args, const bf16* __restrict__ dcontext,
                                 const float* __restrict__ logsumexp, const float* __restrict__ delta,
                                 bf16* __restrict__ dq) {
  using T = Tiles<D>;
  constexpr int ld = T::kLd, acc_ld = T::kAccLd;
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* q_tile = reinterpret_cast<bf16*>(shared);
  bf16* dout_tile = reinterpret_cast<bf16*>(shared + T::kTileBytes);
  bf16* k_tile = reinterpret_cast<bf16*>(shared + 2 * T::kTileBytes);
  bf16* v_tile = reinterpret_cast<bf16*>(shared + 3 * T::kTileBytes);
  unsigned char* after_tiles = shared + 4 * T::kTileBytes;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scores = reinterpret_cast<float*>(after_tiles) + warp * kFrag * kScoreLd;
  float* dprobs = reinterpret_cast<float*>(after_tiles + kScoreBytes) + warp * kFrag * kScoreLd;
  bf16* dscores = reinterpret_cast<bf16*>(after_tiles + 2 * kScoreBytes) + warp * kFrag * kProbLd;
  unsigned char* key_flags = after_tiles + 2 * kScoreBytes + kProbBytes;

  const int seq_len = args.seq_len;
  const BlockCoords coords = block_coords<D>(args);
  const KeyFlags keys = load_key_flags(args, coords.batch_head, key_flags);

  FragAcc dq_acc[D / kFrag];
#pragma unroll
  for (int n = 0; n < D / kFrag; ++n) wmma::fill_fragment(dq_acc[n], 0.0f);

  // All-padding sequences: dQ = 0 exactly (ops.h); keys.all_padding is uniform over the block.
  if (!keys.all_padding) {
    load_tile<D>(q_tile, args.q + coords.qkv_offset, args.qkv_stride, coords.first_row, seq_len);
    load_tile<D>(dout_tile, dcontext + coords.hidden_offset, args.hidden, coords.first_row, seq_len);
    const int row = lane >> 1, half = lane & 1;
    const int rotation = (row >> 3) + 2 * half;  // as in the forward: conflict-free score reads
    const int query = coords.first_row + warp * kFrag + row;
    const bool query_in_range = query < seq_len;
    const int64_t stat_index = static_cast<int64_t>(coords.batch_head) * seq_len + query;
    const float lse = query_in_range ? logsumexp[stat_index] : 0.0f;
    const float dout_dot_out = query_in_range ? delta[stat_index] : 0.0f;
    const uint64_t dropout_row = (static_cast<uint64_t>(coords.batch_head) * seq_len + query) * seq_len;
    DropoutCursor dropout;

    for (int key0 = 0; key0 < seq_len; key0 += kStep) {
      __syncthreads();  // every warp is done with the previous K/V tile
      load_tile<D>(k_tile, args.k + coords.qkv_offset, args.qkv_stride, key0, seq_len);
      load_tile<D>(v_tile, args.v + coords.qkv_offset, args.qkv_stride, key0, seq_len);
      __syncthreads();  // (the first time, also publishes the Q/dO tiles)

      warp_matmul_abt<D>(q_tile + warp * kFrag * ld, k_tile, scores);
      warp_matmul_abt<D>(dout_tile + warp * kFrag * ld, v_tile, dprobs);
      __syncwarp();

      const int first_key = key0 + half * 32;
      const float* score_row = scores + row * kScoreLd + half * 32;
      const float* dprob_row = dprobs + row * kScoreLd + half * 32;
      bf16* dscore_row = dscores + row * kProbLd + half * 32;
      for (int i = 0; i < 32; ++i) {
        const int c = (i + rotation) & 31;
        const int key = first_key + c;
        float dscore = 0.0f;
        if (query_in_range && keys.attended(key)) {
          const float prob = expf(score_row[c] * args.scale - lse);
          if (prob != 0.0f) {
            const float multiplier = dropout.multiplier(args.dropout, dropout_row + key);
            dscore = args.scale * prob * (dprob_row[c] * multiplier - dout_dot_out);
          }
        }
        dscore_row[c] = __float2bfloat16(dscore);
      }
      __syncwarp();

      // dQ[16][D] += dS[16][64] K[64][D]
#pragma unroll
      for (int kk = 0; kk < kStep / kFrag; ++kk) {
        FragA dscore_fragment;
        wmma::load_matrix_sync(dscore_fragment, dscores + kk * kFrag, kProbLd);
#pragma unroll
        for (int n = 0; n < D / kFrag; ++n) {
          FragBRow k_fragment;
          wmma::load_matrix_sync(k_fragment, k_tile + kk * kFrag * ld + n * kFrag, ld);
          wmma::mma_sync(dq_acc[n], dscore_fragment, k_fragment, dq_acc[n]);
        }
      }
    }
  }

  __syncthreads();  // the K/V tiles become the staging area
  float* staging = reinterpret_cast<float*>(k_tile) + warp * kFrag * acc_ld;
#pragma unroll
  for (int n = 0; n < D / kFrag; ++n)
    wmma::store_matrix_sync(staging + n * kFrag, dq_acc[n], acc_ld, wmma::mem_row_major);
  __syncwarp();
  store_warp_rows<D>(staging, coords.first_row + warp * kFrag, seq_len, dq + coords.qkv_offset, args.qkv_stride, lane);
}

// ---------------------------------------------------------------------------------------------------------

[[noreturn]] void throw_invalid(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

void check_call(const char* op, const AttentionShape& shape, const DropoutSpec& dropout) {
  std::string why_not;
  if (!attention_supported(shape, &why_not)) throw_invalid(op, why_not);
  if (!(dropout.probability >= 0.0f && dropout.probability < 1.0f))
    throw_invalid(op, "dropout probability " + std::to_string(dropout.probability) + " is outside [0, 1)");
}

void check_aligned(const char* op, const char* name, const void* pointer) {
  if (pointer == nullptr) throw_invalid(op, std::string(name) + " is null");
  if (reinterpret_cast<uintptr_t>(pointer) % 16 != 0)
    throw_invalid(op, std::string(name) +
                          " is not 16-byte aligned (rows are read as 16-byte vectors; pass the start of a "
                          "cudaMalloc'd buffer, or a head offset that is a multiple of 8 elements)");
}

AttentionArgs make_args(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v,
                        const int32_t* attention_mask, const DropoutSpec& dropout) {
  AttentionArgs args{};
  args.q = q;
  args.k = k;
  args.v = v;
  args.mask = attention_mask;
  args.qkv_stride = shape.qkv_row_stride;
  args.hidden = shape.hidden();
  args.seq_len = static_cast<int>(shape.seq_len);
  args.num_heads = static_cast<int>(shape.num_heads);
  args.row_blocks = static_cast<int>((shape.seq_len + kBlockRows - 1) / kBlockRows);
  args.scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  args.dropout.spec = dropout;
  args.dropout.enabled = dropout.probability > 0.0f ? 1 : 0;
  args.dropout.drop_below = ops::dropout_drop_threshold(dropout.probability);
  args.dropout.keep_scale = 1.0f / (1.0f - dropout.probability);
  return args;
}

unsigned grid_blocks(const AttentionShape& shape, const AttentionArgs& args) {
  return static_cast<unsigned>(shape.batch * shape.num_heads * args.row_blocks);
}

template <int D>
void launch_forward(Context& ctx, const AttentionShape& shape, const AttentionArgs& args, bf16* context,
                    float* logsumexp) {
  constexpr size_t bytes = Tiles<D>::kForwardBytes;
  CUDA_CHECK(cudaFuncSetAttribute(attention_forward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)));
  attention_forward_kernel<D><<<grid_blocks(shape, args), kThreads, bytes, ctx.stream()>>>(args, context, logsumexp);
  CUDA_CHECK_LAUNCH();
}

template <int D>
void launch_backward(Context& ctx, const AttentionShape& shape, const AttentionArgs& args, const bf16* dcontext,
                     const float* logsumexp, const float* delta, bf16* dq, bf16* dk, bf16* dv) {
  constexpr size_t dkdv_bytes = Tiles<D>::kDkDvBytes, dq_bytes = Tiles<D>::kDqBytes;
  CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dkdv_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(dkdv_bytes)));
  CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dq_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(dq_bytes)));
  attention_backward_dkdv_kernel<D>
      <<<grid_blocks(shape, args), kThreads, dkdv_bytes, ctx.stream()>>>(args, dcontext, logsumexp, delta, dk, dv);
  CUDA_CHECK_LAUNCH();
  attention_backward_dq_kernel<D>
      <<<grid_blocks(shape, args), kThreads, dq_bytes, ctx.stream()>>>(args, dcontext, logsumexp, delta, dq);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void attention_forward(Context& ctx, const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v,
                       const int32_t* attention_mask, const DropoutSpec& dropout, bf16* context, float* logsumexp) {
  constexpr const char* kOp = "attention_forward";
  check_call(kOp, shape, dropout);
  if (shape.batch == 0) return;
  check_aligned(kOp, "q", q);
  check_aligned(kOp, "k", k);
  check_aligned(kOp, "v", v);
  check_aligned(kOp, "context", context);
  if (logsumexp == nullptr) throw_invalid(kOp, "logsumexp is null");
  const AttentionArgs args = make_args(shape, q, k, v, attention_mask, dropout);
  switch (shape.head_dim) {
    case 32:
      launch_forward<32>(ctx, shape, args, context, logsumexp);
      break;
    case 64:
      launch_forward<64>(ctx, shape, args, context, logsumexp);
      break;
    default:
      launch_forward<128>(ctx, shape, args, context, logsumexp);
      break;
  }
}

void attention_backward(Context& ctx, const AttentionShape& shape, const bf16* dcontext, const bf16* q, const bf16* k,
                        const bf16* v, const int32_t* attention_mask, const DropoutSpec& dropout, const bf16* context,
                        const float* logsumexp, bf16* dq, bf16* dk, bf16* dv) {
  constexpr const char* kOp = "attention_backward";
  check_call(kOp, shape, dropout);
  if (shape.batch == 0) return;
  check_aligned(kOp, "dcontext", dcontext);
  check_aligned(kOp, "q", q);
  check_aligned(kOp, "k", k);
  check_aligned(kOp, "v", v);
  check_aligned(kOp, "context", context);
  check_aligned(kOp, "dq", dq);
  check_aligned(kOp, "dk", dk);
  check_aligned(kOp, "dv", dv);
  if (logsumexp == nullptr) throw_invalid(kOp, "logsumexp is null");
  const AttentionArgs args = make_args(shape, q, k, v, attention_mask, dropout);

  // Delta = rowsum(dO * O) [B, H, S] in scratch, read by both gradient kernels.
  const int64_t rows = shape.tokens() * shape.num_heads;
  float* delta = static_cast<float*>(ctx.scratch(static_cast<size_t>(rows) * sizeof(float)));
  constexpr int kDeltaThreads = 256;
  const int64_t delta_blocks = (rows * 32 + kDeltaThreads - 1) / kDeltaThreads;
  attention_delta_kernel<<<static_cast<unsigned>(delta_blocks), kDeltaThreads, 0, ctx.stream()>>>(
      dcontext, context, shape.tokens(), args.seq_len, args.num_heads, static_cast<int>(shape.head_dim), delta);
  CUDA_CHECK_LAUNCH();

  switch (shape.head_dim) {
    case 32:
      launch_backward<32>(ctx, shape, args, dcontext, logsumexp, delta, dq, dk, dv);
      break;
    case 64:
      launch_backward<64>(ctx, shape, args, dcontext, logsumexp, delta, dq, dk, dv);
      break;
    default:
      launch_backward<128>(ctx, shape, args, dcontext, logsumexp, delta, dq, dk, dv);
      break;
  }
}

}  // namespace bert::cuda
