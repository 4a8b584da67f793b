// Times the CPU convolution kernels (forward, input gradient, weight gradient) on the 20
// convolutions of ResNet-18 in its CIFAR form (3x32x32 input), float32.
//   ./build/bench/conv_bench [--batch 128] [--threads 2] [--reps 3] [--input 32] [--width 64] [--layer l4] [--bf16 1]
//                            [--channels-last 1]
// --input 28 gives the 1x28x28 (Fashion-MNIST) variant's planes (28, 14, 7, 4) with a
// 1-channel stem; --width W scales the stage widths 64..512 to W..8W (`flatmin escape`'s
// model: --input 28 --width 8 --batch 64); --layer keeps the layers whose name starts with
// the given text.
// Prints per layer the median wall time of each kernel and its GFLOP/s, the GFLOP/s of one
// plain GEMM of the layer's shape (the ceiling im2col + GEMM can reach, measured under the
// same conditions), then the totals and the CPU time the same runs took.
#include <sys/resource.h>
#include <tbb/global_control.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "autodiff/autodiff.hpp"

using namespace flatmin;

namespace {
struct Layer {
  const char* name;
  int count;  // how many convolutions of ResNet-18 have this shape
  int64_t C, O, H, K, stride;
};
// input plane H x H; padding 1 for 3x3, 0 for 1x1
const std::vector<Layer> resnet18_cifar = {
    {"stem", 1, 3, 64, 32, 3, 1},      {"l1 3x3", 4, 64, 64, 32, 3, 1},           {"l2 3x3 s2", 1, 64, 128, 32, 3, 2},
    {"l2 3x3", 3, 128, 128, 16, 3, 1}, {"l2 down 1x1 s2", 1, 64, 128, 32, 1, 2},  {"l3 3x3 s2", 1, 128, 256, 16, 3, 2},
    {"l3 3x3", 3, 256, 256, 8, 3, 1},  {"l3 down 1x1 s2", 1, 128, 256, 16, 1, 2}, {"l4 3x3 s2", 1, 256, 512, 8, 3, 2},
    {"l4 3x3", 3, 512, 512, 4, 3, 1},  {"l4 down 1x1 s2", 1, 256, 512, 8, 1, 2},
};

// Process CPU time (all threads): on a shared, loaded machine the wall time says little,
// while CPU seconds per run still measure the work the kernels do.
double cpu_seconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}
double cpu_total[3] = {0, 0, 0};  // CPU seconds of the timed runs per kernel, weighted like the totals

