// A per-thread cache of small heap blocks for the engine's own objects (tensor, storage,
// graph node, the data of tiny tensors). A recorded op allocates several of them and a
// graph frees them in bursts of thousands, which glibc's per-thread cache (7 blocks per
// size) does not absorb: the blocks would go through malloc's bins and consolidation.
// Blocks are 64-byte aligned heap blocks kept on per-size free lists, so a block may be
// freed on another thread than the one that allocated it. Internal: not installed.
#pragma once
#include <cstddef>

namespace flatmin::detail {

constexpr size_t small_block_max = 1024;  // larger requests go straight to malloc
void* small_alloc(size_t bytes);          // 64-byte aligned; never nullptr (throws std::bad_alloc)
void small_free(void* p, size_t bytes) noexcept;

// For std::allocate_shared: one cached block holds the control block and the object.
template <class T> struct SmallAllocator {
  using value_type = T;
  SmallAllocator() = default;
  template <class U> SmallAllocator(const SmallAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(small_alloc(n * sizeof(T))); }
  void deallocate(T* p, size_t n) noexcept { small_free(p, n * sizeof(T)); }
  template <class U> bool operator==(const SmallAllocator<U>&) const { return true; }
};

}  // namespace flatmin::detail
