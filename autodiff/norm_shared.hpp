// Internal to autodiff (not installed): batch norm's pieces in nn_ops.cpp that group norm
// (norm_ops.cpp) is built from, so that group norm's recorded rule is batch norm's ops.
#pragma once
#include <array>
#include <vector>

#include "autodiff/ops.hpp"

namespace flatmin {

// Shape (1, C, 1, ...) of a per-channel vector broadcast against x, channels on `axis`.
Shape channel_shape(const Tensor& x, int64_t axis = 1);
// Training-mode batch norm of x over `axes` (every axis but the channel axis 1, or {1, 3} of
// [B, N, C, S] for statistics per instance [B, C]): one recorded op whose rule is
// batch_norm_backward; writes the batch mean and biased variance (detached). relu: the
// output is relu(y).
Tensor batch_norm_train(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Axes& axes, Tensor& bmean,
                        Tensor& bvar, bool relu = false);
// Which of (x, w, b) a backward computes.
using BnNeeds = std::array<bool, 3>;
// The VJP of batch_norm_train for output gradient g: {gx, gw, gb} where needed, from the
// backend's fused kernel; recorded (gx and gw as one op each) when g, x or w require grad.
// relu_y: the output of batch norm + ReLU (g is then ReLU's output gradient).
std::vector<Tensor> batch_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& bmean,
                                        const Tensor& bvar, double eps, const Axes& axes, const BnNeeds& needs,
                                        const Tensor& relu_y = {});
// batch_norm_train as a composition of differentiable ops (forward rules: jet::through).
Tensor batch_norm_composite(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Axes& axes);

}  // namespace flatmin
