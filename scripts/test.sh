#!/usr/bin/env bash
# The test command: install dependencies, build, make the demo corpus (cached), run every test.
# GPU tests report "Skipped" (no CUDA device) on machines without one; they never pass silently.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
scripts/build_demo_corpus.sh >/dev/null
# Say up front whether the GPU tests will run or report "Skipped", and why.
device_rc=0
device_info=$("${BUILD_DIR:-build}/bert_device_info" 2>&1) || device_rc=$?
case $device_rc in
  0) ;;
  3) echo "GPU tests: skipped: $(head -n 1 <<<"$device_info")" ;;
  *) echo "GPU tests: will FAIL: $(tail -n 1 <<<"$device_info")" ;;
esac
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j 2 "$@"
