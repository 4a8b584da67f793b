// Internal to the CPU backend: the cache of freed blocks behind CpuBackend::allocate.
#pragma once
#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "autodiff/tensor.hpp"

namespace flatmin::cpu {

// Freed blocks over 1 KiB are kept, keyed by size, and handed out again (below): a training step
// allocates the same sizes every step, and memory fresh from the kernel costs a page fault
// per 4 KiB page on first touch (measured: a ResNet-18 step at batch 128 runs at 37 img/s
// without this cache, 55 with it). What the cache may hold is bounded by the program's own
// high-water mark: live + cached bytes stay under the largest live total seen so far plus
// `slack`, so caching never raises the peak memory by more than `slack`; a miss that would
// exceed it hands cached blocks back first. 64 MiB: with the two size rules below a ResNet-18
// step faults ~0 pages per step with it as with 192, and peaks 40-90 MiB lower (2026-12-02,
// Zen 5, `/usr/bin/time -f %R` reps 2 against 4: steps at batch 32 and 128, float32 and
// bfloat16, eval, second order, the 1x28x28 and escape models); with 0 the same steps took
// 2-20K faults per step and peaked up to 420 MiB higher (the any-size fallback's blocks).
// Before those rules 64 lost 7-20% of a batch-32 step to page faults, so it was 192.
// Blocks of 1 MiB and more come from mmap and go back with munmap, so what leaves the cache
// really leaves the process (glibc would keep them in its heap once its dynamic mmap
// threshold has grown). No fixed cap besides that bound: with a 512 MiB cap a step at batch
// 128 (live high-water ~780 MiB) handed ~340 MiB back at the end of every step and took
// 88K page faults (0.29 CPU-s) per step to map it again; bounded by the high-water mark
// alone, 16K, with the same peak RSS (973 MiB).
// A request takes the smallest cached block of its size up to 1.5x it (the block keeps its
// size: granted_ remembers it until it comes back). With exact sizes only, a step's blocks
// need the sum over sizes of each size's own peak, more than the bound allows, and every step
// evicted and mapped again (2026-12-02, Zen 4, `/usr/bin/time -f %R`, reps 2 against 4):
// 231K page faults per step at batch 128, 318K on the 1x28x28 model, 33K at batch 32; with
// blocks up to 1.25x, 13K, 94K and 3K; up to 1.5x, 8K, ~0 and 2K, peak RSS +0-5%.
// Where a fresh block would take live + cached over the bound (so cached blocks would be
// handed back to make room, and mapped again later), a request of 1 MiB or more takes the
// smallest larger cached block of any size instead: already resident, so no eviction and no
// page faults. On an Intel Xeon (2026-12-02) oneDNN's Winograd scratchpads (8-53 MB per call)
// still churned the 1.5x rule: 31-35K page faults per step at batch 128, 16K on 1x28x28, 35K per eval
// forward at batch 128; with this fallback 2K at batch 128, ~0 on the others, peak RSS +0-4%.
class BlockCache {
 public:
  static constexpr size_t max_block = size_t(64) << 20, slack = size_t(64) << 20;
  static constexpr size_t mmap_min = size_t(1) << 20;
  static size_t rounded(size_t bytes) {  // whole cache lines; whole pages for mapped blocks
    const size_t unit = bytes < mmap_min ? 64 : 4096;
    return (bytes + unit - 1) / unit * unit;
  }
  void* allocate(size_t bytes) {
    const size_t size = rounded(bytes);
    std::vector<std::pair<void*, size_t>> evicted;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_ += size;
      high_water_ = std::max(high_water_, live_);
      auto it = free_.lower_bound(size);
      // Mapped sizes only: a small request's fresh block costs a few faults, not worth holding
      // a large block for as long as it lives.
      if (it != free_.end() && (it->first <= size + size / 2 || (size >= mmap_min && over_bound()))) {
        const size_t got = it->first;
        p = it->second;
        cached_ -= got;
        free_.erase(it);
        live_ += got - size;
        high_water_ = std::max(high_water_, live_);
        if (got != size) granted_.emplace(p, got);
        return p;
      }
      while (!free_.empty() && over_bound()) {
        auto victim = free_.begin();
        evicted.emplace_back(victim->second, victim->first);
        cached_ -= victim->first;
        free_.erase(victim);
      }
    }
    for (auto [q, n] : evicted) release(q, n);
    p = size >= mmap_min ? map(size) : std::aligned_alloc(64, size);
    if (!p) {
      std::lock_guard<std::mutex> lock(mutex_);
      live_ -= size;
      throw Error("cpu: out of memory allocating " + std::to_string(bytes) + " bytes");
    }
    return p;
  }
  void deallocate(void* p, size_t bytes) {
    size_t size = rounded(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (auto g = granted_.find(p); g != granted_.end()) {
        size = g->second;
        granted_.erase(g);
      }
      live_ -= size;
      if (size <= max_block && live_ + cached_ + size <= high_water_ + slack) {
        free_.emplace(size, p);
        cached_ += size;
        return;
      }
    }
    release(p, size);
  }

  // Every cached block back to the system; the high-water mark restarts from what is live, so
  // the cache grows again only as far as the program's next peak (Backend::release_cached_memory).
  size_t release_all() {
    std::vector<std::pair<void*, size_t>> evicted;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto [size, p] : free_) evicted.emplace_back(p, size);
      free_.clear();
      bytes = cached_;
      cached_ = 0;
      high_water_ = live_;
    }
    for (auto [q, n] : evicted) release(q, n);
    return bytes;
  }

 private:
  bool over_bound() const { return live_ + cached_ > high_water_ + slack; }  // under mutex_
  static void* map(size_t size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  static void release(void* p, size_t size) {
    if (size >= mmap_min)
      ::munmap(p, size);
    else
      std::free(p);
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> granted_;
  size_t cached_ = 0, live_ = 0, high_water_ = 0;
};

}  // namespace flatmin::cpu
