// Network ops: forward values and first derivatives against PyTorch (reference numbers in
// tests/reference/nn_ops_reference.json, made by make_nn_ops_reference.py), the conv and
// pooling kernels against naive loops, determinism, and bad inputs. Derivatives of orders
// 1-3 against finite differences are in test_derivatives.cpp (the op registry).
#include <doctest/doctest.h>

#include <tbb/task_arena.h>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autodiff/autodiff.hpp"
#include "autodiff/cpu/onednn.hpp"
#include "tests/reference_loops.hpp"

using namespace flatmin;

namespace {

const TensorOptions f64{DType::f64};

// ---- against the naive loops of tests/reference_loops.hpp
struct ConvCase {
  int64_t N, C, H, W, O, K, stride, pad;
};

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol, const char* what) {
  REQUIRE(got.size() == want.size());
  double scale = 0, err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    scale = std::max(scale, std::fabs(want[i]));
    err = std::max(err, std::fabs(got[i] - want[i]));
  }
  INFO(what << ": max abs error " << err << " (values up to " << scale << ")");
  CHECK(err <= tol * (1 + scale));
}

// Forward, input gradient and weight gradient of one case against the naive loops; with
// channels_last the ops run on NHWC copies and their results are permuted back to compare.
void check_conv_against_loops(const ConvCase& q, DType dt, double tol, bool channels_last = false) {
  Generator g(7);
  const TensorOptions opt{dt};
  Tensor x = g.normal({q.N, q.C, q.H, q.W}, opt), w = g.normal({q.O, q.C, q.K, q.K}, opt);
  const Conv2dOptions co{q.stride, q.pad};
  Tensor y = conv2d(x, w, {}, co);
  Tensor gy = g.normal(y.shape(), opt);
  Tensor gx = conv2d_input_grad(gy, w, x.shape(), co), gw = conv2d_weight_grad(x, gy, w.shape(), co);
  const test::ConvReference r = test::naive_conv2d(x.to_vector(), w.to_vector(), x.shape(), w.shape(),
                                                   {q.stride, q.stride, q.pad, q.pad}, gy.to_vector());
  if (channels_last) {
    const Conv2dOptions cl{q.stride, q.pad, true};
    auto nhwc = [](const Tensor& t) { return permute(t, {0, 2, 3, 1}); };
    auto nchw = [](const Tensor& t) { return permute(t, {0, 3, 1, 2}); };
    const Tensor xl = nhwc(x), gyl = nhwc(gy);
    y = nchw(conv2d(xl, w, {}, cl));
    gx = nchw(conv2d_input_grad(gyl, w, xl.shape(), cl));
    gw = conv2d_weight_grad(xl, gyl, w.shape(), cl);
  }
  INFO("conv N" << q.N << " C" << q.C << " " << q.H << "x" << q.W << " O" << q.O << " k" << q.K << " s" << q.stride
                << " p" << q.pad << (channels_last ? " channels-last" : ""));
  check_close(y.to_vector(), r.y, tol, "forward");
  check_close(gx.to_vector(), r.gx, tol, "input gradient");
  check_close(gw.to_vector(), r.gw, tol, "weight gradient");
}

// ---- PyTorch reference file
using json = nlohmann::json;
const json& reference() {
  static const json j = [] {
    const std::string path = std::string(FLATMIN_SOURCE_DIR) + "/tests/reference/nn_ops_reference.json";
    std::ifstream f(path);
    if (!f) throw Error("cannot open " + path);
    return json::parse(f);
  }();
  return j;
}
Tensor ref_tensor(const json& t) {
  Shape s = t["shape"].get<Shape>();
  if (!t["data"].empty() && t["data"][0].is_number_integer())
    return from_ints(t["data"].get<std::vector<int64_t>>(), s);
  return from_vector(t["data"].get<std::vector<double>>(), s, f64);
}
void check_ref(const Tensor& got, const json& want, const std::string& what, double tol = 1e-10) {
  INFO(what);
  REQUIRE(got.shape() == want["shape"].get<Shape>());
  check_close(got.to_vector(), want["data"].get<std::vector<double>>(), tol, what.c_str());
}
Reduction reduction(const std::string& s) {
  return s == "mean" ? Reduction::mean : s == "sum" ? Reduction::sum : Reduction::none;
}

}  // namespace

TEST_CASE("conv kernels match naive loops (float64, strides, paddings, kernels, odd sizes, batch groups)") {
  const std::vector<ConvCase> cases = {
      {2, 3, 7, 6, 4, 3, 1, 1},   {2, 3, 7, 6, 4, 3, 2, 1}, {1, 2, 6, 7, 3, 3, 2, 0}, {3, 4, 5, 5, 2, 1, 1, 0},
      {3, 4, 5, 5, 2, 1, 2, 0},   {1, 2, 4, 4, 3, 4, 3, 2}, {2, 2, 3, 3, 2, 3, 1, 0},  // output 1x1
      {40, 3, 4, 4, 5, 3, 1, 1},   // 16 images per GEMM, last group shorter
      {37, 6, 4, 4, 3, 1, 1, 0},   // pointwise with packed groups
      {3, 5, 16, 16, 4, 1, 1, 0},  // pointwise, one image per GEMM (direct GEMM)
      {19, 3, 8, 8, 4, 3, 2, 1},
  };
  for (const ConvCase& q : cases) {
    check_conv_against_loops(q, DType::f64, 1e-12);
    check_conv_against_loops(q, DType::f64, 1e-12, true);  // channels-last: flatmin's kernels on permuted copies
  }
}

TEST_CASE("conv kernels match naive loops on 40 random geometries (even kernels, stride 3, wide padding)") {
  Generator g(17);
  auto pick = [&](int64_t lo, int64_t hi) { return lo + g.randint(hi - lo + 1); };
  for (int i = 0; i < 40; ++i) {
    ConvCase q{pick(1, 20), pick(1, 4), pick(1, 9), pick(1, 9), pick(1, 4), pick(1, 5), pick(1, 3), 0};
    q.pad = pick(0, q.K);
    if (q.H + 2 * q.pad < q.K || q.W + 2 * q.pad < q.K) continue;
    check_conv_against_loops(q, DType::f64, 1e-12);
  }
}

TEST_CASE("conv kernels match naive loops in float32 at a ResNet-like size") {
  check_conv_against_loops({2, 16, 8, 8, 32, 3, 1, 1}, DType::f32, 2e-5);
  check_conv_against_loops({2, 16, 8, 8, 32, 3, 2, 1}, DType::f32, 2e-5);
  check_conv_against_loops({2, 16, 8, 8, 32, 1, 2, 0}, DType::f32, 2e-5);
  // deep layers on 4x4 planes: flatmin's own kernels on a CPU without oneDNN Winograd (AVX2)
  check_conv_against_loops({2, 256, 4, 4, 256, 3, 1, 1}, DType::f32, 2e-5);
  check_conv_against_loops({2, 256, 8, 8, 256, 3, 2, 1}, DType::f32, 2e-5);
  check_conv_against_loops({2, 256, 8, 8, 256, 1, 2, 0}, DType::f32, 2e-5);
}

