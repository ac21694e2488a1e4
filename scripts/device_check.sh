#!/usr/bin/env bash
# One whole GPU measurement in one lease (docs/PERF.md): correctness, sanitizers, our bench and
# the peers' in the same run, then autotune. Build here, then carry the binary:
#   scripts/build build-cuda -DFLASHPLUS_CUDA=ON -DFLASHPLUS_HIP=OFF -DCMAKE_CUDA_ARCHITECTURES=90a-real \
#     -DFLASHPLUS_SHARED=OFF      (one self-contained binary; with the shared default, carry
#                                  build-cuda/kernels/libflashplus.so.0.1 into .device/lib too)
#   mkdir -p .device/lib && xz -T2 -6 -c build-cuda/cli/flashplus > .device/flashplus.xz \
#     && cp /lib/x86_64-linux-gnu/libfmt.so.9 .device/lib/ && cp ../shared/tools/peer_bench.py .device/
#   (the binary is ~62 MB with every wgmma instance, 10 MB compressed: carry's limit is 64 MiB;
#   it is unpacked next to its configs so it finds configs/tuned, see kernels/src/tuning.cpp)
#   (device) bash scripts/device_check.sh          # writes logs and JSON under $OUT
# Steps (STEPS env, default all): info verify sanitize bench peers gpusuite autotune tunedgain
#   plus, not in the default: kvfallback (kv cases through the portable path), kvsuite, varlensuite,
#   decode (our decode bench + the peers' decode rows), varlen (varlen vs dense bench)
set -uo pipefail
OUT=${OUT:-/tmp/flashplus-device}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.device/lib:${LD_LIBRARY_PATH:-}
FP=$PWD/.device/flashplus
if [ -f .device/flashplus.xz ] && [ ! -x "$FP" ]; then xz -d -T4 -c .device/flashplus.xz > "$FP" && chmod +x "$FP"; fi
# Configs as built with the binary (a snapshot in .device/configs when present).
CFG=configs; [ -d .device/configs ] && CFG=.device/configs
STEPS=${STEPS:-info verify sanitize bench peers gpusuite autotune tunedgain}
has() { [[ " $STEPS " == *" $1 "* ]]; }
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }

if has info; then
  step info; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
  $FP info | tee "$OUT/info.txt"
fi
if has verify; then
  step "verify ci.json on cuda"
  timeout 120 $FP verify --backend cuda --suite $CFG/suites/ci.json --json "$OUT/verify-ci.json" > "$OUT/verify-ci.log" 2>&1
  echo "rc=$?"; tail -2 "$OUT/verify-ci.log"; grep -E "FAIL|OOB" "$OUT/verify-ci.log" | head -5
fi
if has sanitize; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool on smoke.json"
    timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 \
      $FP verify --backend cuda --suite $CFG/suites/smoke.json > "$OUT/sanitize-$tool.log" 2>&1
    echo "rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|verify:" "$OUT/sanitize-$tool.log" | tail -3
  done
fi
if has bench; then
  step "flashplus bench fa-bench (ours)"
  timeout 200 $FP bench --config $CFG/models/fa-bench.json --backend cuda \
    --json "$OUT/bench.json" --csv "$OUT/bench.csv" > "$OUT/bench.log" 2>"$OUT/bench.err"
  echo "rc=$?"; cat "$OUT/bench.log" | tail -60
  timeout 60 $FP bench --peaks --backend cuda 2>&1 | tail -4
fi
if has peers; then
  step "peer_bench.py (same machine, same run)"
  OUT=$OUT timeout 240 python3 .device/peer_bench.py > "$OUT/peers.log" 2>&1
  echo "rc=$?"; grep -vE "^\s*$" "$OUT/peers.log" | tail -60
fi
if has gpusuite; then
  step "verify gpu.json on cuda"
  timeout ${GPUSUITE_TIMEOUT:-150} $FP verify --backend cuda --suite $CFG/suites/gpu.json \
    --json "$OUT/verify-gpu.json" > "$OUT/verify-gpu.log" 2>&1
  echo "rc=$?"; tail -2 "$OUT/verify-gpu.log"; grep -E "FAIL|OOB" "$OUT/verify-gpu.log" | head -5
