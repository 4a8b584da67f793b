// Loader: shuffling, batching, augmentation, normalization, prefetch, resume.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <numeric>

#include "datasets/loader.hpp"

using namespace flatmin;
using namespace flatmin::data;

namespace {
// n images (n,c,h,w); image i has value 1 + i + 0.01*k at flat position k (never 0).
Dataset ramp(int64_t n, int64_t c = 1, int64_t h = 2, int64_t w = 2) {
  std::vector<float> v;
  std::vector<int64_t> l;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < c * h * w; ++k) v.push_back(float(1 + i) + 0.01f * float(k));
    l.push_back(i % 10);
  }
  return {from_vector(v, {n, c, h, w}), from_ints(l, {n}), 10, "ramp"};
}

struct Seen {
  std::vector<std::vector<int64_t>> indices;
  std::vector<std::vector<double>> images;
  std::vector<std::vector<int64_t>> labels;
  void add(const Batch& b) {
    indices.push_back(b.indices);
    images.push_back(b.images.to_vector());
    labels.push_back(b.labels.to_int_vector());
  }
  bool operator==(const Seen&) const = default;
};

// The next `count` batches (epoch ends are recorded as empty index lists).
Seen take(Loader& l, int count) {
  Seen s;
  for (int i = 0; i < count; ++i) {
    if (auto b = l.next())
      s.add(*b);
    else
      s.indices.push_back({}), s.images.push_back({}), s.labels.push_back({});
  }
  return s;
}
}  // namespace

TEST_CASE("loader: every index once per epoch, batch sizes, drop_last") {
  const Dataset d = ramp(10);
  Loader l(d, {.batch_size = 3, .seed = 4});
  CHECK(l.batches_per_epoch() == 4);
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> all;
    std::vector<size_t> sizes;
    while (auto b = l.next()) {
      CHECK(b->epoch == epoch);
      CHECK(b->index == int64_t(sizes.size()));
      sizes.push_back(b->indices.size());
      CHECK(b->images.shape() == Shape{int64_t(b->indices.size()), 1, 2, 2});
      // images and labels are those of the listed indices
      for (size_t j = 0; j < b->indices.size(); ++j) {
        CHECK(b->images.data<float>()[j * 4] == float(1 + b->indices[j]));
        CHECK(b->labels.data<int64_t>()[j] == b->indices[j] % 10);
      }
      all.insert(all.end(), b->indices.begin(), b->indices.end());
    }
    CHECK(sizes == std::vector<size_t>{3, 3, 3, 1});
    std::vector<int64_t> sorted = all;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> expect(10);
    std::iota(expect.begin(), expect.end(), 0);
    CHECK(sorted == expect);
    CHECK(all == l.epoch_order(epoch));
  }
  CHECK(l.epoch_order(0) != l.epoch_order(1));  // reshuffled each epoch
  Loader dl(d, {.batch_size = 3, .drop_last = true});
  CHECK(dl.batches_per_epoch() == 3);
  Loader plain(d, {.batch_size = 4, .shuffle = false, .prefetch = 0});
  CHECK(plain.next()->indices == std::vector<int64_t>{0, 1, 2, 3});
  CHECK_THROWS_WITH_AS(Loader(d, {.batch_size = 11}), doctest::Contains("larger than the dataset (10 examples)"),
                       Error);
  CHECK_THROWS_AS(Loader(d, {.batch_size = 0}), Error);
  CHECK_THROWS_AS(Loader(d, {.mean = {0.5, 0.5}, .std = {1, 1}}), Error);  // 1 channel
}

TEST_CASE("loader: the same seed gives the same batches, with or without prefetch") {
  const Dataset d = ramp(50, 3, 6, 6);
  const LoaderOptions opt{.batch_size = 8, .seed = 9, .pad_crop = 2, .flip = true};
  Loader a(d, opt), b(d, opt);
  LoaderOptions sync = opt;
  sync.prefetch = 0;
  Loader c(d, sync);
  const Seen sa = take(a, 20);
  CHECK(sa == take(b, 20));
  CHECK(sa == take(c, 20));
  LoaderOptions other = opt;
  other.seed = 10;
  Loader e(d, other);
  CHECK(take(e, 20).indices != sa.indices);
}

TEST_CASE("loader: pad-crop and flip give shifted, mirrored copies with zero borders") {
  const int64_t h = 5, w = 6, pad = 2;
  const Dataset d = ramp(40, 2, h, w);
  Loader l(d, {.batch_size = 40, .seed = 1, .pad_crop = pad, .flip = true});
  const Batch b = *l.next();
  CHECK(b.images.shape() == Shape{40, 2, h, w});
  const float* out = b.images.data<float>();
  const float* src = d.images.data<float>();
  int identity = 0, flipped = 0, shifted = 0;
  for (int64_t j = 0; j < 40; ++j) {
    const int64_t i = b.indices[size_t(j)];
    // find the (dy, dx, flip) that explains this output
    int matches = 0;
    for (int64_t dy = -pad; dy <= pad; ++dy)
      for (int64_t dx = -pad; dx <= pad; ++dx)
        for (bool f : {false, true}) {
          bool ok = true;
          for (int64_t c = 0; c < 2 && ok; ++c)
            for (int64_t y = 0; y < h && ok; ++y)
              for (int64_t x = 0; x < w && ok; ++x) {
                const int64_t sy = y + dy, sx = (f ? w - 1 - x : x) + dx;
                const float want =
                    (sy >= 0 && sy < h && sx >= 0 && sx < w) ? src[((i * 2 + c) * h + sy) * w + sx] : 0.0f;
                ok = out[((j * 2 + c) * h + y) * w + x] == want;
              }
          if (ok) {
            ++matches;
            identity += dy == 0 && dx == 0 && !f;
            flipped += f;
            shifted += dy != 0 || dx != 0;
          }
        }
    CHECK(matches == 1);
  }
  CHECK(identity < 40);
  CHECK(flipped > 5);
  CHECK(flipped < 35);
  CHECK(shifted > 20);
  CHECK_THROWS_AS(
      Loader(Dataset{zeros({4, 3}), from_ints({0, 1, 0, 1}, {4}), 2, "flat"}, {.batch_size = 2, .flip = true}), Error);
}

