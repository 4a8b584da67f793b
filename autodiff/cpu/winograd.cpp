// Winograd F(2x2, 3x3) convolution for 3x3 stride-1 layers (Lavin & Gray, "Fast Algorithms
// for Convolutional Neural Networks", 2016): each 2x2 output tile costs 16 multiplications
// per (input, output) channel pair instead of 36, so the GEMM work drops 2.25x. The
// transforms (B^T d B, G g G^T, A^T M A and their adjoints) are those of
// autodiff/winograd_math.hpp, shared with the CUDA kernels; this file arranges them into
// row-wise loops that vectorize.
//
// Summed over input channels, the element-wise product becomes 16 GEMMs, one per position
// ξ of the 4x4 transformed tile: M[ξ] (Cout x T) = U[ξ] (Cout x Cin) · V[ξ] (Cin x T) over
// T tiles. The batch is cut into groups of images (fixed by the shapes, so results never
// depend on the thread count); each task transforms its group's tiles, runs the 16 GEMMs
// and writes its output tiles. The same routine computes the input gradient of a stride-1
// convolution, which is a stride-1 convolution of the output gradient with the flipped,
// transposed filter and padding 2 - p. The weight gradient reuses the input transform:
// gw = G^T [Σ_tiles (A dY A^T) ⊙ (B^T d B)] G, 16 GEMMs summing over tiles (filter_gradient).
//
// Exactness: the transforms are exact in real arithmetic; in floating point they add a few
// roundings (the entries of G are ½, exact in binary), so results differ from im2col + GEMM
// by a few units in the last place relative to the sum of |terms|, float64 included.
#include <algorithm>
#include <vector>

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/gemm.hpp"
#include "autodiff/cpu/scratch.hpp"
#include "autodiff/cpu/winograd.hpp"
#include "autodiff/winograd_math.hpp"

