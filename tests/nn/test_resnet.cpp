// ResNet-18: parameter counts and names against an independent PyTorch definition with
// torchvision's names, loss/gradient/HVP against PyTorch (tests/reference/resnet18_reference.py),
// HVP and third-order contraction against finite differences, state-dict round trip.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "autodiff/autodiff.hpp"
#include "nn/nn.hpp"

using namespace flatmin;

namespace {
const std::string reference_dir = std::string(FLATMIN_SOURCE_DIR) + "/tests/reference/resnet18/";

std::vector<std::string> lines(const std::string& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path);
  std::vector<std::string> r;
  for (std::string s; std::getline(in, s);)
    if (!s.empty()) r.push_back(s);
  return r;
}
std::vector<std::string> keys(const nn::NamedTensors& t) {
  std::vector<std::string> r;
  for (auto& [n, x] : t) r.push_back(n);
  return r;
}
// ‖a − b‖ / ‖b‖ over tensors of one shape
double rel_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  auto x = a.to_vector(), y = b.to_vector();
  double d = 0, n = 0;
  for (size_t i = 0; i < x.size(); ++i) d += (x[i] - y[i]) * (x[i] - y[i]), n += y[i] * y[i];
  return n == 0 ? std::sqrt(d) : std::sqrt(d / n);
}
}  // namespace

TEST_CASE("resnet18: parameter counts (torchvision's and the CIFAR form's), torchvision's initialisation") {
  auto cifar = nn::resnet18({.classes = 10, .stem = nn::Stem::cifar});
  CHECK(cifar.num_parameters() == 11'173'962);
  // convs: kaiming_normal_(mode='fan_out', nonlinearity='relu'): std sqrt(2 / (512·3·3)); norms 1 and 0
  CHECK(std::sqrt(mean(square(cifar.param("layer4.0.conv2.weight"))).item()) ==
        doctest::Approx(std::sqrt(2.0 / (512 * 9))).epsilon(0.01));
  CHECK(cifar.param("layer4.0.bn2.weight").to_vector() == std::vector<double>(512, 1.0));
  CHECK(cifar.param("layer4.0.bn2.bias").to_vector() == std::vector<double>(512, 0.0));
  CHECK(nn::resnet18({.classes = 1000, .stem = nn::Stem::imagenet}).num_parameters() == 11'689'512);
  CHECK(nn::resnet18({.classes = 10, .stem = nn::Stem::cifar, .norm = nn::Norm::group}).num_parameters() == 11'173'962);
  // norm none: the 9,600 norm weights and biases are gone (count from the PyTorch script)
  CHECK(nn::resnet18({.classes = 10, .stem = nn::Stem::cifar, .norm = nn::Norm::none}).num_parameters() == 11'164'362);
}

TEST_CASE("resnet18: state-dict names are torchvision's") {
  // the names do not depend on the width: a narrow model builds fast
  for (const char* stem : {"cifar", "imagenet"})
    for (const char* norm : {"batch", "group", "none"}) {
      INFO(stem << " " << norm);
      auto net = nn::resnet18({.classes = std::string(stem) == "cifar" ? 10 : 1000,
                               .stem = nn::parse_stem(stem),
                               .width = 4,
                               .norm = nn::parse_norm(norm)});
      CHECK(keys(net.state_dict()) == lines(reference_dir + "names_" + stem + "_" + norm + ".txt"));
    }
}

TEST_CASE("resnet18: loss, gradient and HVP agree with PyTorch to 1e-8 (float64, width 2, both layouts)") {
  for (const bool channels_last : {false, true})
    for (const char* stem : {"cifar", "imagenet"})
      for (auto [norm, mode] :
           {std::pair{"batch", "train"}, {"batch", "eval"}, {"group", "train"}, {"none", "train"}}) {
        const std::string cfg = std::string(stem) + "_" + norm + "_" + mode;
        INFO(cfg << (channels_last ? " channels-last" : ""));
        auto net = nn::resnet18({.in_channels = std::string(stem) == "cifar" ? 3 : 1,
                                 .classes = 5,
                                 .stem = nn::parse_stem(stem),
                                 .width = 2,
                                 .norm = nn::parse_norm(norm),
                                 .channels_last = channels_last});
        net.to(DType::f64);
        nn::load_safetensors(net, reference_dir + cfg + ".weights.safetensors");
        net.train(std::string(mode) == "train").update_running_stats(false);
        auto batch = nn::load_safetensors(reference_dir + cfg + ".batch.safetensors");
        auto v_file = nn::load_safetensors(reference_dir + cfg + ".v.safetensors");
        auto expected = nn::load_safetensors(reference_dir + cfg + ".expected.safetensors");
        Params v;
        for (auto& [name, p] : net.named_parameters()) v.push_back(v_file.at(name));
        ScalarFn f = nn::classification_loss(net, batch.at("input"), batch.at("target"));
        const Params x = net.parameters();
        CHECK(std::fabs(value(f, x).item() - expected.at("loss").item()) <=
              1e-12 * std::fabs(expected.at("loss").item()));
        Params g = gradient(f, x), hv = hvp(f, x, v);
        auto named = net.named_parameters();
        double worst = 0;
        for (size_t i = 0; i < named.size(); ++i) {
          INFO(named[i].first);
          const double dg = rel_diff(g[i], expected.at("grad/" + named[i].first));
          const double dh = rel_diff(hv[i], expected.at("hvp/" + named[i].first));
          CHECK(dg < 1e-8);
          CHECK(dh < 1e-8);
          worst = std::max({worst, dg, dh});
        }
        MESSAGE(cfg << ": worst relative difference of a gradient or HVP tensor to PyTorch " << worst);
        // the probe must not have moved the running statistics
        auto weights = nn::load_safetensors(reference_dir + cfg + ".weights.safetensors");
        for (auto& [name, b] : net.named_buffers()) CHECK(rel_diff(b, weights.at(name)) == 0);
      }
}

