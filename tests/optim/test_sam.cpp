// SAM (docs/algorithms.md §5) against a step computed by hand on f(x) = x0² + 3x1² + x0x1.
#include <doctest/doctest.h>

#include <cmath>

#include "optim/sam.hpp"
#include "optim/sgd.hpp"

using namespace flatmin;
using namespace flatmin::optim;

namespace {
const TensorOptions f64{DType::f64};
Tensor vec(std::vector<double> v) { return from_vector(v, {int64_t(v.size())}, f64); }
Tensor quad(const Params& p) {
  Tensor x0 = slice(p[0], 0, 0, 1), x1 = slice(p[0], 0, 1, 2);
  return sum(add(add(square(x0), mul_scalar(square(x1), 3.0)), mul(x0, x1)));
}
void quad_grad(double x0, double x1, double* g) {
  g[0] = 2 * x0 + x1;
  g[1] = 6 * x1 + x0;
}
}  // namespace

TEST_CASE("SAM step by hand, plain and adaptive; BatchNorm flag only on the first evaluation") {
  for (bool adaptive : {false, true}) {
    const double rho = 0.3, lr = 0.1, x0 = 1.0, x1 = 2.0;
    double g[2], e[2], gp[2];
    quad_grad(x0, x1, g);
    if (!adaptive) {
      const double n = std::sqrt(g[0] * g[0] + g[1] * g[1]) + 1e-12;
      e[0] = rho * g[0] / n;
      e[1] = rho * g[1] / n;
    } else {
      const double n = std::sqrt(x0 * x0 * g[0] * g[0] + x1 * x1 * g[1] * g[1]) + 1e-12;
      e[0] = rho * x0 * x0 * g[0] / n;
      e[1] = rho * x1 * x1 * g[1] / n;
    }
    quad_grad(x0 + e[0], x1 + e[1], gp);
    Params x = {vec({x0, x1})};
    std::vector<bool> flags;
    Closure inner = function_closure(quad, x);
    Closure c = [&](const EvalOptions& o) {
      flags.push_back(o.update_stats);
      return inner(o);
    };
    Sam sam(std::make_unique<Sgd>(x, SgdOptions{.lr = lr}), {.rho = rho, .adaptive = adaptive});
    const double loss = sam.step(c);
    INFO("adaptive " << adaptive);
    CHECK(loss == doctest::Approx(x0 * x0 + 3 * x1 * x1 + x0 * x1));
    std::vector<double> got = x[0].to_vector();
    CHECK(got[0] == doctest::Approx(x0 - lr * gp[0]).epsilon(1e-13));
    CHECK(got[1] == doctest::Approx(x1 - lr * gp[1]).epsilon(1e-13));
    CHECK(flags == std::vector<bool>{true, false});
  }
}

TEST_CASE("SAM with a momentum base: the base's buffer sees the perturbed gradients") {
  Params x = {vec({1.0, 2.0})};
  Sam sam(std::make_unique<Sgd>(x, SgdOptions{.lr = 0.1, .momentum = 0.9}), {.rho = 0.0});
  // ρ = 0: SAM is its base optimizer. Two momentum steps by hand.
  Closure c = function_closure(quad, x);
  sam.step(c);
  sam.step(c);
  double g[2];
  quad_grad(1.0, 2.0, g);
  double b[2] = {g[0], g[1]};
  double y[2] = {1.0 - 0.1 * b[0], 2.0 - 0.1 * b[1]};
  quad_grad(y[0], y[1], g);
  for (int k = 0; k < 2; ++k) b[k] = 0.9 * b[k] + g[k];
  CHECK(x[0].to_vector()[0] == doctest::Approx(y[0] - 0.1 * b[0]));
  CHECK(x[0].to_vector()[1] == doctest::Approx(y[1] - 0.1 * b[1]));
  CHECK(sam.steps() == 2);
}

TEST_CASE("SAM refuses a bad rho") {
  Params x = {vec({1.0})};
  CHECK_THROWS_AS(Sam(std::make_unique<Sgd>(x, SgdOptions{}), {.rho = -0.1}), Error);
  CHECK_THROWS_AS(Sam(std::make_unique<Sgd>(x, SgdOptions{}), {.rho = INFINITY}), Error);
  CHECK_THROWS_AS(Sam(nullptr, {}), Error);
}
