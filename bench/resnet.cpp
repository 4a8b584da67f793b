// ResNet-18 workloads (CIFAR stem), the same as torch_reference.py's: width 64 with batch
// norm in training mode (SGD steps, eval forward, second-order work in seconds and as ratios
// to one forward+backward), and the shape of `flatmin escape`'s default model (width 8 on
// 1x28x28, batch 64; tools/cmd_escape.cpp Settings).
#include "nn/resnet.hpp"
#include "autodiff/autodiff.hpp"
#include "bench/workloads.hpp"

namespace flatmin::bench {

Tensor classification_loss(const Tensor& logits, const Tensor& labels) { return cross_entropy(logits, labels); }

namespace {

struct Shape {
  int64_t batch, channels = 3, size = 32, width = 64;
  nn::Norm norm = nn::Norm::batch;
};

struct Setup {
  nn::ResNet net;
  Params params;
  Tensor x, y;
};
Setup resnet_setup(const Shape& sh, const Config& c) {
  nn::ResNet net = nn::resnet18({.in_channels = sh.channels,
                                 .classes = 10,
                                 .stem = nn::Stem::cifar,
                                 .width = sh.width,
                                 .norm = sh.norm,
                                 .seed = 0,
                                 .channels_last = c.channels_last});
  net.train();
  Generator gen(1);
  Tensor x = gen.normal({sh.batch, sh.channels, sh.size, sh.size});
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < sh.batch; ++i) labels.push_back(gen.randint(10));
  Params params = net.parameters();
  return {std::move(net), std::move(params), x, from_ints(labels, {sh.batch})};
}

void sgd_step(Setup& s) {
  classification_loss(s.net(s.x), s.y).backward();
  NoGrad ng;
  for (Tensor& p : s.params) {
    p.add_(p.grad(), -0.01);
    p.zero_grad();
  }
}

// One HVP (reverse over reverse) of the loss with direction v.
void hvp_once(Setup& s, const Params& v) {
  Params g = grad({classification_loss(s.net(s.x), s.y)}, s.params, {.create_graph = true});
  grad({dot(g, v)}, s.params);
}

Group step_group(const std::string& name, const std::string& key, const Shape& sh) {
  return {name, [=](const Config& c) {
            Setup s = resnet_setup(sh, c);
            auto t = time_reps(c.reps, [&] { sgd_step(s); });
            return std::vector<Metric>{{key, "img/s", true, per_second(t, double(sh.batch))}};
          }};
}

Group eval_group(const std::string& name, const std::string& key, const Shape& sh) {
  return {name, [=](const Config& c) {
            Setup s = resnet_setup(sh, c);
            s.net.eval();
            NoGrad ng;
            auto t = time_reps(c.reps, [&] { s.net(s.x); });
            return std::vector<Metric>{{key, "img/s", true, per_second(t, double(sh.batch))}};
          }};
}

// One forward+backward, the gradient with create_graph, one HVP and one Hutchinson sample
// vᵀHv with a fresh Rademacher v, measured back to back in each repetition: in seconds, and
// as ratios to the forward+backward of the same repetition.
std::vector<Metric> second_order_b32(const Config& c) {
  Setup s = resnet_setup({.batch = 32}, c);
  Generator gen(2);
  const Params v = gen.rademacher_like(s.params);
  auto loss = [&] { return classification_loss(s.net(s.x), s.y); };
  auto fwd_bwd = [&] { grad({loss()}, s.params); };
  auto grad_cg = [&] { grad({loss()}, s.params, {.create_graph = true}); };
  auto hvp = [&] { hvp_once(s, v); };
  auto hutchinson = [&] {
    const Params w = gen.rademacher_like(s.params);
    Params g = grad({loss()}, s.params, {.create_graph = true});
    Params hw = grad({dot(g, w)}, s.params);
    NoGrad ng;
    return dot(hw, w).item();
  };
  fwd_bwd(), grad_cg(), hvp(), hutchinson();  // warm-up
  std::vector<double> base, th, tt, rc, rh, rt;
  for (int r = 0; r < c.reps; ++r) {
    const double tb = time_once(fwd_bwd), tc = time_once(grad_cg);
    th.push_back(time_once(hvp));
    tt.push_back(time_once(hutchinson));
    base.push_back(tb);
    rc.push_back(tc / tb);
    rh.push_back(th.back() / tb);
    rt.push_back(tt.back() / tb);
  }
  return {{"resnet18_fwd_bwd_b32", "s", false, base},
          {"resnet18_hvp_b32", "s", false, th},
          {"resnet18_hutchinson_b32", "s", false, tt},
          {"resnet18_grad_create_graph_ratio_b32", "x fwd+bwd", false, rc},
          {"resnet18_hvp_ratio_b32", "x fwd+bwd", false, rh},
          {"resnet18_hutchinson_ratio_b32", "x fwd+bwd", false, rt}};
}

// `flatmin escape`'s model and batch: an SGD step and one HVP (key prefix e.g. "escape_w8_gn").
Group escape_group(const std::string& name, const std::string& prefix, nn::Norm norm) {
  const Shape sh{.batch = 64, .channels = 1, .size = 28, .width = 8, .norm = norm};
  return {name, [=](const Config& c) {
            Setup s = resnet_setup(sh, c);
            auto step = time_reps(c.reps, [&] { sgd_step(s); });
            const Params v = Generator(2).rademacher_like(s.params);
            auto hvp = time_reps(c.reps, [&] { hvp_once(s, v); });
            return std::vector<Metric>{{prefix + "_step_b64", "img/s", true, per_second(step, double(sh.batch))},
                                       {prefix + "_hvp_b64", "s", false, hvp}};
          }};
}

}  // namespace

std::vector<Group> resnet_groups() {
  return {step_group("resnet_step_b32", "resnet18_step_b32", {.batch = 32}),
          step_group("resnet_step_b128", "resnet18_step_b128", {.batch = 128}),
          eval_group("resnet_eval_b128", "resnet18_eval_b128", {.batch = 128}),
          eval_group("resnet_eval_b32", "resnet18_eval_b32", {.batch = 32}),
          {"resnet_second_order_b32", second_order_b32},
          step_group("resnet_1x28_step_b128", "resnet18_1x28_step_b128", {.batch = 128, .channels = 1, .size = 28}),
          // the default of `flatmin escape` (GroupNorm), and the same with batch norm
          escape_group("escape_shape", "escape_w8_gn", nn::Norm::group),
          escape_group("escape_shape_bn", "escape_w8_bn", nn::Norm::batch)};
}

}  // namespace flatmin::bench
