// Forward mode and Taylor mode (docs/taylor.md) through the one op-case table: every op's
// forward rule against finite differences (float64) and against its VJP (⟨J v, w⟩ =
// ⟨v, Jᵀ w⟩), forward-over-reverse HVPs against reverse over reverse, Taylor-mode
// derivatives against nested reverse mode up to order 4, and every registry op's forward
// rule run at least once. Then closed forms up to order 8, networks, and bad input.
#include <doctest/doctest.h>

#include <cmath>

#include "autodiff/autodiff.hpp"
#include "nn/nn.hpp"
#include "tests/op_cases.hpp"

using namespace flatmin;
using flatmin::test::OpCase;

namespace {

const TensorOptions f64{DType::f64};

double norm_of(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e * e;
  return std::sqrt(s);
}
// ‖a − b‖ / (max(‖a‖, ‖b‖) + floor)
double rel_error(const std::vector<double>& a, const std::vector<double>& b, double floor = 1e-12) {
  REQUIRE(a.size() == b.size());
  std::vector<double> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return norm_of(d) / (std::max(norm_of(a), norm_of(b)) + floor);
}
std::vector<double> flat(const Params& p) { return flatten(detach(p)).to_vector(); }
double rel(double a, double b) { return std::fabs(a - b) / std::max({std::fabs(a), std::fabs(b), 1e-12}); }

}  // namespace

TEST_CASE(
    "every op case: the forward rule matches finite differences and the VJP; forward over reverse and Taylor mode "
    "match reverse mode") {
  int64_t before[op_count];
  for (size_t i = 0; i < op_count; ++i) before[i] = forward_rule_runs(Op(i));
  for (const OpCase& c : test::op_cases()) {
    if (!c.fd) continue;
    const Params x = test::case_inputs(c, 1);
    Generator g(7);
    const Params v = g.sphere_like(x), u = g.sphere_like(x);
    VectorFn fn = [&c](const Params& p) { return c.fn(p, Device::cpu()); };
    INFO("op case " << c.label);

    // J v in one forward sweep against central differences
    JvpResult jv = jvp_forward(fn, x, v);
    const double h = 1e-6;
    std::vector<double> fd;
    {
      NoGrad ng;
      auto yp = fn(axpy(h, v, x)).to_vector(), ym = fn(axpy(-h, v, x)).to_vector();
      for (size_t i = 0; i < yp.size(); ++i) fd.push_back((yp[i] - ym[i]) / (2 * h));
    }
    CHECK(jv.value.shape() == test::output_shape(c, x));
    CHECK(rel_error(jv.tangent.to_vector(), fd, 1e-8) < 1e-6);

    // ⟨J v, w⟩ = ⟨v, Jᵀ w⟩ with Jᵀ w from the reverse rule
    const Tensor w = Generator(8).uniform(jv.value.shape(), f64, -1, 1);
    const Params xl = leaves(x);
    Params jtw = grad({fn(xl)}, xl, {.grad_outputs = {w}, .allow_unused = true});
    for (size_t i = 0; i < jtw.size(); ++i)
      if (!jtw[i].defined()) jtw[i] = zeros_like(x[i]);
    CHECK(rel(dot(jv.tangent, w).item(), dot(v, jtw).item()) < 1e-11);

    // through the checkers' scalar (Σ w1⊙y + Σ w2⊙y³): the reverse sweep's ops carry tangents
    auto on_cpu = test::harness(c, test::output_shape(c, x));
    ScalarFn f = [on_cpu](const Params& p) { return on_cpu(p, Device::cpu()); };
    CHECK(rel_error(flat(hvp_forward_over_reverse(f, x, v)), flat(hvp(f, x, v))) < 1e-10);

    // D^k f[u^k], k = 0..4: one Taylor propagation against nested reverse mode
    TaylorCoefficients t = taylor_coefficients(f, x, u, 4);
    DirectionalDerivatives d = directional_derivatives(f, x, u, 4);
    double scale = 0;
    for (double e : d.values) scale = std::max(scale, std::fabs(e));
    for (int k = 0; k <= 4; ++k) {
      INFO("order " << k << ": taylor " << t.derivatives[k] << " nested reverse " << d.values[k]);
      CHECK(std::fabs(t.derivatives[k] - d.values[k]) <= 1e-10 * (scale + 1));
      CHECK(t.coefficients[k] * std::tgamma(k + 1.0) == doctest::Approx(t.derivatives[k]).epsilon(1e-14));
    }
  }
  // every registry op's forward rule ran (an op without one would have thrown above)
  for (const OpInfo& e : op_table) {
    const Op op = Op(&e - op_table.data());
    INFO("registry op " << e.name);
    if (e.check == OpCheck::fd) CHECK_MESSAGE(forward_rule_runs(op) > before[size_t(op)], "no forward rule ran");
  }
}

