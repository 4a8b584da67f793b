// Network ops and ResNet-18 on CUDA: each nn op against the CPU at derivative orders 0-3,
// and a ResNet-18's loss, gradient and HVP against the PyTorch reference files (the same
// files tests/nn/test_resnet.cpp checks the CPU against).
#include "autodiff/nn_ops.hpp"
#include "nn/nn.hpp"
#include "tests/gpu/gpu_parity.hpp"

using namespace flatmin;
using namespace flatmin::gpu_test;

namespace {

struct Case {
  std::string name;
  std::vector<Shape> shapes;
  std::function<Tensor(const Params&, Device)> op;
  bool distinct = false;  // inputs far from ties (pooling maxima)
};

std::vector<Case> cases() {
  using P = const Params&;
  return {
      {"conv2d stride 2 pad 1 + bias", {{2, 3, 7, 6}, {4, 3, 3, 3}, {4}},
       [](P x, Device) { return conv2d(x[0], x[1], x[2], {.stride = 2, .padding = 1}); }},
      {"conv2d 1x1", {{2, 5, 4, 4}, {3, 5, 1, 1}}, [](P x, Device) { return conv2d(x[0], x[1]); }},
      {"conv2d_input_grad", {{2, 4, 4, 3}, {4, 3, 3, 3}},
       [](P x, Device) { return conv2d_input_grad(x[0], x[1], {2, 3, 7, 6}, {.stride = 2, .padding = 1}); }},
      {"conv2d_weight_grad", {{2, 3, 7, 6}, {2, 4, 4, 3}},
       [](P x, Device) { return conv2d_weight_grad(x[0], x[1], {4, 3, 3, 3}, {.stride = 2, .padding = 1}); }},
      // 3x3 stride-1 with >= 32 channels: the Winograd kernels on both devices
      {"conv2d Winograd pad 1, odd plane", {{2, 32, 5, 7}, {33, 32, 3, 3}},
       [](P x, Device) { return conv2d(x[0], x[1], {}, {.stride = 1, .padding = 1}); }},
      {"conv2d Winograd pad 0", {{2, 33, 6, 5}, {32, 33, 3, 3}}, [](P x, Device) { return conv2d(x[0], x[1]); }},
      {"conv2d_input_grad Winograd pad 2", {{2, 32, 7, 6}, {32, 33, 3, 3}},
       [](P x, Device) { return conv2d_input_grad(x[0], x[1], {2, 33, 5, 4}, {.stride = 1, .padding = 2}); }},
      {"conv2d_weight_grad Winograd pad 1", {{3, 32, 5, 5}, {3, 32, 5, 5}},
       [](P x, Device) { return conv2d_weight_grad(x[0], x[1], {32, 32, 3, 3}, {.stride = 1, .padding = 1}); }},
      {"max_pool2d 3/2/1", {{2, 3, 7, 6}},
       [](P x, Device) { return max_pool2d(x[0], {.kernel = 3, .stride = 2, .padding = 1}); }, true},
      {"max_pool2d 2", {{1, 2, 6, 6}}, [](P x, Device) { return max_pool2d(x[0], {.kernel = 2}); }, true},
      {"avg_pool2d 3/2/1", {{2, 3, 7, 6}},
       [](P x, Device) { return avg_pool2d(x[0], {.kernel = 3, .stride = 2, .padding = 1}); }},
      {"adaptive_avg_pool2d", {{2, 3, 5, 4}}, [](P x, Device) { return adaptive_avg_pool2d(x[0], 1, 1); }},
      {"batch_norm training 4-d", {{4, 3, 3, 2}, {3}, {3}},
       [](P x, Device d) {
         Tensor rm = zeros({3}, {x[0].dtype(), d}), rv = ones({3}, {x[0].dtype(), d});
         return batch_norm(x[0], x[1], x[2], rm, rv, true, false);
       }},
      {"batch_norm training 2-d", {{6, 4}, {4}, {4}},
       [](P x, Device d) {
         Tensor rm = zeros({4}, {x[0].dtype(), d}), rv = ones({4}, {x[0].dtype(), d});
         return batch_norm(x[0], x[1], x[2], rm, rv, true, false);
       }},
      {"group_norm", {{2, 6, 3, 2}, {6}, {6}}, [](P x, Device) { return group_norm(x[0], 3, x[1], x[2]); }},
      {"cross_entropy", {{5, 4}},
       [](P x, Device d) { return cross_entropy(x[0], from_ints({3, 0, 1, 3, 2}, {5}, d)); }},
      {"cross_entropy sum", {{3, 6}},
       [](P x, Device d) { return cross_entropy(x[0], from_ints({5, 0, 2}, {3}, d), Reduction::sum); }},
      {"mse_loss", {{3, 4}, {3, 4}}, [](P x, Device) { return mse_loss(x[0], x[1]); }},
  };
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("network ops: CUDA matches CPU in value and derivatives of orders 1-3") {
    for (const Case& c : cases()) {
      Params x;
      Generator g(17);
      for (size_t i = 0; i < c.shapes.size(); ++i)
        x.push_back(c.distinct ? distinct_values(c.shapes[i], 30 + i, 3.0) : g.uniform(c.shapes[i], {DType::f64}, -1, 1));
      Shape out_shape;
      {
        NoGrad ng;
        out_shape = c.op(x, Device::cpu()).shape();
      }
      const DeviceFn f = harness(c.op, out_shape);
      check_parity(c.name, f, x, DType::f64);
      check_parity(c.name, f, x, DType::f32);
    }
  }

  TEST_CASE("resnet18 on CUDA: loss, gradient and HVP equal PyTorch's to 1e-8 (float64, width 2)") {
    const std::string dir = std::string(FLATMIN_SOURCE_DIR) + "/tests/reference/resnet18/";
    for (auto [stem, norm, mode] : {std::tuple{"cifar", "batch", "train"}, {"cifar", "group", "train"},
                                     {"cifar", "none", "train"}, {"imagenet", "batch", "eval"}}) {
      const std::string c = std::string(stem) + "_" + norm + "_" + mode;
      INFO(c);
      auto net = nn::resnet18({.in_channels = std::string(stem) == "cifar" ? 3 : 1, .classes = 5,
                               .stem = nn::parse_stem(stem), .width = 2, .norm = nn::parse_norm(norm)});
      net.to(DType::f64);
      nn::load_safetensors(net, dir + c + ".weights.safetensors");
      net.to(kCuda).train(std::string(mode) == "train").update_running_stats(false);
      auto batch = nn::load_safetensors(dir + c + ".batch.safetensors");
      auto v_file = nn::load_safetensors(dir + c + ".v.safetensors");
      auto expected = nn::load_safetensors(dir + c + ".expected.safetensors");
      Params v;
      for (auto& [name, p] : net.named_parameters()) v.push_back(v_file.at(name).to(kCuda));
      const Tensor input = batch.at("input").to(kCuda), target = batch.at("target").to(kCuda);
      ScalarFn f = nn::classification_loss(net, input, target);
      const Params x = net.parameters();
      REQUIRE(x[0].device() == kCuda);
      const double loss = expected.at("loss").item();
      CHECK(std::fabs(value(f, x).item() - loss) <= 1e-12 * std::fabs(loss));
      const Params gr = gradient(f, x), hv = hvp(f, x, v);
      auto named = net.named_parameters();
      for (size_t i = 0; i < named.size(); ++i) {
        INFO(named[i].first);
        CHECK(rel_diff(gr[i], expected.at("grad/" + named[i].first)) < 1e-8);
        CHECK(rel_diff(hv[i], expected.at("hvp/" + named[i].first)) < 1e-8);
      }
    }
  }

  TEST_CASE("resnet18 on CUDA: float32 and float64 agree with the CPU (cifar stem, width 8, batch 8)") {
    Generator g(5);
    const Tensor x = g.normal({8, 3, 16, 16}, {DType::f64});
    const Tensor y = from_ints({0, 1, 2, 3, 4, 5, 6, 7}, {8});
    for (nn::Norm norm : {nn::Norm::batch, nn::Norm::group})
    for (DType t : {DType::f64, DType::f32}) {
      INFO(dtype_name(t) << (norm == nn::Norm::batch ? " batch norm" : " group norm"));
      auto cpu_net = nn::resnet18({.classes = 8, .stem = nn::Stem::cifar, .width = 8, .norm = norm, .seed = 3});
      auto gpu_net = nn::resnet18({.classes = 8, .stem = nn::Stem::cifar, .width = 8, .norm = norm, .seed = 3});
      cpu_net.to(t).train().update_running_stats(false);
      gpu_net.to(t).to(kCuda).train().update_running_stats(false);
      ScalarFn fc = nn::classification_loss(cpu_net, x.to(t), y);
      const Tensor xg = x.to(t).to(kCuda), yg = y.to(kCuda);
      ScalarFn fg = nn::classification_loss(gpu_net, xg, yg);
      const Params pc = cpu_net.parameters(), pg = gpu_net.parameters();
      Generator gv(8);
      const Params vc = gv.sphere_like(pc);
      Params vg;
      for (const Tensor& v : vc) vg.push_back(v.to(kCuda));
      const double tol = t == DType::f64 ? 1e-10 : 2e-3;
      CHECK(rel_diff(value(fg, pg), value(fc, pc)) <= tol);
      // over all parameters together: a few gradients are at rounding level (scale invariance)
      CHECK(rel_diff(flatten(gradient(fg, pg)), flatten(gradient(fc, pc))) <= tol);
      CHECK(rel_diff(flatten(hvp(fg, pg, vg)), flatten(hvp(fc, pc, vc))) <= (t == DType::f64 ? 1e-9 : 1e-2));
    }
  }
}
