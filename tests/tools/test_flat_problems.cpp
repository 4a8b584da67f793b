// The closed forms of tools/flat_problems.*: tr̄ against the dense Hessian, ∇tr̄ against the
// exact third-order contractions Σ_i ∇³f[e_i, e_i]/d, the start on the minima set (r = 0,
// ∇f = 0), and SA's per-example losses averaging to f.
#include <doctest/doctest.h>

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
