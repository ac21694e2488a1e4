#!/usr/bin/env bash
# round 8, call 7 (H100): protocol x variant matrix, and the peers under both protocols
set -uo pipefail
D=$PWD/.device
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 580))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
xz -d -T4 -c $D/flashplus.xz > $D/fp && chmod +x $D/fp
FP=$D/fp; R="taskset -c 0-3"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
BN="bench --config docs/results/2026-11-26-h100-decode7/decode18.json --workload decode --backend cuda --min-time 0.15 --max-time 0.3"
show() { grep "llama3-8b/decode" $1 | awk '{print $4,$5,$10,$13,$15,$18}'; }
run() { local name=$1 tm=$2; shift 2; step "$name $tm"; env "$@" timeout $(tmo 20) $R $FP $BN --timing $tm > /tmp/b.log 2>&1; echo "rc=$?"; show /tmp/b.log; { echo "== $name $tm"; cat /tmp/b.log; } >> $OUT/bench.log; }
for tm in flush stream; do
  run base $tm FLASHPLUS_KVCACHE_EXP=0
  run L+B+P2 $tm FLASHPLUS_KVCACHE_EXP=3 FLASHPLUS_KVCACHE_POOL=2
  run E+L+B+P2 $tm FLASHPLUS_KVCACHE_EXP=7 FLASHPLUS_KVCACHE_POOL=2
  run L+B+P4 $tm FLASHPLUS_KVCACHE_EXP=3 FLASHPLUS_KVCACHE_POOL=4
  run E+L+B+P4 $tm FLASHPLUS_KVCACHE_EXP=7 FLASHPLUS_KVCACHE_POOL=4
done
step "peers, both protocols"
timeout $(tmo 150) python3 $D/peer_decode_protocols.py 2>&1 | tee $OUT/peers_protocols.log
for tm in stream flush; do
  run base $tm FLASHPLUS_KVCACHE_EXP=0
  run L+B+P2 $tm FLASHPLUS_KVCACHE_EXP=3 FLASHPLUS_KVCACHE_POOL=2
  run E+L+B+P2 $tm FLASHPLUS_KVCACHE_EXP=7 FLASHPLUS_KVCACHE_POOL=2
done
step done
