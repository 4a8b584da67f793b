// CPU kernels: OpenBLAS for GEMM (gemm.hpp), Eigen for vectorized math, oneTBB for parallel loops. Every
// reduction sums in an order fixed by the shapes alone (never by the thread count), so
// results are reproducible run to run.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sys/mman.h>
#include <vector>
#include <unordered_map>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include "autodiff/backend.hpp"
#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/gemm.hpp"
#include "autodiff/kernel_util.hpp"
#include "autodiff/philox.hpp"
#include "autodiff/small_alloc.hpp"

namespace flatmin::cpu {

namespace {

using kernels::binary_value;
using kernels::broadcast_strides;
using kernels::dispatch;
using kernels::dispatch_float;

template <class T> using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;

// Input strides of `in` broadcast against `out` (0 on broadcast axes).

// Merges adjacent axes that are contiguous for every operand, so loops run long inner rows.
void collapse(Shape& shape, std::vector<std::vector<int64_t>*> strides) {
  if (shape.empty()) return;
  Shape ns{shape[0]};
  std::vector<std::vector<int64_t>> nst;
  for (auto* s : strides) nst.push_back({(*s)[0]});
  for (size_t i = 1; i < shape.size(); ++i) {
    bool merge = true;
    for (size_t k = 0; k < strides.size(); ++k) merge &= nst[k].back() == (*strides[k])[i] * shape[i];
    if (merge) {
      ns.back() *= shape[i];
      for (size_t k = 0; k < strides.size(); ++k) nst[k].back() = (*strides[k])[i];
    } else {
      ns.push_back(shape[i]);
      for (size_t k = 0; k < strides.size(); ++k) nst[k].push_back((*strides[k])[i]);
    }
  }
  shape = ns;
  for (size_t k = 0; k < strides.size(); ++k) *strides[k] = nst[k];
}

// Calls f(row, offsets...) for each row of `shape` without its last axis, where offsets[k]
// is the start of that row in operand k (strides per operand). Rows run in parallel.
template <size_t K, class F>
void for_each_row(const Shape& shape, const std::array<const std::vector<int64_t>*, K>& strides, F&& f) {
  const int64_t nd = int64_t(shape.size());
  const int64_t inner = nd ? shape[nd - 1] : 1;
  const int64_t rows = inner ? numel(shape) / inner : 0;
  auto body = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      std::array<int64_t, K> off{};
      int64_t rem = r;
      for (int64_t d = nd - 2; d >= 0; --d) {
        const int64_t i = rem % shape[d];
        rem /= shape[d];
        for (size_t k = 0; k < K; ++k) off[k] += i * (*strides[k])[d];
      }
      f(r, off);
    }
  };
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), body);
}


template <class T> T* ptr(Tensor& t) { return data_ptr<T>(t); }
template <class T> const T* ptr(const Tensor& t) { return data_ptr<T>(t); }

template <class T> void unary_span(UnaryOp op, const T* x, T* y, int64_t n, double param) {
  Eigen::Map<const Arr<T>> X(x, n);
  Eigen::Map<Arr<T>> Y(y, n);
  const T p = T(param);
  switch (op) {
    case UnaryOp::neg: Y = -X; break;
    case UnaryOp::exp: Y = X.exp(); break;
    case UnaryOp::log: Y = X.log(); break;
    case UnaryOp::sqrt: Y = X.sqrt(); break;
    case UnaryOp::rsqrt: Y = X.rsqrt(); break;
    case UnaryOp::tanh: Y = X.tanh(); break;
    case UnaryOp::sigmoid: Y = X.logistic(); break;
    case UnaryOp::softplus: Y = X.max(T(0)) + (-X.abs()).exp().log1p(); break;
    case UnaryOp::relu: Y = X.max(T(0)); break;
    case UnaryOp::abs: Y = X.abs(); break;
    case UnaryOp::sign: Y = X.sign(); break;
    case UnaryOp::step: Y = (X > T(0)).template cast<T>(); break;
    case UnaryOp::pow_scalar:
      if (param == 2.0) Y = X.square();
      else if (param == 3.0) Y = X.cube();
      else if (param == 0.5) Y = X.sqrt();
      else if (param == -1.0) Y = X.inverse();
      else Y = X.pow(p);
      break;
    case UnaryOp::add_scalar: Y = X + p; break;
    case UnaryOp::mul_scalar: Y = X * p; break;
    case UnaryOp::rsub_scalar: Y = p - X; break;
    case UnaryOp::reciprocal: Y = X.inverse(); break;
  }
}


