// flatmin_bench: the CPU workloads that bench/torch_reference.py runs in PyTorch, with the
// same shapes, dtypes and metric keys; bench/compare.sh puts the two side by side.
//   flatmin_bench [--json] [--threads N] [--reps N] [--only group,group,...] [--cpu-time]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

#include "autodiff/autodiff.hpp"
#include "bench/harness.hpp"
#include "bench/workloads.hpp"

namespace flatmin::bench {
namespace {

// ---- 1. GEMM ----
std::vector<Metric> gemm(const Config& c) {
  Generator gen(0);
  const int64_t n = 2048;
  Tensor a = gen.normal({n, n}), b = gen.normal({n, n});
  NoGrad ng;
  auto s = time_reps(c.reps, [&] { Tensor y = matmul(a, b); });
  return {{"gemm_2048_f32", "GFLOP/s", true, per_second(s, 2.0 * double(n * n * n) / 1e9)}};
}

// ---- 2. a chain of 1,000 small elementwise ops (the engine's per-op overhead) ----
constexpr int chain_ops = 1000, chains_per_rep = 20;
Tensor chain(const Tensor& x, const Tensor& a, const Tensor& b) {
  Tensor y = x;
  for (int i = 0; i < chain_ops; ++i) {
    switch (i % 4) {
      case 0: y = mul(y, a); break;
      case 1: y = tanh(y); break;
      case 2: y = add(y, b); break;
      default: y = mul_scalar(y, 0.5); break;
    }
  }
  return y;
}
std::vector<Metric> small_ops(const Config& c) {
  Generator gen(0);
  Tensor x = gen.normal({10}), a = gen.uniform({10}, {}, 0.5, 1.5), b = gen.normal({10});
  x.requires_grad_();
  const double us_per_op = 1e6 / double(chain_ops * chains_per_rep);
  auto fwd = time_reps(c.reps, [&] {
    for (int k = 0; k < chains_per_rep; ++k) chain(x, a, b);  // graph recorded, then freed
  });
  auto fwd_bwd = time_reps(c.reps, [&] {
    for (int k = 0; k < chains_per_rep; ++k) {
      sum(chain(x, a, b)).backward();
      x.zero_grad();
    }
  });
  return {{"chain_forward_f32", "us/op", false, scaled(fwd, us_per_op)},
          {"chain_fwd_bwd_f32", "us/op", false, scaled(fwd_bwd, us_per_op)}};
}

// ---- 3. MLP 784-256-10, batch 64, one SGD step ----
std::vector<Metric> mlp(const Config& c) {
  Generator gen(0);
  const int64_t batch = 64;
  auto kaiming = [&](int64_t in, int64_t out) {
    return mul_scalar(gen.normal({in, out}), std::sqrt(2.0 / double(in)));
  };
  std::vector<Tensor> params = {kaiming(784, 256), zeros({256}), kaiming(256, 10), zeros({10})};
  for (Tensor& p : params) p.requires_grad_();
  Tensor x = gen.normal({batch, 784});
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < batch; ++i) labels.push_back(gen.randint(10));
  Tensor y = from_ints(labels, {batch});
  auto step = [&] {
    Tensor h = relu(add(matmul(x, params[0]), params[1]));
    Tensor logits = add(matmul(h, params[2]), params[3]);
    classification_loss(logits, y).backward();
    NoGrad ng;
    for (Tensor& p : params) {
      p.add_(p.grad(), -0.01);
      p.zero_grad();
    }
  };
  constexpr int steps_per_rep = 20;
  auto s = time_reps(c.reps, [&] {
    for (int k = 0; k < steps_per_rep; ++k) step();
  });
  return {{"mlp_step_f32", "us/step", false, scaled(s, 1e6 / steps_per_rep)}};
}

// ---- 6. derivatives of f(x) = Σ tanh(Ax), A 50x50, float64 ----
std::vector<Metric> tanh_orders(const Config& c) {
  Generator gen(0);
  const TensorOptions f64{DType::f64};
  Tensor A = mul_scalar(gen.normal({50, 50}, f64), 1.0 / std::sqrt(50.0));
  Tensor x = gen.normal({50}, f64), u = gen.normal({50}, f64), v = gen.normal({50}, f64);
  ScalarFn1 f = [&](const Tensor& z) { return sum(tanh(matmul(A, z))); };
  constexpr int inner = 200;
  auto timed = [&](auto&& op) {
    return time_once([&] {
             for (int k = 0; k < inner; ++k) op();
           }) /
           inner;
  };
  auto g = [&] { gradient(f, x); };
  auto h = [&] { hvp(f, x, v); };
  auto t = [&] { third(f, x, u, v); };
  g(), h(), t();  // warm-up
  std::vector<double> tg, rh, rt;
  for (int r = 0; r < c.reps; ++r) {  // interleaved, so the ratios see the same machine state
    const double sg = timed(g), sh = timed(h), st = timed(t);
    tg.push_back(sg * 1e6);
    rh.push_back(sh / sg);
    rt.push_back(st / sg);
  }
  return {{"tanh50_grad_f64", "us", false, tg},
          {"tanh50_hvp_ratio_f64", "x gradient", false, rh},
          {"tanh50_third_ratio_f64", "x gradient", false, rt}};
}

std::vector<Group> groups() {
  std::vector<Group> g = {{"gemm", gemm}, {"small_ops", small_ops}, {"mlp", mlp}, {"tanh_orders", tanh_orders}};
  for (Group& r : resnet_groups()) g.push_back(std::move(r));
  return g;
}

std::string json_escape(const std::string& s) {
  std::string r;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') r += '\\';
    if (ch == '\n') {
      r += "\\n";
      continue;
    }
    r += ch;
  }
  return r;
}

