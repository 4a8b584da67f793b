// Fused batch norm with batch statistics, first order only: the batch_norm op uses these
// when nothing records, and its differentiable rule when the backward itself is recorded
// (nn_ops.cpp). One task per channel; every sum runs in double in an order fixed by the
// shape, so results do not depend on the thread count.
#include <cmath>

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/kernel_util.hpp"

namespace flatmin::cpu {

namespace {
using kernels::dispatch_float;

// x viewed as [N, C, S]
struct Layout {
  int64_t N, C, S;
  int64_t count() const { return N * S; }  // values per channel
  int64_t at(int64_t n, int64_t c) const { return (n * C + c) * S; }
};
Layout layout(const Tensor& x) {
  const int64_t N = x.shape()[0], C = x.shape()[1];
  return {N, C, N * C != 0 ? x.numel() / (N * C) : 0};
}

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

template <class T> const T* maybe(const Tensor& t) { return t.defined() ? data_ptr<T>(t) : nullptr; }

template <class T>
void forward_impl(const T* x, const T* w, const T* b, double eps, T* y, T* mean, T* var, const Layout& L) {
  const double M = double(L.count());
  parallel_for(L.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0;
      for (int64_t n = 0; n < L.N; ++n) {
        const T* xs = x + L.at(n, c);
        s += span_sum(L.S, [&](int64_t i) { return double(xs[i]); });
      }
      const double mu = s / M;
      double v = 0;
      for (int64_t n = 0; n < L.N; ++n) {
        const T* xs = x + L.at(n, c);
        v += span_sum(L.S, [&](int64_t i) {
          const double d = double(xs[i]) - mu;
          return d * d;
        });
      }
      v /= M;
      // centre first: x·scale + (b − μ·scale) would cancel when |μ| ≫ σ
      const T sc = T((w ? double(w[c]) : 1.0) / std::sqrt(v + eps)), sh = T(b ? double(b[c]) : 0.0), m = T(mu);
      for (int64_t n = 0; n < L.N; ++n) {
        const T* xs = x + L.at(n, c);
        T* ys = y + L.at(n, c);
        for (int64_t i = 0; i < L.S; ++i) ys[i] = (xs[i] - m) * sc + sh;
      }
      mean[c] = T(mu);
      var[c] = T(v);
    }
  });
}

// With x̂ = (x − μ)·r, r = 1/√(σ² + ε): gb = Σg, gw = Σ g·x̂, and
// gx = w·r·(g − mean(g) − x̂·mean(g·x̂)).
template <class T> void backward_impl(const T* g, const T* x, const T* w, const T* mean, const T* var, double eps,
                                      T* gx, T* gw, T* gb, const Layout& L) {
  const double M = double(L.count());
  parallel_for(L.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double mu = double(mean[c]), r = 1.0 / std::sqrt(double(var[c]) + eps);
      double sg = 0, sgx = 0;
      for (int64_t n = 0; n < L.N; ++n) {
        const T* gs = g + L.at(n, c);
        const T* xs = x + L.at(n, c);
        sg += span_sum(L.S, [&](int64_t i) { return double(gs[i]); });
        sgx += span_sum(L.S, [&](int64_t i) { return double(gs[i]) * (double(xs[i]) - mu); });
      }
      if (gb) gb[c] = T(sg);
      if (gw) gw[c] = T(sgx * r);
      const double k = (w ? double(w[c]) : 1.0) * r;
      // gx = k·g − k·mean(g) − k·r²·mean(g·(x−μ))·(x − μ) = α·g + β·(x − μ) + γ
      const T ta = T(k), tb = T(-k * r * r * sgx / M), tg = T(-k * sg / M), m = T(mu);
      for (int64_t n = 0; n < L.N; ++n) {
        const T* gs = g + L.at(n, c);
        const T* xs = x + L.at(n, c);
        T* out = gx + L.at(n, c);
        for (int64_t i = 0; i < L.S; ++i) out[i] = ta * gs[i] + tb * (xs[i] - m) + tg;
      }
    }
  });
}

