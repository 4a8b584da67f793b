#!/usr/bin/python3
"""Writes nn_ops_reference.json: small inputs and PyTorch's outputs for flatmin's network ops
(tests/autodiff/test_nn_ops.cpp compares against them). Run with Debian's python3 and
torch 1.13:  /usr/bin/python3 tests/reference/make_nn_ops_reference.py
All numbers are float64, written with repr (exact round trip)."""
import json
import os

import torch
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
cases = []


def t(x):
    x = x.detach()
    return {"shape": list(x.shape), "data": [float(v) if x.is_floating_point() else int(v) for v in x.flatten().tolist()]}


def add(op, params, inputs, outputs):
    cases.append({"op": op, "params": params, "inputs": {k: t(v) for k, v in inputs.items()},
                  "outputs": {k: t(v) for k, v in outputs.items()}})


# conv2d with bias: forward and the three gradients for a fixed upstream gradient gy
for (n, c, h, w, o, k, stride, pad) in [(2, 3, 7, 6, 4, 3, 2, 1), (1, 2, 5, 5, 3, 3, 1, 0), (2, 4, 6, 6, 2, 1, 2, 0),
                                         (3, 2, 4, 5, 3, 3, 1, 1)]:
    x = torch.randn(n, c, h, w, requires_grad=True)
    wt = torch.randn(o, c, k, k, requires_grad=True)
    b = torch.randn(o, requires_grad=True)
    y = F.conv2d(x, wt, b, stride=stride, padding=pad)
    gy = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, wt, b), gy)
    add("conv2d", {"stride": stride, "padding": pad}, {"x": x, "w": wt, "b": b, "gy": gy},
        {"y": y, "gx": gx, "gw": gw, "gb": gb})

for (k, stride, pad, shape) in [(2, 2, 0, (2, 3, 6, 5)), (3, 2, 1, (1, 2, 7, 6)), (3, 1, 1, (1, 1, 4, 4))]:
    x = torch.randn(*shape)
    y, idx = F.max_pool2d(x, k, stride, pad, return_indices=True)
    add("max_pool2d", {"kernel": k, "stride": stride, "padding": pad}, {"x": x}, {"y": y, "indices": idx})
    y = F.avg_pool2d(x, k, stride, pad, count_include_pad=True)
    add("avg_pool2d", {"kernel": k, "stride": stride, "padding": pad}, {"x": x}, {"y": y})

for (shape, oh, ow) in [((2, 3, 5, 7), 3, 2), ((1, 2, 4, 4), 2, 2), ((1, 2, 6, 5), 4, 3), ((2, 2, 3, 3), 1, 1)]:
    x = torch.randn(*shape)
    add("adaptive_avg_pool2d", {"out_h": oh, "out_w": ow}, {"x": x}, {"y": F.adaptive_avg_pool2d(x, (oh, ow))})

for shape in [(4, 3, 3, 2), (5, 3)]:
    x = torch.randn(*shape) * 2 + 0.5
    c = shape[1]
    wt, b = torch.randn(c), torch.randn(c)
    rm, rv = torch.randn(c), torch.rand(c) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    y = F.batch_norm(x, rm, rv, wt, b, training=True, momentum=0.1, eps=1e-5)
    add("batch_norm_train", {}, {"x": x, "w": wt, "b": b, "running_mean": rm0, "running_var": rv0},
        {"y": y, "running_mean": rm, "running_var": rv})
    y = F.batch_norm(x, rm0, rv0, wt, b, training=False, eps=1e-5)
    add("batch_norm_eval", {}, {"x": x, "w": wt, "b": b, "running_mean": rm0, "running_var": rv0}, {"y": y})

x = torch.randn(2, 6, 3, 2)
wt, b = torch.randn(6), torch.randn(6)
add("group_norm", {"groups": 3}, {"x": x, "w": wt, "b": b}, {"y": F.group_norm(x, 3, wt, b, eps=1e-5)})

logits = torch.randn(5, 4) * 3
target = torch.tensor([0, 3, 1, 3, 2])
for red in ["mean", "sum", "none"]:
    add("cross_entropy", {"reduction": red}, {"logits": logits, "target": target},
        {"y": F.cross_entropy(logits, target, reduction=red)})
pred, tgt = torch.randn(3, 4), torch.randn(3, 4)
for red in ["mean", "sum", "none"]:
    add("mse_loss", {"reduction": red}, {"pred": pred, "target": tgt}, {"y": F.mse_loss(pred, tgt, reduction=red)})

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nn_ops_reference.json")
with open(out + ".tmp", "w") as f:
    json.dump({"generator": "tests/reference/make_nn_ops_reference.py", "torch": torch.__version__, "cases": cases}, f)
    f.flush()
    os.fsync(f.fileno())
os.replace(out + ".tmp", out)
print(f"wrote {len(cases)} cases to {out}")
