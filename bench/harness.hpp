// The benchmark harness: timing with warm-up and repetitions, metrics with min/median/max,
// and one child process per workload group so that each group's peak resident memory is
// its own (a process's peak never goes down, so groups run in one process would mix).
#pragma once
#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace flatmin::bench {

struct Config {
  int threads = 2;
  int reps = 5;  // timed repetitions per measurement (after one warm-up)
  bool cpu_time = false;
  bool bf16 = false;           // --bf16: every group inside a Bf16Convolutions scope (bfloat16 convolutions)
  bool channels_last = false;  // --channels-last: the ResNet workloads with channels-last activations
};

// --cpu-time: clocks read process CPU time instead of wall time. On a machine shared with
// other jobs this removes the time spent descheduled; it sums over threads, so use it with
// --threads 1 for comparisons.
void use_cpu_time(bool on);
double now_seconds();

// One measured quantity; samples are in `unit`, one per repetition.
struct Metric {
  std::string key;   // the same key in torch_reference.py
  std::string unit;  // e.g. "GFLOP/s", "us/op", "img/s", "x fwd+bwd"
  bool higher_is_better = false;
  std::vector<double> samples;
  double min() const { return *std::min_element(samples.begin(), samples.end()); }
  double max() const { return *std::max_element(samples.begin(), samples.end()); }
  double median() const {
    std::vector<double> s = samples;
    std::sort(s.begin(), s.end());
    const size_t n = s.size();
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
  }
};

// A workload group: run in its own child process; returns its metrics.
struct Group {
  std::string name;
  std::function<std::vector<Metric>(const Config&)> run;
};

// Seconds of one call of f.
template <class F> double time_once(F&& f) {
  const double t0 = now_seconds();
  f();
  return now_seconds() - t0;
}
// One warm-up call, then `reps` timed calls: seconds per call.
template <class F> std::vector<double> time_reps(int reps, F&& f) {
  f();
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) s.push_back(time_once(f));
  return s;
}
// samples[i] -> scale / samples[i] (seconds to a throughput) or samples[i] * scale.
inline std::vector<double> per_second(std::vector<double> secs, double work) {
  for (double& s : secs) s = work / s;
  return secs;
}
inline std::vector<double> scaled(std::vector<double> v, double factor) {
  for (double& s : v) s *= factor;
  return v;
}

// Peak and current resident memory of this process (/proc/self/status), in MiB.
double peak_rss_mib();
double current_rss_mib();

struct GroupResult {
  std::string name;
  std::vector<Metric> metrics;
  double base_rss_mib = 0, peak_rss_mib = 0;
  std::string error;  // non-empty when the group failed
};
// Runs g in a forked child (threads fixed there with tbb::global_control).
GroupResult run_in_child(const Group& g, const Config& cfg);

}  // namespace flatmin::bench
