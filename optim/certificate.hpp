// Is x an (ε, √ε)-flat minimum (Definition 3, docs/algorithms.md §1)? ‖∇f(x)‖ ≤ ε and
// ‖∂Φ(x) ∇tr̄(x)‖ ≤ √ε, where ∂Φ(x) is the projection onto the tangent space of the minima
// set. Two ways to get ∂Φ:
//  - exact, where the minima set is {r = 0} for a known residual map r whose Jacobian J has
//    a known constant rank: P = the projection onto ker J at x (the tangent space of r's
//    level set through x; on the minima set this is ∂Φ exactly, off it an O(distance)
//    approximation);
//  - for networks, from the Hessian: P = I − Σ_{i ≤ r} v_i v_iᵀ over the top eigenvectors
//    (Lanczos, optim/spectrum.hpp) above a cut. At a minimum of a training loss H's range is
//    the normal space of the minima set (docs/algorithms.md §2), so its near-null space is
//    the tangent space. The cut: r = #{λ_i > rel_cut·λ_1} among the top k, accepted only if
//    λ_{r+1} is below it with a gap λ_r/λ_{r+1} ≥ min_gap and r < k; otherwise (no positive
//    eigenvalue, negative curvature, every computed eigenvalue above the cut, no gap) the
//    certificate is refused: a number there would mean nothing.
// ∇tr̄ from third-order contractions (exact Σ_i ∇³f[e_i, e_i]/d for small d, else Hutchinson).
#pragma once
#include <functional>

#include "optim/sharpness.hpp"
#include "optim/spectrum.hpp"

namespace flatmin::optim {

using ProjectorFn = std::function<Params(const Params&)>;

// The projection onto ker J, J the Jacobian of r (shape (n)) at x, from a dense SVD of J:
// I − Σ_{i ≤ rank} w_i w_iᵀ over its top right singular vectors (= I − Jᵀ(JJᵀ)⁻¹J when J has
// full row rank). `normal_rank` is the rank J must have (the dimension of the normal space of
// r's level set: n when r's components are independent, fewer for redundant residuals such
// as the n = pq entries of a rank-k factorisation); < 0 means n. Refused when J is
// numerically of lower rank (σ_rank ≤ 1e-10·σ_1) or of higher rank (σ_{rank+1} > 1e-8·σ_1):
// the level set is then not the manifold the caller described and ker J is not its tangent.
ProjectorFn residual_tangent_projector(const VectorFn& residual, const Params& x, int64_t normal_rank = -1);

struct NullSpaceOptions {
  int top_k = 10;         // eigenpairs computed (Lanczos)
  int iterations = 0;     // Lanczos steps (0: automatic, see EigenOptions)
  double rel_cut = 1e-3;  // eigenvalues above rel_cut·λ_1 span the normal space
  double min_gap = 10;    // required λ_r / λ_{r+1} at the cut
  uint64_t seed = 0;
};
struct NullSpaceCut {
  int rank = 0;                     // r, the dimension of the removed (normal) space
  std::vector<double> eigenvalues;  // the top k, descending
  double gap = 0;                   // λ_r / max(λ_{r+1}, 0⁺)
  int64_t products = 0;             // Hessian-vector products used
};
ProjectorFn hessian_null_projector(const HvpFn& hvp, const Params& like, const NullSpaceOptions& o,
                                   NullSpaceCut* cut = nullptr);

struct CertifyOptions {
  double eps_prime = -1;  // < 0: √ε (the paper's target)
  int trace_samples = 0;  // 0: exact ∇tr̄ (d ≤ 4096); else Hutchinson samples of ∇³f[z, z]/d
  uint64_t seed = 0;
};
struct Certificate {
  FlatnessCertificate flat;
  double trace_grad_stderr = 0;  // standard error of ‖∇tr̄‖'s estimate (0 when exact)
};
// Refuses ε ≤ 0 or non-finite before any derivative.
Certificate certify(const ScalarFn& f, const Params& x, double eps, const ProjectorFn& tangent,
                    const CertifyOptions& o = {});

// For a loss recorded from leaves (a model's parameters, which require grad), as
// hvp_fn_of_leaves: (u, v) ↦ ∇³f[u, v], three nested reverse sweeps.
ThirdFn third_fn_of_leaves(const std::function<Tensor()>& loss, const Params& leaves);
// A network's certificate: ∂Φ from the Hessian's near-null space (refused where the cut
// cannot be determined), ∇tr̄ from o.trace_samples ≥ 1 Hutchinson samples of ∇³f[z, z]/d.
Certificate certify_leaves(const std::function<Tensor()>& loss, const Params& leaves, double eps,
                           const NullSpaceOptions& ns, const CertifyOptions& o, NullSpaceCut* cut = nullptr);

}  // namespace flatmin::optim
