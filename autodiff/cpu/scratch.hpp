// Internal to the CPU backend: per-worker scratch buffers for kernels that run one oneTBB
// loop (conv.cpp, winograd.cpp).
#pragma once
#include <tbb/task_arena.h>

#include <cstddef>
#include <memory>
#include <vector>

namespace flatmin::cpu {

// One buffer of n elements per worker slot of the current arena (tasks of one loop never
// nest, so a slot's buffer is used by one task at a time); left uninitialized, since every
// use overwrites it.
template <class T> class Scratch {
 public:
  explicit Scratch(size_t n) : n_(n), bufs_(size_t(tbb::this_task_arena::max_concurrency()) + 1) {}
  T* get() {
    const int slot = tbb::this_task_arena::current_thread_index();
    const size_t last = bufs_.size() - 1;
    auto& b = bufs_[slot < 0 || size_t(slot) >= last ? last : size_t(slot)];
    if (!b) b.reset(new T[n_]);
    return b.get();
  }

 private:
  size_t n_;
  std::vector<std::unique_ptr<T[]>> bufs_;
};

}  // namespace flatmin::cpu
