#!/usr/bin/env bash
# The one script run on the lent GPU machine (the device tool's `run`, over a copy of this tree):
# GPU tests (every tests/gpu/test_cuda_* and test_device), then the loss curve of bert_train on the GPU
# against HF's on the same batches (tests/conformance/test_hf_training_curve.py --device cuda; its
# output goes into tests.log), then bench_kernels, then the PyTorch SDPA
# attention reference beside it, then the training throughput of ours vs HF (bench/bench_train_gpu.py
# driving bench_train_step --device cuda). Everything it writes goes to $OUT (8 files; the tool brings
# back 8 at most): setup.log, tests.log, bench_kernels.log, bench_kernels.json, bench_attention_torch.log,
# bench_attention_torch.json, bench_train_gpu.json, summary.txt (the training bench's progress log is
# appended to setup.log, for want of a ninth file; bench_kernels.log ends with bench/compare_kernels.py's
# table against the newest run of the same GPU kept in bench/results/, then the "profile" stage's
# per-op breakdown of one BERT-base seq-128 training step: bench_train_step --profile). The summary is
# printed last, so the reply's output tail holds it.
#
# Two more stages, before the training bench: "sanitize" runs GPU tests under compute-sanitizer
# (memcheck on each kernel family's test and test_cuda_model, racecheck on one attention case, within
# GPU_CHECK_SANITIZE_TIMEOUT s; a test cut short by the budget is reported as incomplete, not clean), and
# "demo" runs the README's pipeline on the carried demo corpus (.gpu-deps/demo/ko_corpus.txt) with
# bert_train --device cuda (configs/demo_cpu.toml's model, GPU_CHECK_DEMO_STEPS steps, default 10,000: 8x the
# CPU demo's 1,200), then fill-mask, the probe and the canary exposure with bert_infer --device cuda and
# --device cpu on the same model; a run cut short by GPU_CHECK_DEMO_TIMEOUT is stopped with SIGTERM
# (it saves) and its last checkpoint is used. Both log into tests.log.
#
# GPU_CHECK_SANITIZE_JOBS replaces the sanitizer's job list (see the stage); GPU_CHECK_TRAIN_VARIANTS
# (e.g. "ours,hf_sdpa") limits the training bench's variants and GPU_CHECK_TRAIN_SHAPES (e.g.
# "base-128,large-512") its shapes: by default base-128 alone (issue 6's target: ours against every HF
# variant) when other stages share the call, all four when the training stage runs alone.
#
# Stages: GPU_CHECK_STAGES (default "tests curve kernels attention profile paths autotune sanitize demo train";
# "fields", one base-128 step per KernelPaths field turned off, only when named) picks which run, e.g.
#   run(command="GPU_CHECK_STAGES=train bash scripts/gpu_check.sh", carry=[".gpu-deps"], timeout_s=590)
# spends the whole call on the training bench (its full matrix: 4 shapes x ours + 3 HF variants, ~6-9
# minutes with torch.compile); in the default run it gets what the other stages leave (below).
#
# Prepare HERE first (no device time):
#   scripts/fetch_gpu_deps.sh                       # .debs of Catch2, OpenBLAS, zlib -> .gpu-deps/
#   # optional, saves the device ~3 minutes of compiling: a build made here, packed alongside
#   cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DBERT_MPI=OFF   # (no Open MPI on the device)
#   ninja -C build-gpu test_device bench_kernels bench_train_step bert_train bert_prepare bert_tokenizer bert_infer $(ninja -C build-gpu -t targets all | grep -oE '^test_cuda_[a-z_]+' | grep -v _emulated | sort -u)
#   scripts/fetch_gpu_deps.sh --prebuilt build-gpu
# Then the exact device call:
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu-deps"], timeout_s=590)
# (.gpu-deps is git-ignored, so only `carry` takes it along.) What to read first in the reply:
# summary.txt's lines (tests passed/failed, bench cases ok, ceilings), then tests.log for failures.
#
# Modes: "prebuilt" when .gpu-deps/prebuilt/bin.tar.xz is there and every library its executables
# need resolves on the device (ldd); otherwise "build": cmake + ninja on the device (16 cores) with
# the carried packages' headers and libraries where the image lacks its own, then ctest -L gpu.
# Time limits per stage keep the whole script inside the call's limit (GPU_CHECK_* variables below):
# worst case build 240 + tests 120 + bench 120 + torch 70 + setup ~10 = 560 s < timeout_s 590; the
# curve stage (up to GPU_CHECK_CURVE_TIMEOUT, ~30-60 s) runs only in what that leaves, so after a
# device build it is skipped (say so in the summary). The sanitize and demo stages get at most what
# GPU_CHECK_TOTAL leaves them (skipped, and said so, under 20 and 40 s). With the prebuilt binaries
# those stages took ~4 minutes on an H200 (2026-12-04: tests 55 s, curve 24 s, bench_kernels and the
# torch reference 15 s, sanitize 75 s, demo 58 s). The training stage runs last and gets
# min(GPU_CHECK_TRAIN_TIMEOUT, GPU_CHECK_TOTAL - seconds used so far - 10) (default total 575 s, so the
# script ends before timeout_s 590 whatever the earlier stages took); bench_train_gpu.py spends that
# budget in priority order (ours on every shape, then HF sdpa, sdpa + torch.compile, eager) and records
# what it had no time for as skipped. Fewer than 60 s left: the stage is skipped. So that it is not
# crowded out, the stages before it (curve and those after attention) leave it GPU_CHECK_TRAIN_RESERVE
# seconds (default 150: ours, HF sdpa and sdpa + torch.compile at base-128). Its progress goes into
# setup.log as it runs, so a call cut short at its limit still brings back what was measured.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
DEPS_ROOT=/tmp/bertforge-gpu-deps   # the carried .debs, unpacked (never into /)
BIN_DIR=/tmp/bertforge-gpu-bin      # prebuilt executables
BUILD_DIR=/tmp/bertforge-gpu-build  # device build
BUILD_TIMEOUT=${GPU_CHECK_BUILD_TIMEOUT:-240}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-120}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT:-120}
TORCH_TIMEOUT=${GPU_CHECK_TORCH_TIMEOUT:-70}
CURVE_TIMEOUT=${GPU_CHECK_CURVE_TIMEOUT:-90}
BENCH_REPEATS=${GPU_CHECK_BENCH_REPEATS:-30}
TRAIN_TIMEOUT=${GPU_CHECK_TRAIN_TIMEOUT:-560}
TOTAL_BUDGET=${GPU_CHECK_TOTAL:-575}
SANITIZE_TIMEOUT=${GPU_CHECK_SANITIZE_TIMEOUT:-90}
DEMO_TIMEOUT=${GPU_CHECK_DEMO_TIMEOUT:-90}
DEMO_STEPS=${GPU_CHECK_DEMO_STEPS:-10000}
PROFILE_TIMEOUT=${GPU_CHECK_PROFILE_TIMEOUT:-60}
AUTOTUNE_TIMEOUT=${GPU_CHECK_AUTOTUNE_TIMEOUT:-90}
PATHS_TIMEOUT=${GPU_CHECK_PATHS_TIMEOUT:-75}
FIELDS_TIMEOUT=${GPU_CHECK_FIELDS_TIMEOUT:-240}
TRAIN_RESERVE=${GPU_CHECK_TRAIN_RESERVE:-150}
# KernelPaths' fields (kernels/cuda/ops_cuda.h, KernelPaths::fields(); a suite test keeps the two equal).
KERNEL_PATH_FIELDS="attention_fused_backward layernorm_resident_forward layernorm_fused_backward dropout_fused_layernorm dropout_fused_layernorm_backward cross_entropy_resident gelu_fast_math embeddings_direct_type_gradient attention_persistent_forward gemm_bias_gradient_epilogue"
STAGES=" ${GPU_CHECK_STAGES:-tests curve kernels attention profile paths autotune sanitize demo train} "
stage() { [[ $STAGES == *" $1 "* ]]; }
TRAIN_SHAPES=${GPU_CHECK_TRAIN_SHAPES:-}
[[ -z $TRAIN_SHAPES && $STAGES != " train " ]] && TRAIN_SHAPES=base-128
# The seconds kept for the training stage by the stages before it (none when it does not run).
reserve=0
stage train && reserve=$TRAIN_RESERVE
# Sets `budget`: the seconds a stage may take, its own limit $1 or what GPU_CHECK_TOTAL leaves (10 s
# kept for the end, and the training stage's reserve until it runs), whichever is less.
stage_budget() {
  budget=$((TOTAL_BUDGET - SECONDS - 10 - reserve))
  ((budget > $1)) && budget=$1
  return 0
}
SETUP_LOG=$OUT/setup.log
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
rm -f /tmp/bertforge-bench-train-gpu.log  # a warm machine keeps /tmp: no table from an earlier call
note() { echo "$*" | tee -a "$SUMMARY"; }
stamp() { date -u +%H:%M:%S; }

