#include "optim/sgd.hpp"

#include <cmath>

namespace flatmin::optim {

static void require(bool ok, const std::string& what) {
  if (!ok) throw Error("SGD: " + what);
}

void validate(const SgdOptions& o) {
  require(std::isfinite(o.lr) && o.lr >= 0, "learning rate must be finite and >= 0, got " + std::to_string(o.lr));
  require(std::isfinite(o.momentum) && o.momentum >= 0,
          "momentum must be finite and >= 0, got " + std::to_string(o.momentum));
  require(std::isfinite(o.dampening), "dampening must be finite, got " + std::to_string(o.dampening));
  require(std::isfinite(o.weight_decay) && o.weight_decay >= 0,
          "weight decay must be finite and >= 0, got " + std::to_string(o.weight_decay));
  require(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
          "Nesterov momentum requires momentum > 0 and dampening = 0");
}

Params sgd_update(const SgdOptions& o, const Params& x, const Params& g, Params& buf) {
  check_grad_list("SGD", x, g);
  NoGrad ng;
  Params d = o.weight_decay != 0 ? axpy(o.weight_decay, detach(x), g) : g;
  if (o.momentum != 0) {
    if (buf.empty()) {
      for (const Tensor& t : d) buf.push_back(t.detach().clone());
    } else {
      check_grad_list("SGD momentum buffer", x, buf);
      buf = axpy(1.0 - o.dampening, d, scale(o.momentum, buf));
    }
    d = o.nesterov ? axpy(o.momentum, buf, d) : buf;
  }
  return scale(-o.lr, d);
}

Sgd::Sgd(Params params, SgdOptions options) : GradientOptimizer(std::move(params)), options_(options) {
  validate(options_);
}

void Sgd::apply(const Params& grad) {
  add_to_params(sgd_update(options_, params_, grad, momentum_buf_));
  ++steps_;
}

void Sgd::set_lr(double lr) {
  SgdOptions o = options_;
  o.lr = lr;
  validate(o);
  options_ = o;
}

OptimizerState Sgd::state() const {
  OptimizerState s = Optimizer::state();
  s.reals["lr"] = options_.lr;
  for (size_t i = 0; i < momentum_buf_.size(); ++i)
    s.tensors["momentum_buffer." + std::to_string(i)] = momentum_buf_[i];
  return s;
}

void Sgd::load_state(const OptimizerState& s) {
  Optimizer::load_state(s);
  set_lr(state_real(s, "lr"));
  momentum_buf_.clear();
  if (s.tensors.count("momentum_buffer.0")) {
    for (size_t i = 0; i < params_.size(); ++i) {
      Tensor t = state_tensor(s, "momentum_buffer." + std::to_string(i));
      if (t.shape() != params_[i].shape())
        throw Error("SGD state: momentum buffer " + std::to_string(i) + " has shape " + to_string(t.shape()) +
                    ", parameter has " + to_string(params_[i].shape()));
      momentum_buf_.push_back(t.detach().clone());
    }
  }
}

}  // namespace flatmin::optim
