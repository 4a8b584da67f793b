#include "tools/flat_problems.hpp"

#include <cmath>

#include "datasets/synthetic.hpp"

namespace flatmin::tools {
namespace {
const TensorOptions f64{DType::f64};
}

FlatProblem example1_problem(double x1, double x2) {
  FlatProblem p;
  p.name = "example1";
  p.dim = 2;
  p.examples = 1;
  p.start = {from_vector(std::vector<double>{x1, x2}, {2}, f64)};
  p.loss = [](const Params& x) { return data::example1_loss(x[0]); };
  p.examples_loss = [](const std::vector<int64_t>&, const Params& x) { return data::example1_loss(x[0]); };
  p.residual = [](const Params& x) { return reshape(add_scalar(mul(slice(x[0], 0, 0, 1), slice(x[0], 0, 1, 2)), -1.0), {1}); };
  p.trace_normalized = [](const Params& x) {
    std::vector<double> v = x[0].to_vector();
    return data::example1_hessian_trace(v[0], v[1]) / 2.0;
  };
  p.trace_normalized_grad = [](const Params& x) { return Params{mul_scalar(x[0].detach(), 2.0)}; };
  return p;
}

DiagonalNetwork::DiagonalNetwork(int64_t m_, int64_t n_, double alpha, uint64_t seed) : m(m_), n(n_) {
  Generator g(seed);
  A = g.normal({n, m}, f64, 0.0, 1.0 / std::sqrt(double(m)));
  Tensor beta = g.normal({m}, f64);
  Y = matmul(A, reshape(beta, {m, 1}));
  start = {full({m}, alpha, f64), mul_scalar(beta, 1.0 / alpha)};
  std::vector<double> av = A.to_vector();
  a2.assign(size_t(m), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) a2[size_t(j)] += av[size_t(i * m + j)] * av[size_t(i * m + j)] / double(n);
}

Tensor DiagonalNetwork::loss(const Tensor& rows_A, const Tensor& rows_Y, const Params& p) const {
  return mean(square(sub(matmul(rows_A, reshape(mul(p[0], p[1]), {m, 1})), rows_Y)));
}

Tensor DiagonalNetwork::examples_loss(const std::vector<int64_t>& idx, const Params& p) const {
  Tensor i = from_ints(idx, {int64_t(idx.size())});
  return loss(index_select(A, 0, i), index_select(Y, 0, i), p);
}

double DiagonalNetwork::trace_normalized(const Params& p) const {
  std::vector<double> u = p[0].to_vector(), v = p[1].to_vector();
  double t = 0;
  for (int64_t j = 0; j < m; ++j) t += 2 * a2[size_t(j)] * (u[size_t(j)] * u[size_t(j)] + v[size_t(j)] * v[size_t(j)]);
  return t / double(2 * m);
}

Params DiagonalNetwork::trace_normalized_grad(const Params& p) const {
  // ∂/∂u_j of (2/n) Σ_i a_ij² (u_j² + v_j²) / d = 4 a2_j u_j / d.
  Tensor c = mul_scalar(from_vector(a2, {m}, f64), 4.0 / double(2 * m));
  return {mul(c, p[0].detach()), mul(c, p[1].detach())};
}

FlatProblem DiagonalNetwork::problem() const {
  FlatProblem p;
  auto self = std::make_shared<DiagonalNetwork>(*this);
  p.name = "diagonal-network";
  p.dim = 2 * m;
  p.examples = n;
  p.start = {start[0].clone(), start[1].clone()};
  p.loss = [self](const Params& x) { return self->full_loss(x); };
  p.examples_loss = [self](const std::vector<int64_t>& i, const Params& x) { return self->examples_loss(i, x); };
  p.residual = [self](const Params& x) {
    return reshape(sub(matmul(self->A, reshape(mul(x[0], x[1]), {self->m, 1})), self->Y), {self->n});
  };
  p.trace_normalized = [self](const Params& x) { return self->trace_normalized(x); };
  p.trace_normalized_grad = [self](const Params& x) { return self->trace_normalized_grad(x); };
  return p;
}

}  // namespace flatmin::tools