// Median wall time of `reps` runs after a warm-up; adds the median run's CPU time to *cpu.
template <class F> double median_seconds(int reps, double* cpu, F&& f) {
  f();  // warm-up
  std::vector<std::pair<double, double>> t;
  for (int i = 0; i < reps; ++i) {
    const double c0 = cpu_seconds();
    auto a = std::chrono::steady_clock::now();
    f();
    t.push_back({std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count(), cpu_seconds() - c0});
  }
  std::sort(t.begin(), t.end());
  *cpu = t[t.size() / 2].second;
  return t[t.size() / 2].first;
}
}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 128;
  int threads = 2, reps = 3;
  int64_t input = 32, width = 64;
  std::string only;
  bool bf16 = false;           // --bf16 1: inside a Bf16Convolutions scope (bfloat16 operands)
  bool channels_last = false;  // --channels-last 1: NHWC activations (Conv2dOptions::channels_last)
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--batch")
      batch = std::stoll(argv[i + 1]);
    else if (a == "--input")
      input = std::stoll(argv[i + 1]);
    else if (a == "--width")
      width = std::stoll(argv[i + 1]);
    else if (a == "--layer")
      only = argv[i + 1];
    else if (a == "--threads")
      threads = std::stoi(argv[i + 1]);
    else if (a == "--bf16")
      bf16 = std::stoi(argv[i + 1]) != 0;
    else if (a == "--channels-last")
      channels_last = std::stoi(argv[i + 1]) != 0;
    else if (a == "--reps")
      reps = std::stoi(argv[i + 1]);
    else {
      std::fprintf(
          stderr,
          "unknown option %s (use --batch N --threads T --reps R --input 32|28 --width W --layer NAME --bf16 0|1 "
          "--channels-last 0|1)\n",
          a.c_str());
      return 2;
    }
  }
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, size_t(threads));
  NoGrad ng;
  Bf16Convolutions precision(bf16);
  Generator g(1);
  std::printf("ResNet-18 (CIFAR) convolutions, batch %lld, input %lld, width %lld, %s%s, %d threads, median of %d\n",
              (long long)batch, (long long)input, (long long)width, bf16 ? "float32 with bfloat16 operands" : "float32",
              channels_last ? ", channels-last" : "", threads, reps);
  std::printf("%-16s %5s | %9s %7s | %9s %7s | %9s %7s | %7s\n", "layer", "count", "fwd ms", "GF/s", "gin ms", "GF/s",
              "gw ms", "GF/s", "GEMM");
  double total[3] = {0, 0, 0}, flops_total = 0;
  for (Layer l : resnet18_cifar) {
    if (!only.empty() && std::string(l.name).rfind(only, 0) != 0) continue;
    if (input != 32) {  // the same network on an input x input plane (1 channel)
      if (l.C == 3) l.C = 1;
      int64_t h = input;  // each stride-2 stage halves the plane, rounding up
      for (int64_t full = 32; full > l.H; full /= 2) h = (h + 1) / 2;
      l.H = h;
    }
    if (l.C != 3 && l.C != 1) l.C = l.C * width / 64;
    l.O = l.O * width / 64;
    const Conv2dOptions opt{l.stride, l.K / 2, channels_last};
    Tensor x = g.normal(channels_last ? Shape{batch, l.H, l.H, l.C} : Shape{batch, l.C, l.H, l.H});
    Tensor w = g.normal({l.O, l.C, l.K, l.K});
    Tensor y = conv2d(x, w, {}, opt);
    Tensor gy = g.normal(y.shape());
    const double flops = 2.0 * double(y.numel()) * double(l.C * l.K * l.K);
    double c[3];
    const double t[3] = {median_seconds(reps, &c[0], [&] { conv2d(x, w, {}, opt); }),
                         median_seconds(reps, &c[1], [&] { conv2d_input_grad(gy, w, x.shape(), opt); }),
                         median_seconds(reps, &c[2], [&] { conv2d_weight_grad(x, gy, w.shape(), opt); })};
    // the ceiling: one plain GEMM of the same [O, K] x [K, cols] shape (cols capped for memory)
    const int64_t cols = std::min<int64_t>(y.numel() / l.O, 16384);  // O is y's channel extent in both layouts
    Tensor A = g.normal({l.O, l.C * l.K * l.K}), B = g.normal({l.C * l.K * l.K, cols});
    double unused;
    const double tg = median_seconds(reps, &unused, [&] { matmul(A, B); });
    const double gemm_gflops = 2.0 * double(l.O * l.C * l.K * l.K) * double(cols) / tg * 1e-9;
    const int n = l.count;
    std::printf("%-16s %5d | %9.2f %7.1f | %9.2f %7.1f | %9.2f %7.1f | %7.1f\n", l.name, n, t[0] * 1e3,
                flops / t[0] * 1e-9, t[1] * 1e3, flops / t[1] * 1e-9, t[2] * 1e3, flops / t[2] * 1e-9, gemm_gflops);
    for (int k = 0; k < 3; ++k) total[k] += n * t[k], cpu_total[k] += n * c[k];
    flops_total += n * flops;
  }
  const double all = total[0] + total[1] + total[2];
  std::printf("total (20 convs): forward %.3f s, input grad %.3f s, weight grad %.3f s, all %.3f s (%.1f GFLOP/s)\n",
              total[0], total[1], total[2], all, 3 * flops_total / all * 1e-9);
  const double cpu_all = cpu_total[0] + cpu_total[1] + cpu_total[2];
  std::printf(
      "CPU time of the same runs: forward %.3f s, input grad %.3f s, weight grad %.3f s, all %.3f s (%.1f GFLOP/s per "
      "CPU-second; wall/CPU shows how loaded the machine was)\n",
      cpu_total[0], cpu_total[1], cpu_total[2], cpu_all, 3 * flops_total / cpu_all * 1e-9);
  return 0;
}
