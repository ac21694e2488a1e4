#!/usr/bin/env bash
# h-vbwd, device call 2: full ci.json, the rest of gpu_varlen's backward, dropout bwd bench
# (tensor cores vs portable fallback), the varlen bench again on the final binary.
set -uo pipefail
D=$PWD/.device-vbwd
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
FP=$D/flashplus; CFG=$D/configs
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
summ() { echo "rc=$1"; grep -oE "^\[ *[0-9]+/[0-9]+\] +[A-Z]+" "$2" | sort -u | awk '{print $NF}' | sort | uniq -c | tr '\n' ' '; echo; grep -E "^\[.*FAIL|rror" "$2" | head -6; tail -1 "$2"; }
step info; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
step "bench dropout bwd: tensor cores"
timeout 30 $FP bench --config $CFG/models/llama3-8b-dropout.json --backend cuda --min-time 0.1 --max-time 0.5 --json $OUT/bench-drop-tc.json > $OUT/bench-drop-tc.log 2>/dev/null; echo rc=$?
step "bench dropout bwd: portable fallback"
FLASHPLUS_GPU_FALLBACK=1 timeout 30 $FP bench --config $CFG/models/llama3-8b-dropout.json --backend cuda --min-time 0.05 --max-time 0.3 --min-samples 2 --json $OUT/bench-drop-fb.json > $OUT/bench-drop-fb.log 2>/dev/null; echo rc=$?
step "bench varlen bwd again (final binary), varlen + tokens16k/6k"
timeout 40 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --mode bwd --min-time 0.1 --max-time 0.5 --json $OUT/bench-tc2.json > $OUT/bench-tc2.log 2>/dev/null; echo rc=$?
step "verify ci.json (all)"
timeout 75 $FP verify --backend cuda --suite $CFG/suites/ci.json --json $OUT/v-ci-all.json > $OUT/v-ci-all.log 2>&1; summ $? $OUT/v-ci-all.log
step "verify gpu_varlen.json: the bwd cases call 1 did not reach"
timeout 55 $FP verify --backend cuda --suite $CFG/suites/gpu_varlen.json --filter bwd_tc_det --filter bwd_cap --filter bwd/ --filter dims/bwd > $OUT/v-gv2.log 2>&1; summ $? $OUT/v-gv2.log
step results
for f in bench-drop-tc bench-drop-fb bench-tc2; do echo "-- $f"; python3 -c "
import json;d=json.load(open('$OUT/$f.json'))
for c in d['cases']:
  w=c['workload']; print(c['model'].split('/')[-1], c['batch'], c['seqlen_q'], len(w.get('seqlens',[])) or '', c['mask'], c['kernel_config'].get('bwd',{}).get('name','-'), round(c['median_ms'],4), round(c['tflops'],2))" 2>&1 | tail -20; done
echo "-- fallback log"; grep -E "dropout" $OUT/bench-drop-fb.log | cut -c1-60,100-170
date -u
