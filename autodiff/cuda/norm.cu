// Fused batch norm with batch statistics (the CPU's autodiff/cpu/norm.cpp on the GPU): the
// forward, the first-order backward and the two second-order rules for unrecorded sweeps.
// One block per channel, sums in double combined in a fixed tree (no atomics), so results
// are deterministic. Recorded sweeps use the differentiable rules (nn_ops.cpp).
#include "autodiff/cuda/kernels.hpp"

namespace flatmin::cuda {

namespace {

// x viewed as [N, C, S]: element j of channel c (j < N*S) is at (j / S) * C*S + c*S + j % S.
struct BnLayout {
  int64_t N, C, S;
};
__device__ __forceinline__ int64_t bn_at(const BnLayout& L, int64_t c, int64_t j) {
  return (j / L.S) * L.C * L.S + c * L.S + j % L.S;
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

template <class T> __global__ void bn_forward_block_kernel(const T* x, const T* w, const T* b, double eps, T* y,
                                                           T* mean, T* var, BnLayout L) {
  __shared__ double part[kThreads];
  const int64_t M = L.N * L.S;
  for (int64_t c = blockIdx.x; c < L.C; c += gridDim.x) {
    double s = 0;
    for (int64_t j = threadIdx.x; j < M; j += kThreads) s += double(x[bn_at(L, c, j)]);
    const double mu = bn_block_sum(s, part) / double(M);
    double v = 0;
    for (int64_t j = threadIdx.x; j < M; j += kThreads) {
      const double d = double(x[bn_at(L, c, j)]) - mu;
      v += d * d;
    }
    v = bn_block_sum(v, part) / double(M);
    const T sc = T((w ? double(w[c]) : 1.0) / sqrt(v + eps)), sh = T(b ? double(b[c]) : 0.0), m = T(mu);
    for (int64_t j = threadIdx.x; j < M; j += kThreads) {
      const int64_t i = bn_at(L, c, j);
      y[i] = (x[i] - m) * sc + sh;
    }
    if (threadIdx.x == 0) {
      mean[c] = T(mu);
      var[c] = T(v);
    }
  }
}

// gb = Σ g, gw = Σ g·x̂, gx = w·r·(g − mean(g) − x̂·mean(g·x̂)), x̂ = (x − μ)·r.
template <class T> __global__ void bn_backward_block_kernel(const T* g, const T* x, const T* w, const T* mean,
                                                            const T* var, double eps, T* gx, T* gw, T* gb, BnLayout L) {
  __shared__ double part[kThreads];
  const int64_t M = L.N * L.S;
  for (int64_t c = blockIdx.x; c < L.C; c += gridDim.x) {
    const double mu = double(mean[c]), r = 1.0 / sqrt(double(var[c]) + eps);
    double sg = 0, sgx = 0;
    for (int64_t j = threadIdx.x; j < M; j += kThreads) {
      const int64_t i = bn_at(L, c, j);
      sg += double(g[i]);
      sgx += double(g[i]) * (double(x[i]) - mu);
    }
    sg = bn_block_sum(sg, part);
    sgx = bn_block_sum(sgx, part);
    if (threadIdx.x == 0) {
      if (gb) gb[c] = T(sg);
      if (gw) gw[c] = T(sgx * r);
    }
    const double k = (w ? double(w[c]) : 1.0) * r;
    const T ta = T(k), tb = T(-k * r * r * sgx / double(M)), tg = T(-k * sg / double(M)), m = T(mu);
    for (int64_t j = threadIdx.x; j < M; j += kThreads) {
      const int64_t i = bn_at(L, c, j);
      gx[i] = ta * g[i] + tb * (x[i] - m) + tg;
    }
  }
}

// The second-order rules (formulas in nn_ops.cpp and autodiff/cpu/norm.cpp), for sweeps
// that do not record. input grad, cotangent a: dg, dx, dw; weight grad, cotangent beta: dg, dx.
template <class T> __global__ void bn_input_grad_vjp_block_kernel(const T* a, const T* g, const T* x, const T* w,
                                                                  const T* mean, const T* var, double eps, T* dg, T* dx,
                                                                  T* dw, BnLayout L) {
  __shared__ double part[kThreads];
  const int64_t M = L.N * L.S;
  for (int64_t c = blockIdx.x; c < L.C; c += gridDim.x) {
    const double mu = double(mean[c]), r = 1.0 / sqrt(double(var[c]) + eps), wc = w ? double(w[c]) : 1.0;
    double sa = 0, sg = 0, sag = 0, sgx = 0, sax = 0;
    for (int64_t j = threadIdx.x; j < M; j += kThreads) {
      const int64_t i = bn_at(L, c, j);
      const double av = double(a[i]), gv = double(g[i]), xh = (double(x[i]) - mu) * r;
      sa += av;
      sg += gv;
      sag += av * gv;
      sgx += gv * xh;
      sax += av * xh;
    }
    sa = bn_block_sum(sa, part);
    sg = bn_block_sum(sg, part);
    sag = bn_block_sum(sag, part);
    sgx = bn_block_sum(sgx, part);
    sax = bn_block_sum(sax, part);
    const double Md = double(M), ma = sa / Md, max = sax / Md, mgh = wc * sg / Md, magh = wc * sag / Md,
                 mghx = wc * sgx / Md;
    if (dw && threadIdx.x == 0) dw[c] = T(r * (sag - sg * ma - sgx * max));
    const double k = magh - mgh * ma - 3.0 * mghx * max, r2 = r * r;
    const T xk = T(-r2 * k * r), gk = T(-r2 * wc * max), ak = T(-r2 * mghx), c0k = T(r2 * (mgh * max + mghx * ma));
    const T da = T(wc * r), dxh = T(-wc * r * max * r), d0 = T(-wc * r * ma), m = T(mu);
    for (int64_t j = threadIdx.x; j < M; j += kThreads) {
      const int64_t i = bn_at(L, c, j);
      if (dg) dg[i] = da * a[i] + dxh * (x[i] - m) + d0;
      if (dx) dx[i] = xk * (x[i] - m) + gk * g[i] + ak * a[i] + c0k;
    }
  }
}

template <class T> __global__ void bn_weight_grad_vjp_block_kernel(const T* beta, const T* g, const T* x, const T* mean,
                                                                   const T* var, double eps, T* dg, T* dx, BnLayout L) {
  __shared__ double part[kThreads];
  const int64_t M = L.N * L.S;
  for (int64_t c = blockIdx.x; c < L.C; c += gridDim.x) {
    const double mu = double(mean[c]), r = 1.0 / sqrt(double(var[c]) + eps), b = double(beta[c]);
    double sg = 0, sgx = 0;
    for (int64_t j = threadIdx.x; j < M; j += kThreads) {
      const int64_t i = bn_at(L, c, j);
      sg += double(g[i]);
      sgx += double(g[i]) * (double(x[i]) - mu) * r;
    }
    sg = bn_block_sum(sg, part);
    sgx = bn_block_sum(sgx, part);
    const T gk = T(b * r), xk = T(-b * r * r * sgx / double(M)), k0 = T(-b * r * sg / double(M)), dk = T(b * r),
            m = T(mu);
    for (int64_t j = threadIdx.x; j < M; j += kThreads) {
      const int64_t i = bn_at(L, c, j);
      if (dg) dg[i] = dk * (x[i] - m);
      if (dx) dx[i] = gk * g[i] + xk * (x[i] - m) + k0;
    }
  }
}

BnLayout bn_layout(const Tensor& x) {
  const int64_t N = x.shape()[0], C = x.shape()[1];
  return {N, C, N * C != 0 ? x.numel() / (N * C) : 0};
}
template <class T> const T* maybe(const Tensor& t) { return t.defined() ? data_ptr<T>(t) : nullptr; }
template <class T> T* maybe_out(Tensor& t) { return t.defined() ? data_ptr<T>(t) : nullptr; }
unsigned bn_grid(int64_t C) { return unsigned(std::clamp<int64_t>(C, 1, 65535)); }

}  // namespace

void batch_norm_forward(const Ctx& c, const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y,
                        Tensor& mean, Tensor& var) {
  const BnLayout L = bn_layout(x);
  if (L.C == 0) return;
  dispatch_float(x.dtype(), "batch_norm", [&](auto z) {
    using T = decltype(z);
    bn_forward_block_kernel<T><<<bn_grid(L.C), kThreads, 0, c.stream>>>(
        data_ptr<T>(x), maybe<T>(w), maybe<T>(b), eps, data_ptr<T>(y), data_ptr<T>(mean), data_ptr<T>(var), L);
  });
  after_launch(c, "batch_norm (forward)");
}

void batch_norm_backward(const Ctx& c, const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                         const Tensor& var, double eps, Tensor& gx, Tensor& gw, Tensor& gb) {
  const BnLayout L = bn_layout(x);
  if (L.C == 0) return;
  dispatch_float(x.dtype(), "batch_norm", [&](auto z) {
    using T = decltype(z);
    bn_backward_block_kernel<T><<<bn_grid(L.C), kThreads, 0, c.stream>>>(
        data_ptr<T>(g), data_ptr<T>(x), maybe<T>(w), data_ptr<T>(mean), data_ptr<T>(var), eps, data_ptr<T>(gx),
        maybe_out<T>(gw), maybe_out<T>(gb), L);
  });
  after_launch(c, "batch_norm (backward)");
}

void batch_norm_input_grad_vjp(const Ctx& c, const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& w,
                               const Tensor& mean, const Tensor& var, double eps, Tensor& dg, Tensor& dx, Tensor& dw) {
  const BnLayout L = bn_layout(x);
  if (L.C == 0) return;
  dispatch_float(x.dtype(), "batch_norm_input_grad", [&](auto z) {
    using T = decltype(z);
    bn_input_grad_vjp_block_kernel<T><<<bn_grid(L.C), kThreads, 0, c.stream>>>(
        data_ptr<T>(a), data_ptr<T>(g), data_ptr<T>(x), maybe<T>(w), data_ptr<T>(mean), data_ptr<T>(var), eps,
        maybe_out<T>(dg), maybe_out<T>(dx), maybe_out<T>(dw), L);
  });
  after_launch(c, "batch_norm_input_grad (second order)");
}

void batch_norm_weight_grad_vjp(const Ctx& c, const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                const Tensor& var, double eps, Tensor& dg, Tensor& dx) {
  const BnLayout L = bn_layout(x);
  if (L.C == 0) return;
  dispatch_float(x.dtype(), "batch_norm_weight_grad", [&](auto z) {
    using T = decltype(z);
    bn_weight_grad_vjp_block_kernel<T>
        <<<bn_grid(L.C), kThreads, 0, c.stream>>>(data_ptr<T>(beta), data_ptr<T>(g), data_ptr<T>(x), data_ptr<T>(mean),
                                                  data_ptr<T>(var), eps, maybe_out<T>(dg), maybe_out<T>(dx), L);
  });
  after_launch(c, "batch_norm_weight_grad (second order)");
}

}  // namespace flatmin::cuda