void print_json(const std::vector<GroupResult>& rs, const Config& c) {
  std::printf(
      "{\n  \"engine\": \"flatmin\",\n  \"threads\": %d,\n  \"reps\": %d,\n  \"cpu_time\": %s,\n  \"bf16\": %s,\n  "
      "\"channels_last\": %s,\n  \"groups\": {",
      c.threads, c.reps, c.cpu_time ? "true" : "false", c.bf16 ? "true" : "false", c.channels_last ? "true" : "false");
  for (size_t i = 0; i < rs.size(); ++i) {
    const GroupResult& r = rs[i];
    std::printf("%s\n    \"%s\": {\"base_rss_mib\": %.1f, \"peak_rss_mib\": %.1f, \"error\": \"%s\"}", i ? "," : "",
                r.name.c_str(), r.base_rss_mib, r.peak_rss_mib, json_escape(r.error).c_str());
  }
  std::printf("\n  },\n  \"metrics\": {");
  bool first = true;
  for (const GroupResult& r : rs)
    for (const Metric& m : r.metrics) {
      std::printf(
          "%s\n    \"%s\": {\"group\": \"%s\", \"unit\": \"%s\", \"higher_is_better\": %s, \"min\": %.6g, "
          "\"median\": %.6g, \"max\": %.6g, \"samples\": %zu, \"values\": [",
          first ? "" : ",", m.key.c_str(), r.name.c_str(), m.unit.c_str(), m.higher_is_better ? "true" : "false",
          m.min(), m.median(), m.max(), m.samples.size());
      for (size_t k = 0; k < m.samples.size(); ++k) std::printf("%s%.6g", k ? ", " : "", m.samples[k]);
      std::printf("]}");
      first = false;
    }
  std::printf("\n  }\n}\n");
}

void print_text(const GroupResult& r) {
  if (!r.error.empty()) {
    std::printf("%-16s FAILED: %s\n", r.name.c_str(), r.error.c_str());
    return;
  }
  for (const Metric& m : r.metrics)
    std::printf("  %-36s %12.4g %-12s (min %.4g, max %.4g)\n", m.key.c_str(), m.median(), m.unit.c_str(), m.min(),
                m.max());
  std::printf("  %-36s %12.1f MiB        (at start %.1f)\n", ("peak RSS of " + r.name).c_str(), r.peak_rss_mib,
              r.base_rss_mib);
  std::fflush(stdout);
}

int positive_int(const char* flag, const char* v) {
  char* end = nullptr;
  const long n = v ? std::strtol(v, &end, 10) : 0;
  if (!v || *end || n < 1 || n > 4096) {
    std::fprintf(stderr, "flatmin_bench: %s needs a positive integer, got '%s'\n", flag, v ? v : "");
    std::exit(2);
  }
  return int(n);
}

}  // namespace
}  // namespace flatmin::bench

int main(int argc, char** argv) {
  using namespace flatmin::bench;
  Config cfg;
  bool json = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json")
      json = true;
    else if (a == "--threads")
      cfg.threads = positive_int("--threads", i + 1 < argc ? argv[++i] : nullptr);
    else if (a == "--reps")
      cfg.reps = positive_int("--reps", i + 1 < argc ? argv[++i] : nullptr);
    else if (a == "--cpu-time")
      cfg.cpu_time = true;
    else if (a == "--bf16")
      cfg.bf16 = true;
    else if (a == "--channels-last")
      cfg.channels_last = true;
    else if (a == "--only" && i + 1 < argc)
      only = std::string(",") + argv[++i] + ",";  // GCC 12 -Wrestrict
    else if (a == "--list") {
      for (const Group& g : groups()) std::printf("%s\n", g.name.c_str());
      return 0;
    } else {
      std::fprintf(stderr,
                   "usage: flatmin_bench [--json] [--threads N (default 2)] [--reps N (default 5)] "
                   "[--only group,...] [--list] [--cpu-time] [--bf16] [--channels-last]\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (cfg.bf16)  // refused before any group runs, not by each group's first convolution
    if (const std::string why = flatmin::backend(flatmin::Device::cpu()).bf16_convolutions_unavailable();
        !why.empty()) {
      std::fprintf(stderr, "flatmin_bench: --bf16: %s\n", why.c_str());
      return 2;
    }
  use_cpu_time(cfg.cpu_time);
  std::vector<GroupResult> results;
  if (!json)
    std::printf("flatmin_bench: %d threads, %d timed repetitions after one warm-up (median, min, max)%s%s\n",
                cfg.threads, cfg.reps, cfg.bf16 ? ", bfloat16 convolutions" : "",
                cfg.channels_last ? ", channels-last ResNets" : "");
  bool matched = false;
  for (const Group& g : groups()) {
    if (!only.empty() && only.find("," + g.name + ",") == std::string::npos) continue;
    matched = true;
    if (!json) std::printf("%s\n", g.name.c_str());
    results.push_back(run_in_child(g, cfg));
    if (!json) print_text(results.back());
  }
  if (!matched) {
    std::fprintf(stderr, "flatmin_bench: no group matches --only (see --list)\n");
    return 2;
  }
  if (json) print_json(results, cfg);
  for (const GroupResult& r : results)
    if (!r.error.empty()) return 1;
  return 0;
}
