// Internal to the CPU backend: float32 convolutions on oneDNN (the library PyTorch's own CPU
// convolutions run on), used by conv.cpp when the build found it and FLATMIN_CONV is not
// "native". float64 always runs flatmin's own kernels (oneDNN has no float64), so the
// derivative checks in float64 never depend on it; tests compare the two in float32.
#pragma once
#include "autodiff/kernel_util.hpp"

namespace flatmin::cpu::onednn {

// Whether float32 convolutions go to oneDNN: built with it, and FLATMIN_CONV unset or "onednn"
// (read once; "native" selects flatmin's own im2col/Winograd kernels).
bool enabled();

// NCHW float32 tensors, OIHW weights, all contiguous; the same contracts as conv.cpp's kernels
// (the gradients overwrite their outputs). bf16: the two operands are rounded to bfloat16 on
// their way into oneDNN's layout; accumulation and the output stay float32.
void forward(const float* x, const float* w, float* y, const kernels::ConvGeometry& g, bool bf16);
void input_grad(const float* gy, const float* w, float* gx, const kernels::ConvGeometry& g, bool bf16);
void weight_grad(const float* x, const float* gy, float* gw, const kernels::ConvGeometry& g, bool bf16);

}  // namespace flatmin::cpu::onednn
