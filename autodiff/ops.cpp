// The table of differentiable ops: for each, the checks, the forward kernel call and the
// one derivative rule. Rules use only differentiable ops from ops.hpp, so with recording
// on they are themselves differentiated (Hessian-vector products, third-order terms).
// Non-differentiable helpers (masks, signs) are computed inside rules as constants; this
// is exact at every order wherever the op is smooth (away from kinks and ties).
#include "autodiff/ops.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autodiff/backend.hpp"
#include "autodiff/graph.hpp"

namespace flatmin {

namespace {
Backend& be(const Tensor& t) { return backend(t.device()); }

void check_defined(const char* op, const Tensor& t, const char* which = "input") {
  if (!t.defined()) throw Error(std::string(op) + ": " + which + " is undefined");
}
void check_floating(const char* op, const Tensor& t) {
  check_defined(op, t);
  if (!is_floating(t.dtype()))
    throw Error(std::string(op) + ": needs a floating-point tensor, got " + dtype_name(t.dtype()) + " " +
                to_string(t.shape()));
}
void check_pair(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a, "first input");
  check_defined(op, b, "second input");
  if (a.device() != b.device())
    throw Error(std::string(op) + ": inputs on different devices (" + a.device().str() + " " + to_string(a.shape()) +
                " and " + b.device().str() + " " + to_string(b.shape()) + ")");
  if (a.dtype() != b.dtype())
    throw Error(std::string(op) + ": dtype mismatch (" + dtype_name(a.dtype()) + " " + to_string(a.shape()) + " and " +
                dtype_name(b.dtype()) + " " + to_string(b.shape()) + ")");
}
void check_index(const char* op, const Tensor& x, const Tensor& idx) {
  check_defined(op, idx, "index");
  if (idx.dtype() != DType::i64) throw Error(std::string(op) + ": index must be int64, got " + dtype_name(idx.dtype()));
  if (idx.device() != x.device())
    throw Error(std::string(op) + ": index on " + idx.device().str() + " but input on " + x.device().str());
}

Tensor unary_kernel(UnaryOp k, const Tensor& x, double param = 0) {
  Tensor out = empty(x.shape(), x.options());
  be(x).unary(k, x, out, param);
  return out;
}
Tensor binary_kernel(BinaryOp k, const Tensor& a, const Tensor& b, const char* op) {
  check_pair(op, a, b);
  Tensor out = empty(broadcast_shapes(a.shape(), b.shape(), op), a.options());
  be(a).binary(k, a, b, out);
  return out;
}
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
Tensor scalar_like(double v, const Tensor& t) { return full({}, v, t.options()); }
}  // namespace

int64_t normalize_axis(int64_t axis, int64_t rank, const char* op) {
  const int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= std::max<int64_t>(rank, 1))
    throw Error(std::string(op) + ": axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  return a;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  if (a == b) return a;
  const size_t n = std::max(a.size(), b.size());
  Shape r(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      throw Error(std::string(op) + ": shapes " + to_string(a) + " and " + to_string(b) + " do not broadcast");
    r[i] = da == 1 ? db : da;
  }
  return r;
}

const std::vector<std::string>& differentiable_op_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n = {
        "add", "sub", "mul", "div", "maximum", "minimum", "neg", "add_scalar", "mul_scalar", "rsub_scalar", "pow",
        "reciprocal", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "softplus", "relu", "relu_backward", "abs", "where", "sum",
        "max", "min", "reshape", "permute", "expand", "slice", "slice_backward", "concat", "index_select",
        "index_add", "gather", "scatter_add", "matmul", "to_dtype", "to_device"};
    for (const auto& s : nn_op_names()) n.push_back(s);
    return n;
  }();
  return names;
}

