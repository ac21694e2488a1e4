#!/usr/bin/env bash
# (device) The Python packages on a CUDA machine, in one call: build python/flashplus's CUDA wheel
# there with its nvcc (the device has no package registry, so no build isolation; fmt and
# nlohmann-json come from Debian's packages unpacked into .device/deps here:
#   mkdir -p .device/debs && cd .device/debs && apt-get download libfmt-dev libfmt9 nlohmann-json3-dev \
#     && for f in *.deb; do dpkg -x $f ../deps; done),
# install it with the flash_attn drop-in into /tmp/site, then run the pytest suite on CUDA tensors,
# the transformers comparison (python/tests/device/transformers_e2e.py) and the binding-overhead
# measurement (python/tests/device/overhead.py against c_call_overhead.c).
#   STEPS (default: build pytest e2e overhead), OUT (results folder), PYTEST_ARGS.
set -uo pipefail
OUT=${OUT:-/tmp/flashplus-device}
mkdir -p "$OUT"
STEPS=${STEPS:-build pytest e2e overhead}
has() { [[ " $STEPS " == *" $1 "* ]]; }
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
DEPS=$PWD/.device/deps/usr
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
BUILD=/tmp/flashplus-pybuild
if has build; then
  step "build the CUDA wheel (sm_90a) and install"
  start=$(date +%s)
  python3 -m pip wheel -q --no-build-isolation --no-deps -w /tmp/whl ./python/flashplus \
    -Cbuild-dir=$BUILD -Ccmake.define.FLASHPLUS_CUDA=ON \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real -Ccmake.define.CMAKE_PREFIX_PATH=$DEPS \
    > "$OUT/build.log" 2>&1 || { echo "wheel build failed"; tail -40 "$OUT/build.log"; exit 1; }
  python3 -m pip wheel -q --no-build-isolation --no-deps -w /tmp/whl ./python/flash_attn >> "$OUT/build.log" 2>&1
  echo "built in $(( $(date +%s) - start )) s on $(nproc) cores"; ls -la /tmp/whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/whl/*.whl
  python3 -c "import flashplus, flash_attn, torch, transformers; print(flashplus.info(), flash_attn.__version__, torch.__version__, transformers.__version__)"
fi
if has pytest; then
  step "pytest on CUDA tensors"
  (cd python/tests && FLASHPLUS_TEST_DEVICE=cuda timeout 400 python3 -m pytest -q -p no:cacheprovider \
     --junitxml="$OUT/pytest-cuda.xml" ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest-cuda.log" | tail -40)
fi
if has e2e; then
  step "transformers: flash_attention_2 (ours) vs sdpa vs fp32 eager"
  timeout 300 python3 python/tests/device/transformers_e2e.py "$OUT/transformers_e2e.json" 2>&1 | tail -30
fi
if has overhead; then
  step "per-call overhead: C ABI vs flashplus._core vs flash_attn"
  lib=$(ls /tmp/site/flashplus/lib/libflashplus.so* 2>/dev/null | head -1)
  if [ -n "$lib" ]; then link=("$lib"); else link=("$BUILD/kernels/libflashplus.a"); fi
  gcc -O2 python/tests/device/c_call_overhead.c -I kernels/include -I /usr/local/cuda/include \
    "${link[@]}" -L/usr/local/cuda/lib64 -lcudart_static -L$DEPS/lib/x86_64-linux-gnu -lfmt \
    -lstdc++ -lpthread -ldl -lrt -lm -o /tmp/c_call_overhead && /tmp/c_call_overhead 5000 | tee "$OUT/overhead.jsonl"
  python3 python/tests/device/overhead.py 5000 | tee -a "$OUT/overhead.jsonl"
fi
