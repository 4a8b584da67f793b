// Reductions (sum, mean, max, min) and what is composed of them (logsumexp, softmax,
// argmax), with their derivative rules.
// Each op: its checks, the forward kernel call, the one derivative rule and the forward
// rule (docs/taylor.md), recorded under its registry entry (op_registry.hpp). Rules use
// only differentiable ops from ops.hpp, so with recording on they are themselves
// differentiated (Hessian-vector products, third-order terms).
#include "autodiff/ops.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autodiff/graph.hpp"
#include "autodiff/jet_rules.hpp"
#include "autodiff/op_checks.hpp"

namespace flatmin {

namespace {
// keepdim shape of a reduction, and the normalized, sorted, unique axes
Shape keep_shape(const Shape& s, const Axes& axes) {
  Shape r = s;
  for (int64_t a : axes) r[a] = 1;
  return r;
}
Axes normalize_axes(Axes axes, int64_t rank, const char* op) {
  if (axes.empty()) {
    axes.resize(rank);
    std::iota(axes.begin(), axes.end(), 0);
  }
  for (auto& a : axes) a = normalize_axis(a, rank, op);
  std::sort(axes.begin(), axes.end());
  if (std::adjacent_find(axes.begin(), axes.end()) != axes.end())
    throw Error(std::string(op) + ": repeated axis in the axis list");
  return axes;
}
Shape drop_axes(const Shape& s, const Axes& axes) {
  Shape r;
  for (int64_t i = 0; i < int64_t(s.size()); ++i)
    if (!std::binary_search(axes.begin(), axes.end(), i)) r.push_back(s[i]);
  return r;
}
Tensor reduce_kernel(ReduceOp k, const Tensor& x, const Axes& axes) {
  Tensor out = empty(keep_shape(x.shape(), axes), x.options());
  if (x.numel() == 0 && k != ReduceOp::sum)
    throw Error("max/min: reduction over an empty tensor " + to_string(x.shape()));
  be(x).reduce(k, x, out);
  return out;
}
}  // namespace

// ---------------------------------------------------------------- reductions
Tensor sum(const Tensor& x, Axes axes, bool keepdim) {
  check_defined("sum", x);
  axes = normalize_axes(std::move(axes), x.dim(), "sum");
  Tensor out = reduce_kernel(ReduceOp::sum, x, axes);
  if (any_requires_grad({&x}))
    record(
        out, Op::sum, {x}, {},
        [sx = x.shape()](const Tensor& g, const RuleContext&) { return std::vector<Tensor>{expand(g, sx)}; },
        [&axes](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&axes](const Tensor& t) { return sum(t, axes, true); });
        });
  return keepdim ? out : reshape(out, drop_axes(x.shape(), axes));
}

Tensor mean(const Tensor& x, Axes axes, bool keepdim) {
  check_floating("mean", x);
  axes = normalize_axes(std::move(axes), x.dim(), "mean");
  int64_t count = 1;
  for (int64_t a : axes) count *= x.shape()[a];
  if (count == 0) throw Error("mean: reduction over zero elements of " + to_string(x.shape()));
  return mul_scalar(sum(x, axes, keepdim), 1.0 / double(count));
}

static Tensor extreme_reduce(const Tensor& x, Axes axes, bool keepdim, bool is_max) {
  const Op op = is_max ? Op::max : Op::min;
  check_floating(op_name(op), x);
  axes = normalize_axes(std::move(axes), x.dim(), op_name(op));
  Tensor out = reduce_kernel(is_max ? ReduceOp::max : ReduceOp::min, x, axes);
  if (any_requires_grad({&x}))
    record(
        out, op, {x}, {x}, {.save_output = true},
        [axes](const Tensor& g, const RuleContext& c) {
          Tensor x = c.saved(0);
          Tensor mask;
          {
            NoGrad ng;  // where the extremum sits: a constant; ties share the gradient evenly
            mask = eq(x, c.output().detach());
            mask = div(mask, sum(mask, axes, true));
          }
          return std::vector<Tensor>{mul(g, mask)};
        },
        [&axes, op](const std::vector<Jet>& in, const Tensor& out) {
          // the extremum's coefficients; at ties their mean, as the reverse rule (Taylor mode refuses ties)
          Tensor hits = eq(in[0][0], out), count = sum(hits, axes, true);
          if (jet::order(in) > 1)
            check_no_kink(op_name(op), gt(count, scalar_like(1.0, count)), jet::order(in), "a tie for the extremum");
          Tensor mask = div(hits, count);
          return jet::map(in[0], [&](const Tensor& t) { return sum(mul(t, mask), axes, true); });
        });
  return keepdim ? out : reshape(out, drop_axes(x.shape(), axes));
}
Tensor max(const Tensor& x, Axes axes, bool keepdim) { return extreme_reduce(x, std::move(axes), keepdim, true); }
Tensor min(const Tensor& x, Axes axes, bool keepdim) { return extreme_reduce(x, std::move(axes), keepdim, false); }

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const int64_t lead = x.dim() - int64_t(shape.size());
  if (lead < 0)
    throw Error("sum_to: cannot reduce " + to_string(x.shape()) + " to the larger rank of " + to_string(shape));
  Axes axes;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i < lead)
      axes.push_back(i);
    else if (shape[i - lead] == 1 && x.shape()[i] != 1)
      axes.push_back(i);
    else if (shape[i - lead] != x.shape()[i])
      throw Error("sum_to: cannot reduce " + to_string(x.shape()) + " to " + to_string(shape));
  }
  return reshape(axes.empty() ? x : sum(x, axes, true), shape);
}

Tensor logsumexp(const Tensor& x, int64_t axis, bool keepdim) {
  check_floating("logsumexp", x);
  axis = normalize_axis(axis, x.dim(), "logsumexp");
  // Shifting by any constant m is exact at every order (the result does not depend on m),
  // so the shift is taken detached; a non-finite maximum is replaced by 0.
  Tensor m;
  {
    NoGrad ng;
    m = max(x.detach(), {axis}, true);
    Tensor finite = eq(m, m) * lt(abs(m), scalar_like(INFINITY, m));
    m = where(finite, m, scalar_like(0.0, m));
  }
  Tensor r = add(log(sum(exp(sub(x, m)), {axis}, true)), m);
  return keepdim ? r : squeeze(r, axis);
}
Tensor softmax(const Tensor& x, int64_t axis) {
  check_floating("softmax", x);
  axis = normalize_axis(axis, x.dim(), "softmax");
  Tensor m;
  {
    NoGrad ng;
    m = max(x.detach(), {axis}, true);
  }
  Tensor e = exp(sub(x, m));
  return div(e, sum(e, {axis}, true));
}
Tensor log_softmax(const Tensor& x, int64_t axis) { return sub(x, logsumexp(x, axis, true)); }
Tensor argmax(const Tensor& x, int64_t axis, bool keepdim) {
  check_floating("argmax", x);
  axis = normalize_axis(axis, x.dim(), "argmax");
  NoGrad ng;
  Tensor xd = x.detach();
  Tensor m = max(xd, {axis}, true);
  Shape ar(x.dim(), 1);
  ar[axis] = x.shape()[axis];
  Tensor pos = reshape(to_dtype(arange(x.shape()[axis], {DType::i64, x.device()}), x.dtype()), ar);
  // the first position holding the maximum
  Tensor first = min(where(eq(xd, m), pos, scalar_like(double(x.shape()[axis]), xd)), {axis}, keepdim);
  return to_dtype(first, DType::i64);
}

}  // namespace flatmin
