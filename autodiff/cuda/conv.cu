// Convolution (cuDNN where built with it and the engine gives it the call, cudnn.cu; else
// Winograd for 3x3 stride-1 layers with >= 32 channels, winograd.cu; else im2col / col2im +
// cuBLAS GEMM, chunked over images so the column buffer stays under kColumnBudget) and 2-d
// pooling. Everything is deterministic: no atomics (cudnn.cu keeps to cuDNN's deterministic
// algorithms); col2im and the pooling adjoint gather their sums in a fixed order per output
// element.
#include "autodiff/cuda/kernels.hpp"

namespace flatmin::cuda {

namespace {

constexpr size_t kColumnBudget = size_t(256) << 20;  // bytes of im2col workspace per chunk

using ConvGeom = kernels::ConvGeometry;
ConvGeom geometry(const Shape& x, const Shape& w, const Shape& y, const Conv2dParams& p) {
  return kernels::conv_geometry(x, w, y, p);
}
// Images per chunk so that `per_image` bytes of workspace times the chunk fit the budget.
int64_t chunk_images(int64_t N, size_t per_image) {
  return std::max<int64_t>(1, std::min<int64_t>(N, int64_t(kColumnBudget / std::max<size_t>(per_image, 1))));
}

// col[n * img_stride + row * row_stride + p] = x[n0 + n, c, h, w] (0 in the padding), with
// row = (c * KH + kh) * KW + kw and p = oh * OW + ow.
template <class T> __global__ void im2col_kernel(const T* x, T* col, ConvGeom g, int64_t n0, int64_t nb,
                                                 int64_t img_stride, int64_t row_stride) {
  const int64_t ohw = g.OH * g.OW, rows = g.C * g.KH * g.KW;
  FM_GRID_LOOP(e, nb * rows * ohw) {
    const int64_t p = e % ohw, row = (e / ohw) % rows, n = e / (ohw * rows);
    const int64_t kw = row % g.KW, kh = (row / g.KW) % g.KH, c = row / (g.KW * g.KH);
    const int64_t oh = p / g.OW, ow = p % g.OW;
    const int64_t h = oh * g.sh - g.ph + kh, w = ow * g.sw - g.pw + kw;
    const bool in = h >= 0 && h < g.H && w >= 0 && w < g.W;
    col[n * img_stride + row * row_stride + p] = in ? x[(((n0 + n) * g.C + c) * g.H + h) * g.W + w] : T(0);
  }
}

// gx[n0 + n, c, h, w] = Σ_{kh, kw} col[n, (c, kh, kw), (oh, ow)] over the (oh, ow) that read (h, w).
template <class T> __global__ void col2im_kernel(const T* col, T* gx, ConvGeom g, int64_t n0, int64_t nb) {
  const int64_t ohw = g.OH * g.OW, ckk = g.C * g.KH * g.KW, hw = g.H * g.W;
  FM_GRID_LOOP(e, nb * g.C * hw) {
    const int64_t w = e % g.W, h = (e / g.W) % g.H, c = (e / hw) % g.C, n = e / (hw * g.C);
    T acc = T(0);
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t hn = h + g.ph - kh;
      if (hn < 0 || hn % g.sh) continue;
      const int64_t oh = hn / g.sh;
      if (oh >= g.OH) continue;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t wn = w + g.pw - kw;
        if (wn < 0 || wn % g.sw) continue;
        const int64_t ow = wn / g.sw;
        if (ow >= g.OW) continue;
        acc += col[n * ckk * ohw + ((c * g.KH + kh) * g.KW + kw) * ohw + oh * g.OW + ow];
      }
    }
    gx[(n0 + n) * g.C * hw + c * hw + h * g.W + w] = acc;
  }
}

// dst[o, n, p] = gy[n0 + n, o, p]: a chunk of gy with the image axis moved inside.
template <class T>
__global__ void gather_rows_kernel(const T* gy, T* dst, int64_t O, int64_t nb, int64_t ohw, int64_t n0) {
  FM_GRID_LOOP(e, O * nb * ohw) {
    const int64_t p = e % ohw, n = (e / ohw) % nb, o = e / (ohw * nb);
    dst[e] = gy[((n0 + n) * O + o) * ohw + p];
  }
}

