// `flatmin check`: the derivative engine checks itself on built-in functions — every order
// against finite differences, and the Taylor remainder slopes — and prints a table.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>

#include "autodiff/autodiff.hpp"
#include "tools/command.hpp"

namespace flatmin::tools {
namespace {

struct Named {
  const char* name;
  ScalarFn f;
  Params x;
};

std::vector<Named> functions(uint64_t seed) {
  const TensorOptions f64{DType::f64};
  Generator g(seed);
  Tensor X = g.normal({16, 4}, f64), Y = g.normal({16, 3}, f64);
  return {
      {"two-layer tanh network, squared loss",
       [X, Y](const Params& p) { return mean(square(sub(matmul(tanh(matmul(X, p[0])), p[1]), Y))); },
       {g.normal({4, 8}, f64), g.normal({8, 3}, f64)}},
      {"log-sum-exp", [](const Params& p) { return logsumexp(p[0], 0); }, {g.normal({10}, f64)}},
      {"Example 1: (x1 x2 - 1)^2",
       [](const Params& p) { return sum(square(add_scalar(mul(slice(p[0], 0, 0, 1), slice(p[0], 0, 1, 2)), -1.0))); },
       {from_vector(std::vector<double>{1.7, 0.4}, {2}, f64)}},
  };
}

int run(int argc, char** argv) {
  CLI::App app{"Check derivatives of orders 1-3 against finite differences and the Taylor remainder slopes"};
  uint64_t seed = 0;
  app.add_option("--seed", seed, "seed for the functions and directions")->check(NotNegative);
  CLI11_PARSE(app, argc, argv);
  bool all_ok = true;
  for (auto& fn : functions(seed)) {
    DerivativeCheck c = check_derivatives(fn.f, fn.x, {.seed = seed + 1});
    std::printf("%s\n  finite differences: order 1 %.1e, order 2 %.1e, order 3 %.1e  %s\n", fn.name, c.error[0],
                c.error[1], c.error[2], c.ok ? "ok" : c.message.c_str());
    Generator g(seed + 2);
    Params gr = gradient(fn.f, fn.x);
    Params u = axpy(1.0 / norm(gr).item(), gr, g.sphere_like(fn.x));
    u = scale(1.0 / norm(u).item(), u);
    TaylorReport t = taylor_check(fn.f, fn.x, u, {.max_order = 3});
    std::printf("  Taylor remainder slopes (expected k+1):");
    for (size_t k = 0; k < t.slope.size(); ++k) {
      std::printf("  k=%zu: %.3f", k, t.slope[k]);
      if (k < 3) all_ok &= std::fabs(t.slope[k] - double(k + 1)) < 0.15;
    }
    std::printf("\n");
    all_ok &= c.ok;
  }
  std::printf("%s\n", all_ok ? "all checks passed" : "SOME CHECKS FAILED");
  return all_ok ? 0 : 1;
}

Register reg{{"check", "check the derivative engine (orders 1-3, Taylor slopes) on built-in functions", run}};
}  // namespace
}  // namespace flatmin::tools