// float32 on the CPU: channels-last runs oneDNN's NHWC kernels (where the build has oneDNN)
// and batch norm's rank-2 kernels, NCHW the blocked kernels: the same function, so loss,
// gradient and HVP agree to float32 rounding.
TEST_CASE("resnet18: channels-last and NCHW give the same loss, gradient and HVP (float32)") {
  Generator g(5);
  for (auto [norm, stem] : {std::pair{nn::Norm::batch, nn::Stem::cifar},
                            {nn::Norm::group, nn::Stem::cifar},
                            {nn::Norm::batch, nn::Stem::imagenet}}) {
    INFO("norm " << int(norm) << " stem " << int(stem));
    Tensor x = g.normal({6, 3, 16, 16});
    Tensor y = from_ints({0, 2, 1, 2, 0, 1}, {6});
    auto make = [&](bool cl) {
      auto net = nn::resnet18(
          {.in_channels = 3, .classes = 3, .stem = stem, .width = 8, .norm = norm, .seed = 9, .channels_last = cl});
      net.train().update_running_stats(false);
      return net;
    };
    auto plain = make(false), last = make(true);
    ScalarFn fp = nn::classification_loss(plain, x, y), fl = nn::classification_loss(last, x, y);
    const Params p = plain.parameters(), q = last.parameters();
    const Params v = Generator(2).normal_like(p);
    CHECK(value(fl, q).item() == doctest::Approx(value(fp, p).item()).epsilon(1e-5));
    const Params gp = gradient(fp, p), gl = gradient(fl, q), hp = hvp(fp, p, v), hl = hvp(fl, q, v);
    for (size_t i = 0; i < p.size(); ++i) {
      CHECK(rel_diff(gl[i], gp[i]) < 1e-4);
      CHECK(rel_diff(hl[i], hp[i]) < 1e-3);
    }
  }
}

// ResNet::forward runs each batch norm followed by ReLU as one op (BatchNorm2d::forward_relu);
// this is the same network with every layer called on its own (batch norm, then ReLU).
Tensor unfused_forward(nn::ResNet& net, const Tensor& x) {
  const bool cl = net.options.channels_last;
  auto relu_of = [](nn::Module& norm, const Tensor& t) { return relu(norm.forward(t)); };
  Tensor y = relu_of(net.child("bn1"), net.child("conv1").forward(cl ? permute(x, {0, 2, 3, 1}) : x));
  REQUIRE(net.options.stem == nn::Stem::cifar);
  for (const char* layer : {"layer1", "layer2", "layer3", "layer4"})
    for (const char* block : {"0", "1"}) {
      nn::Module& b = net.child(std::string(layer) + "." + block);
      Tensor out = relu_of(b.child("bn1"), b.child("conv1").forward(y));
      out = b.child("bn2").forward(b.child("conv2").forward(out));
      bool has_downsample = false;
      for (auto& [name, m] : b.children()) has_downsample |= name == "downsample";
      y = relu(add(out, has_downsample ? b.child("downsample").forward(y) : y));
    }
  y = cl ? mean(y, {1, 2}) : flatten(net.child("avgpool").forward(y), 1);
  return net.child("fc").forward(y);
}

