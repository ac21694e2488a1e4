#!/usr/bin/env bash
# Check of the query_range refactor (bwd kernels' prologue): verify + bwd bench (2026-11-26).
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.device/lib:${LD_LIBRARY_PATH:-}
FP=$PWD/.device/flashplus; CFG=.device/configs
timeout 60 $FP verify --backend cuda --suite $CFG/suites/ci.json > $OUT/verify-ci.log 2>&1; echo "verify rc=$?"; tail -1 $OUT/verify-ci.log
timeout 100 $FP verify --backend cuda --suite $CFG/suites/gpu.json --filter bwd > $OUT/verify-gpu-bwd.log 2>&1; echo "gpu bwd rc=$?"; grep -c "PASS" $OUT/verify-gpu-bwd.log; grep -E "FAIL" $OUT/verify-gpu-bwd.log | head -3; tail -1 $OUT/verify-gpu-bwd.log
timeout 90 $FP bench --config $CFG/models/fa-bench.json --backend cuda --mode bwd --max-time 1 --json $OUT/bench-bwd.json > $OUT/bench-bwd.log 2>/dev/null; echo "bench rc=$?"
grep bwd $OUT/bench-bwd.log | awk '{print $1,$4,$5,$(NF-4)}'
