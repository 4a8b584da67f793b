// Stochastic gradient descent with PyTorch's exact conventions (torch.optim.SGD):
//   d = g + weight_decay·x
//   buf = d on the first step, else momentum·buf + (1 − dampening)·d
//   d = d + momentum·buf (Nesterov) or buf (classical)
//   x ← x − lr·d
#pragma once
#include "optim/optimizer.hpp"

namespace flatmin::optim {

struct SgdOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  double weight_decay = 0.0;
};
// Throws flatmin::Error naming the bad hyperparameter (negative or non-finite values,
// Nesterov without momentum or with dampening, as PyTorch refuses).
void validate(const SgdOptions& o);

// The pure rule: returns Δ with x_new = x + Δ. `momentum_buf` is empty before the first
// step and is updated in place (it stays empty when momentum = 0).
Params sgd_update(const SgdOptions& o, const Params& x, const Params& g, Params& momentum_buf);

class Sgd : public GradientOptimizer {
 public:
  Sgd(Params params, SgdOptions options);
  void apply(const Params& grad) override;
  double lr() const override { return options_.lr; }
  void set_lr(double lr) override;
  const SgdOptions& options() const { return options_; }
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;

 private:
  SgdOptions options_;
  Params momentum_buf_;
};

}  // namespace flatmin::optim
