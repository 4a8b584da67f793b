#!/usr/bin/env bash
# One end-to-end check on a machine with an NVIDIA GPU (sized for < 8 minutes on 16 cores):
# configure + build with CUDA (and cuDNN where found: the toolkit's, or the nvidia-cudnn
# wheel beside PyTorch), the gpu test suite (FLATMIN_CUDA_SYNC=1: each kernel's error names
# its op), the GPU benchmark on each convolution engine (auto, cuDNN, timed cuDNN, flatmin's own;
# and auto with bfloat16 convolutions)
# and PyTorch's at its settings (bench/torch_gpu_bench.py) on the same GPU, a per-op profile,
# `flatmin probe --device cuda` against PyTorch, a short `flatmin escape --preset gpu` run
# (with the Fashion-MNIST files carried in .fmnist/), data-parallel training on CUDA tensors
# through MPI (2 and 3 processes on the one GPU), the whole test suite, and
# compute-sanitizer over the backend tests while time remains.
# Logs go to $OUT (if set: the summary plus one logs.tar.gz, refreshed after each stage) or
# ./gpu-check-logs; the summary is printed last.
#   scripts/gpu_deps.sh            # where flatmin builds, if the GPU machine lacks packages
#   scripts/gpu_check.sh           # on the GPU machine (carry .gpudeps or .gpudeps.tar.xz)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ -n "${OUT:-}" ]; then LOG=/tmp/gpu-check-logs; else LOG=$ROOT/gpu-check-logs; fi
rm -rf "$LOG" && mkdir -p "$LOG"  # a warm machine keeps /tmp: no logs of an earlier call
SUMMARY=$LOG/summary.txt
: > "$SUMMARY"
# $OUT brings back 8 files at most: the summary and one archive of the logs, after each stage.
pack() { [ -n "${OUT:-}" ] && cp "$SUMMARY" "$OUT/" && tar -czf "$OUT/logs.tar.gz" -C "$LOG" . 2> /dev/null; true; }
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}
# the stages after the build (GPU_CHECK_STAGES, a comma list; all by default)
STAGES=,${GPU_CHECK_STAGES:-suite,bench,layers,torch,escape,profile,probe,mpi,all,sanitizer},
want() { [[ $STAGES == *",$1,"* ]]; }
export PATH=/usr/local/cuda/bin:$PATH
JOBS=$(nproc)
say() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
status=0

say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -3)"
say "nvcc: $(nvcc --version 2>&1 | tail -1); g++: $(g++ --version 2>&1 | head -1); cores: $JOBS"
# for the NCCL path (it bootstraps over MPI): is an MPI there at all?
say "MPI here: mpirun $(command -v mpirun || echo absent); libmpi $(ldconfig -p 2> /dev/null | grep -c 'libmpi\.so') entries"

# ---- dependencies: the machine's own, else the carried .gpudeps, else apt-get ----
if [ ! -d .gpudeps ] && [ -f .gpudeps.tar.xz ]; then  # carried compressed (the carry limit is 64 MiB)
  tar -xJf .gpudeps.tar.xz 2> /dev/null ||
    python3 -c 'import tarfile; tarfile.open(".gpudeps.tar.xz").extractall()'
fi
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

# ---- cuDNN: the toolkit's, else the nvidia-cudnn wheel beside PyTorch (lib/ holds only
# libcudnn.so.9: a folder with include/ and lib/libcudnn.so links to it for -Dcudnn_dir) ----
cudnn_args=()
if [ -f /usr/local/cuda/include/cudnn.h ]; then
  say "cuDNN: the CUDA toolkit's"
else
  W=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2> /dev/null)
  if [ -n "$W" ] && [ -f "$W/include/cudnn.h" ] && [ -f "$W/lib/libcudnn.so.9" ]; then
    mkdir -p /tmp/cudnn/lib
    ln -sfn "$W/include" /tmp/cudnn/include
    ln -sf "$W/lib/libcudnn.so.9" /tmp/cudnn/lib/libcudnn.so
    export LD_LIBRARY_PATH=$W/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    cudnn_args=(-Dcudnn_dir=/tmp/cudnn)
    say "cuDNN: the wheel at $W ($(grep -m3 -E 'define CUDNN_(MAJOR|MINOR|PATCHLEVEL) ' "$W/include/cudnn_version.h" | awk '{printf "%s ", $3}'))"
  else
    say "cuDNN: not found (convolutions run flatmin's own kernels)"
  fi
fi