namespace flatmin::cpu {

namespace {

// U[ξ][co][ci] = (G g G^T)[ξ] with g the 3x3 filter from output channel co to input
// channel ci: w[co][ci] itself, or for the adjoint w[ci][co] rotated by 180 degrees.
// Blocks of 16 input channels, so that every ξ gets one contiguous store of 16 values.
template <class T> void transform_filters(const T* w, bool adjoint, int64_t cout, int64_t cin, T* U) {
  constexpr int64_t B = 16;
  const int64_t pairs = cout * cin;
  parallel_for(cout, std::max<int64_t>(1, 2048 / std::max<int64_t>(cin, 1)), [&](int64_t o0, int64_t o1) {
    T u[B][16];
    for (int64_t co = o0; co < o1; ++co)
      for (int64_t c0 = 0; c0 < cin; c0 += B) {
        const int64_t nb = std::min(B, cin - c0);
        for (int64_t j = 0; j < nb; ++j) {
          const int64_t ci = c0 + j;
          kernels::winograd_filter(adjoint ? w + (ci * cout + co) * 9 : w + (co * cin + ci) * 9, adjoint, u[j]);
        }
        for (int xi = 0; xi < 16; ++xi) {
          T* dst = U + xi * pairs + co * cin + c0;
          for (int64_t j = 0; j < nb; ++j) dst[j] = u[j][xi];
        }
      }
  });
}

using Tiles = kernels::WinogradTiles;

// V[ξ][c][t0 + th*TW + tw] = (B^T d B)[ξ] for input channel c of one image x [C, H, W].
// B^T runs along each padded input row once (tile rows overlap by two input rows), on the
// row split into even and odd columns so that every load is unit-stride; then down the
// columns for each tile row. `scratch` holds input_scratch(tl) elements.
size_t input_scratch(const Tiles& tl) {
  return size_t((2 * tl.TW + 2) + 2 * (tl.TW + 1) + (2 * tl.TH + 2) * 4 * tl.TW);
}
template <class T>
void transform_input(const T* x, const WinogradShape& s, const Tiles& tl, T* V, int64_t ldv, int64_t t0, T* scratch) {
  const int64_t TW = tl.TW, RW = 2 * TW + 2, RJ = 2 * tl.TH + 2;  // padded columns and rows the tiles read
  T* row = scratch;
  T* ev = row + RW;     // row[0], row[2], ...
  T* od = ev + TW + 1;  // row[1], row[3], ...
  T* H = od + TW + 1;   // H[j][k][tw] = (B^T along padded row j)[k] of tile column tw
  const int64_t j0 = std::clamp<int64_t>(s.pw, 0, RW), j1 = std::clamp<int64_t>(s.W + s.pw, j0, RW);
  for (int64_t c = 0; c < s.C; ++c) {
    const T* xc = x + c * s.H * s.W;
    for (int64_t j = 0; j < RJ; ++j) {
      T* hj = H + j * 4 * TW;
      const int64_t ih = j - s.ph;
      if (ih < 0 || ih >= s.H) {
        std::fill(hj, hj + 4 * TW, T(0));
        continue;
      }
      std::fill(row, row + j0, T(0));
      std::copy(xc + ih * s.W + (j0 - s.pw), xc + ih * s.W + (j1 - s.pw), row + j0);
      std::fill(row + j1, row + RW, T(0));
      for (int64_t m = 0; m <= TW; ++m) {
        ev[m] = row[2 * m];
        od[m] = row[2 * m + 1];
      }
      for (int64_t tw = 0; tw < TW; ++tw) {  // B^T of d0..d3 = ev[tw], od[tw], ev[tw+1], od[tw+1]
        T r[4];
        kernels::winograd_bt(ev[tw], od[tw], ev[tw + 1], od[tw + 1], r);
        for (int k = 0; k < 4; ++k) hj[k * TW + tw] = r[k];
      }
    }
    for (int64_t th = 0; th < tl.TH; ++th) {
      const T* h = H + 2 * th * 4 * TW;  // rows 2th .. 2th+3
      const int64_t t = t0 + th * TW;
      for (int k = 0; k < 4; ++k) {
        const T *h0 = h + (0 * 4 + k) * TW, *h1 = h + (1 * 4 + k) * TW, *h2 = h + (2 * 4 + k) * TW,
                *h3 = h + (3 * 4 + k) * TW;
        T* v0 = V + ((0 * 4 + k) * s.C + c) * ldv + t;
        T* v1 = V + ((1 * 4 + k) * s.C + c) * ldv + t;
        T* v2 = V + ((2 * 4 + k) * s.C + c) * ldv + t;
        T* v3 = V + ((3 * 4 + k) * s.C + c) * ldv + t;
        for (int64_t tw = 0; tw < TW; ++tw) {  // B^T down the tile's four rows
          T r[4];
          kernels::winograd_bt(h0[tw], h1[tw], h2[tw], h3[tw], r);
          v0[tw] = r[0], v1[tw] = r[1], v2[tw] = r[2], v3[tw] = r[3];
        }
      }
    }
  }
}

// y[o] = A^T M[·][o] A for output channel o of one image y [O, OH, OW], tiles from column
// t0 of M (ldm); `tmp` is scratch of 8 * TW elements.
template <class T>
void transform_output(const T* M, int64_t ldm, int64_t t0, const WinogradShape& s, const Tiles& tl, T* y, T* tmp) {
  const int64_t mstride = s.O * ldm;  // from M[ξ] to M[ξ + 1]
  for (int64_t o = 0; o < s.O; ++o) {
    T* yo = y + o * s.OH * s.OW;
    for (int64_t th = 0; th < tl.TH; ++th) {
      const T* m = M + o * ldm + t0 + th * tl.TW;
      // A^T along the tile's rows: a[i][k][tw], i = 0, 1
      for (int k = 0; k < 4; ++k) {
        const T *m0 = m + (0 * 4 + k) * mstride, *m1 = m + (1 * 4 + k) * mstride, *m2 = m + (2 * 4 + k) * mstride,
                *m3 = m + (3 * 4 + k) * mstride;
        T *a0 = tmp + k * tl.TW, *a1 = tmp + (4 + k) * tl.TW;
        for (int64_t tw = 0; tw < tl.TW; ++tw) {
          T r[2];
          kernels::winograd_at(m0[tw], m1[tw], m2[tw], m3[tw], r);
          a0[tw] = r[0], a1[tw] = r[1];
        }
      }
      for (int i = 0; i < 2; ++i) {
        const int64_t oh = 2 * th + i;
        if (oh >= s.OH) break;
        const T *a0 = tmp + (i * 4 + 0) * tl.TW, *a1 = tmp + (i * 4 + 1) * tl.TW, *a2 = tmp + (i * 4 + 2) * tl.TW,
                *a3 = tmp + (i * 4 + 3) * tl.TW;
        T* row = yo + oh * s.OW;
        const int64_t full = s.OW / 2;  // tiles whose two columns are both inside
        for (int64_t tw = 0; tw < full; ++tw) kernels::winograd_at(a0[tw], a1[tw], a2[tw], a3[tw], row + 2 * tw);
        if (full < tl.TW) {  // the last tile's second column is past the edge
          T r[2];
          kernels::winograd_at(a0[full], a1[full], a2[full], a3[full], r);
          row[2 * full] = r[0];
        }
      }
    }
  }
}

// Ŷ[ξ][o][t0 + th*TW + tw] = (A dY A^T)[ξ] for output channel o of one image's output
// gradient gy [O, OH, OW] (2x2 tiles, zero past the edge), A = [1 0; 1 1; 1 -1; 0 -1];
// `tmp` is scratch of 8 * TW elements.
template <class T> void transform_grad_output(const T* gy, const WinogradShape& s, const Tiles& tl, T* Y, int64_t ldy,
                                              int64_t t0, T* tmp) {
  const int64_t ystride = s.O * ldy;  // from Ŷ[ξ] to Ŷ[ξ + 1]
  for (int64_t o = 0; o < s.O; ++o) {
    const T* go = gy + o * s.OH * s.OW;
    for (int64_t th = 0; th < tl.TH; ++th) {
      // b[i][k][tw]: the tile's row i (of 2) expanded by A^T along the columns
      for (int i = 0; i < 2; ++i) {
        T *b0 = tmp + (i * 4 + 0) * tl.TW, *b1 = tmp + (i * 4 + 1) * tl.TW, *b2 = tmp + (i * 4 + 2) * tl.TW,
          *b3 = tmp + (i * 4 + 3) * tl.TW;
        const int64_t oh = 2 * th + i;
        if (oh >= s.OH) {
          std::fill(tmp + i * 4 * tl.TW, tmp + (i + 1) * 4 * tl.TW, T(0));
          continue;
        }
        const T* row = go + oh * s.OW;
        const int64_t full = s.OW / 2;
        for (int64_t tw = 0; tw <= full && tw < tl.TW; ++tw) {  // zero past the edge
          T r[4];
          kernels::winograd_a(row[2 * tw], tw < full ? row[2 * tw + 1] : T(0), r);
          b0[tw] = r[0], b1[tw] = r[1], b2[tw] = r[2], b3[tw] = r[3];
        }
      }
      T* yt = Y + o * ldy + t0 + th * tl.TW;
      for (int k = 0; k < 4; ++k) {  // A along the rows
        const T *r0 = tmp + k * tl.TW, *r1 = tmp + (4 + k) * tl.TW;
        T *y0 = yt + (0 * 4 + k) * ystride, *y1 = yt + (1 * 4 + k) * ystride, *y2 = yt + (2 * 4 + k) * ystride,
          *y3 = yt + (3 * 4 + k) * ystride;
        for (int64_t tw = 0; tw < tl.TW; ++tw) {
          T r[4];
          kernels::winograd_a(r0[tw], r1[tw], r);
          y0[tw] = r[0], y1[tw] = r[1], y2[tw] = r[2], y3[tw] = r[3];
        }
      }
    }
  }
}

// gw[o][c] = G^T dU[·][o][c] G.
template <class T> void transform_filter_grads(const T* dU, int64_t cout, int64_t cin, T* gw) {
  const int64_t pairs = cout * cin;
  parallel_for(pairs, 4096, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      T du[16];
      for (int xi = 0; xi < 16; ++xi) du[xi] = dU[xi * pairs + p];
      kernels::winograd_filter_grad(du, gw + p * 9);
    }
  });
}

