#!/usr/bin/env bash
# Runs flatmin_bench and the PyTorch reference (bench/torch_reference.py) on this machine,
# one after the other, and prints a markdown table of the ratios with the machine and date.
#   bench/compare.sh [--reps N] [--threads N] [--only group,...] [--out DIR] [--cpu-time]
# --cpu-time measures process CPU time instead of wall time on both sides: for a machine
# shared with other jobs; use it with --threads 1 (CPU time sums over threads, and OpenMP
# threads spin while they wait).
# Installs what the reference needs (Debian: python3-torch, libopenblas0-openmp) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=5 threads=2 only="" out="" cpu=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --cpu-time) cpu="--cpu-time"; shift ;;
    *) echo "usage: bench/compare.sh [--reps N] [--threads N] [--only group,...] [--out DIR] [--cpu-time]" >&2
       exit 2 ;;
  esac
done
openblas=/usr/lib/x86_64-linux-gnu/openblas-openmp
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null || [ ! -e "$openblas/libblas.so.3" ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y -o DPkg::Lock::Timeout=600 python3-torch libopenblas0-openmp
fi
./run.sh build > /dev/null  # flatmin's own packages (OpenBLAS, Eigen, oneTBB, ...) and the build
ninja -C build bench/flatmin_bench
out="${out:-$(mktemp -d)}"
mkdir -p "$out"
args=(--json --threads "$threads" --reps "$reps")
[ -n "$only" ] && args+=(--only "$only")
[ -n "$cpu" ] && args+=("$cpu")
echo "flatmin_bench -> $out/flatmin.json" >&2
./build/bench/flatmin_bench "${args[@]}" > "$out/flatmin.json" || echo "flatmin_bench reported a failed group" >&2
echo "torch_reference.py -> $out/torch.json" >&2
# Debian's default reference BLAS is ~50x slower at GEMM: not a fair peer; use OpenBLAS.
LD_LIBRARY_PATH="$openblas" /usr/bin/python3 bench/torch_reference.py "${args[@]}" > "$out/torch.json"
/usr/bin/python3 bench/compare_table.py "$out/flatmin.json" "$out/torch.json"
