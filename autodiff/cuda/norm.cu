// Fused batch norm with batch statistics (the CPU's autodiff/cpu/norm.cpp on the GPU): the
// forward, the first-order backward and the two second-order rules for unrecorded sweeps.
// Each channel's N*S elements are split into P parts (P from the shape alone, so that the
// grid fills the GPU: one block per channel left most of it idle on the wide early layers);
// a sum kernel writes each part's sums in double (a fixed tree per block), and the kernel
// after it adds a channel's P partial sums in part order. No atomics: results are
// deterministic and the same in every process. Recorded sweeps use the differentiable rules
// (nn_ops.cpp).
#include "autodiff/cuda/kernels.hpp"

namespace flatmin::cuda {

namespace {

// x viewed as [N, C, S]: element j of channel c (j < N*S) is at (j / S) * C*S + c*S + j % S.
struct BnLayout {
  int64_t N, C, S;
  FM_HD int64_t M() const { return N * S; }
};
// P parts of `chunk` consecutive j per channel; work item q = c * P + p.
struct BnSplit {
  int64_t P, chunk;
};
constexpr int64_t kBnBlocksWanted = 1024;  // a few blocks per multiprocessor
constexpr int64_t kBnMinChunk = 2048;      // elements per block, at least (8 per thread)
BnSplit bn_split(const BnLayout& L) {
  const int64_t M = L.M();
  const int64_t P = std::clamp<int64_t>((kBnBlocksWanted + L.C - 1) / L.C, 1, std::max<int64_t>(1, M / kBnMinChunk));
  return {P, (M + P - 1) / P};
}

// Calls f(i) for the elements of part p of channel c this thread visits (stride kThreads);
// (n, s) advance without a 64-bit division per element.
template <class F>
__device__ __forceinline__ void bn_for_part(const BnLayout& L, const BnSplit& sp, int64_t c, int64_t p, F&& f) {
  const int64_t begin = p * sp.chunk + threadIdx.x, end = min((p + 1) * sp.chunk, L.M());
  if (begin >= end) return;
  const int64_t dn = kThreads / L.S, ds = kThreads % L.S, CS = L.C * L.S;
  int64_t n = begin / L.S, s = begin % L.S;
  for (int64_t j = begin; j < end; j += kThreads) {
    f(n * CS + c * L.S + s);
    n += dn;
    s += ds;
    if (s >= L.S) {
      s -= L.S;
      ++n;
    }
  }
}

// Block-wide sum of v (every thread calls it); the result is valid in every thread.
__device__ __forceinline__ double bn_block_sum(double v, double* part) {
  part[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  const double r = part[0];
  __syncthreads();
  return r;
}

// Sum k of channel c over its P parts, in part order.
__device__ __forceinline__ double bn_channel_sum(const double* partial, int64_t P, int K, int64_t c, int k) {
  double t = 0;
  for (int64_t p = 0; p < P; ++p) t += partial[(c * P + p) * K + k];
  return t;
}

// partial[(c*P + p)*K + k] = Σ over part p of channel c of the k-th term f(i, acc) adds.
// f.prepare(c) first sets the channel's constants.
template <int K, class Sum> __global__ void bn_sum_block_kernel(Sum f, BnLayout L, BnSplit sp, double* partial) {
  __shared__ double part[kThreads];
  for (int64_t q = blockIdx.x; q < L.C * sp.P; q += gridDim.x) {
    const int64_t c = q / sp.P, p = q % sp.P;
    Sum g = f;
    g.prepare(c);
    double acc[K] = {};
    bn_for_part(L, sp, c, p, [&](int64_t i) { g(i, acc); });
    for (int k = 0; k < K; ++k) {
      const double t = bn_block_sum(acc[k], part);
      if (threadIdx.x == 0) partial[q * K + k] = t;
    }
  }
}

// f.prepare(c, first) sets the channel's constants (from the partial sums) and, for the
// first thread of part 0, writes the per-channel outputs; then f(i) writes element i.
template <class Apply> __global__ void bn_apply_block_kernel(Apply f, BnLayout L, BnSplit sp) {
  for (int64_t q = blockIdx.x; q < L.C * sp.P; q += gridDim.x) {
    const int64_t c = q / sp.P, p = q % sp.P;
    Apply g = f;
    g.prepare(c, p == 0 && threadIdx.x == 0);
    bn_for_part(L, sp, c, p, [&](int64_t i) { g(i); });
  }
}

// ---- forward: mean (sums of x), variance (sums of (x - mean)^2), then y ----
template <class T> struct BnMeanSums {
  const T* x;
  __device__ void prepare(int64_t) {}
  __device__ void operator()(int64_t i, double* acc) const { acc[0] += double(x[i]); }
};
template <class T> struct BnVarSums {
  const T* x;
  const double* sums;  // of x
  BnLayout L;
  int64_t P;
  double mu = 0;
  __device__ void prepare(int64_t c) { mu = bn_channel_sum(sums, P, 1, c, 0) / double(L.M()); }
  __device__ void operator()(int64_t i, double* acc) const {
    const double d = double(x[i]) - mu;
    acc[0] += d * d;
  }
};
template <class T> struct BnForwardApply {
  const T *x, *w, *b;
  T *y, *mean, *var;
  const double *sums, *sq;  // of x and of (x - mean)^2
  double eps;
  BnLayout L;
  int64_t P;
  bool relu;  // y = max(batch norm, 0)
  T sc{}, sh{}, m{};
  __device__ void prepare(int64_t c, bool first) {
    const double mu = bn_channel_sum(sums, P, 1, c, 0) / double(L.M()),
                 v = bn_channel_sum(sq, P, 1, c, 0) / double(L.M());
    sc = T((w ? double(w[c]) : 1.0) / sqrt(v + eps));
    sh = T(b ? double(b[c]) : 0.0);
    m = T(mu);
    if (first) {
      mean[c] = T(mu);
      var[c] = T(v);
    }
  }
  __device__ void operator()(int64_t i) const {
    const T v = (x[i] - m) * sc + sh;
    y[i] = relu && !(v > T(0)) ? T(0) : v;
  }
};

// The cotangent batch norm's backward reads: g, or with a ReLU after it (y its output,
// non-null) ReLU's VJP, g where y > 0 and 0 elsewhere (relu_backward's rule).
template <class T> __device__ __forceinline__ T bn_cotangent(const T* g, const T* y, int64_t i) {
  return y && !(y[i] > T(0)) ? T(0) : g[i];
}

// ---- backward: gb = Σ g, gw = Σ g·x̂, gx = w·r·(g − mean(g) − x̂·mean(g·x̂)), x̂ = (x − μ)·r ----
template <class T> struct BnBackwardSums {
  const T *g, *relu_y, *x, *mean;  // relu_y: null, or the output of batch norm + ReLU
  double mu = 0;
  __device__ void prepare(int64_t c) { mu = double(mean[c]); }
  __device__ void operator()(int64_t i, double* acc) const {
    const double gv = double(bn_cotangent(g, relu_y, i));
    acc[0] += gv;
    acc[1] += gv * (double(x[i]) - mu);
  }
};
template <class T> struct BnBackwardApply {
  const T *g, *relu_y, *x, *w, *mean, *var;
  T *gx, *gw, *gb;
  const double* sums;  // [C, P, 2]
  double eps;
  BnLayout L;
  int64_t P;
  T ta{}, tb{}, tg{}, m{};
  __device__ void prepare(int64_t c, bool first) {
    const double mu = double(mean[c]), r = 1.0 / sqrt(double(var[c]) + eps);
    const double sg = bn_channel_sum(sums, P, 2, c, 0), sgx = bn_channel_sum(sums, P, 2, c, 1);
    if (first) {
      if (gb) gb[c] = T(sg);
      if (gw) gw[c] = T(sgx * r);
    }
    const double k = (w ? double(w[c]) : 1.0) * r, M = double(L.M());
    ta = T(k);
    tb = T(-k * r * r * sgx / M);
    tg = T(-k * sg / M);
    m = T(mu);
  }
  __device__ void operator()(int64_t i) const { gx[i] = ta * bn_cotangent(g, relu_y, i) + tb * (x[i] - m) + tg; }
};

// ---- the second-order rules (formulas in nn_ops.cpp and autodiff/cpu/norm.cpp), for
// sweeps that do not record. input grad, cotangent a: dg, dx, dw ----
template <class T> struct BnInputGradVjpSums {
  const T *a, *g, *x, *mean, *var;
  double eps;
  double mu = 0, r = 0;
  __device__ void prepare(int64_t c) {
    mu = double(mean[c]);
    r = 1.0 / sqrt(double(var[c]) + eps);
  }
  __device__ void operator()(int64_t i, double* acc) const {
    const double av = double(a[i]), gv = double(g[i]), xh = (double(x[i]) - mu) * r;
    acc[0] += av;
    acc[1] += gv;
    acc[2] += av * gv;
    acc[3] += gv * xh;
    acc[4] += av * xh;
  }
};
template <class T> struct BnInputGradVjpApply {
  const T *a, *g, *x, *w, *mean, *var;
  T *dg, *dx, *dw;
  const double* sums;  // [C, P, 5]
  double eps;
  BnLayout L;
  int64_t P;
  T xk{}, gk{}, ak{}, c0k{}, da{}, dxh{}, d0{}, m{};
  __device__ void prepare(int64_t c, bool first) {
    const double mu = double(mean[c]), r = 1.0 / sqrt(double(var[c]) + eps), wc = w ? double(w[c]) : 1.0;
    const double sa = bn_channel_sum(sums, P, 5, c, 0), sg = bn_channel_sum(sums, P, 5, c, 1),
                 sag = bn_channel_sum(sums, P, 5, c, 2), sgx = bn_channel_sum(sums, P, 5, c, 3),
                 sax = bn_channel_sum(sums, P, 5, c, 4);
    const double Md = double(L.M()), ma = sa / Md, max = sax / Md, mgh = wc * sg / Md, magh = wc * sag / Md,
                 mghx = wc * sgx / Md;
    if (first && dw) dw[c] = T(r * (sag - sg * ma - sgx * max));
    const double k = magh - mgh * ma - 3.0 * mghx * max, r2 = r * r;
    xk = T(-r2 * k * r);
    gk = T(-r2 * wc * max);
    ak = T(-r2 * mghx);
    c0k = T(r2 * (mgh * max + mghx * ma));
    da = T(wc * r);
    dxh = T(-wc * r * max * r);
    d0 = T(-wc * r * ma);
    m = T(mu);
  }
  __device__ void operator()(int64_t i) const {
    if (dg) dg[i] = da * a[i] + dxh * (x[i] - m) + d0;
    if (dx) dx[i] = xk * (x[i] - m) + gk * g[i] + ak * a[i] + c0k;
  }
};

// ---- weight grad, cotangent beta: dg, dx ----
template <class T> struct BnWeightGradVjpSums {
  const T *g, *x, *mean, *var;
  double eps;
  double mu = 0, r = 0;
  __device__ void prepare(int64_t c) {
    mu = double(mean[c]);
    r = 1.0 / sqrt(double(var[c]) + eps);
  }
  __device__ void operator()(int64_t i, double* acc) const {
    acc[0] += double(g[i]);
    acc[1] += double(g[i]) * (double(x[i]) - mu) * r;
  }
};
template <class T> struct BnWeightGradVjpApply {
  const T *beta, *g, *x, *mean, *var;
  T *dg, *dx;
  const double* sums;  // [C, P, 2]
  double eps;
  BnLayout L;
  int64_t P;
  T gk{}, xk{}, k0{}, dk{}, m{};
  __device__ void prepare(int64_t c, bool) {
    const double mu = double(mean[c]), r = 1.0 / sqrt(double(var[c]) + eps), b = double(beta[c]), M = double(L.M());
    const double sg = bn_channel_sum(sums, P, 2, c, 0), sgx = bn_channel_sum(sums, P, 2, c, 1);
    gk = T(b * r);
    xk = T(-b * r * r * sgx / M);
    k0 = T(-b * r * sg / M);
    dk = T(b * r);
    m = T(mu);
  }
  __device__ void operator()(int64_t i) const {
    if (dg) dg[i] = dk * (x[i] - m);
    if (dx) dx[i] = gk * g[i] + xk * (x[i] - m) + k0;
  }
};

// ---- eval mode: y = x·scale[c] + shift[c], then max(y, 0) when relu (no sums) ----
template <class T> struct BnEvalApply {
  const T *x, *scale, *shift;
  T* y;
  bool relu;
  T sc{}, sh{};
  __device__ void prepare(int64_t c, bool) {
    sc = scale[c];
    sh = shift[c];
  }
  __device__ void operator()(int64_t i) const {
    const T v = x[i] * sc + sh;
    y[i] = relu && !(v > T(0)) ? T(0) : v;
  }
};

BnLayout bn_layout(const Tensor& x) {
  const int64_t N = x.shape()[0], C = x.shape()[1];
  return {N, C, N * C != 0 ? x.numel() / (N * C) : 0};
}
template <class T> const T* maybe(const Tensor& t) { return t.defined() ? data_ptr<T>(t) : nullptr; }
template <class T> T* maybe_out(Tensor& t) { return t.defined() ? data_ptr<T>(t) : nullptr; }
unsigned bn_grid(const BnLayout& L, const BnSplit& sp) { return unsigned(std::clamp<int64_t>(L.C * sp.P, 1, 65535)); }

// The partial sums of one pass: [C, P, K] doubles from the caching allocator.
struct BnPartials : Workspace {
  BnPartials(const Ctx& c, const BnLayout& L, const BnSplit& sp, int K)
      : Workspace(c.backend, size_t(L.C * sp.P * K) * sizeof(double)) {}
  double* data() const { return static_cast<double*>(ptr); }
};

// A pass of K partial sums per part (s), then the pass that writes the outputs from them
// (make(partials) builds its functor).
template <int K, class Sum, class MakeApply>
void bn_sums_then_apply(const Ctx& c, const BnLayout& L, const BnSplit& sp, const Sum& s, MakeApply make) {
  const BnPartials sums(c, L, sp, K);
  bn_sum_block_kernel<K, Sum><<<bn_grid(L, sp), kThreads, 0, c.stream>>>(s, L, sp, sums.data());
  using Apply = decltype(make(sums.data()));
  bn_apply_block_kernel<Apply><<<bn_grid(L, sp), kThreads, 0, c.stream>>>(make(sums.data()), L, sp);
}

}  // namespace

void batch_norm_forward(const Ctx& c, const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y,
                        Tensor& mean, Tensor& var, bool relu) {
  const BnLayout L = bn_layout(x);
  if (L.C == 0) return;
  const BnSplit sp = bn_split(L);
  const BnPartials sums(c, L, sp, 1);  // of x, then (in bn_sums_then_apply) of (x - mean)^2
  dispatch_float(x.dtype(), "batch_norm", [&](auto z) {
    using T = decltype(z);
    const T* xp = data_ptr<T>(x);
    bn_sum_block_kernel<1, BnMeanSums<T>>
        <<<bn_grid(L, sp), kThreads, 0, c.stream>>>(BnMeanSums<T>{xp}, L, sp, sums.data());
    bn_sums_then_apply<1>(c, L, sp, BnVarSums<T>{xp, sums.data(), L, sp.P}, [&](const double* sq) {
      return BnForwardApply<T>{
          xp, maybe<T>(w), maybe<T>(b), data_ptr<T>(y), data_ptr<T>(mean), data_ptr<T>(var), sums.data(), sq, eps,
          L,  sp.P,        relu};
    });
  });
  after_launch(c, "batch_norm (forward)");
}

void batch_norm_backward(const Ctx& c, const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                         const Tensor& var, double eps, Tensor& gx, Tensor& gw, Tensor& gb, const Tensor* relu_y) {
  const BnLayout L = bn_layout(x);
  if (L.C == 0) return;
  const BnSplit sp = bn_split(L);
  dispatch_float(x.dtype(), "batch_norm", [&](auto z) {
    using T = decltype(z);
    const T* ry = relu_y ? data_ptr<T>(*relu_y) : nullptr;
    const BnBackwardSums<T> s{data_ptr<T>(g), ry, data_ptr<T>(x), data_ptr<T>(mean)};
    bn_sums_then_apply<2>(c, L, sp, s, [&](const double* sums) {
      return BnBackwardApply<T>{data_ptr<T>(g),
                                ry,
                                data_ptr<T>(x),
                                maybe<T>(w),
                                data_ptr<T>(mean),
                                data_ptr<T>(var),
                                data_ptr<T>(gx),
                                maybe_out<T>(gw),
                                maybe_out<T>(gb),
                                sums,
                                eps,
                                L,
                                sp.P};
    });
  });
  after_launch(c, "batch_norm (backward)");
}

void batch_norm_input_grad_vjp(const Ctx& c, const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& w,
                               const Tensor& mean, const Tensor& var, double eps, Tensor& dg, Tensor& dx, Tensor& dw) {
  const BnLayout L = bn_layout(x);
  if (L.C == 0) return;
  const BnSplit sp = bn_split(L);
  dispatch_float(x.dtype(), "batch_norm_input_grad", [&](auto z) {
    using T = decltype(z);
    const BnInputGradVjpSums<T> s{data_ptr<T>(a),    data_ptr<T>(g),   data_ptr<T>(x),
                                  data_ptr<T>(mean), data_ptr<T>(var), eps};
    bn_sums_then_apply<5>(c, L, sp, s, [&](const double* sums) {
      return BnInputGradVjpApply<T>{data_ptr<T>(a),
                                    data_ptr<T>(g),
                                    data_ptr<T>(x),
                                    maybe<T>(w),
                                    data_ptr<T>(mean),
                                    data_ptr<T>(var),
                                    maybe_out<T>(dg),
                                    maybe_out<T>(dx),
                                    maybe_out<T>(dw),
                                    sums,
                                    eps,
                                    L,
                                    sp.P};
    });
  });
  after_launch(c, "batch_norm_input_grad (second order)");
}

void batch_norm_weight_grad_vjp(const Ctx& c, const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                const Tensor& var, double eps, Tensor& dg, Tensor& dx) {
  const BnLayout L = bn_layout(x);
  if (L.C == 0) return;
  const BnSplit sp = bn_split(L);
  dispatch_float(x.dtype(), "batch_norm_weight_grad", [&](auto z) {
    using T = decltype(z);
    const BnWeightGradVjpSums<T> s{data_ptr<T>(g), data_ptr<T>(x), data_ptr<T>(mean), data_ptr<T>(var), eps};
    bn_sums_then_apply<2>(c, L, sp, s, [&](const double* sums) {
      return BnWeightGradVjpApply<T>{data_ptr<T>(beta),
                                     data_ptr<T>(g),
                                     data_ptr<T>(x),
                                     data_ptr<T>(mean),
                                     data_ptr<T>(var),
                                     maybe_out<T>(dg),
                                     maybe_out<T>(dx),
                                     sums,
                                     eps,
                                     L,
                                     sp.P};
    });
  });
  after_launch(c, "batch_norm_weight_grad (second order)");
}

void batch_norm_eval(const Ctx& c, const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu, Tensor& y) {
  const BnLayout L = bn_layout(x);
  if (L.C == 0) return;
  const BnSplit sp = bn_split(L);
  dispatch_float(x.dtype(), "batch_norm (eval)", [&](auto z) {
    using T = decltype(z);
    const BnEvalApply<T> f{data_ptr<T>(x), data_ptr<T>(scale), data_ptr<T>(shift), data_ptr<T>(y), relu};
    bn_apply_block_kernel<BnEvalApply<T>><<<bn_grid(L, sp), kThreads, 0, c.stream>>>(f, L, sp);
  });
  after_launch(c, "batch_norm (eval)");
}

}  // namespace flatmin::cuda
