// Run under `mpirun -np N` (tests/meson.build): the collectives of distributed/world.hpp on
// N processes, and fixed_order_sum against a plain recursive pairwise sum written here
// (the reference), bit for bit, for item counts from 1 to 13 (below, at and above N).
// Prints one line per failure and exits 1 on any; exits 77 (skip) when not under MPI.
// `mpi_check --bench N` instead times fixed_order_sum and MPI's all-reduce on a vector of N
// floats (docs/distributed.md: the exchange of a ResNet-18 gradient, N = 11173962).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "autodiff/autodiff.hpp"
#include "distributed/world.hpp"

using namespace flatmin;
namespace dist = flatmin::distributed;

static int failures = 0;
static void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "[rank %d] FAILED: %s\n", dist::world().rank(), what.c_str());
    ++failures;
  }
}

// Leaf k's vector: values whose float sums depend on the order of the additions.
static std::vector<float> leaf_values(int64_t k, int64_t len) {
  std::vector<float> v(static_cast<size_t>(len));
  for (int64_t i = 0; i < len; ++i)
    v[size_t(i)] = float(std::ldexp(1.0 + 0.1 * double(i % 7), int((k * 7 + i) % 29) - 14) * ((k + i) % 3 ? 1 : -1));
  return v;
}
// The reference: the same tree, written independently with plain floats.
static std::vector<float> tree_sum(int64_t lo, int64_t hi, int64_t len) {
  if (hi - lo == 1) return leaf_values(lo, len);
  const int64_t mid = lo + (hi - lo) / 2;
  std::vector<float> a = tree_sum(lo, mid, len), b = tree_sum(mid, hi, len);
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// Median of 7 timings (after one warm-up) of each exchange, on rank 0's clock.
static int bench(const dist::World& w, int64_t len) {
  auto median_ms = [&](const std::function<void()>& f) {
    std::vector<double> t;
    for (int k = 0; k < 8; ++k) {
      w.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      f();
      w.barrier();
      if (k > 0) t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  Tensor v = full({len}, 1.0);
  const int64_t shards = w.size();
  const uint64_t sent0 = w.bytes_sent();
  const double fixed = median_ms([&] { dist::fixed_order_sum(w, shards, Device::cpu(), [&](int64_t) { return v; }); });
  const double fixed_mb = double(w.bytes_sent() - sent0) / 8 / 1e6;
  const uint64_t sent1 = w.bytes_sent();
  const double ring = median_ms([&] { dist::all_reduce_sum(w, v); });
  const double ring_mb = double(w.bytes_sent() - sent1) / 8 / 1e6;
  if (w.rank() == 0)
    std::printf(
        "%d processes, %lld floats (%.1f MB): fixed_order_sum %.1f ms (rank 0 sent %.1f MB), MPI_Allreduce %.1f ms "
        "(%.1f MB by the ring formula)\n",
        w.size(), (long long)len, double(len) * 4 / 1e6, fixed, fixed_mb, ring, ring_mb);
  dist::finalize();
  return 0;
}

int main(int argc, char** argv) {
  const dist::World& w = dist::init_from_environment(&argc, &argv);
  if (w.size() == 1) {
    std::printf("not under mpirun (world size 1): skipped\n");
    return 77;
  }
  const int r = w.rank(), n = w.size();
  if (argc == 3 && std::string(argv[1]) == "--bench") return bench(w, std::atoll(argv[2]));

  // broadcast / all_reduce / all_gather of tensors
  Tensor b = full({3}, r == 1 ? 5.0 : -1.0);
  dist::broadcast(w, b, 1);
  expect(b.to_vector() == std::vector<double>{5, 5, 5}, "broadcast from rank 1");
  Tensor s = full({2}, double(r + 1), {.dtype = DType::f64});
  dist::all_reduce_sum(w, s);
  expect(s.to_vector() == std::vector<double>(2, n * (n + 1) / 2.0), "all_reduce_sum");
  Tensor g = dist::all_gather(w, full({2}, double(r)));
  expect(g.shape() == Shape{n, 2}, "all_gather shape");
  for (int k = 0; k < n; ++k)
    expect(g.to_vector()[size_t(2 * k)] == k, "all_gather value of rank " + std::to_string(k));
  Params ps = {full({2}, double(r)), full({1}, 10.0 + r)};
  dist::broadcast(w, ps, n - 1);
  expect(ps[1].item() == 10.0 + n - 1, "broadcast of a parameter list");
  Tensor ints = from_ints({r, 10 + r}, {2});  // integer buffers (BatchNorm's step count) travel as bytes
  dist::broadcast(w, ints, 1);
  expect(ints.to_int_vector() == std::vector<int64_t>{1, 11}, "broadcast of an int64 tensor");
  std::vector<Params> gathered = dist::all_gather(w, Params{from_ints({r}, {1})});
  for (int k = 0; k < n; ++k)
    expect(gathered[size_t(k)][0].to_int_vector() == std::vector<int64_t>{k}, "all_gather of int64 tensors");
  std::vector<std::string> names = dist::all_gather(w, std::string(size_t(r + 1), 'x'));
  for (int k = 0; k < n; ++k) expect(names[size_t(k)] == std::string(size_t(k + 1), 'x'), "all_gather of strings");

  // fixed_order_sum: bit-identical to the reference tree, on every rank, for every count
  for (int64_t items = 1; items <= 13; ++items) {
    for (int64_t len : {1, 5, 37}) {
      const std::vector<float> want = tree_sum(0, items, len);
      int64_t calls = 0;
      const dist::Range mine = dist::owned(items, r, n);
      Tensor got = dist::fixed_order_sum(w, items, Device::cpu(), [&](int64_t k) {
        expect(mine.begin <= k && k < mine.end,
               "leaf " + std::to_string(k) + " computed by a rank that does not own it");
        ++calls;
        return from_vector(leaf_values(k, len), {len});
      });
      expect(calls == mine.size(), "each owned leaf computed once");
      const std::vector<double> v = got.to_vector();
      bool same = int64_t(v.size()) == len;
      for (int64_t i = 0; same && i < len; ++i) same = float(v[size_t(i)]) == want[size_t(i)];
      expect(same, "fixed_order_sum of " + std::to_string(items) + " leaves of length " + std::to_string(len));
      // the scalar version of the same tree
      std::vector<double> mine_values;
      for (int64_t k = mine.begin; k < mine.end; ++k) mine_values.push_back(double(leaf_values(k, 1)[0]));
      double want_scalar = 0;
      {
        std::function<double(int64_t, int64_t)> t = [&](int64_t lo, int64_t hi) -> double {
          if (hi - lo == 1) return double(leaf_values(lo, 1)[0]);
          const int64_t mid = lo + (hi - lo) / 2;
          return t(lo, mid) + t(mid, hi);
        };
        want_scalar = t(0, items);
      }
      expect(dist::fixed_order_sum(w, items, mine_values) == want_scalar,
             "scalar fixed_order_sum of " + std::to_string(items));
    }
  }
  // start-up agreement: equal values pass; a value that differs on the last rank is refused
  dist::require_same(w, "a test value", "same");
  bool refused = false;
  try {
    dist::require_same(w, "a test value", r == n - 1 ? "other" : "same");
  } catch (const Error& e) {
    refused = std::strstr(e.what(), ("rank(s) " + std::to_string(n - 1)).c_str()) != nullptr;
  }
  expect(refused, "require_same refuses a differing rank and names it");

  std::vector<double> all_failures = dist::all_gather_v(w, {double(failures)});
  double total = 0;
  for (double f : all_failures) total += f;
  if (r == 0) std::printf("mpi_check on %d processes: %s\n", n, total == 0 ? "all passed" : "FAILED");
  dist::finalize();
  return total == 0 ? 0 : 1;
}
