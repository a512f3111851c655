#!/usr/bin/env bash
# Runs on the GPU machine (see ../shared/device/README.md): unpacks cmocka from .gpu-carry,
# builds a Release tree for sm_90a in build-gpu/, runs the CUDA tests and the CPU tests,
# then compute-sanitizer memcheck and racecheck on the CUDA op tests. Logs go to $OUT.
# Optional: STX_GPU_TARGETS="..." to build only some targets; STX_GPU_SANITIZE=0 to skip
# the sanitizer runs; STX_GPU_AFTER="command" runs after the tests (benchmarks).
set -uo pipefail
root=$(pwd)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/cmocka
for f in "$root"/.gpu-carry/*.deb; do dpkg -x "$f" /tmp/cmocka; done
export LD_LIBRARY_PATH=/tmp/cmocka/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_PREFIX_PATH=/tmp/cmocka/usr > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 2; }
targets=${STX_GPU_TARGETS:-all}
t0=$(date +%s)
cmake --build build-gpu -j 16 --target $targets > "$OUT/build.log" 2>&1 || {
  grep -E "error" -A3 "$OUT/build.log" | head -40; exit 3; }
echo "built in $(( $(date +%s) - t0 )) s"
cd build-gpu
ctest --output-on-failure -j 4 ${STX_GPU_CTEST_ARGS:-} 2>&1 | tee "$OUT/ctest.log" | tail -25
rc=${PIPESTATUS[0]}
if [ "${STX_GPU_SANITIZE:-1}" = 1 ]; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 9 ./tests/test_cuda_ops > "$OUT/sanitizer-$tool.log" 2>&1
    echo "compute-sanitizer $tool: exit $? ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.log" | tail -1))"
  done
fi
cd "$root"
if [ -n "${STX_GPU_AFTER:-}" ]; then bash -c "$STX_GPU_AFTER"; fi
exit "$rc"
