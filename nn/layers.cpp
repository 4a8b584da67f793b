#include "nn/layers.hpp"

#include <cmath>

namespace flatmin::nn {

Generator& init_generator() {
  static Generator g(0);
  return g;
}

int64_t fan(const Shape& shape, FanMode mode) {
  if (shape.size() < 2) throw Error("fan: weight of shape " + to_string(shape) + " (need at least 2 dims)");
  numel(shape);  // refuses a shape whose element count overflows
  const int64_t receptive = numel(Shape(shape.begin() + 2, shape.end()));
  const int64_t f = (mode == FanMode::fan_in ? shape[1] : shape[0]) * receptive;  // <= numel: no overflow
  if (f <= 0) throw Error("fan: weight of shape " + to_string(shape) + " has a fan of 0 (no initial scale)");
  return f;
}
int64_t fan(const Tensor& w, FanMode mode) { return fan(w.shape(), mode); }

Tensor kaiming_uniform(Generator& g, const Shape& shape, double a, FanMode mode, TensorOptions opt) {
  const double bound = std::sqrt(6.0 / ((1.0 + a * a) * double(fan(shape, mode))));
  return g.uniform(shape, opt, -bound, bound);
}
Tensor kaiming_normal_relu(Generator& g, const Shape& shape, FanMode mode, TensorOptions opt) {
  return g.normal(shape, opt, 0.0, std::sqrt(2.0 / double(fan(shape, mode))));
}

Act parse_act(const std::string& s) {
  if (s == "relu") return Act::relu;
  if (s == "tanh") return Act::tanh;
  if (s == "softplus") return Act::softplus;
  throw Error("unknown activation '" + s + "' (relu | tanh | softplus)");
}
const char* act_name(Act a) {
  switch (a) {
    case Act::relu: return "relu";
    case Act::tanh: return "tanh";
    case Act::softplus: return "softplus";
  }
  return "?";
}
Tensor activate(const Tensor& x, Act a) {
  switch (a) {
    case Act::relu: return relu(x);
    case Act::tanh: return tanh(x);
    case Act::softplus: return softplus(x);
  }
  throw Error("activate: bad activation");
}

// PyTorch's Linear/Conv default: kaiming_uniform_(a = sqrt(5)) weight, bias U(±1/sqrt(fan_in)).
static void default_weight_and_bias(Module& m, Generator& g, const Shape& wshape, int64_t out, bool bias) {
  m.register_parameter("weight", kaiming_uniform(g, wshape, std::sqrt(5.0), FanMode::fan_in));
  if (bias) {
    const double bound = 1.0 / std::sqrt(double(fan(wshape, FanMode::fan_in)));
    m.register_parameter("bias", g.uniform({out}, {}, -bound, bound));
  }
}

Linear::Linear(int64_t in, int64_t out, bool bias, Generator& g) {
  if (in <= 0 || out <= 0) throw Error("Linear: sizes " + std::to_string(in) + " -> " + std::to_string(out));
  default_weight_and_bias(*this, g, {out, in}, out, bias);
}
Tensor Linear::forward(const Tensor& x) {
  Tensor y = matmul(x, transpose(param("weight")));
  return has_param("bias") ? add(y, param("bias")) : y;
}

Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel, Conv2dOptions opt, Generator& g) : options(opt) {
  if (in <= 0 || out <= 0 || kernel <= 0)
    throw Error("Conv2d: in " + std::to_string(in) + ", out " + std::to_string(out) + ", kernel " +
                std::to_string(kernel));
  const Shape wshape{out, in, kernel, kernel};
  if (opt.init == ConvInit::uniform) {
    default_weight_and_bias(*this, g, wshape, out, opt.bias);
  } else {
    register_parameter("weight", kaiming_normal_relu(g, wshape, FanMode::fan_out));
    if (opt.bias) register_parameter("bias", zeros({out}));
  }
}
Tensor Conv2d::forward(const Tensor& x) {
  const flatmin::Conv2dOptions o{
      .stride = options.stride, .padding = options.padding, .channels_last = options.channels_last};
  return conv2d(x, param("weight"), options.bias ? param("bias") : Tensor(), o);
}

BatchNorm2d::BatchNorm2d(int64_t channels, double eps, double momentum, bool channels_last)
    : eps(eps), momentum(momentum), channels_last(channels_last) {
  register_parameter("weight", ones({channels}));
  register_parameter("bias", zeros({channels}));
  register_buffer("running_mean", zeros({channels}));
  register_buffer("running_var", ones({channels}));
  register_buffer("num_batches_tracked", from_ints({0}, {}));
}
Tensor BatchNorm2d::forward(const Tensor& x) { return run(x, false); }
Tensor BatchNorm2d::forward_relu(const Tensor& x) { return run(x, true); }
Tensor BatchNorm2d::run(const Tensor& x, bool relu) {
  const bool update = is_training() && updates_running_stats();
  if (channels_last && x.dim() != 4)
    throw Error("BatchNorm2d (channels last): input must be (N, H, W, C), got " + to_string(x.shape()));
  // Channels last: the statistics per channel over N, H and W are those of the rows of
  // [N*H*W, C], batch_norm's rank-2 form (a reshape, no copy).
  const Tensor in = channels_last ? reshape(x, {x.numel() / std::max<int64_t>(x.size(3), 1), x.size(3)}) : x;
  Tensor y =
      batch_norm(in, param("weight"), param("bias"), buffer("running_mean"), buffer("running_var"),
                 {.training = is_training(), .update_running = update, .momentum = momentum, .eps = eps, .relu = relu});
  if (channels_last) y = reshape(y, x.shape());
  if (update) {
    Tensor& count = buffer("num_batches_tracked");
    count.fill_(count.item() + 1);
  }
  return y;
}

int64_t default_groups(int64_t channels) {
  for (int64_t g = std::min<int64_t>(32, channels); g > 1; --g)
    if (channels % g == 0) return g;
  return 1;
}
GroupNorm::GroupNorm(int64_t channels, int64_t groups_, double eps, bool channels_last)
    : groups(groups_ > 0 ? groups_ : default_groups(channels)), eps(eps), channels_last(channels_last) {
  if (channels % groups != 0)
    throw Error("GroupNorm: " + std::to_string(channels) + " channels are not divisible into " +
                std::to_string(groups) + " groups");
  register_parameter("weight", ones({channels}));
  register_parameter("bias", zeros({channels}));
}
Tensor GroupNorm::forward(const Tensor& x) {
  if (!channels_last) return group_norm(x, groups, param("weight"), param("bias"), eps);
  if (x.dim() != 4) throw Error("GroupNorm (channels last): input must be (N, H, W, C), got " + to_string(x.shape()));
  return group_norm(x, groups, param("weight"), param("bias"), eps, true);
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& [name, m] : children()) y = m->forward(y);
  return y;
}

MLP::MLP(const std::vector<int64_t>& sizes, Act act, Generator& g) {
  if (sizes.size() < 2) throw Error("MLP: need at least an input and an output size");
  for (size_t i = 0; i + 1 < sizes.size(); ++i) {
    if (i > 0) push_back(Activation(act));
    push_back(Linear(sizes[i], sizes[i + 1], true, g));
  }
}

ScalarFn classification_loss(Module& net, const Tensor& input, const Tensor& target) {
  return [&net, input, target](const Params& p) {
    WithParameters with(net, p);
    return cross_entropy(net(input), target);
  };
}

}  // namespace flatmin::nn
