#!/usr/bin/env bash
# round 8, call 3: balanced split partition (EXP bit 0) and the count without a fence (bit 1)
set -uo pipefail
D=$PWD/.device
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 420))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
xz -d -T4 -c $D/flashplus.xz > $D/fp && chmod +x $D/fp
xz -d -T4 -c $D/kv_trace.xz > $D/kv_trace && chmod +x $D/kv_trace
FP=$D/fp; R="taskset -c 0-3"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
step "verify ci kvcache EXP=3"
FLASHPLUS_KVCACHE_EXP=3 timeout $(tmo 40) $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > /tmp/v1.log 2>&1; echo "rc=$?"; tail -1 /tmp/v1.log; grep -E "FAIL" /tmp/v1.log | head -3; cat /tmp/v1.log >> $OUT/verify.log
step "gpu_kvcache cases + long_page16 EXP=3"
FLASHPLUS_KVCACHE_EXP=3 timeout $(tmo 40) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases --filter long_page16 > /tmp/v3.log 2>&1; echo "rc=$?"; tail -1 /tmp/v3.log; grep -E "FAIL" /tmp/v3.log | head -3; cat /tmp/v3.log >> $OUT/verify.log
BN="bench --config docs/results/2026-11-26-h100-decode7/decode18.json --workload decode --backend cuda --min-time 0.15 --max-time 0.3"
show() { grep "llama3-8b/decode" $1 | awk '{print $4,$5,$10,$13,$15,$18}'; }
for rep in 1 2; do
  for e in 0 3 1 2; do
    step "EXP=$e stream #$rep"; FLASHPLUS_KVCACHE_EXP=$e timeout $(tmo 20) $R $FP $BN --timing stream > /tmp/b.log 2>&1; echo "rc=$?"; show /tmp/b.log; { echo "== EXP=$e stream #$rep"; cat /tmp/b.log; } >> $OUT/bench.log
  done
  for e in 0 3; do
    step "EXP=$e call #$rep"; FLASHPLUS_KVCACHE_EXP=$e timeout $(tmo 20) $R $FP $BN --timing call > /tmp/b.log 2>&1; echo "rc=$?"; show /tmp/b.log; { echo "== EXP=$e call #$rep"; cat /tmp/b.log; } >> $OUT/bench.log
  done
done
step "trace EXP=3"
FLASHPLUS_KVCACHE_EXP=3 KV_TRACE_PART=t timeout $(tmo 60) $D/kv_trace 20 > $OUT/trace3.log 2>&1; grep "^trace\|first tile landed\|blocks in their" $OUT/trace3.log
step done
