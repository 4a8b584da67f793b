// Module registry, layers and initialisation against hand-computed values.
#include <doctest/doctest.h>

#include <cmath>

#include "autodiff/autodiff.hpp"
#include "nn/nn.hpp"

using namespace flatmin;

namespace {
std::vector<std::string> names(const nn::NamedTensors& t) {
  std::vector<std::string> r;
  for (auto& [n, x] : t) r.push_back(n);
  return r;
}
}  // namespace

TEST_CASE("Linear: forward by hand, and assigning through the registry changes forward and parameters()") {
  nn::Linear lin(2, 2);
  CHECK(names(lin.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  {
    NoGrad ng;
    lin.param("weight").copy_(from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2}));
    lin.param("bias").copy_(from_vector(std::vector<float>{0.5f, -1}, {2}));
  }
  Tensor x = from_vector(std::vector<float>{1, -1}, {1, 2});
  CHECK(lin(x).to_vector() == std::vector<double>{1 - 2 + 0.5, 3 - 4 - 1});
  lin.param("bias") = zeros({2});
  CHECK(lin(x).to_vector() == std::vector<double>{-1, -1});
  CHECK(lin.parameters()[1].same(lin.param("bias")));
  CHECK_THROWS_AS(lin.param("nope"), Error);
}

TEST_CASE("MLP: PyTorch's Sequential names, set_parameters, zero_grad, to(f64)") {
  nn::MLP mlp({3, 4, 2}, nn::Act::tanh);
  CHECK(names(mlp.named_parameters()) == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  CHECK(mlp.num_parameters() == 3 * 4 + 4 + 4 * 2 + 2);
  mlp.to(DType::f64);
  for (const Tensor& p : mlp.parameters()) {
    CHECK(p.dtype() == DType::f64);
    CHECK(p.requires_grad());
  }
  Tensor x = ones({5, 3}, {DType::f64});
  sum(mlp(x)).backward();
  CHECK(mlp.param("0.weight").grad().defined());
  mlp.zero_grad();
  CHECK(!mlp.param("0.weight").grad().defined());
  Params p = zeros_like(mlp.parameters());
  mlp.set_parameters(p);
  CHECK(mlp(x).to_vector() == std::vector<double>(10, 0.0));
  CHECK_THROWS_AS(mlp.set_parameters({zeros({4, 3})}), Error);
}

TEST_CASE("WithParameters: the functional API sees a module as f(p) and leaves its parameters as they were") {
  nn::MLP mlp({2, 3, 1}, nn::Act::tanh);
  mlp.to(DType::f64);
  const Params before = mlp.parameters();
  Tensor x = from_vector(std::vector<double>{0.5, -1, 2, 0.25}, {2, 2}, {DType::f64});
  ScalarFn f = [&](const Params& p) {
    nn::WithParameters with(mlp, p);
    return sum(mlp(x));
  };
  Params zero = zeros_like(before);
  CHECK(value(f, zero).item() == 0.0);  // evaluated at p, not at the module's own parameters
  DerivativeCheck c = check_derivatives(f, before, {.max_order = 3});
  CHECK(c.ok);
  const Params after = mlp.parameters();
  for (size_t i = 0; i < before.size(); ++i) CHECK(after[i].same(before[i]));
  CHECK(mlp.has_param("2.bias"));
  CHECK(!mlp.has_param("1.weight"));  // the activation has none
  CHECK(!mlp.has_param("7.bias"));
}

TEST_CASE("init: PyTorch's default Linear/Conv2d bounds and torchvision's kaiming_normal fan_out") {
  Generator g(5);
  nn::Linear lin(400, 300, true, g);
  const double bound = 1.0 / std::sqrt(400.0);
  auto w = lin.param("weight").to_vector();
  double mx = 0, ss = 0;
  for (double v : w) mx = std::max(mx, std::fabs(v)), ss += v * v;
  CHECK(mx <= bound);
  CHECK(mx > 0.99 * bound);
  CHECK(std::sqrt(ss / w.size()) == doctest::Approx(bound / std::sqrt(3.0)).epsilon(0.02));  // U(-b,b): std b/√3
  nn::Conv2d conv(8, 16, 3, {}, g);
  const double cb = 1.0 / std::sqrt(8.0 * 9.0);
  for (double v : conv.param("bias").to_vector()) CHECK(std::fabs(v) <= cb);
  Tensor k = nn::kaiming_normal_relu(g, {64, 32, 3, 3}, nn::FanMode::fan_out, {DType::f64});
  CHECK(std::sqrt(mean(square(k)).item()) == doctest::Approx(std::sqrt(2.0 / (64 * 9))).epsilon(0.02));
  CHECK(nn::default_groups(64) == 32);
  CHECK(nn::default_groups(2) == 2);
  CHECK(nn::default_groups(48) == 24);
}

TEST_CASE("BatchNorm2d: PyTorch's state-dict names, running statistics in train, frozen on request") {
  nn::BatchNorm2d bn(2);
  CHECK(names(bn.state_dict()) ==
        std::vector<std::string>{"weight", "bias", "running_mean", "running_var", "num_batches_tracked"});
  CHECK(names(bn.named_buffers()) == std::vector<std::string>{"running_mean", "running_var", "num_batches_tracked"});
  bn.to(DType::f64);
  CHECK(bn.buffer("num_batches_tracked").dtype() == DType::i64);
  // Channel 0 holds {1, 3}, channel 1 holds {2, 6} (N = 2, 1x1): means 2 and 4, unbiased variances 2 and 8.
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 6}, {2, 2, 1, 1}, {DType::f64});
  bn.update_running_stats(false);
  Tensor y = bn(x);
  CHECK(bn.buffer("running_mean").to_vector() == std::vector<double>{0, 0});
  CHECK(bn.buffer("num_batches_tracked").item() == 0);
  // normalised with the biased variance: (1 - 2)/sqrt(1 + eps) ...
  CHECK(y.to_vector()[0] == doctest::Approx(-1.0 / std::sqrt(1.0 + 1e-5)));
  bn.update_running_stats(true);
  bn(x);
  auto rm = bn.buffer("running_mean").to_vector(), rv = bn.buffer("running_var").to_vector();
  CHECK(rm[0] == doctest::Approx(0.2));
  CHECK(rm[1] == doctest::Approx(0.4));
  CHECK(rv[0] == doctest::Approx(0.9 + 0.1 * 2));
  CHECK(rv[1] == doctest::Approx(0.9 + 0.1 * 8));
  CHECK(bn.buffer("num_batches_tracked").item() == 1);
  bn.eval();
  Tensor ye = bn(x);  // running statistics now
  CHECK(ye.to_vector()[0] == doctest::Approx((1 - 0.2) / std::sqrt(1.1 + 1e-5)));
  CHECK(bn.buffer("num_batches_tracked").item() == 1);
}

