// float32 convolutions and GEMM on oneDNN (see onednn.hpp). One primitive per (direction, shape),
// built on first use and kept: building a oneDNN primitive JIT-compiles its kernel (~1 ms),
// running one is what every later call pays. oneDNN is called single-threaded on chunks of
// the batch that run in parallel on oneTBB (see chunk_count), so flatmin's thread limit
// (FLATMIN_THREADS, a tbb::global_control, a task_arena) holds for convolutions too.
#include "autodiff/cpu/onednn.hpp"

#include <cstdlib>
#include <cstring>

#include "autodiff/tensor.hpp"

#if FLATMIN_HAVE_ONEDNN
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "autodiff/cpu/cpu_kernels.hpp"
#include "autodiff/cpu/scratch.hpp"
#endif

namespace flatmin::cpu::onednn {

#if !FLATMIN_HAVE_ONEDNN

bool enabled() { return false; }
std::string bf16_unavailable() { return "they run on oneDNN, and this build has no oneDNN"; }
void forward(const float*, const float*, float*, const kernels::ConvGeometry&, bool) {
  throw Error("conv2d: this build has no oneDNN");
}
void input_grad(const float*, const float*, float*, const kernels::ConvGeometry&, bool) {
  throw Error("conv2d_input_grad: this build has no oneDNN");
}
void weight_grad(const float*, const float*, float*, const kernels::ConvGeometry&, bool) {
  throw Error("conv2d_weight_grad: this build has no oneDNN");
}
void set_column_budget(int64_t) {}
bool winograd_used(Direction, const kernels::ConvGeometry&, bool) { return false; }
bool native_kernels_instead(Direction, const kernels::ConvGeometry&, bool) { return false; }
void set_winograd(bool) {}
int weight_reorder_slabs(Direction, const kernels::ConvGeometry&, bool) { return 0; }
void set_weight_slabs(bool) {}
std::string kernel_name(Direction, const kernels::ConvGeometry&, bool) {
  throw Error("conv2d: this build has no oneDNN");
}
void sgemm(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
           int64_t) {
  throw Error("gemm: this build has no oneDNN");
}

#else

namespace {
enum class Setting { onednn, onednn_direct, native };
Setting setting() {
  static const Setting s = [] {
    const char* v = std::getenv("FLATMIN_CONV");
    if (!v || !*v || std::strcmp(v, "onednn") == 0) return Setting::onednn;
    if (std::strcmp(v, "onednn-direct") == 0) return Setting::onednn_direct;
    if (std::strcmp(v, "native") == 0) return Setting::native;
    throw Error(std::string("FLATMIN_CONV must be \"onednn\", \"onednn-direct\" or \"native\", got \"") + v + "\"");
  }();
  return s;
}
std::atomic<bool>& winograd_on() {
  static std::atomic<bool> on{setting() == Setting::onednn};
  return on;
}
std::atomic<bool> weight_slabs_on{true};
}  // namespace

bool enabled() { return setting() != Setting::native; }
void set_winograd(bool on) { winograd_on() = on; }

namespace {
using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// A part of a reorder: the same reorder on a slab of whole blocks of one dimension.
struct Slab {
  dnnl::primitive reorder;
  memory::desc from, to;  // sub-memory descriptors: the slab's place in the whole tensors
};
// One argument of a primitive: its user layout (plain nchw or nhwc / oihw) and the primitive's own
// (blocked, chosen by oneDNN for this shape and machine), with the reorder between them.
struct Arg {
  int id;
  bool output;
  memory::desc user, own;
  dnnl::primitive reorder;  // user -> own for inputs, own -> user for outputs; empty if equal
  std::vector<Slab> slabs;  // the weights' reorder in parts to run in parallel; empty: run it whole
};
// What one single-threaded call of a primitive needs besides its buffers: a stream, and the
// dnnl::memory objects of its arguments (in the user's and in the primitive's layout) and
// scratchpad, in the argument maps of the primitive and of the reorders. Creating a
// dnnl::memory costs a heap allocation, and a convolution runs up to 8 such calls; so these
// are built once and pointed at each call's buffers (set_data_handle).
struct CallState {
  dnnl::stream stream;
  std::vector<memory> user, own;  // in the order of Primitive::args
  memory scratchpad;
  std::unordered_map<int, memory> run_args;
  std::vector<std::unordered_map<int, memory> > reorder_args;  // per argument; empty without a reorder
};
// The call states of one primitive that no call is using (at most one per thread that ran it).
struct CallStates {
  std::mutex mutex;
  std::vector<std::unique_ptr<CallState> > idle;
};
struct Primitive {
  dnnl::primitive run;
  memory::desc scratchpad;
  std::vector<Arg> args;
  std::string name;  // oneDNN's name of the kernel ("jit_wino_4x3:avx512_core", ...)
  std::unique_ptr<CallStates> states = std::make_unique<CallStates>();
};

// The weights of the forward and the input gradient are reordered once per call, before the
// chunks, and that reorder ran single-threaded: on an AMD EPYC Zen 5 ~25 ms of a ~200 ms
// bfloat16 channels-last step at batch 32 (DNNL_VERBOSE; 1.4-6 ms for one 512x512x3x3 layer,
// float32 read and rounded into oneDNN's blocked bfloat16 layout), ~30 of a ~280 ms float32 one. So
// it is split into up to 4 slabs of whole blocks along the blocked layout's outermost
// dimension, reordered in parallel. A reorder copies or rounds each value on its own, so the
// split changes no bit. Not split: layouts oneDNN does not describe by blocks (Winograd's),
// weights under 1 MiB (as float32), and a slab whose reorder oneDNN would run as reference code.
std::vector<Slab> slabs_of(const memory::desc& user, const memory::desc& own) {
  const dnnl_memory_desc_t& d = own.data;
  if (d.format_kind != dnnl_blocked || user.get_size() < (size_t(1) << 20)) return {};
  const dnnl_blocking_desc_t& b = d.format_desc.blocking;
  int outer = 0;
  for (int i = 1; i < d.ndims; ++i)
    if (b.strides[i] > b.strides[outer]) outer = i;
  memory::dim block = 1;
  for (int k = 0; k < b.inner_nblks; ++k)
    if (b.inner_idxs[k] == outer) block *= b.inner_blks[k];
  if (d.dims[outer] != d.padded_dims[outer] || d.dims[outer] % block != 0) return {};
  const memory::dim blocks = d.dims[outer] / block, parts = std::min<memory::dim>(4, blocks);
  if (parts < 2) return {};
  std::vector<Slab> slabs;
  try {
    for (memory::dim s = 0; s < parts; ++s) {
      const memory::dim b0 = blocks * s / parts, b1 = blocks * (s + 1) / parts;
      memory::dims dims(d.dims, d.dims + d.ndims), offsets(size_t(d.ndims), 0);
      dims[outer] = (b1 - b0) * block;
      offsets[outer] = b0 * block;
      const memory::desc from = user.submemory_desc(dims, offsets), to = own.submemory_desc(dims, offsets);
      const dnnl::reorder::primitive_desc pd(memory(from, engine(), nullptr), memory(to, engine(), nullptr));
      if (std::string(pd.impl_info_str()).rfind("jit", 0) != 0) return {};
      slabs.push_back({dnnl::reorder(pd), from, to});
    }
  } catch (const dnnl::error&) {
    return {};
  }
  return slabs;
}

// Each argument's layout is left to oneDNN ("any"): its fast kernels want channel-blocked
// activations and weights, and a reorder costs a few percent of the convolution (0.4 ms for
// 8 MB at 2 threads, against ~10 ms for the convolution that reads it).
template <class PD> Primitive with_args(dnnl::primitive run, const PD& pd, std::vector<std::pair<int, bool> > ids,
                                        const std::vector<memory::desc>& users) {
  // oneDNN falls back to plain reference loops ("ref:any") where no JIT kernel fits: for
  // bfloat16 (no AVX-512 on this CPU) that would be silently ~100x slower, so refuse it.
  const std::string impl = pd.impl_info_str();
  if (impl.rfind("ref", 0) == 0 &&
      pd.query_md(dnnl::query::exec_arg_md, ids[0].first).data_type() == memory::data_type::bf16)
    throw Error("bfloat16 convolutions: oneDNN has no fast bfloat16 kernel on this CPU (only \"" + impl + "\")");
  Primitive p{std::move(run), pd.scratchpad_desc(), {}, impl};
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto [id, output] = ids[i];
    const memory::desc own = pd.query_md(dnnl::query::exec_arg_md, id);
    Arg a{id, output, users[i], own, {}};
    if (own != users[i]) {
      const memory from(output ? own : users[i], engine(), nullptr), to(output ? users[i] : own, engine(), nullptr);
      a.reorder = dnnl::reorder(dnnl::reorder::primitive_desc(from, to));
      if (id == DNNL_ARG_WEIGHTS && !output) a.slabs = slabs_of(a.user, a.own);
    }
    p.args.push_back(std::move(a));
  }
  return p;
}

// The layout oneDNN works in for a direction's activations. Channels-last ones are used as
// they are (its nhwc kernels read them without a reorder). For NCHW ones oneDNN's preferred
// layout ("any") is channel-blocked by 16, which pads fewer than 16 channels with zeros that
// the kernel then computes on: where the input has fewer than 16 channels, the gradients run
// faster on nhwc copies, reorders included (single-threaded, per image: the input gradient of
// the main job's 8-channel 3x3 layers 13 us instead of 32, its 8 -> 16 stride-2 layer 8.5
// instead of 11, the weight gradient of that layer 5 instead of 7.4). Not the forward (its
// blocked kernel reads few-channel NCHW inputs directly: 15 us against 18), nor the weight
// gradient with fewer than 16 output channels too (oneDNN blocks both by 8 there: 13 against
// 14) or with 1-3 input channels (read as they are; the CIFAR stem 3 -> 64: 43 us against 52).
Tag working_layout(Direction d, const kernels::ConvGeometry& g, bool bf16) {
  if (g.channels_last) return Tag::nhwc;
  const bool few = !bf16 && g.C < 16;
  const bool nhwc = few && (d == Direction::input_grad || (d == Direction::weight_grad && g.C >= 4 && g.O >= 16));
  return nhwc ? Tag::nhwc : Tag::any;
}

// wino: oneDNN's Winograd F(4x4,3x3) kernels (the caller has checked winograd_used), else its
// direct ones; act: the activations' layout inside oneDNN.
Primitive build_in(Direction d, const kernels::ConvGeometry& g, bool bf16, bool wino, Tag act) {
  const memory::dims xd{g.N, g.C, g.H, g.W}, wd{g.O, g.C, g.KH, g.KW}, yd{g.N, g.O, g.OH, g.OW};
  const memory::dims strides{g.sh, g.sw}, pad{g.ph, g.pw};
  // Padding on the far side: what makes the output extent come out as OH x OW.
  const memory::dims pad_r{(g.OH - 1) * g.sh + g.KH - g.H - g.ph, (g.OW - 1) * g.sw + g.KW - g.W - g.pw};
  const auto f32 = memory::data_type::f32;
  const Tag user_act = g.channels_last ? Tag::nhwc : Tag::nchw;
  const memory::desc x(xd, f32, user_act), w(wd, f32, Tag::oihw), y(yd, f32, user_act);
  // Each direction reads two operands (in bf16 mode rounded to bfloat16 by the reorder into
  // oneDNN's layout) and writes one, always float32. The gradients' primitives take the
  // forward one as a hint of the layouts to use.
  const auto in = bf16 ? memory::data_type::bf16 : f32;
  const memory::desc xa(xd, d == Direction::input_grad ? f32 : in, act),
      wa(wd, d == Direction::weight_grad ? f32 : in, Tag::any), ya(yd, d == Direction::forward ? f32 : in, act);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto algo = wino ? dnnl::algorithm::convolution_winograd : dnnl::algorithm::convolution_direct;
  const dnnl::convolution_forward::desc fd(dnnl::prop_kind::forward_training, algo, memory::desc(xd, in, act),
                                           memory::desc(wd, in, Tag::any), memory::desc(yd, f32, act), strides, pad,
                                           pad_r);
  const dnnl::convolution_forward::primitive_desc fpd(fd, attr, engine());
  switch (d) {
    case Direction::forward:
      return with_args(dnnl::convolution_forward(fpd), fpd,
                       {{DNNL_ARG_SRC, false}, {DNNL_ARG_WEIGHTS, false}, {DNNL_ARG_DST, true}}, {x, w, y});
    case Direction::input_grad: {
      const dnnl::convolution_backward_data::desc bd(algo, xa, wa, ya, strides, pad, pad_r);
      const dnnl::convolution_backward_data::primitive_desc pd(bd, attr, engine(), fpd);
      return with_args(dnnl::convolution_backward_data(pd), pd,
                       {{DNNL_ARG_DIFF_DST, false}, {DNNL_ARG_WEIGHTS, false}, {DNNL_ARG_DIFF_SRC, true}}, {y, w, x});
    }
    case Direction::weight_grad: {
      const dnnl::convolution_backward_weights::desc wdd(algo, xa, wa, ya, strides, pad, pad_r);
      const dnnl::convolution_backward_weights::primitive_desc pd(wdd, attr, engine(), fpd);
      return with_args(dnnl::convolution_backward_weights(pd), pd,
                       {{DNNL_ARG_SRC, false}, {DNNL_ARG_DIFF_DST, false}, {DNNL_ARG_DIFF_WEIGHTS, true}}, {x, y, w});
    }
  }
  throw Error("onednn: unknown direction");
}

Primitive build(Direction d, const kernels::ConvGeometry& g, bool bf16, bool wino) {
  // Winograd's kernels take only channel-blocked activations ("any" lets oneDNN pick them; a
  // channels-last tensor is reordered into them like the weights).
  const Tag act = wino ? Tag::any : working_layout(d, g, bf16);
  Primitive p = build_in(d, g, bf16, wino, act);
  // oneDNN 2.6's jit_1x1 kernels copy a strided 1x1 convolution's input (gradient) to a unit-
  // stride workspace, and on nhwc activations whose channel count is not a multiple of their
  // channel block (8 on AVX2, 16 on AVX-512) write past that workspace: a corrupted heap or
  // wrong gradients (uxlfoundation/oneDNN#6035; seen on AVX2 with a width-4 ResNet's 4 -> 8
  // downsample). Such layers run on blocked copies instead, which it pads to whole blocks.
  const bool strided_1x1 = g.KH == 1 && g.KW == 1 && (g.sh > 1 || g.sw > 1);
  if (act == Tag::nhwc && strided_1x1 && g.C % 16 != 0 && p.name.rfind("jit_1x1", 0) == 0)
    return build_in(d, g, bf16, wino, Tag::any);
  return p;
}

// The primitive of `key`, built by `make` on first use and kept (a model has a few dozen shapes).
template <class Key, class Make> const Primitive& cached(const Key& key, Make&& make) {
  static std::mutex mutex;
  static std::map<Key, Primitive> cache;
  std::lock_guard lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make()).first;
  return it->second;  // std::map never moves its elements
}

