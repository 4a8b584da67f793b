// CPU reductions (sum, max, min over any set of axes; the CUDA twin is
// autodiff/cuda/reduce.cu). Every output sums in an order fixed by the shapes alone, never
// by the thread count, so results are reproducible run to run.
#include <cmath>
#include <limits>
#include <type_traits>

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/loops.hpp"
#include "autodiff/kernel_util.hpp"

namespace flatmin::cpu {

namespace {

using kernels::broadcast_strides;
using kernels::dispatch;

// How one reduction combines two values; the op is a template parameter so that the inner
// loops carry no branch and vectorize.
template <ReduceOp Op> struct Combine {
  template <class A> static A init() {
    if constexpr (Op == ReduceOp::sum) return A(0);
    if constexpr (Op == ReduceOp::max)
      return std::numeric_limits<A>::has_infinity ? -std::numeric_limits<A>::infinity()
                                                  : std::numeric_limits<A>::lowest();
    if constexpr (Op == ReduceOp::min)
      return std::numeric_limits<A>::has_infinity ? std::numeric_limits<A>::infinity() : std::numeric_limits<A>::max();
  }
  template <class A> static A apply(A a, A b) {
    if constexpr (Op == ReduceOp::sum) return a + b;
    if constexpr (Op == ReduceOp::max) return b > a ? b : a;
    if constexpr (Op == ReduceOp::min) return b < a ? b : a;
  }
};

// Combines x[0], x[s], ..., x[(n-1)s] in eight interleaved accumulators (one latency chain
// each instead of one for all: a single chain of double adds runs at a quarter of the
// memory's speed), joined in a fixed tree: the order depends on n alone.
template <ReduceOp Op, class Acc, class T> Acc span_reduce(const T* x, int64_t n, int64_t s) {
  using C = Combine<Op>;
  Acc acc[8];
  for (Acc& a : acc) a = C::template init<Acc>();
  int64_t i = 0;
  if (s == 1)
    for (; i + 8 <= n; i += 8)
      for (int j = 0; j < 8; ++j) acc[j] = C::apply(acc[j], Acc(x[i + j]));
  else
    for (; i + 8 <= n; i += 8)
      for (int j = 0; j < 8; ++j) acc[j] = C::apply(acc[j], Acc(x[(i + j) * s]));
  for (int j = 0; i < n; ++i, ++j) acc[j] = C::apply(acc[j], Acc(x[i * s]));
  return C::apply(C::apply(C::apply(acc[0], acc[1]), C::apply(acc[2], acc[3])),
                  C::apply(C::apply(acc[4], acc[5]), C::apply(acc[6], acc[7])));
}

// Reduction of x over the axes where out has extent 1. Each output's value is combined in
// a fixed order: in spans of the innermost reduced axis (span_reduce), or in fixed-size
// blocks combined left to right.
template <ReduceOp Op, class T> void reduce_impl(const Tensor& xt, Tensor& outt) {
  using Acc = std::conditional_t<std::is_same_v<T, int64_t>, int64_t, double>;
  using C = Combine<Op>;
  const T* x = ptr<T>(xt);
  T* out = ptr<T>(outt);
  constexpr int64_t block = 16384;
  // All of a small tensor to one value (a gradient's dot product): what the general path
  // below computes for it, without its stride vectors.
  if (outt.numel() == 1 && xt.numel() >= 1 && xt.numel() <= block) {
    out[0] = T(C::apply(C::template init<Acc>(), span_reduce<Op, Acc>(x, xt.numel(), 1)));
    return;
  }
  Shape shape = xt.shape();
  std::vector<int64_t> sin(shape.size()), sout = broadcast_strides(outt.shape(), shape);
  for (int64_t i = int64_t(shape.size()) - 1, s = 1; i >= 0; --i) {
    sin[i] = s;
    s *= shape[i];
  }
  collapse(shape, {&sin, &sout});
  const int64_t nout = outt.numel(), nin = xt.numel();
  const Acc init = C::template init<Acc>();
  if (nin == 0) {
    for (int64_t i = 0; i < nout; ++i) out[i] = T(0);
    return;
  }
  // Kept and reduced axes, each with its input stride.
  std::vector<int64_t> kext, kstr, rext, rstr;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (sout[d] == 0 && shape[d] != 1) {
      rext.push_back(shape[d]);
      rstr.push_back(sin[d]);
    } else {
      kext.push_back(shape[d]);
      kstr.push_back(sin[d]);
    }
  }
  const int64_t R = nin / nout;
  // Pattern [R, K] (reduce a leading axis, keep a contiguous trailing one): add rows.
  if (rext.size() == 1 && kext.size() == 1 && kstr[0] == 1 && rstr[0] == kext[0]) {
    const int64_t K = kext[0];
    parallel_for(K, 256, [&](int64_t k0, int64_t k1) {
      std::vector<Acc> acc(size_t(k1 - k0), init);
      for (int64_t r = 0; r < R; ++r) {
        const T* row = x + r * K;
        for (int64_t k = k0; k < k1; ++k) acc[k - k0] = C::apply(acc[k - k0], Acc(row[k]));
      }
      for (int64_t k = k0; k < k1; ++k) out[k] = T(acc[k - k0]);
    });
    return;
  }
  // Reduced elements [r0, r1) (flat index over the reduced axes) from base offset, one span
  // of the innermost reduced axis at a time.
  auto partial = [&](int64_t base, int64_t r0, int64_t r1) {
    Acc acc = init;
    const int64_t nr = int64_t(rext.size());
    const int64_t inner = nr ? rext[nr - 1] : 1, istr = nr ? rstr[nr - 1] : 0;
    int64_t r = r0;
    while (r < r1) {
      int64_t off = base, rem = r / inner;
      for (int64_t d = nr - 2; d >= 0; --d) {
        off += (rem % rext[d]) * rstr[d];
        rem /= rext[d];
      }
      const int64_t i0 = r % inner, i1 = std::min(inner, i0 + (r1 - r));
      acc = C::apply(acc, span_reduce<Op, Acc>(x + off + i0 * istr, i1 - i0, istr));
      r += i1 - i0;
    }
    return acc;
  };
  auto base_of = [&](int64_t o) {
    int64_t off = 0, rem = o;
    for (int64_t d = int64_t(kext.size()) - 1; d >= 0; --d) {
      off += (rem % kext[d]) * kstr[d];
      rem /= kext[d];
    }
    return off;
  };
  if (nout >= 16 || R <= block) {
    parallel_for(nout, std::max<int64_t>(1, block / std::max<int64_t>(R, 1)), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) out[o] = T(partial(base_of(o), 0, R));
    });
    return;
  }
  const int64_t nblocks = (R + block - 1) / block;
  std::vector<Acc> parts(static_cast<size_t>(nblocks));
  for (int64_t o = 0; o < nout; ++o) {
    const int64_t base = base_of(o);
    parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) parts[b] = partial(base, b * block, std::min(R, (b + 1) * block));
    });
    Acc acc = init;
    for (Acc p : parts) acc = C::apply(acc, p);
    out[o] = T(acc);
  }
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, Tensor& out) {
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    switch (op) {
      case ReduceOp::sum: return reduce_impl<ReduceOp::sum, T>(x, out);
      case ReduceOp::max: return reduce_impl<ReduceOp::max, T>(x, out);
      case ReduceOp::min: return reduce_impl<ReduceOp::min, T>(x, out);
    }
    throw Error("reduce: unknown reduction");
  });
}

}  // namespace flatmin::cpu
