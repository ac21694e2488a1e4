#!/usr/bin/env bash
# round 8, call 4 (H100): light count (EXP bit 1), balanced static part (bit 0), shared tail (POOL=R)
set -uo pipefail
D=$PWD/.device
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 520))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
xz -d -T4 -c $D/flashplus.xz > $D/fp && chmod +x $D/fp
xz -d -T4 -c $D/kv_trace.xz > $D/kv_trace && chmod +x $D/kv_trace
FP=$D/fp; R="taskset -c 0-3"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
for v in "FLASHPLUS_KVCACHE_EXP=2 FLASHPLUS_KVCACHE_POOL=2" "FLASHPLUS_KVCACHE_EXP=3 FLASHPLUS_KVCACHE_POOL=4" "FLASHPLUS_KVCACHE_POOL=1"; do
  step "verify ci kvcache + gpu_kvcache cases/long_page16: $v"
  env $v timeout $(tmo 40) $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > /tmp/v1.log 2>&1; echo "rc=$?"; tail -1 /tmp/v1.log; grep -E "FAIL" /tmp/v1.log | head -3; cat /tmp/v1.log >> $OUT/verify.log
  env $v timeout $(tmo 40) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases --filter long_page16 > /tmp/v3.log 2>&1; echo "rc=$?"; tail -1 /tmp/v3.log; grep -E "FAIL" /tmp/v3.log | head -3; cat /tmp/v3.log >> $OUT/verify.log
done
BN="bench --config docs/results/2026-11-26-h100-decode7/decode18.json --workload decode --backend cuda --min-time 0.15 --max-time 0.3"
show() { grep "llama3-8b/decode" $1 | awk '{print $4,$5,$10,$13,$15,$18}'; }
run() { local name=$1 tm=$2; shift 2; step "$name $tm"; env "$@" timeout $(tmo 20) $R $FP $BN --timing $tm > /tmp/b.log 2>&1; echo "rc=$?"; show /tmp/b.log; { echo "== $name $tm"; cat /tmp/b.log; } >> $OUT/bench.log; }
for rep in 1 2; do
  run base stream FLASHPLUS_KVCACHE_EXP=0
  run L stream FLASHPLUS_KVCACHE_EXP=2
  run L+P2 stream FLASHPLUS_KVCACHE_EXP=2 FLASHPLUS_KVCACHE_POOL=2
  run L+P4 stream FLASHPLUS_KVCACHE_EXP=2 FLASHPLUS_KVCACHE_POOL=4
  run L+B+P2 stream FLASHPLUS_KVCACHE_EXP=3 FLASHPLUS_KVCACHE_POOL=2
done
run base call FLASHPLUS_KVCACHE_EXP=0
run L+P2 call FLASHPLUS_KVCACHE_EXP=2 FLASHPLUS_KVCACHE_POOL=2
step "trace L+P2"
FLASHPLUS_KVCACHE_EXP=2 FLASHPLUS_KVCACHE_POOL=2 KV_TRACE_PART=t timeout $(tmo 60) $D/kv_trace 20 > $OUT/trace4.log 2>&1; grep "^trace\|first tile landed\|loop end  \|blocks in their" $OUT/trace4.log
step "memcheck + racecheck gpu_kvcache cases, POOL=2"
{ FLASHPLUS_KVCACHE_EXP=2 FLASHPLUS_KVCACHE_POOL=2 timeout $(tmo 40) compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"; } > $OUT/sanitize.log 2>&1
{ FLASHPLUS_KVCACHE_EXP=2 FLASHPLUS_KVCACHE_POOL=2 timeout $(tmo 60) compute-sanitizer --tool racecheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"; } >> $OUT/sanitize.log 2>&1; cat $OUT/sanitize.log
step done