const Primitive& primitive(Direction d, const kernels::ConvGeometry& g, bool bf16, bool wino) {
  using Key = std::tuple<int, bool, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t, int64_t>;
  const Key key{int(d), bf16, wino, g.channels_last, g.N, g.C, g.H, g.W, g.O, g.KH, g.KW, g.OH, g.OW, g.sh,
                g.sw,   g.ph, g.pw};
  return cached(key, [&] {
    try {
      try {
        return build(d, g, bf16, wino);
      } catch (const dnnl::error&) {
        if (!wino) throw;
        return build(d, g, bf16, false);  // no Winograd kernel for this one shape: the direct ones
      }
    } catch (const dnnl::error& e) {
      throw Error(std::string("conv2d: oneDNN cannot run this convolution") + (bf16 ? " in bfloat16" : "") + ": " +
                  e.what());
    }
  });
}

// oneDNN runs single-threaded on every thread that calls it. It fixes a primitive's thread
// split when the primitive is created (from omp_get_max_threads() then) and runs that many
// OpenMP threads on every call, whatever the setting at the call: one created on a thread
// still at the default ran a 2-thread OpenMP team on each call (the 1-channel stem of the
// main job's model: 16 ms instead of 0.6 ms, its second thread spinning against oneTBB's).
// So this comes first in every entry point, before any primitive is looked up or built.
void serial_openmp() {
  if (omp_get_max_threads() != 1) omp_set_num_threads(1);  // per thread, so checked on each
}

