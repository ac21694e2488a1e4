#!/usr/bin/env bash
# round 8, call 8 (H100): the landed build (balanced split, shared tail of 2 tiles per split,
# evict-first hint, count without fence): correctness, sanitizers, decode bench in the three
# timings, peers in both protocols, the trace.
set -uo pipefail
D=$PWD/.device
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
START=$(date +%s); END=$((START + 585))
step() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - START )) s)"; }
tmo() { local m=$1 l=$(( END - $(date +%s) )); (( l < m )) && m=$l; (( m < 1 )) && m=1; echo $m; }
for b in flashplus kv_trace kv_errors; do xz -d -T4 -c $D/$b.xz > $D/$b && chmod +x $D/$b; done
FP=$D/flashplus; R="taskset -c 0-3"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
V=$OUT/verify.log
step "kv_errors"; { timeout $(tmo 30) $D/kv_errors; echo "rc=$?"; } > /tmp/e.log 2>&1; cat /tmp/e.log >> $V; echo "pass=$(grep -c ^PASS /tmp/e.log) fail=$(grep -c ^FAIL /tmp/e.log)"; grep -E "^FAIL|^rc=" /tmp/e.log | head -5
step "verify ci kvcache"; timeout $(tmo 40) $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > /tmp/v.log 2>&1; echo "rc=$?"; tail -1 /tmp/v.log; cat /tmp/v.log >> $V
step "verify gpu_kvcache cases long_page16 contiguous_dims"; timeout $(tmo 60) $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases --filter long_page16 --filter contiguous_dims > /tmp/v.log 2>&1; echo "rc=$?"; tail -1 /tmp/v.log; grep FAIL /tmp/v.log | head -3; cat /tmp/v.log >> $V
step "memcheck kv_errors + gpu_kvcache cases"
{ timeout $(tmo 40) compute-sanitizer --tool memcheck --error-exitcode 9 $D/kv_errors 2>&1 | tail -2; echo "rc=${PIPESTATUS[0]}"; timeout $(tmo 40) compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases --filter long_page16 2>&1 | tail -2; echo "rc=${PIPESTATUS[0]}"; } > $OUT/sanitize.log 2>&1
step "racecheck gpu_kvcache cases"
{ timeout $(tmo 50) compute-sanitizer --tool racecheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases 2>&1 | tail -2; echo "rc=${PIPESTATUS[0]}"; } >> $OUT/sanitize.log 2>&1; cat $OUT/sanitize.log
show() { grep "llama3-8b/decode" $1 | awk '{print $4,$5,$10,$13,$15,$18}'; }
for tm in stream flush call; do
  step "bench decode $tm"; timeout $(tmo 45) $R $FP bench --config configs/models/llama3-8b.json --workload decode --backend cuda --min-time 0.2 --max-time 0.4 --timing $tm $( [ $tm = stream ] && echo --json $OUT/bench-stream.json ) > /tmp/b.log 2>&1; echo "rc=$?"; show /tmp/b.log; cat /tmp/b.log >> $OUT/bench.log
done
step "peers, both protocols"; cp $D/peer_decode_protocols.py /tmp/; timeout $(tmo 120) python3 /tmp/peer_decode_protocols.py 2>&1 | tee $OUT/peers_protocols.log
step "peer_bench DECODE=1"; (cd $D && DECODE=1 ONLY=sdpa MODES=fwd SEQS=1024 DIMS=128 timeout $(tmo 90) python3 peer_bench.py 2>&1 | tee $OUT/peers.log | grep -i "decode\|PEAK")
step "trace"; KV_TRACE_PART=t timeout $(tmo 60) $D/kv_trace 20 > $OUT/trace.log 2>&1; grep "^trace\|first tile landed\|loop end  \|blocks in their" $OUT/trace.log | head -30
step done
