#include "autodiff/small_alloc.hpp"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <utility>

namespace flatmin::detail {
namespace {
constexpr size_t granule = 64, classes = small_block_max / granule;
constexpr size_t max_cached_bytes = size_t(32) << 20;  // per thread, all sizes together

struct FreeBlock {
  FreeBlock* next;
};
// Trivial, so access needs no initialization guard; initial-exec TLS makes that access a
// plain offset from the thread pointer (no __tls_get_addr call): it sits on every op's path.
struct Cache {
  FreeBlock* head[classes];
  size_t cached_bytes;
  bool releaser_armed;  // this thread's Releaser exists
  bool gone;            // the thread is exiting: blocks go straight to free()
};
__attribute__((tls_model("initial-exec"))) thread_local Cache cache{};

// Frees this thread's cached blocks when the thread exits; objects freed later (static
// tensors at exit) go to free().
struct Releaser {
  ~Releaser() {
    cache.gone = true;
    for (FreeBlock*& h : cache.head)
      while (h) std::free(std::exchange(h, h->next));
    cache.cached_bytes = 0;
  }
};
thread_local Releaser releaser;

size_t size_class(size_t bytes) { return bytes == 0 ? 0 : (bytes - 1) / granule; }
}  // namespace

void* small_alloc(size_t bytes) {
  if (bytes <= small_block_max && !cache.gone) {
    const size_t c = size_class(bytes);
    if (FreeBlock* b = cache.head[c]) {
      cache.head[c] = b->next;
      cache.cached_bytes -= (c + 1) * granule;
      return b;
    }
    bytes = (c + 1) * granule;
  }
  // 64-byte aligned like large tensors: Eigen's vectorized loops peel a different number of
  // leading elements at other alignments, which changes rounding (results must not depend
  // on where a tensor happens to live).
  void* p = std::aligned_alloc(64, (std::max<size_t>(bytes, 1) + 63) / 64 * 64);
  if (!p) throw std::bad_alloc();
  return p;
}

void small_free(void* p, size_t bytes) noexcept {
  if (!p) return;
  if (bytes > small_block_max || cache.gone) {
    std::free(p);
    return;
  }
  const size_t c = size_class(bytes), size = (c + 1) * granule;
  if (cache.cached_bytes + size > max_cached_bytes) {
    std::free(p);
    return;
  }
  if (!cache.releaser_armed) {
    cache.releaser_armed = true;
    (void)&releaser;  // odr-use: constructs it now, so it runs at this thread's exit
  }
  auto* b = static_cast<FreeBlock*>(p);
  b->next = cache.head[c];
  cache.head[c] = b;
  cache.cached_bytes += size;
}

}  // namespace flatmin::detail
