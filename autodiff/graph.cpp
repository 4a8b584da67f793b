#include "autodiff/graph.hpp"

#include <algorithm>
#include <array>

#include "autodiff/ops.hpp"
#include "autodiff/profile.hpp"
#include "autodiff/small_alloc.hpp"

namespace flatmin {

namespace {
std::atomic<uint64_t> next_seq{1};
std::atomic<int64_t> live_nodes{0};
thread_local bool grad_mode = true;
// Series alive in the process: while there are none, ops skip looking for them (one load).
std::atomic<int64_t> live_series{0};
std::array<std::atomic<int64_t>, op_count> forward_runs{};

// Freeing a long chain of nodes through nested destructors would recurse once per node
// and overflow the stack on long graphs; instead each destructor hands its edges to a
// thread-local queue that the outermost destructor drains in a loop.
thread_local std::vector<std::shared_ptr<Node>>* drain_queue = nullptr;
}  // namespace

Node::Node() : seq(next_seq.fetch_add(1, std::memory_order_relaxed)) {
  live_nodes.fetch_add(1, std::memory_order_relaxed);
}

Node::~Node() {
  live_nodes.fetch_sub(1, std::memory_order_relaxed);
  std::vector<std::shared_ptr<Node>> local;
  const bool outermost = drain_queue == nullptr;
  if (outermost) drain_queue = &local;
  std::vector<std::shared_ptr<Node>>& queue = *drain_queue;
  for (auto& e : inputs)
    if (e) queue.push_back(std::move(e));
  // Saved tensors hold nodes too: drop their impls' nodes through the queue as well.
  for (Saved& s : saved) {
    Tensor& t = s.tensor;
    if (t.defined() && t.impl_ptr().use_count() == 1 && t.impl()->node) queue.push_back(std::move(t.impl()->node));
  }
  if (grad.defined() && grad.impl_ptr().use_count() == 1 && grad.impl()->node)
    queue.push_back(std::move(grad.impl()->node));
  if (!outermost) return;
  while (!queue.empty()) {
    std::shared_ptr<Node> n = std::move(queue.back());
    queue.pop_back();
    n.reset();  // may push more edges onto the queue
  }
  drain_queue = nullptr;
}

int64_t Node::live_count() { return live_nodes.load(); }

bool grad_enabled() { return grad_mode; }
NoGrad::NoGrad() : prev_(grad_mode) { grad_mode = false; }
NoGrad::~NoGrad() { grad_mode = prev_; }
EnableGrad::EnableGrad(bool on) : prev_(grad_mode) { grad_mode = on; }
EnableGrad::~EnableGrad() { grad_mode = prev_; }

// ---- RuleContext ----
static void check_version(const Node& n, uint64_t saved, uint64_t now) {
  if (saved != now)
    throw Error(std::string("grad: a tensor saved for the derivative of '") + n.op +
                "' was modified in place after it was saved");
}
Tensor RuleContext::saved(size_t i) const {
  const Node::Saved& s = node_.saved.at(i);
  if (s.tensor.defined()) check_version(node_, s.version, s.tensor.impl()->storage->version);
  return s.tensor;
}
Tensor RuleContext::output() const {
  if (!node_.out_storage) throw Error(std::string("grad: op '") + node_.op + "' did not save its output");
  check_version(node_, node_.out_version, node_.out_storage->version);
  auto t = std::allocate_shared<TensorImpl>(detail::SmallAllocator<TensorImpl>());
  t->storage = node_.out_storage;
  t->offset = node_.out_offset;
  t->shape = node_.out_shape;
  t->dtype = node_.out_dtype;
  t->node = const_cast<Node&>(node_).shared_from_this();
  t->series = node_.out_series;
  return Tensor(std::move(t));
}
bool RuleContext::needs(size_t input) const {
  return input < node_.inputs.size() && node_.inputs[input] && node_.inputs[input]->needed;
}

// ---- series (forward and Taylor mode) ----
Series::Series(Jet t) : terms(std::move(t)) { live_series.fetch_add(1, std::memory_order_relaxed); }
Series::~Series() { live_series.fetch_sub(1, std::memory_order_relaxed); }

static bool carries_series(const Tensor& t) { return t.defined() && t.impl()->series; }

Tensor with_series(const Tensor& x, const std::vector<Tensor>& terms) {
  if (!x.defined()) throw Error("with_series: the tensor is undefined");
  if (terms.empty() || terms.size() > size_t(max_taylor_order))
    throw Error("with_series: " + std::to_string(terms.size()) + " coefficients; the order K must be in 1.." +
                std::to_string(max_taylor_order));
  Jet j(terms.size() + 1);
  for (size_t k = 0; k < terms.size(); ++k) {
    const Tensor& t = terms[k];
    if (!t.defined()) continue;
    if (t.shape() != x.shape() || t.dtype() != x.dtype() || t.device() != x.device())
      throw Error("with_series: coefficient " + std::to_string(k + 1) + " is " + dtype_name(t.dtype()) + " " +
                  to_string(t.shape()) + " on " + t.device().str() + " but the tensor is " + dtype_name(x.dtype()) +
                  " " + to_string(x.shape()) + " on " + x.device().str());
    j[k + 1] = t.detach();
  }
  auto impl = std::make_shared<TensorImpl>(*x.impl());
  impl->series = std::make_shared<Series>(std::move(j));
  return Tensor(std::move(impl));
}
size_t series_order(const Tensor& y) { return carries_series(y) ? y.impl()->series->order() : 0; }
Tensor series_term(const Tensor& y, size_t k) {
  if (k == 0) return y.detach();
  if (k <= series_order(y) && y.impl()->series->terms[k].defined()) return y.impl()->series->terms[k];
  NoGrad ng;
  return zeros_like(y.detach());
}
int64_t forward_rule_runs(Op op) { return forward_runs[size_t(op)].load(); }
void check_no_kink(const char* op, const Tensor& mask, size_t order, const char* what) {
  if (order < 2) return;
  NoGrad ng;
  if (sum(mask).item() != 0)
    throw Error(std::string(op) + ": Taylor mode (order " + std::to_string(order) + ") at " + what +
                ": the expansion does not exist there (forward mode, K = 1, returns the derivative of the branch "
                "the reverse rule uses)");
}

namespace {
// Runs op's forward rule when any input carries a series, and attaches the output's series.
template <class List> void propagate(Tensor& out, Op op, const List& inputs, ForwardRule forward) {
  size_t order = 0;
  for (const Tensor& t : inputs) {
    if (!carries_series(t)) continue;
    const size_t k = t.impl()->series->order();
    if (order && k != order)
      throw Error(std::string(op_name(op)) + ": inputs carry Taylor series of different orders (" +
                  std::to_string(order) + " and " + std::to_string(k) + ")");
    order = k;
  }
  if (!order) return;
  std::vector<Jet> in;
  in.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    Jet j(order + 1);
    if (t.defined()) {
      j[0] = t.detach();
      if (carries_series(t))
        std::copy(t.impl()->series->terms.begin() + 1, t.impl()->series->terms.end(), j.begin() + 1);
    }
    in.push_back(std::move(j));
  }
  Jet y;
  {
    NoGrad ng;
    const Tensor value = out.detach();
    y = forward(in, value);
    if (y.size() != order + 1)
      throw Error(std::string("forward rule of '") + op_name(op) + "' returned " + std::to_string(y.size()) +
                  " terms for order " + std::to_string(order));
    y[0] = Tensor();
    // a broadcasting op's coefficient may have an input's smaller shape
    for (size_t k = 1; k <= order; ++k)
      if (y[k].defined() && y[k].shape() != value.shape()) y[k] = expand(y[k], value.shape());
  }
  forward_runs[size_t(op)].fetch_add(1, std::memory_order_relaxed);
  out.impl()->series = std::make_shared<Series>(std::move(y));
}
}  // namespace

