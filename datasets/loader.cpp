#include "datasets/loader.hpp"

#include <cmath>
#include <cstring>

#include <tbb/parallel_for.h>

#include "autodiff/philox.hpp"
#include "autodiff/random.hpp"

namespace flatmin::data {

namespace {
uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
// Independent streams per (seed, epoch): one for the order, one for augmentation.
uint64_t epoch_key(uint64_t seed, int64_t epoch, uint64_t stream) {
  return splitmix(splitmix(seed ^ stream) ^ uint64_t(epoch));
}
constexpr uint64_t kOrderStream = 0x6F72646572ULL, kAugStream = 0x61756776ULL;
}  // namespace

Loader::Loader(Dataset ds, LoaderOptions opt) : ds_(std::move(ds)), opt_(std::move(opt)) {
  ds_.validate();
  const std::string what = "loader on '" + ds_.name + "': ";
  const int64_t n = ds_.size();
  if (opt_.batch_size < 1) throw Error(what + "batch size must be >= 1");
  if (opt_.batch_size > n)
    throw Error(what + "batch size " + std::to_string(opt_.batch_size) + " is larger than the dataset (" +
                std::to_string(n) + " examples)");
  if (!is_floating(opt_.dtype)) throw Error(what + "output dtype must be floating");
  if (opt_.prefetch < 0) throw Error(what + "prefetch must be >= 0");
  if (opt_.pad_crop < 0) throw Error(what + "pad_crop must be >= 0");
  if ((opt_.pad_crop > 0 || opt_.flip) && ds_.images.dim() != 4)
    throw Error(what + "pad-crop and flip need images (N,C,H,W), got " + to_string(ds_.images.shape()));
  if (opt_.mean.size() != opt_.std.size()) throw Error(what + "mean and std must have the same length");
  if (!opt_.mean.empty()) {
    if (int64_t(opt_.mean.size()) != ds_.images.size(1))
      throw Error(what + std::to_string(opt_.mean.size()) + " normalization channels for images " +
                  to_string(ds_.images.shape()));
    for (double s : opt_.std)
      if (!(s > 0.0)) throw Error(what + "normalization std must be > 0");
  }
  batches_ = opt_.drop_last ? n / opt_.batch_size : (n + opt_.batch_size - 1) / opt_.batch_size;
  state_ = {opt_.seed, 0, 0};
}

Loader::~Loader() { stop_worker(); }

std::vector<int64_t> Loader::epoch_order(int64_t epoch) const {
  const int64_t n = ds_.size();
  if (!opt_.shuffle) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
    return order;
  }
  Generator g(epoch_key(state_.seed, epoch, kOrderStream));
  return g.permutation(n);
}

// One example: pad-crop and flip (in that order, as torchvision), then normalization.
template <class In, class Out>
static void augment_one(const In* src, Out* dst, int64_t c, int64_t h, int64_t w, int64_t dy, int64_t dx, bool flip,
                        const std::vector<double>& mean, const std::vector<double>& std) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const double m = mean.empty() ? 0.0 : mean[size_t(ch)];
    const double s = std.empty() ? 1.0 : std[size_t(ch)];
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) {
        const int64_t sy = y + dy, sx = (flip ? w - 1 - x : x) + dx;
        const double v = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? double(src[(ch * h + sy) * w + sx]) : 0.0;
        dst[(ch * h + y) * w + x] = Out((v - m) / s);
      }
  }
}

template <class In, class Out> static void fill_images(const Dataset& ds, const LoaderOptions& opt,
                                                       const std::vector<int64_t>& idx, uint64_t key,
                                                       int64_t first_slot, Tensor& out) {
  const In* src = ds.images.data<In>();
  Out* dst = out.data<Out>();
  const int64_t row = ds.images.numel() / ds.size();
  const bool augment = opt.pad_crop > 0 || opt.flip;
  const int64_t c = ds.images.size(1);
  tbb::parallel_for(size_t(0), idx.size(), [&](size_t j) {
    const In* s = src + idx[j] * row;
    Out* d = dst + int64_t(j) * row;
    if (augment) {
      // Example j of this batch is slot first_slot + j of the epoch: its own Philox counter.
      const philox::U4 r = philox::block(uint64_t(first_slot) + j, key);
      const uint64_t span = uint64_t(2 * opt.pad_crop + 1);
      const int64_t dy = int64_t(r.x % span) - opt.pad_crop, dx = int64_t(r.y % span) - opt.pad_crop;
      const bool flip = opt.flip && (r.z & 1u);
      augment_one(s, d, c, ds.images.size(2), ds.images.size(3), dy, dx, flip, opt.mean, opt.std);
    } else if (!opt.mean.empty()) {
      const int64_t inner = row / c;
      for (int64_t k = 0; k < row; ++k) {
        const size_t ch = size_t(k / inner);
        d[k] = Out((double(s[k]) - opt.mean[ch]) / opt.std[ch]);
      }
    } else {
      for (int64_t k = 0; k < row; ++k) d[k] = Out(s[k]);
    }
  });
}

