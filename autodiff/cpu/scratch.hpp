// Internal to the CPU backend: scratch memory for kernels (conv.cpp, winograd.cpp), taken
// from the backend's own allocator so that its block cache reuses it across calls and
// counts it against the peak-memory bound.
#pragma once
#include <tbb/task_arena.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "autodiff/cpu/cpu_kernels.hpp"

namespace flatmin::cpu {

// n uninitialized elements, returned to the allocator on scope exit.
template <class T> class Workspace {
 public:
  explicit Workspace(size_t n) : bytes_(n * sizeof(T)), p_(static_cast<T*>(instance().allocate(bytes_))) {}
  ~Workspace() { instance().deallocate(p_, bytes_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  T* data() const { return p_; }

 private:
  size_t bytes_;
  T* p_;
};

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
    if (!b) b = std::make_unique<Workspace<T>>(n_);
    return b->data();
  }

 private:
  size_t n_;
  std::vector<std::unique_ptr<Workspace<T>>> bufs_;
};

}  // namespace flatmin::cpu