// ---------------------------------------------------------------- elementwise binary
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::add, a, b, "add");
  if (any_requires_grad({&a, &b}))
    record(out, "add", {a, b}, {}, false, [sa = a.shape(), sb = b.shape()](const Tensor& g, const RuleContext& c) {
      return std::vector<Tensor>{c.needs(0) ? sum_to(g, sa) : Tensor(), c.needs(1) ? sum_to(g, sb) : Tensor()};
    });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::sub, a, b, "sub");
  if (any_requires_grad({&a, &b}))
    record(out, "sub", {a, b}, {}, false, [sa = a.shape(), sb = b.shape()](const Tensor& g, const RuleContext& c) {
      return std::vector<Tensor>{c.needs(0) ? sum_to(g, sa) : Tensor(), c.needs(1) ? sum_to(neg(g), sb) : Tensor()};
    });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::mul, a, b, "mul");
  if (any_requires_grad({&a, &b}))
    record(out, "mul", {a, b}, {a, b}, false, [](const Tensor& g, const RuleContext& c) {
      Tensor a = c.saved(0), b = c.saved(1);
      return std::vector<Tensor>{c.needs(0) ? sum_to(mul(g, b), a.shape()) : Tensor(),
                                 c.needs(1) ? sum_to(mul(g, a), b.shape()) : Tensor()};
    });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::div, a, b, "div");
  if (any_requires_grad({&a, &b}))
    record(out, "div", {a, b}, {b}, true, [sa = a.shape()](const Tensor& g, const RuleContext& c) {
      Tensor b = c.saved(0);
      Tensor gb;
      if (c.needs(1)) gb = sum_to(neg(div(mul(g, c.output()), b)), b.shape());
      return std::vector<Tensor>{c.needs(0) ? sum_to(div(g, b), sa) : Tensor(), gb};
    });
  return out;
}

// The share of the gradient that goes to `a` in maximum/minimum: 1 where a wins, 1/2 at ties.
static Tensor winner_mask(const Tensor& a, const Tensor& b, bool is_max) {
  NoGrad ng;
  Tensor wins = is_max ? gt(a, b) : lt(a, b);
  return add(wins, mul_scalar(eq(a, b), 0.5));
}
static Tensor extremum(const Tensor& a, const Tensor& b, bool is_max) {
  const char* op = is_max ? "maximum" : "minimum";
  Tensor out = binary_kernel(is_max ? BinaryOp::maximum : BinaryOp::minimum, a, b, op);
  if (any_requires_grad({&a, &b}))
    record(out, op, {a, b}, {a, b}, false, [is_max](const Tensor& g, const RuleContext& c) {
      Tensor a = c.saved(0), b = c.saved(1);
      Tensor m = winner_mask(a.detach(), b.detach(), is_max);
      return std::vector<Tensor>{c.needs(0) ? sum_to(mul(g, m), a.shape()) : Tensor(),
                                 c.needs(1) ? sum_to(mul(g, rsub_scalar(m, 1.0)), b.shape()) : Tensor()};
    });
  return out;
}
Tensor maximum(const Tensor& a, const Tensor& b) { return extremum(a, b, true); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum(a, b, false); }

// ---------------------------------------------------------------- elementwise unary
// A unary op whose rule reads its input (save_input) or its output (save_output).
static Tensor unary_op(const char* op, UnaryOp k, const Tensor& x, double param, bool save_input, bool save_output,
                       Tensor (*rule)(const Tensor& g, const Tensor& x, const Tensor& y, double param)) {
  check_floating(op, x);
  Tensor out = unary_kernel(k, x, param);
  if (any_requires_grad({&x})) {
    // The closure holds two words, so std::function stores it without a heap allocation;
    // what was saved is read back from the node.
    Rule r = [rule, param](const Tensor& g, const RuleContext& c) {
      return std::vector<Tensor>{rule(g, c.node().saved.empty() ? Tensor() : c.saved(0),
                                      c.node().out_storage ? c.output() : Tensor(), param)};
    };
    if (save_input) record(out, op, {x}, {x}, save_output, std::move(r));
    else record(out, op, {x}, {}, save_output, std::move(r));
  }
  return out;
}

