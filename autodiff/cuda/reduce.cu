// Sum / max / min over the axes where out has extent 1. Deterministic: the launch
// configuration depends only on the shapes, float sums accumulate in double, and each
// output's partial sums combine in a fixed tree (no atomics).
#include <limits>
#include <type_traits>

#include "autodiff/cuda/kernels.hpp"

namespace flatmin::cuda {

namespace {

struct Axes {  // extents and input strides of the kept (or of the reduced) axes
  int n = 0;
  int64_t ext[kMaxDims] = {};
  int64_t str[kMaxDims] = {};
};

__device__ __forceinline__ int64_t offset_of(const Axes& a, int64_t f) {
  int64_t off = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < a.n) {
      off += (f % a.ext[d]) * a.str[d];
      f /= a.ext[d];
    }
  }
  return off;
}

template <class Acc> __device__ __forceinline__ Acc combine(ReduceOp op, Acc a, Acc b) {
  return op == ReduceOp::sum ? a + b : op == ReduceOp::max ? (b > a ? b : a) : (b < a ? b : a);
}

// One block per (output, split): threads stride over the split's reduced elements, then a
// fixed tree. With one split the block writes the output; with several it writes its
// partial, and reduce_partials_kernel combines each output's partials in split order.
template <class T, class Acc> __global__ void reduce_block_kernel(ReduceOp op, const T* x, T* out, Acc* partial,
                                                                  int64_t nout, int64_t R, int64_t splits,
                                                                  int64_t chunk, Axes kept, Axes red, Acc init) {
  __shared__ Acc part[kThreads];
  for (int64_t b = blockIdx.x; b < nout * splits; b += gridDim.x) {
    const int64_t o = b / splits, r0 = (b % splits) * chunk, r1 = min(R, r0 + chunk);
    const int64_t base = offset_of(kept, o);
    Acc acc = init;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += kThreads) acc = combine(op, acc, Acc(x[base + offset_of(red, r)]));
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (int(threadIdx.x) < s) part[threadIdx.x] = combine(op, part[threadIdx.x], part[threadIdx.x + s]);
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      if (partial)
        partial[b] = part[0];
      else
        out[o] = T(part[0]);
    }
    __syncthreads();
  }
}
template <class T, class Acc> __global__ void reduce_partials_kernel(ReduceOp op, const Acc* partial, T* out,
                                                                     int64_t nout, int64_t splits, Acc init) {
  FM_GRID_LOOP(o, nout) {
    Acc acc = init;
    for (int64_t s = 0; s < splits; ++s) acc = combine(op, acc, partial[o * splits + s]);
    out[o] = T(acc);
  }
}

// One thread per output, summing sequentially: used when neighbouring outputs read
// neighbouring inputs (the innermost axis is kept), so the reads coalesce.
template <class T, class Acc> __global__ void reduce_column_kernel(ReduceOp op, const T* x, T* out, int64_t nout,
                                                                   int64_t R, Axes kept, Axes red, Acc init) {
  FM_GRID_LOOP(o, nout) {
    const int64_t base = offset_of(kept, o);
    Acc acc = init;
    for (int64_t r = 0; r < R; ++r) acc = combine(op, acc, Acc(x[base + offset_of(red, r)]));
    out[o] = T(acc);
  }
}

}  // namespace

void reduce(const Ctx& c, ReduceOp op, const Tensor& x, Tensor& out) {
  const int64_t nout = out.numel(), nin = x.numel();
  if (!nout) return;
  if (!nin) {  // an empty sum is 0 (ops refuse max/min over nothing)
    fill(c, out, 0.0);
    return;
  }
  // Split x's axes into kept and reduced ones, merging neighbours of the same kind (x is
  // contiguous, so such neighbours always merge) and skipping axes of extent 1.
  const Shape& shape = x.shape();
  const std::vector<int64_t> sin = contiguous_strides(shape), sout = broadcast_strides(out.shape(), shape);
  Axes kept, red;
  int last = -1;  // 0 kept, 1 reduced
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    const int kind = sout[d] == 0 ? 1 : 0;
    Axes& a = kind ? red : kept;
    if (kind == last) {
      a.ext[a.n - 1] *= shape[d];
      a.str[a.n - 1] = sin[d];
    } else {
      if (a.n == kMaxDims)
        throw Error("sum/max/min: shape " + to_string(shape) + " alternates kept and reduced axes too often");
      a.ext[a.n] = shape[d];
      a.str[a.n] = sin[d];
      ++a.n;
    }
    last = kind;
  }
  const int64_t R = nin / nout;
  // Thread per output when the innermost axis is kept (coalesced reads) and either there are
  // outputs enough to fill the device or each output sums only a few elements.
  const bool column = kept.n > 0 && kept.str[kept.n - 1] == 1 && (nout >= 16384 || (nout >= 1024 && R <= 256));
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    using Acc = std::conditional_t<std::is_same_v<T, int64_t>, int64_t, double>;
    using L = std::numeric_limits<Acc>;
    const Acc init = op == ReduceOp::sum   ? Acc(0)
                     : op == ReduceOp::max ? (L::has_infinity ? -L::infinity() : L::lowest())
                                           : (L::has_infinity ? L::infinity() : L::max());
    const T* px = data_ptr<T>(x);
    T* po = data_ptr<T>(out);
    if (column) {
      reduce_column_kernel<T, Acc><<<grid_for(nout), kThreads, 0, c.stream>>>(op, px, po, nout, R, kept, red, init);
      return;
    }
    // Few outputs over many elements (norms, dot products, batch statistics): split each
    // output's range so that about kSplitBlocks blocks run. Depends on the shapes only.
    constexpr int64_t kSplitBlocks = 528, kMinChunk = 16384;
    const int64_t splits = nout >= kSplitBlocks / 2 || R < 2 * kMinChunk
                               ? 1
                               : std::min((kSplitBlocks + nout - 1) / nout, (R + kMinChunk - 1) / kMinChunk);
    const int64_t chunk = (R + splits - 1) / splits;
    Workspace partial(c.backend, splits > 1 ? size_t(nout * splits) * sizeof(Acc) : 0);
    Acc* pp = static_cast<Acc*>(partial.ptr);
    reduce_block_kernel<T, Acc><<<unsigned(std::min<int64_t>(nout * splits, 1 << 20)), kThreads, 0, c.stream>>>(
        op, px, po, pp, nout, R, splits, chunk, kept, red, init);
    if (splits > 1) {
      after_launch(c, "reduce (partials)");
      reduce_partials_kernel<T, Acc><<<grid_for(nout), kThreads, 0, c.stream>>>(op, pp, po, nout, splits, init);
    }
  });
  after_launch(c, "reduce");
}

}  // namespace flatmin::cuda
