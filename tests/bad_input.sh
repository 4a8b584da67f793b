#!/usr/bin/env bash
# Bad command lines (issue 11): each is refused with a one-line error naming the flag and
# the problem, before any work (no allocation, no training, nothing written).
#   tests/bad_input.sh FLATMIN_BINARY
set -uo pipefail
flatmin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
# expect "message substring" flatmin args...
expect() {
  local want=$1; shift
  local out rc
  out=$(timeout 20 "$flatmin" "$@" 2>&1 < /dev/null); rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 124 ] || ! grep -qF -- "$want" <<< "$out"; then
    echo "FAIL (exit $rc): flatmin $*"; echo "  wanted: $want"; echo "  got: $(head -n 3 <<< "$out")"; failed=1
  fi
}
blobs=(--dataset blobs --steps 1)
# 1. sizes: bounded flags, parameter counts checked before anything is built
expect "--hidden: Value 4611686018427387904 not in range" train "${blobs[@]}" --hidden 4611686018427387904
expect "parameters exceed the limit" train "${blobs[@]}" --hidden 1048576,1048576
expect "--width: Value 100000000 not in range" train "${blobs[@]}" --model resnet18 --width 100000000
expect "--width: Value 100000000 not in range" probe --width 100000000 --weights w --batch b --out "$tmp/o"
expect "--in-channels: Value -1 not in range" taylor --in-channels -1 --weights w --batch b
expect "--classes: Value 0 not in range" probe --classes 0 --weights w --batch b --out "$tmp/o"
expect "--dims: Value 100000 not in range" ddep --dims 100000
expect "--dims: Value 100000 not in range" table1 --dims 100000 --out "$tmp/t"
expect "--dim: Value 100000 not in range" certify --eps 0.1 --problem dln --dim 100000
expect "certify: --top-k must be in [1, 1000], got 0" certify --eps 0.1 --projector hessian --top-k 0
expect "certify: --top-k must be in [1, 1000], got 5000" certify --eps 0.1 --projector hessian --top-k 5000
expect "certify: --trace-samples must be in [1, 100000], got 1000000" certify --eps 0.1 --trace-samples 1000000 ckpt
expect "table1: --seeds must be in [1, 10000], got 100000" table1 --seeds 100000 --out "$tmp/t"
expect "table1: --cap must be in [1, 100000000], got 10000000000" table1 --cap 10000000000 --out "$tmp/t"
expect "table1: --refine-cap must be in [1, 10000000], got 0" table1 --refine-cap 0 --out "$tmp/t"
expect "table1: the number of --eps values must be in [1, 100], got 101" table1 --eps "$(printf '0.1,%.0s' {1..100})0.1" --out "$tmp/t"
expect "hessian: --top-k must be in [1, 1000], got 100000" hessian ckpt --out "$tmp" --top-k 100000
expect "hessian: --iterations must be in [0, 10000], got 100000" hessian ckpt --out "$tmp" --top-k 5 --iterations 100000
expect "hessian: --density-iterations must be in [1, 10000], got 0" hessian ckpt --out "$tmp" --density --density-iterations 0
expect "hessian: --runs must be in [1, 1000], got 5000" hessian ckpt --out "$tmp" --density --runs 5000
expect "hessian: --bins must be in [2, 10000000], got 1" hessian ckpt --out "$tmp" --density --bins 1
expect "hessian: --layer-samples must be in [1, 1000000], got 0" hessian ckpt --out "$tmp" --by-layer --layer-samples 0
expect "hessian: --layer-iterations must be in [1, 10000], got 100000" hessian ckpt --out "$tmp" --by-layer --layer-iterations 100000
expect "--mf-shape: Value 100 not in range" table1 --mf-shape 4,100,2 --out "$tmp/t"
expect "--mf-shape: give p,q,k with 1 <= k < min(p, q)" table1 --mf-shape 4,4,4 --out "$tmp/t"
expect "table1: --mf-cap must be in [1, 100000000], got 0" table1 --mf-cap 0 --out "$tmp/t"
expect "--mf-eps: every ε must be a positive finite number" table1 --mf-eps 0.1,nan --out "$tmp/t"
expect "--at: only --problem mf" certify --eps 0.1 --problem dln --at flat
expect "--epochs 4611686018427387904: 4 steps per epoch overflow" train --dataset blobs --epochs 4611686018427387904
# 8. unsigned flags refuse negatives; non-finite values where a number is measured against
expect "--model-seed: must not be negative" train "${blobs[@]}" --model-seed -1
expect "--seed: must not be negative" trace --seed -3 x
expect "--radii: every radius must be a positive finite number" taylor --radii 0.1,inf --weights w --batch b
expect "--radii: a slope needs at least two radii" taylor --radii 0.1 --weights w --batch b
expect "--max-order 5: nested reverse mode goes up to 3 here" taylor --max-order 5 --weights w --batch b
expect "--max-order: Value 33 not in range" taylor --derivatives taylor --max-order 33 --weights w --batch b
expect "--derivatives: forward not in" taylor --derivatives forward --weights w --batch b
expect "--memorize-acc must be in (0, 1]" escape --memorize-acc nan
expect "--start must be two finite numbers" example1 --start nan 1
# 4. every output path checked before any work
expect "--checkpoint $tmp/no/c: the folder $tmp/no does not exist" train "${blobs[@]}" --checkpoint "$tmp/no/c"
expect "--save-model $tmp/no/m: the folder" train "${blobs[@]}" --save-model "$tmp/no/m"
expect "--metrics $tmp: is a folder" train "${blobs[@]}" --metrics "$tmp"
expect "--save-start $tmp/no/s: the folder" escape --save-start "$tmp/no/s"
expect "--out $tmp/no/o: the folder" probe --weights w --batch b --out "$tmp/no/o"
expect "--out $tmp/no/o: the folder" example1 --out "$tmp/no/o"
expect "--out $tmp/no/o: the folder" ddep --out "$tmp/no/o"
# escape (issue 10): inconsistent settings and output folders refused before any work
mkdir -p "$tmp/escape-full" && touch "$tmp/escape-full/x" "$tmp/escape-file"
expect "--out $tmp/escape-full exists and is not empty (give --force" escape --out "$tmp/escape-full"
expect "--out $tmp/escape-file is a file, not a folder" escape --out "$tmp/escape-file"
expect "--methods sa128: b = 128 exceeds --batch-size 64" escape --methods sa128 --out "$tmp/e1"
expect "--start-loss must be > 0" escape --start-loss 0 --out "$tmp/e2"
expect "--start-loss must be > 0" escape --start-loss nan --out "$tmp/e3"
expect "--memorize-lr must be a finite number > 0, got nan" escape --memorize-lr nan --out "$tmp/e4"
expect "--clean-lr must be a finite number > 0, got -1" escape --clean-lr -1 --out "$tmp/e5"
expect "--methods: unknown method 'bogus'" escape --methods bogus --out "$tmp/e4"
# bfloat16 convolutions only where they can run: float32, on the CPU with oneDNN or CUDA with
# cuDNN, on a device this machine has (no machine here has a 100th GPU)
expect "--bf16-convolutions needs --dtype f32, got f64" train "${blobs[@]}" --bf16-convolutions --dtype f64
expect "--bf16-convolutions --device cuda:99: " train "${blobs[@]}" --bf16-convolutions --device cuda:99
out=$(FLATMIN_CONV=native timeout 20 "$flatmin" train "${blobs[@]}" --bf16-convolutions 2>&1 < /dev/null); rc=$?
if [ $rc -eq 0 ] || ! grep -qF -- "--bf16-convolutions --device cpu: they run on oneDNN" <<< "$out"; then
  echo "FAIL (exit $rc): FLATMIN_CONV=native flatmin train --bf16-convolutions"; echo "  got: $(head -n 3 <<< "$out")"; failed=1
