#!/usr/bin/python3
"""PyTorch side of the flatmin benchmark: the workloads of bench/bench.cpp and bench/resnet.cpp
with the same shapes, dtypes, metric keys and JSON layout, in one of PyTorch's CPU settings:

  --mode eager                  float32, NCHW (works with Debian's torch 1.13)
  --mode channels_last          float32, model and input in channels-last (NHWC) memory format
  --mode compile                float32, torch.compile(model) (default inductor backend)
  --mode compile_channels_last  both of the above
  --mode bf16                   torch.autocast("cpu", dtype=torch.bfloat16) + channels_last

A mode is a setup step applied to the ResNet-18 workloads' model and input (class Mode); the
other groups (GEMM, small ops, MLP, tanh) run in eager mode only and are listed as skipped in
the other modes. With torch.compile the first call (compilation + one run) is reported as its
own metric KEY_compile_s and is not one of the timed repetitions. A measurement that fails in a
mode (e.g. double backward through a compiled model) gives no number: its key is listed under
"skipped" in the JSON with the error. Run by bench/compare.sh; by hand, e.g.

  LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp /usr/bin/python3 bench/torch_reference.py --json
  ~/.cache/flatmin/torch2/bin/python bench/torch_reference.py --mode compile --only resnet_eval_b32

Each workload group runs in a forked child, so its peak RSS (VmHWM) is its own.
"""
import argparse
import contextlib
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
    """One warm-up call, then `reps` timed calls: (seconds of the warm-up call, [seconds])."""
    t0 = clock()
    f()
    first = clock() - t0
    out = []
    for _ in range(reps):
        t0 = clock()
        f()
        out.append(clock() - t0)
    return first, out


def metric(key, unit, higher, samples):
    return {"key": key, "unit": unit, "higher_is_better": higher, "samples": samples}


class Skipped(Exception):
    """A measurement this mode cannot run; the group reports its other metrics."""


def skip_reason(e):
    lines = [s for s in str(e).strip().splitlines() if s.strip()]
    return "%s: %s" % (type(e).__name__, lines[0] if lines else "")


# ---- 1. GEMM ----
def gemm(reps, skipped):
    torch.manual_seed(0)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.no_grad():
        s = time_reps(reps, lambda: torch.mm(a, b))[1]
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


def small_ops(reps, skipped):
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

    return [metric("chain_forward_f32", "us/op", False, [t * us_per_op for t in time_reps(reps, fwd)[1]]),
            metric("chain_fwd_bwd_f32", "us/op", False, [t * us_per_op for t in time_reps(reps, fwd_bwd)[1]])]


# ---- 3. MLP 784-256-10, batch 64, one SGD step ----
def mlp(reps, skipped):
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
    s = time_reps(reps, lambda: [step() for _ in range(steps)])[1]
    return [metric("mlp_step_f32", "us/step", False, [t * 1e6 / steps for t in s])]


# ---- 6. derivatives of f(x) = sum(tanh(A x)), A 50x50, float64 ----
def tanh_orders(reps, skipped):
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
def default_groups(c):  # nn::default_groups: the largest divisor of c up to 32
    for g in range(min(32, c), 1, -1):
        if c % g == 0:
            return g
    return 1


def make_norm(norm, c):
    return nn.BatchNorm2d(c) if norm == "batch" else nn.GroupNorm(default_groups(c), c)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idn = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idn)


class ResNet18(nn.Module):
    def __init__(self, in_channels=3, classes=10, width=64, norm="batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        layers, cin = [], width
        for i, w in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, w, stride, norm), BasicBlock(w, w, 1, norm)))
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


class Mode:
    """One of PyTorch's CPU settings, applied to a ResNet workload's model and input."""
    NAMES = ("eager", "channels_last", "compile", "compile_channels_last", "bf16")

    def __init__(self, name):
        self.name = name
        self.channels_last = name in ("channels_last", "compile_channels_last", "bf16")
        self.compiles = name in ("compile", "compile_channels_last")
        self.bf16 = name == "bf16"

    def missing(self):
        """Why this torch cannot run the mode ('' when it can)."""
        if self.compiles and not hasattr(torch, "compile"):
            return "torch %s has no torch.compile (PyTorch 2.0 and later)" % torch.__version__
        if self.bf16 and not hasattr(torch, "autocast"):
            return "torch %s has no torch.autocast" % torch.__version__
        return ""

    def model(self, net):
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return torch.compile(net) if self.compiles else net

    def input(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        # bf16: the forward (and the loss) under autocast; the backward follows its dtypes
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


MODE = Mode("eager")


def resnet_setup(batch, channels=3, size=32, width=64, norm="batch", train=True):
    torch.manual_seed(0)
    net = ResNet18(channels, width=width, norm=norm).train(train)
    x, y = torch.randn(batch, channels, size, size), torch.randint(0, 10, (batch,))
    net = MODE.model(net)
    return net, list(net.parameters()), MODE.input(x), y


def loss_of(net, x, y):
    with MODE.autocast():
        return F.cross_entropy(net(x), y)


def sgd_step(net, params, x, y):
    loss_of(net, x, y).backward()
    with torch.no_grad():
        for p in params:
            p.add_(p.grad, alpha=-0.01)
            p.grad = None


def rademacher(params):
    return [torch.randint(0, 2, p.shape).float() * 2 - 1 for p in params]


def hvp_once(net, params, x, y, v):
    """One HVP, reverse over reverse."""
    g = torch.autograd.grad(loss_of(net, x, y), params, create_graph=True)
    return torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)


