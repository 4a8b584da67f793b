// Convolution and pooling kernels for the CPU: im2col + GEMM (gemm.hpp), oneTBB over groups of
// images. Each convolution processes the batch in groups of G images (G chosen from the
// output plane size so that every GEMM has enough columns); a group's im2col buffer is
// the only scratch memory, one per worker thread, so memory stays bounded at any batch.
// Results never depend on the thread count: each output element is produced by exactly
// one task, and the weight gradient sums per-chunk partials (chunks fixed by the shapes)
// in chunk order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/gemm.hpp"
#include "autodiff/cpu/onednn.hpp"
#include "autodiff/cpu/scratch.hpp"
#include "autodiff/cpu/winograd.hpp"
#include "autodiff/kernel_util.hpp"

namespace flatmin::cpu {

namespace {
using kernels::dispatch_float;

using Geometry = kernels::ConvGeometry;
Geometry geometry(const Shape& x, const Shape& w, const Shape& y, const Conv2dParams& p) {
  return kernels::conv_geometry(x, w, y, p);
}

// Images per GEMM: enough columns (G*P >= 256) for the GEMM to run near its peak on small
// planes, one image on large planes; the column buffer is capped at 16 MiB.
int64_t images_per_group(const Geometry& g, size_t elem) {
  int64_t G = std::clamp<int64_t>(256 / std::max<int64_t>(g.P(), 1), 1, 16);
  const int64_t per_image = g.K() * g.P() * int64_t(elem);
  while (G > 1 && per_image * G > (int64_t(16) << 20)) --G;
  return std::min(G, g.N);
}

// Range of output positions o (of n) whose input index o*s - p + k lies in [0, extent).
inline void valid_range(int64_t k, int64_t s, int64_t p, int64_t extent, int64_t n, int64_t& lo, int64_t& hi) {
  // o*s >= p - k  and  o*s <= extent - 1 + p - k
  const int64_t a = p - k, b = extent - 1 + p - k;
  lo = a <= 0 ? 0 : (a + s - 1) / s;
  hi = b < 0 ? 0 : std::min(n, b / s + 1);
  if (hi < lo) hi = lo;
}

// col[r, col0 + oh*OW + ow] = x[c, oh*sh - ph + kh, ow*sw - pw + kw] (0 outside), r = (c, kh, kw).
template <class T> void im2col(const T* x, T* col, int64_t ld, int64_t col0, const Geometry& g) {
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        T* row = col + ((c * g.KH + kh) * g.KW + kw) * ld + col0;
        int64_t w0, w1, h0, h1;
        valid_range(kw, g.sw, g.pw, g.W, g.OW, w0, w1);
        valid_range(kh, g.sh, g.ph, g.H, g.OH, h0, h1);
        std::fill(row, row + h0 * g.OW, T(0));
        for (int64_t oh = h0; oh < h1; ++oh) {
          T* r = row + oh * g.OW;
          const T* xs = x + (c * g.H + oh * g.sh - g.ph + kh) * g.W - g.pw + kw;
          std::fill(r, r + w0, T(0));
          if (g.sw == 1)
            std::memcpy(r + w0, xs + w0, size_t(w1 - w0) * sizeof(T));
          else
            for (int64_t ow = w0; ow < w1; ++ow) r[ow] = xs[ow * g.sw];
          std::fill(r + w1, r + g.OW, T(0));
        }
        std::fill(row + h1 * g.OW, row + g.P(), T(0));
      }
}

// The adjoint of im2col: x[c, ih, iw] += col[r, col0 + oh*OW + ow] (x pre-filled).
template <class T> void col2im(const T* col, int64_t ld, int64_t col0, T* x, const Geometry& g) {
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const T* row = col + ((c * g.KH + kh) * g.KW + kw) * ld + col0;
        int64_t w0, w1, h0, h1;
        valid_range(kw, g.sw, g.pw, g.W, g.OW, w0, w1);
        valid_range(kh, g.sh, g.ph, g.H, g.OH, h0, h1);
        for (int64_t oh = h0; oh < h1; ++oh) {
          const T* r = row + oh * g.OW;
          T* xs = x + (c * g.H + oh * g.sh - g.ph + kh) * g.W - g.pw + kw;
          if (g.sw == 1)
            for (int64_t ow = w0; ow < w1; ++ow) xs[ow] += r[ow];
          else
            for (int64_t ow = w0; ow < w1; ++ow) xs[ow * g.sw] += r[ow];
        }
      }
}