// How the batch is cut (fixed by the shapes alone; constants measured with bench/conv_bench
// on ResNet-18's layers). Tasks: groups of about 128 tiles, each task transforming,
// multiplying and writing its own group, so its tiles stay in cache. Phases (weight
// gradient of banks over 2 MiB, 256x256 and up): each group's GEMMs read and write the
// whole bank dU, so fewer, larger groups run one after the other, in parallel phases
// (transforms over images, the 16 GEMMs over ξ). For the forward, tasks won on every layer.
struct Plan {
  int64_t G;    // images per group
  bool phases;  // phase mode (see above)
  int64_t groups;
  int64_t T_max;  // tiles of the largest group
};
Plan plan(const WinogradShape& s, const Tiles& tl, size_t elem, bool allow_phases) {
  const bool phases = allow_phases && 16 * s.O * s.C * int64_t(elem) > (int64_t(2) << 20);
  // a phase group's transformed tiles (16 (C + O) T elements) take about 8 MiB
  const int64_t phase_tiles = std::clamp<int64_t>((int64_t(8) << 20) / (16 * (s.C + s.O) * int64_t(elem)), 256, 2048);
  int64_t G = std::clamp<int64_t>((phases ? phase_tiles : 128) / std::max<int64_t>(tl.per_image(), 1), 1, s.N);
  if (!phases) G = std::min(G, std::max<int64_t>(1, (s.N + 3) / 4));  // >= 4 groups to share out
  return {G, phases, (s.N + G - 1) / G, G * tl.per_image()};
}
size_t row_scratch(const Tiles& tl) { return std::max(input_scratch(tl), size_t(8 * tl.TW)); }