// float32 convolutions run on oneDNN in builds that have it (autodiff/cpu/onednn.cpp),
// on flatmin's own kernels otherwise: the same geometries as the float64 tests above, plus
// the shapes oneDNN picks special kernels for (1x1, 7x7 stride 2, one input channel).
TEST_CASE("float32 conv kernels match naive loops on every geometry of the float64 tests") {
  std::vector<ConvCase> cases = {{2, 3, 7, 6, 4, 3, 1, 1},   {2, 3, 7, 6, 4, 3, 2, 1},   {1, 2, 6, 7, 3, 3, 2, 0},
                                 {3, 4, 5, 5, 2, 1, 1, 0},   {3, 4, 5, 5, 2, 1, 2, 0},   {1, 2, 4, 4, 3, 4, 3, 2},
                                 {2, 2, 3, 3, 2, 3, 1, 0},   {40, 3, 4, 4, 5, 3, 1, 1},  {37, 6, 4, 4, 3, 1, 1, 0},
                                 {3, 5, 16, 16, 4, 1, 1, 0}, {19, 3, 8, 8, 4, 3, 2, 1},  {2, 3, 17, 17, 16, 7, 2, 3},
                                 {5, 1, 28, 28, 8, 3, 1, 1}, {3, 32, 6, 6, 48, 3, 1, 1}, {1, 64, 4, 4, 64, 3, 1, 1}};
  // fewer than 16 input channels (the gradients run on nhwc copies), 16 or 8 outputs
  cases.insert(cases.end(), {{4, 8, 28, 28, 16, 3, 2, 1}, {4, 8, 28, 28, 16, 1, 2, 0}, {3, 8, 10, 10, 8, 3, 1, 1}});
  // 1x1 stride 2 with a channel count that is not a multiple of oneDNN's channel block (8 on
  // AVX2, 16 on AVX-512): oneDNN 2.6's jit_1x1 kernels write past their workspace on nhwc
  // inputs there (uxlfoundation/oneDNN#6035), so onednn.cpp runs them on blocked copies.
  cases.insert(cases.end(), {{8, 4, 28, 28, 8, 1, 2, 0}, {8, 12, 14, 14, 24, 1, 2, 0}, {5, 4, 9, 9, 16, 1, 2, 0}});
  Generator g(17);
  auto pick = [&](int64_t lo, int64_t hi) { return lo + g.randint(hi - lo + 1); };
  for (int i = 0; i < 40; ++i) {
    ConvCase q{pick(1, 20), pick(1, 4), pick(1, 9), pick(1, 9), pick(1, 4), pick(1, 5), pick(1, 3), 0};
    q.pad = pick(0, q.K);
    if (q.H + 2 * q.pad >= q.K && q.W + 2 * q.pad >= q.K) cases.push_back(q);
  }
  for (const ConvCase& q : cases) {
    check_conv_against_loops(q, DType::f32, 1e-4);
    check_conv_against_loops(q, DType::f32, 1e-4, true);  // oneDNN's nhwc kernels (or the permuted fallback)
  }
}

// float32 3x3 stride-1 layers with at least 64 channels each way and 128 output tiles of 4x4
// over the batch run oneDNN's Winograd F(4x4,3x3) on CPUs that have it (AVX-512; the weight
// gradient only with 4 or more tiles per image; autodiff/cpu/onednn.cpp). Its rounding error is
// a few times the direct kernels' and stays inside the float32 tolerance of the tests above.
// Without AVX-512 the NCHW ones run flatmin's own Winograd F(2x2,3x3) kernels instead.
TEST_CASE("float32 Winograd F(4x4,3x3) on oneDNN: naive loops in both layouts, the switch, the shape rule") {
  if (!cpu::onednn::enabled()) return;
  using cpu::onednn::Direction;
  const std::vector<ConvCase> cases = {
      {32, 64, 8, 8, 64, 3, 1, 1},    // 4 tiles per image
      {24, 64, 7, 9, 80, 3, 1, 1},    // partial tiles at the far edges, O != C
      {32, 64, 10, 10, 64, 3, 1, 0},  // no padding: 8x8 output
      {2, 64, 32, 32, 64, 3, 1, 1},   // 64 tiles per image, 2 images
  };
  auto geometry = [](const ConvCase& q, bool channels_last) {
    const int64_t o = (q.H + 2 * q.pad - q.K) / q.stride + 1, ow = (q.W + 2 * q.pad - q.K) / q.stride + 1;
    return kernels::ConvGeometry{q.N, q.C, q.H, q.W, q.O, q.K, q.K, o, ow, 1, 1, q.pad, q.pad, channels_last};
  };
  struct Restore {
    ~Restore() { cpu::onednn::set_winograd(true); }
  } restore;
  const bool avx512 = __builtin_cpu_supports("avx512f");
  for (bool on : {true, false}) {
    cpu::onednn::set_winograd(on);
    for (const ConvCase& q : cases) {
      INFO("conv N" << q.N << " C" << q.C << " " << q.H << "x" << q.W << " O" << q.O << " p" << q.pad << " Winograd "
                    << (on ? "on" : "off"));
      for (bool channels_last : {false, true})
        for (Direction d : {Direction::forward, Direction::input_grad, Direction::weight_grad}) {
          const std::string kernel = cpu::onednn::kernel_name(d, geometry(q, channels_last), false);
          INFO("direction " << int(d) << (channels_last ? " channels-last" : " NCHW") << ": " << kernel);
          CHECK(cpu::onednn::winograd_used(d, geometry(q, channels_last), false) == (on && avx512));
          CHECK((kernel.find("wino") != std::string::npos) == (on && avx512));
          // where oneDNN has no Winograd (AVX2), flatmin's own kernels take the NCHW ones
          CHECK(cpu::onednn::native_kernels_instead(d, geometry(q, channels_last), false) ==
                (on && !avx512 && !channels_last));
        }
      check_conv_against_loops(q, DType::f32, 2e-5);
      check_conv_against_loops(q, DType::f32, 2e-5, true);
    }
  }
  cpu::onednn::set_winograd(true);
  // Not on a few tiles, few channels, strides, bfloat16, or the weight gradient of 4x4 planes.
  const kernels::ConvGeometry small_batch{31, 64, 8, 8, 64, 3, 3, 8, 8, 1, 1, 1, 1, false},
      narrow{64, 32, 16, 16, 64, 3, 3, 16, 16, 1, 1, 1, 1, false},
      strided{64, 64, 16, 16, 64, 3, 3, 8, 8, 2, 2, 1, 1, false},
      planes4{256, 512, 4, 4, 512, 3, 3, 4, 4, 1, 1, 1, 1, false};
  CHECK_FALSE(cpu::onednn::winograd_used(Direction::forward, small_batch, false));
  CHECK_FALSE(cpu::onednn::winograd_used(Direction::forward, narrow, false));
  CHECK_FALSE(cpu::onednn::winograd_used(Direction::forward, strided, false));
  CHECK_FALSE(cpu::onednn::winograd_used(Direction::forward, geometry(cases[0], false), true));
  CHECK(cpu::onednn::winograd_used(Direction::input_grad, planes4, false) == avx512);
  CHECK_FALSE(cpu::onednn::winograd_used(Direction::weight_grad, planes4, false));
  for (const kernels::ConvGeometry& g : {small_batch, narrow, strided})
    CHECK_FALSE(cpu::onednn::native_kernels_instead(Direction::forward, g, false));
  CHECK_FALSE(cpu::onednn::native_kernels_instead(Direction::forward, geometry(cases[0], false), true));
  // the deep 4x4-plane layers: on AVX2 in every direction, any kernel size (a 1x1 stride-2
  // downsample too); on AVX-512 the weight gradient of the 3x3 ones only
  const kernels::ConvGeometry planes4_down{32, 256, 8, 8, 512, 1, 1, 4, 4, 2, 2, 0, 0, false},
      planes4_strided{32, 256, 8, 8, 512, 3, 3, 4, 4, 2, 2, 1, 1, false},
      planes4_shallow{32, 128, 4, 4, 128, 3, 3, 4, 4, 1, 1, 1, 1, false};
  for (Direction d : {Direction::forward, Direction::input_grad, Direction::weight_grad}) {
    const bool weight_grad = d == Direction::weight_grad;
    CHECK(cpu::onednn::native_kernels_instead(d, planes4, false) == (!avx512 || weight_grad));
    CHECK(cpu::onednn::native_kernels_instead(d, planes4_strided, false) == (!avx512 || weight_grad));
    CHECK(cpu::onednn::native_kernels_instead(d, planes4_down, false) == !avx512);
    CHECK_FALSE(cpu::onednn::native_kernels_instead(d, planes4_shallow, false));
    CHECK_FALSE(cpu::onednn::native_kernels_instead(d, planes4, true));
    kernels::ConvGeometry nhwc = planes4;
    nhwc.channels_last = true;
    CHECK_FALSE(cpu::onednn::native_kernels_instead(d, nhwc, false));
  }
  cpu::onednn::set_winograd(false);
  CHECK_FALSE(cpu::onednn::native_kernels_instead(Direction::weight_grad, planes4, false));
  cpu::onednn::set_winograd(true);
}

