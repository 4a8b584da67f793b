// Shared by the gpu suite: run one scalar function on CPU and CUDA copies of the same
// inputs and compare value, gradient, Hessian-vector product and third derivative.
#pragma once
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "autodiff/autodiff.hpp"

namespace flatmin::gpu_test {

inline const Device kCuda = Device::cuda(0);

// max |a - b| / max |b| (infinity when either holds a NaN or the sizes differ)
inline double rel_diff(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector(), y = b.to_vector();
  if (x.size() != y.size()) return std::numeric_limits<double>::infinity();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(y[i])) return std::numeric_limits<double>::infinity();
    num = std::max(num, std::fabs(x[i] - y[i]));
    den = std::max(den, std::fabs(y[i]));
  }
  return num / std::max(den, 1e-300);
}
inline double rel_diff(const Params& a, const Params& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double r = 0;
  for (size_t i = 0; i < a.size(); ++i) r = std::max(r, rel_diff(a[i], b[i]));
  return r;
}
inline Params copy_to(const Params& xs, Device d, DType t) {
  Params r;
  for (const Tensor& x : xs) r.push_back(x.to(t).to(d));
  return r;
}

// A scalar function built for a given device (constants such as index tensors live there).
using DeviceFn = std::function<Tensor(const Params&, Device)>;

struct ParityTolerance {
  double value, grad, hvp, third;
};
inline ParityTolerance tolerance(DType t) {
  // float64: both sides round differently only in the last bits; float32: the stated bounds
  // for sums of a few hundred terms and the cubes of the harness.
  return t == DType::f64 ? ParityTolerance{1e-10, 1e-10, 1e-10, 1e-10} : ParityTolerance{1e-4, 1e-4, 1e-3, 1e-3};
}

// f on cpu and cuda at x (given as float64 cpu tensors), in dtype t, at orders 0-3.
inline void check_parity(const std::string& what, const DeviceFn& f, const Params& x64, DType t, uint64_t seed = 7) {
  Generator g(seed);
  const Params u64 = g.sphere_like(x64), v64 = g.sphere_like(x64);
  const ParityTolerance tol = tolerance(t);
  auto run = [&](Device d) {
    const Params x = copy_to(x64, d, t), u = copy_to(u64, d, t), v = copy_to(v64, d, t);
    ScalarFn fd = [&f, d](const Params& p) { return f(p, d); };
    struct R {
      Tensor value;
      Params grad, hvp, third;
    };
    return R{value(fd, x), gradient(fd, x), hvp(fd, x, v), third(fd, x, u, v)};
  };
  const auto c = run(Device::cpu());
  const auto k = run(kCuda);
  INFO(what << " (" << dtype_name(t) << ")");
  CHECK(k.value.device() == kCuda);
  CHECK(rel_diff(k.value, c.value) <= tol.value);
  CHECK(rel_diff(k.grad, c.grad) <= tol.grad);
  CHECK(rel_diff(k.hvp, c.hvp) <= tol.hvp);
  CHECK(rel_diff(k.third, c.third) <= tol.third);
}

// Well-separated values of both signs, no ties, no zeros (max/min/relu/abs/pool safe).
inline Tensor distinct_values(const Shape& s, uint64_t seed, double scale = 0.37) {
  Generator g(seed);
  const int64_t n = numel(s);
  auto perm = g.permutation(n);
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[size_t(i)] = (double(perm[size_t(i)]) - double(n) / 2 + 0.5) * scale / std::sqrt(double(n));
  return from_vector(v, s, {DType::f64});
}

}  // namespace flatmin::gpu_test
