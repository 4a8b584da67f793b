#include "optim/sharpness.hpp"

#include <cmath>
#include "autodiff/eigen.hpp"

namespace flatmin::optim {

HvpFn hvp_fn(const ScalarFn& f, const Params& x) {
  Params at = detach(x);
  return [f, at](const Params& v) { return hvp(f, at, v); };
}
ThirdFn third_fn(const ScalarFn& f, const Params& x) {
  Params at = detach(x);
  return [f, at](const Params& u, const Params& v) { return third(f, at, u, v); };
}
HvpFn hvp_fn_of_leaves(const std::function<Tensor()>& loss, const Params& leaves) {
  for (size_t i = 0; i < leaves.size(); ++i)
    if (!leaves[i].requires_grad())
      throw Error("hvp_fn_of_leaves: tensor " + std::to_string(i) + " does not require grad");
  return [loss, leaves](const Params& v) {
    EnableGrad on;
    Tensor y = loss();
    Params g = grad({y}, leaves, {.create_graph = true, .allow_unused = true});
    Tensor s;
    for (size_t i = 0; i < g.size(); ++i)
      if (g[i].defined() && g[i].requires_grad())
        s = s.defined() ? add(s, dot(g[i], v[i].detach())) : dot(g[i], v[i].detach());
    Params hv;
    if (s.defined()) hv = grad({s}, leaves, {.allow_unused = true});
    hv.resize(leaves.size());
    for (size_t i = 0; i < hv.size(); ++i)
      if (!hv[i].defined()) hv[i] = zeros_like(leaves[i].detach());
    return hv;
  };
}

static void check_like(const char* who, const Params& like) {
  if (like.empty()) throw Error(std::string(who) + ": empty parameter list");
}

TraceEstimate hutchinson_trace(const HvpFn& hvp_of, const Params& like, const HutchinsonOptions& o) {
  return hutchinson_trace(
      [&](const std::vector<Params>& zs) { return std::vector<double>{dot(zs[0], hvp_of(zs[0])).item()}; }, 1, like, o);
}

TraceEstimate hutchinson_trace(const QuadRoundFn& quads, int round, const Params& like, const HutchinsonOptions& o) {
  check_like("hutchinson_trace", like);
  if (o.max_samples < 1)
    throw Error("hutchinson_trace: max_samples must be >= 1, got " + std::to_string(o.max_samples));
  if (!(o.tol >= 0)) throw Error("hutchinson_trace: tol must be >= 0");
  if (round < 1) throw Error("hutchinson_trace: round must be >= 1, got " + std::to_string(round));
  Generator gen(o.seed);
  Params shapes = detach(like);
  TraceEstimate r;
  r.dim = numel(like);
  double sum = 0, sum_sq = 0, previous = 0;
  for (int first = 1; first <= o.max_samples && !r.converged; first += round) {
    std::vector<Params> zs;
    for (int k = first; k < first + round && k <= o.max_samples; ++k) zs.push_back(gen.rademacher_like(shapes));
    const std::vector<double> qs = quads(zs);
    if (qs.size() != zs.size())
      throw Error("hutchinson_trace: " + std::to_string(qs.size()) + " products for " + std::to_string(zs.size()) +
                  " vectors");
    for (size_t j = 0; j < qs.size(); ++j) {
      const int k = first + int(j);
      const double q = qs[j];
      sum += q;
      sum_sq += q * q;
      r.samples = k;
      const double mean = sum / k;
      if (std::fabs(mean - previous) / (std::fabs(previous) + 1e-6) < o.tol) {  // PyHessian's rule
        r.converged = true;
        break;
      }
      previous = mean;
    }
  }
  const int n = r.samples;
  r.trace = sum / n;
  const double var = n > 1 ? std::max(0.0, (sum_sq - n * r.trace * r.trace) / (n - 1)) : 0.0;
  r.stderr_trace = std::sqrt(var / n);
  r.trace_normalized = r.trace / double(r.dim);
  r.stderr_normalized = r.stderr_trace / double(r.dim);
  return r;
}

EigenEstimate top_eigenvalue(const HvpFn& hvp_of, const Params& like, const PowerOptions& o) {
  check_like("top_eigenvalue", like);
  if (o.max_iter < 1) throw Error("top_eigenvalue: max_iter must be >= 1, got " + std::to_string(o.max_iter));
  Generator gen(o.seed);
  NoGrad ng;
  Params v = gen.sphere_like(detach(like));
  EigenEstimate r;
  bool have = false;
  for (int k = 1; k <= o.max_iter; ++k) {
    Params hv = hvp_of(v);
    const double rq = dot(hv, v).item();
    const double n = norm(hv).item();
    r.iterations = k;
    if (n == 0) {  // H v = 0: v is an eigenvector with eigenvalue 0
      r.value = 0;
      r.converged = true;
      break;
    }
    v = scale(1.0 / n, hv);
    if (have && std::fabs(r.value - rq) / (std::fabs(r.value) + 1e-6) < o.tol) {
      r.value = rq;
      r.converged = true;
      break;
    }
    r.value = rq;
    have = true;
  }
  r.vector = v;
  return r;
}

TraceGradientEstimate trace_gradient(const ThirdFn& third_of, const Params& like, int samples, uint64_t seed) {
  check_like("trace_gradient", like);
  if (samples < 1) throw Error("trace_gradient: samples must be >= 1, got " + std::to_string(samples));
  Generator gen(seed);
  Params shapes = detach(like);
  const double d = double(numel(like));
  NoGrad ng;
  Params sum = zeros_like(shapes), sum_sq = zeros_like(shapes);
  for (int k = 0; k < samples; ++k) {
    Params z = gen.rademacher_like(shapes);
    Params t = scale(1.0 / d, third_of(z, z));
    for (size_t i = 0; i < t.size(); ++i) {
      sum[i] = add(sum[i], t[i]);
      sum_sq[i] = add(sum_sq[i], mul(t[i], t[i]));
    }
  }
  TraceGradientEstimate r;
  r.samples = samples;
  r.mean = scale(1.0 / samples, sum);
  if (samples > 1) {
    double total_var = 0;  // Σ_k sample variance of coordinate k
    for (size_t i = 0; i < sum.size(); ++i)
      total_var += (flatmin::sum(sum_sq[i]).item() - samples * dot(r.mean[i], r.mean[i]).item()) / (samples - 1);
    r.stderr_norm = std::sqrt(std::max(0.0, total_var) / samples);
  }
  return r;
}

Params trace_gradient_exact(const ThirdFn& third_of, const Params& like) {
  check_like("trace_gradient_exact", like);
  const int64_t d = numel(like);
  if (d > 4096) throw Error("trace_gradient_exact: " + std::to_string(d) + " parameters is too many (limit 4096)");
  NoGrad ng;
  Params shapes = detach(like);
  Params acc = zeros_like(shapes);
  const TensorOptions o = shapes[0].options();
  for (int64_t i = 0; i < d; ++i) {
    Tensor e = zeros({d}, {DType::f64});
    data_ptr<double>(e)[i] = 1;
    e = e.to(o.dtype);
    Params ei = unflatten(e, shapes);
    acc = axpy(1.0 / double(d), third_of(ei, ei), acc);
  }
  return acc;
}

Tensor tangent_projector(const Tensor& H, double rel_tol) {
  if (H.dim() != 2 || H.size(0) != H.size(1))
    throw Error("tangent_projector: expected a square matrix, got " + to_string(H.shape()));
  const int64_t d = H.size(0);
  std::vector<double> h = H.to_vector();
  Eigen::MatrixXd M(d, d);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) M(i, j) = 0.5 * (h[i * d + j] + h[j * d + i]);
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(M);
  const Eigen::VectorXd& lam = es.eigenvalues();
  const double scale_ = lam.cwiseAbs().maxCoeff();
  Eigen::MatrixXd P = Eigen::MatrixXd::Zero(d, d);
  for (int64_t k = 0; k < d; ++k)
    if (std::fabs(lam(k)) <= rel_tol * scale_) P += es.eigenvectors().col(k) * es.eigenvectors().col(k).transpose();
  std::vector<double> out(size_t(d * d));
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) out[size_t(i * d + j)] = P(i, j);
  return from_vector(out, {d, d}, {DType::f64});
}

FlatnessCertificate certify_flatness(const Params& g, const Params& ptg, double eps, double eps_prime) {
  FlatnessCertificate c;
  c.eps = eps;
  c.eps_prime = eps_prime;
  c.grad_norm = norm(g).item();
  c.projected_trace_grad_norm = norm(ptg).item();
  c.gradient_ok = c.grad_norm <= eps;
  c.trace_ok = c.projected_trace_grad_norm <= eps_prime;
  return c;
}

FlatnessCertificate certify_flatness(const ScalarFn& f, const Params& x, double eps, double eps_prime, double rel_tol) {
  Params g = gradient(f, x);
  Tensor P = tangent_projector(hessian(f, x), rel_tol);
  Tensor t = flatten(trace_gradient_exact(third_fn(f, x), x)).to(DType::f64);
  Tensor pt = reshape(matmul(P, reshape(t, {t.numel(), 1})), {t.numel()});
  return certify_flatness(g, {pt}, eps, eps_prime);
}

}  // namespace flatmin::optim
