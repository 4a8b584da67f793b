#!/usr/bin/env python3
"""Markdown table of a `flatmin escape --metrics` file: the start point and every escape
method at each evaluation (train/test accuracy, train loss, tr̄, and tr̄ relative to start).
Usage: python3 docs/escape_table.py docs/escape_metrics.jsonl"""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
start = next(r for r in rows if r["phase"] == "start")
setup = {"random-labels", "clean-labels", "start"}
print("| method | step | train acc | test acc | train loss | tr̄ | tr̄ / tr̄(start) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in [start] + [r for r in rows if r["phase"] not in setup]:
    print(f"| {r['phase']} | {r['step']} | {r['train_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['train_loss']:.4f} "
          f"| {r['trace_normalized']:.6f} | {r['trace_normalized'] / start['trace_normalized']:.3f} |")
