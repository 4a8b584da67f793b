// ResNet-18 (BasicBlock x [2, 2, 2, 2]) with torchvision's module names (conv1, bn1,
// layer1.0.conv1, ..., layer2.0.downsample.0, fc), so state dicts load in PyTorch and back.
//   auto net = nn::resnet18({.classes = 10, .stem = nn::Stem::cifar, .norm = nn::Norm::group});
#pragma once
#include <memory>

#include "nn/layers.hpp"

namespace flatmin::nn {

// cifar: 3x3 stride-1 conv, no max-pool; imagenet: 7x7 stride-2 conv + 3x3 stride-2 max-pool.
enum class Stem { cifar, imagenet };
// none: the norm layers are identities (names are then a subset of torchvision's).
enum class Norm { batch, group, none };
Stem parse_stem(const std::string& s);
Norm parse_norm(const std::string& s);

struct ResNetOptions {
  int64_t in_channels = 3;
  int64_t classes = 1000;
  Stem stem = Stem::imagenet;
  int64_t width = 64;  // stage widths w, 2w, 4w, 8w
  Norm norm = Norm::batch;
  Act activation = Act::relu;
  uint64_t seed = 0;  // initial values (torchvision's scheme: kaiming_normal_ fan_out convs)
  // Activations [N, H, W, C] between the layers (PyTorch's channels_last memory format): the
  // input stays (N, C, H, W) and is permuted once; the same function, the same parameters and
  // state dict. Faster where oneDNN runs the convolutions (float32 on the CPU); the ImageNet
  // stem's max-pool permutes to NCHW and back around itself.
  bool channels_last = false;
};

class BasicBlock : public Module {
 public:
  BasicBlock(int64_t in, int64_t out, int64_t stride, Norm norm, Act act, Generator& g, bool channels_last = false);
  Tensor forward(const Tensor& x) override;

 private:
  Act act_;
  std::shared_ptr<Module> conv1_, bn1_, conv2_, bn2_, downsample_;
};

class ResNet : public Module {
 public:
  explicit ResNet(const ResNetOptions& opt);
  Tensor forward(const Tensor& x) override;
  const ResNetOptions options;
};

ResNet resnet18(const ResNetOptions& opt = {});

// A norm layer of the given kind over `channels` (Identity for Norm::none).
std::shared_ptr<Module> make_norm(Norm norm, int64_t channels, bool channels_last = false);

}  // namespace flatmin::nn
