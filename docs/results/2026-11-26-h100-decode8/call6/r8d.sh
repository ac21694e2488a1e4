#!/usr/bin/env bash
# round 8, call 6 (H100): evict-first cache hint (EXP bit 2), light count (bit 1), balanced (bit 0),
# shared tail (POOL) under do_bench's protocol (--timing flush), stream and call; peers same call.
set -uo pipefail
D=$PWD/.device
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 570))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
xz -d -T4 -c $D/flashplus.xz > $D/fp && chmod +x $D/fp
FP=$D/fp; R="taskset -c 0-3"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
step "verify ci kvcache + gpu_kvcache, EXP=7 POOL=2"
FLASHPLUS_KVCACHE_EXP=7 FLASHPLUS_KVCACHE_POOL=2 timeout $(tmo 40) $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > /tmp/v1.log 2>&1; echo "rc=$?"; tail -1 /tmp/v1.log; cat /tmp/v1.log >> $OUT/verify.log
FLASHPLUS_KVCACHE_EXP=7 FLASHPLUS_KVCACHE_POOL=2 timeout $(tmo 40) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases --filter long_page16 > /tmp/v3.log 2>&1; echo "rc=$?"; tail -1 /tmp/v3.log; cat /tmp/v3.log >> $OUT/verify.log
BN="bench --config docs/results/2026-11-26-h100-decode7/decode18.json --workload decode --backend cuda --min-time 0.15 --max-time 0.3"
show() { grep "llama3-8b/decode" $1 | awk '{print $4,$5,$10,$13,$15,$18}'; }
run() { local name=$1 tm=$2; shift 2; step "$name $tm"; env "$@" timeout $(tmo 20) $R $FP $BN --timing $tm > /tmp/b.log 2>&1; echo "rc=$?"; show /tmp/b.log; { echo "== $name $tm"; cat /tmp/b.log; } >> $OUT/bench.log; }
for rep in 1 2; do
  run base flush FLASHPLUS_KVCACHE_EXP=0
  run E flush FLASHPLUS_KVCACHE_EXP=4
  run E+L+P2 flush FLASHPLUS_KVCACHE_EXP=6 FLASHPLUS_KVCACHE_POOL=2
  run E+L+B+P2 flush FLASHPLUS_KVCACHE_EXP=7 FLASHPLUS_KVCACHE_POOL=2
  run E+L+P4 flush FLASHPLUS_KVCACHE_EXP=6 FLASHPLUS_KVCACHE_POOL=4
done
run base stream FLASHPLUS_KVCACHE_EXP=0
run E stream FLASHPLUS_KVCACHE_EXP=4
run E+L+B+P2 stream FLASHPLUS_KVCACHE_EXP=7 FLASHPLUS_KVCACHE_POOL=2
run base call FLASHPLUS_KVCACHE_EXP=0
run E+L+B+P2 call FLASHPLUS_KVCACHE_EXP=7 FLASHPLUS_KVCACHE_POOL=2
step "b64 flush base / E"
for e in 0 4; do FLASHPLUS_KVCACHE_EXP=$e timeout $(tmo 25) $R $FP bench --config $D/decode64.json --workload decode --backend cuda --min-time 0.15 --max-time 0.3 --timing flush 2>&1 | grep "llama3-8b/decode" | tee -a $OUT/bench.log; done
step peers
cd $D && DECODE=1 ONLY=sdpa MODES=fwd SEQS=1024 DIMS=128 timeout $(tmo 90) python3 peer_bench.py 2>&1 | tee $OUT/peers.log | grep -i "decode\|PEAK"
step done
