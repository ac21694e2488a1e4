#!/usr/bin/env bash
# decode7: combine folded into the attention's last split (default) vs FLASHPLUS_KVCACHE_FOLD=0
# (the separate combine kernel), same binary. Correctness, then bench call/stream alternating.
set -uo pipefail
D=$PWD/.device-decode7
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 192))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
step unpack
xz -d -T4 -c $D/flashplus.xz > /tmp/fp && chmod +x /tmp/fp
FP=/tmp/fp; R="taskset -c 0-3"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
step "verify ci kvcache (fold)"
timeout $(tmo 30) $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > /tmp/v1.log 2>&1; echo "rc=$?"; tail -1 /tmp/v1.log; grep -E "FAIL" /tmp/v1.log | head -3; cat /tmp/v1.log >> $OUT/verify.log
step "verify ci kvcache (FOLD=0)"
FLASHPLUS_KVCACHE_FOLD=0 timeout $(tmo 30) $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > /tmp/v2.log 2>&1; echo "rc=$?"; tail -1 /tmp/v2.log; grep -E "FAIL" /tmp/v2.log | head -3; cat /tmp/v2.log >> $OUT/verify.log
step "gpu_kvcache cases + long_page16 (fold)"
timeout $(tmo 30) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases --filter long_page16 > /tmp/v3.log 2>&1; echo "rc=$?"; tail -1 /tmp/v3.log; grep -E "FAIL" /tmp/v3.log | head -3; cat /tmp/v3.log >> $OUT/verify.log
BN="bench --config $D/decode18.json --workload decode --backend cuda --min-time 0.1 --max-time 0.2"
show() { grep "llama3-8b/decode" $1 | awk '{print $4,$5,$10,$13,$15,$18}'; }
for rep in 1 2; do
  for tm in call stream; do
    step "fold $tm #$rep"; timeout $(tmo 15) $R $FP $BN --timing $tm > /tmp/b.log 2>&1; echo "rc=$?"; show /tmp/b.log; { echo "== fold $tm #$rep"; cat /tmp/b.log; } >> $OUT/bench.log
    step "FOLD=0 $tm #$rep"; FLASHPLUS_KVCACHE_FOLD=0 timeout $(tmo 15) $R $FP $BN --timing $tm > /tmp/b.log 2>&1; echo "rc=$?"; show /tmp/b.log; { echo "== FOLD=0 $tm #$rep"; cat /tmp/b.log; } >> $OUT/bench.log
  done
done
step "memcheck ci kvcache"
{ timeout $(tmo 30) compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"; } > $OUT/memcheck.log 2>&1; cat $OUT/memcheck.log
step "racecheck ci kvcache"
{ timeout $(tmo 60) compute-sanitizer --tool racecheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"; } > $OUT/racecheck.log 2>&1; cat $OUT/racecheck.log
step done
