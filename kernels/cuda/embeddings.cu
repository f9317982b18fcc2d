// BERT embeddings fused with their LayerNorm (HF BertEmbeddings without the dropout; CUDA backend,
// the reference is kernels/cpu/embeddings.cpp, the semantics kernels/ops.h):
// out[t] = LN((word[input_ids[t]] + token_type[token_type_ids[t]]) + position[t % seq_len]).
// input_ids/token_type_ids int32 [batch, seq_len] (token_type_ids nullptr = all type 0); tables and
// gamma/beta bf16; out bf16 [tokens, hidden]; mean/rstd fp32 [tokens]; table, gamma and beta
// gradients fp32, accumulated (+=). All math in fp32, in the CPU's order ((word + type) + position).
//
// Forward: one warp per token gathers the three rows and normalises them (two-pass statistics; the
// rows held in registers up to hidden 1,024, else re-read from L1), 128-bit loads when hidden % 8 == 0
// and every pointer is 16-byte aligned.
// Backward, all deterministic (no float atomics; the same bits every run for a given input):
//   1. dz = the LayerNorm input gradient, fp32 [tokens, ld] in ctx.scratch (ld = hidden rounded up
//      to 4, padding zeroed, so later passes use float4 loads), and dgamma/dbeta: on the 128-bit path
//      up to hidden 1,024 the fused LayerNorm backward of common.cuh (one pass over the rows writing
//      dz and per-block partials), otherwise one warp per token for dz and a column pass for the
//      partials; then a fixed-order sum of the partials, as layernorm.cu.
//   2. d_position[s] += sum over b = 0..batch-1 in order of dz[b * seq_len + s]. With at most 4 token
//      types (BERT has 2) the same pass sums each type's rows of position s into a partial
//      [type, seq_len, hidden], and a fixed-order sum over s adds them to d_token_type: no sort.
//   3. d_word: cub::DeviceRadixSort (stable) sorts (id, token) pairs, which groups the tokens by id
//      in token order. Blocks take 32 sorted positions each: a run of one id that lies wholly inside
//      a block is summed in order and added to its table row directly (no other block touches that
//      row); a run cut by a block boundary leaves its in-order partial sum in a slot of the block,
//      and the block where the id's run starts adds those slots in block order. Row padding_idx is
//      skipped. A larger type table: the same over the sorted type ids (or all 0 without type ids).
// ctx.kernel_paths() can send the embeddings to the kernels the fused ones replaced
// (layernorm_fused_backward: the dz and column passes; embeddings_direct_type_gradient: the sorted
// scatter for the type table too), which bench_kernels times beside them ("_baseline" cases). The
// two paths add in different orders, so their last bits may differ.
// Id range policy: the CPU throws on an out-of-range id; a device-side check cannot throw, and the
// ops_cuda.h contract has no error output. The loader produces ids from the tokenizer's vocabulary
// and the engine validates its config (vocab_size, type_vocab_size) on the host, so range is the
// caller's guarantee. As a guard against silent corruption, every kernel that indexes a table with an
// id checks the range and executes __trap() when it is violated: the launch fails, and the next
// CUDA_CHECK throws CudaError (the CUDA context is then unusable, as for any device fault). Ids are
// never clamped.
//
// Napkin math (BERT-base, 4096 tokens x 768; bf16 rows 1.5 KB; H100 ~3.3 TB/s):
//   forward: gathers 3 rows (6 B/element, the tables mostly L2-resident for repeated ids: word
//   table 47 MB, position and type tables tiny) and writes 2 B/element: ~25 MB, ~8 us.
//   backward: step 1 reads dout + 3 gathered rows, writes fp32 dz: ~12 B/element (38 MB); steps 2
//   and 3 read dz twice (25 MB) plus a radix sort of 4096 keys (~10 us, launch bound): ~65 MB moved,
//   ~25-40 us in all. Scratch: tokens x ld x 4 B (12.6 MB here) plus small partials and the sort's
//   buffers.
//   Measured on an H200 (2026-12-04, 16k tokens, before the fused dz pass and the direct type
//   gradient): 0.356 ms, 10% of copy bandwidth. Napkin for why: the type table's two keys made two
//   runs of ~8k sorted tokens, each cut by ~256 blocks of 32, and one block per run and column tile
//   walked all ~256 slots in a loop whose every step waited on the next key's load (~0.3 us of L2
//   latency a step: ~80 us); on top, a second radix sort and scatter, and dgamma/dbeta re-reading
//   dout and the gathered rows in a column pass (~50 MB). Not timed yet.
#include <algorithm>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