std::unique_ptr<CallState> new_call_state(const Primitive& p) {
  auto c = std::make_unique<CallState>(
      CallState{dnnl::stream(engine()), {}, {}, memory(p.scratchpad, engine(), nullptr), {}, {}});
  c->run_args.emplace(DNNL_ARG_SCRATCHPAD, c->scratchpad);
  for (const Arg& a : p.args) {
    c->user.emplace_back(a.user, engine(), nullptr);
    c->own.emplace_back(a.own, engine(), nullptr);
    c->run_args.emplace(a.id, a.reorder ? c->own.back() : c->user.back());
    c->reorder_args.emplace_back();
    if (a.reorder)
      c->reorder_args.back() = {{DNNL_ARG_FROM, a.output ? c->own.back() : c->user.back()},
                                {DNNL_ARG_TO, a.output ? c->user.back() : c->own.back()}};
  }
  return c;
}

// Runs one primitive on one thread; its scratchpad and the arguments' copies in the
// primitive's own layouts come from flatmin's allocator (block cache, peak-memory bound).
// `user` holds the three arguments' pointers in the order of Primitive::args.
// `shared`: argument 1 (the weights, for the forward and the input gradient) already in the
// primitive's own layout, converted once for all chunks; null to convert it here.
void run_one(const Primitive& p, const std::array<void*, 3>& user, const void* shared = nullptr) {
  serial_openmp();  // this thread may be a oneTBB worker that has not called oneDNN yet
  std::unique_ptr<CallState> c;
  {
    std::lock_guard lock(p.states->mutex);
    if (!p.states->idle.empty()) {
      c = std::move(p.states->idle.back());
      p.states->idle.pop_back();
    }
  }
  if (!c) c = new_call_state(p);
  std::deque<Workspace<std::byte> > buffers;  // not movable; a deque never moves its elements
  buffers.emplace_back(p.scratchpad.get_size());
  c->scratchpad.set_data_handle(buffers[0].data());
  for (size_t i = 0; i < p.args.size(); ++i) {
    const Arg& a = p.args[i];
    c->user[i].set_data_handle(user[i]);
    if (!a.reorder) continue;
    if (i == 1 && shared) {
      c->own[i].set_data_handle(const_cast<void*>(shared));
      continue;
    }
    buffers.emplace_back(a.own.get_size());
    c->own[i].set_data_handle(buffers.back().data());
    if (!a.output) a.reorder.execute(c->stream, c->reorder_args[i]);
  }
  p.run.execute(c->stream, c->run_args);
  for (size_t i = 0; i < p.args.size(); ++i)
    if (p.args[i].output && p.args[i].reorder) p.args[i].reorder.execute(c->stream, c->reorder_args[i]);
  c->stream.wait();
  std::lock_guard lock(p.states->mutex);  // back for the next call (not on an exception: a fresh one then)
  p.states->idle.push_back(std::move(c));
}

