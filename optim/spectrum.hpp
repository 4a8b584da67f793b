// The Hessian's spectrum from Hessian-vector products (what PyHessian offers in Python, on
// flatmin's exact HVPs): the top-k eigenpairs by Lanczos with full reorthogonalization, the
// eigenvalue spectral density by stochastic Lanczos quadrature (SLQ, Ghorbani et al. 2019,
// with PyHessian's defaults), and the trace and top eigenvalue of each parameter group.
// Like optim/sharpness.hpp, everything goes through an HvpFn, so the same code measures a
// small function (tests compare with a dense eigendecomposition) and a network.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "optim/sharpness.hpp"

namespace flatmin::optim {

// Called after each Hessian-vector product: (done, total).
using ProgressFn = std::function<void(int done, int total)>;

// m steps of Lanczos from a start vector q1 (any nonzero norm; it is normalized), with
// every new vector orthogonalized twice against all earlier ones (full reorthogonalization:
// without it, rounding makes copies of converged eigenvalues appear). T = tridiag(β, α, β).
struct LanczosBasis {
  std::vector<double> alpha, beta;  // α_1..α_m, β_1..β_{m-1}
  std::vector<Params> q;            // q_1..q_m, orthonormal
  std::vector<bool> restarted;      // restarted[j]: q_j is a fresh random vector (β_{j-1} = 0)
  double last_beta = 0;             // β_m (0 after a breakdown)
};
struct LanczosOptions {
  int iterations = 100;
  // On breakdown (β ≈ 0: the Krylov space is invariant) either stop there (quadrature: the
  // rule is then exact) or continue from a fresh random vector orthogonal to the basis
  // (eigenpairs: the eigenvalues outside the Krylov space of the first start vector).
  bool restart_on_breakdown = true;
  uint64_t seed = 0;  // restart vectors
  ProgressFn progress;
};
LanczosBasis lanczos(const HvpFn& hvp, const Params& start, const LanczosOptions& o);

struct EigenOptions {
  int k = 1;           // eigenpairs wanted (the k algebraically largest)
  int iterations = 0;  // Lanczos steps m (≥ k; 0: min(d, max(2k + 20, 40))); capped at d
  uint64_t seed = 0;   // the Gaussian start vector
  ProgressFn progress;
};
struct Eigenpairs {
  std::vector<double> values;     // descending
  std::vector<Params> vectors;    // unit Ritz vectors
  std::vector<double> residuals;  // ‖H v − λ v‖ (one more product per pair)
  int iterations = 0;
  int64_t dim = 0;
};
// Refuses k ≤ 0, k > d and k > iterations before any product.
Eigenpairs top_eigenpairs(const HvpFn& hvp, const Params& like, const EigenOptions& o = {});

// Gauss quadrature of the spectral measure μ_z = Σ_i (q_iᵀz)²/‖z‖² δ_{λ_i}: nodes θ_j are the
// eigenvalues of T, weights the squared first components of its eigenvectors. Exact for
// polynomials of degree < 2m; with m = d the nodes are H's eigenvalues.
struct Quadrature {
  std::vector<double> nodes, weights;  // weights sum to 1
};
Quadrature lanczos_quadrature(const HvpFn& hvp, const Params& z, int iterations, const ProgressFn& progress = {});

// PyHessian's defaults (pyhessian/hessian.py density(), density_plot.py density_generate()):
// 100 Lanczos steps, 1 run, Rademacher start vectors; the density on `bins` equally spaced
// points from min θ − overhead to max θ + overhead (θ averaged over runs as PyHessian does),
// each node broadened by a Gaussian of variance σ² = sigma_squared · max(1, grid width), then
// normalized so that Σ density · Δgrid = 1.
struct DensityOptions {
  int iterations = 100;
  int runs = 1;
  int bins = 10000;
  double sigma_squared = 1e-5;
  double overhead = 0.01;
  uint64_t seed = 0;
  ProgressFn progress;
};
struct SpectralDensity {
  std::vector<Quadrature> runs;
  std::vector<double> grid, density;
  double variance = 0;  // σ² actually used
  int iterations = 0;   // per run (capped at d)
};
SpectralDensity spectral_density(const HvpFn& hvp, const Params& like, const DensityOptions& o = {});
// The broadened density of quadrature rules on a grid (what spectral_density returns).
SpectralDensity broaden(std::vector<Quadrature> runs, const DensityOptions& o);

// A parameter group: a name and the indices of its tensors in the parameter list.
struct ParamGroup {
  std::string name;
  std::vector<size_t> members;
};
// One group per layer: parameters named "a.b.weight" and "a.b.bias" form the group "a.b".
// `named` is what nn::Module::named_parameters() returns (spelled out: optim is below nn).
std::vector<ParamGroup> layer_groups(const std::vector<std::pair<std::string, Tensor>>& named);
// v_g ↦ (H [0, …, v_g, …, 0])_g: the diagonal block of H for a group.
HvpFn restrict_hvp(const HvpFn& hvp, const Params& like, const std::vector<size_t>& members);

struct GroupSpectrum {
  ParamGroup group;
  int64_t dim = 0;
  TraceEstimate trace;        // Hutchinson on the diagonal block
  double top_eigenvalue = 0;  // largest eigenvalue of the block (Lanczos)
  double top_residual = 0;    // ‖H_gg v − λ v‖
};
GroupSpectrum group_spectrum(const HvpFn& hvp, const Params& like, const ParamGroup& g, const HutchinsonOptions& ho,
                             int lanczos_iterations, uint64_t seed);

}  // namespace flatmin::optim
