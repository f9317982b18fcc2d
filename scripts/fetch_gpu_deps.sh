#!/usr/bin/env bash
# Prepares .gpu-deps/ (git-ignored) for scripts/gpu_check.sh, the script run on the lent GPU
# machine. That machine's image has CUDA 13 (nvcc, cuBLAS), cmake, ninja and python3 with PyTorch,
# but nothing says it has Catch2, OpenBLAS or the zlib headers, and it cannot download anything.
# So this script, run HERE (Debian 12, x86-64, network), brings them as Debian packages:
#
#   .gpu-deps/debs/*.deb          catch2, OpenBLAS (OpenMP build: what the prebuilt binaries link;
#                                 pthread build + headers: a device build's) + libgfortran5/libquadmath0, libgomp1,
#                                 zlib1g(-dev): unpacked there with dpkg-deb -x into /tmp, never into /
#   .gpu-deps/demo/ko_corpus.txt  the Korean demo corpus (scripts/build_demo_corpus.sh's, when it is
#                                 cached here): gpu_check.sh's demo stage runs the README's pipeline
#                                 on it with bert_train and bert_infer --device cuda
#   .gpu-deps/prebuilt/bin.tar.xz (with --prebuilt BUILD_DIR) the GPU test executables,
#                                 bench_kernels, bench_train_step and the four tools built here; gpu_check.sh runs
#                                 them if every library they need resolves there, else it builds
#                                 from source on the device
#
# usage: scripts/fetch_gpu_deps.sh [--prebuilt BUILD_DIR]
#   BUILD_DIR: a CUDA build of this tree, e.g. after
#     cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DBERT_MPI=OFF
#     ninja -C build-gpu test_device bench_kernels bench_train_step bert_train bert_prepare bert_tokenizer bert_infer $(ninja -C build-gpu -t targets all | grep -oE '^test_cuda_[a-z_]+' | grep -v _emulated | sort -u)
#   The executables found there are brought up to date first (ninja), so none runs an older build's code.
# Everything lands in .gpu-deps/ (about 10 MB of .debs, the 4 MB corpus and the packed binaries); the device call's
# carry list names it: carry=[".gpu-deps"] (64 MiB limit for the whole tree that travels).
set -euo pipefail
cd "$(dirname "$0")/.."

DEPS=.gpu-deps
PACKAGES=(catch2 libopenblas0-openmp libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0 libgomp1 zlib1g zlib1g-dev)

prebuilt=""
while (($#)); do
  case "$1" in
    --prebuilt)
      [[ $# -ge 2 ]] || { echo "fetch_gpu_deps: --prebuilt needs a build directory" >&2; exit 2; }
      prebuilt="$2"
      shift 2
      ;;
    -h | --help)
      sed -n '2,26p' "$0"
      exit 0
      ;;
    *)
      echo "fetch_gpu_deps: unknown argument '$1' (see --help)" >&2
      exit 2
      ;;
  esac
done

if [[ "$(uname -m)" != x86_64 ]]; then
  echo "fetch_gpu_deps: this machine is $(uname -m); the GPU machine is x86-64: fetch the amd64 packages" \
       "with apt-get -o APT::Architecture=amd64 (see the device README) and do not use --prebuilt" >&2
  exit 1
fi

mkdir -p "$DEPS/debs"
missing=()
for p in "${PACKAGES[@]}"; do
  compgen -G "$DEPS/debs/${p}_*.deb" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "fetch_gpu_deps: downloading ${missing[*]}"
  (cd "$DEPS/debs" && apt-get download "${missing[@]}")
fi
ls -1 "$DEPS/debs"

corpus="${BERT_CACHE:-$HOME/.cache/bertforge}/demo/ko_corpus.txt"
if [[ -s "$corpus" ]]; then
  mkdir -p "$DEPS/demo" && cp "$corpus" "$DEPS/demo/ko_corpus.txt"
else
  echo "fetch_gpu_deps: no demo corpus at $corpus (scripts/build_demo_corpus.sh makes it): gpu_check.sh's demo stage will be skipped"
fi

if [[ -n "$prebuilt" ]]; then
  [[ -d "$prebuilt" ]] || { echo "fetch_gpu_deps: no build directory '$prebuilt'" >&2; exit 1; }
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
  mkdir -p "$staging/bin"
  # Executables older than the sources would run the last build's code on the device, silently: the
  # ones there are rebuilt first where ninja says they are out of date (nothing to do when current).
  targets=()
  for exe in "$prebuilt"/tests/test_device "$prebuilt"/tests/test_cuda_* "$prebuilt"/bench/bench_kernels \
             "$prebuilt"/bench/bench_train_step "$prebuilt"/bert_train "$prebuilt"/bert_prepare "$prebuilt"/bert_tokenizer "$prebuilt"/bert_infer; do
    [[ -f "$exe" && -x "$exe" && $exe != *_emulated* ]] && targets+=("${exe#"$prebuilt"/}")
  done
  ((${#targets[@]} == 0)) || ninja -C "$prebuilt" "${targets[@]}" >/dev/null ||
    { echo "fetch_gpu_deps: ninja -C $prebuilt failed to bring the executables up to date" >&2; exit 1; }
  found=0
  for exe in "$prebuilt"/tests/test_device "$prebuilt"/tests/test_cuda_* "$prebuilt"/bench/bench_kernels \
             "$prebuilt"/bench/bench_train_step "$prebuilt"/bert_train "$prebuilt"/bert_prepare "$prebuilt"/bert_tokenizer "$prebuilt"/bert_infer; do
    [[ -f "$exe" && -x "$exe" ]] || continue
    case "$(basename "$exe")" in test_cuda_plan | *_emulated | *_emulated_*) continue ;; esac  # CPU tests: CI runs them
    # The device image has no Open MPI: a prebuilt bert_train linking it would not start there.
    if readelf -d "$exe" | grep -q 'NEEDED.*libmpi'; then
      echo "fetch_gpu_deps: $exe links MPI, which the device lacks; configure $prebuilt with -DBERT_MPI=OFF" >&2
      exit 1
    fi
    cp "$exe" "$staging/bin/"
    strip --strip-debug "$staging/bin/$(basename "$exe")"
    found=$((found + 1))
  done
  ((found > 0)) || { echo "fetch_gpu_deps: no GPU executables under $prebuilt/tests or $prebuilt/bench" >&2; exit 1; }
  mkdir -p "$DEPS/prebuilt"
  git rev-parse HEAD >"$staging/bin/SOURCE_COMMIT" 2>/dev/null || true
  git status --short >>"$staging/bin/SOURCE_COMMIT" 2>/dev/null || true
  tar -C "$staging" -cJf "$DEPS/prebuilt/bin.tar.xz" bin
  echo "fetch_gpu_deps: packed $found executables into $DEPS/prebuilt/bin.tar.xz" \
       "($(du -h "$DEPS/prebuilt/bin.tar.xz" | cut -f1))"
fi
du -sh "$DEPS"
