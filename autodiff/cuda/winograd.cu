// Winograd F(2x2, 3x3) on the GPU for 3x3 stride-1 convolutions, the same algorithm as
// autodiff/cpu/winograd.cpp with the same transforms (autodiff/winograd_math.hpp): one thread per filter pair, per
// input tile or per output tile for the transforms, and the 16 products M[ξ] = U[ξ] · V[ξ] as one strided-batched
// cuBLAS GEMM. The batch is cut into chunks of images so that the transformed tiles stay under kTileBudget. No atomics:
// each output element is written by one thread, and the weight gradient sums the chunks in order (cuBLAS beta = 1).
#include "autodiff/cuda/kernels.hpp"
#include "autodiff/winograd_math.hpp"

namespace flatmin::cuda {

namespace {

constexpr size_t kTileBudget = size_t(256) << 20;  // bytes of transformed tiles per chunk

// x [N, C, H, W] -> y [N, O, OH, OW]; TH x TW tiles of 2x2 outputs per image.
struct WinoGeom {
  int64_t N, C, H, W, O, OH, OW, ph, pw, TH, TW;
  __host__ __device__ int64_t tiles() const { return TH * TW; }
};
WinoGeom wino_geometry(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t OH, int64_t OW, int64_t ph,
                       int64_t pw) {
  const kernels::WinogradTiles t = kernels::winograd_tiles(OH, OW);
  return {N, C, H, W, O, OH, OW, ph, pw, t.TH, t.TW};
}

// Element e of a loop over (image n, channel ch, tile row th, tile column tw), and its
// column t = n * tiles + th * TW + tw in the transformed matrices.
struct TileAt {
  int64_t n, ch, th, tw, t;
};
__device__ __forceinline__ TileAt tile_at(const WinoGeom& g, int64_t channels, int64_t e) {
  const int64_t tiles = g.tiles(), tw = e % g.TW, th = (e / g.TW) % g.TH, n = e / (tiles * channels);
  return {n, (e / tiles) % channels, th, tw, n * tiles + th * g.TW + tw};
}

// U[ξ][co][ci] = G g G^T, g = w[co][ci] (3x3), or for the adjoint w[ci][co] rotated 180°.
template <class T> __global__ void wino_filter_kernel(const T* w, T* U, int64_t cout, int64_t cin, bool adjoint) {
  const int64_t pairs = cout * cin;
  FM_GRID_LOOP(e, pairs) {
    const int64_t co = e / cin, ci = e % cin;
    T u[16];
    kernels::winograd_filter(adjoint ? w + (ci * cout + co) * 9 : w + (co * cin + ci) * 9, adjoint, u);
    for (int xi = 0; xi < 16; ++xi) U[xi * pairs + e] = u[xi];
  }
}

// V[ξ][c][t] = B^T d B for the tiles of images n0 .. n0 + nb, t = n * tiles + th * TW + tw.
template <class T> __global__ void wino_input_kernel(const T* x, T* V, WinoGeom g, int64_t n0, int64_t nb) {
  const int64_t tiles = g.tiles(), T_n = nb * tiles;
  FM_GRID_LOOP(e, nb * g.C * tiles) {
    const TileAt a = tile_at(g, g.C, e);
    const int64_t th = a.th, tw = a.tw, c = a.ch;
    const T* xc = x + ((n0 + a.n) * g.C + c) * g.H * g.W;
    T d[4][4];
    for (int r = 0; r < 4; ++r)
      for (int s = 0; s < 4; ++s) {
        const int64_t ih = 2 * th - g.ph + r, iw = 2 * tw - g.pw + s;
        d[r][s] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? xc[ih * g.W + iw] : T(0);
      }
    T h[4][4];  // B^T d
    for (int s = 0; s < 4; ++s) {
      T col[4];
      kernels::winograd_bt(d[0][s], d[1][s], d[2][s], d[3][s], col);
      for (int r = 0; r < 4; ++r) h[r][s] = col[r];
    }
    const int64_t xs = g.C * T_n;
    T* v = V + c * T_n + a.t;
    for (int r = 0; r < 4; ++r) {  // (B^T d) B
      T row[4];
      kernels::winograd_bt(h[r][0], h[r][1], h[r][2], h[r][3], row);
      for (int k = 0; k < 4; ++k) v[(r * 4 + k) * xs] = row[k];
    }
  }
}

// y[n0 + n][o] 2x2 tile = A^T M A (outputs past the edge are not written).
template <class T> __global__ void wino_output_kernel(const T* M, T* y, WinoGeom g, int64_t n0, int64_t nb) {
  const int64_t tiles = g.tiles(), T_n = nb * tiles;
  FM_GRID_LOOP(e, nb * g.O * tiles) {
    const TileAt at = tile_at(g, g.O, e);
    const int64_t th = at.th, tw = at.tw, o = at.ch, xs = g.O * T_n;
    const T* m = M + o * T_n + at.t;
    T a[2][4];  // A^T M
    for (int k = 0; k < 4; ++k) {
      T col[2];
      kernels::winograd_at(m[(0 * 4 + k) * xs], m[(1 * 4 + k) * xs], m[(2 * 4 + k) * xs], m[(3 * 4 + k) * xs], col);
      a[0][k] = col[0], a[1][k] = col[1];
    }
    T* yo = y + ((n0 + at.n) * g.O + o) * g.OH * g.OW;
    for (int i = 0; i < 2; ++i) {  // (A^T M) A
      const int64_t oh = 2 * th + i, ow = 2 * tw;
      if (oh >= g.OH) break;
      T out[2];
      kernels::winograd_at(a[i][0], a[i][1], a[i][2], a[i][3], out);
      yo[oh * g.OW + ow] = out[0];
      if (ow + 1 < g.OW) yo[oh * g.OW + ow + 1] = out[1];
    }
  }
}

// Ŷ[ξ][o][t] = A dY A^T for the 2x2 output-gradient tiles (zero past the edge).
template <class T> __global__ void wino_grad_output_kernel(const T* gy, T* Y, WinoGeom g, int64_t n0, int64_t nb) {
  const int64_t tiles = g.tiles(), T_n = nb * tiles;
  FM_GRID_LOOP(e, nb * g.O * tiles) {
    const TileAt at = tile_at(g, g.O, e);
    const int64_t th = at.th, tw = at.tw, o = at.ch;
    const T* go = gy + ((n0 + at.n) * g.O + o) * g.OH * g.OW;
    T dy[2][2];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) {
        const int64_t oh = 2 * th + i, ow = 2 * tw + j;
        dy[i][j] = oh < g.OH && ow < g.OW ? go[oh * g.OW + ow] : T(0);
      }
    T b[2][4];  // rows of dY times A^T
    for (int i = 0; i < 2; ++i) kernels::winograd_a(dy[i][0], dy[i][1], b[i]);
    const int64_t xs = g.O * T_n;
    T* yt = Y + o * T_n + at.t;
    for (int k = 0; k < 4; ++k) {  // A along the rows
      T col[4];
      kernels::winograd_a(b[0][k], b[1][k], col);
      for (int r = 0; r < 4; ++r) yt[(r * 4 + k) * xs] = col[r];
    }
  }
}

// gw[co][ci] = G^T dU G.
template <class T> __global__ void wino_filter_grad_kernel(const T* dU, T* gw, int64_t pairs) {
  FM_GRID_LOOP(p, pairs) {
    T du[16], g9[9];
    for (int xi = 0; xi < 16; ++xi) du[xi] = dU[xi * pairs + p];
    kernels::winograd_filter_grad(du, g9);
    for (int k = 0; k < 9; ++k) gw[p * 9 + k] = g9[k];
  }
}

template <class T> T* ptr(Tensor& t) { return data_ptr<T>(t); }
template <class T> const T* ptr(const Tensor& t) { return data_ptr<T>(t); }

// Images per chunk so that `per_image` bytes of transformed tiles fit the budget.
int64_t wino_chunk(int64_t N, size_t per_image) {
  return std::max<int64_t>(1, std::min<int64_t>(N, int64_t(kTileBudget / std::max<size_t>(per_image, 1))));
}

}  // namespace