using PoolGeom = kernels::PoolGeometry;
using kernels::pool_geometry;

// Window maximum over the window clipped to the input (padding counts as -inf). As the CPU
// (and PyTorch): the first maximum in row-major window order wins, a NaN wins over numbers.
template <class T> __global__ void max_pool_kernel(const T* x, T* y, int64_t* idx, PoolGeom g) {
  const int64_t ohw = g.OH * g.OW;
  FM_GRID_LOOP(e, g.planes * ohw) {
    const int64_t plane = e / ohw, oh = (e % ohw) / g.OW, ow = e % g.OW;
    const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
    const T* xp = x + plane * g.H * g.W;
    T best = T(-INFINITY);
    int64_t bi = -1;
    for (int64_t h = h0; h < h0 + g.KH; ++h) {
      if (h < 0 || h >= g.H) continue;
      for (int64_t w = w0; w < w0 + g.KW; ++w) {
        if (w < 0 || w >= g.W) continue;
        const T v = xp[h * g.W + w];
        if (bi < 0 || v > best || isnan(v)) {
          best = v;
          bi = h * g.W + w;
        }
      }
    }
    y[e] = best;
    idx[e] = bi < 0 ? 0 : bi;
  }
}

template <class T> __global__ void avg_pool_kernel(const T* x, T* y, PoolGeom g) {
  const int64_t ohw = g.OH * g.OW;
  FM_GRID_LOOP(e, g.planes * ohw) {
    const int64_t plane = e / ohw, oh = (e % ohw) / g.OW, ow = e % g.OW;
    const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
    const T* xp = x + plane * g.H * g.W;
    T acc = T(0);
    for (int64_t h = max(h0, int64_t(0)); h < min(h0 + g.KH, g.H); ++h)
      for (int64_t w = max(w0, int64_t(0)); w < min(w0 + g.KW, g.W); ++w) acc += xp[h * g.W + w];
    y[e] = acc / T(g.KH * g.KW);
  }
}

// gx[h, w] = Σ over the windows containing (h, w) of gy / (KH KW).
template <class T> __global__ void avg_pool_adjoint_kernel(const T* gy, T* gx, PoolGeom g) {
  const int64_t hw = g.H * g.W;
  FM_GRID_LOOP(e, g.planes * hw) {
    const int64_t plane = e / hw, h = (e % hw) / g.W, w = e % g.W;
    // window oh covers rows [oh*sh - ph, oh*sh - ph + KH)
    const int64_t hn = h + g.ph, wn = w + g.pw;
    const int64_t oh0 = hn - g.KH + 1 <= 0 ? 0 : (hn - g.KH + 1 + g.sh - 1) / g.sh, oh1 = min(hn / g.sh, g.OH - 1);
    const int64_t ow0 = wn - g.KW + 1 <= 0 ? 0 : (wn - g.KW + 1 + g.sw - 1) / g.sw, ow1 = min(wn / g.sw, g.OW - 1);
    const T* gp = gy + plane * g.OH * g.OW;
    T acc = T(0);
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow) acc += gp[oh * g.OW + ow];
    gx[e] = acc / T(g.KH * g.KW);
  }
}

// cuDNN, where flatmin was built with it and it is the chosen engine (cudnn.cu says when not);
// bfloat16 convolutions run there or nowhere.
bool use_cudnn(const Ctx& c, Direction dir, const ConvGeom& g, const Tensor& a, const Tensor& b, Tensor& out,
               bool bf16) {
#ifdef FLATMIN_HAVE_CUDNN
  return cudnn_convolution(c, dir, g, a, b, out, bf16);
#else
  (void)c, (void)dir, (void)g, (void)a, (void)b, (void)out;
  if (bf16) throw Error("conv2d: bfloat16 convolutions on CUDA need cuDNN; this build has none");
  return false;
#endif
}

