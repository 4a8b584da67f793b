#!/usr/bin/env bash
# One end-to-end check on a machine with an NVIDIA GPU (sized for < 8 minutes on 16 cores):
# configure + build with CUDA, the gpu test suite (FLATMIN_CUDA_SYNC=1: each kernel's error
# names its op), the GPU benchmark (flatmin, then PyTorch on the same GPU if importable),
# `flatmin probe --device cuda` against PyTorch, the whole test suite, and compute-sanitizer
# over the backend tests while time remains.
# Logs go to $OUT (if set) or ./gpu-check-logs; the summary is printed last.
#   scripts/gpu_deps.sh            # where flatmin builds, if the GPU machine lacks packages
#   scripts/gpu_check.sh           # on the GPU machine (carry .gpudeps along)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
LOG=${OUT:-$ROOT/gpu-check-logs}
mkdir -p "$LOG"
SUMMARY=$LOG/summary.txt
: > "$SUMMARY"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}
export PATH=/usr/local/cuda/bin:$PATH
JOBS=$(nproc)
say() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
status=0

say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -3)"
say "nvcc: $(nvcc --version 2>&1 | tail -1); g++: $(g++ --version 2>&1 | head -1); cores: $JOBS"

# ---- dependencies: the machine's own, else the carried .gpudeps, else apt-get ----
have_deps() {
  command -v pkg-config > /dev/null && pkg-config --exists eigen3 tbb nlohmann_json openblas 2> /dev/null &&
    printf '#include <doctest/doctest.h>\n#include <CLI/CLI.hpp>\n' | g++ -std=c++20 -fsyntax-only -x c++ - 2> /dev/null
}
use_carried() {
  local D=$ROOT/.gpudeps
  export PKG_CONFIG_PATH=$D/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  export CPATH=$D/include${CPATH:+:$CPATH} LIBRARY_PATH=$D/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
  export LD_LIBRARY_PATH=$D/runtime${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  command -v pkg-config > /dev/null || export PATH=$PATH:$D/bin
}
if have_deps; then
  say "dependencies: the machine's own"
elif [ -d .gpudeps ] && use_carried && have_deps; then
  say "dependencies: carried .gpudeps"
else
  say "dependencies missing and no usable .gpudeps: trying apt-get"
  timeout 150 apt-get install -y -o DPkg::Lock::Timeout=60 --no-install-recommends meson ninja-build pkg-config \
    libeigen3-dev libtbb-dev doctest-dev libcli11-dev nlohmann-json3-dev zlib1g-dev libopenblas-pthread-dev > "$LOG/build.log" 2>&1 ||
    say "apt-get failed (see build.log)"
fi
if command -v meson > /dev/null; then MESON=(meson)
elif python3 -c 'import mesonbuild' 2> /dev/null; then MESON=(python3 -m mesonbuild.mesonmain)
elif [ -d .gpudeps/python/mesonbuild ]; then MESON=(env PYTHONPATH=$ROOT/.gpudeps/python python3 -m mesonbuild.mesonmain)
else timeout 60 python3 -m pip install -q meson ninja >> "$LOG/build.log" 2>&1; MESON=(meson); fi
command -v ninja > /dev/null || timeout 60 python3 -m pip install -q ninja >> "$LOG/build.log" 2>&1
say "meson: $("${MESON[@]}" --version 2>&1 | tail -1); ninja: $(ninja --version 2>&1)"

# ---- configure + build ----
if [ -d build-gpu ]; then setup=(setup --reconfigure); else setup=(setup); fi
if "${MESON[@]}" "${setup[@]}" build-gpu -Dcuda=enabled -Dmarch=native >> "$LOG/build.log" 2>&1 &&
  timeout 330 ninja -C build-gpu -j "$JOBS" >> "$LOG/build.log" 2>&1; then
  say "build: ok ($(grep -c 'Compiling Cuda' "$LOG/build.log") CUDA objects compiled)"
else
  say "build: FAILED; the end of build.log:"
  grep -E 'error|Error|ERROR' "$LOG/build.log" | head -40 | tee -a "$SUMMARY"
  tail -40 "$LOG/build.log" | tee -a "$SUMMARY"
  exit 1
fi
T=./build-gpu/tests/flatmin_tests

# compute-sanitizer memcheck over the kernel-level gpu tests (names the kernel and address
# of any out-of-bounds access); $1 = seconds allowed.
sanitized=0
run_sanitizer() {
  sanitized=1
  if ! command -v compute-sanitizer > /dev/null || [ "$1" -lt 30 ]; then
    say "compute-sanitizer: skipped (not installed or no time left)"
    return
  fi
  timeout "$1" compute-sanitizer --tool memcheck --error-exitcode 9 "$T" -ts=gpu \
    -tc='*random*,*allocator*,*copies*,*int64*,*scatters*,*reductions*,*matmul*,*conv2d kernels*,*pooling*' \
    > "$LOG/sanitizer.log" 2>&1
  local rc=$?
  say "compute-sanitizer memcheck rc $rc (124 = ran out of time): $(grep -E 'ERROR SUMMARY' "$LOG/sanitizer.log" | tail -1)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -E -A8 'Invalid|ERROR' "$LOG/sanitizer.log" | head -40 | tee -a "$SUMMARY"
}

# ---- gpu test suite ----
FLATMIN_CUDA_SYNC=1 timeout 200 "$T" -ts=gpu > "$LOG/gpu_tests.log" 2>&1
rc=$?
say "gpu suite (rc $rc): $(grep -E '^\[doctest\] (test cases|assertions)' "$LOG/gpu_tests.log" | tr '\n' ' ')"
if [ $rc -ne 0 ]; then
  status=1
  say "gpu suite failures (first 200 lines; a crash shows as CRASHED or no summary):"
  grep -E -B3 -A12 'ERROR|FATAL|CRASH|exception' "$LOG/gpu_tests.log" | head -200 | tee -a "$SUMMARY"
  tail -5 "$LOG/gpu_tests.log" | tee -a "$SUMMARY"
elif ! grep -qE '^\[doctest\] test cases: +[1-9]' "$LOG/gpu_tests.log"; then
  status=1
  say "gpu suite did NOT run: $(grep -m1 'no usable CUDA device' "$LOG/gpu_tests.log")"
fi
[ $status -ne 0 ] && run_sanitizer 150  # diagnose a failure first, benchmarks after

# ---- the CLI on the GPU: `flatmin probe --device cuda` against the PyTorch reference ----
R=tests/reference/resnet18/cifar_batch_train
PY=python3
python3 -c 'import numpy' 2> /dev/null || PY=/usr/bin/python3
{
  timeout 60 ./build-gpu/tools/flatmin probe --model resnet18 --stem cifar --in-channels 3 --classes 5 --width 2 \
    --norm batch --mode train --dtype f64 --device cuda --weights $R.weights.safetensors \
    --batch $R.batch.safetensors --v $R.v.safetensors --out "$LOG/probe_cuda.safetensors" &&
    $PY tests/reference/compare_probe.py "$LOG/probe_cuda.safetensors" $R.expected.safetensors
} > "$LOG/probe.log" 2>&1
rc=$?
rm -f "$LOG/probe_cuda.safetensors"
[ $rc -ne 0 ] && status=1
say "flatmin probe --device cuda (rc $rc; PyTorch reference, float64): $(tail -3 "$LOG/probe.log" | tr '\n' ';')"

# ---- benchmarks ----
timeout 150 ./build-gpu/bench/flatmin_gpu_bench --batch 128 --width 64 --steps 10 > "$LOG/bench.log" 2>&1
say "flatmin_gpu_bench rc $?"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
  timeout 120 python3 bench/torch_gpu_bench.py --batch 128 --width 64 --steps 10 > "$LOG/torch.log" 2>&1
  say "torch_gpu_bench rc $?"
else
  echo "PyTorch with CUDA is not importable here" > "$LOG/torch.log"
  say "PyTorch with CUDA not available: no PyTorch numbers"
fi

# ---- whole suite (gpu suite included) ----
if [ "$(left)" -gt 60 ]; then
  timeout $(($(left) - 40)) "$T" > "$LOG/all_tests.log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && status=1
  say "whole suite (rc $rc): $(grep -E '^\[doctest\] (test cases|assertions)' "$LOG/all_tests.log" | tr '\n' ' ')"
  [ $rc -ne 0 ] && grep -E -B3 -A10 'ERROR|FATAL|CRASH' "$LOG/all_tests.log" | head -60 | tee -a "$SUMMARY"
else
  say "whole suite skipped: budget spent"
fi

# ---- compute-sanitizer (memcheck) over the kernel-level tests, if time remains ----
[ "$sanitized" -eq 0 ] && run_sanitizer $(($(left) - 15))

# ---- summary ----
{
  echo
  echo "==================== summary ($(($(date +%s) - START)) s) ===================="
  echo "GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1 | head -1)"
  echo "flatmin:"
  grep '^RESULT' "$LOG/bench.log" || { echo "  (no results)"; tail -5 "$LOG/bench.log"; }
  echo "pytorch:"
  grep -E '^(RESULT|torch )' "$LOG/torch.log" || tail -3 "$LOG/torch.log"
} | tee -a "$SUMMARY"
say "overall: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
