#!/usr/bin/python3
"""PyTorch's peer of bench/conv_bench.cpp: the same 20 ResNet-18 (CIFAR) convolutions,
forward / input gradient / weight gradient, float32 (--bf16: bfloat16), median wall and CPU time.
  LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp /usr/bin/python3 bench/conv_bench_torch.py --batch 128 --threads 2 --reps 3
  ~/.cache/flatmin/torch2/bin/python bench/conv_bench_torch.py --bf16 --channels-last   (PyTorch 2.x, bench/compare.sh's venv)
Run it right after conv_bench on the same machine: on a shared machine only numbers taken
under the same load compare."""
import argparse
import time

import torch
import torch.nn.functional as F

LAYERS = [("stem", 1, 3, 64, 32, 3, 1), ("l1 3x3", 4, 64, 64, 32, 3, 1), ("l2 3x3 s2", 1, 64, 128, 32, 3, 2),
          ("l2 3x3", 3, 128, 128, 16, 3, 1), ("l2 down 1x1 s2", 1, 64, 128, 32, 1, 2),
          ("l3 3x3 s2", 1, 128, 256, 16, 3, 2), ("l3 3x3", 3, 256, 256, 8, 3, 1),
          ("l3 down 1x1 s2", 1, 128, 256, 16, 1, 2), ("l4 3x3 s2", 1, 256, 512, 8, 3, 2),
          ("l4 3x3", 3, 512, 512, 4, 3, 1), ("l4 down 1x1 s2", 1, 256, 512, 8, 1, 2)]


def median(reps, f):
    f()
    runs = []
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        f()
        runs.append((time.perf_counter() - w0, time.process_time() - c0))
    runs.sort()
    return runs[len(runs) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--input", type=int, default=32, help="28: the 1x28x28 variant (1-channel stem)")
    ap.add_argument("--width", type=int, default=64, help="stage widths W..8W (flatmin escape: --input 28 --width 8)")
    ap.add_argument("--channels-last", action="store_true", help="activations and weights in channels_last memory format")
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 operands and result, as bf16 autocast hands them to conv2d (conv_bench's --bf16 1 peer)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    print(f"PyTorch {torch.__version__} ResNet-18 (CIFAR) convolutions, batch {a.batch}, input {a.input}, width {a.width}, {'bfloat16' if a.bf16 else 'float32'}, {a.threads} threads"
          + (", channels_last" if a.channels_last else ""))
    print(f"{'layer':16s} count |   fwd ms    GF/s |   gin ms    GF/s |    gw ms    GF/s")
    total, cpu, flops_total = [0.0, 0.0, 0.0], 0.0, 0.0
    with torch.no_grad():
        for name, count, c, o, h, k, s in LAYERS:
            if a.input != 32:  # conv_bench.cpp's rule: a 1-channel stem, each stride-2 stage halves the plane
                c = 1 if c == 3 else c
                full, h2 = 32, a.input
                while full > h:
                    h2, full = (h2 + 1) // 2, full // 2
                h = h2
            c = c if c in (1, 3) else c * a.width // 64
            o = o * a.width // 64
            p = k // 2
            dtype = torch.bfloat16 if a.bf16 else torch.float32
            x, w = torch.randn(a.batch, c, h, h, dtype=dtype), torch.randn(o, c, k, k, dtype=dtype)
            if a.channels_last:
                x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
            y = F.conv2d(x, w, stride=s, padding=p)
            gy = torch.randn_like(y)  # keeps y's memory format
            flops = 2.0 * y.numel() * c * k * k
            # the kernels autograd runs for conv2d's backward, one gradient at a time
            def backward(mask):
                return torch.ops.aten.convolution_backward(gy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)
            t = [median(a.reps, lambda: F.conv2d(x, w, stride=s, padding=p)),
                 median(a.reps, lambda: backward([True, False, False])),
                 median(a.reps, lambda: backward([False, True, False]))]
            print(f"{name:16s} {count:5d} | " + " | ".join(f"{r[0] * 1e3:8.2f} {flops / r[0] * 1e-9:7.1f}" for r in t))
            for i in range(3):
                total[i] += count * t[i][0]
                cpu += count * t[i][1]
            flops_total += count * flops
    allt = sum(total)
    print(f"total (20 convs): forward {total[0]:.3f} s, input grad {total[1]:.3f} s, weight grad {total[2]:.3f} s, "
          f"all {allt:.3f} s ({3 * flops_total / allt * 1e-9:.1f} GFLOP/s)")
    print(f"CPU time of the same runs: {cpu:.3f} s ({3 * flops_total / cpu * 1e-9:.1f} GFLOP/s per CPU-second)")


if __name__ == "__main__":
    main()
