#include "datasets/dataset.hpp"

#include <cmath>
#include <cstring>

#include <tbb/parallel_for.h>

#include "autodiff/philox.hpp"
#include "autodiff/random.hpp"

namespace flatmin::data {

Shape Dataset::example_shape() const {
  if (!images.defined()) throw Error("dataset '" + name + "': no images");
  return Shape(images.shape().begin() + 1, images.shape().end());
}

void Dataset::validate() const {
  const std::string what = "dataset '" + name + "': ";
  if (!images.defined() || !labels.defined()) throw Error(what + "images or labels missing");
  if (images.dim() < 2) throw Error(what + "images must be (N, ...), got " + to_string(images.shape()));
  if (!is_floating(images.dtype())) throw Error(what + "images must be floating");
  if (!(images.device() == Device::cpu()) || !(labels.device() == Device::cpu()))
    throw Error(what + "images and labels must live on the CPU");
  if (labels.dim() < 1 || labels.size(0) != images.size(0))
    throw Error(what + "labels " + to_string(labels.shape()) + " do not match images " + to_string(images.shape()));
  if (classes < 0) throw Error(what + "negative class count");
  if (classes > 0) {
    if (labels.dtype() != DType::i64 || labels.dim() != 1)
      throw Error(what + "classification labels must be int64 (N)");
    const int64_t* l = labels.data<int64_t>();
    for (int64_t i = 0; i < labels.numel(); ++i)
      if (l[i] < 0 || l[i] >= classes)
        throw Error(what + "label " + std::to_string(l[i]) + " of example " + std::to_string(i) + " is outside [0, " +
                    std::to_string(classes) + ")");
  } else if (!is_floating(labels.dtype())) {
    throw Error(what + "regression targets (classes = 0) must be floating");
  }
}

// Rows `indices` of a contiguous CPU tensor, copied.
static Tensor take_rows(const Tensor& t, const std::vector<int64_t>& indices, const std::string& what) {
  Shape s = t.shape();
  const int64_t n = s[0];
  s[0] = int64_t(indices.size());
  Tensor out = empty(s, t.options());
  const size_t row = size_t(t.numel() / std::max<int64_t>(n, 1)) * dtype_size(t.dtype());
  const auto* src = static_cast<const uint8_t*>(t.raw());
  auto* dst = static_cast<uint8_t*>(out.raw());
  for (size_t k = 0; k < indices.size(); ++k) {
    const int64_t i = indices[k];
    if (i < 0 || i >= n)
      throw Error(what + ": index " + std::to_string(i) + " out of range [0, " + std::to_string(n) + ")");
    std::memcpy(dst + k * row, src + size_t(i) * row, row);
  }
  return out;
}

Dataset Dataset::subset(const std::vector<int64_t>& indices) const {
  const std::string what = "dataset '" + name + "' subset";
  return {take_rows(images, indices, what), take_rows(labels, indices, what), classes, name};
}

Dataset Dataset::head(int64_t n) const {
  if (n < 0 || n > size())
    throw Error("dataset '" + name + "' head: " + std::to_string(n) + " examples asked, " + std::to_string(size()) +
                " held");
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = i;
  return subset(idx);
}

std::vector<int64_t> label_histogram(const Dataset& ds) {
  if (!ds.is_classification()) throw Error("label_histogram: dataset '" + ds.name + "' has no classes");
  std::vector<int64_t> h(size_t(ds.classes), 0);
  const int64_t* l = ds.labels.data<int64_t>();
  for (int64_t i = 0; i < ds.labels.numel(); ++i) {
    if (l[i] < 0 || l[i] >= ds.classes) throw Error("label_histogram: label out of range in '" + ds.name + "'");
    ++h[size_t(l[i])];
  }
  return h;
}

Dataset corrupt_labels(const Dataset& ds, double fraction, uint64_t seed) {
  if (!ds.is_classification()) throw Error("corrupt_labels: dataset '" + ds.name + "' has no classes");
  if (!(fraction >= 0.0 && fraction <= 1.0))
    throw Error("corrupt_labels: fraction must be in [0, 1], got " + std::to_string(fraction));
  Generator g(seed);
  const int64_t n = ds.size();
  const int64_t k = std::llround(fraction * double(n));
  const std::vector<int64_t> order = g.permutation(n);
  Tensor labels = empty(ds.labels.shape(), {DType::i64});
  int64_t* l = labels.data<int64_t>();
  std::memcpy(l, ds.labels.data<int64_t>(), size_t(n) * sizeof(int64_t));
  for (int64_t j = 0; j < k; ++j) l[order[size_t(j)]] = g.randint(ds.classes);
  return {ds.images, labels, ds.classes, ds.name + "+random-labels(" + std::to_string(fraction) + ")"};
}

Dataset noisy_copies(const Dataset& ds, NoisyCopiesOptions opt) {
  ds.validate();
  if (!ds.is_classification() || ds.images.dim() != 4 || ds.images.dtype() != DType::f32)
    throw Error("noisy_copies: needs a classification set of float32 images (N,C,H,W), got '" + ds.name + "'");
  if (opt.copies < 1) throw Error("noisy_copies: copies must be >= 1");
  if (!(opt.zero_fraction >= 0.0 && opt.zero_fraction <= 1.0))
    throw Error("noisy_copies: zero_fraction must be in [0, 1]");
  const int64_t n = ds.size(), c = ds.images.size(1), hw = ds.images.size(2) * ds.images.size(3);
  const int64_t zeroed = std::llround(opt.zero_fraction * double(hw));
  const int64_t total = n * opt.copies;
  Tensor images = empty({total, c, ds.images.size(2), ds.images.size(3)});
  const float* src = ds.images.data<float>();
  float* dst = images.data<float>();
  // Each copy draws its pixels from its own Philox counters: parallel and seed-determined.
  const uint64_t key = opt.seed ^ 0x6E6F69737943ULL;
  tbb::parallel_for(int64_t(0), total, [&](int64_t e) {
    const int64_t i = e % n;
    std::memcpy(dst + e * c * hw, src + i * c * hw, size_t(c * hw) * sizeof(float));
    std::vector<int64_t> pos(static_cast<size_t>(hw));
    for (int64_t p = 0; p < hw; ++p) pos[size_t(p)] = p;
    for (int64_t p = 0; p < zeroed; ++p) {  // partial Fisher-Yates: `zeroed` distinct positions
      const double u = philox::uniform(key, uint64_t(e) * uint64_t(hw) + uint64_t(p));
      const int64_t j = p + std::min<int64_t>(hw - p - 1, int64_t(u * double(hw - p)));
      std::swap(pos[size_t(p)], pos[size_t(j)]);
      for (int64_t ch = 0; ch < c; ++ch) dst[(e * c + ch) * hw + pos[size_t(p)]] = 0.0f;
    }
  });
  Generator g(opt.seed);
  std::vector<int64_t> labels(static_cast<size_t>(total));
  for (auto& l : labels) l = g.randint(ds.classes);
  return {images, from_ints(labels, {total}), ds.classes,
          ds.name + "+noisy-copies(" + std::to_string(opt.copies) + ")"};
}

template <class T> static ChannelStats stats_of(const T* p, int64_t n, int64_t c, int64_t inner) {
  ChannelStats s{std::vector<double>(size_t(c), 0.0), std::vector<double>(size_t(c), 0.0)};
  const double count = double(n) * double(inner);
  for (int64_t ch = 0; ch < c; ++ch) {
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < inner; ++k) sum += double(p[(i * c + ch) * inner + k]);
    const double m = sum / count;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < inner; ++k) {
        const double d = double(p[(i * c + ch) * inner + k]) - m;
        sq += d * d;
      }
    s.mean[size_t(ch)] = m;
    s.std[size_t(ch)] = std::sqrt(sq / count);
  }
  return s;
}

ChannelStats channel_stats(const Dataset& ds) {
  ds.validate();
  const int64_t n = ds.size(), c = ds.images.size(1);
  if (n == 0 || c == 0) throw Error("channel_stats: dataset '" + ds.name + "' is empty");
  const int64_t inner = ds.images.numel() / (n * c);
  if (ds.images.dtype() == DType::f32) return stats_of(ds.images.data<float>(), n, c, inner);
  return stats_of(ds.images.data<double>(), n, c, inner);
}

}  // namespace flatmin::data
