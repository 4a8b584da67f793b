#!/usr/bin/python3
"""Markdown tables from a bench/compare.sh output folder (meta.json, load.jsonl and the
roundR-ENGINE.json files of flatmin_bench --json and torch_reference.py --json):

  /usr/bin/python3 bench/compare_table.py OUT_DIR

(a) machine, date, versions, settings and command; (b) one table per round and (c) the
median table: per workload a column per engine, the best PyTorch 2.x float32 setting and
flatmin's ratio to it; (d) peak RSS per group; (e) torch.compile's compile times; (f) the
load average before and after each run.
"""
import glob
import json
import os
import re
import statistics
import sys

ENGINES = ["flatmin", "flatmin_channels_last", "flatmin_bf16", "flatmin_bf16_channels_last", "torch2_eager", "torch2_channels_last", "torch2_compile", "torch2_compile_channels_last",
           "torch2_bf16", "torch113_eager"]
LABEL = {"flatmin": "flatmin", "flatmin_channels_last": "flatmin CL", "flatmin_bf16": "flatmin bf16",
         "flatmin_bf16_channels_last": "flatmin bf16 + CL", "torch2_eager": "eager", "torch2_channels_last": "channels_last",
         "torch2_compile": "compile", "torch2_compile_channels_last": "compile + CL", "torch2_bf16": "bf16 + CL",
         "torch113_eager": "1.13 eager"}
# PyTorch 2.x's float32 settings; the best of them per round is flatmin's target
FLOAT32 = ["torch2_eager", "torch2_channels_last", "torch2_compile", "torch2_compile_channels_last"]
# flatmin's own settings: its side of a ratio is the better of them per round (NCHW or channels-last)
FLATMIN_FLOAT32 = ["flatmin", "flatmin_channels_last"]
FLATMIN_BF16 = ["flatmin_bf16", "flatmin_bf16_channels_last"]


def settings_for(key, settings):
    """The layout setting changes only the ResNet workloads: elsewhere its run is the same
    program again, and the better of two runs of one program would flatter flatmin."""
    return settings if key.startswith(("resnet18_", "escape_")) else settings[:1]
COMPILE_SUFFIX = "_compile_s"


def load_rounds(folder):
    """{round: {engine: result}}; a file that is not JSON becomes an error entry."""
    rounds = {}
    for path in glob.glob(os.path.join(folder, "round*-*.json")):
        m = re.match(r"round(\d+)-(\w+)\.json$", os.path.basename(path))
        if not m or m.group(2) not in ENGINES:
            continue
        try:
            res = json.load(open(path))
        except ValueError as e:
            res = {"groups": {}, "metrics": {}, "error": "unreadable JSON: %s" % e}
        rounds.setdefault(int(m.group(1)), {})[m.group(2)] = res
    return rounds


def fmt(v):
    return "-" if v is None else "%.4g" % v


def faster(a, b, higher):
    return a > b if higher else a < b


def ratio(flatmin, ref, higher):
    """> 1: flatmin faster (throughputs divide directly, times and cost ratios invert)."""
    if flatmin is None or ref is None or flatmin == 0 or ref == 0:
        return None
    return flatmin / ref if higher else ref / flatmin


def fmt_ratio(v):
    return "-" if v is None else "%.2f" % v


def median_or_none(vs):
    vs = [v for v in vs if v is not None]
    return statistics.median(vs) if vs else None


