// Elementwise kernels: fill, cast, arange, unary (the CPU backend's formulas), broadcast
// binary and where, and Philox random numbers (the same as the CPU's, element for element).
#include "autodiff/cuda/kernels.hpp"
#include "autodiff/philox.hpp"

namespace flatmin::cuda {

namespace {

template <class T> __global__ void fill_kernel(T* y, int64_t n, T v) { FM_GRID_LOOP(i, n) y[i] = v; }
template <class A, class B> __global__ void cast_kernel(const A* x, B* y, int64_t n) {
  FM_GRID_LOOP(i, n) y[i] = B(x[i]);
}
template <class T> __global__ void arange_kernel(T* y, int64_t n) { FM_GRID_LOOP(i, n) y[i] = T(i); }

// Same formulas as cpu_backend.cpp's unary_span (sigmoid and softplus in their stable forms).
template <class T> __device__ __forceinline__ T unary_value(UnaryOp op, T x, double param) {
  const T p = T(param);
  switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::exp: return exp(x);
    case UnaryOp::log: return log(x);
    case UnaryOp::sqrt: return sqrt(x);
    case UnaryOp::rsqrt: return T(1) / sqrt(x);
    case UnaryOp::tanh: return tanh(x);
    case UnaryOp::sigmoid: {
      if (x >= T(0)) return T(1) / (T(1) + exp(-x));
      const T e = exp(x);
      return e / (T(1) + e);
    }
    case UnaryOp::softplus: return (x > T(0) ? x : T(0)) + log1p(exp(-fabs(x)));
    case UnaryOp::relu: return x > T(0) ? x : T(0);
    case UnaryOp::abs: return fabs(x);
    case UnaryOp::sign: return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
    case UnaryOp::pow_scalar:
      if (param == 2.0) return x * x;
      if (param == 3.0) return x * x * x;
      if (param == 0.5) return sqrt(x);
      if (param == -1.0) return T(1) / x;
      return pow(x, p);
    case UnaryOp::add_scalar: return x + p;
    case UnaryOp::mul_scalar: return x * p;
    case UnaryOp::rsub_scalar: return p - x;
    case UnaryOp::reciprocal: return T(1) / x;
  }
  return x;
}
template <class T> __global__ void unary_kernel(UnaryOp op, const T* x, T* y, int64_t n, double param) {
  FM_GRID_LOOP(i, n) y[i] = unary_value(op, x[i], param);
}

using kernels::binary_value;
template <class T> __global__ void binary_kernel(BinaryOp op, const T* a, const T* b, T* y, int64_t n, Indexer<2> ix) {
  FM_GRID_LOOP(i, n) {
    int64_t off[2];
    offsets(ix, i, off);
    y[i] = binary_value(op, a[off[0]], b[off[1]]);
  }
}
template <class T> __global__ void where_kernel(const T* c, const T* a, const T* b, T* y, int64_t n, Indexer<3> ix) {
  FM_GRID_LOOP(i, n) {
    int64_t off[3];
    offsets(ix, i, off);
    y[i] = c[off[0]] != T(0) ? a[off[1]] : b[off[2]];
  }
}

template <class T> __global__ void add_relu_kernel(const T* a, const T* b, T* y, int64_t n) {
  FM_GRID_LOOP(i, n) {
    const T v = a[i] + b[i];
    y[i] = v > T(0) ? v : T(0);
  }
}

template <class T> __global__ void random_kernel(RandomKind kind, T* y, int64_t n, uint64_t seed, uint64_t offset) {
  FM_GRID_LOOP(i, n) {
    const uint64_t c = offset + uint64_t(i);
    y[i] = T(kind == RandomKind::uniform  ? philox::uniform(seed, c)
             : kind == RandomKind::normal ? philox::normal(seed, c)
                                          : philox::rademacher(seed, c));
  }
}

template <class T> T* ptr(Tensor& t) { return data_ptr<T>(t); }
template <class T> const T* ptr(const Tensor& t) { return data_ptr<T>(t); }

}  // namespace

void fill(const Ctx& c, Tensor& out, double v) {
  const int64_t n = out.numel();
  if (!n) return;
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    fill_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(ptr<T>(out), n, T(v));
  });
  after_launch(c, "fill");
}

void cast(const Ctx& c, const Tensor& in, Tensor& out) {
  const int64_t n = in.numel();
  if (!n) return;
  dispatch(in.dtype(), [&](auto a) {
    using A = decltype(a);
    dispatch(out.dtype(), [&](auto b) {
      using B = decltype(b);
      cast_kernel<A, B><<<grid_for(n), kThreads, 0, c.stream>>>(ptr<A>(in), ptr<B>(out), n);
    });
  });
  after_launch(c, "cast");
}

void arange(const Ctx& c, Tensor& out) {
  const int64_t n = out.numel();
  if (!n) return;
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    arange_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(ptr<T>(out), n);
  });
  after_launch(c, "arange");
}

void unary(const Ctx& c, UnaryOp op, const Tensor& x, Tensor& out, double param) {
  const int64_t n = x.numel();
  dispatch_float(x.dtype(), "unary", [&](auto z) {
    using T = decltype(z);
    if (n) unary_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(op, ptr<T>(x), ptr<T>(out), n, param);
  });
  if (n) after_launch(c, "unary");
}

void binary(const Ctx& c, BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = out.numel();
  if (!n) return;
  const Shape& s = out.shape();
  const Indexer<2> ix =
      make_indexer<2>(s, {broadcast_strides(a.shape(), s), broadcast_strides(b.shape(), s)}, "binary");
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    binary_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(op, ptr<T>(a), ptr<T>(b), ptr<T>(out), n, ix);
  });
  after_launch(c, "binary");
}

void where(const Ctx& c, const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = out.numel();
  if (!n) return;
  const Shape& s = out.shape();
  const Indexer<3> ix = make_indexer<3>(
      s, {broadcast_strides(cond.shape(), s), broadcast_strides(a.shape(), s), broadcast_strides(b.shape(), s)},
      "where");
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    where_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(ptr<T>(cond), ptr<T>(a), ptr<T>(b), ptr<T>(out), n, ix);
  });
  after_launch(c, "where");
}

void add_relu(const Ctx& c, const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = out.numel();
  if (!n) return;
  dispatch_float(out.dtype(), "add_relu", [&](auto z) {
    using T = decltype(z);
    add_relu_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(ptr<T>(a), ptr<T>(b), ptr<T>(out), n);
  });
  after_launch(c, "add_relu");
}

void random(const Ctx& c, RandomKind kind, Tensor& out, uint64_t seed, uint64_t offset) {
  const int64_t n = out.numel();
  dispatch_float(out.dtype(), "random", [&](auto z) {
    using T = decltype(z);
    if (n) random_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(kind, ptr<T>(out), n, seed, offset);
  });
  if (n) after_launch(c, "random");
}

}  // namespace flatmin::cuda