// Bf16Convolutions: the three conv ops equal the exact convolution of operands rounded to
// bfloat16 (float32 accumulation: tight tolerance), differ from the float32 result, and the
// setting is scoped; where the build cannot run them, a conv op says so.
TEST_CASE("bfloat16 convolutions round their operands and accumulate in float32") {
  Generator g(5);
  const ConvCase q{3, 16, 9, 9, 24, 3, 1, 1};
  Tensor x = g.normal({q.N, q.C, q.H, q.W}), w = g.normal({q.O, q.C, q.K, q.K});
  Tensor gy = g.normal({q.N, q.O, q.H, q.W});
  const Conv2dOptions co{q.stride, q.pad};
  auto run = [&] {
    return std::vector<std::vector<double>>{conv2d(x, w, {}, co).to_vector(),
                                            conv2d_input_grad(gy, w, x.shape(), co).to_vector(),
                                            conv2d_weight_grad(x, gy, w.shape(), co).to_vector()};
  };
  CHECK_FALSE(bf16_convolutions());
  if (const std::string why = backend(Device::cpu()).bf16_convolutions_unavailable(); !why.empty()) {
    MESSAGE("bfloat16 convolutions not checked here: " << why);
    const std::string message = "bfloat16 convolutions (Bf16Convolutions) cannot run on cpu: " + why;
    Bf16Convolutions on;
    CHECK_THROWS_WITH_AS(conv2d(x, w, {}, co), doctest::Contains(message.c_str()), Error);
    return;
  }
  const auto exact = run();
  std::vector<std::vector<double>> low;
  {
    Bf16Convolutions on;
    CHECK(bf16_convolutions());
    {
      Bf16Convolutions off(false);
      CHECK(run() == exact);  // an inner scope turns it off
    }
    low = run();
  }
  CHECK_FALSE(bf16_convolutions());
  CHECK(run() == exact);
  using test::round_to_bf16;
  const auto xr = round_to_bf16(x.to_vector()), wr = round_to_bf16(w.to_vector()), gyr = round_to_bf16(gy.to_vector());
  const test::ConvReference r = test::naive_conv2d(xr, wr, x.shape(), w.shape(), {1, 1, 1, 1}, gyr);
  check_close(low[0], r.y, 1e-5, "bf16 forward");
  check_close(low[1], r.gx, 1e-5, "bf16 input gradient");
  check_close(low[2], r.gw, 1e-5, "bf16 weight gradient");
  double diff = 0;
  for (size_t i = 0; i < low[0].size(); ++i) diff = std::max(diff, std::fabs(low[0][i] - exact[0][i]));
  CHECK(diff > 1e-3);  // bfloat16 has 8 significant bits: the rounding shows
  // float64 ignores the setting: exact as ever.
  Tensor x64 = x.to(DType::f64), w64 = w.to(DType::f64);
  Tensor y64 = conv2d(x64, w64, {}, co);
  Bf16Convolutions on;
  CHECK(conv2d(x64, w64, {}, co).to_vector() == y64.to_vector());
}

// bfloat16 weight gradients on small output planes (channels-last: at most 8x8, 16x16 for
// 1x1; NCHW: 4x4) run as one GEMM over the batch (autodiff/cpu/onednn.cpp); these shapes take
// that path with dW's rows in 1-4 parts (64-400 output channels). Against the exact convolution
// of the rounded operands, bit for bit the same on one thread, and with every image its own
// group (the groups adding to dW in order).
TEST_CASE("bfloat16 weight gradient as one GEMM: rounded operands, any thread count, image groups, both layouts") {
  if (!backend(Device::cpu()).supports_bf16_convolutions()) return;
  const std::vector<ConvCase> cases = {
      {3, 16, 6, 6, 64, 3, 1, 1},  {2, 24, 8, 7, 160, 3, 2, 1},  // stride 2, odd plane
      {3, 32, 9, 9, 200, 1, 2, 0},                               // 1x1: no transpose of dW at the end
      {4, 16, 5, 5, 272, 3, 1, 2}, {2, 16, 7, 7, 136, 1, 2, 0},  // 4x4 planes: NCHW too
      {5, 20, 4, 4, 400, 3, 1, 1}};
  Generator g(21);
  for (const ConvCase& q : cases)
    for (bool channels_last : {true, false}) {
      const std::string layout = channels_last ? "channels-last" : "NCHW";
      INFO("conv N" << q.N << " C" << q.C << " " << q.H << "x" << q.W << " O" << q.O << " k" << q.K << " s" << q.stride
                    << " p" << q.pad << " " << layout);
      Tensor x = g.normal({q.N, q.C, q.H, q.W}), w = g.normal({q.O, q.C, q.K, q.K});
      Tensor gy = g.normal(conv2d(x, w, {}, {q.stride, q.pad}).shape());
      const Tensor xl = channels_last ? permute(x, {0, 2, 3, 1}) : x,
                   gyl = channels_last ? permute(gy, {0, 2, 3, 1}) : gy;
      const Conv2dOptions cl{q.stride, q.pad, channels_last};
      auto weight_grad = [&] {
        Bf16Convolutions on;
        return conv2d_weight_grad(xl, gyl, w.shape(), cl).to_vector();
      };
      using test::round_to_bf16;
      const test::ConvReference r =
          test::naive_conv2d(round_to_bf16(x.to_vector()), round_to_bf16(w.to_vector()), x.shape(), w.shape(),
                             {q.stride, q.stride, q.pad, q.pad}, round_to_bf16(gy.to_vector()));
      const auto whole = weight_grad();
      check_close(whole, r.gw, 1e-5, "bf16 weight gradient");
      std::vector<double> one;
      tbb::task_arena single(1);
      single.execute([&] { one = weight_grad(); });
      CHECK(one == whole);
      cpu::onednn::set_column_budget(1);
      const auto grouped = weight_grad();
      cpu::onednn::set_column_budget(int64_t(32) << 20);
      check_close(grouped, r.gw, 1e-5, "bf16 weight gradient, one image per group");
    }
}

