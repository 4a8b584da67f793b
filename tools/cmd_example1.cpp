// `flatmin example1`: docs/algorithms.md §6 — f(x1, x2) = (x1 x2 − 1)², started on the minima
// hyperbola at a sharp point. GD stays; RS and SA drift along x1 x2 = 1 to the flat minimum
// (1, 1) where tr̄ = x1² + x2² = 2. For SA the training loss is f as a single example
// (n = 1: f = ℓ(p(x), y) with p = x1 x2, y = 1, ℓ squared), so i is always that example and
// ∇f_i = ∇f; at an exact minimum s = 0 and Remark 2's fallback gives the direction.
// After the main steps, `--refine` plain GD steps (docs/algorithms.md §4) bring the iterate back
// onto the minima set. Prints progress; the last line is a JSON summary.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "autodiff/autodiff.hpp"
#include "nn/safetensors.hpp"
#include "optim/perturbation.hpp"
#include "optim/sam.hpp"
#include "optim/sgd.hpp"
#include "optim/theorems.hpp"
#include "tools/command.hpp"
#include "tools/jsonl.hpp"

namespace flatmin::tools {
namespace {
using namespace flatmin::optim;

Tensor example1_loss(const Params& p) {
  return sum(square(add_scalar(mul(slice(p[0], 0, 0, 1), slice(p[0], 0, 1, 2)), -1.0)));
}
// tr ∇²f = 2(x1² + x2²) and d = 2, so tr̄ = x1² + x2² (the test checks this against hessian()).
double trace_normalized(double x1, double x2) { return x1 * x1 + x2 * x2; }

struct Settings {
  std::string method = "sa";
  int64_t steps = 5000, refine = 2000, log_every = 1000;
  double lr = 0.01, rho = 0.3, eps0 = INFINITY;
  std::optional<double> lr_perturb;
  uint64_t seed = 0;
  std::vector<double> start = {4.0, 0.25};
  std::string out;
  bool random_iterate = false;
};

std::unique_ptr<Optimizer> make(const Settings& s, const Params& x) {
  if (s.method == "gd") return std::make_unique<Sgd>(x, SgdOptions{.lr = s.lr});
  if (s.method == "sam")
    return std::make_unique<Sam>(std::make_unique<Sgd>(x, SgdOptions{.lr = s.lr}), SamOptions{.rho = s.rho});
  PerturbationOptions o{.lr = s.lr,
                        .lr_perturb = s.lr_perturb,
                        .rho = s.rho,
                        .eps0 = s.eps0,
                        .seed = s.seed,
                        .random_iterate = s.random_iterate};
  if (s.method == "rs") return std::make_unique<RandomlySmoothedPerturbation>(x, o);
  if (s.method == "sa") {
    ExamplesFn one = [](const std::vector<int64_t>&, const Params& p) { return example1_loss(p); };
    return std::make_unique<SharpnessAwarePerturbation>(x, o, function_batch_closure(one, x), 1);
  }
  throw Error("example1: unknown method '" + s.method + "' (gd, rs, sa, sam)");
}

int run(int argc, char** argv) {
  CLI::App app{"Example 1 of docs/algorithms.md: (x1 x2 - 1)^2 from a sharp minimum"};
  Settings s;
  app.add_option("--method", s.method, "gd | rs | sa | sam")->check(CLI::IsMember({"gd", "rs", "sa", "sam"}));
  app.add_option("--steps", s.steps, "steps of the method")->check(CLI::NonNegativeNumber);
  app.add_option("--refine", s.refine, "plain GD steps afterwards (docs/algorithms.md §4)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--lr", s.lr, "step size η (GD part; SGD/SAM learning rate)");
  app.add_option("--lr-perturb", s.lr_perturb, "η' for RS/SA (default η)");
  app.add_option("--rho", s.rho, "perturbation radius ρ (RS, SA, SAM)");
  app.add_option("--eps0", s.eps0, "perturb only when ‖∇f‖ ≤ ε0 (default +inf)");
  app.add_option("--seed", s.seed, "random seed")->check(NotNegative);
  app.add_option("--start", s.start, "starting point x1 x2")->expected(2);
  app.add_option("--log-every", s.log_every, "progress and metrics every N steps")->check(CLI::PositiveNumber);
  app.add_flag("--random-iterate", s.random_iterate,
               "RS/SA: continue (refine) from a uniformly random iterate x_t, t < steps, as the analysis does");
  app.add_option("--out", s.out, "metrics as JSON lines (written atomically at the end)");
  std::optional<double> theorem_eps, smoothness;
  double delta = 0.5;
  app.add_option(
      "--theorem-eps", theorem_eps,
      "rs/sa: set η, η', ρ, ε0 as Theorems 1/2 prescribe for this ε (optim/theorems.hpp), with the random iterate");
  app.add_option("--smoothness", smoothness, "L for --theorem-eps (default: λmax at the start, power method)");
  app.add_option("--delta", delta, "δ for --theorem-eps, in (0, 1]");
  CLI11_PARSE(app, argc, argv);
  nn::check_output_path("--out", s.out);
  if (theorem_eps) {
    if (s.method != "rs" && s.method != "sa") throw Error("example1: --theorem-eps is for --method rs or sa");
    if (smoothness && (!(*smoothness > 0) || !std::isfinite(*smoothness)))
      throw Error("example1: --smoothness (L) must be a positive finite number");
    Params x0 = {from_vector(std::vector<double>{s.start[0], s.start[1]}, {2}, {DType::f64})};
    const double L = smoothness ? *smoothness : 0;
    auto settings = [&](double l) {
      return s.method == "rs" ? rs_theorem_settings(*theorem_eps, l, delta)
                              : sa_theorem_settings(*theorem_eps, l, delta, 2);
    };
    settings(L > 0 ? L : 1.0);  // refuses a bad ε or δ before the power method runs
    const TheoremSettings t =
        settings(L > 0 ? L : smoothness_by_power(hvp_fn(example1_loss, x0), x0, {.max_iter = 500, .tol = 1e-10}));
    s.lr = t.lr;
    s.lr_perturb = t.lr_perturb;
    s.rho = t.rho;
    s.eps0 = t.eps0;
    s.random_iterate = true;
    std::fprintf(stderr, "example1: theorem settings: lr %.6g, lr_perturb %.6g, rho %.6g, eps0 %.6g\n", t.lr,
                 t.lr_perturb, t.rho, t.eps0);
  }
  if (!(s.lr > 0) || !std::isfinite(s.lr)) throw Error("example1: --lr must be a positive number");
  if (!std::isfinite(s.start[0]) || !std::isfinite(s.start[1]))
    throw Error("example1: --start must be two finite numbers");

  Params x = {from_vector(std::vector<double>{s.start[0], s.start[1]}, {2}, {DType::f64})};
  std::unique_ptr<Optimizer> opt = make(s, x);
  Sgd refine(x, {.lr = s.lr});
  Closure closure = function_closure(example1_loss, x);
  std::vector<nlohmann::json> rows;
  const double tr0 = trace_normalized(s.start[0], s.start[1]);
  int64_t first_within = -1;  // first step with tr̄ within 1% of 2
  auto record = [&](int64_t step, const char* phase, double loss) {
    std::vector<double> v = x[0].to_vector();
    const double tr = trace_normalized(v[0], v[1]);
    nlohmann::json r = {{"step", step}, {"phase", phase}, {"x1", v[0]},
                        {"x2", v[1]},   {"loss", loss},   {"trace_normalized", tr}};
    rows.push_back(r);
    std::printf("%s\n", r.dump().c_str());
    std::fflush(stdout);
  };
  double loss = value(example1_loss, x).item();
  record(0, s.method.c_str(), loss);
  for (int64_t t = 1; t <= s.steps; ++t) {
    loss = opt->step(closure);
    if (!std::isfinite(loss))
      throw Error("example1: the loss became " + std::to_string(loss) + " at step " + std::to_string(t) +
                  " (step size too large?)");
    std::vector<double> v = x[0].to_vector();
    if (first_within < 0 && std::fabs(trace_normalized(v[0], v[1]) - 2) <= 0.02) first_within = t;
    if (t % s.log_every == 0 || t == s.steps) record(t, s.method.c_str(), value(example1_loss, x).item());
  }
  if (s.random_iterate && s.steps > 0) {
    auto* p = dynamic_cast<PerturbationOptimizer*>(opt.get());
    if (!p) throw Error("example1: --random-iterate is for rs and sa");
    NoGrad ng;
    x[0].copy_(p->chosen_iterate()[0]);
    record(s.steps, "chosen-iterate", value(example1_loss, x).item());
  }
  for (int64_t t = 1; t <= s.refine; ++t) {
    refine.step(closure);
    if (t % s.log_every == 0 || t == s.refine) record(s.steps + t, "refine", value(example1_loss, x).item());
  }
  if (!s.out.empty()) write_jsonl_atomic(s.out, rows);
  std::vector<double> v = x[0].to_vector();
  const double tr = trace_normalized(v[0], v[1]);
  nlohmann::json summary = {
      {"method", s.method},
      {"steps", s.steps},
      {"refine", s.refine},
      {"lr", s.lr},
      {"lr_perturb", s.lr_perturb.value_or(s.lr)},
      {"rho", s.rho},
      {"seed", s.seed},
      {"x1", v[0]},
      {"x2", v[1]},
      {"loss", value(example1_loss, x).item()},
      {"trace_normalized", tr},
      {"trace_normalized_start", tr0},
      {"first_step_within_1pct_of_2", first_within},
      {"reached_flat_minimum", std::fabs(tr - 2) <= 0.02 && value(example1_loss, x).item() <= 1e-6}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

Register reg{{"example1", "Example 1: GD, RS, SA, SAM on (x1 x2 - 1)^2 from a sharp minimum", run}};
}  // namespace
}  // namespace flatmin::tools
