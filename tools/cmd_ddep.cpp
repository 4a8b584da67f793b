// `flatmin ddep`: how the advantage of SA (Algorithm 2) over RS (Algorithm 1) grows with the
// dimension d (docs/algorithms.md §2, last item; §4's per-step decreases).
//
// Problem: a diagonal linear network with scalar outputs, parameters u, v ∈ R^m (d = 2m),
//   f(u, v) = (1/n) Σ_i (⟨a_i, u⊙v⟩ − y_i)²,   a_i ~ N(0, I/m),  y_i = ⟨a_i, β*⟩.
// Every (u, v) with u⊙v − β* ⟂ all a_i is a global minimum: a manifold of dimension d − n
// that grows with d while the Hessian's rank stays n. Exactly,
//   tr ∇²f(u, v) = (2/n) Σ_i Σ_j a_ij² (u_j² + v_j²)   (∂²r_i/∂u_j² = 0),
// checked against the dense autodiff Hessian at the start. Start: the sharp global minimum
// u = α·1, v = β*/α (α > 1: unbalanced). From it, RS and SA run with the same η, η', ρ for
// T steps, then `--refine` plain GD steps return the iterate to the minima set, and the
// decrease of tr̄ = tr/d per step is (tr̄_0 − tr̄_T)/T, averaged over seeds. The paper predicts
// SA ahead of RS by a factor growing like d; the fitted exponent is the least-squares slope of
// log(factor) against log(d).
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "autodiff/autodiff.hpp"
#include "nn/safetensors.hpp"
#include "optim/perturbation.hpp"
#include "optim/sgd.hpp"
#include "tools/command.hpp"
#include "tools/flat_problems.hpp"

