#include "nn/resnet.hpp"

namespace flatmin::nn {

Stem parse_stem(const std::string& s) {
  if (s == "cifar") return Stem::cifar;
  if (s == "imagenet") return Stem::imagenet;
  throw Error("unknown stem '" + s + "' (cifar | imagenet)");
}
Norm parse_norm(const std::string& s) {
  if (s == "batch") return Norm::batch;
  if (s == "group") return Norm::group;
  if (s == "none") return Norm::none;
  throw Error("unknown norm '" + s + "' (batch | group | none)");
}

std::shared_ptr<Module> make_norm(Norm norm, int64_t channels, bool channels_last) {
  switch (norm) {
    case Norm::batch: return std::make_shared<BatchNorm2d>(channels, 1e-5, 0.1, channels_last);
    case Norm::group: return std::make_shared<GroupNorm>(channels, 0, 1e-5, channels_last);
    case Norm::none: return std::make_shared<Identity>();
  }
  throw Error("make_norm: bad norm");
}

namespace {
// act(norm(x)); a batch norm followed by ReLU runs as one op (BatchNorm2d::forward_relu).
Tensor norm_act(Module& norm, const Tensor& x, Act act) {
  if (act == Act::relu)
    if (auto* bn = dynamic_cast<BatchNorm2d*>(&norm)) return bn->forward_relu(x);
  return activate(norm.forward(x), act);
}
// torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu') for every conv, no bias.
std::shared_ptr<Module> conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding, Generator& g,
                             bool channels_last) {
  return std::make_shared<Conv2d>(in, out, kernel,
                                  Conv2dOptions{.stride = stride,
                                                .padding = padding,
                                                .bias = false,
                                                .init = ConvInit::normal_fan_out,
                                                .channels_last = channels_last},
                                  g);
}
}  // namespace

BasicBlock::BasicBlock(int64_t in, int64_t out, int64_t stride, Norm norm, Act act, Generator& g, bool channels_last)
    : act_(act) {
  const bool cl = channels_last;
  conv1_ = conv(in, out, 3, stride, 1, g, cl);
  add_child("conv1", conv1_);
  bn1_ = make_norm(norm, out, cl);
  add_child("bn1", bn1_);
  conv2_ = conv(out, out, 3, 1, 1, g, cl);
  add_child("conv2", conv2_);
  bn2_ = make_norm(norm, out, cl);
  add_child("bn2", bn2_);
  if (stride != 1 || in != out) {
    auto ds = std::make_shared<Sequential>();
    ds->add_child("0", conv(in, out, 1, stride, 0, g, cl));
    ds->add_child("1", make_norm(norm, out, cl));
    downsample_ = ds;
    add_child("downsample", downsample_);
  }
}
Tensor BasicBlock::forward(const Tensor& x) {
  Tensor y = norm_act(*bn1_, conv1_->forward(x), act_);
  y = bn2_->forward(conv2_->forward(y));
  const Tensor shortcut = downsample_ ? downsample_->forward(x) : x;
  return act_ == Act::relu ? add_relu(y, shortcut) : activate(add(y, shortcut), act_);
}

ResNet::ResNet(const ResNetOptions& opt) : options(opt) {
  if (opt.in_channels <= 0 || opt.classes <= 0 || opt.width <= 0)
    throw Error("resnet18: in_channels " + std::to_string(opt.in_channels) + ", classes " +
                std::to_string(opt.classes) + ", width " + std::to_string(opt.width) + " must be positive");
  Generator g(opt.seed);
  const int64_t w = opt.width;
  // The stem's modules sit at the top level (conv1, bn1, relu, maxpool), as in torchvision.
  const bool cl = opt.channels_last;
  if (opt.stem == Stem::cifar) {
    add_child("conv1", conv(opt.in_channels, w, 3, 1, 1, g, cl));
  } else {
    add_child("conv1", conv(opt.in_channels, w, 7, 2, 3, g, cl));
  }
  add_child("bn1", make_norm(opt.norm, w, cl));
  add_child("relu", std::make_shared<Activation>(opt.activation));
  if (opt.stem == Stem::imagenet)
    add_child("maxpool", std::make_shared<MaxPool2d>(Pool2dOptions{.kernel = 3, .stride = 2, .padding = 1}));
  int64_t in = w;
  for (int s = 0; s < 4; ++s) {
    const int64_t out = w << s;
    auto layer = std::make_shared<Sequential>();
    layer->add_child("0", std::make_shared<BasicBlock>(in, out, s == 0 ? 1 : 2, opt.norm, opt.activation, g, cl));
    layer->add_child("1", std::make_shared<BasicBlock>(out, out, 1, opt.norm, opt.activation, g, cl));
    add_child("layer" + std::to_string(s + 1), layer);
    in = out;
  }
  add_child("avgpool", std::make_shared<AdaptiveAvgPool2d>(1, 1));
  add_module("fc", Linear(8 * w, opt.classes, true, g));
}

Tensor ResNet::forward(const Tensor& x) {
  if (x.dim() != 4 || x.size(1) != options.in_channels)
    throw Error("ResNet: input of shape " + to_string(x.shape()) + ", expected (N, " +
                std::to_string(options.in_channels) + ", H, W)");
  const bool cl = options.channels_last;
  // the stem's "relu" child is options.activation (kept for torchvision's module names)
  Tensor y = norm_act(child("bn1"), child("conv1").forward(cl ? permute(x, {0, 2, 3, 1}) : x), options.activation);
  if (options.stem == Stem::imagenet)
    y = cl ? permute(child("maxpool").forward(permute(y, {0, 3, 1, 2})), {0, 2, 3, 1}) : child("maxpool").forward(y);
  for (const char* layer : {"layer1", "layer2", "layer3", "layer4"}) y = child(layer).forward(y);
  // channels last: the global average over H and W is a mean over axes 1 and 2
  y = cl ? mean(y, {1, 2}) : flatten(child("avgpool").forward(y), 1);
  return child("fc").forward(y);
}

ResNet resnet18(const ResNetOptions& opt) { return ResNet(opt); }

}  // namespace flatmin::nn
