// The two perturbed gradient methods of docs/algorithms.md §3-4 (Ahn, Jadbabaie, Sra 2024):
//   g = ∇f(x);  if ‖g‖ ≤ ε0:  x ← x − η g − η' Proj⊥_g w,  else  x ← x − η g,
// where w is the gradient at a perturbed point:
//   RS (Algorithm 1): w = ∇f(x + ρu), u uniform on the unit sphere of all parameters together;
//   SA (Algorithm 2): w = ∇f_i(x + ρσ s/‖s‖), s = ∇f_i(x), i a random mini-batch of b
//     examples (b = 1: the per-example algorithm), σ = ±1; the same i for s and w.
//     Where i comes from (SaSampling): `all_examples` is Algorithm 2 as written (i uniform
//     over all n; g should then be the full gradient); `step_batch` draws i within the
//     step's own mini-batch (the paper's experiments: one batch for both), so that with
//     b = batch size s is g itself and SA at ρ = 0 is SGD(η) (docs/algorithms.md §4).
//     Remark 2: when ‖s‖ is below `vanish_threshold`, s = ∇f_i(x + ξ) with ξ uniform on the
//     sphere of radius `xi_radius`; if that vanishes too, the direction is ξ/‖ξ‖.
#pragma once
#include <limits>
#include <optional>

#include "optim/optimizer.hpp"

namespace flatmin::optim {

enum class SaSampling { all_examples, step_batch };

struct PerturbationOptions {
  double lr = 0.01;                                       // η
  std::optional<double> lr_perturb{};                     // η' (default: η)
  double rho = 0.01;                                      // ρ
  double eps0 = std::numeric_limits<double>::infinity();  // ε0 (default +∞: always perturb)
  uint64_t seed = 0;
  bool random_iterate = false;  // keep a uniformly random iterate among x_0..x_{T-1}
  // SA only
  int64_t batch = 1;  // b, the perturbation mini-batch size
  SaSampling sampling = SaSampling::all_examples;
  double vanish_threshold = 1e-12;  // ‖s‖ below this counts as 0 (Remark 2)
  double xi_radius = 1e-6;          // ‖ξ‖ of the Remark 2 fallback
  double eta_prime() const { return lr_perturb.value_or(lr); }
};
void validate(const PerturbationOptions& o);

// The pure rule shared by RS and SA: Δ = −η g − η' Proj⊥_g(w).
Params perturbed_update(double lr, double lr_perturb, const Params& g, const Params& w);
// The same Δ as a combination a·g + b·w (two in-place passes over the parameters instead
// of a chain of temporaries): a = −η + η'⟨g,w⟩/‖g‖² (−η when g = 0), b = −η'.
std::pair<double, double> perturbed_update_coefficients(double lr, double lr_perturb, const Params& g, const Params& w);

// What the last step did (for logs and tests).
struct PerturbationStepInfo {
  double loss = 0;
  double grad_norm = 0;
  bool perturbed = false;
  bool fallback = false;          // SA: Remark 2 was used
  double sigma = 0;               // SA: σ
  std::vector<int64_t> examples;  // SA: the mini-batch i
};

class PerturbationOptimizer : public Optimizer {
 public:
  PerturbationOptimizer(Params params, PerturbationOptions options);
  double step(const Closure& closure) override;
  const PerturbationStepInfo& last() const { return last_; }
  // The kept uniformly random iterate (random_iterate = true, after at least one step).
  Params chosen_iterate() const;
  const PerturbationOptions& options() const { return options_; }
  void set_lr(double lr, std::optional<double> lr_perturb);
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;

 protected:
  PerturbationOptions options_;
  Generator gen_;          // perturbations
  Generator iterate_gen_;  // the random iterate (separate: turning it on leaves the trajectory unchanged)
  uint64_t iterates_seen_ = 0;
  Params chosen_;
  PerturbationStepInfo last_;
  // w, the gradient at the perturbed point (parameters restored afterwards).
  virtual Params perturbed_gradient(const Closure& closure, const Params& g) = 0;
};

class RandomlySmoothedPerturbation : public PerturbationOptimizer {
 public:
  using PerturbationOptimizer::PerturbationOptimizer;

 protected:
  Params perturbed_gradient(const Closure& closure, const Params& g) override;
};

class SharpnessAwarePerturbation : public PerturbationOptimizer {
 public:
  // n examples; batch_loss gives ∇f_i for a mini-batch i of them.
  SharpnessAwarePerturbation(Params params, PerturbationOptions options, BatchClosure batch_loss, int64_t n);
  // step_batch sampling: the examples (indices in [0, n)) of the mini-batch the next step's
  // closure evaluates; required before each step. When b ≥ their number, i is all of them
  // and s is the step's gradient g (no extra evaluation).
  void set_step_examples(std::vector<int64_t> examples);

 protected:
  Params perturbed_gradient(const Closure& closure, const Params& g) override;

 private:
  BatchClosure batch_loss_;
  int64_t n_;
  std::vector<int64_t> step_examples_;
  std::vector<int64_t> draw_distinct(int64_t m);  // b distinct positions in [0, m), b ≤ m
};

}  // namespace flatmin::optim