# ---- configure + build (without cuDNN once more if the build with it fails) ----
build() {
  if [ -d build-gpu ]; then setup=(setup --reconfigure); else setup=(setup); fi
  "${MESON[@]}" "${setup[@]}" build-gpu -Dcuda=enabled -Dmarch=native "$@" >> "$LOG/build.log" 2>&1 &&
    timeout 330 ninja -C build-gpu -j "$JOBS" tests/flatmin_tests tools/flatmin bench/flatmin_gpu_bench \
      >> "$LOG/build.log" 2>&1
}
built() {
  say "build: ok ($(grep -c 'Compiling Cuda' "$LOG/build.log") CUDA objects compiled; $(grep -E '^\s+(cuDNN|NCCL|MPI)\s*:' "$LOG/build.log" | tail -3 | tr -s ' ' | tr '\n' ' '))"
}
build_failed() {
  say "build: FAILED; the end of build.log:"
  grep -E 'error|Error|ERROR' "$LOG/build.log" | head -40 | tee -a "$SUMMARY"
  tail -20 "$LOG/build.log" | tee -a "$SUMMARY"
}
if build "${cudnn_args[@]}"; then
  built
else
  build_failed
  status=1
  say "retrying without cuDNN (-Dcudnn=disabled)"
  if build -Dcudnn=disabled; then built; else build_failed; pack; exit 1; fi
fi
pack
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
  FLATMIN_CUDA_CONV=native timeout "$1" compute-sanitizer --tool memcheck --error-exitcode 9 "$T" -ts=gpu \
    -tc='*random*,*allocator*,*copies*,*int64*,*scatters*,*reductions*,*matmul*,*conv2d kernels*,*pooling*' \
    > "$LOG/sanitizer.log" 2>&1
  local rc=$?
  say "compute-sanitizer memcheck rc $rc (124 = ran out of time): $(grep -E 'ERROR SUMMARY' "$LOG/sanitizer.log" | tail -1)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -E -A8 'Invalid|ERROR' "$LOG/sanitizer.log" | head -40 | tee -a "$SUMMARY"
}

# ---- gpu test suite (convolutions on the default engine: cuDNN where built with it) ----
want suite && {
FLATMIN_CUDA_SYNC=1 timeout 200 "$T" -ts=gpu > "$LOG/gpu_tests.log" 2>&1
rc=$?
say "gpu suite (rc $rc): $(grep -E '^\[doctest\] (test cases|assertions)' "$LOG/gpu_tests.log" | tr '\n' ' ')"
if [ $rc -ne 0 ]; then
  status=1
  say "gpu suite failures (first 120 lines; a crash shows as CRASHED or no summary):"
  grep -E -B3 -A12 'ERROR|FATAL|CRASH|exception' "$LOG/gpu_tests.log" | head -120 | tee -a "$SUMMARY"
  tail -5 "$LOG/gpu_tests.log" | tee -a "$SUMMARY"
elif ! grep -qE '^\[doctest\] test cases: +[1-9]' "$LOG/gpu_tests.log"; then
  status=1
  say "gpu suite did NOT run: $(grep -m1 'no usable CUDA device' "$LOG/gpu_tests.log")"
fi
pack
}

# ---- benchmarks: flatmin on each convolution engine, then PyTorch at its settings ----
B=./build-gpu/bench/flatmin_gpu_bench
# (bf16: the auto engine with bfloat16 convolutions on cuDNN's tensor cores, --dtype bf16)
want bench && for engine in auto bf16 cudnn cudnn-benchmark native; do
  conv=$engine dtype=f32
  [ "$engine" = bf16 ] && conv=auto dtype=bf16
  FLATMIN_CUDA_CONV=$conv timeout 100 $B --batch 128 --width 64 --steps 10 --dtype $dtype 2>&1 |
    sed "s/^RESULT /RESULT engine=$engine /" > "$LOG/bench_$engine.log"
  say "flatmin_gpu_bench engine=$engine: $(grep -c '^RESULT' "$LOG/bench_$engine.log") results"
done
# each distinct convolution on each engine, with the algorithm cuDNN's plans chose
if want layers; then
  FLATMIN_CUDNN_LOG=1 timeout 120 $B --layers 1 --batch 128 --width 64 --steps 10 > "$LOG/layers.log" 2>&1
  say "conv layers rc $? ($(grep -c '^RESULT' "$LOG/layers.log") results)"
  FLATMIN_CUDNN_LOG=1 timeout 60 $B --layers 1 --batch 128 --width 64 --steps 10 --dtype bf16 \
    > "$LOG/layers_bf16.log" 2>&1
  say "conv layers bf16 rc $? ($(grep -c '^RESULT' "$LOG/layers_bf16.log") results)"
fi
pack
if ! want torch; then
  say "torch stage not asked for"
elif python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
  timeout 200 python3 bench/torch_gpu_bench.py --batch 128 --width 64 --steps 10 --budget-s 150 \
    --settings fp32,fp32_benchmark,channels_last,tf32,bf16,compile > "$LOG/torch.log" 2>&1
  say "torch_gpu_bench rc $?"
