// Internal to the CPU backend: the fixed-order sums that batch norm's (norm.cpp) and group
// norm's (group_norm.cpp) kernels share. Every sum runs in double in an order fixed by the
// shape, never by the thread count.
#pragma once
#include <cstdint>

#include "autodiff/tensor.hpp"

namespace flatmin::cpu {

// Rows of C values are walked as wide rows of at least this many values (several rows of a
// small C), so that loops across channels run long enough to vectorize.
constexpr int64_t kWideRow = 128;

// Σ f(i) over i in [0, n), in double with eight interleaved accumulators (vectorizable,
// and the same order on every run).
template <class F> double span_sum(int64_t n, F&& f) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += f(i + j);
  for (int j = 0; i < n; ++i, ++j) acc[j] += f(i);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// The data from offset o on, or null for an undefined (optional) tensor.
template <class T> const T* maybe(const Tensor& t, int64_t o = 0) { return t.defined() ? data_ptr<T>(t) + o : nullptr; }
template <class T> T* maybe_out(Tensor& t, int64_t o = 0) { return t.defined() ? data_ptr<T>(t) + o : nullptr; }

}  // namespace flatmin::cpu
