// Layout ops (reshape, permute, expand, slice, concat) and the dtype/device changes,
// with their derivative rules: each is linear, so its rule is its adjoint layout op and its
// forward rule the op itself applied to each Taylor coefficient.
// Each op: its checks, the forward kernel call and the one derivative rule, recorded under
// its registry entry (op_registry.hpp). Rules use only differentiable ops from ops.hpp, so
// with recording on they are themselves differentiated (Hessian-vector products,
// third-order terms).
#include "autodiff/ops.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autodiff/graph.hpp"
#include "autodiff/jet_rules.hpp"
#include "autodiff/op_checks.hpp"

namespace flatmin {

int64_t normalize_axis(int64_t axis, int64_t rank, const char* op) {
  const int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= std::max<int64_t>(rank, 1))
    throw Error(std::string(op) + ": axis " + std::to_string(axis) + " is out of range for rank " +
                std::to_string(rank));
  return a;
}

// ---------------------------------------------------------------- layout
Tensor reshape(const Tensor& x, Shape shape) {
  check_defined("reshape", x);
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) throw Error("reshape: more than one -1 in " + to_string(shape));
      infer = int64_t(i);
    } else if (shape[i] < 0) {
      throw Error("reshape: negative extent in " + to_string(shape));
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0)
      throw Error("reshape: cannot infer -1 reshaping " + to_string(x.shape()) + " to " + to_string(shape));
    shape[infer] = x.numel() / known;
  }
  if (numel(shape) != x.numel())
    throw Error("reshape: " + to_string(x.shape()) + " (" + std::to_string(x.numel()) + " elements) cannot become " +
                to_string(shape));
  if (shape == x.shape()) return x;
  Tensor out = x.detach();
  out.impl()->shape = shape;
  if (any_requires_grad({&x}))
    record(
        out, Op::reshape, {x}, {},
        [sx = x.shape()](const Tensor& g, const RuleContext&) { return std::vector<Tensor>{reshape(g, sx)}; },
        [&shape](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&shape](const Tensor& t) { return reshape(t, shape); });
        });
  return out;
}
Tensor flatten(const Tensor& x, int64_t start, int64_t end) {
  check_defined("flatten", x);
  if (x.dim() == 0) return reshape(x, {1});
  start = normalize_axis(start, x.dim(), "flatten");
  end = normalize_axis(end, x.dim(), "flatten");
  if (start > end) throw Error("flatten: start axis after end axis");
  Shape s(x.shape().begin(), x.shape().begin() + start);
  int64_t n = 1;
  for (int64_t i = start; i <= end; ++i) n *= x.shape()[i];
  s.push_back(n);
  s.insert(s.end(), x.shape().begin() + end + 1, x.shape().end());
  return reshape(x, s);
}
Tensor unsqueeze(const Tensor& x, int64_t axis) {
  check_defined("unsqueeze", x);
  axis = normalize_axis(axis, x.dim() + 1, "unsqueeze");
  Shape s = x.shape();
  s.insert(s.begin() + axis, 1);
  return reshape(x, s);
}
Tensor squeeze(const Tensor& x, int64_t axis) {
  check_defined("squeeze", x);
  axis = normalize_axis(axis, x.dim(), "squeeze");
  if (x.shape()[axis] != 1)
    throw Error("squeeze: axis " + std::to_string(axis) + " of " + to_string(x.shape()) + " has extent != 1");
  Shape s = x.shape();
  s.erase(s.begin() + axis);
  return reshape(x, s);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& perm_in) {
  check_defined("permute", x);
  if (int64_t(perm_in.size()) != x.dim())
    throw Error("permute: " + std::to_string(perm_in.size()) + " axes given for a tensor of shape " +
                to_string(x.shape()));
  std::vector<int64_t> perm(perm_in.size()), inverse(perm_in.size());
  std::vector<bool> seen(perm.size(), false);
  Shape s(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) {
    perm[i] = normalize_axis(perm_in[i], x.dim(), "permute");
    if (seen[perm[i]]) throw Error("permute: axis " + std::to_string(perm[i]) + " appears twice");
    seen[perm[i]] = true;
    inverse[perm[i]] = int64_t(i);
    s[i] = x.shape()[perm[i]];
  }
  bool identity = true;
  for (size_t i = 0; i < perm.size(); ++i) identity &= perm[i] == int64_t(i);
  if (identity) return x;
  Tensor out = empty(s, x.options());
  be(x).permute(x, out, perm);
  if (any_requires_grad({&x}))
    record(
        out, Op::permute, {x}, {},
        [inverse](const Tensor& g, const RuleContext&) { return std::vector<Tensor>{permute(g, inverse)}; },
        [&perm](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&perm](const Tensor& t) { return permute(t, perm); });
        });
  return out;
}
Tensor transpose(const Tensor& x, int64_t a, int64_t b) {
  check_defined("transpose", x);
  std::vector<int64_t> perm(x.dim());
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[normalize_axis(a, x.dim(), "transpose")], perm[normalize_axis(b, x.dim(), "transpose")]);
  return permute(x, perm);
}

