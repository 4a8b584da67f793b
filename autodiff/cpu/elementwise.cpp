// CPU elementwise kernels: fill, cast, arange, unary and broadcast binary ops, where, and
// Philox random numbers (the CUDA twins are in autodiff/cuda/elementwise.cu). Eigen
// vectorizes the unary math; rows run in parallel on oneTBB.
#include "autodiff/eigen.hpp"  // first: its pragmas must cover <immintrin.h> (see there)

#include <cmath>

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/loops.hpp"
#include "autodiff/kernel_util.hpp"
#include "autodiff/philox.hpp"

namespace flatmin::cpu {

namespace {

using kernels::binary_value;
using kernels::broadcast_strides;
using kernels::dispatch;
using kernels::dispatch_float;

template <class T> using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;

template <class T> void unary_span(UnaryOp op, const T* x, T* y, int64_t n, double param) {
  Eigen::Map<const Arr<T>> X(x, n);
  Eigen::Map<Arr<T>> Y(y, n);
  const T p = T(param);
  switch (op) {
    case UnaryOp::neg: Y = -X; break;
    case UnaryOp::exp: Y = X.exp(); break;
    case UnaryOp::log: Y = X.log(); break;
    case UnaryOp::sqrt: Y = X.sqrt(); break;
    case UnaryOp::rsqrt: Y = X.rsqrt(); break;
    case UnaryOp::tanh: Y = X.tanh(); break;
    case UnaryOp::sigmoid: Y = X.logistic(); break;
    case UnaryOp::softplus: Y = X.max(T(0)) + (-X.abs()).exp().log1p(); break;
    case UnaryOp::relu: Y = X.max(T(0)); break;
    case UnaryOp::abs: Y = X.abs(); break;
    case UnaryOp::sign: Y = X.sign(); break;
    case UnaryOp::pow_scalar:
      if (param == 2.0)
        Y = X.square();
      else if (param == 3.0)
        Y = X.cube();
      else if (param == 0.5)
        Y = X.sqrt();
      else if (param == -1.0)
        Y = X.inverse();
      else
        Y = X.pow(p);
      break;
    case UnaryOp::add_scalar: Y = X + p; break;
    case UnaryOp::mul_scalar: Y = X * p; break;
    case UnaryOp::rsub_scalar: Y = p - X; break;
    case UnaryOp::reciprocal: Y = X.inverse(); break;
  }
}

// One row of a broadcast binary op, with the common stride patterns as vectorizable loops.
template <class T> void binary_row(BinaryOp op, const T* a, int64_t sa, const T* b, int64_t sb, T* y, int64_t n) {
#define FM_ROW(EXPR)                          \
  if (sa == 1 && sb == 1)                     \
    for (int64_t i = 0; i < n; ++i) {         \
      const T x = a[i], z = b[i];             \
      y[i] = EXPR;                            \
    }                                         \
  else if (sa == 1) {                         \
    const T z = b[0];                         \
    for (int64_t i = 0; i < n; ++i) {         \
      const T x = a[i];                       \
      y[i] = EXPR;                            \
    }                                         \
  } else if (sb == 1) {                       \
    const T x = a[0];                         \
    for (int64_t i = 0; i < n; ++i) {         \
      const T z = b[i];                       \
      y[i] = EXPR;                            \
    }                                         \
  } else {                                    \
    const T x = a[0], z = b[0];               \
    const T v = EXPR;                         \
    for (int64_t i = 0; i < n; ++i) y[i] = v; \
  }
  switch (op) {
    case BinaryOp::add: FM_ROW(x + z) break;
    case BinaryOp::sub: FM_ROW(x - z) break;
    case BinaryOp::mul: FM_ROW(x * z) break;
    case BinaryOp::div: FM_ROW(x / z) break;
    case BinaryOp::where_positive: FM_ROW(z > T(0) ? x : T(0)) break;
    case BinaryOp::tanh_backward: FM_ROW(x * (T(1) - z * z)) break;
    default: FM_ROW(binary_value(op, x, z)) break;
  }
#undef FM_ROW
}

}  // namespace

void fill(Tensor& out, double v) {
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    std::fill_n(ptr<T>(out), out.numel(), T(v));
  });
}
void cast(const Tensor& in, Tensor& out) {
  dispatch(in.dtype(), [&](auto a) {
    using A = decltype(a);
    dispatch(out.dtype(), [&](auto b) {
      using B = decltype(b);
      const A* s = ptr<A>(in);
      B* d = ptr<B>(out);
      parallel_for(in.numel(), 65536, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) d[i] = B(s[i]);
      });
    });
  });
}
void arange(Tensor& out) {
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    for (int64_t i = 0; i < out.numel(); ++i) ptr<T>(out)[i] = T(i);
  });
}

