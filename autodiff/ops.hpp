// The differentiable ops. Each is defined once in ops_<group>.cpp together with its derivative
// rule, which is written only with the ops of this header, so every derivative order
// comes from the same rule (first order with recording off, higher orders with it on).
#pragma once
#include <string>
#include <vector>
#include "autodiff/tensor.hpp"

namespace flatmin {

using Axes = std::vector<int64_t>;

// ---- elementwise (binary ops broadcast with NumPy rules) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor add_scalar(const Tensor& x, double c);
Tensor mul_scalar(const Tensor& x, double c);
Tensor rsub_scalar(const Tensor& x, double c);  // c - x
Tensor reciprocal(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
// tanh's VJP from its output y: g·(1 − y²), one op differentiable in g and y at every order.
Tensor tanh_backward(const Tensor& g, const Tensor& y);
Tensor sigmoid(const Tensor& x);
Tensor softplus(const Tensor& x);
Tensor relu(const Tensor& x);
// ReLU's VJP from its output y: g where y > 0, else 0 (differentiable in g; constant in y).
Tensor relu_backward(const Tensor& g, const Tensor& y);
Tensor abs(const Tensor& x);
Tensor square(const Tensor& x);
// where(cond, a, b): a where cond != 0, else b; cond is not differentiated
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

// Non-differentiable elementwise results (0/1 masks, signs): never recorded.
Tensor sign(const Tensor& x);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, const Tensor& b);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& x);
Tensor operator+(const Tensor& a, double c);
Tensor operator+(double c, const Tensor& a);
Tensor operator-(const Tensor& a, double c);
Tensor operator-(double c, const Tensor& a);
Tensor operator*(const Tensor& a, double c);
Tensor operator*(double c, const Tensor& a);
Tensor operator/(const Tensor& a, double c);
Tensor operator/(double c, const Tensor& a);

// ---- reductions (empty axes = all axes) ----
Tensor sum(const Tensor& x, Axes axes = {}, bool keepdim = false);
Tensor mean(const Tensor& x, Axes axes = {}, bool keepdim = false);
Tensor max(const Tensor& x, Axes axes = {}, bool keepdim = false);  // ties share the gradient
Tensor min(const Tensor& x, Axes axes = {}, bool keepdim = false);
// Sums x down to `shape` (the adjoint of broadcasting x's shape from `shape`).
Tensor sum_to(const Tensor& x, const Shape& shape);
Tensor logsumexp(const Tensor& x, int64_t axis, bool keepdim = false);
Tensor softmax(const Tensor& x, int64_t axis);
Tensor log_softmax(const Tensor& x, int64_t axis);
Tensor argmax(const Tensor& x, int64_t axis, bool keepdim = false);  // i64, not differentiable

// ---- layout ----
Tensor reshape(const Tensor& x, Shape shape);  // one -1 allowed; shares storage
Tensor flatten(const Tensor& x, int64_t start_axis = 0, int64_t end_axis = -1);
Tensor unsqueeze(const Tensor& x, int64_t axis);
Tensor squeeze(const Tensor& x, int64_t axis);
Tensor permute(const Tensor& x, const std::vector<int64_t>& perm);
Tensor transpose(const Tensor& x, int64_t a = -2, int64_t b = -1);
Tensor expand(const Tensor& x, const Shape& shape);  // broadcast to shape (copying)
Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t stop, int64_t step = 1);
// zeros of `shape` with x added into the slice (the adjoint of slice)
Tensor slice_backward(const Tensor& x, const Shape& shape, int64_t axis, int64_t start, int64_t step);
Tensor concat(const std::vector<Tensor>& xs, int64_t axis);
Tensor stack(const std::vector<Tensor>& xs, int64_t axis);
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& idx);
// zeros of `shape` with rows of x added at idx along axis (the adjoint of index_select)
Tensor index_add(const Tensor& x, const Shape& shape, int64_t axis, const Tensor& idx);
Tensor gather(const Tensor& x, int64_t axis, const Tensor& idx);
// zeros of `shape` with x added at idx along axis (the adjoint of gather)
Tensor scatter_add(const Tensor& x, const Shape& shape, int64_t axis, const Tensor& idx);

// ---- linear algebra ----
// Batched matmul with broadcasting of leading dims; 1-d operands as in NumPy.
Tensor matmul(const Tensor& a, const Tensor& b);
Tensor dot(const Tensor& a, const Tensor& b);  // sum(a * b), any equal shapes

// ---- dtype/device (differentiable: gradients flow back converted) ----
Tensor to_dtype(const Tensor& x, DType t);
Tensor to_device(const Tensor& x, Device d);

// Broadcast shape of two shapes, or Error naming `op` and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
int64_t normalize_axis(int64_t axis, int64_t rank, const char* op);

}  // namespace flatmin
