// Fused batch norm with batch statistics, first order (the CPU's autodiff/cpu/norm.cpp on
// the GPU): one block per channel, sums in double combined in a fixed tree (no atomics),
// so results are deterministic. Higher orders use the differentiable rules (nn_ops.cpp).
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

template <class T>
__global__ void bn_forward_block_kernel(const T* x, const T* w, const T* b, double eps, T* y, T* mean, T* var,
                                        BnLayout L) {
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
template <class T>
__global__ void bn_backward_block_kernel(const T* g, const T* x, const T* w, const T* mean, const T* var, double eps,
                                         T* gx, T* gw, T* gb, BnLayout L) {
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

}  // namespace flatmin::cuda
