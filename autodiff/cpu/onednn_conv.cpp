// float32 convolutions on oneDNN (see onednn_conv.hpp). One primitive per (direction, shape),
// built on first use and kept: building a oneDNN primitive JIT-compiles its kernel (~1 ms),
// running one is what every later call pays. oneDNN threads with OpenMP; each call runs it on
// as many threads as the caller's oneTBB arena allows, so flatmin's thread limit (tools'
// FLATMIN_THREADS, a tbb::global_control, a task_arena) holds for convolutions too.
#include "autodiff/cpu/onednn_conv.hpp"

#include <cstdlib>
#include <cstring>

#include "autodiff/tensor.hpp"

#if FLATMIN_HAVE_ONEDNN
#include <omp.h>
#include <tbb/global_control.h>
#include <tbb/task_arena.h>

#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <unordered_map>

#include "autodiff/cpu/scratch.hpp"
#endif

namespace flatmin::cpu::onednn {

#if !FLATMIN_HAVE_ONEDNN

bool enabled() { return false; }
void forward(const float*, const float*, float*, const kernels::ConvGeometry&) {
  throw Error("conv2d: this build has no oneDNN");
}
void input_grad(const float*, const float*, float*, const kernels::ConvGeometry&) {
  throw Error("conv2d_input_grad: this build has no oneDNN");
}
void weight_grad(const float*, const float*, float*, const kernels::ConvGeometry&) {
  throw Error("conv2d_weight_grad: this build has no oneDNN");
}

#else

bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("FLATMIN_CONV");
    if (!v || !*v || std::strcmp(v, "onednn") == 0) return true;
    if (std::strcmp(v, "native") == 0) return false;
    throw Error(std::string("FLATMIN_CONV must be \"onednn\" or \"native\", got \"") + v + "\"");
  }();
  return on;
}

namespace {
using dnnl::memory;
using Tag = memory::format_tag;
enum class Direction { forward, input_grad, weight_grad };

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

struct Primitive {
  dnnl::primitive run;
  memory::desc scratchpad;
};

// The three primitive descriptors of one shape; the gradients' need the forward one as a hint.
Primitive build(Direction d, const kernels::ConvGeometry& g) {
  const memory::dims xd{g.N, g.C, g.H, g.W}, wd{g.O, g.C, g.KH, g.KW}, yd{g.N, g.O, g.OH, g.OW};
  const memory::dims strides{g.sh, g.sw}, pad{g.ph, g.pw};
  // Padding on the far side: what makes the output extent come out as OH x OW.
  const memory::dims pad_r{(g.OH - 1) * g.sh + g.KH - g.H - g.ph, (g.OW - 1) * g.sw + g.KW - g.W - g.pw};
  const auto f32 = memory::data_type::f32;
  const memory::desc x(xd, f32, Tag::nchw), w(wd, f32, Tag::oihw), y(yd, f32, Tag::nchw);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto algo = dnnl::algorithm::convolution_direct;
  const dnnl::convolution_forward::desc fd(dnnl::prop_kind::forward_training, algo, x, w, y, strides, pad, pad_r);
  const dnnl::convolution_forward::primitive_desc fpd(fd, attr, engine());
  switch (d) {
    case Direction::forward: return {dnnl::convolution_forward(fpd), fpd.scratchpad_desc()};
    case Direction::input_grad: {
      const dnnl::convolution_backward_data::desc bd(algo, x, w, y, strides, pad, pad_r);
      const dnnl::convolution_backward_data::primitive_desc pd(bd, attr, engine(), fpd);
      return {dnnl::convolution_backward_data(pd), pd.scratchpad_desc()};
    }
    case Direction::weight_grad: {
      const dnnl::convolution_backward_weights::desc wdd(algo, x, w, y, strides, pad, pad_r);
      const dnnl::convolution_backward_weights::primitive_desc pd(wdd, attr, engine(), fpd);
      return {dnnl::convolution_backward_weights(pd), pd.scratchpad_desc()};
    }
  }
  throw Error("onednn: unknown direction");
}

const Primitive& primitive(Direction d, const kernels::ConvGeometry& g) {
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t>;
  static std::mutex mutex;
  static std::map<Key, Primitive> cache;  // the shapes of one model: a few dozen entries
  const Key key{int(d), g.N, g.C, g.H, g.W, g.O, g.KH, g.KW, g.OH, g.OW, g.sh, g.sw, g.ph, g.pw};
  std::lock_guard lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, build(d, g)).first;
  return it->second;  // std::map never moves its elements
}

// Runs a primitive on the caller's thread budget with its scratchpad from flatmin's allocator.
void execute(Direction d, const kernels::ConvGeometry& g, std::unordered_map<int, memory> args) {
  const Primitive& p = primitive(d, g);
  const int threads =
      int(std::min<size_t>(size_t(tbb::this_task_arena::max_concurrency()),
                           tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism)));
  if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
  Workspace<std::byte> scratch(p.scratchpad.get_size());
  args.emplace(DNNL_ARG_SCRATCHPAD, memory(p.scratchpad, engine(), scratch.data()));
  dnnl::stream stream(engine());
  p.run.execute(stream, args);
  stream.wait();
}

memory wrap(const memory::dims& dims, Tag tag, const float* p) {
  return memory({dims, memory::data_type::f32, tag}, engine(), const_cast<float*>(p));
}
memory::dims x_dims(const kernels::ConvGeometry& g) { return {g.N, g.C, g.H, g.W}; }
memory::dims w_dims(const kernels::ConvGeometry& g) { return {g.O, g.C, g.KH, g.KW}; }
memory::dims y_dims(const kernels::ConvGeometry& g) { return {g.N, g.O, g.OH, g.OW}; }
}  // namespace

void forward(const float* x, const float* w, float* y, const kernels::ConvGeometry& g) {
  execute(Direction::forward, g,
          {{DNNL_ARG_SRC, wrap(x_dims(g), Tag::nchw, x)},
           {DNNL_ARG_WEIGHTS, wrap(w_dims(g), Tag::oihw, w)},
           {DNNL_ARG_DST, wrap(y_dims(g), Tag::nchw, y)}});
}
void input_grad(const float* gy, const float* w, float* gx, const kernels::ConvGeometry& g) {
  execute(Direction::input_grad, g,
          {{DNNL_ARG_DIFF_DST, wrap(y_dims(g), Tag::nchw, gy)},
           {DNNL_ARG_WEIGHTS, wrap(w_dims(g), Tag::oihw, w)},
           {DNNL_ARG_DIFF_SRC, wrap(x_dims(g), Tag::nchw, gx)}});
}
void weight_grad(const float* x, const float* gy, float* gw, const kernels::ConvGeometry& g) {
  execute(Direction::weight_grad, g,
          {{DNNL_ARG_SRC, wrap(x_dims(g), Tag::nchw, x)},
           {DNNL_ARG_DIFF_DST, wrap(y_dims(g), Tag::nchw, gy)},
           {DNNL_ARG_DIFF_WEIGHTS, wrap(w_dims(g), Tag::oihw, gw)}});
}

#endif

}  // namespace flatmin::cpu::onednn
