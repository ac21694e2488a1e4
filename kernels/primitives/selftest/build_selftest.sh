#!/bin/bash
# Scratch build of the tensor-core kernels + tc_selftest, independent of the rest of the project.
# usage: kernels/primitives/selftest/build_selftest.sh [build_dir=build-tc] [gencode]
# Then on a GPU: <build_dir>/tc_selftest check | configs | bench [nobwd]
set -e
cd "$(dirname "$0")/../../.."
B=${1:-build-tc}
GEN=${2:--gencode=arch=compute_90a,code=sm_90a}
mkdir -p "$B/obj"
FLAGS="-std=c++17 -O3 $GEN -I kernels/include -I kernels -Xptxas -v"
NVCC=${NVCC:-nvcc}
{
  echo "rule cu"
  echo "  command = $NVCC $FLAGS -c \$in -o \$out > \$out.log 2>&1 || (cat \$out.log; false)"
  echo "rule link"
  echo "  command = $NVCC $GEN \$in -o \$out"
  objs=""
  deps=$(ls kernels/gpu/fwd/*.cuh kernels/gpu/fwd/*.h kernels/gpu/bwd/*.cuh kernels/gpu/bwd/*.h kernels/primitives/*.h | tr '\n' ' ')
  for f in kernels/gpu/fwd/*.cu kernels/gpu/bwd/*.cu kernels/primitives/selftest/tc_selftest.cu; do
    o=$B/obj/$(basename "$f" .cu).o
    echo "build $o: cu $f | $deps"
    objs="$objs $o"
  done
  echo "build $B/tc_selftest: link $objs"
} > "$B/build.ninja"
ninja -f "$B/build.ninja" -j2
