#!/usr/bin/env bash
# Builds tests/device/kvcache_trace.cu (docs/PERF.md "KV-cache decoding, round 8"): the kv-cache
# objects again with -DFLASHPLUS_KV_TRACE (per-block timer readings), linked ahead of
# build-cuda's library so they replace its kv-cache members. Usage:
#   scripts/kv_trace_build.sh [build-cuda] [out=build-cuda/kv_trace]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-cuda}
out=${2:-$build/kv_trace}
lib=$build/kernels/libflashplus.a
# The trick needs the static archive: configure build-cuda with -DFLASHPLUS_SHARED=OFF.
[ -f "$lib" ] || { echo "no $lib: build the CUDA library with -DFLASHPLUS_SHARED=OFF first" >&2; exit 2; }
arch=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$build/CMakeCache.txt" | tr ';' ' ')
gen=()
for a in ${arch:-90a-real}; do
  n=${a%-real}
  gen+=("--generate-code=arch=compute_$n,code=sm_$n")
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags=(-O3 -DNDEBUG -DFLASHPLUS_KV_TRACE -std=c++17 -lineinfo -Ikernels -Ikernels/include
       -Ikernels/src "${gen[@]}")
pids=()
for f in kvcache_bf16 kvcache_f16 kvcache_dispatch; do
  nvcc "${flags[@]}" -x cu -c "kernels/gpu/kvcache/$f.cu" -o "$tmp/$f.o" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
nvcc "${flags[@]}" tests/device/kvcache_trace.cu "$tmp"/*.o "$lib" -lfmt -lcuda -o "$out"
echo "built $out"