// The forward's and the input gradient's weights (1 MiB or more) are reordered into oneDNN's
// layout in slabs, in parallel (autodiff/cpu/onednn.cpp): the same bits as one whole reorder,
// float32 and bfloat16, both layouts; small weights stay whole.
TEST_CASE("weights reordered in parallel slabs: used on large weights, the same bits as a whole reorder") {
  if (!cpu::onednn::enabled()) return;
  using cpu::onednn::Direction;
  const bool bf16_ok = backend(Device::cpu()).bf16_convolutions_unavailable().empty();
  struct Restore {
    ~Restore() { cpu::onednn::set_weight_slabs(true); }
  } restore;
  Generator g(23);
  for (const bool channels_last : {false, true})
    for (const bool bf16 : {false, true}) {
      if (bf16 && !bf16_ok) continue;
      // 192 channels on 4x4 planes, 2 images: direct kernels (no Winograd, no flatmin kernel),
      // weights 1.3 MB; 16 -> 32 channels: 18 KB.
      const ConvCase large{2, 192, 4, 4, 192, 3, 1, 1}, small{2, 16, 8, 8, 32, 3, 1, 1};
      for (const ConvCase& q : {large, small}) {
        INFO("C" << q.C << std::string(channels_last ? " channels-last" : "") << std::string(bf16 ? " bfloat16" : ""));
        const kernels::ConvGeometry geo{q.N, q.C, q.H, q.W, q.O, q.K, q.K, q.H, q.W, 1, 1, q.pad, q.pad, channels_last};
        for (const Direction d : {Direction::forward, Direction::input_grad}) {
          const int slabs = cpu::onednn::weight_reorder_slabs(d, geo, bf16);
          if (q.C == large.C)
            CHECK(slabs >= 2);
          else
            CHECK(slabs == 0);
        }
        const Conv2dOptions co{q.stride, q.pad, channels_last};
        Tensor x = g.normal(channels_last ? Shape{q.N, q.H, q.W, q.C} : Shape{q.N, q.C, q.H, q.W});
        Tensor w = g.normal({q.O, q.C, q.K, q.K});
        Tensor gy = g.normal(channels_last ? Shape{q.N, q.H, q.W, q.O} : Shape{q.N, q.O, q.H, q.W});
        auto run = [&] {
          Bf16Convolutions precision(bf16);
          return std::vector<std::vector<double>>{conv2d(x, w, {}, co).to_vector(),
                                                  conv2d_input_grad(gy, w, x.shape(), co).to_vector()};
        };
        const auto in_slabs = run();
        cpu::onednn::set_weight_slabs(false);
        const auto whole = run();
        cpu::onednn::set_weight_slabs(true);
        CHECK(in_slabs == whole);
      }
    }
  // against the naive loops with slabs (float32; the bfloat16 tests above check rounding)
  check_conv_against_loops({2, 192, 4, 4, 192, 3, 1, 1}, DType::f32, 1e-4);
  check_conv_against_loops({2, 192, 4, 4, 192, 3, 1, 1}, DType::f32, 1e-4, true);
}

// 3x3 stride-1 convolutions with at least 32 channels each way take the Winograd
// F(2x2,3x3) kernels (autodiff/cpu/winograd.cpp) for all three products.
TEST_CASE("Winograd convolutions match naive loops (paddings 0-2, odd sizes, both batching modes)") {
  const std::vector<ConvCase> cases = {
      {3, 32, 7, 5, 33, 3, 1, 1},  // odd output: last tile half outside
      {2, 33, 6, 6, 32, 3, 1, 0},  // no padding
      {2, 32, 5, 4, 32, 3, 1, 2},  // padding 2: the input gradient runs with padding 0
      {1, 32, 3, 3, 32, 3, 1, 0},  // a single output
      {9, 32, 2, 2, 32, 3, 1, 1},  // 1 tile per image, several images per group
  };
  for (const ConvCase& q : cases) check_conv_against_loops(q, DType::f64, 1e-12);
  // weight gradient banks over 2 MiB run in phase mode (groups in order, GEMMs over ξ)
  check_conv_against_loops({3, 160, 4, 4, 160, 3, 1, 1}, DType::f64, 1e-12);
  check_conv_against_loops({3, 256, 4, 4, 256, 3, 1, 1}, DType::f32, 2e-5);
  check_conv_against_loops({2, 64, 9, 9, 64, 3, 1, 1}, DType::f32, 2e-5);
}

TEST_CASE("Winograd convolutions: orders 1-3 match finite differences") {
  Generator g(5);
  ScalarFn f = [](const Params& p) {
    return sum(tanh(conv2d(tanh(conv2d(p[0], p[1], {}, {1, 1})), p[2], {}, {1, 1})));
  };
  Params p = {g.normal({2, 32, 5, 5}, f64), g.normal({32, 32, 3, 3}, f64, 0, 0.05),
              g.normal({32, 32, 3, 3}, f64, 0, 0.05)};
  DerivativeCheck r = check_derivatives(f, p, {.rtol = 1e-5});
  INFO(r.message);
  CHECK(r.ok);
}

TEST_CASE("conv with an empty batch: empty outputs, zero weight gradient") {
  Tensor x = zeros({0, 2, 5, 5}), w = ones({3, 2, 3, 3});
  Tensor y = conv2d(x, w, {}, {1, 1});
  CHECK(y.shape() == Shape{0, 3, 5, 5});
  CHECK(conv2d_input_grad(y, w, x.shape(), {1, 1}).shape() == x.shape());
  auto gw = conv2d_weight_grad(x, y, w.shape(), {1, 1}).to_vector();
  CHECK(gw == std::vector<double>(gw.size(), 0.0));
}

namespace {
// The three conv ops on (x, w, gy), bit for bit the same on flatmin's threads and on one thread.
void check_thread_count_independent(const Tensor& x, const Tensor& w, const Tensor& gy, const Conv2dOptions& co) {
  auto run = [&] {
    return std::vector<std::vector<double>>{conv2d(x, w, {}, co).to_vector(),
                                            conv2d_input_grad(gy, w, x.shape(), co).to_vector(),
                                            conv2d_weight_grad(x, gy, w.shape(), co).to_vector()};
  };
  auto many = run();
  std::vector<std::vector<double>> one;
  tbb::task_arena single(1);
  single.execute([&] { one = run(); });
  for (size_t i = 0; i < many.size(); ++i) CHECK(many[i] == one[i]);
}
}  // namespace

TEST_CASE("conv results do not depend on the thread count") {
  Generator g(11);
  // float32: oneDNN's direct kernels (8, 32 channels) and its Winograd ones (64, 160: 128 tiles
  // in 2 chunks); float64: flatmin's im2col (8), Winograd tasks (32), Winograd phases (160).
  for (DType dt : {DType::f32, DType::f64})
    for (int64_t ch : {8, 32, 64, 160}) {
      INFO(ch << " channels" << (dt == DType::f32 ? " float32" : " float64"));
      Tensor x = g.normal({32, ch, 8, 8}, {dt}), w = g.normal({ch, ch, 3, 3}, {dt});
      check_thread_count_independent(x, w, g.normal({32, ch, 8, 8}, {dt}), {1, 1});
    }
}

