// Flatness measurements (docs/algorithms.md §1-2, §7): Hutchinson's trace of the Hessian with
// PyHessian's stopping rule, the largest eigenvalue by power iteration, the gradient of the
// normalized trace from third-order contractions, and (ε, ε')-flatness certificates.
// Everything works through a Hessian-vector product (or a third-order contraction), so the
// same code measures a two-variable function and a network.
#pragma once
#include <functional>

#include "optim/optimizer.hpp"

namespace flatmin::optim {

using HvpFn = std::function<Params(const Params& v)>;                     // v ↦ H v
using ThirdFn = std::function<Params(const Params& u, const Params& v)>;  // (u, v) ↦ ∇³f[u, v]

// For a function of the parameters, at x.
HvpFn hvp_fn(const ScalarFn& f, const Params& x);
ThirdFn third_fn(const ScalarFn& f, const Params& x);
// For a loss recorded from the given leaves (e.g. a model's parameters, which require grad):
// `loss()` is called once per product with recording on.
HvpFn hvp_fn_of_leaves(const std::function<Tensor()>& loss, const Params& leaves);

struct HutchinsonOptions {
  int max_samples = 100;  // PyHessian's maxIter
  double tol = 1e-3;      // stop when |mean_k − mean_{k−1}| / (|mean_{k−1}| + 1e-6) < tol
  uint64_t seed = 0;
};
struct TraceEstimate {
  double trace = 0;             // tr H
  double trace_normalized = 0;  // tr̄ = tr H / d
  double stderr_trace = 0;      // sample standard deviation / sqrt(samples) (0 for one sample)
  double stderr_normalized = 0;
  int samples = 0;
  int64_t dim = 0;
  bool converged = false;  // stopped by the tolerance, not the cap
};
// Rademacher z: E[zᵀHz] = tr H. `like` gives the shapes (and dtype) of the parameters.
TraceEstimate hutchinson_trace(const HvpFn& hvp, const Params& like, const HutchinsonOptions& o = {});
// The same estimate with zᵀHz computed for `round` vectors at a time (e.g. shared out over
// processes, train/data_parallel.hpp): the stopping rule still runs sample by sample, so
// the estimate does not depend on `round`; up to round−1 products past the stop are wasted.
using QuadRoundFn = std::function<std::vector<double>(const std::vector<Params>& z)>;  // zᵢᵀHzᵢ
TraceEstimate hutchinson_trace(const QuadRoundFn& quads, int round, const Params& like,
                               const HutchinsonOptions& o = {});

struct PowerOptions {
  int max_iter = 100;
  double tol = 1e-3;  // relative change of the Rayleigh quotient between iterations
  uint64_t seed = 0;
};
struct EigenEstimate {
  double value = 0;  // the eigenvalue of largest magnitude (λmax at a minimum, where H ⪰ 0)
  Params vector;     // unit eigenvector estimate
  int iterations = 0;
  bool converged = false;
};
EigenEstimate top_eigenvalue(const HvpFn& hvp, const Params& like, const PowerOptions& o = {});

struct TraceGradientEstimate {
  Params mean;             // estimate of ∇tr̄ = E_z ∇³f[z, z] / d
  double stderr_norm = 0;  // sqrt(Σ_k var_k / samples): standard error of the whole vector
  int samples = 0;
};
TraceGradientEstimate trace_gradient(const ThirdFn& third, const Params& like, int samples, uint64_t seed = 0);
// Exact ∇tr̄ = Σ_i ∇³f[e_i, e_i] / d (d third-order contractions: small d only).
Params trace_gradient_exact(const ThirdFn& third, const Params& like);

// ∂Φ at a minimum: the projection onto the null space of H (the tangent space of the minima
// set), from a dense symmetric Hessian: eigenvectors with |λ| ≤ rel_tol·max|λ|.
Tensor tangent_projector(const Tensor& dense_hessian, double rel_tol = 1e-6);

// (ε, ε')-flatness (Definition 3): ‖∇f‖ ≤ ε and ‖∂Φ ∇tr̄‖ ≤ ε'.
struct FlatnessCertificate {
  double grad_norm = 0, projected_trace_grad_norm = 0, eps = 0, eps_prime = 0;
  bool gradient_ok = false, trace_ok = false;
  bool flat() const { return gradient_ok && trace_ok; }
};
FlatnessCertificate certify_flatness(const Params& grad, const Params& projected_trace_grad, double eps,
                                     double eps_prime);
// Everything exact, for a small function: gradient, dense Hessian, tangent projector,
// exact ∇tr̄. The paper's target is eps_prime = sqrt(eps).
FlatnessCertificate certify_flatness(const ScalarFn& f, const Params& x, double eps, double eps_prime,
                                     double rel_tol = 1e-6);

}  // namespace flatmin::optim
