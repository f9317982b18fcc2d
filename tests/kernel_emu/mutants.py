#!/usr/bin/env python3
"""Does the kernel emulation catch the bugs that only show on a device? Each mutant below breaks one
synchronisation point (or one reduction step) of a real kernel in the build tree's generated copy,
rebuilds test_cuda_kernels_emulated, and runs the unmodified device test of that kernel family on
the emulation; the mutant must make it fail ("caught"). The generated files are restored at the end.

Usage: tests/kernel_emu/mutants.py [BUILD_DIR] [NAME_FILTER]   (a developer check, not in ctest: each
mutant is a rebuild; all 34 take ~35 minutes on 2 cores). Exit 1 if any mutant survives.
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, source file, anchor(s), text, replacement line, Catch2 test filter): the mutated line is the
# first line that contains `text` after the one line of the source that contains the first anchor (an
# anchor found on no line, or on two, stops the run) and, in turn, after the first line below it that
# contains each further anchor; comment lines are skipped, and the search stops at the next kernel
# (`__global__`), so a mutant never wanders into another kernel when its own text moves. The table
# thereby survives edits elsewhere in the file. The
# generated copy keeps the source's line numbers (after the two header lines transform_cu.py writes).
# Not every barrier can be a mutant: the wmma forward's barrier after the Q tile load is followed at
# once by the loop's first barrier (the mma forward has none there for that reason); the __syncwarp
# that opens store_warp_accumulators follows mma.sync collectives that already ordered the warp's last
# ldmatrix reads of the rows it overwrites, so removing either changes nothing.
MUTANTS = [
    ("block_sum: no barrier after the warp sums", "common.cuh", "if (lane == 0) warp_sums[warp] = value;",
     "__syncthreads();", "", "[adamw]"),
    ("warp_sum: one butterfly step missing", "common.cuh", "__device__ __forceinline__ float warp_sum(float value)",
     "offset = kWarpSize / 2",
     "  for (int offset = kWarpSize / 4; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);",
     "[layernorm]"),
    ("column partials: no barrier before the group sums are read", "common.cuh",
     "group_sums[threadIdx.y][threadIdx.x] = sum;", "__syncthreads();", "", "[layernorm]"),
    ("cross-entropy: no barrier after the per-warp softmax states", "cross_entropy.cu",
     "if (lane == 0) warp_states[warp] = state;", "__syncthreads();", "", "[cross_entropy]"),
    ("cross-entropy: no barrier after the block result", "cross_entropy.cu", "if (lane == 0) result = state;",
     "__syncthreads();", "", "[cross_entropy]"),
    ("embeddings scatter: no barrier after the chunk's keys load", "embeddings.cu",
     "token_of[threadIdx.x] = sorted_tokens[begin + threadIdx.x];", "__syncthreads();", "", "[embeddings]"),
    ("bias gradient: no barrier before the lane sums are combined", "gemm.cu",
     "lane_sums[threadIdx.y][threadIdx.x * kVec + i] = acc[i];", "__syncthreads();", "",
     "cuda linear_backward equals*"),
    ("pooler GEMM: no barrier after the tile loads", "heads.cu", "? load_b(k, n) : 0.0f;", "__syncthreads();", "",
     "[heads]"),
    ("pooler GEMM: no barrier before the next tile overwrites", "heads.cu",
     "acc[r] += a_tile[ty + r * kTileRows][kk] * b;", "__syncthreads();", "", "[heads]"),
    ("attention forward: K/V tile overwritten while in use", "attention.cu",
     "attention_forward_kernel(const AttentionArgs args", "__syncthreads();  // every warp is done", "",
     "cuda attention matches*"),
    ("attention forward: no barrier after the K/V tile load", "attention.cu",
     ("attention_forward_kernel(const AttentionArgs args", "__syncthreads();  // every warp is done"),
     "__syncthreads();", "", "cuda attention matches*"),
    ("attention forward: no __syncwarp before the probabilities are reloaded", "attention.cu",
     "row_sum = row_sum * rescale + step_sum;", "__syncwarp();", "", "cuda attention matches*"),
    ("attention mma K/V steps (forward, dQ): no barrier after the step's copies (read before they land, and the "
     "other buffers refilled while in use)", "attention.cu", "__device__ KeyValueTiles begin_key_step(",
     "__syncthreads();", "", "cuda attention matches*"),
    ("attention mma K/V steps (forward, dQ): waits for all but the newest copies (the step's own)", "attention.cu",
     "__device__ KeyValueTiles begin_key_step(", "detail::async_copy_wait<0>();", "  detail::async_copy_wait<1>();",
     "cuda attention matches*"),
    ("attention mma forward: row max over 2 of a row's 4 lanes", "attention.cu",
     "attention_forward_mma_kernel(const AttentionArgs args", "step_max[r], 2));", "", "cuda attention matches*"),
    ("attention mma forward: row sum over 2 of a row's 4 lanes", "attention.cu",
     "attention_forward_mma_kernel(const AttentionArgs args", "row_sum[r], 2);", "", "cuda attention matches*"),
    ("attention mma forward: dropout words not exchanged between the lane pair", "attention.cu",
     "const int drawn = q & 1;", "__shfl_xor_sync",
     "    const uint64_t got = (static_cast<uint64_t>(give1) << 32) | give0;", "cuda attention matches*"),
    ("attention mma stores: no __syncwarp before the staged rows are stored", "attention.cu",
     "detail::pack_bf16x2(acc[n][2 * r] * row_scale[r]", "__syncwarp();", "", "cuda attention matches*"),
    ("attention dK/dV: Q/dO tiles overwritten while in use", "attention.cu",
     "attention_backward_dkdv_kernel(const AttentionArgs args", "__syncthreads();  // every warp is done", "",
     "cuda attention matches*"),
    ("attention dK/dV: no barrier after the Q/dO tile load", "attention.cu",
     "attention_backward_dkdv_kernel(const AttentionArgs args", "__syncthreads();  // (the first time", "",
     "cuda attention matches*"),
    ("attention dK/dV: staging reuses tiles still in use", "attention.cu",
     "attention_backward_dkdv_kernel(const AttentionArgs args", "__syncthreads();  // the Q/dO tiles become", "",
     "cuda attention matches*"),
    ("attention dQ: K/V tile overwritten while in use", "attention.cu",
     "attention_backward_dq_kernel(const AttentionArgs args", "__syncthreads();  // every warp is done", "",
     "cuda attention matches*"),
    ("attention dQ: no barrier after the K/V tile load", "attention.cu",
     "attention_backward_dq_kernel(const AttentionArgs args", "__syncthreads();  // (the first time", "",
     "cuda attention matches*"),
    ("attention dQ: staging reuses the K/V tiles still in use", "attention.cu",
     "attention_backward_dq_kernel(const AttentionArgs args", "__syncthreads();  // the K/V tiles become", "",
     "cuda attention matches*"),
    ("attention dQ: no __syncwarp before the staged rows are stored", "attention.cu",
     "__syncthreads();  // the K/V tiles become", "__syncwarp();", "", "cuda attention matches*"),
    ("attention mma dK/dV: no barrier after the step's copies (read before they land, and the other buffers "
     "refilled while in use)", "attention.cu", "attention_backward_dkdv_mma_kernel(const AttentionArgs args",
     "__syncthreads();", "", "cuda attention matches*"),
    ("attention mma dK/dV: waits for all but the newest copies (the step's own)", "attention.cu",
     "attention_backward_dkdv_mma_kernel(const AttentionArgs args", "detail::async_copy_wait<0>();",
     "    detail::async_copy_wait<1>();", "cuda attention matches*"),
    ("attention mma dK/dV: dropout words not exchanged within the key group", "attention.cu",
     "const int i = (lane >> 2) & 3;", "__shfl_xor_sync", "      got[t] = word_of(drawn.word, i ^ t);",
     "cuda attention matches*"),
    ("attention mma dQ: all-padding blocks stage dQ before other warps' copies into those rows land", "attention.cu",
     ("attention_backward_dq_mma_kernel(const AttentionArgs args", "if (keys.all_padding) {"), "__syncthreads();", "",
     "cuda attention matches*"),
    # The fused mma backward (up to 128 keys): the test case with seq 65, 77 and 128 (8 warps) is enough.
    ("attention fused backward: no barrier after the step's copies (read before they land, and the other "
     "buffers refilled while in use)", "attention.cu", "attention_backward_fused_mma_kernel(const AttentionArgs args",
     "__syncthreads();", "", "cuda attention without a mask*"),
    ("attention fused backward: waits for all but the newest copies (the step's own)", "attention.cu",
     "attention_backward_fused_mma_kernel(const AttentionArgs args", "detail::async_copy_wait<0>();",
     "    detail::async_copy_wait<1>();", "cuda attention without a mask*"),
    ("attention fused backward: dQ reads the dS^T tile before every warp wrote its keys", "attention.cu",
     "attention_backward_fused_mma_kernel(const AttentionArgs args", "__syncthreads();  // every key's dS^T", "",
     "cuda attention without a mask*"),
    ("attention fused backward: no __syncwarp before the staged dQ rows are stored", "attention.cu",
     "attention_backward_fused_mma_kernel(const AttentionArgs args", "__syncwarp();", "",
     "cuda attention without a mask*"),
    ("attention fused backward: dK staged in K rows other warps' dQ products still read", "attention.cu",
     "attention_backward_fused_mma_kernel(const AttentionArgs args", "__syncthreads();  // every warp's last dQ", "",
     "cuda attention without a mask*"),
]


def generated_path(build, source):
    name = source if source.endswith(".cuh") else source.replace(".cu", ".cpp")
    return os.path.join(build, "tests", "kernel_emu", "kernels", "cuda", name)


def mutated_line(source, lines, anchors, text, name):
    """The index in `lines` of the line MUTANTS' entry `name` replaces (see MUTANTS)."""
    anchors = (anchors,) if isinstance(anchors, str) else anchors
    first = [i for i, line in enumerate(lines) if anchors[0] in line]
    if len(first) != 1:
        sys.exit(f"{source}: anchor {anchors[0]!r} of mutant {name!r} is on {len(first)} lines, not one: update it")
    index = first[0]
    for wanted in anchors[1:] + (text,):
        found = None
        for i in range(index + 1, len(lines)):
            if "__global__" in lines[i]:
                break  # the next kernel
            if wanted in lines[i] and not lines[i].lstrip().startswith("//"):
                found = i
                break
        if found is None:
            sys.exit(f"{source}: no {wanted!r} below the anchors of mutant {name!r} in the same kernel: update it")
        index = found
    return index


