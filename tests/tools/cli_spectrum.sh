#!/usr/bin/env bash
# `flatmin hessian` end to end on a small MLP trained on two blobs: bad input refused with
# one line before any work, then the JSON, density curve, PNG and eigenvectors written, and
# the Lanczos λmax beside `flatmin trace`'s power iteration and Hutchinson trace. Then
# `flatmin table1` and `flatmin certify`: refusals, a small run, exit statuses, the Hessian
# cut refused on a cross-entropy classifier and found on a squared-error one.
set -euo pipefail
flatmin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# refused: exit status 1 and exactly one line on stderr that contains the phrase
refused() {
  local phrase=$1; shift
  local rc=0
  "$flatmin" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" -ne 0 ] || fail "accepted: $*"
  [ "$(wc -l <"$tmp/err")" -eq 1 ] || { cat "$tmp/err"; fail "not one line: $*"; }
  grep -qF -- "$phrase" "$tmp/err" || { cat "$tmp/err"; fail "no '$phrase' in the error of: $*"; }
}
model=(--model mlp --hidden 8 --dataset blobs)
refused "--top-k must be in [1, 1000], got 0" hessian nothing.safetensors "${model[@]}" --top-k 0 --out "$tmp"
refused "--top-k must be in [1, 1000], got -3" hessian nothing.safetensors "${model[@]}" --top-k -3 --out "$tmp"
refused "need at least as many Lanczos --iterations" hessian nothing.safetensors "${model[@]}" --top-k 6 --iterations 5 --out "$tmp"
refused "is not an existing folder" hessian nothing.safetensors "${model[@]}" --top-k 2 --out "$tmp/missing"
refused "nothing to compute" hessian nothing.safetensors "${model[@]}" --out "$tmp"
refused "does not exist" hessian "$tmp/nothing.safetensors" "${model[@]}" --top-k 2 --out "$tmp"
if [ "$(id -u)" -ne 0 ]; then
  mkdir "$tmp/ro" && chmod 555 "$tmp/ro"
  refused "is not writable" hessian nothing.safetensors "${model[@]}" --top-k 2 --out "$tmp/ro"
fi

# table1 and certify (Table 1 as an experiment): bad input refused before any run
refused "--eps: every ε must be a positive finite number" table1 --eps 0.1,0 --out "$tmp/t1"
refused "--eps: every ε must be a positive finite number" table1 --eps=-0.1 --out "$tmp/t1"
refused "--L must be a positive finite number" table1 --L=-2 --out "$tmp/t1"
refused "--cap must be in [1, 100000000], got 0" table1 --cap 0 --out "$tmp/t1"
refused "--delta must be in (0, 1]" table1 --delta 2 --out "$tmp/t1"
refused "--eps must be a positive finite number" certify --eps 0
[ ! -e "$tmp/t1" ] || fail "table1 wrote before refusing"
# a small table1: JSON of every run, fits, the two PNGs
"$flatmin" table1 --problems example1 --eps 0.3,0.2,0.15 --seeds 2 --out "$tmp/t1" >/dev/null 2>&1
for f in table1.json table1_runs.jsonl queries_vs_eps_rs.png queries_vs_eps_sa.png; do [ -s "$tmp/t1/$f" ] || fail "no table1 $f"; done
/usr/bin/python3 - "$tmp/t1/table1.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
assert len(t["runs"]) == 12 and all(r["queries"] > 0 for r in t["runs"]), t["runs"]
for r in t["runs"]:
    if not r["censored"]:  # the certificate held at the end of every uncensored run
        assert r["grad_norm"] <= r["eps"] and r["projected_trace_grad_norm"] <= r["eps"] ** 0.5, r
assert {f["method"] for f in t["fits"]} == {"rs", "sa"}
PY
"$flatmin" certify --eps 0.01 --point 1 1 >/dev/null || fail "(1, 1) is flat"
rc=0; "$flatmin" certify --eps 0.01 --point 2 0.5 >/dev/null || rc=$?
[ "$rc" -eq 4 ] || fail "(2, 0.5) is not flat: exit status 4 expected, got $rc"

