// Elementwise ops (binary ops broadcast with NumPy rules), their derivative rules, and the
// non-differentiable masks (sign, comparisons) that rules use as constants; exact at every
// order wherever the op is smooth (away from kinks and ties).
// Each op: its checks, the forward kernel call, the one derivative rule and the forward
// rule (Taylor recurrences, docs/taylor.md), recorded under its registry entry
// (op_registry.hpp). Rules use only differentiable ops from ops.hpp, so with recording on
// they are themselves differentiated (Hessian-vector products, third-order terms).
#include "autodiff/ops.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autodiff/graph.hpp"
#include "autodiff/jet_rules.hpp"
#include "autodiff/op_checks.hpp"

namespace flatmin {

namespace {
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
}  // namespace

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

// ---------------------------------------------------------------- elementwise binary
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::add, a, b, "add");
  if (any_requires_grad({&a, &b}))
    record(
        out, Op::add, {a, b}, {},
        [sa = a.shape(), sb = b.shape()](const Tensor& g, const RuleContext& c) {
          return std::vector<Tensor>{c.needs(0) ? sum_to(g, sa) : Tensor(), c.needs(1) ? sum_to(g, sb) : Tensor()};
        },
        [](const std::vector<Jet>& in, const Tensor&) {
          Jet y(jet::order(in) + 1);
          for (size_t k = 1; k < y.size(); ++k) y[k] = jet::plus(in[0][k], in[1][k]);
          return y;
        });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::sub, a, b, "sub");
  if (any_requires_grad({&a, &b}))
    record(
        out, Op::sub, {a, b}, {},
        [sa = a.shape(), sb = b.shape()](const Tensor& g, const RuleContext& c) {
          return std::vector<Tensor>{c.needs(0) ? sum_to(g, sa) : Tensor(), c.needs(1) ? sum_to(neg(g), sb) : Tensor()};
        },
        [](const std::vector<Jet>& in, const Tensor&) {
          Jet y(jet::order(in) + 1);
          for (size_t k = 1; k < y.size(); ++k) y[k] = jet::minus(in[0][k], in[1][k]);
          return y;
        });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::mul, a, b, "mul");
  if (any_requires_grad({&a, &b}))
    record(
        out, Op::mul, {a, b}, {a, b},
        [](const Tensor& g, const RuleContext& c) {
          Tensor a = c.saved(0), b = c.saved(1);
          return std::vector<Tensor>{c.needs(0) ? sum_to(mul(g, b), a.shape()) : Tensor(),
                                     c.needs(1) ? sum_to(mul(g, a), b.shape()) : Tensor()};
        },
        [](const std::vector<Jet>& in, const Tensor&) { return jet::bilinear(in[0], in[1], jet::product); });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::div, a, b, "div");
  if (any_requires_grad({&a, &b}))
    record(
        out, Op::div, {a, b}, {b}, {.save_output = true},
        [sa = a.shape()](const Tensor& g, const RuleContext& c) {
          Tensor b = c.saved(0);
          Tensor gb;
          if (c.needs(1)) gb = sum_to(neg(div(mul(g, c.output()), b)), b.shape());
          return std::vector<Tensor>{c.needs(0) ? sum_to(div(g, b), sa) : Tensor(), gb};
        },
        [](const std::vector<Jet>& in, const Tensor& out) {  // c·b = a: c_k = (a_k − Σ_{j=1}^k b_j c_{k−j}) / b_0
          const Jet &a = in[0], &b = in[1];
          Jet c(a.size());
          c[0] = out;
          for (size_t k = 1; k < c.size(); ++k)
            c[k] = jet::over(jet::minus(a[k], jet::convolve(b, c, k, 1, k, jet::product, jet::one)), b[0]);
          return c;
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
  const Op op = is_max ? Op::maximum : Op::minimum;
  Tensor out = binary_kernel(is_max ? BinaryOp::maximum : BinaryOp::minimum, a, b, op_name(op));
  if (any_requires_grad({&a, &b}))
    record(
        out, op, {a, b}, {a, b},
        [is_max](const Tensor& g, const RuleContext& c) {
          Tensor a = c.saved(0), b = c.saved(1);
          Tensor m = winner_mask(a.detach(), b.detach(), is_max);
          return std::vector<Tensor>{c.needs(0) ? sum_to(mul(g, m), a.shape()) : Tensor(),
                                     c.needs(1) ? sum_to(mul(g, rsub_scalar(m, 1.0)), b.shape()) : Tensor()};
        },
        [is_max](const std::vector<Jet>& in, const Tensor&) {  // the winner's coefficients (the mask's at ties)
          const Jet &a = in[0], &b = in[1];
          if (jet::order(in) > 1)
            check_no_kink(is_max ? "maximum" : "minimum", eq(a[0], b[0]), jet::order(in), "a tie of its two inputs");
          Tensor m = winner_mask(a[0], b[0], is_max), rest = rsub_scalar(m, 1.0);
          Jet y(a.size());
          for (size_t k = 1; k < y.size(); ++k) y[k] = jet::plus(jet::times(a[k], m), jet::times(b[k], rest));
          return y;
        });
  return out;
}
Tensor maximum(const Tensor& a, const Tensor& b) { return extremum(a, b, true); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum(a, b, false); }

// ---------------------------------------------------------------- elementwise unary
// What a unary op's kernel takes and its rule reads back.
struct UnaryOptions {
  double param = 0;          // the kernel's scalar (exponent, addend, factor)
  bool save_input = false;   // the rule reads x
  bool save_output = false;  // the rule reads y
};
using UnaryRule = Tensor (*)(const Tensor& g, const Tensor& x, const Tensor& y, double param);
using UnaryForward = Jet (*)(const Jet& x, const Tensor& y, double param);
// A unary op: kernel k, then rule(g, x, y, param) and forward(x's jet, y, param) recorded under op.
static Tensor unary_op(Op op, UnaryOp k, const Tensor& x, UnaryOptions o, UnaryRule rule, UnaryForward forward) {
  check_floating(op_name(op), x);
  const double param = o.param;
  Tensor out = unary_kernel(k, x, param);
  if (any_requires_grad({&x})) {
    // The closure holds two words, so std::function stores it without a heap allocation;
    // what was saved is read back from the node.
    Rule r = [rule, param](const Tensor& g, const RuleContext& c) {
      return std::vector<Tensor>{
          rule(g, c.node().saved.empty() ? Tensor() : c.saved(0), c.node().out_storage ? c.output() : Tensor(), param)};
    };
    auto f = [forward, param](const std::vector<Jet>& in, const Tensor& y) { return forward(in[0], y, param); };
    if (o.save_input)
      record(out, op, {x}, {x}, {.save_output = o.save_output}, std::move(r), f);
    else
      record(out, op, {x}, {}, {.save_output = o.save_output}, std::move(r), f);
  }
  return out;
}

// Forward rules of the linear unary ops.
static Jet same_jet(const Jet& x, const Tensor&, double) {
  return jet::map(x, [](const Tensor& t) { return t; });
}
static Jet neg_jet(const Jet& x, const Tensor&, double) {
  return jet::map(x, [](const Tensor& t) { return neg(t); });
}

Tensor neg(const Tensor& x) {
  return unary_op(
      Op::neg, UnaryOp::neg, x, {}, [](const Tensor& g, const Tensor&, const Tensor&, double) { return neg(g); },
      neg_jet);
}
Tensor add_scalar(const Tensor& x, double c) {
  return unary_op(
      Op::add_scalar, UnaryOp::add_scalar, x, {.param = c},
      [](const Tensor& g, const Tensor&, const Tensor&, double) { return g; }, same_jet);
}
Tensor mul_scalar(const Tensor& x, double c) {
  return unary_op(
      Op::mul_scalar, UnaryOp::mul_scalar, x, {.param = c},
      [](const Tensor& g, const Tensor&, const Tensor&, double c) { return mul_scalar(g, c); },
      [](const Jet& x, const Tensor&, double c) {
        return jet::map(x, [c](const Tensor& t) { return mul_scalar(t, c); });
      });
}
Tensor rsub_scalar(const Tensor& x, double c) {
  return unary_op(
      Op::rsub_scalar, UnaryOp::rsub_scalar, x, {.param = c},
      [](const Tensor& g, const Tensor&, const Tensor&, double) { return neg(g); }, neg_jet);
}

// y = x^p. Whole p from 2 to 16: repeated Cauchy products (exact at x = 0). Otherwise
// y_1 = p·x^(p−1)·x_1 and, from x·y' = p·y·x', k·x_0·y_k = Σ_{j=1}^k ((p+1)·j − k)·x_j·y_{k−j}
// for k >= 2 (which divides by x_0: NaN at x = 0, where x^p is not smooth).
static Jet pow_jet(const Jet& x, const Tensor& y0, double p) {
  if (p == 0) return Jet(x.size());
  if (p == std::floor(p) && p >= 1 && p <= 16) {
    Jet y = x;
    for (int i = 1; i < int(p); ++i) y = jet::bilinear(y, x, jet::product, true);
    return y;
  }
  Jet y(x.size());
  y[0] = y0;
  if (x.size() > 1) y[1] = jet::times(x[1], mul_scalar(pow(x[0], p - 1.0), p));
  for (size_t k = 2; k < y.size(); ++k)
    y[k] = jet::over(jet::convolve(x, y, k, 1, k, jet::product,
                                   [k, p](size_t j) { return ((p + 1) * double(j) - double(k)) / double(k); }),
                     x[0]);
  return y;
}
Tensor pow(const Tensor& x, double p) {
  return unary_op(
      Op::pow, UnaryOp::pow_scalar, x, {.param = p, .save_input = true},
      [](const Tensor& g, const Tensor& x, const Tensor&, double p) {
        if (p == 0.0) return mul_scalar(g, 0.0);
        if (p == 1.0) return g;
        if (p == 2.0) return mul(g, mul_scalar(x, 2.0));
        return mul(g, mul_scalar(pow(x, p - 1.0), p));
      },
      pow_jet);
}
Tensor square(const Tensor& x) { return pow(x, 2.0); }
Tensor reciprocal(const Tensor& x) {
  return unary_op(
      Op::reciprocal, UnaryOp::reciprocal, x, {.save_output = true},
      [](const Tensor& g, const Tensor&, const Tensor& y, double) { return neg(mul(g, square(y))); },
      [](const Jet& x, const Tensor& y0, double) {  // x·y = 1: y_k = −y_0·Σ_{j=1}^k x_j y_{k−j}
        Jet y(x.size());
        y[0] = y0;
        for (size_t k = 1; k < y.size(); ++k)
          y[k] = jet::times(jet::convolve(x, y, k, 1, k, jet::product, jet::one), neg(y0));
        return y;
      });
}
Tensor exp(const Tensor& x) {
  return unary_op(
      Op::exp, UnaryOp::exp, x, {.save_output = true},
      [](const Tensor& g, const Tensor&, const Tensor& y, double) { return mul(g, y); },
      [](const Jet& x, const Tensor& y0, double) {  // y' = y·x'
        return jet::integrate(x, y0, y0, [](const Jet& y, const Jet&, size_t m) { return y[m]; });
      });
}
Tensor log(const Tensor& x) {
  return unary_op(
      Op::log, UnaryOp::log, x, {.save_input = true},
      [](const Tensor& g, const Tensor& x, const Tensor&, double) { return div(g, x); },
      [](const Jet& x, const Tensor& y0, double) {
        // x·y' = x': y_k = (x_k − (1/k) Σ_{j=1}^{k−1} j·y_j·x_{k−j}) / x_0
        Jet y(x.size());
        y[0] = y0;
        for (size_t k = 1; k < y.size(); ++k)
          y[k] = jet::over(jet::minus(x[k], jet::convolve(y, x, k, 1, k - 1, jet::product,
                                                          [k](size_t j) { return double(j) / double(k); })),
                           x[0]);
        return y;
      });
}
Tensor sqrt(const Tensor& x) {
  return unary_op(
      Op::sqrt, UnaryOp::sqrt, x, {.save_output = true},
      [](const Tensor& g, const Tensor&, const Tensor& y, double) { return div(mul_scalar(g, 0.5), y); },
      [](const Jet& x, const Tensor& y0, double) {
        // y·y = x: y_k = (x_k − Σ_{j=1}^{k−1} y_j y_{k−j}) / (2 y_0)
        Jet y(x.size());
        y[0] = y0;
        const Tensor twice = mul_scalar(y0, 2.0);
        for (size_t k = 1; k < y.size(); ++k)
          y[k] = jet::over(jet::minus(x[k], jet::convolve(y, y, k, 1, k - 1, jet::product, jet::one)), twice);
        return y;
      });
}
Tensor rsqrt(const Tensor& x) {
  return unary_op(
      Op::rsqrt, UnaryOp::rsqrt, x, {.save_output = true},  // d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
      [](const Tensor& g, const Tensor&, const Tensor& y, double) { return mul(g, mul_scalar(pow(y, 3.0), -0.5)); },
      [](const Jet& x, const Tensor& y0, double) { return pow_jet(x, y0, -0.5); });
}
Tensor tanh(const Tensor& x) {
  return unary_op(
      Op::tanh, UnaryOp::tanh, x, {.save_output = true},
      [](const Tensor& g, const Tensor&, const Tensor& y, double) { return tanh_backward(g, y); },
      [](const Jet& x, const Tensor& y0, double) {  // y' = z·x' with z = 1 − y²
        return jet::integrate(x, y0, rsub_scalar(square(y0), 1.0), [](const Jet& y, const Jet&, size_t m) {
          return jet::scaled(jet::convolve(y, y, m, 0, m, jet::product, jet::one), -1.0);
        });
      });
}
// g·(1 − y²): tanh's VJP as one op, so a derivative of order k records one op per tanh
// where the composite g·(1 − y²) recorded three (square, rsub_scalar, mul), and its own
// rule again writes each order with differentiable ops. Unlike relu_backward it is smooth
// in y: d/dg = tanh_backward(w, y), d/dy = −2·y·g·w.
Tensor tanh_backward(const Tensor& g, const Tensor& y) {
  check_floating("tanh_backward", g);
  if (g.shape() != y.shape())
    throw Error("tanh_backward: gradient " + to_string(g.shape()) + " and output " + to_string(y.shape()) +
                " differ in shape");
  Tensor out = binary_kernel(BinaryOp::tanh_backward, g, y, "tanh_backward");
  if (any_requires_grad({&g, &y}))
    record(
        out, Op::tanh_backward, {g, y}, {g, y},
        [](const Tensor& w, const RuleContext& c) {
          Tensor g = c.saved(0), y = c.saved(1), gy;
          // (g·w)·(−2) before the product with y: where g and w are constants (a gradient's
          // seed and cotangent, as in Hessian-vector products) only the last product is recorded.
          if (c.needs(1)) gy = mul(y, mul_scalar(mul(g, w), -2.0));
          return std::vector<Tensor>{c.needs(0) ? tanh_backward(w, y) : Tensor(), gy};
        },
        [](const std::vector<Jet>& in, const Tensor&) {  // g times the series z = 1 − y² (docs/taylor.md)
          const Jet &g = in[0], &y = in[1];
          Jet z(y.size());
          z[0] = rsub_scalar(square(y[0]), 1.0);
          for (size_t k = 1; k < z.size(); ++k)
            z[k] = jet::scaled(jet::convolve(y, y, k, 0, k, jet::product, jet::one), -1.0);
          return jet::bilinear(g, z, jet::product);
        });
  return out;
}
// The jet of σ(x), σ' = z·x' with z = σ − σ².
static Jet sigmoid_jet(const Jet& x, const Tensor& y0) {
  return jet::integrate(x, y0, sub(y0, square(y0)), [](const Jet& y, const Jet&, size_t m) {
    return jet::minus(y[m], jet::convolve(y, y, m, 0, m, jet::product, jet::one));
  });
}
Tensor sigmoid(const Tensor& x) {
  return unary_op(
      Op::sigmoid, UnaryOp::sigmoid, x, {.save_output = true},
      [](const Tensor& g, const Tensor&, const Tensor& y, double) { return mul(g, mul(y, rsub_scalar(y, 1.0))); },
      [](const Jet& x, const Tensor& y0, double) { return sigmoid_jet(x, y0); });
}
Tensor softplus(const Tensor& x) {
  return unary_op(
      Op::softplus, UnaryOp::softplus, x, {.save_input = true},
      [](const Tensor& g, const Tensor& x, const Tensor&, double) { return mul(g, sigmoid(x)); },
      [](const Jet& x, const Tensor& y0, double) {  // y' = σ(x)·x'
        const Jet s = sigmoid_jet(x, sigmoid(x[0]));
        return jet::integrate(x, y0, s[0], [&s](const Jet&, const Jet&, size_t m) { return s[m]; });
      });
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
    record(
        out, Op::relu_backward, {g}, {y.detach()},
        [](const Tensor& gg, const RuleContext& c) { return std::vector<Tensor>{relu_backward(gg, c.saved(0))}; },
        [&y](const std::vector<Jet>& in, const Tensor&) {  // linear in g (y is a constant)
          return jet::map(in[0], [&y](const Tensor& t) { return relu_backward(t, y.detach()); });
        });
  return out;
}
// Saves its output, not its input (y > 0 exactly where x > 0): in a network the output is
// what the next layer saves anyway, so the input (a batch norm's output) can be freed.
Tensor relu(const Tensor& x) {
  return unary_op(
      Op::relu, UnaryOp::relu, x, {.save_output = true},
      [](const Tensor& g, const Tensor&, const Tensor& y, double) { return relu_backward(g, y); },
      [](const Jet& x, const Tensor& y0, double) {  // the branch taken: x_k where x > 0, else 0
        if (x.size() > 2) check_no_kink("relu", eq(x[0], scalar_like(0.0, x[0])), x.size() - 1, "an input equal to 0");
        return jet::map(x, [&y0](const Tensor& t) { return relu_backward(t, y0); });
      });
}
Tensor abs(const Tensor& x) {
  return unary_op(
      Op::abs, UnaryOp::abs, x, {.save_input = true},
      [](const Tensor& g, const Tensor& x, const Tensor&, double) { return mul(g, sign(x.detach())); },
      [](const Jet& x, const Tensor&, double) {  // sign(x)·x_k (0 at x = 0, as the reverse rule)
        if (x.size() > 2) check_no_kink("abs", eq(x[0], scalar_like(0.0, x[0])), x.size() - 1, "an input equal to 0");
        const Tensor s = sign(x[0]);
        return jet::map(x, [&s](const Tensor& t) { return mul(t, s); });
      });
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_pair("where", a, b);
  check_defined("where", cond, "condition");
  if (cond.device() != a.device())
    throw Error("where: condition on " + cond.device().str() + ", values on " + a.device().str());
  Tensor c = cond.dtype() == a.dtype() ? cond : to_dtype(cond.detach(), a.dtype());
  Shape s = broadcast_shapes(broadcast_shapes(c.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = empty(s, a.options());
  be(a).where(c, a, b, out);
  if (any_requires_grad({&a, &b}))
    record(
        out, Op::where, {a, b}, {c.detach()},
        [sa = a.shape(), sb = b.shape()](const Tensor& g, const RuleContext& ctx) {
          Tensor c = ctx.saved(0), z = scalar_like(0.0, g);
          return std::vector<Tensor>{ctx.needs(0) ? sum_to(where(c, g, z), sa) : Tensor(),
                                     ctx.needs(1) ? sum_to(where(c, z, g), sb) : Tensor()};
        },
        [&c](const std::vector<Jet>& in, const Tensor& out) {  // the condition is a constant
          Jet y(jet::order(in) + 1);
          const Tensor z = scalar_like(0.0, out);
          for (size_t k = 1; k < y.size(); ++k)
            if (in[0][k].defined() || in[1][k].defined())
              y[k] = where(c.detach(), in[0][k].defined() ? in[0][k] : z, in[1][k].defined() ? in[1][k] : z);
          return y;
        });
  return out;
}

// ---------------------------------------------------------------- constants (never recorded)
Tensor sign(const Tensor& x) {
  check_floating("sign", x);
  return unary_kernel(UnaryOp::sign, x);
}
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

}  // namespace flatmin
