#include "autodiff/functional.hpp"

#include <cmath>

namespace flatmin {

static void check_lists(const char* op, const Params& a, const Params& b) {
  if (a.size() != b.size())
    throw Error(std::string(op) + ": lists of " + std::to_string(a.size()) + " and " + std::to_string(b.size()) +
                " tensors");
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].shape() != b[i].shape())
      throw Error(std::string(op) + ": tensor " + std::to_string(i) + " has shapes " + to_string(a[i].shape()) +
                  " and " + to_string(b[i].shape()));
}

// x and a direction of x's shapes, dtypes and devices (else Error naming `what`).
static void check_direction(const char* op, const char* what, const Params& x, const Params& d) {
  if (x.size() != d.size())
    throw Error(std::string(op) + ": " + what + " has " + std::to_string(d.size()) + " tensors for " +
                std::to_string(x.size()) + " inputs");
  for (size_t i = 0; i < x.size(); ++i) {
    if (!d[i].defined() || d[i].shape() != x[i].shape())
      throw Error(std::string(op) + ": " + what + "[" + std::to_string(i) + "] has shape " +
                  (d[i].defined() ? to_string(d[i].shape()) : std::string("undefined")) + " but x[" +
                  std::to_string(i) + "] has shape " + to_string(x[i].shape()));
    if (d[i].dtype() != x[i].dtype() || d[i].device() != x[i].device())
      throw Error(std::string(op) + ": " + what + "[" + std::to_string(i) + "] is " + dtype_name(d[i].dtype()) +
                  " on " + d[i].device().str() + " but x[" + std::to_string(i) + "] is " + dtype_name(x[i].dtype()) +
                  " on " + x[i].device().str());
  }
}
Tensor dot(const Params& a, const Params& b) {
  check_lists("dot", a, b);
  if (a.empty()) throw Error("dot: empty lists");
  Tensor s = dot(a[0], b[0]);
  for (size_t i = 1; i < a.size(); ++i) s = add(s, dot(a[i], b[i]));
  return s;
}
Tensor norm(const Params& a) { return sqrt(dot(a, a)); }
Params axpy(double alpha, const Params& x, const Params& y) {
  check_lists("axpy", x, y);
  Params r;
  for (size_t i = 0; i < x.size(); ++i) r.push_back(add(mul_scalar(x[i], alpha), y[i]));
  return r;
}
Params scale(double alpha, const Params& x) {
  Params r;
  for (const Tensor& t : x) r.push_back(mul_scalar(t, alpha));
  return r;
}
Params detach(const Params& x) {
  Params r;
  for (const Tensor& t : x) r.push_back(t.detach());
  return r;
}
Params zeros_like(const Params& x) {
  Params r;
  for (const Tensor& t : x) r.push_back(zeros_like(t));
  return r;
}
Params leaves(const Params& x) {
  Params r;
  for (const Tensor& t : x) {
    Tensor l = t.detach();
    l.requires_grad_();
    r.push_back(l);
  }
  return r;
}
Tensor flatten(const Params& x) {
  if (x.empty()) throw Error("flatten: empty list");
  std::vector<Tensor> flat;
  for (const Tensor& t : x) flat.push_back(reshape(t, {t.numel()}));
  return flat.size() == 1 ? flat[0] : concat(flat, 0);
}
Params unflatten(const Tensor& flat, const Params& like) {
  if (flat.dim() != 1 || flat.numel() != numel(like))
    throw Error("unflatten: " + to_string(flat.shape()) + " does not hold " + std::to_string(numel(like)) +
                " elements");
  Params r;
  int64_t at = 0;
  for (const Tensor& t : like) {
    r.push_back(reshape(slice(flat, 0, at, at + t.numel()), t.shape()));
    at += t.numel();
  }
  return r;
}
int64_t numel(const Params& x) {
  int64_t n = 0;
  for (const Tensor& t : x) n += t.numel();
  return n;
}
Params project_out(const Params& u, const Params& w) {
  check_lists("project_out", u, w);
  const double uu = dot(u, u).item();
  if (uu == 0.0) return w;
  const double uw = dot(u, w).item();
  return axpy(-uw / uu, u, w);
}

Tensor value(const ScalarFn& f, const Params& x) {
  NoGrad ng;
  return f(x);
}

static Tensor checked_scalar(const char* op, const Tensor& y) {
  if (!y.defined() || y.numel() != 1)
    throw Error(std::string(op) + ": the function must return a scalar, got " +
                (y.defined() ? to_string(y.shape()) : std::string("undefined")));
  return y;
}

