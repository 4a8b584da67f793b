#!/usr/bin/env python3
"""PyTorch's numbers for bench/gpu_bench.cpp's workloads on the same GPU: a GEMM (4096^3), a 3x3
convolution, a ResNet-18 (CIFAR stem) training step and one Hessian-vector product, under several
settings, from flatmin's strict float32 to PyTorch 2.x at its best. Prints RESULT lines in
flatmin_gpu_bench's format, each ending in setting=NAME (and precision=... where the arithmetic is
not float32), each flushed at once.

Settings (--settings, a comma list; all by default, in this order):
  fp32            strict float32 as flatmin computes: TF32 off for cuBLAS and cuDNN,
                  cudnn.benchmark False, NCHW (the numbers this script printed before)
  fp32_benchmark  float32, TF32 off, cudnn.benchmark True (cuDNN times its algorithms, keeps the best)
  channels_last   as fp32_benchmark, model, input and conv operands in torch.channels_last (NHWC)
  compile         as channels_last, the training step (zero_grad, forward, loss, backward,
                  SGD step) wrapped in torch.compile (default mode); compile_s= is the wall time of
                  the warm-up calls, where compilation happens. The HVP is tried through
                  torch.compile(model) (double backward, usually unsupported: then a '#' line
                  says so). GEMM and conv are not measured (single library calls).
  tf32            PyTorch's default for convolutions: TF32 on for cuDNN and cuBLAS, benchmark
                  True, channels_last. precision=tf32: NOT float32 arithmetic (10-bit mantissa
                  products, float32 accumulation)
  bf16            torch.autocast(bfloat16) around forward+loss (float32 weights, master copy and
                  optimizer), TF32 off, benchmark True, channels_last; GEMM and conv on bfloat16
                  operands. precision=bf16: NOT float32 arithmetic
Every setting resets the torch.backends flags and builds a fresh model from the same seed. Timing:
3 warm-up calls (cuDNN autotuning and compilation happen there), then --repeats runs of --steps
calls between synchronizations; ms= is the median per call, ms_min=/ms_max= the extremes. A setting
is skipped once --budget-s seconds have passed, and one that raises prints '# NAME failed: ...'.

Usage: torch_gpu_bench.py [--batch 128] [--width 64] [--steps 10] [--repeats 3] [--budget-s 240]
         [--settings fp32,fp32_benchmark,channels_last,compile,tf32,bf16] [--device cuda] [--gemm-n 4096]
CPU smoke test: torch_gpu_bench.py --device cpu --batch 4 --width 8 --steps 1 --repeats 2 --gemm-n 256"""
import argparse
import contextlib
import statistics
import sys
import time
import traceback

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # the caller (scripts/gpu_check.sh) reports the absence
    print(f"torch_gpu_bench: PyTorch not importable: {e}")
    sys.exit(2)

