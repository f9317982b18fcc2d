#!/usr/bin/env bash
# The CPU tests and the HF conformance tests under AddressSanitizer and UndefinedBehaviorSanitizer
# (build-san/, CPU only: the CUDA kernels get their own ASan + UBSan run on the host in the main suite,
# test_cuda_kernels_emulated_asan). Any sanitizer report fails the test it came from.
#   scripts/sanitize.sh [extra ctest arguments for both passes, e.g. -R hostile]
# About 8 minutes on 2 cores, nearly all of it the build; CI runs it after scripts/test.sh. On a fresh
# machine run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build-san
PY="${BERT_CACHE:-$HOME/.cache/bertforge}/venv/bin/python"

# float-cast-overflow is not part of GCC's -fsanitize=undefined. GCC 12 under ASan warns
# maybe-uninitialized inside libstdc++'s <regex> (through catch.hpp): not ours, so not an error here.
san="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBERT_CUDA=OFF -DBERT_BUILD_BENCH=OFF \
  -DBERT_PYTHON="$PY" -DCMAKE_CXX_FLAGS="$san -Wno-maybe-uninitialized" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined,float-cast-overflow" >/dev/null
ninja -C "$BUILD" -j "$(nproc)"
scripts/build_demo_corpus.sh >/dev/null

export ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Open MPI leaks in MPI_Init/MPI_Finalize by design, partly from components it unloads before LSan
# looks (frames with no module to suppress by): the runs under mpirun check memory errors, not leaks.
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" -L 'cpu|conformance' -E '^trainer_mpi/' "$@"
ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}" \
  ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" -R '^trainer_mpi/' "$@"