namespace {

using namespace detail;  // kernels/cuda/common.cuh

constexpr int kScatterChunk = 32;  // sorted positions per block of the table scatter
static_assert(kScatterChunk <= kColumnThreads, "a scatter block loads its chunk's keys one per thread");

// The three table rows of one token: a row of z for the shared LayerNorm kernels (common.cuh).
struct TokenRows {
  const bf16* word;
  const bf16* type;
  const bf16* position;

  // z[j] = (word[j] + type[j]) + position[j], the CPU's order.
  __device__ __forceinline__ float load(int64_t j) const {
    return (__bfloat162float(word[j]) + __bfloat162float(type[j])) + __bfloat162float(position[j]);
  }
  __device__ __forceinline__ void load8(int64_t j, float (&z)[kVectorWidth]) const {
    float type_values[kVectorWidth], position_values[kVectorWidth];
    load_bf16x8(word + j, z);
    load_bf16x8(type + j, type_values);
    load_bf16x8(position + j, position_values);
#pragma unroll
    for (int i = 0; i < kVectorWidth; ++i) z[i] = (z[i] + type_values[i]) + position_values[i];
  }
};

// The table rows tokens read: the Rows source of the shared LayerNorm kernels.
struct EmbeddingInputs {
  const int32_t* input_ids;
  const int32_t* token_type_ids;  // nullptr: type 0
  const bf16* word;
  const bf16* position;
  const bf16* token_type;
  int64_t seq_len, vocab_size, type_vocab_size;