// One row of a broadcast binary op, with the common stride patterns as vectorizable loops.
template <class T>
void binary_row(BinaryOp op, const T* a, int64_t sa, const T* b, int64_t sb, T* y, int64_t n) {
#define FM_ROW(EXPR)                                                   \
  if (sa == 1 && sb == 1) for (int64_t i = 0; i < n; ++i) { const T x = a[i], z = b[i]; y[i] = EXPR; } \
  else if (sa == 1) { const T z = b[0]; for (int64_t i = 0; i < n; ++i) { const T x = a[i]; y[i] = EXPR; } } \
  else if (sb == 1) { const T x = a[0]; for (int64_t i = 0; i < n; ++i) { const T z = b[i]; y[i] = EXPR; } } \
  else { const T x = a[0], z = b[0]; const T v = EXPR; for (int64_t i = 0; i < n; ++i) y[i] = v; }
  switch (op) {
    case BinaryOp::add: FM_ROW(x + z) break;
    case BinaryOp::sub: FM_ROW(x - z) break;
    case BinaryOp::mul: FM_ROW(x * z) break;
    case BinaryOp::div: FM_ROW(x / z) break;
    case BinaryOp::where_positive: FM_ROW(z > T(0) ? x : T(0)) break;
    default: FM_ROW(binary_value(op, x, z)) break;
  }
#undef FM_ROW
}

