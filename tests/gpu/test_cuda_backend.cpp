// CUDA backend kernels against independent references: random numbers against the CPU's
// Philox stream, convolution and pooling against tests/reference_loops.hpp, scatters with
// duplicate indices bitwise against the CPU (same summation order), int64 kernels against
// hand values; plus the allocator, determinism and device errors.
#include <cstring>

#include "autodiff/backend.hpp"
#include "autodiff/cuda/cuda_entry.hpp"
#include "tests/gpu/gpu_parity.hpp"
#include "tests/reference_loops.hpp"

using namespace flatmin;
using namespace flatmin::gpu_test;

namespace {

double vdot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(a[i] - b[i]));
    den = std::max(den, std::fabs(b[i]));
  }
  return a.size() == b.size() ? num / std::max(den, 1e-300) : 1e300;
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("random numbers equal the CPU's for the same seed and offset") {
    for (DType t : {DType::f64, DType::f32}) {
      Generator gc(2024), gg(2024);
      gc.uniform({5}, {t}), gg.uniform({5}, {t, kCuda});  // a non-zero offset for what follows
      const auto uc = gc.uniform({4099}, {t}).to_vector(), ug = gg.uniform({4099}, {t, kCuda}).to_vector();
      CHECK(uc == ug);  // integer arithmetic and exact scaling: bitwise
      const auto rc = gc.rademacher({1000}, {t}).to_vector(), rg = gg.rademacher({1000}, {t, kCuda}).to_vector();
      CHECK(rc == rg);
      const auto nc = gc.normal({4099}, {t}).to_vector(), ng = gg.normal({4099}, {t, kCuda}).to_vector();
      // Box-Muller through log/cos: the device's libm may differ from glibc's in the last bit
      double worst = 0;
      for (size_t i = 0; i < nc.size(); ++i)
        worst = std::max(worst, std::fabs(nc[i] - ng[i]) / std::max(1.0, std::fabs(nc[i])));
      INFO(dtype_name(t) << " normal: worst relative difference " << worst);
      CHECK(worst <= (t == DType::f64 ? 1e-14 : 2.4e-7));
      CHECK(gc.offset() == gg.offset());
    }
  }

  TEST_CASE("the caching allocator hands a freed block back out") {
    Backend& b = backend(kCuda);
    void* p = b.allocate(1000);
    void* q = b.allocate(1000);
    CHECK(p != nullptr);
    CHECK(p != q);
    b.deallocate(p, 1000);
    void* r = b.allocate(1000);
    CHECK(r == p);  // same bucket, reused without cudaMalloc
    b.deallocate(r, 1000);
    b.deallocate(q, 1000);
    // Tensors go through the same path: a temporary's storage is reused by the next one.
    const void* first;
    {
      Tensor t = zeros({1234}, {DType::f32, kCuda});
      first = t.raw();
    }
    Tensor u = zeros({1234}, {DType::f32, kCuda});
    CHECK(u.raw() == first);
    CHECK(b.allocate(0) == nullptr);
    // release_cached_memory frees what the lists hold (not live tensors) and says how much
    b.release_cached_memory();
    { Tensor big = zeros({int64_t(8) << 20}, {DType::f32, kCuda}); }
    CHECK(b.release_cached_memory() >= size_t(32) << 20);
    CHECK(b.release_cached_memory() == 0);
    CHECK(sum(u).item() == 0.0);
  }

  TEST_CASE("copies between host and device round-trip exactly, any dtype") {
    const std::vector<double> v = {1.5, -2.25, 3e300, -0.0, 7};
    CHECK(from_vector(v, {5}, {DType::f64, kCuda}).to_vector() == v);
    const Tensor i = from_ints({-3, 9000000000LL, 0}, {3}, kCuda);
    CHECK(i.to_int_vector() == std::vector<int64_t>{-3, 9000000000LL, 0});
    Tensor a = from_vector(v, {5}, {DType::f64, kCuda}), b = zeros({5}, {DType::f64, kCuda});
    b.copy_(a);  // device-to-device copy
    CHECK(b.to_vector() == v);
    CHECK(a.to(Device::cpu()).device() == Device::cpu());
  }

  TEST_CASE("int64 fill, cast, arange, compares and indexing on the device") {
    CHECK(arange(6, {DType::i64, kCuda}).to_int_vector() == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
    CHECK(full({3}, -7, {DType::i64, kCuda}).to_int_vector() == std::vector<int64_t>{-7, -7, -7});
    const Tensor f = from_vector(std::vector<double>{-1.75, 2.5, 3.0}, {3}, {DType::f64, kCuda});
    CHECK(to_dtype(f, DType::i64).to_int_vector() == std::vector<int64_t>{-1, 2, 3});  // truncation, as the CPU
    const Tensor a = from_ints({1, 5, 3}, {3}, kCuda), b = from_ints({2, 5, 1}, {3}, kCuda);
    CHECK(gt(a, b).to_int_vector() == std::vector<int64_t>{0, 0, 1});
    CHECK(eq(a, b).to_int_vector() == std::vector<int64_t>{0, 1, 0});
    CHECK(add(a, b).to_int_vector() == std::vector<int64_t>{3, 10, 4});
    CHECK(sum(a).to_int_vector() == std::vector<int64_t>{9});
    CHECK(index_select(a, 0, from_ints({2, 2, 0}, {3}, kCuda)).to_int_vector() == std::vector<int64_t>{3, 3, 1});
    CHECK(argmax(from_vector(std::vector<double>{0.1, 0.9, 0.3, 0.8, 0.2, 0.1}, {2, 3}, {DType::f32, kCuda}), 1)
              .to_int_vector() == std::vector<int64_t>{1, 0});
  }

  TEST_CASE("scatters with duplicate indices equal the CPU bitwise (same summation order)") {
    Generator g(5);
    const Tensor src = g.normal({200, 33}, {DType::f64});
    std::vector<int64_t> rows(200);
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = int64_t((i * 7) % 5);  // heavy duplication
    const auto c = index_add(src, {5, 33}, 0, from_ints(rows, {200})).to_vector();
    const auto k = index_add(src.to(kCuda), {5, 33}, 0, from_ints(rows, {200}, kCuda)).to_vector();
    CHECK(c == k);
    std::vector<int64_t> cols(200 * 33);
    for (size_t i = 0; i < cols.size(); ++i) cols[i] = int64_t((i * 13) % 4);
    const auto sc = scatter_add(src, {200, 4}, 1, from_ints(cols, {200, 33})).to_vector();
    const auto sk = scatter_add(src.to(kCuda), {200, 4}, 1, from_ints(cols, {200, 33}, kCuda)).to_vector();
    CHECK(sc == sk);
  }

  TEST_CASE("reductions are deterministic run to run and agree with the CPU") {
    Generator g(8);
    const Tensor x = g.normal({64, 3000}, {DType::f32});
    const Tensor xg = x.to(kCuda);
    for (const Axes& axes : {Axes{0}, Axes{1}, Axes{}}) {
      const auto a = sum(xg, axes).to_vector(), b = sum(xg, axes).to_vector();
      CHECK(a == b);
      CHECK(rel_diff(sum(xg, axes), sum(x.to(DType::f64), axes)) <= 1e-6);  // double accumulation
    }
    CHECK(sum(zeros({0, 3}, {DType::f32, kCuda}), {0}).to_vector() == std::vector<double>{0, 0, 0});
  }

  TEST_CASE("matmul: float32 large product and empty operands") {
    Generator g(9);
    const Tensor a = g.normal({2, 300, 257}, {DType::f64}), b = g.normal({257, 190}, {DType::f64});
    const Tensor ref = matmul(a, b);
    CHECK(rel_diff(matmul(a.to(DType::f32).to(kCuda), b.to(DType::f32).to(kCuda)), ref) <= 1e-5);
    CHECK(rel_diff(matmul(a.to(kCuda), b.to(kCuda)), ref) <= 1e-13);
    const Tensor e = matmul(zeros({3, 0}, {DType::f64, kCuda}), zeros({0, 2}, {DType::f64, kCuda}));
    CHECK(e.to_vector() == std::vector<double>(6, 0.0));
  }

  TEST_CASE("conv2d kernels match naive loops and are each other's adjoints") {
    struct Geometry {
      Shape x, w;
      Conv2dParams p;
    };
    for (const Geometry& q : {Geometry{{2, 3, 9, 8}, {4, 3, 3, 3}, {2, 2, 1, 1}},
                              Geometry{{3, 5, 6, 7}, {2, 5, 1, 1}, {1, 1, 0, 0}},  // pointwise fast path
                              Geometry{{1, 2, 7, 7}, {3, 2, 3, 2}, {1, 2, 2, 0}}}) {
      for (DType t : {DType::f64, DType::f32}) {
        Generator g(21);
        const Tensor x = g.normal(q.x, {DType::f64}), w = g.normal(q.w, {DType::f64});
        const test::ConvReference r = test::naive_conv2d(x.to_vector(), w.to_vector(), q.x, q.w, q.p);
        const Shape& ys = r.y_shape;
        const auto& ref = r.y;
        const Tensor xg = x.to(t).to(kCuda), wg = w.to(t).to(kCuda);
        Tensor y = empty(ys, {t, kCuda});
        backend(kCuda).conv2d(xg, wg, y, q.p);
        const double tol = t == DType::f64 ? 1e-12 : 1e-5;
        INFO("conv " << to_string(q.x) << " * " << to_string(q.w) << " " << dtype_name(t));
        CHECK(max_rel(y.to_vector(), ref) <= tol);
        // <conv(x, w), gy> = <x, input_grad(gy, w)> = <w, weight_grad(x, gy)>
        const Tensor gy = g.normal(ys, {DType::f64});
        Tensor gx = full(q.x, 123.0, {t, kCuda}), gw = full(q.w, 123.0, {t, kCuda});  // poisoned: must be overwritten
        backend(kCuda).conv2d_input_grad(gy.to(t).to(kCuda), wg, gx, q.p);
        backend(kCuda).conv2d_weight_grad(xg, gy.to(t).to(kCuda), gw, q.p);
        const double lhs = vdot(ref, gy.to_vector());
        CHECK(std::fabs(vdot(x.to_vector(), gx.to_vector()) - lhs) <= tol * 10 * (1 + std::fabs(lhs)));
        CHECK(std::fabs(vdot(w.to_vector(), gw.to_vector()) - lhs) <= tol * 10 * (1 + std::fabs(lhs)));
      }
    }
  }

  TEST_CASE("conv2d on each engine (cuDNN, timed cuDNN, own kernels): naive loops, no TF32, bitwise repeatable") {
    struct Geometry {
      Shape x, w;
      Conv2dParams p;
    };
    std::vector<cuda::ConvEngine> engines = {cuda::ConvEngine::native};
    if (cuda::cudnn_compiled())
      engines.insert(engines.end(),
                     {cuda::ConvEngine::automatic, cuda::ConvEngine::cudnn, cuda::ConvEngine::cudnn_benchmark});
    else
      MESSAGE("built without cuDNN: only flatmin's own kernels checked");
    const cuda::ConvEngine before = cuda::conv_engine();
    for (cuda::ConvEngine e : engines) {
      cuda::set_conv_engine(e);
      for (const Geometry& q : {Geometry{{4, 64, 9, 10}, {64, 64, 3, 3}, {1, 1, 1, 1}},  // Winograd's shape, 576 terms
                                Geometry{{3, 32, 9, 8}, {48, 32, 3, 3}, {2, 2, 1, 1}},   // stride 2
                                Geometry{{3, 16, 8, 8}, {24, 16, 1, 1}, {2, 2, 0, 0}},   // 1x1 downsample
                                Geometry{{2, 3, 15, 13}, {8, 3, 7, 7}, {2, 2, 3, 3}},    // ImageNet stem
                                Geometry{{1, 2, 7, 7}, {3, 2, 3, 2}, {1, 2, 2, 0}}}) {
        for (DType t : {DType::f64, DType::f32}) {
          Generator g(33);
          const Tensor x = g.normal(q.x, {DType::f64}), w = g.normal(q.w, {DType::f64});
          const Shape ys = test::naive_conv2d(x.to_vector(), w.to_vector(), q.x, q.w, q.p).y_shape;
          const Tensor gy = g.normal(ys, {DType::f64});
          const test::ConvReference r = test::naive_conv2d(x.to_vector(), w.to_vector(), q.x, q.w, q.p, gy.to_vector());
          const Tensor xg = x.to(t).to(kCuda), wg = w.to(t).to(kCuda), gyg = gy.to(t).to(kCuda);
          auto run = [&] {  // outputs poisoned: every element must be written
            Tensor y = full(ys, 123.0, {t, kCuda}), gx = full(q.x, 123.0, {t, kCuda}),
                   gw = full(q.w, 123.0, {t, kCuda});
            backend(kCuda).conv2d(xg, wg, y, q.p);
            backend(kCuda).conv2d_input_grad(gyg, wg, gx, q.p);
            backend(kCuda).conv2d_weight_grad(xg, gyg, gw, q.p);
            return std::array<std::vector<double>, 3>{y.to_vector(), gx.to_vector(), gw.to_vector()};
          };
          const auto first = run(), second = run();
          // float32 to 1e-5 of the largest value: TF32's 10-bit mantissa would miss it by ~100x.
          const double tol = t == DType::f64 ? 1e-12 : 1e-5;
          INFO("engine " << int(e) << " conv " << to_string(q.x) << " * " << to_string(q.w) << " " << dtype_name(t));
          CHECK(max_rel(first[0], r.y) <= tol);
          CHECK(max_rel(first[1], r.gx) <= tol);
          CHECK(max_rel(first[2], r.gw) <= tol);
          for (int k = 0; k < 3; ++k) CHECK(first[k] == second[k]);  // deterministic algorithms only
        }
      }
    }
    cuda::set_conv_engine(before);
  }

  // Bf16Convolutions on CUDA: cuDNN's tensor-core kernels on operands rounded to bfloat16
  // (nearest even), float32 accumulation, the output rounded to bfloat16 (cuDNN's legacy API
  // has no float32 output for bfloat16 operands): each element within 2^-8 of its size plus
  // float32-accumulation slack of the exact convolution of the rounded operands.
  TEST_CASE("bfloat16 convolutions on cuDNN: the convolution of rounded operands, to bfloat16 output rounding") {
    const Tensor x0 = Generator(3).normal({2, 8, 6, 6}), w0 = Generator(4).normal({8, 8, 3, 3});
    if (!cuda::cudnn_compiled()) {  // the op refuses by name
      Bf16Convolutions on;
      CHECK_FALSE(backend(kCuda).supports_bf16_convolutions());
      CHECK_THROWS_WITH_AS(conv2d(x0.to(kCuda), w0.to(kCuda), {}, {1, 1}), doctest::Contains("no cuDNN"), Error);
      return;
    }
    using test::round_to_bf16;
    auto within = [](const std::vector<double>& got, const std::vector<double>& ref) {
      double big = 0, worst = 0;
      for (double r : ref) big = std::max(big, std::fabs(r));
      for (size_t i = 0; i < ref.size(); ++i)
        worst = std::max(worst, std::fabs(got[i] - ref[i]) / (std::ldexp(std::fabs(ref[i]), -8) + 1e-5 * big));
      return got.size() == ref.size() && worst <= 1.0;
    };
    struct Geometry {
      Shape x, w;
      Conv2dParams p;
    };
    const cuda::ConvEngine before = cuda::conv_engine();
    for (cuda::ConvEngine e :
         {cuda::ConvEngine::automatic, cuda::ConvEngine::cudnn, cuda::ConvEngine::cudnn_benchmark}) {
      cuda::set_conv_engine(e);
      CHECK(backend(kCuda).supports_bf16_convolutions());
      for (const Geometry& q : {Geometry{{4, 64, 9, 10}, {64, 64, 3, 3}, {1, 1, 1, 1}},    // a Winograd shape
                                Geometry{{3, 32, 9, 8}, {48, 32, 3, 3}, {2, 2, 1, 1}},     // stride 2
                                Geometry{{3, 16, 8, 8}, {24, 16, 1, 1}, {2, 2, 0, 0}}}) {  // 1x1 downsample
        Generator g(35);
        const Tensor x = g.normal(q.x), w = g.normal(q.w);
        const Shape ys = test::naive_conv2d(x.to_vector(), w.to_vector(), q.x, q.w, q.p).y_shape;
        const Tensor gy = g.normal(ys);
        const test::ConvReference r = test::naive_conv2d(round_to_bf16(x.to_vector()), round_to_bf16(w.to_vector()),
                                                         q.x, q.w, q.p, round_to_bf16(gy.to_vector()));
        Conv2dParams p = q.p;
        p.bf16 = true;
        const Tensor xg = x.to(kCuda), wg = w.to(kCuda), gyg = gy.to(kCuda);
        Tensor y = full(ys, 123.0, {DType::f32, kCuda}), gx = full(q.x, 123.0, {DType::f32, kCuda}),
               gw = full(q.w, 123.0, {DType::f32, kCuda});  // poisoned: every element must be written
        backend(kCuda).conv2d(xg, wg, y, p);
        backend(kCuda).conv2d_input_grad(gyg, wg, gx, p);
        backend(kCuda).conv2d_weight_grad(xg, gyg, gw, p);
        INFO("engine " << int(e) << " conv " << to_string(q.x) << " * " << to_string(q.w));
        CHECK(within(y.to_vector(), r.y));
        CHECK(within(gx.to_vector(), r.gx));
        CHECK(within(gw.to_vector(), r.gw));
        CHECK(max_rel(y.to_vector(), r.y) > 1e-6);  // not float32 results: the output rounding shows
      }
    }
    {  // the op under the scope; refused by name on the native engine
      Bf16Convolutions on;
      const Tensor y = conv2d(x0.to(kCuda), w0.to(kCuda), {}, {1, 1});
      const test::ConvReference r = test::naive_conv2d(round_to_bf16(x0.to_vector()), round_to_bf16(w0.to_vector()),
                                                       x0.shape(), w0.shape(), {1, 1, 1, 1});
      CHECK(within(y.to_vector(), r.y));
      cuda::set_conv_engine(cuda::ConvEngine::native);
      CHECK_FALSE(backend(kCuda).supports_bf16_convolutions());
      CHECK_THROWS_WITH_AS(conv2d(x0.to(kCuda), w0.to(kCuda), {}, {1, 1}),
                           doctest::Contains("FLATMIN_CUDA_CONV=native"), Error);
    }
    cuda::set_conv_engine(before);
  }

  TEST_CASE("batch norm kernels split across blocks equal the CPU's (every direction, with ReLU, eval; float64)") {
    // Channels of 9,216, 7,000 (parts not aligned with the planes) and 9,000 elements are
    // summed in several parts per channel; small ones (the op cases) in one.
    for (const Shape& xs : {Shape{16, 3, 24, 24}, Shape{200, 2, 7, 5}, Shape{1, 1, 9000}, Shape{3, 4, 2, 2}}) {
      Generator g(9);
      const int64_t C = xs[1];
      const TensorOptions f64{DType::f64};
      const Tensor x = g.normal(xs, f64) * 3.0 + 1.0, w = g.normal({C}, f64), b = g.normal({C}, f64),
                   gy = g.normal(xs, f64), a = g.normal(xs, f64), beta = g.normal({C}, f64);
      auto run = [&](Device d) {
        Backend& B = backend(d);
        const TensorOptions o{DType::f64, d};
        auto out = [&](const Shape& s) { return full(s, 123.0, o); };  // poisoned: must be overwritten
        Tensor y = out(xs), mean = out({C}), var = out({C}), gx = out(xs), gw = out({C}), gb = out({C});
        Tensor dg = out(xs), dx = out(xs), dw = out({C}), dg2 = out(xs), dx2 = out(xs);
        const Tensor xd = x.to(d), wd = w.to(d), bd = b.to(d), gd = gy.to(d), ad = a.to(d), betad = beta.to(d);
        REQUIRE(B.batch_norm_forward(xd, wd, bd, 1e-5, y, mean, var));
        REQUIRE(B.batch_norm_backward(gd, xd, wd, mean, var, 1e-5, gx, gw, gb));
        REQUIRE(B.batch_norm_input_grad_vjp(ad, gd, xd, wd, mean, var, 1e-5, dg, dx, dw));
        REQUIRE(B.batch_norm_weight_grad_vjp(betad, gd, xd, mean, var, 1e-5, dg2, dx2));
        // batch norm + ReLU (forward, and the backward masked by its output), eval mode with
        // and without ReLU, and the residual add + ReLU
        Tensor yr = out(xs), meanr = out({C}), varr = out({C}), gxr = out(xs), gwr = out({C}), gbr = out({C});
        Tensor ye = out(xs), yer = out(xs), ar = out(xs);
        REQUIRE(B.batch_norm_relu_forward(xd, wd, bd, 1e-5, yr, meanr, varr));
        REQUIRE(B.batch_norm_relu_backward(gd, yr, xd, wd, meanr, varr, 1e-5, gxr, gwr, gbr));
        REQUIRE(B.batch_norm_eval(xd, wd, bd, false, ye));
        REQUIRE(B.batch_norm_eval(xd, wd, bd, true, yer));
        REQUIRE(B.add_relu(xd, gd, ar));
        std::vector<std::vector<double>> r;
        for (const Tensor* t : {&y,   &mean, &var,   &gx,   &gw,  &gb,  &dg,  &dx, &dw,  &dg2,
                                &dx2, &yr,   &meanr, &varr, &gxr, &gwr, &gbr, &ye, &yer, &ar})
          r.push_back(t->to_vector());
        return r;
      };
      const auto cpu = run(Device::cpu()), gpu = run(kCuda);
      INFO("x " << to_string(xs));
      for (size_t k = 0; k < cpu.size(); ++k) {
        INFO("output " << k
                       << " (y, mean, var, gx, gw, gb, dg, dx, dw, dg2, dx2, relu: y, mean, var, gx, gw, gb, eval: y, "
                          "y relu, add_relu)");
        CHECK(max_rel(gpu[k], cpu[k]) <= 1e-12);
      }
      CHECK(run(kCuda) == gpu);  // the same partial sums in the same order: bitwise repeatable
    }
  }

  TEST_CASE("pooling kernels match naive loops; avg pool adjoint identity") {
    const Shape xs = {2, 3, 7, 6};
    const Tensor x = distinct_values(xs, 4, 5.0);
    const auto xv = x.to_vector();
    for (const Pool2dParams& p :
         {Pool2dParams{2, 2, 2, 2, 0, 0}, Pool2dParams{3, 3, 2, 2, 1, 1}, Pool2dParams{3, 2, 1, 2, 1, 0}}) {
      const test::PoolReference r = test::naive_pool2d(xv, xs, p);
      const Shape& ys = r.y_shape;
      const std::vector<double>&mx = r.max, &av = r.avg;
      const std::vector<int64_t>& mi = r.argmax;
      for (DType t : {DType::f64, DType::f32}) {
        INFO("pool kernel " << p.kernel_h << "x" << p.kernel_w << " stride " << p.stride_h << "," << p.stride_w
                            << " pad " << p.pad_h << "," << p.pad_w << " " << dtype_name(t));
        const Tensor xg = x.to(t).to(kCuda);
        Tensor y = empty(ys, {t, kCuda}), ix = empty(ys, {DType::i64, kCuda}), a = empty(ys, {t, kCuda});
        backend(kCuda).max_pool2d(xg, y, ix, p);
        backend(kCuda).avg_pool2d(xg, a, p);
        const double tol = t == DType::f64 ? 1e-14 : 1e-6;
        CHECK(max_rel(y.to_vector(), mx) <= tol);
        CHECK(ix.to_int_vector() == mi);
        CHECK(max_rel(a.to_vector(), av) <= tol);
        const Tensor gy = Generator(6).normal(ys, {DType::f64});
        Tensor gx = full(xs, 123.0, {t, kCuda});
        backend(kCuda).avg_pool2d_adjoint(gy.to(t).to(kCuda), gx, p);
        const double lhs = vdot(av, gy.to_vector());
        CHECK(std::fabs(vdot(xv, gx.to_vector()) - lhs) <= tol * 100 * (1 + std::fabs(lhs)));
      }
    }
  }

  TEST_CASE("device errors: mixing devices, bad index, int64 where floats are needed") {
    const Tensor a = ones({2}, {DType::f32}), b = ones({2}, {DType::f32, kCuda});
    CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("different devices"), Error);
    CHECK_THROWS_WITH_AS(matmul(ones({2, 2}), ones({2, 2}, {DType::f32, kCuda})),
                         doctest::Contains("different devices"), Error);
    CHECK_THROWS_WITH_AS(zeros({2}, {DType::f32, Device::cuda(63)}), doctest::Contains("cuda:63 is not usable"), Error);
    CHECK_THROWS_AS(exp(ones({2}, {DType::i64, kCuda})), Error);
    CHECK(Device::parse("cuda:0") == kCuda);
    CHECK(std::string(backend(kCuda).name()) == "cuda:0");
  }
}
