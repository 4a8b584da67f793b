// Flatness tools against exact values: Hutchinson vs the trace of the dense Hessian,
// power iteration vs Jacobi eigenvalues of the dense Hessian (written out here, independent
// of the library), ∇tr̄ vs finite differences of the dense trace, and the certificate on
// Example 1 against values worked out by hand.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "optim/sharpness.hpp"

using namespace flatmin;
using namespace flatmin::optim;

namespace {
const TensorOptions f64{DType::f64};
Tensor vec(std::vector<double> v) { return from_vector(v, {int64_t(v.size())}, f64); }

struct Net {  // two-layer tanh network, squared loss; parameters W1 (4x3), W2 (3x2)
  Tensor X, Y;
  Net() {
    Generator g(8);
    X = g.normal({6, 4}, f64);
    Y = g.normal({6, 2}, f64);
  }
  ScalarFn f() const {
    Tensor X_ = X, Y_ = Y;
    return [X_, Y_](const Params& p) { return mean(square(sub(matmul(tanh(matmul(X_, p[0])), p[1]), Y_))); };
  }
};
Params net_point(uint64_t seed) {
  Generator g(seed);
  return {g.normal({4, 3}, f64), g.normal({3, 2}, f64)};
}
double dense_trace(const ScalarFn& f, const Params& x) {
  Tensor H = hessian(f, x);
  double t = 0;
  std::vector<double> h = H.to_vector();
  for (int64_t i = 0; i < H.size(0); ++i) t += h[size_t(i * H.size(0) + i)];
  return t;
}
// Cyclic Jacobi eigenvalues of a symmetric matrix (row-major n×n).
std::vector<double> jacobi_eigenvalues(std::vector<double> a, int n) {
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) off += a[p * n + q] * a[p * n + q];
    if (off < 1e-24) break;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) {
        if (std::fabs(a[p * n + q]) < 1e-300) continue;
        const double theta = (a[q * n + q] - a[p * n + p]) / (2 * a[p * n + q]);
        const double t = (theta >= 0 ? 1 : -1) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
      }
  }
  std::vector<double> ev(n);
  for (int i = 0; i < n; ++i) ev[i] = a[i * n + i];
  return ev;
}
}  // namespace

TEST_CASE("Hutchinson trace agrees with the dense Hessian's trace within its standard error") {
  Net net;
  ScalarFn f = net.f();
  Params x = net_point(1);
  const double exact = dense_trace(f, x);
  // all 100 samples (tol 0) so that the standard error is meaningful
  TraceEstimate t = hutchinson_trace(hvp_fn(f, x), x, {.max_samples = 100, .tol = 0.0, .seed = 4});
  INFO("exact " << exact << " estimate " << t.trace << " ± " << t.stderr_trace);
  CHECK(t.samples == 100);
  CHECK_FALSE(t.converged);
  CHECK(t.dim == 18);
  CHECK(t.stderr_trace > 0);
  CHECK(std::fabs(t.trace - exact) < 4 * t.stderr_trace);
  CHECK(t.trace_normalized == doctest::Approx(t.trace / 18));
  // default stopping rule: stops before the cap with the PyHessian tolerance
  TraceEstimate d = hutchinson_trace(hvp_fn(f, x), x);
  CHECK(d.samples <= 100);
  CHECK(d.samples >= 2);
  // a diagonal Hessian is estimated exactly by Rademacher vectors (zᵀDz = tr D)
  ScalarFn diag = [](const Params& p) { return sum(mul(vec({1.0, 2.0, 3.0}), square(p[0]))); };
  TraceEstimate e = hutchinson_trace(hvp_fn(diag, {vec({0.1, 0.2, 0.3})}), {vec({0, 0, 0})});
  CHECK(e.trace == doctest::Approx(12.0));
  CHECK(e.converged);
  CHECK(e.samples == 2);  // the second sample leaves the mean unchanged
}

TEST_CASE("Hutchinson's trace of a network loss recorded from leaves") {
  Net net;
  ScalarFn f = net.f();
  Params x = leaves(net_point(2));
  TraceEstimate t = hutchinson_trace(hvp_fn_of_leaves([&] { return f(x); }, x), x, {.tol = 0.0, .seed = 1});
  const double exact = dense_trace(f, x);
  CHECK(std::fabs(t.trace - exact) < 4 * t.stderr_trace);
}

