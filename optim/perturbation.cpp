#include "optim/perturbation.hpp"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace flatmin::optim {

void validate(const PerturbationOptions& o) {
  auto bad = [](const std::string& what) { throw Error("RS/SA: " + what); };
  if (!std::isfinite(o.lr) || o.lr < 0) bad("lr (η) must be finite and >= 0, got " + std::to_string(o.lr));
  if (!std::isfinite(o.eta_prime()) || o.eta_prime() < 0)
    bad("lr_perturb (η') must be finite and >= 0, got " + std::to_string(o.eta_prime()));
  if (!std::isfinite(o.rho) || o.rho < 0) bad("rho must be finite and >= 0, got " + std::to_string(o.rho));
  if (std::isnan(o.eps0) || o.eps0 < 0) bad("eps0 must be >= 0 (or +inf), got " + std::to_string(o.eps0));
  if (o.batch < 1) bad("the perturbation batch size must be >= 1, got " + std::to_string(o.batch));
  if (!(o.vanish_threshold >= 0)) bad("vanish_threshold must be >= 0");
  if (!std::isfinite(o.xi_radius) || o.xi_radius <= 0) bad("xi_radius must be finite and > 0");
}

Params perturbed_update(double lr, double lr_perturb, const Params& g, const Params& w) {
  NoGrad ng;
  return axpy(-lr_perturb, project_out(g, w), scale(-lr, g));
}

std::pair<double, double> perturbed_update_coefficients(double lr, double lr_perturb, const Params& g,
                                                        const Params& w) {
  NoGrad ng;
  const double gg = dot(g, g).item();
  const double c = gg == 0.0 ? 0.0 : dot(g, w).item() / gg;  // Definition 4: Proj⊥_0(w) = w
  return {-lr + lr_perturb * c, -lr_perturb};
}

// Iterate-keeping generator: a fixed offset from the perturbation seed.
static constexpr uint64_t kIterateStream = 0x9E3779B97F4A7C15ull;

PerturbationOptimizer::PerturbationOptimizer(Params params, PerturbationOptions options)
    : Optimizer(std::move(params)), options_(options), gen_(options.seed), iterate_gen_(options.seed ^ kIterateStream) {
  validate(options_);
}

void PerturbationOptimizer::set_lr(double lr, std::optional<double> lr_perturb) {
  PerturbationOptions o = options_;
  o.lr = lr;
  o.lr_perturb = lr_perturb;
  validate(o);
  options_ = o;
}

double PerturbationOptimizer::step(const Closure& closure) {
  if (options_.random_iterate) {  // reservoir sampling: x_t kept with probability 1/(t+1)
    ++iterates_seen_;
    if (iterate_gen_.randint(int64_t(iterates_seen_)) == 0) chosen_ = snapshot();
  }
  last_ = {};
  Evaluation e = closure({.update_stats = true});
  check_grad_list("RS/SA", params_, e.grad);
  last_.loss = e.loss;
  last_.grad_norm = norm(e.grad).item();
  if (last_.grad_norm <= options_.eps0) {
    Params w = perturbed_gradient(closure, e.grad);
    last_.perturbed = true;
    auto [a, b] = perturbed_update_coefficients(options_.lr, options_.eta_prime(), e.grad, w);
    add_to_params(a, e.grad);
    add_to_params(b, w);
  } else {
    add_to_params(-options_.lr, e.grad);
  }
  ++steps_;
  return e.loss;
}

Params PerturbationOptimizer::chosen_iterate() const {
  if (!options_.random_iterate) throw Error("RS/SA: chosen_iterate() needs random_iterate = true");
  if (chosen_.empty()) throw Error("RS/SA: chosen_iterate() before the first step");
  return chosen_;
}

OptimizerState PerturbationOptimizer::state() const {
  OptimizerState s = Optimizer::state();
  s.integers["rng.seed"] = gen_.seed();
  s.integers["rng.offset"] = gen_.offset();
  s.integers["iterate_rng.seed"] = iterate_gen_.seed();
  s.integers["iterate_rng.offset"] = iterate_gen_.offset();
  s.integers["iterates_seen"] = iterates_seen_;
  s.reals["lr"] = options_.lr;
  s.reals["lr_perturb"] = options_.eta_prime();
  for (size_t i = 0; i < chosen_.size(); ++i) s.tensors["chosen_iterate." + std::to_string(i)] = chosen_[i];
  return s;
}

