// What every backend's kernels share (CPU .cpp and CUDA .cu alike; no Eigen, no CUDA
// headers): dtype dispatch, stride arithmetic, and the scalar semantics of the binary ops,
// so that both devices compute the same thing by construction.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "autodiff/backend.hpp"
#include "autodiff/philox.hpp"  // FM_HD: host and device

namespace flatmin::kernels {

// f(T{}) with T the C++ type of d.
template <class F> void dispatch(DType d, F&& f) {
  switch (d) {
    case DType::f32: f(float{}); break;
    case DType::f64: f(double{}); break;
    case DType::i64: f(int64_t{}); break;
  }
}
template <class F> void dispatch_float(DType d, const char* op, F&& f) {
  switch (d) {
    case DType::f32: f(float{}); break;
    case DType::f64: f(double{}); break;
    default: throw Error(std::string(op) + ": not defined for int64 tensors");
  }
}

// Row-major strides of a contiguous tensor of this shape.
inline std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> s(shape.size());
  for (int64_t i = int64_t(shape.size()) - 1, n = 1; i >= 0; --i) {
    s[i] = n;
    n *= shape[i];
  }
  return s;
}
// Strides of `in` broadcast against `out` (NumPy rules): 0 on broadcast axes.
inline std::vector<int64_t> broadcast_strides(const Shape& in, const Shape& out) {
  std::vector<int64_t> s(out.size(), 0);
  int64_t stride = 1;
  for (int64_t i = int64_t(in.size()) - 1, j = int64_t(out.size()) - 1; i >= 0; --i, --j) {
    s[j] = in[i] == 1 ? 0 : stride;
    stride *= in[i];
  }
  return s;
}

// Which convolutions both devices run as Winograd F(2x2,3x3): 3x3, stride 1, padding <= 2
// (so that the input gradient, a convolution with padding 2 - p, is one too), and at least
// 32 channels each way (below that the transforms cost more than the multiplications they
// save: bench/conv_bench).
inline bool use_winograd(int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t C, int64_t O) {
  return KH == 3 && KW == 3 && sh == 1 && sw == 1 && ph <= 2 && pw <= 2 && C >= 32 && O >= 32;
}

// The geometry of one convolution (x [N, C, H, W] * w [O, C, KH, KW] -> y [N, O, OH, OW]),
// read from the tensors' shapes; both devices' conv kernels take it.
struct ConvGeometry {
  int64_t N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw;
  bool channels_last;                              // activations [N, H, W, C] (only oneDNN's kernels take it)
  FM_HD int64_t P() const { return OH * OW; }      // output positions per image
  FM_HD int64_t K() const { return C * KH * KW; }  // rows of an image's column matrix
  FM_HD int64_t HW() const { return H * W; }
  FM_HD bool pointwise() const { return KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  bool winograd() const { return use_winograd(KH, KW, sh, sw, ph, pw, C, O); }
};
inline ConvGeometry conv_geometry(const Shape& x, const Shape& w, const Shape& y, const Conv2dParams& p) {
  if (p.channels_last)  // x [N, H, W, C], y [N, OH, OW, O]
    return {x[0], x[3], x[1], x[2], w[0], w[2], w[3], y[1], y[2], p.stride_h, p.stride_w, p.pad_h, p.pad_w, true};
  return {x[0], x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3], p.stride_h, p.stride_w, p.pad_h, p.pad_w, false};
}

// Pooling over `planes` = N * C planes of H x W into OH x OW.
struct PoolGeometry {
  int64_t planes, H, W, OH, OW, KH, KW, sh, sw, ph, pw;
};
inline PoolGeometry pool_geometry(const Shape& x, const Shape& y, const Pool2dParams& p) {
  return {x[0] * x[1], x[2], x[3], y[2], y[3], p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w};
}

// One element of a binary op. Comparisons give 0/1 in the operands' type.
template <class T> FM_HD T binary_value(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
    case BinaryOp::maximum: return a > b ? a : (b > a ? b : a);
    case BinaryOp::minimum: return a < b ? a : (b < a ? b : a);
    case BinaryOp::gt: return T(a > b);
    case BinaryOp::ge: return T(a >= b);
    case BinaryOp::lt: return T(a < b);
    case BinaryOp::le: return T(a <= b);
    case BinaryOp::eq: return T(a == b);
    case BinaryOp::where_positive: return b > T(0) ? a : T(0);
    case BinaryOp::tanh_backward: return a * (T(1) - b * b);
  }
  return T(0);
}

}  // namespace flatmin::kernels