namespace {
// grad() of s with respect to xs, with zeros where s does not depend on an input.
Params grad_or_zeros(const Tensor& s, const Params& xs, bool create_graph) {
  if (!s.requires_grad()) return zeros_like(detach(xs));
  Params g = grad({s}, xs, {.create_graph = create_graph, .allow_unused = true});
  for (size_t i = 0; i < g.size(); ++i)
    if (!g[i].defined()) g[i] = zeros_like(xs[i].detach());
  return g;
}
// The derivatives at inputs xs that already require grad (nested calls share them).
Params gradient_at(const ScalarFn& f, const Params& xs, bool create_graph) {
  return grad_or_zeros(checked_scalar("gradient", f(xs)), xs, create_graph);
}
// d/dx Σ_i ⟨ys[i], ws[i]⟩ with the ws constant: one sweep seeded with the ws (the
// vector-Jacobian product), so no dot product is recorded, swept and differentiated again;
// zeros where nothing depends on xs.
Params vjp_or_zeros(const Params& ys, const Params& ws, const Params& xs, bool create_graph) {
  std::vector<Tensor> outputs, seeds;
  for (size_t i = 0; i < ys.size(); ++i)
    if (ys[i].requires_grad()) {
      outputs.push_back(ys[i]);
      seeds.push_back(ws[i].detach());
    }
  Params g(xs.size());
  if (!outputs.empty())
    g = grad(outputs, xs, {.grad_outputs = seeds, .create_graph = create_graph, .allow_unused = true});
  for (size_t i = 0; i < g.size(); ++i)
    if (!g[i].defined()) g[i] = zeros_like(xs[i].detach());
  return g;
}
Params hvp_at(const ScalarFn& f, const Params& xs, const Params& v, bool create_graph) {
  return vjp_or_zeros(gradient_at(f, xs, true), v, xs, create_graph);
}
// With create_graph the caller's own tensors are differentiated (so the result stays
// connected to them); otherwise fresh leaves are.
Params inputs_for(const Params& x, bool create_graph) {
  if (!create_graph) return leaves(x);
  Params xs = x;
  for (auto& t : xs)
    if (!t.requires_grad()) t = leaves({t})[0];
  return xs;
}
}  // namespace

Params gradient(const ScalarFn& f, const Params& x, DiffOptions opt) {
  EnableGrad on;
  return gradient_at(f, inputs_for(x, opt.create_graph), opt.create_graph);
}

Params hvp(const ScalarFn& f, const Params& x, const Params& v, DiffOptions opt) {
  check_direction("hvp", "v", x, v);
  EnableGrad on;
  return hvp_at(f, inputs_for(x, opt.create_graph), v, opt.create_graph);
}

Params third(const ScalarFn& f, const Params& x, const Params& u, const Params& v, DiffOptions opt) {
  check_direction("third", "u", x, u);
  check_direction("third", "v", x, v);
  EnableGrad on;
  Params xs = inputs_for(x, opt.create_graph);
  return vjp_or_zeros(hvp_at(f, xs, u, true), v, xs, opt.create_graph);
}

Tensor jvp(const VectorFn& f, const Params& x, const Params& v, DiffOptions opt) {
  check_lists("jvp", x, v);
  EnableGrad on;
  Params xs = leaves(x);
  Tensor y = f(xs);
  if (!y.requires_grad()) return zeros_like(y.detach());
  // J v = d/dw ⟨J^T w, v⟩ for a dummy cotangent w: the vjp is linear in w.
  Tensor w = zeros_like(y.detach());
  w.requires_grad_();
  auto vjp = grad({y}, xs, {.grad_outputs = {w}, .create_graph = true, .allow_unused = true});
  Tensor s;
  for (size_t i = 0; i < vjp.size(); ++i)
    if (vjp[i].defined()) s = s.defined() ? add(s, dot(vjp[i], v[i].detach())) : dot(vjp[i], v[i].detach());
  if (!s.defined() || !s.requires_grad()) return zeros_like(y.detach());
  return grad(s, w, {.create_graph = opt.create_graph, .allow_unused = true});
}

Tensor hessian(const ScalarFn& f, const Params& x) {
  const int64_t d = numel(x);
  if (d > 4096) throw Error("hessian: " + std::to_string(d) + " inputs is too many for a dense Hessian (limit 4096)");
  EnableGrad on;
  Params xs = leaves(x);
  Tensor gf = flatten(gradient_at(f, xs, true));
  std::vector<Tensor> rows;
  const TensorOptions o = x[0].options();
  for (int64_t i = 0; i < d; ++i) {
    Tensor row;
    if (gf.requires_grad()) {
      Tensor e;  // the i-th unit vector
      {
        NoGrad ng;
        e = slice_backward(ones({1}, o), {d}, 0, i, 1);
      }
      auto r = grad({gf}, xs, {.grad_outputs = {e}, .retain_graph = 1, .allow_unused = true});
      for (size_t k = 0; k < r.size(); ++k)
        if (!r[k].defined()) r[k] = zeros_like(x[k].detach());
      row = flatten(r);
    } else {
      row = zeros({d}, o);
    }
    rows.push_back(row);
  }
  return stack(rows, 0);
}