void PerturbationOptimizer::load_state(const OptimizerState& s) {
  Optimizer::load_state(s);
  gen_.set_state(state_integer(s, "rng.seed"), state_integer(s, "rng.offset"));
  iterate_gen_.set_state(state_integer(s, "iterate_rng.seed"), state_integer(s, "iterate_rng.offset"));
  iterates_seen_ = state_integer(s, "iterates_seen");
  set_lr(state_real(s, "lr"), state_real(s, "lr_perturb"));
  chosen_.clear();
  if (s.tensors.count("chosen_iterate.0"))
    for (size_t i = 0; i < params_.size(); ++i)
      chosen_.push_back(state_tensor(s, "chosen_iterate." + std::to_string(i)).detach().clone());
}

Params RandomlySmoothedPerturbation::perturbed_gradient(const Closure& closure, const Params& g) {
  (void)g;
  Params u = gen_.sphere_like(detach(params_));
  return evaluate_at_offset(closure, scale(options_.rho, u), {.update_stats = false}).grad;
}

SharpnessAwarePerturbation::SharpnessAwarePerturbation(Params params, PerturbationOptions options,
                                                       BatchClosure batch_loss, int64_t n)
    : PerturbationOptimizer(std::move(params), options), batch_loss_(std::move(batch_loss)), n_(n) {
  if (!batch_loss_) throw Error("SA: no per-example loss (batch closure) given");
  if (n_ < 1) throw Error("SA: the number of examples must be >= 1, got " + std::to_string(n_));
  if (options_.batch > n_)
    throw Error("SA: the perturbation batch size " + std::to_string(options_.batch) + " exceeds the " +
                std::to_string(n_) + " examples");
}

void SharpnessAwarePerturbation::set_step_examples(std::vector<int64_t> examples) {
  for (int64_t i : examples)
    if (i < 0 || i >= n_)
      throw Error("SA: step example " + std::to_string(i) + " is outside [0, " + std::to_string(n_) + ")");
  if (examples.empty()) throw Error("SA: the step's mini-batch is empty");
  step_examples_ = std::move(examples);
}

// b distinct positions, uniform over subsets (rejection of repeats; b ≤ m).
std::vector<int64_t> SharpnessAwarePerturbation::draw_distinct(int64_t m) {
  std::vector<int64_t> idx;
  if (options_.batch * 2 > m) {
    idx = gen_.permutation(m);
    idx.resize(size_t(options_.batch));
    return idx;
  }
  std::unordered_set<int64_t> seen;
  while (int64_t(idx.size()) < options_.batch) {
    int64_t i = gen_.randint(m);
    if (seen.insert(i).second) idx.push_back(i);
  }
  return idx;
}

Params SharpnessAwarePerturbation::perturbed_gradient(const Closure& closure, const Params& g) {
  const EvalOptions no_stats{.update_stats = false};
  // i, and whether it is the step's whole mini-batch (then the step's closure is ∇f_i and s = g).
  std::vector<int64_t> i;
  bool whole_step_batch = false;
  if (options_.sampling == SaSampling::step_batch) {
    if (step_examples_.empty())
      throw Error("SA: step_batch sampling needs the step's examples (set_step_examples) before each step");
    const int64_t m = int64_t(step_examples_.size());
    if (options_.batch >= m) {
      i = step_examples_;
      whole_step_batch = true;
    } else {
      for (int64_t k : draw_distinct(m)) i.push_back(step_examples_[size_t(k)]);
    }
    step_examples_.clear();  // each step names its own batch
  } else {
    i = draw_distinct(n_);
  }
  const double sigma = gen_.randint(2) == 0 ? -1.0 : 1.0;
  last_.examples = i;
  last_.sigma = sigma;
  const Closure ci = whole_step_batch ? closure : Closure([&](const EvalOptions& o) { return batch_loss_(i, o); });
  auto at = [&](const Params& offset) {
    return offset.empty() ? ci(no_stats).grad : evaluate_at_offset(ci, offset, no_stats).grad;
  };
  Params s = whole_step_batch ? g : at({});
  check_grad_list("SA per-example gradient", params_, s);
  double s_norm = norm(s).item();
  if (!(s_norm > options_.vanish_threshold)) {  // Remark 2
    last_.fallback = true;
    Params xi = scale(options_.xi_radius, gen_.sphere_like(detach(params_)));
    s = at(xi);
    s_norm = norm(s).item();
    if (!(s_norm > options_.vanish_threshold)) {
      s = xi;
      s_norm = options_.xi_radius;
    }
  }
  return at(scale(options_.rho * sigma / s_norm, s));
}

}  // namespace flatmin::optim