def timed_metrics(reps, key, unit, higher, f, convert):
    """Metric `key` from `reps` timed calls of f (seconds -> unit by convert), and with
    torch.compile the first call (compilation + one run) as KEY_compile_s."""
    first, s = time_reps(reps, f)
    ms = [metric(key, unit, higher, [convert(t) for t in s])]
    if MODE.compiles:
        ms.append(metric(key + "_compile_s", "s", False, [first]))
    return ms


def unless_fails(skipped, keys, measure):
    """measure()'s metrics; in a mode other than eager a failure gives none, and each key
    is listed as skipped with the error (eager failing is a real error)."""
    try:
        return measure()
    except Exception as e:
        if MODE.name == "eager":
            raise
        for k in keys:
            skipped[k] = skip_reason(e)
        return []


def resnet_step(key, batch, channels=3, size=32):
    def run(reps, skipped):
        net, params, x, y = resnet_setup(batch, channels, size)
        return unless_fails(skipped, [key], lambda: timed_metrics(reps, key, "img/s", True,
                                                          lambda: sgd_step(net, params, x, y), lambda t: batch / t))
    return run


def resnet_eval(key, batch):
    def run(reps, skipped):
        net, _, x, _ = resnet_setup(batch, train=False)

        def forward():
            with torch.no_grad(), MODE.autocast():
                net(x)
        return unless_fails(skipped, [key], lambda: timed_metrics(reps, key, "img/s", True, forward, lambda t: batch / t))
    return run


def resnet_second_order_b32(reps, skipped):
    """One forward+backward, the gradient with create_graph, one HVP and one Hutchinson
    sample v^T H v with a fresh Rademacher v, back to back in each repetition: in seconds,
    and as ratios to the forward+backward of the same repetition."""
    net, params, x, y = resnet_setup(32)
    grad = torch.autograd.grad
    v = rademacher(params)

    def hutchinson():
        w = rademacher(params)
        hw = hvp_once(net, params, x, y, w)
        return sum((hi * wi).sum() for hi, wi in zip(hw, w)).item()

    # name: (function, its key in seconds or None, its ratio key or None)
    work = {"fwd_bwd": (lambda: grad(loss_of(net, x, y), params), "resnet18_fwd_bwd_b32", None),
            "grad_cg": (lambda: grad(loss_of(net, x, y), params, create_graph=True), None,
                        "resnet18_grad_create_graph_ratio_b32"),
            "hvp": (lambda: hvp_once(net, params, x, y, v), "resnet18_hvp_b32", "resnet18_hvp_ratio_b32"),
            "hutchinson": (hutchinson, "resnet18_hutchinson_b32", "resnet18_hutchinson_ratio_b32")}
    first, ms = {}, []
    for name, (f, key, ratio) in work.items():  # warm-up; a mode that cannot run one skips it
        t0 = clock()
        if unless_fails(skipped, [k for k in (key, ratio) if k], lambda: [f()]):
            first[name] = clock() - t0
    secs = {name: [] for name in first}
    for _ in range(reps):
        for name in first:
            t0 = clock()
            work[name][0]()
            secs[name].append(clock() - t0)
    for name, (f, key, ratio) in work.items():
        if name not in first:
            continue
        if key:
            ms.append(metric(key, "s", False, secs[name]))
            if MODE.compiles:
                ms.append(metric(key + "_compile_s", "s", False, [first[name]]))
        if ratio and "fwd_bwd" not in first:
            skipped.setdefault(ratio, "needs resnet18_fwd_bwd_b32")
        elif ratio:
            ms.append(metric(ratio, "x fwd+bwd", False, [t / b for t, b in zip(secs[name], secs["fwd_bwd"])]))
    return ms


def escape_shape(prefix, norm):
    """`flatmin escape`'s default model and batch (tools/cmd_escape.cpp Settings): ResNet-18
    width 8 on 1x28x28, batch 64: an SGD step and one HVP."""
    def run(reps, skipped):
        net, params, x, y = resnet_setup(64, 1, 28, width=8, norm=norm)
        ms = unless_fails(skipped, [prefix + "_step_b64"],
                          lambda: timed_metrics(reps, prefix + "_step_b64", "img/s", True, lambda: sgd_step(net, params, x, y),
                                        lambda t: 64 / t))
        v = rademacher(params)
        return ms + unless_fails(skipped, [prefix + "_hvp_b64"],
                                 lambda: timed_metrics(reps, prefix + "_hvp_b64", "s", False,
                                               lambda: hvp_once(net, params, x, y, v), lambda t: t))
    return run


