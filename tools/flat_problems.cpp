#include "tools/flat_problems.hpp"

#include <cmath>
#include "autodiff/eigen.hpp"

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
  p.normal_rank = 1;
  p.start = {from_vector(std::vector<double>{x1, x2}, {2}, f64)};
  p.loss = [](const Params& x) { return data::example1_loss(x[0]); };
  p.examples_loss = [](const std::vector<int64_t>&, const Params& x) { return data::example1_loss(x[0]); };
  p.residual = [](const Params& x) {
    return reshape(add_scalar(mul(slice(x[0], 0, 0, 1), slice(x[0], 0, 1, 2)), -1.0), {1});
  };
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
  p.normal_rank = n;
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

MatrixFactorization::MatrixFactorization(int64_t p_, int64_t q_, int64_t k_, double alpha, uint64_t seed)
    : p(p_), q(q_), k(k_) {
  if (p < 1 || q < 1 || k < 1 || k >= std::min(p, q))
    throw Error(
        "MatrixFactorization: need 1 <= k < min(p, q) (a rank-k teacher with a minima set of dimension k²), got p=" +
        std::to_string(p) + " q=" + std::to_string(q) + " k=" + std::to_string(k));
  if (!(alpha > 0) || !std::isfinite(alpha)) throw Error("MatrixFactorization: alpha must be a positive finite number");
  Generator g(seed);
  Tensor us = g.normal({p, k}, f64), vs = g.normal({q, k}, f64);
  M = matmul(us, transpose(vs));
  start = {mul_scalar(us, alpha), mul_scalar(vs, 1.0 / alpha)};
}

Tensor MatrixFactorization::residual(const Params& x) const {
  return reshape(sub(matmul(x[0], transpose(x[1])), M), {p * q});
}

Tensor MatrixFactorization::examples_loss(const std::vector<int64_t>& entries, const Params& x) const {
  return mean(square(index_select(residual(x), 0, from_ints(entries, {int64_t(entries.size())}))));
}

double MatrixFactorization::trace_normalized(const Params& x) const {
  std::vector<double> u = x[0].to_vector(), v = x[1].to_vector();
  double su = 0, sv = 0;
  for (double a : u) su += a * a;
  for (double a : v) sv += a * a;
  return (2 * su / double(p) + 2 * sv / double(q)) / double((p + q) * k);
}

Params MatrixFactorization::trace_normalized_grad(const Params& x) const {
  const double d = double((p + q) * k);  // ∇ of ((2/p)‖U‖² + (2/q)‖V‖²)/d
  return {mul_scalar(x[0].detach(), 4 / (double(p) * d)), mul_scalar(x[1].detach(), 4 / (double(q) * d))};
}

Params MatrixFactorization::flat_minimum() const {
  std::vector<double> mv = M.to_vector();
  Eigen::MatrixXd m =
      Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(mv.data(), p, q);
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::VectorXd root = svd.singularValues().head(k).cwiseSqrt();
  const double su = std::pow(double(p) / double(q), 0.25);
  const Eigen::MatrixXd u = su * svd.matrixU().leftCols(k) * root.asDiagonal();
  const Eigen::MatrixXd v = (1 / su) * svd.matrixV().leftCols(k) * root.asDiagonal();
  auto tensor = [](const Eigen::MatrixXd& a) {
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> r = a;
    return from_vector(std::vector<double>(r.data(), r.data() + r.size()), {r.rows(), r.cols()}, f64);
  };
  return {tensor(u), tensor(v)};
}

double MatrixFactorization::flat_trace_normalized() const {
  std::vector<double> mv = M.to_vector();
  Eigen::MatrixXd m =
      Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(mv.data(), p, q);
  const double nuclear = Eigen::JacobiSVD<Eigen::MatrixXd>(m).singularValues().sum();
  return 4 * nuclear / std::sqrt(double(p * q)) / double((p + q) * k);
}

FlatProblem MatrixFactorization::problem() const {
  FlatProblem P;
  auto self = std::make_shared<MatrixFactorization>(*this);
  P.name = "matrix-factorization";
  P.dim = (p + q) * k;
  P.examples = p * q;
  P.normal_rank = (p + q - k) * k;
  P.start = {start[0].clone(), start[1].clone()};
  P.loss = [self](const Params& x) { return mean(square(self->residual(x))); };
  P.examples_loss = [self](const std::vector<int64_t>& i, const Params& x) { return self->examples_loss(i, x); };
  P.residual = [self](const Params& x) { return self->residual(x); };
  P.trace_normalized = [self](const Params& x) { return self->trace_normalized(x); };
  P.trace_normalized_grad = [self](const Params& x) { return self->trace_normalized_grad(x); };
  return P;
}

}  // namespace flatmin::tools
