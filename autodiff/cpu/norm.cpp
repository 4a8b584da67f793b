// Fused batch norm with batch statistics, first order only: the batch_norm op uses these
// when nothing records, and its differentiable rule when the backward itself is recorded
// (nn_ops.cpp). Every sum runs in double in an order fixed by the shape, so results do not
// depend on the thread count. Each kernel states its formulas once, as per-channel sums,
// per-channel coefficients and an elementwise pass; run_channels walks them over x's layout:
//   [N, C, S] with S > 1 (NCHW): one task per channel, spans of S contiguous values;
//   S == 1 ([M, C], e.g. channels-last activations reshaped to rank 2): rows of C values
//   (small C: wide rows of several rows), sums in blocks of rows fixed by the shape
//   (vectorized across channels) added in block order, then the elementwise pass row by row.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/norm_sums.hpp"
#include "autodiff/kernel_util.hpp"

namespace flatmin::cpu {

namespace {
using kernels::dispatch_float;

// x viewed as [N, C, S]
struct Layout {
  int64_t N, C, S;
  int64_t count() const { return N * S; }  // values per channel
  int64_t at(int64_t n, int64_t c) const { return (n * C + c) * S; }
  bool rows() const { return S == 1; }  // N rows of C values
  // Rows layout: rows per wide row. Per-channel arrays that terms(i, c) read have slots()
  // entries, slot c holding channel c % C (in the NCHW layout slots() == C).
  int64_t fold() const { return rows() ? std::max<int64_t>(1, kWideRow / C) : 1; }
  int64_t slots() const { return C * fold(); }
};
Layout layout(const Tensor& x) {
  const int64_t N = x.shape()[0], C = x.shape()[1];
  return {N, C, N * C != 0 ? x.numel() / (N * C) : 0};
}
// Statistics of shape [B, C] (Backend::batch_norm_forward): x is [B, N, C, S], B independent
// instances with statistics per (b, c); one layout [N, C, S] per instance.
struct Instances {
  int64_t B;
  Layout L;
  int64_t x_stride() const { return L.N * L.C * L.S; }
};
// Per-channel arguments (weight, bias, their gradients) have no per-instance meaning: refused
// with instances, before any instance would read or write them out of place.
Instances instances(const char* op, const Tensor& x, const Tensor& stats,
                    std::initializer_list<const Tensor*> per_channel) {
  if (stats.dim() != 2) return {1, layout(x)};
  for (const Tensor* t : per_channel)
    if (t->defined())
      throw Error(std::string(op) + ": statistics per instance ([B, C]) take no weight, bias or their gradients");
  return {stats.shape()[0], {x.shape()[1], x.shape()[2], x.shape()[3]}};
}
// Runs f(b, layout) for each instance; the instances are independent, so the order of their
// tasks never changes a result.
template <class F> void for_instances(const Instances& in, F&& f) {
  if (in.B == 1) return f(int64_t(0), in.L);
  parallel_for(in.B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b, in.L);
  });
}

template <int K> using Sums = std::array<double, K>;

// One pass of K sums per channel: terms(i, c) gives the K summands at flat index i, c its slot
// (see Layout::slots); finish(c, sums) uses channel c's totals (the last stage's finish
// returns its coefficients; an earlier stage's finish runs for every slot c, with the sums of
// channel c % C).
// When `wanted` is false the sums are skipped and finish sees zeros.
template <int K, class Terms, class Finish> struct Stage {
  Terms terms;
  Finish finish;
  bool wanted = true;
};
template <int K, class Terms, class Finish>
Stage<K, Terms, Finish> stage(Terms terms, Finish finish, bool wanted = true) {
  return {std::move(terms), std::move(finish), wanted};
}
struct NoStage {};

// Channel c's K sums in the NCHW layout: span by span, as span_sum orders them.
template <int K, class Terms> Sums<K> span_sums(const Layout& L, int64_t c, Terms& terms) {
  Sums<K> s{};
  for (int64_t n = 0; n < L.N; ++n) {
    const int64_t base = L.at(n, c);
    // one span_sum loop per sum, each with its summand alone (vectorizes and rounds as a
    // loop written for that sum)
    auto add = [&]<size_t... k>(std::index_sequence<k...>) {
      ((s[k] += span_sum(L.S, [&](int64_t i) { return std::get<k>(terms(base + i, c)); })), ...);
    };
    add(std::make_index_sequence<K>());
  }
  return s;
}

