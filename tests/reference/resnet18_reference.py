#!/usr/bin/python3
"""Reference values for flatmin's ResNet-18 from PyTorch (Debian's python3-torch 1.13).

torchvision is not packaged in Debian, so the model is written out here with torchvision's
exact module names (torchvision/models/resnet.py: conv1, bn1, relu, maxpool, layer1..4 of
BasicBlock(conv1, bn1, relu, conv2, bn2, downsample), avgpool, fc), plus the two stems and
the norm choices flatmin offers. For each configuration it writes, under resnet18/:
  <cfg>.weights.safetensors   the state dict (float64, with random BN running statistics)
  <cfg>.batch.safetensors     input (N,C,H,W) float64, target (N) int64
  <cfg>.v.safetensors         a direction, one tensor per parameter
  <cfg>.expected.safetensors  loss, grad/<name>, hvp/<name> (mean cross-entropy in <mode>)
and names_<stem>_<norm>.txt: the state-dict keys of the width-64 model.
Run: /usr/bin/python3 tests/reference/resnet18_reference.py   (from the repository root)
"""
import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet18")


def default_groups(c):
    for g in range(min(32, c), 1, -1):
        if c % g == 0:
            return g
    return 1


def make_norm(kind, c):
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(default_groups(c), c)
    return nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, inp, out, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, 0, bias=False), make_norm(norm, out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, in_channels, classes, stem, width, norm):
        super().__init__()
        self.stem = stem
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = make_norm(norm, width)
        self.relu = nn.ReLU()
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        inp = width
        for s in range(4):
            out = width << s
            setattr(self, f"layer{s + 1}",
                    nn.Sequential(BasicBlock(inp, out, 1 if s == 0 else 2, norm), BasicBlock(out, out, 1, norm)))
            inp = out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = self.maxpool(x)
        for s in range(4):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64"}


def save_safetensors(path, tensors):
    """The safetensors layout written by hand (the safetensors package is not in Debian)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def make_reference(stem, norm, mode, seed):
    torch.manual_seed(seed)
    # Inputs big enough that layer4 still sees 2x2 pixels: with width 2 the group norm is an
    # instance norm (one channel per group), which at 1x1 would cut every gradient to zero.
    in_channels, hw, n = (3, 16, 4) if stem == "cifar" else (1, 48, 3)
    classes, width = 5, 2
    model = ResNet18(in_channels, classes, stem, width, norm).double()
    with torch.no_grad():  # non-trivial affine norm parameters and running statistics
        for name, m in model.named_modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
                m.num_batches_tracked.fill_(7)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(n, in_channels, hw, hw, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), dtype=torch.int64)
    names = [k for k, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    v = [torch.randn_like(p) for p in params]

    model.train(mode == "train")
    loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)

    for name, t in zip(names, g):  # a reference of rounding noise would test nothing
        assert t.norm() > 1e-6 * t.numel() ** 0.5, (stem, norm, mode, name, float(t.norm()))
    cfg = f"{stem}_{norm}_{mode}"
    save_safetensors(os.path.join(OUT, f"{cfg}.weights.safetensors"), state)
    save_safetensors(os.path.join(OUT, f"{cfg}.batch.safetensors"), {"input": x, "target": y})
    save_safetensors(os.path.join(OUT, f"{cfg}.v.safetensors"), dict(zip(names, v)))
    expected = {"loss": loss.detach()}
    expected.update({f"grad/{k}": t for k, t in zip(names, g)})
    expected.update({f"hvp/{k}": t for k, t in zip(names, hv)})
    save_safetensors(os.path.join(OUT, f"{cfg}.expected.safetensors"), expected)
    print(cfg, "loss", float(loss))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    seed = 0
    for stem in ("cifar", "imagenet"):
        for norm, mode in (("batch", "train"), ("batch", "eval"), ("group", "train"), ("none", "train")):
            make_reference(stem, norm, mode, seed)
            seed += 1
        for norm in ("batch", "group", "none"):
            model = ResNet18(3, 1000 if stem == "imagenet" else 10, stem, 64, norm)
            with open(os.path.join(OUT, f"names_{stem}_{norm}.txt"), "w") as f:
                f.write("\n".join(model.state_dict().keys()) + "\n")
            print(stem, norm, "parameters", sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    main()
