// The autograd graph. Each op that sees an input requiring grad makes a Node: the op's
// name, edges to its inputs' nodes, the tensors its rule needs, and the rule itself (a
// vector-Jacobian product written with differentiable ops). Nodes carry a global sequence
// number in creation order, so the nodes sorted by decreasing sequence number form the
// Wengert list in reverse: a valid topological order found without recursion. Nodes are
// reference-counted: a step's graph is freed when its last tensor goes away.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <vector>
#include "autodiff/op_registry.hpp"
#include "autodiff/tensor.hpp"

namespace flatmin {

class Node;

// What a rule sees: the saved tensors, the op's output (as a differentiable tensor), and
// which inputs need a gradient (rules skip the others).
class RuleContext {
 public:
  RuleContext(Node& n) : node_(n) {}
  Tensor saved(size_t i) const;
  Tensor output() const;
  bool needs(size_t input) const;
  const Node& node() const { return node_; }

 private:
  Node& node_;
};

using Rule = std::function<std::vector<Tensor>(const Tensor& grad, const RuleContext& ctx)>;

class Node : public std::enable_shared_from_this<Node> {
 public:
  const char* op = "leaf";  // op_name() of its registry entry
  uint64_t seq = 0;
  std::vector<std::shared_ptr<Node>> inputs;  // nullptr where that input needs no grad
  struct Saved {
    Tensor tensor;     // an input (or other tensor) the rule needs; it keeps its graph
    uint64_t version;  // its storage version at save time
  };
  std::vector<Saved> saved;
  // The op's output is saved without its node (a tensor -> node -> tensor cycle otherwise)
  // and rebuilt with this node when the rule runs.
  std::shared_ptr<Storage> out_storage;
  int64_t out_offset = 0;
  Shape out_shape;
  DType out_dtype = DType::f32;
  uint64_t out_version = 0;
  Rule rule;                             // empty for leaves
  bool released = false;

  Tensor grad;  // leaves: what backward() accumulated

  // scratch used by one engine sweep
  Tensor pending;
  uint64_t mark = 0;
  bool needed = false;

  Node();
  ~Node();
  bool is_leaf() const { return !rule && !released; }
  static int64_t live_count();  // for tests of constant memory
};

// Thread-local switch: ops record only while it is on (default on).
bool grad_enabled();
class NoGrad {
 public:
  NoGrad();
  ~NoGrad();
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool prev_;
};
class EnableGrad {
 public:
  explicit EnableGrad(bool on = true);
  ~EnableGrad();
  EnableGrad(const EnableGrad&) = delete;
  EnableGrad& operator=(const EnableGrad&) = delete;

 private:
  bool prev_;
};

// Called by every op after its kernel ran: makes a node when recording is on and any input
// needs a gradient. `op` is the op's entry in the registry (op_registry.hpp); `saved` are
// inputs (or other tensors) the rule reads back via ctx.saved(i); a rule that reads
// ctx.output() is recorded with {.save_output = true}.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);

struct RecordOptions {
  bool save_output = false;  // keep the output (without its node) for ctx.output()
};
// Braced lists {a, b} take the first forms (no vector is built); vectors the last.
void record(Tensor& out, Op op, std::initializer_list<Tensor> inputs, std::initializer_list<Tensor> saved, Rule rule);
void record(Tensor& out, Op op, std::initializer_list<Tensor> inputs, std::initializer_list<Tensor> saved,
            RecordOptions opt, Rule rule);
void record(Tensor& out, Op op, const std::vector<Tensor>& inputs, const std::vector<Tensor>& saved, Rule rule);

struct GradOptions {
  std::vector<Tensor> grad_outputs;  // default: ones for a scalar output
  bool create_graph = false;         // record the sweep, so the result is differentiable
  int retain_graph = -1;             // -1: same as create_graph
  bool allow_unused = false;         // unreachable inputs give undefined tensors, not errors
};

// d(outputs)/d(inputs) contracted with grad_outputs. Throws flatmin::Error naming the
// problem: a non-scalar output without grad_outputs, an input that does not require grad
// or is unreachable, a graph released by an earlier sweep.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const GradOptions& opt = {});
Tensor grad(const Tensor& output, const Tensor& input, const GradOptions& opt = {});

// Tensor::backward(): d(output)/d(leaf) added into every reachable leaf's grad().
void accumulate_into_leaves(const Tensor& output);

}  // namespace flatmin
