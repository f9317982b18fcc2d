#!/usr/bin/env bash
# The test command: install dependencies, build, make the demo corpus (cached), run every test.
# GPU tests report "Skipped" (no CUDA device) on machines without one; they never pass silently.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
scripts/build_demo_corpus.sh >/dev/null
# Say up front whether the GPU tests will run or report "Skipped", and why.
scripts/gpu_tests_notice.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j 2 "$@"
