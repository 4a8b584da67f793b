#include "optim/spectrum.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include "autodiff/eigen.hpp"

namespace flatmin::optim {
namespace {

double unit_roundoff(const Params& like) {
  return like.at(0).dtype() == DType::f64 ? std::numeric_limits<double>::epsilon()
                                          : std::numeric_limits<float>::epsilon();
}

// w ← w − Σ_i ⟨w, q_i⟩ q_i, twice ("twice is enough": one pass leaves O(ε·κ) components).
Params orthogonalize(Params w, const std::vector<Params>& q) {
  for (int pass = 0; pass < 2; ++pass)
    for (const Params& qi : q) w = axpy(-dot(w, qi).item(), qi, w);
  return w;
}

// The eigen-decomposition of T = tridiag(β, α, β), eigenvalues ascending.
Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> tridiagonal_eigen(const LanczosBasis& b) {
  const Eigen::Index m = Eigen::Index(b.alpha.size());
  Eigen::VectorXd diag = Eigen::Map<const Eigen::VectorXd>(b.alpha.data(), m);
  Eigen::VectorXd sub =
      m > 1 ? Eigen::VectorXd(Eigen::Map<const Eigen::VectorXd>(b.beta.data(), m - 1)) : Eigen::VectorXd();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es;
  es.computeFromTridiagonal(diag, sub, Eigen::ComputeEigenvectors);
  if (es.info() != Eigen::Success) throw Error("lanczos: the tridiagonal eigensolver did not converge");
  return es;
}

}  // namespace

LanczosBasis lanczos(const HvpFn& hvp, const Params& start, const LanczosOptions& o) {
  if (start.empty()) throw Error("lanczos: empty start vector");
  if (o.iterations < 1) throw Error("lanczos: iterations must be >= 1, got " + std::to_string(o.iterations));
  const int64_t d = numel(start);
  if (o.iterations > d)
    throw Error("lanczos: iterations (" + std::to_string(o.iterations) + ") exceed the dimension " + std::to_string(d));
  NoGrad ng;
  const double n0 = norm(start).item();
  if (!(n0 > 0) || !std::isfinite(n0)) throw Error("lanczos: the start vector is zero or not finite");
  Generator gen(o.seed);
  // Below this β is rounding noise of an invariant Krylov space, not a direction of H.
  const double tiny = 100 * unit_roundoff(start);
  LanczosBasis b;
  Params q = scale(1.0 / n0, detach(start));
  bool fresh = false;
  double size = 0;  // running estimate of ‖H‖ on the basis
  for (int j = 0; j < o.iterations; ++j) {
    b.q.push_back(q);
    b.restarted.push_back(fresh);
    Params w = hvp(q);
    const double a = dot(w, q).item();
    w = orthogonalize(std::move(w), b.q);
    const double beta = norm(w).item();
    if (!std::isfinite(a) || !std::isfinite(beta))
      throw Error("lanczos: the Hessian-vector product is not finite at step " + std::to_string(j + 1));
    b.alpha.push_back(a);
    size = std::max({size, std::fabs(a), beta});
    if (o.progress) o.progress(j + 1, o.iterations);
    if (j + 1 == o.iterations) {
      b.last_beta = beta;
      break;
    }
    if (beta > tiny * size) {
      b.beta.push_back(beta);
      q = scale(1.0 / beta, w);
      fresh = false;
      continue;
    }
    // Breakdown: the Krylov space is invariant (exactly, up to rounding).
    b.last_beta = 0;
    if (!o.restart_on_breakdown) break;
    Params r = orthogonalize(gen.normal_like(q), b.q);
    const double rn = norm(r).item();
    if (!(rn > tiny * std::sqrt(double(d)))) break;  // the basis already spans the space
    b.beta.push_back(0.0);
    q = scale(1.0 / rn, r);
    fresh = true;
  }
  return b;
}

Eigenpairs top_eigenpairs(const HvpFn& hvp, const Params& like, const EigenOptions& o) {
  if (like.empty()) throw Error("top_eigenpairs: empty parameter list");
  const int64_t d = numel(like);
  if (o.k < 1) throw Error("top_eigenpairs: k must be >= 1, got " + std::to_string(o.k));
  if (o.k > d)
    throw Error("top_eigenpairs: k = " + std::to_string(o.k) + " exceeds the dimension " + std::to_string(d));
  if (o.iterations < 0)
    throw Error("top_eigenpairs: iterations must be >= 0 (0: automatic), got " + std::to_string(o.iterations));
  if (o.iterations > 0 && o.k > o.iterations)
    throw Error("top_eigenpairs: k = " + std::to_string(o.k) + " eigenvalues need at least k Lanczos iterations, got " +
                std::to_string(o.iterations));
  const int m = int(std::min<int64_t>(d, o.iterations > 0 ? o.iterations : std::max(2 * o.k + 20, 40)));
  Generator gen(o.seed);
  Params start = gen.normal_like(detach(like));
  LanczosBasis b =
      lanczos(hvp, start, {.iterations = m, .restart_on_breakdown = true, .seed = o.seed + 1, .progress = o.progress});
  auto es = tridiagonal_eigen(b);
  const Eigen::Index got = es.eigenvalues().size();
  Eigenpairs r;
  r.iterations = int(got);
  r.dim = d;
  NoGrad ng;
  for (int i = 0; i < o.k && i < got; ++i) {
    const Eigen::Index c = got - 1 - i;  // descending
    Params v = zeros_like(b.q[0]);
    for (Eigen::Index j = 0; j < got; ++j) v = axpy(es.eigenvectors()(j, c), b.q[size_t(j)], v);
    r.values.push_back(es.eigenvalues()(c));
    r.vectors.push_back(scale(1.0 / norm(v).item(), v));
  }
  // The true residuals, one product each: the Lanczos estimate |β_m s_{m,i}| ignores the
  // rounding of the products and the basis, and reads 1e-40 where the truth is 1e-7.
  for (size_t i = 0; i < r.vectors.size(); ++i)
    r.residuals.push_back(norm(axpy(-r.values[i], r.vectors[i], hvp(r.vectors[i]))).item());
  if (int(r.values.size()) < o.k)  // only when the whole space was exhausted early (cannot happen for k ≤ d)
    throw Error("top_eigenpairs: Lanczos produced " + std::to_string(r.values.size()) + " Ritz values, fewer than k");
  return r;
}

Quadrature lanczos_quadrature(const HvpFn& hvp, const Params& z, int iterations, const ProgressFn& progress) {
  LanczosBasis b = lanczos(hvp, z, {.iterations = iterations, .restart_on_breakdown = false, .progress = progress});
  auto es = tridiagonal_eigen(b);
  Quadrature q;
  for (Eigen::Index i = 0; i < es.eigenvalues().size(); ++i) {
    q.nodes.push_back(es.eigenvalues()(i));
    q.weights.push_back(es.eigenvectors()(0, i) * es.eigenvectors()(0, i));
  }
  return q;
}

static void validate(const DensityOptions& o) {
  if (o.iterations < 1) throw Error("spectral_density: iterations must be >= 1, got " + std::to_string(o.iterations));
  if (o.runs < 1) throw Error("spectral_density: runs must be >= 1, got " + std::to_string(o.runs));
  if (o.bins < 2) throw Error("spectral_density: bins must be >= 2, got " + std::to_string(o.bins));
  if (!(o.sigma_squared > 0) || !std::isfinite(o.sigma_squared))
    throw Error("spectral_density: sigma_squared must be a positive number");
  if (!(o.overhead >= 0) || !std::isfinite(o.overhead)) throw Error("spectral_density: overhead must be a number >= 0");
}

SpectralDensity broaden(std::vector<Quadrature> runs, const DensityOptions& o) {
  validate(o);
  if (runs.empty()) throw Error("spectral_density: no quadrature runs");
  double hi = 0, lo = 0;
  for (const Quadrature& q : runs) {
    if (q.nodes.empty() || q.nodes.size() != q.weights.size())
      throw Error("spectral_density: a quadrature rule without nodes");
    hi += *std::max_element(q.nodes.begin(), q.nodes.end()) / double(runs.size());
    lo += *std::min_element(q.nodes.begin(), q.nodes.end()) / double(runs.size());
  }
  hi += o.overhead;
  lo -= o.overhead;
  SpectralDensity s;
  s.variance = o.sigma_squared * std::max(1.0, hi - lo);
  s.grid.resize(size_t(o.bins));
  s.density.assign(size_t(o.bins), 0.0);
  const double step = (hi - lo) / double(o.bins - 1);
  const double c = 1.0 / std::sqrt(2 * M_PI * s.variance);
  for (int j = 0; j < o.bins; ++j) {
    const double x = lo + step * j;
    s.grid[size_t(j)] = x;
    double acc = 0;
    for (const Quadrature& q : runs)
      for (size_t i = 0; i < q.nodes.size(); ++i)
        acc += q.weights[i] * c * std::exp(-(x - q.nodes[i]) * (x - q.nodes[i]) / (2 * s.variance));
    s.density[size_t(j)] = acc / double(runs.size());
  }
  const double mass = std::accumulate(s.density.begin(), s.density.end(), 0.0) * step;
  if (!(mass > 0) || !std::isfinite(mass))
    throw Error("spectral_density: the " + std::to_string(o.bins) +
                "-point grid misses every broadened node (grid step " + std::to_string(step) + " vs σ " +
                std::to_string(std::sqrt(s.variance)) + "): use more bins or a larger sigma_squared");
  for (double& v : s.density) v /= mass;
  s.runs = std::move(runs);
  return s;
}

SpectralDensity spectral_density(const HvpFn& hvp, const Params& like, const DensityOptions& o) {
  validate(o);
  if (like.empty()) throw Error("spectral_density: empty parameter list");
  const int m = int(std::min<int64_t>(numel(like), o.iterations));
  Generator gen(o.seed);
  std::vector<Quadrature> runs;
  for (int r = 0; r < o.runs; ++r) {
    Params z = gen.rademacher_like(detach(like));  // PyHessian's start vector (normalized by Lanczos)
    ProgressFn p;
    if (o.progress) p = [&, r](int done, int) { o.progress(r * m + done, o.runs * m); };
    runs.push_back(lanczos_quadrature(hvp, z, m, p));
  }
  SpectralDensity s = broaden(std::move(runs), o);
  s.iterations = m;
  return s;
}

std::vector<ParamGroup> layer_groups(const std::vector<std::pair<std::string, Tensor>>& named) {
  std::vector<ParamGroup> groups;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < named.size(); ++i) {
    const std::string& n = named[i].first;
    const size_t dot_at = n.rfind('.');
    const std::string layer = dot_at == std::string::npos ? n : n.substr(0, dot_at);
    auto [it, fresh] = index.try_emplace(layer, groups.size());
    if (fresh) groups.push_back({layer, {}});
    groups[it->second].members.push_back(i);
  }
  return groups;
}