// Rows layout: values per block of rows (the block's rows depend on C only, never on threads).
constexpr int64_t kBlockValues = 8192, kMinBlockRows = 32;
// slots per task; any split of the slots gives the same sums
constexpr int64_t kTaskSlots = 256;

// All channels' K sums in the rows layout, sums[k * C + c]. Each block of rows adds its wide
// rows in order into per-slot accumulators; channel c's partial sum is then its slots' in
// slot order, and the blocks' partial sums add in block order.
template <int K, class Terms> std::vector<double> row_sums(const Layout& L, Terms& terms) {
  const int64_t M = L.N, C = L.C, fold = L.fold(), P = L.slots();
  const int64_t rows = (std::max(kMinBlockRows, kBlockValues / C) + fold - 1) / fold * fold;
  const int64_t blocks = (M + rows - 1) / rows, chunks = (P + kTaskSlots - 1) / kTaskSlots;
  std::vector<double> part(size_t(blocks * K * P));
  parallel_for(blocks * chunks, 1, [&](int64_t t0, int64_t t1) {
    double acc[K][kTaskSlots];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / chunks, s0 = t % chunks * kTaskSlots, ns = std::min(kTaskSlots, P - s0);
      for (int k = 0; k < K; ++k) std::fill_n(acc[k], ns, 0.0);
      for (int64_t r = b * rows; r < std::min(M, (b + 1) * rows); r += fold) {
        const int64_t base = r * C + s0, n = std::min(ns, (M - r) * C - s0);  // the last wide row may be short
        for (int64_t j = 0; j < n; ++j) {
          const Sums<K> v = terms(base + j, s0 + j);
          for (int k = 0; k < K; ++k) acc[k][j] += v[k];
        }
      }
      for (int k = 0; k < K; ++k) std::copy_n(acc[k], ns, &part[size_t((b * K + k) * P + s0)]);
    }
  });
  std::vector<double> sums(size_t(K * C), 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t q = 0; q < fold; ++q)
        for (int64_t c = 0; c < C; ++c) sums[size_t(k * C + c)] += part[size_t((b * K + k) * P + q * C + c)];
  return sums;
}
template <int K> Sums<K> channel_of(const std::vector<double>& sums, int64_t C, int64_t c) {
  Sums<K> s;
  for (int k = 0; k < K; ++k) s[k] = sums[size_t(k * C + c)];
  return s;
}

// An elementwise output of a kernel: write(i, co_0, ..., co_{J-1}) sets the value at flat
// index i from its channel's coefficients; skipped when the output is not wanted.
template <class F> struct Output {
  bool wanted;
  F write;
};
template <class T, class F> Output<F> output(T* out, F write) { return {out != nullptr, std::move(write)}; }

