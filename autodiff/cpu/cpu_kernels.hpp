// Internal to the CPU backend: the parallel loop, and the kernel entry points of each file
// (the CUDA backend's kernels.hpp lists the same areas). Not installed; nothing outside
// autodiff/cpu includes it.
#pragma once
#include <functional>

#include "autodiff/backend.hpp"

namespace flatmin::cpu {

Backend& instance();

// body(begin, end) over [0, n) in chunks of at least `grain`, on oneTBB's pool; serial for
// n <= grain. Chunking never changes results: callers write disjoint outputs. The serial
// case is inline, so small tensors pay neither a std::function nor a TBB dispatch.
void parallel_for_tbb(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);
template <class F> void parallel_for(int64_t n, int64_t grain, F&& body) {
  if (n <= 0) return;
  if (n <= grain)
    body(int64_t(0), n);
  else
    parallel_for_tbb(n, grain, body);
}

// Batched row-major GEMM (see Backend::MatmulArgs) on gemm.hpp, parallel over batch or columns.
template <class T> void gemm_batched(const T* a, const T* b, T* c, const Backend::MatmulArgs& g);

// ---- elementwise.cpp ----
void fill(Tensor& out, double value);
void cast(const Tensor& in, Tensor& out);
void arange(Tensor& out);
void unary(UnaryOp op, const Tensor& x, Tensor& out, double param);
void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out);  // broadcast to out's shape
void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out);
void random(RandomKind kind, Tensor& out, uint64_t seed, uint64_t offset);
// ---- reduce.cpp ----
void reduce(ReduceOp op, const Tensor& x, Tensor& out);
// ---- layout.cpp ----
void expand(const Tensor& x, Tensor& out);
void permute(const Tensor& x, Tensor& out, const std::vector<int64_t>& perm);
void slice(const Tensor& x, Tensor& out, int64_t axis, int64_t start, int64_t step);
void slice_add(const Tensor& src, Tensor& out, int64_t axis, int64_t start, int64_t step);
void index_select(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out);
void index_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out);
void gather(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out);
void scatter_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out);
// ---- conv.cpp ----
void conv2d_forward(const Tensor& x, const Tensor& w, Tensor& out, const Conv2dParams& p);
void conv2d_input_grad(const Tensor& gy, const Tensor& w, Tensor& gx, const Conv2dParams& p);
void conv2d_weight_grad(const Tensor& x, const Tensor& gy, Tensor& gw, const Conv2dParams& p);
void max_pool2d(const Tensor& x, Tensor& out, Tensor& indices, const Pool2dParams& p);
void avg_pool2d(const Tensor& x, Tensor& out, const Pool2dParams& p);
void avg_pool2d_adjoint(const Tensor& gy, Tensor& gx, const Pool2dParams& p);

// Fused batch norm with batch statistics (norm.cpp); see Backend::batch_norm_forward.
// relu: y = relu(batch norm) (Backend::batch_norm_relu_forward); relu_y: the backward's
// cotangent is g where *relu_y > 0, else 0 (Backend::batch_norm_relu_backward).
void batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y, Tensor& mean,
                        Tensor& var, bool relu = false);
void batch_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& var,
                         double eps, Tensor& gx, Tensor& gw, Tensor& gb, const Tensor* relu_y = nullptr);
// Eval-mode batch norm, one pass (Backend::batch_norm_eval).
void batch_norm_eval(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu, Tensor& y);
// out = relu(a + b), one pass (Backend::add_relu): a residual block's sum and activation.
void add_relu(const Tensor& a, const Tensor& b, Tensor& out);
// Their second-order rules (see Backend::batch_norm_input_grad_vjp / weight_grad_vjp).
void batch_norm_input_grad_vjp(const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& weight,
                               const Tensor& mean, const Tensor& var, double eps, Tensor& dg, Tensor& dx, Tensor& dw);
void batch_norm_weight_grad_vjp(const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                const Tensor& var, double eps, Tensor& dg, Tensor& dx);
// Fused group norm with its affine (group_norm.cpp); see Backend::group_norm_forward.
void group_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, double eps,
                        bool channels_last, Tensor& y, Tensor& mean, Tensor& var);
void group_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& var,
                         int64_t groups, double eps, bool channels_last, Tensor& gx, Tensor& gw, Tensor& gb);

}  // namespace flatmin::cpu
