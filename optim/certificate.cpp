#include "optim/certificate.hpp"

#include <cmath>
#include "autodiff/eigen.hpp"

namespace flatmin::optim {

ProjectorFn residual_tangent_projector(const VectorFn& residual, const Params& x, int64_t normal_rank) {
  Params at = detach(x);
  Tensor r0 = residual(at);
  if (r0.dim() != 1)
    throw Error("residual_tangent_projector: the residual must have shape (n), got " + to_string(r0.shape()));
  const int64_t n = r0.size(0), d = numel(at);
  const int64_t rank = normal_rank < 0 ? n : normal_rank;
  if (rank < 1) throw Error("residual_tangent_projector: the normal rank must be >= 1, got " + std::to_string(rank));
  if (rank > n)
    throw Error("residual_tangent_projector: a normal rank of " + std::to_string(rank) + " exceeds the " +
                std::to_string(n) + " residuals");
  if (rank >= d)
    throw Error("residual_tangent_projector: a normal space of dimension " + std::to_string(rank) +
                " leaves no tangent space in dimension " + std::to_string(d));
  Eigen::MatrixXd J(n, d);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> row =
        flatten(gradient([&](const Params& p) { return sum(slice(residual(p), 0, i, i + 1)); }, at)).to_vector();
    for (int64_t k = 0; k < d; ++k) J(i, k) = row[size_t(k)];
  }
  Eigen::BDCSVD<Eigen::MatrixXd> svd(J, Eigen::ComputeThinV);
  const Eigen::VectorXd& sv = svd.singularValues();  // descending, min(n, d) of them
  const double s1 = sv.size() ? sv(0) : 0.0;
  if (!(sv(rank - 1) > 1e-10 * s1))
    throw Error("residual_tangent_projector: the residual's Jacobian is rank-deficient at x (rank below " +
                std::to_string(rank) + "): the minima set has no tangent space there");
  if (rank < sv.size() && sv(rank) > 1e-8 * s1)
    throw Error("residual_tangent_projector: the residual's Jacobian has rank above " + std::to_string(rank) +
                " at x (σ_" + std::to_string(rank + 1) + "/σ_1 = " + std::to_string(sv(rank) / s1) +
                "): its kernel is not the stated tangent space");
  const Eigen::MatrixXd W = svd.matrixV().leftCols(rank);
  Eigen::MatrixXd P = Eigen::MatrixXd::Identity(d, d) - W * W.transpose();
  const TensorOptions opt = at[0].options();
  return [P, at, opt](const Params& v) {
    std::vector<double> f = flatten(v).to(DType::f64).to_vector();
    Eigen::VectorXd r = P * Eigen::Map<Eigen::VectorXd>(f.data(), Eigen::Index(f.size()));
    return unflatten(
        from_vector(std::vector<double>(r.data(), r.data() + r.size()), {r.size()}, {DType::f64}).to(opt.dtype), at);
  };
}

ProjectorFn hessian_null_projector(const HvpFn& hvp, const Params& like, const NullSpaceOptions& o, NullSpaceCut* out) {
  if (!(o.rel_cut > 0 && o.rel_cut < 1)) throw Error("hessian_null_projector: rel_cut must be in (0, 1)");
  if (!(o.min_gap > 1) || !std::isfinite(o.min_gap))
    throw Error("hessian_null_projector: min_gap must be a finite number > 1");
  int64_t products = 0;
  HvpFn counted = [&](const Params& v) {
    ++products;
    return hvp(v);
  };
  Eigenpairs e = top_eigenpairs(counted, like, {.k = o.top_k, .iterations = o.iterations, .seed = o.seed});
  const double l1 = e.values[0];
  const auto num = [](double v) { return std::to_string(v); };
  if (!(l1 > 0))
    throw Error("certify: the Hessian has no positive eigenvalue at x (λ_1 = " + num(l1) +
                "): the cut cannot be determined");
  if (e.values.back() < -o.rel_cut * l1)
    throw Error("certify: negative curvature at x (λ_" + std::to_string(o.top_k) + " = " + num(e.values.back()) +
                "): not a minimum, ∂Φ is undefined");
  int r = 0;
  while (r < o.top_k && e.values[size_t(r)] > o.rel_cut * l1) ++r;
  if (r == o.top_k)
    throw Error("certify: all " + std::to_string(o.top_k) + " computed eigenvalues are above the cut " +
                num(o.rel_cut) + "·λ_1: the Hessian's range may be larger; ask more eigenpairs (top_k)");
  const double below = std::max(e.values[size_t(r)], 1e-300);
  const double gap = e.values[size_t(r - 1)] / below;
  if (gap < o.min_gap)
    throw Error("certify: no gap at the Hessian cut (λ_" + std::to_string(r) + "/λ_" + std::to_string(r + 1) + " = " +
                num(gap) + " < " + num(o.min_gap) + "): the near-null space, hence ∂Φ, cannot be determined");
  if (out) *out = {r, e.values, gap, products};
  std::vector<Params> normal(e.vectors.begin(), e.vectors.begin() + r);
  return [normal](const Params& v) {
    NoGrad ng;
    Params p = detach(v);
    for (const Params& q : normal) p = axpy(-dot(q, p).item(), q, p);
    return p;
  };
}

