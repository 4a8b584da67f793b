// The CPU backend: OpenBLAS for GEMM (gemm.hpp), Eigen for vectorized math, oneTBB for
// parallel loops. This file is the Backend object, which forwards each call to the
// kernels of one file per area, as autodiff/cuda/ does: elementwise.cpp, reduce.cpp,
// layout.cpp, conv.cpp and winograd.cpp (convolution and pooling), norm.cpp (fused batch
// norm), with memory from block_cache.hpp; plus the parallel loop and the batched GEMM.
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <algorithm>
#include <cstring>

#include "autodiff/backend.hpp"
#include "autodiff/cpu/block_cache.hpp"
#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/gemm.hpp"
#include "autodiff/cpu/onednn.hpp"
#include "autodiff/kernel_util.hpp"
#include "autodiff/small_alloc.hpp"

namespace flatmin::cpu {

namespace {

using kernels::dispatch_float;

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  std::string bf16_convolutions_unavailable() const override { return onednn::bf16_unavailable(); }
  bool supports_channels_last_convolutions(DType t) const override { return t == DType::f32 && onednn::enabled(); }

  // Tiny tensors come from the engine's per-thread block cache (kernels never assume more
  // than element alignment: views have offsets); the rest is 64-byte aligned for AVX-512.
  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    if (bytes <= detail::small_block_max) return detail::small_alloc(bytes);
    return cache_.allocate(bytes);
  }
  void deallocate(void* p, size_t bytes) override {
    if (!p) return;
    if (bytes <= detail::small_block_max)
      detail::small_free(p, bytes);
    else
      cache_.deallocate(p, bytes);
  }
  // The blocks over 1 KiB (the tiny ones' per-thread lists are small and bounded).
  size_t release_cached_memory() override { return cache_.release_all(); }
  void copy_from_host(void* d, const void* s, size_t n) override {
    if (n) std::memcpy(d, s, n);
  }
  void copy_to_host(void* d, const void* s, size_t n) override {
    if (n) std::memcpy(d, s, n);
  }
  void copy(void* d, const void* s, size_t n) override {
    if (n && d != s) std::memmove(d, s, n);
  }

  void fill(Tensor& out, double v) override { cpu::fill(out, v); }
  void cast(const Tensor& in, Tensor& out) override { cpu::cast(in, out); }
  void arange(Tensor& out) override { cpu::arange(out); }
  void unary(UnaryOp op, const Tensor& x, Tensor& out, double param) override { cpu::unary(op, x, out, param); }
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) override { cpu::binary(op, a, b, out); }
  void where(const Tensor& c, const Tensor& a, const Tensor& b, Tensor& out) override { cpu::where(c, a, b, out); }
  void reduce(ReduceOp op, const Tensor& x, Tensor& out) override { cpu::reduce(op, x, out); }
  void expand(const Tensor& x, Tensor& out) override { cpu::expand(x, out); }
  void permute(const Tensor& x, Tensor& out, const std::vector<int64_t>& perm) override { cpu::permute(x, out, perm); }
  void slice(const Tensor& x, Tensor& out, int64_t axis, int64_t start, int64_t step) override {
    cpu::slice(x, out, axis, start, step);
  }
  void slice_add(const Tensor& src, Tensor& out, int64_t axis, int64_t start, int64_t step) override {
    cpu::slice_add(src, out, axis, start, step);
  }
  void index_select(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) override {
    cpu::index_select(x, axis, idx, out);
  }
  void index_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) override {
    cpu::index_add(src, axis, idx, out);
  }
  void gather(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) override {
    cpu::gather(x, axis, idx, out);
  }
  void scatter_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) override {
    cpu::scatter_add(src, axis, idx, out);
  }

  void matmul(const Tensor& a, const Tensor& b, Tensor& out, const MatmulArgs& g) override {
    dispatch_float(a.dtype(), "matmul", [&](auto z) {
      using T = decltype(z);
      gemm_batched<T>(data_ptr<T>(a), data_ptr<T>(b), data_ptr<T>(out), g);
    });
  }

  void random(RandomKind kind, Tensor& out, uint64_t seed, uint64_t offset) override {
    cpu::random(kind, out, seed, offset);
  }

  bool batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                          Tensor& mean, Tensor& var) override {
    flatmin::cpu::batch_norm_forward(x, weight, bias, eps, y, mean, var);
    return true;
  }
  bool batch_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean,
                           const Tensor& var, double eps, Tensor& gx, Tensor& gw, Tensor& gb) override {
    flatmin::cpu::batch_norm_backward(g, x, weight, mean, var, eps, gx, gw, gb);
    return true;
  }
  bool batch_norm_relu_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                               Tensor& mean, Tensor& var) override {
    flatmin::cpu::batch_norm_forward(x, weight, bias, eps, y, mean, var, /*relu=*/true);
    return true;
  }
  bool batch_norm_relu_backward(const Tensor& g, const Tensor& y, const Tensor& x, const Tensor& weight,
                                const Tensor& mean, const Tensor& var, double eps, Tensor& gx, Tensor& gw,
                                Tensor& gb) override {
    flatmin::cpu::batch_norm_backward(g, x, weight, mean, var, eps, gx, gw, gb, &y);
    return true;
  }
  bool add_relu(const Tensor& a, const Tensor& b, Tensor& out) override {
    flatmin::cpu::add_relu(a, b, out);
    return true;
  }
  bool batch_norm_eval(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu, Tensor& y) override {
    flatmin::cpu::batch_norm_eval(x, scale, shift, relu, y);
    return true;
  }
  bool batch_norm_input_grad_vjp(const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                                 const Tensor& var, double eps, Tensor& dg, Tensor& dx, Tensor& dw) override {
    flatmin::cpu::batch_norm_input_grad_vjp(a, g, x, w, mean, var, eps, dg, dx, dw);
    return true;
  }
  bool batch_norm_weight_grad_vjp(const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                  const Tensor& var, double eps, Tensor& dg, Tensor& dx) override {
    flatmin::cpu::batch_norm_weight_grad_vjp(beta, g, x, mean, var, eps, dg, dx);
    return true;
  }
  bool group_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, double eps,
                          bool channels_last, Tensor& y, Tensor& mean, Tensor& var) override {
    flatmin::cpu::group_norm_forward(x, weight, bias, groups, eps, channels_last, y, mean, var);
    return true;
  }
  bool group_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean,
                           const Tensor& var, int64_t groups, double eps, bool channels_last, Tensor& gx, Tensor& gw,
                           Tensor& gb) override {
    flatmin::cpu::group_norm_backward(g, x, weight, mean, var, groups, eps, channels_last, gx, gw, gb);
    return true;
  }
  void conv2d(const Tensor& x, const Tensor& w, Tensor& out, const Conv2dParams& p) override {
    conv2d_forward(x, w, out, p);
  }
  void conv2d_input_grad(const Tensor& gy, const Tensor& w, Tensor& gx, const Conv2dParams& p) override {
    flatmin::cpu::conv2d_input_grad(gy, w, gx, p);
  }
  void conv2d_weight_grad(const Tensor& x, const Tensor& gy, Tensor& gw, const Conv2dParams& p) override {
    flatmin::cpu::conv2d_weight_grad(x, gy, gw, p);
  }
  void max_pool2d(const Tensor& x, Tensor& out, Tensor& indices, const Pool2dParams& p) override {
    flatmin::cpu::max_pool2d(x, out, indices, p);
  }
  void avg_pool2d(const Tensor& x, Tensor& out, const Pool2dParams& p) override { flatmin::cpu::avg_pool2d(x, out, p); }
  void avg_pool2d_adjoint(const Tensor& gy, Tensor& gx, const Pool2dParams& p) override {
    flatmin::cpu::avg_pool2d_adjoint(gy, gx, p);
  }

 private:
  BlockCache cache_;
};

}  // namespace

