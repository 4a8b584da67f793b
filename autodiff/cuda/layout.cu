// Layout and indexing kernels: strided copies (expand, permute, slice), slice_add, and
// index_select / index_add / gather / scatter_add. The two scatters are deterministic and
// atomic-free: each thread owns one (outer, inner) column of the output and adds the
// sources of that column in index order, the same order as the CPU backend, so duplicate
// indices give bitwise the CPU's sums.
#include "autodiff/cuda/kernels.hpp"

namespace flatmin::cuda {

namespace {

template <class T> __global__ void strided_copy_kernel(const T* in, T* out, int64_t n, Indexer<1> ix) {
  FM_GRID_LOOP(i, n) {
    int64_t off[1];
    offsets(ix, i, off);
    out[i] = in[off[0]];
  }
}

template <class T> __global__ void slice_add_kernel(const T* src, T* out, int64_t total, int64_t n, int64_t inner,
                                                    int64_t out_n, int64_t start, int64_t step) {
  FM_GRID_LOOP(r, total) {
    const int64_t i = r % inner, j = (r / inner) % n, o = r / (inner * n);
    out[(o * out_n + start + j * step) * inner + i] += src[r];
  }
}

template <class T> __global__ void index_select_kernel(const T* x, const int64_t* idx, T* out, int64_t total, int64_t k,
                                                       int64_t inner, int64_t n) {
  FM_GRID_LOOP(r, total) {
    const int64_t i = r % inner, j = (r / inner) % k, o = r / (inner * k);
    out[r] = x[(o * n + idx[j]) * inner + i];
  }
}

template <class T> __global__ void index_add_kernel(const T* src, const int64_t* idx, T* out, int64_t columns,
                                                    int64_t k, int64_t inner, int64_t n) {
  FM_GRID_LOOP(col, columns) {
    const int64_t o = col / inner, i = col % inner;
    for (int64_t j = 0; j < k; ++j) out[(o * n + idx[j]) * inner + i] += src[(o * k + j) * inner + i];
  }
}

template <class T> __global__ void gather_kernel(const T* x, const int64_t* idx, T* out, int64_t total, int64_t k,
                                                 int64_t inner, int64_t n) {
  FM_GRID_LOOP(r, total) {
    const int64_t i = r % inner, o = r / (inner * k);
    out[r] = x[(o * n + idx[r]) * inner + i];
  }
}

template <class T> __global__ void scatter_add_kernel(const T* src, const int64_t* idx, T* out, int64_t columns,
                                                      int64_t k, int64_t inner, int64_t n) {
  FM_GRID_LOOP(col, columns) {
    const int64_t o = col / inner, i = col % inner;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = (o * k + j) * inner + i;
      out[(o * n + idx[r]) * inner + i] += src[r];
    }
  }
}

// x viewed as [outer, n, inner] around `axis`.
void split_axis(const Shape& s, int64_t axis, int64_t& outer, int64_t& n, int64_t& inner) {
  outer = 1;
  inner = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= s[size_t(i)];
  n = s[size_t(axis)];
  for (size_t i = size_t(axis) + 1; i < s.size(); ++i) inner *= s[i];
}

template <class T> T* ptr(Tensor& t) { return data_ptr<T>(t); }
template <class T> const T* ptr(const Tensor& t) { return data_ptr<T>(t); }

}  // namespace

void strided_copy(const Ctx& c, const Tensor& in, int64_t offset, const std::vector<int64_t>& strides, Tensor& out,
                  const char* op) {
  const int64_t n = out.numel();
  if (!n) return;
  const Indexer<1> ix = make_indexer<1>(out.shape(), {strides}, op);
  dispatch(in.dtype(), [&](auto z) {
    using T = decltype(z);
    strided_copy_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(ptr<T>(in) + offset, ptr<T>(out), n, ix);
  });
  after_launch(c, op);
}

void slice_add(const Ctx& c, const Tensor& src, Tensor& out, int64_t axis, int64_t start, int64_t step) {
  const int64_t total = src.numel();
  if (!total) return;
  int64_t outer, n, inner, out_outer, out_n, out_inner;
  split_axis(src.shape(), axis, outer, n, inner);
  split_axis(out.shape(), axis, out_outer, out_n, out_inner);
  dispatch(src.dtype(), [&](auto z) {
    using T = decltype(z);
    slice_add_kernel<T>
        <<<grid_for(total), kThreads, 0, c.stream>>>(ptr<T>(src), ptr<T>(out), total, n, inner, out_n, start, step);
  });
  after_launch(c, "slice_add");
}

void index_select(const Ctx& c, const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) {
  const int64_t total = out.numel();
  if (!total) return;
  int64_t outer, n, inner;
  split_axis(x.shape(), axis, outer, n, inner);
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    index_select_kernel<T><<<grid_for(total), kThreads, 0, c.stream>>>(ptr<T>(x), ptr<int64_t>(idx), ptr<T>(out), total,
                                                                       idx.numel(), inner, n);
  });
  after_launch(c, "index_select");
}

void index_add(const Ctx& c, const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) {
  int64_t outer, n, inner;
  split_axis(out.shape(), axis, outer, n, inner);
  const int64_t columns = outer * inner;
  if (!columns || !idx.numel()) return;
  dispatch(src.dtype(), [&](auto z) {
    using T = decltype(z);
    index_add_kernel<T><<<grid_for(columns), kThreads, 0, c.stream>>>(ptr<T>(src), ptr<int64_t>(idx), ptr<T>(out),
                                                                      columns, idx.numel(), inner, n);
  });
  after_launch(c, "index_add");
}

void gather(const Ctx& c, const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) {
  const int64_t total = out.numel();
  if (!total) return;
  int64_t outer, n, inner, k, idx_inner;
  split_axis(x.shape(), axis, outer, n, inner);
  split_axis(idx.shape(), axis, outer, k, idx_inner);
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    gather_kernel<T>
        <<<grid_for(total), kThreads, 0, c.stream>>>(ptr<T>(x), ptr<int64_t>(idx), ptr<T>(out), total, k, inner, n);
  });
  after_launch(c, "gather");
}

void scatter_add(const Ctx& c, const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) {
  int64_t outer, n, inner, k, idx_inner;
  split_axis(out.shape(), axis, outer, n, inner);
  split_axis(idx.shape(), axis, outer, k, idx_inner);
  const int64_t columns = outer * inner;
  if (!columns || !k) return;
  dispatch(src.dtype(), [&](auto z) {
    using T = decltype(z);
    scatter_add_kernel<T><<<grid_for(columns), kThreads, 0, c.stream>>>(ptr<T>(src), ptr<int64_t>(idx), ptr<T>(out),
                                                                        columns, k, inner, n);
  });
  after_launch(c, "scatter_add");
}

}  // namespace flatmin::cuda
