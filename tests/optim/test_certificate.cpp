// The theorems' settings against values worked out by hand, the GD refinement on a quadratic,
// the exact tangent projector on Example 1, the Hessian near-null-space projector against the
// exact one on a diagonal linear network, its refusals, and certificates worked out by hand.
#include <doctest/doctest.h>

#include <cmath>

#include "optim/certificate.hpp"
#include "optim/theorems.hpp"

using namespace flatmin;
using namespace flatmin::optim;

namespace {
const TensorOptions f64{DType::f64};
Tensor vec(std::vector<double> v) { return from_vector(v, {int64_t(v.size())}, f64); }
Tensor example1(const Params& p) {
  return sum(square(add_scalar(mul(slice(p[0], 0, 0, 1), slice(p[0], 0, 1, 2)), -1.0)));
}
ScalarFn quadratic(std::vector<double> c) {  // f = ½ Σ c_i x_i²
  Tensor cc = vec(c);
  return [cc](const Params& p) { return mul_scalar(sum(mul(cc, square(p[0]))), 0.5); };
}
}  // namespace

TEST_SUITE("certificate") {
  TEST_CASE("the theorems' settings, by hand") {
    TheoremSettings r = rs_theorem_settings(0.01, 4.0, 0.5);
    CHECK(r.lr == doctest::Approx(0.25));
    CHECK(r.lr_perturb == doctest::Approx(0.005));
    CHECK(r.rho == doctest::Approx(0.05));
    CHECK(r.eps0 == doctest::Approx(std::pow(0.005, 1.5)));
    TheoremSettings s2 = sa_theorem_settings(0.01, 4.0, 0.5, 2);  // √(d³ε) = √0.08 < 1
    CHECK(s2.lr_perturb == doctest::Approx(0.5 / 4));
    CHECK(s2.rho == doctest::Approx(0.5 * 0.1 * std::sqrt(0.08)));
    TheoremSettings s16 = sa_theorem_settings(0.01, 4.0, 0.5, 16, {.lr_perturb = 2, .rho = 3, .eps0 = 4});
    CHECK(s16.lr_perturb == doctest::Approx(2 * 0.5 / 4));
    CHECK(s16.rho == doctest::Approx(3 * 0.05));
    CHECK(s16.eps0 == doctest::Approx(4 * std::pow(0.005, 1.5)));
    PerturbationOptions o = theorem_options(r, 7);
    CHECK(o.random_iterate);
    CHECK(o.eps0 == r.eps0);
    CHECK(o.eta_prime() == r.lr_perturb);
    for (double bad : std::initializer_list<double>{0.0, -1.0, NAN, INFINITY})
      CHECK_THROWS_WITH_AS(rs_theorem_settings(bad, 1, 0.5), doctest::Contains("ε must be a positive finite number"),
                           Error);
    for (double bad : std::initializer_list<double>{0.0, -2.0, NAN})
      CHECK_THROWS_WITH_AS(sa_theorem_settings(0.1, bad, 0.5, 4),
                           doctest::Contains("L must be a positive finite number"), Error);
    CHECK_THROWS_WITH_AS(rs_theorem_settings(0.1, 1, 0), doctest::Contains("δ must be in (0, 1]"), Error);
    CHECK_THROWS_WITH_AS(rs_theorem_settings(0.1, 1, 1.5), doctest::Contains("δ must be in (0, 1]"), Error);
    CHECK_THROWS_WITH_AS(sa_theorem_settings(0.1, 1, 0.5, 0), doctest::Contains("d must be >= 1"), Error);
    CHECK_THROWS_WITH_AS(rs_theorem_settings(0.1, 1, 0.5, {.rho = 0}), doctest::Contains("constant"), Error);
  }

  TEST_CASE("L by the power method, and the GD refinement on a quadratic") {
    ScalarFn f = quadratic({1, 2});
    Params x = {vec({1, 1})};
    CHECK(smoothness_by_power(hvp_fn(f, x), x, {.max_iter = 200, .tol = 1e-12}) == doctest::Approx(2).epsilon(1e-6));
    // η = 1/L = 1/2: x2 → 0 in one step, x1 halves each step; ‖∇f‖ = √5, 0.5, 0.25, 0.125, 0.0625.
    RefineResult r = refine_until_stationary(x, function_closure(f, x), 0.5, 0.1, 100);
    CHECK(r.reached);
    CHECK(r.gradient_evaluations == 5);
    CHECK(r.grad_norm == doctest::Approx(0.0625));
    CHECK(x[0].to_vector()[0] == doctest::Approx(0.0625));
    Params y = {vec({1, 1})};
    RefineResult capped = refine_until_stationary(y, function_closure(f, y), 0.5, 0.1, 2);
    CHECK_FALSE(capped.reached);
    CHECK(capped.gradient_evaluations == 3);
  }

  TEST_CASE("exact tangent projector of Example 1 and certificates by hand") {
    VectorFn r = [](const Params& p) {
      return reshape(add_scalar(mul(slice(p[0], 0, 0, 1), slice(p[0], 0, 1, 2)), -1.0), {1});
    };
    Params x = {vec({2, 0.5})};
    ProjectorFn P = residual_tangent_projector(r, x);
    // Tangent of x1 x2 = 1 at (2, 0.5): t = (2, −0.5)/√4.25; P w = ⟨t, w⟩ t.
    std::vector<double> w = P({vec({4, 1})})[0].to_vector();
    const double c = (8 - 0.5) / 4.25;
    CHECK(w[0] == doctest::Approx(2 * c));
    CHECK(w[1] == doctest::Approx(-0.5 * c));
    // ∇tr̄ = (2x1, 2x2) = (4, 1) there: ‖P∇tr̄‖ = 7.5/√4.25, ∇f = 0.
    Certificate sharp = certify(example1, x, 0.01, P);
    CHECK(sharp.flat.grad_norm == doctest::Approx(0).scale(1));
    CHECK(sharp.flat.projected_trace_grad_norm == doctest::Approx(7.5 / std::sqrt(4.25)));
    CHECK(sharp.flat.eps_prime == doctest::Approx(0.1));
    CHECK(sharp.flat.gradient_ok);
    CHECK_FALSE(sharp.flat.flat());
    Params one = {vec({1, 1})};
    Certificate flat = certify(example1, one, 0.01, residual_tangent_projector(r, one));
    CHECK(flat.flat.projected_trace_grad_norm < 1e-12);
    CHECK(flat.flat.flat());
    // Off the minima set: ‖∇f‖ = 2|x1x2 − 1|·‖(x2, x1)‖ = 2·0.21·√(2.21) at (1.1, 1.1).
    Params off = {vec({1.1, 1.1})};
    Certificate c2 = certify(example1, off, 0.01, residual_tangent_projector(r, off));
    CHECK(c2.flat.grad_norm == doctest::Approx(2 * 0.21 * std::sqrt(2.42)));
    CHECK_FALSE(c2.flat.gradient_ok);
    CHECK_THROWS_WITH_AS(certify(example1, one, 0, P), doctest::Contains("ε must be a positive finite number"), Error);
    CHECK_THROWS_WITH_AS(certify(example1, one, NAN, P), doctest::Contains("ε must be a positive finite number"),
                         Error);
    CHECK_THROWS_WITH_AS(residual_tangent_projector(r, {vec({0, 0})}), doctest::Contains("rank-deficient"), Error);
    // Redundant residuals (r, 2r): J has rank 1 < n = 2. Stated, the projector is Example 1's;
    // unstated (full row rank assumed), 2 normal directions leave none in R²; a stated rank
    // that J does not reach, or that J exceeds, is refused.
    VectorFn twice = [&](const Params& p) {
      Tensor e = r(p);
      return concat({e, mul_scalar(e, 2.0)}, 0);
    };
    Params y = {vec({0.7, -1.3})};
    Params probe = {vec({0.3, 2.0})};
    CHECK(
        norm(axpy(-1, residual_tangent_projector(twice, y, 1)(probe), residual_tangent_projector(r, y)(probe))).item() <
        1e-12);
    CHECK_THROWS_WITH_AS(residual_tangent_projector(twice, y), doctest::Contains("leaves no tangent space"), Error);
    CHECK_THROWS_WITH_AS(residual_tangent_projector(twice, {vec({0, 0})}, 1), doctest::Contains("rank-deficient"),
                         Error);
    VectorFn both = [](const Params& p) { return p[0]; };  // J = I: rank 2
    Params z = {vec({1, 2, 3})};
    VectorFn two_of_three = [](const Params& p) { return slice(p[0], 0, 0, 2); };
    CHECK_THROWS_WITH_AS(residual_tangent_projector(two_of_three, z, 1), doctest::Contains("rank above 1"), Error);
    CHECK_THROWS_WITH_AS(residual_tangent_projector(both, y), doctest::Contains("leaves no tangent space"), Error);
    CHECK_THROWS_WITH_AS(residual_tangent_projector(twice, y, 0), doctest::Contains("normal rank must be >= 1"), Error);
  }

  TEST_CASE("Hessian near-null-space projector equals the exact one on a diagonal linear network") {
    const int64_t m = 6, n = 2;
    Generator g(3);
    Tensor A = g.normal({n, m}, f64), beta = g.normal({m}, f64);
    Tensor Y = matmul(A, reshape(beta, {m, 1}));
    ScalarFn f = [=](const Params& p) { return mean(square(sub(matmul(A, reshape(mul(p[0], p[1]), {m, 1})), Y))); };
    VectorFn r = [=](const Params& p) { return reshape(sub(matmul(A, reshape(mul(p[0], p[1]), {m, 1})), Y), {n}); };
    Params x = {full({m}, 1.5, f64), mul_scalar(beta, 1 / 1.5)};  // a global minimum: H has rank n = 2
    NullSpaceCut cut;
    ProjectorFn ph = hessian_null_projector(hvp_fn(f, x), x, {.top_k = 4}, &cut);
    CHECK(cut.rank == 2);
    CHECK(cut.gap > 1e6);
    ProjectorFn pe = residual_tangent_projector(r, x);
    for (uint64_t s = 0; s < 3; ++s) {
      Params w = Generator(10 + s).normal_like(x);
      CHECK(norm(axpy(-1, ph(w), pe(w))).item() < 1e-8 * norm(w).item());
    }
  }

  TEST_CASE("the Hessian cut is refused where it cannot be determined") {
    Params x = {vec({0.3, -0.2, 0.1, 0.5})};
    auto refused = [&](std::vector<double> c, NullSpaceOptions o) {
      try {
        ScalarFn f = quadratic(c);
        hessian_null_projector(hvp_fn(f, x), x, o);
      } catch (const Error& e) {
        return std::string(e.what());
      }
      return std::string("(accepted)");
    };
    CHECK(refused({1, -1, 0, 0}, {.top_k = 4}).find("negative curvature") != std::string::npos);
    CHECK(refused({1, 1, 1, 1}, {.top_k = 3}).find("above the cut") != std::string::npos);
    CHECK(refused({1, 0.002, 0.0009, 0}, {.top_k = 4}).find("no gap at the Hessian cut") != std::string::npos);
    CHECK(refused({-1, -2, -3, -0.5}, {.top_k = 2}).find("no positive eigenvalue") != std::string::npos);
    CHECK(refused({1, 0, 0, 0}, {.top_k = 2, .rel_cut = 0}).find("rel_cut") != std::string::npos);
    CHECK(refused({2, 1, 0, 0}, {.top_k = 3}) == "(accepted)");
  }

  TEST_CASE("a network's certificate from its leaves equals the function's, with the exact projector") {
    const int64_t m = 6, n = 2;
    Generator g(5);
    Tensor A = g.normal({n, m}, f64), beta = g.normal({m}, f64);
    Tensor Y = matmul(A, reshape(beta, {m, 1}));
    ScalarFn f = [=](const Params& p) { return mean(square(sub(matmul(A, reshape(mul(p[0], p[1]), {m, 1})), Y))); };
    VectorFn r = [=](const Params& p) { return reshape(sub(matmul(A, reshape(mul(p[0], p[1]), {m, 1})), Y), {n}); };
    Params x = {full({m}, 2.0, f64), mul_scalar(beta, 0.5)};
    Params lv = leaves(x);
    std::function<Tensor()> loss = [&] { return f(lv); };
    Params u = Generator(1).normal_like(x), v = Generator(2).normal_like(x);
    CHECK(norm(axpy(-1, third_fn_of_leaves(loss, lv)(u, v), third_fn(f, x)(u, v))).item() < 1e-12);
    Certificate a = certify_leaves(loss, lv, 0.01, {.top_k = 4}, {.trace_samples = 5, .seed = 3});
    Certificate b = certify(f, x, 0.01, residual_tangent_projector(r, x), {.trace_samples = 5, .seed = 3});
    CHECK(a.flat.projected_trace_grad_norm == doctest::Approx(b.flat.projected_trace_grad_norm).epsilon(1e-8));
    CHECK(a.flat.projected_trace_grad_norm > 0.01);  // a sharp minimum: not flat
    CHECK(a.flat.grad_norm < 1e-12);
    CHECK(a.trace_grad_stderr == doctest::Approx(b.trace_grad_stderr).epsilon(1e-8));
    CHECK_THROWS_WITH_AS(certify_leaves(loss, lv, 0.01, {.top_k = 4}, {.trace_samples = 0}),
                         doctest::Contains("trace_samples"), Error);
    CHECK_THROWS_WITH_AS(certify_leaves(loss, lv, -1, {.top_k = 4}, {.trace_samples = 2}),
                         doctest::Contains("ε must be"), Error);
  }
}
