// ResNet-18 workloads (CIFAR stem, width 64, batch norm in training mode), the same as
// torch_reference.py's: SGD steps, eval forward, and second-order work as ratios to one
// forward+backward.
#include "nn/resnet.hpp"
#include "autodiff/autodiff.hpp"
#include "bench/workloads.hpp"

namespace flatmin::bench {

Tensor classification_loss(const Tensor& logits, const Tensor& labels) { return cross_entropy(logits, labels); }

namespace {

struct Setup {
  nn::ResNet net;
  Params params;
  Tensor x, y;
};
Setup resnet_setup(int64_t batch, int64_t channels = 3, int64_t size = 32) {
  nn::ResNet net = nn::resnet18({.in_channels = channels,
                                 .classes = 10,
                                 .stem = nn::Stem::cifar,
                                 .width = 64,
                                 .norm = nn::Norm::batch,
                                 .seed = 0});
  net.train();
  Generator gen(1);
  Tensor x = gen.normal({batch, channels, size, size});
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < batch; ++i) labels.push_back(gen.randint(10));
  Params params = net.parameters();
  return {std::move(net), std::move(params), x, from_ints(labels, {batch})};
}

void sgd_step(Setup& s) {
  classification_loss(s.net(s.x), s.y).backward();
  NoGrad ng;
  for (Tensor& p : s.params) {
    p.add_(p.grad(), -0.01);
    p.zero_grad();
  }
}

Group step_group(const std::string& name, const std::string& key, int64_t batch, int64_t channels, int64_t size) {
  return {name, [=](const Config& c) {
            Setup s = resnet_setup(batch, channels, size);
            auto t = time_reps(c.reps, [&] { sgd_step(s); });
            return std::vector<Metric>{{key, "img/s", true, per_second(t, double(batch))}};
          }};
}

std::vector<Metric> eval_b128(const Config& c) {
  Setup s = resnet_setup(128);
  s.net.eval();
  NoGrad ng;
  auto t = time_reps(c.reps, [&] { s.net(s.x); });
  return {{"resnet18_eval_b128", "img/s", true, per_second(t, 128.0)}};
}

// One forward+backward, and as ratios to it (measured back to back in each repetition):
// the gradient with create_graph, one HVP (reverse over reverse), one Hutchinson sample
// vᵀHv with a fresh Rademacher v.
std::vector<Metric> second_order_b32(const Config& c) {
  Setup s = resnet_setup(32);
  Generator gen(2);
  const Params v = gen.rademacher_like(s.params);
  auto loss = [&] { return classification_loss(s.net(s.x), s.y); };
  auto fwd_bwd = [&] { grad({loss()}, s.params); };
  auto grad_cg = [&] { grad({loss()}, s.params, {.create_graph = true}); };
  auto hvp = [&] {
    Params g = grad({loss()}, s.params, {.create_graph = true});
    grad({dot(g, v)}, s.params);
  };
  auto hutchinson = [&] {
    const Params w = gen.rademacher_like(s.params);
    Params g = grad({loss()}, s.params, {.create_graph = true});
    Params hw = grad({dot(g, w)}, s.params);
    NoGrad ng;
    return dot(hw, w).item();
  };
  fwd_bwd(), grad_cg(), hvp(), hutchinson();  // warm-up
  std::vector<double> base, rc, rh, rt;
  for (int r = 0; r < c.reps; ++r) {
    const double tb = time_once(fwd_bwd), tc = time_once(grad_cg), th = time_once(hvp), tt = time_once(hutchinson);
    base.push_back(tb);
    rc.push_back(tc / tb);
    rh.push_back(th / tb);
    rt.push_back(tt / tb);
  }
  return {{"resnet18_fwd_bwd_b32", "s", false, base},
          {"resnet18_grad_create_graph_ratio_b32", "x fwd+bwd", false, rc},
          {"resnet18_hvp_ratio_b32", "x fwd+bwd", false, rh},
          {"resnet18_hutchinson_ratio_b32", "x fwd+bwd", false, rt}};
}

}  // namespace

std::vector<Group> resnet_groups() {
  return {step_group("resnet_step_b32", "resnet18_step_b32", 32, 3, 32),
          step_group("resnet_step_b128", "resnet18_step_b128", 128, 3, 32),
          {"resnet_eval_b128", eval_b128},
          {"resnet_second_order_b32", second_order_b32},
          step_group("resnet_1x28_step_b128", "resnet18_1x28_step_b128", 128, 1, 28)};
}

}  // namespace flatmin::bench
