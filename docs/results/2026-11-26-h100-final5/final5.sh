#!/usr/bin/env bash
# Merged main after backward round 2, varlen/dropout tensor-core backward, kv-cache round 4
# (2026-11-26, ~04:10 UTC): correctness gates, memcheck, fa-bench + peers, varlen/dropout bench.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.device/lib:${LD_LIBRARY_PATH:-}
FP=$PWD/.device/flashplus; CFG=.device/configs
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
step info; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; $FP info | tail -8
step "verify ci.json cuda"
timeout 130 $FP verify --backend cuda --suite $CFG/suites/ci.json --json $OUT/verify-ci.json > $OUT/verify-ci.log 2>&1
echo "rc=$?"; tail -2 $OUT/verify-ci.log; grep -E "FAIL|OOB" $OUT/verify-ci.log | head -5
step "bench fa-bench fwd+bwd (committed tuned table)"
timeout 130 $FP bench --config $CFG/models/fa-bench.json --backend cuda --mode fwd --mode bwd --max-time 0.4 --json $OUT/bench.json > $OUT/bench.log 2>/dev/null
echo "rc=$?"
step "peers (FA2, cuDNN) same run"
ONLY=sdpa_flash,sdpa_cudnn OUT=$OUT timeout 140 python3 .device/peer_bench.py > $OUT/peers.log 2>&1
echo "rc=$?"
grep -E "fwd|bwd" $OUT/bench.log | head -30
grep -E "TFLOP" $OUT/peers.log | head -60
step "memcheck smoke"
timeout 80 compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite $CFG/suites/smoke.json > $OUT/memcheck.log 2>&1
echo "rc=$?"; grep -E "ERROR SUMMARY|verify:" $OUT/memcheck.log | tail -2
step "varlen + dropout bench fwd/bwd"
timeout 50 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode fwd --mode bwd --max-time 0.3 > $OUT/bench-varlen.log 2>/dev/null
echo "rc=$?"; grep -vE "^\s*$" $OUT/bench-varlen.log | tail -24
step "gpu_varlen bwd_tc"
timeout 60 $FP verify --backend cuda --suite $CFG/suites/gpu_varlen.json --filter bwd_tc > $OUT/verify-gv.log 2>&1
echo "rc=$?"; grep -oE "(PASS|FAIL) +[^ ]+" $OUT/verify-gv.log | sort -u | awk '{print $1}' | sort | uniq -c; tail -1 $OUT/verify-gv.log
step done
