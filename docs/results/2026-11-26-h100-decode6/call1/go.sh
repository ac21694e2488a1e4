#!/usr/bin/env bash
# decode6 (one call): correctness of the early report (verify ci kvcache, gpu_kvcache cases +
# long_page16, kv_errors, memcheck, racecheck), flashplus bench decode with --timing call and
# --timing stream: new (early report), new with FLASHPLUS_KVCACHE_EARLY=0 (synchronise, main's
# path), main's binary (decode4 build, call timing only), peers.
set -uo pipefail
D=$PWD/.device-decode6
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 192))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
step unpack
for f in $D/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f ${f%.xz} & done; wait
chmod +x $D/flashplus $D/flashplus_old $D/kv_errors
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
FP=$D/flashplus; FO=$D/flashplus_old
R="taskset -c 0-3"
BN="bench --config configs/models/llama3-8b.json --workload decode --backend cuda --min-time 0.25 --max-time 0.5"
show() { grep decode $1 | awk '{print $4,$5,$10,$13,$15,$18}'; }
V=$OUT/verify.log
step "verify ci kvcache"; timeout $(tmo 30) $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > $V 2>&1; echo "rc=$?"; tail -1 $V
step "kv errors"; { echo "-- kv_errors"; timeout $(tmo 20) $D/kv_errors; echo "rc=$?"; } >> $V 2>&1; echo "pass=$(grep -c ^PASS $V) fail=$(grep -c ^FAIL $V)"; grep -E "^FAIL|^(OK|FAILED):|^rc=" $V | head -8
step "bench new call"; timeout $(tmo 30) $R $FP $BN --timing call > $OUT/bench-new-call.log 2>&1; echo "rc=$?"; show $OUT/bench-new-call.log
step "bench new stream"; timeout $(tmo 30) $R $FP $BN --timing stream > $OUT/bench-new-stream.log 2>&1; echo "rc=$?"; show $OUT/bench-new-stream.log
step "bench main (decode4 build) call"; timeout $(tmo 30) $R $FO $BN > $OUT/bench-main-call.log 2>&1; echo "rc=$?"; show $OUT/bench-main-call.log
step "bench new EARLY=0 call"; FLASHPLUS_KVCACHE_EARLY=0 timeout $(tmo 30) $R $FP $BN --timing call > $OUT/bench-sync.log 2>&1; echo "rc=$?"; show $OUT/bench-sync.log
step "bench new EARLY=0 stream"; FLASHPLUS_KVCACHE_EARLY=0 timeout $(tmo 30) $R $FP $BN --timing stream >> $OUT/bench-sync.log 2>&1; echo "rc=$?"; grep decode $OUT/bench-sync.log | tail -9 | awk '{print $4,$5,$10,$13,$15,$18}'
step "peers decode"
DECODE=1 ONLY=sdpa MODES=fwd SEQS=1024 DIMS=128 OUT=$OUT timeout $(tmo 40) $R python3 $D/peer_bench.py 2>&1 | grep -E "^decode|PEAK" > $OUT/peers-decode.log; cat $OUT/peers-decode.log
step "verify gpu_kvcache cases + long_page16"
{ echo "-- gpu_kvcache cases"; timeout $(tmo 20) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases; echo "rc=$?"
  echo "-- long_page16"; timeout $(tmo 20) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter long_page16; echo "rc=$?"; } >> $V 2>&1; sed -n '/-- gpu_kvcache cases/,$p' $V | grep -E "passed|^rc="
M=$OUT/sanitizer.log
step "memcheck kv_errors + cases"
{ echo "-- memcheck kv_errors"; timeout $(tmo 25) compute-sanitizer --tool memcheck --error-exitcode 9 $D/kv_errors | tail -4; echo "rc=${PIPESTATUS[0]}"
  echo "-- memcheck cases"; timeout $(tmo 25) compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases | tail -3; echo "rc=${PIPESTATUS[0]}"; } > $M 2>&1; grep -E "ERROR SUMMARY|^rc=|^--|passed" $M
step "racecheck cases"
{ echo "-- racecheck cases"; timeout $(tmo 30) compute-sanitizer --tool racecheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases | tail -3; echo "rc=${PIPESTATUS[0]}"; } >> $M 2>&1; sed -n '/-- racecheck/,$p' $M | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^rc=|passed"
step done
