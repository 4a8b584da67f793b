#include "nn/module.hpp"

#include <algorithm>
#include <functional>
#include <map>

namespace flatmin::nn {

namespace {
Tensor* find_entry(std::vector<std::pair<std::string, Tensor>>& list, const std::string& name) {
  for (auto& [n, t] : list)
    if (n == name) return &t;
  return nullptr;
}
// "layer1.0.conv1.weight" -> ("layer1", "0.conv1.weight"); no dot -> ("", name)
std::pair<std::string, std::string> split_first(const std::string& name) {
  auto dot = name.find('.');
  if (dot == std::string::npos) return {"", name};
  return {name.substr(0, dot), name.substr(dot + 1)};
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

void Module::check_new_name(const std::string& name) const {
  if (name.empty() || name.find('.') != std::string::npos)
    throw Error("Module: invalid name '" + name + "' (non-empty, no dots)");
  auto taken = [&](const auto& list) {
    return std::any_of(list.begin(), list.end(), [&](const auto& e) { return e.first == name; });
  };
  if (taken(params_) || taken(buffers_) || taken(children_))
    throw Error("Module: name '" + name + "' registered twice");
}

void Module::register_parameter(const std::string& name, Tensor t) {
  check_new_name(name);
  if (!t.defined() || !is_floating(t.dtype()))
    throw Error("Module: parameter '" + name + "' must be a floating tensor");
  t = t.detach();
  t.requires_grad_();
  params_.emplace_back(name, t);
}
void Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name);
  if (!t.defined()) throw Error("Module: buffer '" + name + "' is undefined");
  buffers_.emplace_back(name, t);
}
void Module::add_child(const std::string& name, std::shared_ptr<Module> child) {
  check_new_name(name);
  if (!child) throw Error("Module: child '" + name + "' is null");
  children_.emplace_back(name, std::move(child));
}

Module& Module::child(const std::string& name) {
  auto [head, rest] = split_first(name);
  const std::string& key = head.empty() ? rest : head;
  for (auto& [n, c] : children_)
    if (n == key) return head.empty() ? *c : c->child(rest);
  throw Error("Module: no child module '" + name + "'");
}
Tensor& Module::param(const std::string& name) {
  auto [head, rest] = split_first(name);
  if (!head.empty()) return child(head).param(rest);
  if (Tensor* t = find_entry(params_, name)) return *t;
  throw Error("Module: no parameter '" + name + "'");
}
Tensor& Module::buffer(const std::string& name) {
  auto [head, rest] = split_first(name);
  if (!head.empty()) return child(head).buffer(rest);
  if (Tensor* t = find_entry(buffers_, name)) return *t;
  throw Error("Module: no buffer '" + name + "'");
}
bool Module::has_param(const std::string& name) const {
  auto [head, rest] = split_first(name);
  if (head.empty()) return std::any_of(params_.begin(), params_.end(), [&](const auto& e) { return e.first == name; });
  for (auto& [n, c] : children_)
    if (n == head) return c->has_param(rest);
  return false;
}

void Module::collect(const std::string& prefix, NamedTensors* params, NamedTensors* buffers, bool interleave) const {
  // interleave: the state dict lists each module's parameters then its buffers, so both
  // go into the same list; otherwise parameters and buffers have lists of their own.
  if (params)
    for (auto& [n, t] : params_) params->emplace_back(prefix + n, t);
  if (buffers)
    for (auto& [n, t] : buffers_) (interleave ? params : buffers)->emplace_back(prefix + n, t);
  for (auto& [n, c] : children_) c->collect(prefix + n + ".", params, buffers, interleave);
}
NamedTensors Module::named_parameters() const {
  NamedTensors r;
  collect("", &r, nullptr, false);
  return r;
}
NamedTensors Module::named_buffers() const {
  NamedTensors r;
  collect("", nullptr, &r, false);
  return r;
}
NamedTensors Module::state_dict() const {
  NamedTensors r;
  collect("", &r, &r, true);
  return r;
}
Params Module::parameters() const {
  Params r;
  for (auto& [n, t] : named_parameters()) r.push_back(t);
  return r;
}
int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::set_parameters(const Params& p) {
  // Collect references to the registry slots in parameters() order, then assign.
  std::vector<std::pair<std::string, Tensor*>> slots;
  std::function<void(Module&, const std::string&)> walk = [&](Module& m, const std::string& prefix) {
    for (auto& [n, t] : m.params_) slots.emplace_back(prefix + n, &t);
    for (auto& [n, c] : m.children_) walk(*c, prefix + n + ".");
  };
  walk(*this, "");
  if (p.size() != slots.size())
    throw Error("Module::set_parameters: " + std::to_string(p.size()) + " tensors for " + std::to_string(slots.size()) +
                " parameters");
  for (size_t i = 0; i < p.size(); ++i)
    if (!p[i].defined() || p[i].shape() != slots[i].second->shape())
      throw Error("Module::set_parameters: '" + slots[i].first + "' has shape " + to_string(slots[i].second->shape()) +
                  ", given " + (p[i].defined() ? to_string(p[i].shape()) : std::string("undefined")));
  for (size_t i = 0; i < p.size(); ++i) *slots[i].second = p[i];
}

Module& Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
  return *this;
}
Module& Module::update_running_stats(bool on) {
  update_running_ = on;
  for (auto& [n, c] : children_) c->update_running_stats(on);
  return *this;
}

