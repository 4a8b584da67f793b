#!/usr/bin/env bash
# Kill -9 during `flatmin train` and resume, again and again: the resumed run must leave the
# same metrics file and the same final checkpoint, byte for byte, as an uninterrupted run.
# Kills land at random times (in a step, an evaluation, a checkpoint write) and, through
# FLATMIN_TEST_KILL_AT_STEP, exactly between a checkpoint's rename and the metrics row of
# the same step. Bounded: at most ~60 s on 2 cores (a fixed number of kills, small runs).
#   tests/faults.sh FLATMIN_BINARY
set -euo pipefail
flatmin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
RANDOM=${FAULTS_SEED:-11}  # reproducible kill times (the kills still race the process)

# About 2 s per uninterrupted run; checkpoints (every 75 steps) meet evaluations (every 100)
# at multiples of 300.
args=(train --dataset blobs --model mlp --hidden 128,128 --activation tanh --optimizer sgd --momentum 0.9 --lr 0.05
      --batch-size 32 --steps 1200 --eval-every 100 --checkpoint-every 75 --loader-seed 3 --model-seed 4)

fail() { echo "faults: FAIL: $*"; exit 1; }
t0=$(date +%s%N)
"$flatmin" "${args[@]}" --metrics "$tmp/ref.jsonl" --checkpoint "$tmp/ref.ckpt" > "$tmp/ref.out" 2> "$tmp/ref.err" ||
  fail "the uninterrupted run failed: $(tail -n 3 "$tmp/ref.err")"
[ "$(wc -l < "$tmp/ref.jsonl")" -eq 12 ] || fail "the reference run wrote $(wc -l < "$tmp/ref.jsonl") rows, not 12"

run_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
# One run of the same configuration to completion through kills; $1 names it.
start=$(date +%s)
run_with_kills() {
  local name=$1 kills=0 exact=0 resumes=0 rc
  local m="$tmp/$name.jsonl" c="$tmp/$name.ckpt"
  rm -f "$m" "$c"
  for attempt in $(seq 1 40); do
    local resume=(); [ -f "$c" ] && { resume=(--resume); resumes=$((resumes + 1)); }
    local env=()
    # Every other attempt dies exactly after the next step with both a checkpoint and an
    # evaluation (a multiple of 300), before its row; the others at a random time.
    if [ $((attempt % 2)) -eq 1 ]; then
      local last; last=$(tail -n 1 "$m" 2> /dev/null | grep -o '"step":[0-9]*' | cut -d: -f2 || true)
      local next=$(( (${last:-0} / 300 + 1) * 300 ))
      [ $next -lt 1200 ] && env=(FLATMIN_TEST_KILL_AT_STEP=$next)
    fi
    set +e
    env "${env[@]}" "$flatmin" "${args[@]}" "${resume[@]}" --metrics "$m" --checkpoint "$c" > "$tmp/$name.out" 2> "$tmp/$name.err" &
    local pid=$!
    if [ ${#env[@]} -eq 0 ]; then
      local ms=$(( (RANDOM * 32768 + RANDOM) % run_ms ))  # somewhere in a whole run's time
      sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
      kill -9 $pid 2> /dev/null && kills=$((kills + 1))
    fi
    wait $pid; rc=$?
    set -e
    [ ${#env[@]} -gt 0 ] && [ $rc -eq 137 ] && exact=$((exact + 1))
    if [ $rc -eq 0 ]; then
      echo "faults: $name: finished after $kills random kills, $exact between a checkpoint and its row, $resumes resumes"
      [ $exact -ge 1 ] || fail "$name: no kill between a checkpoint and its row"
      return 0
    fi
    [ $rc -eq 137 ] || fail "$name: attempt $attempt exited with $rc: $(tail -n 3 "$tmp/$name.err")"
  done
  fail "$name: not finished after 40 attempts"
}

for name in a b c d e; do
  run_with_kills $name
  cmp "$tmp/ref.jsonl" "$tmp/$name.jsonl" || fail "metrics differ from the uninterrupted run: $(diff "$tmp/ref.jsonl" "$tmp/$name.jsonl" | head -n 6)"
  cmp "$tmp/ref.ckpt" "$tmp/$name.ckpt" || fail "final checkpoints differ"
  [ "$(tail -n 1 "$tmp/ref.out")" = "$(tail -n 1 "$tmp/$name.out")" ] || fail "summaries differ"
done

# Resuming a finished run: evaluation only, the same summary and file; past --steps: an error.
cp "$tmp/ref.jsonl" "$tmp/again.jsonl"
"$flatmin" "${args[@]}" --resume --metrics "$tmp/again.jsonl" --checkpoint "$tmp/ref.ckpt" > "$tmp/again.out" 2> "$tmp/again.err" ||
  fail "resuming a finished run failed: $(tail -n 2 "$tmp/again.err")"
cmp "$tmp/ref.jsonl" "$tmp/again.jsonl" || fail "resuming a finished run changed the metrics file"
[ "$(tail -n 1 "$tmp/ref.out")" = "$(tail -n 1 "$tmp/again.out")" ] || fail "resuming a finished run changed the summary"
set +e
"$flatmin" "${args[@]/1200/1000}" --resume --checkpoint "$tmp/ref.ckpt" > /dev/null 2> "$tmp/past.err"; rc=$?
set -e
[ $rc -eq 1 ] && grep -q "past the 1000 steps asked for: nothing to do" "$tmp/past.err" ||
  fail "resuming past --steps: exit $rc, $(cat "$tmp/past.err")"
echo "faults: OK in $(( $(date +%s) - start )) s"
