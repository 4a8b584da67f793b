// Layers with PyTorch's parameter names, shapes and default initialisation, drawn from a
// flatmin::Generator (pass one for reproducible models; init_generator() otherwise).
#pragma once
#include <string>

#include "autodiff/nn_ops.hpp"
#include "autodiff/random.hpp"
#include "nn/module.hpp"

namespace flatmin::nn {

// The generator layers draw their initial values from when none is passed (seed 0).
Generator& init_generator();

// ---- initialisation (torch.nn.init), in place on a parameter's values ----
enum class FanMode { fan_in, fan_out };
// Conv weight (O, I, kh, kw) or linear weight (O, I): fan_in = I·kh·kw, fan_out = O·kh·kw.
// From the shape alone (no allocation); Error for an overflowing shape or a fan of 0.
int64_t fan(const Shape& shape, FanMode mode);
int64_t fan(const Tensor& w, FanMode mode);
// kaiming_uniform_(a): U(−b, b), b = sqrt(6 / ((1 + a²) fan)); kaiming_normal_ for ReLU:
// N(0, 2 / fan).
Tensor kaiming_uniform(Generator& g, const Shape& shape, double a, FanMode mode, TensorOptions opt = {});
Tensor kaiming_normal_relu(Generator& g, const Shape& shape, FanMode mode, TensorOptions opt = {});

enum class Act { relu, tanh, softplus };
Act parse_act(const std::string& s);  // "relu" | "tanh" | "softplus"
const char* act_name(Act a);
Tensor activate(const Tensor& x, Act a);

class Linear : public Module {
 public:
  // weight (out, in) and bias (out): U(−1/sqrt(in), 1/sqrt(in)) as PyTorch.
  Linear(int64_t in, int64_t out, bool bias = true, Generator& g = init_generator());
  Tensor forward(const Tensor& x) override;
};

// uniform: PyTorch's default, kaiming_uniform_(a = sqrt(5)) weight and bias U(±1/sqrt(fan_in));
// normal_fan_out: torchvision's ResNet, kaiming_normal_(mode='fan_out', nonlinearity='relu').
enum class ConvInit { uniform, normal_fan_out };
struct Conv2dOptions {
  int64_t stride = 1;
  int64_t padding = 0;
  bool bias = true;
  ConvInit init = ConvInit::uniform;
  bool channels_last = false;  // input and output [N, H, W, C] (flatmin::Conv2dOptions::channels_last)
};
class Conv2d : public Module {
 public:
  // weight (out, in, k, k) and bias (out), initialised as options.init says.
  Conv2d(int64_t in, int64_t out, int64_t kernel, Conv2dOptions opt = {}, Generator& g = init_generator());
  Tensor forward(const Tensor& x) override;
  const Conv2dOptions options;
};

class BatchNorm2d : public Module {
 public:
  // weight = 1, bias = 0; buffers running_mean = 0, running_var = 1, num_batches_tracked (i64).
  // channels_last: x is [N, H, W, C], normalized as the rows of [N*H*W, C].
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1, bool channels_last = false);
  Tensor forward(const Tensor& x) override;
  // relu(forward(x)) as one op (BatchNormOptions::relu): what a network with a ReLU after
  // this layer calls; the same function, parameters and running statistics.
  Tensor forward_relu(const Tensor& x);
  const double eps, momentum;
  const bool channels_last;

 private:
  Tensor run(const Tensor& x, bool relu);
};

// The default group count: min(32, channels) when it divides channels (PyTorch users'
// usual choice), else the largest divisor of channels below 32.
int64_t default_groups(int64_t channels);
class GroupNorm : public Module {
 public:
  // channels_last: x is [N, H, W, C] (group_norm's channels-last form).
  explicit GroupNorm(int64_t channels, int64_t groups = 0 /* default_groups */, double eps = 1e-5,
                     bool channels_last = false);
  Tensor forward(const Tensor& x) override;
  const int64_t groups;
  const double eps;
  const bool channels_last;
};

class Activation : public Module {
 public:
  explicit Activation(Act a = Act::relu) : kind(a) {}
  Tensor forward(const Tensor& x) override { return activate(x, kind); }
  const Act kind;
};
class ReLU : public Activation {
 public:
  ReLU() : Activation(Act::relu) {}
};

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(Pool2dOptions opt) : options(opt) {}
  Tensor forward(const Tensor& x) override { return max_pool2d(x, options); }
  const Pool2dOptions options;
};
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(Pool2dOptions opt) : options(opt) {}
  Tensor forward(const Tensor& x) override { return avg_pool2d(x, options); }
  const Pool2dOptions options;
};
class AdaptiveAvgPool2d : public Module {
 public:
  AdaptiveAvgPool2d(int64_t out_h, int64_t out_w) : out_h(out_h), out_w(out_w) {}
  Tensor forward(const Tensor& x) override { return adaptive_avg_pool2d(x, out_h, out_w); }
  const int64_t out_h, out_w;
};
class Flatten : public Module {
 public:
  Tensor forward(const Tensor& x) override { return flatten(x, 1); }
};
class Identity : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
};

// Children named "0", "1", ... applied in order.
class Sequential : public Module {
 public:
  template <class M> std::shared_ptr<M> push_back(M module) {
    return add_module(std::to_string(size_++), std::move(module));
  }
  Tensor forward(const Tensor& x) override;
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

// Linear layers of the given sizes with an activation between them (none after the last):
// MLP({784, 256, 10}) has parameters 0.weight, 0.bias, 2.weight, 2.bias as PyTorch's
// nn.Sequential(Linear, ReLU, Linear).
class MLP : public Sequential {
 public:
  explicit MLP(const std::vector<int64_t>& sizes, Act act = Act::relu, Generator& g = init_generator());
};

// Mean cross-entropy of net(input) against int64 labels, as a function of the network's
// parameters: the bridge from a model to gradient/hvp/third/check_derivatives. Keeps
// references to net (which must outlive it) and to the batch.
ScalarFn classification_loss(Module& net, const Tensor& input, const Tensor& target);

}  // namespace flatmin::nn