// Copies per-image [rows, P] blocks (image stride `stride`) into a [rows, G*P] matrix, and back.
template <class T> void pack_images(const T* src, int64_t stride, int64_t G, int64_t rows, int64_t P, T* dst) {
  for (int64_t i = 0; i < G; ++i)
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(dst + r * G * P + i * P, src + i * stride + r * P, size_t(P) * sizeof(T));
}
template <class T> void unpack_images(const T* src, int64_t G, int64_t rows, int64_t P, T* dst, int64_t stride) {
  for (int64_t i = 0; i < G; ++i)
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(dst + i * stride + r * P, src + r * G * P + i * P, size_t(P) * sizeof(T));
}

// Runs body(n0, n1) for each group of images, groups in parallel.
template <class F> void for_each_group(int64_t N, int64_t G, F&& body) {
  const int64_t groups = (N + G - 1) / G;
  parallel_for(groups, 1, [&](int64_t a, int64_t b) {
    for (int64_t q = a; q < b; ++q) body(q * G, std::min(N, (q + 1) * G));
  });
}

// y[n] = W [O, K] @ col(x[n]) [K, P]
template <class T> void forward_impl(const T* x, const T* w, T* y, const Geometry& g) {
  if (g.winograd()) return winograd_conv3x3(x, w, false, y, {g.N, g.C, g.H, g.W, g.O, g.OH, g.OW, g.ph, g.pw});
  const int64_t G = images_per_group(g, sizeof(T)), P = g.P(), K = g.K();
  // y[O, n] = W[O, K] @ col[K, n]
  auto product = [&](const T* col, int64_t n, T* out) { gemm<T>(false, false, g.O, n, K, 1, w, K, col, n, 0, out, n); };
  const bool direct = g.pointwise() && G == 1;
  Scratch<T> cols(direct ? 0 : size_t(K * G * P + (G > 1 ? g.O * G * P : 0)));
  for_each_group(g.N, G, [&](int64_t n0, int64_t n1) {
    const int64_t gn = n1 - n0, cols_n = gn * P;
    if (direct) {
      product(x + n0 * g.C * g.HW(), P, y + n0 * g.O * P);
      return;
    }
    T* col = cols.get();
    if (g.pointwise())
      pack_images(x + n0 * g.C * g.HW(), g.C * g.HW(), gn, g.C, P, col);
    else
      for (int64_t i = 0; i < gn; ++i) im2col(x + (n0 + i) * g.C * g.HW(), col, cols_n, i * P, g);
    if (gn == 1) {
      product(col, P, y + n0 * g.O * P);
    } else {
      T* tmp = col + K * G * P;
      product(col, cols_n, tmp);
      unpack_images(tmp, gn, g.O, P, y + n0 * g.O * P, g.O * P);
    }
  });
}

// gx[n] = col2im(W^T [K, O] @ gy[n] [O, P])
template <class T> void input_grad_impl(const T* gy, const T* w, T* gx, const Geometry& g) {
  if (g.winograd()) return winograd_conv3x3(gy, w, true, gx, {g.N, g.O, g.OH, g.OW, g.C, g.H, g.W, 2 - g.ph, 2 - g.pw});
  const int64_t G = images_per_group(g, sizeof(T)), P = g.P(), K = g.K();
  // col[K, n] = W^T[K, O] @ gy[O, n]
  auto product = [&](const T* gym, int64_t n, T* col) { gemm<T>(true, false, K, n, g.O, 1, w, K, gym, n, 0, col, n); };
  const bool direct = g.pointwise() && G == 1;
  Scratch<T> cols(direct ? 0 : size_t(K * G * P + (G > 1 ? g.O * G * P : 0)));
  for_each_group(g.N, G, [&](int64_t n0, int64_t n1) {
    const int64_t gn = n1 - n0, cols_n = gn * P;
    if (direct) {
      product(gy + n0 * g.O * P, P, gx + n0 * g.C * g.HW());
      return;
    }
    T* col = cols.get();
    const T* gym = gy + n0 * g.O * P;
    if (gn > 1) {
      T* tmp = col + K * G * P;
      pack_images(gym, g.O * P, gn, g.O, P, tmp);
      gym = tmp;
    }
    product(gym, cols_n, col);
    if (g.pointwise()) {
      unpack_images(col, gn, g.C, P, gx + n0 * g.C * g.HW(), g.C * g.HW());
      return;
    }
    for (int64_t i = 0; i < gn; ++i) {
      T* xi = gx + (n0 + i) * g.C * g.HW();
      std::fill(xi, xi + g.C * g.HW(), T(0));
      col2im(col, cols_n, i * P, xi, g);
    }
  });
}

