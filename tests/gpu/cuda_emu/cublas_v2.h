// Host emulation of the two cuBLAS calls the flatmin backend uses (tests/gpu/cuda_emu/run.sh only),
// written from cuBLAS's column-major definition: C[i + j ldc] = alpha Σ_l op(A)[i,l] op(B)[l,j] + beta C.
#pragma once
#include "cuda_runtime.h"
typedef int cublasStatus_t;
typedef void* cublasHandle_t;
enum { CUBLAS_STATUS_SUCCESS = 0 };
typedef enum { CUBLAS_OP_N, CUBLAS_OP_T } cublasOperation_t;
#define CUBLAS_DEFAULT_MATH 0
inline const char* cublasGetStatusName(cublasStatus_t) { return "emu"; }
inline const char* cublasGetStatusString(cublasStatus_t) { return "emu"; }
inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = nullptr;
  return 0;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return 0; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, int) { return 0; }
template <class T> cublasStatus_t emu_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                           const T* alpha, const T* A, int lda, long long sa, const T* B, int ldb,
                                           long long sb, const T* beta, T* C, int ldc, long long sc, int batch) {
  if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m) std::abort();
  for (int b = 0; b < batch; ++b)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double acc = 0;
        for (int l = 0; l < k; ++l) {
          const T a = ta == CUBLAS_OP_N ? A[b * sa + i + l * (long long)lda] : A[b * sa + l + i * (long long)lda];
          const T bb = tb == CUBLAS_OP_N ? B[b * sb + l + j * (long long)ldb] : B[b * sb + j + l * (long long)ldb];
          acc += double(a) * double(bb);
        }
        T& c = C[b * sc + i + j * (long long)ldc];
        c = T(double(*alpha) * acc + (*beta == T(0) ? 0.0 : double(*beta) * double(c)));
      }
  return 0;
}
inline cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                                int n, int k, const float* al, const float* A, int lda, long long sa,
                                                const float* B, int ldb, long long sb, const float* be, float* C,
                                                int ldc, long long sc, int batch) {
  return emu_gemm(ta, tb, m, n, k, al, A, lda, sa, B, ldb, sb, be, C, ldc, sc, batch);
}
inline cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                                int n, int k, const double* al, const double* A, int lda, long long sa,
                                                const double* B, int ldb, long long sb, const double* be, double* C,
                                                int ldc, long long sc, int batch) {
  return emu_gemm(ta, tb, m, n, k, al, A, lda, sa, B, ldb, sb, be, C, ldc, sc, batch);
}
