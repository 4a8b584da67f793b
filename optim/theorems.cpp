#include "optim/theorems.hpp"

#include <algorithm>
#include <cmath>

namespace flatmin::optim {
namespace {

void check_common(const char* who, double eps, double L, double delta, const TheoremConstants& c) {
  const std::string w = who;
  if (!(eps > 0) || !std::isfinite(eps))
    throw Error(w + ": ε must be a positive finite number, got " + std::to_string(eps));
  if (!(L > 0) || !std::isfinite(L)) throw Error(w + ": L must be a positive finite number, got " + std::to_string(L));
  if (!(delta > 0 && delta <= 1)) throw Error(w + ": δ must be in (0, 1], got " + std::to_string(delta));
  for (double k : {c.lr_perturb, c.rho, c.eps0})
    if (!(k > 0) || !std::isfinite(k)) throw Error(w + ": every constant must be a positive finite number");
}

}  // namespace

TheoremSettings rs_theorem_settings(double eps, double L, double delta, const TheoremConstants& c) {
  check_common("rs_theorem_settings", eps, L, delta, c);
  return {.lr = 1.0 / L,
          .lr_perturb = c.lr_perturb * delta * eps,
          .rho = c.rho * delta * std::sqrt(eps),
          .eps0 = c.eps0 * std::pow(delta * eps, 1.5)};
}

TheoremSettings sa_theorem_settings(double eps, double L, double delta, int64_t d, const TheoremConstants& c) {
  check_common("sa_theorem_settings", eps, L, delta, c);
  if (d < 1) throw Error("sa_theorem_settings: d must be >= 1, got " + std::to_string(d));
  const double dd = double(d);
  return {.lr = 1.0 / L,
          .lr_perturb = c.lr_perturb * delta / L,
          .rho = c.rho * delta * std::sqrt(eps) * std::min(1.0, std::sqrt(dd * dd * dd * eps)),
          .eps0 = c.eps0 * std::pow(delta * eps, 1.5)};
}

PerturbationOptions theorem_options(const TheoremSettings& s, uint64_t seed) {
  PerturbationOptions o{
      .lr = s.lr, .lr_perturb = s.lr_perturb, .rho = s.rho, .eps0 = s.eps0, .seed = seed, .random_iterate = true};
  validate(o);
  return o;
}

double smoothness_by_power(const HvpFn& hvp, const Params& like, const PowerOptions& o) {
  const double l = std::fabs(top_eigenvalue(hvp, like, o).value);
  if (!(l > 0) || !std::isfinite(l))
    throw Error("smoothness_by_power: the Hessian's largest eigenvalue is " + std::to_string(l) + ": give L");
  return l;
}

RefineResult refine_until_stationary(const Params& x, const Closure& closure, double lr, double eps,
                                     int64_t max_steps) {
  if (!(lr > 0) || !std::isfinite(lr)) throw Error("refine_until_stationary: lr must be a positive number");
  if (!(eps > 0)) throw Error("refine_until_stationary: eps must be > 0");
  if (max_steps < 0) throw Error("refine_until_stationary: max_steps must be >= 0");
  RefineResult r;
  for (int64_t t = 0;; ++t) {
    Evaluation e = closure({});
    ++r.gradient_evaluations;
    r.grad_norm = norm(e.grad).item();
    if (!std::isfinite(r.grad_norm))
      throw Error("refine_until_stationary: the gradient became non-finite (lr too large?)");
    if (r.grad_norm <= eps) {
      r.reached = true;
      return r;
    }
    if (t == max_steps) return r;
    NoGrad ng;
    for (size_t i = 0; i < x.size(); ++i) {
      Tensor live = x[i];  // a handle: the update lands in the caller's tensor
      live.add_(e.grad[i], -lr);
    }
  }
}

}  // namespace flatmin::optim
