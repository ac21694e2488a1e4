#!/usr/bin/env bash
# Final merged-binary check (2026-11-26): correctness gates, memcheck, autotune, bench + peers.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.device/lib:${LD_LIBRARY_PATH:-}
FP=$PWD/.device/flashplus; CFG=.device/configs
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
step info; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; $FP info | tail -6
step "verify ci.json cuda"
timeout 150 $FP verify --backend cuda --suite $CFG/suites/ci.json --json $OUT/verify-ci.json > $OUT/verify-ci.log 2>&1
echo "rc=$?"; tail -2 $OUT/verify-ci.log; grep -E "FAIL|OOB" $OUT/verify-ci.log | head -5
step "kv cases through the portable path"
FLASHPLUS_GPU_FALLBACK=1 timeout 60 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter kvcache > $OUT/verify-kvfb.log 2>&1
echo "rc=$?"; tail -1 $OUT/verify-kvfb.log; grep -E "FAIL" $OUT/verify-kvfb.log | head -3
step "memcheck smoke"
timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite $CFG/suites/smoke.json > $OUT/memcheck.log 2>&1
echo "rc=$?"; grep -E "ERROR SUMMARY|verify:" $OUT/memcheck.log | tail -2
step autotune
timeout 110 $FP autotune --backend cuda --config $CFG/models/fa-bench.json --config $CFG/models/llama7b.json --dtype bf16 --out $OUT/tuned.json --budget 90 > $OUT/autotune.log 2>&1
echo "rc=$?"; tail -4 $OUT/autotune.log
step "bench fa-bench (tuned table from this run)"
FLASHPLUS_TUNED_TABLE=$OUT/tuned.json timeout 120 $FP bench --config $CFG/models/fa-bench.json --backend cuda --max-time 1 --json $OUT/bench.json > $OUT/bench.log 2>/dev/null
echo "rc=$?"; grep -E "fwd|bwd" $OUT/bench.log | awk '{print $1,$2,$4,$5,$9,$(NF-4)}' | head -30
step "peers (FA2, cuDNN) same run"
ONLY=sdpa_flash,sdpa_cudnn OUT=$OUT timeout 150 python3 .device/peer_bench.py > $OUT/peers.log 2>&1
echo "rc=$?"; grep -E "TFLOP" $OUT/peers.log | awk '{print $1,$2,$3,$4,$5,$8}' | head -50
step done
