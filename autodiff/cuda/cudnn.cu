// Convolutions on cuDNN (its legacy convolution API, which PyTorch's own cuDNN path calls):
// forward, input gradient and weight gradient of float32 and float64 NCHW convolutions.
// Exactness and reproducibility are the backend's, not cuDNN's defaults:
//  - float32 runs with CUDNN_FMA_MATH, so no TF32 (10-bit mantissa) kernels: results stay
//    float32 to rounding, as cuBLAS's and the CPU's;
//  - only algorithms cuDNN marks deterministic are used (no atomics in the weight gradient),
//    so a run repeats bit for bit, as the rest of the backend does;
//  - the algorithm is cuDNN's heuristic choice (reproducible across processes; the auto
//    engine puts cuDNN's Winograd algorithm first for 3x3 stride-1 layers, the heuristic's
//    first choice measured 1.4-7x slower there on an H200), or with
//    FLATMIN_CUDA_CONV=cudnn-benchmark the fastest one timed on the first call of each shape
//    (PyTorch's cudnn.benchmark; the choice may differ between processes).
// Under auto, the gradients of the other convolutions stay on flatmin's own kernels (see
// cuda_entry.hpp): cudnn_convolution says so by returning false.
// bfloat16 (Conv2dParams::bf16, Bf16Convolutions): float32 operands are rounded to bfloat16
// (nearest even) into scratch buffers, cuDNN convolves them on tensor cores with float32
// accumulation, and its bfloat16 output is widened back into the float32 result — PyTorch's
// CUDA autocast for convolutions. cuDNN's legacy API takes bfloat16 operands only with a
// bfloat16 output, so on CUDA the result carries bfloat16 rounding (the CPU's stays float32).
// Every direction runs on cuDNN (flatmin's own kernels have no bfloat16), on cuDNN's
// heuristic choice under auto (or timed under cudnn-benchmark).
// Plans (descriptors and algorithm) are cached per (device, dtype, direction, engine, shape);
// a candidate cuDNN refuses at run time is skipped for the next one.
#include <cudnn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>

#include "autodiff/cuda/cuda_entry.hpp"
#include "autodiff/cuda/kernels.hpp"