// ---- recording ----
bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (live_series.load(std::memory_order_relaxed) != 0)
    for (const Tensor* t : inputs)
      if (carries_series(*t)) return true;
  if (!grad_mode) return false;
  for (const Tensor* t : inputs)
    if (t->requires_grad()) return true;
  return false;
}

namespace {
template <class List> void record_node(Tensor& out, Op op, const List& inputs, const List& saved, bool save_output,
                                       Rule&& rule, ForwardRule forward) {
  // Without series, the caller's any_requires_grad() has established that a node is due
  // (and the thread-local grad mode is not read twice on the hot path).
  if (live_series.load(std::memory_order_relaxed) != 0) {
    propagate(out, op, inputs, forward);
    if (!grad_mode) return;
    bool any = false;
    for (const Tensor& t : inputs) any |= t.requires_grad();
    if (!any) return;
  }
  auto n = std::allocate_shared<Node>(detail::SmallAllocator<Node>());
  n->op = op_name(op);
  n->inputs.reserve(inputs.size());
  for (const Tensor& t : inputs) n->inputs.push_back(t.defined() ? t.node() : nullptr);
  n->saved.reserve(saved.size());
  for (const Tensor& t : saved) n->saved.push_back({t, t.defined() ? t.impl()->storage->version : 0});
  if (save_output) {
    n->out_storage = out.impl()->storage;
    n->out_offset = out.impl()->offset;
    n->out_shape = out.shape();
    n->out_dtype = out.dtype();
    n->out_version = n->out_storage->version;
    n->out_series = out.impl()->series;
  }
  n->rule = std::move(rule);
  out.impl()->node = std::move(n);
}
}  // namespace

