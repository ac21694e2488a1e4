#!/usr/bin/env bash
# round 8, call 2: the trace with the early report off / the check off
set -u
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib:${LD_LIBRARY_PATH:-}
xz -dc kv_trace.xz > kv_trace && chmod +x kv_trace
export KV_TRACE_PART=t
for v in "FLASHPLUS_KVCACHE_EARLY=0" "FLASHPLUS_KVCACHE_CHECK=0" "FLASHPLUS_KVCACHE_PDL=0"; do
  echo "=== $v"
  env $v timeout 100 ./kv_trace 20 2>&1 | grep -v "^  \(entry \|after\|blocks per\|last exit on\)" | tee -a $OUT/trace2.log
done