TEST_CASE("loader: per-channel normalization and output dtype") {
  // image 0: channel 0 = {1, 1.01, 1.02, 1.03}, channel 1 = {1.04, ...}
  const Dataset d = ramp(2, 2, 2, 2);
  Loader l(d, {.batch_size = 2, .shuffle = false, .mean = {1.0, 2.0}, .std = {0.5, 4.0}, .dtype = DType::f64});
  const Batch b = *l.next();
  CHECK(b.images.dtype() == DType::f64);
  const double* p = b.images.data<double>();
  CHECK(p[0] == doctest::Approx(0.0).epsilon(1e-6));
  CHECK(p[3] == doctest::Approx((1.03 - 1.0) / 0.5).epsilon(1e-6));
  CHECK(p[4] == doctest::Approx((1.04 - 2.0) / 4.0).epsilon(1e-6));
  CHECK(p[8] == doctest::Approx((2.0 - 1.0) / 0.5).epsilon(1e-6));  // image 1, channel 0
  CHECK(b.labels.dtype() == DType::i64);
  // with augmentation the border padding is normalized too: 0 -> -mean/std
  Loader a(ramp(30, 2, 2, 2), {.batch_size = 30, .seed = 3, .pad_crop = 1, .mean = {1.0, 2.0}, .std = {0.5, 4.0}});
  const Batch ab = *a.next();
  bool saw_pad = false;
  for (float v : ab.images.to_vector()) saw_pad |= (v == -2.0f || v == -0.5f);
  CHECK(saw_pad);
  // regression targets come out in the chosen dtype
  const Dataset r{ones({4, 3}), from_vector(std::vector<double>{1, 2, 3, 4}, {4, 1}, {DType::f64}), 0, "reg"};
  Loader rl(r, {.batch_size = 2, .shuffle = false});
  const Batch rb = *rl.next();
  CHECK(rb.labels.dtype() == DType::f32);
  CHECK(rb.labels.to_vector() == std::vector<double>{1, 2});
}

TEST_CASE("loader: resuming from a saved state equals the uninterrupted run") {
  const Dataset d = ramp(23, 1, 4, 4);
  const LoaderOptions opt{.batch_size = 5, .seed = 77, .pad_crop = 1, .flip = true, .prefetch = 3};
  Loader whole(d, opt);
  const Seen all = take(whole, 16);  // 6 per epoch with the end marker: more than 2.5 epochs

  Loader first(d, opt);
  const Seen part1 = take(first, 9);
  const LoaderState saved = first.state();
  CHECK(saved == LoaderState{77, 1, 3});
  Loader second(d, {.batch_size = 5, .seed = 0, .pad_crop = 1, .flip = true, .prefetch = 1});
  second.restore(saved);
  const Seen part2 = take(second, 7);
  Seen joined = part1;
  for (size_t i = 0; i < part2.indices.size(); ++i) {
    joined.indices.push_back(part2.indices[i]);
    joined.images.push_back(part2.images[i]);
    joined.labels.push_back(part2.labels[i]);
  }
  CHECK(joined == all);
  // restore on a running loader rewinds it
  whole.restore({77, 0, 0});
  const Seen again = take(whole, 3);
  CHECK(again.indices == std::vector<std::vector<int64_t>>(all.indices.begin(), all.indices.begin() + 3));
  CHECK(again.images == std::vector<std::vector<double>>(all.images.begin(), all.images.begin() + 3));
  CHECK_THROWS_AS(whole.restore({77, 0, 7}), Error);
}

TEST_CASE("loader: next_batch crosses epochs") {
  Loader l(ramp(4), {.batch_size = 3, .seed = 2});
  std::vector<int64_t> epochs;
  for (int i = 0; i < 5; ++i) epochs.push_back(l.next_batch().epoch);
  CHECK(epochs == std::vector<int64_t>{0, 0, 1, 1, 2});
}

TEST_CASE("loader: a failure while prefetching reaches the caller in order; shutdown never hangs") {
  const Dataset d = ramp(20);
  std::atomic<int> calls{0};
  LoaderOptions opt{.batch_size = 2, .seed = 1, .prefetch = 3};
  opt.transform = [&](Batch& b) {
    ++calls;
    if (b.index == 2) throw Error("transform failed on batch 2");
  };
  Loader l(d, opt);
  CHECK(l.next().has_value());
  CHECK(l.next().has_value());
  CHECK_THROWS_WITH_AS(l.next(), "transform failed on batch 2", Error);
  CHECK_THROWS_WITH_AS(l.next(), "transform failed on batch 2", Error);  // stays failed
  CHECK(calls.load() == 3);                                              // the worker stopped at the failure
  l.restore({1, 0, 3});                                                  // skip past it
  CHECK(l.next()->index == 3);
  // destroyed with a full queue and with the worker blocked: returns promptly
  for (int k = 0; k < 20; ++k) {
    Loader busy(d, {.batch_size = 2, .seed = uint64_t(k), .prefetch = 2});
    busy.next();
  }
  { Loader never_used(d, {.batch_size = 2}); }
}
