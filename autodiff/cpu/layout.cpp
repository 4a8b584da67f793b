// CPU layout and indexing kernels: expand, permute, slice and its adjoint, index_select,
// gather and their scatter-adds (the CUDA twins are in autodiff/cuda/layout.cu). Scatters
// add in index order, so repeated indices sum deterministically.

#include <algorithm>

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/loops.hpp"
#include "autodiff/kernel_util.hpp"

namespace flatmin::cpu {

using kernels::broadcast_strides;
using kernels::dispatch;

void expand(const Tensor& x, Tensor& out) {
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    if (x.numel() == 1) {  // a scalar (a reduction's gradient): a fill, without stride vectors
      std::fill_n(ptr<T>(out), out.numel(), ptr<T>(x)[0]);
      return;
    }
    strided_copy(ptr<T>(x), 0, broadcast_strides(x.shape(), out.shape()), out.shape(), ptr<T>(out));
  });
}
void permute(const Tensor& x, Tensor& out, const std::vector<int64_t>& perm) {
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    std::vector<int64_t> sx(x.dim()), st(x.dim());
    for (int64_t i = x.dim() - 1, s = 1; i >= 0; --i) {
      sx[i] = s;
      s *= x.shape()[i];
    }
    for (size_t i = 0; i < perm.size(); ++i) st[i] = sx[perm[i]];
    strided_copy(ptr<T>(x), 0, st, out.shape(), ptr<T>(out));
  });
}
void slice(const Tensor& x, Tensor& out, int64_t axis, int64_t start, int64_t step) {
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    std::vector<int64_t> sx(x.dim());
    for (int64_t i = x.dim() - 1, s = 1; i >= 0; --i) {
      sx[i] = s;
      s *= x.shape()[i];
    }
    const int64_t offset = start * sx[axis];
    sx[axis] *= step;
    strided_copy(ptr<T>(x), offset, sx, out.shape(), ptr<T>(out));
  });
}
void slice_add(const Tensor& src, Tensor& out, int64_t axis, int64_t start, int64_t step) {
  dispatch(src.dtype(), [&](auto z) {
    using T = decltype(z);
    int64_t outer, n, inner, on, oi;
    split_axis(src.shape(), axis, outer, n, inner);
    split_axis(out.shape(), axis, outer, on, oi);
    const T* s = ptr<T>(src);
    T* d = ptr<T>(out);
    parallel_for(outer * n, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t o = r / n, j = r % n;
        T* dst = d + (o * on + start + j * step) * inner;
        const T* sp = s + r * inner;
        for (int64_t i = 0; i < inner; ++i) dst[i] += sp[i];
      }
    });
  });
}

void index_select(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) {
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    int64_t outer, n, inner;
    split_axis(x.shape(), axis, outer, n, inner);
    const int64_t k = idx.numel();
    const int64_t* ix = ptr<int64_t>(idx);
    const T* s = ptr<T>(x);
    T* d = ptr<T>(out);
    parallel_for(outer * k, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t o = r / k, j = r % k;
        std::memcpy(d + r * inner, s + (o * n + ix[j]) * inner, size_t(inner) * sizeof(T));
      }
    });
  });
}
void index_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) {
  dispatch(src.dtype(), [&](auto z) {
    using T = decltype(z);
    int64_t outer, n, inner;
    split_axis(out.shape(), axis, outer, n, inner);
    const int64_t k = idx.numel();
    const int64_t* ix = ptr<int64_t>(idx);
    const T* s = ptr<T>(src);
    T* d = ptr<T>(out);
    // parallel over (outer, inner); serial over the indices, which may repeat
    parallel_for(outer, 1, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o)
        for (int64_t j = 0; j < k; ++j) {
          T* dst = d + (o * n + ix[j]) * inner;
          const T* sp = s + (o * k + j) * inner;
          for (int64_t i = 0; i < inner; ++i) dst[i] += sp[i];
        }
    });
  });
}
void gather(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) {
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    int64_t outer, n, inner, k, ii;
    split_axis(x.shape(), axis, outer, n, inner);
    split_axis(idx.shape(), axis, outer, k, ii);
    const int64_t* ix = ptr<int64_t>(idx);
    const T* s = ptr<T>(x);
    T* d = ptr<T>(out);
    parallel_for(outer * k, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t o = r / k;
        for (int64_t i = 0; i < inner; ++i) d[r * inner + i] = s[(o * n + ix[r * inner + i]) * inner + i];
      }
    });
  });
}
void scatter_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) {
  dispatch(src.dtype(), [&](auto z) {
    using T = decltype(z);
    int64_t outer, n, inner, k, ii;
    split_axis(out.shape(), axis, outer, n, inner);
    split_axis(idx.shape(), axis, outer, k, ii);
    const int64_t* ix = ptr<int64_t>(idx);
    const T* s = ptr<T>(src);
    T* d = ptr<T>(out);
    parallel_for(outer, 1, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o)
        for (int64_t j = 0; j < k; ++j)
          for (int64_t i = 0; i < inner; ++i) {
            const int64_t r = (o * k + j) * inner + i;
            d[(o * n + ix[r]) * inner + i] += s[r];
          }
    });
  });
}

}  // namespace flatmin::cpu
