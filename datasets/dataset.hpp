// Dataset: an in-memory set of examples. Image sets hold images (N,C,H,W) float32 in [0,1]
// and labels (N) int64 in [0, classes); feature sets hold inputs (N,d); regression sets
// hold float targets in `labels` and classes = 0. The loader batches all of them alike.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "autodiff/tensor.hpp"

namespace flatmin::data {

struct Dataset {
  Tensor images;        // (N, ...) floating, on the CPU
  Tensor labels;        // (N) int64 for classification; (N, ...) floating for regression
  int64_t classes = 0;  // 0 = regression (float targets)
  std::string name;

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
  Shape example_shape() const;  // images' shape without the leading N
  bool is_classification() const { return classes > 0; }
  // Throws Error unless shapes, dtypes, devices and label ranges are consistent.
  void validate() const;
  // The examples at `indices` (in that order, repeats allowed), copied.
  Dataset subset(const std::vector<int64_t>& indices) const;
  // The first n examples (copied), e.g. for quick runs on part of a set.
  Dataset head(int64_t n) const;
};

// Number of examples of each class (classification sets).
std::vector<int64_t> label_histogram(const Dataset& ds);

// A copy whose labels are replaced, for exactly round(p*N) examples chosen uniformly
// without replacement, by labels drawn uniformly from [0, classes) (they may coincide
// with the true label, as in Zhang et al. 2017). Seeded: same seed, same labels.
Dataset corrupt_labels(const Dataset& ds, double fraction, uint64_t seed);

// The "bad global minimum" data (docs/algorithms.md §7, after Liu et al. 2020): `copies` noisy
// copies of every image, each with round(zero_fraction * H*W) pixel positions (all channels)
// set to 0, and a label drawn uniformly at random for each copy. Example j*N + i is copy j
// of image i. Materialized: copies*N*C*H*W*4 bytes (CIFAR-10, 10 copies: 6.1 GB).
struct NoisyCopiesOptions {
  int64_t copies = 10;
  double zero_fraction = 0.1;
  uint64_t seed = 0;
};
Dataset noisy_copies(const Dataset& ds, NoisyCopiesOptions opt = {});

// Per-channel (axis 1) mean and standard deviation of the images (population std), for
// the loader's normalization.
struct ChannelStats {
  std::vector<double> mean, std;
};
ChannelStats channel_stats(const Dataset& ds);

}  // namespace flatmin::data