template <class T> void convolve(const T* x, const T* w, bool adjoint, T* y, const WinogradShape& s) {
  const Tiles tl = kernels::winograd_tiles(s.OH, s.OW);
  const Plan pl = plan(s, tl, sizeof(T), false);
  Workspace<T> U(size_t(16 * s.O * s.C));
  transform_filters(w, adjoint, s.O, s.C, U.data());
  const int64_t tiles = tl.per_image();
  auto in = [&](int64_t n0, int64_t i, T* V, int64_t T_n, T* rows) {
    transform_input(x + (n0 + i) * s.C * s.H * s.W, s, tl, V, T_n, i * tiles, rows);
  };
  auto product = [&](int64_t xi, const T* V, T* M, int64_t T_n) {  // M[ξ] = U[ξ] · V[ξ]
    gemm<T>(false, false, s.O, T_n, s.C, 1, U.data() + xi * s.O * s.C, s.C, V + xi * s.C * T_n, T_n, 0,
            M + xi * s.O * T_n, T_n);
  };
  auto out = [&](int64_t n0, int64_t i, const T* M, int64_t T_n, T* rows) {
    transform_output(M, T_n, i * tiles, s, tl, y + (n0 + i) * s.O * s.OH * s.OW, rows);
  };
  if (!pl.phases) {
    Scratch<T> scratch(size_t(16 * (s.C + s.O) * pl.T_max) + row_scratch(tl));
    parallel_for(pl.groups, 1, [&](int64_t q0, int64_t q1) {
      T* V = scratch.get();
      T* M = V + 16 * s.C * pl.T_max;
      T* rows = M + 16 * s.O * pl.T_max;
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t n0 = q * pl.G, gn = std::min(s.N, n0 + pl.G) - n0, T_n = gn * tiles;
        for (int64_t i = 0; i < gn; ++i) in(n0, i, V, T_n, rows);
        for (int xi = 0; xi < 16; ++xi) product(xi, V, M, T_n);
        for (int64_t i = 0; i < gn; ++i) out(n0, i, M, T_n, rows);
      }
    });
    return;
  }
  Workspace<T> VM(size_t(16 * (s.C + s.O) * pl.T_max));
  T *V = VM.data(), *M = V + 16 * s.C * pl.T_max;
  Scratch<T> rows(row_scratch(tl));
  for (int64_t q = 0; q < pl.groups; ++q) {
    const int64_t n0 = q * pl.G, gn = std::min(s.N, n0 + pl.G) - n0, T_n = gn * tiles;
    parallel_for(gn, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) in(n0, i, V, T_n, rows.get());
    });
    parallel_for(16, 1, [&](int64_t x0, int64_t x1) {
      for (int64_t xi = x0; xi < x1; ++xi) product(xi, V, M, T_n);
    });
    parallel_for(gn, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) out(n0, i, M, T_n, rows.get());
    });
  }
}