# name: (TF32 on, cudnn.benchmark, channels_last, torch.compile, autocast bfloat16)
SETTINGS = {
    "fp32": (False, False, False, False, False),
    "fp32_benchmark": (False, True, False, False, False),
    "channels_last": (False, True, True, False, False),
    "compile": (False, True, True, True, False),
    "tf32": (True, True, True, False, False),
    "bf16": (False, True, True, False, True),
}
WARMUP = 3


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
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):  # torchvision's resnet18 with the CIFAR stem (3x3 conv, no max-pool)
    def __init__(self, width=64, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, w in enumerate([width, 2 * width, 4 * width, 8 * width]):
            layers += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def set_flags(tf32, benchmark):
    # The legacy flags only: PyTorch 2.9+ raises when the legacy and the new fp32_precision API are mixed.
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = benchmark


def timed(fn, a, sync):
    """Warm up, then a.repeats runs of a.steps calls: (median, min, max) ms per call, warm-up s."""
    t0 = time.perf_counter()
    for _ in range(WARMUP):
        fn()
    sync()
    warm_s = time.perf_counter() - t0
    ms = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        for _ in range(a.steps):
            fn()
        sync()
        ms.append((time.perf_counter() - t) / a.steps * 1e3)
    return statistics.median(ms), min(ms), max(ms), warm_s


def run_setting(name, a, dev, sync):
    tf32, benchmark, cl, compiled, bf16 = SETTINGS[name]
    set_flags(tf32, benchmark)
    print(f"# setting {name}: tf32={tf32} cudnn.benchmark={benchmark} channels_last={cl} "
          f"compile={compiled} autocast_bf16={bf16}", flush=True)
    tag = f" setting={name}" + (" precision=tf32" if tf32 else " precision=bf16" if bf16 else "")
    mf = torch.channels_last if cl else torch.contiguous_format
    amp = (lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    dt, dname = (torch.bfloat16, "bfloat16") if bf16 else (torch.float32, "float32")

    if not compiled:
        torch.manual_seed(0)
        n = a.gemm_n
        A, B = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
        ms, lo, hi, _ = timed(lambda: A @ B, a, sync)
        print(f"RESULT bench=gemm n={n} dtype={dname} ms={ms:.3f} tflops={2*n**3/ms/1e9:.2f} "
              f"ms_min={lo:.3f} ms_max={hi:.3f}{tag}", flush=True)
        del A, B
        x = torch.randn(a.batch, a.width, 32, 32, device=dev, dtype=dt).contiguous(memory_format=mf)
        w = torch.randn(a.width, a.width, 3, 3, device=dev, dtype=dt).contiguous(memory_format=mf)
        with torch.no_grad():
            ms, lo, hi, _ = timed(lambda: F.conv2d(x, w, padding=1), a, sync)
        flops = 2.0 * a.batch * a.width * a.width * 9 * 32 * 32
        print(f"RESULT bench=conv3x3 shape={a.batch}x{a.width}x32x32 dtype={dname} ms={ms:.3f} "
              f"tflops={flops/ms/1e9:.2f} ms_min={lo:.3f} ms_max={hi:.3f}{tag}", flush=True)
        del x, w

    torch.manual_seed(0)
    net = ResNet18(a.width).to(dev).to(memory_format=mf).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    xb = torch.randn(a.batch, 3, 32, 32, device=dev).contiguous(memory_format=mf)
    yb = torch.arange(a.batch, device=dev) % 10

    def loss_of(model):
        with amp():
            return F.cross_entropy(model(xb), yb)

    def step(model=net):
        opt.zero_grad(set_to_none=True)
        loss_of(model).backward()
        opt.step()

    extra = ""
    if compiled:
        if not hasattr(torch, "compile"):
            raise RuntimeError(f"torch.compile does not exist in torch {torch.__version__}")
        try:
            ms, lo, hi, warm_s = timed(torch.compile(step), a, sync)
            extra = f" compile_s={warm_s:.1f} compiled=step"
        except Exception as e:  # whole-step capture failed: compile the model only, step eager
            print(f"# compile: torch.compile(step) failed ({type(e).__name__}: {first_line(e)}); "
                  f"falling back to torch.compile(model)", flush=True)
            cnet = torch.compile(net)
            ms, lo, hi, warm_s = timed(lambda: step(cnet), a, sync)
            extra = f" compile_s={warm_s:.1f} compiled=model"
    else:
        ms, lo, hi, _ = timed(step, a, sync)
    with torch.no_grad():
        loss = loss_of(net).item()
    print(f"RESULT bench=resnet18_train_step batch={a.batch} width={a.width} dtype=float32 ms={ms:.2f} "
          f"images_per_s={a.batch/ms*1e3:.1f} loss={loss:.4f} ms_min={lo:.2f} ms_max={hi:.2f}{extra}{tag}",
          flush=True)

    params = list(net.parameters())
    v = [torch.randn_like(p) for p in params]
    model = torch.compile(net) if compiled else net

    def hvp():
        g = torch.autograd.grad(loss_of(model), params, create_graph=True)
        return torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)

    extra = ""
    if compiled:
        try:
            ms, lo, hi, warm_s = timed(hvp, a, sync)
            extra = f" compile_s={warm_s:.1f} compiled=model"
        except Exception as e:
            print(f"# compile: hvp not measured (double backward through torch.compile): "
                  f"{type(e).__name__}: {first_line(e)}", flush=True)
            return
    else:
        ms, lo, hi, _ = timed(hvp, a, sync)
    print(f"RESULT bench=resnet18_hvp batch={a.batch} width={a.width} dtype=float32 ms={ms:.2f} "
          f"images_per_s={a.batch/ms*1e3:.1f} ms_min={lo:.2f} ms_max={hi:.2f}{extra}{tag}", flush=True)


def first_line(e):
    s = str(e).strip()
    return (s.splitlines()[0] if s else "")[:300]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=240)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--gemm-n", type=int, default=4096)
    a = ap.parse_args()
    t0 = time.perf_counter()
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; known: {','.join(SETTINGS)}")
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print("torch_gpu_bench: torch.cuda.is_available() is False")
            sys.exit(2)
        name, sync = torch.cuda.get_device_name(dev), torch.cuda.synchronize
    else:
        name, sync = a.device, (lambda: None)
    print(f"torch {torch.__version__} on {name}; settings={','.join(settings)}", flush=True)
    for s in settings:
        if time.perf_counter() - t0 > a.budget_s:
            print(f"# skipped {s}: budget spent", flush=True)
            continue
        try:
            run_setting(s, a, dev, sync)
        except Exception as e:
            print(f"# {s} failed: {type(e).__name__}: {first_line(e)}", flush=True)
            traceback.print_exc()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print(f"# total {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
