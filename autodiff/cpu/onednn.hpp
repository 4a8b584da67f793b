// Internal to the CPU backend: float32 convolutions and GEMM on oneDNN (the library PyTorch's
// own CPU convolutions run on), used by conv.cpp and gemm.cpp when the build found it and
// FLATMIN_CONV is not "native". float64 always runs flatmin's own kernels (oneDNN has no float64), so the
// derivative checks in float64 never depend on it; tests compare the two in float32.
#pragma once
#include <string>

#include "autodiff/kernel_util.hpp"

namespace flatmin::cpu::onednn {

// Whether float32 convolutions and GEMM go to oneDNN: built with it, and FLATMIN_CONV unset,
// "onednn" or "onednn-direct" (read once; "native" selects flatmin's own im2col/Winograd kernels
// and OpenBLAS). "onednn-direct" keeps oneDNN's direct kernels on every layer; otherwise the
// 3x3 stride-1 layers where it pays run oneDNN's Winograd F(4x4,3x3) (see winograd_used).
bool enabled();

enum class Direction { forward, input_grad, weight_grad };
// Whether a float32 convolution of this geometry, in this direction, runs oneDNN's Winograd
// F(4x4,3x3) kernels rather than its direct ones: this CPU has them (AVX-512), FLATMIN_CONV is
// not "onednn-direct" (nor set_winograd(false)), and the shape is one where they were measured
// faster (onednn.cpp). Its float32 rounding error is ~5x the direct kernels' (rms ~1e-6 relative
// on ResNet-18's layers against float64; docs/performance.md).
bool winograd_used(Direction d, const kernels::ConvGeometry& g, bool bf16);
// Whether such a convolution runs flatmin's own kernels (conv.cpp) instead of oneDNN's direct
// ones, for NCHW float32 (flatmin's kernels take no other). On a CPU where oneDNN has no
// Winograd kernel (AVX2): the layers of the Winograd rule above where flatmin's own Winograd
// rule holds too, and the deep layers on planes of at most 4x4 (>= 256 input channels:
// ResNet-18's layer 4 at 32x32 or 28x28 input), in every direction. On every CPU: the weight
// gradient of those deep 4x4-plane layers' 3x3 convolutions. Each took less time on flatmin's
// kernels than on oneDNN 2.6's direct ones (bench/profile/2026-12-01-avx2-zen3.md and
// bench/profile/2026-12-02-zen4.md).
bool native_kernels_instead(Direction d, const kernels::ConvGeometry& g, bool bf16);
// Why bfloat16 convolutions cannot run here, or "" when they can: no oneDNN in the build,
// FLATMIN_CONV=native, or a CPU oneDNN has no bfloat16 kernels for — probed once by building
// the kernels a bfloat16 step uses on a small shape. oneDNN 2.6's bfloat16 kernels
// need AVX-512; elsewhere it has none (or only reference loops, ~100x slower), and a
// convolution would fail or crawl in the middle of a run rather than be refused before it.
std::string bf16_unavailable();
// For tests: Winograd on or off from now on (the FLATMIN_CONV setting is the initial value).
void set_winograd(bool on);
// For tests: in how many slabs the forward (or input gradient) of this geometry reorders its
// weights in parallel (0: whole, on one thread; onednn.cpp), and whether slabs are used at all
// from now on (default on; the results must be the same bit for bit either way).
int weight_reorder_slabs(Direction d, const kernels::ConvGeometry& g, bool bf16);
void set_weight_slabs(bool on);
// For tests and benchmarks: oneDNN's name of the kernel that runs a direction of this geometry
// (on one chunk of the batch), e.g. "jit_wino_4x3:avx512_core" or "brgconv:avx512_core".
std::string kernel_name(Direction d, const kernels::ConvGeometry& g, bool bf16);

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