TEST_CASE("BatchNorm2d::forward_relu: relu(forward(x)), the same running statistics, both layouts") {
  for (bool cl : {false, true}) {
    INFO("channels_last " << cl);
    nn::BatchNorm2d fused(3, 1e-5, 0.1, cl), plain(3, 1e-5, 0.1, cl);
    Tensor x = Generator(4).normal(cl ? Shape{2, 4, 5, 3} : Shape{2, 3, 4, 5});
    for (bool training : {true, false}) {
      fused.train(training);
      plain.train(training);
      const std::vector<double> yf = fused.forward_relu(x).to_vector(), yp = relu(plain(x)).to_vector();
      REQUIRE(yf.size() == yp.size());
      for (size_t i = 0; i < yf.size(); ++i) CHECK(yf[i] == doctest::Approx(yp[i]).epsilon(1e-5));
      for (const char* b : {"running_mean", "running_var", "num_batches_tracked"})
        CHECK(fused.buffer(b).to_vector() == plain.buffer(b).to_vector());
    }
    CHECK(fused.buffer("num_batches_tracked").item() == 1);
  }
}

TEST_CASE("load_state_dict: dtype conversion, num_batches_tracked tolerance, named errors") {
  nn::Sequential s;
  s.push_back(nn::Linear(2, 1));
  s.push_back(nn::GroupNorm(1, 1));
  s.to(DType::f64);
  nn::NamedTensors state = {{"0.weight", from_vector(std::vector<float>{1, 2}, {1, 2})},
                            {"0.bias", zeros({1})},
                            {"1.weight", ones({1})},
                            {"1.bias", zeros({1})},
                            {"1.num_batches_tracked", from_ints({3}, {})}};
  nn::load_state_dict(s, state, "test");
  CHECK(s.param("0.weight").dtype() == DType::f64);
  CHECK(s.param("0.weight").to_vector() == std::vector<double>{1, 2});
  auto fails_with = [&](const nn::NamedTensors& st, const std::string& what) {
    try {
      nn::load_state_dict(s, st, "w.safetensors");
      FAIL("expected an error");
    } catch (const Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(what) != std::string::npos);
      CHECK(std::string(e.what()).find("w.safetensors") != std::string::npos);
    }
  };
  auto missing = state;
  missing.erase(missing.begin() + 1);
  fails_with(missing, "missing keys (1): 0.bias");
  auto extra = state;
  extra.emplace_back("fc.weight", zeros({1}));
  fails_with(extra, "unexpected keys (1): fc.weight");
  auto wrong = state;
  wrong[0].second = zeros({2, 1});
  fails_with(wrong, "0.weight (model [1, 2], given [2, 1])");
}
