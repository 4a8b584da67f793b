// SGD against hand-computed steps and against PyTorch's torch.optim.SGD trajectories
// (data/sgd_reference.txt, made by data/make_sgd_reference.py).
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>

#include "optim/sgd.hpp"

using namespace flatmin;
using namespace flatmin::optim;

namespace {
const TensorOptions f64{DType::f64};
Tensor vec(std::vector<double> v) { return from_vector(v, {int64_t(v.size())}, f64); }

// f(x) = Σ a x⁴/4 + Σ b x + (x0 x1)², as in the reference script.
Tensor reference_f(const Params& p) {
  Tensor x = p[0];
  Tensor a = vec({1.0, 0.5, 2.0}), b = vec({0.3, -0.2, 0.1});
  Tensor x01 = mul(slice(x, 0, 0, 1), slice(x, 0, 1, 2));
  return add(add(sum(mul(a, pow(x, 4.0))) / 4.0, sum(mul(b, x))), sum(square(x01)));
}
}  // namespace

TEST_CASE("SGD pure rule: one step with momentum, dampening, weight decay by hand") {
  SgdOptions o{.lr = 0.1, .momentum = 0.9, .dampening = 0.5, .nesterov = false, .weight_decay = 0.2};
  Params x = {vec({1.0, -2.0})}, g = {vec({0.5, 0.25})};
  Params buf;
  // first step: d = g + 0.2 x = (0.7, -0.15); buf = d; Δ = −0.1 d
  Params d1 = sgd_update(o, x, g, buf);
  CHECK(d1[0].to_vector()[0] == doctest::Approx(-0.07));
  CHECK(d1[0].to_vector()[1] == doctest::Approx(0.015));
  // second step at the same x, g: buf = 0.9 buf + 0.5 d = 1.4 d; Δ = −0.1·1.4 d
  Params d2 = sgd_update(o, x, g, buf);
  CHECK(d2[0].to_vector()[0] == doctest::Approx(-0.098));
  CHECK(d2[0].to_vector()[1] == doctest::Approx(0.021));
  // Nesterov second step: buf = 0.9 d + d = 1.9 d, Δ = −0.1 (d + 0.9·1.9 d) = −0.271 d
  SgdOptions n{.lr = 0.1, .momentum = 0.9, .dampening = 0, .nesterov = true, .weight_decay = 0.2};
  Params nb;
  sgd_update(n, x, g, nb);
  Params d3 = sgd_update(n, x, g, nb);
  CHECK(d3[0].to_vector()[0] == doctest::Approx(-0.271 * 0.7));
}

TEST_CASE("SGD matches PyTorch's trajectories (momentum, dampening, Nesterov, weight decay)") {
  std::ifstream in(std::string(FLATMIN_SOURCE_DIR) + "/tests/optim/data/sgd_reference.txt");
  REQUIRE(in.good());
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::string name;
    SgdOptions o;
    int nesterov = 0;
    ss >> name >> o.lr >> o.momentum >> o.dampening >> nesterov >> o.weight_decay;
    o.nesterov = nesterov != 0;
    std::vector<double> want((std::istream_iterator<double>(ss)), std::istream_iterator<double>());
    REQUIRE(want.size() == 18);
    Params x = {vec({0.7, -1.1, 0.4})};
    x[0].requires_grad_();
    Sgd sgd(x, o);
    Closure c = function_closure(reference_f, x);
    for (int step = 0; step < 6; ++step) {
      sgd.step(c);
      std::vector<double> got = x[0].to_vector();
      for (int k = 0; k < 3; ++k) {
        INFO(name << " step " << step << " coordinate " << k);
        CHECK(got[size_t(k)] == doctest::Approx(want[size_t(3 * step + k)]).epsilon(1e-12));
      }
    }
    ++cases;
  }
  CHECK(cases == 6);
}

TEST_CASE("SGD refuses bad hyperparameters and mismatched gradients") {
  Params x = {vec({1.0})};
  CHECK_THROWS_AS(Sgd(x, {.lr = -1}), Error);
  CHECK_THROWS_AS(Sgd(x, {.lr = std::nan("")}), Error);
  CHECK_THROWS_AS(Sgd(x, {.lr = 0.1, .momentum = -0.5}), Error);
  CHECK_THROWS_AS(Sgd(x, {.lr = 0.1, .momentum = 0, .dampening = 0, .nesterov = true}), Error);
  CHECK_THROWS_AS(Sgd(x, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}), Error);
  Sgd ok(x, {.lr = 0.1});
  CHECK_THROWS_AS(ok.apply({vec({1.0, 2.0})}), Error);
  CHECK_THROWS_AS(ok.set_lr(-0.1), Error);
}

TEST_CASE("SGD state save/restore continues identically") {
  SgdOptions o{.lr = 0.05, .momentum = 0.9};
  Params x = {vec({0.7, -1.1, 0.4})};
  Closure c = function_closure(reference_f, x);
  Sgd a(x, o);
  for (int i = 0; i < 3; ++i) a.step(c);
  OptimizerState saved = a.state();
  std::vector<double> x3 = x[0].to_vector();
  for (int i = 0; i < 3; ++i) a.step(c);
  std::vector<double> x6 = x[0].to_vector();
  Params y = {vec(x3)};
  Sgd b(y, o);
  b.load_state(saved);
  Closure cb = function_closure(reference_f, y);
  for (int i = 0; i < 3; ++i) b.step(cb);
  CHECK(y[0].to_vector() == x6);
  CHECK(b.steps() == 6);
}
