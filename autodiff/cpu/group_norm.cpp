// Fused group norm with its per-channel affine, first order only (as PyTorch's native
// GroupNorm kernels): y = x̂·w + b, x̂ = (x − μ)·r, r = 1/√(σ² + ε), with μ and the biased σ²
// per sample and group of D = C/G channels. The group_norm op (autodiff/norm_ops.cpp) runs
// these when nothing records; a recorded backward is its differentiable rule instead.
// Layouts: NCHW [N, C, S] (a group is D·S contiguous values, one task per (sample, group)) and
// channels-last [N, S, C] (a sample is S rows of C values, a group D columns of them, one task
// per sample). Same contract as norm.cpp: every sum in double in an order fixed by the shape;
// a task owns whole groups or samples, so the thread count never changes a result.
#include <algorithm>
#include <cmath>
#include <vector>

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/norm_sums.hpp"
#include "autodiff/kernel_util.hpp"

namespace flatmin::cpu {

namespace {
using kernels::dispatch_float;

// Values per parallel chunk at least (a chunk is whole groups or samples).
constexpr int64_t kChunkValues = 16384;

struct Geometry {
  int64_t N, S, G, D;
  int64_t C() const { return G * D; }
  double count() const { return double(D * S); }  // values per group
  int64_t grain(int64_t task_values) const {
    return std::max<int64_t>(1, kChunkValues / std::max<int64_t>(1, task_values));
  }
};
Geometry geometry(const Tensor& x, int64_t groups, bool channels_last) {
  const int64_t N = x.shape()[0], C = channels_last ? x.shape().back() : x.shape()[1];
  return {N, N * C != 0 ? x.numel() / (N * C) : 0, groups, C / groups};
}

template <class T> double weight_at(const T* w, int64_t c) { return w ? double(w[c]) : 1.0; }

// ---- channels-last: column sums of one sample's S rows of C values
// The rows are walked `fold` at a time as wide rows of P = fold·C values; slot j of a wide
// row is channel j % C, and per-channel arrays that the summands or the elementwise pass
// read are given per slot.
struct Wide {
  int64_t C, fold, P;
  explicit Wide(int64_t C) : C(C), fold(std::max<int64_t>(1, kWideRow / C)), P(C * fold) {}
  // per-slot copy of a per-channel array
  template <class V> void spread(const V* per_channel, V* per_slot) const {
    for (int64_t q = 0; q < fold; ++q) std::copy_n(per_channel, C, per_slot + q * C);
  }
};
// out[c] = Σ over the sample's rows of f(i, j) (i the flat index in the sample, j its slot):
// per slot in row order, then the slots of a channel in slot order. Slots go in blocks of
// kSlotBlock whose sums stay in registers over all rows (an accumulator array in memory
// would cost a store per value).
constexpr int64_t kSlotBlock = 16;
template <class F> void column_sums(const Wide& wd, int64_t S, double* acc, double* out, F&& f) {
  const int64_t total = S * wd.C, full = total / wd.P, rest = total - full * wd.P;  // rest: a short last wide row
  for (int64_t j0 = 0; j0 < wd.P; j0 += kSlotBlock) {
    double a[kSlotBlock] = {};
    if (j0 + kSlotBlock <= wd.P) {
      for (int64_t r = 0; r < full; ++r)
        for (int64_t k = 0; k < kSlotBlock; ++k) a[k] += f(r * wd.P + j0 + k, j0 + k);
    } else {
      for (int64_t r = 0; r < full; ++r)
        for (int64_t k = 0; k < wd.P - j0; ++k) a[k] += f(r * wd.P + j0 + k, j0 + k);
    }
    for (int64_t k = 0; k < std::min(kSlotBlock, wd.P - j0); ++k) {
      if (j0 + k < rest) a[k] += f(full * wd.P + j0 + k, j0 + k);
      acc[j0 + k] = a[k];
    }
  }
  for (int64_t c = 0; c < wd.C; ++c) {
    double s = 0;
    for (int64_t q = 0; q < wd.fold; ++q) s += acc[q * wd.C + c];
    out[c] = s;
  }
}
// The elementwise pass over one sample: write(i, j) for each flat index i, j its slot.
template <class F> void each_slot(const Wide& wd, int64_t S, F&& write) {
  const int64_t total = S * wd.C;
  for (int64_t base = 0; base < total; base += wd.P) {
    const int64_t n = std::min(wd.P, total - base);
    for (int64_t j = 0; j < n; ++j) write(base + j, j);
  }
}

// Per-channel affine coefficients of the forward, y = (x − μ)·scale + shift.
template <class T> void forward_coefs(const T* w, const T* b, int64_t c, double r, T& scale, T& shift) {
  scale = T(weight_at(w, c) * r);
  shift = T(b ? double(b[c]) : 0.0);
}

template <class T>
void forward_nchw(const T* x, const T* w, const T* b, double eps, T* y, T* mean, T* var, const Geometry& q) {
  const int64_t len = q.D * q.S;
  parallel_for(q.N * q.G, q.grain(len), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {  // t = n·G + g: the block at t·len
      const T* xs = x + t * len;
      const double mu = span_sum(len, [&](int64_t i) { return double(xs[i]); }) / q.count();
      auto dev2 = [&](int64_t i) {
        const double d = double(xs[i]) - mu;
        return d * d;
      };
      const double v = span_sum(len, dev2) / q.count();
      mean[t] = T(mu);
      var[t] = T(v);
      const double r = 1.0 / std::sqrt(v + eps);
      const T m = T(mu);
      for (int64_t j = 0, c = t % q.G * q.D; j < q.D; ++j, ++c) {
        T sc, sh;
        forward_coefs(w, b, c, r, sc, sh);
        const T* xc = xs + j * q.S;
        T* yc = y + t * len + j * q.S;
        // centre first: x·scale + (b − μ·scale) would cancel when |μ| ≫ σ
        for (int64_t i = 0; i < q.S; ++i) yc[i] = (xc[i] - m) * sc + sh;
      }
    }
  });
}

template <class T>
void forward_cl(const T* x, const T* w, const T* b, double eps, T* y, T* mean, T* var, const Geometry& q) {
  const int64_t C = q.C(), len = q.S * C;
  const Wide wd(C);
  const size_t nc = size_t(C), np = size_t(wd.P);
  parallel_for(q.N, q.grain(len), [&](int64_t n0, int64_t n1) {
    std::vector<double> acc(np), sums(nc), mu_c(nc), mu_slot(np);
    std::vector<T> m_c(nc), sc_c(nc), sh_c(nc), m(np), sc(np), sh(np);
    for (int64_t n = n0; n < n1; ++n) {
      const T* xs = x + n * len;
      T* ys = y + n * len;
      column_sums(wd, q.S, acc.data(), sums.data(), [&](int64_t i, int64_t) { return double(xs[i]); });
      for (int64_t g = 0; g < q.G; ++g) {
        double s = 0;
        for (int64_t j = 0; j < q.D; ++j) s += sums[size_t(g * q.D + j)];
        for (int64_t j = 0; j < q.D; ++j) mu_c[size_t(g * q.D + j)] = s / q.count();
      }
      wd.spread(mu_c.data(), mu_slot.data());
      column_sums(wd, q.S, acc.data(), sums.data(), [&](int64_t i, int64_t j) {
        const double d = double(xs[i]) - mu_slot[size_t(j)];
        return d * d;
      });
      for (int64_t g = 0; g < q.G; ++g) {
        double s = 0;
        for (int64_t j = 0; j < q.D; ++j) s += sums[size_t(g * q.D + j)];
        const double mu = mu_c[size_t(g * q.D)], v = s / q.count(), r = 1.0 / std::sqrt(v + eps);
        mean[n * q.G + g] = T(mu);
        var[n * q.G + g] = T(v);
        for (int64_t c = g * q.D; c < (g + 1) * q.D; ++c) {
          m_c[size_t(c)] = T(mu);
          forward_coefs(w, b, c, r, sc_c[size_t(c)], sh_c[size_t(c)]);
        }
      }
      wd.spread(m_c.data(), m.data());
      wd.spread(sc_c.data(), sc.data());
      wd.spread(sh_c.data(), sh.data());
      each_slot(wd, q.S, [&](int64_t i, int64_t j) { ys[i] = (xs[i] - m[size_t(j)]) * sc[size_t(j)] + sh[size_t(j)]; });
    }
  });
}

// ---- backward. Per (sample, channel): A = Σ g and B = Σ g·(x − μ) over the positions. Then
// per group, with M = D·S values: gx = w·r·g + β·(x − μ) + γ where β = −r³·Σ_c w·B / M and
// γ = −r·Σ_c w·A / M (gx = w·r·(g − mean(g) − x̂·mean(g·x̂)) with g's group means weighted by
// w); gw[c] = Σ_n r·B and gb[c] = Σ_n A, added in sample order after the parallel pass.
struct GroupCoefs {
  double r, beta, gamma;
};
// Group g's coefficients from its channels' A and B (at a, b, channel c0 first).
template <class T> GroupCoefs group_coefs(const T* w, int64_t c0, const double* a, const double* b, double v,
                                          double eps, const Geometry& q) {
  double sa = 0, sb = 0;
  for (int64_t j = 0; j < q.D; ++j) {
    sa += weight_at(w, c0 + j) * a[j];
    sb += weight_at(w, c0 + j) * b[j];
  }
  const double r = 1.0 / std::sqrt(v + eps);
  return {r, -r * r * r * sb / q.count(), -r * sa / q.count()};
}

template <class T> void backward_nchw(const T* g, const T* x, const T* w, const T* mean, const T* var, double eps,
                                      T* gx, double* A, double* B, const Geometry& q) {
  const int64_t len = q.D * q.S;
  parallel_for(q.N * q.G, q.grain(len), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const T *gs = g + t * len, *xs = x + t * len;
      const double mu = double(mean[t]);
      double* a = A + t * q.D;  // (n, c) at n·C + c = t·D + j
      double* b = B + t * q.D;
      for (int64_t j = 0; j < q.D; ++j) {
        const T *gc = gs + j * q.S, *xc = xs + j * q.S;
        a[j] = span_sum(q.S, [&](int64_t i) { return double(gc[i]); });
        b[j] = span_sum(q.S, [&](int64_t i) { return double(gc[i]) * (double(xc[i]) - mu); });
      }
      if (!gx) continue;
      const int64_t c0 = t % q.G * q.D;
      const GroupCoefs k = group_coefs(w, c0, a, b, double(var[t]), eps, q);
      const T m = T(mu), tb = T(k.beta), tg = T(k.gamma);
      for (int64_t j = 0; j < q.D; ++j) {
        const T ta = T(weight_at(w, c0 + j) * k.r);
        const T *gc = gs + j * q.S, *xc = xs + j * q.S;
        T* out = gx + t * len + j * q.S;
        for (int64_t i = 0; i < q.S; ++i) out[i] = ta * gc[i] + tb * (xc[i] - m) + tg;
      }
    }
  });
}

