// The kernel interface every device implements. Ops (ops_*.cpp) allocate outputs, check
// shapes and record the graph; a Backend only computes. All tensors passed here are
// contiguous, already shape-checked, on this backend's device, and of matching dtype
// (except index tensors, which are i64). Kept free of Eigen and CUDA headers so that both
// the .cpp and the .cu side can include it.
#pragma once
#include <cstdint>
#include "autodiff/tensor.hpp"

namespace flatmin {

// The kernel kinds, each listed once: the enums and their names (kernel_name(), which the
// profiler prints) come from these lists.
// sign: -1, 0, +1; pow_scalar: x ^ param; add_scalar: x + param; mul_scalar: x * param;
// rsub_scalar: param - x; reciprocal: 1 / x.
// clang-format off
#define FLATMIN_UNARY_KERNELS(X)                                                                                \
  X(neg) X(exp) X(log) X(sqrt) X(rsqrt) X(tanh) X(sigmoid) X(softplus) X(relu) X(abs) X(sign) X(pow_scalar)     \
  X(add_scalar) X(mul_scalar) X(rsub_scalar) X(reciprocal)
// clang-format on
// Comparisons give 0/1 in the operands' type; where_positive(a, b) = b > 0 ? a : 0 (ReLU's
// backward, with b its output); tanh_backward(a, b) = a·(1 − b²) (tanh's, b its output).
// clang-format off
#define FLATMIN_BINARY_KERNELS(X) \
  X(add) X(sub) X(mul) X(div) X(maximum) X(minimum) X(gt) X(ge) X(lt) X(le) X(eq) X(where_positive) X(tanh_backward)
// clang-format on
#define FLATMIN_REDUCE_KERNELS(X) X(sum) X(max) X(min)

#define FLATMIN_KERNEL_ENUM(name) name,
enum class UnaryOp : uint8_t { FLATMIN_UNARY_KERNELS(FLATMIN_KERNEL_ENUM) };
enum class BinaryOp : uint8_t { FLATMIN_BINARY_KERNELS(FLATMIN_KERNEL_ENUM) };
enum class ReduceOp : uint8_t { FLATMIN_REDUCE_KERNELS(FLATMIN_KERNEL_ENUM) };
#undef FLATMIN_KERNEL_ENUM
const char* kernel_name(UnaryOp op);
const char* kernel_name(BinaryOp op);
const char* kernel_name(ReduceOp op);
enum class RandomKind : uint8_t { uniform, normal, rademacher };

struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  // float32 operands rounded to bfloat16, float32 accumulation and output (Bf16Convolutions,
  // nn_ops.hpp; CUDA: the output rounded to bfloat16 too); only set where
  // supports_bf16_convolutions() said yes.
  bool bf16 = false;
  // x and y (and their gradients) are [N, H, W, C] (channels last) instead of [N, C, H, W];
  // weights stay OIHW. Only set where supports_channels_last_convolutions() said yes: the
  // ops run other backends' kernels on permuted copies.
  bool channels_last = false;
};
struct Pool2dParams {
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Why Conv2dParams::bf16 cannot be honoured here, or "" when it can (CPU: oneDNN built and
  // enabled, on a CPU it has bfloat16 kernels for; CUDA: cuDNN). The ops' and the CLI's errors
  // quote it.
  virtual std::string bf16_convolutions_unavailable() const {
    return "the " + std::string(name()) + " backend has none";
  }
  bool supports_bf16_convolutions() const { return bf16_convolutions_unavailable().empty(); }
  // Whether the convolution kernels take Conv2dParams::channels_last for this dtype.
  virtual bool supports_channels_last_convolutions(DType) const { return false; }

  // memory
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) = 0;
  // Hands the freed blocks the allocator keeps for reuse back to the system (what PyTorch's
  // torch.cuda.empty_cache() does), for a process whose working set just shrank (after
  // training, before a long evaluation or another program's turn); returns the bytes handed
  // back. Live tensors are untouched; later allocations refill the cache as they need.
  virtual size_t release_cached_memory() { return 0; }
  virtual void copy_from_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // same device
  virtual void synchronize() {}

  virtual void fill(Tensor& out, double value) = 0;
  virtual void cast(const Tensor& in, Tensor& out) = 0;  // dtype conversion, same shape
  virtual void arange(Tensor& out) = 0;                  // 0, 1, 2, ...

