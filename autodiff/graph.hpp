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
#include <type_traits>
#include <utility>
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

// ---- forward mode and Taylor mode (docs/taylor.md) ----
// A tensor may carry a truncated Taylor series along one direction u of the inputs:
// x(t) = x + Σ_{k=1..K} x_k t^k, with normalized coefficients x_k = D^k x[u^k] / k! (a
// tangent is the case K = 1). An op whose inputs carry series computes its output's with
// its forward rule, passed to record() beside its VJP rule.
//
// A jet is one tensor's series as a list: [0] the value (detached, without series),
// [k] the k-th coefficient, undefined where it is zero.
using Jet = std::vector<Tensor>;
struct Series {
  Jet terms;  // terms[0] unused; terms[k], k = 1..K
  explicit Series(Jet t);
  ~Series();
  Series(const Series&) = delete;
  Series& operator=(const Series&) = delete;
  size_t order() const { return terms.size() - 1; }
};
// The highest K accepted: every intermediate tensor is held K+1 times and a smooth
// elementwise op costs O(K²) products, so beyond it nested reverse mode is the better tool.
inline constexpr int max_taylor_order = 32;

// A non-owning reference to a callable, for rules that run at once inside record() (no
// allocation, so an op whose inputs carry no series pays nothing for its forward rule).
template <class Sig> class FunctionRef;
template <class R, class... A> class FunctionRef<R(A...)> {
 public:
  template <class F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef>)
      FunctionRef(F&& f)  // NOLINT: implicit, like std::function
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))), call_([](void* o, A... a) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<A>(a)...);
        }) {}
  R operator()(A... a) const { return call_(obj_, std::forward<A>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

// An op's forward rule: from its inputs' jets (all of one order K; an undefined input has an
// all-undefined jet) and its output's value, the output's jet ([0] is ignored). It runs
// with recording off: coefficients carry no graph (forward over reverse works, reverse
// over forward does not; docs/taylor.md).
using ForwardRule = FunctionRef<Jet(const std::vector<Jet>& in, const Tensor& out)>;

// x with a series attached: terms = {x_1, ..., x_K} (undefined = zero), each of x's shape,
// dtype and device; 1 <= K <= max_taylor_order. The result shares x's storage and node.
Tensor with_series(const Tensor& x, const std::vector<Tensor>& terms);
// K of the series y carries (0: none).
size_t series_order(const Tensor& y);
// The k-th coefficient of y's series (k >= 1; zeros where y carries none or it is zero).
Tensor series_term(const Tensor& y, size_t k);
// How many times op's forward rule has run in this process (the completeness test).
int64_t forward_rule_runs(Op op);
// Taylor mode (K >= 2) at a kink or tie of a piecewise op: Error naming the op and `what`
// when any element of `mask` is nonzero (the expansion does not exist there).
void check_no_kink(const char* op, const Tensor& mask, size_t order, const char* what);

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
  std::shared_ptr<Series> out_series;  // the output's series, if it carried one (forward over reverse)
  int64_t out_offset = 0;
  Shape out_shape;
  DType out_dtype = DType::f32;
  uint64_t out_version = 0;
  Rule rule;  // empty for leaves
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
// needs a gradient, and runs the forward rule when any input carries a series. `op` is the
// op's entry in the registry (op_registry.hpp); `saved` are inputs (or other tensors) the
// rule reads back via ctx.saved(i); a rule that reads ctx.output() is recorded with
// {.save_output = true}. any_requires_grad() says whether record() has anything to do.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);

struct RecordOptions {
  bool save_output = false;  // keep the output (without its node) for ctx.output()
};
// Braced lists {a, b} take the first forms (no vector is built); vectors the last.
void record(Tensor& out, Op op, std::initializer_list<Tensor> inputs, std::initializer_list<Tensor> saved, Rule rule,
            ForwardRule forward);
void record(Tensor& out, Op op, std::initializer_list<Tensor> inputs, std::initializer_list<Tensor> saved,
            RecordOptions opt, Rule rule, ForwardRule forward);
void record(Tensor& out, Op op, const std::vector<Tensor>& inputs, const std::vector<Tensor>& saved, Rule rule,
            ForwardRule forward);

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
