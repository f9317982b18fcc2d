// The warp-level tensor-core instructions of sm_80+ as device functions (device code, .cu files only):
// ldmatrix (shared memory -> mma operand registers) and mma.sync m16n8k16 with bf16 operands and fp32
// accumulators, with the register layouts they imply (PTX ISA, "Matrix Fragments for mma.m16n8k16 with
// floating point type" and "ldmatrix"). g = lane / 4 (groupID), q = lane % 4 (threadID_in_group);
// a register holds two bf16, the lower-numbered element in the low 16 bits.
//   A (16 x 16, row-major) 4 registers: a[0] = A[g][2q, 2q+1], a[1] = A[g+8][2q, 2q+1],
//                                       a[2] = A[g][2q+8, 2q+9], a[3] = A[g+8][2q+8, 2q+9]
//   B (16 x 8, "col")      2 registers: b0 = B[2q, 2q+1][g], b1 = B[2q+8, 2q+9][g]
//   C, D (16 x 8, fp32)    4 floats:    c[0], c[1] = C[g][2q, 2q+1], c[2], c[3] = C[g+8][2q, 2q+1]
// ldmatrix .x4: lanes 8j..8j+7 give the shared addresses of rows 0..7 of 8x8 matrix j (16 bytes each,
// 16-byte aligned); register j of lane l receives row l/4, elements 2(l%4), 2(l%4)+1 of matrix j, or
// with .trans element (2(l%4), l/4) and (2(l%4)+1, l/4). So an A tile is one ldmatrix_x4 with lane l
// pointing at row l%16, column 8(l/16); two B tiles (16 k x 16 n) of a row-major [n][k] array are one
// ldmatrix_x4, and of a row-major [k][n] array one ldmatrix_x4_trans.
// The kernel emulation (tests/kernel_emu/include/kernels/cuda/mma_sync.cuh) implements these same
// functions from the layouts above, as warp collectives, in place of this file.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace bert::cuda::detail {

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Four 8x8 bf16 matrices; `row` is this lane's row address (see above).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}

// The same, each matrix transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}

// d += A B: one 16x8x16 product, fp32 accumulation.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to bf16 in one register: `low` in bits 0-15 (the lower-numbered element).
__device__ __forceinline__ uint32_t pack_bf16x2(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

}  // namespace bert::cuda::detail
