#!/usr/bin/env bash
# One line saying whether the GPU tests will run, report "Skipped", or fail, from bert_device_info's
# exit status (apps/bert_device_info.cpp: 0 a device this build's kernels run on, 3 no device, 5 a
# device they cannot load on). scripts/test.sh prints it before ctest. $1: the bert_device_info to ask
# (default: ${BUILD_DIR:-build}/bert_device_info).
set -uo pipefail
info_bin=${1:-${BUILD_DIR:-build}/bert_device_info}
rc=0
info=$("$info_bin" 2>&1) || rc=$?
case $rc in
  0) echo "GPU tests: will run on $(head -n 1 <<<"$info")" ;;
  3) echo "GPU tests: skipped: $(head -n 1 <<<"$info")" ;;
  *) echo "GPU tests: will FAIL: $(tail -n 1 <<<"$info") (bert_device_info exit $rc)" ;;
esac