HvpFn restrict_hvp(const HvpFn& hvp, const Params& like, const std::vector<size_t>& members) {
  if (members.empty()) throw Error("restrict_hvp: empty group");
  std::vector<bool> seen(like.size(), false);
  for (size_t m : members) {
    if (m >= like.size()) throw Error("restrict_hvp: tensor index " + std::to_string(m) + " out of range");
    if (seen[m]) throw Error("restrict_hvp: tensor index " + std::to_string(m) + " listed twice");
    seen[m] = true;
  }
  Params zero = zeros_like(detach(like));
  return [hvp, zero, members](const Params& v) {
    if (v.size() != members.size())
      throw Error("restrict_hvp: expected " + std::to_string(members.size()) + " tensors");
    Params full = zero;
    for (size_t k = 0; k < members.size(); ++k) full[members[k]] = v[k];
    Params hv = hvp(full);
    Params out;
    for (size_t m : members) out.push_back(hv[m]);
    return out;
  };
}

GroupSpectrum group_spectrum(const HvpFn& hvp, const Params& like, const ParamGroup& g, const HutchinsonOptions& ho,
                             int lanczos_iterations, uint64_t seed) {
  HvpFn block = restrict_hvp(hvp, like, g.members);
  Params all = detach(like), sub;
  for (size_t m : g.members) sub.push_back(all[m]);
  GroupSpectrum s;
  s.group = g;
  s.dim = numel(sub);
  s.trace = hutchinson_trace(block, sub, ho);
  Eigenpairs top = top_eigenpairs(
      block, sub, {.k = 1, .iterations = int(std::min<int64_t>(s.dim, lanczos_iterations)), .seed = seed});
  s.top_eigenvalue = top.values[0];
  s.top_residual = top.residuals[0];
  return s;
}

}  // namespace flatmin::optim