TEST_CASE("power iteration finds the dense Hessian's largest eigenvalue") {
  Net net;
  ScalarFn f = net.f();
  Params x = net_point(3);
  Tensor H = hessian(f, x);
  std::vector<double> ev = jacobi_eigenvalues(H.to_vector(), int(H.size(0)));
  std::sort(ev.begin(), ev.end(), [](double a, double b) { return std::fabs(a) > std::fabs(b); });
  EigenEstimate e = top_eigenvalue(hvp_fn(f, x), x, {.max_iter = 1000, .tol = 1e-10, .seed = 2});
  INFO("Jacobi " << ev[0] << ", " << ev[1] << "  power " << e.value << " in " << e.iterations);
  CHECK(e.converged);
  CHECK(e.value == doctest::Approx(ev[0]).epsilon(1e-6));
  // the eigenvector: ‖Hv − λv‖ small
  Params hv = hvp(f, x, e.vector);
  CHECK(norm(axpy(-e.value, e.vector, hv)).item() < 1e-3 * std::fabs(e.value));
  // a known spectrum: f = ½ Σ λ_k y_k² in rotated coordinates y = Q x (Q a Householder reflection)
  ScalarFn known = [](const Params& p) {
    Tensor w = vec({1, 1, 1, 1}) / 2.0;  // unit vector: Q = I − 2wwᵀ
    Tensor y = sub(p[0], mul(w, mul_scalar(dot(w, p[0]), 2.0)));
    return sum(mul(vec({0.5, 3.5, -1.0, 2.0}), square(y))) / 2.0;
  };
  EigenEstimate k =
      top_eigenvalue(hvp_fn(known, {vec({0, 0, 0, 0})}), {vec({0, 0, 0, 0})}, {.max_iter = 2000, .tol = 1e-12});
  CHECK(k.value == doctest::Approx(3.5).epsilon(1e-6));
}

TEST_CASE("∇tr̄: exact third-order sum and the Rademacher estimate vs finite differences of the dense trace") {
  Net net;
  ScalarFn f = net.f();
  Params x = net_point(5);
  const int64_t d = numel(x);
  Tensor flat = flatten(x);
  std::vector<double> fd(static_cast<size_t>(d));
  const double h = 1e-4;
  for (int64_t k = 0; k < d; ++k) {
    std::vector<double> up = flat.to_vector(), dn = up;
    up[size_t(k)] += h;
    dn[size_t(k)] -= h;
    fd[size_t(k)] =
        (dense_trace(f, unflatten(vec(up), x)) - dense_trace(f, unflatten(vec(dn), x))) / (2 * h) / double(d);
  }
  std::vector<double> exact = flatten(trace_gradient_exact(third_fn(f, x), x)).to_vector();
  for (int64_t k = 0; k < d; ++k) CHECK(exact[size_t(k)] == doctest::Approx(fd[size_t(k)]).epsilon(1e-5).scale(1e-6));
  TraceGradientEstimate est = trace_gradient(third_fn(f, x), x, 400, 6);
  std::vector<double> m = flatten(est.mean).to_vector();
  double dist = 0, fn = 0;
  for (int64_t k = 0; k < d; ++k)
    dist += (m[size_t(k)] - fd[size_t(k)]) * (m[size_t(k)] - fd[size_t(k)]), fn += fd[size_t(k)] * fd[size_t(k)];
  INFO("‖estimate − fd‖ " << std::sqrt(dist) << " stderr " << est.stderr_norm << " ‖fd‖ " << std::sqrt(fn));
  CHECK(est.stderr_norm > 0);
  CHECK(std::sqrt(dist) < 4 * est.stderr_norm);
}

TEST_CASE("Example 1: tangent projector and (ε, ε')-flatness certificate, by hand") {
  ScalarFn ex1 = [](const Params& p) {
    return sum(square(add_scalar(mul(slice(p[0], 0, 0, 1), slice(p[0], 0, 1, 2)), -1.0)));
  };
  // At (4, 1/4): H = 2 (x2, x1)(x2, x1)ᵀ, null space spanned by t = (4, −1/4)/‖·‖.
  Params sharp = {vec({4.0, 0.25})};
  Tensor P = tangent_projector(hessian(ex1, sharp));
  const double n2 = 16 + 1.0 / 16;
  std::vector<double> p = P.to_vector();
  CHECK(p[0] == doctest::Approx(16 / n2));
  CHECK(p[1] == doctest::Approx(-1 / n2));
  CHECK(p[3] == doctest::Approx(1.0 / 16 / n2));
  // ∇tr̄ = 2(x1, x2) = (8, 1/2); its tangent part has norm (32 − 1/8)/√n2
  FlatnessCertificate c = certify_flatness(ex1, sharp, 1e-6, 1e-3);
  CHECK(c.grad_norm == 0.0);
  CHECK(c.projected_trace_grad_norm == doctest::Approx((32 - 0.125) / std::sqrt(n2)));
  CHECK(c.gradient_ok);
  CHECK_FALSE(c.flat());
  FlatnessCertificate flat = certify_flatness(ex1, {vec({1.0, 1.0})}, 1e-6, 1e-3);
  CHECK(flat.projected_trace_grad_norm < 1e-9);
  CHECK(flat.flat());
}

TEST_CASE("flatness tools refuse bad options") {
  ScalarFn f = [](const Params& p) { return sum(square(p[0])); };
  Params x = {vec({1.0})};
  CHECK_THROWS_AS(hutchinson_trace(hvp_fn(f, x), x, {.max_samples = 0}), Error);
  CHECK_THROWS_AS(top_eigenvalue(hvp_fn(f, x), x, {.max_iter = 0}), Error);
  CHECK_THROWS_AS(trace_gradient(third_fn(f, x), x, 0), Error);
  CHECK_THROWS_AS(tangent_projector(vec({1.0, 2.0})), Error);
}