// The main job's model (ResNet-18 width 8 on 1x28x28, batch 64): its convolutions split the
// batch into several chunks, by a rule that must not look at the thread count.
TEST_CASE("conv results do not depend on the thread count at the main job's shapes") {
  Generator g(12);
  const std::vector<ConvCase> cases = {{64, 1, 28, 28, 8, 3, 1, 1},  {64, 8, 28, 28, 8, 3, 1, 1},
                                       {64, 8, 28, 28, 16, 3, 2, 1}, {64, 8, 28, 28, 16, 1, 2, 0},
                                       {64, 32, 7, 7, 32, 3, 1, 1},  {64, 64, 4, 4, 64, 3, 1, 1}};
  for (const ConvCase& q : cases) {
    INFO("conv C" << q.C << " " << q.H << "x" << q.W << " O" << q.O << " k" << q.K << " s" << q.stride);
    const Conv2dOptions co{q.stride, q.pad};
    Tensor x = g.normal({q.N, q.C, q.H, q.W}, {}), w = g.normal({q.O, q.C, q.K, q.K}, {});
    check_thread_count_independent(x, w, g.normal(conv2d(x, w, {}, co).shape(), {}), co);
  }
}

TEST_CASE("pooling kernels match naive loops") {
  Generator g(3);
  Tensor x = g.normal({2, 3, 7, 6}, f64);
  for (int64_t k : {2, 3})
    for (int64_t s : {1, 2})
      for (int64_t p : {int64_t(0), k / 2}) {
        const test::PoolReference r = test::naive_pool2d(x.to_vector(), x.shape(), {k, k, s, s, p, p});
        Tensor mx = max_pool2d(x, {k, s, p}), av = avg_pool2d(x, {k, s, p});
        REQUIRE(mx.shape() == r.y_shape);
        auto mv = mx.to_vector(), avv = av.to_vector();
        for (size_t o = 0; o < mv.size(); ++o) {
          CHECK(mv[o] == r.max[o]);
          CHECK(avv[o] == doctest::Approx(r.avg[o]).epsilon(1e-14));
        }
      }
}

TEST_CASE("max_pool2d: ties go to the first maximum in the window, padding never wins") {
  // plane 2x4, kernel 2, stride 2: windows {1,1 / 0,1} and {-3,-2 / -2,-5} (hand-computed)
  Tensor x = from_vector(std::vector<double>{1, 1, -3, -2, 0, 1, -2, -5}, {1, 1, 2, 4}, f64).requires_grad_();
  Tensor y = max_pool2d(x, {2, 2, 0});
  CHECK(y.to_vector() == std::vector<double>{1, -2});
  CHECK(grad(sum(y), x).to_vector() == std::vector<double>{1, 0, 0, 1, 0, 0, 0, 0});
  // all-negative input with padding 1: the -inf padding is never the maximum
  Tensor z = max_pool2d(full({1, 1, 3, 3}, -4.0, f64), {3, 1, 1});
  CHECK(z.to_vector() == std::vector<double>(9, -4.0));
}

TEST_CASE("network ops match PyTorch 1.13 (forward values and first derivatives)") {
  int n = 0;
  for (const json& c : reference()["cases"]) {
    const std::string op = c["op"];
    const json& in = c["inputs"];
    const json& out = c["outputs"];
    const json& p = c["params"];
    const int index = n++;
    INFO("case " << index << ": " << op << " " << p.dump());
    if (op == "conv2d") {
      Tensor x = ref_tensor(in["x"]).requires_grad_(), w = ref_tensor(in["w"]).requires_grad_(),
             b = ref_tensor(in["b"]).requires_grad_();
      Tensor y = conv2d(x, w, b, {p["stride"], p["padding"]});
      check_ref(y, out["y"], "conv2d forward");
      auto gs = grad({y}, {x, w, b}, {.grad_outputs = {ref_tensor(in["gy"])}});
      check_ref(gs[0], out["gx"], "conv2d input gradient");
      check_ref(gs[1], out["gw"], "conv2d weight gradient");
      check_ref(gs[2], out["gb"], "conv2d bias gradient");
    } else if (op == "max_pool2d" || op == "avg_pool2d") {
      const Pool2dOptions po{p["kernel"], p["stride"], p["padding"]};
      Tensor x = ref_tensor(in["x"]);
      check_ref(op == "max_pool2d" ? max_pool2d(x, po) : avg_pool2d(x, po), out["y"], op);
      if (op == "max_pool2d") {
        // the gradient lands at PyTorch's indices: one-hot gradient per window
        Tensor xl = x.detach().requires_grad_();
        Tensor y = max_pool2d(xl, po);
        Tensor gx = grad(sum(y), xl);
        auto idx = ref_tensor(out["indices"]).to_int_vector();
        const int64_t planes = x.size(0) * x.size(1), hw = x.size(2) * x.size(3), ohw = y.size(2) * y.size(3);
        std::vector<double> expect(size_t(x.numel()), 0.0);
        for (int64_t pl = 0; pl < planes; ++pl)
          for (int64_t o = 0; o < ohw; ++o) expect[size_t(pl * hw + idx[size_t(pl * ohw + o)])] += 1;
        CHECK(gx.to_vector() == expect);
      }
    } else if (op == "adaptive_avg_pool2d") {
      check_ref(adaptive_avg_pool2d(ref_tensor(in["x"]), p["out_h"], p["out_w"]), out["y"], op);
    } else if (op == "batch_norm_train" || op == "batch_norm_eval") {
      Tensor rm = ref_tensor(in["running_mean"]), rv = ref_tensor(in["running_var"]);
      Tensor y = batch_norm(ref_tensor(in["x"]), ref_tensor(in["w"]), ref_tensor(in["b"]), rm, rv,
                            {.training = op == "batch_norm_train"});
      check_ref(y, out["y"], op);
      if (op == "batch_norm_train") {
        check_ref(rm, out["running_mean"], "running mean");
        check_ref(rv, out["running_var"], "running var");
      }
    } else if (op == "group_norm") {
      check_ref(group_norm(ref_tensor(in["x"]), p["groups"], ref_tensor(in["w"]), ref_tensor(in["b"])), out["y"], op);
    } else if (op == "cross_entropy") {
      Tensor y = cross_entropy(ref_tensor(in["logits"]), ref_tensor(in["target"]), reduction(p["reduction"]));
      check_ref(y, out["y"], op);
    } else if (op == "mse_loss") {
      check_ref(mse_loss(ref_tensor(in["pred"]), ref_tensor(in["target"]), reduction(p["reduction"])), out["y"], op);
    } else {
      FAIL("unknown reference op " << op);
    }
  }
  CHECK(n == 25);
}

