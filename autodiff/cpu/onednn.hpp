// Internal to the CPU backend: float32 convolutions and GEMM on oneDNN (the library PyTorch's
// own CPU convolutions run on), used by conv.cpp and gemm.cpp when the build found it and
// FLATMIN_CONV is not "native". float64 always runs flatmin's own kernels (oneDNN has no float64), so the
// derivative checks in float64 never depend on it; tests compare the two in float32.
#pragma once
#include "autodiff/kernel_util.hpp"

namespace flatmin::cpu::onednn {

// Whether float32 convolutions and GEMM go to oneDNN: built with it, and FLATMIN_CONV unset or
// "onednn" (read once; "native" selects flatmin's own im2col/Winograd kernels and OpenBLAS).
bool enabled();

// NCHW (NHWC when g.channels_last) float32 tensors, OIHW weights, all contiguous; the same contracts as conv.cpp's
// kernels (the gradients overwrite their outputs). bf16: the two operands are rounded to bfloat16 on their way into
// oneDNN's layout; accumulation and the output stay float32.
void forward(const float* x, const float* w, float* y, const kernels::ConvGeometry& g, bool bf16);
void input_grad(const float* gy, const float* w, float* gx, const kernels::ConvGeometry& g, bool bf16);
void weight_grad(const float* x, const float* gy, float* gw, const kernels::ConvGeometry& g, bool bf16);
// For tests: the bytes of bfloat16 patches the channels-last bfloat16 weight gradient holds at
// once (default 32 MiB; a smaller budget splits the batch into more image groups).
void set_column_budget(int64_t bytes);

// gemm.hpp's contract for float32 (row-major, on the calling thread), on oneDNN's JIT sgemm:
// OpenBLAS picks its kernels by CPU model and runs generic SSE3 code on models it does not
// know (this session's Xeon: 46 GFLOP/s against oneDNN's ~200 on a 2048² product).
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace flatmin::cpu::onednn
