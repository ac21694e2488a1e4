#!/usr/bin/env bash
# call 9 (H100): regression check of the final build on every kernel family; A/B of the backward's
# key-block helper (SASS differs only in the d64 wgmma backward) against the build before it.
set -uo pipefail
D=$PWD/.device
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 520))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
for b in flashplus flashplus_old; do xz -d -T4 -c $D/$b.xz > $D/$b && chmod +x $D/$b; done
FP=$D/flashplus; OLD=$D/flashplus_old; R="taskset -c 0-3"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
step "bwd d64 A/B (fa-bench shapes)"
show() { grep "fa-bench" $1 | awk '{print $1,$2,$4,$5,$6,$10,$11,$13}'; }
for rep in 1 2; do
  for v in new old; do
    B=$FP; [ $v = old ] && B=$OLD
    timeout $(tmo 40) $R $B bench --config $D/fa-d64.json --backend cuda --mode bwd --min-time 0.3 --max-time 0.8 > /tmp/b.log 2>&1; echo "-- $v #$rep rc=$?"; show /tmp/b.log; { echo "== $v #$rep"; cat /tmp/b.log; } >> $OUT/bench-bwd.log
  done
done
step "verify ci.json (cuda), new"; timeout $(tmo 240) $FP verify --backend cuda --suite configs/suites/ci.json > $OUT/verify-ci.log 2>&1; echo "rc=$?"; tail -1 $OUT/verify-ci.log; grep FAIL $OUT/verify-ci.log | head -5
step "gpu.json d64 + deterministic, new"; timeout $(tmo 90) $FP verify --backend cuda --suite configs/suites/gpu.json --filter _d64 --filter deterministic > $OUT/verify-gpu.log 2>&1; echo "rc=$?"; tail -1 $OUT/verify-gpu.log; grep FAIL $OUT/verify-gpu.log | head -5
step "gpu_kvcache batch_page256"; timeout $(tmo 45) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter batch_page256 > $OUT/verify-kv.log 2>&1; echo "rc=$?"; tail -1 $OUT/verify-kv.log
step done