TEST_CASE("batch_norm: update_running=false and eval leave the running statistics alone") {
  Generator g(2);
  Tensor x = g.normal({4, 3, 2, 2}, f64), rm = zeros({3}, f64), rv = ones({3}, f64);
  batch_norm(x, {}, {}, rm, rv, {.training = true, .update_running = false});
  batch_norm(x, {}, {}, rm, rv, {.training = false});
  CHECK(rm.to_vector() == std::vector<double>{0, 0, 0});
  CHECK(rv.to_vector() == std::vector<double>{1, 1, 1});
  // training without running statistics (track_running_stats=False): batch statistics only
  Tensor none_m, none_v;
  Tensor y = batch_norm(x, {}, {}, none_m, none_v, {.training = true});
  auto m = mean(y, {0, 2, 3}).to_vector();
  for (double v : m) CHECK(std::fabs(v) < 1e-12);
  CHECK_THROWS_AS(batch_norm(x, {}, {}, none_m, none_v, {.training = false}), Error);
  // an eval-mode graph survives a later update of the running statistics
  Tensor w = ones({3}, f64).requires_grad_();
  Tensor y_eval = batch_norm(x, w, {}, rm, rv, {.training = false});
  batch_norm(x, {}, {}, rm, rv, {.training = true});
  CHECK(grad(sum(y_eval), w).shape() == Shape{3});
}

TEST_CASE("batch_norm: the fused first-order backward equals the exact recorded rule and a plain composition") {
  // The same gradient three ways: the fused kernel (recording off), the differentiable rule
  // (create_graph), and batch norm written out with ops in this test. Rank 2 ([M, C], the
  // channels-last form) runs the kernels' row layout: several row blocks, C not a multiple of
  // anything the kernels block by. Training and eval mode (running statistics: one op
  // y = x·s + t), each with and without the fused ReLU.
  for (const Shape& shape : {Shape{6, 4, 5, 3}, Shape{1000, 19}, Shape{300, 70}})
    for (DType dt : {DType::f64, DType::f32})
      for (bool training : {true, false})
        for (bool relu : {false, true}) {
          INFO(to_string(shape) << (dt == DType::f64 ? " float64" : " float32") << " training " << training << " relu "
                                << relu);
          Generator g(12);
          const TensorOptions o{dt};
          const int64_t C = shape[1];
          const Axes axes = shape.size() == 4 ? Axes{0, 2, 3} : Axes{0};
          const Shape cs = shape.size() == 4 ? Shape{1, C, 1, 1} : Shape{1, C};
          Tensor x = g.normal(shape, o, 0.7, 2.0).requires_grad_(), w = g.normal({C}, o).requires_grad_(),
                 b = g.normal({C}, o).requires_grad_(), gy = g.normal(shape, o);
          Tensor rm = g.normal({C}, o, 0.5, 1.0), rv = g.uniform({C}, o, 0.5, 3.0);
          auto by_ops = [&] {
            Tensor xc = sub(x, training ? mean(x, axes, true) : reshape(rm, cs));
            Tensor var = training ? mean(square(xc), axes, true) : reshape(rv, cs);
            Tensor y = add(mul(mul(xc, rsqrt(add_scalar(var, 1e-5))), reshape(w, cs)), reshape(b, cs));
            return relu ? flatmin::relu(y) : y;
          };
          const BatchNormOptions opt{.training = training, .update_running = false, .relu = relu};
          Tensor y = batch_norm(x, w, b, rm, rv, opt);
          const double tol = dt == DType::f64 ? 1e-12 : 2e-5;
          check_close(y.to_vector(), by_ops().to_vector(), tol, "forward");
          auto fused = grad({y}, {x, w, b}, {.grad_outputs = {gy}});
          auto recorded =
              grad({batch_norm(x, w, b, rm, rv, opt)}, {x, w, b}, {.grad_outputs = {gy}, .create_graph = true});
          auto composed = grad({by_ops()}, {x, w, b}, {.grad_outputs = {gy}});
          for (size_t i = 0; i < 3; ++i) {
            check_close(fused[i].to_vector(), composed[i].to_vector(), tol, "fused vs composition");
            check_close(recorded[i].to_vector(), composed[i].to_vector(), tol, "recorded rule vs composition");
          }
          // one op (ReLU included), not a composition
          CHECK(std::string(y.node()->op) == (training ? "batch_norm" : "batch_norm_eval"));
        }
}

TEST_CASE("add_relu: the fused kernel equals relu(add(a, b)), values and gradients, float64 and float32") {
  for (DType dt : {DType::f64, DType::f32}) {
    INFO((dt == DType::f64 ? "float64" : "float32"));
    Generator g(21);
    const TensorOptions o{dt};
    const Shape shape{7, 33, 65};  // several tasks of the kernel's parallel loop
    Tensor a = g.normal(shape, o).requires_grad_(), b = g.normal(shape, o).requires_grad_(), gy = g.normal(shape, o);
    Tensor y = add_relu(a, b), ref = relu(add(a, b));
    CHECK(y.to_vector() == ref.to_vector());  // one rounding (the sum) either way
    CHECK(std::string(y.node()->op) == "add_relu");
    auto fused = grad({y}, {a, b}, {.grad_outputs = {gy}});
    auto composed = grad({ref}, {a, b}, {.grad_outputs = {gy}});
    for (size_t i = 0; i < 2; ++i) CHECK(fused[i].to_vector() == composed[i].to_vector());
  }
  Tensor a = zeros({2, 3}), b = zeros({3});
  CHECK_THROWS_WITH_AS(add_relu(a, b), doctest::Contains("differ in shape"), Error);
}

// Under create_graph the VJP of batch norm is two recorded ops (batch_norm_input_grad,
// batch_norm_weight_grad) with hand-derived rules: check them at orders 1-3 themselves,
// i.e. batch norm's derivatives of orders 2-4, with and without an affine weight.
TEST_CASE("batch_norm's recorded backward ops: orders 1-3 match finite differences") {
  Generator gen(31);
  // NCHW, and rank 2 ([M, C]: the kernels' row layout, several row blocks)
  for (const Shape& shape : {Shape{4, 3, 2, 2}, Shape{300, 70}})
    for (bool affine : {true, false}) {
      INFO(to_string(shape) << " affine " << affine);
      const int64_t C = shape[1];
      Tensor cx = gen.normal(shape, f64), cw = gen.normal({C}, f64);
      ScalarFn f = [affine, cx, cw](const Params& p) {
        // finite differences call f on plain tensors under NoGrad: record anyway, from leaves
        EnableGrad on;
        auto leaf = [](const Tensor& t) { return t.requires_grad() ? t : t.detach().requires_grad_(); };
        Tensor x = leaf(p[0]), rm, rv, w = affine ? leaf(p[2]) : Tensor();
        Tensor y = batch_norm(x, w, {}, rm, rv, {.training = true});
        std::vector<Tensor> wrt = affine ? std::vector<Tensor>{x, w} : std::vector<Tensor>{x};
        auto gs = grad({y}, wrt, {.grad_outputs = {p[1]}, .create_graph = true});
        Tensor out = sum(mul(tanh(gs[0]), cx));
        return affine ? add(out, sum(mul(gs[1], cw))) : out;
      };
      Params p = {gen.normal(shape, f64, 0.3, 1.2), gen.normal(shape, f64), gen.normal({C}, f64, 1, 0.3)};
      if (!affine) p.pop_back();
      DerivativeCheck r = check_derivatives(f, p, {.rtol = 1e-5});
      INFO(r.message);
      CHECK(r.ok);
    }
}