// Runs one kernel: the optional stage `pre` (e.g. the mean before the variance), the stage
// `main`, whose finish returns channel c's J coefficients, then each output's elementwise
// pass (one loop per output, as separate loops vectorize best).
template <class T, int J, class Pre, int K, class Terms, class Finish, class... F>
void run_channels(const Layout& L, Pre pre, Stage<K, Terms, Finish> main, Output<F>... outs) {
  using Coefs = std::array<T, J>;
  if (!L.rows()) {
    parallel_for(L.C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        if constexpr (!std::is_same_v<Pre, NoStage>) pre.finish(c, span_sums<1>(L, c, pre.terms));
        const Coefs co = main.finish(c, main.wanted ? span_sums<K>(L, c, main.terms) : Sums<K>{});
        for (int64_t n = 0; n < L.N; ++n) {
          const int64_t base = L.at(n, c);
          auto pass = [&]<size_t... j>(auto& out, std::index_sequence<j...>) {
            if (out.wanted)
              for (int64_t i = 0; i < L.S; ++i) out.write(base + i, co[j]...);
          };
          (pass(outs, std::make_index_sequence<J>()), ...);
        }
      }
    });
    return;
  }
  const int64_t M = L.N, C = L.C, fold = L.fold(), P = L.slots();
  if constexpr (!std::is_same_v<Pre, NoStage>) {
    const std::vector<double> s = row_sums<1>(L, pre.terms);
    for (int64_t c = 0; c < P; ++c) pre.finish(c, channel_of<1>(s, C, c % C));
  }
  const std::vector<double> s = main.wanted ? row_sums<K>(L, main.terms) : std::vector<double>(size_t(K * C), 0.0);
  std::vector<T> coef(size_t(J * P));  // coefficient j of slot c at j * P + c
  for (int64_t c = 0; c < C; ++c) {
    const Coefs co = main.finish(c, channel_of<K>(s, C, c));
    for (int j = 0; j < J; ++j)
      for (int64_t q = 0; q < fold; ++q) coef[size_t(j * P + q * C + c)] = co[j];
  }
  const T* cf = coef.data();
  const int64_t wide = (M + fold - 1) / fold;
  parallel_for(wide, std::max<int64_t>(1, kBlockValues / P), [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t base = w * P, n = std::min(P, M * C - base);
      auto pass = [&]<size_t... j>(auto& out, std::index_sequence<j...>) {
        if (out.wanted)
          for (int64_t c = 0; c < n; ++c) out.write(base + c, cf[j * P + c]...);
      };
      (pass(outs, std::make_index_sequence<J>()), ...);
    }
  });
}

// Per-slot mean and 1/√(var + ε) from the saved statistics, in double.
struct Saved {
  std::vector<double> mu, r;
};
template <class T> Saved saved_stats(const T* mean, const T* var, double eps, const Layout& L) {
  const int64_t P = L.slots();
  Saved s{std::vector<double>(size_t(P)), std::vector<double>(size_t(P))};
  for (int64_t c = 0; c < P; ++c) {
    s.mu[size_t(c)] = double(mean[c % L.C]);
    s.r[size_t(c)] = 1.0 / std::sqrt(double(var[c % L.C]) + eps);
  }
  return s;
}

// ReLU's value with NaN kept (a NaN input stays visible downstream).
template <class T> T relu_of(T v) { return v < T(0) ? T(0) : v; }
// y > 0 ? g : 0 (ReLU's VJP, BinaryOp::where_positive) without a branch: a bit mask, so the
// loops reading it vectorize (a branch on the sign of y mispredicts half the time).
template <class T> T where_positive(T g, T y) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  return std::bit_cast<T>(std::bit_cast<U>(g) & (U(0) - U(y > T(0))));
}

template <bool Relu, class T>
void forward_impl(const T* x, const T* w, const T* b, double eps, T* y, T* mean, T* var, const Layout& L) {
  const double M = double(L.count());
  std::vector<double> mu(size_t(L.slots()));
  run_channels<T, 3>(L,
                     stage<1>([&](int64_t i, int64_t) { return Sums<1>{double(x[i])}; },
                              [&](int64_t c, const Sums<1>& s) { mu[size_t(c)] = s[0] / M; }),
                     stage<1>(
                         [&](int64_t i, int64_t c) {
                           const double d = double(x[i]) - mu[size_t(c)];
                           return Sums<1>{d * d};
                         },
                         [&](int64_t c, const Sums<1>& s) {
                           const double v = s[0] / M;
                           mean[c] = T(mu[size_t(c)]);
                           var[c] = T(v);
                           return std::array<T, 3>{T((w ? double(w[c]) : 1.0) / std::sqrt(v + eps)),
                                                   T(b ? double(b[c]) : 0.0), T(mu[size_t(c)])};
                         }),
                     // centre first: x·scale + (b − μ·scale) would cancel when |μ| ≫ σ
                     output(y, [&](int64_t i, T sc, T sh, T m) {
                       const T v = (x[i] - m) * sc + sh;
                       y[i] = Relu ? relu_of(v) : v;
                     }));
}

