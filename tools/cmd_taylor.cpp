// `flatmin taylor`: the remainders of the k-th order Taylor expansions (k = 0..3) of a
// model's loss and of its gradient along a direction, over a range of radii ρ, and the
// fitted slopes of log remainder against log ρ (k + 1 expected where the expansion holds).
// With --derivatives taylor, the loss's D^k f[u^k] come from one Taylor-mode propagation
// (orders up to max_taylor_order; docs/taylor.md), followed by a table of the time each
// order takes in Taylor mode and in nested reverse mode.
#include <chrono>
#include <cmath>
#include <cstdio>

#include "autodiff/check.hpp"
#include "tools/command.hpp"
#include "tools/model_flags.hpp"

namespace flatmin::tools {
namespace {

void print_table(const char* what, const TaylorReport& r) {
  std::printf("%s\n  %-12s", what, "radius");
  for (size_t k = 0; k < r.remainder.size(); ++k) std::printf("  %-12s", ("k=" + std::to_string(k)).c_str());
  std::printf("\n");
  for (size_t i = 0; i < r.radii.size(); ++i) {
    std::printf("  %-12.4e", r.radii[i]);
    for (auto& rem : r.remainder) std::printf("  %-12.4e", rem[i]);
    std::printf("\n");
  }
  std::printf("  %-12s", "slope");
  for (size_t k = 0; k < r.slope.size(); ++k)
    std::printf("  %-12s", (std::to_string(r.slope[k]).substr(0, 6) + " (" + std::to_string(r.used[k]) + ")").c_str());
  std::printf("\n  expected    ");
  for (size_t k = 0; k < r.slope.size(); ++k) std::printf("  %-12zu", k + 1);
  std::printf("\n");
}

std::string json_report(const TaylorReport& r) {
  auto list = [](const std::vector<double>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + json_number(v[i]);
    return s + "]";
  };
  std::string s = "{\"radii\": " + list(r.radii) + ", \"remainder\": [";
  for (size_t k = 0; k < r.remainder.size(); ++k) s += (k ? ", " : "") + list(r.remainder[k]);
  s += "], \"slope\": " + list(r.slope) + ", \"used\": [";
  for (size_t k = 0; k < r.used.size(); ++k) s += (k ? ", " : "") + std::to_string(r.used[k]);
  return s + "]}";
}

// A slope left null because every remainder sits below the rounding floor is a result; a
// non-finite remainder (the loss overflowed at some radius) is not: the command fails.
int finite_or_fail(std::initializer_list<const TaylorReport*> reports) {
  for (const TaylorReport* r : reports)
    for (const auto& rem : r->remainder)
      for (double v : rem)
        if (!std::isfinite(v)) {
          std::fprintf(stderr, "flatmin taylor: a non-finite remainder (printed as null): lower the radii\n");
          return 3;
        }
  return 0;
}

template <class F> double seconds_of(F f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The loss table from Taylor-mode derivatives, then the seconds D^0..D^k take for each k in
// both modes (nested reverse only up to order 6, where its cost has grown past Taylor mode's).
int run_taylor_mode(const Problem& p, const Params& u, const std::vector<double>& radii, int max_order, bool json) {
  TaylorReport of_loss =
      taylor_check(p.loss, p.x, u, {.radii = radii, .max_order = max_order, .gradient = false, .taylor_mode = true});
  std::vector<double> taylor_s, reverse_s;
  for (int k = 1; k <= max_order; ++k) {
    taylor_s.push_back(seconds_of([&] { taylor_coefficients(p.loss, p.x, u, k); }));
    reverse_s.push_back(k <= 6 ? seconds_of([&] { directional_derivatives(p.loss, p.x, u, k); }) : std::nan(""));
  }
  if (json) {
    auto list = [](const std::vector<double>& v) {
      std::string s = "[";
      for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + json_number(v[i]);
      return s + "]";
    };
    std::printf("{\"loss\": %s, \"seconds\": {\"taylor\": %s, \"nested_reverse\": %s}}\n", json_report(of_loss).c_str(),
                list(taylor_s).c_str(), list(reverse_s).c_str());
  } else {
    print_table("remainder |f(x+ρu) − Σ_{j≤k} ρ^j/j! D^j f[u^j]|, D^j from Taylor mode", of_loss);
    std::printf("seconds for D^0..D^k along u (one call each)\n  %-6s  %-12s  %-14s\n", "k", "taylor mode",
                "nested reverse");
    for (int k = 1; k <= max_order; ++k)
      std::printf("  %-6d  %-12.4g  %-14s\n", k, taylor_s[size_t(k - 1)],
                  k <= 6 ? std::to_string(reverse_s[size_t(k - 1)]).c_str() : "(not run)");
  }
  return finite_or_fail({&of_loss});
}

int run(int argc, char** argv) {
  CLI::App app{"Taylor remainders of a model's loss and gradient along a direction, with fitted slopes"};
  ModelFlags flags;
  flags.add_to(app);
  std::string v_path;
  uint64_t seed = 0;
  std::vector<double> radii;
  int max_order = 3;
  bool json = false;
  std::string derivatives = "reverse";
  app.add_option("--v", v_path, "direction (.safetensors, one tensor per parameter; normalised to unit length)");
  app.add_option("--seed", seed, "seed of a random unit direction (when no --v)")->check(NotNegative);
  app.add_option("--radii", radii, "radii ρ, comma-separated (default 0.1/2^i, i = 0..7)")->delimiter(',');
  app.add_option("--max-order", max_order, "highest expansion order k (reverse: 0..3; taylor: 0..32)")
      ->check(CLI::Range(0, max_taylor_order));
  app.add_option("--derivatives", derivatives,
                 "reverse (nested reverse mode: loss and gradient tables) | taylor (Taylor mode: loss table, then "
                 "the time per order of both modes)")
      ->check(CLI::IsMember({"reverse", "taylor"}));
  app.add_flag("--json", json, "print one JSON object instead of tables");
  CLI11_PARSE(app, argc, argv);
  for (double r : radii)
    if (!(r > 0) || !std::isfinite(r)) throw Error("--radii: every radius must be a positive finite number");
  if (radii.size() == 1) throw Error("--radii: a slope needs at least two radii");
  const bool taylor_mode = derivatives == "taylor";
  if (!taylor_mode && max_order > 3)
    throw Error("--max-order " + std::to_string(max_order) +
                ": nested reverse mode goes up to 3 here; use --derivatives taylor for higher orders");

  Problem p = load_problem(flags);
  Params u = v_path.empty() ? Generator(seed).sphere_like(p.x) : load_direction(v_path, p);
  const double length = norm(u).item();
  if (!(length > 0)) throw Error("the direction has length " + std::to_string(length));
  u = scale(1.0 / length, u);
  if (taylor_mode) return run_taylor_mode(p, u, radii, max_order, json);
  TaylorReport of_loss = taylor_check(p.loss, p.x, u, {.radii = radii, .max_order = max_order, .gradient = false});
  TaylorReport of_grad = taylor_check(p.loss, p.x, u, {.radii = radii, .max_order = max_order, .gradient = true});
  if (json) {
    std::printf("{\"loss\": %s, \"gradient\": %s}\n", json_report(of_loss).c_str(), json_report(of_grad).c_str());
  } else {
    print_table("remainder |f(x+ρu) − Σ_{j≤k} ρ^j/j! D^j f[u^j]|", of_loss);
    print_table("remainder ‖∇f(x+ρu) − Σ_{j≤k} ρ^j/j! ∇D^j f[u^j]‖", of_grad);
  }
  return finite_or_fail({&of_loss, &of_grad});
}

Register reg{{"taylor", "Taylor remainders and slopes of a ResNet-18's loss and gradient along a direction", run}};
}  // namespace
}  // namespace flatmin::tools