Tensor neg(const Tensor& x) {
  return unary_op("neg", UnaryOp::neg, x, 0, false, false,
                  [](const Tensor& g, const Tensor&, const Tensor&, double) { return neg(g); });
}
Tensor add_scalar(const Tensor& x, double c) {
  return unary_op("add_scalar", UnaryOp::add_scalar, x, c, false, false,
                  [](const Tensor& g, const Tensor&, const Tensor&, double) { return g; });
}
Tensor mul_scalar(const Tensor& x, double c) {
  return unary_op("mul_scalar", UnaryOp::mul_scalar, x, c, false, false,
                  [](const Tensor& g, const Tensor&, const Tensor&, double c) { return mul_scalar(g, c); });
}
Tensor rsub_scalar(const Tensor& x, double c) {
  return unary_op("rsub_scalar", UnaryOp::rsub_scalar, x, c, false, false,
                  [](const Tensor& g, const Tensor&, const Tensor&, double) { return neg(g); });
}
Tensor pow(const Tensor& x, double p) {
  return unary_op("pow", UnaryOp::pow_scalar, x, p, true, false,
                  [](const Tensor& g, const Tensor& x, const Tensor&, double p) {
                    if (p == 0.0) return mul_scalar(g, 0.0);
                    if (p == 1.0) return g;
                    if (p == 2.0) return mul(g, mul_scalar(x, 2.0));
                    return mul(g, mul_scalar(pow(x, p - 1.0), p));
                  });
}
Tensor square(const Tensor& x) { return pow(x, 2.0); }
Tensor reciprocal(const Tensor& x) {
  return unary_op("reciprocal", UnaryOp::reciprocal, x, 0, false, true,
                  [](const Tensor& g, const Tensor&, const Tensor& y, double) { return neg(mul(g, square(y))); });
}
Tensor exp(const Tensor& x) {
  return unary_op("exp", UnaryOp::exp, x, 0, false, true,
                  [](const Tensor& g, const Tensor&, const Tensor& y, double) { return mul(g, y); });
}
Tensor log(const Tensor& x) {
  return unary_op("log", UnaryOp::log, x, 0, true, false,
                  [](const Tensor& g, const Tensor& x, const Tensor&, double) { return div(g, x); });
}
Tensor sqrt(const Tensor& x) {
  return unary_op("sqrt", UnaryOp::sqrt, x, 0, false, true,
                  [](const Tensor& g, const Tensor&, const Tensor& y, double) { return div(mul_scalar(g, 0.5), y); });
}
Tensor rsqrt(const Tensor& x) {
  return unary_op("rsqrt", UnaryOp::rsqrt, x, 0, false, true,  // d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
                  [](const Tensor& g, const Tensor&, const Tensor& y, double) {
                    return mul(g, mul_scalar(pow(y, 3.0), -0.5));
                  });
}
Tensor tanh(const Tensor& x) {
  return unary_op("tanh", UnaryOp::tanh, x, 0, false, true,
                  [](const Tensor& g, const Tensor&, const Tensor& y, double) {
                    return mul(g, rsub_scalar(square(y), 1.0));
                  });
}
Tensor sigmoid(const Tensor& x) {
  return unary_op("sigmoid", UnaryOp::sigmoid, x, 0, false, true,
                  [](const Tensor& g, const Tensor&, const Tensor& y, double) {
                    return mul(g, mul(y, rsub_scalar(y, 1.0)));
                  });
}
Tensor softplus(const Tensor& x) {
  return unary_op("softplus", UnaryOp::softplus, x, 0, true, false,
                  [](const Tensor& g, const Tensor& x, const Tensor&, double) { return mul(g, sigmoid(x)); });
}
// g where y > 0, else 0: ReLU's VJP as one op. Linear in g; its derivative in y is zero
// wherever it exists, so y is an input that never receives a gradient. It saves only y,
// which the ReLU saved already (a mask tensor would be a new full-size buffer per layer).
Tensor relu_backward(const Tensor& g, const Tensor& y) {
  if (g.shape() != y.shape())
    throw Error("relu_backward: gradient " + to_string(g.shape()) + " and output " + to_string(y.shape()) +
                " differ in shape");
  Tensor out = binary_kernel(BinaryOp::where_positive, g, y, "relu_backward");
  if (any_requires_grad({&g}))
    record(out, "relu_backward", {g}, {y.detach()}, false, [](const Tensor& gg, const RuleContext& c) {
      return std::vector<Tensor>{relu_backward(gg, c.saved(0))};
    });
  return out;
}
// Saves its output, not its input (y > 0 exactly where x > 0): in a network the output is
// what the next layer saves anyway, so the input (a batch norm's output) can be freed.
Tensor relu(const Tensor& x) {
  return unary_op("relu", UnaryOp::relu, x, 0, false, true,
                  [](const Tensor& g, const Tensor&, const Tensor& y, double) { return relu_backward(g, y); });
}
Tensor abs(const Tensor& x) {
  return unary_op("abs", UnaryOp::abs, x, 0, true, false,
                  [](const Tensor& g, const Tensor& x, const Tensor&, double) { return mul(g, sign(x.detach())); });
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_pair("where", a, b);
  check_defined("where", cond, "condition");
  if (cond.device() != a.device()) throw Error("where: condition on " + cond.device().str() + ", values on " + a.device().str());
  Tensor c = cond.dtype() == a.dtype() ? cond : to_dtype(cond.detach(), a.dtype());
  Shape s = broadcast_shapes(broadcast_shapes(c.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = empty(s, a.options());
  be(a).where(c, a, b, out);
  if (any_requires_grad({&a, &b}))
    record(out, "where", {a, b}, {c.detach()}, false,
           [sa = a.shape(), sb = b.shape()](const Tensor& g, const RuleContext& ctx) {
             Tensor c = ctx.saved(0), z = scalar_like(0.0, g);
             return std::vector<Tensor>{ctx.needs(0) ? sum_to(where(c, g, z), sa) : Tensor(),
                                        ctx.needs(1) ? sum_to(where(c, z, g), sb) : Tensor()};
           });
  return out;
}

// ---------------------------------------------------------------- constants (never recorded)
Tensor sign(const Tensor& x) { check_floating("sign", x); return unary_kernel(UnaryOp::sign, x); }
Tensor step(const Tensor& x) { check_floating("step", x); return unary_kernel(UnaryOp::step, x); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::gt, a, b, "gt"); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::ge, a, b, "ge"); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::lt, a, b, "lt"); }
Tensor le(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::le, a, b, "le"); }
Tensor eq(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::eq, a, b, "eq"); }

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& x) { return neg(x); }
Tensor operator+(const Tensor& a, double c) { return add_scalar(a, c); }
Tensor operator+(double c, const Tensor& a) { return add_scalar(a, c); }
Tensor operator-(const Tensor& a, double c) { return add_scalar(a, -c); }
Tensor operator-(double c, const Tensor& a) { return rsub_scalar(a, c); }
Tensor operator*(const Tensor& a, double c) { return mul_scalar(a, c); }
Tensor operator*(double c, const Tensor& a) { return mul_scalar(a, c); }
Tensor operator/(const Tensor& a, double c) { return mul_scalar(a, 1.0 / c); }
Tensor operator/(double c, const Tensor& a) { return mul_scalar(reciprocal(a), c); }

