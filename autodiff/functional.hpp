// Derivatives as functions, JAX-style, and helpers over lists of parameter tensors.
// Every entry point differentiates a fresh copy of x (detached leaves), so callers pass
// plain tensors; results are plain tensors unless create_graph is asked for.
#pragma once
#include <functional>
#include <vector>

#include "autodiff/graph.hpp"
#include "autodiff/ops.hpp"

namespace flatmin {

using Params = std::vector<Tensor>;
using ScalarFn = std::function<Tensor(const Params&)>;  // f(x_1, ..., x_n) -> scalar
using VectorFn = std::function<Tensor(const Params&)>;  // f(x_1, ..., x_n) -> any shape

struct DiffOptions {
  bool create_graph = false;  // keep the result differentiable with respect to x
};

// ---- lists of tensors (parameters, directions) ----
Tensor dot(const Params& a, const Params& b);                 // Σ_k ⟨a_k, b_k⟩, differentiable
Tensor norm(const Params& a);                                 // sqrt(dot(a, a))
Params axpy(double alpha, const Params& x, const Params& y);  // alpha x + y
Params scale(double alpha, const Params& x);
Params detach(const Params& x);
Params zeros_like(const Params& x);
Params leaves(const Params& x);   // detached copies that require grad
Tensor flatten(const Params& x);  // 1-d concatenation
Params unflatten(const Tensor& flat, const Params& like);
int64_t numel(const Params& x);
// Proj⊥_u(w) = w − (⟨u,w⟩/‖u‖²) u; returns w when u = 0 (docs/algorithms.md §1, Definition 4).
Params project_out(const Params& u, const Params& w);

// ---- derivatives of a scalar function ----
Tensor value(const ScalarFn& f, const Params& x);
Params gradient(const ScalarFn& f, const Params& x, DiffOptions opt = {});
Params hvp(const ScalarFn& f, const Params& x, const Params& v, DiffOptions opt = {});  // H v, reverse over reverse
Params third(const ScalarFn& f, const Params& x, const Params& u, const Params& v,
             DiffOptions opt = {});  // ∇³f(x)[u, v]
// J v of a function of any output shape (reverse over reverse, no forward mode needed).
Tensor jvp(const VectorFn& f, const Params& x, const Params& v, DiffOptions opt = {});
// Dense Hessian of f over the concatenation of x (small inputs): d×d, float64 if x is.
Tensor hessian(const ScalarFn& f, const Params& x);

// Single-tensor conveniences.
using ScalarFn1 = std::function<Tensor(const Tensor&)>;
Tensor gradient(const ScalarFn1& f, const Tensor& x, DiffOptions opt = {});
Tensor hvp(const ScalarFn1& f, const Tensor& x, const Tensor& v, DiffOptions opt = {});
Tensor third(const ScalarFn1& f, const Tensor& x, const Tensor& u, const Tensor& v, DiffOptions opt = {});
Tensor hessian(const ScalarFn1& f, const Tensor& x);

// The j-th directional derivatives D^j f(x)[u, ..., u] for j = 0..order (values), and the
// gradients ∇(D^{j} f[u..u]) for j = 0..order-1 (so grads[0] = ∇f, grads[1] = H u, grads[2]
// = ∇³f[u,u], ...): one nested chain of grad() calls.
struct DirectionalDerivatives {
  std::vector<double> values;
  std::vector<Params> grads;
};
DirectionalDerivatives directional_derivatives(const ScalarFn& f, const Params& x, const Params& u, int order);

// ---- forward mode and Taylor mode (docs/taylor.md) ----
// f(x) and J v from one forward sweep carrying the tangent v (no graph is recorded).
struct JvpResult {
  Tensor value, tangent;
};
JvpResult jvp_forward(const VectorFn& f, const Params& x, const Params& v);
// H v by forward over reverse: x carries the tangent v through f and through the reverse
// sweep of ∇f, and the tangent of ∇f is H v (one forward and one reverse sweep, each op
// with its tangent; reverse over reverse, hvp(), records the whole gradient instead).
Params hvp_forward_over_reverse(const ScalarFn& f, const Params& x, const Params& v);
// D^k f(x)[u^k] for k = 0..order of a scalar f, from one forward propagation of the
// degree-`order` Taylor polynomial of x + t·u. `derivatives[k]` = D^k f(x)[u^k];
// `coefficients[k]` = derivatives[k] / k! (the normalized Taylor coefficients the engine
// propagates). 0 <= order <= max_taylor_order (graph.hpp). Error at a kink or tie of a
// piecewise op when order >= 2.
struct TaylorCoefficients {
  std::vector<double> derivatives, coefficients;
};
TaylorCoefficients taylor_coefficients(const ScalarFn& f, const Params& x, const Params& u, int order);

}  // namespace flatmin
