// The engine's allocators (autodiff/small_alloc.hpp and the CPU block cache): what they
// hand out is aligned and reusable across threads, and reused memory holds no stale values
// that an op could read.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <thread>
#include <vector>

#include "autodiff/autodiff.hpp"
#include "autodiff/small_alloc.hpp"

using namespace flatmin;

TEST_CASE("tensor data is 64-byte aligned at every size, small and large") {
  std::vector<Tensor> keep;
  for (int64_t n : {1, 3, 10, 16, 17, 255, 256, 257, 1000, 5000, 300000}) {
    for (DType t : {DType::f32, DType::f64}) {
      Tensor x = zeros({n}, {t});
      CHECK(reinterpret_cast<uintptr_t>(x.raw()) % 64 == 0);
      keep.push_back(x);
    }
  }
}

TEST_CASE("small blocks freed on another thread are reused safely") {
  std::vector<void*> blocks;
  for (size_t bytes = 1; bytes <= detail::small_block_max; bytes += 37) blocks.push_back(detail::small_alloc(bytes));
  std::thread other([&] {
    size_t bytes = 1;
    for (void* p : blocks) {
      detail::small_free(p, bytes);
      bytes += 37;
    }
  });
  other.join();
  // Tensors made and freed on several threads at once keep their values.
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      bool good = true;
      for (int i = 0; i < 2000; ++i) {
        Tensor a = full({int64_t(1 + i % 300)}, double(t));
        Tensor b = add_scalar(a, 1.0);
        good = good && b.to_vector().back() == double(t + 1);
      }
      ok[t] = good;
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) CHECK(ok[t] == 1);
}

TEST_CASE("a reused large block is fully overwritten by the op that gets it") {
  const int64_t n = 1 << 18;  // 1 MiB of float32: the block cache's range
  { Tensor junk = full({n}, 7.0); }
  Tensor z = zeros({n});  // very likely the same block
  Tensor s = sum(z);
  CHECK(s.item() == 0.0);
  Tensor e = add(ones({n}), zeros({n}));
  CHECK(sum(e).item() == double(n));
}

namespace {
double resident_mib() {  // this process's resident set, from /proc/self/statm
  std::ifstream statm("/proc/self/statm");
  long pages_total = 0, pages_resident = 0;
  statm >> pages_total >> pages_resident;
  return double(pages_resident) * double(sysconf(_SC_PAGESIZE)) / double(1 << 20);
}
}  // namespace

TEST_CASE("release_cached_memory hands the CPU block cache back to the system, live tensors untouched") {
  Backend& cpu = backend(Device::cpu());
  cpu.release_cached_memory();
  Tensor kept = full({1 << 16}, 3.0);  // 256 KiB of float32, live throughout
  const double before = resident_mib();
  { Tensor big = full({int64_t(8) << 20}, 1.0); }  // 32 MiB written, then freed: now cached
  const double cached = resident_mib();
  CHECK(cached > before + 24);
  const size_t released = cpu.release_cached_memory();
  CHECK(released >= size_t(32) << 20);
  CHECK(resident_mib() < cached - 24);  // the pages really left the process
  CHECK(cpu.release_cached_memory() == 0);
  CHECK(sum(kept).item() == 3.0 * (1 << 16));
  Tensor again = full({int64_t(8) << 20}, 2.0);  // the cache refills as needed
  CHECK(sum(again).item() == 2.0 * (int64_t(8) << 20));
}

TEST_CASE("the CPU block cache hands a freed block out again for a request up to 1.5x smaller") {
  Backend& cpu = backend(Device::cpu());
  cpu.release_cached_memory();
  const size_t mib = size_t(1) << 20, smaller = 2 * mib + mib / 2;
  void* a = cpu.allocate(3 * mib);
  cpu.deallocate(a, 3 * mib);
  void* b = cpu.allocate(smaller);  // 2.5 MiB: the cached 3 MiB block
  CHECK(b == a);
  void* c = cpu.allocate(3 * mib);  // a fresh block: the cached one is in use
  CHECK(c != a);
  cpu.deallocate(c, 3 * mib);
  void* d = cpu.allocate(mib);  // 1 MiB: the cached 3 MiB block would be 3x it
  CHECK(d != c);
  cpu.deallocate(d, mib);
  cpu.deallocate(b, smaller);  // comes back as the 3 MiB block it is
  CHECK(cpu.release_cached_memory() == 7 * mib);
}

TEST_CASE("the CPU block cache hands out a larger cached block rather than evict to stay under its bound") {
  Backend& cpu = backend(Device::cpu());
  cpu.release_cached_memory();  // the high-water mark restarts at what is live now
  const size_t mib = size_t(1) << 20;
  std::vector<void*> large, medium;
  for (int i = 0; i < 8; ++i) large.push_back(cpu.allocate(40 * mib));  // high water: +320 MiB
  for (void* p : large) cpu.deallocate(p, 40 * mib);                    // all cached
  // 8 MiB: the 40 MiB blocks are over 1.5x it, so fresh blocks; cached + live now reach the
  // bound exactly (high water + 64 MiB of slack), and freed they are cached too.
  for (int i = 0; i < 8; ++i) medium.push_back(cpu.allocate(8 * mib));
  for (void* p : medium) cpu.deallocate(p, 8 * mib);
  // 5 MiB: no cached block within 1.5x, and a fresh one would exceed the bound: the smallest
  // larger block (an 8 MiB one) instead of handing 8 MiB back and mapping 5 anew.
  void* small = cpu.allocate(5 * mib);
  CHECK(std::find(medium.begin(), medium.end(), small) != medium.end());
  cpu.deallocate(small, 5 * mib);                                // comes back as the 8 MiB block it is
  CHECK(cpu.release_cached_memory() == (8 * 40 + 8 * 8) * mib);  // nothing was evicted
}