template <class T> void backward_cl(const T* g, const T* x, const T* w, const T* mean, const T* var, double eps, T* gx,
                                    double* A, double* B, const Geometry& q) {
  const int64_t C = q.C(), len = q.S * C;
  const Wide wd(C);
  const size_t nc = size_t(C), np = size_t(wd.P);
  parallel_for(q.N, q.grain(len), [&](int64_t n0, int64_t n1) {
    std::vector<double> acc(np), mu_c(nc), mu_slot(np);
    std::vector<T> ta_c(nc), tb_c(nc), tg_c(nc), m_c(nc), ta(np), tb(np), tg(np), m(np);
    for (int64_t n = n0; n < n1; ++n) {
      const T *gs = g + n * len, *xs = x + n * len;
      double *a = A + n * C, *b = B + n * C;
      for (int64_t c = 0; c < C; ++c) mu_c[size_t(c)] = double(mean[n * q.G + c / q.D]);
      wd.spread(mu_c.data(), mu_slot.data());
      column_sums(wd, q.S, acc.data(), a, [&](int64_t i, int64_t) { return double(gs[i]); });
      column_sums(wd, q.S, acc.data(), b,
                  [&](int64_t i, int64_t j) { return double(gs[i]) * (double(xs[i]) - mu_slot[size_t(j)]); });
      if (!gx) continue;
      for (int64_t gr = 0; gr < q.G; ++gr) {
        const int64_t c0 = gr * q.D;
        const GroupCoefs k = group_coefs(w, c0, a + c0, b + c0, double(var[n * q.G + gr]), eps, q);
        for (int64_t c = c0; c < c0 + q.D; ++c) {
          ta_c[size_t(c)] = T(weight_at(w, c) * k.r);
          tb_c[size_t(c)] = T(k.beta);
          tg_c[size_t(c)] = T(k.gamma);
          m_c[size_t(c)] = T(mu_c[size_t(c)]);
        }
      }
      wd.spread(ta_c.data(), ta.data());
      wd.spread(tb_c.data(), tb.data());
      wd.spread(tg_c.data(), tg.data());
      wd.spread(m_c.data(), m.data());
      T* out = gx + n * len;
      each_slot(wd, q.S, [&](int64_t i, int64_t j) {
        out[i] = ta[size_t(j)] * gs[i] + tb[size_t(j)] * (xs[i] - m[size_t(j)]) + tg[size_t(j)];
      });
    }
  });
}

}  // namespace