TEST_CASE("to_dtype carries the tangent across the change of precision") {
  Generator g(5);
  Tensor x = g.uniform({4}, f64, -1, 1), v = g.sphere({4}, f64);
  VectorFn f = [](const Params& p) { return pow(to_dtype(to_dtype(p[0], DType::f32), DType::f64), 3.0); };
  JvpResult r = jvp_forward(f, {x}, {v});
  auto t = r.tangent.to_vector(), xs = x.to_vector(), vs = v.to_vector();
  for (size_t i = 0; i < t.size(); ++i) CHECK(t[i] == doctest::Approx(3 * xs[i] * xs[i] * vs[i]).epsilon(1e-6));
  CHECK(r.tangent.dtype() == DType::f64);
}

namespace {
// The derivatives of σ, tanh, exp as polynomials in the function's own value, built here
// from σ' = σ(1−σ) and tanh' = 1 − tanh² (independent of the engine): P_{n+1}(s) = P_n'(s)·q(s).
std::vector<double> derivative_values(const std::vector<double>& q, double s, int n_max) {
  std::vector<double> p = {0, 1};  // P_0(s) = s
  std::vector<double> values;
  for (int n = 0; n <= n_max; ++n) {
    double v = 0, pw = 1;
    for (double c : p) v += c * pw, pw *= s;
    values.push_back(v);
    std::vector<double> dp(p.size() > 1 ? p.size() - 1 : 1, 0.0);
    for (size_t i = 1; i < p.size(); ++i) dp[i - 1] = double(i) * p[i];
    std::vector<double> next(dp.size() + q.size() - 1, 0.0);
    for (size_t i = 0; i < dp.size(); ++i)
      for (size_t j = 0; j < q.size(); ++j) next[i + j] += dp[i] * q[j];
    p = next;
  }
  return values;  // values[n] = g^(n)(z)
}
}  // namespace

TEST_CASE("Taylor mode against closed forms up to order 8 (float64)") {
  Generator g(12);
  const Tensor a = g.normal({3}, f64), x = g.normal({3}, f64), u = g.normal({3}, f64);
  const double z = dot(a, x).item(), au = dot(a, u).item();
  const int K = 8;
  // f(x) = g(⟨a, x⟩ + c): D^k f[u^k] = g^(k)(z + c)·⟨a, u⟩^k
  auto check = [&](const char* what, std::function<Tensor(const Tensor&)> fn, double c, std::vector<double> dg) {
    ScalarFn f = [&](const Params& p) { return fn(add_scalar(dot(a, p[0]), c)); };
    TaylorCoefficients t = taylor_coefficients(f, {x}, {u}, K);
    for (int k = 0; k <= K; ++k) {
      const double expect = dg[size_t(k)] * std::pow(au, k);
      INFO(what << " order " << k << ": " << t.derivatives[size_t(k)] << " expected " << expect);
      CHECK(std::fabs(t.derivatives[size_t(k)] - expect) <= 1e-10 * std::max(1.0, std::fabs(expect)));
    }
  };
  const double sz = 1 / (1 + std::exp(-z));
  const std::vector<double> sig = derivative_values({0, 1, -1}, sz, K + 1);  // σ' = σ − σ²
  std::vector<double> softplus_d = {std::log1p(std::exp(z))};                // softplus^(k) = σ^(k−1)
  for (int k = 1; k <= K; ++k) softplus_d.push_back(sig[size_t(k - 1)]);
  check(
      "log(1 + e^z)", [](const Tensor& s) { return log(add_scalar(exp(s), 1.0)); }, 0.0, softplus_d);
  check(
      "softplus", [](const Tensor& s) { return softplus(s); }, 0.0, softplus_d);
  check(
      "sigmoid", [](const Tensor& s) { return sigmoid(s); }, 0.0, std::vector<double>(sig.begin(), sig.end() - 1));
  check(
      "tanh", [](const Tensor& s) { return tanh(s); }, 0.0, derivative_values({1, 0, -1}, std::tanh(z), K));
  check(
      "exp", [](const Tensor& s) { return exp(s); }, 0.0, std::vector<double>(K + 1, std::exp(z)));
  // powers of s = z + c > 0: p(p−1)…(p−k+1) s^(p−k); log: (−1)^(k−1) (k−1)! / s^k
  const double c = 3.0 - z, s = z + c;
  auto power = [&](double p) {
    std::vector<double> d;
    double falling = 1;
    for (int k = 0; k <= K; ++k) d.push_back(falling * std::pow(s, p - k)), falling *= p - k;
    return d;
  };
  check(
      "pow 2.5", [](const Tensor& t) { return pow(t, 2.5); }, c, power(2.5));
  check(
      "pow 3", [](const Tensor& t) { return pow(t, 3.0); }, c, power(3.0));
  check(
      "sqrt", [](const Tensor& t) { return sqrt(t); }, c, power(0.5));
  check(
      "rsqrt", [](const Tensor& t) { return rsqrt(t); }, c, power(-0.5));
  check(
      "reciprocal", [](const Tensor& t) { return reciprocal(t); }, c, power(-1.0));
  check(
      "1 / t (div)", [](const Tensor& t) { return div(ones_like(t), t); }, c, power(-1.0));
  std::vector<double> logd = {std::log(s)};
  for (int k = 1; k <= K; ++k) logd.push_back((k % 2 ? 1.0 : -1.0) * std::tgamma(double(k)) / std::pow(s, k));
  check(
      "log", [](const Tensor& t) { return log(t); }, c, logd);
}

