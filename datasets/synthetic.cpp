#include "datasets/synthetic.hpp"

#include <cmath>

#include "autodiff/graph.hpp"
#include "autodiff/ops.hpp"
#include "autodiff/random.hpp"

namespace flatmin::data {

Tensor example1_loss(const Tensor& x) {
  if (x.dim() != 1 || x.size(0) != 2) throw Error("example1_loss: x must have shape (2), got " + to_string(x.shape()));
  const Tensor prod = mul(slice(x, 0, 0, 1), slice(x, 0, 1, 2));
  return sum(square(add_scalar(prod, -1.0)));
}
double example1_loss(double x1, double x2) { return (x1 * x2 - 1.0) * (x1 * x2 - 1.0); }
double example1_hessian_trace(double x1, double x2) { return 2.0 * (x1 * x1 + x2 * x2); }

static void positive(int64_t v, const char* what, const char* set) {
  if (v < 1) throw Error(std::string(set) + ": " + what + " must be >= 1, got " + std::to_string(v));
}

TeacherStudent teacher_student(TeacherStudentOptions o) {
  positive(o.n, "n", "teacher_student");
  positive(o.d, "d", "teacher_student");
  positive(o.width, "width", "teacher_student");
  if (!is_floating(o.dtype)) throw Error("teacher_student: dtype must be floating");
  NoGrad ng;
  Generator g(o.seed);
  const TensorOptions t{o.dtype};
  Tensor w1 = g.normal({o.width, o.d}, t, 0.0, 1.0 / std::sqrt(double(o.d)));
  Tensor w2 = g.normal({o.width}, t, 0.0, 1.0 / std::sqrt(double(o.width)));
  Tensor x = g.normal({o.n, o.d}, t);
  Tensor h = matmul(x, transpose(w1));
  h = o.relu ? relu(h) : tanh(h);
  Tensor y = matmul(h, reshape(w2, {o.width, 1}));
  if (o.noise != 0.0) y = add(y, g.normal({o.n, 1}, t, 0.0, o.noise));
  return {{x, y, 0, "teacher-student"}, w1, w2};
}

MatrixSensing matrix_sensing(MatrixSensingOptions o) {
  positive(o.n, "n", "matrix_sensing");
  positive(o.d, "d", "matrix_sensing");
  positive(o.rank, "rank", "matrix_sensing");
  if (!is_floating(o.dtype)) throw Error("matrix_sensing: dtype must be floating");
  NoGrad ng;
  Generator g(o.seed);
  const TensorOptions t{o.dtype};
  Tensor u = g.normal({o.d, o.rank}, t);
  Tensor a = g.normal({o.n, o.d, o.d}, t);
  if (o.symmetric) a = mul_scalar(add(a, transpose(a)), 0.5);
  const Tensor m = matmul(u, transpose(u));
  Tensor y = sum(mul(a, m), {1, 2});
  if (o.noise != 0.0) y = add(y, g.normal({o.n}, t, 0.0, o.noise));
  return {{a, y, 0, "matrix-sensing"}, u};
}

Dataset two_blobs(BlobsOptions o) {
  positive(o.n, "n", "two_blobs");
  positive(o.d, "d", "two_blobs");
  if (!(o.stddev >= 0.0)) throw Error("two_blobs: stddev must be >= 0");
  NoGrad ng;
  Generator g(o.seed);
  Tensor x = g.normal({o.n, o.d}, {}, 0.0, o.stddev);
  std::vector<int64_t> labels(size_t(o.n));
  float* p = x.data<float>();
  const double shift = o.separation / 2.0 / std::sqrt(double(o.d));
  for (int64_t i = 0; i < o.n; ++i) {
    labels[size_t(i)] = i % 2;
    for (int64_t k = 0; k < o.d; ++k) p[i * o.d + k] += float(i % 2 ? shift : -shift);
  }
  return {x, from_ints(labels, {o.n}), 2, "two-blobs"};
}

}  // namespace flatmin::data
