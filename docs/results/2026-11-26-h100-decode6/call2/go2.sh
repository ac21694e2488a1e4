#!/usr/bin/env bash
# decode6 call 2: the bench tables again (call 1 cut each run's 9th case), stream timing new vs
# FLASHPLUS_KVCACHE_EARLY=0, call timing new vs main's binary; racecheck over gpu_kvcache cases.
set -uo pipefail
D=$PWD/.device-decode6
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 193))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
step unpack
for f in $D/flashplus.xz $D/flashplus_old.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f ${f%.xz} & done; wait
chmod +x $D/flashplus $D/flashplus_old
FP=$D/flashplus; FO=$D/flashplus_old
R="taskset -c 0-3"
BN="bench --config configs/models/llama3-8b.json --workload decode --backend cuda --min-time 0.2 --max-time 0.4"
show() { grep "llama3-8b/decode" $1 | awk '{print $4,$5,$10,$13,$15,$18}'; }
step "new stream"; timeout $(tmo 35) $R $FP $BN --timing stream > $OUT/b2-new-stream.log 2>&1; echo "rc=$?"; show $OUT/b2-new-stream.log
step "EARLY=0 stream"; FLASHPLUS_KVCACHE_EARLY=0 timeout $(tmo 35) $R $FP $BN --timing stream > $OUT/b2-sync-stream.log 2>&1; echo "rc=$?"; show $OUT/b2-sync-stream.log
step "new call"; timeout $(tmo 35) $R $FP $BN --timing call > $OUT/b2-new-call.log 2>&1; echo "rc=$?"; show $OUT/b2-new-call.log
step "main call"; timeout $(tmo 35) $R $FO $BN > $OUT/b2-main-call.log 2>&1; echo "rc=$?"; show $OUT/b2-main-call.log
step "racecheck cases"
{ timeout $(tmo 60) compute-sanitizer --tool racecheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases 2>&1 | tail -4; echo "rc=${PIPESTATUS[0]}"; } > $OUT/racecheck.log 2>&1; cat $OUT/racecheck.log
step done
