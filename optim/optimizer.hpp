// Optimizers that update a list of parameter tensors in place. A step asks a closure for
// the loss and gradient at the current parameter values; algorithms that need gradients at
// perturbed points (SAM, RS, SA) move the parameters, call the closure again, and move them
// back. Each update rule is also a pure function (x, g, state) -> Δ in its own header, so it
// can be tested without a model.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "autodiff/functional.hpp"
#include "autodiff/random.hpp"

namespace flatmin::optim {

// What an evaluation may do besides computing the loss.
struct EvalOptions {
  // false on the evaluations at perturbed points: BatchNorm running statistics (and any
  // other state a forward pass keeps) must be updated once per step, not once per call.
  bool update_stats = true;
};

struct Evaluation {
  double loss = 0.0;
  Params grad;  // same shapes as the optimizer's parameters
};

// Loss and gradient at the parameters' current values (e.g. on the step's mini-batch).
using Closure = std::function<Evaluation(const EvalOptions&)>;
// Loss and gradient of the mean over the listed examples (indices in [0, n)) at the
// parameters' current values: what Algorithm 2 calls ∇f_i (a mini-batch i of size b).
using BatchClosure = std::function<Evaluation(const std::vector<int64_t>& examples, const EvalOptions&)>;

// Loss and gradient of f at `at` in one forward and one backward pass.
Evaluation evaluate(const ScalarFn& f, const Params& at);
// A closure for a plain function of the parameters: f is evaluated at params' current values.
Closure function_closure(const ScalarFn& f, const Params& params);
// f_examples(idx, x): the mean loss over the examples idx at x.
using ExamplesFn = std::function<Tensor(const std::vector<int64_t>&, const Params&)>;
BatchClosure function_batch_closure(const ExamplesFn& f, const Params& params);

// Everything a checkpoint needs to continue bit for bit: tensors (momentum buffers, a kept
// iterate), real hyperparameters, integers (step counters, generator seeds and offsets).
struct OptimizerState {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, double> reals;
  std::map<std::string, uint64_t> integers;
};

class Optimizer {
 public:
  explicit Optimizer(Params params);
  virtual ~Optimizer() = default;
  // One step; returns the loss at the parameters before the step.
  virtual double step(const Closure& closure) = 0;
  virtual OptimizerState state() const;
  virtual void load_state(const OptimizerState& s);
  const Params& params() const { return params_; }
  int64_t steps() const { return steps_; }

 protected:
  Params params_;
  int64_t steps_ = 0;
  void add_to_params(const Params& delta);  // x += Δ without recording
  void add_to_params(double alpha, const Params& delta);
  Params snapshot() const;            // copies of the current values
  void restore(const Params& saved);  // exact, no rounding from x + e − e
  Evaluation evaluate_at_offset(const Closure& c, const Params& offset, const EvalOptions& o);
};

// An optimizer whose whole step is a function of the gradient at the current point; SAM
// wraps one of these and feeds it the gradient taken at the perturbed point.
class GradientOptimizer : public Optimizer {
 public:
  using Optimizer::Optimizer;
  double step(const Closure& closure) override;
  virtual void apply(const Params& grad) = 0;  // one update of the rule, counts as a step
  virtual double lr() const = 0;
  virtual void set_lr(double lr) = 0;  // for learning-rate schedules
};

// Helpers shared by the implementations.
void check_grad_list(const char* who, const Params& params, const Params& grad);
uint64_t state_integer(const OptimizerState& s, const std::string& key);
double state_real(const OptimizerState& s, const std::string& key);
Tensor state_tensor(const OptimizerState& s, const std::string& key);

}  // namespace flatmin::optim
