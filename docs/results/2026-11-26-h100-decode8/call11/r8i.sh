#!/usr/bin/env bash
# call 11 (H100): every stage in flight before the loop, the stage refilled after its compute
# (new) vs the landed round-8 loop (old): correctness, sanitizers, decode A/B.
set -uo pipefail
D=$PWD/.device
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 330))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
for b in flashplus flashplus_old kv_errors; do xz -d -T4 -c $D/$b.xz > $D/$b && chmod +x $D/$b; done
FP=$D/flashplus; OLD=$D/flashplus_old; R="taskset -c 0-3"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
V=$OUT/verify.log
step "kv_errors"; { timeout $(tmo 30) $D/kv_errors; echo "rc=$?"; } > /tmp/e.log 2>&1; cat /tmp/e.log >> $V; echo "pass=$(grep -c ^PASS /tmp/e.log) fail=$(grep -c ^FAIL /tmp/e.log)"
step "verify ci kvcache + gpu_kvcache"; timeout $(tmo 30) $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > /tmp/v.log 2>&1; echo "rc=$?"; tail -1 /tmp/v.log; cat /tmp/v.log >> $V
timeout $(tmo 50) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases --filter long_page16 --filter contiguous_dims > /tmp/v.log 2>&1; echo "rc=$?"; tail -1 /tmp/v.log; grep FAIL /tmp/v.log | head -3; cat /tmp/v.log >> $V
step "memcheck + racecheck"
{ timeout $(tmo 30) compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases --filter long_page16 2>&1 | tail -2; echo "rc=${PIPESTATUS[0]}"; timeout $(tmo 40) compute-sanitizer --tool racecheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases 2>&1 | tail -2; echo "rc=${PIPESTATUS[0]}"; } > $OUT/sanitize.log 2>&1; cat $OUT/sanitize.log
BN="bench --config $D/decode18.json --workload decode --backend cuda --min-time 0.15 --max-time 0.3"
show() { grep "llama3-8b/decode" $1 | awk '{print $4,$5,$10,$13,$15,$18}'; }
run() { local name=$1 bin=$2 tm=$3 cfg=${4:-}; step "$name $tm"; timeout $(tmo 20) $R $bin $BN --timing $tm > /tmp/b.log 2>&1; echo "rc=$?"; show /tmp/b.log; { echo "== $name $tm"; cat /tmp/b.log; } >> $OUT/bench.log; }
run new $FP stream; run old $OLD stream; run new $FP stream; run old $OLD stream
run new $FP call; run old $OLD call
run new $FP flush; run old $OLD flush
BN="bench --config $D/decode64.json --workload decode --backend cuda --min-time 0.15 --max-time 0.3"
run new64 $FP stream; run old64 $OLD stream
step done
