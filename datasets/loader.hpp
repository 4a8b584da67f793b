// Loader: batches of a Dataset, seeded shuffling per epoch, augmentation (pad-crop, flip),
// per-channel normalization, and background prefetch. Everything random is a function of
// (seed, epoch, position) only, so a run resumed from a saved LoaderState sees exactly the
// batches an uninterrupted run would have seen, whatever the prefetch depth or thread count.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "datasets/dataset.hpp"

namespace flatmin::data {

struct Batch {
  Tensor images;                 // (b, ...) in LoaderOptions::dtype, on LoaderOptions::device
  Tensor labels;                 // int64 labels, or targets in LoaderOptions::dtype
  std::vector<int64_t> indices;  // the dataset indices of the examples
  int64_t epoch = 0, index = 0;  // index: batch number within the epoch
};

struct LoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = true;
  bool drop_last = false;  // drop the last, smaller batch of an epoch
  uint64_t seed = 0;
  int64_t pad_crop = 0;  // random crop of the same size after zero-padding by this many pixels (4 for CIFAR)
  bool flip = false;     // random horizontal flip, probability 1/2
  std::vector<double> mean = {}, std = {};  // per-channel (axis 1) normalization (x - mean)/std, after augmentation
  DType dtype = DType::f32;
  Device device = Device::cpu();
  int64_t prefetch = 2;  // batches prepared ahead on a background thread; 0 = prepared in next()
  // Optional extra per-batch transform, run where the batch is prepared (background thread
  // when prefetching) on CPU tensors; an exception it throws reaches the caller of next().
  std::function<void(Batch&)> transform = {};
};

// Where a loader stands: `position` batches of `epoch` have been handed out.
struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t position = 0;
  bool operator==(const LoaderState&) const = default;
};

class Loader {
 public:
  Loader(Dataset ds, LoaderOptions opt);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t batches_per_epoch() const { return batches_; }
  const Dataset& dataset() const { return ds_; }
  const LoaderOptions& options() const { return opt_; }

  // The next batch of the current epoch, or nullopt once the epoch is exhausted (the call
  // after that starts the next epoch).
  std::optional<Batch> next();
  // The next batch, crossing epoch boundaries (for step-counted training).
  Batch next_batch();

  LoaderState state() const { return state_; }
  // Continue from a saved state (its seed replaces options().seed).
  void restore(const LoaderState& s);

  // The dataset indices of epoch `epoch`'s order (a permutation when shuffling).
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  struct Item {
    int64_t epoch = 0, position = 0;
    std::optional<Batch> batch;  // nullopt = end of epoch
    std::exception_ptr error;
  };
  Item produce(int64_t epoch, int64_t position, const std::vector<int64_t>& order) const;
  Batch make_batch(int64_t epoch, int64_t position, const std::vector<int64_t>& order) const;
  void start_worker();
  void stop_worker();
  void work(int64_t epoch, int64_t position);

  Dataset ds_;
  LoaderOptions opt_;
  int64_t batches_ = 0;
  LoaderState state_;
  std::exception_ptr failed_;
  std::vector<int64_t> sync_order_;  // the current epoch's order when prefetch = 0
  int64_t sync_order_epoch_ = -1;

  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stop_ = false;
};

}  // namespace flatmin::data