void group_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, double eps,
                        bool channels_last, Tensor& y, Tensor& mean, Tensor& var) {
  const Geometry q = geometry(x, groups, channels_last);
  dispatch_float(x.dtype(), "group_norm", [&](auto z) {
    using T = decltype(z);
    (channels_last ? forward_cl<T> : forward_nchw<T>)(data_ptr<T>(x), maybe<T>(weight), maybe<T>(bias), eps,
                                                      data_ptr<T>(y), data_ptr<T>(mean), data_ptr<T>(var), q);
  });
}

void group_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& var,
                         int64_t groups, double eps, bool channels_last, Tensor& gx, Tensor& gw, Tensor& gb) {
  const Geometry q = geometry(x, groups, channels_last);
  const int64_t C = q.C();
  std::vector<double> A(size_t(q.N * C)), B(size_t(q.N * C));  // per (sample, channel)
  dispatch_float(x.dtype(), "group_norm", [&](auto z) {
    using T = decltype(z);
    const T* vr = data_ptr<T>(var);
    (channels_last ? backward_cl<T> : backward_nchw<T>)(data_ptr<T>(g), data_ptr<T>(x), maybe<T>(weight),
                                                        data_ptr<T>(mean), vr, eps, maybe_out<T>(gx), A.data(),
                                                        B.data(), q);
    T *tw = maybe_out<T>(gw), *tb = maybe_out<T>(gb);
    for (int64_t c = 0; c < C; ++c) {
      double sw = 0, sb = 0;
      for (int64_t n = 0; n < q.N; ++n) {
        sw += (1.0 / std::sqrt(double(vr[n * q.G + c / q.D]) + eps)) * B[size_t(n * C + c)];
        sb += A[size_t(n * C + c)];
      }
      if (tw) tw[c] = T(sw);
      if (tb) tb[c] = T(sb);
    }
  });
}

}  // namespace flatmin::cpu
