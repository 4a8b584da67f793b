// Internal to the CPU backend: Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (winograd.cpp).
#pragma once
#include <cstdint>

namespace flatmin::cpu {

// x [N, C, H, W] -> y [N, O, OH, OW], 3x3 filter, stride 1, padding (ph, pw).
struct WinogradShape {
  int64_t N, C, H, W, O, OH, OW, ph, pw;
};

// y = conv(x, w) with w [O, C, 3, 3]; or, with adjoint, the filter w [C, O, 3, 3] rotated
// by 180 degrees and transposed (what the input gradient of a stride-1 convolution uses,
// with padding 2 - p). Overwrites y.
template <class T> void winograd_conv3x3(const T* x, const T* w, bool adjoint, T* y, const WinogradShape& s);

// gw [O, C, 3, 3] = the weight gradient of y = conv(x, w) given gy [N, O, OH, OW]. Overwrites gw.
template <class T> void winograd_filter_grad3x3(const T* x, const T* gy, T* gw, const WinogradShape& s);

}  // namespace flatmin::cpu