// The second-order rules (formulas in nn_ops.cpp). Per channel, with gh = w·g: one pass of
// sums, then one elementwise pass.
//   input grad, cotangent a:  dg = w·r·(a − ⟨a⟩ − x̂⟨a·x̂⟩),  dw = Σ g·r·(a − ⟨a⟩ − x̂⟨a·x̂⟩),
//     dx = −r²·(x̂·k + (gh − ⟨gh⟩)·⟨a·x̂⟩ + ⟨gh·x̂⟩·(a − ⟨a⟩)),  k = ⟨a·gh⟩ − ⟨gh⟩⟨a⟩ − 3⟨gh·x̂⟩⟨a·x̂⟩;
//   weight grad, cotangent β:  dg = β·x̂,  dx = β·r·(g − ⟨g⟩ − x̂⟨g·x̂⟩).
template <class T> void input_grad_vjp_impl(const T* a, const T* g, const T* x, const T* w, const T* mean, const T* var,
                                            double eps, T* dg, T* dx, T* dw, const Layout& L) {
  const double M = double(L.count());
  parallel_for(L.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double mu = double(mean[c]), r = 1.0 / std::sqrt(double(var[c]) + eps), wc = w ? double(w[c]) : 1.0;
      double sa = 0, sg = 0, sag = 0, sgx = 0, sax = 0;
      for (int64_t n = 0; n < L.N; ++n) {
        const T *as = a + L.at(n, c), *gs = g + L.at(n, c), *xs = x + L.at(n, c);
        sa += span_sum(L.S, [&](int64_t i) { return double(as[i]); });
        sg += span_sum(L.S, [&](int64_t i) { return double(gs[i]); });
        sag += span_sum(L.S, [&](int64_t i) { return double(as[i]) * double(gs[i]); });
        sgx += span_sum(L.S, [&](int64_t i) { return double(gs[i]) * (double(xs[i]) - mu) * r; });
        sax += span_sum(L.S, [&](int64_t i) { return double(as[i]) * (double(xs[i]) - mu) * r; });
      }
      const double ma = sa / M, max = sax / M, mgh = wc * sg / M, magh = wc * sag / M, mghx = wc * sgx / M;
      if (dw) dw[c] = T(r * (sag - sg * ma - sgx * max));
      const double k = magh - mgh * ma - 3.0 * mghx * max, r2 = r * r;
      // dx = −r²·(x̂·k + gh·⟨a·x̂⟩ + ⟨gh·x̂⟩·a) + r²·(⟨gh⟩⟨a·x̂⟩ + ⟨gh·x̂⟩⟨a⟩), x̂ = (x − μ)·r
      const T xk = T(-r2 * k * r), gk = T(-r2 * wc * max), ak = T(-r2 * mghx), c0k = T(r2 * (mgh * max + mghx * ma));
      const T da = T(wc * r), dxh = T(-wc * r * max * r), d0 = T(-wc * r * ma), m = T(mu);
      for (int64_t n = 0; n < L.N; ++n) {
        const T *as = a + L.at(n, c), *gs = g + L.at(n, c), *xs = x + L.at(n, c);
        if (dg) {
          T* out = dg + L.at(n, c);
          for (int64_t i = 0; i < L.S; ++i) out[i] = da * as[i] + dxh * (xs[i] - m) + d0;
        }
        if (dx) {
          T* out = dx + L.at(n, c);
          for (int64_t i = 0; i < L.S; ++i) out[i] = xk * (xs[i] - m) + gk * gs[i] + ak * as[i] + c0k;
        }
      }
    }
  });
}

template <class T> void weight_grad_vjp_impl(const T* beta, const T* g, const T* x, const T* mean, const T* var,
                                             double eps, T* dg, T* dx, const Layout& L) {
  const double M = double(L.count());
  parallel_for(L.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double mu = double(mean[c]), r = 1.0 / std::sqrt(double(var[c]) + eps), b = double(beta[c]);
      double sg = 0, sgx = 0;
      if (dx)
        for (int64_t n = 0; n < L.N; ++n) {
          const T *gs = g + L.at(n, c), *xs = x + L.at(n, c);
          sg += span_sum(L.S, [&](int64_t i) { return double(gs[i]); });
          sgx += span_sum(L.S, [&](int64_t i) { return double(gs[i]) * (double(xs[i]) - mu) * r; });
        }
      // dx = β·r·g − β·r·⟨g⟩ − β·r²·⟨g·x̂⟩·(x − μ)
      const T gk = T(b * r), xk = T(-b * r * r * sgx / M), k0 = T(-b * r * sg / M), dk = T(b * r), m = T(mu);
      for (int64_t n = 0; n < L.N; ++n) {
        const T *gs = g + L.at(n, c), *xs = x + L.at(n, c);
        if (dg) {
          T* out = dg + L.at(n, c);
          for (int64_t i = 0; i < L.S; ++i) out[i] = dk * (xs[i] - m);
        }
        if (dx) {
          T* out = dx + L.at(n, c);
          for (int64_t i = 0; i < L.S; ++i) out[i] = gk * gs[i] + xk * (xs[i] - m) + k0;
        }
      }
    }
  });
}

template <class T> T* maybe_out(Tensor& t) { return t.defined() ? data_ptr<T>(t) : nullptr; }

}  // namespace

void batch_norm_input_grad_vjp(const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& weight,
                               const Tensor& mean, const Tensor& var, double eps, Tensor& dg, Tensor& dx, Tensor& dw) {
  dispatch_float(x.dtype(), "batch_norm_input_grad", [&](auto z) {
    using T = decltype(z);
    input_grad_vjp_impl<T>(data_ptr<T>(a), data_ptr<T>(g), data_ptr<T>(x), maybe<T>(weight), data_ptr<T>(mean),
                           data_ptr<T>(var), eps, maybe_out<T>(dg), maybe_out<T>(dx), maybe_out<T>(dw), layout(x));
  });
}
void batch_norm_weight_grad_vjp(const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                const Tensor& var, double eps, Tensor& dg, Tensor& dx) {
  dispatch_float(x.dtype(), "batch_norm_weight_grad", [&](auto z) {
    using T = decltype(z);
    weight_grad_vjp_impl<T>(data_ptr<T>(beta), data_ptr<T>(g), data_ptr<T>(x), data_ptr<T>(mean), data_ptr<T>(var), eps,
                            maybe_out<T>(dg), maybe_out<T>(dx), layout(x));
  });
}

void batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y, Tensor& mean,
                        Tensor& var) {
  dispatch_float(x.dtype(), "batch_norm", [&](auto z) {
    using T = decltype(z);
    forward_impl<T>(data_ptr<T>(x), maybe<T>(weight), maybe<T>(bias), eps, data_ptr<T>(y), data_ptr<T>(mean),
                    data_ptr<T>(var), layout(x));
  });
}

void batch_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& var,
                         double eps, Tensor& gx, Tensor& gw, Tensor& gb) {
  dispatch_float(x.dtype(), "batch_norm", [&](auto z) {
    using T = decltype(z);
    backward_impl<T>(data_ptr<T>(g), data_ptr<T>(x), maybe<T>(weight), data_ptr<T>(mean), data_ptr<T>(var), eps,
                     data_ptr<T>(gx), gw.defined() ? data_ptr<T>(gw) : nullptr,
                     gb.defined() ? data_ptr<T>(gb) : nullptr, layout(x));
  });
}

}  // namespace flatmin::cpu
