// flatmin_gpu_bench: throughput of a ResNet-18 training step and of one Hessian-vector
// product on a CUDA device, plus GEMM and convolution kernel rates. Prints one
// "RESULT key=value ..." line per measurement (scripts/gpu_check.sh collects them).
//   flatmin_gpu_bench [--device cuda:0] [--batch 128] [--width 64] [--steps 10] [--repeats 3] [--dtype f32]
//                     [--gemm 4096] [--layers 1]
// --dtype bf16: float32 tensors with bfloat16 convolutions (Bf16Convolutions: cuDNN's tensor
// cores, float32 everywhere else), the counterpart of PyTorch's bf16 autocast.
// Times are medians over --repeats runs of --steps calls (ms_min/ms_max: the extremes).
// --layers 1 times instead each distinct convolution of the CIFAR ResNet-18 (forward, input
// gradient, weight gradient) on every CUDA convolution engine this build has.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "autodiff/autodiff.hpp"
#include "autodiff/backend.hpp"
#include "autodiff/cuda/cuda_entry.hpp"
#include "autodiff/nn_ops.hpp"
#include "nn/nn.hpp"

using namespace flatmin;

namespace {

struct Options {
  Device device = Device::cuda(0);
  int64_t batch = 128, width = 64, steps = 10, gemm = 4096, repeats = 3;
  bool layers = false;
  DType dtype = DType::f32;
  bool bf16 = false;  // --dtype bf16
  const char* label() const { return bf16 ? "bf16" : dtype_name(dtype); }
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) throw Error("option " + a + " needs a value");
    const std::string v = argv[++i];
    if (a == "--device")
      o.device = Device::parse(v);
    else if (a == "--batch")
      o.batch = std::stoll(v);
    else if (a == "--width")
      o.width = std::stoll(v);
    else if (a == "--steps")
      o.steps = std::stoll(v);
    else if (a == "--gemm")
      o.gemm = std::stoll(v);
    else if (a == "--repeats")
      o.repeats = std::stoll(v);
    else if (a == "--layers")
      o.layers = v == "1";
    else if (a == "--dtype") {
      if (v != "f32" && v != "f64" && v != "bf16") throw Error("--dtype must be f32, f64 or bf16, got " + v);
      o.dtype = v == "f64" ? DType::f64 : DType::f32;
      o.bf16 = v == "bf16";
    } else
      throw Error("unknown option " + a);
  }
  if (o.batch < 1 || o.width < 1 || o.steps < 1 || o.gemm < 1 || o.repeats < 1)
    throw Error("batch, width, steps, repeats and gemm must be >= 1");
  return o;
}

// Seconds per call of fn: after `warmup` calls, `repeats` runs of `calls` calls, the device
// drained before each clock read; the median run, and the fastest and slowest.
struct Timing {
  double median, min, max;
};
template <class F> Timing seconds_per_call(Device d, int64_t calls, int64_t warmup, int64_t repeats, F&& fn) {
  for (int64_t i = 0; i < warmup; ++i) fn();
  std::vector<double> runs;
  for (int64_t r = 0; r < repeats; ++r) {
    backend(d).synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < calls; ++i) fn();
    backend(d).synchronize();
    runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(calls));
  }
  std::sort(runs.begin(), runs.end());
  return {runs[runs.size() / 2], runs.front(), runs.back()};
}

void gemm_rate(const Options& o) {
  const int64_t n = o.gemm;
  Generator g(1);
  const Tensor a = g.normal({n, n}, {o.dtype, o.device}), b = g.normal({n, n}, {o.dtype, o.device});
  NoGrad ng;
  const double s = seconds_per_call(o.device, 10, 2, o.repeats, [&] { (void)matmul(a, b); }).median;
  std::printf("RESULT bench=gemm n=%lld dtype=%s ms=%.3f tflops=%.2f\n", (long long)n, dtype_name(o.dtype), s * 1e3,
              2.0 * double(n) * double(n) * double(n) / s / 1e12);
}

void conv_rate(const Options& o) {
  // The widest 3x3 layer of the CIFAR ResNet-18's first stage.
  Generator g(2);
  const Tensor x = g.normal({o.batch, o.width, 32, 32}, {o.dtype, o.device});
  const Tensor w = g.normal({o.width, o.width, 3, 3}, {o.dtype, o.device});
  NoGrad ng;
  const double s =
      seconds_per_call(o.device, 10, 2, o.repeats, [&] { (void)conv2d(x, w, {}, {.stride = 1, .padding = 1}); }).median;
  const double flops = 2.0 * double(o.batch) * double(o.width * o.width * 9) * 32 * 32;
  std::printf("RESULT bench=conv3x3 shape=%lldx%lldx32x32 dtype=%s ms=%.3f tflops=%.2f\n", (long long)o.batch,
              (long long)o.width, o.label(), s * 1e3, flops / s / 1e12);
}

