#!/usr/bin/python3
"""Compares a `flatmin probe` output file with the PyTorch reference of the same config.
Usage: /usr/bin/python3 tests/reference/compare_probe.py OUT.safetensors tests/reference/resnet18/<cfg>.expected.safetensors
Prints the relative difference of the loss and the worst per-tensor ‖a − b‖/‖b‖ of grad/ and hvp/."""
import json
import struct
import sys

import numpy as np

DT = {"F64": np.float64, "F32": np.float32, "I64": np.int64}


def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    header.pop("__metadata__", None)
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype=DT[v["dtype"]])
            .reshape(v["shape"]).astype(np.float64) for k, v in header.items()}


out, ref = load(sys.argv[1]), load(sys.argv[2])
print("loss: flatmin %.17g  pytorch %.17g  relative %.3g" % (out["loss"], ref["loss"],
      abs(out["loss"] - ref["loss"]) / abs(ref["loss"])))
for kind in ("grad/", "hvp/"):
    keys = [k for k in ref if k.startswith(kind)]
    worst = max(np.linalg.norm(out[k] - ref[k]) / np.linalg.norm(ref[k]) for k in keys)
    print("%-5s %d tensors, worst relative difference %.3g" % (kind, len(keys), worst))
