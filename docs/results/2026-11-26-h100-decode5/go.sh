#!/usr/bin/env bash
# decode5 (one call): correctness of the new build, kv_timing A/B of the host-side changes
# (FLASHPLUS_GPU_PTRQ, FLASHPLUS_KVCACHE_SPIN, FLASHPLUS_KVCACHE_WS), flashplus bench new vs
# before (decode4's build = main d69a4df's kv-cache code) vs new with the old host path, peers.
set -uo pipefail
D=$PWD/.device-decode5
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 228))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
step unpack
for f in $D/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f ${f%.xz} & done; wait
chmod +x $D/flashplus $D/flashplus_old $D/kv_timing $D/kv_errors
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
FP=$D/flashplus; FO=$D/flashplus_old; T=$D/kv_timing
R="taskset -c 0-3"
OLDENV="FLASHPLUS_GPU_PTRQ=0 FLASHPLUS_KVCACHE_SPIN=0 FLASHPLUS_KVCACHE_WS=1"
V=$OUT/verify.log
step "verify ci kvcache"; timeout $(tmo 30) $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > $V 2>&1; echo "rc=$?"; tail -1 $V
step "kv errors"; { echo "-- kv_errors"; timeout $(tmo 20) $D/kv_errors; echo "rc=$?"; } >> $V 2>&1; echo "pass=$(grep -c ^PASS $V) fail=$(grep -c ^FAIL $V)"; grep -E "^FAIL|^(OK|FAILED):|^rc=" $V | head -5
step "timing A/B (kv_timing 30)"
{ echo "-- new (default)"; KV_HOSTBENCH=1 timeout $(tmo 25) $R $T 30
  echo "-- FLASHPLUS_GPU_PTRQ=0"; FLASHPLUS_GPU_PTRQ=0 timeout $(tmo 20) $R $T 30
  echo "-- FLASHPLUS_KVCACHE_SPIN=0"; FLASHPLUS_KVCACHE_SPIN=0 timeout $(tmo 20) $R $T 30
  echo "-- old host path ($OLDENV)"; env $OLDENV timeout $(tmo 20) $R $T 30; } > $OUT/timing.log 2>&1
grep host: $OUT/timing.log; grep -v host: $OUT/timing.log | sed -E 's/ +/ /g; s/ host .*//'
step "bench decode new"
timeout $(tmo 40) $R $FP bench --config configs/models/llama3-8b.json --workload decode --backend cuda --min-time 0.3 --max-time 0.6 > $OUT/bench-new.log 2>&1; echo "rc=$?"; grep decode $OUT/bench-new.log | awk '{print $4,$5,$10,$13,$15,$18}'
step "bench decode before (decode4 build)"
timeout $(tmo 40) $R $FO bench --config configs/models/llama3-8b.json --workload decode --backend cuda --min-time 0.3 --max-time 0.6 > $OUT/bench-old.log 2>&1; echo "rc=$?"; grep decode $OUT/bench-old.log | awk '{print $4,$5,$10,$13,$15,$18}'
step "peers decode"
DECODE=1 ONLY=sdpa MODES=fwd SEQS=1024 DIMS=128 OUT=$OUT timeout $(tmo 45) $R python3 $D/peer_bench.py 2>&1 | grep -E "^decode|PEAK" > $OUT/peers-decode.log; cat $OUT/peers-decode.log
step "memcheck gpu_kvcache cases + kv_errors"
M=$OUT/memcheck.log
timeout $(tmo 30) compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases > $M 2>&1; echo "rc=$?"; grep -E "ERROR SUMMARY|passed" $M | tail -2
{ echo "-- memcheck kv_errors"; timeout $(tmo 25) compute-sanitizer --tool memcheck --error-exitcode 9 $D/kv_errors; echo "rc=$?"; } >> $M 2>&1; grep -E "ERROR SUMMARY|^rc=" $M | tail -2
step "verify gpu_kvcache long_page16"
{ echo "-- long_page16"; timeout $(tmo 25) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter long_page16; echo "rc=$?"; } >> $V 2>&1; sed -n '/-- long_page16/,$p' $V | grep -cE "PASS"; sed -n '/-- long_page16/,$p' $V | tail -2
step "bench decode new with the old host path"
env $OLDENV timeout $(tmo 40) $R $FP bench --config configs/models/llama3-8b.json --workload decode --backend cuda --min-time 0.3 --max-time 0.6 > $OUT/bench-newold.log 2>&1; echo "rc=$?"; grep decode $OUT/bench-newold.log | awk '{print $4,$5,$10,$13,$15,$18}'
step done
