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
// Each direction has a second set of kernels, AttentionKernel::kMma (FlashAttention-2's register
// scheme): mma.sync m16n8k16 fragments (kernels/cuda/mma_sync.cuh), whose accumulator layout is
// documented, so the elementwise steps never leave registers: the accumulators of S (forward, dQ) or
// S^T (dK/dV) are repacked as the A operands of the next product (P~, dS, (P keep)^T, dS^T), and O, dQ,
// dK, dV accumulate in registers. Same blocks, warps, dropout indices and all-padding rules as above
// (but for the fused backward up to 128 keys, below); dK/dV walks each 64-query step in two halves of
// 32 to keep S^T and dP~^T at 16 registers each.
// The tiles a block walks (forward and dQ: K/V; dK/dV: Q/dO and their logsumexp/Delta) are double-
// buffered with cp.async (kernels/cuda/async_copy.cuh), FlashAttention-2's pipeline: the copies of
// step i + 1 are issued right after the barrier that opens step i and land while step i computes;
// one wait + barrier per step publishes them and frees the other buffer. The block's own tiles and
// the first step are issued before the mask is read. (Before, each step's tiles went through
// registers with the loads of a thread serialised behind its shared stores, and the whole block
// waited for them: at 58-79 TFLOP/s the kernels used ~8% of the tensor cores.)
// Shared memory holds only the tiles, the key flags (forward: also the keys' additive bias) and
// (dK/dV) the steps' logsumexp/Delta: D = 64: 47.5 / 55.5 / 54.5 KB, D = 128: 87.5 / 103.5 / 102.5 KB
// (forward / dK/dV / dQ); registers for D = 32 / 64 / 128: forward 126 / 167 / 173 (its persistent
// form below 128 / 158 / 172), dK/dV 128 / 166 / 246, dQ 166 / 166 / 242, no spills (ptxas, sm_90a):
// at D = 64, 3 blocks (12 warps) an SM, as before the double buffering. Their exponentials are exp2f
// of one FMA (scores scaled by scale * log2(e), the logsumexp by log2(e)): FlashAttention-2's base-2
// softmax, which took 6-11% of the kernels' PTX instructions away. Neither change is measured on a
// device yet.
// Why: per warp and 64-key step at D = 64 the wmma forward moves ~28 KB through shared memory besides
// the 16 KB of K and V fragments both kernels read (scores out and in, probabilities out and in, O
// loaded, rescaled and stored): ~44 KB at 128 B/clk/SM is ~340 clocks against ~130 of mma.sync work
// (2 x 16 x 64 x 64 MACs at ~1k bf16 MACs/clk/SM), so it is bound by shared memory near 2.5x the tensor
// time, the mma kernel near 1x; the wmma backward kernels round-trip two score tiles per step alike.
// Measured on an H200 (bench/RESULTS.md, 2026-12-04): the mma kernels run at 1.9-2.4x the wmma ones
// (2.0-3.0x with dropout; forward 58-79 TFLOP/s against 28-34 at D = 64), so kMma is the default.
//
// kMma's backward up to 128 keys (BERT at seq 128) is one fused kernel a (b, h) instead of the pair:
// its 4 or 8 warps own all the keys (K and V stay in shared memory), walk the query steps as the dK/dV
// kernel does and also write each step's bf16 dS^T to a shared [keys][64] tile; after a barrier they
// form dQ = dS K for the step's 64 queries from it, every element one warp's sum over the keys. No
// atomics, no (B, H, S, S) tensor, no recomputation: 5 S x S x D products instead of 7, the dropout mask
// drawn once instead of twice, Q, K, V and dO loaded once per (b, h) instead of three times (at 128
// keys), one launch instead of two. Its cost: a second barrier per step and the dS^T tile in shared
// memory: 40.5 / 64.5 / 112.5 KB with 4 warps, 59.5 / 91.5 / 155.5 KB with 8 (D = 32 / 64 / 128);
// registers are bounded to 128 at D <= 64 with 8 warps (no spills), so that 2 blocks share an SM
// (16 warps; the pair ran 3 blocks of 4 warps), 241 at D = 128 (one block). Not measured on
// a device yet: bench_kernels times kMmaRecomputeDq (the pair) beside it (attention*_bwd_mma_recompute_dq,
// seq 128).
//
// Napkin math (BERT-base layer: B = 32, S = 128, H = 12, D = 64). Forward 4*B*H*S^2*D = 1.6 GFLOP;
// the kernel pair's backward executes 7 of those S x S x D matmuls = 3.5x forward (2.5x is the
// minimum, the fused kernel's; the extra S and dP recompute in the dQ pass is the pair's price of no
// atomics). Bytes: forward reads q, k, v (3 * 6.3 MB) and writes context (6.3 MB); backward reads q,
// k, v, O, dO, writes dq, dk, dv (~50 MB). At ~4.8 TB/s and a few hundred bf16 TFLOP/s both are
// ~5-15 us per layer, a few per cent of the layer's GEMM time; measured (H200, 2026-12-04, 16k tokens a
// batch) the mma kernels took ~0.58 ms a layer with dropout against the GEMMs' 1.16 ms, 2.4x (seq 128)
// to 4x (seq 512) cuDNN's time: latency, not bytes or FLOPs, is what the changes above go after.
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_sync.cuh"
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
constexpr size_t kKeyBiasBytes = align_up(size_t{kMaxSeqLen} * sizeof(float));  // kMaxSeqLen % kStep == 0
static_assert(kMaxSeqLen % kStep == 0, "the key bias covers every step's keys");
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr size_t kRowStatBytes = align_up(size_t{kStep} * sizeof(float));
// Up to this many keys the mma backward is one fused kernel (attention_backward_fused_mma_kernel).
constexpr int kFusedMaxKeys = 2 * kBlockRows;

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
  // The mma kernels double-buffer the tiles they walk (cp.async): Q + 2 x (K, V); K, V + 2 x (Q, dO,
  // logsumexp, Delta); Q, dO + 2 x (K, V).
  static constexpr size_t kTileElements = kTileBytes / sizeof(bf16);
  static constexpr size_t kForwardMmaBytes = 5 * kTileBytes + kKeyFlagBytes + kKeyBiasBytes;
  // The persistent forward: Q, K, V double-buffered and two key-bias rows.
  static constexpr size_t kForwardPersistentBytes = 6 * kTileBytes + 2 * kKeyBiasBytes;
  static constexpr size_t kDkDvMmaBytes = 6 * kTileBytes + 4 * kRowStatBytes + kKeyFlagBytes;
  static constexpr size_t kDqMmaBytes = 6 * kTileBytes + kKeyFlagBytes;
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

// The coordinates of item `item` (item = (b * H + h) * row_blocks + row block).
template <int D>
__device__ BlockCoords item_coords(const AttentionArgs& args, unsigned item) {
  BlockCoords coords;
  coords.first_row = static_cast<int>(item % args.row_blocks) * kBlockRows;
  coords.batch_head = static_cast<int>(item / args.row_blocks);
  const int64_t batch = coords.batch_head / args.num_heads, head = coords.batch_head % args.num_heads;
  coords.qkv_offset = batch * args.seq_len * args.qkv_stride + head * D;
  coords.hidden_offset = batch * args.seq_len * args.hidden + head * D;
  return coords;
}

template <int D>
__device__ BlockCoords block_coords(const AttentionArgs& args) {
  return item_coords<D>(args, blockIdx.x);
}

// Which keys of the block's sequence are attended. A sequence with no attended key attends to all.
struct KeyFlags {
  const unsigned char* valid;  // [S] in shared memory
  int seq_len;
  bool all_padding;
  __device__ bool attended(int key) const { return key < seq_len && (all_padding || valid[key] != 0); }
};