Tensor expand(const Tensor& x, const Shape& shape) {
  check_defined("expand", x);
  if (x.shape() == shape) return x;
  if (broadcast_shapes(x.shape(), shape, "expand") != shape)
    throw Error("expand: " + to_string(x.shape()) + " cannot be broadcast to " + to_string(shape));
  if (x.numel() == numel(shape)) return reshape(x, shape);  // only unit axes were added
  Tensor out = empty(shape, x.options());
  be(x).expand(x, out);
  if (any_requires_grad({&x}))
    record(
        out, Op::expand, {x}, {},
        [sx = x.shape()](const Tensor& g, const RuleContext&) { return std::vector<Tensor>{sum_to(g, sx)}; },
        [&shape](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&shape](const Tensor& t) { return expand(t, shape); });
        });
  return out;
}

Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t stop, int64_t step) {
  check_defined("slice", x);
  axis = normalize_axis(axis, x.dim(), "slice");
  const int64_t n = x.shape()[axis];
  if (step <= 0) throw Error("slice: step must be positive, got " + std::to_string(step));
  if (start < 0) start += n;
  if (stop < 0) stop += n;
  start = std::clamp<int64_t>(start, 0, n);
  stop = std::clamp<int64_t>(stop, start, n);
  Shape s = x.shape();
  s[axis] = (stop - start + step - 1) / step;
  if (s == x.shape()) return x;
  Tensor out = empty(s, x.options());
  be(x).slice(x, out, axis, start, step);
  if (any_requires_grad({&x}))
    record(
        out, Op::slice, {x}, {},
        [sx = x.shape(), axis, start, step](const Tensor& g, const RuleContext&) {
          return std::vector<Tensor>{slice_backward(g, sx, axis, start, step)};
        },
        [=](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [=](const Tensor& t) { return slice(t, axis, start, stop, step); });
        });
  return out;
}
Tensor slice_backward(const Tensor& x, const Shape& shape, int64_t axis, int64_t start, int64_t step) {
  check_defined("slice_backward", x);
  Tensor out = zeros(shape, x.options());
  be(x).slice_add(x, out, axis, start, step);
  if (any_requires_grad({&x}))
    record(
        out, Op::slice_backward, {x}, {},
        [axis, start, step, n = x.shape()[axis]](const Tensor& g, const RuleContext&) {
          return std::vector<Tensor>{slice(g, axis, start, start + (n - 1) * step + 1, step)};
        },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&](const Tensor& t) { return slice_backward(t, shape, axis, start, step); });
        });
  return out;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t axis) {
  if (xs.empty()) throw Error("concat: no tensors given");
  check_defined("concat", xs[0]);
  axis = normalize_axis(axis, xs[0].dim(), "concat");
  Shape s = xs[0].shape();
  s[axis] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_pair("concat", xs[0], xs[i]);
    Shape a = xs[i].shape(), b = xs[0].shape();
    if (a.size() != b.size())
      throw Error("concat: tensor " + std::to_string(i) + " has shape " + to_string(a) + ", tensor 0 " + to_string(b));
    a[axis] = b[axis] = 0;
    if (a != b)
      throw Error("concat: tensor " + std::to_string(i) + " has shape " + to_string(xs[i].shape()) +
                  ", incompatible with " + to_string(xs[0].shape()) + " along axis " + std::to_string(axis));
    s[axis] += xs[i].shape()[axis];
  }
  Tensor out = zeros(s, xs[0].options());
  std::vector<int64_t> starts;
  int64_t at = 0;
  bool rg = false;
  for (const Tensor& x : xs) {
    be(x).slice_add(x, out, axis, at, 1);
    starts.push_back(at);
    at += x.shape()[axis];
    rg |= any_requires_grad({&x});
  }
  if (rg) {
    std::vector<int64_t> sizes;
    for (const Tensor& x : xs) sizes.push_back(x.shape()[axis]);
    record(
        out, Op::concat, xs, {},
        [axis, starts, sizes](const Tensor& g, const RuleContext& c) {
          std::vector<Tensor> r(starts.size());
          for (size_t i = 0; i < r.size(); ++i)
            if (c.needs(i)) r[i] = slice(g, axis, starts[i], starts[i] + sizes[i]);
          return r;
        },
        [axis](const std::vector<Jet>& in, const Tensor&) {  // zeros for the parts without a coefficient
          Jet y(jet::order(in) + 1);
          for (size_t k = 1; k < y.size(); ++k) {
            std::vector<Tensor> parts;
            bool any = false;
            for (const Jet& j : in) {
              any |= j[k].defined();
              parts.push_back(j[k].defined() ? j[k] : zeros_like(j[0]));
            }
            if (any) y[k] = concat(parts, axis);
          }
          return y;
        });
  }
  return out;
}
Tensor stack(const std::vector<Tensor>& xs, int64_t axis) {
  if (xs.empty()) throw Error("stack: no tensors given");
  std::vector<Tensor> u;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_defined("stack", xs[i]);
    if (xs[i].shape() != xs[0].shape())
      throw Error("stack: tensor " + std::to_string(i) + " has shape " + to_string(xs[i].shape()) + ", tensor 0 " +
                  to_string(xs[0].shape()));
    u.push_back(unsqueeze(xs[i], normalize_axis(axis, xs[0].dim() + 1, "stack")));
  }
  return concat(u, axis);
}

