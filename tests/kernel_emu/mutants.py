#!/usr/bin/env python3
"""Does the kernel emulation catch the bugs that only show on a device? Each mutant below breaks one
synchronisation point (or one reduction step) of a real kernel in the build tree's generated copy,
rebuilds test_cuda_kernels_emulated, and runs the unmodified device test of that kernel family on
the emulation; the mutant must make it fail ("caught"). The generated files are restored at the end.

Usage: tests/kernel_emu/mutants.py [BUILD_DIR] [NAME_FILTER]   (a developer check, not in ctest: each
mutant is a rebuild; all 29 take ~30 minutes on 2 cores). Exit 1 if any mutant survives.
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, source file, 1-based line in the source, text that line must contain, replacement line,
#  Catch2 test filter). Line numbers are the source's: the generated copy keeps them (plus the two
# header lines transform_cu.py writes). Not every barrier can be a mutant: the wmma forward's barrier
# after the Q tile load (attention.cu:294) is followed at once by the loop's first barrier (the mma
# forward has none there for that reason), and the __syncwarp that opens store_warp_accumulators
# (attention.cu:446) follows mma.sync collectives that already ordered the warp's last ldmatrix reads
# of the rows it overwrites, so removing either changes nothing.
MUTANTS = [
    ("block_sum: no barrier after the warp sums", "common.cuh", 65, "__syncthreads();", "", "[adamw]"),
    ("warp_sum: one butterfly step missing", "common.cuh", 52, "offset = kWarpSize / 2",
     "  for (int offset = kWarpSize / 4; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);",
     "[layernorm]"),
    ("column partials: no barrier before the group sums are read", "common.cuh", 179, "__syncthreads();", "",
     "[layernorm]"),
    ("cross-entropy: no barrier after the per-warp softmax states", "cross_entropy.cu", 112, "__syncthreads();", "",
     "[cross_entropy]"),
    ("cross-entropy: no barrier after the block result", "cross_entropy.cu", 117, "__syncthreads();", "",
     "[cross_entropy]"),
    ("embeddings scatter: no barrier after the chunk's keys load", "embeddings.cu", 165, "__syncthreads();", "",
     "[embeddings]"),
    ("bias gradient: no barrier before the lane sums are combined", "gemm.cu", 113, "__syncthreads();", "",
     "cuda linear_backward equals*"),
    ("pooler GEMM: no barrier after the tile loads", "heads.cu", 119, "__syncthreads();", "", "[heads]"),
    ("pooler GEMM: no barrier before the next tile overwrites", "heads.cu", 126, "__syncthreads();", "", "[heads]"),
    ("attention forward: K/V tile overwritten while in use", "attention.cu", 307, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention forward: no barrier after the K/V tile load", "attention.cu", 310, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention forward: no __syncwarp before the probabilities are reloaded", "attention.cu", 347, "__syncwarp();", "",
     "cuda attention matches*"),
    ("attention mma forward: K/V tile overwritten while in use", "attention.cu", 538, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention mma forward: no barrier after the K/V tile load", "attention.cu", 541, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention mma forward: row max over 2 of a row's 4 lanes", "attention.cu", 562, "step_max[r], 2));", "",
     "cuda attention matches*"),
    ("attention mma forward: row sum over 2 of a row's 4 lanes", "attention.cu", 599, "row_sum[r], 2);", "",
     "cuda attention matches*"),
    ("attention mma forward: dropout words not exchanged between the lane pair", "attention.cu", 489, "__shfl_xor_sync",
     "    const uint64_t got = (static_cast<uint64_t>(give1) << 32) | give0;", "cuda attention matches*"),
    ("attention mma stores: no __syncwarp before the staged rows are stored", "attention.cu", 453, "__syncwarp();", "",
     "cuda attention matches*"),
    ("attention dK/dV: no barrier after the Q/dO tile load", "attention.cu", 678, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention dK/dV: staging reuses tiles still in use", "attention.cu", 728, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention dQ: K/V tile overwritten while in use", "attention.cu", 787, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention dQ: no barrier after the K/V tile load", "attention.cu", 790, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention dQ: staging reuses the K/V tiles still in use", "attention.cu", 830, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention dQ: no __syncwarp before the staged rows are stored", "attention.cu", 835, "__syncwarp();", "",
     "cuda attention matches*"),
    ("attention mma dK/dV: Q/dO tiles overwritten while in use", "attention.cu", 929, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention mma dK/dV: no barrier after the Q/dO tile load", "attention.cu", 931, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention mma dK/dV: dropout words not exchanged within the key group", "attention.cu", 878, "__shfl_xor_sync",
     "      got[t] = word_of(drawn.word, i ^ t);", "cuda attention matches*"),
    ("attention mma dQ: K/V tile overwritten while in use", "attention.cu", 1031, "__syncthreads();", "",
     "cuda attention matches*"),
    ("attention mma dQ: no barrier after the K/V tile load", "attention.cu", 1034, "__syncthreads();", "",
     "cuda attention matches*"),
]


def generated_path(build, source):
    name = source if source.endswith(".cuh") else source.replace(".cu", ".cpp")
    return os.path.join(build, "tests", "kernel_emu", "kernels", "cuda", name)


def main():
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
    wanted = sys.argv[2] if len(sys.argv) > 2 else ""
    ninja = ["ninja", "-C", build, "test_cuda_kernels_emulated"]
    subprocess.run(ninja, check=True, stdout=subprocess.DEVNULL)
    binary = os.path.join(build, "tests", "test_cuda_kernels_emulated")
    work = os.path.join(build, "tests", "emulated_tmp")
    os.makedirs(work, exist_ok=True)
    survivors = []
    for name, source, line, must_contain, replacement, test_filter in MUTANTS:
        if wanted not in name:
            continue
        path = generated_path(build, source)
        original = open(path, encoding="utf-8").read()
        lines = original.split("\n")
        index = line - 1 + 2  # the generated header's two lines
        if must_contain not in lines[index]:
            sys.exit(f"{source}:{line} no longer holds {must_contain!r} (it holds {lines[index].strip()!r}): "
                     "update the mutant")
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