class Table:
    def __init__(self, rounds, engines):
        self.rounds, self.engines = rounds, engines
        self.info = {}  # key -> (unit, higher_is_better), in flatmin's order, then PyTorch-only keys
        for e in engines:
            for r in sorted(rounds):
                for key, m in rounds[r].get(e, {}).get("metrics", {}).items():
                    if not key.endswith(COMPILE_SUFFIX):
                        self.info.setdefault(key, (m["unit"], m["higher_is_better"]))

    def value(self, r, engine, key):
        m = self.rounds[r].get(engine, {}).get("metrics", {}).get(key)
        return m["median"] if m else None

    def skip(self, r, engine, key):
        res = self.rounds[r].get(engine, {})
        sk = res.get("skipped", {})
        if key in sk:
            return sk[key]
        for g, why in sk.items():  # a whole group skipped: the same group on flatmin's side
            if self.group_of(key) == g:
                return why
        return None

    def group_of(self, key):
        for r in self.rounds.values():
            for res in r.values():
                m = res.get("metrics", {}).get(key)
                if m:
                    return m.get("group")
        return None

    def best(self, r, key, settings=FLOAT32):
        """(value, engine) of the best of `settings` (PyTorch 2.x's float32 ones) in round r."""
        higher = self.info[key][1]
        cands = [(self.value(r, e, key), e) for e in settings if e in self.engines]
        cands = [c for c in cands if c[0] is not None]
        if not cands:
            return None, None
        b = cands[0]
        for c in cands[1:]:
            if faster(c[0], b[0], higher):
                b = c
        return b

    def row(self, key, rs, notes):
        """Cells of one workload over rounds rs (one round: its values; several: medians)."""
        unit, higher = self.info[key]
        cells = [key, unit]
        for e in self.engines:
            v = median_or_none([self.value(r, e, key) for r in rs])
            if v is None:
                why = next((self.skip(r, e, key) for r in rs if self.skip(r, e, key)), None)
                if why:
                    if why not in notes:
                        notes.append(why)
                    cells.append("skipped [%d]" % (notes.index(why) + 1))
                    continue
            cells.append(fmt(v))
        bests = [self.best(r, key) for r in rs]
        best_v = median_or_none([b[0] for b in bests])
        winners = [LABEL[b[1]] for b in bests if b[1]]
        which = ", ".join("%s x%d" % (w, winners.count(w)) for w in dict.fromkeys(winners)) if len(rs) > 1 \
            else (winners[0] if winners else "")
        cells.append("%s (%s)" % (fmt(best_v), which) if best_v is not None else "-")
        if any(e in self.engines for e in FLATMIN_FLOAT32):
            cells.append(fmt_ratio(median_or_none([ratio(self.best(r, key, settings_for(key, FLATMIN_FLOAT32))[0], b[0],
                                                         higher)
                                                   for r, b in zip(rs, bests)])))
        if "torch2_bf16" in self.engines:
            for mine in (FLATMIN_FLOAT32, FLATMIN_BF16):
                if any(e in self.engines for e in mine):
                    cells.append(fmt_ratio(median_or_none([ratio(self.best(r, key, settings_for(key, mine))[0],
                                                                 self.value(r, "torch2_bf16", key), higher)
                                                           for r in rs])))
        return cells

    def print(self, rs, title):
        notes = []
        head = ["workload", "unit"] + [LABEL[e] for e in self.engines] + ["best PyTorch 2.x float32 (which)"]
        if any(e in self.engines for e in FLATMIN_FLOAT32):
            head.append("flatmin vs best float32")
        if "torch2_bf16" in self.engines:
            head += ["%s vs bf16" % name for name, mine in (("flatmin", FLATMIN_FLOAT32), ("flatmin bf16", FLATMIN_BF16))
                     if any(e in self.engines for e in mine)]
        print("### " + title)
        print()
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for key in self.info:
            print("| " + " | ".join(self.row(key, rs, notes)) + " |")
        print()
        for i, n in enumerate(notes):
            print("[%d] %s  " % (i + 1, n))
        if notes:
            print()


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: compare_table.py OUT_DIR (a bench/compare.sh output folder)")
    folder = sys.argv[1]
    meta = json.load(open(os.path.join(folder, "meta.json")))
    rounds = load_rounds(folder)
    if not rounds:
        sys.exit("compare_table.py: no roundR-ENGINE.json in %s" % folder)
    engines = [e for e in ENGINES if any(e in rounds[r] for r in rounds)]
    loads = [json.loads(l) for l in open(os.path.join(folder, "load.jsonl")) if l.strip()]

    # (a) what ran where
    print("## flatmin vs PyTorch on the CPU (bench/compare.sh)")
    print()
    print("- Machine: %s. Started %s." % (meta["machine"], meta["start"]))
    print("- Command: `%s`" % meta["command"])
    print("- %d threads on every side, %d timed repetitions after one warm-up (a round's value is their median), "
          "%d round(s) in alternating order %s; %s." % (meta["threads"], meta["reps"], meta["rounds"],
                                                        " ".join(LABEL[e] for e in engines),
                                                        "process CPU time" if meta["cpu_time"] else "wall time"))
    seen = set()
    for e in engines:
        res = next((rounds[r][e] for r in sorted(rounds) if e in rounds[r]), {})
        v = res.get("torch_version")
        if v and (v, tuple(res.get("config", []))) not in seen:
            seen.add((v, tuple(res.get("config", []))))
            print("- PyTorch %s (%s): %s" % (v, res.get("python", "?"), "; ".join(res.get("config", []))))
    print("- Columns: eager, channels_last, compile (`torch.compile`, default inductor), compile + CL "
          "(both), bf16 + CL (`torch.autocast(\"cpu\", dtype=torch.bfloat16)` + channels_last) are PyTorch 2.x; "
          "1.13 eager is Debian's python3-torch with OpenBLAS; flatmin bf16 is `flatmin_bench --bf16` (bfloat16 "
          "convolutions, float32 everything else); CL on flatmin's side is `--channels-last` (NHWC activations in "
          "the ResNets). In the ratio columns flatmin's value on the ResNet workloads is, per round, the better of its NCHW and CL "
          "runs (elsewhere the layout changes nothing, and the plain run counts). Best PyTorch 2.x float32 is, per round, the "
          "fastest of eager, channels_last, compile and compile + CL (compile time excluded; which one won in "
          "parentheses).")
    print("- **Ratio convention: flatmin vs X = X's time / flatmin's time (throughputs: flatmin / X); > 1 means "
          "flatmin is faster.** For the `x fwd+bwd` rows (cost relative to the engine's own forward+backward) "
          "lower is better and the ratio is X's / flatmin's.")
    print("- Medians: each cell of the median table is the median over rounds of each round's median; its "
          "ratios are the median of the per-round ratios.")
    print()

    # (b) per round, (c) medians
    t = Table(rounds, engines)
    if len(rounds) > 1:
        for r in sorted(rounds):
            t.print([r], "Round %d" % r)
    t.print(sorted(rounds), "Median over %d round(s)" % len(rounds))

    # (d) peak RSS
    groups = []
    for e in engines:
        for r in sorted(rounds):
            for g in rounds[r].get(e, {}).get("groups", {}):
                if g not in groups:
                    groups.append(g)
    print("### Peak RSS per group, MiB (median over rounds; at the group's start in parentheses)")
    print()
    print("| group | " + " | ".join(LABEL[e] for e in engines) + " |")
    print("|" + "---|" * (len(engines) + 1))
    errors = []
    for g in groups:
        cells = []
        for e in engines:
            gs = [rounds[r][e]["groups"][g] for r in sorted(rounds) if g in rounds[r].get(e, {}).get("groups", {})]
            errors += ["round %d, %s, %s: %s" % (r, LABEL[e], g, rounds[r][e]["groups"][g]["error"])
                       for r in sorted(rounds)
                       if g in rounds[r].get(e, {}).get("groups", {}) and rounds[r][e]["groups"][g].get("error")]
            ok = [x for x in gs if not x.get("error")]
            cells.append("%.0f (%.0f)" % (statistics.median(x["peak_rss_mib"] for x in ok),
                                          statistics.median(x["base_rss_mib"] for x in ok)) if ok else "-")
        print("| %s | %s |" % (g, " | ".join(cells)))
    print()
    for r in sorted(rounds):
        for e, res in rounds[r].items():
            if res.get("error"):
                errors.append("round %d, %s: %s" % (r, LABEL[e], res["error"]))
    if errors:
        print("Failed groups: " + "; ".join(errors))
        print()

    # (e) compile times
    ckeys = []
    for r in sorted(rounds):
        for e in engines:
            for k in rounds[r].get(e, {}).get("metrics", {}):
                if k.endswith(COMPILE_SUFFIX) and k not in ckeys:
                    ckeys.append(k)
    if ckeys:
        cengines = [e for e in engines if "compile" in e]
        first, later = min(rounds), sorted(rounds)[1:]
        print("### torch.compile: the first call (compilation + one run), s")
        print()
        print("Round %d compiles with an empty inductor cache of the engine's and group's own (a first run); "
              "later rounds reuse it (a rerun)." % first)
        print()
        head = []
        for e in cengines:
            head += ["%s, round %d" % (LABEL[e], first)] + (["%s, later rounds (median)" % LABEL[e]] if later else [])
        print("| workload | " + " | ".join(head) + " |")
        print("|" + "---|" * (len(head) + 1))
        for k in ckeys:
            cells = []
            for e in cengines:
                cells.append(fmt(t.value(first, e, k)))
                if later:
                    cells.append(fmt(median_or_none([t.value(r, e, k) for r in later])))
            print("| %s | %s |" % (k[:-len(COMPILE_SUFFIX)], " | ".join(cells)))
        print()

    # (f) load
    print("### Load average (1 minute) before and after each run")
    print()
    print("| round | engine | start (UTC) | seconds | load before | load after | exit status |")
    print("|---|---|---|---|---|---|---|")
    for l in loads:
        print("| %d | %s | %s | %.0f | %.2f | %.2f | %d |" % (l["round"], LABEL.get(l["engine"], l["engine"]), l["start"],
                                                           l["seconds"], l["load_before"], l["load_after"], l["rc"]))


if __name__ == "__main__":
    main()