fi
if has autotune; then
  step "autotune llama7b + llama3-8b"
  timeout ${AUTOTUNE_TIMEOUT:-150} $FP autotune --backend cuda --config $CFG/models/llama7b.json \
    --config $CFG/models/llama3-8b.json --out "$OUT/tuned.json" --budget ${AUTOTUNE_BUDGET:-120} ${AUTOTUNE_ARGS:-} \
    > "$OUT/autotune.log" 2>&1
  echo "rc=$?"; tail -15 "$OUT/autotune.log"
fi
if has tunedgain; then
  # The same workloads with the tuned table and with the built-in heuristics only.
  for mode in tuned heuristic; do
    step "bench llama7b + llama3-8b bf16 ($mode)"
    table=$OUT/tuned.json; [ $mode = heuristic ] && table=/nonexistent/none.json
    FLASHPLUS_TUNED_TABLE=$table timeout 150 $FP bench --backend cuda --dtype bf16 \
      --config $CFG/models/llama7b.json --config $CFG/models/llama3-8b.json \
      --max-time 1 --json "$OUT/bench-$mode.json" > "$OUT/bench-$mode.log" 2>/dev/null
    echo "rc=$?"; tail -40 "$OUT/bench-$mode.log"
  done
fi
if has kvfallback; then
  step "verify ci.json kv-cache cases through the portable path (FLASHPLUS_GPU_FALLBACK=1)"
  FLASHPLUS_GPU_FALLBACK=1 timeout 120 $FP verify --backend cuda --suite $CFG/suites/ci.json \
    --filter kvcache > "$OUT/verify-kvfallback.log" 2>&1
  echo "rc=$?"; tail -1 "$OUT/verify-kvfallback.log"; grep -E "FAIL" "$OUT/verify-kvfallback.log" | head -5
fi
if has kvsuite; then
  step "verify gpu_kvcache.json on cuda"
  timeout ${KVSUITE_TIMEOUT:-120} $FP verify --backend cuda --suite $CFG/suites/gpu_kvcache.json \
    > "$OUT/verify-kv.log" 2>&1
  echo "rc=$?"; tail -1 "$OUT/verify-kv.log"; grep -E "FAIL" "$OUT/verify-kv.log" | head -5
fi
if has varlensuite; then
  step "verify gpu_varlen.json on cuda"
  timeout ${VARLENSUITE_TIMEOUT:-150} $FP verify --backend cuda --suite $CFG/suites/gpu_varlen.json \
    > "$OUT/verify-varlen.log" 2>&1
  echo "rc=$?"; tail -1 "$OUT/verify-varlen.log"; grep -E "FAIL" "$OUT/verify-varlen.log" | head -5
fi
if has decode; then
  step "bench llama3-8b decode (ours), then the peers' decode rows (same run)"
  timeout 120 $FP bench --config $CFG/models/llama3-8b.json --workload decode --backend cuda \
    --min-time 0.3 --max-time 0.6 --json "$OUT/bench-decode.json" > "$OUT/bench-decode.log" 2>/dev/null
  echo "rc=$?"; tail -9 "$OUT/bench-decode.log"
  DECODE=1 ONLY=sdpa MODES=fwd SEQS=1024 DIMS=128 OUT=$OUT timeout 100 python3 .device/peer_bench.py \
    2>&1 | grep -E "^decode|PEAK" | tee "$OUT/peers-decode.log"
fi
if has varlen; then
  step "bench varlen vs dense on the same tokens"
  timeout 150 $FP bench --config $CFG/models/llama3-8b-varlen.json --backend cuda --min-time 0.2 \
    --max-time 1 --json "$OUT/bench-varlen.json" > "$OUT/bench-varlen.log" 2>/dev/null
  echo "rc=$?"; tail -20 "$OUT/bench-varlen.log"
fi
step done
