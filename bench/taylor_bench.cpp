// taylor_bench: D^k f(x)[u^k], k = 1..8, of a ResNet-18's loss by Taylor mode (one
// propagation of degree k) against nested reverse mode (k chained grad() calls), and H v
// by forward over reverse against reverse over reverse: seconds and peak resident memory
// above the process's base, each measurement in its own child process (docs/taylor.md).
//   build/bench/taylor_bench [--width 16] [--batch 8] [--size 32] [--max-order 8] [--budget 600]
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>

#include "autodiff/autodiff.hpp"
#include "bench/harness.hpp"
#include "nn/nn.hpp"

using namespace flatmin;
using namespace flatmin::bench;

namespace {

struct Measured {
  double seconds = NAN, mib = NAN;
  std::string error;
};
Measured measure(const std::string& name, const Config& cfg, std::function<void()> work) {
  GroupResult r = run_in_child({name,
                                [work](const Config&) {
                                  Metric m{"seconds", "s"};
                                  m.samples.push_back(time_once(work));
                                  return std::vector<Metric>{m};
                                }},
                               cfg);
  Measured out;
  out.error = r.error;
  if (r.error.empty() && !r.metrics.empty()) {
    out.seconds = r.metrics[0].samples[0];
    out.mib = r.peak_rss_mib - r.base_rss_mib;
  }
  return out;
}
std::string cell(const Measured& m, double unit = 1) {
  if (!m.error.empty()) return "failed: " + m.error;
  if (std::isnan(m.seconds)) return "(not run)";
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.3g s (%.1f fwd) | %.0f MiB", m.seconds, m.seconds / unit, m.mib);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Taylor mode against nested reverse mode on ResNet-18 (docs/taylor.md)"};
  int64_t width = 16, batch = 8, size = 32;
  int max_order = 8, threads = 2;
  double budget = 600;
  std::string act = "softplus";
  app.add_option("--width", width, "ResNet-18 width")->check(CLI::Range(1, 64));
  app.add_option("--batch", batch, "batch size")->check(CLI::Range(2, 256));
  app.add_option("--size", size, "image height and width")->check(CLI::Range(8, 64));
  app.add_option("--max-order", max_order, "highest order k")->check(CLI::Range(1, max_taylor_order));
  app.add_option("--budget", budget, "seconds after which nested reverse mode stops going up in order")
      ->check(CLI::PositiveNumber);
  app.add_option("--activation", act, "softplus | tanh")->check(CLI::IsMember({"softplus", "tanh"}));
  app.add_option("--threads", threads, "threads per measurement")->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);
  const Config cfg{.threads = threads, .reps = 1};

  nn::ResNet net = nn::resnet18({.in_channels = 3,
                                 .classes = 10,
                                 .stem = nn::Stem::cifar,
                                 .width = width,
                                 .norm = nn::Norm::batch,
                                 .activation = nn::parse_act(act),
                                 .seed = 1});
  net.to(DType::f64);
  net.train().update_running_stats(false);
  Generator g(2);
  const Tensor X = g.normal({batch, 3, size, size}, {DType::f64});
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < batch; ++i) labels.push_back(i % 10);
  const Tensor Y = from_ints(labels, {batch});
  ScalarFn f = [&](const Params& p) {
    nn::WithParameters with(net, p);
    return cross_entropy(net.forward(X), Y);
  };
  const Params x = detach(net.parameters()), u = g.sphere_like(x);

  std::printf(
      "ResNet-18 (CIFAR stem), width %lld, %s, float64, train-mode BatchNorm, batch %lld of %lldx%lld, "
      "%lld parameters, %d threads\n",
      (long long)width, act.c_str(), (long long)batch, (long long)size, (long long)size, (long long)numel(x), threads);
  const Measured fwd = measure("forward", cfg, [&] { value(f, x); });
  std::printf("one forward pass (no recording): %.3g s, %.0f MiB\n\n", fwd.seconds, fwd.mib);
  std::printf("| k | Taylor mode, D^0..D^k | nested reverse, D^0..D^k |\n|---|---|---|\n");
  bool reverse_on = true;
  for (int k = 1; k <= max_order; ++k) {
    const Measured t = measure("taylor", cfg, [&] { taylor_coefficients(f, x, u, k); });
    Measured r;
    if (reverse_on) {
      r = measure("nested reverse", cfg, [&] { directional_derivatives(f, x, u, k); });
      if (!(r.seconds < budget)) reverse_on = false;
    }
    std::printf("| %d | %s | %s |\n", k, cell(t, fwd.seconds).c_str(), cell(r, fwd.seconds).c_str());
    std::fflush(stdout);
  }
  const Measured fr = measure("forward over reverse", cfg, [&] { hvp_forward_over_reverse(f, x, u); });
  const Measured rr = measure("reverse over reverse", cfg, [&] { hvp(f, x, u); });
  std::printf(
      "\n| H v | seconds (forward passes) and peak MiB |\n|---|---|\n| forward over reverse | %s |\n"
      "| reverse over reverse | %s |\n",
      cell(fr, fwd.seconds).c_str(), cell(rr, fwd.seconds).c_str());
  // the two agree (a check of the run, not a timing)
  const Params a = hvp_forward_over_reverse(f, x, u), b = hvp(f, x, u);
  std::printf("\nrelative difference of the two H v: %.2e\n",
              norm(axpy(-1.0, a, b)).item() / std::max(norm(b).item(), 1e-300));
  return 0;
}