// gw [O, C, 3, 3] = Σ over images and tiles of G^T [(A dY A^T) ⊙ (B^T d B)] G: per ξ a
// GEMM dU[ξ] (O x C) += Ŷ[ξ] (O x T) · V[ξ]^T. Small banks: the batch is cut into chunks
// (a power of two, at most 8) that sum into their own dU, added in chunk order. Large
// banks: groups in order, each GEMM adding into dU[ξ] (no partial sums). Either way the
// result depends on the shapes only, never on the thread count.
template <class T> void filter_gradient(const T* x, const T* gy, T* gw, const WinogradShape& s) {
  const Tiles tl = kernels::winograd_tiles(s.OH, s.OW);
  const Plan pl = plan(s, tl, sizeof(T), true);
  const int64_t tiles = tl.per_image(), usize = 16 * s.O * s.C;
  auto in = [&](int64_t n0, int64_t i, T* V, T* Y, int64_t T_n, T* rows) {
    transform_input(x + (n0 + i) * s.C * s.H * s.W, s, tl, V, T_n, i * tiles, rows);
    transform_grad_output(gy + (n0 + i) * s.O * s.OH * s.OW, s, tl, Y, T_n, i * tiles, rows);
  };
  auto product = [&](int64_t xi, const T* V, const T* Y, int64_t T_n, T beta, T* dU) {  // dU[ξ] += Ŷ[ξ] · V[ξ]^T
    gemm<T>(false, true, s.O, s.C, T_n, 1, Y + xi * s.O * T_n, T_n, V + xi * s.C * T_n, T_n, beta, dU + xi * s.O * s.C,
            s.C);
  };
  if (!pl.phases) {
    int64_t chunks = std::min<int64_t>(pl.groups, 8);
    while (chunks & (chunks - 1)) --chunks;
    Workspace<T> dU(size_t(chunks * usize));
    Scratch<T> scratch(size_t(16 * (s.C + s.O) * pl.T_max) + row_scratch(tl));
    parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
      T* V = scratch.get();
      T* Y = V + 16 * s.C * pl.T_max;
      T* rows = Y + 16 * s.O * pl.T_max;
      for (int64_t ch = c0; ch < c1; ++ch)
        for (int64_t q = pl.groups * ch / chunks; q < pl.groups * (ch + 1) / chunks; ++q) {
          const int64_t n0 = q * pl.G, gn = std::min(s.N, n0 + pl.G) - n0, T_n = gn * tiles;
          for (int64_t i = 0; i < gn; ++i) in(n0, i, V, Y, T_n, rows);
          const T beta = q == pl.groups * ch / chunks ? T(0) : T(1);
          for (int xi = 0; xi < 16; ++xi) product(xi, V, Y, T_n, beta, dU.data() + ch * usize);
        }
    });
    for (int64_t ch = 1; ch < chunks; ++ch)
      parallel_for(usize, 16384, [&](int64_t i0, int64_t i1) {
        const T* p = dU.data() + ch * usize;
        for (int64_t i = i0; i < i1; ++i) dU.data()[i] += p[i];
      });
    transform_filter_grads(dU.data(), s.O, s.C, gw);
    return;
  }
  Workspace<T> dU{size_t(usize)}, VY{size_t(16 * (s.C + s.O) * pl.T_max)};
  T *V = VY.data(), *Y = V + 16 * s.C * pl.T_max;
  Scratch<T> rows(row_scratch(tl));
  for (int64_t q = 0; q < pl.groups; ++q) {
    const int64_t n0 = q * pl.G, gn = std::min(s.N, n0 + pl.G) - n0, T_n = gn * tiles;
    parallel_for(gn, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) in(n0, i, V, Y, T_n, rows.get());
    });
    parallel_for(16, 1, [&](int64_t x0, int64_t x1) {
      for (int64_t xi = x0; xi < x1; ++xi) product(xi, V, Y, T_n, q == 0 ? T(0) : T(1), dU.data());
    });
  }
  transform_filter_grads(dU.data(), s.O, s.C, gw);
}

}  // namespace

template <class T> void winograd_conv3x3(const T* x, const T* w, bool adjoint, T* y, const WinogradShape& s) {
  if (s.N == 0 || s.O == 0 || s.OH == 0 || s.OW == 0) return;
  convolve(x, w, adjoint, y, s);
}
template void winograd_conv3x3<float>(const float*, const float*, bool, float*, const WinogradShape&);
template void winograd_conv3x3<double>(const double*, const double*, bool, double*, const WinogradShape&);

template <class T> void winograd_filter_grad3x3(const T* x, const T* gy, T* gw, const WinogradShape& s) {
  if (s.N == 0 || s.OH == 0 || s.OW == 0) {
    std::fill(gw, gw + s.O * s.C * 9, T(0));
    return;
  }
  filter_gradient(x, gy, gw, s);
}
template void winograd_filter_grad3x3<float>(const float*, const float*, float*, const WinogradShape&);
template void winograd_filter_grad3x3<double>(const double*, const double*, double*, const WinogradShape&);

}  // namespace flatmin::cpu