namespace flatmin::cuda {

namespace {

constexpr size_t kWorkspaceBudget = size_t(1) << 30;  // bytes of cuDNN workspace a plan may use

void check_dnn(cudnnStatus_t s, const char* op) {
  if (s == CUDNN_STATUS_SUCCESS) return;
  throw Error(std::string("cuda ") + op + ": cuDNN " + cudnnGetErrorString(s) +
              " (FLATMIN_CUDA_CONV=native runs flatmin's own convolution kernels instead)");
}

// One cuDNN handle per device, bound to that device's stream; created on first use.
cudnnHandle_t handle(const Ctx& c) {
  static std::mutex m;
  static std::map<int, cudnnHandle_t> handles;
  std::lock_guard<std::mutex> lock(m);
  auto it = handles.find(c.device);
  if (it != handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  check_dnn(cudnnCreate(&h), "cudnnCreate");
  check_dnn(cudnnSetStream(h, c.stream), "cudnnSetStream");
  handles[c.device] = h;  // kept for the process's life, as the backends are
  return h;
}

// The data cuDNN sees: float32, float64, or float32 rounded to bfloat16.
enum class Data { f32, f64, bf16 };
Data data_of(DType t) {
  if (t == DType::f32) return Data::f32;
  if (t == DType::f64) return Data::f64;
  throw Error("cuda conv2d (cuDNN): float32 or float64 operands expected");
}
const char* data_name(Data d) { return d == Data::f32 ? "f32" : d == Data::f64 ? "f64" : "bf16"; }

// RAII descriptors of one convolution: x [N, C, H, W], w [O, C, KH, KW], y [N, O, OH, OW].
struct Descriptors {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  bool f64;
  Descriptors(const kernels::ConvGeometry& g, Data t) : f64(t == Data::f64) {
    try {
      set(g, t);
    } catch (...) {
      release();  // the destructor does not run for a constructor that throws
      throw;
    }
  }
  ~Descriptors() { release(); }
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;

 private:
  void set(const kernels::ConvGeometry& g, Data t) {
    const cudnnDataType_t d = t == Data::f64   ? CUDNN_DATA_DOUBLE
                              : t == Data::f32 ? CUDNN_DATA_FLOAT
                                               : CUDNN_DATA_BFLOAT16;
    const cudnnDataType_t compute =
        t == Data::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;  // bfloat16 accumulates in float32
    // float32: FMA kernels only (no TF32); bfloat16: tensor cores; float64 has no other kind
    const cudnnMathType_t math = t == Data::f64   ? CUDNN_DEFAULT_MATH
                                 : t == Data::f32 ? CUDNN_FMA_MATH
                                                  : CUDNN_TENSOR_OP_MATH;
    check_dnn(cudnnCreateTensorDescriptor(&x), "cudnnCreateTensorDescriptor");
    check_dnn(cudnnCreateTensorDescriptor(&y), "cudnnCreateTensorDescriptor");
    check_dnn(cudnnCreateFilterDescriptor(&w), "cudnnCreateFilterDescriptor");
    check_dnn(cudnnCreateConvolutionDescriptor(&conv), "cudnnCreateConvolutionDescriptor");
    check_dnn(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, d, int(g.N), int(g.C), int(g.H), int(g.W)),
              "cudnnSetTensor4dDescriptor (x)");
    check_dnn(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, d, int(g.N), int(g.O), int(g.OH), int(g.OW)),
              "cudnnSetTensor4dDescriptor (y)");
    check_dnn(cudnnSetFilter4dDescriptor(w, d, CUDNN_TENSOR_NCHW, int(g.O), int(g.C), int(g.KH), int(g.KW)),
              "cudnnSetFilter4dDescriptor");
    check_dnn(cudnnSetConvolution2dDescriptor(conv, int(g.ph), int(g.pw), int(g.sh), int(g.sw), 1, 1,
                                              CUDNN_CROSS_CORRELATION, compute),
              "cudnnSetConvolution2dDescriptor");
    check_dnn(cudnnSetConvolutionMathType(conv, math), "cudnnSetConvolutionMathType");
  }
  void release() {  // destroying a null descriptor is a no-op
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
};

struct Candidate {
  int algo;
  size_t memory;
};

// The usable candidates of a query's results, in cuDNN's order: succeeded and deterministic
// (their workspace is asked for separately: the heuristics' figure is not exact). float32's
// FMA math is the descriptor's, so a TF32 kernel cannot be picked whatever a result's
// mathType says (the gpu suite's 1e-5 check would see one).
struct Ranked {
  int algo;
  float ms;  // cuDNN's timing (meaningful in benchmark mode only)
};
template <class Perf> std::vector<Ranked> usable(const Perf* p, int n) {
  std::vector<Ranked> out;
  for (int i = 0; i < n; ++i)
    if (p[i].status == CUDNN_STATUS_SUCCESS && p[i].determinism == CUDNN_DETERMINISTIC)
      out.push_back({int(p[i].algo), p[i].time});
  return out;
}

// The three directions' queries and runs behind one interface.
struct Call {
  Direction dir;
  const Ctx& c;
  cudnnHandle_t h;
  const Descriptors& d;
  const void *a, *b;  // forward: x, w; input grad: gy, w; weight grad: x, gy
  void* out;          // y, gx or gw (overwritten)

