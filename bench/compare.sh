#!/usr/bin/env bash
# flatmin against PyTorch on this machine's CPU, in alternating rounds: in each round r = 1..R
# every engine runs once, in the order below (A B C ... A B C ...), each as its own process
# writing OUT/roundR-ENGINE.json; OUT/load.jsonl records the 1-minute load average before and
# after each run; then bench/compare_table.py prints the markdown tables (also OUT/table.md).
#   bench/compare.sh [--rounds R (default 3)] [--reps N (default 5)] [--threads N (default 2)]
#                    [--only group,...] [--out DIR] [--engines e,...] [--cpu-time]
# Engines: flatmin (build/bench/flatmin_bench), flatmin_bf16 (the same with --bf16: bfloat16
# convolutions, float32 everything else), flatmin_channels_last and flatmin_bf16_channels_last
# (the same two with --channels-last: NHWC activations in the ResNets); torch2_eager, torch2_channels_last,
# torch2_compile, torch2_compile_channels_last, torch2_bf16 (bench/torch_reference.py --mode
# ..., PyTorch 2.x from PyPI in a virtual environment outside the repository); torch113_eager
# (Debian's python3-torch 1.13 with OpenBLAS). PyTorch is a benchmark-only dependency: it is
# never needed to build, test or run flatmin.
# The 2.x environment is created when missing, in
#   ${FLATMIN_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flatmin}/torch2
# (python3 -m venv, then pip install torch numpy: several GB); Debian's packages
# (python3-torch, libopenblas0-openmp, python3-venv) are installed when missing.
# --cpu-time measures process CPU time instead of wall time on every side: for a machine
# shared with other jobs; use it with --threads 1 (CPU time sums over threads).
set -euo pipefail
cd "$(dirname "$0")/.."
all_engines="flatmin,flatmin_channels_last,flatmin_bf16,flatmin_bf16_channels_last,torch2_eager,torch2_channels_last,torch2_compile,torch2_compile_channels_last,torch2_bf16,torch113_eager"
usage="usage: bench/compare.sh [--rounds R] [--reps N] [--threads N] [--only group,...] [--out DIR] [--engines e,...] [--cpu-time]
engines: $all_engines"
rounds=3 reps=5 threads=2 only="" out="" cpu="" engines="$all_engines"
command_line="bench/compare.sh $*"
die() { echo "bench/compare.sh: $*" >&2; exit 2; }
positive() { [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] || die "$1 needs a positive integer, got '$2'"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds|--reps|--threads|--only|--out|--engines) [ $# -ge 2 ] || die "$1 needs a value" ;;&
    --rounds) positive "$1" "$2"; rounds="$2"; shift 2 ;;
    --reps) positive "$1" "$2"; reps="$2"; shift 2 ;;
    --threads) positive "$1" "$2"; threads="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --engines) engines="$2"; shift 2 ;;
    --cpu-time) cpu="--cpu-time"; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a selected <<< "$engines"
