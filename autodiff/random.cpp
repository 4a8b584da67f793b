#include "autodiff/random.hpp"

#include <cmath>

#include "autodiff/backend.hpp"
#include "autodiff/functional.hpp"
#include "autodiff/graph.hpp"
#include "autodiff/ops.hpp"
#include "autodiff/philox.hpp"

namespace flatmin {

Tensor Generator::draw(int kind, const Shape& shape, TensorOptions opt) {
  if (!is_floating(opt.dtype)) throw Error("random: needs a floating dtype, got " + std::string(dtype_name(opt.dtype)));
  const bool rg = opt.requires_grad;
  opt.requires_grad = false;
  Tensor t = empty(shape, opt);
  backend(opt.device).random(RandomKind(kind), t, seed_, offset_);
  offset_ += uint64_t(t.numel());
  if (rg) t.requires_grad_();
  return t;
}

Tensor Generator::uniform(const Shape& shape, TensorOptions opt, double low, double high) {
  Tensor t = draw(int(RandomKind::uniform), shape, {opt.dtype, opt.device, false});
  if (low != 0.0 || high != 1.0) t = add_scalar(mul_scalar(t, high - low), low);
  if (opt.requires_grad) t.requires_grad_();
  return t;
}
Tensor Generator::normal(const Shape& shape, TensorOptions opt, double mean, double stddev) {
  Tensor t = draw(int(RandomKind::normal), shape, {opt.dtype, opt.device, false});
  if (mean != 0.0 || stddev != 1.0) t = add_scalar(mul_scalar(t, stddev), mean);
  if (opt.requires_grad) t.requires_grad_();
  return t;
}
Tensor Generator::rademacher(const Shape& shape, TensorOptions opt) {
  return draw(int(RandomKind::rademacher), shape, opt);
}
Tensor Generator::sphere(const Shape& shape, TensorOptions opt) {
  NoGrad ng;
  Tensor z = draw(int(RandomKind::normal), shape, {opt.dtype, opt.device, false});
  Tensor u = div(z, sqrt(sum(square(z))));
  if (opt.requires_grad) u.requires_grad_();
  return u;
}
std::vector<Tensor> Generator::normal_like(const std::vector<Tensor>& like) {
  std::vector<Tensor> r;
  for (const Tensor& t : like) r.push_back(draw(int(RandomKind::normal), t.shape(), t.options()));
  return r;
}
std::vector<Tensor> Generator::rademacher_like(const std::vector<Tensor>& like) {
  std::vector<Tensor> r;
  for (const Tensor& t : like) r.push_back(draw(int(RandomKind::rademacher), t.shape(), t.options()));
  return r;
}
std::vector<Tensor> Generator::sphere_like(const std::vector<Tensor>& like) {
  NoGrad ng;
  std::vector<Tensor> z = normal_like(like);
  const double n = norm(z).item();
  for (Tensor& t : z) t = mul_scalar(t, 1.0 / n);
  return z;
}

double Generator::uniform01() { return philox::uniform(seed_, offset_++); }
int64_t Generator::randint(int64_t n) {
  if (n <= 0) throw Error("randint: the range size must be positive, got " + std::to_string(n));
  return std::min<int64_t>(n - 1, int64_t(uniform01() * double(n)));
}
std::vector<int64_t> Generator::permutation(int64_t n) {
  std::vector<int64_t> p(size_t(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[randint(i + 1)]);
  return p;
}

}  // namespace flatmin
