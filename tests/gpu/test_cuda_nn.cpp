// ResNet-18 on CUDA: loss, gradient and HVP against the PyTorch reference files (the same
// files tests/nn/test_resnet.cpp checks the CPU against), and against the CPU. The network
// ops one by one are cases of tests/op_cases.cpp, run by test_cuda_ops.cpp.
#include "autodiff/nn_ops.hpp"
#include "nn/nn.hpp"
#include "tests/gpu/gpu_parity.hpp"

using namespace flatmin;
using namespace flatmin::gpu_test;

TEST_SUITE("gpu") {
  TEST_CASE("resnet18 on CUDA: loss, gradient and HVP equal PyTorch's to 1e-8 (float64, width 2)") {
    const std::string dir = std::string(FLATMIN_SOURCE_DIR) + "/tests/reference/resnet18/";
    for (auto [stem, norm, mode] : {std::tuple{"cifar", "batch", "train"},
                                    {"cifar", "group", "train"},
                                    {"cifar", "none", "train"},
                                    {"imagenet", "batch", "eval"}}) {
      const std::string c = std::string(stem) + "_" + norm + "_" + mode;
      INFO(c);
      auto net = nn::resnet18({.in_channels = std::string(stem) == "cifar" ? 3 : 1,
                               .classes = 5,
                               .stem = nn::parse_stem(stem),
                               .width = 2,
                               .norm = nn::parse_norm(norm)});
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