  // The three rows (of `hidden` elements) of token t; an out-of-range id traps (see the policy in
  // the header).
  __device__ __forceinline__ TokenRows row(int64_t t, int64_t hidden) const {
    const int32_t id = input_ids[t];
    const int32_t type = token_type_ids != nullptr ? token_type_ids[t] : 0;
    if (id < 0 || id >= vocab_size || type < 0 || type >= type_vocab_size) __trap();
    return TokenRows{word + static_cast<int64_t>(id) * hidden, token_type + static_cast<int64_t>(type) * hidden,
                     position + (t % seq_len) * hidden};
  }
};

// dz: fp32 [tokens, ld], the padding columns [hidden, ld) zeroed (the Out sink of the shared kernel).
struct PaddedFloatRows {
  float* data;
  int64_t ld;
  struct Row {
    float* data;
    int64_t ld, hidden;
    __device__ __forceinline__ void store(int64_t j, float value) const { data[j] = value; }
    __device__ __forceinline__ void store8(int64_t j, const float (&values)[kVectorWidth]) const {
      // ld == hidden here (a multiple of 8), so both halves are 16-byte aligned.
      *reinterpret_cast<float4*>(data + j) = make_float4(values[0], values[1], values[2], values[3]);
      *reinterpret_cast<float4*>(data + j + 4) = make_float4(values[4], values[5], values[6], values[7]);
    }
    __device__ __forceinline__ void pad(int lane) const {
      for (int64_t j = hidden + lane; j < ld; j += kWarpSize) data[j] = 0.0f;
    }
  };
  __device__ __forceinline__ Row row(int64_t t, int64_t hidden) const { return Row{data + t * ld, ld, hidden}; }
};

__device__ __forceinline__ void add4(float4& sum, const float4& value) {
  sum.x += value.x;
  sum.y += value.y;
  sum.z += value.z;
  sum.w += value.w;
}

// row[column .. column + 3] += value, the columns past `hidden` (ld padding) dropped.
__device__ __forceinline__ void add_to_row(float* row, int64_t column, int64_t hidden, const float4& value) {
  const float parts[4] = {value.x, value.y, value.z, value.w};
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (column + i < hidden) row[column + i] += parts[i];
}

// Token-type tables up to this size get their gradient from the position kernel's pass over dz (no
// sort); larger ones go through the sorted scatter as the word table does.
constexpr int64_t kDirectTypes = 4;

// row[column .. column + 3] = value, the columns past `hidden` dropped (row 16-byte aligned when
// hidden % 4 == 0).
__device__ __forceinline__ void store_to_row(float* row, int64_t column, int64_t hidden, const float4& value) {
  if (hidden % 4 == 0) {
    *reinterpret_cast<float4*>(row + column) = value;
    return;
  }
  const float parts[4] = {value.x, value.y, value.z, value.w};
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (column + i < hidden) row[column + i] = parts[i];
}

// Block (position s, column tile of float4s): d_position[s] += the sum over b = 0..batch-1 in order
// of dz[b * seq_len + s]. kTypePartials: the same pass also sums, for each type k below
// type_vocab_size (<= kDirectTypes), the rows whose token has type k (type 0 without type ids) into
// type_partial[k, s, 0..hidden), for accumulate_partials_kernel to add over s in order.
template <bool kTypePartials>
__global__ void __launch_bounds__(kColumnThreads)
    position_grad_kernel(int64_t batch, int64_t seq_len, int64_t hidden, int64_t ld, const float* dz,
                         const int32_t* token_type_ids, int64_t type_vocab_size, float* d_position,
                         float* type_partial) {
  const int64_t s = blockIdx.x;
  const int64_t column = (static_cast<int64_t>(blockIdx.y) * kColumnThreads + threadIdx.x) * 4;
  if (column >= ld) return;
  float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float4 type_sums[kTypePartials ? kDirectTypes : 1];
#pragma unroll
  for (auto& type_sum : type_sums) type_sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // 8 rows' loads in flight a thread: the grid is only seq_len x column tiles blocks of 2 warps.
#pragma unroll 8
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t t = b * seq_len + s;
    const float4 value = *reinterpret_cast<const float4*>(dz + t * ld + column);
    add4(sum, value);
    if constexpr (kTypePartials) {
      const int32_t type = token_type_ids != nullptr ? token_type_ids[t] : 0;
#pragma unroll
      for (int k = 0; k < kDirectTypes; ++k)
        if (type == k) add4(type_sums[k], value);
    }
  }
  add_to_row(d_position + s * hidden, column, hidden, sum);
  if constexpr (kTypePartials) {
#pragma unroll
    for (int k = 0; k < kDirectTypes; ++k)
      if (k < type_vocab_size) store_to_row(type_partial + (k * seq_len + s) * hidden, column, hidden, type_sums[k]);
  }
}

__global__ void iota_kernel(int64_t count, uint32_t* values) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) values[i] = static_cast<uint32_t>(i);
}

