// Taylor remainders shrink like ρ^(k+1) (docs/algorithms.md §2), and the trace identity
// Σ_i ∇³f[e_i, e_i] = ∇ tr ∇²f.
#include <doctest/doctest.h>

#include <cmath>

#include "autodiff/autodiff.hpp"

using namespace flatmin;

namespace {
const TensorOptions f64{DType::f64};

// Two-layer tanh network's squared loss on a fixed batch; parameters (W1, W2).
ScalarFn two_layer() {
  Generator g(11);
  Tensor X = g.normal({8, 3}, f64), Y = g.normal({8, 2}, f64);
  return [X, Y](const Params& p) { return mean(square(sub(matmul(tanh(matmul(X, p[0])), p[1]), Y))); };
}
ScalarFn log_sum_exp() {
  return [](const Params& p) { return logsumexp(p[0], 0); };
}
ScalarFn example1() {  // f(x1, x2) = (x1 x2 − 1)²
  return [](const Params& p) {
    Tensor x1 = slice(p[0], 0, 0, 1), x2 = slice(p[0], 0, 1, 2);
    return sum(square(add_scalar(mul(x1, x2), -1.0)));
  };
}

void check_slopes(const ScalarFn& f, const Params& x, bool of_gradient) {
  // A random direction tilted toward ∇f: when ⟨∇f, u⟩ ≈ 0 the order-0 remainder starts out
  // like ρ² and its slope over these radii says nothing about the expansion.
  Generator g(21);
  Params u = axpy(1.0 / norm(flatmin::gradient(f, x)).item(), flatmin::gradient(f, x), g.sphere_like(x));
  u = scale(1.0 / norm(u).item(), u);
  TaylorReport r = taylor_check(f, x, u, {.max_order = 3, .gradient = of_gradient});
  for (int k = 0; k <= 2; ++k) {
    INFO("order " << k << " slope " << r.slope[k] << " from " << r.used[k] << " radii, gradient=" << of_gradient);
    CHECK(r.used[k] >= 4);
    CHECK(std::fabs(r.slope[k] - (k + 1)) < 0.15);
  }
  if (r.used[3] >= 4) CHECK(std::fabs(r.slope[3] - 4) < 0.3);
}
}  // namespace

TEST_CASE("Taylor remainders of f and of its gradient have slopes k+1") {
  Generator g(1);
  check_slopes(two_layer(), {g.normal({3, 5}, f64), g.normal({5, 2}, f64)}, false);
  check_slopes(two_layer(), {g.normal({3, 5}, f64), g.normal({5, 2}, f64)}, true);
  check_slopes(log_sum_exp(), {g.normal({6}, f64)}, false);
  check_slopes(log_sum_exp(), {g.normal({6}, f64)}, true);
  check_slopes(example1(), {from_vector(std::vector<double>{1.7, 0.4}, {2}, f64)}, false);
  check_slopes(example1(), {from_vector(std::vector<double>{1.7, 0.4}, {2}, f64)}, true);
}

TEST_CASE("a wrong derivative gives the wrong Taylor slope") {
  // Example 1 with a first-order-only shortcut: the second-order remainder stops shrinking like ρ³.
  ScalarFn bad = [](const Params& p) {
    Tensor x1 = slice(p[0], 0, 0, 1), x2 = slice(p[0], 0, 1, 2);
    Tensor r = add_scalar(mul(x1, x2), -1.0);
    return sum(mul(r, r.detach()));  // gradient 2·r·∇r halved: wrong already at first order
  };
  Params x = {from_vector(std::vector<double>{1.7, 0.4}, {2}, f64)};
  Generator g(2);
  TaylorReport r = taylor_check(bad, x, g.sphere_like(x));
  CHECK(std::fabs(r.slope[1] - 2) > 0.5);
}

TEST_CASE("trace identity: Σ_i ∇³f[e_i, e_i] = ∇ tr ∇²f") {
  ScalarFn f = two_layer();
  Generator g(5);
  Params x = {g.normal({3, 4}, f64), g.normal({4, 2}, f64)};
  const int64_t d = numel(x);
  Params lhs = zeros_like(x);
  // ∇ tr ∇²f, with tr ∇²f = Σ_i ⟨e_i, H e_i⟩ built differentiably
  Params xl = leaves(x);
  Tensor tr;
  for (int64_t i = 0; i < d; ++i) {
    Tensor e = zeros({d}, f64);
    data_ptr<double>(e)[i] = 1;
    Params ei = unflatten(e, x);
    lhs = axpy(1.0, third(f, x, ei, ei), lhs);
    Tensor term = dot(ei, hvp(f, xl, ei, {.create_graph = true}));
    tr = tr.defined() ? add(tr, term) : term;
  }
  Params rhs = grad({tr}, xl);
  for (size_t k = 0; k < x.size(); ++k) {
    auto a = lhs[k].to_vector(), b = rhs[k].to_vector();
    for (size_t j = 0; j < a.size(); ++j) CHECK(a[j] == doctest::Approx(b[j]).epsilon(1e-10));
  }
}

TEST_CASE("Example 1: tr ∇²f = 2(x1² + x2²) and its gradient 4x") {
  ScalarFn f = example1();
  Params x = {from_vector(std::vector<double>{4.0, 0.25}, {2}, f64)};
  Tensor H = hessian(f, x);
  auto h = H.to_vector();
  CHECK(h[0] + h[3] == doctest::Approx(2 * (16 + 0.0625)).epsilon(1e-13));
  Params e0 = {from_vector(std::vector<double>{1, 0}, {2}, f64)},
         e1 = {from_vector(std::vector<double>{0, 1}, {2}, f64)};
  Params gt = axpy(1.0, third(f, x, e0, e0), third(f, x, e1, e1));
  auto v = gt[0].to_vector();
  CHECK(v[0] == doctest::Approx(16.0).epsilon(1e-13));
  CHECK(v[1] == doctest::Approx(1.0).epsilon(1e-13));
}
