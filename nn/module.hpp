// Module: named parameters, buffers and child modules in registration order, with
// PyTorch's dotted names (`layer1.0.conv1.weight`). The registry is the only place a
// tensor lives: layers read their tensors from it at every call (`param("weight")`), so
// assigning through the registry (`net.param("fc.weight") = w`, set_parameters) changes
// what forward() uses and what parameters() returns.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autodiff/functional.hpp"

namespace flatmin::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  Module() = default;
  Module(Module&&) = default;
  Module& operator=(Module&&) = default;
  Module(const Module&) = delete;  // children are shared: a copy would alias them
  Module& operator=(const Module&) = delete;
  virtual ~Module() = default;

  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  // ---- registration: one call each ----
  // Parameters become leaves that require grad.
  void register_parameter(const std::string& name, Tensor t);
  void register_buffer(const std::string& name, Tensor t);
  template <class M> std::shared_ptr<M> add_module(const std::string& name, M module) {
    auto p = std::make_shared<M>(std::move(module));
    add_child(name, p);
    return p;
  }
  void add_child(const std::string& name, std::shared_ptr<Module> child);

  // ---- lookup (dotted names walk into children); Error naming the key if absent ----
  Tensor& param(const std::string& name);
  Tensor& buffer(const std::string& name);
  Module& child(const std::string& name);
  bool has_param(const std::string& name) const;

  // ---- the whole tree, in registration order (own entries first, then children) ----
  Params parameters() const;
  NamedTensors named_parameters() const;
  NamedTensors named_buffers() const;
  NamedTensors state_dict() const;  // per module: parameters, then buffers (PyTorch's order)
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  int64_t num_parameters() const;

  // Replaces every parameter, in parameters() order (shapes checked). The tensors are
  // stored as given (not copied): pass leaves from the functional API to differentiate.
  void set_parameters(const Params& p);

  // ---- modes and conversion (recursive) ----
  Module& train(bool on = true);
  Module& eval() { return train(false); }
  bool is_training() const { return training_; }
  // Off: training-mode batch norm still uses batch statistics but leaves its running
  // statistics unchanged (for probes and derivative checks that call forward many times).
  Module& update_running_stats(bool on);
  bool updates_running_stats() const { return update_running_; }
  Module& to(Device d);
  Module& to(DType t);  // floating tensors only; integer buffers keep their dtype
  void zero_grad();

 private:
  std::vector<std::pair<std::string, Tensor>> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  bool update_running_ = true;

  void collect(const std::string& prefix, NamedTensors* params, NamedTensors* buffers, bool interleave) const;
  void check_new_name(const std::string& name) const;
  template <class F> void each_tensor(F&& f);
};

// Runs code with a module's parameters replaced by p and restores them afterwards: the
// bridge from a module to the functional API, whose functions receive parameter copies.
//   ScalarFn f = [&](const Params& p) { nn::WithParameters w(net, p); return loss(net(x)); };
class WithParameters {
 public:
  WithParameters(Module& m, const Params& p) : m_(m), saved_(m.parameters()) { m.set_parameters(p); }
  ~WithParameters() { m_.set_parameters(saved_); }
  WithParameters(const WithParameters&) = delete;
  WithParameters& operator=(const WithParameters&) = delete;

 private:
  Module& m_;
  Params saved_;
};

// Copies a state dict into the module (values converted to each entry's dtype and device).
// Tolerant of `num_batches_tracked` entries present on one side only (PyTorch writes them,
// group-norm and norm-free models have none); any other missing or unexpected key, or a
// shape mismatch, is an Error listing them, naming `source` (e.g. the file).
void load_state_dict(Module& m, const NamedTensors& state, const std::string& source = "state dict");

}  // namespace flatmin::nn