  std::vector<Ranked> algorithms(bool benchmark) const {
    constexpr int kMax = 16;
    if (dir == Direction::forward) {
      cudnnConvolutionFwdAlgoPerf_t p[kMax];
      int n = 0;
      if (benchmark) {
        Workspace ws(c.backend, kWorkspaceBudget);
        check_dnn(cudnnFindConvolutionForwardAlgorithmEx(h, d.x, a, d.w, b, d.conv, d.y, out, kMax, &n, p, ws.ptr,
                                                         kWorkspaceBudget),
                  "cudnnFindConvolutionForwardAlgorithmEx");
      } else {
        check_dnn(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, kMax, &n, p),
                  "cudnnGetConvolutionForwardAlgorithm_v7");
      }
      return usable(p, n);
    }
    if (dir == Direction::input_grad) {
      cudnnConvolutionBwdDataAlgoPerf_t p[kMax];
      int n = 0;
      if (benchmark) {
        Workspace ws(c.backend, kWorkspaceBudget);
        check_dnn(cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.w, b, d.y, a, d.conv, d.x, out, kMax, &n, p, ws.ptr,
                                                              kWorkspaceBudget),
                  "cudnnFindConvolutionBackwardDataAlgorithmEx");
      } else {
        check_dnn(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x, kMax, &n, p),
                  "cudnnGetConvolutionBackwardDataAlgorithm_v7");
      }
      return usable(p, n);
    }
    cudnnConvolutionBwdFilterAlgoPerf_t p[kMax];
    int n = 0;
    if (benchmark) {
      Workspace ws(c.backend, kWorkspaceBudget);
      check_dnn(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.x, a, d.y, b, d.conv, d.w, out, kMax, &n, p, ws.ptr,
                                                              kWorkspaceBudget),
                "cudnnFindConvolutionBackwardFilterAlgorithmEx");
    } else {
      check_dnn(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.conv, d.w, kMax, &n, p),
                "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
    }
    return usable(p, n);
  }

  // The workspace `algo` needs, or nothing if cuDNN refuses it or it exceeds the budget.
  std::optional<Candidate> with_workspace(int algo) const {
    size_t bytes = 0;
    cudnnStatus_t s;
    if (dir == Direction::forward)
      s = cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, cudnnConvolutionFwdAlgo_t(algo), &bytes);
    else if (dir == Direction::input_grad)
      s = cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w, d.y, d.conv, d.x, cudnnConvolutionBwdDataAlgo_t(algo),
                                                       &bytes);
    else
      s = cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x, d.y, d.conv, d.w,
                                                         cudnnConvolutionBwdFilterAlgo_t(algo), &bytes);
    if (s != CUDNN_STATUS_SUCCESS || bytes > kWorkspaceBudget) return std::nullopt;
    return Candidate{algo, bytes};
  }

  cudnnStatus_t run(const Candidate& k) const {
    Workspace ws(c.backend, k.memory);
    const double one64 = 1, zero64 = 0;
    const float one32 = 1, zero32 = 0;
    const void* one = d.f64 ? static_cast<const void*>(&one64) : &one32;  // scaling factors: double or float
    const void* zero = d.f64 ? static_cast<const void*>(&zero64) : &zero32;
    if (dir == Direction::forward)
      return cudnnConvolutionForward(h, one, d.x, a, d.w, b, d.conv, cudnnConvolutionFwdAlgo_t(k.algo), ws.ptr,
                                     k.memory, zero, d.y, out);
    if (dir == Direction::input_grad)
      return cudnnConvolutionBackwardData(h, one, d.w, b, d.y, a, d.conv, cudnnConvolutionBwdDataAlgo_t(k.algo), ws.ptr,
                                          k.memory, zero, d.x, out);
    return cudnnConvolutionBackwardFilter(h, one, d.x, a, d.y, b, d.conv, cudnnConvolutionBwdFilterAlgo_t(k.algo),
                                          ws.ptr, k.memory, zero, d.w, out);
  }
};

// A shape's descriptors and chosen algorithm, made once (descriptors follow from the key).
// Plans are never removed, so a pointer to one stays valid outside the lock.
struct Plan {
  std::unique_ptr<Descriptors> d;
  Candidate k;
};
using PlanKey = std::tuple<int, int, int, int, std::array<int64_t, 13>>;  // device, data, dir, engine, shape
std::mutex plans_mutex;
std::map<PlanKey, Plan> plans;

