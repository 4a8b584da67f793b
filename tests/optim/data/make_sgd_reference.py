# Reference SGD trajectories from PyTorch (torch.optim.SGD), for tests/optim/test_sgd.cpp.
# Run with Debian's python: /usr/bin/python3 make_sgd_reference.py > sgd_reference.txt
# Problem: f(x) = sum(a * x^4)/4 + sum(b * x) + (x0*x1)^2 on x in R^3, float64, 6 steps.
# Each line: name lr momentum dampening nesterov weight_decay, then the 3 coordinates after
# each step (18 numbers).
import torch

torch.set_default_dtype(torch.float64)
a = torch.tensor([1.0, 0.5, 2.0])
b = torch.tensor([0.3, -0.2, 0.1])
x0 = [0.7, -1.1, 0.4]

def f(x):
    return (a * x**4).sum() / 4 + (b * x).sum() + (x[0] * x[1]) ** 2

configs = [
    ("plain", 0.1, 0.0, 0.0, False, 0.0),
    ("momentum", 0.05, 0.9, 0.0, False, 0.0),
    ("dampening", 0.05, 0.9, 0.3, False, 0.0),
    ("nesterov", 0.05, 0.9, 0.0, True, 0.0),
    ("weight_decay", 0.05, 0.8, 0.1, False, 0.01),
    ("nesterov_wd", 0.04, 0.7, 0.0, True, 0.05),
]
for name, lr, m, d, nest, wd in configs:
    x = torch.tensor(x0, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, momentum=m, dampening=d, nesterov=nest, weight_decay=wd)
    out = []
    for _ in range(6):
        opt.zero_grad()
        f(x).backward()
        opt.step()
        out += x.detach().tolist()
    print(name, lr, m, d, int(nest), wd, " ".join(repr(v) for v in out))