# name: (function(reps, skipped) -> metrics, whether the mode applies to it)
GROUPS = {
    "gemm": (gemm, False),
    "small_ops": (small_ops, False),
    "mlp": (mlp, False),
    "tanh_orders": (tanh_orders, False),
    "resnet_step_b32": (resnet_step("resnet18_step_b32", 32), True),
    "resnet_step_b128": (resnet_step("resnet18_step_b128", 128), True),
    "resnet_eval_b128": (resnet_eval("resnet18_eval_b128", 128), True),
    "resnet_eval_b32": (resnet_eval("resnet18_eval_b32", 32), True),
    "resnet_second_order_b32": (resnet_second_order_b32, True),
    "resnet_1x28_step_b128": (resnet_step("resnet18_1x28_step_b128", 128, 1, 28), True),
    "escape_shape": (escape_shape("escape_w8_gn", "group"), True),
    "escape_shape_bn": (escape_shape("escape_w8_bn", "batch"), True),
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
        skipped = {}
        if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):  # a cache per group: a group's first compile is cold
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], name)
        try:
            torch.set_num_threads(threads)
            base = status_mib("VmRSS")
            ms = fn(reps, skipped)
            out = {"metrics": ms, "base_rss_mib": base, "peak_rss_mib": status_mib("VmHWM"), "error": ""}
        except Exception as e:  # reported, the other groups still run
            out = {"metrics": [], "base_rss_mib": 0, "peak_rss_mib": 0, "error": repr(e)}
        out["skipped"] = skipped
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
        return {"metrics": [], "base_rss_mib": 0, "peak_rss_mib": 0, "error": "child process died", "skipped": {}}


def torch_config():
    """The lines of torch's build configuration that say which CPU kernels it uses."""
    out = []
    for line in torch.__config__.show().splitlines():
        line = line.strip(" -")
        if line.startswith("Build settings:"):
            out += [s.strip() for s in line.split(":", 1)[1].split(",")
                    if s.strip().split("=")[0] in ("BLAS_INFO", "LAPACK_INFO", "USE_MKLDNN", "USE_OPENMP")]
        elif any(k in line for k in ("Math Kernel Library", "MKL-DNN", "oneDNN", "OpenMP", "CPU capability")):
            out.append(line)
    if hasattr(torch.backends, "cpu") and hasattr(torch.backends.cpu, "get_cpu_capability"):
        out.append("runtime CPU capability: " + torch.backends.cpu.get_cpu_capability())
    if os.environ.get("LD_LIBRARY_PATH"):
        out.append("LD_LIBRARY_PATH=" + os.environ["LD_LIBRARY_PATH"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--mode", default="eager", choices=Mode.NAMES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated group names")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args()
    if args.threads < 1 or args.reps < 1:
        print("torch_reference.py: --threads and --reps need a positive integer", file=sys.stderr)
        sys.exit(2)
    global clock, MODE
    if args.cpu_time:
        clock = time.process_time
    MODE = Mode(args.mode)
    if MODE.missing():
        print("torch_reference.py: --mode %s: %s" % (args.mode, MODE.missing()), file=sys.stderr)
        sys.exit(2)
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in GROUPS]
    if unknown:
        print("torch_reference.py: unknown group(s) %s; groups: %s" % (unknown, ", ".join(GROUPS)), file=sys.stderr)
        sys.exit(2)
    groups, metrics, skipped = {}, {}, {}
    for name, (fn, moded) in GROUPS.items():
        if only and name not in only:
            continue
        if MODE.name != "eager" and not moded:
            skipped[name] = "the mode is a ResNet-18 setting; this group runs in eager mode only"
            continue
        res = run_in_child(name, fn, args.threads, args.reps)
        groups[name] = {"base_rss_mib": res["base_rss_mib"], "peak_rss_mib": res["peak_rss_mib"], "error": res["error"]}
        skipped.update(res["skipped"])
        for m in res["metrics"]:
            s = m["samples"]
            metrics[m["key"]] = {"group": name, "unit": m["unit"], "higher_is_better": m["higher_is_better"],
                                 "min": min(s), "median": statistics.median(s), "max": max(s), "samples": len(s),
                                 "values": s}
            if not args.json:
                print("  %-36s %12.4g %-12s (min %.4g, max %.4g)" % (m["key"], statistics.median(s), m["unit"],
                                                                     min(s), max(s)), flush=True)
        if not args.json:
            print("  %-36s %12.1f MiB (at start %.1f) %s" % ("peak RSS of " + name, res["peak_rss_mib"],
                                                              res["base_rss_mib"], res["error"]), flush=True)
    if not args.json:
        for k, why in skipped.items():
            print("  %-36s skipped: %s" % (k, why))
    else:
        print(json.dumps({"engine": "pytorch %s %s" % (torch.__version__, MODE.name), "torch_version": torch.__version__,
                          "mode": MODE.name, "python": sys.executable, "config": torch_config(),
                          "threads": args.threads, "reps": args.reps, "cpu_time": args.cpu_time,
                          "groups": groups, "metrics": metrics, "skipped": skipped}, indent=2))
    return 1 if any(g["error"] for g in groups.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