// ---------------------------------------------------------------- dtype / device
Tensor to_dtype(const Tensor& x, DType t) {
  check_defined("to_dtype", x);
  if (x.dtype() == t) return x;
  Tensor out = empty(x.shape(), {t, x.device()});
  be(x).cast(x, out);
  if (is_floating(t) && any_requires_grad({&x}))
    record(
        out, Op::to_dtype, {x}, {},
        [from = x.dtype()](const Tensor& g, const RuleContext&) { return std::vector<Tensor>{to_dtype(g, from)}; },
        [t](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [t](const Tensor& c) { return to_dtype(c, t); });
        });
  return out;
}
Tensor to_device(const Tensor& x, Device d) {
  check_defined("to_device", x);
  if (x.device() == d) return x;
  Tensor out = empty(x.shape(), {x.dtype(), d});
  const size_t bytes = size_t(x.numel()) * dtype_size(x.dtype());
  if (x.device().kind == DeviceKind::cpu) {
    backend(d).copy_from_host(out.raw(), x.raw(), bytes);
  } else if (d.kind == DeviceKind::cpu) {
    backend(x.device()).copy_to_host(out.raw(), x.raw(), bytes);
  } else {  // device to device through the host
    Tensor h = to_device(x.detach(), Device::cpu());
    backend(d).copy_from_host(out.raw(), h.raw(), bytes);
  }
  if (any_requires_grad({&x}))
    record(
        out, Op::to_device, {x}, {},
        [from = x.device()](const Tensor& g, const RuleContext&) { return std::vector<Tensor>{to_device(g, from)}; },
        [d](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [d](const Tensor& c) { return to_device(c, d); });
        });
  return out;
}

}  // namespace flatmin