// gw = sum_n gy[n] [O, P] @ col(x[n])^T [P, K]. The batch is cut into a number of chunks
// fixed by the shapes; chunks run in parallel into partial sums (their count bounded so
// that the partials stay under 32 MiB), added in chunk order.
template <class T> void weight_grad_impl(const T* x, const T* gy, T* gw, const Geometry& g) {
  if (g.winograd()) return winograd_filter_grad3x3(x, gy, gw, {g.N, g.C, g.H, g.W, g.O, g.OH, g.OW, g.ph, g.pw});
  const int64_t G = images_per_group(g, sizeof(T)), P = g.P(), K = g.K();
  const int64_t wsize = g.O * K;
  if (g.N == 0) {
    std::fill(gw, gw + wsize, T(0));
    return;
  }
  const int64_t groups = (g.N + G - 1) / G;
  const int64_t max_chunks = 1 + (int64_t(32) << 20) / std::max<int64_t>(wsize * int64_t(sizeof(T)), 1);
  int64_t chunks = std::min({groups, int64_t(8), max_chunks});
  while (chunks & (chunks - 1)) --chunks;  // a power of two: balanced on 2, 4 or 8 threads
  Workspace<T> partials(size_t(std::max<int64_t>(chunks - 1, 0) * wsize));
  Scratch<T> cols(size_t(K * G * P + g.O * G * P));
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      T* acc = ch == 0 ? gw : partials.data() + (ch - 1) * wsize;
      std::fill(acc, acc + wsize, T(0));
      const int64_t q0 = groups * ch / chunks, q1 = groups * (ch + 1) / chunks;
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t n0 = q * G, n1 = std::min(g.N, n0 + G), gn = n1 - n0, cols_n = gn * P;
        T* col = cols.get();
        T* gyp = col + K * G * P;
        const T* gym = gy + n0 * g.O * P;
        if (gn > 1) {
          pack_images(gym, g.O * P, gn, g.O, P, gyp);
          gym = gyp;
        }
        if (g.pointwise())
          pack_images(x + n0 * g.C * g.HW(), g.C * g.HW(), gn, g.C, P, col);
        else
          for (int64_t i = 0; i < gn; ++i) im2col(x + (n0 + i) * g.C * g.HW(), col, cols_n, i * P, g);
        // acc[O, K] += gy[O, n] @ col[K, n]^T
        gemm<T>(false, true, g.O, K, cols_n, 1, gym, cols_n, col, cols_n, 1, acc, K);
      }
    }
  });
  if (chunks > 1)
    parallel_for(wsize, 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t ch = 1; ch < chunks; ++ch) {
        const T* p = partials.data() + (ch - 1) * wsize;
        for (int64_t i = i0; i < i1; ++i) gw[i] += p[i];
      }
    });
}

// ---- pooling: one task per (image, channel) plane
using kernels::pool_geometry;
using kernels::PoolGeometry;
// Calls f(oh, ow, h0, h1, w0, w1) for every output position with its window clipped to the input.
template <class F> void for_each_window(const PoolGeometry& g, F&& f) {
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t hs = oh * g.sh - g.ph, h0 = std::max<int64_t>(hs, 0), h1 = std::min(hs + g.KH, g.H);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const int64_t ws = ow * g.sw - g.pw, w0 = std::max<int64_t>(ws, 0), w1 = std::min(ws + g.KW, g.W);
      f(oh * g.OW + ow, h0, h1, w0, w1);
    }
  }
}
template <class F> void for_each_plane(const PoolGeometry& g, F&& f) {
  parallel_for(g.planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(g.H * g.W, 1)), [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) f(i);
  });
}

// float32 on oneDNN when the build has it (onednn.hpp); an empty batch stays here, where
// the weight gradient comes out as zeros.
// (p.bf16 is only ever set when oneDNN is enabled: Backend::supports_bf16_convolutions.)
// Channels-last geometry only ever arrives for float32 with oneDNN
// (Backend::supports_channels_last_convolutions); flatmin's own kernels are NCHW.
// Where oneDNN has no Winograd kernels (AVX2), its wide 3x3 stride-1 NCHW layers and the deep
// layers on 4x4 planes run flatmin's own kernels instead (onednn::native_kernels_instead).
bool use_onednn(DType t, const Geometry& g, onednn::Direction d, bool bf16) {
  if (g.channels_last && !(t == DType::f32 && onednn::enabled()))
    throw Error("conv2d: channels-last convolutions need float32 and oneDNN (the op should have permuted)");
  return t == DType::f32 && g.N > 0 && onednn::enabled() && !onednn::native_kernels_instead(d, g, bf16);
}

}  // namespace

