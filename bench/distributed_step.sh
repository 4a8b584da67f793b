#!/usr/bin/env bash
# Run from the repository root after ./run.sh build: bash bench/distributed_step.sh (docs/distributed.md).
# ResNet-18 (width 64, BatchNorm, 1x28x28 Fashion-MNIST, batch 32) SGD step: per-step wall and
# CPU time (all processes) = (run with 5 steps - run with 1 step) / 4.
F=${FLATMIN:-build/tools/flatmin}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
args=(train --model resnet18 --width 64 --norm batch --train-subset 64 --test-subset 32 --batch-size 32 --optimizer sgd --lr 0.01)
t() { /usr/bin/time -f "%e %U %S" -o ${TMPDIR:-/tmp}/dist_bench_time "$@" > /dev/null 2>${TMPDIR:-/tmp}/dist_bench_err || cat ${TMPDIR:-/tmp}/dist_bench_err; cat ${TMPDIR:-/tmp}/dist_bench_time; }
run() {  # label launcher...
  local label=$1; shift
  read w1 u1 s1 < <(t "$@" "$F" "${args[@]}" --steps 1 $EXTRA)
  read w5 u5 s5 < <(t "$@" "$F" "${args[@]}" --steps 5 $EXTRA)
  printf "%-32s per step: wall %.2f s, CPU %.2f s (load %s)\n" "$label" "$(echo "($w5 - $w1)/4" | bc -l)" \
    "$(echo "($u5 + $s5 - $u1 - $s1)/4" | bc -l)" "$(cut -d' ' -f1 /proc/loadavg)"
  grep "sent" ${TMPDIR:-/tmp}/dist_bench_err
}
for rep in 1 2; do
EXTRA="--micro-shards 1" FLATMIN_THREADS=2 run "1 proc x 2 threads, 1 shard"
EXTRA="--micro-shards 2" FLATMIN_THREADS=2 run "1 proc x 2 threads, 2 shards"
EXTRA="--micro-shards 2" FLATMIN_THREADS=1 run "2 procs x 1 thread, 2 shards" mpirun --oversubscribe -np 2 -x FLATMIN_THREADS
EXTRA="--micro-shards 1" FLATMIN_THREADS=1 run "1 proc x 1 thread, 1 shard"
done