// ---- Winograd F(4x4,3x3) ----
// oneDNN 2.6 has Winograd kernels for float32 3x3 stride-1 convolutions on AVX-512
// (jit_wino_4x3:avx512_core, all three directions): each 4x4 output tile costs 36 products per
// channel pair instead of 144. `FLATMIN_CONV=onednn-direct|onednn build/bench/conv_bench --batch B
// --reps 3` (NCHW, 2 threads, ms per layer, forward / input gradient / weight gradient,
// 2026-11-30 23:00 UTC, two alternating pairs), direct -> Winograd at batch 128:
//   64 ch 32x32 31.4/35.4/38.0 -> 19.0/19.3/19.8; 128 ch 16x16 29.3/29.4/32.3 -> 17.3/16.0/16.7;
//   256 ch 8x8 26.4/26.6/34.9 -> 14.4/14.0/14.9; 512 ch 4x4 29.1/24.8/45.5 -> 19.1/18.4/(direct);
//   the 20 convolutions 1.52-1.64 s -> 1.00-1.01 s; at batch 32 0.39-0.43 s -> 0.30-0.31 s.
// It loses where a call has few tiles (a tile's transforms and the 36 small products do not
// amortize): so at least 128 tiles over the batch (512 ch 4x4 at batch 32, 32 tiles in 2 chunks:
// 10.2/10.4/47.9 against 8.9/7.9/13.2 direct), and the weight gradient also at least 4 tiles
// per image (on 4x4 planes it was level or slower at any batch); and on few channels:
// `flatmin escape`'s width-8 model (batch 64, 1x28x28) ran 16 ch 14x14 at 0.40 ms against 0.22
// direct and 32 ch 7x7 at 0.26 against 0.19, so at least 64 channels each way. Its float32
// rounding error is larger than the direct kernels' (rms relative to float64 ~1e-6 against
// ~2e-7 on these layers, the forward and input gradient; the weight gradient's is level).
int64_t tiles_per_image(const kernels::ConvGeometry& g) { return ((g.OH + 3) / 4) * ((g.OW + 3) / 4); }

