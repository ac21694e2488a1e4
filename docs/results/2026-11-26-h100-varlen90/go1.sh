#!/usr/bin/env bash
# h-varlen90 call 1: packed varlen on the wgmma forward (fwd_sm90 kVar). Correctness + A/B bench.
set -uo pipefail
D=.device-varlen90
export LD_LIBRARY_PATH=$PWD/$D/lib:${LD_LIBRARY_PATH:-}
FP=$PWD/$D/flashplus; CFG=configs
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
step info; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step "verify ci.json --filter varlen, FLASHPLUS_GPU_FWD_SM90=2 (small varlen through wgmma)"
FLASHPLUS_GPU_FWD_SM90=2 timeout 40 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter varlen > $OUT/verify-ci-varlen-m2.log 2>&1
echo "rc=$?"; tail -1 $OUT/verify-ci-varlen-m2.log; grep -E "FAIL" $OUT/verify-ci-varlen-m2.log | head -8
step "bench varlen fwd: new (sm90 varlen) then old (FLASHPLUS_GPU_FWD_SM90_VARLEN=0), same binary"
timeout 45 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode fwd --max-time 0.3 > $OUT/bench-new.log 2>/dev/null; echo "rc=$?"
FLASHPLUS_GPU_FWD_SM90_VARLEN=0 timeout 20 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode fwd --workload varlen --max-time 0.3 > $OUT/bench-old.log 2>/dev/null; echo "rc=$?"
timeout 20 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode fwd --workload varlen --max-time 0.3 > $OUT/bench-new2.log 2>/dev/null; echo "rc=$?"
step "gpu_varlen fwd groups, FLASHPLUS_GPU_FWD_SM90=2"
FLASHPLUS_GPU_FWD_SM90=2 timeout 55 $FP verify --backend cuda --suite $CFG/suites/gpu_varlen.json --filter mixed/ --filter qk/ --filter causal_alibi/ --filter dims/ > $OUT/verify-gv.log 2>&1
echo "rc=$?"; tail -1 $OUT/verify-gv.log; grep -E "FAIL" $OUT/verify-gv.log | head -5
step "memcheck ci varlen (m2)"
FLASHPLUS_GPU_FWD_SM90=2 timeout 40 compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter varlen/fwd --filter varlen_splits > $OUT/memcheck.log 2>&1
echo "rc=$?"; grep -E "ERROR SUMMARY|verify:" $OUT/memcheck.log | tail -2
step results
grep -E "varlen/|tokens" $OUT/bench-new.log | awk '{print $1, $4, $5, $(NF-8), "ms", $(NF-7), "TF", $(NF-3)}'
echo "-- old"; grep varlen/ $OUT/bench-old.log | awk '{print $1,$4,$5,$(NF-8),"ms",$(NF-7),"TF",$(NF-3)}'
echo "-- new2"; grep varlen/ $OUT/bench-new2.log | awk '{print $1,$4,$5,$(NF-8),"ms",$(NF-7),"TF",$(NF-3)}'
step done
