// The data-parallel layer on one process (the multi-process runs are the mpi_* meson tests):
// the fixed-order sum is the tree it promises (checked against a recursion written here),
// micro-shards change nothing when there is one, sum to the full-batch gradient when there
// are several, and Hutchinson's estimate does not depend on how many samples a round holds.
#include <doctest/doctest.h>

#include <cmath>

#include "datasets/synthetic.hpp"
#include "nn/layers.hpp"
#include "train/data_parallel.hpp"

using namespace flatmin;
namespace dist = flatmin::distributed;

namespace {
// Values spread over 2^-14..2^14 so that the order of float additions shows.
float leaf_value(int64_t k) {
  return float(std::ldexp(1.0 + 0.1 * double(k % 7), int(k * 11 % 29) - 14) * (k % 3 ? 1 : -1));
}
float reference_tree(int64_t lo, int64_t hi) {
  if (hi - lo == 1) return leaf_value(lo);
  const int64_t mid = lo + (hi - lo) / 2;
  return reference_tree(lo, mid) + reference_tree(mid, hi);
}
std::vector<double> flat(const Params& p) { return flatten(p).to_vector(); }
}  // namespace

TEST_SUITE("distributed") {
  TEST_CASE("owned ranges deal the items out contiguously, in rank order, covering each once") {
    for (int64_t n = 0; n <= 10; ++n)
      for (int size = 1; size <= 4; ++size) {
        int64_t next = 0;
        for (int r = 0; r < size; ++r) {
          dist::Range g = dist::owned(n, r, size);
          CHECK(g.begin == next);
          CHECK(g.size() >= n / size);
          CHECK(g.size() <= n / size + 1);
          next = g.end;
        }
        CHECK(next == n);
      }
    CHECK(dist::owner(0, 6, 3) == 0);
    CHECK(dist::owner(5, 6, 3) == 2);
    CHECK_THROWS_AS(dist::owner(6, 6, 3), Error);
  }

  TEST_CASE("the single-process world: collectives are copies, integer tensors included") {
    const dist::World& w = dist::world();
    Tensor t = from_ints({4, 5}, {2});
    dist::broadcast(w, t, 0);
    CHECK(t.to_int_vector() == std::vector<int64_t>{4, 5});
    Tensor g = dist::all_gather(w, t);
    CHECK(g.shape() == Shape{1, 2});
    CHECK(g.to_int_vector() == std::vector<int64_t>{4, 5});
    std::vector<Params> ps = dist::all_gather(w, Params{full({3}, 2.0)});
    REQUIRE(ps.size() == 1);
    CHECK(ps[0][0].to_vector() == std::vector<double>{2, 2, 2});
    CHECK(dist::all_gather(w, std::string("abc")) == std::vector<std::string>{"abc"});
    CHECK_NOTHROW(dist::require_same(w, "x", "y"));
  }

  TEST_CASE("fixed_order_sum adds in the fixed tree (not left to right), on one process too") {
    const dist::World& w = dist::world();
    REQUIRE(w.size() == 1);
    bool some_order_shows = false;
    for (int64_t n = 1; n <= 13; ++n) {
      Tensor got =
          dist::fixed_order_sum(w, n, Device::cpu(), [](int64_t k) { return full({2}, double(leaf_value(k))); });
      CHECK(float(got.to_vector()[0]) == reference_tree(0, n));
      float left_to_right = 0;
      for (int64_t k = 0; k < n; ++k) left_to_right += leaf_value(k);
      some_order_shows |= left_to_right != reference_tree(0, n);
      std::vector<double> values;
      for (int64_t k = 0; k < n; ++k) values.push_back(double(leaf_value(k)));
      double tree = 0;
      std::function<double(int64_t, int64_t)> t = [&](int64_t lo, int64_t hi) {
        return hi - lo == 1 ? values[size_t(lo)] : t(lo, lo + (hi - lo) / 2) + t(lo + (hi - lo) / 2, hi);
      };
      tree = t(0, n);
      CHECK(dist::fixed_order_sum(w, n, values) == tree);
    }
    CHECK(some_order_shows);  // the values above do tell the orders apart
    CHECK_THROWS_AS(dist::fixed_order_sum(w, 0, Device::cpu(), [](int64_t) { return zeros({1}); }), Error);
    CHECK_THROWS_AS(dist::fixed_order_sum(w, 2, Device::cpu(), [](int64_t k) { return zeros({k + 1}); }), Error);
  }

  TEST_CASE("micro-shards: one is the plain closure bit for bit; several sum to the full-batch gradient") {
    data::Dataset ds = data::two_blobs({.n = 24, .d = 2, .seed = 5});
    Generator g(1);
    nn::MLP net({2, 6, 2}, nn::Act::tanh, g);
    net.to(DType::f64);
    Tensor x = ds.images.to(DType::f64);
    optim::Evaluation plain = optim::classifier_closure(net, x, ds.labels)({.update_stats = false});
    optim::Evaluation one =
        optim::data_parallel_closure(net, x, ds.labels, {.micro_shards = 1})({.update_stats = false});
    CHECK(one.loss == plain.loss);
    CHECK(flat(one.grad) == flat(plain.grad));
    for (int64_t shards : {2, 5, 24}) {
      optim::Evaluation sh =
          optim::data_parallel_closure(net, x, ds.labels, {.micro_shards = shards})({.update_stats = false});
      CHECK(sh.loss == doctest::Approx(plain.loss).epsilon(1e-13));
      std::vector<double> a = flat(sh.grad), b = flat(plain.grad);
      REQUIRE(a.size() == b.size());
      for (size_t i = 0; i < a.size(); ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(1e-12));
    }
    // SA's mini-batch closure: 5 examples in 3 shards equal the plain ∇f_i of those examples.
    std::vector<int64_t> idx = {3, 17, 4, 9, 20};
    optim::Evaluation pb = optim::classifier_batch_closure(net, ds, DType::f64)(idx, {.update_stats = false});
    optim::Evaluation sb =
        optim::data_parallel_batch_closure(net, ds, DType::f64, {.micro_shards = 3})(idx, {.update_stats = false});
    CHECK(sb.loss == doctest::Approx(pb.loss).epsilon(1e-13));
    std::vector<double> ga = flat(sb.grad), gb = flat(pb.grad);
    REQUIRE(ga.size() == gb.size());
    for (size_t i = 0; i < ga.size(); ++i) CHECK(ga[i] == doctest::Approx(gb[i]).epsilon(1e-12));
  }

  TEST_CASE("the data-parallel settings are checked before any work") {
    CHECK_NOTHROW(optim::validate(optim::DataParallel{.micro_shards = 4}, 8, Device::cpu()));
    CHECK_THROWS_WITH_AS(optim::validate(optim::DataParallel{.micro_shards = 0}, 8, Device::cpu()),
                         doctest::Contains("--micro-shards must be >= 1"), Error);
    CHECK_THROWS_WITH_AS(optim::validate(optim::DataParallel{.micro_shards = 9}, 8, Device::cpu()),
                         doctest::Contains("exceeds the batch size 8"), Error);
  }

  TEST_CASE("Hutchinson's estimate is the same whatever the round size (samples shared out)") {
    Params x = {from_vector(std::vector<double>{0.3, -1.2, 0.7}, {3}, {.dtype = DType::f64})};
    auto f = [](const Params& p) { return sum(mul(exp(p[0]), mul(p[0], p[0]))); };
    optim::HvpFn hvp = optim::hvp_fn(f, x);
    const optim::HutchinsonOptions o{.max_samples = 9, .tol = 1e-6, .seed = 4};
    optim::TraceEstimate one = optim::hutchinson_trace(hvp, x, o);
    for (int round : {1, 2, 4, 9, 20}) {
      int products = 0;
      optim::TraceEstimate r = optim::hutchinson_trace(
          [&](const std::vector<Params>& zs) {
            std::vector<double> q;
            for (const Params& z : zs) q.push_back(dot(z, hvp(z)).item());
            products += int(zs.size());
            return q;
          },
          round, x, o);
      CHECK(r.trace == one.trace);
      CHECK(r.stderr_trace == one.stderr_trace);
      CHECK(r.samples == one.samples);
      CHECK(products >= r.samples);
      CHECK(products < r.samples + round);
    }
  }
}
