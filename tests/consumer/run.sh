#!/usr/bin/env bash
# Installs a built tree into a temporary prefix, then builds and runs this consumer project
# against the installed package only (.ci/run's "install" stage):
#   tests/consumer/run.sh [BUILD_DIR]        (default: build-ci; nothing is rebuilt there)
# Checks: the exported target asks nothing of its users beyond Threads; libflashplus has its
# SONAME and the CLI finds it through its RUNPATH; the C and the C++ programs compute a correct
# attention; the installed library finds its tuned tables under the prefix by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-ci}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null

targets=$(find "$prefix" -name flashplusTargets.cmake | head -n 1)
[ -n "$targets" ] || { echo "no flashplusTargets.cmake under $prefix" >&2; exit 1; }
iface=$(grep -h INTERFACE_LINK_LIBRARIES "$targets" || true)
echo "exported INTERFACE_LINK_LIBRARIES: ${iface:-none}"
if grep -E 'fmt|nlohmann|CUDA::|flashplus_hip|flashplus_cuda' <<<"$iface"; then
  echo "the installed package leaks a private dependency" >&2
  exit 1
fi
lib=$(find "$prefix" -name 'libflashplus.so' | head -n 1)
readelf -d "$lib" | grep -E 'SONAME|RUNPATH'
ldd "$prefix/bin/flashplus" | grep flashplus

# The consumer is built outside the prefix, so the table it finds can only come from the
# library's own location (not from the executable's).
cmake -S tests/consumer -B "$work/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/consumer" >/dev/null
"$work/consumer/consumer_c"
"$work/consumer/consumer_cpp"
tuned=$prefix/share/flashplus/tuned
table=$(ls "$tuned"/*.json | head -n 1)
env -u FLASHPLUS_TUNED_TABLE "$work/consumer/consumer_cpp" "$tuned" "$(basename "$table" .json)"
"$prefix/bin/flashplus" info
echo "install + consumer: ok"