Certificate certify(const ScalarFn& f, const Params& x, double eps, const ProjectorFn& tangent,
                    const CertifyOptions& o) {
  if (!(eps > 0) || !std::isfinite(eps))
    throw Error("certify: ε must be a positive finite number, got " + std::to_string(eps));
  if (o.trace_samples < 0) throw Error("certify: trace_samples must be >= 0");
  const double eps_prime = o.eps_prime < 0 ? std::sqrt(eps) : o.eps_prime;
  Certificate c;
  Params g = gradient(f, x);
  Params t;
  if (o.trace_samples == 0) {
    t = trace_gradient_exact(third_fn(f, x), x);
  } else {
    TraceGradientEstimate est = trace_gradient(third_fn(f, x), x, o.trace_samples, o.seed);
    t = est.mean;
    c.trace_grad_stderr = est.stderr_norm;
  }
  c.flat = certify_flatness(g, tangent(t), eps, eps_prime);
  return c;
}

static Tensor contract(const Params& g, const Params& v) {  // Σ_i ⟨g_i, v_i⟩ over the defined, differentiable g_i
  Tensor s;
  for (size_t i = 0; i < g.size(); ++i)
    if (g[i].defined() && g[i].requires_grad())
      s = s.defined() ? add(s, dot(g[i], v[i].detach())) : dot(g[i], v[i].detach());
  return s;
}

ThirdFn third_fn_of_leaves(const std::function<Tensor()>& loss, const Params& leaves) {
  for (size_t i = 0; i < leaves.size(); ++i)
    if (!leaves[i].requires_grad())
      throw Error("third_fn_of_leaves: tensor " + std::to_string(i) + " does not require grad");
  return [loss, leaves](const Params& u, const Params& v) {
    EnableGrad on;
    Tensor y = loss();
    Params out;
    Tensor s = contract(grad({y}, leaves, {.create_graph = true, .allow_unused = true}), v);
    if (s.defined()) {
      Tensor t = contract(grad({s}, leaves, {.create_graph = true, .allow_unused = true}), u);
      if (t.defined()) out = grad({t}, leaves, {.allow_unused = true});
    }
    out.resize(leaves.size());
    for (size_t i = 0; i < out.size(); ++i)
      if (!out[i].defined()) out[i] = zeros_like(leaves[i].detach());
    return out;
  };
}

Certificate certify_leaves(const std::function<Tensor()>& loss, const Params& leaves, double eps,
                           const NullSpaceOptions& ns, const CertifyOptions& o, NullSpaceCut* cut) {
  if (!(eps > 0) || !std::isfinite(eps))
    throw Error("certify: ε must be a positive finite number, got " + std::to_string(eps));
  if (o.trace_samples < 1) throw Error("certify: a network needs trace_samples >= 1 (Hutchinson samples of ∇tr̄)");
  ProjectorFn tangent = hessian_null_projector(hvp_fn_of_leaves(loss, leaves), leaves, ns, cut);  // may refuse: first
  Params g;
  {
    EnableGrad on;
    g = grad({loss()}, leaves, {.allow_unused = true});
  }
  g.resize(leaves.size());
  for (size_t i = 0; i < g.size(); ++i)
    if (!g[i].defined()) g[i] = zeros_like(leaves[i].detach());
  TraceGradientEstimate t = trace_gradient(third_fn_of_leaves(loss, leaves), leaves, o.trace_samples, o.seed);
  Certificate c;
  c.trace_grad_stderr = t.stderr_norm;
  c.flat = certify_flatness(g, tangent(t.mean), eps, o.eps_prime < 0 ? std::sqrt(eps) : o.eps_prime);
  return c;
}

}  // namespace flatmin::optim
