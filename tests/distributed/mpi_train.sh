#!/usr/bin/env bash
# Data-parallel `flatmin train` under mpirun on this machine (loopback), against the
# single-process run with the same flags (docs/distributed.md):
#   same                 final model, checkpoint, metrics and summary byte-identical on 1, 2 and 3
#                        processes (SGD, SAM, RS, SA with step and all-examples sampling, a ResNet-18 with BatchNorm); `flatmin trace` on 1 and 3
#   kill                 rank 1 killed mid-run: the job ends within seconds naming the rank, the
#                        last checkpoint resumes on 3 processes to the single-process result
#   mismatch             different flags on one rank, and too few micro-shards: refused at start
# Exits 77 (meson: SKIP) when flatmin was built without MPI or mpirun is missing.
# FLATMIN_TEST_DEVICE=cuda:0 runs the same cases on CUDA tensors (scripts/gpu_check.sh, with
# FLATMIN_NCCL=0 where the processes share one GPU).
set -uo pipefail
flatmin=$1 what=$2; shift 2
if ! command -v mpirun >/dev/null; then echo "mpirun not found: skipped"; exit 77; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export FLATMIN_THREADS=1  # 2 cores, up to 3 processes: one thread each
mpi() { local np=$1; shift; mpirun --oversubscribe --allow-run-as-root -np "$np" "$@"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAILED: $*"; exit 1; }

# An MPI-less build refuses mpirun with a clear message: that is a skip here, not a failure.
if ! mpi 1 "$flatmin" train --dataset blobs --steps 1 --micro-shards 1 > "$tmp/probe.out" 2> "$tmp/probe.err"; then
  if grep -q "built without MPI" "$tmp/probe.err"; then echo "flatmin built without MPI: skipped"; exit 77; fi
  cat "$tmp/probe.err"; fail "a one-process mpirun run"
fi

# Blobs (512 examples, 2 features), an MLP, batch 24 in 6 micro-shards of 4.
device=()
[ -n "${FLATMIN_TEST_DEVICE:-}" ] && device=(--device "$FLATMIN_TEST_DEVICE")
data=(--dataset blobs --model mlp --hidden 16,16 --batch-size 24 --loader-seed 3 "${device[@]}")
common=("${data[@]}" --micro-shards 6 --eval-every 5)

same() {  # same LABEL FLAGS...: byte-identical model, checkpoint and metrics for np = 1, 2, 3
  local label=$1; shift
  for np in 1 2 3; do
    local d="$tmp/$label.$np"; mkdir -p "$d"
    local run=("$flatmin" train "${common[@]}" "$@" --checkpoint "$d/ckpt" --metrics "$d/metrics.jsonl" --save-model "$d/model")
    if [ "$np" = 1 ]; then "${run[@]}" > "$d/out" 2> "$d/err"; else mpi "$np" "${run[@]}" > "$d/out" 2> "$d/err"; fi
    [ $? -eq 0 ] || { cat "$d/err"; fail "$label on $np process(es)"; }
  done
  for np in 2 3; do
    for f in model ckpt metrics.jsonl out; do
      cmp -s "$tmp/$label.1/$f" "$tmp/$label.$np/$f" || fail "$label: $f differs between 1 and $np processes"
    done
  done
  [ "$(wc -l < "$tmp/$label.1/metrics.jsonl")" -ge 2 ] || fail "$label: too few metrics rows"
  echo "$label: model, checkpoint, metrics and summary identical on 1, 2, 3 processes"
}

case "$what" in
  same)
    same sgd --optimizer sgd --lr 0.1 --momentum 0.9 --steps 15
    # The comparison sees the order of float additions: 3 micro-shards instead of 6 (the same
    # data, another tree) must give other bits, or the identities above would prove nothing.
    "$flatmin" train "${data[@]}" --micro-shards 3 --eval-every 5 --optimizer sgd --lr 0.1 --momentum 0.9 --steps 15 \
      --save-model "$tmp/sgd3" > /dev/null 2>&1 || fail "sgd with 3 micro-shards"
    cmp -s "$tmp/sgd3" "$tmp/sgd.1/model" && fail "3 and 6 micro-shards gave the same bits: the test cannot see the order"
    echo "sgd: 3 micro-shards instead of 6 change the bits (the comparison is sensitive to the order of additions)"
    # flatmin trace: Hutchinson's samples dealt out (5 samples over 3 processes: rounds of 3 and 2).
    tr=(trace --dataset blobs --model mlp --hidden 16,16 --subset 64 --samples 5 --tol 0 --lambda-max --power-iters 3 "${device[@]}" "$tmp/sgd.1/ckpt")
    "$flatmin" "${tr[@]}" > "$tmp/trace.1" 2> /dev/null || fail "trace on one process"
    mpi 3 "$flatmin" "${tr[@]}" > "$tmp/trace.3" 2> "$tmp/trace.err" || { cat "$tmp/trace.err"; fail "trace on 3 processes"; }
    cmp -s "$tmp/trace.1" "$tmp/trace.3" || fail "trace: 1 and 3 processes differ"
    echo "trace: tr̄ and λmax identical on 1 and 3 processes"
    same sam --optimizer sam --lr 0.1 --rho 0.05 --steps 15
    same rs --optimizer rs --lr 0.1 --rho 0.5 --lr-perturb 0.2 --steps 15 --eval-trace --trace-subset 64 --trace-samples 5
    same sa --optimizer sa --lr 0.1 --rho 0.2 --sa-batch 5 --steps 15
    same sa1 --optimizer sa --lr 0.1 --rho 0.2 --sa-batch 1 --steps 10
    same sa_all --optimizer sa --sa-sampling all --lr 0.1 --rho 0.2 --sa-batch 5 --steps 6  # g on all 512 examples
    # A small ResNet-18 with BatchNorm (ghost batch norm per micro-shard, running statistics
    # from shard 0 broadcast): Fashion-MNIST's first 48 images when the data set is installed.
    if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; then
      common=(--model resnet18 --width 4 --norm batch --train-subset 48 --test-subset 24 --batch-size 12 --micro-shards 6 --eval-every 2 --loader-seed 3 "${device[@]}")
      same resnet_bn --optimizer sgd --lr 0.05 --momentum 0.9 --steps 4
    else
      echo "resnet_bn: Fashion-MNIST not installed, that case skipped"
    fi
    ;;
  kill)
    d="$tmp/kill"; mkdir -p "$d"
    flags=(--optimizer sgd --lr 0.05 --momentum 0.9)
    common=("${data[@]}" --micro-shards 6)
    mpirun --oversubscribe --allow-run-as-root -np 2 "$flatmin" train "${common[@]}" "${flags[@]}" --steps 1000000 \
      --checkpoint "$d/ckpt" --checkpoint-every 200 > "$d/out" 2> "$d/err" &
    launcher=$!
    # Polled for up to 5 minutes: the sanitized build (./run.sh asan) reaches step 200 slowly.
    for _ in $(seq 3000); do [ -f "$d/ckpt" ] && break; sleep 0.1; done
    [ -f "$d/ckpt" ] || { kill "$launcher"; fail "no checkpoint appeared"; }
    victim=""
    for p in $(pgrep -P "$launcher"); do
      grep -qz '^OMPI_COMM_WORLD_RANK=1$' "/proc/$p/environ" 2>/dev/null && victim=$p
    done
    [ -n "$victim" ] || { kill "$launcher"; fail "rank 1's process not found"; }
    start=$(date +%s)
    kill -9 "$victim"
    wait "$launcher"; rc=$?
    took=$(( $(date +%s) - start ))
    [ "$rc" -ne 0 ] || fail "mpirun exited 0 after a rank was killed"
    [ "$took" -le 20 ] || fail "the job took ${took}s to end after rank 1 died"
    grep -qi "rank 1" "$d/err" || { cat "$d/err"; fail "the message does not name rank 1"; }
    echo "rank 1 killed: mpirun ended in ${took}s with exit code $rc:"
    grep -i "rank 1" "$d/err" | head -n 2
    # The last checkpoint is intact: resume it on 3 processes, 10 steps further, and compare
    # with one process running the same total uninterrupted.
    step=$(/usr/bin/python3 -c 'import json,struct,sys; f=open(sys.argv[1],"rb"); n=struct.unpack("<Q",f.read(8))[0]; print(json.loads(json.loads(f.read(n))["__metadata__"]["state"])["step"])' "$d/ckpt") ||
      fail "the checkpoint left by the killed job is unreadable"
    total=$((step + 10))
    mpi 3 "$flatmin" train "${common[@]}" "${flags[@]}" --steps "$total" --checkpoint "$d/ckpt" --resume \
      --save-model "$d/resumed" > "$d/out3" 2> "$d/err3" || { cat "$d/err3"; fail "resume on 3 processes"; }
    "$flatmin" train "${common[@]}" "${flags[@]}" --steps "$total" --save-model "$d/straight" > /dev/null 2>&1 ||
      fail "the single-process reference run"
    cmp -s "$d/resumed" "$d/straight" || fail "killed at 2, resumed at step $step on 3 processes: differs from one process"
    echo "checkpoint of step $step resumed on 3 processes to step $total: identical to one uninterrupted process"
    ;;
  mismatch)
    d="$tmp/mm"; mkdir -p "$d"
    base=("$flatmin" train "${data[@]}" --optimizer sgd --steps 3)
    start=$(date +%s)
    mpirun --oversubscribe --allow-run-as-root -np 1 "${base[@]}" --micro-shards 6 --lr 0.1 : -np 1 "${base[@]}" --micro-shards 6 --lr 0.2 > "$d/out" 2> "$d/err" &&
      fail "ranks with different --lr were accepted"
    grep -q "disagree on the configuration" "$d/err" || { cat "$d/err"; fail "no clear message for different flags"; }
    grep -q "rank(s) 1 differ from rank 0" "$d/err" || { cat "$d/err"; fail "the message does not name rank 1"; }
    echo "different --lr on rank 1: refused ($(grep -m1 -o 'the processes disagree[^(]*' "$d/err"))"
    mpi 3 "${base[@]}" --micro-shards 2 --lr 0.1 > "$d/out2" 2> "$d/err2" && fail "3 processes with 2 micro-shards were accepted"
    grep -q "micro-shards 2 is below the 3 processes" "$d/err2" || { cat "$d/err2"; fail "no clear message for too few micro-shards"; }
    echo "3 processes, --micro-shards 2: refused"
    [ $(( $(date +%s) - start )) -le 60 ] || fail "the refusals took more than a minute"
    ;;
  *) fail "unknown case $what" ;;
esac
