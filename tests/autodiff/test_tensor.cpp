// Tensors, kernels and random numbers.
#include <doctest/doctest.h>

#include <tbb/task_arena.h>

#include <cmath>

#include "autodiff/autodiff.hpp"
#include "autodiff/cuda/cuda_entry.hpp"

using namespace flatmin;

TEST_CASE("creation, shapes and host access") {
  Tensor t = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(t.dtype() == DType::f32);
  CHECK(t.shape() == Shape{2, 3});
  CHECK(t.size(-1) == 3);
  CHECK(t.data<float>()[4] == 5.0f);
  CHECK_THROWS_AS(t.data<double>(), Error);
  CHECK(arange(4, {DType::i64}).to_int_vector() == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(zeros({0, 3}).numel() == 0);
}

TEST_CASE("broadcasting, reductions and layout against hand-computed values") {
  Tensor a = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3}, {DType::f64});
  Tensor b = from_vector(std::vector<double>{10, 20, 30}, {3}, {DType::f64});
  CHECK(add(a, b).to_vector() == std::vector<double>{11, 22, 33, 14, 25, 36});
  CHECK(sum(a, {0}).to_vector() == std::vector<double>{5, 7, 9});
  CHECK(sum(a, {1}).to_vector() == std::vector<double>{6, 15});
  CHECK(max(a, {1}).to_vector() == std::vector<double>{3, 6});
  CHECK(transpose(a).to_vector() == std::vector<double>{1, 4, 2, 5, 3, 6});
  CHECK(slice(a, 1, 0, 3, 2).to_vector() == std::vector<double>{1, 3, 4, 6});
  CHECK(matmul(a, transpose(a)).to_vector() == std::vector<double>{14, 32, 32, 77});
  CHECK(argmax(a, 1).to_int_vector() == std::vector<int64_t>{2, 2});
  CHECK(gather(a, 1, from_ints({2, 0}, {2, 1})).to_vector() == std::vector<double>{3, 4});
  CHECK(expand(b, {2, 3}).to_vector() == std::vector<double>{10, 20, 30, 10, 20, 30});
  auto sm = softmax(from_vector(std::vector<double>{1000, 1000}, {2}, {DType::f64}), 0).to_vector();
  CHECK(sm[0] == doctest::Approx(0.5));
}

TEST_CASE("large reductions are deterministic and accurate") {
  Generator g(7);
  Tensor x = g.uniform({1 << 20}, {DType::f32});
  const double s1 = sum(x).item(), s2 = sum(x).item();
  CHECK(s1 == s2);
  double ref = 0;
  for (double v : x.to_vector()) ref += v;
  CHECK(s1 == doctest::Approx(ref).epsilon(1e-6));
  Tensor m = g.uniform({3, 50000, 7}, {DType::f64});
  auto r = sum(m, {0, 2}).to_vector();
  auto v = m.to_vector();
  double r0 = 0;
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 7; ++k) r0 += v[(i * 50000 + 0) * 7 + k];
  CHECK(r[0] == doctest::Approx(r0).epsilon(1e-12));
}

TEST_CASE("sum, max and min over every set of axes match naive loops, at any thread count") {
  // extents not multiples of the kernel's eight accumulators; strided and contiguous spans
  const Shape shape{3, 10, 9, 11};
  Tensor x = Generator(9).normal(shape, {DType::f64});
  const std::vector<double> v = x.to_vector();
  for (int mask = 1; mask < 16; ++mask) {
    Axes axes;
    for (int64_t d = 0; d < 4; ++d)
      if (mask >> d & 1) axes.push_back(d);
    std::vector<double> s(size_t(x.numel()), 0.0), hi(s.size(), -INFINITY), lo(s.size(), INFINITY);
    Shape kept = shape;
    for (int64_t d : axes) kept[size_t(d)] = 1;
    for (int64_t i = 0; i < x.numel(); ++i) {
      int64_t rem = i, o = 0, stride = 1;
      for (int64_t d = 3; d >= 0; --d) {
        const int64_t c = rem % shape[size_t(d)];
        rem /= shape[size_t(d)];
        if (kept[size_t(d)] != 1) o += c * stride;
        stride *= kept[size_t(d)];
      }
      s[size_t(o)] += v[size_t(i)];
      hi[size_t(o)] = std::max(hi[size_t(o)], v[size_t(i)]);
      lo[size_t(o)] = std::min(lo[size_t(o)], v[size_t(i)]);
    }
    auto run = [&] {
      return std::vector<std::vector<double>>{sum(x, axes).to_vector(), max(x, axes).to_vector(),
                                              min(x, axes).to_vector()};
    };
    const auto many = run();
    std::vector<std::vector<double>> one;
    tbb::task_arena single(1);
    single.execute([&] { one = run(); });
    CAPTURE(mask);
    CHECK(many == one);
    for (size_t o = 0; o < many[0].size(); ++o) {
      CHECK(many[0][o] == doctest::Approx(s[o]).epsilon(1e-12));
      CHECK(many[1][o] == hi[o]);
      CHECK(many[2][o] == lo[o]);
    }
  }
}