void unary(UnaryOp op, const Tensor& x, Tensor& out, double param) {
  dispatch_float(x.dtype(), "unary", [&](auto z) {
    using T = decltype(z);
    const T* a = ptr<T>(x);
    T* y = ptr<T>(out);
    parallel_for(x.numel(), 32768, [&](int64_t i0, int64_t i1) { unary_span(op, a + i0, y + i0, i1 - i0, param); });
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    // Common cases first, without stride bookkeeping: equal shapes, or one operand a
    // single element (binary_row's stride 0 repeats it).
    const Shape& out_shape = out.shape();
    const bool a_full = a.shape() == out_shape, b_full = b.shape() == out_shape;
    if ((a_full && (b_full || b.numel() == 1)) || (b_full && a.numel() == 1)) {
      const T *pa = ptr<T>(a), *pb = ptr<T>(b);
      T* y = ptr<T>(out);
      const int64_t ia = a_full ? 1 : 0, ib = b_full ? 1 : 0;
      parallel_for(out.numel(), 32768, [&](int64_t i0, int64_t i1) {
        binary_row(op, pa + i0 * ia, ia, pb + i0 * ib, ib, y + i0, i1 - i0);
      });
      return;
    }
    Shape shape = out.shape();
    std::vector<int64_t> sa = broadcast_strides(a.shape(), shape), sb = broadcast_strides(b.shape(), shape);
    std::vector<int64_t> so(shape.size());
    for (int64_t i = int64_t(shape.size()) - 1, s = 1; i >= 0; --i) {
      so[i] = s;
      s *= shape[i];
    }
    collapse(shape, {&sa, &sb, &so});
    const T *pa = ptr<T>(a), *pb = ptr<T>(b);
    T* y = ptr<T>(out);
    if (shape.empty()) {
      y[0] = binary_value(op, pa[0], pb[0]);
      return;
    }
    const int64_t inner = shape.back(), ia = sa.back(), ib = sb.back();
    // A full operand against one short row repeated along the outer axis (a per-channel
    // vector on channels-last data, [R, K] with K small): the row tiled once to a few hundred
    // values, then long equal-stride runs, instead of a call per K-value row.
    constexpr int64_t kTile = 512;
    const bool a_row = shape.size() == 2 && inner < kTile && sa[0] == 0 && ia == 1 && sb[0] == inner && ib == 1;
    const bool b_row = shape.size() == 2 && inner < kTile && sb[0] == 0 && ib == 1 && sa[0] == inner && ia == 1;
    if (a_row || b_row) {
      // (never more rows than there are: a tiny broadcast, a bias add on a few rows, stays tiny)
      const int64_t rows = shape[0], k = std::min((kTile + inner - 1) / inner, rows);
      std::vector<T> tile(size_t(k * inner));
      const T* row = a_row ? pa : pb;
      for (size_t i = 0; i < tile.size(); ++i) tile[i] = row[i % size_t(inner)];
      parallel_for((rows + k - 1) / k, std::max<int64_t>(1, 32768 / (k * inner)), [&](int64_t b0, int64_t b1) {
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t r0 = blk * k, n = std::min(k, rows - r0) * inner, o = r0 * inner;
          if (a_row)
            binary_row(op, tile.data(), 1, pb + o, 1, y + o, n);
          else
            binary_row(op, pa + o, 1, tile.data(), 1, y + o, n);
        }
      });
      return;
    }
    if (shape.size() == 1) {  // one long row: split it across threads
      parallel_for(inner, 32768, [&](int64_t i0, int64_t i1) {
        binary_row(op, pa + i0 * ia, ia, pb + i0 * ib, ib, y + i0, i1 - i0);
      });
      return;
    }
    for_each_row<3>(shape, {&sa, &sb, &so}, [&](int64_t, const std::array<int64_t, 3>& off) {
      binary_row(op, pa + off[0], ia, pb + off[1], ib, y + off[2], inner);
    });
  });
}

void where(const Tensor& c, const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    Shape shape = out.shape();
    std::vector<int64_t> sc = broadcast_strides(c.shape(), shape), sa = broadcast_strides(a.shape(), shape),
                         sb = broadcast_strides(b.shape(), shape), so(shape.size());
    for (int64_t i = int64_t(shape.size()) - 1, s = 1; i >= 0; --i) {
      so[i] = s;
      s *= shape[i];
    }
    collapse(shape, {&sc, &sa, &sb, &so});
    const T *pc = ptr<T>(c), *pa = ptr<T>(a), *pb = ptr<T>(b);
    T* y = ptr<T>(out);
    if (shape.empty()) {
      y[0] = pc[0] != T(0) ? pa[0] : pb[0];
      return;
    }
    const int64_t inner = shape.back(), ic = sc.back(), ia = sa.back(), ib = sb.back();
    for_each_row<4>(shape, {&sc, &sa, &sb, &so}, [&](int64_t, const std::array<int64_t, 4>& off) {
      for (int64_t i = 0; i < inner; ++i)
        y[off[3] + i] = pc[off[0] + i * ic] != T(0) ? pa[off[1] + i * ia] : pb[off[2] + i * ib];
    });
  });
}

void random(RandomKind kind, Tensor& out, uint64_t seed, uint64_t offset) {
  dispatch_float(out.dtype(), "random", [&](auto z) {
    using T = decltype(z);
    T* y = ptr<T>(out);
    parallel_for(out.numel(), 8192, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const uint64_t c = offset + uint64_t(i);
        y[i] = T(kind == RandomKind::uniform  ? philox::uniform(seed, c)
                 : kind == RandomKind::normal ? philox::normal(seed, c)
                                              : philox::rademacher(seed, c));
      }
    });
  });
}

}  // namespace flatmin::cpu
