// Internal to autodiff/ (not installed): the building blocks of the ops' forward rules,
// on jets (graph.hpp: [0] the value, [k] the k-th normalized Taylor coefficient, undefined
// where zero). Formulas: docs/taylor.md.
#pragma once
#include <cstddef>
#include <vector>

#include "autodiff/graph.hpp"
#include "autodiff/ops.hpp"

namespace flatmin::jet {

// The order K of a rule's jets (all inputs share it).
inline size_t order(const std::vector<Jet>& in) { return in[0].size() - 1; }

// Arithmetic where an undefined tensor is zero.
inline Tensor plus(const Tensor& a, const Tensor& b) { return !a.defined() ? b : !b.defined() ? a : add(a, b); }
inline Tensor minus(const Tensor& a, const Tensor& b) { return !b.defined() ? a : !a.defined() ? neg(b) : sub(a, b); }
inline Tensor times(const Tensor& a, const Tensor& b) { return a.defined() && b.defined() ? mul(a, b) : Tensor(); }
inline Tensor scaled(const Tensor& a, double c) { return a.defined() ? mul_scalar(a, c) : Tensor(); }
inline Tensor over(const Tensor& a, const Tensor& b) { return a.defined() ? div(a, b) : Tensor(); }

// A linear op applied to each coefficient: y_k = f(x_k).
template <class F> Jet map(const Jet& x, F f) {
  Jet y(x.size());
  for (size_t k = 1; k < x.size(); ++k)
    if (x[k].defined()) y[k] = f(x[k]);
  return y;
}

// Σ_{j=lo}^{hi} w(j)·B(a_j, b_{k−j}), skipping zero terms (undefined when all are).
template <class B, class W> Tensor convolve(const Jet& a, const Jet& b, size_t k, size_t lo, size_t hi, B bil, W w) {
  Tensor s;
  for (size_t j = lo; j <= hi; ++j) {
    if (!a[j].defined() || !b[k - j].defined()) continue;
    const double c = w(j);
    if (c == 0) continue;
    Tensor t = bil(a[j], b[k - j]);
    s = plus(s, c == 1 ? t : mul_scalar(t, c));
  }
  return s;
}
inline double one(size_t) { return 1.0; }
inline Tensor product(const Tensor& a, const Tensor& b) { return mul(a, b); }

// A bilinear op's jet (the Cauchy product): c_k = Σ_{j=0}^k B(a_j, b_{k−j}); c_0 too when
// `with_value` (an intermediate jet whose value a later product reads).
template <class B> Jet bilinear(const Jet& a, const Jet& b, B bil, bool with_value = false) {
  Jet c(a.size());
  if (with_value) c[0] = bil(a[0], b[0]);
  for (size_t k = 1; k < a.size(); ++k) c[k] = convolve(a, b, k, 0, k, bil, one);
  return c;
}

// The jet of y with y' = z·x' (exp, tanh, sigmoid, softplus): k·y_k = Σ_{j=1}^k j·x_j·z_{k−j}.
// z_0 is given; next_z(y, z, m) gives z_m once y_0..y_m are known.
template <class Z> Jet integrate(const Jet& x, const Tensor& y0, const Tensor& z0, Z next_z) {
  const size_t K = x.size() - 1;
  Jet y(K + 1), z(K + 1);
  y[0] = y0;
  z[0] = z0;
  for (size_t k = 1; k <= K; ++k) {
    y[k] = convolve(x, z, k, 1, k, product, [k](size_t j) { return double(j) / double(k); });
    if (k < K) z[k] = next_z(y, z, k);
  }
  return y;
}

// A tensor carrying the jet's series (undefined for an undefined value).
inline Tensor carrying(const Jet& j) {
  if (!j[0].defined()) return Tensor();
  return with_series(j[0], std::vector<Tensor>(j.begin() + 1, j.end()));
}
// The jet of an op written as a composite of ops: the composite run on inputs carrying
// their series (each op of it propagates with its own rule).
template <class F> Jet through(const std::vector<Jet>& in, F composite) {
  std::vector<Tensor> xs;
  for (const Jet& j : in) xs.push_back(carrying(j));
  const Tensor y = composite(xs);
  Jet r(order(in) + 1);
  for (size_t k = 1; k < r.size(); ++k) r[k] = series_term(y, k);
  return r;
}

}  // namespace flatmin::jet
