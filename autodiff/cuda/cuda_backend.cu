// The CUDA backend: one CudaBackend per device with its own stream (every kernel, copy and
// cuBLAS call of that device runs on it, so work is ordered without extra syncs), its
// cuBLAS handle and a caching allocator. Kernels live in elementwise.cu, layout.cu,
// reduce.cu and conv.cu; this file holds memory, the GEMM and the entry points of
// cuda_entry.hpp. Compiled by nvcc; no Eigen here.
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <unordered_map>

#include "autodiff/cuda/cuda_entry.hpp"
#include "autodiff/cuda/kernels.hpp"

namespace flatmin::cuda {

void check(cudaError_t e, const char* op) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so later calls are not blamed
  throw Error(std::string("cuda ") + op + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}
void check_blas(cublasStatus_t s, const char* op) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw Error(std::string("cuda ") + op + ": cuBLAS " + cublasGetStatusName(s) + ": " + cublasGetStatusString(s));
}
void after_launch(const Ctx& c, const char* op) {
  check(cudaGetLastError(), op);
  if (c.sync_each) check(cudaStreamSynchronize(c.stream), op);
}

template <int K> Indexer<K> make_indexer(Shape shape, std::array<std::vector<int64_t>, K> strides, const char* op) {
  // Merge axis i into the previous one when, for every operand, stepping the previous axis
  // equals stepping axis i by its full extent; drop axes of extent 1.
  Shape ns;
  std::array<std::vector<int64_t>, K> nst;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 1) continue;
    bool merge = !ns.empty();
    for (int k = 0; k < K && merge; ++k) merge = nst[k].back() == strides[k][i] * shape[i];
    if (merge) {
      ns.back() *= shape[i];
      for (int k = 0; k < K; ++k) nst[k].back() = strides[k][i];
    } else {
      ns.push_back(shape[i]);
      for (int k = 0; k < K; ++k) nst[k].push_back(strides[k][i]);
    }
  }
  if (ns.size() > size_t(kMaxDims))
    throw Error(std::string(op) + ": shape " + to_string(shape) + " has more than " + std::to_string(kMaxDims) +
                " non-mergeable axes (CUDA backend limit)");
  Indexer<K> ix;
  ix.nd = int(ns.size());
  for (size_t d = 0; d < ns.size(); ++d) {
    ix.shape[d] = ns[d];
    for (int k = 0; k < K; ++k) ix.stride[k][d] = nst[k][d];
  }
  return ix;
}
template Indexer<1> make_indexer<1>(Shape, std::array<std::vector<int64_t>, 1>, const char*);
template Indexer<2> make_indexer<2>(Shape, std::array<std::vector<int64_t>, 2>, const char*);
template Indexer<3> make_indexer<3>(Shape, std::array<std::vector<int64_t>, 3>, const char*);

void gemm(const Ctx& c, DType t, const void* a, const void* b, void* out, const Backend::MatmulArgs& g, double beta,
          int64_t stride_c) {
  if (g.batch == 0 || g.m == 0 || g.n == 0) return;
  const size_t es = dtype_size(t);
  if (g.k == 0) {  // empty inner dimension: C = beta C, only beta = 0 on a dense C occurs
    if (beta != 0.0 || stride_c != g.m * g.n) throw Error("matmul: empty inner dimension with accumulation");
    check(cudaMemsetAsync(out, 0, size_t(g.batch * g.m * g.n) * es, c.stream), "matmul (zero fill)");
    return;
  }
  constexpr int64_t int_max = 2147483647;
  if (g.m > int_max || g.n > int_max || g.k > int_max)
    throw Error("matmul: dimensions m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
                " k=" + std::to_string(g.k) + " exceed cuBLAS's int range");
  // Row-major C (m x n) = op(A) op(B) is column-major C^T (n x m) = op(B)^T op(A)^T: the
  // row-major buffers are already the column-major transposes, so no copy is made.
  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = int(g.n), n = int(g.m), k = int(g.k);
  const int ld_b = int(g.trans_b ? g.k : g.n), ld_a = int(g.trans_a ? g.m : g.k), ld_c = int(g.n);
  constexpr int64_t chunk = 65535;  // batch count per call, well inside every cuBLAS limit
  for (int64_t b0 = 0; b0 < g.batch; b0 += chunk) {
    const int cnt = int(std::min(chunk, g.batch - b0));
    if (t == DType::f32) {
      const float alpha = 1.0f, bt = float(beta);
      auto A = static_cast<const float*>(a) + b0 * g.stride_a, B = static_cast<const float*>(b) + b0 * g.stride_b;
      auto C = static_cast<float*>(out) + b0 * stride_c;
      check_blas(cublasSgemmStridedBatched(c.blas, op_b, op_a, m, n, k, &alpha, B, ld_b, g.stride_b, A, ld_a,
                                           g.stride_a, &bt, C, ld_c, stride_c, cnt),
                 "matmul (cublasSgemmStridedBatched)");
    } else if (t == DType::f64) {
      const double alpha = 1.0, bt = beta;
      auto A = static_cast<const double*>(a) + b0 * g.stride_a, B = static_cast<const double*>(b) + b0 * g.stride_b;
      auto C = static_cast<double*>(out) + b0 * stride_c;
      check_blas(cublasDgemmStridedBatched(c.blas, op_b, op_a, m, n, k, &alpha, B, ld_b, g.stride_b, A, ld_a,
                                           g.stride_a, &bt, C, ld_c, stride_c, cnt),
                 "matmul (cublasDgemmStridedBatched)");
    } else {
      throw Error("matmul: not defined for int64 tensors");
    }
  }
  after_launch(c, "matmul");
}