void parallel_for_tbb(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, std::max<int64_t>(grain, 1)),
                    [&](const tbb::blocked_range<int64_t>& r) { body(r.begin(), r.end()); });
}

template <class T> void gemm_batched(const T* a, const T* b, T* c, const Backend::MatmulArgs& g) {
  // C = op(A) op(B) for one batch entry, restricted to columns [j0, j1) of C.
  auto one = [&](int64_t bi, int64_t j0, int64_t j1) {
    const T* pb = b + bi * g.stride_b + (g.trans_b ? j0 * g.k : j0);
    gemm<T>(g.trans_a, g.trans_b, g.m, j1 - j0, g.k, 1, a + bi * g.stride_a, g.trans_a ? g.m : g.k, pb,
            g.trans_b ? g.k : g.n, 0, c + bi * g.m * g.n + j0, g.n);
  };
  const double flops = 2.0 * double(g.m) * double(g.n) * double(g.k);
  if (g.batch > 1 && (g.batch >= 8 || flops < 4e6)) {
    parallel_for(g.batch, std::max<int64_t>(1, int64_t(4e6 / std::max(flops, 1.0))), [&](int64_t b0, int64_t b1) {
      for (int64_t bi = b0; bi < b1; ++bi) one(bi, 0, g.n);
    });
    return;
  }
  // Few large products: split each into one column block per thread (the BLAS runs one
  // thread per call); fewer blocks pack the left operand fewer times.
  const int64_t threads =
      int64_t(std::min<size_t>(size_t(tbb::this_task_arena::max_concurrency()),
                               tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism)));
  const int64_t cols_per_task =
      flops < 4e6 ? g.n : std::max<int64_t>(64, (g.n / std::max<int64_t>(threads, 1) + 63) / 64 * 64);
  for (int64_t bi = 0; bi < g.batch; ++bi) {
    const int64_t tasks = (g.n + cols_per_task - 1) / cols_per_task;
    parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) one(bi, t * cols_per_task, std::min(g.n, (t + 1) * cols_per_task));
    });
  }
}
template void gemm_batched<float>(const float*, const float*, float*, const Backend::MatmulArgs&);
template void gemm_batched<double>(const double*, const double*, double*, const Backend::MatmulArgs&);

Backend& instance() {
  static CpuBackend* b = new CpuBackend;  // never destroyed: static tensors may outlive it
  return *b;
}

}  // namespace flatmin::cpu
