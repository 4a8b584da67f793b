// Host emulation of the CUDA runtime subset the flatmin backend uses, for tests/gpu/cuda_emu/run.sh
// only (kernels run on the CPU; device pointers are host pointers). Never part of a build.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#define __global__ static
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
using std::isnan;
using std::max;
using std::min;
struct dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* emu_barrier = nullptr;
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 };
typedef void* cudaStream_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
#define cudaStreamNonBlocking 1
inline const char* cudaGetErrorName(cudaError_t) { return "emuError"; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, int) {
  *s = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline long emu_mallocs = 0;
inline cudaError_t cudaMalloc(void** p, size_t n) {
  ++emu_mallocs;
  *p = std::malloc(n);
  std::memset(*p, 0xA5, n);  // poison: unwritten outputs show up
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* f, size_t* t) {
  *f = *t = 0;
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) {
  std::memset(d, v, n);
  return cudaSuccess;
}
// Kernels here use grid-stride loops, so one block covers any grid; threads of a block run
// one after another (no kernel but the reduce tree synchronizes).
template <class K, class... A> void emu_launch(unsigned, unsigned block, K kernel, A... args) {
  gridDim = {1, 1, 1};
  blockDim = {block, 1, 1};
  blockIdx = {0, 0, 0};
  for (unsigned t = 0; t < block; ++t) {
    threadIdx = {t, 0, 0};
    kernel(args...);
  }
}
template <class K, class... A> void emu_launch_sync(unsigned, unsigned block, K kernel, A... args) {
  gridDim = {1, 1, 1};
  blockDim = {block, 1, 1};
  std::barrier<> bar(block);
  emu_barrier = &bar;
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < block; ++t)
    ts.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      blockIdx = {0, 0, 0};
      kernel(args...);
    });
  for (auto& th : ts) th.join();
}