namespace {

// Size-bucketed free lists: a freed block goes back to the list of its rounded size and is
// handed out again for the next request of that size. Blocks are reused in stream order
// (one stream per device), so no synchronization is needed between free and reuse.
class CachingAllocator {
 public:
  static size_t rounded(size_t n) {
    constexpr size_t small = 512, large = size_t(1) << 20;
    return n <= large ? (n + small - 1) / small * small : (n + large - 1) / large * large;
  }
  void* allocate(size_t bytes, const Ctx& c) {
    if (bytes == 0) return nullptr;
    const size_t r = rounded(bytes);
    std::lock_guard<std::mutex> lock(m_);
    auto it = free_.find(r);
    if (it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      cached_ -= r;
      ++reused_;
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, r);
    if (e == cudaErrorMemoryAllocation) {  // give every cached block back, then retry once
      (void)cudaGetLastError();
      release_locked(c);
      e = cudaMalloc(&p, r);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      throw Error("cuda:" + std::to_string(c.device) + ": out of memory allocating " + std::to_string(bytes) +
                  " bytes (" + cudaGetErrorString(e) + "; " + std::to_string(in_use_ >> 20) +
                  " MiB in use by flatmin, " + std::to_string(free_b >> 20) + " of " + std::to_string(total_b >> 20) +
                  " MiB free on the device)");
    }
    in_use_ += r;
    return p;
  }
  void deallocate(void* p, size_t bytes) {
    if (!p) return;
    const size_t r = rounded(bytes);
    std::lock_guard<std::mutex> lock(m_);
    free_[r].push_back(p);
    cached_ += r;
  }

  size_t release(const Ctx& c) {
    std::lock_guard<std::mutex> lock(m_);
    const size_t bytes = cached_;
    release_locked(c);
    return bytes;
  }

