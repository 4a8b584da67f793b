// Internal to the CPU backend: one single-threaded row-major GEMM for every product
// (matmul, convolutions). Callers parallelize over independent blocks with oneTBB, so
// results never depend on the thread count.
#pragma once
#include <cstdint>

namespace flatmin::cpu {

// C[m, n] = alpha * op(A) op(B) + beta * C, all row-major; op(A) is [m, k], op(B) [k, n];
// lda/ldb/ldc are the row strides of A, B, C as stored. Runs on the calling thread.
template <class T> void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                             int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace flatmin::cpu
