// GEMM through OpenBLAS (Debian's pthread flavor), one thread per call; float32 on oneDNN's
// sgemm in builds with oneDNN (unless FLATMIN_CONV=native), see onednn.hpp.
//
// Why not Eigen: on the machine this was tuned on (2-core AMD EPYC, AVX-512), a one-thread
// microbenchmark of the shapes a ResNet-18 convolution produces gave OpenBLAS 61-103
// GFLOP/s against Eigen 3.4's 52-89 (15-35% more on every shape); the 20 convolutions of a
// batch-128 step went from 3.28 to 2.72 s (bench/conv_bench). It is also the BLAS PyTorch
// is compared with. Why the pthread flavor with one thread: Debian's serial flavor is built
// without locking (it references no pthread symbol), which OpenBLAS documents as unsafe for
// concurrent calls; the OpenMP flavor's pool would fight oneTBB's. With
// openblas_set_num_threads(1) each call runs on the caller's thread; 4 threads x 300
// concurrent calls gave results identical to a single call.
#include "autodiff/cpu/gemm.hpp"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <string>
#include <type_traits>

#include "autodiff/cpu/onednn.hpp"
#include "autodiff/tensor.hpp"

extern "C" void openblas_set_num_threads(int);

namespace flatmin::cpu {

namespace {
// Sized once before the first product (a function-local static is thread-safe to initialize).
void single_threaded_blas() {
  static const bool once = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}
int blas_int(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw Error("gemm: " + std::string(what) + " = " + std::to_string(v) +
                " does not fit the 32-bit BLAS interface (at most 2^31 - 1)");
  return int(v);
}
}  // namespace

template <class T> void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                             int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if constexpr (std::is_same_v<T, float>)
    if (onednn::enabled()) return onednn::sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  single_threaded_blas();
  const auto ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  const int M = blas_int(m, "m"), N = blas_int(n, "n"), K = blas_int(k, "k");
  // BLAS requires leading dimensions >= 1 even for empty operands.
  const int LDA = blas_int(std::max<int64_t>(lda, 1), "lda"), LDB = blas_int(std::max<int64_t>(ldb, 1), "ldb"),
            LDC = blas_int(std::max<int64_t>(ldc, 1), "ldc");
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a, LDA, b, LDB, beta, c, LDC);
  else
    cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a, LDA, b, LDB, beta, c, LDC);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

}  // namespace flatmin::cpu