static ScalarFn lift(const ScalarFn1& f) {
  return [f](const Params& p) { return f(p[0]); };
}
Tensor gradient(const ScalarFn1& f, const Tensor& x, DiffOptions opt) { return gradient(lift(f), Params{x}, opt)[0]; }
Tensor hvp(const ScalarFn1& f, const Tensor& x, const Tensor& v, DiffOptions opt) {
  return hvp(lift(f), Params{x}, Params{v}, opt)[0];
}
Tensor third(const ScalarFn1& f, const Tensor& x, const Tensor& u, const Tensor& v, DiffOptions opt) {
  return third(lift(f), Params{x}, Params{u}, Params{v}, opt)[0];
}
Tensor hessian(const ScalarFn1& f, const Tensor& x) {
  return reshape(hessian(lift(f), Params{x}), {x.numel(), x.numel()});
}

DirectionalDerivatives directional_derivatives(const ScalarFn& f, const Params& x, const Params& u, int order) {
  check_lists("directional_derivatives", x, u);
  if (order < 0) throw Error("directional_derivatives: negative order");
  EnableGrad on;
  Params xs = leaves(x), ud = detach(u);
  DirectionalDerivatives r;
  Tensor s = checked_scalar("directional_derivatives", f(xs));
  r.values.push_back(s.item());
  for (int j = 1; j <= order; ++j) {
    Params g;
    if (s.requires_grad()) {
      g = grad({s}, xs, {.create_graph = j < order, .allow_unused = true});
      for (size_t i = 0; i < g.size(); ++i)
        if (!g[i].defined()) g[i] = zeros_like(ud[i]);
    } else {
      g = zeros_like(ud);
    }
    s = dot(g, ud);
    r.values.push_back(s.item());
    r.grads.push_back(detach(g));
  }
  return r;
}

// ---- forward mode and Taylor mode ----
// x's tensors carrying the series x + t·u of order K (no graph).
static Params seeded(const Params& x, const Params& u, size_t order) {
  Params r;
  for (size_t i = 0; i < x.size(); ++i) {
    std::vector<Tensor> terms(order);
    terms[0] = u[i].detach();
    r.push_back(with_series(x[i], terms));
  }
  return r;
}

JvpResult jvp_forward(const VectorFn& f, const Params& x, const Params& v) {
  check_direction("jvp_forward", "v", x, v);
  NoGrad ng;
  const Tensor y = f(seeded(detach(x), v, 1));
  if (!y.defined()) throw Error("jvp_forward: the function returned an undefined tensor");
  return {y.detach(), series_term(y, 1)};
}

Params hvp_forward_over_reverse(const ScalarFn& f, const Params& x, const Params& v) {
  check_direction("hvp_forward_over_reverse", "v", x, v);
  EnableGrad on;
  const Params xs = seeded(leaves(x), v, 1);
  const Tensor s = checked_scalar("hvp_forward_over_reverse", f(xs));
  Params g;
  if (s.requires_grad()) g = grad({s}, xs, {.allow_unused = true});
  Params hv;
  for (size_t i = 0; i < xs.size(); ++i)
    hv.push_back(i < g.size() && g[i].defined() ? series_term(g[i], 1) : zeros_like(x[i].detach()));
  return hv;
}

TaylorCoefficients taylor_coefficients(const ScalarFn& f, const Params& x, const Params& u, int order) {
  if (order < 0 || order > max_taylor_order)
    throw Error("taylor_coefficients: order " + std::to_string(order) + " is outside 0.." +
                std::to_string(max_taylor_order) +
                " (each intermediate is held order+1 times and smooth ops cost "
                "O(order²) products)");
  check_direction("taylor_coefficients", "u", x, u);
  NoGrad ng;
  const Tensor y =
      checked_scalar("taylor_coefficients", f(order == 0 ? detach(x) : seeded(detach(x), u, size_t(order))));
  TaylorCoefficients r;
  double factorial = 1;
  for (int k = 0; k <= order; ++k) {
    if (k > 0) factorial *= k;
    const double c = k == 0 ? y.item() : series_term(y, size_t(k)).item();
    r.coefficients.push_back(c);
    r.derivatives.push_back(c * factorial);
  }
  return r;
}

}  // namespace flatmin
