#!/usr/bin/env bash
# apps/bert_device_info on the emulated device (bert_device_info_emulated) and the line
# scripts/gpu_tests_notice.sh (scripts/test.sh) prints for each of its exit statuses: 0 with a device
# the build's kernels run on, 3 without a device, 5 with a GPU the build has no kernels for (an
# A100, sm_80, under the sm_90a build), whose line says how to rebuild.
# Usage: test_bert_device_info.sh BERT_DEVICE_INFO_EMULATED GPU_TESTS_NOTICE_SH
set -uo pipefail
bin=$1 notice=$2
failures=0
check() {  # check DESCRIPTION CONDITION...
  local what=$1
  shift
  if "$@"; then echo "ok      $what"; else echo "FAILED  $what"; failures=$((failures + 1)); fi
}
contains() { [[ $1 == *"$2"* ]]; }

run() {  # run ENV...: sets out, rc and line (the notice's) for bert_device_info under ENV
  rc=0
  out=$(env "$@" "$bin" 2>&1) || rc=$?
  line=$(env "$@" "$notice" "$bin")
}

run BERT_EMULATED_DEVICE_SM=90
check "sm_90: exit 0 ($rc)" test "$rc" = 0
check "sm_90: names the device: $out" contains "$out" "NVIDIA H200 (bertforge host emulation) (sm_90, 132 SMs, "
check "sm_90: the notice: $line" test "$line" = "GPU tests: will run on $out"

run BERT_EMULATED_DEVICE_COUNT=0
check "no device: exit 3 ($rc)" test "$rc" = 3
check "no device: says so: $out" test "$out" = "no CUDA device: none found (BERT_EMULATED_DEVICE_COUNT=0)"
check "no device: the notice: $line" test "$line" = "GPU tests: skipped: $out"

run BERT_EMULATED_DEVICE_SM=80
check "sm_80: exit 5 ($rc)" test "$rc" = 5
check "sm_80: two lines, the device then why ($out)" test "$(wc -l <<<"$out")" = 2
last=$(tail -n 1 <<<"$out")
check "sm_80: why, and how to rebuild: $last" contains "$last" \
  'CUDA device 0 (sm_80) cannot run this build'"'"'s kernels: no kernel image is available for execution on the device'
check "sm_80: the rebuild line" contains "$last" \
  'cmake -B build -DBERT_CUDA_GENCODE="-gencode=arch=compute_80,code=sm_80", then scripts/build.sh'
check "sm_80: the notice: $line" test "$line" = "GPU tests: will FAIL: $last (bert_device_info exit 5)"

if ((failures > 0)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
