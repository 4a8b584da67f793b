// RS (Algorithm 1) and SA (Algorithm 2): single steps against hand computation, the ε0
// switch, Remark 2, the random iterate, state restore, and the expected directions of
// docs/algorithms.md §2 measured with a confidence bound from the sample standard error.
#include <doctest/doctest.h>

#include <cmath>

#include "optim/perturbation.hpp"

using namespace flatmin;
using namespace flatmin::optim;

namespace {
const TensorOptions f64{DType::f64};
Tensor vec(std::vector<double> v) { return from_vector(v, {int64_t(v.size())}, f64); }
using V = std::vector<double>;

double dotv(const V& a, const V& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
V proj_out(const V& u, const V& w) {  // Definition 4, written out
  const double uu = dotv(u, u);
  if (uu == 0) return w;
  V r = w;
  for (size_t i = 0; i < r.size(); ++i) r[i] -= dotv(u, w) / uu * u[i];
  return r;
}

// f(x) = Σ x⁴/4 + x0 x1 on R³ and its gradient by hand.
Tensor quartic(const Params& p) {
  return add(sum(pow(p[0], 4.0)) / 4.0, sum(mul(slice(p[0], 0, 0, 1), slice(p[0], 0, 1, 2))));
}
V quartic_grad(const V& x) { return {x[0] * x[0] * x[0] + x[1], x[1] * x[1] * x[1] + x[0], x[2] * x[2] * x[2]}; }

// Examples f_i(x) = ½(a_i·x − y_i)² + c_i Σ x⁴/4 on R³, i = 0..2.
const double A[3][3] = {{1.0, 0.5, -0.2}, {-0.3, 1.2, 0.4}, {0.7, -0.1, 0.9}};
const double Yv[3] = {0.2, -0.4, 0.6}, C[3] = {0.5, 1.0, 1.5};
Tensor examples_loss(const std::vector<int64_t>& idx, const Params& p) {
  Tensor total;
  for (int64_t i : idx) {
    Tensor a = vec({A[i][0], A[i][1], A[i][2]});
    Tensor fi =
        add(mul_scalar(square(add_scalar(dot(a, p[0]), -Yv[i])), 0.5), mul_scalar(sum(pow(p[0], 4.0)), C[i] / 4));
    total = total.defined() ? add(total, fi) : fi;
  }
  return total / double(idx.size());
}
V example_grad(int i, const V& x) {
  const double r = A[i][0] * x[0] + A[i][1] * x[1] + A[i][2] * x[2] - Yv[i];
  V g(3);
  for (int k = 0; k < 3; ++k) g[k] = r * A[i][k] + C[i] * x[k] * x[k] * x[k];
  return g;
}
V full_grad(const V& x) {
  V g(3, 0.0);
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) g[k] += example_grad(i, x)[k] / 3;
  return g;
}
Tensor full_loss(const Params& p) { return examples_loss({0, 1, 2}, p); }
}  // namespace

TEST_CASE("RS step by hand: x − η g − η' Proj⊥_g ∇f(x + ρu), u from the seeded sphere") {
  const V x0 = {0.5, -0.3, 0.8};
  const double lr = 0.1, lrp = 0.05, rho = 0.2;
  Params x = {vec(x0)};
  RandomlySmoothedPerturbation rs(x, {.lr = lr, .lr_perturb = lrp, .rho = rho, .seed = 7});
  rs.step(function_closure(quartic, x));
  Generator g(7);
  V u = g.sphere_like({vec({0, 0, 0})})[0].to_vector();
  CHECK(dotv(u, u) == doctest::Approx(1.0));
  V gx = quartic_grad(x0), xp(3);
  for (int k = 0; k < 3; ++k) xp[k] = x0[k] + rho * u[k];
  V v = proj_out(gx, quartic_grad(xp));
  V got = x[0].to_vector();
  for (int k = 0; k < 3; ++k) CHECK(got[k] == doctest::Approx(x0[k] - lr * gx[k] - lrp * v[k]).epsilon(1e-13));
  CHECK(rs.last().perturbed);
}

