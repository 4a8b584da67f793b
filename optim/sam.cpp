#include "optim/sam.hpp"

#include <cmath>

namespace flatmin::optim {

void validate(const SamOptions& o) {
  if (!std::isfinite(o.rho) || o.rho < 0) throw Error("SAM: rho must be finite and >= 0, got " + std::to_string(o.rho));
  if (!std::isfinite(o.eps) || o.eps < 0) throw Error("SAM: eps must be finite and >= 0, got " + std::to_string(o.eps));
}

Params sam_perturbation(const SamOptions& o, const Params& x, const Params& g) {
  check_grad_list("SAM", x, g);
  NoGrad ng;
  if (!o.adaptive) return scale(o.rho / (norm(g).item() + o.eps), g);
  Params xg, xxg;
  for (size_t i = 0; i < x.size(); ++i) {
    Tensor t = mul(x[i].detach(), g[i]);
    xg.push_back(t);
    xxg.push_back(mul(x[i].detach(), t));
  }
  return scale(o.rho / (norm(xg).item() + o.eps), xxg);
}

static Params base_params(const std::unique_ptr<GradientOptimizer>& b) {
  if (!b) throw Error("SAM: no base optimizer");
  return b->params();
}

Sam::Sam(std::unique_ptr<GradientOptimizer> base, SamOptions options)
    : Optimizer(base_params(base)), base_(std::move(base)), options_(options) {
  validate(options_);
}

double Sam::step(const Closure& closure) {
  Evaluation at_x = closure({.update_stats = true});
  Params e = sam_perturbation(options_, params_, at_x.grad);
  Evaluation at_perturbed = evaluate_at_offset(closure, e, {.update_stats = false});
  base_->apply(at_perturbed.grad);
  ++steps_;
  return at_x.loss;
}

OptimizerState Sam::state() const {
  OptimizerState s = base_->state();
  s.integers["sam.steps"] = uint64_t(steps_);
  return s;
}
void Sam::load_state(const OptimizerState& s) {
  base_->load_state(s);
  steps_ = int64_t(state_integer(s, "sam.steps"));
}

}  // namespace flatmin::optim
