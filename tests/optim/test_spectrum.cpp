// The Hessian spectrum tools against a dense eigendecomposition (Eigen on the autodiff
// Hessian, computed independently of Lanczos): top-k eigenpairs, Gauss quadrature moments,
// the SLQ density's mean against the dense trace, and the per-group blocks.
#include <doctest/doctest.h>

#include <cmath>
#include "autodiff/eigen.hpp"

#include "nn/module.hpp"
#include "optim/spectrum.hpp"

using namespace flatmin;
using namespace flatmin::optim;

namespace {
const TensorOptions f64{DType::f64};

// Two-layer tanh network with squared loss: W1 (4x3), b1 (3), W2 (3x2); d = 12 + 3 + 6 = 21.
struct Net {
  Tensor X, Y;
  Params x;
  Net() {
    Generator g(8);
    X = g.normal({6, 4}, f64);
    Y = g.normal({6, 2}, f64);
    x = {g.normal({4, 3}, f64), g.normal({3}, f64), g.normal({3, 2}, f64)};
  }
  ScalarFn f() const {
    Tensor X_ = X, Y_ = Y;
    return [X_, Y_](const Params& p) { return mean(square(sub(matmul(tanh(add(matmul(X_, p[0]), p[1])), p[2]), Y_))); };
  }
};

Eigen::MatrixXd dense(const ScalarFn& f, const Params& x) {
  Tensor H = hessian(f, x);
  const int64_t d = H.size(0);
  std::vector<double> h = H.to_vector();
  Eigen::MatrixXd M(d, d);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) M(i, j) = 0.5 * (h[size_t(i * d + j)] + h[size_t(j * d + i)]);
  return M;
}
Eigen::VectorXd flat(const Params& p) {
  std::vector<double> v = flatten(p).to_vector();
  return Eigen::Map<Eigen::VectorXd>(v.data(), Eigen::Index(v.size()));
}
// H v from a dense matrix, for spectra chosen by hand.
HvpFn matrix_hvp(const Eigen::MatrixXd& M) {
  return [M](const Params& v) {
    Eigen::VectorXd r = M * flat(v);
    return Params{from_vector(std::vector<double>(r.data(), r.data() + r.size()), {r.size()}, f64)};
  };
}
}  // namespace