def main():
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
    wanted = sys.argv[2] if len(sys.argv) > 2 else ""
    ninja = ["ninja", "-C", build, "test_cuda_kernels_emulated"]
    subprocess.run(ninja, check=True, stdout=subprocess.DEVNULL)
    binary = os.path.join(build, "tests", "test_cuda_kernels_emulated")
    work = os.path.join(build, "tests", "emulated_tmp")
    os.makedirs(work, exist_ok=True)
    survivors = []
    for name, source, anchors, text, replacement, test_filter in MUTANTS:
        if wanted not in name:
            continue
        path = generated_path(build, source)
        original = open(path, encoding="utf-8").read()
        lines = original.split("\n")
        index = mutated_line(source, lines, anchors, text, name)
        lines[index] = replacement
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(lines))
            subprocess.run(ninja, check=True, stdout=subprocess.DEVNULL)
            start = time.time()
            run = subprocess.run([binary, test_filter], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, timeout=900)
            caught = run.returncode != 0
            how = "test failed" if caught else "SURVIVED"
            if run.returncode < 0:
                how = f"killed by signal {-run.returncode}"  # e.g. an out-of-range index from a stale read
            if caught and "device fault" in run.stdout:
                how = "device fault: " + run.stdout.split("device fault:", 1)[1].split("\n", 1)[0].strip()[:100]
            print(f"{'caught  ' if caught else 'SURVIVED'} {time.time() - start:6.1f} s  {name}  ({how})", flush=True)
            if not caught:
                survivors.append(name)
        finally:
            with open(path, "w", encoding="utf-8") as f:
                f.write(original)
    subprocess.run(ninja, check=True, stdout=subprocess.DEVNULL)
    print(f"{len(survivors)} survivor(s)" + (": " + "; ".join(survivors) if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