// Scatter step 1. Block (chunk of kScatterChunk sorted positions, column tile of float4s). Each
// maximal run of one key inside the chunk is summed in sorted (= token) order. A run that is the
// key's whole segment is added to its table row here; a run cut by the chunk's start goes to
// slot_first[chunk], one cut only by the chunk's end to slot_last[chunk]. Runs of skip_key are ignored.
__global__ void __launch_bounds__(kColumnThreads)
    segment_partial_sums_kernel(int64_t tokens, int64_t hidden, int64_t ld, const uint32_t* sorted_keys,
                                const uint32_t* sorted_tokens, const float* dz, int64_t skip_key, float* table,
                                float* slot_first, float* slot_last) {
  __shared__ uint32_t keys[kScatterChunk];
  __shared__ uint32_t token_of[kScatterChunk];
  const int64_t chunk = blockIdx.x;
  const int64_t begin = chunk * kScatterChunk;
  const int count = static_cast<int>(tokens - begin < kScatterChunk ? tokens - begin : kScatterChunk);
  if (static_cast<int>(threadIdx.x) < count) {
    keys[threadIdx.x] = sorted_keys[begin + threadIdx.x];
    token_of[threadIdx.x] = sorted_tokens[begin + threadIdx.x];
  }
  __syncthreads();
  const int64_t column = (static_cast<int64_t>(blockIdx.y) * kColumnThreads + threadIdx.x) * 4;
  if (column >= ld) return;  // after the only barrier
  const bool continues_before = begin > 0 && sorted_keys[begin - 1] == keys[0];
  const bool continues_after = begin + count < tokens && sorted_keys[begin + count] == keys[count - 1];

  float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  int run_begin = 0;
  for (int i = 0; i < count; ++i) {
    const uint32_t key = keys[i];
    const bool skip = static_cast<int64_t>(key) == skip_key;
    if (!skip) add4(sum, *reinterpret_cast<const float4*>(dz + static_cast<int64_t>(token_of[i]) * ld + column));
    if (i + 1 < count && keys[i + 1] == key) continue;
    // [run_begin, i] is a maximal run of `key` in this chunk.
    if (!skip) {
      const bool open_begin = run_begin == 0 && continues_before;
      const bool open_end = i + 1 == count && continues_after;
      if (!open_begin && !open_end)
        add_to_row(table + static_cast<int64_t>(key) * hidden, column, hidden, sum);
      else
        *reinterpret_cast<float4*>((run_begin == 0 ? slot_first : slot_last) + chunk * ld + column) = sum;
    }
    sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    run_begin = i + 1;
  }
}

// Scatter step 2. The block of the chunk where a cut segment starts adds the segment's slots in
// chunk order: its own slot (slot_first if the segment starts at the chunk's start, else
// slot_last), then slot_first of every following chunk that starts with the same key.
__global__ void __launch_bounds__(kColumnThreads)
    segment_combine_kernel(int64_t tokens, int64_t hidden, int64_t ld, const uint32_t* sorted_keys, int64_t skip_key,
                           const float* slot_first, const float* slot_last, float* table) {
  const int64_t chunk = blockIdx.x;
  const int64_t begin = chunk * kScatterChunk;
  const int64_t end = begin + kScatterChunk;
  if (end >= tokens) return;  // the last chunk's runs cannot continue
  const uint32_t key = sorted_keys[end - 1];
  if (sorted_keys[end] != key) return;  // the chunk's last run ends inside it
  if (static_cast<int64_t>(key) == skip_key) return;
  int64_t run_begin = end - 1;
  while (run_begin > begin && sorted_keys[run_begin - 1] == key) --run_begin;
  if (run_begin == begin && begin > 0 && sorted_keys[begin - 1] == key) return;  // an earlier chunk combines it
  const int64_t column = (static_cast<int64_t>(blockIdx.y) * kColumnThreads + threadIdx.x) * 4;
  if (column >= ld) return;

  const float* own_slot = run_begin == begin ? slot_first : slot_last;
  float4 sum = *reinterpret_cast<const float4*>(own_slot + chunk * ld + column);
  for (int64_t next = begin + kScatterChunk; next < tokens && sorted_keys[next] == key; next += kScatterChunk)
    add4(sum, *reinterpret_cast<const float4*>(slot_first + (next / kScatterChunk) * ld + column));
  add_to_row(table + static_cast<int64_t>(key) * hidden, column, hidden, sum);
}

// ----------------------------------------------------------------------------------------------------

// Bits that hold every key in [0, count): the radix sort skips the rest.
int key_bits(int64_t count) {
  int bits = 1;
  while (bits < 32 && (int64_t{1} << bits) < count) ++bits;
  return bits;
}

void check_shape(const EmbeddingShape& shape, const char* op) {
  require(
      shape.batch >= 0 && shape.seq_len > 0 && shape.hidden > 0 && shape.vocab_size > 0 && shape.type_vocab_size > 0,
      op, "need batch >= 0 and seq_len, hidden, vocab_size, type_vocab_size > 0");
  require(shape.seq_len <= shape.max_position_embeddings, op,
          "seq_len " + std::to_string(shape.seq_len) + " exceeds max_position_embeddings " +
              std::to_string(shape.max_position_embeddings));
  require(shape.tokens() <= INT32_MAX, op, "more than 2^31 - 1 tokens in one call");
  require(shape.vocab_size <= INT32_MAX && shape.type_vocab_size <= INT32_MAX, op,
          "vocab_size / type_vocab_size beyond int32 ids");
  check_column_tiles(shape.hidden, "hidden", op);
}

