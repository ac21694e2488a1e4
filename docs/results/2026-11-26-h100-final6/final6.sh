#!/usr/bin/env bash
# Final merged main of the 2026-11-26 second session (~04:30 UTC): varlen on the Hopper forward,
# kv-cache early report, one workspace pool. Correctness gates, varlen vs dense, decode vs peers.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.device/lib:${LD_LIBRARY_PATH:-}
xz -d -T4 -c .device/flashplus.xz > /tmp/flashplus && chmod +x /tmp/flashplus
FP=/tmp/flashplus; CFG=.device/configs
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
step info; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; $FP info | tail -4
step "verify ci.json cuda"
timeout 100 $FP verify --backend cuda --suite $CFG/suites/ci.json --json $OUT/verify-ci.json > $OUT/verify-ci.log 2>&1
echo "rc=$?"; tail -1 $OUT/verify-ci.log; grep -E "FAIL|OOB" $OUT/verify-ci.log | head -5
step "memcheck ci.json varlen + kvcache"
timeout 70 compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter varlen --filter kvcache > $OUT/memcheck.log 2>&1
echo "rc=$?"; grep -E "ERROR SUMMARY|verify:" $OUT/memcheck.log | tail -2
step "gpu_varlen fwd groups not yet run on the wgmma varlen forward"
timeout 80 $FP verify --backend cuda --suite $CFG/suites/gpu_varlen.json --filter dims/ --filter causal_alibi/ --filter mixed_fp16/ --filter qk/ > $OUT/verify-gv.log 2>&1
echo "rc=$?"; grep -oE "(PASS|FAIL) +[^ ]+" $OUT/verify-gv.log | sort -u | awk '{print $1}' | sort | uniq -c; tail -1 $OUT/verify-gv.log
step "gpu_kvcache cases + long_page16"
timeout 40 $FP verify --backend cuda --suite $CFG/suites/gpu_kvcache.json --filter cases --filter long_page16 > $OUT/verify-kv.log 2>&1
echo "rc=$?"; tail -1 $OUT/verify-kv.log
step "varlen fwd bench"
timeout 45 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode fwd --max-time 0.3 > $OUT/bench-varlen.log 2>/dev/null
echo "rc=$?"; grep -E "varlen/varlen|tokens16k|tokens6k" $OUT/bench-varlen.log | awk '{print $1,$4,$5,$10,$11,$15,$16,$17}'
step "decode bench, call timing"
timeout 45 $FP bench --config $CFG/models/llama3-8b.json --workload decode --backend cuda --min-time 0.3 --max-time 0.6 > $OUT/bench-decode.log 2>/dev/null
echo "rc=$?"; grep -E "decode" $OUT/bench-decode.log | tail -9
step "decode bench, stream timing"
timeout 45 $FP bench --config $CFG/models/llama3-8b.json --workload decode --backend cuda --timing stream --min-time 0.3 --max-time 0.6 > $OUT/bench-decode-stream.log 2>/dev/null
echo "rc=$?"; grep -E "decode" $OUT/bench-decode-stream.log | tail -9
step "decode peers"
DECODE=1 ONLY=sdpa MODES=fwd SEQS=1024 DIMS=128 OUT=$OUT timeout 60 python3 .device/peer_bench.py > $OUT/peers-decode.log 2>&1
echo "rc=$?"; grep -vE "^\s*$" $OUT/peers-decode.log | tail -10
step done