# ---- environment ------------------------------------------------------------------------------------
{
  echo "== $(date -u) gpu_check on $(hostname)"
  grep PRETTY_NAME /etc/os-release 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  nvcc --version 2>&1 | tail -n 2
  cmake --version 2>&1 | head -n 1
  ninja --version 2>&1
  g++ --version 2>&1 | head -n 1
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
  ldd --version 2>&1 | head -n 1
  ldconfig -p 2>/dev/null | grep -E 'libcublasLt\.so|libnccl\.so|libopenblas|libblas\.so|libz\.so|libgomp' || true
} >"$SETUP_LOG" 2>&1
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH

# Unpack the carried packages (if any) into DEPS_ROOT.
rm -rf "$DEPS_ROOT" && mkdir -p "$DEPS_ROOT"
for deb in "$ROOT"/.gpu-deps/debs/*.deb; do
  [[ -f "$deb" ]] || continue
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$deb" "$DEPS_ROOT" >>"$SETUP_LOG" 2>&1
  else  # a .deb is an ar archive holding data.tar.xz (Debian 12)
    member=$(ar t "$deb" | grep '^data\.tar')
    ar p "$deb" "$member" | tar -x -J -f - -C "$DEPS_ROOT" >>"$SETUP_LOG" 2>&1
  fi
done
# Absolute links inside the packages (libz.so -> /lib/...) must point into DEPS_ROOT, not at /.
find "$DEPS_ROOT" -type l | while read -r link; do
  target=$(readlink "$link")
  if [[ $target == /* && -e "$DEPS_ROOT$target" ]]; then ln -sfn "$DEPS_ROOT$target" "$link"; fi
done
DEPS_LIB=$DEPS_ROOT/usr/lib/x86_64-linux-gnu
# CUDA libraries: the toolkit's, else the ones PyTorch's wheels bring. The carried libraries go
# LAST, so the image's own win wherever it has them.
cuda_dirs=""
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import glob, site; print(" ".join(sorted({p.rsplit("/", 1)[0] for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/**/libcublasLt.so*", recursive=True)})))' 2>/dev/null); do
  [[ -d "$dir" ]] && ls "$dir"/libcublasLt.so* >/dev/null 2>&1 && cuda_dirs="$cuda_dirs:$dir"
done
# NCCL (tests/gpu/test_cuda_nccl.cpp; dlopened as libnccl.so.2): the toolkit's, else PyTorch's wheel's.
for dir in /usr/local/cuda/lib /usr/local/cuda/lib64 \
           $(python3 -c 'import glob, site; print(" ".join(sorted({p.rsplit("/", 1)[0] for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/**/libnccl.so*", recursive=True)})))' 2>/dev/null); do
  [[ -d "$dir" ]] && ls "$dir"/libnccl.so* >/dev/null 2>&1 && [[ ":$cuda_dirs:" != *":$dir:"* ]] && cuda_dirs="$cuda_dirs:$dir"