void record(Tensor& out, Op op, std::initializer_list<Tensor> inputs, std::initializer_list<Tensor> saved, Rule rule,
            ForwardRule forward) {
  record_node(out, op, inputs, saved, false, std::move(rule), forward);
}
void record(Tensor& out, Op op, std::initializer_list<Tensor> inputs, std::initializer_list<Tensor> saved,
            RecordOptions opt, Rule rule, ForwardRule forward) {
  record_node(out, op, inputs, saved, opt.save_output, std::move(rule), forward);
}
void record(Tensor& out, Op op, const std::vector<Tensor>& inputs, const std::vector<Tensor>& saved, Rule rule,
            ForwardRule forward) {
  record_node(out, op, inputs, saved, false, std::move(rule), forward);
}

// ---- the engine ----
namespace {
std::atomic<uint64_t> next_mark{1};

// All nodes reachable from `roots`, by an explicit stack (no recursion), in decreasing
// sequence order: the reverse of the order the ops ran in.
std::vector<Node*> reachable(const std::vector<Node*>& roots, uint64_t mark) {
  std::vector<Node*> order, stack;
  for (Node* r : roots)
    if (r && r->mark != mark) {
      r->mark = mark;
      stack.push_back(r);
    }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    order.push_back(n);
    for (auto& e : n->inputs)
      if (e && e->mark != mark) {
        e->mark = mark;
        stack.push_back(e.get());
      }
  }
  std::sort(order.begin(), order.end(), [](Node* a, Node* b) { return a->seq > b->seq; });
  return order;
}

void accumulate(Node& n, Tensor g) { n.pending = n.pending.defined() ? add(n.pending, g) : std::move(g); }

// One reverse sweep. targets[i] receives d(outputs)/d(target i) (undefined if unreached).
std::vector<Tensor> sweep(const std::vector<Tensor>& outputs, const std::vector<Tensor>& seeds,
                          const std::vector<Node*>& targets, bool create_graph, bool retain_graph) {
  const uint64_t mark = next_mark.fetch_add(1);
  std::vector<Node*> roots;
  for (const Tensor& o : outputs) roots.push_back(o.node().get());
  std::vector<Node*> order = reachable(roots, mark);

  // A node is needed when a target is at or below it; ascending order sees inputs first.
  for (Node* n : order) n->needed = false;
  for (Node* t : targets) t->needed = true;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* n = *it;
    if (n->needed) continue;
    for (auto& e : n->inputs)
      if (e && e->mark == mark && e->needed) {
        n->needed = true;
        break;
      }
  }

  std::vector<Tensor> result(targets.size());
  EnableGrad mode(create_graph);
  // Pending gradients live in the nodes during the sweep; always cleared, even on error.
  struct Cleanup {
    std::vector<Node*>& order;
    ~Cleanup() {
      for (Node* n : order) {
        n->pending = Tensor();
        n->needed = false;
      }
    }
  } cleanup{order};

  for (size_t i = 0; i < outputs.size(); ++i) {
    Tensor s = seeds[i];
    if (!create_graph) s = s.detach();
    accumulate(*outputs[i].node(), s);
  }
  for (Node* n : order) {
    if (!n->needed || !n->pending.defined()) continue;
    for (size_t t = 0; t < targets.size(); ++t)
      if (targets[t] == n) result[t] = n->pending;
    if (n->is_leaf()) continue;
    if (n->released)
      throw Error(std::string("grad: the graph through op '") + n->op +
                  "' was already freed by an earlier grad()/backward(); pass retain_graph = true "
                  "to the earlier call to sweep it twice");
    bool any_needed = false;
    for (auto& e : n->inputs) any_needed |= e && e->needed;
    if (!any_needed) continue;
    Tensor g = std::move(n->pending);
    n->pending = Tensor();
    std::vector<Tensor> grads;
    {
      profile::Scope timing("rule", n->op);
      grads = n->rule(g, RuleContext(*n));
    }
    if (grads.size() != n->inputs.size())
      throw Error(std::string("grad: rule of '") + n->op + "' returned " + std::to_string(grads.size()) +
                  " gradients for " + std::to_string(n->inputs.size()) + " inputs");
    for (size_t i = 0; i < grads.size(); ++i) {
      Node* in = n->inputs[i].get();
      if (!in || !in->needed || !grads[i].defined()) continue;
      accumulate(*in, std::move(grads[i]));
    }
    if (!retain_graph) {
      n->released = true;
      n->saved.clear();
      n->out_storage.reset();
      n->out_series.reset();
      n->rule = nullptr;
    }
  }
  return result;
}