template <class T> T* ptr(Tensor& t) { return data_ptr<T>(t); }
template <class T> const T* ptr(const Tensor& t) { return data_ptr<T>(t); }

}  // namespace

void conv2d(const Ctx& c, const Tensor& x, const Tensor& w, Tensor& out, const Conv2dParams& p) {
  const ConvGeom g = geometry(x.shape(), w.shape(), out.shape(), p);
  if (out.numel() == 0) return;
  if (use_cudnn(c, Direction::forward, g, x, w, out, p.bf16)) return;
  if (g.winograd()) return winograd_conv3x3(c, x, w, false, out, g.ph, g.pw);
  const int64_t ckk = g.K(), ohw = g.P();
  dispatch_float(x.dtype(), "conv2d", [&](auto z) {
    using T = decltype(z);
    const int64_t nb_max = g.pointwise() ? g.N : chunk_images(g.N, size_t(ckk * ohw) * sizeof(T));
    Workspace col(c.backend, g.pointwise() ? 0 : size_t(nb_max * ckk * ohw) * sizeof(T));
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
      const int64_t nb = std::min(nb_max, g.N - n0);
      const T* cols = ptr<T>(x) + n0 * g.C * g.H * g.W;  // a 1x1 convolution reads x directly
      if (!g.pointwise()) {
        im2col_kernel<T><<<grid_for(nb * ckk * ohw), kThreads, 0, c.stream>>>(ptr<T>(x), static_cast<T*>(col.ptr), g,
                                                                              n0, nb, ckk * ohw, ohw);
        after_launch(c, "conv2d (im2col)");
        cols = static_cast<const T*>(col.ptr);
      }
      // out[n] = W [O, CKK] @ col[n] [CKK, OHW]
      gemm(c, x.dtype(), ptr<T>(w), cols, ptr<T>(out) + n0 * g.O * ohw, {nb, g.O, ohw, ckk, false, false, 0, ckk * ohw},
           0.0, g.O * ohw);
    }
  });
}

void conv2d_input_grad(const Ctx& c, const Tensor& gy, const Tensor& w, Tensor& gx, const Conv2dParams& p) {
  const ConvGeom g = geometry(gx.shape(), w.shape(), gy.shape(), p);
  if (gx.numel() == 0) return;
  if (gy.numel() != 0 && use_cudnn(c, Direction::input_grad, g, gy, w, gx, p.bf16)) return;
  if (g.winograd() && gy.numel() != 0) return winograd_conv3x3(c, gy, w, true, gx, 2 - g.ph, 2 - g.pw);
  const int64_t ckk = g.K(), ohw = g.P();
  dispatch_float(gy.dtype(), "conv2d_input_grad", [&](auto z) {
    using T = decltype(z);
    if (gy.numel() == 0) {
      fill(c, gx, 0.0);
      return;
    }
    const int64_t nb_max = g.pointwise() ? g.N : chunk_images(g.N, size_t(ckk * ohw) * sizeof(T));
    Workspace col(c.backend, g.pointwise() ? 0 : size_t(nb_max * ckk * ohw) * sizeof(T));
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
      const int64_t nb = std::min(nb_max, g.N - n0);
      // col[n] = W^T [CKK, O] @ gy[n] [O, OHW]; a 1x1 convolution writes gx directly
      T* cols = g.pointwise() ? ptr<T>(gx) + n0 * g.C * g.H * g.W : static_cast<T*>(col.ptr);
      gemm(c, gy.dtype(), ptr<T>(w), ptr<T>(gy) + n0 * g.O * ohw, cols, {nb, ckk, ohw, g.O, true, false, 0, g.O * ohw},
           0.0, ckk * ohw);
      if (!g.pointwise()) {
        col2im_kernel<T><<<grid_for(nb * g.C * g.H * g.W), kThreads, 0, c.stream>>>(cols, ptr<T>(gx), g, n0, nb);
        after_launch(c, "conv2d_input_grad (col2im)");
      }
    }
  });
}