TEST_CASE("forward over reverse equals reverse over reverse: MLP and ResNet-18 (float64, train-mode BatchNorm)") {
  Generator g(3);
  {  // a two-layer tanh MLP's squared loss
    Tensor X = g.normal({6, 4}, f64), Y = g.normal({6, 2}, f64);
    ScalarFn f = [X, Y](const Params& p) {
      return mean(square(sub(matmul(tanh(add(matmul(X, p[0]), p[1])), p[2]), Y)));
    };
    Params x = {g.normal({4, 5}, f64), g.normal({5}, f64), g.normal({5, 2}, f64)};
    Params v = g.sphere_like(x);
    CHECK(rel_error(flat(hvp_forward_over_reverse(f, x, v)), flat(hvp(f, x, v))) < 1e-12);
  }
  for (nn::Act act : {nn::Act::relu, nn::Act::softplus}) {
    nn::ResNet net = nn::resnet18({.in_channels = 3,
                                   .classes = 3,
                                   .stem = nn::Stem::cifar,
                                   .width = 2,
                                   .norm = nn::Norm::batch,
                                   .activation = act,
                                   .seed = 4});
    net.to(DType::f64);
    net.train().update_running_stats(false);
    Tensor X = g.normal({4, 3, 8, 8}, f64), Y = from_ints({0, 2, 1, 2}, {4});
    ScalarFn f = [&](const Params& p) {
      nn::WithParameters with(net, p);
      return cross_entropy(net.forward(X), Y);
    };
    Params x = detach(net.parameters()), v = g.sphere_like(x);
    INFO("activation " << nn::act_name(act));
    CHECK(rel_error(flat(hvp_forward_over_reverse(f, x, v)), flat(hvp(f, x, v))) < 1e-10);
    if (act == nn::Act::softplus) {  // Taylor mode through the whole network, orders 0-4
      Params u = g.sphere_like(x);
      TaylorCoefficients t = taylor_coefficients(f, x, u, 4);
      DirectionalDerivatives d = directional_derivatives(f, x, u, 4);
      for (int k = 0; k <= 4; ++k) {
        INFO("order " << k << ": taylor " << t.derivatives[size_t(k)] << " nested reverse " << d.values[size_t(k)]);
        CHECK(rel(t.derivatives[size_t(k)], d.values[size_t(k)]) < 1e-8);
      }
    }
  }
}

