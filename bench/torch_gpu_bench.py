#!/usr/bin/env python3
"""PyTorch's numbers for bench/gpu_bench.cpp's workloads on the same GPU: 4096^3 GEMM,
a 3x3 convolution, a ResNet-18 (CIFAR stem) training step and one Hessian-vector product.
Strict float32 (TF32 off for cuBLAS and cuDNN), as flatmin computes. Prints RESULT lines
in flatmin_gpu_bench's format. Usage: torch_gpu_bench.py [--batch 128] [--width 64] [--steps 10]"""
import argparse
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # the caller (scripts/gpu_check.sh) reports the absence
    print(f"torch_gpu_bench: PyTorch not importable: {e}")
    sys.exit(2)


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


def seconds_per_call(fn, calls, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_gpu_bench: torch.cuda.is_available() is False")
        sys.exit(2)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}; cudnn.benchmark={torch.backends.cudnn.benchmark}")
    torch.manual_seed(0)

    n = 4096
    A, B = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    s = seconds_per_call(lambda: A @ B, 10, 2)
    print(f"RESULT bench=gemm n={n} dtype=float32 ms={s*1e3:.3f} tflops={2*n**3/s/1e12:.2f}")

    x = torch.randn(a.batch, a.width, 32, 32, device=dev)
    w = torch.randn(a.width, a.width, 3, 3, device=dev)
    with torch.no_grad():
        s = seconds_per_call(lambda: F.conv2d(x, w, padding=1), 10, 2)
    flops = 2.0 * a.batch * a.width * a.width * 9 * 32 * 32
    print(f"RESULT bench=conv3x3 shape={a.batch}x{a.width}x32x32 dtype=float32 ms={s*1e3:.3f} tflops={flops/s/1e12:.2f}")

    net = ResNet18(a.width).to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    xb = torch.randn(a.batch, 3, 32, 32, device=dev)
    yb = torch.arange(a.batch, device=dev) % 10

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(xb), yb).backward()
        opt.step()

    s = seconds_per_call(step, a.steps, 2)
    with torch.no_grad():
        loss = F.cross_entropy(net(xb), yb).item()
    print(f"RESULT bench=resnet18_train_step batch={a.batch} width={a.width} dtype=float32 ms={s*1e3:.2f} "
          f"images_per_s={a.batch/s:.1f} loss={loss:.4f}")

    params = [p for p in net.parameters()]
    v = [torch.randn_like(p) for p in params]

    def hvp():
        g = torch.autograd.grad(F.cross_entropy(net(xb), yb), params, create_graph=True)
        return torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)

    s = seconds_per_call(hvp, max(1, a.steps // 2), 1)
    print(f"RESULT bench=resnet18_hvp batch={a.batch} width={a.width} dtype=float32 ms={s*1e3:.2f} "
          f"images_per_s={a.batch/s:.1f}")


if __name__ == "__main__":
    main()