// Whether oneDNN has Winograd kernels on this CPU (it has them for AVX-512 only): asked once.
bool winograd_available() {
  static const bool available = [] {
    const memory::dims x{2, 64, 8, 8}, w{64, 64, 3, 3};
    const auto f32 = memory::data_type::f32;
    try {
      const dnnl::convolution_forward::desc fd(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_winograd,
                                               memory::desc(x, f32, Tag::any), memory::desc(w, f32, Tag::any),
                                               memory::desc(x, f32, Tag::any), {1, 1}, {1, 1}, {1, 1});
      dnnl::convolution_forward::primitive_desc(fd, engine());
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return available;
}

bool winograd_shape(Direction d, const kernels::ConvGeometry& g, bool bf16) {
  const int64_t tiles = tiles_per_image(g);
  return !bf16 && g.KH == 3 && g.KW == 3 && g.sh == 1 && g.sw == 1 && g.ph <= 1 && g.pw <= 1 && g.C >= 64 &&
         g.O >= 64 && g.N * tiles >= 128 && (d != Direction::weight_grad || tiles >= 4);
}

// The batch runs as a number of chunks fixed by the shape (never by the thread count), each
// a single-threaded oneDNN call, the chunks in parallel on oneTBB: results never depend on
// the thread count, and no OpenMP team waits at a barrier for a thread the OS descheduled
// (with oneDNN's own OpenMP threads a width-8 ResNet step ran 4x slower on a busy machine).
// A chunk's work counts its arithmetic and its activations' bytes (read, written and
// reordered): the 1-channel stem and the 1x1 downsamples of the main job's model do ~2-7
// MFLOP but move 1-2 MB, and ran as a single chunk on one core for 0.1-0.4 ms. Chunks keep
// at least ~40 us of work each; the forward and the input gradient use at most 8, the weight
// gradient at most 2: its chunks' partial sums cost one more pass over the weights each
// (added in chunk order afterwards), and on 2 cores 2 chunks keep both busy.
// Winograd's kernels want larger calls: ~256 tiles per chunk (at batch 128, 256 ch 8x8 in 2
// chunks ran 14.6 ms, in 8 chunks of 64 tiles 18.3), but at least 2 chunks.
int64_t chunk_count(Direction d, const kernels::ConvGeometry& g, bool wino) {
  const int64_t most = d == Direction::weight_grad ? 2 : 8;
  if (wino) return std::clamp<int64_t>(g.N * tiles_per_image(g) / 256, std::min<int64_t>(2, g.N), most);
  const double flops = 2.0 * double(g.O) * double(g.P()) * double(g.K()) * double(g.N);
  const double bytes = 4.0 * double(g.N) * double(g.C * g.HW() + g.O * g.P());
  // Single-threaded on this session's Xeon: ~165 GFLOP/s in a 3x3 kernel, 5-10 GB/s where
  // the bytes dominate; so a byte weighs ~24 flops, and a chunk of 8M such units is ~40 us.
  const double work = flops + 24 * bytes;
  return std::clamp<int64_t>(std::min<int64_t>(int64_t(work / 8e6), most), 1, g.N);
}

// ---- bfloat16 weight gradient on small planes as one GEMM ----
// oneDNN 2.6's bfloat16 backward-weights convolution (jit:avx512_core_amx_bf16) is fast on
// large planes but not on small ones: single-threaded, per 16 images of ResNet-18 (CIFAR),
// 575 GFLOP/s on the 32x32 layers, 110-330 on 16x16 to 4x4, 45-60 on the stride-2 and 1x1
// layers. Its matmul (brg:avx512_core_amx_bf16) runs dW = dY^T col at 330-720 GFLOP/s on the
// same shapes. So on output planes of at most 8x8 (16x16 for 1x1 kernels; a 3x3 layer on 16x16
// lost, 6 ms -> 10 ms at batch 32, its patches being 9x its input):
// dW[O, KH·KW·C] = dY^T [O, N·P] · col [N·P, KH·KW·C],
// where col holds the patches of x and dY^T is the channels-last gradient [N·P, O] as it is
// (NCHW: copied image by image into [O, N·P]), both rounded to bfloat16 (round to nearest
// even) on their way in. Each call sees the whole batch and writes its own rows of dW, so no
// partial sums; the row split and the image groups (below) depend on the shape only, so
// results do not depend on the thread count.
bool gemm_weight_grad(const kernels::ConvGeometry& g, bool bf16) {
  // NCHW: only 4x4 planes (oneDNN's blocked-layout kernel holds its own on 8x8 ones, and the
  // images' transposition to channels-last costs more where the plane is larger).
  const int64_t most = !g.channels_last ? 16 : g.KH * g.KW == 1 ? 256 : 64;
  return bf16 && g.P() <= most && g.C >= 16 && g.O >= 64;
}

int64_t column_budget = int64_t(32) << 20;

uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays (quiet) NaN
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
void to_bf16(const float* from, uint16_t* to, int64_t n) {
  for (int64_t i = 0; i < n; ++i) to[i] = bf16_bits(from[i]);
}

// c[m, n] (+)= a[m, k] b[k, n]: a bfloat16 with strides sa (rows, columns; a slice of dY^T),
// b bfloat16 row-major, c float32 row-major; `accumulate` adds to c (later image groups).
const Primitive& gemm(int64_t m, int64_t k, int64_t n, std::array<int64_t, 2> sa, bool accumulate) {
  return cached(std::tuple{m, k, n, sa, accumulate}, [&] {
    const auto bf = memory::data_type::bf16;
    const memory::desc a({m, k}, bf, memory::dims{sa[0], sa[1]}), b({k, n}, bf, Tag::ab),
        c({m, n}, memory::data_type::f32, Tag::ab);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (accumulate) {
      dnnl::post_ops sum;
      sum.append_sum(1.f);
      attr.set_post_ops(sum);
    }
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine());
    Primitive p = with_args(dnnl::matmul(pd), pd,
                            {{DNNL_ARG_SRC, false}, {DNNL_ARG_WEIGHTS, false}, {DNNL_ARG_DST, true}}, {a, b, c});
    if (p.args[2].reorder) throw Error("conv2d_weight_grad: oneDNN's matmul wants its own output layout");
    return p;
  });
}

// Rows of col for images [n0, n0 + count) of a channels-last x: row (n, oh, ow) holds x's
// values under the kernel, ordered (kh, kw, c) so that each tap is one contiguous run of C.
void fill_columns(const float* x, uint16_t* col, int64_t n0, int64_t count, const kernels::ConvGeometry& g) {
  const int64_t cols = g.K();
  for (int64_t n = n0; n < n0 + count; ++n)
    for (int64_t oh = 0; oh < g.OH; ++oh)
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        uint16_t* row = col + ((n - n0) * g.P() + oh * g.OW + ow) * cols;
        for (int64_t kh = 0; kh < g.KH; ++kh)
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const int64_t ih = oh * g.sh - g.ph + kh, iw = ow * g.sw - g.pw + kw;
            uint16_t* to = row + (kh * g.KW + kw) * g.C;
            if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W)
              std::fill(to, to + g.C, uint16_t(0));
            else
              to_bf16(x + ((n * g.H + ih) * g.W + iw) * g.C, to, g.C);
          }
      }
}

