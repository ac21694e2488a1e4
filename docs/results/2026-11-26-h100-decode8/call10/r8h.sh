#!/usr/bin/env bash
# call 10 (H100): what the ~8 us before a decode call's first tile lands is: instruction caches,
# address translations or the memory's state (kvcache_trace.cu, KV_TRACE_PRE modes)
set -uo pipefail
D=$PWD/.device
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
xz -d -T4 -c $D/kv_trace.xz > $D/kv_trace && chmod +x $D/kv_trace
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
for rep in 1 2; do
for m in spin code tlb read flush; do
  echo "=== pre=$m #$rep ($(date -u +%T))"
  KV_TRACE_PRE=$m KV_TRACE_PART=t KV_TRACE_SHAPES=3 timeout 60 $D/kv_trace 20 > /tmp/t.log 2>&1
  { echo "=== pre=$m #$rep"; cat /tmp/t.log; } >> $OUT/ramp.log
  grep "^trace\|first tile landed\|entry -> first" /tmp/t.log
done
done