// Block-wide (every thread of a block of kBlockThreads must call it): loads the mask row of batch b
// into shared memory.
template <int kBlockThreads = kThreads>
__device__ KeyFlags load_key_flags(const AttentionArgs& args, int batch_head, unsigned char* flags) {
  const int32_t* mask_row =
      args.mask != nullptr ? args.mask + static_cast<int64_t>(batch_head / args.num_heads) * args.seq_len : nullptr;
  int any_attended = 0;
  for (int key = threadIdx.x; key < args.seq_len; key += kBlockThreads) {
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

// Block-wide, asynchronous (cp.async, kernels/cuda/async_copy.cuh): issues the copies of load_tile's
// tile (zeros where first + r >= seq_len), neither committed nor waited for. Each thread of a block of
// kBlockThreads copies 64 * D / 8 / kBlockThreads chunks of 16 bytes, all in flight at once.
template <int D, int kBlockThreads = kThreads>
__device__ void load_tile_async(bf16* tile, const bf16* rows, int64_t row_stride, int first, int seq_len) {
  constexpr int kChunks = D / 8;
  static_assert(kBlockRows * kChunks % kBlockThreads == 0, "every thread copies the same number of chunks");
#pragma unroll 1  // unrolled, the compiler keeps every copy's addresses live across the step: +74 registers
  for (int i = 0; i < kBlockRows * kChunks / kBlockThreads; ++i) {
    const int index = static_cast<int>(threadIdx.x) + i * kBlockThreads;
    const int row = index / kChunks, chunk = index % kChunks;
    const bool in_range = first + row < seq_len;
    const bf16* source = in_range ? rows + static_cast<int64_t>(first + row) * row_stride + chunk * 8 : rows;
    detail::async_copy_16(tile + row * Tiles<D>::kLd + chunk * 8, source, in_range);
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

// Block-wide, at the top of key step `step` (keys key0 .. key0 + 63) of the mma forward and dQ kernels,
// whose K/V tiles alternate between two buffers (k_tiles, v_tiles: two tiles each): waits for this
// thread's copies of the step's K/V; the barrier publishes everyone's and frees the other buffers,
// which every warp is done with; then the next step's copies go into those, in flight while this
// step computes. Returns the step's tiles.
struct KeyValueTiles {
  const bf16* k;
  const bf16* v;
};

template <int D>
__device__ KeyValueTiles begin_key_step(bf16* k_tiles, bf16* v_tiles, const bf16* k_rows, const bf16* v_rows,
                                        int64_t row_stride, int key0, int step, int seq_len) {
  constexpr size_t kTile = Tiles<D>::kTileElements;
  detail::async_copy_wait<0>();
  __syncthreads();
  if (key0 + kStep < seq_len) {
    const int next = (step + 1) & 1;
    load_tile_async<D>(k_tiles + next * kTile, k_rows, row_stride, key0 + kStep, seq_len);
    load_tile_async<D>(v_tiles + next * kTile, v_rows, row_stride, key0 + kStep, seq_len);
    detail::async_copy_commit();
  }
  return KeyValueTiles{k_tiles + (step & 1) * kTile, v_tiles + (step & 1) * kTile};
}

// Block-wide, asynchronous as load_tile_async, for the mma dK/dV kernels: load_query_step's tiles and
// row statistics (one 4-byte copy by each of the first 2 * kStep threads).
template <int D, int kBlockThreads = kThreads>
__device__ void load_query_step_async(const AttentionArgs& args, const BlockCoords& coords, const bf16* dcontext,
                                      const float* logsumexp, const float* delta, int query0, bf16* q_tile,
                                      bf16* dout_tile, float* step_lse, float* step_delta) {
  static_assert(kBlockThreads >= 2 * kStep, "one row statistic a thread");
  const int seq_len = args.seq_len;
  load_tile_async<D, kBlockThreads>(q_tile, args.q + coords.qkv_offset, args.qkv_stride, query0, seq_len);
  load_tile_async<D, kBlockThreads>(dout_tile, dcontext + coords.hidden_offset, args.hidden, query0, seq_len);
  if (kBlockThreads > 2 * kStep && static_cast<int>(threadIdx.x) >= 2 * kStep) return;
  const int column = static_cast<int>(threadIdx.x) % kStep;
  const bool is_lse = static_cast<int>(threadIdx.x) < kStep, in_range = query0 + column < seq_len;
  const float* source = is_lse ? logsumexp : delta;
  if (in_range) source += static_cast<int64_t>(coords.batch_head) * seq_len + query0 + column;
  detail::async_copy_4((is_lse ? step_lse : step_delta) + column, source, in_range);
}

// Block-wide, for the dK/dV kernels: the Q and dO tiles of queries query0 .. query0 + 63 and their
// logsumexp and Delta (zeros past seq_len).
template <int D>
__device__ void load_query_step(const AttentionArgs& args, const BlockCoords& coords, const bf16* dcontext,
                                const float* logsumexp, const float* delta, int query0, bf16* q_tile, bf16* dout_tile,
                                float* step_lse, float* step_delta) {
  const int seq_len = args.seq_len;
  load_tile<D>(q_tile, args.q + coords.qkv_offset, args.qkv_stride, query0, seq_len);
  load_tile<D>(dout_tile, dcontext + coords.hidden_offset, args.hidden, query0, seq_len);
  const int64_t first = static_cast<int64_t>(coords.batch_head) * seq_len + query0;
  for (int c = threadIdx.x; c < kStep; c += kThreads) {
    const bool in_range = query0 + c < seq_len;
    step_lse[c] = in_range ? logsumexp[first + c] : 0.0f;
    step_delta[c] = in_range ? delta[first + c] : 0.0f;
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

// ---- forward kernel on mma.sync fragments (AttentionKernel::kMma) -----------------------------------

// ---- warp products on mma.sync fragments (kernels/cuda/mma_sync.cuh) -------------------------------------

// One warp: c[n] (n < kTiles, columns 8n .. 8n + 7) += A B^T, with A = the 16 rows a[0 .. 16)[0 .. D)
// and B^T's columns = the rows b[0 .. 8 kTiles)[0 .. D) (bf16 in shared memory, row stride kLd). Per
// k-step one ldmatrix_x4 for A and one per two column tiles of B: matrix j = lane / 8 of the latter is
// rows 16p + 8 (j / 2) .., columns 16kk + 8 (j % 2) ..
template <int D, int kTiles>
__device__ void warp_mma_abt(float (&c)[kTiles][4], const bf16* a, const bf16* b, int lane) {
  constexpr int ld = Tiles<D>::kLd;
  const int j = lane / 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a_fragment[4];
    detail::ldmatrix_x4(a_fragment, a + (lane % 16) * ld + kk * 16 + (lane / 16) * 8);
#pragma unroll
    for (int p = 0; p < kTiles / 2; ++p) {
      uint32_t b_fragment[4];
      detail::ldmatrix_x4(b_fragment, b + (16 * p + 8 * (j / 2) + lane % 8) * ld + 16 * kk + 8 * (j % 2));
      detail::mma_bf16_16816(c[2 * p], a_fragment, b_fragment[0], b_fragment[1]);
      detail::mma_bf16_16816(c[2 * p + 1], a_fragment, b_fragment[2], b_fragment[3]);
    }
  }
}

// One warp: c[n] (n < D / 8) += A B, with A in registers as the A operands of kSteps k-steps and B =
// the rows b[0 .. 16 kSteps)[0 .. D) (shared memory, row stride kLd), read transposed: matrix j of
// each ldmatrix_x4_trans is rows 16kk + 8 (j % 2) .., columns 16p + 8 (j / 2) ..
template <int D, int kSteps>
__device__ void warp_mma_ab(float (&c)[D / 8][4], const uint32_t (&a)[kSteps][4], const bf16* b, int lane) {
  constexpr int ld = Tiles<D>::kLd;
  const int j = lane / 8;
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk)
#pragma unroll
    for (int p = 0; p < D / 16; ++p) {
      uint32_t b_fragment[4];
      detail::ldmatrix_x4_trans(b_fragment, b + (16 * kk + 8 * (j % 2) + lane % 8) * ld + 16 * p + 8 * (j / 2));
      detail::mma_bf16_16816(c[2 * p], a[kk], b_fragment[0], b_fragment[1]);
      detail::mma_bf16_16816(c[2 * p + 1], a[kk], b_fragment[2], b_fragment[3]);
    }
}

template <int kTiles>
__device__ void zero_accumulators(float (&c)[kTiles][4]) {
#pragma unroll
  for (int n = 0; n < kTiles; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
}

// Accumulator tile n (rows g, g + 8; columns 2q, 2q + 1 of 8n ..) rounded to bf16 into the A operand
// of k-step n / 2: the accumulator of columns 16k .. 16k + 15 is the A layout of k-step k.
template <int kSteps>
__device__ void pack_a_operand(uint32_t (&a)[kSteps][4], int n, const float (&tile)[4]) {
  a[n / 2][2 * (n % 2)] = detail::pack_bf16x2(tile[0], tile[1]);
  a[n / 2][2 * (n % 2) + 1] = detail::pack_bf16x2(tile[2], tile[3]);
}

// One warp: its 16 x D mma accumulators (acc[n]: columns 8n..8n+7, rows g and g + 8), times
// row_scale[0] (row g) / row_scale[1] (row g + 8), rounded to bf16 into `rows` (the warp's own 16
// rows of a shared tile, row stride kLd, which no other warp reads), then rows first .. first + 15
// below seq_len stored to `dest` (row stride `stride`, 16-byte aligned rows) as 16-byte vectors.
template <int D>
__device__ void store_warp_accumulators(const float (&acc)[D / 8][4], const float (&row_scale)[2], bf16* rows,
                                        bf16* dest, int64_t stride, int first, int seq_len, int lane) {
  constexpr int ld = Tiles<D>::kLd, kChunks = D / 8;
  const int g = lane >> 2, q = lane & 3;
  __syncwarp();  // the warp's last reads of `rows` (its own ldmatrix loads) are done
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      *reinterpret_cast<uint32_t*>(rows + (g + 8 * r) * ld + 8 * n + 2 * q) =
          detail::pack_bf16x2(acc[n][2 * r] * row_scale[r], acc[n][2 * r + 1] * row_scale[r]);
  __syncwarp();
  for (int index = lane; index < kFrag * kChunks; index += 32) {
    const int row = index / kChunks, chunk = index % kChunks;
    if (first + row >= seq_len) continue;
    *reinterpret_cast<uint4*>(dest + static_cast<int64_t>(first + row) * stride + chunk * 8) =
        *reinterpret_cast<const uint4*>(rows + row * ld + chunk * 8);
  }
}

// This lane's dropout multipliers for key tile n of a step (keys first_key + 8n + 2q + {0, 1}) of its
// rows g (m[0], m[1]) and g + 8 (m[2], m[3]). When every row's element index is a multiple of 4 at
// key 0 (seq_len % 4 == 0: then so is (b*H + h)*S*S + query*S), the two lanes q and q^1 cover one Philox
// group of each row between them: each draws the group of one row and hands the other lane the two
// words it needs (one 64-bit shuffle), so the warp draws every group once. Otherwise each lane walks
// its own elements with two DropoutCursors. Warp-uniform (every lane calls it with the same n).
struct MmaDropout {
  DropoutCursor cursor[2];

  __device__ void multipliers(const DropoutSite& site, bool group_aligned, const uint64_t (&row_index)[2],
                              int first_key, int q, float (&m)[4]) {
    if (!site.enabled) {
      m[0] = m[1] = m[2] = m[3] = 1.0f;
      return;
    }
    if (!group_aligned) {
      for (int e = 0; e < 4; ++e)
        m[e] = cursor[e / 2].multiplier(site, row_index[e / 2] + static_cast<uint64_t>(first_key + 2 * q + e % 2));
      return;
    }
    const int drawn = q & 1;  // the row this lane draws: g (even q) or g + 8 (odd q)
    const uint64_t drawn_row = drawn ? row_index[1] : row_index[0];  // no dynamic register-array index
    const uint64_t group = (drawn_row + static_cast<uint64_t>(first_key + 4 * (q >> 1))) >> 2;
    const ops::Philox4x32Result random = ops::dropout_random_group(site.spec, group);
    // Even q needs words 0, 1 of both rows' groups, odd q words 2, 3.
    const uint32_t keep0 = drawn ? random.word[2] : random.word[0], keep1 = drawn ? random.word[3] : random.word[1];
    const uint32_t give0 = drawn ? random.word[0] : random.word[2], give1 = drawn ? random.word[1] : random.word[3];
    const uint64_t got = __shfl_xor_sync(kFullMask, (static_cast<uint64_t>(give1) << 32) | give0, 1);
    const uint32_t got0 = static_cast<uint32_t>(got), got1 = static_cast<uint32_t>(got >> 32);
    const uint32_t words[4] = {drawn ? got0 : keep0, drawn ? got1 : keep1, drawn ? keep0 : got0, drawn ? keep1 : got1};
    for (int e = 0; e < 4; ++e) m[e] = words[e] >= site.drop_below ? site.keep_scale : 0.0f;
  }
};

// Block: 64 queries of one (b, h), as the wmma kernel; warp w owns queries first_row + 16w .. +15 and
// keeps everything per query in registers, in the mma fragment layouts (kernels/cuda/mma_sync.cuh):
// the scores of a 64-key step as 8 accumulator tiles of 8 keys (warp_mma_abt: Q's A operands are
// reloaded from the warp's Q rows each step, D / 4 registers fewer than holding them), P~
// repacked from those accumulators straight into A operands (the accumulator of keys 16j..16j+15 is
// the A layout of k-step j), and O as D/8 accumulator tiles. Lane (g, q) holds rows g and g + 8 and,
// per 8-key tile, keys 2q and 2q + 1: row max and sum are reduced over the 4 lanes of a row with two
// shuffles, and l is kept per lane (its own keys) until the end. Shared memory holds only the Q, K and
// V tiles, the key flags and the keys' additive bias; O is staged through the warp's own Q rows for
// 16-byte stores.
// The softmax runs in base 2 (FlashAttention-2's trick): each score becomes s * scale * log2(e) +
// bias[key] in one FMA, bias 0 for an attended key and -inf for a padded one or one past seq_len
// (all-padding sequences: scale 0 and bias 0 below seq_len, i.e. uniform), and every exponential is
// one exp2f of a difference; the per-element mask tests and expf's range reduction are gone.
// logsumexp is stored in natural-log units, as the reference's: (m2 + log2(l)) * ln(2).
// ForwardMmaWarp is one warp's part of that, shared by the kernel and its persistent form below.
template <int D>
struct ForwardMmaWarp {
  static constexpr int kKeyTiles = kStep / 8;  // accumulator tiles of 8 keys per step

  float out[D / 8][4];
  float row_max[2];         // rows g and g + 8: running max of the base-2 scores
  float row_sum[2];         // this lane's keys only: sum of exp(s - row_max), undropped
  uint64_t dropout_row[2];  // element index of (query, key 0); meaningless past seq_len (never stored)
  MmaDropout dropout;
  int first_query;

  // The warp's queries first_row + 16 warp .. + 15 of (b, h) = batch_head.
  __device__ __forceinline__ void begin(int batch_head, int first_row, int seq_len, int warp, int g) {
    zero_accumulators(out);
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.0f;
    first_query = first_row + warp * kFrag;
    for (int r = 0; r < 2; ++r)
      dropout_row[r] = (static_cast<uint64_t>(batch_head) * seq_len + first_query + g + 8 * r) * seq_len;
  }

  // Keys key0 .. key0 + 63: warp_rows the warp's 16 Q rows, k_tile / v_tile the step's K and V tiles,
  // key_bias the sequence's additive bias (every key of the step's 64).
  __device__ __forceinline__ void key_step(const DropoutSite& site, bool group_aligned, const bf16* warp_rows,
                                           const bf16* k_tile, const bf16* v_tile, const float* key_bias,
                                           float scale_log2, int key0, int lane) {
    const int q = lane & 3;
    // S = Q K^T for keys key0 .. key0 + 63.
    float s[kKeyTiles][4];
    zero_accumulators(s);
    warp_mma_abt<D>(s, warp_rows, k_tile, lane);

    // Online softmax in base 2: s * scale * log2(e) + bias (0 attended, -inf padded or past seq_len).
    float step_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
      const float2 bias = *reinterpret_cast<const float2*>(key_bias + key0 + 8 * n + 2 * q);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = fmaf(s[n][e], scale_log2, (e & 1) ? bias.y : bias.x);
        step_max[e / 2] = fmaxf(step_max[e / 2], s[n][e]);
      }
    }
    float rescale[2], new_max[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      step_max[r] = fmaxf(step_max[r], __shfl_xor_sync(kFullMask, step_max[r], 1));
      step_max[r] = fmaxf(step_max[r], __shfl_xor_sync(kFullMask, step_max[r], 2));
      // new_max = -inf (no attended key yet): subtract 0 instead, so exp2(-inf - 0) = 0 and nothing
      // is accumulated (never exp2(-inf + inf) = NaN); row_max = -inf: exp2(-inf) = 0, as wanted.
      new_max[r] = fmaxf(row_max[r], step_max[r]);
      if (new_max[r] == -INFINITY) new_max[r] = 0.0f;
      rescale[r] = exp2f(row_max[r] - new_max[r]);
      row_max[r] = fmaxf(row_max[r], step_max[r]);
      row_sum[r] *= rescale[r];
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) out[n][e] *= rescale[e / 2];

    // P~ = exp(s - max) * dropout, packed into the A operands of the 4 k-steps of P~ V.
    uint32_t p_fragment[kKeyTiles / 2][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
      float multiplier[4];
      dropout.multipliers(site, group_aligned, dropout_row, key0 + 8 * n, q, multiplier);
      float kept[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float prob = exp2f(s[n][e] - new_max[e / 2]);  // 0 for a padded key
        row_sum[e / 2] += prob;
        kept[e] = prob * multiplier[e];
      }
      pack_a_operand(p_fragment, n, kept);
    }

    // O += P~ V
    warp_mma_ab<D>(out, p_fragment, v_tile, lane);
  }

  // After the last key step: the rows' logsumexp, and O / l (bf16) staged in the warp's own Q rows
  // (only it reads them) and stored to context (the (b, h)'s token 0, column h * D).
  __device__ __forceinline__ void finish(int batch_head, int seq_len, bf16* warp_rows, bf16* context, int64_t hidden,
                                         float* logsumexp, int lane) {
    const int g = lane >> 2, q = lane & 3;
    // Every row has an attended key (or all keys, all-padding), so its sum is >= 1 for rows < seq_len.
    float inverse_sum[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_sum[r] += __shfl_xor_sync(kFullMask, row_sum[r], 1);
      row_sum[r] += __shfl_xor_sync(kFullMask, row_sum[r], 2);
      inverse_sum[r] = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
      const int query = first_query + g + 8 * r;
      if (q == 0 && query < seq_len)
        logsumexp[static_cast<int64_t>(batch_head) * seq_len + query] = (row_max[r] + log2f(row_sum[r])) * kLn2;
    }
    store_warp_accumulators<D>(out, inverse_sum, warp_rows, context, hidden, first_query, seq_len, lane);
  }
};

template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_forward_mma_kernel(const AttentionArgs args, bf16* __restrict__ context, float* __restrict__ logsumexp) {
  using T = Tiles<D>;
  constexpr int ld = T::kLd;
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* q_tile = reinterpret_cast<bf16*>(shared);
  bf16* k_tiles = reinterpret_cast<bf16*>(shared + T::kTileBytes);      // [2]: key steps alternate
  bf16* v_tiles = reinterpret_cast<bf16*>(shared + 3 * T::kTileBytes);  // [2]
  unsigned char* key_flags = shared + 5 * T::kTileBytes;
  float* key_bias = reinterpret_cast<float*>(shared + 5 * T::kTileBytes + kKeyFlagBytes);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int seq_len = args.seq_len;
  const BlockCoords coords = block_coords<D>(args);
  const bf16* k_rows = args.k + coords.qkv_offset;
  const bf16* v_rows = args.v + coords.qkv_offset;
  // Q and the first K/V step in flight while the mask is read.
  load_tile_async<D>(q_tile, args.q + coords.qkv_offset, args.qkv_stride, coords.first_row, seq_len);
  load_tile_async<D>(k_tiles, k_rows, args.qkv_stride, 0, seq_len);
  load_tile_async<D>(v_tiles, v_rows, args.qkv_stride, 0, seq_len);
  detail::async_copy_commit();
  const KeyFlags keys = load_key_flags(args, coords.batch_head, key_flags);
  const int padded_keys = (seq_len + kStep - 1) / kStep * kStep;
  for (int key = threadIdx.x; key < padded_keys; key += kThreads) key_bias[key] = keys.attended(key) ? 0.0f : -INFINITY;
  const float scale_log2 = keys.all_padding ? 0.0f : args.scale * kLog2e;
  // (No barrier here: Q and the key bias are first read after the loop's first barrier, which
  // publishes them.)

  bf16* warp_rows = q_tile + warp * kFrag * ld;
  ForwardMmaWarp<D> rows;
  rows.begin(coords.batch_head, coords.first_row, seq_len, warp, lane >> 2);
  const bool group_aligned = (seq_len & 3) == 0;
  for (int key0 = 0, step = 0; key0 < seq_len; key0 += kStep, ++step) {
    // (The first step's barrier also publishes Q and the key bias.)
    const KeyValueTiles tiles =
        begin_key_step<D>(k_tiles, v_tiles, k_rows, v_rows, args.qkv_stride, key0, step, seq_len);
    rows.key_step(args.dropout, group_aligned, warp_rows, tiles.k, tiles.v, key_bias, scale_log2, key0, lane);
  }
  rows.finish(coords.batch_head, seq_len, warp_rows, context + coords.hidden_offset, args.hidden, logsumexp, lane);
}

// The same forward as a persistent kernel (KernelPaths::attention_persistent_forward): a grid of as
// many blocks as the device holds at once, block i walking items [items * i / grid, items * (i + 1) /
// grid) (an item is one block of attention_forward_mma_kernel: 64 queries of one (b, h)), and the
// K/V steps one double-buffered stream across its items: the next item's Q, first K/V step and mask
// row are in flight while the current item's last step computes, so no block starts on a cold load
// and none ends on an idle wait. At two steps a (b, h) (65..128 keys) the two K/V buffers hold all of
// the (b, h)'s keys, so its second item of queries finds them in place and copies none.
// Why: at BERT-base seq 128 (H200, 2026-12-04) the one-item blocks took 0.111 ms for 3,072 items,
// ~14 us per round of 396 blocks (3 an SM) against ~4 us of DRAM time and ~1 us of tensor-core work:
// each block's first step waits on its own Q/K/V loads and its last ends with the context stores,
// the two steps between them too few to hide either.
// Shared memory: Q, K and V double-buffered and two key-bias rows (items alternate): D = 32 / 64 /
// 128: 34 / 58 / 106 KB; with 128 / 158 / 172 registers (ptxas sm_90a, no spills) 4 / 3 / 2 blocks an
// SM, as the one-item kernel (bench_kernels prints what the device says). The bits are the one-item
// kernel's: the same ForwardMmaWarp steps in the same order on the same tiles.
constexpr int kMaskValuesPerThread = kMaxSeqLen / kThreads;

// This thread's keys threadIdx.x + kThreads i of batch_head's sequence: its mask value (1 without a
// mask), 0 at or past seq_len. Only loads: whoever waits for them is write_key_bias.
__device__ void load_mask_values(const AttentionArgs& args, int batch_head, int (&values)[kMaskValuesPerThread]) {
  const int32_t* mask_row =
      args.mask != nullptr ? args.mask + static_cast<int64_t>(batch_head / args.num_heads) * args.seq_len : nullptr;
#pragma unroll
  for (int i = 0; i < kMaskValuesPerThread; ++i) {
    const int key = static_cast<int>(threadIdx.x) + kThreads * i;
    values[i] = key < args.seq_len ? 1 : 0;
    if (key < args.seq_len && mask_row != nullptr) values[i] = mask_row[key];
  }
}

// bias[key] for this thread's keys below padded_keys: 0 attended, -inf not. Returns whether any of
// them is attended (the all-padding rule is applied by the caller, after a block-wide __syncthreads_or).
__device__ int write_key_bias(float* bias, const int (&values)[kMaskValuesPerThread], int padded_keys) {
  int any_attended = 0;
#pragma unroll
  for (int i = 0; i < kMaskValuesPerThread; ++i) {
    const int key = static_cast<int>(threadIdx.x) + kThreads * i;
    if (key >= padded_keys) break;
    const bool attended = values[i] != 0;
    bias[key] = attended ? 0.0f : -INFINITY;
    any_attended |= attended ? 1 : 0;
  }
  return any_attended;
}

template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_forward_persistent_mma_kernel(const AttentionArgs args, int items, bf16* __restrict__ context,
                                            float* __restrict__ logsumexp) {
  using T = Tiles<D>;
  constexpr int ld = T::kLd;
  constexpr size_t kTile = T::kTileElements;
  constexpr int kBiasFloats = kKeyBiasBytes / sizeof(float);
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* q_tiles = reinterpret_cast<bf16*>(shared);                           // [2]: items alternate
  bf16* k_tiles = reinterpret_cast<bf16*>(shared + 2 * T::kTileBytes);       // [2]: key steps alternate
  bf16* v_tiles = reinterpret_cast<bf16*>(shared + 4 * T::kTileBytes);       // [2]
  float* key_biases = reinterpret_cast<float*>(shared + 6 * T::kTileBytes);  // [2]: items alternate
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int seq_len = args.seq_len;
  const int steps = (seq_len + kStep - 1) / kStep, padded_keys = steps * kStep;
  const bool group_aligned = (seq_len & 3) == 0;
  const int first_item = static_cast<int>(static_cast<int64_t>(items) * blockIdx.x / gridDim.x);
  const int end_item = static_cast<int>(static_cast<int64_t>(items) * (blockIdx.x + 1) / gridDim.x);
  if (first_item >= end_item) return;  // (the launcher's grid is at most `items`)

  BlockCoords coords = item_coords<D>(args, first_item);
  // The first item's Q and first K/V step in flight while its mask is read.
  load_tile_async<D>(q_tiles, args.q + coords.qkv_offset, args.qkv_stride, coords.first_row, seq_len);
  load_tile_async<D>(k_tiles, args.k + coords.qkv_offset, args.qkv_stride, 0, seq_len);
  load_tile_async<D>(v_tiles, args.v + coords.qkv_offset, args.qkv_stride, 0, seq_len);
  detail::async_copy_commit();
  int mask_values[kMaskValuesPerThread];
  load_mask_values(args, coords.batch_head, mask_values);
  int any_attended = write_key_bias(key_biases, mask_values, padded_keys);

  int buffer = 0;         // the K/V buffers of the current step (steps alternate across items too)
  bool resident = false;  // this item's K/V steps are all in their buffers already (two steps, same (b, h))
  for (int item = first_item; item < end_item; ++item) {
    const int slot = (item - first_item) & 1;
    bf16* warp_rows = q_tiles + slot * kTile + warp * kFrag * ld;
    float* key_bias = key_biases + slot * kBiasFloats;
    const bool has_next = item + 1 < end_item;
    const BlockCoords next = item_coords<D>(args, has_next ? item + 1 : item);
    const bool next_resident = has_next && steps == 2 && next.batch_head == coords.batch_head;
    ForwardMmaWarp<D> rows;
    rows.begin(coords.batch_head, coords.first_row, seq_len, warp, lane >> 2);
    float scale_log2 = 0.0f;
    for (int step = 0; step < steps; ++step, buffer ^= 1) {
      detail::async_copy_wait<0>();
      if (step == 0) {
        // The barrier that publishes the item's Q, first K/V step and key bias also says whether its
        // sequence attends to any key; if not, to every key below seq_len alike (a second barrier).
        const bool all_padding = __syncthreads_or(any_attended) == 0;
        if (all_padding) {
          for (int key = threadIdx.x; key < seq_len; key += kThreads) key_bias[key] = 0.0f;
          __syncthreads();
        }
        scale_log2 = all_padding ? 0.0f : args.scale * kLog2e;
      } else {
        __syncthreads();
      }
      // Every warp is done with the other buffers (the previous step's K/V; the previous item's Q
      // and key bias): the next step's copies go there, this item's next K/V step or the next item's
      // first, in flight while this step computes.
      const int other = buffer ^ 1;
      if (step + 1 < steps) {
        if (!resident) {
          load_tile_async<D>(k_tiles + other * kTile, args.k + coords.qkv_offset, args.qkv_stride, (step + 1) * kStep,
                             seq_len);
          load_tile_async<D>(v_tiles + other * kTile, args.v + coords.qkv_offset, args.qkv_stride, (step + 1) * kStep,
                             seq_len);
          detail::async_copy_commit();
        }
      } else if (has_next) {
        load_tile_async<D>(q_tiles + (slot ^ 1) * kTile, args.q + next.qkv_offset, args.qkv_stride, next.first_row,
                           seq_len);
        if (!next_resident) {
          load_tile_async<D>(k_tiles + other * kTile, args.k + next.qkv_offset, args.qkv_stride, 0, seq_len);
          load_tile_async<D>(v_tiles + other * kTile, args.v + next.qkv_offset, args.qkv_stride, 0, seq_len);
        }
        detail::async_copy_commit();
        load_mask_values(args, next.batch_head, mask_values);
      }
      rows.key_step(args.dropout, group_aligned, warp_rows, k_tiles + buffer * kTile, v_tiles + buffer * kTile,
                    key_bias, scale_log2, step * kStep, lane);
    }
    if (has_next) any_attended = write_key_bias(key_biases + (slot ^ 1) * kBiasFloats, mask_values, padded_keys);
    rows.finish(coords.batch_head, seq_len, warp_rows, context + coords.hidden_offset, args.hidden, logsumexp, lane);
    coords = next;
    resident = next_resident;
  }
}

// ---- backward kernels ---------------------------------------------------------------------------------------

// delta[(b*H + h)*S + i] = sum_d dO[t, h*D + d] * O[t, h*D + d], t = b*S + i. D / 8 threads per
// (t, h), each one 16-byte load of dO and one of O (every thread's loads in flight at once: ~64 KB an
// SM, where a warp per (t, h) with 4-byte loads had ~16 KB and waited on DRAM latency), the eight
// products summed in order, then the group's sums by shuffles (a fixed order: the same bits every run).
template <int D>
__global__ void attention_delta_kernel(const bf16* __restrict__ dcontext, const bf16* __restrict__ context,
                                       int64_t rows, int seq_len, int num_heads, float* __restrict__ delta) {
  constexpr int kLanes = D / detail::kVectorWidth;  // 4 / 8 / 16 threads per row: groups never straddle a warp
  static_assert(kLanes <= 32 && 32 % kLanes == 0, "a row's threads lie in one warp");
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = thread / kLanes;  // token * H + head: the row of [tokens * H, D]
  const int part = static_cast<int>(thread % kLanes);
  float sum = 0.0f;
  if (row < rows) {
    float g[detail::kVectorWidth], o[detail::kVectorWidth];
    const int64_t offset = row * D + part * detail::kVectorWidth;
    detail::load_bf16x8(dcontext + offset, g);
    detail::load_bf16x8(context + offset, o);
#pragma unroll
    for (int e = 0; e < detail::kVectorWidth; ++e) sum += g[e] * o[e];
  }
  // Every lane of the warp takes part (rows past the end add zeros), so the full mask is exact.
#pragma unroll
  for (int width = kLanes / 2; width > 0; width /= 2) sum += __shfl_xor_sync(kFullMask, sum, width);
  if (row < rows && part == 0) {
    const int64_t token = row / num_heads, batch = token / seq_len, position = token % seq_len;
    const int head = static_cast<int>(row % num_heads);
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
  const float uniform_prob = 1.0f / static_cast<float>(seq_len);

  FragAcc dk_acc[D / kFrag], dv_acc[D / kFrag];
#pragma unroll
  for (int n = 0; n < D / kFrag; ++n) {
    wmma::fill_fragment(dk_acc[n], 0.0f);
    wmma::fill_fragment(dv_acc[n], 0.0f);
  }

  for (int query0 = 0; query0 < seq_len; query0 += kStep) {
    __syncthreads();  // every warp is done with the previous Q/dO tiles and row statistics
    load_query_step<D>(args, coords, dcontext, logsumexp, delta, query0, q_tile, dout_tile, step_lse, step_delta);
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

// ---- backward kernels on mma.sync fragments (AttentionKernel::kMma) ----------------------------------------

// dK/dV: this lane's dropout multipliers for query tile n of a half step: m[2r + e] is the element of
// key key_row + 8r (key_row = the warp's first key + g) and query first_query + 2q + e. An element's
// index is (b*H + h)*S*S + query*S + key, so for a fixed query 4 consecutive keys share a Philox group.
// When seq_len % 4 == 0 (then every such group starts at a key that is a multiple of 4), the lanes
// i = g % 4 = 0..3 of equal q and g / 4 hold keys 4(g / 4) + i of the same queries: lane i draws the
// group of (row r = i / 2, query e = i % 2) and three shuffles hand each lane its word of the other
// three groups, so the warp draws every group once. Otherwise one Philox call per element.
// Warp-uniform (every lane calls it with the same arguments but its own lane).
__device__ uint32_t word_of(const uint32_t (&words)[4], int index) {  // no dynamic register-array index
  return index == 0 ? words[0] : index == 1 ? words[1] : index == 2 ? words[2] : words[3];
}

__device__ void dkdv_dropout_multipliers(const DropoutSite& site, bool group_aligned, uint64_t batch_head_row,
                                         int seq_len, int first_query, int key_row, int lane, float (&m)[4]) {
  if (!site.enabled) {
    m[0] = m[1] = m[2] = m[3] = 1.0f;
    return;
  }
  const int q = lane & 3;
  const auto element = [&](int r, int e) {  // (b*H + h)*S*S + query*S + key
    return (batch_head_row + static_cast<uint64_t>(first_query + 2 * q + e)) * static_cast<uint64_t>(seq_len) +
           static_cast<uint64_t>(key_row + 8 * r);
  };
  uint32_t word[4];
  if (!group_aligned) {
    for (int k = 0; k < 4; ++k) {
      const uint64_t index = element(k / 2, k % 2);
      const ops::Philox4x32Result random = ops::dropout_random_group(site.spec, index >> 2);
      word[k] = word_of(random.word, static_cast<int>(index & 3));
    }
  } else {
    const int i = (lane >> 2) & 3;  // = g % 4: this lane's key within its group, and the group it draws
    const ops::Philox4x32Result drawn = ops::dropout_random_group(site.spec, (element(i / 2, i % 2) - i) >> 2);
    uint32_t got[4];
    got[0] = word_of(drawn.word, i);
#pragma unroll
    for (int t = 1; t < 4; ++t)  // from lane i ^ t: word i of the group of (row (i ^ t) / 2, query (i ^ t) % 2)
      got[t] = __shfl_xor_sync(kFullMask, word_of(drawn.word, i ^ t), t << 2);
#pragma unroll
    for (int k = 0; k < 4; ++k) word[k] = word_of(got, i ^ k);
  }
  for (int k = 0; k < 4; ++k) m[k] = word[k] >= site.drop_below ? site.keep_scale : 0.0f;
}

// The dK/dV work of one warp of the mma backward kernels: the warp's 16 keys (K and V rows in shared
// memory), their dK and dV accumulators, and one query step at a time. Per step (Q/dO tiles and their
// logsumexp/Delta in shared memory) each half step of 32 queries computes S^T = K Q^T and
// dP~^T = V dO^T into accumulators (keys as rows: K and V A operands by ldmatrix_x4 of the warp's own
// rows, Q and dO B operands as the forward's K), forms (P keep)^T and dS^T in registers, repacks them
// as A operands and accumulates dV += (P keep)^T dO and dK += dS^T Q (dO and Q B operands by
// ldmatrix_x4_trans). Half steps keep S^T and dP~^T at 16 registers each beside dK and dV (D registers).
// With a dS^T sink (the fused kernel) the bf16 dS^T of the step also goes to shared memory, as the A
// operands hold it: row key, column query - first query of the step.
template <int D>
struct DkDvWarp {
  static constexpr int kHalf = kStep / 2;        // queries per half step
  static constexpr int kQueryTiles = kHalf / 8;  // accumulator tiles of 8 queries per half step
  const bf16* k_rows;                            // the warp's 16 K rows (shared memory, row stride Tiles<D>::kLd)
  const bf16* v_rows;                            // the same of V
  int first_key;                                 // of the warp's 16
  int lane;
  bool key_attended[2];  // keys first_key + g and first_key + g + 8
  float dk[D / 8][4];
  float dv[D / 8][4];

  __device__ DkDvWarp(const bf16* k, const bf16* v, int first, const KeyFlags& keys, int lane_index)
      : k_rows(k), v_rows(v), first_key(first), lane(lane_index) {
    const int g = lane >> 2;
    key_attended[0] = keys.attended(first_key + g);
    key_attended[1] = keys.attended(first_key + g + 8);
    zero_accumulators(dk);
    zero_accumulators(dv);
  }

  // Queries query0 .. query0 + 63 (q_tile, dout_tile: [64][kLd]; step_lse, step_delta: [64], zeros
  // past seq_len). dscores_t: nullptr, or the warp's 16 rows of a bf16 [keys][kStep] dS^T tile with
  // row stride ds_ld.
  __device__ void query_step(const AttentionArgs& args, const KeyFlags& keys, int batch_head, int query0,
                             const bf16* q_tile, const bf16* dout_tile, const float* step_lse, const float* step_delta,
                             bf16* dscores_t, int ds_ld) {
    constexpr int ld = Tiles<D>::kLd;
    const int g = lane >> 2, q = lane & 3;
    const int seq_len = args.seq_len;
    const float uniform_prob = 1.0f / static_cast<float>(seq_len);
    const float scale_log2 = args.scale * kLog2e;  // P = exp2(s * scale * log2(e) - lse * log2(e))
    const uint64_t batch_head_row = static_cast<uint64_t>(batch_head) * static_cast<uint64_t>(seq_len);
    const bool group_aligned = (seq_len & 3) == 0;
#pragma unroll 1
    for (int half = 0; half < 2; ++half) {
      const int first_column = half * kHalf;  // of the step's 64 queries
      // S^T = K Q^T and dP~^T = V dO^T over the half step's queries.
      float st[kQueryTiles][4], dpt[kQueryTiles][4];
      zero_accumulators(st);
      zero_accumulators(dpt);
      warp_mma_abt<D>(st, k_rows, q_tile + first_column * ld, lane);
      warp_mma_abt<D>(dpt, v_rows, dout_tile + first_column * ld, lane);

      // (P keep)^T and dS^T (ops.h: all-padding rows are uniform and pass no gradient to q or k).
      uint32_t kept_fragment[kQueryTiles / 2][4], dscore_fragment[kQueryTiles / 2][4];
#pragma unroll
      for (int n = 0; n < kQueryTiles; ++n) {
        float multiplier[4];
        dkdv_dropout_multipliers(args.dropout, group_aligned, batch_head_row, seq_len, query0 + first_column + 8 * n,
                                 first_key + g, lane, multiplier);
        float kept[4], dscore[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = first_column + 8 * n + 2 * q + (e & 1);
          kept[e] = dscore[e] = 0.0f;
          if (query0 + c < seq_len && key_attended[e / 2]) {
            const float prob =
                keys.all_padding ? uniform_prob : exp2f(fmaf(st[n][e], scale_log2, -step_lse[c] * kLog2e));
            if (prob != 0.0f) {
              kept[e] = prob * multiplier[e];
              if (!keys.all_padding) dscore[e] = args.scale * prob * (dpt[n][e] * multiplier[e] - step_delta[c]);
            }
          }
        }
        pack_a_operand(kept_fragment, n, kept);
        pack_a_operand(dscore_fragment, n, dscore);
      }
      if (dscores_t != nullptr) {
        // Tile n's registers: rows g and g + 8, queries 8n + 2q, +1 of the half step (pack_a_operand).
#pragma unroll
        for (int n = 0; n < kQueryTiles; ++n)
#pragma unroll
          for (int r = 0; r < 2; ++r)
            *reinterpret_cast<uint32_t*>(dscores_t + (g + 8 * r) * ds_ld + first_column + 8 * n + 2 * q) =
                dscore_fragment[n / 2][2 * (n % 2) + r];
      }

      // dV += (P keep)^T dO, dK += dS^T Q
      warp_mma_ab<D>(dv, kept_fragment, dout_tile + first_column * ld, lane);
      warp_mma_ab<D>(dk, dscore_fragment, q_tile + first_column * ld, lane);
    }
  }

  // dK and dV staged in the warp's K and V rows (which no other warp may read any more), then stored to
  // rows first_key .. first_key + 15 below seq_len of dk_rows / dv_rows (row stride `stride`).
  __device__ void store(bf16* k_staging, bf16* v_staging, bf16* dk_rows, bf16* dv_rows, int64_t stride,
                        int seq_len) const {
    const float one[2] = {1.0f, 1.0f};
    store_warp_accumulators<D>(dk, one, k_staging, dk_rows, stride, first_key, seq_len, lane);
    store_warp_accumulators<D>(dv, one, v_staging, dv_rows, stride, first_key, seq_len, lane);
  }
};

// dK and dV: block and warps own 64 and 16 keys as the wmma kernel's; each warp walks the query steps
// with DkDvWarp, the steps' Q/dO tiles and row statistics double-buffered with cp.async.
template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_mma_kernel(const AttentionArgs args, const bf16* __restrict__ dcontext,
                                       const float* __restrict__ logsumexp, const float* __restrict__ delta,
                                       bf16* __restrict__ dk, bf16* __restrict__ dv) {
  using T = Tiles<D>;
  constexpr int ld = T::kLd;
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* k_tile = reinterpret_cast<bf16*>(shared);
  bf16* v_tile = reinterpret_cast<bf16*>(shared + T::kTileBytes);
  bf16* q_tiles = reinterpret_cast<bf16*>(shared + 2 * T::kTileBytes);      // [2]: query steps alternate
  bf16* dout_tiles = reinterpret_cast<bf16*>(shared + 4 * T::kTileBytes);   // [2]
  float* step_lses = reinterpret_cast<float*>(shared + 6 * T::kTileBytes);  // [2][kStep]
  float* step_deltas = reinterpret_cast<float*>(shared + 6 * T::kTileBytes + 2 * kRowStatBytes);  // [2][kStep]
  unsigned char* key_flags = shared + 6 * T::kTileBytes + 4 * kRowStatBytes;
  constexpr int kRowStatFloats = kRowStatBytes / sizeof(float);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int seq_len = args.seq_len;
  const BlockCoords coords = block_coords<D>(args);
  // K, V and the first query step in flight while the mask is read.
  load_tile_async<D>(k_tile, args.k + coords.qkv_offset, args.qkv_stride, coords.first_row, seq_len);
  load_tile_async<D>(v_tile, args.v + coords.qkv_offset, args.qkv_stride, coords.first_row, seq_len);
  load_query_step_async<D>(args, coords, dcontext, logsumexp, delta, 0, q_tiles, dout_tiles, step_lses, step_deltas);
  detail::async_copy_commit();
  const KeyFlags keys = load_key_flags(args, coords.batch_head, key_flags);
  bf16* warp_k = k_tile + warp * kFrag * ld;
  bf16* warp_v = v_tile + warp * kFrag * ld;
  DkDvWarp<D> work(warp_k, warp_v, coords.first_row + warp * kFrag, keys, lane);

  for (int query0 = 0, step = 0; query0 < seq_len; query0 += kStep, ++step) {
    // This thread's copies of the step have landed; the barrier publishes everyone's (the first time
    // also K and V) and frees the other buffers, which every warp is done with.
    detail::async_copy_wait<0>();
    __syncthreads();
    const int buffer = step & 1, next = buffer ^ 1;
    if (query0 + kStep < seq_len) {  // the next step in flight while this one computes
      load_query_step_async<D>(args, coords, dcontext, logsumexp, delta, query0 + kStep,
                               q_tiles + next * T::kTileElements, dout_tiles + next * T::kTileElements,
                               step_lses + next * kRowStatFloats, step_deltas + next * kRowStatFloats);
      detail::async_copy_commit();
    }
    work.query_step(args, keys, coords.batch_head, query0, q_tiles + buffer * T::kTileElements,
                    dout_tiles + buffer * T::kTileElements, step_lses + buffer * kRowStatFloats,
                    step_deltas + buffer * kRowStatFloats, nullptr, 0);
  }

  // Only this warp reads its K and V rows: they stage dK and dV.
  work.store(warp_k, warp_v, dk + coords.qkv_offset, dv + coords.qkv_offset, args.qkv_stride, seq_len);
}

// The whole backward of one (b, h) with seq_len <= kFusedMaxKeys in one block: dK, dV and dQ in one
// pass over the queries, no atomics and no recomputation. The block's kKeyWarps warps own 16 keys
// each, all of the sequence's keys (K and V resident in shared memory), and walk the 64-query steps
// with DkDvWarp (as the dK/dV kernel), which also writes the step's dS^T into a shared [keys][64] tile.
// After a barrier the tile holds the step's dS for every key: the warps then share
// dQ[64 queries][D] = dS K (A operands from the dS^T tile by ldmatrix_x4_trans, K's B operands as
// the dQ kernel's), warp w computing queries 16 (w % 4) .. +15 and a 1 / (kKeyWarps / 4) share of D,
// and store it (staged in the step's Q tile, free by then). Each dQ element is one warp's sum over
// the keys in order: deterministic, as the two-kernel path.
// Why: the two-kernel path's dQ kernel recomputes S and dP~ (and the dropout mask) to avoid atomics,
// 7 S x S x D products instead of 5, and each kernel loads the other side's tiles once per 64-row
// block of its own side (Q, K, V and dO three times per (b, h) at S = 128). Here each is loaded once and the products
// are FlashAttention-2's 5, at the cost of one more barrier per query step and one block (kKeyWarps warps) per (b, h).
template <int D, int kKeyWarps>
struct FusedBackwardLayout {
  using T = Tiles<D>;
  static constexpr int kKeys = kFrag * kKeyWarps;  // keys (and K/V rows) a block holds
  static constexpr int kKeyTiles = kKeys / kBlockRows;
  static constexpr int kDsLd = kStep + 8;  // bf16 dS^T [kKeys][kStep]: 16-byte padded rows for ldmatrix
  static constexpr size_t kKeyValueBytes = 2 * kKeyTiles * T::kTileBytes;
  static constexpr size_t kQueryBytes = 4 * T::kTileBytes;  // Q and dO, two buffers each
  static constexpr size_t kDsBytes = align_up(size_t{kKeys} * kDsLd * sizeof(bf16));
  static constexpr size_t kBytes = kKeyValueBytes + kQueryBytes + 4 * kRowStatBytes + kDsBytes + kKeyFlagBytes;
  // Blocks an SM the registers are bounded for (0: no bound, ptxas's choice): 8 warps at D <= 64 in 128
  // registers (ptxas sm_90a, D = 32 / 64: 127 / 163 unbounded, no spills bounded), so 2 blocks (16
  // warps; 91.5 KB of shared memory each at D = 64) where the kernel pair ran 12 warps. At D = 128 that
  // bound spilled ~900 bytes. 4 warps are unbounded (164 registers at D = 64: 3 blocks an SM; with an
  // explicit 1 ptxas chose differently and spilled 36 bytes at D = 128).
  static constexpr int kMinBlocks = D <= 64 && kKeyWarps == 8 ? 2 : 0;
};

template <int D, int kKeyWarps>
__global__ void __launch_bounds__(32 * kKeyWarps, FusedBackwardLayout<D, kKeyWarps>::kMinBlocks)
    attention_backward_fused_mma_kernel(const AttentionArgs args, const bf16* __restrict__ dcontext,
                                        const float* __restrict__ logsumexp, const float* __restrict__ delta,
                                        bf16* __restrict__ dq, bf16* __restrict__ dk, bf16* __restrict__ dv) {
  using T = Tiles<D>;
  using L = FusedBackwardLayout<D, kKeyWarps>;
  static_assert(kKeyWarps == 4 || kKeyWarps == 8, "64 or 128 keys a block");
  constexpr int kBlockThreads = 32 * kKeyWarps;
  constexpr int ld = T::kLd, ds_ld = L::kDsLd;
  constexpr int kWarpsPerQueryTile = kKeyWarps / 4;  // warps sharing one 16-query tile of dQ
  constexpr int kColumns = D / kWarpsPerQueryTile;   // dQ columns a warp computes
  static_assert(kColumns % 16 == 0, "whole ldmatrix_x4_trans loads of K");
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* k_tile = reinterpret_cast<bf16*>(shared);  // [kKeys][ld]
  bf16* v_tile = reinterpret_cast<bf16*>(shared + L::kKeyValueBytes / 2);
  bf16* q_tiles = reinterpret_cast<bf16*>(shared + L::kKeyValueBytes);                         // [2]
  bf16* dout_tiles = reinterpret_cast<bf16*>(shared + L::kKeyValueBytes + 2 * T::kTileBytes);  // [2]
  float* step_lses = reinterpret_cast<float*>(shared + L::kKeyValueBytes + L::kQueryBytes);    // [2][kStep]
  float* step_deltas = step_lses + 2 * (kRowStatBytes / sizeof(float));                        // [2][kStep]
  bf16* dscores_t = reinterpret_cast<bf16*>(shared + L::kKeyValueBytes + L::kQueryBytes + 4 * kRowStatBytes);
  unsigned char* key_flags = shared + L::kKeyValueBytes + L::kQueryBytes + 4 * kRowStatBytes + L::kDsBytes;
  constexpr int kRowStatFloats = kRowStatBytes / sizeof(float);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, q = lane & 3;

  const int seq_len = args.seq_len;                  // <= kKeys (the launcher's choice)
  const BlockCoords coords = block_coords<D>(args);  // row_blocks == 1: first_row 0
  // K and V (all the block's keys) and the first query step in flight while the mask is read.
#pragma unroll 1
  for (int t = 0; t < L::kKeyTiles; ++t) {
    load_tile_async<D, kBlockThreads>(k_tile + t * T::kTileElements, args.k + coords.qkv_offset, args.qkv_stride,
                                      t * kBlockRows, seq_len);
    load_tile_async<D, kBlockThreads>(v_tile + t * T::kTileElements, args.v + coords.qkv_offset, args.qkv_stride,
                                      t * kBlockRows, seq_len);
  }
  load_query_step_async<D, kBlockThreads>(args, coords, dcontext, logsumexp, delta, 0, q_tiles, dout_tiles, step_lses,
                                          step_deltas);
  detail::async_copy_commit();
  const KeyFlags keys = load_key_flags<kBlockThreads>(args, coords.batch_head, key_flags);
  // (Tile t's 64 rows follow tile t - 1's: kTileBytes is exactly 64 padded rows.)
  static_assert(T::kTileBytes == size_t{kBlockRows} * ld * sizeof(bf16), "K and V rows are contiguous");
  bf16* warp_k = k_tile + warp * kFrag * ld;
  bf16* warp_v = v_tile + warp * kFrag * ld;
  DkDvWarp<D> work(warp_k, warp_v, warp * kFrag, keys, lane);
  // This warp's share of dQ: queries 16 * query_tile .. +15 of each step, columns first_column ..
  const int query_tile = warp % 4, first_column = (warp / 4) * kColumns;

  for (int query0 = 0, step = 0; query0 < seq_len; query0 += kStep, ++step) {
    // This thread's copies of the step have landed; the barrier publishes everyone's (the first time
    // also K and V) and frees the other buffers and the dS^T tile, which every warp is done with.
    detail::async_copy_wait<0>();
    __syncthreads();
    const int buffer = step & 1, next = buffer ^ 1;
    bf16* q_tile = q_tiles + buffer * T::kTileElements;
    if (query0 + kStep < seq_len) {  // the next step in flight while this one computes
      load_query_step_async<D, kBlockThreads>(args, coords, dcontext, logsumexp, delta, query0 + kStep,
                                              q_tiles + next * T::kTileElements, dout_tiles + next * T::kTileElements,
                                              step_lses + next * kRowStatFloats, step_deltas + next * kRowStatFloats);
      detail::async_copy_commit();
    }
    work.query_step(args, keys, coords.batch_head, query0, q_tile, dout_tiles + buffer * T::kTileElements,
                    step_lses + buffer * kRowStatFloats, step_deltas + buffer * kRowStatFloats,
                    dscores_t + warp * kFrag * ds_ld, ds_ld);
    __syncthreads();  // every key's dS^T of the step is in the tile; nobody reads the step's Q any more

    // dQ[16 queries][kColumns] = dS K over all the block's keys, 16 a k-step. A operand of k-step kk:
    // dS[query][key] = dS^T[key][query], the transposed 8x8 matrices j of the tile's rows
    // 16kk + 8 (j / 2) .., columns 16 query_tile + 8 (j % 2) ..
    const int j = lane / 8;
    float acc[kColumns / 8][4];
    zero_accumulators(acc);
#pragma unroll
    for (int kk = 0; kk < L::kKeys / 16; ++kk) {
      uint32_t a[4];
      detail::ldmatrix_x4_trans(a,
                                dscores_t + (16 * kk + 8 * (j / 2) + lane % 8) * ds_ld + 16 * query_tile + 8 * (j % 2));
#pragma unroll
      for (int p = 0; p < kColumns / 16; ++p) {
        uint32_t b[4];
        detail::ldmatrix_x4_trans(
            b, k_tile + (16 * kk + 8 * (j % 2) + lane % 8) * ld + first_column + 16 * p + 8 * (j / 2));
        detail::mma_bf16_16816(acc[2 * p], a, b[0], b[1]);
        detail::mma_bf16_16816(acc[2 * p + 1], a, b[2], b[3]);
      }
    }
    // Staged as bf16 in the step's Q tile (rows 16 query_tile.., this warp's columns), then stored as
    // 16-byte vectors, rows below seq_len.
    bf16* staging = q_tile + 16 * query_tile * ld + first_column;
#pragma unroll
    for (int n = 0; n < kColumns / 8; ++n)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        *reinterpret_cast<uint32_t*>(staging + (g + 8 * r) * ld + 8 * n + 2 * q) =
            detail::pack_bf16x2(acc[n][2 * r], acc[n][2 * r + 1]);
    __syncwarp();
    constexpr int kChunks = kColumns / 8;
    const int first_query = query0 + 16 * query_tile;
    bf16* dq_rows = dq + coords.qkv_offset + first_column;
    for (int index = lane; index < kFrag * kChunks; index += 32) {
      const int row = index / kChunks, chunk = index % kChunks;
      if (first_query + row >= seq_len) continue;
      *reinterpret_cast<uint4*>(dq_rows + static_cast<int64_t>(first_query + row) * args.qkv_stride + chunk * 8) =
          *reinterpret_cast<const uint4*>(staging + row * ld + chunk * 8);
    }
  }

  __syncthreads();  // every warp's last dQ product is done reading K: the warps' K rows stage dK
  work.store(warp_k, warp_v, dk + coords.qkv_offset, dv + coords.qkv_offset, args.qkv_stride, seq_len);
}

// dQ: block and warps own 64 and 16 queries as the forward's. Per 64-key step: S = Q K^T and
// dP~ = dO V^T into accumulators (Q and dO A operands reloaded by ldmatrix each step, K and V B
// operands as the forward's K), dS in registers (dropout as the forward's), repacked as A operands,
// and dQ += dS K (K's B operands by ldmatrix_x4_trans). All-padding sequences: dQ = 0 exactly.
template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_mma_kernel(const AttentionArgs args, const bf16* __restrict__ dcontext,
                                     const float* __restrict__ logsumexp, const float* __restrict__ delta,
                                     bf16* __restrict__ dq) {
  using T = Tiles<D>;
  constexpr int ld = T::kLd;
  constexpr int kKeyTiles = kStep / 8;
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* q_tile = reinterpret_cast<bf16*>(shared);
  bf16* dout_tile = reinterpret_cast<bf16*>(shared + T::kTileBytes);
  bf16* k_tiles = reinterpret_cast<bf16*>(shared + 2 * T::kTileBytes);  // [2]: key steps alternate
  bf16* v_tiles = reinterpret_cast<bf16*>(shared + 4 * T::kTileBytes);  // [2]
  unsigned char* key_flags = shared + 6 * T::kTileBytes;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, q = lane & 3;

  const int seq_len = args.seq_len;
  const BlockCoords coords = block_coords<D>(args);
  const bf16* k_rows = args.k + coords.qkv_offset;
  const bf16* v_rows = args.v + coords.qkv_offset;
  // Q, dO and the first K/V step in flight while the mask is read.
  load_tile_async<D>(q_tile, args.q + coords.qkv_offset, args.qkv_stride, coords.first_row, seq_len);
  load_tile_async<D>(dout_tile, dcontext + coords.hidden_offset, args.hidden, coords.first_row, seq_len);
  load_tile_async<D>(k_tiles, k_rows, args.qkv_stride, 0, seq_len);
  load_tile_async<D>(v_tiles, v_rows, args.qkv_stride, 0, seq_len);
  detail::async_copy_commit();
  const KeyFlags keys = load_key_flags(args, coords.batch_head, key_flags);
  const int first_query = coords.first_row + warp * kFrag;
  bf16* warp_q = q_tile + warp * kFrag * ld;
  bf16* warp_dout = dout_tile + warp * kFrag * ld;

  float dq_acc[D / 8][4];
  zero_accumulators(dq_acc);

  // keys.all_padding is uniform over the block.
  if (keys.all_padding) {
    // Nothing to compute, but the copies must land before the warps stage dQ in the Q tile's rows,
    // which other threads' copies target: every thread's wait, then the barrier.
    detail::async_copy_wait<0>();
    __syncthreads();
  } else {
    bool in_range[2];
    float lse[2], dout_dot_out[2];
    uint64_t dropout_row[2];
    for (int r = 0; r < 2; ++r) {
      const int query = first_query + g + 8 * r;
      in_range[r] = query < seq_len;
      const int64_t stat_index = static_cast<int64_t>(coords.batch_head) * seq_len + query;
      lse[r] = in_range[r] ? logsumexp[stat_index] * kLog2e : 0.0f;  // base 2, as the scores below
      dout_dot_out[r] = in_range[r] ? delta[stat_index] : 0.0f;
      dropout_row[r] = static_cast<uint64_t>(stat_index) * seq_len;
    }
    const bool group_aligned = (seq_len & 3) == 0;
    const float scale_log2 = args.scale * kLog2e;  // P = exp2(s * scale * log2(e) - lse * log2(e))
    MmaDropout dropout;

    for (int key0 = 0, step = 0; key0 < seq_len; key0 += kStep, ++step) {
      // (The first step's barrier also publishes Q and dO.)
      const KeyValueTiles tiles =
          begin_key_step<D>(k_tiles, v_tiles, k_rows, v_rows, args.qkv_stride, key0, step, seq_len);
      const bf16* k_tile = tiles.k;
      const bf16* v_tile = tiles.v;

      // S = Q K^T and dP~ = dO V^T over the step's keys.
      float s[kKeyTiles][4], dp[kKeyTiles][4];
      zero_accumulators(s);
      zero_accumulators(dp);
      warp_mma_abt<D>(s, warp_q, k_tile, lane);
      warp_mma_abt<D>(dp, warp_dout, v_tile, lane);

      uint32_t dscore_fragment[kKeyTiles / 2][4];
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
        float multiplier[4];
        dropout.multipliers(args.dropout, group_aligned, dropout_row, key0 + 8 * n, q, multiplier);
        float dscore[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          dscore[e] = 0.0f;
          if (in_range[e / 2] && keys.attended(key0 + 8 * n + 2 * q + (e & 1))) {
            const float prob = exp2f(fmaf(s[n][e], scale_log2, -lse[e / 2]));
            if (prob != 0.0f) dscore[e] = args.scale * prob * (dp[n][e] * multiplier[e] - dout_dot_out[e / 2]);
          }
        }
        pack_a_operand(dscore_fragment, n, dscore);
      }

      // dQ += dS K
      warp_mma_ab<D>(dq_acc, dscore_fragment, k_tile, lane);
    }
  }

  // dQ staged in the warp's own Q rows (only it reads them), then stored.
  const float one[2] = {1.0f, 1.0f};
  store_warp_accumulators<D>(dq_acc, one, warp_q, dq + coords.qkv_offset, args.qkv_stride, first_query, seq_len, lane);
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
void launch_forward(Context& ctx, const AttentionShape& shape, const AttentionArgs& args, AttentionKernel kernel,
                    bf16* context, float* logsumexp) {
  const bool mma = kernel == AttentionKernel::kMma || kernel == AttentionKernel::kMmaRecomputeDq;
  if (mma && ctx.kernel_paths().attention_persistent_forward) {
    constexpr size_t bytes = Tiles<D>::kForwardPersistentBytes;
    const void* function = reinterpret_cast<const void*>(&attention_forward_persistent_mma_kernel<D>);
    CUDA_CHECK(cudaFuncSetAttribute(function, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    // Blocks an SM: a property of the kernel and the architecture, asked once.
    static const int blocks_per_sm = [function] {
      int blocks = 0;
      CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, function, kThreads, bytes));
      return blocks;
    }();
    const unsigned items = grid_blocks(shape, args);
    int64_t blocks = int64_t{std::max(blocks_per_sm, 1)} * std::max(ctx.multiprocessors(), 1);
    if (ctx.persistent_grid_limit() > 0) blocks = std::min<int64_t>(blocks, ctx.persistent_grid_limit());
    blocks = std::min<int64_t>(blocks, items);
    attention_forward_persistent_mma_kernel<D><<<static_cast<unsigned>(blocks), kThreads, bytes, ctx.stream()>>>(
        args, static_cast<int>(items), context, logsumexp);
  } else if (mma) {
    constexpr size_t bytes = Tiles<D>::kForwardMmaBytes;
    CUDA_CHECK(cudaFuncSetAttribute(attention_forward_mma_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
    attention_forward_mma_kernel<D>
        <<<grid_blocks(shape, args), kThreads, bytes, ctx.stream()>>>(args, context, logsumexp);
  } else {
    constexpr size_t bytes = Tiles<D>::kForwardBytes;
    CUDA_CHECK(cudaFuncSetAttribute(attention_forward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
    attention_forward_kernel<D><<<grid_blocks(shape, args), kThreads, bytes, ctx.stream()>>>(args, context, logsumexp);
  }
  CUDA_CHECK_LAUNCH();
}

template <int D>
void launch_backward(Context& ctx, const AttentionShape& shape, const AttentionArgs& args, AttentionKernel kernel,
                     const bf16* dcontext, const float* logsumexp, const float* delta, bf16* dq, bf16* dk, bf16* dv) {
  using T = Tiles<D>;
  const unsigned blocks = grid_blocks(shape, args);
  const auto allow = [](const void* function, size_t bytes) {
    CUDA_CHECK(cudaFuncSetAttribute(function, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  };
  if (kernel == AttentionKernel::kMma && args.seq_len <= kFusedMaxKeys && ctx.kernel_paths().attention_fused_backward) {
    // One block (b, h) with all its keys: 4 warps up to 64 keys, 8 up to 128.
    AttentionArgs fused = args;
    fused.row_blocks = 1;
    const auto launch = [&](auto key_warps) {
      constexpr int kKeyWarps = decltype(key_warps)::value;
      constexpr size_t bytes = FusedBackwardLayout<D, kKeyWarps>::kBytes;
      allow(reinterpret_cast<const void*>(&attention_backward_fused_mma_kernel<D, kKeyWarps>), bytes);
      attention_backward_fused_mma_kernel<D, kKeyWarps>
          <<<static_cast<unsigned>(shape.batch * shape.num_heads), 32 * kKeyWarps, bytes, ctx.stream()>>>(
              fused, dcontext, logsumexp, delta, dq, dk, dv);
    };
    if (args.seq_len <= kBlockRows)
      launch(std::integral_constant<int, 4>{});
    else
      launch(std::integral_constant<int, 8>{});
  } else if (kernel == AttentionKernel::kMma || kernel == AttentionKernel::kMmaRecomputeDq) {
    allow(reinterpret_cast<const void*>(&attention_backward_dkdv_mma_kernel<D>), T::kDkDvMmaBytes);
    allow(reinterpret_cast<const void*>(&attention_backward_dq_mma_kernel<D>), T::kDqMmaBytes);
    attention_backward_dkdv_mma_kernel<D>
        <<<blocks, kThreads, T::kDkDvMmaBytes, ctx.stream()>>>(args, dcontext, logsumexp, delta, dk, dv);
    CUDA_CHECK_LAUNCH();
    attention_backward_dq_mma_kernel<D>
        <<<blocks, kThreads, T::kDqMmaBytes, ctx.stream()>>>(args, dcontext, logsumexp, delta, dq);
  } else {
    allow(reinterpret_cast<const void*>(&attention_backward_dkdv_kernel<D>), T::kDkDvBytes);
    allow(reinterpret_cast<const void*>(&attention_backward_dq_kernel<D>), T::kDqBytes);
    attention_backward_dkdv_kernel<D>
        <<<blocks, kThreads, T::kDkDvBytes, ctx.stream()>>>(args, dcontext, logsumexp, delta, dk, dv);
    CUDA_CHECK_LAUNCH();
    attention_backward_dq_kernel<D>
        <<<blocks, kThreads, T::kDqBytes, ctx.stream()>>>(args, dcontext, logsumexp, delta, dq);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

KernelResources kernel_resources(const void* function, std::string name, int threads, size_t dynamic_shared_bytes) {
  KernelResources resources;
  resources.name = std::move(name);
  resources.threads = threads;
  resources.dynamic_shared_bytes = dynamic_shared_bytes;
  CUDA_CHECK(cudaFuncSetAttribute(function, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(dynamic_shared_bytes)));
  cudaFuncAttributes attributes{};
  CUDA_CHECK(cudaFuncGetAttributes(&attributes, function));
  resources.registers = attributes.numRegs;
  resources.static_shared_bytes = attributes.sharedSizeBytes;
  resources.local_bytes = attributes.localSizeBytes;
  CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resources.blocks_per_sm, function, threads, dynamic_shared_bytes));
  return resources;
}

std::vector<KernelResources> attention_kernel_resources() {
  std::vector<KernelResources> all;
  const auto add = [&all](auto head_dim) {
    constexpr int D = decltype(head_dim)::value;
    using T = Tiles<D>;
    // "name<D>" or "name<D, warps>" (snprintf: GCC 12's -Wrestrict misfires on chains of string +).
    const auto kernel = [&all](auto function, const char* name, int warps, size_t bytes) {
      char text[96];
      if (warps > 0)
        std::snprintf(text, sizeof(text), "%s<%d, %d>", name, D, warps);
      else
        std::snprintf(text, sizeof(text), "%s<%d>", name, D);
      all.push_back(
          kernel_resources(reinterpret_cast<const void*>(function), text, 32 * (warps > 0 ? warps : kWarps), bytes));
    };
    kernel(&attention_forward_kernel<D>, "attention_forward_kernel", 0, T::kForwardBytes);
    kernel(&attention_forward_mma_kernel<D>, "attention_forward_mma_kernel", 0, T::kForwardMmaBytes);
    kernel(&attention_forward_persistent_mma_kernel<D>, "attention_forward_persistent_mma_kernel", 0,
           T::kForwardPersistentBytes);
    kernel(&attention_backward_dkdv_kernel<D>, "attention_backward_dkdv_kernel", 0, T::kDkDvBytes);
    kernel(&attention_backward_dq_kernel<D>, "attention_backward_dq_kernel", 0, T::kDqBytes);
    kernel(&attention_backward_dkdv_mma_kernel<D>, "attention_backward_dkdv_mma_kernel", 0, T::kDkDvMmaBytes);
    kernel(&attention_backward_dq_mma_kernel<D>, "attention_backward_dq_mma_kernel", 0, T::kDqMmaBytes);
    kernel(&attention_backward_fused_mma_kernel<D, 4>, "attention_backward_fused_mma_kernel", 4,
           FusedBackwardLayout<D, 4>::kBytes);
    kernel(&attention_backward_fused_mma_kernel<D, 8>, "attention_backward_fused_mma_kernel", 8,
           FusedBackwardLayout<D, 8>::kBytes);
  };
  add(std::integral_constant<int, 32>{});
  add(std::integral_constant<int, 64>{});
  add(std::integral_constant<int, 128>{});
  return all;
}

void attention_forward(Context& ctx, const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v,
                       const int32_t* attention_mask, const DropoutSpec& dropout, bf16* context, float* logsumexp,
                       AttentionKernel kernel) {
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
      launch_forward<32>(ctx, shape, args, kernel, context, logsumexp);
      break;
    case 64:
      launch_forward<64>(ctx, shape, args, kernel, context, logsumexp);
      break;
    default:
      launch_forward<128>(ctx, shape, args, kernel, context, logsumexp);
      break;
  }
}

void attention_backward(Context& ctx, const AttentionShape& shape, const bf16* dcontext, const bf16* q, const bf16* k,
                        const bf16* v, const int32_t* attention_mask, const DropoutSpec& dropout, const bf16* context,
                        const float* logsumexp, bf16* dq, bf16* dk, bf16* dv, AttentionKernel kernel) {
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
  auto launch_delta = [&](auto head_dim) {
    constexpr int kHeadDim = decltype(head_dim)::value;
    const int64_t threads = rows * (kHeadDim / detail::kVectorWidth);
    attention_delta_kernel<kHeadDim>
        <<<static_cast<unsigned>((threads + kDeltaThreads - 1) / kDeltaThreads), kDeltaThreads, 0, ctx.stream()>>>(
            dcontext, context, rows, args.seq_len, args.num_heads, delta);
    CUDA_CHECK_LAUNCH();
  };
  if (shape.head_dim == 32)
    launch_delta(std::integral_constant<int, 32>());
  else if (shape.head_dim == 64)
    launch_delta(std::integral_constant<int, 64>());
  else
    launch_delta(std::integral_constant<int, 128>());

  switch (shape.head_dim) {
    case 32:
      launch_backward<32>(ctx, shape, args, kernel, dcontext, logsumexp, delta, dq, dk, dv);
      break;
    case 64:
      launch_backward<64>(ctx, shape, args, kernel, dcontext, logsumexp, delta, dq, dk, dv);
      break;
    default:
      launch_backward<128>(ctx, shape, args, kernel, dcontext, logsumexp, delta, dq, dk, dv);
      break;
  }
}

}  // namespace bert::cuda
