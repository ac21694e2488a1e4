#!/usr/bin/env bash
# Second merged-binary check (2026-11-26): gpu.json, racecheck, decode bench + peers.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.device/lib:${LD_LIBRARY_PATH:-}
FP=$PWD/.device/flashplus; CFG=.device/configs
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
step "verify ci.json kvcache (new defaults)"
timeout 60 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter kvcache > $OUT/verify-kv.log 2>&1
echo "rc=$?"; tail -1 $OUT/verify-kv.log
step "decode bench"
timeout 100 $FP bench --config $CFG/models/llama3-8b.json --workload decode --backend cuda --min-time 0.3 --max-time 0.6 --json $OUT/bench-decode.json > $OUT/bench-decode.log 2>/dev/null
echo "rc=$?"; grep decode $OUT/bench-decode.log | awk '{print $4,$5,$10,$(NF-4),$(NF-3),$(NF-2)}'
step "peers decode"
DECODE=1 ONLY=sdpa MODES=fwd SEQS=1024 DIMS=128 OUT=$OUT timeout 70 python3 .device/peer_bench.py 2>&1 | grep -E "^decode|PEAK" > $OUT/peers-decode.log
cat $OUT/peers-decode.log
step "racecheck smoke"
timeout 100 compute-sanitizer --tool racecheck --error-exitcode 9 $FP verify --backend cuda --suite $CFG/suites/smoke.json > $OUT/racecheck.log 2>&1
echo "rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|verify:" $OUT/racecheck.log | tail -3
step "verify gpu.json"
timeout 240 $FP verify --backend cuda --suite $CFG/suites/gpu.json --json $OUT/verify-gpu.json > $OUT/verify-gpu.log 2>&1
echo "rc=$?"; tail -2 $OUT/verify-gpu.log; grep -cE "PASS" $OUT/verify-gpu.log; grep -E "FAIL|OOB" $OUT/verify-gpu.log | head -5
step done