 private:
  void release_locked(const Ctx& c) {
    (void)cudaStreamSynchronize(c.stream);  // nothing queued may still use a block we free
    for (auto& [size, blocks] : free_) {
      for (void* p : blocks) (void)cudaFree(p);
      in_use_ -= size * blocks.size();
      blocks.clear();
    }
    cached_ = 0;
    (void)cudaGetLastError();
  }
  std::mutex m_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0, in_use_ = 0;  // in_use_ counts every block cudaMalloc gave us, cached or not
  uint64_t reused_ = 0;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) {
    name_ = "cuda:" + std::to_string(device);
    c_.device = device;
    c_.backend = this;
    const char* s = std::getenv("FLATMIN_CUDA_SYNC");
    c_.sync_each = s && s[0] == '1';
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&c_.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check_blas(cublasCreate(&c_.blas), "cublasCreate");
    check_blas(cublasSetStream(c_.blas, c_.stream), "cublasSetStream");
    // Full float32 arithmetic (no TF32), so results match the CPU to float32 rounding.
    check_blas(cublasSetMathMode(c_.blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    int n = 0;
    check(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    multi_ = n > 1;
  }
  const char* name() const override { return name_.c_str(); }
  // bfloat16 convolutions run on cuDNN only (cudnn.cu), so not under FLATMIN_CUDA_CONV=native.
  std::string bf16_convolutions_unavailable() const override {
    if (cudnn_compiled() && conv_engine() != ConvEngine::native) return "";
    return "they run on cuDNN, and this build has no cuDNN or FLATMIN_CUDA_CONV=native is set";
  }

  void* allocate(size_t bytes) override {
    guard();
    return alloc_.allocate(bytes, c_);
  }
  void deallocate(void* p, size_t bytes) override { alloc_.deallocate(p, bytes); }
  size_t release_cached_memory() override {
    guard();
    return alloc_.release(c_);
  }
  void copy_from_host(void* dst, const void* src, size_t n) override {
    if (!n) return;
    guard();
    // From pageable memory the call returns once `src` is staged, so the caller may free it.
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c_.stream), "copy_from_host");
  }
  void copy_to_host(void* dst, const void* src, size_t n) override {
    if (!n) return;
    guard();
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, c_.stream), "copy_to_host");
    check(cudaStreamSynchronize(c_.stream), "copy_to_host (synchronize: reports errors of earlier kernels too)");
  }
  void copy(void* dst, const void* src, size_t n) override {
    if (!n || dst == src) return;
    guard();
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, c_.stream), "copy");
  }
  void synchronize() override {
    guard();
    check(cudaStreamSynchronize(c_.stream), "synchronize");
  }

  void fill(Tensor& out, double v) override {
    guard();
    cuda::fill(c_, out, v);
  }
  void cast(const Tensor& in, Tensor& out) override {
    guard();
    cuda::cast(c_, in, out);
  }
  void arange(Tensor& out) override {
    guard();
    cuda::arange(c_, out);
  }
  void unary(UnaryOp op, const Tensor& x, Tensor& out, double p) override {
    guard();
    cuda::unary(c_, op, x, out, p);
  }
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) override {
    guard();
    cuda::binary(c_, op, a, b, out);
  }
  void where(const Tensor& c, const Tensor& a, const Tensor& b, Tensor& out) override {
    guard();
    cuda::where(c_, c, a, b, out);
  }
  void reduce(ReduceOp op, const Tensor& x, Tensor& out) override {
    guard();
    cuda::reduce(c_, op, x, out);
  }

  void expand(const Tensor& x, Tensor& out) override {
    guard();
    strided_copy(c_, x, 0, broadcast_strides(x.shape(), out.shape()), out, "expand");
  }
  void permute(const Tensor& x, Tensor& out, const std::vector<int64_t>& perm) override {
    const std::vector<int64_t> sx = contiguous_strides(x.shape());
    std::vector<int64_t> st(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) st[i] = sx[size_t(perm[i])];
    guard();
    strided_copy(c_, x, 0, st, out, "permute");
  }
  void slice(const Tensor& x, Tensor& out, int64_t axis, int64_t start, int64_t step) override {
    std::vector<int64_t> sx = contiguous_strides(x.shape());
    const int64_t offset = start * sx[size_t(axis)];
    sx[size_t(axis)] *= step;
    guard();
    strided_copy(c_, x, offset, sx, out, "slice");
  }
  void slice_add(const Tensor& src, Tensor& out, int64_t axis, int64_t start, int64_t step) override {
    guard();
    cuda::slice_add(c_, src, out, axis, start, step);
  }
  void index_select(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) override {
    guard();
    cuda::index_select(c_, x, axis, idx, out);
  }
  void index_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) override {
    guard();
    cuda::index_add(c_, src, axis, idx, out);
  }
  void gather(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) override {
    guard();
    cuda::gather(c_, x, axis, idx, out);
  }
  void scatter_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) override {
    guard();
    cuda::scatter_add(c_, src, axis, idx, out);
  }
  void matmul(const Tensor& a, const Tensor& b, Tensor& out, const MatmulArgs& g) override {
    guard();
    gemm(c_, a.dtype(), a.raw(), b.raw(), out.raw(), g, 0.0, g.m * g.n);
  }
  void random(RandomKind kind, Tensor& out, uint64_t seed, uint64_t offset) override {
    guard();
    cuda::random(c_, kind, out, seed, offset);
  }
  void conv2d(const Tensor& x, const Tensor& w, Tensor& out, const Conv2dParams& p) override {
    guard();
    cuda::conv2d(c_, x, w, out, p);
  }
  void conv2d_input_grad(const Tensor& gy, const Tensor& w, Tensor& gx, const Conv2dParams& p) override {
    guard();
    cuda::conv2d_input_grad(c_, gy, w, gx, p);
  }
  void conv2d_weight_grad(const Tensor& x, const Tensor& gy, Tensor& gw, const Conv2dParams& p) override {
    guard();
    cuda::conv2d_weight_grad(c_, x, gy, gw, p);
  }
  void max_pool2d(const Tensor& x, Tensor& out, Tensor& indices, const Pool2dParams& p) override {
    guard();
    cuda::max_pool2d(c_, x, out, indices, p);
  }
  void avg_pool2d(const Tensor& x, Tensor& out, const Pool2dParams& p) override {
    guard();
    cuda::avg_pool2d(c_, x, out, p);
  }
  void avg_pool2d_adjoint(const Tensor& gy, Tensor& gx, const Pool2dParams& p) override {
    guard();
    cuda::avg_pool2d_adjoint(c_, gy, gx, p);
  }
  bool batch_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y, Tensor& mean,
                          Tensor& var) override {
    if (mean.dim() != 1) return false;  // statistics per instance ([B, C]): the op's composite
    guard();
    cuda::batch_norm_forward(c_, x, w, b, eps, y, mean, var);
    return true;
  }
  bool batch_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& var,
                           double eps, Tensor& gx, Tensor& gw, Tensor& gb) override {
    if (mean.dim() != 1) return false;  // statistics per instance ([B, C]): the op's composite
    guard();
    cuda::batch_norm_backward(c_, g, x, w, mean, var, eps, gx, gw, gb);
    return true;
  }
  bool batch_norm_relu_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y, Tensor& mean,
                               Tensor& var) override {
    if (mean.dim() != 1) return false;  // statistics per instance ([B, C]): the op's composite
    guard();
    cuda::batch_norm_forward(c_, x, w, b, eps, y, mean, var, /*relu=*/true);
    return true;
  }
  bool batch_norm_relu_backward(const Tensor& g, const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& mean,
                                const Tensor& var, double eps, Tensor& gx, Tensor& gw, Tensor& gb) override {
    if (mean.dim() != 1) return false;  // statistics per instance ([B, C]): the op's composite
    guard();
    cuda::batch_norm_backward(c_, g, x, w, mean, var, eps, gx, gw, gb, &y);
    return true;
  }
  bool batch_norm_eval(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu, Tensor& y) override {
    guard();
    cuda::batch_norm_eval(c_, x, scale, shift, relu, y);
    return true;
  }
  bool add_relu(const Tensor& a, const Tensor& b, Tensor& out) override {
    guard();
    cuda::add_relu(c_, a, b, out);
    return true;
  }
  bool batch_norm_input_grad_vjp(const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                                 const Tensor& var, double eps, Tensor& dg, Tensor& dx, Tensor& dw) override {
    if (mean.dim() != 1) return false;  // statistics per instance ([B, C]): the op's composite
    guard();
    cuda::batch_norm_input_grad_vjp(c_, a, g, x, w, mean, var, eps, dg, dx, dw);
    return true;
  }
  bool batch_norm_weight_grad_vjp(const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                  const Tensor& var, double eps, Tensor& dg, Tensor& dx) override {
    if (mean.dim() != 1) return false;  // statistics per instance ([B, C]): the op's composite
    guard();
    cuda::batch_norm_weight_grad_vjp(c_, beta, g, x, mean, var, eps, dg, dx);
    return true;
  }

 private:
  // With several GPUs, make this backend's device current before any runtime call.
  void guard() const {
    if (multi_) check(cudaSetDevice(c_.device), "cudaSetDevice");
  }
  std::string name_;
  Ctx c_;
  bool multi_ = false;
  CachingAllocator alloc_;
};

}  // namespace

bool compiled() { return true; }

int device_count(std::string* why) {
  int n = 0;  // left unwritten by the runtime when no driver is present
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    (void)cudaGetLastError();
    return 0;
  }
  if (why) *why = n ? "ok" : "no CUDA device";
  return n;
}

Backend* get(int index, std::string* why) {
  // Backends are created once and never destroyed: tensors freed during static destruction
  // still find their allocator, and the driver reclaims everything at process exit.
  constexpr int max_devices = 64;
  static std::atomic<CudaBackend*> made[max_devices] = {};
  if (index >= 0 && index < max_devices)
    if (CudaBackend* b = made[index].load(std::memory_order_acquire)) return b;
  const int n = device_count(why);
  if (n == 0) return nullptr;
  if (index < 0 || index >= n || index >= max_devices) {
    if (why) *why = "no such device: " + std::to_string(n) + " CUDA device(s) present";
    return nullptr;
  }
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (CudaBackend* b = made[index].load()) return b;
  try {
    CudaBackend* b = new CudaBackend(index);
    made[index].store(b, std::memory_order_release);
    return b;
  } catch (const Error& e) {
    if (why) *why = e.what();
    return nullptr;
  }
}

}  // namespace flatmin::cuda
