// Dataset helpers: subset, validation, label corruption, the noisy copies of docs/algorithms.md §7,
// channel statistics.
#include <doctest/doctest.h>

#include <cmath>
#include <set>

#include "datasets/dataset.hpp"

using namespace flatmin;
using namespace flatmin::data;

namespace {
// n images (n,c,h,w) where image i has value 1 + i + 0.01*k at flat position k (never 0).
Dataset ramp(int64_t n, int64_t c, int64_t h, int64_t w, int64_t classes = 10) {
  std::vector<float> v;
  std::vector<int64_t> l;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < c * h * w; ++k) v.push_back(float(1 + i) + 0.01f * float(k));
    l.push_back(i % classes);
  }
  return {from_vector(v, {n, c, h, w}), from_ints(l, {n}), classes, "ramp"};
}
}  // namespace

TEST_CASE("dataset: subset and head copy the chosen rows; validate catches inconsistencies") {
  const Dataset d = ramp(5, 1, 2, 2);
  const Dataset s = d.subset({4, 0, 4});
  CHECK(s.images.shape() == Shape{3, 1, 2, 2});
  CHECK(s.labels.to_int_vector() == std::vector<int64_t>{4, 0, 4});
  CHECK(s.images.data<float>()[0] == 5.0f);
  CHECK(s.images.data<float>()[4 + 3] == doctest::Approx(1.03f));
  CHECK(d.head(2).labels.to_int_vector() == std::vector<int64_t>{0, 1});
  CHECK_THROWS_AS(d.subset({5}), Error);
  CHECK_THROWS_AS(d.head(6), Error);
  d.validate();
  Dataset bad = d;
  bad.classes = 3;  // label 4 is out of range
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("label 3 of example 3 is outside [0, 3)"), Error);
  bad = d;
  bad.labels = from_ints({0, 1}, {2});
  CHECK_THROWS_AS(bad.validate(), Error);
  CHECK(label_histogram(ramp(7, 1, 1, 1, 3)) == std::vector<int64_t>{3, 2, 2});
}

TEST_CASE("corrupt_labels: exactly round(p*N) labels redrawn, seeded, images untouched") {
  const Dataset d = ramp(1000, 1, 1, 1, 10);
  const auto orig = d.labels.to_int_vector();
  CHECK(corrupt_labels(d, 0.0, 1).labels.to_int_vector() == orig);
  const Dataset c = corrupt_labels(d, 0.5, 7);
  const auto lab = c.labels.to_int_vector();
  int changed = 0;
  for (size_t i = 0; i < lab.size(); ++i) {
    CHECK(lab[i] >= 0);
    CHECK(lab[i] < 10);
    changed += lab[i] != orig[i];
  }
  // 500 redrawn labels, each equal to the old one with probability 1/10: ~450 change.
  CHECK(changed <= 500);
  CHECK(changed >= 400);
  CHECK(corrupt_labels(d, 0.5, 7).labels.to_int_vector() == lab);
  CHECK(corrupt_labels(d, 0.5, 8).labels.to_int_vector() != lab);
  CHECK(c.images.impl()->storage == d.images.impl()->storage);  // shared, not copied
  // p = 1 on 10 classes leaves ~1/10 of the labels as they were
  const auto all = corrupt_labels(d, 1.0, 3).labels.to_int_vector();
  int same = 0;
  for (size_t i = 0; i < all.size(); ++i) same += all[i] == orig[i];
  CHECK(same > 50);
  CHECK(same < 150);
  CHECK_THROWS_AS(corrupt_labels(d, 1.5, 0), Error);
}

TEST_CASE("noisy_copies: k copies per image, exactly round(f*H*W) pixels zeroed in all channels") {
  const Dataset d = ramp(3, 2, 4, 5);
  const Dataset n = noisy_copies(d, {.copies = 4, .zero_fraction = 0.1, .seed = 11});
  CHECK(n.images.shape() == Shape{12, 2, 4, 5});
  CHECK(n.classes == 10);
  const float* src = d.images.data<float>();
  const float* p = n.images.data<float>();
  std::set<std::vector<int>> masks;
  for (int64_t e = 0; e < 12; ++e) {
    const int64_t i = e % 3;  // copy e/3 of image e%3
    std::vector<int> zeroed;
    for (int64_t k = 0; k < 20; ++k) {
      const float a = p[(e * 2 + 0) * 20 + k], b = p[(e * 2 + 1) * 20 + k];
      if (a == 0.0f) {
        CHECK(b == 0.0f);  // the same pixel in every channel
        zeroed.push_back(int(k));
      } else {
        CHECK(a == src[(i * 2 + 0) * 20 + k]);
        CHECK(b == src[(i * 2 + 1) * 20 + k]);
      }
    }
    CHECK(zeroed.size() == 2);  // round(0.1 * 20)
    masks.insert(zeroed);
  }
  CHECK(masks.size() > 6);  // the masks differ between copies
  const auto labels = n.labels.to_int_vector();
  for (int64_t l : labels) CHECK((l >= 0 && l < 10));
  CHECK(std::set<int64_t>(labels.begin(), labels.end()).size() > 3);  // random, not copied
  const Dataset again = noisy_copies(d, {.copies = 4, .zero_fraction = 0.1, .seed = 11});
  CHECK(again.images.to_vector() == n.images.to_vector());
  CHECK(again.labels.to_int_vector() == labels);
  CHECK_THROWS_AS(noisy_copies(d, {.copies = 0}), Error);
}

TEST_CASE("channel_stats: per-channel mean and population std") {
  // channel 0 values {1, 3, 5, 7}: mean 4, std sqrt(5); channel 1 all 2: mean 2, std 0
  const Dataset d{from_vector(std::vector<float>{1, 3, 2, 2, 5, 7, 2, 2}, {2, 2, 1, 2}), from_ints({0, 1}, {2}), 2,
                  "s"};
  const ChannelStats s = channel_stats(d);
  CHECK(s.mean[0] == doctest::Approx(4.0));
  CHECK(s.std[0] == doctest::Approx(std::sqrt(5.0)));
  CHECK(s.mean[1] == doctest::Approx(2.0));
  CHECK(s.std[1] == doctest::Approx(0.0));
}