// Reduction of x over the axes where out has extent 1. Each output's sum runs in a fixed
// order: sequentially, or in fixed-size blocks combined left to right.
template <class T> void reduce_impl(ReduceOp op, const Tensor& xt, Tensor& outt) {
  using Acc = std::conditional_t<std::is_same_v<T, int64_t>, int64_t, double>;
  const T* x = ptr<T>(xt);
  T* out = ptr<T>(outt);
  Shape shape = xt.shape();
  std::vector<int64_t> sin(shape.size()), sout = broadcast_strides(outt.shape(), shape);
  for (int64_t i = int64_t(shape.size()) - 1, s = 1; i >= 0; --i) { sin[i] = s; s *= shape[i]; }
  collapse(shape, {&sin, &sout});
  const int64_t nout = outt.numel(), nin = xt.numel();
  const Acc init = op == ReduceOp::sum ? Acc(0)
                   : op == ReduceOp::max ? Acc(-std::numeric_limits<T>::infinity())
                                         : Acc(std::numeric_limits<T>::infinity());
  auto combine = [op](Acc a, Acc b) {
    return op == ReduceOp::sum ? a + b : op == ReduceOp::max ? (b > a ? b : a) : (b < a ? b : a);
  };
  if (nin == 0) {
    for (int64_t i = 0; i < nout; ++i) out[i] = T(0);
    return;
  }
  // Kept and reduced axes, each with its input stride.
  std::vector<int64_t> kext, kstr, rext, rstr;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (sout[d] == 0 && shape[d] != 1) { rext.push_back(shape[d]); rstr.push_back(sin[d]); }
    else { kext.push_back(shape[d]); kstr.push_back(sin[d]); }
  }
  const int64_t R = nin / nout;
  // Pattern [R, K] (reduce a leading axis, keep a contiguous trailing one): add rows.
  if (rext.size() == 1 && kext.size() == 1 && kstr[0] == 1 && rstr[0] == kext[0]) {
    const int64_t K = kext[0];
    parallel_for(K, 256, [&](int64_t k0, int64_t k1) {
      std::vector<Acc> acc(size_t(k1 - k0), init);
      for (int64_t r = 0; r < R; ++r) {
        const T* row = x + r * K;
        for (int64_t k = k0; k < k1; ++k) acc[k - k0] = combine(acc[k - k0], Acc(row[k]));
      }
      for (int64_t k = k0; k < k1; ++k) out[k] = T(acc[k - k0]);
    });
    return;
  }
  // Sum of reduced elements [r0, r1) (flat index over the reduced axes) from base offset.
  auto partial = [&](int64_t base, int64_t r0, int64_t r1) {
    Acc acc = init;
    const int64_t nr = int64_t(rext.size());
    const int64_t inner = nr ? rext[nr - 1] : 1, istr = nr ? rstr[nr - 1] : 0;
    int64_t r = r0;
    while (r < r1) {
      int64_t off = base, rem = r / inner;
      for (int64_t d = nr - 2; d >= 0; --d) { off += (rem % rext[d]) * rstr[d]; rem /= rext[d]; }
      const int64_t i0 = r % inner, i1 = std::min(inner, i0 + (r1 - r));
      if (istr == 1) for (int64_t i = i0; i < i1; ++i) acc = combine(acc, Acc(x[off + i]));
      else for (int64_t i = i0; i < i1; ++i) acc = combine(acc, Acc(x[off + i * istr]));
      r += i1 - i0;
    }
    return acc;
  };
  auto base_of = [&](int64_t o) {
    int64_t off = 0, rem = o;
    for (int64_t d = int64_t(kext.size()) - 1; d >= 0; --d) { off += (rem % kext[d]) * kstr[d]; rem /= kext[d]; }
    return off;
  };
  constexpr int64_t block = 16384;
  if (nout >= 16 || R <= block) {
    parallel_for(nout, std::max<int64_t>(1, block / std::max<int64_t>(R, 1)), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) out[o] = T(partial(base_of(o), 0, R));
    });
    return;
  }
  const int64_t nblocks = (R + block - 1) / block;
  std::vector<Acc> parts(static_cast<size_t>(nblocks));
  for (int64_t o = 0; o < nout; ++o) {
    const int64_t base = base_of(o);
    parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) parts[b] = partial(base, b * block, std::min(R, (b + 1) * block));
    });
    Acc acc = init;
    for (Acc p : parts) acc = combine(acc, p);
    out[o] = T(acc);
  }
}

// out (contiguous, shape `shape`) = in[offset + Σ i_d * strides_d]
template <class T>
void strided_copy(const T* in, int64_t offset, std::vector<int64_t> strides, Shape shape, T* out) {
  std::vector<int64_t> so(shape.size());
  for (int64_t i = int64_t(shape.size()) - 1, s = 1; i >= 0; --i) { so[i] = s; s *= shape[i]; }
  collapse(shape, {&strides, &so});
  const int64_t inner = shape.empty() ? 1 : shape.back(), is = strides.empty() ? 0 : strides.back();
  for_each_row<2>(shape, {&strides, &so}, [&](int64_t, const std::array<int64_t, 2>& off) {
    const T* src = in + offset + off[0];
    T* dst = out + off[1];
    if (is == 1) std::memcpy(dst, src, size_t(inner) * sizeof(T));
    else for (int64_t i = 0; i < inner; ++i) dst[i] = src[i * is];
  });
}

// x viewed as [outer, n, inner] around `axis`.
void split_axis(const Shape& s, int64_t axis, int64_t& outer, int64_t& n, int64_t& inner) {
  outer = 1;
  inner = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= s[i];
  n = s[axis];
  for (size_t i = size_t(axis) + 1; i < s.size(); ++i) inner *= s[i];
}

