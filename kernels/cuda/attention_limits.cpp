// The fused attention kernel's limits (kernels/cuda/attention.cu), as plain host code: the engine
// checks a config against them before training starts, and builds without nvcc (the emulated CUDA
// tests, tests/emulated/) compile this same file, so their limits cannot drift from the kernel's.
#include <climits>
#include <string>

#include "kernels/cuda/ops_cuda.h"

namespace bert::cuda {

bool attention_supported(const AttentionShape& shape, std::string* why_not) {
  const auto fail = [why_not](const std::string& reason) {
    if (why_not != nullptr) *why_not = reason;
    return false;
  };
  if (shape.batch < 0) return fail("batch " + std::to_string(shape.batch) + " is negative");
  if (shape.num_heads <= 0) return fail("num_heads " + std::to_string(shape.num_heads) + " must be positive");
  if (shape.head_dim != 32 && shape.head_dim != 64 && shape.head_dim != 128)
    return fail("head_dim " + std::to_string(shape.head_dim) +
                " is not supported (the fused kernel has head_dim 32, 64 and 128)");
  if (shape.seq_len < 1 || shape.seq_len > kAttentionMaxSeqLen)
    return fail("seq_len " + std::to_string(shape.seq_len) + " is outside 1.." + std::to_string(kAttentionMaxSeqLen) +
                " (the fused kernel's limit)");
  // Blocks, [B, H, S] statistics and the dropout row index are int32 products on the device.
  if (shape.num_heads > INT_MAX / shape.seq_len || shape.batch > INT_MAX / (shape.num_heads * shape.seq_len))
    return fail("batch " + std::to_string(shape.batch) + " x num_heads " + std::to_string(shape.num_heads) +
                " x seq_len " + std::to_string(shape.seq_len) + " exceeds 2^31 - 1");
  if (shape.qkv_row_stride < shape.hidden())
    return fail("qkv_row_stride " + std::to_string(shape.qkv_row_stride) + " is below hidden " +
                std::to_string(shape.hidden()));
  if (shape.qkv_row_stride % 8 != 0)
    return fail("qkv_row_stride " + std::to_string(shape.qkv_row_stride) +
                " is not a multiple of 8 (rows are read as 16-byte vectors)");
  return true;
}

}  // namespace bert::cuda