// With x̂ = (x − μ)·r, r = 1/√(σ² + ε): gb = Σg, gw = Σ g·x̂, and
// gx = w·r·(g − mean(g) − x̂·mean(g·x̂)). Masked (batch norm + ReLU): g is read as
// y > 0 ? g : 0 with y the ReLU's output, in both passes (no masked copy of g).
template <bool Masked, class T> void backward_impl(const T* g_in, const T* y, const T* x, const T* w, const T* mean,
                                                   const T* var, double eps, T* gx, T* gw, T* gb, const Layout& L) {
  const double M = double(L.count());
  const Saved st = saved_stats(mean, var, eps, L);
  auto g = [&](int64_t i) { return Masked ? where_positive(g_in[i], y[i]) : g_in[i]; };
  run_channels<T, 4>(L, NoStage{},
                     stage<2>(
                         [&](int64_t i, int64_t c) {
                           const double gi = double(g(i));
                           return Sums<2>{gi, gi * (double(x[i]) - st.mu[size_t(c)])};
                         },
                         [&](int64_t c, const Sums<2>& s) {
                           const double sg = s[0], sgx = s[1], r = st.r[size_t(c)];
                           if (gb) gb[c] = T(sg);
                           if (gw) gw[c] = T(sgx * r);
                           const double k = (w ? double(w[c]) : 1.0) * r;
                           // gx = k·g − k·mean(g) − k·r²·mean(g·(x−μ))·(x − μ) = α·g + β·(x − μ) + γ
                           return std::array<T, 4>{T(k), T(-k * r * r * sgx / M), T(-k * sg / M), T(st.mu[size_t(c)])};
                         }),
                     output(gx, [&](int64_t i, T ta, T tb, T tg, T m) { gx[i] = ta * g(i) + tb * (x[i] - m) + tg; }));
}

// The second-order rules (formulas in nn_ops.cpp). Per channel, with gh = w·g: one pass of
// sums, then one elementwise pass.
//   input grad, cotangent a:  dg = w·r·(a − ⟨a⟩ − x̂⟨a·x̂⟩),  dw = Σ g·r·(a − ⟨a⟩ − x̂⟨a·x̂⟩),
//     dx = −r²·(x̂·k + (gh − ⟨gh⟩)·⟨a·x̂⟩ + ⟨gh·x̂⟩·(a − ⟨a⟩)),  k = ⟨a·gh⟩ − ⟨gh⟩⟨a⟩ − 3⟨gh·x̂⟩⟨a·x̂⟩;
//   weight grad, cotangent β:  dg = β·x̂,  dx = β·r·(g − ⟨g⟩ − x̂⟨g·x̂⟩).
template <class T> void input_grad_vjp_impl(const T* a, const T* g, const T* x, const T* w, const T* mean, const T* var,
                                            double eps, T* dg, T* dx, T* dw, const Layout& L) {
  const double M = double(L.count());
  const Saved st = saved_stats(mean, var, eps, L);
  run_channels<T, 8>(
      L, NoStage{},
      stage<5>(
          [&](int64_t i, int64_t c) {
            const double ai = double(a[i]), gi = double(g[i]), xc = double(x[i]) - st.mu[size_t(c)],
                         r = st.r[size_t(c)];
            return Sums<5>{ai, gi, ai * gi, gi * xc * r, ai * xc * r};
          },
          [&](int64_t c, const Sums<5>& s) {
            const double sa = s[0], sg = s[1], sag = s[2], sgx = s[3], sax = s[4];
            const double r = st.r[size_t(c)], wc = w ? double(w[c]) : 1.0;
            const double ma = sa / M, max = sax / M, mgh = wc * sg / M, magh = wc * sag / M, mghx = wc * sgx / M;
            if (dw) dw[c] = T(r * (sag - sg * ma - sgx * max));
            const double k = magh - mgh * ma - 3.0 * mghx * max, r2 = r * r;
            // dx = −r²·(x̂·k + gh·⟨a·x̂⟩ + ⟨gh·x̂⟩·a) + r²·(⟨gh⟩⟨a·x̂⟩ + ⟨gh·x̂⟩⟨a⟩), x̂ = (x − μ)·r
            return std::array<T, 8>{T(-r2 * k * r),
                                    T(-r2 * wc * max),
                                    T(-r2 * mghx),
                                    T(r2 * (mgh * max + mghx * ma)),  // dx: xk, gk, ak, c0k
                                    T(wc * r),
                                    T(-wc * r * max * r),
                                    T(-wc * r * ma),  // dg: da, dxh, d0
                                    T(st.mu[size_t(c)])};
          }),
      output(dg, [&](int64_t i, T, T, T, T, T da, T dxh, T d0, T m) { dg[i] = da * a[i] + dxh * (x[i] - m) + d0; }),
      output(dx, [&](int64_t i, T xk, T gk, T ak, T c0k, T, T, T, T m) {
        dx[i] = xk * (x[i] - m) + gk * g[i] + ak * a[i] + c0k;
      }));
}

