#!/usr/bin/env bash
# round 8, call 5 (H100): does a busy memory before the call (do_bench's 256 MB clear) change the ramp?
set -uo pipefail
D=$PWD/.device
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
xz -d -T4 -c $D/kv_trace.xz > $D/kv_trace && chmod +x $D/kv_trace
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
for pre in spin flush; do
  for v in "FLASHPLUS_KVCACHE_EXP=0" "FLASHPLUS_KVCACHE_EXP=3 FLASHPLUS_KVCACHE_POOL=4"; do
    echo "=== pre=$pre $v ($(date -u +%T))"
    env $v KV_TRACE_PRE=$pre KV_TRACE_PART=t timeout 80 $D/kv_trace 20 > /tmp/t.log 2>&1
    { echo "=== pre=$pre $v"; cat /tmp/t.log; } >> $OUT/trace5.log
    grep "^trace\|first tile landed\|loop end  \|blocks in their" /tmp/t.log
  done
done
