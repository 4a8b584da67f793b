// Naive convolution and pooling in plain loops with double accumulation: the one reference
// the CPU (tests/autodiff/test_nn_ops.cpp) and CUDA (tests/gpu/test_cuda_backend.cpp)
// kernels are checked against. NCHW inputs, OIHW weights.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "autodiff/backend.hpp"

namespace flatmin::test {

// Each value rounded to float32, then to bfloat16 (round to nearest even, as oneDNN's reorder
// and the CUDA backend's conversion do): the operands a bfloat16 convolution sees.
inline std::vector<double> round_to_bf16(std::vector<double> v) {
  for (double& e : v) {
    float f = float(e);
    uint32_t b;
    std::memcpy(&b, &f, 4);
    b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    std::memcpy(&f, &b, 4);
    e = f;
  }
  return v;
}

inline int64_t conv_out_size(int64_t n, int64_t k, int64_t stride, int64_t pad) {
  return (n + 2 * pad - k) / stride + 1;
}

// Calls f(y_index, x_index, w_index) for every term of the convolution sum of an input of
// shape xs with weights of shape ws: y = Σ x·w over the terms, and the input and weight
// gradients are the same sums with the roles exchanged.
template <class F> void for_each_conv_term(const Shape& xs, const Shape& ws, const Conv2dParams& p, F&& f) {
  const int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3], O = ws[0], KH = ws[2], KW = ws[3];
  const int64_t OH = conv_out_size(H, KH, p.stride_h, p.pad_h), OW = conv_out_size(W, KW, p.stride_w, p.pad_w);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow)
          for (int64_t c = 0; c < C; ++c)
            for (int64_t kh = 0; kh < KH; ++kh)
              for (int64_t kw = 0; kw < KW; ++kw) {
                const int64_t ih = oh * p.stride_h - p.pad_h + kh, iw = ow * p.stride_w - p.pad_w + kw;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                  f(((n * O + o) * OH + oh) * OW + ow, ((n * C + c) * H + ih) * W + iw,
                    ((o * C + c) * KH + kh) * KW + kw);
              }
}

struct ConvReference {
  Shape y_shape;
  std::vector<double> y, gx, gw;  // forward, and the input/weight gradients for gy
};
// The convolution of x (shape xs) with w (shape ws), and its two gradients for gy (when
// gy is given: empty gy leaves gx and gw empty).
inline ConvReference naive_conv2d(const std::vector<double>& x, const std::vector<double>& w, const Shape& xs,
                                  const Shape& ws, const Conv2dParams& p, const std::vector<double>& gy = {}) {
  ConvReference r;
  r.y_shape = {xs[0], ws[0], conv_out_size(xs[2], ws[2], p.stride_h, p.pad_h),
               conv_out_size(xs[3], ws[3], p.stride_w, p.pad_w)};
  r.y.assign(size_t(numel(r.y_shape)), 0.0);
  if (!gy.empty()) r.gx.assign(x.size(), 0.0), r.gw.assign(w.size(), 0.0);
  for_each_conv_term(xs, ws, p, [&](int64_t yi, int64_t xi, int64_t wi) {
    r.y[size_t(yi)] += x[size_t(xi)] * w[size_t(wi)];
    if (gy.empty()) return;
    r.gx[size_t(xi)] += gy[size_t(yi)] * w[size_t(wi)];
    r.gw[size_t(wi)] += gy[size_t(yi)] * x[size_t(xi)];
  });
  return r;
}

struct PoolReference {
  Shape y_shape;
  std::vector<double> max, avg;  // avg counts the padding (count_include_pad)
  std::vector<int64_t> argmax;   // h * W + w of the first maximum in each window
};
inline PoolReference naive_pool2d(const std::vector<double>& x, const Shape& xs, const Pool2dParams& p) {
  const int64_t H = xs[2], W = xs[3];
  const int64_t OH = conv_out_size(H, p.kernel_h, p.stride_h, p.pad_h),
                OW = conv_out_size(W, p.kernel_w, p.stride_w, p.pad_w);
  PoolReference r;
  r.y_shape = {xs[0], xs[1], OH, OW};
  for (int64_t pl = 0; pl < xs[0] * xs[1]; ++pl)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        double best = -INFINITY, total = 0;
        int64_t at = -1;
        for (int64_t h = oh * p.stride_h - p.pad_h; h < oh * p.stride_h - p.pad_h + p.kernel_h; ++h)
          for (int64_t w = ow * p.stride_w - p.pad_w; w < ow * p.stride_w - p.pad_w + p.kernel_w; ++w) {
            if (h < 0 || h >= H || w < 0 || w >= W) continue;
            const double v = x[size_t(pl * H * W + h * W + w)];
            total += v;
            if (v > best) best = v, at = h * W + w;
          }
        r.max.push_back(best), r.argmax.push_back(at), r.avg.push_back(total / double(p.kernel_h * p.kernel_w));
      }
  return r;
}

}  // namespace flatmin::test
