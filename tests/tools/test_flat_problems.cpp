// The closed forms of tools/flat_problems.*: tr̄ against the dense Hessian, ∇tr̄ against the
// exact third-order contractions Σ_i ∇³f[e_i, e_i]/d, the start on the minima set (r = 0,
// ∇f = 0), and SA's per-example losses averaging to f. For the matrix factorisation also: ∇tr̄
// against central differences of tr̄, the projector against the closed-form tangent space
// {(UA, −VAᵀ)} and against the Hessian's null space, and the closed-form flat minimum
// certified flat where the start and a random minimum are not.
#include <doctest/doctest.h>

#include <cmath>

#include "optim/certificate.hpp"
#include "optim/sharpness.hpp"
#include "tools/flat_problems.hpp"

using namespace flatmin;
using namespace flatmin::tools;

namespace {
double dense_trace_normalized(const FlatProblem& P, const Params& x) {
  Tensor H = hessian(P.loss, x);
  std::vector<double> h = H.to_vector();
  double t = 0;
  for (int64_t i = 0; i < H.size(0); ++i) t += h[size_t(i * H.size(0) + i)];
  return t / double(H.size(0));
}
void check_closed_forms(const FlatProblem& P, const Params& x) {
  CHECK(P.trace_normalized(x) == doctest::Approx(dense_trace_normalized(P, x)).epsilon(1e-12));
  Params exact = optim::trace_gradient_exact(optim::third_fn(P.loss, x), x);
  Params closed = P.trace_normalized_grad(x);
  CHECK(norm(axpy(-1, closed, exact)).item() < 1e-12 * (1 + norm(exact).item()));
}
}  // namespace

TEST_CASE("flat problems: closed-form tr̄ and ∇tr̄ match the dense Hessian and third-order contractions") {
  FlatProblem e = example1_problem(4.0, 0.25);
  CHECK(e.dim == 2);
  CHECK(norm(Params{e.residual(e.start)}).item() < 1e-15);
  check_closed_forms(e, e.start);
  check_closed_forms(e, {from_vector(std::vector<double>{1.3, -0.4}, {2}, {DType::f64})});

  DiagonalNetwork net(5, 3, 2.0, 11);
  FlatProblem p = net.problem();
  CHECK(p.dim == 10);
  CHECK(p.examples == 3);
  CHECK(norm(Params{p.residual(p.start)}).item() < 1e-12);
  CHECK(norm(gradient(p.loss, p.start)).item() < 1e-12);
  check_closed_forms(p, p.start);
  Params off = Generator(4).normal_like(p.start);
  check_closed_forms(p, off);
  const double mean_of_examples =
      (p.examples_loss({0}, off).item() + p.examples_loss({1}, off).item() + p.examples_loss({2}, off).item()) / 3;
  CHECK(p.loss(off).item() == doctest::Approx(mean_of_examples).epsilon(1e-12));
}

namespace {
const TensorOptions f64{DType::f64};
double distance(const Params& a, const Params& b) { return norm(axpy(-1, a, b)).item(); }
}  // namespace