// Rank 2 runs the kernels' row layout (blocks of rows fixed by the shape, channels in tasks of
// 256): the fused second-order kernels (an unrecorded backward through the recorded VJP)
// against the composite rules (the same backward recorded), and every kernel's results
// with one thread against the default pool, bit for bit.
TEST_CASE("batch_norm on [M, C]: fused second-order kernels match the composite rules, any thread count") {
  for (const Shape& shape : {Shape{1000, 19}, Shape{300, 70}, Shape{40, 300}}) {
    INFO(to_string(shape));
    Generator g(17);
    const int64_t C = shape[1];
    Tensor x = g.normal(shape, f64, -0.5, 1.5).requires_grad_(), w = g.normal({C}, f64).requires_grad_(),
           b = g.normal({C}, f64).requires_grad_(), gy = g.normal(shape, f64).requires_grad_();
    Tensor a = g.normal(shape, f64), beta = g.normal({C}, f64);
    // y, its VJP (to x, w, b) and the VJP of ⟨a, gx⟩ + ⟨β, gw⟩ (to x, w, gy)
    auto run = [&](bool record_second) {
      Tensor rm, rv;
      Tensor y = batch_norm(x, w, b, rm, rv, {.training = true});
      auto first = grad({y}, {x, w, b}, {.grad_outputs = {gy}, .create_graph = true});
      Tensor s = add(sum(mul(first[0], a)), sum(mul(first[1], beta)));
      auto second = grad({s}, {x, w, gy}, {.create_graph = record_second});
      std::vector<std::vector<double>> out{y.to_vector()};
      for (const auto& t : {first, second})
        for (const Tensor& v : t) out.push_back(v.to_vector());
      return out;
    };
    auto fused = run(false), composite = run(true);
    for (size_t i = 0; i < fused.size(); ++i) check_close(fused[i], composite[i], 1e-12, "fused vs composite");
    std::vector<std::vector<double>> one;
    tbb::task_arena single(1);
    single.execute([&] { one = run(false); });
    for (size_t i = 0; i < fused.size(); ++i) CHECK(one[i] == fused[i]);
  }
}

TEST_CASE("group_norm: fused first-order backward, recorded rule and a plain composition agree") {
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(13);
    const TensorOptions o{dt};
    Tensor x = g.normal({3, 6, 4, 5}, o, -0.4, 1.5).requires_grad_(), w = g.normal({6}, o).requires_grad_(),
           b = g.normal({6}, o).requires_grad_(), gy = g.normal({3, 6, 4, 5}, o);
    auto by_ops = [&] {
      Tensor xg = reshape(x, {3, 2, 60});
      Tensor xc = sub(xg, mean(xg, {2}, true));
      Tensor y = reshape(mul(xc, rsqrt(add_scalar(mean(square(xc), {2}, true), 1e-5))), {3, 6, 4, 5});
      return add(mul(y, reshape(w, {1, 6, 1, 1})), reshape(b, {1, 6, 1, 1}));
    };
    Tensor y = group_norm(x, 2, w, b);
    const double tol = dt == DType::f64 ? 1e-12 : 2e-5;
    check_close(y.to_vector(), by_ops().to_vector(), tol, "forward");
    auto fused = grad({y}, {x, w, b}, {.grad_outputs = {gy}});
    auto recorded = grad({group_norm(x, 2, w, b)}, {x, w, b}, {.grad_outputs = {gy}, .create_graph = true});
    auto composed = grad({by_ops()}, {x, w, b}, {.grad_outputs = {gy}});
    for (size_t i = 0; i < 3; ++i) {
      check_close(fused[i].to_vector(), composed[i].to_vector(), tol, "fused vs composition");
      check_close(recorded[i].to_vector(), composed[i].to_vector(), tol, "recorded rule vs composition");
    }
    // channels last ([N, H, W, C], the kernels' per-instance form) is the same function
    auto nhwc = [](const Tensor& t) { return permute(t, {0, 2, 3, 1}); };
    Tensor yl = group_norm(nhwc(x), 2, w, b, 1e-5, true);
    check_close(yl.to_vector(), nhwc(y).to_vector(), tol, "channels-last forward");
    auto fused_l = grad({yl}, {x, w, b}, {.grad_outputs = {nhwc(gy)}});
    auto recorded_l =
        grad({group_norm(nhwc(x), 2, w, b, 1e-5, true)}, {x, w, b}, {.grad_outputs = {nhwc(gy)}, .create_graph = true});
    for (size_t i = 0; i < 3; ++i) {
      check_close(fused_l[i].to_vector(), composed[i].to_vector(), tol, "channels-last fused vs composition");
      check_close(recorded_l[i].to_vector(), composed[i].to_vector(), tol, "channels-last recorded vs composition");
    }
    // a group-norm HVP runs the second-order kernels per instance; the same as NCHW's
    const Tensor v = g.normal({3, 6, 4, 5}, o);
    auto hvp_of = [&](bool cl) {
      Tensor yy = cl ? group_norm(nhwc(x), 2, w, b, 1e-5, true) : group_norm(x, 2, w, b);
      Tensor loss = sum(mul(square(yy), cl ? nhwc(gy) : gy));
      auto gr = grad({loss}, {x, w}, {.create_graph = true});
      return grad({add(sum(mul(gr[0], v)), sum(gr[1]))}, {x, w, b});
    };
    auto h0 = hvp_of(false), h1 = hvp_of(true);
    for (size_t i = 0; i < 3; ++i) check_close(h1[i].to_vector(), h0[i].to_vector(), tol * 10, "channels-last HVP");
  }
}

// The fused kernels (forward with the affine, and the first-order backward that an unrecorded
// gradient runs) against group norm written out in plain ops, in both layouts, with and
// without weight and bias; and every result with one thread against two, bit for bit.
TEST_CASE("group_norm: fused kernels match plain ops in both layouts, any thread count") {
  struct Case {
    Shape shape;  // NCHW
    int64_t groups;
    bool affine;
  };
  // [8, 64, 6, 6] in 32 groups of 2 channels: the main job's deep layers, enough tasks to split
  for (const Case& k : {Case{{3, 6, 4, 5}, 2, true}, Case{{8, 64, 6, 6}, 32, true}, Case{{2, 12, 3, 3}, 3, false},
                        Case{{4, 16, 5, 3}, 1, true}})
    for (DType dt : {DType::f64, DType::f32})
      for (bool cl : {false, true}) {
        INFO(to_string(k.shape) << " groups " << k.groups << (k.affine ? "" : " no affine") << " " << dtype_name(dt)
                                << (cl ? " channels-last" : " NCHW"));
        const int64_t N = k.shape[0], C = k.shape[1], G = k.groups;
        Generator g(29);
        const TensorOptions o{dt};
        Tensor x = g.normal(k.shape, o, 2.0, 1.5), gy = g.normal(k.shape, o);
        Tensor w = k.affine ? g.normal({C}, o, 1, 0.5) : Tensor(), b = k.affine ? g.normal({C}, o) : Tensor();
        x.requires_grad_();
        if (k.affine) w.requires_grad_(), b.requires_grad_();
        auto nhwc = [](const Tensor& t) { return permute(t, {0, 2, 3, 1}); };
        auto nchw = [](const Tensor& t) { return permute(t, {0, 3, 1, 2}); };
        // plain ops, NCHW: statistics of x viewed as [N, G, C/G·H·W]
        auto by_ops = [&] {
          Tensor xg = reshape(x, {N, G, -1});
          Tensor xc = sub(xg, mean(xg, {2}, true));
          Tensor y = reshape(mul(xc, rsqrt(add_scalar(mean(square(xc), {2}, true), 1e-5))), k.shape);
          return k.affine ? add(mul(y, reshape(w, {1, C, 1, 1})), reshape(b, {1, C, 1, 1})) : y;
        };
        Tensor y_ops = by_ops();
        auto want = grad({y_ops}, k.affine ? Params{x, w, b} : Params{x}, {.grad_outputs = {gy}});
        // fused: the forward kernel, then an unrecorded gradient (the backward kernel)
        auto fused = [&] {
          Tensor y = cl ? nchw(group_norm(nhwc(x), G, w, b, 1e-5, true)) : group_norm(x, G, w, b);
          std::vector<std::vector<double>> out{y.to_vector()};
          for (const Tensor& t : grad({y}, k.affine ? Params{x, w, b} : Params{x}, {.grad_outputs = {gy}}))
            out.push_back(t.to_vector());
          return out;
        };
        std::vector<std::vector<double>> one, two;
        tbb::task_arena(1).execute([&] { one = fused(); });
        tbb::task_arena(2).execute([&] { two = fused(); });
        const double tol = dt == DType::f64 ? 1e-12 : 2e-5;
        check_close(one[0], y_ops.to_vector(), tol, "forward");
        const char* names[] = {"gx", "gw", "gb"};
        for (size_t i = 0; i < want.size(); ++i) check_close(one[i + 1], want[i].to_vector(), tol, names[i]);
        REQUIRE(one.size() == two.size());
        for (size_t i = 0; i < one.size(); ++i) CHECK(one[i] == two[i]);
      }
}

