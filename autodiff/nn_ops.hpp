// Network ops with derivative rules of every order: convolution, pooling, normalization,
// losses. Heavy ops whose backward is another kernel make that kernel an op of its own
// with its own rule (conv2d's input and weight gradients are bilinear, so their rules are
// again the three conv ops; max-pool's backward is a scatter with fixed indices).
// Layout NCHW (convolutions: or NHWC, Conv2dOptions::channels_last); weights OIHW (PyTorch's).
#pragma once
#include "autodiff/ops.hpp"

namespace flatmin {

struct Conv2dOptions {
  int64_t stride = 1;
  int64_t padding = 0;
  // Activations channels-last: x [N, H, W, C], y [N, OH, OW, O] (weights stay [O, C, KH, KW]).
  // The same convolution in another memory order (PyTorch's channels_last): oneDNN's float32
  // kernels read it without reordering; elsewhere the op permutes to NCHW around the kernel.
  bool channels_last = false;
};
// y = conv(x, w) + bias (bias optional: pass an undefined Tensor)
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias = {}, Conv2dOptions opt = {});
// The two adjoints of conv2d as ops of their own (their rules are conv ops again).
Tensor conv2d_input_grad(const Tensor& gy, const Tensor& w, const Shape& x_shape, Conv2dOptions opt);
Tensor conv2d_weight_grad(const Tensor& x, const Tensor& gy, const Shape& w_shape, Conv2dOptions opt);

// bfloat16 convolutions: inside this scope, on this thread, the float32 conv2d and its two
// gradient ops (so the forward, the backward and second-order rules alike) read their
// operands rounded to bfloat16 and accumulate and return float32 — PyTorch's CPU bf16
// autocast for convolutions, with float32 outputs. Every other op, every float64 op and the
// parameters are unchanged. Each op reads the setting when it runs, so a backward run outside
// the scope runs in float32. Needs the CPU backend built with oneDNN, or for CUDA tensors a
// build with cuDNN (a conv op throws otherwise); on CUDA cuDNN's bfloat16 kernels also round
// the outputs to bfloat16 before they are widened to float32 (as PyTorch's CUDA autocast).
// Scopes nest; the outer setting comes back on exit.
bool bf16_convolutions();
class Bf16Convolutions {
 public:
  explicit Bf16Convolutions(bool on = true);
  ~Bf16Convolutions();
  Bf16Convolutions(const Bf16Convolutions&) = delete;
  Bf16Convolutions& operator=(const Bf16Convolutions&) = delete;

 private:
  bool prev_;
};

struct Pool2dOptions {
  int64_t kernel = 2;
  int64_t stride = 0;  // 0: equal to kernel (PyTorch's default)
  int64_t padding = 0;
};
Tensor max_pool2d(const Tensor& x, Pool2dOptions opt);
Tensor avg_pool2d(const Tensor& x, Pool2dOptions opt);  // count_include_pad = true
// The adjoint of avg_pool2d (its rule is avg_pool2d again).
Tensor avg_pool2d_adjoint(const Tensor& gy, const Shape& x_shape, Pool2dOptions opt);
Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w);

// Batch normalization over (N, H, W) per channel (x of rank 2 or 4). Training: batch
// statistics (biased variance), and running statistics updated in place as PyTorch does
// (unbiased variance in the running estimate) unless update_running is false; eval: running
// statistics. Exact at every derivative order (no detached statistics). The CPU and CUDA
// backends' fused kernels compute the forward, the backward and the rules of the two
// backward ops (second order) whenever that step is not itself recorded. Eval mode is one
// op y = x·s + t per channel (s, t from the running statistics, weight and bias): one pass
// on the CPU. relu: the output is relu(batch_norm(x)), the ReLU inside the op (no separate
// pass forward or backward on the CPU); its derivatives are those of the composition.
struct BatchNormOptions {
  bool training = false;       // batch statistics (true) or running statistics (false)
  bool update_running = true;  // in training, fold the batch statistics into the running ones
  double momentum = 0.1;
  double eps = 1e-5;
  bool relu = false;  // apply ReLU to the output inside the op
};
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean, Tensor& running_var,
                  const BatchNormOptions& opt);
// relu(a + b) as one op (a and b of one shape): a residual block's sum and activation in one
// pass on the CPU; its derivatives are those of the composition.
Tensor add_relu(const Tensor& a, const Tensor& b);

// Group normalization: statistics per (sample, group of C/groups channels), affine per
// channel (weight/bias may be undefined). Exact at every order, like batch_norm.
// channels_last: x is (N, ..., C), channels on the last axis (e.g. [N, H, W, C]).
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps = 1e-5,
                  bool channels_last = false);

enum class Reduction { mean, sum, none };
// Cross-entropy from logits (N, K) and int64 labels (N).
Tensor cross_entropy(const Tensor& logits, const Tensor& target, Reduction r = Reduction::mean);
Tensor mse_loss(const Tensor& pred, const Tensor& target, Reduction r = Reduction::mean);

}  // namespace flatmin