namespace flatmin::tools {
namespace {
using namespace flatmin::optim;
using Problem = DiagonalNetwork;  // tools/flat_problems.hpp

struct Settings {
  std::vector<int64_t> dims = {16, 32, 64, 160};
  int64_t examples = 4, steps = 100, refine = 5000, seeds = 20, batch = 1;
  double lr = 0.1, rho = 0.5, alpha = 2.0;
  // η' small enough that SA's decrease over the T steps stays ~15% of tr̄_0 at d = 16 (the
  // early, linear regime; larger η' saturates SA at small d and inflates the exponent).
  std::optional<double> lr_perturb = 0.01;
  uint64_t problem_seed = 1;
  std::string out;
};

// tr̄ decrease per step of one run.
double run_once(const Problem& P, const Settings& s, bool sa, uint64_t seed) {
  Params x = {P.start[0].clone(), P.start[1].clone()};
  ScalarFn f = [&](const Params& p) { return P.full_loss(p); };
  Closure c = function_closure(f, x);
  PerturbationOptions o{.lr = s.lr, .lr_perturb = s.lr_perturb, .rho = s.rho, .seed = seed, .batch = s.batch};
  std::unique_ptr<Optimizer> opt;
  if (sa)
    opt = std::make_unique<SharpnessAwarePerturbation>(
        x, o,
        function_batch_closure([&](const std::vector<int64_t>& i, const Params& p) { return P.examples_loss(i, p); },
                               x),
        P.n);
  else
    opt = std::make_unique<RandomlySmoothedPerturbation>(x, o);
  const double t0 = P.trace_normalized(x);
  for (int64_t t = 0; t < s.steps; ++t)
    if (!std::isfinite(opt->step(c))) throw Error("ddep: the loss diverged (lower --lr or --rho)");
  Sgd gd(x, {.lr = s.lr});
  for (int64_t t = 0; t < s.refine; ++t) gd.step(c);
  const double final_loss = value(f, x).item();
  if (final_loss > 1e-8)
    std::fprintf(stderr, "ddep: warning: loss %.3g after refinement (d=%lld): raise --refine\n", final_loss,
                 (long long)(2 * P.m));
  return (t0 - P.trace_normalized(x)) / double(s.steps);
}

struct MeanSe {
  double mean = 0, se = 0;
};
MeanSe mean_se(const std::vector<double>& v) {
  MeanSe r;
  for (double x : v) r.mean += x / double(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - r.mean) * (x - r.mean);
    r.se = std::sqrt(ss / double(v.size() - 1) / double(v.size()));
  }
  return r;
}

int run(int argc, char** argv) {
  CLI::App app{"d-dependence of SA's advantage over RS on a diagonal linear network (scalar outputs)"};
  Settings s;
  // Bounded so that the dense Hessian check (d² doubles) and A (n × d/2) stay small.
  app.add_option("--dims", s.dims, "dimensions d = 2m (even, at most 4096)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t(2), int64_t(4096)));
  app.add_option("--examples", s.examples, "n, the number of examples (rank of the Hessian)")
      ->check(CLI::Range(int64_t(1), int64_t(10000)));
  app.add_option("--steps", s.steps, "T, steps of RS/SA per run")->check(CLI::PositiveNumber);
  app.add_option("--refine", s.refine, "plain GD steps after each run")->check(CLI::NonNegativeNumber);
  app.add_option("--seeds", s.seeds, "runs per method and d")->check(CLI::PositiveNumber);
  app.add_option("--batch", s.batch, "SA perturbation batch size b")->check(CLI::PositiveNumber);
  app.add_option("--lr", s.lr, "η");
  app.add_option("--lr-perturb", s.lr_perturb, "η' (default 0.01 here)");
  app.add_option("--rho", s.rho, "ρ");
  app.add_option("--alpha", s.alpha, "sharpness of the start: u = α·1, v = β*/α");
  app.add_option("--problem-seed", s.problem_seed, "seed of a_i and β*")->check(NotNegative);
  app.add_option("--out", s.out, "write the JSON result here too (atomically)");
  CLI11_PARSE(app, argc, argv);
  nn::check_output_path("--out", s.out);
  for (int64_t d : s.dims)
    if (d < 2 || d % 2) throw Error("ddep: every dimension must be even and >= 2, got " + std::to_string(d));
  if (!(s.alpha > 0)) throw Error("ddep: --alpha must be > 0");

  nlohmann::json rows = nlohmann::json::array();
  std::vector<double> logd, logfactor;
  for (int64_t d : s.dims) {
    Problem P(d / 2, s.examples, s.alpha, s.problem_seed + uint64_t(d));
    const double tr0 = P.trace_normalized(P.start);
    double dense = 0;
    {
      std::vector<double> h = hessian([&](const Params& p) { return P.full_loss(p); }, P.start).to_vector();
      for (int64_t i = 0; i < d; ++i) dense += h[size_t(i * d + i)];
      dense /= double(d);
    }
    if (std::fabs(dense - tr0) > 1e-9 * std::fabs(tr0))
      throw Error("ddep: closed-form trace disagrees with the dense Hessian");
    std::vector<double> rs, sa;
    for (int64_t k = 0; k < s.seeds; ++k) {
      rs.push_back(run_once(P, s, false, uint64_t(1000 + k)));
      sa.push_back(run_once(P, s, true, uint64_t(1000 + k)));
    }
    MeanSe r = mean_se(rs), a = mean_se(sa);
    const double factor = a.mean / r.mean;
    nlohmann::json row = {{"d", d},
                          {"trace_normalized_start", tr0},
                          {"trace_check_dense", dense},
                          {"rs_decrease_per_step", r.mean},
                          {"rs_stderr", r.se},
                          {"sa_decrease_per_step", a.mean},
                          {"sa_stderr", a.se},
                          {"factor", factor},
                          {"sa_fraction_decreased", a.mean * double(s.steps) / tr0}};
    std::printf("d=%4lld  tr̄0=%.5f  RS %.3e ± %.1e  SA %.3e ± %.1e  factor %.2f\n", (long long)d, tr0, r.mean, r.se,
                a.mean, a.se, factor);
    std::fflush(stdout);
    rows.push_back(row);
    if (factor > 0) {
      logd.push_back(std::log(double(d)));
      logfactor.push_back(std::log(factor));
    }
  }
  double slope = NAN;
  if (logd.size() >= 2) {
    double mx = 0, my = 0;
    for (size_t i = 0; i < logd.size(); ++i) mx += logd[i] / logd.size(), my += logfactor[i] / logd.size();
    double sxy = 0, sxx = 0;
    for (size_t i = 0; i < logd.size(); ++i)
      sxy += (logd[i] - mx) * (logfactor[i] - my), sxx += (logd[i] - mx) * (logd[i] - mx);
    slope = sxy / sxx;
  }
  nlohmann::json result = {{"problem", "diagonal linear network, scalar outputs"},
                           {"examples", s.examples},
                           {"steps", s.steps},
                           {"refine", s.refine},
                           {"seeds", s.seeds},
                           {"batch", s.batch},
                           {"lr", s.lr},
                           {"lr_perturb", s.lr_perturb.value_or(s.lr)},
                           {"rho", s.rho},
                           {"alpha", s.alpha},
                           {"rows", rows},
                           {"fitted_exponent", slope}};
  if (!s.out.empty()) nn::write_file_atomic(s.out, result.dump(2) + "\n");
  std::printf("%s\n", result.dump().c_str());
  return 0;
}

Register reg{{"ddep", "d-dependence of SA's advantage over RS (diagonal linear network)", run}};
}  // namespace
}  // namespace flatmin::tools