TEST_CASE("the update as coefficients equals the update as a projection") {
  Params g = {vec({1.0, 2.0, -1.0})}, w = {vec({0.5, -0.3, 2.0})};
  auto [a, b] = perturbed_update_coefficients(0.1, 0.3, g, w);
  V d = perturbed_update(0.1, 0.3, g, w)[0].to_vector(), gv = g[0].to_vector(), wv = w[0].to_vector();
  V p = proj_out(gv, wv);
  for (int k = 0; k < 3; ++k) {
    CHECK(d[k] == doctest::Approx(-0.1 * gv[k] - 0.3 * p[k]));
    CHECK(a * gv[k] + b * wv[k] == doctest::Approx(d[k]));
  }
  auto [a0, b0] = perturbed_update_coefficients(0.1, 0.3, {vec({0, 0, 0})}, w);  // g = 0: Proj⊥ is the identity
  CHECK(a0 == -0.1);
  CHECK(b0 == -0.3);
}

TEST_CASE("RS/SA: above ε0 the step is plain gradient descent; η' defaults to η") {
  const V x0 = {0.5, -0.3, 0.8};
  Params x = {vec(x0)};
  RandomlySmoothedPerturbation rs(x, {.lr = 0.1, .rho = 0.2, .eps0 = 0.01, .seed = 1});
  CHECK(rs.options().eta_prime() == 0.1);
  rs.step(function_closure(quartic, x));
  CHECK_FALSE(rs.last().perturbed);
  V gx = quartic_grad(x0), got = x[0].to_vector();
  for (int k = 0; k < 3; ++k) CHECK(got[k] == doctest::Approx(x0[k] - 0.1 * gx[k]).epsilon(1e-14));
}

TEST_CASE("SA step by hand: the same mini-batch i for s and for the perturbed gradient, σ = ±1") {
  for (int64_t b : {1, 2}) {
    const V x0 = {0.4, -0.6, 0.3};
    const double lr = 0.1, lrp = 0.2, rho = 0.15;
    Params x = {vec(x0)};
    std::vector<std::vector<int64_t>> seen;
    BatchClosure inner = function_batch_closure(examples_loss, x);
    BatchClosure bc = [&](const std::vector<int64_t>& idx, const EvalOptions& o) {
      CHECK_FALSE(o.update_stats);
      seen.push_back(idx);
      return inner(idx, o);
    };
    SharpnessAwarePerturbation sa(x, {.lr = lr, .lr_perturb = lrp, .rho = rho, .seed = 3, .batch = b}, bc, 3);
    sa.step(function_closure(full_loss, x));
    const auto& info = sa.last();
    REQUIRE(info.examples.size() == size_t(b));
    REQUIRE(seen.size() == 2);
    CHECK(seen[0] == info.examples);
    CHECK(seen[1] == info.examples);
    if (b == 2) CHECK(info.examples[0] != info.examples[1]);
    CHECK(std::fabs(info.sigma) == 1.0);
    auto batch_grad = [&](const V& at) {
      V s(3, 0.0);
      for (int64_t i : info.examples)
        for (int k = 0; k < 3; ++k) s[k] += example_grad(int(i), at)[k] / double(b);
      return s;
    };
    V s = batch_grad(x0), xp(3);
    const double sn = std::sqrt(dotv(s, s));
    for (int k = 0; k < 3; ++k) xp[k] = x0[k] + rho * info.sigma * s[k] / sn;
    V g = full_grad(x0), v = proj_out(g, batch_grad(xp)), got = x[0].to_vector();
    for (int k = 0; k < 3; ++k) CHECK(got[k] == doctest::Approx(x0[k] - lr * g[k] - lrp * v[k]).epsilon(1e-13));
  }
}

TEST_CASE("SA Remark 2: a vanishing per-example gradient falls back to a nearby point") {
  // One example, x at its minimum: ∇f_1(x) = 0 exactly (a·x = y, c = 0).
  ExamplesFn f = [](const std::vector<int64_t>&, const Params& p) {
    return mul_scalar(square(add_scalar(dot(vec({1.0, 2.0}), p[0]), -1.0)), 0.5);
  };
  Params x = {vec({1.0, 0.0})};
  SharpnessAwarePerturbation sa(x, {.lr = 0.1, .rho = 0.1, .seed = 5}, function_batch_closure(f, x), 1);
  sa.step(function_closure([f](const Params& p) { return f({0}, p); }, x));
  CHECK(sa.last().fallback);
  V got = x[0].to_vector();
  CHECK(std::isfinite(got[0]));
  CHECK(std::isfinite(got[1]));
  // g = 0, so Proj⊥ leaves w = ∇f(x + ρσ ŝ) with ŝ ∥ (1,2)/√5: the step is along (1,2).
  const double moved0 = got[0] - 1.0, moved1 = got[1];
  CHECK(std::fabs(moved0) > 1e-4);
  CHECK(moved1 == doctest::Approx(2 * moved0).epsilon(1e-5));
}