else
  echo "PyTorch with CUDA is not importable here" > "$LOG/torch.log"
  say "PyTorch with CUDA not available: no PyTorch numbers"
fi
pack
# ---- the main job's GPU preset, shortened: every phase and arm kind runs, each capped, so
# the full preset's time can be estimated from the phases' rates (Fashion-MNIST in .fmnist/) ----
if ! want escape; then
  :
elif [ -d .fmnist ] && [ "$(left)" -gt 100 ]; then
  rm -rf /tmp/escape-smoke
  timeout $(($(left) > 160 ? 120 : $(left) - 40)) ./build-gpu/tools/flatmin escape --preset gpu --data-dir .fmnist \
    --train-subset 512 --test-subset 1000 --trace-subset 256 --seeds 1 --methods sgd,rs,sa16,sa1 \
    --memorize-steps 800 --memorize-acc 0.9 --clean-steps 800 --start-loss 0.05 --escape-steps 100 \
    --escape-eval-every 50 --out /tmp/escape-smoke > "$LOG/escape.log" 2>&1
  rc=$?
  cp /tmp/escape-smoke/report.md /tmp/escape-smoke/summary.json "$LOG/" 2> /dev/null
  say "flatmin escape --preset gpu (shortened) rc $rc (124 = timed out): $(grep -E '^\[[0-9]+/[0-9]+\]' "$LOG/escape.log" | tail -4 | tr '\n' ';')"
else
  say "escape run skipped (no .fmnist or no time left)"
fi
pack

# where a step's time goes now (synchronized per-op times, so small kernels read high)
if want profile; then
  FLATMIN_PROFILE=1 FLATMIN_CUDA_SYNC=1 timeout 60 $B --batch 128 --width 64 --steps 3 --repeats 1 --gemm 256 \
    > "$LOG/profile.log" 2>&1
  say "profile rc $? ($(wc -l < "$LOG/profile.log") lines)"
fi

# ---- the CLI on the GPU: `flatmin probe --device cuda` against the PyTorch reference ----
want probe && {
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
pack
}

# ---- data parallelism on CUDA tensors: 1, 2 and 3 processes sharing this GPU must give the
# same bits (tests/distributed/mpi_train.sh same). NCCL refuses two ranks on one GPU, so
# FLATMIN_NCCL=0 sends CUDA tensors through MPI, staged in host memory ----
if ! want mpi; then
  :
elif ! command -v mpirun > /dev/null || ! grep -q 'libmpi\.so' build-gpu/build.ninja; then
  say "mpi stage skipped: no mpirun or a build without MPI"
elif [ "$(left)" -gt 90 ]; then
  FLATMIN_NCCL=0 FLATMIN_TEST_DEVICE=cuda:0 timeout $(($(left) > 200 ? 150 : $(left) - 50)) \
    tests/distributed/mpi_train.sh ./build-gpu/tools/flatmin same > "$LOG/mpi_cuda.log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status=1
  say "data parallel on CUDA tensors through MPI (rc $rc, 124 = timed out): $(tail -3 "$LOG/mpi_cuda.log" | tr '\n' ';')"
else
  say "mpi stage skipped: budget spent"
fi
pack

# ---- whole suite (gpu suite included) ----
if ! want all; then
  :
elif [ "$(left)" -gt 60 ]; then
  timeout $(($(left) - 40)) "$T" > "$LOG/all_tests.log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && status=1
  say "whole suite (rc $rc): $(grep -E '^\[doctest\] (test cases|assertions)' "$LOG/all_tests.log" | tr '\n' ' ')"
  [ $rc -ne 0 ] && grep -E -B3 -A10 'ERROR|FATAL|CRASH' "$LOG/all_tests.log" | head -60 | tee -a "$SUMMARY"
else
  say "whole suite skipped: budget spent"
fi
pack

# ---- compute-sanitizer (memcheck) over the kernel-level tests, if time remains ----
want sanitizer && [ "$sanitized" -eq 0 ] && run_sanitizer $(($(left) - 15))

# ---- summary ----
{
  echo
  echo "==================== summary ($(($(date +%s) - START)) s) ===================="
  echo "GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1 | head -1)"
  echo "flatmin:"
  cat "$LOG"/bench_*.log 2> /dev/null | grep '^RESULT' | grep -v 'bench=gemm' || echo "  (no results)"
  for f in "$LOG/layers.log" "$LOG/layers_bf16.log"; do
    [ -f "$f" ] && grep '^RESULT' "$f" | sed 's/^RESULT bench=conv_layer //'
  done
  echo "pytorch:"
  grep -E '^(RESULT|torch |# )' "$LOG/torch.log" 2> /dev/null | grep -v 'bench=gemm' || echo "  (not run)"
} | tee -a "$SUMMARY"
say "overall: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
pack
exit $status