TEST_CASE("matrix factorisation: closed forms, the tangent projector, the flat minimum") {
  const int64_t p = 4, q = 5, k = 2;
  MatrixFactorization mf(p, q, k, 2.0, 7);
  FlatProblem P = mf.problem();
  CHECK(P.dim == 18);
  CHECK(P.examples == 20);
  CHECK(P.normal_rank == 14);  // (p + q − k)k = d − k²
  CHECK(norm(Params{P.residual(P.start)}).item() < 1e-12);
  CHECK(norm(gradient(P.loss, P.start)).item() < 1e-12);
  check_closed_forms(P, P.start);
  Params off = Generator(5).normal_like(P.start);
  check_closed_forms(P, off);
  double examples_sum = 0;
  for (int64_t i = 0; i < p * q; ++i) examples_sum += P.examples_loss({i}, off).item();
  CHECK(P.loss(off).item() == doctest::Approx(examples_sum / double(p * q)).epsilon(1e-12));
  CHECK(P.examples_loss({3, 11}, off).item() ==
        doctest::Approx((P.examples_loss({3}, off).item() + P.examples_loss({11}, off).item()) / 2));

  // ∇tr̄ against central differences of the closed-form tr̄ (quadratic: exact up to rounding).
  Params g = P.trace_normalized_grad(off);
  Params dir = Generator(6).normal_like(off);
  const double h = 1e-4;
  const double fd = (P.trace_normalized(axpy(h, dir, off)) - P.trace_normalized(axpy(-h, dir, off))) / (2 * h);
  CHECK(fd == doctest::Approx(dot(g, dir).item()).epsilon(1e-8));

  // The projector at the start is the projection onto {(UA, −VAᵀ)}: it fixes those vectors,
  // has rank k² (its trace over the basis), and equals the Hessian's null-space projector.
  optim::ProjectorFn proj = optim::residual_tangent_projector(P.residual, P.start, P.normal_rank);
  const Tensor U = P.start[0], V = P.start[1];
  for (uint64_t s = 0; s < 3; ++s) {
    Tensor A = Generator(20 + s).normal({k, k}, f64);
    Params t = {matmul(U, A), neg(matmul(V, transpose(A)))};
    CHECK(distance(proj(t), t) < 1e-10 * norm(t).item());
  }
  double trace = 0;
  for (int64_t i = 0; i < P.dim; ++i) {
    std::vector<double> e(size_t(P.dim), 0.0);
    e[size_t(i)] = 1;
    trace += flatten(proj(unflatten(from_vector(e, {P.dim}, f64), P.start))).to_vector()[size_t(i)];
  }
  CHECK(trace == doctest::Approx(double(k * k)).epsilon(1e-10));
  optim::NullSpaceCut cut;
  optim::ProjectorFn ph = optim::hessian_null_projector(optim::hvp_fn(P.loss, P.start), P.start, {.top_k = 16}, &cut);
  CHECK(cut.rank == P.normal_rank);
  Params w = Generator(9).normal_like(P.start);
  CHECK(distance(ph(w), proj(w)) < 1e-8 * norm(w).item());
  // The residual's 20 entries are redundant (rank 14): taken as independent they are refused.
  CHECK_THROWS_WITH_AS(optim::residual_tangent_projector(P.residual, P.start),
                       doctest::Contains("leaves no tangent space"), Error);

  // The flat minimum: on the minima set, balanced (UᵀU/p = VᵀV/q), tr̄ at its closed-form
  // minimum, and certified (ε, √ε)-flat; rotating it (Q ∈ O(k)) keeps all of that.
  Params flat = mf.flat_minimum();
  CHECK(norm(Params{P.residual(flat)}).item() < 1e-10);
  Tensor gu = mul_scalar(matmul(transpose(flat[0]), flat[0]), 1.0 / p),
         gv = mul_scalar(matmul(transpose(flat[1]), flat[1]), 1.0 / q);
  CHECK(norm(Params{sub(gu, gv)}).item() < 1e-10);
  CHECK(P.trace_normalized(flat) == doctest::Approx(mf.flat_trace_normalized()).epsilon(1e-12));
  const double eps = 1e-6;
  optim::Certificate cf =
      optim::certify(P.loss, flat, eps, optim::residual_tangent_projector(P.residual, flat, P.normal_rank));
  CHECK(cf.flat.flat());
  CHECK(cf.flat.projected_trace_grad_norm < 1e-10);
  const double c = std::cos(0.7), sn = std::sin(0.7);
  Tensor Q = from_vector(std::vector<double>{c, -sn, sn, c}, {2, 2}, f64);
  Params rotated = {matmul(flat[0], Q), matmul(flat[1], Q)};
  CHECK(P.trace_normalized(rotated) == doctest::Approx(mf.flat_trace_normalized()).epsilon(1e-12));
  CHECK(optim::certify(P.loss, rotated, eps, optim::residual_tangent_projector(P.residual, rotated, P.normal_rank))
            .flat.flat());

  // The start (U = 2U*, V = V*/2) and a random minimum (UG, VG⁻ᵀ) are minima, not flat ones.
  Tensor G = from_vector(std::vector<double>{1.5, 0.4, -0.3, 0.8}, {2, 2}, f64);
  Tensor Ginv = mul_scalar(from_vector(std::vector<double>{0.8, -0.4, 0.3, 1.5}, {2, 2}, f64),
                           1 / (1.5 * 0.8 + 0.4 * 0.3));  // G⁻¹
  Params random_min = {matmul(flat[0], G), matmul(flat[1], transpose(Ginv))};
  CHECK(norm(Params{P.residual(random_min)}).item() < 1e-10);
  for (const Params& x : {P.start, random_min}) {
    optim::Certificate cx =
        optim::certify(P.loss, x, 0.01, optim::residual_tangent_projector(P.residual, x, P.normal_rank));
    CHECK(cx.flat.gradient_ok);
    CHECK_FALSE(cx.flat.trace_ok);
    CHECK(P.trace_normalized(x) > mf.flat_trace_normalized());
  }
  CHECK_THROWS_WITH_AS(MatrixFactorization(4, 5, 4, 1.0, 1), doctest::Contains("k < min(p, q)"), Error);
  CHECK_THROWS_WITH_AS(MatrixFactorization(4, 5, 2, 0.0, 1), doctest::Contains("alpha"), Error);
}