TEST_CASE("piecewise ops: the branch at the primal point in forward mode; Taylor mode refuses kinks and ties") {
  const Tensor x = from_vector(std::vector<double>{-1.0, 0.0, 2.0}, {3}, f64);
  const Tensor v = from_vector(std::vector<double>{1.0, 1.0, 1.0}, {3}, f64);
  // relu at 0: the tangent the reverse rule's branch gives (0), as documented
  CHECK(jvp_forward([](const Params& p) { return relu(p[0]); }, {x}, {v}).tangent.to_vector() ==
        std::vector<double>{0.0, 0.0, 1.0});
  // a tie of maximum: half of each input's tangent, the reverse rule's share
  const Tensor y = from_vector(std::vector<double>{0.0, 0.0, 0.0}, {3}, f64);
  const Tensor w = from_vector(std::vector<double>{0.0, 4.0, 0.0}, {3}, f64);
  CHECK(jvp_forward([](const Params& p) { return maximum(p[0], p[1]); }, {x, y}, {v, w}).tangent.to_vector() ==
        std::vector<double>{0.0, 2.5, 1.0});
  auto taylor = [&](ScalarFn f, int K) { return taylor_coefficients(f, {x}, {v}, K); };
  CHECK_THROWS_WITH_AS(taylor([](const Params& p) { return sum(relu(p[0])); }, 2),
                       doctest::Contains("relu: Taylor mode (order 2) at an input equal to 0"), Error);
  CHECK_THROWS_WITH_AS(taylor([](const Params& p) { return sum(abs(p[0])); }, 3), doctest::Contains("abs: Taylor mode"),
                       Error);
  CHECK_THROWS_WITH_AS(taylor([](const Params& p) { return sum(maximum(p[0], zeros_like(p[0]))); }, 2),
                       doctest::Contains("maximum: Taylor mode (order 2) at a tie"), Error);
  CHECK_THROWS_WITH_AS(taylor([](const Params& p) { return max(mul_scalar(p[0], 0.0)); }, 2),
                       doctest::Contains("max: Taylor mode (order 2) at a tie for the extremum"), Error);
  const Tensor img = from_vector(std::vector<double>{1, 3, 3, 0}, {1, 1, 2, 2}, f64);
  CHECK_THROWS_WITH_AS(taylor_coefficients([](const Params& p) { return sum(max_pool2d(p[0], {.kernel = 2})); }, {img},
                                           {ones_like(img)}, 2),
                       doctest::Contains("max_pool2d: Taylor mode (order 2) at a window whose maximum is shared"),
                       Error);
  // away from kinks Taylor mode is exact: relu(x)² on x = (−1, 0.5, 2) along v = 1 is a quadratic
  const Tensor x2 = from_vector(std::vector<double>{-1.0, 0.5, 2.0}, {3}, f64);
  TaylorCoefficients t = taylor_coefficients([](const Params& p) { return sum(square(relu(p[0]))); }, {x2}, {v}, 3);
  CHECK(t.derivatives == std::vector<double>{4.25, 5.0, 4.0, 0.0});
}

TEST_CASE("forward and Taylor mode: bad input is refused before any work, naming the argument") {
  const Tensor x = ones({3}, f64);
  int calls = 0;
  ScalarFn f = [&calls](const Params& p) {
    ++calls;
    return sum(exp(p[0]));
  };
  CHECK_THROWS_WITH_AS(taylor_coefficients(f, {x}, {ones({4}, f64)}, 2),
                       doctest::Contains("taylor_coefficients: u[0] has shape [4] but x[0] has shape [3]"), Error);
  CHECK_THROWS_WITH_AS(taylor_coefficients(f, {x}, {ones({3})}, 2),
                       doctest::Contains("taylor_coefficients: u[0] is float32 on cpu but x[0] is float64 on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(taylor_coefficients(f, {x}, {x}, -1), doctest::Contains("order -1 is outside 0..32"), Error);
  CHECK_THROWS_WITH_AS(taylor_coefficients(f, {x}, {x}, 33), doctest::Contains("order 33 is outside 0..32"), Error);
  CHECK_THROWS_WITH_AS(taylor_coefficients(f, {x}, {}, 2), doctest::Contains("u has 0 tensors for 1 inputs"), Error);
  CHECK_THROWS_WITH_AS(jvp_forward(f, {x}, {ones({2}, f64)}), doctest::Contains("jvp_forward: v[0] has shape [2]"),
                       Error);
  CHECK_THROWS_WITH_AS(hvp_forward_over_reverse(f, {x}, {ones({3})}),
                       doctest::Contains("hvp_forward_over_reverse: v[0] is float32"), Error);
  CHECK(calls == 0);
  // order 0 is f(x); a function that ignores x has zero derivatives
  const TaylorCoefficients t0 = taylor_coefficients(f, {x}, {x}, 0);
  REQUIRE(t0.derivatives.size() == 1);
  CHECK(t0.derivatives[0] == doctest::Approx(3 * std::exp(1.0)).epsilon(1e-15));
  CHECK(taylor_coefficients([](const Params&) { return scalar(2.0, f64); }, {x}, {x}, 2).derivatives ==
        std::vector<double>{2.0, 0.0, 0.0});
  CHECK_THROWS_WITH_AS(with_series(x, {ones({3, 1}, f64)}), doctest::Contains("coefficient 1 is float64 [3, 1]"),
                       Error);
}
