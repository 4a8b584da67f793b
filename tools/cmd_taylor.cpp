// `flatmin taylor`: the remainders of the k-th order Taylor expansions (k = 0..3) of a
// model's loss and of its gradient along a direction, over a range of radii ρ, and the
// fitted slopes of log remainder against log ρ (k + 1 expected where the expansion holds).
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
  for (size_t k = 0; k < r.slope.size(); ++k) std::printf("  %-12s", (std::to_string(r.slope[k]).substr(0, 6) + " (" + std::to_string(r.used[k]) + ")").c_str());
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

int run(int argc, char** argv) {
  CLI::App app{"Taylor remainders of a model's loss and gradient along a direction, with fitted slopes"};
  ModelFlags flags;
  flags.add_to(app);
  std::string v_path;
  uint64_t seed = 0;
  std::vector<double> radii;
  int max_order = 3;
  bool json = false;
  app.add_option("--v", v_path, "direction (.safetensors, one tensor per parameter; normalised to unit length)");
  app.add_option("--seed", seed, "seed of a random unit direction (when no --v)")->check(NotNegative);
  app.add_option("--radii", radii, "radii ρ, comma-separated (default 0.1/2^i, i = 0..7)")->delimiter(',');
  app.add_option("--max-order", max_order, "highest expansion order k")->check(CLI::Range(0, 3));
  app.add_flag("--json", json, "print one JSON object instead of tables");
  CLI11_PARSE(app, argc, argv);
  for (double r : radii)
    if (!(r > 0) || !std::isfinite(r)) throw Error("--radii: every radius must be a positive finite number");
  if (radii.size() == 1) throw Error("--radii: a slope needs at least two radii");

  Problem p = load_problem(flags);
  Params u = v_path.empty() ? Generator(seed).sphere_like(p.x) : load_direction(v_path, p);
  const double length = norm(u).item();
  if (!(length > 0)) throw Error("the direction has length " + std::to_string(length));
  u = scale(1.0 / length, u);
  TaylorReport of_loss = taylor_check(p.loss, p.x, u, {.radii = radii, .max_order = max_order, .gradient = false});
  TaylorReport of_grad = taylor_check(p.loss, p.x, u, {.radii = radii, .max_order = max_order, .gradient = true});
  if (json) {
    std::printf("{\"loss\": %s, \"gradient\": %s}\n", json_report(of_loss).c_str(), json_report(of_grad).c_str());
  } else {
    print_table("remainder |f(x+ρu) − Σ_{j≤k} ρ^j/j! D^j f[u^j]|", of_loss);
    print_table("remainder ‖∇f(x+ρu) − Σ_{j≤k} ρ^j/j! ∇D^j f[u^j]‖", of_grad);
  }
  // A slope left null because every remainder sits below the rounding floor is a result; a
  // non-finite remainder (the loss overflowed at some radius) is not: the command fails.
  for (const TaylorReport* r : {&of_loss, &of_grad})
    for (const auto& rem : r->remainder)
      for (double v : rem)
        if (!std::isfinite(v)) {
          std::fprintf(stderr, "flatmin taylor: a non-finite remainder (printed as null): lower the radii\n");
          return 3;
        }
  return 0;
}

Register reg{{"taylor", "Taylor remainders and slopes of a ResNet-18's loss and gradient along a direction", run}};
}  // namespace
}  // namespace flatmin::tools
