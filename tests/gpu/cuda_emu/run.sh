#!/usr/bin/env bash
# Runs the gpu test suite with the CUDA backend's kernels executed on the host: each .cu
# file is rewritten (launches become emu_launch calls) and compiled by g++ against the
# runtime/cuBLAS stand-ins in this folder (cuBLAS GEMM written from its column-major
# definition), then linked with the CPU objects of an existing build. This checks the
# kernels' index arithmetic, the GEMM argument mapping and the host logic on a machine
# without a GPU; it cannot see races, CUDA math-library differences or launch limits.
# Slow (block-synchronizing kernels run 256 host threads): filter with doctest options.
#   tests/gpu/cuda_emu/run.sh [build-dir] [doctest options, e.g. -tc='*conv2d kernels*']
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BUILD=$ROOT/${1:-build}
shift || true
W=$(mktemp -d /tmp/flatmin_cuda_emu.XXXXXX)
mkdir -p "$W/src" "$W/obj"
for f in "$ROOT"/autodiff/cuda/*.cu; do
  [ "$(basename "$f")" = cudnn.cu ] && continue  # cuDNN needs a GPU: the emulation runs the own kernels
  python3 - "$f" "$W/src/$(basename "$f" .cu).cpp" << 'PY'
import re, sys
s = open(sys.argv[1]).read()
# clang-format may break a launch after the kernel's name: \s* before <<<; a block kernel's
# template arguments may nest one level (bn_apply_block_kernel<BnForwardApply<T>>)
s = re.sub(r'(\w*block_kernel<(?:[^<>]|<[^<>]*>)*>)\s*<<<(.+?), kThreads, 0, c\.stream>>>\(', r'emu_launch_sync(\2, kThreads, \1, ', s, flags=re.S)
s = re.sub(r'(\w+<[^<>]*>)\s*<<<(.+?), kThreads, 0, c\.stream>>>\(', r'emu_launch(\2, kThreads, \1, ', s, flags=re.S)
if '<<<' in s: sys.exit(f'{sys.argv[1]}: a launch this script does not know how to rewrite')
open(sys.argv[2], 'w').write('#define __CUDACC__ 1\n#include "cuda_runtime.h"\n' + s)
PY
done
FLAGS=(-std=c++20 -O1 -I"$ROOT/tests/gpu/cuda_emu" -I"$ROOT" -isystem /usr/include/eigen3 "-DFLATMIN_SOURCE_DIR=\"$ROOT\"")
JOBS=${EMU_JOBS:-$(nproc)}  # parallel compilations (EMU_JOBS=2 on a shared machine)
# NCCL needs a real GPU: its stand-in from a build without NCCL replaces the build's object
for f in "$W"/src/*.cpp "$ROOT"/autodiff/cuda/conv_engine.cpp "$ROOT"/distributed/no_nccl.cpp "$ROOT"/tests/main.cpp "$ROOT"/tests/op_cases.cpp "$ROOT"/tests/gpu/*.cpp; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  g++ "${FLAGS[@]}" -c "$f" -o "$W/obj/$(basename "$(dirname "$f")")_$(basename "$f" .cpp).o" &
done
wait
cpu_objects=$(ls "$BUILD"/libflatmin.so.p/*.o | grep -v -e 'cuda_' -e 'distributed_nccl')
# the libraries the build's CPU objects use: oneDNN (its wrapper a static library of the build,
# with OpenMP) and Open MPI where the build has them
libs=(-ltbb -lz -lpthread $(pkg-config --libs openblas) -Wl,-rpath,"$(pkg-config --variable=libdir openblas)")
onednn="$BUILD/autodiff/cpu/libflatmin_onednn.a"
[ -f "$onednn" ] && libs=("$onednn" -ldnnl -fopenmp "${libs[@]}")
grep -q 'libmpi\.so' "$BUILD/build.ninja" && libs+=($(pkg-config --libs ompi-cxx 2>/dev/null || pkg-config --libs ompi))
g++ -o "$W/emu_tests" "$W"/obj/*.o $cpu_objects "${libs[@]}"
echo "[cuda_emu] running the gpu suite on the host emulation ($W/emu_tests)"
"$W/emu_tests" -ts=gpu "$@"