TEST_CASE("RS/SA refuse bad inputs") {
  Params x = {vec({1.0})};
  CHECK_THROWS_AS(RandomlySmoothedPerturbation(x, {.lr = -1}), Error);
  CHECK_THROWS_AS(RandomlySmoothedPerturbation(x, {.lr = 0.1, .lr_perturb = NAN}), Error);
  CHECK_THROWS_AS(RandomlySmoothedPerturbation(x, {.lr = 0.1, .rho = -1}), Error);
  CHECK_THROWS_AS(RandomlySmoothedPerturbation(x, {.lr = 0.1, .rho = 0.1, .eps0 = -1}), Error);
  BatchClosure bc = function_batch_closure(examples_loss, {vec({0, 0, 0})});
  CHECK_THROWS_AS(SharpnessAwarePerturbation({vec({0, 0, 0})}, {.batch = 4}, bc, 3), Error);
  CHECK_THROWS_AS(SharpnessAwarePerturbation({vec({0, 0, 0})}, {.batch = 0}, bc, 3), Error);
  CHECK_THROWS_AS(SharpnessAwarePerturbation({vec({0, 0, 0})}, {}, nullptr, 3), Error);
}

TEST_CASE("RS random iterate does not change the trajectory; state restore continues bit for bit") {
  const V x0 = {0.5, -0.3, 0.8};
  Params a = {vec(x0)}, b = {vec(x0)};
  RandomlySmoothedPerturbation ra(a, {.lr = 0.05, .rho = 0.1, .seed = 9});
  RandomlySmoothedPerturbation rb(b, {.lr = 0.05, .rho = 0.1, .seed = 9, .random_iterate = true});
  std::vector<V> iterates;
  for (int t = 0; t < 6; ++t) {
    iterates.push_back(b[0].to_vector());
    ra.step(function_closure(quartic, a));
    rb.step(function_closure(quartic, b));
  }
  CHECK(a[0].to_vector() == b[0].to_vector());
  V chosen = rb.chosen_iterate()[0].to_vector();
  bool among = false;
  for (auto& it : iterates) among |= it == chosen;
  CHECK(among);
  // save after 6 steps, continue 4; a restored copy must land on the same point
  OptimizerState s = rb.state();
  V x6 = b[0].to_vector();
  for (int t = 0; t < 4; ++t) rb.step(function_closure(quartic, b));
  Params c = {vec(x6)};
  RandomlySmoothedPerturbation rc(c, {.lr = 0.05, .rho = 0.1, .seed = 12345, .random_iterate = true});
  rc.load_state(s);
  for (int t = 0; t < 4; ++t) rc.step(function_closure(quartic, c));
  CHECK(c[0].to_vector() == b[0].to_vector());
  CHECK(rc.chosen_iterate()[0].to_vector() == rb.chosen_iterate()[0].to_vector());
}

namespace {
// For a polynomial of degree ≤ 4 the expansion of E ∇f(x + ρu) stops at ρ² (the ρ and ρ³
// terms are odd in u), so the expected directions below are exact, not O(ρ³)-approximate:
// the check is a pure confidence bound.
Tensor poly4(const Params& p) {
  Tensor x = p[0];
  Tensor x0 = slice(x, 0, 0, 1), x1 = slice(x, 0, 1, 2), x2 = slice(x, 0, 2, 3);
  return add(add(sum(mul(vec({1.0, 2.0, 0.5}), pow(x, 4.0))) / 4.0, sum(mul(mul(x0, x1), x2))),
             sum(square(mul(x0, x2))));
}
struct Stats {  // running mean and the standard error of the mean vector's norm
  std::vector<double> sum, sum_sq;
  int n = 0;
  void add(const V& v) {
    if (sum.empty()) sum.assign(v.size(), 0), sum_sq.assign(v.size(), 0);
    for (size_t k = 0; k < v.size(); ++k) sum[k] += v[k], sum_sq[k] += v[k] * v[k];
    ++n;
  }
  V mean() const {
    V m = sum;
    for (double& x : m) x /= n;
    return m;
  }
  double stderr_norm() const {
    double var = 0;
    for (size_t k = 0; k < sum.size(); ++k) var += (sum_sq[k] - sum[k] * sum[k] / n) / (n - 1);
    return std::sqrt(var / n);
  }
};
double dist(const V& a, const V& b) {
  double s = 0;
  for (size_t k = 0; k < a.size(); ++k) s += (a[k] - b[k]) * (a[k] - b[k]);
  return std::sqrt(s);
}
}  // namespace