TEST_CASE("batch_norm in training mode: the third derivative includes the statistics' own derivatives") {
  // f(x) = Σ w ⊙ bn(x)^2 is a function of x through the batch mean and variance; a rule that
  // treats the saved statistics as constants beyond second order (PyTorch's fused kernel)
  // gets ∇³f wrong. Finite differences of the exact Hessian-vector product are the judge.
  Generator g(8);
  Tensor w = g.uniform({3, 2, 2, 2}, f64, -1, 1);
  ScalarFn f = [w](const Params& p) {
    Tensor rm, rv;
    return sum(mul(w, square(batch_norm(p[0], {}, {}, rm, rv, {.training = true}))));
  };
  DerivativeCheck r = check_derivatives(f, {g.normal({3, 2, 2, 2}, f64)}, {.max_order = 3, .directions = 3});
  INFO(r.message);
  CHECK(r.ok);
  REQUIRE(r.error.size() == 3);
  CHECK(r.error[2] < 1e-6);
}

TEST_CASE("a small conv network: orders 1-3 match finite differences through every op together") {
  // conv (stride 2, bias) -> batch norm (training) -> softplus -> conv -> max pool -> group
  // norm -> adaptive pool -> linear -> cross-entropy, differentiated w.r.t. input and weights.
  Generator g(21);
  Tensor labels = from_ints({2, 0, 1}, {3});
  ScalarFn f = [labels](const Params& p) {
    Tensor rm, rv;
    Tensor h = conv2d(p[0], p[1], p[2], {2, 1});
    h = softplus(batch_norm(h, p[3], {}, rm, rv, {.training = true}));
    h = max_pool2d(conv2d(h, p[4], {}, {1, 1}), {2, 2, 0});
    h = adaptive_avg_pool2d(group_norm(h, 2, {}, {}), 1, 1);
    return cross_entropy(matmul(reshape(h, {3, 4}), p[5]), labels);
  };
  Params p = {g.normal({3, 2, 7, 7}, f64), g.normal({4, 2, 3, 3}, f64, 0, 0.5), g.normal({4}, f64),
              g.normal({4}, f64, 1, 0.2),  g.normal({4, 4, 3, 3}, f64, 0, 0.4), g.normal({4, 3}, f64)};
  DerivativeCheck r = check_derivatives(f, p, {.rtol = 1e-5});
  INFO(r.message);
  CHECK(r.ok);
}

TEST_CASE("network ops: bad inputs are errors that name the problem") {
  Tensor x = zeros({1, 2, 5, 5}), w = zeros({3, 2, 3, 3});
  CHECK_THROWS_WITH_AS(conv2d(x, zeros({3, 4, 3, 3})), doctest::Contains("channels"), Error);
  CHECK_THROWS_WITH_AS(conv2d(x, zeros({3, 2, 7, 7})), doctest::Contains("larger than the padded input"), Error);
  CHECK_THROWS_WITH_AS(conv2d(x, w, {}, {.stride = 0}), doctest::Contains("stride"), Error);
  CHECK_THROWS_WITH_AS(conv2d(x, w, zeros({2})), doctest::Contains("bias"), Error);
  CHECK_THROWS_WITH_AS(conv2d(zeros({2, 5, 5}), w), doctest::Contains("rank 4"), Error);
  CHECK_THROWS_WITH_AS(conv2d(x, zeros({3, 2, 3, 3}, f64)), doctest::Contains("float64"), Error);
  CHECK_THROWS_WITH_AS(conv2d_input_grad(zeros({1, 3, 4, 4}), w, x.shape(), {}), doctest::Contains("expected"), Error);
  CHECK_THROWS_WITH_AS(max_pool2d(x, {.kernel = 2, .stride = 2, .padding = 2}), doctest::Contains("half the kernel"),
                       Error);
  CHECK_THROWS_WITH_AS(avg_pool2d(x, {.kernel = 9}), doctest::Contains("larger"), Error);
  CHECK_THROWS_WITH_AS(adaptive_avg_pool2d(x, 0, 2), doctest::Contains("output size"), Error);
  Tensor logits = zeros({2, 3});
  CHECK_THROWS_WITH_AS(cross_entropy(logits, from_ints({1, 3}, {2})), doctest::Contains("label 3"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, from_ints({-1, 0}, {2})), doctest::Contains("label -1"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, zeros({2})), doctest::Contains("int64"), Error);
  CHECK_THROWS_WITH_AS(mse_loss(logits, zeros({3, 2})), doctest::Contains("shape"), Error);
  Tensor rm = zeros({3}), rv = ones({3});
  CHECK_THROWS_WITH_AS(batch_norm(x, {}, {}, rm, rv, {.training = true}), doctest::Contains("running_mean"), Error);
  Tensor rm2 = zeros({2}), rv2 = ones({2});
  CHECK_THROWS_WITH_AS(batch_norm(zeros({1, 2}), {}, {}, rm2, rv2, {.training = true}),
                       doctest::Contains("more than one value"), Error);
  CHECK_THROWS_WITH_AS(group_norm(x, 3, {}, {}), doctest::Contains("groups"), Error);
  CHECK_THROWS_WITH_AS(group_norm(x, 2, zeros({3}), {}), doctest::Contains("weight has shape [3], expected [2]"),
                       Error);
  CHECK_THROWS_WITH_AS(group_norm(x, 2, {}, zeros({2}, f64)), doctest::Contains("bias"), Error);
  CHECK_THROWS_WITH_AS(group_norm(zeros({4}), 1, {}, {}), doctest::Contains("(N, C, ...)"), Error);
}
