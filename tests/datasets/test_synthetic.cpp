// Synthetic sets: the Example 1 loss, teacher-student, matrix sensing, two blobs. Targets
// are recomputed here with plain loops (and, for matrix sensing, a different formula).
#include <doctest/doctest.h>

#include <cmath>

#include "autodiff/graph.hpp"
#include "datasets/synthetic.hpp"

using namespace flatmin;
using namespace flatmin::data;

TEST_CASE("example1: f = (x1 x2 - 1)^2, its gradient, and tr of the Hessian") {
  CHECK(example1_loss(4.0, 0.25) == 0.0);
  CHECK(example1_loss(2.0, 1.0) == 1.0);
  CHECK(example1_hessian_trace(4.0, 0.25) == doctest::Approx(2 * (16 + 0.0625)));
  CHECK(example1_hessian_trace(1.0, 1.0) == 4.0);
  Tensor x = from_vector(std::vector<double>{2.0, 1.0}, {2}, {DType::f64});
  x.requires_grad_();
  const Tensor f = example1_loss(x);
  CHECK(f.item() == 1.0);
  const Tensor g = grad(f, x);
  // ∂f/∂x1 = 2(x1x2 - 1) x2 = 2, ∂f/∂x2 = 2(x1x2 - 1) x1 = 4
  CHECK(g.to_vector() == std::vector<double>{2.0, 4.0});
  CHECK_THROWS_AS(example1_loss(zeros({3})), Error);
}

TEST_CASE("teacher_student: y = w2 · tanh(W1 x), seeded") {
  const TeacherStudent ts = teacher_student({.n = 50, .d = 4, .width = 3, .seed = 5, .dtype = DType::f64});
  CHECK(ts.data.images.shape() == Shape{50, 4});
  CHECK(ts.data.labels.shape() == Shape{50, 1});
  CHECK(ts.data.classes == 0);
  ts.data.validate();
  const auto x = ts.data.images.to_vector(), y = ts.data.labels.to_vector();
  const auto w1 = ts.w1.to_vector(), w2 = ts.w2.to_vector();
  for (int i : {0, 17, 49}) {
    double out = 0;
    for (int j = 0; j < 3; ++j) {
      double h = 0;
      for (int k = 0; k < 4; ++k) h += w1[size_t(j * 4 + k)] * x[size_t(i * 4 + k)];
      out += w2[size_t(j)] * std::tanh(h);
    }
    CHECK(y[size_t(i)] == doctest::Approx(out).epsilon(1e-12));
  }
  const TeacherStudent again = teacher_student({.n = 50, .d = 4, .width = 3, .seed = 5, .dtype = DType::f64});
  CHECK(again.data.labels.to_vector() == y);
  CHECK(teacher_student({.n = 50, .d = 4, .width = 3, .seed = 6, .dtype = DType::f64}).data.labels.to_vector() != y);
  // relu teacher, float32 by default
  const TeacherStudent r = teacher_student({.n = 8, .d = 2, .width = 5, .relu = true});
  CHECK(r.data.images.dtype() == DType::f32);
  const auto rx = r.data.images.to_vector(), rw1 = r.w1.to_vector(), rw2 = r.w2.to_vector();
  double out = 0;
  for (int j = 0; j < 5; ++j)
    out += rw2[size_t(j)] * std::max(0.0, rw1[size_t(2 * j)] * rx[0] + rw1[size_t(2 * j + 1)] * rx[1]);
  CHECK(r.data.labels.to_vector()[0] == doctest::Approx(out).epsilon(1e-5));
  CHECK_THROWS_AS(teacher_student({.d = 0}), Error);
}

TEST_CASE("matrix_sensing: y_i = sum_r u_r^T A_i u_r") {
  const MatrixSensing ms = matrix_sensing({.n = 20, .d = 5, .rank = 2, .seed = 3, .dtype = DType::f64});
  CHECK(ms.data.images.shape() == Shape{20, 5, 5});
  CHECK(ms.data.labels.shape() == Shape{20});
  CHECK(ms.u_star.shape() == Shape{5, 2});
  const auto a = ms.data.images.to_vector(), y = ms.data.labels.to_vector(), u = ms.u_star.to_vector();
  for (int i = 0; i < 20; ++i) {
    double ref = 0;
    for (int r = 0; r < 2; ++r)
      for (int j = 0; j < 5; ++j)
        for (int k = 0; k < 5; ++k) ref += u[size_t(j * 2 + r)] * a[size_t((i * 5 + j) * 5 + k)] * u[size_t(k * 2 + r)];
    CHECK(y[size_t(i)] == doctest::Approx(ref).epsilon(1e-12));
  }
  const MatrixSensing sym = matrix_sensing({.n = 3, .d = 4, .rank = 1, .symmetric = true, .seed = 1});
  const auto s = sym.data.images.to_vector();
  for (int j = 0; j < 4; ++j)
    for (int k = 0; k < 4; ++k) CHECK(s[size_t(16 + j * 4 + k)] == s[size_t(16 + k * 4 + j)]);
}

TEST_CASE("two_blobs: alternating labels around means separation apart") {
  const Dataset b = two_blobs({.n = 4000, .d = 4, .separation = 6.0, .stddev = 0.5, .seed = 2});
  CHECK(b.images.shape() == Shape{4000, 4});
  CHECK(b.classes == 2);
  const auto x = b.images.to_vector();
  const auto l = b.labels.to_int_vector();
  double m0 = 0, m1 = 0;
  for (int i = 0; i < 4000; ++i) {
    CHECK(l[size_t(i)] == i % 2);
    for (int k = 0; k < 4; ++k) (i % 2 ? m1 : m0) += x[size_t(i * 4 + k)] / 2000.0;
  }
  // each mean coordinate is ±3/√4 = ±1.5; summed over 4 coordinates: ±6 (sd of the estimate ~0.02)
  CHECK(m0 == doctest::Approx(-6.0).epsilon(0.03));
  CHECK(m1 == doctest::Approx(6.0).epsilon(0.03));
}