Batch Loader::make_batch(int64_t epoch, int64_t position, const std::vector<int64_t>& order) const {
  const int64_t n = ds_.size(), first = position * opt_.batch_size;
  const int64_t b = std::min(opt_.batch_size, n - first);
  Batch batch;
  batch.epoch = epoch;
  batch.index = position;
  batch.indices.assign(order.begin() + first, order.begin() + first + b);
  Shape s = ds_.images.shape();
  s[0] = b;
  batch.images = empty(s, {opt_.dtype});
  const uint64_t key = epoch_key(state_.seed, epoch, kAugStream);
  const bool in32 = ds_.images.dtype() == DType::f32, out32 = opt_.dtype == DType::f32;
  if (in32 && out32) fill_images<float, float>(ds_, opt_, batch.indices, key, first, batch.images);
  if (in32 && !out32) fill_images<float, double>(ds_, opt_, batch.indices, key, first, batch.images);
  if (!in32 && out32) fill_images<double, float>(ds_, opt_, batch.indices, key, first, batch.images);
  if (!in32 && !out32) fill_images<double, double>(ds_, opt_, batch.indices, key, first, batch.images);

  Shape ls = ds_.labels.shape();
  ls[0] = b;
  const int64_t lrow = ds_.labels.numel() / n;
  if (ds_.labels.dtype() == DType::i64) {
    batch.labels = empty(ls, {DType::i64});
    for (int64_t j = 0; j < b; ++j)
      std::memcpy(batch.labels.data<int64_t>() + j * lrow, ds_.labels.data<int64_t>() + batch.indices[j] * lrow,
                  size_t(lrow) * sizeof(int64_t));
  } else {
    batch.labels = empty(ls, {opt_.dtype});
    const std::vector<double> none;
    const bool l32 = ds_.labels.dtype() == DType::f32;
    for (int64_t j = 0; j < b; ++j)
      for (int64_t k = 0; k < lrow; ++k) {
        const int64_t from = batch.indices[j] * lrow + k, to = j * lrow + k;
        const double v = l32 ? double(ds_.labels.data<float>()[from]) : ds_.labels.data<double>()[from];
        if (out32)
          batch.labels.data<float>()[to] = float(v);
        else
          batch.labels.data<double>()[to] = v;
      }
  }
  if (opt_.transform) opt_.transform(batch);
  return batch;
}

Loader::Item Loader::produce(int64_t epoch, int64_t position, const std::vector<int64_t>& order) const {
  Item it{epoch, position, std::nullopt, nullptr};
  if (position >= batches_) return it;  // end of epoch
  try {
    it.batch = make_batch(epoch, position, order);
  } catch (...) {
    it.error = std::current_exception();
  }
  return it;
}

void Loader::work(int64_t epoch, int64_t position) {
  std::vector<int64_t> order;
  int64_t order_epoch = -1;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || int64_t(queue_.size()) < opt_.prefetch; });
      if (stop_) return;
    }
    Item it;
    try {
      if (order_epoch != epoch) {
        order = epoch_order(epoch);
        order_epoch = epoch;
      }
      it = produce(epoch, position, order);
    } catch (...) {
      it = Item{epoch, position, std::nullopt, std::current_exception()};
    }
    const bool failed = it.error != nullptr;
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(it));
    }
    cv_.notify_all();
    if (failed) return;  // nothing after a failure: the caller gets the error in order
    if (position >= batches_) {
      ++epoch;
      position = 0;
    } else {
      ++position;
    }
  }
}

void Loader::start_worker() {
  stop_ = false;
  queue_.clear();
  worker_ = std::thread([this, e = state_.epoch, p = state_.position] { work(e, p); });
}

void Loader::stop_worker() {
  if (!worker_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
  queue_.clear();
}

std::optional<Batch> Loader::next() {
  if (failed_) std::rethrow_exception(failed_);
  Item it;
  if (opt_.prefetch == 0) {
    if (sync_order_epoch_ != state_.epoch) {
      sync_order_ = epoch_order(state_.epoch);
      sync_order_epoch_ = state_.epoch;
    }
    it = produce(state_.epoch, state_.position, sync_order_);
  } else {
    if (!worker_.joinable()) start_worker();
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !queue_.empty(); });
    it = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    cv_.notify_all();
  }
  if (it.epoch != state_.epoch || it.position != state_.position)
    throw Error("loader: internal error, batch order lost");  // guards the invariant above
  if (it.error) {
    failed_ = it.error;
    std::rethrow_exception(failed_);
  }
  if (!it.batch) {
    state_.epoch += 1;
    state_.position = 0;
    return std::nullopt;
  }
  state_.position += 1;
  if (!(opt_.device == Device::cpu())) {
    it.batch->images = it.batch->images.to(opt_.device);
    it.batch->labels = it.batch->labels.to(opt_.device);
  }
  return it.batch;
}

Batch Loader::next_batch() {
  if (auto b = next()) return std::move(*b);
  return std::move(*next());  // a new epoch always has at least one batch
}

void Loader::restore(const LoaderState& s) {
  if (s.epoch < 0 || s.position < 0 || s.position > batches_)
    throw Error("loader on '" + ds_.name + "': cannot restore epoch " + std::to_string(s.epoch) + " position " +
                std::to_string(s.position) + " (" + std::to_string(batches_) + " batches per epoch)");
  stop_worker();
  failed_ = nullptr;
  state_ = s;
  sync_order_epoch_ = -1;  // the seed may have changed
}

}  // namespace flatmin::data