template <class T> void weight_grad_vjp_impl(const T* beta, const T* g, const T* x, const T* mean, const T* var,
                                             double eps, T* dg, T* dx, const Layout& L) {
  const double M = double(L.count());
  const Saved st = saved_stats(mean, var, eps, L);
  run_channels<T, 5>(
      L, NoStage{},
      stage<2>(
          [&](int64_t i, int64_t c) {
            const double gi = double(g[i]);
            return Sums<2>{gi, gi * (double(x[i]) - st.mu[size_t(c)]) * st.r[size_t(c)]};
          },
          [&](int64_t c, const Sums<2>& s) {
            const double sg = s[0], sgx = s[1], r = st.r[size_t(c)], b = double(beta[c]);
            // dx = β·r·g − β·r·⟨g⟩ − β·r²·⟨g·x̂⟩·(x − μ)
            return std::array<T, 5>{T(b * r), T(-b * r * r * sgx / M), T(-b * r * sg / M), T(b * r),
                                    T(st.mu[size_t(c)])};
          },
          dx != nullptr),  // the sums only feed dx
      output(dg, [&](int64_t i, T, T, T, T dk, T m) { dg[i] = dk * (x[i] - m); }),
      output(dx, [&](int64_t i, T gk, T xk, T k0, T, T m) { dx[i] = gk * g[i] + xk * (x[i] - m) + k0; }));
}

// Eval mode: y = x·s[c] + t[c] (as the composite add(mul(x, s), t) rounds), then ReLU.
// NCHW: one task range over the N·C planes; rows ([M, C]): over wide rows (Layout::fold).
template <bool Relu, class T> void eval_impl(const T* x, const T* s, const T* t, T* y, const Layout& L) {
  auto one = [&](T xi, T sc, T sh) {
    const T v = xi * sc + sh;
    return Relu ? relu_of(v) : v;
  };
  if (!L.rows()) {
    parallel_for(L.N * L.C, std::max<int64_t>(1, kBlockValues / std::max<int64_t>(L.S, 1)),
                 [&](int64_t p0, int64_t p1) {
                   for (int64_t p = p0; p < p1; ++p) {
                     const T sc = s[p % L.C], sh = t[p % L.C];
                     const int64_t base = p * L.S;
                     for (int64_t i = 0; i < L.S; ++i) y[base + i] = one(x[base + i], sc, sh);
                   }
                 });
    return;
  }
  // wide rows (Layout::fold) with s and t tiled to match, so that small C still vectorizes
  const int64_t P = L.slots(), wide = (L.N + L.fold() - 1) / L.fold();
  std::vector<T> sp(static_cast<size_t>(P)), tp(static_cast<size_t>(P));
  for (int64_t c = 0; c < P; ++c) sp[size_t(c)] = s[c % L.C], tp[size_t(c)] = t[c % L.C];
  parallel_for(wide, std::max<int64_t>(1, kBlockValues / P), [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t base = w * P, n = std::min(P, L.N * L.C - base);
      for (int64_t c = 0; c < n; ++c) y[base + c] = one(x[base + c], sp[size_t(c)], tp[size_t(c)]);
    }
  });
}

}  // namespace