void conv2d_weight_grad(const Ctx& c, const Tensor& x, const Tensor& gy, Tensor& gw, const Conv2dParams& p) {
  const ConvGeom g = geometry(x.shape(), gw.shape(), gy.shape(), p);
  if (gw.numel() == 0) return;
  if (x.numel() != 0 && gy.numel() != 0 && use_cudnn(c, Direction::weight_grad, g, x, gy, gw, p.bf16)) return;
  if (g.winograd()) return winograd_filter_grad3x3(c, x, gy, gw, g.ph, g.pw);
  const int64_t ckk = g.K(), ohw = g.P();
  dispatch_float(x.dtype(), "conv2d_weight_grad", [&](auto z) {
    using T = decltype(z);
    if (g.N == 0 || ohw == 0) {
      fill(c, gw, 0.0);
      return;
    }
    // Per chunk: col [CKK, nb*OHW] and gy moved to [O, nb*OHW]; gw += gy' @ col^T.
    const int64_t nb_max = chunk_images(g.N, size_t((ckk + g.O) * ohw) * sizeof(T));
    Workspace col(c.backend, size_t(nb_max * ckk * ohw) * sizeof(T));
    Workspace rows(c.backend, size_t(nb_max * g.O * ohw) * sizeof(T));
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
      const int64_t nb = std::min(nb_max, g.N - n0);
      T* cols = static_cast<T*>(col.ptr);
      T* gyr = static_cast<T*>(rows.ptr);
      im2col_kernel<T><<<grid_for(nb * ckk * ohw), kThreads, 0, c.stream>>>(ptr<T>(x), cols, g, n0, nb, ohw, nb * ohw);
      after_launch(c, "conv2d_weight_grad (im2col)");
      gather_rows_kernel<T><<<grid_for(g.O * nb * ohw), kThreads, 0, c.stream>>>(ptr<T>(gy), gyr, g.O, nb, ohw, n0);
      after_launch(c, "conv2d_weight_grad (reorder gy)");
      gemm(c, x.dtype(), gyr, cols, ptr<T>(gw), {1, g.O, ckk, nb * ohw, false, true, 0, 0}, n0 == 0 ? 0.0 : 1.0,
           g.O * ckk);
    }
  });
}

void max_pool2d(const Ctx& c, const Tensor& x, Tensor& out, Tensor& indices, const Pool2dParams& p) {
  const PoolGeom g = pool_geometry(x.shape(), out.shape(), p);
  const int64_t n = out.numel();
  if (!n) return;
  dispatch_float(x.dtype(), "max_pool2d", [&](auto z) {
    using T = decltype(z);
    max_pool_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(ptr<T>(x), ptr<T>(out), ptr<int64_t>(indices), g);
  });
  after_launch(c, "max_pool2d");
}

void avg_pool2d(const Ctx& c, const Tensor& x, Tensor& out, const Pool2dParams& p) {
  const PoolGeom g = pool_geometry(x.shape(), out.shape(), p);
  const int64_t n = out.numel();
  if (!n) return;
  dispatch_float(x.dtype(), "avg_pool2d", [&](auto z) {
    using T = decltype(z);
    avg_pool_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(ptr<T>(x), ptr<T>(out), g);
  });
  after_launch(c, "avg_pool2d");
}

void avg_pool2d_adjoint(const Ctx& c, const Tensor& gy, Tensor& gx, const Pool2dParams& p) {
  const PoolGeom g = pool_geometry(gx.shape(), gy.shape(), p);
  const int64_t n = gx.numel();
  if (!n) return;
  dispatch_float(gy.dtype(), "avg_pool2d_adjoint", [&](auto z) {
    using T = decltype(z);
    avg_pool_adjoint_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(ptr<T>(gy), ptr<T>(gx), g);
  });
  after_launch(c, "avg_pool2d_adjoint");
}

}  // namespace flatmin::cuda