void resnet_rates(const Options& o) {
  auto net = nn::resnet18({.classes = 10, .stem = nn::Stem::cifar, .width = o.width, .seed = 0});
  net.to(o.dtype).to(o.device).train();
  Generator g(3);
  const Tensor x = g.normal({o.batch, 3, 32, 32}, {o.dtype, o.device});
  std::vector<int64_t> labels(size_t(o.batch));
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = int64_t(i % 10);
  const Tensor y = from_ints(labels, {o.batch}, o.device);
  ScalarFn f = nn::classification_loss(net, x, y);

  // Training step: loss and gradient, then plain SGD in place.
  double loss = 0;
  const Timing step = seconds_per_call(o.device, o.steps, 2, o.repeats, [&] {
    Params p = net.parameters();
    Params gr = gradient(f, p);
    NoGrad ng;
    for (size_t i = 0; i < p.size(); ++i) p[i].add_(gr[i], -0.01);
  });
  loss = value(f, net.parameters()).item();
  std::printf(
      "RESULT bench=resnet18_train_step batch=%lld width=%lld dtype=%s ms=%.2f images_per_s=%.1f loss=%.4f ms_min=%.2f "
      "ms_max=%.2f\n",
      (long long)o.batch, (long long)o.width, o.label(), step.median * 1e3, double(o.batch) / step.median, loss,
      step.min * 1e3, step.max * 1e3);

  // One Hessian-vector product (reverse over reverse), batch statistics kept fixed.
  net.update_running_stats(false);
  const Params p = net.parameters();
  const Params v = Generator(4).sphere_like(p);
  const Timing h = seconds_per_call(o.device, o.steps, 1, o.repeats, [&] { (void)hvp(f, p, v); });
  std::printf(
      "RESULT bench=resnet18_hvp batch=%lld width=%lld dtype=%s ms=%.2f images_per_s=%.1f ms_min=%.2f ms_max=%.2f\n",
      (long long)o.batch, (long long)o.width, o.label(), h.median * 1e3, double(o.batch) / h.median, h.min * 1e3,
      h.max * 1e3);
}

// Each distinct convolution of the CIFAR ResNet-18 (count = how many it has), each direction,
// on each engine: where cuDNN's choice beats flatmin's own kernels and where not.
void layer_rates(const Options& o) {
  struct Layer {
    const char* name;
    int count;
    int64_t C, O, H, K, stride;
  };
  const int64_t W = o.width;
  const Layer layers[] = {{"stem", 1, 3, W, 32, 3, 1},
                          {"l1", 4, W, W, 32, 3, 1},
                          {"l2.down3x3", 1, W, 2 * W, 32, 3, 2},
                          {"l2.down1x1", 1, W, 2 * W, 32, 1, 2},
                          {"l2", 3, 2 * W, 2 * W, 16, 3, 1},
                          {"l3.down3x3", 1, 2 * W, 4 * W, 16, 3, 2},
                          {"l3.down1x1", 1, 2 * W, 4 * W, 16, 1, 2},
                          {"l3", 3, 4 * W, 4 * W, 8, 3, 1},
                          {"l4.down3x3", 1, 4 * W, 8 * W, 8, 3, 2},
                          {"l4.down1x1", 1, 4 * W, 8 * W, 8, 1, 2},
                          {"l4", 3, 8 * W, 8 * W, 4, 3, 1}};
  std::vector<std::pair<const char*, cuda::ConvEngine>> engines;
  if (!o.bf16) engines.push_back({"native", cuda::ConvEngine::native});  // no bfloat16 kernels of its own
  if (cuda::cudnn_compiled())
    engines.insert(engines.begin(), {{"auto", cuda::ConvEngine::automatic},
                                     {"cudnn", cuda::ConvEngine::cudnn},
                                     {"cudnn-benchmark", cuda::ConvEngine::cudnn_benchmark}});
  const cuda::ConvEngine before = cuda::conv_engine();
  Backend& b = backend(o.device);
  for (const Layer& l : layers) {
    const int64_t OH = (l.H + 2 * (l.K / 2) - l.K) / l.stride + 1;
    const Conv2dParams p{l.stride, l.stride, l.K / 2, l.K / 2, o.bf16};
    Generator g(5);
    const Tensor x = g.normal({o.batch, l.C, l.H, l.H}, {o.dtype, o.device});
    const Tensor w = g.normal({l.O, l.C, l.K, l.K}, {o.dtype, o.device});
    const Tensor gy = g.normal({o.batch, l.O, OH, OH}, {o.dtype, o.device});
    Tensor y = empty({o.batch, l.O, OH, OH}, {o.dtype, o.device}), gx = empty(x.shape(), {o.dtype, o.device}),
           gw = empty(w.shape(), {o.dtype, o.device});
    const double flops = 2.0 * double(o.batch * l.O * OH * OH) * double(l.C * l.K * l.K);
    for (const auto& [name, e] : engines) {
      cuda::set_conv_engine(e);
      const std::pair<const char*, std::function<void()>> dirs[] = {
          {"fwd", [&] { b.conv2d(x, w, y, p); }},
          {"input_grad", [&] { b.conv2d_input_grad(gy, w, gx, p); }},
          {"weight_grad", [&] { b.conv2d_weight_grad(x, gy, gw, p); }}};
      for (const auto& [dir, fn] : dirs) {
        const Timing t = seconds_per_call(o.device, o.steps, 2, o.repeats, fn);
        std::printf("RESULT bench=conv_layer layer=%s count=%d dir=%s engine=%s ms=%.4f tflops=%.2f\n", l.name, l.count,
                    dir, name, t.median * 1e3, flops / t.median / 1e12);
      }
    }
  }
  cuda::set_conv_engine(before);
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each RESULT line reaches the log at once
  try {
    const Options o = parse(argc, argv);
    backend(o.device);  // a clear error now if the device is not usable
    Bf16Convolutions bf16(o.bf16);
    std::printf("flatmin_gpu_bench on %s: batch %lld, width %lld, %s, %lld steps\n", o.device.str().c_str(),
                (long long)o.batch, (long long)o.width, o.label(), (long long)o.steps);
    if (o.layers) {
      layer_rates(o);
      return 0;
    }
    gemm_rate(o);
    conv_rate(o);
    resnet_rates(o);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flatmin_gpu_bench: %s\n", e.what());
    return 1;
  }
}