void weight_grad_gemm(const float* x, const float* gy, float* gw, const kernels::ConvGeometry& g) {
  serial_openmp();
  const int64_t P = g.P(), taps = g.KH * g.KW, cols = g.K();
  // Images in groups whose column matrix stays within the budget (b128 on 16x16 planes
  // would need 75 MB at once); the groups run in order, each adding to dW.
  const int64_t per_image = P * cols * int64_t(sizeof(uint16_t));
  const int64_t groups = std::clamp<int64_t>((g.N * per_image + column_budget - 1) / column_budget, 1, g.N);
  const int64_t group_images = (g.N + groups - 1) / groups;
  // dW's rows in up to 4 parts of at least 128 rows (multiples of 16, AMX's tile height):
  // single-threaded at batch 32, the 8x8 layer's rows ran at 365 GFLOP/s in parts of 64,
  // 505 in parts of 128, 595 whole.
  const int64_t parts = std::clamp<int64_t>(g.O / 128, 1, 4);
  auto first_row = [&](int64_t p) { return p == parts ? g.O : g.O * p / parts / 16 * 16; };
  Workspace<uint16_t> col(size_t(group_images * P * cols)), dy(size_t(group_images * P * g.O));
  // NCHW: each image of x transposed to [H, W, C] first (a per-element gather of the patches
  // from NCHW ran 2-4x slower than the GEMM itself on 8x8 planes).
  kernels::ConvGeometry image = g;
  image.N = 1;
  image.channels_last = true;
  const int64_t x_image = g.C * g.H * g.W;
  Scratch<float> hwc(size_t(g.channels_last ? 1 : x_image));
  // Taps-major rows [O, KH·KW, C], transposed into gw's [O, C, KH, KW] at the end (1x1: none).
  const bool transpose = taps > 1;
  Workspace<float> by_tap(transpose ? size_t(g.O * cols) : 1);
  float* out = transpose ? by_tap.data() : gw;
  for (int64_t n0 = 0; n0 < g.N; n0 += group_images) {
    const int64_t count = std::min(group_images, g.N - n0);
    parallel_for(count, 1, [&](int64_t i0, int64_t i1) {
      if (g.channels_last)
        fill_columns(x, col.data() + i0 * P * cols, n0 + i0, i1 - i0, g);
      else
        for (int64_t i = i0; i < i1; ++i) {
          float* t = hwc.get();
          const float* from = x + (n0 + i) * x_image;
          for (int64_t c = 0; c < g.C; ++c)
            for (int64_t q = 0; q < g.H * g.W; ++q) t[q * g.C + c] = from[c * g.H * g.W + q];
          fill_columns(t, col.data() + i * P * cols, 0, 1, image);
        }
      if (g.channels_last)  // [count·P, O]: as it is
        to_bf16(gy + (n0 + i0) * P * g.O, dy.data() + i0 * P * g.O, (i1 - i0) * P * g.O);
      else  // [O, count·P]: each image's [O, P] block into its columns
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t o = 0; o < g.O; ++o) to_bf16(gy + ((n0 + i) * g.O + o) * P, dy.data() + (o * count + i) * P, P);
    });
    parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t r0 = first_row(p), rows = first_row(p + 1) - r0;
        const std::array<int64_t, 2> sa =
            g.channels_last ? std::array<int64_t, 2>{1, g.O} : std::array<int64_t, 2>{count * P, 1};
        run_one(gemm(rows, count * P, cols, sa, n0 > 0), {dy.data() + r0 * sa[0], col.data(), out + r0 * cols});
      }
    });
  }
  if (!transpose) return;
  parallel_for(g.O, 8, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t c = 0; c < g.C; ++c) gw[(o * g.C + c) * taps + t] = out[(o * taps + t) * g.C + c];
  });
}

