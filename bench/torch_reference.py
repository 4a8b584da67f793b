#!/usr/bin/python3
"""PyTorch side of the flatmin benchmark: the workloads of bench/bench.cpp with the same
shapes, dtypes, metric keys and JSON layout. Run with Debian's python3-torch and OpenBLAS:

  LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp /usr/bin/python3 bench/torch_reference.py --json

Each workload group runs in a forked child, so its peak RSS (VmHWM) is its own.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# --cpu-time: process CPU time instead of wall time (see flatmin_bench --cpu-time)
clock = time.perf_counter


def time_reps(reps, f):
    f()  # warm-up
    out = []
    for _ in range(reps):
        t0 = clock()
        f()
        out.append(clock() - t0)
    return out


def metric(key, unit, higher, samples):
    return {"key": key, "unit": unit, "higher_is_better": higher, "samples": samples}


# ---- 1. GEMM ----
def gemm(reps):
    torch.manual_seed(0)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.no_grad():
        s = time_reps(reps, lambda: torch.mm(a, b))
    return [metric("gemm_2048_f32", "GFLOP/s", True, [2.0 * n ** 3 / 1e9 / t for t in s])]


# ---- 2. a chain of 1,000 small elementwise ops ----
CHAIN_OPS, CHAINS_PER_REP = 1000, 20


def chain(x, a, b):
    y = x
    for i in range(CHAIN_OPS):
        k = i % 4
        if k == 0:
            y = y * a
        elif k == 1:
            y = torch.tanh(y)
        elif k == 2:
            y = y + b
        else:
            y = y * 0.5
    return y


def small_ops(reps):
    torch.manual_seed(0)
    x = torch.randn(10, requires_grad=True)
    a, b = torch.rand(10) + 0.5, torch.randn(10)
    us_per_op = 1e6 / (CHAIN_OPS * CHAINS_PER_REP)

    def fwd():
        for _ in range(CHAINS_PER_REP):
            chain(x, a, b)

    def fwd_bwd():
        for _ in range(CHAINS_PER_REP):
            chain(x, a, b).sum().backward()
            x.grad = None

    return [metric("chain_forward_f32", "us/op", False, [t * us_per_op for t in time_reps(reps, fwd)]),
            metric("chain_fwd_bwd_f32", "us/op", False, [t * us_per_op for t in time_reps(reps, fwd_bwd)])]


# ---- 3. MLP 784-256-10, batch 64, one SGD step ----
def mlp(reps):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    params = list(net.parameters())

    def step():
        F.cross_entropy(net(x), y).backward()
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-0.01)
                p.grad = None

    steps = 20
    s = time_reps(reps, lambda: [step() for _ in range(steps)])
    return [metric("mlp_step_f32", "us/step", False, [t * 1e6 / steps for t in s])]


# ---- 6. derivatives of f(x) = sum(tanh(A x)), A 50x50, float64 ----
def tanh_orders(reps):
    torch.manual_seed(0)
    A = torch.randn(50, 50, dtype=torch.float64) / math.sqrt(50)
    x0, u, v = (torch.randn(50, dtype=torch.float64) for _ in range(3))
    f = lambda z: torch.tanh(A @ z).sum()
    grad = torch.autograd.grad

    def g():
        x = x0.detach().requires_grad_()
        return grad(f(x), x)[0]

    def h():
        x = x0.detach().requires_grad_()
        gx = grad(f(x), x, create_graph=True)[0]
        return grad((gx * v).sum(), x)[0]

    def t():
        x = x0.detach().requires_grad_()
        gx = grad(f(x), x, create_graph=True)[0]
        hv = grad((gx * u).sum(), x, create_graph=True)[0]
        return grad((hv * v).sum(), x)[0]

    inner = 200

    def timed(op):
        t0 = clock()
        for _ in range(inner):
            op()
        return (clock() - t0) / inner

    g(), h(), t()
    tg, rh, rt = [], [], []
    for _ in range(reps):
        sg, sh, st = timed(g), timed(h), timed(t)
        tg.append(sg * 1e6)
        rh.append(sh / sg)
        rt.append(st / sg)
    return [metric("tanh50_grad_f64", "us", False, tg), metric("tanh50_hvp_ratio_f64", "x gradient", False, rh),
            metric("tanh50_third_ratio_f64", "x gradient", False, rt)]


# ---- ResNet-18, torchvision's structure with the CIFAR stem (3x3 conv, no max-pool) ----
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idn = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idn)


class ResNet18(nn.Module):
    def __init__(self, in_channels=3, classes=10, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, w in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(8 * width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_setup(batch, channels=3, size=32):
    torch.manual_seed(0)
    net = ResNet18(channels).train()
    x, y = torch.randn(batch, channels, size, size), torch.randint(0, 10, (batch,))
    return net, list(net.parameters()), x, y


def sgd_step(net, params, x, y):
    F.cross_entropy(net(x), y).backward()
    with torch.no_grad():
        for p in params:
            p.add_(p.grad, alpha=-0.01)
            p.grad = None


def resnet_step(key, batch, channels=3, size=32):
    def run(reps):
        net, params, x, y = resnet_setup(batch, channels, size)
        s = time_reps(reps, lambda: sgd_step(net, params, x, y))
        return [metric(key, "img/s", True, [batch / t for t in s])]
    return run


def resnet_eval_b128(reps):
    net, _, x, _ = resnet_setup(128)
    net.eval()
    with torch.no_grad():
        s = time_reps(reps, lambda: net(x))
    return [metric("resnet18_eval_b128", "img/s", True, [128 / t for t in s])]


def resnet_second_order_b32(reps):
    """One forward+backward, and as ratios to it: the gradient with create_graph, one HVP
    (reverse over reverse), one Hutchinson sample v^T H v with Rademacher v."""
    net, params, x, y = resnet_setup(32)
    grad = torch.autograd.grad
    v = [torch.randint(0, 2, p.shape).float() * 2 - 1 for p in params]

    def fwd_bwd():
        grad(F.cross_entropy(net(x), y), params)

    def grad_cg():
        grad(F.cross_entropy(net(x), y), params, create_graph=True)

    def hvp():
        g = grad(F.cross_entropy(net(x), y), params, create_graph=True)
        return grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)

    def hutchinson():
        w = [torch.randint(0, 2, p.shape).float() * 2 - 1 for p in params]
        g = grad(F.cross_entropy(net(x), y), params, create_graph=True)
        hw = grad(sum((gi * wi).sum() for gi, wi in zip(g, w)), params)
        return sum((hi * wi).sum() for hi, wi in zip(hw, w)).item()

    for f in (fwd_bwd, grad_cg, hvp, hutchinson):
        f()
    base, rc, rh, rt = [], [], [], []
    for _ in range(reps):
        t0 = clock(); fwd_bwd(); tb = clock() - t0
        t0 = clock(); grad_cg(); tc = clock() - t0
        t0 = clock(); hvp(); th = clock() - t0
        t0 = clock(); hutchinson(); tt = clock() - t0
        base.append(tb)
        rc.append(tc / tb)
        rh.append(th / tb)
        rt.append(tt / tb)
    return [metric("resnet18_fwd_bwd_b32", "s", False, base),
            metric("resnet18_grad_create_graph_ratio_b32", "x fwd+bwd", False, rc),
            metric("resnet18_hvp_ratio_b32", "x fwd+bwd", False, rh),
            metric("resnet18_hutchinson_ratio_b32", "x fwd+bwd", False, rt)]


GROUPS = {
    "gemm": gemm,
    "small_ops": small_ops,
    "mlp": mlp,
    "tanh_orders": tanh_orders,
    "resnet_step_b32": resnet_step("resnet18_step_b32", 32),
    "resnet_step_b128": resnet_step("resnet18_step_b128", 128),
    "resnet_eval_b128": resnet_eval_b128,
    "resnet_second_order_b32": resnet_second_order_b32,
    "resnet_1x28_step_b128": resnet_step("resnet18_1x28_step_b128", 128, 1, 28),
}


def status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def run_in_child(name, fn, threads, reps):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            torch.set_num_threads(threads)
            base = status_mib("VmRSS")
            ms = fn(reps)
            out = {"metrics": ms, "base_rss_mib": base, "peak_rss_mib": status_mib("VmHWM"), "error": ""}
        except Exception as e:  # reported, the other groups still run
            out = {"metrics": [], "base_rss_mib": 0, "peak_rss_mib": 0, "error": repr(e)}
        with os.fdopen(w, "w") as f:
            json.dump(out, f)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    try:
        return json.loads(text)
    except ValueError:
        return {"metrics": [], "base_rss_mib": 0, "peak_rss_mib": 0, "error": "child process died"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated group names")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args()
    if args.cpu_time:
        global clock
        clock = time.process_time
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in GROUPS]
    if unknown:
        sys.exit("torch_reference.py: unknown group(s) %s; groups: %s" % (unknown, ", ".join(GROUPS)))
    groups, metrics = {}, {}
    for name, fn in GROUPS.items():
        if only and name not in only:
            continue
        res = run_in_child(name, fn, args.threads, args.reps)
        groups[name] = {"base_rss_mib": res["base_rss_mib"], "peak_rss_mib": res["peak_rss_mib"], "error": res["error"]}
        for m in res["metrics"]:
            s = m["samples"]
            metrics[m["key"]] = {"group": name, "unit": m["unit"], "higher_is_better": m["higher_is_better"],
                                 "min": min(s), "median": statistics.median(s), "max": max(s), "samples": len(s)}
            if not args.json:
                print("  %-36s %12.4g %-12s (min %.4g, max %.4g)" % (m["key"], statistics.median(s), m["unit"],
                                                                     min(s), max(s)), flush=True)
        if not args.json:
            print("  %-36s %12.1f MiB (at start %.1f) %s" % ("peak RSS of " + name, res["peak_rss_mib"],
                                                              res["base_rss_mib"], res["error"]), flush=True)
    if args.json:
        print(json.dumps({"engine": "pytorch " + torch.__version__, "threads": args.threads, "reps": args.reps,
                          "cpu_time": args.cpu_time,
                          "groups": groups, "metrics": metrics}, indent=2))


if __name__ == "__main__":
    main()
