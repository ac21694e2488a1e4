#!/usr/bin/env bash
# h-vbwd, device call 1: the tensor-core varlen/dropout backward: correctness (filtered), bench
# A/B against the portable fallback and the dense backward, memcheck.
set -uo pipefail
D=$PWD/.device-vbwd
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
FP=$D/flashplus; CFG=$D/configs
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
summ() { echo "rc=$1"; grep -oE "^\[ *[0-9]+/[0-9]+\] +[A-Z]+" "$2" | sort -u | awk '{print $NF}' | sort | uniq -c | tr '\n' ' '; echo; grep -E "^\[.*FAIL|rror" "$2" | head -6; tail -1 "$2"; }
step info; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader; date -u
step "verify ci.json varlen+dropout (wgmma path)"
timeout 40 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter varlen --filter dropout --json $OUT/v-ci.json > $OUT/v-ci.log 2>&1; summ $? $OUT/v-ci.log
step "same, mma.sync path (FLASHPLUS_BWD_NO_WGMMA=1)"
FLASHPLUS_BWD_NO_WGMMA=1 timeout 30 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter varlen --filter dropout/ > $OUT/v-ci-mma.log 2>&1; summ $? $OUT/v-ci-mma.log
step "bench bwd: tensor cores (varlen + dense parts/tokens)"
timeout 55 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode bwd --min-time 0.1 --max-time 0.5 --json $OUT/bench-tc.json > $OUT/bench-tc.log 2>$OUT/bench-tc.err; echo rc=$?
step "bench bwd varlen: portable fallback (the old route)"
FLASHPLUS_GPU_FALLBACK=1 timeout 35 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --workload varlen --mode bwd --min-time 0.05 --max-time 0.3 --min-samples 2 > $OUT/bench-fb.log 2>$OUT/bench-fb.err; echo rc=$?
step "verify gpu_varlen.json bwd matrices"
timeout 65 $FP verify --backend cuda --suite $CFG/suites/gpu_varlen.json --filter bwd --json $OUT/v-gv.json > $OUT/v-gv.log 2>&1; summ $? $OUT/v-gv.log
step "memcheck: ci.json varlen_bwd_tc + dropout bwd"
timeout 40 compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter varlen_bwd_tc --filter varlen/ > $OUT/memcheck.log 2>&1; echo rc=$?; grep -E "ERROR SUMMARY|Invalid|verify:" $OUT/memcheck.log | head -5; tail -1 $OUT/memcheck.log
step results
grep -vE "^\s*$" $OUT/bench-tc.log | cut -c1-150
echo "-- fallback"; grep -vE "^\s*$" $OUT/bench-fb.log | cut -c1-150
date -u