template <class F> void Module::each_tensor(F&& f) {
  for (auto& [n, t] : params_) f(t, true);
  for (auto& [n, t] : buffers_) f(t, false);
  for (auto& [n, c] : children_) c->each_tensor(f);
}
Module& Module::to(Device d) {
  each_tensor([&](Tensor& t, bool is_param) {
    t = t.detach().to(d);
    if (is_param) t.requires_grad_();
  });
  return *this;
}
Module& Module::to(DType dt) {
  each_tensor([&](Tensor& t, bool is_param) {
    if (!is_floating(t.dtype())) return;
    t = t.detach().to(dt);
    if (is_param) t.requires_grad_();
  });
  return *this;
}
void Module::zero_grad() {
  each_tensor([](Tensor& t, bool is_param) {
    if (is_param) t.zero_grad();
  });
}

void load_state_dict(Module& m, const NamedTensors& state, const std::string& source) {
  const std::string tracked = "num_batches_tracked";
  std::map<std::string, const Tensor*> given;
  for (auto& [n, t] : state) given[n] = &t;
  std::vector<std::string> missing, mismatched;
  std::vector<std::pair<Tensor*, const Tensor*>> copies;
  std::map<std::string, bool> known;
  for (auto& [name, slot] : m.state_dict()) {
    known[name] = true;
    auto it = given.find(name);
    if (it == given.end()) {
      if (!ends_with(name, tracked)) missing.push_back(name);
      continue;
    }
    if (it->second->shape() != slot.shape()) {
      mismatched.push_back(name + " (model " + to_string(slot.shape()) + ", given " + to_string(it->second->shape()) +
                           ")");
      continue;
    }
    Tensor& target = m.has_param(name) ? m.param(name) : m.buffer(name);
    copies.emplace_back(&target, it->second);
  }
  std::vector<std::string> unexpected;
  for (auto& [n, t] : state)
    if (!known.count(n) && !ends_with(n, tracked)) unexpected.push_back(n);
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    auto list = [](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return std::string();
      std::string s = std::string("; ") + what + " (" + std::to_string(names.size()) + "):";
      for (size_t i = 0; i < names.size() && i < 10; ++i) s += " " + names[i];
      if (names.size() > 10) s += " ...";
      return s;
    };
    throw Error("load_state_dict from " + source + ": does not match the model" + list("missing keys", missing) +
                list("unexpected keys", unexpected) + list("shape mismatches", mismatched));
  }
  NoGrad no_grad;
  for (auto [target, src] : copies) target->copy_(src->to(target->dtype()).to(target->device()));
}

}  // namespace flatmin::nn