"$flatmin" train "${model[@]}" --lr 0.5 --steps 60 --batch-size 64 --save-model "$tmp/m.safetensors" >/dev/null 2>&1
# d = 2·8 + 8 + 8·2 + 2 = 42 parameters
# a cross-entropy classifier has no exact minima manifold: the Hessian cut is refused, no number printed
refused "cannot be determined" certify "$tmp/m.safetensors" "${model[@]}" --eps 0.1 --top-k 20
# a squared-error classifier at an interpolating minimum has one: H = (2/n)JᵀJ of rank n·K =
# 8·2 = 16 (8 examples, 2 classes) among the 82 parameters of a 2-16-2 MLP, so the cut is
# found there and the certificate prints its numbers (exit status 0 or 4, not 1)
mse=(--model mlp --hidden 16 --dataset blobs --loss mse --dtype f64)
"$flatmin" train "${mse[@]}" --train-subset 8 --lr 0.2 --steps 4000 --batch-size 8 --save-model "$tmp/mse.safetensors" >/dev/null 2>&1
rc=0; "$flatmin" certify "$tmp/mse.safetensors" --model mlp --hidden 16 --dataset blobs --loss mse --subset 8 --eps 0.01 --top-k 24 \
  >"$tmp/mse.json" || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 4 ] || fail "the squared-error network's certificate was refused (exit $rc)"
/usr/bin/python3 - "$tmp/mse.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
assert c["d"] == 82 and c["cut"]["rank"] == 16 and c["cut"]["gap"] > 1e3 and c["gradient_ok"], c
PY
# the matrix factorisation: its closed-form flat minimum certifies (0), its start does not (4)
"$flatmin" certify --problem mf --eps 0.001 --at flat >/dev/null || fail "the balanced factorisation is flat"
rc=0; "$flatmin" certify --problem mf --eps 0.01 --at start >/dev/null || rc=$?
[ "$rc" -eq 4 ] || fail "the unbalanced start is not flat: exit status 4 expected, got $rc"
refused "exceeds the 42 parameters" hessian "$tmp/m.safetensors" "${model[@]}" --top-k 43 --out "$tmp"
mkdir "$tmp/h"
"$flatmin" hessian "$tmp/m.safetensors" "${model[@]}" --dtype f64 --top-k 3 --density --bins 2000 --by-layer \
  --out "$tmp/h" >/dev/null 2>"$tmp/progress"
for f in hessian.json density.jsonl density.png eigenvectors.safetensors; do [ -s "$tmp/h/$f" ] || fail "no $f"; done
"$flatmin" trace "$tmp/m.safetensors" "${model[@]}" --dtype f64 --lambda-max --power-iters 1000 --samples 2000 --tol 0 >"$tmp/trace.json"
/usr/bin/python3 - "$tmp/h/hessian.json" "$tmp/trace.json" "$tmp/h/density.jsonl" <<'PY'
import json, math, sys
h, t = json.load(open(sys.argv[1])), json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
rows = [json.loads(l) for l in open(sys.argv[3])]
ev = h["top_k"]["eigenvalues"]
assert h["dim"] == 42 and len(ev) == 3 and ev[0] >= ev[1] >= ev[2], ev
# Lanczos λ1 vs power iteration (tolerance 1e-3 on the Rayleigh quotient's change)
assert abs(ev[0] - t["lambda_max"]) <= 1e-2 * abs(ev[0]), (ev[0], t["lambda_max"])
# density: 2000 grid points, unit mass; the SLQ estimate d·Σ w θ of the trace vs Hutchinson
assert len(rows) == 2000
step = rows[1]["eigenvalue"] - rows[0]["eigenvalue"]
assert abs(sum(r["density"] for r in rows) * step - 1) < 1e-9
d = h["density"]
slq = h["dim"] * sum(w * x for w, x in zip(d["weights"][0], d["nodes"][0]))
# one SLQ run with m = d is one Hutchinson sample z^T H z: within 4 single-sample deviations
assert abs(slq - t["trace"]) <= 4 * t["stderr"] * math.sqrt(t["samples"]), (slq, t["trace"], t["stderr"])
# layers: "layers.0", "layers.1"-like groups covering all 42 parameters
assert sum(l["dim"] for l in h["by_layer"]) == 42, h["by_layer"]
for l in h["by_layer"]:
    assert l["top_eigenvalue"] <= ev[0] * (1 + 1e-9)  # a diagonal block's λmax never exceeds H's
print("ok", ev, t["lambda_max"], slq, t["trace"])
PY
