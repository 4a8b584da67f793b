// Times training-mode batch norm and group norm (forward, and the first-order backward)
// against the same normalization written as a composition of differentiable ops, on
// ResNet-18's largest normalization shape (batch x 64 x 32 x 32), float32.
//   ./build/bench/norm_bench [--batch 128] [--threads 2] [--reps 5]
// Prints median wall and CPU milliseconds (CPU time is what to compare on a loaded machine).
#include <sys/resource.h>
#include <tbb/global_control.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "autodiff/autodiff.hpp"

using namespace flatmin;

namespace {
double cpu_seconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}
// Median (wall, CPU) seconds of f after a warm-up.
std::pair<double, double> median(int reps, const std::function<void()>& f) {
  f();
  std::vector<std::pair<double, double>> t;
  for (int i = 0; i < reps; ++i) {
    const double c0 = cpu_seconds();
    auto a = std::chrono::steady_clock::now();
    f();
    t.push_back({std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count(), cpu_seconds() - c0});
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 128;
  int threads = 2, reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--batch")
      batch = std::stoll(argv[i + 1]);
    else if (a == "--threads")
      threads = std::stoi(argv[i + 1]);
    else if (a == "--reps")
      reps = std::stoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s (use --batch N --threads T --reps R)\n", a.c_str());
      return 2;
    }
  }
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, size_t(threads));
  const int64_t C = 64;
  Generator g(1);
  Tensor x = g.normal({batch, C, 32, 32}).requires_grad_(), w = ones({C}).requires_grad_(),
         b = zeros({C}).requires_grad_(), gy = g.normal({batch, C, 32, 32});
  const Shape cs{1, C, 1, 1};
  // the same normalizations as plain compositions of ops
  auto composed = [&](int64_t groups) {
    Tensor xs = groups ? reshape(x, {batch, groups, -1}) : x;
    const Axes axes = groups ? Axes{2} : Axes{0, 2, 3};
    Tensor xc = sub(xs, mean(xs, axes, true));
    Tensor y = reshape(mul(xc, rsqrt(add_scalar(mean(square(xc), axes, true), 1e-5))), x.shape());
    return add(mul(y, reshape(w, cs)), reshape(b, cs));
  };
  auto fused = [&](int64_t groups) {
    Tensor rm, rv;
    return groups ? group_norm(x, groups, w, b) : batch_norm(x, w, b, rm, rv, {.training = true});
  };
  std::printf("normalization of %lld x 64 x 32 x 32 float32, %d threads, median of %d (wall ms / CPU ms)\n",
              (long long)batch, threads, reps);
  for (int64_t groups : {int64_t(0), int64_t(32)}) {
    for (bool use_fused : {true, false}) {
      auto f = [&] { return use_fused ? fused(groups) : composed(groups); };
      auto fwd = median(reps, [&] {
        NoGrad ng;
        f();
      });
      auto both = median(reps, [&] { grad({f()}, {x, w, b}, {.grad_outputs = {gy}}); });
      std::printf("%-11s %-11s forward %7.1f / %7.1f   forward+backward %7.1f / %7.1f\n",
                  groups ? "group norm" : "batch norm", use_fused ? "flatmin op" : "composition", fwd.first * 1e3,
                  fwd.second * 1e3, both.first * 1e3, both.second * 1e3);
    }
  }
  return 0;
}
