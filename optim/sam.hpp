// Sharpness-aware minimization (Foret et al. 2021; docs/algorithms.md §5), wrapping a base
// optimizer:  g = ∇f_B(x);  e = ρ g / (‖g‖ + eps)   (adaptive: e = ρ x⊙x⊙g / (‖x⊙g‖ + eps));
// the base optimizer then takes its step at x with the gradient ∇f_B(x + e).
// The evaluation at x + e is made with update_stats = false (BatchNorm statistics are
// updated once per step). Learning-rate schedules act on the base optimizer.
#pragma once
#include <memory>

#include "optim/optimizer.hpp"

namespace flatmin::optim {

struct SamOptions {
  double rho = 0.05;
  bool adaptive = false;
  double eps = 1e-12;  // added to the norm in the denominator (both forms), as SAM's reference code does
};
void validate(const SamOptions& o);

// The pure rule: the perturbation e at x with gradient g.
Params sam_perturbation(const SamOptions& o, const Params& x, const Params& g);

class Sam : public Optimizer {
 public:
  // The base optimizer must update the same parameter tensors.
  Sam(std::unique_ptr<GradientOptimizer> base, SamOptions options);
  double step(const Closure& closure) override;
  GradientOptimizer& base() { return *base_; }
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;

 private:
  std::unique_ptr<GradientOptimizer> base_;
  SamOptions options_;
};

}  // namespace flatmin::optim