void winograd_conv3x3(const Ctx& c, const Tensor& x, const Tensor& w, bool adjoint, Tensor& y, int64_t ph, int64_t pw) {
  const Shape &xs = x.shape(), &ys = y.shape();
  const WinoGeom g = wino_geometry(xs[0], xs[1], xs[2], xs[3], ys[1], ys[2], ys[3], ph, pw);
  if (y.numel() == 0) return;
  dispatch_float(x.dtype(), "conv2d (winograd)", [&](auto z) {
    using T = decltype(z);
    const int64_t pairs = g.O * g.C;
    Workspace U(c.backend, size_t(16 * pairs) * sizeof(T));
    wino_filter_kernel<T>
        <<<grid_for(pairs), kThreads, 0, c.stream>>>(ptr<T>(w), static_cast<T*>(U.ptr), g.O, g.C, adjoint);
    after_launch(c, "conv2d (winograd filters)");
    const int64_t nb_max = wino_chunk(g.N, size_t(16 * (g.C + g.O) * g.tiles()) * sizeof(T));
    Workspace VM(c.backend, size_t(16 * (g.C + g.O) * nb_max * g.tiles()) * sizeof(T));
    T* V = static_cast<T*>(VM.ptr);
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
      const int64_t nb = std::min(nb_max, g.N - n0), T_n = nb * g.tiles();
      T* M = V + 16 * g.C * T_n;
      wino_input_kernel<T><<<grid_for(nb * g.C * g.tiles()), kThreads, 0, c.stream>>>(ptr<T>(x), V, g, n0, nb);
      after_launch(c, "conv2d (winograd input)");
      // M[ξ] (O x T) = U[ξ] (O x C) · V[ξ] (C x T), 16 at once
      gemm(c, x.dtype(), U.ptr, V, M, {16, g.O, T_n, g.C, false, false, pairs, g.C * T_n}, 0.0, g.O * T_n);
      wino_output_kernel<T><<<grid_for(nb * g.O * g.tiles()), kThreads, 0, c.stream>>>(M, ptr<T>(y), g, n0, nb);
      after_launch(c, "conv2d (winograd output)");
    }
  });
}

