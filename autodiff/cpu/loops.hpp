// Internal to the CPU backend: the loop helpers its elementwise, reduction and layout
// kernels share (axis collapsing, parallel rows, strided copies).
#pragma once
#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "autodiff/cpu/cpu_kernels.hpp"

namespace flatmin::cpu {

// Merges adjacent axes that are contiguous for every operand, so loops run long inner rows.
inline void collapse(Shape& shape, std::vector<std::vector<int64_t>*> strides) {
  if (shape.empty()) return;
  Shape ns{shape[0]};
  std::vector<std::vector<int64_t>> nst;
  for (auto* s : strides) nst.push_back({(*s)[0]});
  for (size_t i = 1; i < shape.size(); ++i) {
    bool merge = true;
    for (size_t k = 0; k < strides.size(); ++k) merge &= nst[k].back() == (*strides[k])[i] * shape[i];
    if (merge) {
      ns.back() *= shape[i];
      for (size_t k = 0; k < strides.size(); ++k) nst[k].back() = (*strides[k])[i];
    } else {
      ns.push_back(shape[i]);
      for (size_t k = 0; k < strides.size(); ++k) nst[k].push_back((*strides[k])[i]);
    }
  }
  shape = ns;
  for (size_t k = 0; k < strides.size(); ++k) *strides[k] = nst[k];
}

// Calls f(row, offsets...) for each row of `shape` without its last axis, where offsets[k]
// is the start of that row in operand k (strides per operand). Rows run in parallel.
template <size_t K, class F>
void for_each_row(const Shape& shape, const std::array<const std::vector<int64_t>*, K>& strides, F&& f) {
  const int64_t nd = int64_t(shape.size());
  const int64_t inner = nd ? shape[nd - 1] : 1;
  const int64_t rows = inner ? numel(shape) / inner : 0;
  // The first row's offsets by division, then an odometer over the outer axes: short rows
  // (a broadcast per channel over 4x4 planes) would otherwise pay more for the index
  // arithmetic than for their work.
  auto body = [&](int64_t r0, int64_t r1) {
    if (r0 >= r1) return;
    std::array<int64_t, K> off{};
    std::vector<int64_t> idx(size_t(std::max<int64_t>(nd - 1, 0)));
    int64_t rem = r0;
    for (int64_t d = nd - 2; d >= 0; --d) {
      idx[size_t(d)] = rem % shape[d];
      rem /= shape[d];
      for (size_t k = 0; k < K; ++k) off[k] += idx[size_t(d)] * (*strides[k])[d];
    }
    for (int64_t r = r0;;) {
      f(r, off);
      if (++r == r1) break;
      for (int64_t d = nd - 2; d >= 0; --d) {  // advance: carry into the next-outer axis
        for (size_t k = 0; k < K; ++k) off[k] += (*strides[k])[d];
        if (++idx[size_t(d)] < shape[d]) break;
        for (size_t k = 0; k < K; ++k) off[k] -= shape[d] * (*strides[k])[d];
        idx[size_t(d)] = 0;
      }
    }
  };
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), body);
}

template <class T> T* ptr(Tensor& t) { return data_ptr<T>(t); }
template <class T> const T* ptr(const Tensor& t) { return data_ptr<T>(t); }

// out (contiguous, shape `shape`) = in[offset + Σ i_d * strides_d]
template <class T> void strided_copy(const T* in, int64_t offset, std::vector<int64_t> strides, Shape shape, T* out) {
  std::vector<int64_t> so(shape.size());
  for (int64_t i = int64_t(shape.size()) - 1, s = 1; i >= 0; --i) {
    so[i] = s;
    s *= shape[i];
  }
  collapse(shape, {&strides, &so});
  const int64_t inner = shape.empty() ? 1 : shape.back(), is = strides.empty() ? 0 : strides.back();
  for_each_row<2>(shape, {&strides, &so}, [&](int64_t, const std::array<int64_t, 2>& off) {
    const T* src = in + offset + off[0];
    T* dst = out + off[1];
    if (is == 1)
      std::memcpy(dst, src, size_t(inner) * sizeof(T));
    else
      for (int64_t i = 0; i < inner; ++i) dst[i] = src[i * is];
  });
}

// x viewed as [outer, n, inner] around `axis`.
inline void split_axis(const Shape& s, int64_t axis, int64_t& outer, int64_t& n, int64_t& inner) {
  outer = 1;
  inner = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= s[i];
  n = s[axis];
  for (size_t i = size_t(axis) + 1; i < s.size(); ++i) inner *= s[i];
}

}  // namespace flatmin::cpu