// Freed blocks over 1 KiB are kept, keyed by size, and handed out again: a training step
// allocates the same sizes every step, and memory fresh from the kernel costs a page fault
// per 4 KiB page on first touch (measured: a ResNet-18 step at batch 128 runs at 37 img/s
// without this cache, 55 with it). What the cache may hold is bounded by the program's own
// high-water mark: live + cached bytes stay under the largest live total seen so far plus
// `slack`, so caching never raises the peak memory by more than `slack`; a miss that would
// exceed it hands cached blocks back first. 192 MiB: with 64 a ResNet-18 step at batch 32
// lost 7-20% to page faults; peak RSS at batch 128 is 846 MiB with 64, 970 with 192. Blocks of 1 MiB and more come from mmap and go
// back with munmap, so what leaves the cache really leaves the process (glibc would keep
// them in its heap once its dynamic mmap threshold has grown).
class BlockCache {
 public:
  static constexpr size_t limit = size_t(512) << 20, max_block = size_t(64) << 20, slack = size_t(192) << 20;
  static constexpr size_t mmap_min = size_t(1) << 20;
  static size_t rounded(size_t bytes) {  // whole cache lines; whole pages for mapped blocks
    const size_t unit = bytes < mmap_min ? 64 : 4096;
    return (bytes + unit - 1) / unit * unit;
  }
  void* allocate(size_t bytes) {
    const size_t size = rounded(bytes);
    std::vector<std::pair<void*, size_t>> evicted;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_ += size;
      high_water_ = std::max(high_water_, live_);
      auto it = free_.find(size);
      if (it != free_.end()) {
        p = it->second;
        cached_ -= size;
        free_.erase(it);
        return p;
      }
      while (!free_.empty() && live_ + cached_ > high_water_ + slack) {
        auto victim = free_.begin();
        evicted.emplace_back(victim->second, victim->first);
        cached_ -= victim->first;
        free_.erase(victim);
      }
    }
    for (auto [q, n] : evicted) release(q, n);
    p = size >= mmap_min ? map(size) : std::aligned_alloc(64, size);
    if (!p) {
      std::lock_guard<std::mutex> lock(mutex_);
      live_ -= size;
      throw Error("cpu: out of memory allocating " + std::to_string(bytes) + " bytes");
    }
    return p;
  }
  void deallocate(void* p, size_t bytes) {
    const size_t size = rounded(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_ -= size;
      if (size <= max_block && cached_ + size <= limit && live_ + cached_ + size <= high_water_ + slack) {
        free_.emplace(size, p);
        cached_ += size;
        return;
      }
    }
    release(p, size);
  }

 private:
  static void* map(size_t size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  static void release(void* p, size_t size) {
    if (size >= mmap_min) ::munmap(p, size);
    else std::free(p);
  }

  std::mutex mutex_;
  std::unordered_multimap<size_t, void*> free_;
  size_t cached_ = 0, live_ = 0, high_water_ = 0;
};

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }

  // Tiny tensors come from the engine's per-thread block cache (kernels never assume more
  // than element alignment: views have offsets); the rest is 64-byte aligned for AVX-512.
  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    if (bytes <= detail::small_block_max) return detail::small_alloc(bytes);
    return cache_.allocate(bytes);
  }
  void deallocate(void* p, size_t bytes) override {
    if (!p) return;
    if (bytes <= detail::small_block_max) detail::small_free(p, bytes);
    else cache_.deallocate(p, bytes);
  }
  void copy_from_host(void* d, const void* s, size_t n) override { if (n) std::memcpy(d, s, n); }
  void copy_to_host(void* d, const void* s, size_t n) override { if (n) std::memcpy(d, s, n); }
  void copy(void* d, const void* s, size_t n) override { if (n && d != s) std::memmove(d, s, n); }

  void fill(Tensor& out, double v) override {
    dispatch(out.dtype(), [&](auto z) {
      using T = decltype(z);
      std::fill_n(ptr<T>(out), out.numel(), T(v));
    });
  }
  void cast(const Tensor& in, Tensor& out) override {
    dispatch(in.dtype(), [&](auto a) {
      using A = decltype(a);
      dispatch(out.dtype(), [&](auto b) {
        using B = decltype(b);
        const A* s = ptr<A>(in);
        B* d = ptr<B>(out);
        parallel_for(in.numel(), 65536, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) d[i] = B(s[i]);
        });
      });
    });
  }
  void arange(Tensor& out) override {
    dispatch(out.dtype(), [&](auto z) {
      using T = decltype(z);
      for (int64_t i = 0; i < out.numel(); ++i) ptr<T>(out)[i] = T(i);
    });
  }

  void unary(UnaryOp op, const Tensor& x, Tensor& out, double param) override {
    dispatch_float(x.dtype(), "unary", [&](auto z) {
      using T = decltype(z);
      const T* a = ptr<T>(x);
      T* y = ptr<T>(out);
      parallel_for(x.numel(), 32768, [&](int64_t i0, int64_t i1) { unary_span(op, a + i0, y + i0, i1 - i0, param); });
    });
  }

  void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) override {
    dispatch(out.dtype(), [&](auto z) {
      using T = decltype(z);
      // Common cases first, without stride bookkeeping: equal shapes, or one operand a
      // single element (binary_row's stride 0 repeats it).
      const Shape& out_shape = out.shape();
      const bool a_full = a.shape() == out_shape, b_full = b.shape() == out_shape;
      if ((a_full && (b_full || b.numel() == 1)) || (b_full && a.numel() == 1)) {
        const T *pa = ptr<T>(a), *pb = ptr<T>(b);
        T* y = ptr<T>(out);
        const int64_t ia = a_full ? 1 : 0, ib = b_full ? 1 : 0;
        parallel_for(out.numel(), 32768, [&](int64_t i0, int64_t i1) {
          binary_row(op, pa + i0 * ia, ia, pb + i0 * ib, ib, y + i0, i1 - i0);
        });
        return;
      }
      Shape shape = out.shape();
      std::vector<int64_t> sa = broadcast_strides(a.shape(), shape), sb = broadcast_strides(b.shape(), shape);
      std::vector<int64_t> so(shape.size());
      for (int64_t i = int64_t(shape.size()) - 1, s = 1; i >= 0; --i) { so[i] = s; s *= shape[i]; }
      collapse(shape, {&sa, &sb, &so});
      const T *pa = ptr<T>(a), *pb = ptr<T>(b);
      T* y = ptr<T>(out);
      if (shape.empty()) { y[0] = binary_value(op, pa[0], pb[0]); return; }
      const int64_t inner = shape.back(), ia = sa.back(), ib = sb.back();
      if (shape.size() == 1) {  // one long row: split it across threads
        parallel_for(inner, 32768, [&](int64_t i0, int64_t i1) {
          binary_row(op, pa + i0 * ia, ia, pb + i0 * ib, ib, y + i0, i1 - i0);
        });
        return;
      }
      for_each_row<3>(shape, {&sa, &sb, &so}, [&](int64_t, const std::array<int64_t, 3>& off) {
        binary_row(op, pa + off[0], ia, pb + off[1], ib, y + off[2], inner);
      });
    });
  }

  void where(const Tensor& c, const Tensor& a, const Tensor& b, Tensor& out) override {
    dispatch(out.dtype(), [&](auto z) {
      using T = decltype(z);
      Shape shape = out.shape();
      std::vector<int64_t> sc = broadcast_strides(c.shape(), shape), sa = broadcast_strides(a.shape(), shape),
                           sb = broadcast_strides(b.shape(), shape), so(shape.size());
      for (int64_t i = int64_t(shape.size()) - 1, s = 1; i >= 0; --i) { so[i] = s; s *= shape[i]; }
      collapse(shape, {&sc, &sa, &sb, &so});
      const T *pc = ptr<T>(c), *pa = ptr<T>(a), *pb = ptr<T>(b);
      T* y = ptr<T>(out);
      if (shape.empty()) { y[0] = pc[0] != T(0) ? pa[0] : pb[0]; return; }
      const int64_t inner = shape.back(), ic = sc.back(), ia = sa.back(), ib = sb.back();
      for_each_row<4>(shape, {&sc, &sa, &sb, &so}, [&](int64_t, const std::array<int64_t, 4>& off) {
        for (int64_t i = 0; i < inner; ++i)
          y[off[3] + i] = pc[off[0] + i * ic] != T(0) ? pa[off[1] + i * ia] : pb[off[2] + i * ib];
      });
    });
  }

  void reduce(ReduceOp op, const Tensor& x, Tensor& out) override {
    dispatch(x.dtype(), [&](auto z) { reduce_impl<decltype(z)>(op, x, out); });
  }

  void expand(const Tensor& x, Tensor& out) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      strided_copy(ptr<T>(x), 0, broadcast_strides(x.shape(), out.shape()), out.shape(), ptr<T>(out));
    });
  }
  void permute(const Tensor& x, Tensor& out, const std::vector<int64_t>& perm) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      std::vector<int64_t> sx(x.dim()), st(x.dim());
      for (int64_t i = x.dim() - 1, s = 1; i >= 0; --i) { sx[i] = s; s *= x.shape()[i]; }
      for (size_t i = 0; i < perm.size(); ++i) st[i] = sx[perm[i]];
      strided_copy(ptr<T>(x), 0, st, out.shape(), ptr<T>(out));
    });
  }
  void slice(const Tensor& x, Tensor& out, int64_t axis, int64_t start, int64_t step) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      std::vector<int64_t> sx(x.dim());
      for (int64_t i = x.dim() - 1, s = 1; i >= 0; --i) { sx[i] = s; s *= x.shape()[i]; }
      const int64_t offset = start * sx[axis];
      sx[axis] *= step;
      strided_copy(ptr<T>(x), offset, sx, out.shape(), ptr<T>(out));
    });
  }
  void slice_add(const Tensor& src, Tensor& out, int64_t axis, int64_t start, int64_t step) override {
    dispatch(src.dtype(), [&](auto z) {
      using T = decltype(z);
      int64_t outer, n, inner, on, oi;
      split_axis(src.shape(), axis, outer, n, inner);
      split_axis(out.shape(), axis, outer, on, oi);
      const T* s = ptr<T>(src);
      T* d = ptr<T>(out);
      parallel_for(outer * n, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t o = r / n, j = r % n;
          T* dst = d + (o * on + start + j * step) * inner;
          const T* sp = s + r * inner;
          for (int64_t i = 0; i < inner; ++i) dst[i] += sp[i];
        }
      });
    });
  }

  void index_select(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      int64_t outer, n, inner;
      split_axis(x.shape(), axis, outer, n, inner);
      const int64_t k = idx.numel();
      const int64_t* ix = ptr<int64_t>(idx);
      const T* s = ptr<T>(x);
      T* d = ptr<T>(out);
      parallel_for(outer * k, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t o = r / k, j = r % k;
          std::memcpy(d + r * inner, s + (o * n + ix[j]) * inner, size_t(inner) * sizeof(T));
        }
      });
    });
  }
  void index_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) override {
    dispatch(src.dtype(), [&](auto z) {
      using T = decltype(z);
      int64_t outer, n, inner;
      split_axis(out.shape(), axis, outer, n, inner);
      const int64_t k = idx.numel();
      const int64_t* ix = ptr<int64_t>(idx);
      const T* s = ptr<T>(src);
      T* d = ptr<T>(out);
      // parallel over (outer, inner); serial over the indices, which may repeat
      parallel_for(outer, 1, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o)
          for (int64_t j = 0; j < k; ++j) {
            T* dst = d + (o * n + ix[j]) * inner;
            const T* sp = s + (o * k + j) * inner;
            for (int64_t i = 0; i < inner; ++i) dst[i] += sp[i];
          }
      });
    });
  }
  void gather(const Tensor& x, int64_t axis, const Tensor& idx, Tensor& out) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      int64_t outer, n, inner, k, ii;
      split_axis(x.shape(), axis, outer, n, inner);
      split_axis(idx.shape(), axis, outer, k, ii);
      const int64_t* ix = ptr<int64_t>(idx);
      const T* s = ptr<T>(x);
      T* d = ptr<T>(out);
      parallel_for(outer * k, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t o = r / k;
          for (int64_t i = 0; i < inner; ++i) d[r * inner + i] = s[(o * n + ix[r * inner + i]) * inner + i];
        }
      });
    });
  }
  void scatter_add(const Tensor& src, int64_t axis, const Tensor& idx, Tensor& out) override {
    dispatch(src.dtype(), [&](auto z) {
      using T = decltype(z);
      int64_t outer, n, inner, k, ii;
      split_axis(out.shape(), axis, outer, n, inner);
      split_axis(idx.shape(), axis, outer, k, ii);
      const int64_t* ix = ptr<int64_t>(idx);
      const T* s = ptr<T>(src);
      T* d = ptr<T>(out);
      parallel_for(outer, 1, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o)
          for (int64_t j = 0; j < k; ++j)
            for (int64_t i = 0; i < inner; ++i) {
              const int64_t r = (o * k + j) * inner + i;
              d[(o * n + ix[r]) * inner + i] += s[r];
            }
      });
    });
  }

  void matmul(const Tensor& a, const Tensor& b, Tensor& out, const MatmulArgs& g) override {
    dispatch_float(a.dtype(), "matmul", [&](auto z) {
      using T = decltype(z);
      gemm_batched<T>(ptr<T>(a), ptr<T>(b), ptr<T>(out), g);
    });
  }

  void random(RandomKind kind, Tensor& out, uint64_t seed, uint64_t offset) override {
    dispatch_float(out.dtype(), "random", [&](auto z) {
      using T = decltype(z);
      T* y = ptr<T>(out);
      parallel_for(out.numel(), 8192, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const uint64_t c = offset + uint64_t(i);
          y[i] = T(kind == RandomKind::uniform  ? philox::uniform(seed, c)
                   : kind == RandomKind::normal ? philox::normal(seed, c)
                                                : philox::rademacher(seed, c));
        }
      });
    });
  }

  bool batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y, Tensor& mean,
                          Tensor& var) override {
    flatmin::cpu::batch_norm_forward(x, weight, bias, eps, y, mean, var);
    return true;
  }
  bool batch_norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& var,
                           double eps, Tensor& gx, Tensor& gw, Tensor& gb) override {
    flatmin::cpu::batch_norm_backward(g, x, weight, mean, var, eps, gx, gw, gb);
    return true;
  }
  bool batch_norm_input_grad_vjp(const Tensor& a, const Tensor& g, const Tensor& x, const Tensor& w,
                                 const Tensor& mean, const Tensor& var, double eps, Tensor& dg, Tensor& dx,
                                 Tensor& dw) override {
    flatmin::cpu::batch_norm_input_grad_vjp(a, g, x, w, mean, var, eps, dg, dx, dw);
    return true;
  }
  bool batch_norm_weight_grad_vjp(const Tensor& beta, const Tensor& g, const Tensor& x, const Tensor& mean,
                                  const Tensor& var, double eps, Tensor& dg, Tensor& dx) override {
    flatmin::cpu::batch_norm_weight_grad_vjp(beta, g, x, mean, var, eps, dg, dx);
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
  void avg_pool2d(const Tensor& x, Tensor& out, const Pool2dParams& p) override {
    flatmin::cpu::avg_pool2d(x, out, p);
  }
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
  const int64_t threads = int64_t(std::min<size_t>(
      size_t(tbb::this_task_arena::max_concurrency()),
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
