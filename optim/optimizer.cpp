#include "optim/optimizer.hpp"

namespace flatmin::optim {

Evaluation evaluate(const ScalarFn& f, const Params& at) {
  EnableGrad on;
  Params x = leaves(at);
  Tensor y = f(x);
  if (!y.defined() || y.numel() != 1)
    throw Error("evaluate: the loss must be a scalar, got " +
                (y.defined() ? to_string(y.shape()) : std::string("undefined")));
  Evaluation e;
  e.loss = y.item();
  if (y.requires_grad()) e.grad = grad({y}, x, {.allow_unused = true});
  e.grad.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    if (!e.grad[i].defined()) e.grad[i] = zeros_like(at[i].detach());
  return e;
}

Closure function_closure(const ScalarFn& f, const Params& params) {
  return [f, params](const EvalOptions&) { return evaluate(f, params); };
}

BatchClosure function_batch_closure(const ExamplesFn& f, const Params& params) {
  return [f, params](const std::vector<int64_t>& idx, const EvalOptions&) {
    return evaluate([&](const Params& x) { return f(idx, x); }, params);
  };
}

Optimizer::Optimizer(Params params) : params_(std::move(params)) {
  if (params_.empty()) throw Error("optimizer: the parameter list is empty");
  for (size_t i = 0; i < params_.size(); ++i)
    if (!params_[i].defined() || !is_floating(params_[i].dtype()))
      throw Error("optimizer: parameter " + std::to_string(i) + " is undefined or not floating point");
}

OptimizerState Optimizer::state() const {
  OptimizerState s;
  s.integers["steps"] = uint64_t(steps_);
  return s;
}
void Optimizer::load_state(const OptimizerState& s) { steps_ = int64_t(state_integer(s, "steps")); }

void Optimizer::add_to_params(const Params& delta) { add_to_params(1.0, delta); }
void Optimizer::add_to_params(double alpha, const Params& delta) {
  check_grad_list("optimizer update", params_, delta);
  NoGrad ng;
  for (size_t i = 0; i < params_.size(); ++i) params_[i].add_(delta[i], alpha);
}
Params Optimizer::snapshot() const {
  NoGrad ng;
  Params s;
  for (const Tensor& p : params_) s.push_back(p.detach().clone());
  return s;
}
void Optimizer::restore(const Params& saved) {
  NoGrad ng;
  for (size_t i = 0; i < params_.size(); ++i) params_[i].copy_(saved[i]);
}
Evaluation Optimizer::evaluate_at_offset(const Closure& c, const Params& offset, const EvalOptions& o) {
  Params saved = snapshot();
  add_to_params(offset);
  Evaluation e;
  try {
    e = c(o);
  } catch (...) {
    restore(saved);
    throw;
  }
  restore(saved);
  return e;
}

double GradientOptimizer::step(const Closure& closure) {
  Evaluation e = closure({.update_stats = true});
  apply(e.grad);
  return e.loss;
}

void check_grad_list(const char* who, const Params& params, const Params& grad) {
  if (params.size() != grad.size())
    throw Error(std::string(who) + ": " + std::to_string(grad.size()) + " gradients for " +
                std::to_string(params.size()) + " parameters");
  for (size_t i = 0; i < params.size(); ++i)
    if (!grad[i].defined() || grad[i].shape() != params[i].shape())
      throw Error(std::string(who) + ": gradient " + std::to_string(i) + " has shape " +
                  (grad[i].defined() ? to_string(grad[i].shape()) : std::string("undefined")) + ", parameter has " +
                  to_string(params[i].shape()));
}

uint64_t state_integer(const OptimizerState& s, const std::string& key) {
  auto it = s.integers.find(key);
  if (it == s.integers.end()) throw Error("optimizer state: missing integer '" + key + "'");
  return it->second;
}
double state_real(const OptimizerState& s, const std::string& key) {
  auto it = s.reals.find(key);
  if (it == s.reals.end()) throw Error("optimizer state: missing real '" + key + "'");
  return it->second;
}
Tensor state_tensor(const OptimizerState& s, const std::string& key) {
  auto it = s.tensors.find(key);
  if (it == s.tensors.end()) throw Error("optimizer state: missing tensor '" + key + "'");
  return it->second;
}

}  // namespace flatmin::optim