TEST_CASE("RS expected direction: mean of Proj⊥ ∇f(x + ρu) → (ρ²/2) Proj⊥ ∇tr̄ (eq. 10)") {
  ScalarFn f = poly4;
  const Params x0 = {vec({0.4, -0.3, 0.5})};
  const double rho = 0.3;
  // ∇tr̄ = Σ_i ∇³f[e_i, e_i] / d from the autodiff engine's third-order contractions.
  const int64_t d = 3;
  V grad_tr(3, 0.0);
  for (int64_t i = 0; i < d; ++i) {
    V e(3, 0.0);
    e[size_t(i)] = 1;
    V t = third(f, x0, {vec(e)}, {vec(e)})[0].to_vector();
    for (int k = 0; k < 3; ++k) grad_tr[k] += t[k] / double(d);
  }
  V target = proj_out(gradient(f, x0)[0].to_vector(), grad_tr);
  for (double& v : target) v *= rho * rho / 2;

  Params x = {x0[0].detach().clone()};
  RandomlySmoothedPerturbation rs(x, {.lr = 0.0, .lr_perturb = 1.0, .rho = rho, .seed = 17});
  Closure c = function_closure(f, x);
  Stats st;
  const V start = x0[0].to_vector();
  for (int k = 0; k < 4000; ++k) {
    rs.step(c);  // Δ = −Proj⊥_g w
    V delta = x[0].to_vector();
    for (size_t j = 0; j < delta.size(); ++j) delta[j] = start[j] - delta[j];
    st.add(delta);
    NoGrad ng;
    x[0].copy_(x0[0]);
  }
  const double se = st.stderr_norm(), tn = std::sqrt(dotv(target, target));
  INFO("‖target‖ " << tn << "  ‖mean − target‖ " << dist(st.mean(), target) << "  stderr " << se);
  CHECK(tn > 8 * se);  // the signal is resolved, so the check below can fail
  CHECK(dist(st.mean(), target) < 4 * se);
}

TEST_CASE("SA expected direction: mean over (i, σ) → (ρ²/2) Proj⊥ mean_i ∇³f_i[ŝ_i, ŝ_i]") {
  const Params x0 = {vec({0.3, -0.4, 0.5})};
  const double rho = 0.6;
  V gx = full_grad(x0[0].to_vector());
  V target(3, 0.0);
  for (int64_t i = 0; i < 3; ++i) {
    ScalarFn fi = [i](const Params& p) { return examples_loss({i}, p); };
    Params s = gradient(fi, x0);
    s = scale(1.0 / norm(s).item(), s);
    V t = third(fi, x0, s, s)[0].to_vector();
    for (size_t k = 0; k < 3; ++k) target[k] += t[k] / 3;
  }
  target = proj_out(gx, target);
  for (double& v : target) v *= rho * rho / 2;

  Params x = {x0[0].detach().clone()};
  SharpnessAwarePerturbation sa(x, {.lr = 0.0, .lr_perturb = 1.0, .rho = rho, .seed = 23},
                                function_batch_closure(examples_loss, x), 3);
  Closure c = function_closure(full_loss, x);
  Stats st;
  const V start = x0[0].to_vector();
  for (int k = 0; k < 4000; ++k) {
    sa.step(c);
    V delta = x[0].to_vector();
    for (size_t j = 0; j < delta.size(); ++j) delta[j] = start[j] - delta[j];
    st.add(delta);
    NoGrad ng;
    x[0].copy_(x0[0]);
  }
  const double se = st.stderr_norm(), tn = std::sqrt(dotv(target, target));
  INFO("‖target‖ " << tn << "  ‖mean − target‖ " << dist(st.mean(), target) << "  stderr " << se);
  CHECK(tn > 8 * se);
  CHECK(dist(st.mean(), target) < 4 * se);
}