TEST_SUITE("spectrum") {
  TEST_CASE("top-k Lanczos eigenpairs match a dense eigendecomposition") {
    Net n;
    Eigen::MatrixXd H = dense(n.f(), n.x);
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(H);
    const Eigen::Index d = H.rows();
    Eigenpairs e = top_eigenpairs(hvp_fn(n.f(), n.x), n.x, {.k = 5, .iterations = 21, .seed = 3});
    REQUIRE(e.values.size() == 5);
    for (int i = 0; i < 5; ++i) {
      CHECK(e.values[size_t(i)] == doctest::Approx(es.eigenvalues()(d - 1 - i)).epsilon(1e-9));
      Eigen::VectorXd v = flat(e.vectors[size_t(i)]);
      CHECK(v.norm() == doctest::Approx(1).epsilon(1e-12));
      CHECK((H * v - e.values[size_t(i)] * v).norm() < 1e-8 * es.eigenvalues().cwiseAbs().maxCoeff());
      CHECK(std::fabs(v.dot(es.eigenvectors().col(d - 1 - i))) == doctest::Approx(1).epsilon(1e-8));
      CHECK(e.residuals[size_t(i)] < 1e-8);
    }
  }

  TEST_CASE("few Lanczos steps already find the top eigenvalue; the reported residual is the true one") {
    Net n;
    Eigen::MatrixXd H = dense(n.f(), n.x);
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(H);
    Eigenpairs e = top_eigenpairs(hvp_fn(n.f(), n.x), n.x, {.k = 1, .iterations = 10, .seed = 1});
    const double top = es.eigenvalues()(H.rows() - 1);
    CHECK(e.values[0] <= top * (1 + 1e-12));  // a Ritz value never exceeds λmax
    CHECK(e.values[0] == doctest::Approx(top).epsilon(1e-3));
    Eigen::VectorXd v = flat(e.vectors[0]);
    CHECK((H * v - e.values[0] * v).norm() == doctest::Approx(e.residuals[0]).epsilon(1e-6));
  }

  TEST_CASE("repeated eigenvalues and a low-rank Hessian: restarts find every copy") {
    // Spectrum {3, 3, 3, 1, 0, 0}: the Krylov space of one start vector has dimension 3.
    Generator g(5);
    std::vector<double> r = g.normal({6, 6}, f64).to_vector();
    Eigen::MatrixXd R = Eigen::Map<Eigen::MatrixXd>(r.data(), 6, 6);
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(R);
    Eigen::MatrixXd Q = qr.householderQ();
    Eigen::VectorXd lam(6);
    lam << 3, 3, 3, 1, 0, 0;
    Eigen::MatrixXd M = Q * lam.asDiagonal() * Q.transpose();
    Params like = {zeros({6}, f64)};
    Eigenpairs e = top_eigenpairs(matrix_hvp(M), like, {.k = 5, .iterations = 6});
    std::vector<double> want = {3, 3, 3, 1, 0};
    for (int i = 0; i < 5; ++i) CHECK(e.values[size_t(i)] == doctest::Approx(want[size_t(i)]).epsilon(1e-10).scale(1));
    // The three vectors of the eigenvalue 3 are orthonormal and span its eigenspace.
    Eigen::MatrixXd V(6, 3);
    for (int i = 0; i < 3; ++i) V.col(i) = flat(e.vectors[size_t(i)]);
    CHECK((V.transpose() * V - Eigen::MatrixXd::Identity(3, 3)).norm() < 1e-10);
    CHECK((M * V - 3 * V).norm() < 1e-10);
  }

  TEST_CASE("bad requests are refused before any product") {
    Net n;
    int calls = 0;
    HvpFn counted = [&](const Params& v) {
      ++calls;
      return hvp(n.f(), n.x, v);
    };
    CHECK_THROWS_WITH_AS(top_eigenpairs(counted, n.x, {.k = 0}), doctest::Contains("k must be >= 1"), Error);
    CHECK_THROWS_WITH_AS(top_eigenpairs(counted, n.x, {.k = -2}), doctest::Contains("k must be >= 1"), Error);
    CHECK_THROWS_WITH_AS(top_eigenpairs(counted, n.x, {.k = 6, .iterations = 5}),
                         doctest::Contains("at least k Lanczos iterations"), Error);
    CHECK_THROWS_WITH_AS(top_eigenpairs(counted, n.x, {.k = 22}), doctest::Contains("exceeds the dimension 21"), Error);
    CHECK_THROWS_WITH_AS(spectral_density(counted, n.x, {.bins = 1}), doctest::Contains("bins"), Error);
    CHECK_THROWS_WITH_AS(spectral_density(counted, n.x, {.sigma_squared = 0}), doctest::Contains("sigma_squared"),
                         Error);
    CHECK_THROWS_WITH_AS(lanczos(counted, zeros_like(n.x), {.iterations = 3}), doctest::Contains("zero"), Error);
    CHECK(calls == 0);
  }

  TEST_CASE("Lanczos quadrature: moments exact to degree 2m-1, nodes and weights exact at m = d") {
    Net n;
    Eigen::MatrixXd H = dense(n.f(), n.x);
    const Eigen::Index d = H.rows();
    Generator g(11);
    Params z = g.rademacher_like(n.x);
    Eigen::VectorXd zv = flat(z);
    const double zz = zv.squaredNorm();
    const double scale_ = H.cwiseAbs().maxCoeff();
    Quadrature q = lanczos_quadrature(hvp_fn(n.f(), n.x), z, 4);
    REQUIRE(q.nodes.size() == 4);
    Eigen::VectorXd Hp = zv;  // H^p z
    for (int p = 0; p <= 7; ++p) {
      double rule = 0;
      for (size_t i = 0; i < q.nodes.size(); ++i) rule += q.weights[i] * std::pow(q.nodes[i], p);
      CHECK(rule == doctest::Approx(zv.dot(Hp) / zz).epsilon(1e-8).scale(std::pow(scale_, p)));
      Hp = H * Hp;
    }
    // m = d: the nodes are H's eigenvalues, the weights (q_iᵀz)²/‖z‖².
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(H);
    Quadrature full = lanczos_quadrature(hvp_fn(n.f(), n.x), z, int(d));
    REQUIRE(full.nodes.size() == size_t(d));
    for (Eigen::Index i = 0; i < d; ++i) {
      CHECK(full.nodes[size_t(i)] == doctest::Approx(es.eigenvalues()(i)).epsilon(1e-8).scale(scale_));
      const double c = es.eigenvectors().col(i).dot(zv);
      CHECK(full.weights[size_t(i)] == doctest::Approx(c * c / zz).epsilon(1e-7).scale(1));
    }
  }

  TEST_CASE("SLQ density: PyHessian's grid and normalization; its mean is the dense tr/d") {
    Net n;
    Eigen::MatrixXd H = dense(n.f(), n.x);
    const Eigen::Index d = H.rows();
    const int runs = 60;
    SpectralDensity s =
        spectral_density(hvp_fn(n.f(), n.x), n.x, {.iterations = 8, .runs = runs, .bins = 4000, .seed = 2});
    REQUIRE(s.grid.size() == 4000);
    const double step = s.grid[1] - s.grid[0];
    double mass = 0, mean = 0;
    for (size_t j = 0; j < s.grid.size(); ++j) mass += s.density[j] * step, mean += s.grid[j] * s.density[j] * step;
    CHECK(mass == doctest::Approx(1).epsilon(1e-12));
    CHECK(s.variance == doctest::Approx(1e-5 * std::max(1.0, s.grid.back() - s.grid.front())));
    // The grid spans the mean extreme nodes ± 0.01 (PyHessian's overhead).
    double lo = 0, hi = 0;
    for (const Quadrature& q : s.runs) lo += q.nodes.front() / runs, hi += q.nodes.back() / runs;
    CHECK(s.grid.front() == doctest::Approx(lo - 0.01));
    CHECK(s.grid.back() == doctest::Approx(hi + 0.01));
    // E[zᵀHz/‖z‖²] = tr H / d for Rademacher z (‖z‖² = d); the standard deviation of one
    // sample is sqrt(2 Σ_{i≠j} H_ij²)/d, so 4 standard errors of the mean over the runs.
    const double off = (H.squaredNorm() - H.diagonal().squaredNorm());
    const double se = std::sqrt(2 * off) / double(d) / std::sqrt(double(runs));
    CHECK(std::fabs(mean - H.trace() / double(d)) < 4 * se + 1e-9);
    CHECK(se > 0);
  }

  TEST_CASE("SLQ density with m = d puts the mass of each run on H's eigenvalues") {
    // Spectrum {-1, 0.5, 2, 2, 5}, well separated: the mass within ±0.2 of each eigenvalue
    // is the quadrature weight there, and over many runs ≈ multiplicity / d.
    Generator g(9);
    std::vector<double> r = g.normal({5, 5}, f64).to_vector();
    Eigen::MatrixXd Q =
        Eigen::HouseholderQR<Eigen::MatrixXd>(Eigen::Map<Eigen::MatrixXd>(r.data(), 5, 5)).householderQ();
    Eigen::VectorXd lam(5);
    lam << -1, 0.5, 2, 2, 5;
    Eigen::MatrixXd M = Q * lam.asDiagonal() * Q.transpose();
    const int runs = 400;
    SpectralDensity s = spectral_density(matrix_hvp(M), {zeros({5}, f64)}, {.runs = runs, .bins = 20000, .seed = 4});
    CHECK(s.iterations == 5);  // capped at d
    const double step = s.grid[1] - s.grid[0];
    auto mass_near = [&](double x) {
      double m = 0;
      for (size_t j = 0; j < s.grid.size(); ++j)
        if (std::fabs(s.grid[j] - x) < 0.2) m += s.density[j] * step;
      return m;
    };
    // Each run's weight on an eigenvalue is (q_iᵀz)²/d: mean 1/d, sd ≤ sqrt(2)/d per run.
    const double tol = 4 * std::sqrt(2.0) / 5 / std::sqrt(double(runs));
    CHECK(std::fabs(mass_near(-1) - 0.2) < tol);
    CHECK(std::fabs(mass_near(0.5) - 0.2) < tol);
    CHECK(std::fabs(mass_near(2) - 0.4) < 2 * tol);
    CHECK(std::fabs(mass_near(5) - 0.2) < tol);
  }

  TEST_CASE("per-group spectra are those of the Hessian's diagonal blocks") {
    Net n;
    Eigen::MatrixXd H = dense(n.f(), n.x);
    nn::NamedTensors named = {{"hidden.weight", n.x[0]}, {"hidden.bias", n.x[1]}, {"out", n.x[2]}};
    std::vector<ParamGroup> groups = layer_groups(named);
    REQUIRE(groups.size() == 2);
    CHECK(groups[0].name == "hidden");
    CHECK(groups[0].members == std::vector<size_t>{0, 1});
    CHECK(groups[1].name == "out");
    // hidden: coordinates 0..14, out: 15..20 of the flattened parameters.
    struct Block {
      size_t g;
      Eigen::Index at, size;
    };
    for (Block b : {Block{0, 0, 15}, Block{1, 15, 6}}) {
      Eigen::MatrixXd B = H.block(b.at, b.at, b.size, b.size);
      GroupSpectrum s =
          group_spectrum(hvp_fn(n.f(), n.x), n.x, groups[b.g], {.max_samples = 400, .tol = 0, .seed = 1}, 40, 3);
      CHECK(s.dim == b.size);
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(B);
      CHECK(s.top_eigenvalue == doctest::Approx(es.eigenvalues()(b.size - 1)).epsilon(1e-9));
      CHECK(std::fabs(s.trace.trace - B.trace()) < 4 * s.trace.stderr_trace + 1e-12);
    }
    // One column of a block: H_gg e_k.
    HvpFn block = restrict_hvp(hvp_fn(n.f(), n.x), n.x, {2});
    Tensor e = zeros({6}, f64);
    data_ptr<double>(e)[1] = 1;
    Eigen::VectorXd col = flat(block({reshape(e, {3, 2})}));
    CHECK((col - H.block(15, 16, 6, 1)).norm() < 1e-12);
    CHECK_THROWS_WITH_AS(restrict_hvp(hvp_fn(n.f(), n.x), n.x, {0, 0}), doctest::Contains("listed twice"), Error);
  }
}
