#!/usr/bin/env bash
# round 8, call 1: read ceilings + per-block trace of the decode call
set -u
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib:${LD_LIBRARY_PATH:-}
xz -dc kv_trace.xz > kv_trace && chmod +x kv_trace
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
date -u
timeout 240 ./kv_trace 20 2>&1 | tee $OUT/trace1.log
date -u
