// Winograd F(2x2, 3x3), the arithmetic both devices share (internal to autodiff; FM_HD: host
// and device). A 2x2 output tile of a 3x3 convolution is
//   Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A,  d a 4x4 input tile, g the 3x3 filter,
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1],
// and the weight gradient is gw = G^T [Σ_tiles (A dY A^T) ⊙ (B^T d B)] G. Each 2-d transform
// is its 1-d matrix applied along rows, then columns: the functions here are those 1-d
// products; autodiff/cpu/winograd.cpp and autodiff/cuda/winograd.cu arrange them into loops.
#pragma once
#include <cstdint>

#include "autodiff/philox.hpp"  // FM_HD

namespace flatmin::kernels {

// r = B^T (d0, d1, d2, d3)
template <class T> FM_HD void winograd_bt(T d0, T d1, T d2, T d3, T* r) {
  r[0] = d0 - d2;
  r[1] = d1 + d2;
  r[2] = d2 - d1;
  r[3] = d1 - d3;
}
// r = G (a, b, c)
template <class T> FM_HD void winograd_g(T a, T b, T c, T* r) {
  r[0] = a;
  r[1] = T(0.5) * (a + b + c);
  r[2] = T(0.5) * (a - b + c);
  r[3] = c;
}
// r = A^T (m0, m1, m2, m3)
template <class T> FM_HD void winograd_at(T m0, T m1, T m2, T m3, T* r) {
  r[0] = m0 + m1 + m2;
  r[1] = m1 - m2 - m3;
}
// r = A (a, b)
template <class T> FM_HD void winograd_a(T a, T b, T* r) {
  r[0] = a;
  r[1] = a + b;
  r[2] = a - b;
  r[3] = -b;
}
// r = G^T (u0, u1, u2, u3)
template <class T> FM_HD void winograd_gt(T u0, T u1, T u2, T u3, T* r) {
  r[0] = u0 + T(0.5) * (u1 + u2);
  r[1] = T(0.5) * (u1 - u2);
  r[2] = T(0.5) * (u1 + u2) + u3;
}

// G g G^T for one 3x3 filter g (row-major; 180-degree rotated when `rotated`): u[ξ], ξ = 4r + k.
template <class T> FM_HD void winograd_filter(const T* g, bool rotated, T* u) {
  T gg[4][3];
  for (int s = 0; s < 3; ++s) {  // G along the rows of the filter
    const int a = rotated ? 8 - s : s, b = rotated ? 5 - s : 3 + s, c = rotated ? 2 - s : 6 + s;
    T col[4];
    winograd_g(g[a], g[b], g[c], col);
    for (int r = 0; r < 4; ++r) gg[r][s] = col[r];
  }
  for (int r = 0; r < 4; ++r) winograd_g(gg[r][0], gg[r][1], gg[r][2], u + 4 * r);  // then G^T along the columns
}
// G^T dU G for one filter pair: gw (3x3, row-major) from du[ξ], ξ = 4r + k.
template <class T> FM_HD void winograd_filter_grad(const T* du, T* gw) {
  T q[3][4];
  for (int k = 0; k < 4; ++k) {
    T col[3];
    winograd_gt(du[k], du[4 + k], du[8 + k], du[12 + k], col);
    for (int r = 0; r < 3; ++r) q[r][k] = col[r];
  }
  for (int r = 0; r < 3; ++r) winograd_gt(q[r][0], q[r][1], q[r][2], q[r][3], gw + 3 * r);
}

// The tile grid of one image: TH x TW tiles of 2x2 outputs.
struct WinogradTiles {
  int64_t TH, TW;
  FM_HD int64_t per_image() const { return TH * TW; }
};
inline WinogradTiles winograd_tiles(int64_t OH, int64_t OW) { return {(OH + 1) / 2, (OW + 1) / 2}; }

}  // namespace flatmin::kernels