const char* direction_name(Direction d) {
  return d == Direction::forward ? "conv2d" : d == Direction::input_grad ? "conv2d_input_grad" : "conv2d_weight_grad";
}

// FLATMIN_CUDNN_LOG=1: one line on stderr per new plan (which algorithm, its workspace, the
// deterministic candidates in cuDNN's order, with cuDNN's times in benchmark mode).
bool log_plans() {
  static const bool on = [] {
    const char* v = std::getenv("FLATMIN_CUDNN_LOG");
    return v && v[0] == '1';
  }();
  return on;
}
void log_plan(Direction dir, const kernels::ConvGeometry& g, Data t, ConvEngine e, const Candidate& k,
              const std::vector<Ranked>& ranked) {
  const bool benchmark = e == ConvEngine::cudnn_benchmark;
  char head[320];
  std::snprintf(head, sizeof head,
                "[flatmin cudnn] %s x[%lld,%lld,%lld,%lld] w[%lld,%lld,%lld,%lld] stride %lld pad %lld %s %s: algo %d "
                "workspace %zu KiB; candidates",
                direction_name(dir), (long long)g.N, (long long)g.C, (long long)g.H, (long long)g.W, (long long)g.O,
                (long long)g.C, (long long)g.KH, (long long)g.KW, (long long)g.sh, (long long)g.ph, data_name(t),
                benchmark                    ? "benchmark"
                : e == ConvEngine::automatic ? "auto"
                                             : "heuristic",
                k.algo, k.memory >> 10);
  std::string line = head;
  for (const Ranked& r : ranked) {
    char item[48];
    if (benchmark)
      std::snprintf(item, sizeof item, " %d:%.4fms", r.algo, double(r.ms));
    else
      std::snprintf(item, sizeof item, " %d", r.algo);
    line += item;
  }
  std::fprintf(stderr, "%s\n", line.c_str());
}

// Throws rather than falling back: a shape for which no deterministic algorithm runs is
// reported by name (FLATMIN_CUDA_CONV=native is the way around it).
void cudnn_conv(const Ctx& c, ConvEngine e, Direction dir, const kernels::ConvGeometry& g, Data t, const void* a,
                const void* b, void* out) {
  const cudnnHandle_t h = handle(c);
  const PlanKey key{
      c.device, int(t), int(dir), int(e), {g.N, g.C, g.H, g.W, g.O, g.KH, g.KW, g.OH, g.OW, g.sh, g.sw, g.ph, g.pw}};
  const Plan* known = nullptr;
  {
    std::lock_guard<std::mutex> lock(plans_mutex);
    auto it = plans.find(key);
    if (it != plans.end()) known = &it->second;
  }
  if (known) {
    check_dnn(Call{dir, c, h, *known->d, a, b, out}.run(known->k), direction_name(dir));
    return;
  }
  auto d = std::make_unique<Descriptors>(g, t);
  const Call call{dir, c, h, *d, a, b, out};
  // The first candidate that runs becomes the plan; a refusal (cuDNN 9 has many NOT_SUPPORTED
  // and BAD_PARAM sub-codes) moves on to the next, and the first refusal is reported if none runs.
  std::optional<cudnnStatus_t> first;
  const bool benchmark = e == ConvEngine::cudnn_benchmark;
  std::vector<Ranked> ranked = call.algorithms(benchmark);
  if (e == ConvEngine::automatic && g.winograd()) {  // cuDNN's Winograd algorithm first where it is a candidate
    const int wino = dir == Direction::forward      ? int(CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED)
                     : dir == Direction::input_grad ? int(CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED)
                                                    : int(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED);
    std::stable_partition(ranked.begin(), ranked.end(), [&](const Ranked& r) { return r.algo == wino; });
  }
  for (const Ranked& r : ranked) {
    const std::optional<Candidate> k = call.with_workspace(r.algo);
    if (!k) continue;
    const cudnnStatus_t s = call.run(*k);
    if (s == CUDNN_STATUS_SUCCESS) {
      if (log_plans()) log_plan(dir, g, t, e, *k, ranked);
      std::lock_guard<std::mutex> lock(plans_mutex);
      plans.emplace(key, Plan{std::move(d), *k});
      return;
    }
    if (!first) first = s;
  }
  check_dnn(
      first.value_or(CUDNN_STATUS_NOT_SUPPORTED),
      (std::string(direction_name(dir)) + ": no deterministic algorithm within the workspace budget ran").c_str());
}