[ ${#selected[@]} -gt 0 ] || die "--engines is empty"
for e in "${selected[@]}"; do
  [[ ",$all_engines," == *",$e,"* ]] || die "--engines: unknown engine '$e' (engines: $all_engines)"
done
uses() { [[ ",$engines," == *",$1"* ]]; }  # uses torch2_ : any 2.x engine

sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
apt_install() { $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=600 "$@" >&2; }

openblas=/usr/lib/x86_64-linux-gnu/openblas-openmp
if uses torch113_eager; then
  if ! /usr/bin/python3 -c 'import torch' 2>/dev/null || [ ! -e "$openblas/libblas.so.3" ]; then
    apt_install python3-torch libopenblas0-openmp
  fi
fi

cache="${FLATMIN_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flatmin}"
venv="$cache/torch2"
if uses torch2_; then
  mkdir -p "$cache"
  (
    flock 9  # one install at a time
    if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
      /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
      [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
      echo "installing PyTorch 2.x from PyPI into $venv (several GB; log: $cache/pip.log)" >&2
      "$venv/bin/pip" install torch numpy >> "$cache/pip.log" 2>&1 ||
        { echo "bench/compare.sh: pip install torch numpy failed, see $cache/pip.log" >&2; exit 1; }
    fi
  ) 9> "$cache/install.lock"
fi

if uses flatmin; then  # any flatmin engine
  ./run.sh build > /dev/null  # flatmin's own packages (OpenBLAS, Eigen, oneTBB, ...) and the build
  ninja -C build bench/flatmin_bench > /dev/null
fi

out="${out:-$(mktemp -d)}"
mkdir -p "$out"
args=(--json --threads "$threads" --reps "$reps")
[ -n "$only" ] && args+=(--only "$only")
[ -n "$cpu" ] && args+=("$cpu")
/usr/bin/python3 - "$out/meta.json" "$command_line" "$rounds" "$reps" "$threads" "$engines" "$only" "$cpu" <<'PY'
import datetime, json, os, subprocess, sys
path, command, rounds, reps, threads, engines, only, cpu = sys.argv[1:]
model = "?"
for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
    if line.startswith("Model name:"):
        model = line.split(":", 1)[1].strip()
json.dump({"command": command, "start": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": "%s, %d cores, %.0f GiB" % (model, os.cpu_count(),
                                                  os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
           "rounds": int(rounds), "reps": int(reps), "threads": int(threads), "engines": engines.split(","),
           "only": only, "cpu_time": bool(cpu)}, open(path, "w"), indent=2)
PY
: > "$out/load.jsonl"

run_engine() {  # ENGINE: its JSON on stdout
  case "$1" in
    flatmin) ./build/bench/flatmin_bench "${args[@]}" ;;
    flatmin_bf16) ./build/bench/flatmin_bench --bf16 "${args[@]}" ;;
    flatmin_channels_last) ./build/bench/flatmin_bench --channels-last "${args[@]}" ;;
    flatmin_bf16_channels_last) ./build/bench/flatmin_bench --bf16 --channels-last "${args[@]}" ;;
    # an inductor cache per engine and invocation (torch_reference.py: and per group): round 1
    # compiles cold (not even sharing kernels with another mode or group), later rounds reuse it
    torch2_*) TORCHINDUCTOR_CACHE_DIR="$out/inductor-cache/$1" \
      "$venv/bin/python" bench/torch_reference.py --mode "${1#torch2_}" "${args[@]}" ;;
    # Debian's default reference BLAS is ~50x slower at GEMM: not a fair peer; use OpenBLAS.
    torch113_eager) LD_LIBRARY_PATH="$openblas" /usr/bin/python3 bench/torch_reference.py --mode eager "${args[@]}" ;;
  esac
}
load1() { cut -d' ' -f1 /proc/loadavg; }

failed=0
for ((r = 1; r <= rounds; r++)); do
  for e in "${selected[@]}"; do
    file="$out/round$r-$e.json"
    echo "round $r/$rounds: $e -> $file" >&2
    before=$(load1) t0=$(date +%s.%N) start=$(date -u +%H:%M:%S) rc=0
    run_engine "$e" > "$file.tmp" 2> "$out/round$r-$e.log" || rc=$?
    after=$(load1) t1=$(date +%s.%N)
    if [ -s "$file.tmp" ]; then mv "$file.tmp" "$file"; else rm -f "$file.tmp"; fi
    if [ "$rc" -ne 0 ]; then
      failed=1
      echo "round $r: $e exited with status $rc (log: $out/round$r-$e.log)" >&2
      tail -n 3 "$out/round$r-$e.log" >&2
    fi
    printf '{"round": %d, "engine": "%s", "start": "%s", "seconds": %.1f, "load_before": %s, "load_after": %s, "rc": %d}\n' \
      "$r" "$e" "$start" "$(awk "BEGIN { print $t1 - $t0 }")" "$before" "$after" "$rc" >> "$out/load.jsonl"
  done
done
/usr/bin/python3 bench/compare_table.py "$out" | tee "$out/table.md"
echo "raw results: $out" >&2
exit $failed
