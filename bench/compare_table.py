#!/usr/bin/python3
"""Markdown table from flatmin_bench --json and torch_reference.py --json outputs."""
import datetime
import json
import os
import subprocess
import sys


def machine():
    model, cores = "?", os.cpu_count()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = os.getloadavg()[0]
    return "%s, %s cores, load average %.1f at the end" % (model, cores, load)


def main():
    fm, pt = (json.load(open(p)) for p in sys.argv[1:3])
    print("Machine: %s. Date: %s. %s threads on both sides, %s, %s timed repetitions after a warm-up, %s; "
          "medians [min-max]." % (machine(), datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
                                  fm["threads"], pt["engine"], fm["reps"],
                                  "process CPU time" if fm.get("cpu_time") else "wall time"))
    print()
    print("| workload | unit | flatmin | PyTorch | flatmin time / PyTorch time |")
    print("|---|---|---|---|---|")
    for key, f in fm["metrics"].items():
        p = pt["metrics"].get(key)
        cell = lambda m: "%.4g [%.4g-%.4g]" % (m["median"], m["min"], m["max"])
        if p is None:
            print("| %s | %s | %s | - | - |" % (key, f["unit"], cell(f)))
            continue
        # throughputs invert; times and cost ratios compare directly
        r = p["median"] / f["median"] if f["higher_is_better"] else f["median"] / p["median"]
        print("| %s | %s | %s | %s | %.2f |" % (key, f["unit"], cell(f), cell(p), r))
    print()
    print("| group | flatmin peak RSS MiB (at start) | PyTorch peak RSS MiB (at start) |")
    print("|---|---|---|")
    for name, g in fm["groups"].items():
        p = pt["groups"].get(name, {})
        err = " (failed: %s)" % g["error"] if g["error"] else ""
        print("| %s | %.0f (%.0f)%s | %s |" % (name, g["peak_rss_mib"], g["base_rss_mib"], err,
                                            "%.0f (%.0f)" % (p["peak_rss_mib"], p["base_rss_mib"]) if p else "-"))


if __name__ == "__main__":
    main()