const void* device_ptr(const Tensor& t) {
  return t.dtype() == DType::f32 ? static_cast<const void*>(data_ptr<float>(t)) : data_ptr<double>(t);
}

// float32 -> bfloat16, round to nearest even (as the CPU's oneDNN reorder; NaN stays NaN).
__global__ void to_bf16_kernel(const float* x, uint16_t* y, int64_t n) {
  FM_GRID_LOOP(i, n) {
    const uint32_t u = __float_as_uint(x[i]);
    y[i] = (u & 0x7fffffffu) > 0x7f800000u ? uint16_t((u >> 16) | 0x40u)
                                           : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}
__global__ void from_bf16_kernel(const uint16_t* x, float* y, int64_t n) {
  FM_GRID_LOOP(i, n) y[i] = __uint_as_float(uint32_t(x[i]) << 16);
}

// A float32 tensor rounded to bfloat16 in a scratch buffer.
struct Bf16Copy : Workspace {
  Bf16Copy(const Ctx& c, int64_t n) : Workspace(c.backend, size_t(n) * 2) {}
  uint16_t* data() const { return static_cast<uint16_t*>(ptr); }
};
void round_into(const Ctx& c, const Tensor& t, const Bf16Copy& out) {
  const int64_t n = t.numel();
  to_bf16_kernel<<<grid_for(n), kThreads, 0, c.stream>>>(data_ptr<float>(t), out.data(), n);
  after_launch(c, "conv2d (round to bfloat16)");
}

}  // namespace

bool cudnn_convolution(const Ctx& c, Direction dir, const kernels::ConvGeometry& g, const Tensor& a, const Tensor& b,
                       Tensor& out, bool bf16) {
  const ConvEngine e = conv_engine();
  // cuDNN's 4-d descriptors take int extents; larger tensors run flatmin's own kernels.
  constexpr int64_t kIntMax = 2147483647;
  const bool int_extents = a.numel() <= kIntMax && b.numel() <= kIntMax && out.numel() <= kIntMax;
  if (bf16) {  // only cuDNN has bfloat16 kernels: every direction, every shape, or a named error
    if (e == ConvEngine::native || g.channels_last || !int_extents)
      throw Error(std::string(direction_name(dir)) + ": bfloat16 convolutions on CUDA run on cuDNN only, " +
                  (e == ConvEngine::native ? "and FLATMIN_CUDA_CONV=native selects flatmin's own kernels"
                                           : "which takes extents up to 2^31 - 1 (and NCHW)"));
    const Bf16Copy a16(c, a.numel()), b16(c, b.numel()), out16(c, out.numel());
    round_into(c, a, a16);
    round_into(c, b, b16);
    cudnn_conv(c, e == ConvEngine::automatic ? ConvEngine::cudnn : e, dir, g, Data::bf16, a16.data(), b16.data(),
               out16.data());
    const int64_t n = out.numel();
    from_bf16_kernel<<<grid_for(n), kThreads, 0, c.stream>>>(out16.data(), data_ptr<float>(out), n);
    after_launch(c, direction_name(dir));
    return true;
  }
  if (e == ConvEngine::native || g.channels_last || !int_extents) return false;
  if (e == ConvEngine::automatic && dir != Direction::forward && !g.winograd()) return false;
  cudnn_conv(c, e, dir, g, data_of(out.dtype()), device_ptr(a), device_ptr(b), const_cast<void*>(device_ptr(out)));
  after_launch(c, direction_name(dir));
  return true;
}

}  // namespace flatmin::cuda