void conv2d_forward(const Tensor& x, const Tensor& w, Tensor& out, const Conv2dParams& p) {
  const Geometry g = geometry(x.shape(), w.shape(), out.shape(), p);
  if (out.numel() == 0) return;
  if (use_onednn(x.dtype(), g, onednn::Direction::forward, p.bf16))
    return onednn::forward(data_ptr<float>(x), data_ptr<float>(w), data_ptr<float>(out), g, p.bf16);
  dispatch_float(x.dtype(), "conv2d", [&](auto t) {
    using T = decltype(t);
    forward_impl<T>(data_ptr<T>(x), data_ptr<T>(w), data_ptr<T>(out), g);
  });
}
void conv2d_input_grad(const Tensor& gy, const Tensor& w, Tensor& gx, const Conv2dParams& p) {
  const Geometry g = geometry(gx.shape(), w.shape(), gy.shape(), p);
  if (gx.numel() == 0) return;
  if (use_onednn(gy.dtype(), g, onednn::Direction::input_grad, p.bf16))
    return onednn::input_grad(data_ptr<float>(gy), data_ptr<float>(w), data_ptr<float>(gx), g, p.bf16);
  dispatch_float(gy.dtype(), "conv2d_input_grad", [&](auto t) {
    using T = decltype(t);
    input_grad_impl<T>(data_ptr<T>(gy), data_ptr<T>(w), data_ptr<T>(gx), g);
  });
}
void conv2d_weight_grad(const Tensor& x, const Tensor& gy, Tensor& gw, const Conv2dParams& p) {
  const Geometry g = geometry(x.shape(), gw.shape(), gy.shape(), p);
  if (gw.numel() == 0) return;
  if (use_onednn(x.dtype(), g, onednn::Direction::weight_grad, p.bf16))
    return onednn::weight_grad(data_ptr<float>(x), data_ptr<float>(gy), data_ptr<float>(gw), g, p.bf16);
  dispatch_float(x.dtype(), "conv2d_weight_grad", [&](auto t) {
    using T = decltype(t);
    weight_grad_impl<T>(data_ptr<T>(x), data_ptr<T>(gy), data_ptr<T>(gw), g);
  });
}

// Padding acts as -inf: the max is taken over the window clipped to the input (never
// empty, since the op checks padding <= kernel/2). Ties and NaN follow PyTorch: the first
// maximum in row-major window order wins; a NaN wins over any number (the last NaN's index).
void max_pool2d(const Tensor& x, Tensor& out, Tensor& indices, const Pool2dParams& p) {
  const PoolGeometry g = pool_geometry(x.shape(), out.shape(), p);
  int64_t* idx = data_ptr<int64_t>(indices);
  dispatch_float(x.dtype(), "max_pool2d", [&](auto t) {
    using T = decltype(t);
    const T* xp = data_ptr<T>(x);
    T* yp = data_ptr<T>(out);
    for_each_plane(g, [&](int64_t pl) {
      const T* xs = xp + pl * g.H * g.W;
      T* ys = yp + pl * g.OH * g.OW;
      int64_t* is = idx + pl * g.OH * g.OW;
      for_each_window(g, [&](int64_t o, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
        T best = -std::numeric_limits<T>::infinity();
        int64_t at = h0 * g.W + w0;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) {
            const T v = xs[h * g.W + w];
            if (v > best || std::isnan(v)) {
              best = v;
              at = h * g.W + w;
            }
          }
        ys[o] = best;
        is[o] = at;
      });
    });
  });
}

// count_include_pad = true: the divisor is always kernel_h * kernel_w (without ceil mode a
// window never reaches past the padding).
void avg_pool2d(const Tensor& x, Tensor& out, const Pool2dParams& p) {
  const PoolGeometry g = pool_geometry(x.shape(), out.shape(), p);
  dispatch_float(x.dtype(), "avg_pool2d", [&](auto t) {
    using T = decltype(t);
    const T* xp = data_ptr<T>(x);
    T* yp = data_ptr<T>(out);
    const T scale = T(1) / T(g.KH * g.KW);
    for_each_plane(g, [&](int64_t pl) {
      const T* xs = xp + pl * g.H * g.W;
      T* ys = yp + pl * g.OH * g.OW;
      for_each_window(g, [&](int64_t o, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
        T s = 0;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) s += xs[h * g.W + w];
        ys[o] = s * scale;
      });
    });
  });
}
void avg_pool2d_adjoint(const Tensor& gy, Tensor& gx, const Pool2dParams& p) {
  const PoolGeometry g = pool_geometry(gx.shape(), gy.shape(), p);
  dispatch_float(gy.dtype(), "avg_pool2d_adjoint", [&](auto t) {
    using T = decltype(t);
    const T* yp = data_ptr<T>(gy);
    T* xp = data_ptr<T>(gx);
    const T scale = T(1) / T(g.KH * g.KW);
    for_each_plane(g, [&](int64_t pl) {
      T* xs = xp + pl * g.H * g.W;
      const T* ys = yp + pl * g.OH * g.OW;
      std::fill(xs, xs + g.H * g.W, T(0));
      for_each_window(g, [&](int64_t o, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
        const T v = ys[o] * scale;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) xs[h * g.W + w] += v;
      });
    });
  });
}

}  // namespace flatmin::cpu