TEST_CASE("a row broadcast against a full operand (either side) matches naive loops") {
  Generator g(4);
  for (int64_t K : {1, 3, 8, 100, 600})
    for (int64_t R : {1, 7, 300}) {
      Tensor full = g.normal({R, 2, K}, {DType::f64}), row = g.normal({K}, {DType::f64});
      const auto f = full.to_vector(), r = row.to_vector();
      const auto left = sub(row, full).to_vector(), right = div(full, row).to_vector();
      bool ok = true;
      for (size_t i = 0; i < f.size(); ++i) {
        ok &= left[i] == r[i % size_t(K)] - f[i];
        ok &= right[i] == f[i] / r[i % size_t(K)];
      }
      CAPTURE(K);
      CAPTURE(R);
      CHECK(ok);
    }
}

TEST_CASE("GEMM agrees with a naive product (float32, large enough to split)") {
  Generator g(8);
  Tensor a = g.normal({130, 300}), b = g.normal({300, 257});
  auto c = matmul(a, b).to_vector();
  auto va = a.to_vector(), vb = b.to_vector();
  for (int i : {0, 64, 129})
    for (int j : {0, 100, 256}) {
      double s = 0;
      for (int k = 0; k < 300; ++k) s += va[i * 300 + k] * vb[k * 257 + j];
      CHECK(c[i * 257 + j] == doctest::Approx(s).epsilon(1e-4));
    }
}

TEST_CASE("Philox random numbers: reproducible, moments right, sphere unit norm") {
  Generator g1(42), g2(42);
  CHECK(g1.normal({100}).to_vector() == g2.normal({100}).to_vector());
  CHECK(g1.offset() == 100);
  Generator g(3);
  auto n = g.normal({200000}, {DType::f64}).to_vector();
  double m = 0, m2 = 0;
  for (double v : n) {
    m += v;
    m2 += v * v;
  }
  m /= n.size();
  m2 /= n.size();
  CHECK(std::fabs(m) < 0.01);
  CHECK(std::fabs(m2 - 1) < 0.02);
  auto r = g.rademacher({1000}, {DType::f64}).to_vector();
  for (double v : r) CHECK((v == 1.0 || v == -1.0));
  CHECK(sqrt(sum(square(g.sphere({17}, {DType::f64})))).item() == doctest::Approx(1.0).epsilon(1e-14));
  auto p = g.permutation(10);
  std::sort(p.begin(), p.end());
  for (int i = 0; i < 10; ++i) CHECK(p[i] == i);
}

TEST_CASE("asking for CUDA without a GPU is a clear error") {
  if (cuda_device_count() > 0) return;
  CHECK_THROWS_WITH_AS(zeros({2}, {DType::f32, Device::cuda()}), doctest::Contains("cuda:0 is not usable"), Error);
}

TEST_CASE("CUDA convolution engine: cuDNN is refused by name where the build lacks it") {
  const cuda::ConvEngine before = cuda::conv_engine();
  CHECK_NOTHROW(cuda::set_conv_engine(cuda::ConvEngine::native));
  CHECK(cuda::conv_engine() == cuda::ConvEngine::native);
  if (cuda::cudnn_compiled()) {
    for (cuda::ConvEngine e :
         {cuda::ConvEngine::automatic, cuda::ConvEngine::cudnn, cuda::ConvEngine::cudnn_benchmark}) {
      CHECK_NOTHROW(cuda::set_conv_engine(e));
      CHECK(cuda::conv_engine() == e);
    }
  } else {
    for (cuda::ConvEngine e : {cuda::ConvEngine::automatic, cuda::ConvEngine::cudnn, cuda::ConvEngine::cudnn_benchmark})
      CHECK_THROWS_WITH_AS(cuda::set_conv_engine(e), doctest::Contains("built without cuDNN"), Error);
  }
  cuda::set_conv_engine(before);
}