void winograd_filter_grad3x3(const Ctx& c, const Tensor& x, const Tensor& gy, Tensor& gw, int64_t ph, int64_t pw) {
  const Shape &xs = x.shape(), &ys = gy.shape();
  const WinoGeom g = wino_geometry(xs[0], xs[1], xs[2], xs[3], ys[1], ys[2], ys[3], ph, pw);
  if (gw.numel() == 0) return;
  dispatch_float(x.dtype(), "conv2d_weight_grad (winograd)", [&](auto z) {
    using T = decltype(z);
    const int64_t pairs = g.O * g.C;
    if (g.N == 0 || g.tiles() == 0) {
      fill(c, gw, 0.0);
      return;
    }
    Workspace dU(c.backend, size_t(16 * pairs) * sizeof(T));
    const int64_t nb_max = wino_chunk(g.N, size_t(16 * (g.C + g.O) * g.tiles()) * sizeof(T));
    Workspace VY(c.backend, size_t(16 * (g.C + g.O) * nb_max * g.tiles()) * sizeof(T));
    T* V = static_cast<T*>(VY.ptr);
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
      const int64_t nb = std::min(nb_max, g.N - n0), T_n = nb * g.tiles();
      T* Y = V + 16 * g.C * T_n;
      wino_input_kernel<T><<<grid_for(nb * g.C * g.tiles()), kThreads, 0, c.stream>>>(ptr<T>(x), V, g, n0, nb);
      after_launch(c, "conv2d_weight_grad (winograd input)");
      wino_grad_output_kernel<T><<<grid_for(nb * g.O * g.tiles()), kThreads, 0, c.stream>>>(ptr<T>(gy), Y, g, n0, nb);
      after_launch(c, "conv2d_weight_grad (winograd output gradient)");
      // dU[ξ] (O x C) += Ŷ[ξ] (O x T) · V[ξ]^T, chunks in order
      gemm(c, x.dtype(), Y, V, dU.ptr, {16, g.O, g.C, T_n, false, true, g.O * T_n, g.C * T_n}, n0 == 0 ? 0.0 : 1.0,
           pairs);
    }
    wino_filter_grad_kernel<T>
        <<<grid_for(pairs), kThreads, 0, c.stream>>>(static_cast<const T*>(dU.ptr), ptr<T>(gw), pairs);
    after_launch(c, "conv2d_weight_grad (winograd filters)");
  });
}

}  // namespace flatmin::cuda
