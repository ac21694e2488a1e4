#!/usr/bin/env bash
# h-varlen90 call 2: flattened varlen grid (default) + max_seqlen grid (=1) + old route (=0).
set -uo pipefail
D=.device-varlen90
export LD_LIBRARY_PATH=$PWD/$D/lib:${LD_LIBRARY_PATH:-}
FP=$PWD/$D/flashplus; CFG=configs
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
step info; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step "ci varlen, SM90=2: flat (default) / grid (VARLEN=1)"
FLASHPLUS_GPU_FWD_SM90=2 timeout 30 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter varlen > $OUT/v-ci-flat.log 2>&1; echo "rc=$?"; tail -1 $OUT/v-ci-flat.log; grep FAIL $OUT/v-ci-flat.log | head -5
FLASHPLUS_GPU_FWD_SM90_VARLEN=1 FLASHPLUS_GPU_FWD_SM90=2 timeout 30 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter varlen > $OUT/v-ci-grid.log 2>&1; echo "rc=$?"; tail -1 $OUT/v-ci-grid.log
step "ci.json full, default routing"
timeout 50 $FP verify --backend cuda --suite $CFG/suites/ci.json > $OUT/v-ci-full.log 2>&1; echo "rc=$?"; tail -1 $OUT/v-ci-full.log; grep FAIL $OUT/v-ci-full.log | head -5
step "bench: flat (default) full config; grid; old; flat again"
timeout 45 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode fwd --max-time 0.3 > $OUT/b-flat.log 2>/dev/null; echo "rc=$?"
FLASHPLUS_GPU_FWD_SM90_VARLEN=1 timeout 20 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode fwd --workload varlen --max-time 0.3 > $OUT/b-grid.log 2>/dev/null; echo "rc=$?"
FLASHPLUS_GPU_FWD_SM90_VARLEN=0 timeout 20 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode fwd --workload varlen --max-time 0.3 > $OUT/b-old.log 2>/dev/null; echo "rc=$?"
timeout 20 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode fwd --workload varlen --max-time 0.3 > $OUT/b-flat2.log 2>/dev/null; echo "rc=$?"
step "memcheck ci varlen fwd (flat, SM90=2)"
FLASHPLUS_GPU_FWD_SM90=2 timeout 25 compute-sanitizer --tool memcheck --error-exitcode 9 $FP verify --backend cuda --suite $CFG/suites/ci.json --filter varlen/fwd --filter varlen_splits > $OUT/memcheck.log 2>&1
echo "rc=$?"; grep -E "ERROR SUMMARY|verify:" $OUT/memcheck.log | tail -2
step "gpu_varlen fwd groups (flat, SM90=2): mixed non-dropout, causal_alibi, dims, qk"
FLASHPLUS_GPU_FWD_SM90=2 timeout 50 $FP verify --backend cuda --suite $CFG/suites/gpu_varlen.json --filter mixed/fwd_bf16_b24_sq2048_sk2048_h16_hk4_d128_causal_varlen --filter causal_alibi/ --filter dims/ --filter qk/ > $OUT/v-gv.log 2>&1
echo "rc=$?"; grep -cE "^\[.*PASS" $OUT/v-gv.log; grep -E "FAIL" $OUT/v-gv.log | head -5; grep -E "^\[" $OUT/v-gv.log | tail -1 | cut -c1-100
step results
for f in b-flat b-grid b-old b-flat2; do echo "-- $f"; grep -E "varlen/|tokens" $OUT/$f.log | awk '{print $1,$4,$5,"ms",$(NF-7),"TF",$(NF-3)}'; done
step done