  // elementwise; `binary` and `where` broadcast their inputs to out's shape (NumPy rules)
  virtual void unary(UnaryOp op, const Tensor& x, Tensor& out, double param) = 0;
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) = 0;
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) = 0;

  // out has x's rank with extent 1 on each reduced axis; deterministic summation order
  virtual void reduce(ReduceOp op, const Tensor& x, Tensor& out) = 0;

  // layout
  virtual void expand(const Tensor& x, Tensor& out) = 0;  // broadcast copy to out's shape
  virtual void permute(const Tensor& x, Tensor& out, const std::vector<int64_t>& perm) = 0;
  // out[..., i, ...] = x[..., start + i*step, ...] along `axis`
  virtual void slice(const Tensor& x, Tensor& out, int64_t axis, int64_t start, int64_t step) = 0;
  // out[..., start + i*step, ...] += src[..., i, ...] (out is pre-filled by the caller)
  virtual void slice_add(const Tensor& src, Tensor& out, int64_t axis, int64_t start, int64_t step) = 0;

  // indexing (idx is i64): index_select picks whole slices; gather/scatter_add follow
  // torch.gather semantics (idx has out's shape; all dims but `axis` match)
  virtual void index_select(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) = 0;
  virtual void index_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) = 0;
  virtual void gather(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) = 0;
  virtual void scatter_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) = 0;

  // C[b] = op(A[b]) @ op(B[b]); a batch stride of 0 broadcasts that operand
  struct MatmulArgs {
    int64_t batch, m, n, k;
    bool trans_a, trans_b;
    int64_t stride_a, stride_b;  // elements between consecutive batch matrices
  };
  virtual void matmul(const Tensor& a, const Tensor& b, Tensor& out, const MatmulArgs& args) = 0;

  // counter-based random numbers: element i of out is a function of (seed, offset + i)
  virtual void random(RandomKind kind, Tensor& out, uint64_t seed, uint64_t offset) = 0;

  // convolution (NCHW, or NHWC with Conv2dParams::channels_last; weight OIHW; no bias here)
  // and its two gradients
  virtual void conv2d(const Tensor& x, const Tensor& w, Tensor& out, const Conv2dParams& p) = 0;
  virtual void conv2d_input_grad(const Tensor& gy, const Tensor& w, Tensor& gx, const Conv2dParams& p) = 0;
  virtual void conv2d_weight_grad(const Tensor& x, const Tensor& gy, Tensor& gw, const Conv2dParams& p) = 0;
  // max pool: values and the flat index (within each H*W plane) of each window's max
  virtual void max_pool2d(const Tensor& x, Tensor& out, Tensor& indices, const Pool2dParams& p) = 0;
  // average pool (count_include_pad=true, as PyTorch's default) and its adjoint
  virtual void avg_pool2d(const Tensor& x, Tensor& out, const Pool2dParams& p) = 0;
  virtual void avg_pool2d_adjoint(const Tensor& gy, Tensor& gx, const Pool2dParams& p) = 0;

  // Optional fused batch norm with batch statistics, first order only (x is (N, C, ...),
  // statistics over every axis but 1; weight/bias may be undefined = 1/0). Statistics of
  // shape [B, C] instead of [C] mean B independent instances: x is [B, N, C, S] with
  // statistics per (b, c) over N and S, and weight, bias and their gradients are undefined
  // (group norm of channels-last activations); a backend may return false for them. Forward writes
  // y and the per-channel mean and biased variance; backward writes gx and, where defined,
  // gw and gb. A backend without them returns false and the op runs its composition of
  // differentiable ops instead.
  virtual bool batch_norm_forward(const Tensor& /*x*/, const Tensor& /*weight*/, const Tensor& /*bias*/, double /*eps*/,
                                  Tensor& /*y*/, Tensor& /*mean*/, Tensor& /*var*/) {
    return false;
  }
  virtual bool batch_norm_backward(const Tensor& /*g*/, const Tensor& /*x*/, const Tensor& /*weight*/,
                                   const Tensor& /*mean*/, const Tensor& /*var*/, double /*eps*/, Tensor& /*gx*/,
                                   Tensor& /*gw*/, Tensor& /*gb*/) {
    return false;
  }
  // Optional fused batch norm + ReLU (BatchNormOptions::relu), as the two above: forward
  // writes relu of batch norm's output; backward reads that output y and takes g where
  // y > 0 (else 0) as batch norm's cotangent, in the same passes.
  virtual bool batch_norm_relu_forward(const Tensor& /*x*/, const Tensor& /*weight*/, const Tensor& /*bias*/,
                                       double /*eps*/, Tensor& /*y*/, Tensor& /*mean*/, Tensor& /*var*/) {
    return false;
  }
  virtual bool batch_norm_relu_backward(const Tensor& /*g*/, const Tensor& /*y*/, const Tensor& /*x*/,
                                        const Tensor& /*weight*/, const Tensor& /*mean*/, const Tensor& /*var*/,
                                        double /*eps*/, Tensor& /*gx*/, Tensor& /*gw*/, Tensor& /*gb*/) {
    return false;
  }
  // Optional eval-mode batch norm in one pass: y = x·scale[c] + shift[c] for x (N, C, ...)
  // (scale and shift [C]), then max(y, 0) when relu.
  virtual bool batch_norm_eval(const Tensor& /*x*/, const Tensor& /*scale*/, const Tensor& /*shift*/, bool /*relu*/,
                               Tensor& /*y*/) {
    return false;
  }
  // Optional out = relu(a + b), one pass (a, b and out of one shape).
  virtual bool add_relu(const Tensor& /*a*/, const Tensor& /*b*/, Tensor& /*out*/) { return false; }
  // Optional fused second-order rules of batch norm, for sweeps that do not record (see
  // nn_ops.cpp, batch_norm_input_grad_rule / batch_norm_weight_grad_rule). With x̂ the
  // normalized input and P(v) = r·(v − mean(v) − x̂·mean(v·x̂)):
  // input_grad_vjp: the VJP of gx = P(g·w) for a cotangent a, into dg, dx, dw where defined;
  // weight_grad_vjp: the VJP of gw = Σ g·x̂ for a per-channel cotangent beta, into dg, dx.
  virtual bool batch_norm_input_grad_vjp(const Tensor& /*a*/, const Tensor& /*g*/, const Tensor& /*x*/,
                                         const Tensor& /*weight*/, const Tensor& /*mean*/, const Tensor& /*var*/,
                                         double /*eps*/, Tensor& /*dg*/, Tensor& /*dx*/, Tensor& /*dw*/) {
    return false;
  }
  virtual bool batch_norm_weight_grad_vjp(const Tensor& /*beta*/, const Tensor& /*g*/, const Tensor& /*x*/,
                                          const Tensor& /*mean*/, const Tensor& /*var*/, double /*eps*/, Tensor& /*dg*/,
                                          Tensor& /*dx*/) {
    return false;
  }
  // Optional fused group norm with its per-channel affine, first order only (the op's
  // differentiable rule runs when the backward is recorded). x is (N, C, ...), or
  // (N, ..., C) with channels_last; C = groups·D; weight/bias [C] may be undefined (= 1/0).
  // Forward writes y = x̂·w + b and the mean and biased variance per (sample, group), both
  // [N, groups]; backward reads them and writes gx, gw and gb where defined. A backend
  // without them returns false and the op runs batch norm's kernels plus the affine.
  virtual bool group_norm_forward(const Tensor& /*x*/, const Tensor& /*weight*/, const Tensor& /*bias*/,
                                  int64_t /*groups*/, double /*eps*/, bool /*channels_last*/, Tensor& /*y*/,
                                  Tensor& /*mean*/, Tensor& /*var*/) {
    return false;
  }
  virtual bool group_norm_backward(const Tensor& /*g*/, const Tensor& /*x*/, const Tensor& /*weight*/,
                                   const Tensor& /*mean*/, const Tensor& /*var*/, int64_t /*groups*/, double /*eps*/,
                                   bool /*channels_last*/, Tensor& /*gx*/, Tensor& /*gw*/, Tensor& /*gb*/) {
    return false;
  }
};

// The backend of a device; Error (saying why) for a device this build or machine lacks.
Backend& backend(Device d);
bool cuda_compiled();
int cuda_device_count(std::string* why = nullptr);  // 0 when no GPU/driver, never throws

}  // namespace flatmin