std::vector<Tensor> make_seeds(const std::vector<Tensor>& outputs, const std::vector<Tensor>& grad_outputs) {
  std::vector<Tensor> seeds;
  if (!grad_outputs.empty() && grad_outputs.size() != outputs.size())
    throw Error("grad: " + std::to_string(grad_outputs.size()) + " grad_outputs for " + std::to_string(outputs.size()) +
                " outputs");
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& o = outputs[i];
    if (!o.defined()) throw Error("grad: output " + std::to_string(i) + " is undefined");
    if (!o.requires_grad())
      throw Error("grad: output " + std::to_string(i) + " (shape " + to_string(o.shape()) +
                  ") does not require grad: no input of it requires grad, or it was computed under NoGrad");
    if (grad_outputs.empty()) {
      if (o.numel() != 1)
        throw Error("grad: output " + std::to_string(i) + " has shape " + to_string(o.shape()) +
                    "; a non-scalar output needs grad_outputs");
      NoGrad ng;
      seeds.push_back(ones_like(o));
    } else {
      const Tensor& g = grad_outputs[i];
      if (!g.defined() || g.shape() != o.shape())
        throw Error("grad: grad_outputs[" + std::to_string(i) + "] has shape " +
                    (g.defined() ? to_string(g.shape()) : std::string("undefined")) + " but output " +
                    std::to_string(i) + " has shape " + to_string(o.shape()));
      if (g.dtype() != o.dtype() || g.device() != o.device())
        throw Error("grad: grad_outputs[" + std::to_string(i) + "] is " + dtype_name(g.dtype()) + " on " +
                    g.device().str() + " but output is " + dtype_name(o.dtype()) + " on " + o.device().str());
      seeds.push_back(g);
    }
  }
  return seeds;
}
}  // namespace

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const GradOptions& opt) {
  std::vector<Tensor> seeds = make_seeds(outputs, opt.grad_outputs);
  std::vector<Node*> targets;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) throw Error("grad: input " + std::to_string(i) + " is undefined");
    if (!inputs[i].requires_grad())
      throw Error("grad: input " + std::to_string(i) + " (shape " + to_string(inputs[i].shape()) +
                  ") does not require grad");
    targets.push_back(inputs[i].node().get());
  }
  const bool retain = opt.retain_graph < 0 ? opt.create_graph : opt.retain_graph != 0;
  std::vector<Tensor> r = sweep(outputs, seeds, targets, opt.create_graph, retain);
  for (size_t i = 0; i < r.size(); ++i) {
    if (r[i].defined()) continue;
    if (!opt.allow_unused)
      throw Error("grad: input " + std::to_string(i) + " (shape " + to_string(inputs[i].shape()) +
                  ") is not reachable from the outputs; pass allow_unused = true to get an undefined gradient");
  }
  return r;
}

Tensor grad(const Tensor& output, const Tensor& input, const GradOptions& opt) {
  return grad(std::vector<Tensor>{output}, std::vector<Tensor>{input}, opt)[0];
}

void accumulate_into_leaves(const Tensor& output) {
  if (!output.requires_grad()) throw Error("backward: the tensor does not require grad (no input of it requires grad)");
  if (output.numel() != 1)
    throw Error("backward: the output has shape " + to_string(output.shape()) + "; backward() needs a scalar");
  std::vector<Node*> leaves;
  for (Node* n : reachable({output.node().get()}, next_mark.fetch_add(1)))
    if (n->is_leaf()) leaves.push_back(n);
  std::vector<Tensor> g = sweep({output}, make_seeds({output}, {}), leaves, false, false);
  NoGrad ng;
  for (size_t i = 0; i < leaves.size(); ++i) {
    if (!g[i].defined()) continue;
    Tensor& acc = leaves[i]->grad;
    acc = acc.defined() ? add(acc, g[i]) : g[i].detach();
  }
}

}  // namespace flatmin
