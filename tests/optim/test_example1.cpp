// Example 1 (docs/algorithms.md §6), a short version of `flatmin example1`: from the sharp
// minimum (4, 1/4) of (x1 x2 − 1)², GD stays, RS and SA reach (1, 1) (tr̄ = 2) after a
// plain-GD refinement, and SA gets there in fewer steps than RS.
#include <doctest/doctest.h>

#include <cmath>

#include "optim/perturbation.hpp"
#include "optim/sgd.hpp"

using namespace flatmin;
using namespace flatmin::optim;

namespace {
Tensor ex1(const Params& p) { return sum(square(add_scalar(mul(slice(p[0], 0, 0, 1), slice(p[0], 0, 1, 2)), -1.0))); }
Params start() { return {from_vector(std::vector<double>{4.0, 0.25}, {2}, {DType::f64})}; }
double tr_bar(const Params& x) {  // x1² + x2², written by hand (docs/algorithms.md §6)
  std::vector<double> v = x[0].to_vector();
  return v[0] * v[0] + v[1] * v[1];
}
// Steps until tr̄ is within 1% of 2 (or `steps`), then `refine` plain GD steps.
int64_t run(Optimizer& opt, const Params& x, int64_t steps, int64_t refine) {
  Closure c = function_closure(ex1, x);
  int64_t reached = -1;
  for (int64_t t = 1; t <= steps && reached < 0; ++t) {
    opt.step(c);
    if (std::fabs(tr_bar(x) - 2) <= 0.02) reached = t;
  }
  Sgd gd(x, {.lr = 0.01});
  for (int64_t t = 0; t < refine; ++t) gd.step(c);
  return reached;
}
}  // namespace

TEST_CASE("Example 1: tr̄ = x1² + x2² matches the dense Hessian") {
  for (auto p : {std::vector<double>{4.0, 0.25}, {1.3, -0.2}, {0.5, 2.0}}) {
    Params x = {from_vector(p, {2}, {DType::f64})};
    std::vector<double> h = hessian(ex1, x).to_vector();
    CHECK((h[0] + h[3]) / 2 == doctest::Approx(tr_bar(x)));
  }
}

TEST_CASE("Example 1: GD stays at the sharp minimum; RS and SA drift to (1, 1), SA faster") {
  Params xg = start();
  Sgd gd(xg, {.lr = 0.01});
  run(gd, xg, 3000, 0);
  CHECK(std::fabs(tr_bar(xg) - 16.0625) / 16.0625 < 0.01);

  Params xr = start(), xs = start();
  RandomlySmoothedPerturbation rs(xr, {.lr = 0.01, .rho = 0.3, .seed = 0});
  SharpnessAwarePerturbation sa(
      xs, {.lr = 0.01, .rho = 0.3, .seed = 0},
      function_batch_closure([](const std::vector<int64_t>&, const Params& p) { return ex1(p); }, xs), 1);
  const int64_t steps_rs = run(rs, xr, 4000, 2000), steps_sa = run(sa, xs, 4000, 2000);
  INFO("RS " << steps_rs << " steps, SA " << steps_sa << " steps");
  for (const Params* x : {&xr, &xs}) {
    CHECK(std::fabs(tr_bar(*x) - 2) / 2 < 0.01);
    CHECK(value(ex1, *x).item() <= 1e-6);
    CHECK((*x)[0].to_vector()[0] > 0);  // (1, 1), not (−1, −1)
  }
  REQUIRE(steps_rs > 0);
  REQUIRE(steps_sa > 0);
  CHECK(steps_sa < steps_rs);
}
