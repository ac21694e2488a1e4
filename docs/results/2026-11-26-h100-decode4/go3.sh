#!/usr/bin/env bash
# decode4 call 3 (final): correctness of the final build, then the decode bench new vs old
# (main at 6d7e885) and the peers in the same lease, plus the kv_timing breakdown.
set -uo pipefail
D=$PWD/.device-decode4
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
step unpack
for f in $D/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f ${f%.xz}; chmod +x ${f%.xz}; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
FP=$D/flashplus; FO=$D/flashplus_old; T=$D/kv_timing; TO=$D/kv_timing_old
$FP info 2>/dev/null | head -3 | cut -c1-150
step "verify ci kvcache"; timeout 30 $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > $OUT/verify-ci-kv.log 2>&1; echo "rc=$?"; tail -1 $OUT/verify-ci-kv.log
step "verify ci kvcache FUSE=0"; FLASHPLUS_KVCACHE_FUSE=0 timeout 30 $FP verify --backend cuda --suite configs/suites/ci.json --filter kvcache > $OUT/verify-ci-kv-nofuse.log 2>&1; echo "rc=$?"; tail -1 $OUT/verify-ci-kv-nofuse.log
step "kv errors"; timeout 20 $D/kv_errors > $OUT/kv-errors.log 2>&1; echo "rc=$? pass=$(grep -c PASS $OUT/kv-errors.log)"; grep FAIL $OUT/kv-errors.log | head -3
step "memcheck gpu_kvcache cases + kv_errors"
timeout 30 compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter cases > $OUT/memcheck.log 2>&1; echo "rc=$?"; grep -E "ERROR SUMMARY|passed" $OUT/memcheck.log | tail -2
timeout 30 compute-sanitizer --tool memcheck --error-exitcode 9 $D/kv_errors > $OUT/memcheck-errors.log 2>&1; echo "rc=$?"; grep -E "ERROR SUMMARY" $OUT/memcheck-errors.log | tail -1
R="taskset -c 0-3"
step "timing new/old (kv_timing)"
{ echo "-- new"; timeout 20 $R $T 40; echo "-- old"; timeout 20 $R $TO 40; echo "-- new CHECK=0"; FLASHPLUS_KVCACHE_CHECK=0 timeout 20 $R $T 40; } > $OUT/timing.log 2>&1; sed -E 's/ +/ /g; s/ host .*//' $OUT/timing.log
step "bench decode new"
timeout 75 $R $FP bench --config configs/models/llama3-8b.json --workload decode --backend cuda --min-time 0.3 --max-time 0.6 --json $OUT/bench-new.json > $OUT/bench-new.log 2>/dev/null; echo "rc=$?"; grep decode $OUT/bench-new.log | awk '{print $4,$5,$10,$13,$15,$18}'
step "peers decode"
DECODE=1 ONLY=sdpa MODES=fwd SEQS=1024 DIMS=128 OUT=$OUT timeout 45 $R python3 $D/peer_bench.py 2>&1 | grep -E "^decode|PEAK" > $OUT/peers-decode.log; cat $OUT/peers-decode.log
step "bench decode old"
timeout 60 $R $FO bench --config configs/models/llama3-8b.json --workload decode --backend cuda --min-time 0.3 --max-time 0.6 --json $OUT/bench-old.json > $OUT/bench-old.log 2>/dev/null; echo "rc=$?"; grep decode $OUT/bench-old.log | awk '{print $4,$5,$10,$13,$15,$18}'
step "verify gpu_kvcache long_page16 + contiguous_dims"
timeout 25 $FP verify --backend cuda --suite configs/suites/gpu_kvcache.json --filter long_page16 --filter contiguous_dims > $OUT/verify-gpukv.log 2>&1; echo "rc=$?"; grep -cE "PASS" $OUT/verify-gpukv.log; grep -E "FAIL" $OUT/verify-gpukv.log | head -3; tail -1 $OUT/verify-gpukv.log
step done