void batch_norm_input_grad_vjp(const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& weight,
                               const Tensor& mean, const Tensor& var, double eps, Tensor& dg, Tensor& dx, Tensor& dw) {
  const Instances in = instances("batch_norm_input_grad", x, mean, {&weight, &dw});
  dispatch_float(x.dtype(), "batch_norm_input_grad", [&](auto z) {
    using T = decltype(z);
    for_instances(in, [&](int64_t b, const Layout& L) {
      const int64_t o = b * in.x_stride(), s = b * L.C;
      input_grad_vjp_impl<T>(data_ptr<T>(a) + o, data_ptr<T>(g) + o, data_ptr<T>(x) + o, maybe<T>(weight),
                             data_ptr<T>(mean) + s, data_ptr<T>(var) + s, eps, maybe_out<T>(dg, o), maybe_out<T>(dx, o),
                             maybe_out<T>(dw), L);
    });
  });
}
void batch_norm_weight_grad_vjp(const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                const Tensor& var, double eps, Tensor& dg, Tensor& dx) {
  // beta is the cotangent of a weight gradient: there is none with instances
  const Instances in = instances("batch_norm_weight_grad", x, mean, {&beta});
  dispatch_float(x.dtype(), "batch_norm_weight_grad", [&](auto z) {
    using T = decltype(z);
    for_instances(in, [&](int64_t b, const Layout& L) {
      const int64_t o = b * in.x_stride(), s = b * L.C;
      weight_grad_vjp_impl<T>(data_ptr<T>(beta), data_ptr<T>(g) + o, data_ptr<T>(x) + o, data_ptr<T>(mean) + s,
                              data_ptr<T>(var) + s, eps, maybe_out<T>(dg, o), maybe_out<T>(dx, o), L);
    });
  });
}

void batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y, Tensor& mean,
                        Tensor& var, bool relu) {
  const Instances in = instances("batch_norm", x, mean, {&weight, &bias});
  dispatch_float(x.dtype(), "batch_norm", [&](auto z) {
    using T = decltype(z);
    for_instances(in, [&](int64_t b, const Layout& L) {
      const int64_t o = b * in.x_stride(), s = b * L.C;
      auto run = [&]<bool Relu>() {
        forward_impl<Relu, T>(data_ptr<T>(x) + o, maybe<T>(weight), maybe<T>(bias), eps, data_ptr<T>(y) + o,
                              data_ptr<T>(mean) + s, data_ptr<T>(var) + s, L);
      };
      relu ? run.template operator()<true>() : run.template operator()<false>();
    });
  });
}

void batch_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& var,
                         double eps, Tensor& gx, Tensor& gw, Tensor& gb, const Tensor* relu_y) {
  const Instances in = instances("batch_norm", x, mean, {&weight, &gw, &gb});
  dispatch_float(x.dtype(), "batch_norm", [&](auto z) {
    using T = decltype(z);
    for_instances(in, [&](int64_t b, const Layout& L) {
      const int64_t o = b * in.x_stride(), s = b * L.C;
      auto run = [&]<bool Masked>() {
        backward_impl<Masked, T>(data_ptr<T>(g) + o, Masked ? data_ptr<T>(*relu_y) + o : nullptr, data_ptr<T>(x) + o,
                                 maybe<T>(weight), data_ptr<T>(mean) + s, data_ptr<T>(var) + s, eps,
                                 data_ptr<T>(gx) + o, maybe_out<T>(gw), maybe_out<T>(gb), L);
      };
      relu_y ? run.template operator()<true>() : run.template operator()<false>();
    });
  });
}

void batch_norm_eval(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu, Tensor& y) {
  const Layout L = layout(x);
  dispatch_float(x.dtype(), "batch_norm", [&](auto z) {
    using T = decltype(z);
    auto run = [&]<bool Relu>() {
      eval_impl<Relu, T>(data_ptr<T>(x), data_ptr<T>(scale), data_ptr<T>(shift), data_ptr<T>(y), L);
    };
    relu ? run.template operator()<true>() : run.template operator()<false>();
  });
}

void add_relu(const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch_float(a.dtype(), "add_relu", [&](auto z) {
    using T = decltype(z);
    const T *pa = data_ptr<T>(a), *pb = data_ptr<T>(b);
    T* po = data_ptr<T>(out);
    parallel_for(a.numel(), 32768, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) po[i] = relu_of(pa[i] + pb[i]);
    });
  });
}

}  // namespace flatmin::cpu
