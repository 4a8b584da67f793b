// The real Fashion-MNIST from Debian's dataset-fashion-mnist package. The expected numbers
// were read from the .gz files with Python's gzip module (see the comment of each check).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "datasets/readers.hpp"

using namespace flatmin;
using namespace flatmin::data;

// Reference values: /usr/bin/python3 -c "import gzip; L=gzip.open('train-labels-idx1-ubyte.gz').read();
// I=gzip.open('train-images-idx3-ubyte.gz').read(); print(list(L[8:18]), sum(I[16:16+784]), max(I[16:]))"
// -> [9, 0, 0, 3, 0, 2, 7, 2, 5, 5] 76247 255 (train); [9, 2, 1, 1, 6, 1, 4, 6, 5, 7] 33456 255 (t10k).
TEST_CASE("fashion-mnist (Debian package): counts, labels and pixels") {
  const Dataset train = load_fashion_mnist(true);
  CHECK(train.images.shape() == Shape{60000, 1, 28, 28});
  CHECK(train.labels.shape() == Shape{60000});
  CHECK(train.classes == 10);
  CHECK(label_histogram(train) == std::vector<int64_t>(10, 6000));
  const auto labels = train.labels.to_int_vector();
  CHECK(std::vector<int64_t>(labels.begin(), labels.begin() + 10) ==
        std::vector<int64_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5});
  const float* p = train.images.data<float>();
  const auto [lo, hi] = std::minmax_element(p, p + train.images.numel());
  CHECK(*lo == 0.0f);
  CHECK(*hi == 1.0f);
  long first = 0;  // back to bytes: v/255 * 255 rounds to v
  for (int k = 0; k < 784; ++k) first += std::lround(double(p[k]) * 255.0);
  CHECK(first == 76247);
  CHECK(p[100] == doctest::Approx(73.0 / 255.0));  // pixel 100 of image 0 is byte 73

  const Dataset test = load_fashion_mnist(false);
  CHECK(test.size() == 10000);
  CHECK(label_histogram(test) == std::vector<int64_t>(10, 1000));
  CHECK(test.labels.to_int_vector()[1] == 2);
  long first_test = 0;
  for (int k = 0; k < 784; ++k) first_test += std::lround(double(test.images.data<float>()[k]) * 255.0);
  CHECK(first_test == 33456);
}