EmbeddingInputs make_inputs(const EmbeddingShape& shape, const int32_t* input_ids, const int32_t* token_type_ids,
                            const bf16* word, const bf16* position, const bf16* token_type) {
  EmbeddingInputs in;
  in.input_ids = input_ids;
  in.token_type_ids = token_type_ids;
  in.word = word;
  in.position = position;
  in.token_type = token_type;
  in.seq_len = shape.seq_len;
  in.vocab_size = shape.vocab_size;
  in.type_vocab_size = shape.type_vocab_size;
  return in;
}

// Carves one ctx.scratch() region into 256-byte aligned arrays.
class ScratchLayout {
 public:
  size_t take(size_t bytes) {
    const size_t offset = (total_ + 255) / 256 * 256;
    total_ = offset + bytes;
    return offset;
  }
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

size_t radix_sort_bytes(Context& ctx, int num_items, int bits) {
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                             static_cast<uint32_t*>(nullptr), static_cast<const uint32_t*>(nullptr),
                                             static_cast<uint32_t*>(nullptr), num_items, 0, bits, ctx.stream()));
  return bytes;
}

// embeddings_layernorm_backward's one ctx.scratch() region, carved into 256-byte aligned arrays: the
// byte offsets and the total, for the op and for embeddings_layernorm_backward_scratch_bytes.
struct BackwardScratch {
  int64_t ld = 0;            // dz's row stride (float4 passes)
  int64_t param_chunks = 0;  // dgamma/dbeta partial rows: the fused backward's blocks, or the column pass's chunks
  size_t sort_bytes = 0;     // CUB's temporary storage for the larger of the sorts
  size_t dz_at = 0, param_partials_at = 0, type_partial_at = 0, slot_first_at = 0, slot_last_at = 0, iota_at = 0,
         sorted_keys_at = 0, sorted_tokens_at = 0, sort_temp_at = 0, total = 0;
};

BackwardScratch plan_backward_scratch(Context& ctx, const EmbeddingShape& shape, bool fused, bool direct_types,
                                      bool sort_types) {
  const int64_t tokens = shape.tokens(), hidden = shape.hidden;
  BackwardScratch plan;
  plan.ld = (hidden + 3) / 4 * 4;
  plan.param_chunks = fused ? layernorm_backward_fused_blocks(tokens) : ceil_div(tokens, rows_per_chunk(tokens));
  const int64_t scatter_chunks = ceil_div(tokens, kScatterChunk);
  const int num_items = static_cast<int>(tokens);
  plan.sort_bytes = std::max(radix_sort_bytes(ctx, num_items, key_bits(shape.vocab_size)),
                             sort_types ? radix_sort_bytes(ctx, num_items, key_bits(shape.type_vocab_size)) : 0);
  ScratchLayout layout;
  plan.dz_at = layout.take(static_cast<size_t>(tokens * plan.ld) * sizeof(float));
  plan.param_partials_at = layout.take(2 * static_cast<size_t>(plan.param_chunks * hidden) * sizeof(float));
  plan.type_partial_at = layout.take(
      direct_types ? static_cast<size_t>(shape.type_vocab_size * shape.seq_len * hidden) * sizeof(float) : 0);
  plan.slot_first_at = layout.take(static_cast<size_t>(scatter_chunks * plan.ld) * sizeof(float));
  plan.slot_last_at = layout.take(static_cast<size_t>(scatter_chunks * plan.ld) * sizeof(float));
  plan.iota_at = layout.take(static_cast<size_t>(tokens) * sizeof(uint32_t));
  plan.sorted_keys_at = layout.take(static_cast<size_t>(tokens) * sizeof(uint32_t));
  plan.sorted_tokens_at = layout.take(static_cast<size_t>(tokens) * sizeof(uint32_t));
  plan.sort_temp_at = layout.take(plan.sort_bytes);
  plan.total = layout.total();
  return plan;
}