TEST_CASE("resnet18: batch norm + ReLU fused gives the unfused network's loss, gradient and HVP (float64)") {
  Generator g(8);
  Tensor x = g.normal({4, 3, 8, 8}, {DType::f64});
  Tensor y = from_ints({0, 2, 1, 2}, {4});
  for (bool cl : {false, true})
    for (bool training : {true, false}) {
      INFO("channels_last " << cl << " training " << training);
      auto net = nn::resnet18({.classes = 3, .stem = nn::Stem::cifar, .width = 2, .seed = 4, .channels_last = cl});
      net.to(DType::f64).train(training).update_running_stats(false);
      if (!training)  // running statistics away from their initial 0 and 1
        for (auto& [name, t] : net.named_buffers())
          if (name.find("running") != std::string::npos)
            t.copy_(name.find("mean") != std::string::npos ? g.normal(t.shape(), {DType::f64}, 0, 0.3)
                                                           : g.uniform(t.shape(), {DType::f64}, 0.5, 2.0));
      ScalarFn fused = nn::classification_loss(net, x, y);
      ScalarFn plain = [&](const Params& p) {
        nn::WithParameters w(net, p);
        return cross_entropy(unfused_forward(net, x), y);
      };
      const Params p = net.parameters(), v = Generator(3).normal_like(p);
      CHECK(value(fused, p).item() == doctest::Approx(value(plain, p).item()).epsilon(1e-13));
      const Params gf = gradient(fused, p), gp = gradient(plain, p), hf = hvp(fused, p, v), hp = hvp(plain, p, v);
      for (size_t i = 0; i < p.size(); ++i) {
        CHECK(rel_diff(gf[i], gp[i]) < 1e-12);
        CHECK(rel_diff(hf[i], hp[i]) < 1e-12);
      }
    }
}

TEST_CASE("resnet18: HVP and third-order contraction against finite differences (smooth activations)") {
  Generator g(3);
  Tensor x = g.normal({4, 3, 8, 8}, {DType::f64});
  Tensor y = from_ints({0, 2, 1, 2}, {4});
  for (auto [norm, act] : {std::pair{nn::Norm::batch, nn::Act::tanh},
                           {nn::Norm::group, nn::Act::softplus},
                           {nn::Norm::none, nn::Act::tanh}}) {
    INFO("norm " << int(norm) << " activation " << nn::act_name(act));
    auto net =
        nn::resnet18({.classes = 3, .stem = nn::Stem::cifar, .width = 2, .norm = norm, .activation = act, .seed = 7});
    net.to(DType::f64).train().update_running_stats(false);  // training-mode batch norm: batch statistics
    DerivativeCheck c = check_derivatives(nn::classification_loss(net, x, y), net.parameters(),
                                          {.max_order = 3, .directions = 1, .seed = 11});
    INFO(c.message);
    MESSAGE("finite-difference errors, orders 1-3: " << c.error[0] << " " << c.error[1] << " " << c.error[2]);
    CHECK(c.ok);
  }
}

TEST_CASE("resnet18: the README example (define, forward, loss, gradient, HVP, third order)") {
  auto net =
      nn::resnet18({.in_channels = 3, .classes = 10, .stem = nn::Stem::cifar, .width = 4, .norm = nn::Norm::group});
  Generator gen(0);
  Tensor x = gen.normal({8, 3, 32, 32});
  Tensor y = from_ints({0, 1, 2, 3, 4, 5, 6, 7}, {8});
  Tensor logits = net(x);  // (8, 10)
  Tensor loss = cross_entropy(logits, y);
  Params p = net.parameters();
  Params g = grad({loss}, p, {.create_graph = true});  // differentiable gradient
  Params v = gen.sphere_like(p);
  Params Hv = grad({dot(g, v)}, p, {.create_graph = true});  // H v
  Params T = grad({dot(Hv, v)}, p);                          // ∇³f[v, v]
  // the same through the functional API
  ScalarFn f = nn::classification_loss(net, x, y);
  Params Hv2 = hvp(f, p, v);
  CHECK(logits.shape() == Shape{8, 10});
  CHECK(dot(detach(Hv), v).item() == doctest::Approx(dot(Hv2, v).item()).epsilon(1e-4));
  CHECK(std::isfinite(norm(T).item()));
}

TEST_CASE("resnet18: state dict round trip through safetensors") {
  auto a = nn::resnet18({.in_channels = 1, .classes = 4, .stem = nn::Stem::imagenet, .width = 4, .seed = 1});
  auto b = nn::resnet18({.in_channels = 1, .classes = 4, .stem = nn::Stem::imagenet, .width = 4, .seed = 2});
  Tensor x = Generator(9).normal({2, 1, 16, 16});
  a(x);  // a training step's forward moves a's running statistics away from b's
  a.eval();
  b.eval();
  CHECK(rel_diff(a(x), b(x)) > 1e-3);
  const std::string path = (std::filesystem::temp_directory_path() / "flatmin_test_resnet.safetensors").string();
  nn::save_safetensors(a, path);
  nn::load_safetensors(b, path);
  std::filesystem::remove(path);
  CHECK(rel_diff(b(x), a(x)) == 0);
  auto sa = a.state_dict(), sb = b.state_dict();
  for (size_t i = 0; i < sa.size(); ++i) {
    INFO(sa[i].first);
    CHECK(sa[i].second.to_vector() == sb[i].second.to_vector());
  }
}