// The weights from the user's layout into a primitive's own: its slabs in parallel, else whole.
void reorder_weights(const Arg& a, void* from, void* to) {
  auto run = [&](const dnnl::primitive& reorder, const memory::desc& f, const memory::desc& t) {
    serial_openmp();  // a oneTBB worker may not have called oneDNN yet
    dnnl::stream stream(engine());
    reorder.execute(stream, {{DNNL_ARG_FROM, memory(f, engine(), from)}, {DNNL_ARG_TO, memory(t, engine(), to)}});
    stream.wait();
  };
  if (a.slabs.empty() || !weight_slabs_on) return run(a.reorder, a.user, a.own);
  parallel_for(int64_t(a.slabs.size()), 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) run(a.slabs[size_t(s)].reorder, a.slabs[size_t(s)].from, a.slabs[size_t(s)].to);
  });
}

void execute(Direction d, const kernels::ConvGeometry& g, bool bf16, const std::array<float*, 3>& user) {
  if (d == Direction::weight_grad && gemm_weight_grad(g, bf16)) return weight_grad_gemm(user[0], user[1], user[2], g);
  serial_openmp();  // before building primitives and the weights' reorder below
  const bool wino = winograd_used(d, g, bf16);
  const int64_t chunks = chunk_count(d, g, wino), base = g.N / chunks, extra = g.N % chunks;
  auto first_image = [&](int64_t c) { return c * base + std::min(c, extra); };
  const int64_t x_image = g.C * g.H * g.W, y_image = g.O * g.OH * g.OW, w_size = g.O * g.K();
  // Weight gradient: chunk 0 writes the output, chunk c > 0 its own partial sum.
  std::deque<Workspace<float> > partials;
  if (d == Direction::weight_grad)
    for (int64_t c = 1; c < chunks; ++c) partials.emplace_back(size_t(w_size));
  // The forward and the input gradient read the weights in the primitive's layout: converted
  // once per chunk size (at most two), not once per chunk, in slabs in parallel where it can.
  auto chunk_primitive = [&](int64_t n) {
    kernels::ConvGeometry gc = g;
    gc.N = n;
    return &primitive(d, gc, bf16, wino);
  };
  const Primitive* by_size[2] = {chunk_primitive(base + (extra ? 1 : 0)), chunk_primitive(std::max<int64_t>(base, 1))};
  std::deque<Workspace<std::byte> > weights;
  const void* shared[2] = {nullptr, nullptr};
  if (d != Direction::weight_grad)
    for (int k = 0; k < 2; ++k) {
      const Arg& a = by_size[k]->args[1];
      if (!a.reorder) continue;
      if (k == 1 && by_size[1]->args[1].own == by_size[0]->args[1].own) {
        shared[1] = shared[0];
        continue;
      }
      weights.emplace_back(a.own.get_size());
      reorder_weights(a, user[1], weights.back().data());
      shared[k] = weights.back().data();
    }
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t n0 = first_image(c), n = first_image(c + 1) - n0;
      const int k = n == base + (extra ? 1 : 0) ? 0 : 1;
      const Primitive& p = *by_size[k];
      switch (d) {
        case Direction::forward:  // x, w, y
          run_one(p, {user[0] + n0 * x_image, user[1], user[2] + n0 * y_image}, shared[k]);
          break;
        case Direction::input_grad:  // gy, w, gx
          run_one(p, {user[0] + n0 * y_image, user[1], user[2] + n0 * x_image}, shared[k]);
          break;
        case Direction::weight_grad:  // x, gy, gw
          run_one(p, {user[0] + n0 * x_image, user[1] + n0 * y_image, c == 0 ? user[2] : partials[c - 1].data()});
          break;
      }
    }
  });
  if (partials.empty()) return;
  float* gw = user[2];
  parallel_for(w_size, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (const Workspace<float>& part : partials) {
      const float* q = part.data();
      for (int64_t i = i0; i < i1; ++i) gw[i] += q[i];
    }
  });
}

}  // namespace