// table[key] += sum of dz[token] over the (key, token) pairs, sorted by key and then token.
void scatter_sorted(Context& ctx, int64_t tokens, int64_t hidden, int64_t ld, const uint32_t* sorted_keys,
                    const uint32_t* sorted_tokens, const float* dz, int64_t skip_key, float* table, float* slot_first,
                    float* slot_last) {
  const dim3 grid(static_cast<unsigned>(ceil_div(tokens, kScatterChunk)),
                  static_cast<unsigned>(ceil_div(ld / 4, kColumnThreads)));
  segment_partial_sums_kernel<<<grid, kColumnThreads, 0, ctx.stream()>>>(tokens, hidden, ld, sorted_keys, sorted_tokens,
                                                                         dz, skip_key, table, slot_first, slot_last);
  CUDA_CHECK_LAUNCH();
  segment_combine_kernel<<<grid, kColumnThreads, 0, ctx.stream()>>>(tokens, hidden, ld, sorted_keys, skip_key,
                                                                    slot_first, slot_last, table);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void embeddings_layernorm_forward(Context& ctx, const EmbeddingShape& shape, const int32_t* input_ids,
                                  const int32_t* token_type_ids, const bf16* word_embeddings,
                                  const bf16* position_embeddings, const bf16* token_type_embeddings, const bf16* gamma,
                                  const bf16* beta, float eps, bf16* out, float* mean, float* rstd) {
  constexpr const char* kOp = "embeddings_layernorm_forward";
  check_shape(shape, kOp);
  const int64_t tokens = shape.tokens();
  if (tokens == 0) return;
  require(input_ids && word_embeddings && position_embeddings && token_type_embeddings && gamma && beta && out &&
              mean && rstd,
          kOp, "a required pointer is null (only token_type_ids may be)");
  const EmbeddingInputs in =
      make_inputs(shape, input_ids, token_type_ids, word_embeddings, position_embeddings, token_type_embeddings);
  const bool vectorized = shape.hidden % kVectorWidth == 0 && aligned16(word_embeddings) &&
                          aligned16(position_embeddings) && aligned16(token_type_embeddings) && aligned16(gamma) &&
                          aligned16(beta) && aligned16(out);
  launch_layernorm_rows_forward(ctx.stream(), vectorized, ctx.kernel_paths().layernorm_resident_forward, tokens,
                                shape.hidden, in, gamma, beta, eps, out, mean, rstd);
  CUDA_CHECK_LAUNCH();
}

size_t embeddings_layernorm_backward_scratch_bytes(Context& ctx, const EmbeddingShape& shape, bool token_type_ids) {
  check_shape(shape, "embeddings_layernorm_backward_scratch_bytes");
  if (shape.tokens() == 0) return 0;
  size_t most = 0;
  for (const bool fused : {false, shape.hidden <= kFusedMaxCols})
    for (const bool direct_types : {false, shape.type_vocab_size <= kDirectTypes})
      most =
          std::max(most, plan_backward_scratch(ctx, shape, fused, direct_types, token_type_ids && !direct_types).total);
  return most;
}

void embeddings_layernorm_backward(Context& ctx, const EmbeddingShape& shape, const bf16* dout,
                                   const int32_t* input_ids, const int32_t* token_type_ids, const bf16* word_embeddings,
                                   const bf16* position_embeddings, const bf16* token_type_embeddings,
                                   const bf16* gamma, const float* mean, const float* rstd, float* d_word_embeddings,
                                   float* d_position_embeddings, float* d_token_type_embeddings, float* dgamma,
                                   float* dbeta) {
  constexpr const char* kOp = "embeddings_layernorm_backward";
  check_shape(shape, kOp);
  const int64_t tokens = shape.tokens(), hidden = shape.hidden;
  if (tokens == 0) return;
  require(dout && input_ids && word_embeddings && position_embeddings && token_type_embeddings && gamma && mean &&
              rstd && d_word_embeddings && d_position_embeddings && d_token_type_embeddings && dgamma && dbeta,
          kOp, "a required pointer is null (only token_type_ids may be)");
  const EmbeddingInputs in =
      make_inputs(shape, input_ids, token_type_ids, word_embeddings, position_embeddings, token_type_embeddings);
  const bool vectorized = hidden % kVectorWidth == 0 && aligned16(dout) && aligned16(word_embeddings) &&
                          aligned16(position_embeddings) && aligned16(token_type_embeddings) && aligned16(gamma);
  const KernelPaths& paths = ctx.kernel_paths();
  const bool fused = vectorized && hidden <= kFusedMaxCols && paths.layernorm_fused_backward;
  const bool direct_types = shape.type_vocab_size <= kDirectTypes && paths.embeddings_direct_type_gradient;
  const bool sort_types = token_type_ids != nullptr && !direct_types;
  const BackwardScratch layout = plan_backward_scratch(ctx, shape, fused, direct_types, sort_types);
  const int64_t ld = layout.ld;  // dz row stride: float4 passes
  const int num_items = static_cast<int>(tokens);
  const int word_bits = key_bits(shape.vocab_size), type_bits = key_bits(shape.type_vocab_size);
  const int64_t chunk_rows = rows_per_chunk(tokens);
  const int64_t param_chunks = layout.param_chunks;
  const size_t sort_bytes = layout.sort_bytes;
  // One scratch region (valid until the next scratch() call), taken before any launch: growing it
  // synchronises the stream.
  unsigned char* base = static_cast<unsigned char*>(ctx.scratch(layout.total));
  float* dz = reinterpret_cast<float*>(base + layout.dz_at);
  float* dgamma_partial = reinterpret_cast<float*>(base + layout.param_partials_at);
  float* dbeta_partial = dgamma_partial + param_chunks * hidden;  // contiguous, as the fused backward needs
  float* type_partial = reinterpret_cast<float*>(base + layout.type_partial_at);
  float* slot_first = reinterpret_cast<float*>(base + layout.slot_first_at);
  float* slot_last = reinterpret_cast<float*>(base + layout.slot_last_at);
  uint32_t* iota = reinterpret_cast<uint32_t*>(base + layout.iota_at);
  uint32_t* sorted_keys = reinterpret_cast<uint32_t*>(base + layout.sorted_keys_at);
  uint32_t* sorted_tokens = reinterpret_cast<uint32_t*>(base + layout.sorted_tokens_at);
  void* sort_temp = base + layout.sort_temp_at;
  const cudaStream_t stream = ctx.stream();
  const PaddedFloatRows dz_rows{dz, ld};

  if (fused) {
    // 1-2. dz and dgamma/dbeta in one pass over the rows (ld == hidden here: no row padding).
    launch_layernorm_backward_fused(stream, tokens, hidden, dout, in, gamma, mean, rstd, dz_rows, dgamma_partial,
                                    dgamma, dbeta);
  } else {
    // 1. dz.
    const unsigned row_blocks = static_cast<unsigned>(ceil_div(tokens, kRowWarpsPerBlock));
    if (vectorized)
      layernorm_rows_backward_kernel<true><<<row_blocks, kRowWarpsPerBlock * kWarpSize, 0, stream>>>(
          tokens, hidden, in, dout, gamma, mean, rstd, dz_rows);
    else
      layernorm_rows_backward_kernel<false><<<row_blocks, kRowWarpsPerBlock * kWarpSize, 0, stream>>>(
          tokens, hidden, in, dout, gamma, mean, rstd, dz_rows);
    CUDA_CHECK_LAUNCH();

    // 2. dgamma, dbeta.
    const int64_t column_vectors = hidden / (vectorized ? kVectorWidth : 1);
    const dim3 partial_grid(static_cast<unsigned>(param_chunks),
                            static_cast<unsigned>(ceil_div(column_vectors, kColumnThreads)));
    if (vectorized)
      layernorm_param_partials_kernel<true><<<partial_grid, kColumnThreads, 0, stream>>>(
          tokens, hidden, chunk_rows, in, dout, mean, rstd, dgamma_partial, dbeta_partial);
    else
      layernorm_param_partials_kernel<false><<<partial_grid, kColumnThreads, 0, stream>>>(
          tokens, hidden, chunk_rows, in, dout, mean, rstd, dgamma_partial, dbeta_partial);
    CUDA_CHECK_LAUNCH();
    launch_accumulate_partials(stream, param_chunks, hidden, dgamma_partial, dgamma, dbeta_partial, dbeta);
    CUDA_CHECK_LAUNCH();
  }

  // 3. d_position (and with a small type table, d_token_type's partials over the positions).
  const dim3 position_grid(static_cast<unsigned>(shape.seq_len),
                           static_cast<unsigned>(ceil_div(ld / 4, kColumnThreads)));
  if (direct_types) {
    position_grad_kernel<true><<<position_grid, kColumnThreads, 0, stream>>>(shape.batch, shape.seq_len, hidden, ld, dz,
                                                                             token_type_ids, shape.type_vocab_size,
                                                                             d_position_embeddings, type_partial);
    CUDA_CHECK_LAUNCH();
    for (int64_t k = 0; k < shape.type_vocab_size; k += 2) {  // two table rows a finalize launch
      const int64_t partial_rows = shape.seq_len * hidden;
      const bool pair = k + 1 < shape.type_vocab_size;
      launch_accumulate_partials(stream, shape.seq_len, hidden, type_partial + k * partial_rows,
                                 d_token_type_embeddings + k * hidden,
                                 pair ? type_partial + (k + 1) * partial_rows : nullptr,
                                 pair ? d_token_type_embeddings + (k + 1) * hidden : nullptr);
      CUDA_CHECK_LAUNCH();
    }
  } else {
    position_grad_kernel<false><<<position_grid, kColumnThreads, 0, stream>>>(
        shape.batch, shape.seq_len, hidden, ld, dz, nullptr, 0, d_position_embeddings, nullptr);
    CUDA_CHECK_LAUNCH();
  }

  // 4. d_word: sort (id, token) pairs (stable: tokens stay in order within an id), then scatter.
  constexpr int kIotaThreads = 256;
  const unsigned iota_blocks = static_cast<unsigned>(ceil_div(tokens, kIotaThreads));
  iota_kernel<<<iota_blocks, kIotaThreads, 0, stream>>>(tokens, iota);
  CUDA_CHECK_LAUNCH();
  size_t temp_bytes = sort_bytes;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp, temp_bytes, reinterpret_cast<const uint32_t*>(input_ids),
                                             sorted_keys, static_cast<const uint32_t*>(iota), sorted_tokens, num_items,
                                             0, word_bits, stream));
  scatter_sorted(ctx, tokens, hidden, ld, sorted_keys, sorted_tokens, dz, shape.padding_idx, d_word_embeddings,
                 slot_first, slot_last);
  if (direct_types) return;

  // 5. d_token_type: the same over the type ids (no type ids: every token is type 0, already sorted).
  if (sort_types) {
    temp_bytes = sort_bytes;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp, temp_bytes, reinterpret_cast<const uint32_t*>(token_type_ids),
                                               sorted_keys, static_cast<const uint32_t*>(iota), sorted_tokens,
                                               num_items, 0, type_bits, stream));
  } else {
    CUDA_CHECK(cudaMemsetAsync(sorted_keys, 0, static_cast<size_t>(tokens) * sizeof(uint32_t), stream));
    CUDA_CHECK(cudaMemcpyAsync(sorted_tokens, iota, static_cast<size_t>(tokens) * sizeof(uint32_t),
                               cudaMemcpyDeviceToDevice, stream));
  }
  scatter_sorted(ctx, tokens, hidden, ld, sorted_keys, sorted_tokens, dz, /*skip_key=*/-1, d_token_type_embeddings,
                 slot_first, slot_last);
}

}  // namespace bert::cuda