fi
# a channel layout only where there are channels
expect "--channels-last: only --model resnet18 has a channel layout" train "${blobs[@]}" --channels-last
rm -rf "$tmp/escape-full" "$tmp/escape-file"
[ -z "$(ls -A "$tmp")" ] || { echo "FAIL: files left behind: $(ls -A "$tmp")"; failed=1; }
# 3. a stop on a non-finite loss: exit 3 and null for what was not measured
out=$("$flatmin" train "${blobs[@]/1/5}" --lr 1e30 2> /dev/null); rc=$?
if [ $rc -ne 3 ] || ! grep -q '"train_accuracy":null' <<< "$out"; then echo "FAIL: non-finite stop: exit $rc, $out"; failed=1; fi
# --bf16-convolutions reaches the training steps: a short ResNet run ends at other weights
# than float32 (bfloat16 operands), where Fashion-MNIST is installed and the build and CPU can
# run it (else it must be refused before the first step, naming why)
bf16_run=(train --model resnet18 --width 4 --train-subset 16 --test-subset 8 --batch-size 8 --steps 2 --lr 0.1)
if "$flatmin" "${bf16_run[@]}" --save-model "$tmp/f32.safetensors" > /dev/null 2>&1; then
  if "$flatmin" "${bf16_run[@]}" --bf16-convolutions --save-model "$tmp/bf16.safetensors" > /dev/null 2> "$tmp/bf16.err"; then
    if cmp -s "$tmp/f32.safetensors" "$tmp/bf16.safetensors"; then
      echo "FAIL: --bf16-convolutions trained to the same weights as float32"; failed=1
    fi
  elif grep -qE -- "--bf16-convolutions --device cpu: .*(no oneDNN|no fast bfloat16)" "$tmp/bf16.err"; then
    echo "bf16 training check skipped: $(cat "$tmp/bf16.err")"
  else
    echo "FAIL: --bf16-convolutions run: $(cat "$tmp/bf16.err")"; failed=1
  fi
  "$flatmin" "${bf16_run[@]}" --channels-last > /dev/null 2> "$tmp/cl.err" ||
    { echo "FAIL: a --channels-last ResNet run: $(cat "$tmp/cl.err")"; failed=1; }
else
  echo "bf16 training check skipped (no Fashion-MNIST?)"
fi
rm -f "$tmp/f32.safetensors" "$tmp/bf16.safetensors" "$tmp/bf16.err" "$tmp/cl.err"
[ $failed -eq 0 ] && echo "bad_input: OK"
exit $failed