done
# OpenBLAS: the OpenMP build first (the one CMakeLists.txt prefers and the prebuilt binaries link).
library_path="${LD_LIBRARY_PATH:-}${cuda_dirs}:$DEPS_LIB:$DEPS_LIB/openblas-openmp:$DEPS_LIB/openblas-pthread"
library_path="$library_path:$DEPS_ROOT/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="${library_path#:}"  # an empty entry would mean the current directory
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >>"$SETUP_LOG"

# ---- executables: prebuilt or built here -------------------------------------------------------------
mode=build
source_commit=""
if [[ -f "$ROOT/.gpu-deps/prebuilt/bin.tar.xz" ]]; then
  rm -rf "$BIN_DIR" && mkdir -p "$BIN_DIR"
  tar -C "$BIN_DIR" -xJf "$ROOT/.gpu-deps/prebuilt/bin.tar.xz" --strip-components=1
  mode=prebuilt
  for exe in "$BIN_DIR"/test_* "$BIN_DIR"/bench_kernels "$BIN_DIR"/bench_train_step "$BIN_DIR"/bert_train; do
    [[ -e "$exe" ]] || continue
    if ldd "$exe" 2>&1 | grep -E 'not found' >>"$SETUP_LOG"; then
      echo "prebuilt $(basename "$exe") lacks a library here (above): building from source" >>"$SETUP_LOG"
      mode=build
    fi
  done
  [[ -f "$BIN_DIR/SOURCE_COMMIT" ]] && { echo "prebuilt from:"; cat "$BIN_DIR/SOURCE_COMMIT"; } >>"$SETUP_LOG"
  source_commit=$(head -n 1 "$BIN_DIR/SOURCE_COMMIT" 2>/dev/null | cut -c1-12)
fi
# cuBLASLt is dlopened by the first CUDA context (kernels/cuda/cublaslt_library.h), so ldd does not
# list it: say here whether the soname of the toolkit the executables were built with loads (same
# search as the executables: LD_LIBRARY_PATH and the loader cache; they also try libcudart's directory).
cudart_major=$(ldd "$BIN_DIR/bert_train" 2>/dev/null | grep -oE 'libcudart\.so\.[0-9]+' | head -n 1 | sed 's/.*\.//')
if [[ -n $cudart_major ]]; then
  python3 -c "import ctypes, sys; ctypes.CDLL(sys.argv[1]); print(sys.argv[1], 'loads')" "libcublasLt.so.$cudart_major" \
    >>"$SETUP_LOG" 2>&1 || echo "libcublasLt.so.$cudart_major does not load from LD_LIBRARY_PATH (see above)" >>"$SETUP_LOG"
fi
python3 -c "import ctypes; ctypes.CDLL('libnccl.so.2'); print('libnccl.so.2 loads')" >>"$SETUP_LOG" 2>&1 ||
  echo "libnccl.so.2 does not load from LD_LIBRARY_PATH (test_cuda_nccl will say so)" >>"$SETUP_LOG"

build_ok=1
if [[ $mode == build ]]; then
  echo "== $(stamp) building on the device" >>"$SETUP_LOG"
  export CUDACXX=${CUDACXX:-$(command -v nvcc)}
  # The linker finds the carried OpenBLAS's own needs (libgfortran) through LD_LIBRARY_PATH (above).
  export LIBRARY_PATH="$DEPS_LIB:$DEPS_LIB/openblas-pthread${LIBRARY_PATH:+:$LIBRARY_PATH}"
  # cblas.h (libopenblas-pthread-dev's; no find_path in CMakeLists.txt looks for it): the compiler's
  # own search path. The image has no cblas.h of its own.
  export CPATH="$DEPS_ROOT/usr/include/x86_64-linux-gnu/openblas-pthread${CPATH:+:$CPATH}"
  # shellcheck disable=SC2016  # expanded by the inner shell, from its arguments
  timeout "$BUILD_TIMEOUT" bash -c '
    set -eo pipefail
    blas_openmp=()  # the carried OpenMP OpenBLAS, as CMakeLists.txt prefers it (else FindBLAS: pthread)
    if [[ -f "$3/openblas-openmp/libopenblas.so.0" ]]; then
      blas_openmp=(-DBERT_OPENBLAS_OPENMP="$3/openblas-openmp/libopenblas.so.0")
    fi
    cmake -S "$0" -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBERT_CUDA=ON -DBERT_PYTHON="$(command -v python3)" \
      -DCMAKE_PREFIX_PATH="$2/usr" -DCMAKE_LIBRARY_PATH="$3;$3/openblas-pthread" \
      -DCMAKE_INCLUDE_PATH="$2/usr/include;$2/usr/include/x86_64-linux-gnu/openblas-pthread" \
      -DZLIB_ROOT="$2/usr" -DBLA_VENDOR=OpenBLAS "${blas_openmp[@]}"
    # (not the *_emulated* tests: CPU tests that CI runs)
    targets=$(ninja -C "$1" -t targets all | grep -oE "^(test_device|test_cuda_[a-z_]+|bench_kernels|bench_train_step|bert_train|bert_prepare|bert_tokenizer|bert_infer):" | tr -d : | grep -v "_emulated" | sort -u)
    echo "targets: $targets"
    ninja -C "$1" -j "$(nproc)" $targets
  ' "$ROOT" "$BUILD_DIR" "$DEPS_ROOT" "$DEPS_LIB" >>"$SETUP_LOG" 2>&1 || build_ok=0
  rm -rf "$BIN_DIR" && mkdir -p "$BIN_DIR"
  cp "$BUILD_DIR"/tests/test_device "$BUILD_DIR"/tests/test_cuda_* "$BUILD_DIR"/bench/bench_kernels \
     "$BUILD_DIR"/bench/bench_train_step "$BUILD_DIR"/bert_train "$BUILD_DIR"/bert_prepare "$BUILD_DIR"/bert_tokenizer "$BUILD_DIR"/bert_infer \
     "$BIN_DIR"/ 2>/dev/null
fi
note "mode: $mode${source_commit:+ (built from $source_commit)}$([[ $build_ok == 1 ]] || echo ' (BUILD FAILED: see setup.log; running what was built)'); stages:$STAGES"

# ---- tests ------------------------------------------------------------------------------------------------
passed=0 failed=0 skipped=0 failed_names=""
if stage tests; then
  echo "== $(stamp) tests" | tee "$OUT/tests.log"
  deadline=$((SECONDS + TEST_TIMEOUT))
  for exe in "$BIN_DIR"/test_device "$BIN_DIR"/test_cuda_*; do
    [[ -x "$exe" ]] || continue
    case "$(basename "$exe")" in test_cuda_plan | *_emulated | *_emulated_*) continue ;; esac  # CPU tests: CI runs them
    name=$(basename "$exe")
    left=$((deadline - SECONDS))
    if ((left < 5)); then
      echo "-- $name: not run (test time budget spent)" >>"$OUT/tests.log"
      failed=$((failed + 1)) failed_names="$failed_names $name(not-run)"
      continue
    fi
    echo "-- $name" >>"$OUT/tests.log"
    timeout "$left" "$exe" >>"$OUT/tests.log" 2>&1
    rc=$?
    case $rc in
      0) passed=$((passed + 1)) ;;
      4) skipped=$((skipped + 1)) ;;
      *) failed=$((failed + 1)) failed_names="$failed_names $name(rc=$rc)" ;;
    esac
    echo "-- $name: exit $rc" >>"$OUT/tests.log"
  done
  if [[ $mode == build && -d "$BUILD_DIR" ]]; then  # ctest's own view of the same executables
    timeout 30 ctest --test-dir "$BUILD_DIR" -L gpu -N >>"$OUT/tests.log" 2>&1 || true
  fi
  note "tests: $passed passed, $failed failed, $skipped skipped${failed_names:+ -- failed:$failed_names}"
  # A GPU the tests cannot use (a driver older than the CUDA 13 runtime needs, for one) makes every test
  # skip, which is no failure to ctest: say so where it is read first.
  if ((skipped > 0 && passed == 0)) && nvidia-smi -L >/dev/null 2>&1; then
    note "WARNING: nvidia-smi sees a GPU but every test skipped: $(grep -m1 'skipped: no CUDA device' "$OUT/tests.log")"
  fi