// ---------------------------------------------------------------- reductions
Tensor sum(const Tensor& x, Axes axes, bool keepdim) {
  check_defined("sum", x);
  axes = normalize_axes(std::move(axes), x.dim(), "sum");
  Tensor out = reduce_kernel(ReduceOp::sum, x, axes);
  if (any_requires_grad({&x}))
    record(out, "sum", {x}, {}, false, [sx = x.shape()](const Tensor& g, const RuleContext&) {
      return std::vector<Tensor>{expand(g, sx)};
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
  const char* op = is_max ? "max" : "min";
  check_floating(op, x);
  axes = normalize_axes(std::move(axes), x.dim(), op);
  Tensor out = reduce_kernel(is_max ? ReduceOp::max : ReduceOp::min, x, axes);
  if (any_requires_grad({&x}))
    record(out, op, {x}, {x}, true, [axes](const Tensor& g, const RuleContext& c) {
      Tensor x = c.saved(0);
      Tensor mask;
      {
        NoGrad ng;  // where the extremum sits: a constant; ties share the gradient evenly
        mask = eq(x, c.output().detach());
        mask = div(mask, sum(mask, axes, true));
      }
      return std::vector<Tensor>{mul(g, mask)};
    });
  return keepdim ? out : reshape(out, drop_axes(x.shape(), axes));
}
Tensor max(const Tensor& x, Axes axes, bool keepdim) { return extreme_reduce(x, std::move(axes), keepdim, true); }
Tensor min(const Tensor& x, Axes axes, bool keepdim) { return extreme_reduce(x, std::move(axes), keepdim, false); }

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const int64_t lead = x.dim() - int64_t(shape.size());
  if (lead < 0) throw Error("sum_to: cannot reduce " + to_string(x.shape()) + " to the larger rank of " + to_string(shape));
  Axes axes;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i < lead) axes.push_back(i);
    else if (shape[i - lead] == 1 && x.shape()[i] != 1) axes.push_back(i);
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
Tensor log_softmax(const Tensor& x, int64_t axis) {
  return sub(x, logsumexp(x, axis, true));
}
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
    record(out, "reshape", {x}, {}, false, [sx = x.shape()](const Tensor& g, const RuleContext&) {
      return std::vector<Tensor>{reshape(g, sx)};
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
    throw Error("permute: " + std::to_string(perm_in.size()) + " axes given for a tensor of shape " + to_string(x.shape()));
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
    record(out, "permute", {x}, {}, false, [inverse](const Tensor& g, const RuleContext&) {
      return std::vector<Tensor>{permute(g, inverse)};
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
    record(out, "expand", {x}, {}, false, [sx = x.shape()](const Tensor& g, const RuleContext&) {
      return std::vector<Tensor>{sum_to(g, sx)};
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
    record(out, "slice", {x}, {}, false, [sx = x.shape(), axis, start, step](const Tensor& g, const RuleContext&) {
      return std::vector<Tensor>{slice_backward(g, sx, axis, start, step)};
    });
  return out;
}
Tensor slice_backward(const Tensor& x, const Shape& shape, int64_t axis, int64_t start, int64_t step) {
  check_defined("slice_backward", x);
  Tensor out = zeros(shape, x.options());
  be(x).slice_add(x, out, axis, start, step);
  if (any_requires_grad({&x}))
    record(out, "slice_backward", {x}, {}, false,
           [axis, start, step, n = x.shape()[axis]](const Tensor& g, const RuleContext&) {
             return std::vector<Tensor>{slice(g, axis, start, start + (n - 1) * step + 1, step)};
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
    if (a.size() != b.size()) throw Error("concat: tensor " + std::to_string(i) + " has shape " + to_string(a) + ", tensor 0 " + to_string(b));
    a[axis] = b[axis] = 0;
    if (a != b) throw Error("concat: tensor " + std::to_string(i) + " has shape " + to_string(xs[i].shape()) +
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
    record(out, "concat", xs, {}, false, [axis, starts, sizes](const Tensor& g, const RuleContext& c) {
      std::vector<Tensor> r(starts.size());
      for (size_t i = 0; i < r.size(); ++i)
        if (c.needs(i)) r[i] = slice(g, axis, starts[i], starts[i] + sizes[i]);
      return r;
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

static void check_index_range(const char* op, const Tensor& idx, int64_t n) {
  // Indices are read on the host: an out-of-range index must never reach a kernel. CPU
  // indices are scanned in place (no copy); device indices are copied once.
  Tensor host = idx.device().kind == DeviceKind::cpu ? idx : idx.to(Device::cpu());
  const int64_t* v = data_ptr<int64_t>(host);
  for (int64_t i = 0, count = host.numel(); i < count; ++i)
    if (v[i] < 0 || v[i] >= n)
      throw Error(std::string(op) + ": index " + std::to_string(v[i]) + " is out of range for extent " + std::to_string(n));
}

Tensor index_select(const Tensor& x, int64_t axis, const Tensor& idx) {
  check_defined("index_select", x);
  check_index("index_select", x, idx);
  if (idx.dim() != 1) throw Error("index_select: index must be 1-d, got " + to_string(idx.shape()));
  axis = normalize_axis(axis, x.dim(), "index_select");
  check_index_range("index_select", idx, x.shape()[axis]);
  Shape s = x.shape();
  s[axis] = idx.numel();
  Tensor out = empty(s, x.options());
  be(x).index_select(x, axis, idx, out);
  if (any_requires_grad({&x}))
    record(out, "index_select", {x}, {idx}, false, [sx = x.shape(), axis](const Tensor& g, const RuleContext& c) {
      return std::vector<Tensor>{index_add(g, sx, axis, c.saved(0))};
    });
  return out;
}
Tensor index_add(const Tensor& x, const Shape& shape, int64_t axis, const Tensor& idx) {
  check_defined("index_add", x);
  check_index("index_add", x, idx);
  axis = normalize_axis(axis, x.dim(), "index_add");
  Shape expect = shape;
  if (int64_t(expect.size()) != x.dim()) throw Error("index_add: rank of " + to_string(shape) + " differs from " + to_string(x.shape()));
  expect[axis] = idx.numel();
  if (expect != x.shape() || idx.dim() != 1)
    throw Error("index_add: source " + to_string(x.shape()) + " does not match target " + to_string(shape) + " with " +
                std::to_string(idx.numel()) + " indices on axis " + std::to_string(axis));
  check_index_range("index_add", idx, shape[axis]);
  Tensor out = zeros(shape, x.options());
  be(x).index_add(x, axis, idx, out);
  if (any_requires_grad({&x}))
    record(out, "index_add", {x}, {idx}, false, [axis](const Tensor& g, const RuleContext& c) {
      return std::vector<Tensor>{index_select(g, axis, c.saved(0))};
    });
  return out;
}

static void check_gather_shapes(const char* op, const Shape& data, const Shape& index, int64_t axis) {
  bool ok = data.size() == index.size();
  for (size_t i = 0; ok && i < data.size(); ++i)
    ok = int64_t(i) == axis || data[i] == index[i];
  if (!ok) throw Error(std::string(op) + ": index shape " + to_string(index) + " must match " + to_string(data) +
                       " except along axis " + std::to_string(axis));
}
Tensor gather(const Tensor& x, int64_t axis, const Tensor& idx) {
  check_defined("gather", x);
  check_index("gather", x, idx);
  axis = normalize_axis(axis, x.dim(), "gather");
  check_gather_shapes("gather", x.shape(), idx.shape(), axis);
  check_index_range("gather", idx, x.shape()[axis]);
  Tensor out = empty(idx.shape(), x.options());
  be(x).gather(x, axis, idx, out);
  if (any_requires_grad({&x}))
    record(out, "gather", {x}, {idx}, false, [sx = x.shape(), axis](const Tensor& g, const RuleContext& c) {
      return std::vector<Tensor>{scatter_add(g, sx, axis, c.saved(0))};
    });
  return out;
}
Tensor scatter_add(const Tensor& x, const Shape& shape, int64_t axis, const Tensor& idx) {
  check_defined("scatter_add", x);
  check_index("scatter_add", x, idx);
  axis = normalize_axis(axis, x.dim(), "scatter_add");
  if (idx.shape() != x.shape())
    throw Error("scatter_add: index shape " + to_string(idx.shape()) + " differs from source " + to_string(x.shape()));
  check_gather_shapes("scatter_add", shape, idx.shape(), axis);
  check_index_range("scatter_add", idx, shape[axis]);
  Tensor out = zeros(shape, x.options());
  be(x).scatter_add(x, axis, idx, out);
  if (any_requires_grad({&x}))
    record(out, "scatter_add", {x}, {idx}, false, [axis](const Tensor& g, const RuleContext& c) {
      return std::vector<Tensor>{gather(g, axis, c.saved(0))};
    });
  return out;
}

// ---------------------------------------------------------------- linear algebra
// The core product op(a) @ op(b) of two tensors of rank >= 2 with broadcast batch dims.
// Its rule is again mm with transpose flags, so no transposed copy is ever made.
static Tensor mm(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  check_pair("matmul", a, b);
  check_floating("matmul", a);
  const int64_t ra = a.dim(), rb = b.dim();
  const int64_t m = ta ? a.shape()[ra - 1] : a.shape()[ra - 2], ka = ta ? a.shape()[ra - 2] : a.shape()[ra - 1];
  const int64_t kb = tb ? b.shape()[rb - 1] : b.shape()[rb - 2], n = tb ? b.shape()[rb - 2] : b.shape()[rb - 1];
  if (ka != kb)
    throw Error("matmul: inner dimensions differ: " + to_string(a.shape()) + (ta ? "^T" : "") + " @ " +
                to_string(b.shape()) + (tb ? "^T" : ""));
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(ba, bb, "matmul");
  const int64_t nb = numel(batch);
  // An operand whose batch part is all ones is shared by every batch entry (stride 0);
  // otherwise it is expanded to the full batch.
  auto operand = [&](const Tensor& t, const Shape& bt, int64_t& stride) {
    const int64_t mat = t.shape()[t.dim() - 2] * t.shape()[t.dim() - 1];
    if (numel(bt) == 1) { stride = 0; return t; }
    stride = mat;
    if (bt == batch) return t;
    Shape full = batch;
    full.push_back(t.shape()[t.dim() - 2]);
    full.push_back(t.shape()[t.dim() - 1]);
    return expand(t, full);
  };
  Backend::MatmulArgs args{nb, m, n, ka, ta, tb, 0, 0};
  Tensor A = operand(a.detach(), ba, args.stride_a), B = operand(b.detach(), bb, args.stride_b);
  Shape s = batch;
  s.push_back(m);
  s.push_back(n);
  Tensor out = empty(s, a.options());
  be(a).matmul(A, B, out, args);
  if (any_requires_grad({&a, &b}))
    record(out, "matmul", {a, b}, {a, b}, false, [ta, tb](const Tensor& g, const RuleContext& c) {
      Tensor a = c.saved(0), b = c.saved(1), ga, gb;
      if (c.needs(0)) ga = sum_to(ta ? mm(b, g, tb, true) : mm(g, b, false, !tb), a.shape());
      if (c.needs(1)) gb = sum_to(tb ? mm(g, a, true, ta) : mm(a, g, !ta, false), b.shape());
      return std::vector<Tensor>{ga, gb};
    });
  return out;
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_pair("matmul", a, b);
  if (a.dim() == 0 || b.dim() == 0)
    throw Error("matmul: operands must have rank >= 1, got " + to_string(a.shape()) + " and " + to_string(b.shape()));
  const bool va = a.dim() == 1, vb = b.dim() == 1;
  Tensor r = mm(va ? unsqueeze(a, 0) : a, vb ? unsqueeze(b, 1) : b, false, false);
  if (vb) r = squeeze(r, -1);
  if (va) r = squeeze(r, vb ? -1 : -2);
  return r;
}

Tensor dot(const Tensor& a, const Tensor& b) {
  check_pair("dot", a, b);
  if (a.shape() != b.shape()) throw Error("dot: shapes " + to_string(a.shape()) + " and " + to_string(b.shape()) + " differ");
  return sum(mul(a, b));
}

// ---------------------------------------------------------------- dtype / device
Tensor to_dtype(const Tensor& x, DType t) {
  check_defined("to_dtype", x);
  if (x.dtype() == t) return x;
  Tensor out = empty(x.shape(), {t, x.device()});
  be(x).cast(x, out);
  if (is_floating(t) && any_requires_grad({&x}))
    record(out, "to_dtype", {x}, {}, false, [from = x.dtype()](const Tensor& g, const RuleContext&) {
      return std::vector<Tensor>{to_dtype(g, from)};
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
    record(out, "to_device", {x}, {}, false, [from = x.device()](const Tensor& g, const RuleContext&) {
      return std::vector<Tensor>{to_device(g, from)};
    });
  return out;
}

}  // namespace flatmin
