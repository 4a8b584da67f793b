// Internal to the CUDA backend (included only by autodiff/cuda/*.cu): error checks, the
// launch context, the small by-value index structs kernels take, and the kernel entry
// points of each .cu file. Plain pointers and Tensors; no Eigen.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "autodiff/backend.hpp"
#include "autodiff/kernel_util.hpp"

namespace flatmin::cuda {

// Error naming the op and CUDA's reason, for any failed runtime / cuBLAS call.
void check(cudaError_t e, const char* op);
void check_blas(cublasStatus_t s, const char* op);

// What every kernel launch needs: the device's stream and cuBLAS handle, and the backend
// (its caching allocator provides temporary workspaces).
struct Ctx {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  Backend* backend = nullptr;
  bool sync_each = false;  // FLATMIN_CUDA_SYNC=1: synchronize after each kernel (debugging)
};
// After each launch: the launch error, and with sync_each the kernel's own error, by op name.
void after_launch(const Ctx& c, const char* op);

constexpr int kThreads = 256;
inline unsigned grid_for(int64_t n) {
  return unsigned(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, int64_t(65535) * 64));
}

// Shapes and per-operand strides of up to kMaxDims (collapsed) axes, passed by value.
constexpr int kMaxDims = 8;
template <int K> struct Indexer {
  int nd = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[K][kMaxDims] = {};
};
// Builds an Indexer for a loop over `shape` (row-major order), operand k reading with
// strides[k]; adjacent axes contiguous for every operand are merged. Error past kMaxDims.
template <int K> Indexer<K> make_indexer(Shape shape, std::array<std::vector<int64_t>, K> strides, const char* op);
// Strides of `in` broadcast against `out` (0 on broadcast axes), and row-major strides.
using kernels::broadcast_strides;
using kernels::contiguous_strides;
using kernels::dispatch;
using kernels::dispatch_float;

#if defined(__CUDACC__)
// Offsets of flat (row-major) element i for each operand.
template <int K> __device__ __forceinline__ void offsets(const Indexer<K>& ix, int64_t i, int64_t (&off)[K]) {
  if (ix.nd == 1) {  // one merged axis (same-shape operands, the common case): no 64-bit division
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = i * ix.stride[k][0];
    return;
  }
#pragma unroll
  for (int k = 0; k < K; ++k) off[k] = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < ix.nd) {
      const int64_t n = ix.shape[d], c = i % n;
      i /= n;
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] += c * ix.stride[k][d];
    }
  }
}
#define FM_GRID_LOOP(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)
#endif

// A temporary device buffer from the backend's caching allocator (stream-ordered reuse).
struct Workspace {
  Backend* backend;
  size_t bytes;
  void* ptr;
  Workspace(Backend* b, size_t n) : backend(b), bytes(n), ptr(n ? b->allocate(n) : nullptr) {}
  ~Workspace() {
    if (ptr) backend->deallocate(ptr, bytes);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

// ---- elementwise.cu ----
void fill(const Ctx&, Tensor& out, double value);
void cast(const Ctx&, const Tensor& in, Tensor& out);
void arange(const Ctx&, Tensor& out);
void unary(const Ctx&, UnaryOp op, const Tensor& x, Tensor& out, double param);
void binary(const Ctx&, BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out);
void where(const Ctx&, const Tensor& c, const Tensor& a, const Tensor& b, Tensor& out);
void add_relu(const Ctx&, const Tensor& a, const Tensor& b, Tensor& out);  // relu(a + b), one shape
void random(const Ctx&, RandomKind kind, Tensor& out, uint64_t seed, uint64_t offset);
// ---- layout.cu ----
// out (contiguous) = in[offset + Σ i_d strides_d] over out's shape
void strided_copy(const Ctx&, const Tensor& in, int64_t offset, const std::vector<int64_t>& strides, Tensor& out,
                  const char* op);
void slice_add(const Ctx&, const Tensor& src, Tensor& out, int64_t axis, int64_t start, int64_t step);
void index_select(const Ctx&, const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out);
void index_add(const Ctx&, const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out);
void gather(const Ctx&, const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out);
void scatter_add(const Ctx&, const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out);
// ---- reduce.cu ----
void reduce(const Ctx&, ReduceOp op, const Tensor& x, Tensor& out);
// ---- cuda_backend.cu: batched row-major GEMM on raw pointers, C = op(A) op(B) + beta C ----
void gemm(const Ctx&, DType t, const void* a, const void* b, void* c, const Backend::MatmulArgs& g, double beta,
          int64_t stride_c);
// ---- cudnn.cu (built where cuDNN is found): runs the convolution on cuDNN and returns true,
// or returns false (the native engine, a gradient the auto engine leaves to flatmin's kernels,
// channels-last, or extents past int) for the caller's own kernels. a, b = (x, w), (gy, w)
// or (x, gy); out = y, gx or gw, overwritten. bf16 (float32 operands rounded to bfloat16):
// always cuDNN, or an Error saying why not. ----
enum class Direction { forward, input_grad, weight_grad };
bool cudnn_convolution(const Ctx&, Direction, const kernels::ConvGeometry&, const Tensor& a, const Tensor& b,
                       Tensor& out, bool bf16);
// ---- conv.cu ----
void conv2d(const Ctx&, const Tensor& x, const Tensor& w, Tensor& out, const Conv2dParams& p);
void conv2d_input_grad(const Ctx&, const Tensor& gy, const Tensor& w, Tensor& gx, const Conv2dParams& p);
void conv2d_weight_grad(const Ctx&, const Tensor& x, const Tensor& gy, Tensor& gw, const Conv2dParams& p);
void max_pool2d(const Ctx&, const Tensor& x, Tensor& out, Tensor& indices, const Pool2dParams& p);
void avg_pool2d(const Ctx&, const Tensor& x, Tensor& out, const Pool2dParams& p);
void avg_pool2d_adjoint(const Ctx&, const Tensor& gy, Tensor& gx, const Pool2dParams& p);
// ---- norm.cu: fused batch norm (see Backend::batch_norm_forward/backward/..._vjp/_eval);
// relu: batch norm + ReLU (the backward reads the output relu_y and masks g with it) ----
void batch_norm_forward(const Ctx&, const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y,
                        Tensor& mean, Tensor& var, bool relu = false);
void batch_norm_backward(const Ctx&, const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                         const Tensor& var, double eps, Tensor& gx, Tensor& gw, Tensor& gb,
                         const Tensor* relu_y = nullptr);
void batch_norm_eval(const Ctx&, const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu, Tensor& y);
void batch_norm_input_grad_vjp(const Ctx&, const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& w,
                               const Tensor& mean, const Tensor& var, double eps, Tensor& dg, Tensor& dx, Tensor& dw);
void batch_norm_weight_grad_vjp(const Ctx&, const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                const Tensor& var, double eps, Tensor& dg, Tensor& dx);
// ---- winograd.cu: F(2x2,3x3) for 3x3 stride-1 convolutions (see autodiff/cpu/winograd.hpp) ----
// y = conv(x, w) with padding (ph, pw); with adjoint, w is [C_y, C_x, 3, 3] rotated by 180
// degrees and transposed (the input gradient, called with padding 2 - p). Overwrites y.
void winograd_conv3x3(const Ctx&, const Tensor& x, const Tensor& w, bool adjoint, Tensor& y, int64_t ph, int64_t pw);
void winograd_filter_grad3x3(const Ctx&, const Tensor& x, const Tensor& gy, Tensor& gw, int64_t ph, int64_t pw);

}  // namespace flatmin::cuda
