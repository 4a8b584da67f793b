// Synthetic sets for tests and demos, all seeded through flatmin::Generator (same seed,
// same numbers on any thread count).
#pragma once
#include <cstdint>

#include "datasets/dataset.hpp"

namespace flatmin::data {

// ---- Example 1 (docs/algorithms.md §6): a loss, not a data set ----
// f(x1, x2) = (x1*x2 - 1)^2 for x of shape (2), differentiable at every order.
Tensor example1_loss(const Tensor& x);
double example1_loss(double x1, double x2);
double example1_hessian_trace(double x1, double x2);  // tr ∇²f = 2(x1² + x2²)

// ---- teacher-student regression ----
// x ~ N(0, I_d); y = w2 · act(W1 x) + noise·N(0,1) with W1 (width,d) ~ N(0, 1/d) and
// w2 (width) ~ N(0, 1/width). data.images = x (n,d), data.labels = y (n,1), classes = 0.
struct TeacherStudentOptions {
  int64_t n = 1000, d = 10, width = 16;
  bool relu = false;  // act = tanh unless relu
  double noise = 0.0;
  uint64_t seed = 0;
  DType dtype = DType::f32;
};
struct TeacherStudent {
  Dataset data;
  Tensor w1, w2;  // the teacher
};
TeacherStudent teacher_student(TeacherStudentOptions opt = {});

// ---- low-rank matrix sensing ----
// A_i (d,d) with N(0,1) entries (symmetrized (G+Gᵀ)/2 if asked), U* (d,rank) ~ N(0,1),
// y_i = <A_i, U* U*ᵀ> + noise·N(0,1). data.images = A (n,d,d), data.labels = y (n).
struct MatrixSensingOptions {
  int64_t n = 200, d = 10, rank = 2;
  bool symmetric = false;
  double noise = 0.0;
  uint64_t seed = 0;
  DType dtype = DType::f32;
};
struct MatrixSensing {
  Dataset data;
  Tensor u_star;  // (d, rank)
};
MatrixSensing matrix_sensing(MatrixSensingOptions opt = {});

// ---- two Gaussian blobs (binary classification) ----
// Example i has label i % 2 and x ~ N(±μ, stddev² I_d), μ = (separation/2)·1/√d: the means
// are `separation` apart. images (n,d) float32, labels (n) int64, classes = 2.
struct BlobsOptions {
  int64_t n = 200, d = 2;
  double separation = 4.0, stddev = 1.0;
  uint64_t seed = 0;
};
Dataset two_blobs(BlobsOptions opt = {});

}  // namespace flatmin::data