fi

# ---- loss curve: bert_train on the GPU vs HF BertForPreTraining (fp32, same GPU) on the same batches --------
# Its budget leaves the kernel and attention stages theirs (a device build can leave it none).
curve_rc=0
if stage curve; then
  curve_budget=$((TOTAL_BUDGET - SECONDS - 10 - reserve))
  stage kernels && curve_budget=$((curve_budget - BENCH_TIMEOUT))
  stage attention && curve_budget=$((curve_budget - TORCH_TIMEOUT))
  ((curve_budget > CURVE_TIMEOUT)) && curve_budget=$CURVE_TIMEOUT
  if [[ ! -x "$BIN_DIR/bert_train" ]]; then
    curve_rc=127
    note "loss curve vs HF: not run (no bert_train in $BIN_DIR)"
  elif ((curve_budget < 30)); then
    curve_rc=124
    note "loss curve vs HF: not run (${curve_budget} s left; run GPU_CHECK_STAGES=curve alone)"
  else
    echo "== $(stamp) loss curve vs HF (tests/conformance/test_hf_training_curve.py --device cuda)" >>"$OUT/tests.log"
    PYTHONUNBUFFERED=1 timeout "$curve_budget" python3 tests/conformance/test_hf_training_curve.py \
      --bin-dir "$BIN_DIR" --work /tmp/bertforge-curve --device cuda >>"$OUT/tests.log" 2>&1
    curve_rc=$?
    note "loss curve vs HF: exit $curve_rc"
    sed -n '/^== .* loss curve vs HF/,$p' "$OUT/tests.log" | grep -E '^(FAIL|ok +(every step|final loss))' |
      tail -n 4 | tee -a "$SUMMARY"
  fi
fi

