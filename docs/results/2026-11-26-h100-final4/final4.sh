#!/usr/bin/env bash
# The gpu.json cases the earlier calls did not reach, on the final kernels (2026-11-26).
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.device/lib:${LD_LIBRARY_PATH:-}
FP=$PWD/.device/flashplus; CFG=.device/configs
timeout 270 $FP verify --backend cuda --suite $CFG/suites/gpu.json --filter deterministic/ --filter layout/ --filter cases/bwd --filter window/bwd --json $OUT/verify-gpu-rest.json > $OUT/verify-gpu-rest.log 2>&1
echo "rc=$?"; grep -oE "^\[ *[0-9]+/[0-9]+\] (PASS|FAIL|UNSUP|XFAIL) +[^ ]+" $OUT/verify-gpu-rest.log | sort -u | awk '{print $2}' | sort | uniq -c; grep -E "FAIL" $OUT/verify-gpu-rest.log | head -3; tail -2 $OUT/verify-gpu-rest.log