bool winograd_used(Direction d, const kernels::ConvGeometry& g, bool bf16) {
  return winograd_on() && winograd_shape(d, g, bf16) && winograd_available();
}
bool native_kernels_instead(Direction d, const kernels::ConvGeometry& g, bool bf16) {
  if (!winograd_on() || g.channels_last || bf16) return false;
  const bool deep_planes4 = g.C >= 256 && tiles_per_image(g) == 1;
  // On AVX-512 oneDNN 2.6's direct 3x3 weight gradient on deep 4x4 planes in its blocked
  // layout (the one NCHW convolutions get) was the slowest kernel of a step on an AMD EPYC Zen
  // 4: 136-181 ms per layer at batch 128 (53-71 GFLOP/s), 30-45 at batch 32, against 50-68
  // and 14-17 on flatmin's (its nhwc kernel, for channels-last, is level with flatmin's); on
  // an Intel Xeon with AMX 61-64 ms against 47-50 (20-22 against 14-15 at batch 32).
  // The forward and input gradient there stay on oneDNN (faster), as do the 1x1 layers.
  if (winograd_available()) return deep_planes4 && d == Direction::weight_grad && g.KH == 3 && g.KW == 3;
  return deep_planes4 || (g.winograd() && winograd_shape(d, g, bf16));
}

std::string bf16_unavailable() {
  if (!enabled()) return "they run on oneDNN, and FLATMIN_CONV=native is set";
  static const std::string reason = []() -> std::string {
    serial_openmp();  // the probe's matmul stays in the cache for real calls of its shape
    const kernels::ConvGeometry g{2, 16, 8, 8, 64, 3, 3, 8, 8, 1, 1, 1, 1, true};
    try {
      for (Direction d : {Direction::forward, Direction::input_grad, Direction::weight_grad})
        for (bool channels_last : {true, false}) {
          kernels::ConvGeometry gl = g;
          gl.channels_last = channels_last;
          build(d, gl, true, false);
        }
      gemm(64, 144, 64, {1, 64}, false);  // the small planes' weight gradient (gemm_weight_grad)
      return "";
    } catch (const std::exception& e) {
      std::string isa;
      switch (dnnl::get_effective_cpu_isa()) {
        case dnnl::cpu_isa::sse41: isa = "SSE4.1"; break;
        case dnnl::cpu_isa::avx: isa = "AVX"; break;
        case dnnl::cpu_isa::avx2: isa = "AVX2"; break;
        case dnnl::cpu_isa::avx2_vnni: isa = "AVX2-VNNI"; break;
        default: isa = "AVX-512 of a kind oneDNN 2.6 has no bfloat16 kernels for";
      }
      return "oneDNN has no fast bfloat16 convolution kernel for this CPU (they need AVX-512; this CPU has " + isa +
             "; oneDNN: " + e.what() + ")";
    }
  }();
  return reason;
}

namespace {
// The primitive that runs the first (largest) chunk of the batch in this direction.
const Primitive& first_chunk_primitive(Direction d, const kernels::ConvGeometry& g, bool bf16) {
  serial_openmp();
  const bool wino = winograd_used(d, g, bf16);
  kernels::ConvGeometry gc = g;
  const int64_t chunks = chunk_count(d, g, wino);
  gc.N = (g.N + chunks - 1) / chunks;
  return primitive(d, gc, bf16, wino);
}
}  // namespace

int weight_reorder_slabs(Direction d, const kernels::ConvGeometry& g, bool bf16) {
  if (d == Direction::weight_grad) return 0;  // its weights are the output
  return int(first_chunk_primitive(d, g, bf16).args[1].slabs.size());
}
void set_weight_slabs(bool on) { weight_slabs_on = on; }

std::string kernel_name(Direction d, const kernels::ConvGeometry& g, bool bf16) {
  if (d == Direction::weight_grad && gemm_weight_grad(g, bf16)) return "gemm (bfloat16 weight gradient)";
  return first_chunk_primitive(d, g, bf16).name;
}

void forward(const float* x, const float* w, float* y, const kernels::ConvGeometry& g, bool bf16) {
  execute(Direction::forward, g, bf16, {const_cast<float*>(x), const_cast<float*>(w), y});
}
void input_grad(const float* gy, const float* w, float* gx, const kernels::ConvGeometry& g, bool bf16) {
  execute(Direction::input_grad, g, bf16, {const_cast<float*>(gy), const_cast<float*>(w), gx});
}
void weight_grad(const float* x, const float* gy, float* gw, const kernels::ConvGeometry& g, bool bf16) {
  execute(Direction::weight_grad, g, bf16, {const_cast<float*>(x), const_cast<float*>(gy), gw});
}
void set_column_budget(int64_t bytes) { column_budget = std::max<int64_t>(bytes, 1); }

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  serial_openmp();  // callers split the work on oneTBB
  const dnnl::status st =
      dnnl::sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, std::max<int64_t>(lda, 1), b,
                  std::max<int64_t>(ldb, 1), beta, c, std::max<int64_t>(ldc, 1));
  if (st != dnnl::status::success) throw Error("gemm: oneDNN's sgemm failed (status " + std::to_string(int(st)) + ")");
}

#endif

}  // namespace flatmin::cpu::onednn