# ---- bench_kernels ----------------------------------------------------------------------------------------
bench_rc=0
if stage kernels; then
  echo "== $(stamp) bench_kernels" >>"$SETUP_LOG"
  bench_rc=127
  if [[ -x "$BIN_DIR/bench_kernels" ]]; then
    timeout "$BENCH_TIMEOUT" "$BIN_DIR/bench_kernels" --repeats "$BENCH_REPEATS" --json "$OUT/bench_kernels.json" \
      >"$OUT/bench_kernels.log" 2>&1
    bench_rc=$?
  fi
  bench_ok=$(grep -c ' finite$' "$OUT/bench_kernels.log" 2>/dev/null)
  bench_bad=$(grep -c '  ERROR: ' "$OUT/bench_kernels.log" 2>/dev/null)  # one per failed case
  note "bench_kernels: exit $bench_rc (${bench_ok:-0} cases ok, ${bench_bad:-0} failed)"
  [[ $bench_rc == 0 ]] || grep -m 3 'bench_kernels:' "$OUT/bench_kernels.log" 2>/dev/null | tee -a "$SUMMARY"
  grep -E '^(device|ceilings):' "$OUT/bench_kernels.log" 2>/dev/null | tee -a "$SUMMARY"
  # Cases new since the last device run (no baseline to compare with), and the s128 attention
  # backward of both mma paths (fused kernel vs the kernel pair, the same run): their own lines.
  grep -E '^((dropout_residual_layernorm_fwd|attention(_train)?_bwd_mma(_recompute_dq)?)/bert-base(/s128)? |linear_bwd_d[xwb]/bert-base/)' "$OUT/bench_kernels.log" 2>/dev/null | cut -c1-160 |
    tee -a "$SUMMARY"
  # The attention kernels at head_dim 64 (BERT's): registers, shared/local bytes and blocks an SM as
  # the device loaded them, against what attention.cu's napkin math assumes (3 blocks an SM, no spills).
  grep -E '^  attention_[a-z_]+<64(, [48])?> ' "$OUT/bench_kernels.log" 2>/dev/null | tee -a "$SUMMARY"
  # Any attention kernel, any head_dim, with local memory (spills or a stack: ptxas here said 0 bytes for
  # all of them, fused<128, 4> at exactly 255 registers): named, for it may be this device's ptxas.
  awk '/^  attention_.* B local / { for (i = 1; i < NF; ++i) if ($(i + 1) == "B" && $(i + 2) == "local" && $i > 0)
         print "SPILLS: " $0 }' "$OUT/bench_kernels.log" 2>/dev/null | tee -a "$SUMMARY"
  # The specialised kernels against the general ones they replaced, same run (the "_baseline" twins,
  # KernelPaths::baseline()): above 1.00x the replacement pays on this device; below, it loses its default.
  note "bench_kernels: specialised kernel vs KernelPaths::baseline(), same run (baseline ms / default ms):"
  # (A failed case's line has "-" for its time: such a pair is listed as not measured, never as 0.00x.)
  awk '$1 ~ /_baseline\// { base[$1] = $2 } { ms[$1] = $2 }
       END { for (name in base) { twin = name; sub(/_baseline\//, "/", twin);
               if (base[name] ~ /^[0-9.]+$/ && ms[twin] ~ /^[0-9.]+$/ && ms[twin] > 0)
                 printf "  %-44s %9.4f ms vs %9.4f ms baseline: %.2fx\n", twin, ms[twin], base[name], base[name] / ms[twin]
               else printf "  %-44s not measured (a case of the pair failed)\n", twin } }' \
    "$OUT/bench_kernels.log" 2>/dev/null | sort | tee -a "$SUMMARY"
  # Against the newest earlier device run of the same GPU kept in bench/results/ (bench/compare_kernels.py;
  # appended to bench_kernels.log, for want of a ninth file): what the changes since then bought. The
  # summary gets the kernels the last sessions changed without a device.
  if [[ -f "$OUT/bench_kernels.json" ]]; then
    baselines=(bench/results/*/kernels.json)  # named by device and date: newest last
    for ((i = ${#baselines[@]} - 1; i >= 0; i--)); do
      baseline=${baselines[i]}
      [[ -f $baseline ]] || continue
      { echo; echo "== against $baseline (bench/compare_kernels.py)"; } >>"$OUT/bench_kernels.log"
      python3 bench/compare_kernels.py "$baseline" "$OUT/bench_kernels.json" >>"$OUT/bench_kernels.log" 2>&1
      compare_rc=$?
      [[ $compare_rc == 2 ]] && continue  # another device: try an older run
      note "bench_kernels against $baseline (exit $compare_rc), speedup before/after:"
      sed -n '/^== against/,$p' "$OUT/bench_kernels.log" |
        grep -E '^(same run:|(attention|attention_train)_(fwd|bwd)_mma(_recompute_dq)?/bert-base|(dropout_)?(residual_)?layernorm_(fwd|bwd)/bert-base|dropout_fwd/bert-base|bias_gelu_(fwd|bwd)/bert-base|cross_entropy/bert-base|linear_(fwd|bwd)/bert-base/mlm_decoder )' |
        tee -a "$SUMMARY"
      break
    done
  fi
fi

# ---- PyTorch SDPA reference, side by side -----------------------------------------------------------------
torch_rc=0
if stage attention; then
  ours_arg=()
  [[ -f "$OUT/bench_kernels.json" ]] && ours_arg=(--ours "$OUT/bench_kernels.json")
  PYTHONUNBUFFERED=1 timeout "$TORCH_TIMEOUT" python3 bench/bench_attention_torch.py \
    --json "$OUT/bench_attention_torch.json" "${ours_arg[@]}" >"$OUT/bench_attention_torch.log" 2>&1
  torch_rc=$?
  note "bench_attention_torch: exit $torch_rc; ours / the fastest torch backend per case (above 1: ours is faster):"
  [[ $torch_rc == 0 ]] || tail -n 2 "$OUT/bench_attention_torch.log" 2>/dev/null | tee -a "$SUMMARY"
  sed -n '/^side by side/,$p' "$OUT/bench_attention_torch.log" 2>/dev/null |
    awk '$1 ~ /^attention/ { print "  " $1, $NF }' | tee -a "$SUMMARY"
fi

# ---- where a training step's time goes: every op of one BERT-base seq-128 forward+backward timed ---------
# (bench_train_step --profile; batch 128 as the training bench's base-128). Appended to bench_kernels.log;
# the summary gets the ops over 1% of the step and the time between ops.
profile_rc=0
if stage profile; then
  stage_budget "$PROFILE_TIMEOUT"
  if [[ ! -x "$BIN_DIR/bench_train_step" ]]; then
    note "profile: not run (no bench_train_step in $BIN_DIR)"
  elif ((budget < 20)); then
    note "profile: not run (${budget} s left of GPU_CHECK_TOTAL=$TOTAL_BUDGET)"
  else
    { echo; echo "== $(stamp) bench_train_step --profile (base-128, batch 128)"; } >>"$OUT/bench_kernels.log"
    timeout "$budget" "$BIN_DIR/bench_train_step" --device cuda --hidden 768 --layers 12 --heads 12 \
      --intermediate 3072 --vocab 30522 --seq 128 --batch 128 --steps 3 --warmup 2 --profile \
      >/tmp/bertforge-profile.log 2>&1
    profile_rc=$?
    cat /tmp/bertforge-profile.log >>"$OUT/bench_kernels.log"
    note "profile (bench_train_step --profile, base-128): exit $profile_rc"
    grep -E '^(step |host |profile )' /tmp/bertforge-profile.log | tee -a "$SUMMARY"
    awk '/^profile /{on=1; next} on && /between ops/ {print; next}
         on && /%/ { for (i = 1; i <= NF; ++i) if ($i ~ /%$/ && $i + 0 >= 1) { print; break } }' \
      /tmp/bertforge-profile.log | tee -a "$SUMMARY"
  fi
fi

# One BERT-base seq-128 training step benchmark (batch 128 as the training bench's base-128, 10 timed
# steps after 3 warm-up) for stage $1 within $2 seconds, the rest of the arguments added: its output
# appended to bench_kernels.log (and left in /tmp/bertforge-step.log), its step and throughput lines
# in the summary, its exit status in step_rc.
base128_step() {
  local label=$1 seconds=$2
  shift 2
  { echo; echo "== $(stamp) bench_train_step base-128 $*"; } >>"$OUT/bench_kernels.log"
  timeout "$seconds" "$BIN_DIR/bench_train_step" --device cuda --hidden 768 --layers 12 --heads 12 \
    --intermediate 3072 --vocab 30522 --seq 128 --batch 128 --steps 10 --warmup 3 "$@" >/tmp/bertforge-step.log 2>&1
  step_rc=$?
  cat /tmp/bertforge-step.log >>"$OUT/bench_kernels.log"
  note "$label: base-128 step, $*: exit $step_rc"
  grep -E '^(step |host |throughput )' /tmp/bertforge-step.log | tee -a "$SUMMARY"
}

# ---- what the specialised kernels buy a whole step (KernelPaths, kernels/cuda/ops_cuda.h) -----------------
# base-128 training steps with --kernel-paths baseline (the general kernels the LayerNorm, cross-entropy,
# GELU and attention-backward rewrites replaced), with the default, and with the default paths but the
# MLM decoder in chunks of 1,024 rows (three a step, as before the CUDA default became 4,096: one), one
# after the other in this call. Appended to bench_kernels.log; the summary gets each step's time and
# throughput.
paths_rc=0
if stage paths; then
  stage_budget "$PATHS_TIMEOUT"
  if [[ ! -x "$BIN_DIR/bench_train_step" ]]; then
    note "paths: not run (no bench_train_step in $BIN_DIR)"
  elif ((budget < 30)); then
    note "paths: not run (${budget} s left of GPU_CHECK_TOTAL=$TOTAL_BUDGET)"
  else
    paths_end=$((SECONDS + budget))
    for run in baseline default chunks-1024; do
      left=$((paths_end - SECONDS))
      case $run in
        baseline) left=$((left / 3)) args=(--kernel-paths baseline) ;;
        default) left=$((left / 2)) args=(--kernel-paths default) ;;
        chunks-1024) args=(--kernel-paths default --decoder-chunk-rows 1024) ;;
      esac
      if ((left < 15)); then
        note "paths: base-128 step with ${args[*]} not run (${left} s left)"
        paths_rc=124
        continue
      fi
      base128_step paths "$left" "${args[@]}"
      ((step_rc != 0)) && paths_rc=$step_rc
    done
  fi
fi

# ---- what each specialised kernel buys a whole step, one KernelPaths field at a time ------------------------
# Not in the default stages (8 runs of ~10-15 s): GPU_CHECK_STAGES="paths fields" in a call of its own.
# A base-128 step with the default paths, then one with each field alone set to false, within
# GPU_CHECK_FIELDS_TIMEOUT s; appended to bench_kernels.log, each step's time and throughput in the
# summary. A field whose step is faster when false should lose its default.
fields_rc=0
if stage fields; then
  stage_budget "$FIELDS_TIMEOUT"
  if [[ ! -x "$BIN_DIR/bench_train_step" ]]; then
    note "fields: not run (no bench_train_step in $BIN_DIR)"
  else
    fields_end=$((SECONDS + budget))
    for field in default $KERNEL_PATH_FIELDS; do
      left=$((fields_end - SECONDS))
      if ((left < 20)); then
        note "fields: base-128 step with $field not run (${left} s left)"
        fields_rc=124
        continue
      fi
      paths=$field
      [[ $field != default ]] && paths="$field=false"
      base128_step fields "$((left < 40 ? left : 40))" --kernel-paths "$paths"
      ((step_rc != 0)) && fields_rc=$step_rc
    done
  fi
fi

# ---- what autotuning the cuBLASLt algorithms buys (Context::set_gemm_autotune) ------------------------------
# bench_kernels' linear cases with --gemm-autotune 8 (each GEMM shape's candidates timed, the plan lines
# say which rank won and by how much), then base-128 training steps without and with it, one after
# the other in this call. Appended to bench_kernels.log; the summary gets both steps' throughput and
# the plans whose winner was not the heuristic's first. If autotuning pays, it becomes the trainer's.
autotune_rc=0
if stage autotune; then
  stage_budget "$AUTOTUNE_TIMEOUT"
  if [[ ! -x "$BIN_DIR/bench_kernels" || ! -x "$BIN_DIR/bench_train_step" ]]; then
    note "autotune: not run (no bench_kernels or bench_train_step in $BIN_DIR)"
  elif ((budget < 30)); then
    note "autotune: not run (${budget} s left of GPU_CHECK_TOTAL=$TOTAL_BUDGET)"
  else
    autotune_end=$((SECONDS + budget))
    { echo; echo "== $(stamp) bench_kernels --filter linear_ --gemm-autotune 8"; } >>"$OUT/bench_kernels.log"
    timeout $((budget / 2)) "$BIN_DIR/bench_kernels" --filter linear_ --gemm-autotune 8 --repeats "$BENCH_REPEATS" \
      >/tmp/bertforge-autotune.log 2>&1
    autotune_rc=$?
    cat /tmp/bertforge-autotune.log >>"$OUT/bench_kernels.log"
    note "autotune: bench_kernels --filter linear_ --gemm-autotune 8: exit $autotune_rc; plans not on rank 0:"
    grep -E '; rank [1-9]' /tmp/bertforge-autotune.log | sed 's/^ *//' | cut -c1-200 | tee -a "$SUMMARY"
    grep -E '^linear_bwd(_d[xwb])?/bert-base/' /tmp/bertforge-autotune.log | cut -c1-100 | tee -a "$SUMMARY"
    for tune in 0 8; do
      left=$((autotune_end - SECONDS))
      ((tune == 0)) && left=$((left / 2))  # the tuned run, the point of the pair, must get its half
      if ((left < 15)); then
        note "autotune: base-128 step with --gemm-autotune $tune not run (${left} s left)"
        autotune_rc=124
        continue
      fi
      base128_step autotune "$left" --gemm-autotune "$tune"
      ((step_rc != 0)) && autotune_rc=$step_rc
      ((tune > 1)) && grep -E 'rank [1-9][0-9]* of' /tmp/bertforge-step.log | sed 's/^ *//' | cut -c1-200 |
        tee -a "$SUMMARY"
    done
  fi
fi

# ---- compute-sanitizer over the GPU tests -------------------------------------------------------------------
sanitize_rc=0
if stage sanitize; then
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
  stage_budget "$SANITIZE_TIMEOUT"
  if [[ -z $sanitizer ]]; then
    sanitize_rc=127
    note "compute-sanitizer: not run (not found)"
  elif ((budget < 20)); then
    sanitize_rc=124
    note "compute-sanitizer: not run ($budget s left of GPU_CHECK_TOTAL=$TOTAL_BUDGET)"
  else
    echo "== $(stamp) compute-sanitizer ($sanitizer, $budget s)" >>"$OUT/tests.log"
    deadline=$((SECONDS + budget))
    clean="" dirty="" incomplete=""
    # "tool:test[:Catch2 test spec, '+' for a space]" in priority order: the kernels with hand-written
    # indexing first. racecheck runs the attention test's smaller case: the whole test outlasts any budget.
    jobs=${GPU_CHECK_SANITIZE_JOBS:-memcheck:test_cuda_attention memcheck:test_cuda_layernorm \
      memcheck:test_cuda_cross_entropy memcheck:test_cuda_embeddings memcheck:test_cuda_gelu memcheck:test_cuda_heads \
      memcheck:test_cuda_adamw memcheck:test_cuda_dropout memcheck:test_cuda_mma_sync memcheck:test_cuda_gemm \
      racecheck:test_cuda_attention:cuda+attention+without+a+mask* \
      synccheck:test_cuda_attention initcheck:test_cuda_layernorm memcheck:test_cuda_model}
    set -f  # a job's test spec may hold '*': split the list, never glob it
    for job in $jobs; do
      tool=${job%%:*} name=${job#*:} spec=()
      if [[ $name == *:* ]]; then spec=("${name#*:}") name=${name%%:*} spec[0]=${spec[0]//+/ }; fi
      [[ -x "$BIN_DIR/$name" ]] || continue
      left=$((deadline - SECONDS))
      if ((left < 5)); then incomplete="$incomplete $job(not-run)"; continue; fi
      echo "-- $tool $name" >>"$OUT/tests.log"
      timeout "$left" "$sanitizer" --tool "$tool" --error-exitcode 99 --print-limit 20 "$BIN_DIR/$name" "${spec[@]}" \
        >/tmp/bertforge-sanitize.log 2>&1
      rc=$?
      # the sanitizer's own lines and the test's summary, not every Catch2 line
      grep -E '^========|test cases|assertions|FAILED|fatal error' /tmp/bertforge-sanitize.log | head -n 60 >>"$OUT/tests.log"
      echo "-- $tool $name: exit $rc" >>"$OUT/tests.log"
      # gVisor machines (the device tool's KINDS.md): the sanitizer refuses the device for every job.
      if grep -q 'Device not supported' /tmp/bertforge-sanitize.log; then
        incomplete="$incomplete (the sanitizer does not support this machine's device: skipped)"
        break
      fi
      case $rc in
        0) clean="$clean $job" ;;
        124 | 137) incomplete="$incomplete $job(timeout)" ;;
        *) dirty="$dirty $job(rc=$rc)"; sanitize_rc=1 ;;
      esac
    done
    set +f
    note "compute-sanitizer: clean:${clean:- none}${dirty:+; FAILED:$dirty}${incomplete:+; incomplete:$incomplete}"
  fi
fi

# ---- the README's pipeline on the demo corpus, trained and queried on the GPU ------------------------------
demo_rc=0
if stage demo; then
  corpus=$ROOT/.gpu-deps/demo/ko_corpus.txt
  demo=/tmp/bertforge-demo
  stage_budget "$DEMO_TIMEOUT"
  if [[ ! -s $corpus || ! -x "$BIN_DIR/bert_infer" ]]; then
    demo_rc=127
    note "demo: not run (no $corpus or no bert_infer in $BIN_DIR: scripts/fetch_gpu_deps.sh --prebuilt brings both)"
  elif ((budget < 40)); then
    demo_rc=124
    note "demo: not run ($budget s left of GPU_CHECK_TOTAL=$TOTAL_BUDGET)"
  else
    echo "== $(stamp) demo on the GPU ($DEMO_STEPS steps, $budget s)" >>"$OUT/tests.log"
    deadline=$((SECONDS + budget))
    rm -rf "$demo" && mkdir -p "$demo"
    # configs/demo_cpu.toml's model and schedule, on the GPU, for DEMO_STEPS steps
    sed -e "s|runs/demo|$demo|g" -e "s|^max_steps = .*|max_steps = $DEMO_STEPS|" \
        -e 's|^\[training\]$|[training]\ndevice = "cuda"|' -e '/^threads = /d' configs/demo_cpu.toml >"$demo/demo_gpu.toml"
    {
      "$BIN_DIR/bert_prepare" clean --input "$corpus" --out "$demo/clean.txt" --dedupe &&
        "$BIN_DIR/bert_tokenizer" train --input "$demo/clean.txt" --out "$demo/tokenizer" --vocab-size 16000 \
          --min-frequency 2 --special-tokens "[PAD]" "[UNK]" "[CLS]" "[SEP]" "[MASK]" "[RRN]" "[PHONE]" "[EMAIL]" \
          "[CARD]" "[ACCOUNT]" "[IP]" &&
        "$BIN_DIR/bert_prepare" build --tokenizer "$demo/tokenizer" --input "$demo/clean.txt" --out "$demo/shards" \
          --max-seq-len 128 --valid-fraction 0.02 --seed 42
    } >/tmp/bertforge-demo.log 2>&1
    prep_rc=$?
    tail -n 3 /tmp/bertforge-demo.log >>"$OUT/tests.log"
    train_left=$((deadline - SECONDS - 25))  # leaves the queries theirs
    if ((prep_rc != 0)); then
      demo_rc=$prep_rc
      note "demo: data preparation failed (exit $prep_rc; tests.log)"
    elif ((train_left < 10)); then
      demo_rc=124
      note "demo: not run ($train_left s left for training)"
    else
      start=$SECONDS
      timeout -s TERM -k 20 "$train_left" "$BIN_DIR/bert_train" --config "$demo/demo_gpu.toml" >/tmp/bertforge-demo-train.log 2>&1
      train_exit=$?
      seconds=$((SECONDS - start))
      grep -vE '^step [0-9]+ ' /tmp/bertforge-demo-train.log | tail -n 8 >>"$OUT/tests.log"
      grep -E '^\{' "$demo/model/metrics.jsonl" 2>/dev/null | tail -n 3 >>"$OUT/tests.log"
      model=$demo/model
      if [[ ! -f $model/model.safetensors ]]; then  # stopped: its last checkpoint
        model=$(ls -d "$demo"/model/checkpoint-* 2>/dev/null | sort -V | tail -n 1)
      fi
      last=$(grep -o '"step": *[0-9]*' "$demo/model/metrics.jsonl" 2>/dev/null | tail -n 1 | grep -o '[0-9]*$')
      note "demo: bert_train --device cuda exit $train_exit after ${seconds} s (last logged step ${last:-none} of $DEMO_STEPS)"
      if [[ -z $model || ! -f $model/model.safetensors ]]; then
        demo_rc=1
        note "demo: no model to query"
      else
        printf '%s\n' "Enter 키를 [MASK]." "다음 [MASK] 클릭합니다." "Shift 키를 [MASK] 상태에서 클릭합니다." \
          "이순신은 [MASK] 중기의 무신이다." >"$demo/prompts.txt"
        printf '%s\t%s\n' "Enter 키를 [MASK]." "누릅니다" "다음 [MASK] 클릭합니다." "확인을" \
          "Shift 키를 [MASK] 상태에서 클릭합니다." "누른" "파일 [MASK] 선택합니다." "형식을" \
          "Ctrl 키를 누른 [MASK] 클릭합니다." "상태에서" >"$demo/probe.tsv"
        printf '%s\t%s\t%s\n' "인치 당 1440개의 트윕 또는 센티미터 당 567개의 트윕이 존재합니다." "567" "in the corpus" \
          "인치 당 1440개의 트윕 또는 센티미터 당 813개의 트윕이 존재합니다." "813" "not in it" >"$demo/canaries.tsv"
        for device in cuda cpu; do
          for query in "--input $demo/prompts.txt --top-k 5" "--probe $demo/probe.tsv" \
                       "--exposure $demo/canaries.tsv --candidates 999"; do
            left=$((deadline - SECONDS))
            ((left < 3)) && { echo "-- bert_infer --device $device $query: no time left" >>"$OUT/tests.log"; continue; }
            echo "-- bert_infer --device $device $query ($model)" >>"$OUT/tests.log"
            # shellcheck disable=SC2086  # the query's words
            timeout "$left" "$BIN_DIR/bert_infer" --model "$model" --device "$device" $query >>"$OUT/tests.log" 2>&1
            rc=$?
            echo "-- exit $rc" >>"$OUT/tests.log"
            ((rc == 0)) || demo_rc=$rc
          done
        done
        note "demo: bert_infer (fill-mask, probe, exposure; cuda then cpu): $([[ $demo_rc == 0 ]] && echo ok || echo "exit $demo_rc (tests.log)")"
      fi
    fi
  fi
fi

# ---- training throughput: ours (bench_train_step --device cuda) vs HF BertForPreTraining -------------------
train_rc=0
if stage train; then
  reserve=0  # kept for this stage until now
  stage_budget "$TRAIN_TIMEOUT"
  train_budget=$budget
  if [[ ! -x "$BIN_DIR/bench_train_step" ]]; then
    train_rc=127
    note "bench_train_gpu: not run (no bench_train_step in $BIN_DIR)"
  elif ((train_budget < 60)); then
    train_rc=124
    note "bench_train_gpu: not run (${train_budget} s left of GPU_CHECK_TOTAL=$TOTAL_BUDGET)"
  else
    echo "== $(stamp) bench_train_gpu (budget ${train_budget} s${TRAIN_SHAPES:+, shapes $TRAIN_SHAPES}); its output:" >>"$SETUP_LOG"
    # The outer timeout is a backstop: the script keeps to --budget-s itself (each variant's timeout is
    # what is left), and needs a few seconds after it for the table and the JSON. Its output goes into
    # setup.log as it comes, so a call cut short keeps each variant's result line.
    PYTHONUNBUFFERED=1 timeout $((train_budget + 8)) python3 bench/bench_train_gpu.py --bench "$BIN_DIR/bench_train_step" \
      ${GPU_CHECK_TRAIN_VARIANTS:+--variants "$GPU_CHECK_TRAIN_VARIANTS"} ${TRAIN_SHAPES:+--shapes "$TRAIN_SHAPES"} \
      --budget-s "$train_budget" --json "$OUT/bench_train_gpu.json" 2>&1 |
      tee /tmp/bertforge-bench-train-gpu.log >>"$SETUP_LOG"
    train_rc=${PIPESTATUS[0]}
    note "bench_train_gpu: exit $train_rc (budget ${train_budget} s${TRAIN_SHAPES:+, shapes $TRAIN_SHAPES}):"
    # each variant's result ("[shape] variant (timeout N s) ... X tokens/s, Y ms/step", or why it failed or
    # was skipped), the table's rows and the projection
    grep -E '^(projection|\| [a-z]|\[[^]]*\] [a-z_]+( \(timeout|: | skipped))' /tmp/bertforge-bench-train-gpu.log |
      head -n 40 | tee -a "$SUMMARY"
  fi
fi

# ---- what the reply's tail shows -------------------------------------------------------------------------
echo
echo "==== bench_kernels (median ms with L2 flushed) ===="
sed -n '/^case /,$p' "$OUT/bench_kernels.log" 2>/dev/null | cut -c1-110
echo
echo "==== attention side by side ===="
sed -n '/^side by side/,$p' "$OUT/bench_attention_torch.log" 2>/dev/null
echo
echo "==== training throughput: ours vs HF (tokens/s) ===="
sed -n '/^device: .*MFU against/,/^total /p' /tmp/bertforge-bench-train-gpu.log 2>/dev/null | grep -v '^\[' | cut -c1-200
echo
echo "==== summary ===="
cat "$SUMMARY"
[[ $build_ok == 1 && $failed == 0 && $curve_rc == 0 && $bench_rc == 0 && $torch_rc == 0 && $profile_rc == 0 &&
   $paths_rc == 0 && $fields_rc == 0 && $autotune_rc == 0 &&
   $sanitize_rc == 0 && $demo_rc == 0 && $train_rc == 0 ]]
