#!/usr/bin/python3
"""Draw Example 1 trajectories over the contours of f(x1, x2) = (x1 x2 - 1)^2.

Usage (Debian's python with python3-matplotlib):
  flatmin example1 --method rs --log-every 20 --out rs.jsonl
  flatmin example1 --method sa --log-every 20 --out sa.jsonl
  /usr/bin/python3 tools/plot_example1.py rs.jsonl sa.jsonl -o example1.png
Each input is the --out file of `flatmin example1` (JSON lines with x1, x2, phase); the
legend uses the file name. The hyperbola x1 x2 = 1 (the minima) is drawn in black, the
flat minimum (1, 1) as a star.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="metrics JSON-lines files from flatmin example1 --out")
    ap.add_argument("-o", "--output", default="example1.png")
    args = ap.parse_args()
    x1, x2 = np.meshgrid(np.linspace(0.05, 4.5, 400), np.linspace(0.05, 2.0, 400))
    f = (x1 * x2 - 1) ** 2
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.contour(x1, x2, np.log10(f + 1e-6), levels=20, cmap="Greys", linewidths=0.5)
    h = np.linspace(0.5, 4.5, 200)
    ax.plot(h, 1 / h, "k-", lw=1.2, label="minima x1 x2 = 1")
    for path in args.runs:
        rows = [json.loads(line) for line in open(path) if line.strip()]
        main_rows = [r for r in rows if r.get("phase") != "refine"]
        xs = [r["x1"] for r in main_rows]
        ys = [r["x2"] for r in main_rows]
        ax.plot(xs, ys, ".-", ms=2, lw=0.8, label=os.path.basename(path))
    ax.plot([1], [1], "*", ms=14, color="gold", mec="k", label="flat minimum (1, 1)")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_xlim(0, 4.5)
    ax.set_ylim(0, 2.0)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Example 1: (x1 x2 - 1)^2 from the sharp minimum (4, 1/4)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
