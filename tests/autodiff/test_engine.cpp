// The tape and the engine: grad() options, backward(), errors, memory release.
#include <doctest/doctest.h>

#include <cmath>

#include "autodiff/autodiff.hpp"

using namespace flatmin;

static const TensorOptions f64{DType::f64};

TEST_CASE("grad of a simple expression, and its second derivative through create_graph") {
  Tensor x = scalar(1.5, {DType::f64, Device::cpu(), true});
  Tensor y = mul(pow(x, 3.0), exp(x));  // x³eˣ
  Tensor g = grad(y, x, {.create_graph = true});
  const double e = std::exp(1.5);
  CHECK(g.item() == doctest::Approx((3 * 1.5 * 1.5 + 1.5 * 1.5 * 1.5) * e).epsilon(1e-13));
  Tensor h = grad(g, x, {.create_graph = true});
  CHECK(h.item() == doctest::Approx((6 * 1.5 + 6 * 2.25 + 3.375) * e).epsilon(1e-13));
  Tensor t = grad(h, x);
  CHECK(t.item() == doctest::Approx((6 + 18 * 1.5 + 9 * 2.25 + 3.375) * e).epsilon(1e-13));
}

TEST_CASE("backward accumulates into leaves; zero_grad clears") {
  Tensor w = from_vector(std::vector<double>{1, 2, 3}, {3}, {DType::f64, Device::cpu(), true});
  sum(square(w)).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{2, 4, 6});
  sum(w).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{3, 5, 7});
  CHECK_FALSE(w.grad().requires_grad());
  w.zero_grad();
  CHECK_FALSE(w.grad().defined());
}

TEST_CASE("a gradient with respect to an intermediate tensor") {
  Tensor x = from_vector(std::vector<double>{1, 2}, {2}, {DType::f64, Device::cpu(), true});
  Tensor h = mul_scalar(x, 3.0);
  Tensor y = sum(square(h));
  auto g = grad({y}, {h, x});
  CHECK(g[0].to_vector() == std::vector<double>{6, 12});
  CHECK(g[1].to_vector() == std::vector<double>{18, 36});
}

TEST_CASE("errors name the op and the shapes") {
  Tensor a = ones({2, 3}, f64), b = ones({4}, f64);
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("add: shapes [2, 3] and [4] do not broadcast"), Error);
  CHECK_THROWS_WITH_AS(add(a, ones({2, 3})), doctest::Contains("dtype mismatch"), Error);
  CHECK_THROWS_WITH_AS(matmul(a, ones({2, 3}, f64)), doctest::Contains("inner dimensions"), Error);
  Tensor x = ones({3}, {DType::f64, Device::cpu(), true});
  Tensor y = mul_scalar(x, 2.0);
  CHECK_THROWS_WITH_AS(grad(y, x), doctest::Contains("non-scalar output needs grad_outputs"), Error);
  Tensor z = ones({3}, {DType::f64, Device::cpu(), true});
  CHECK_THROWS_WITH_AS(grad(sum(y), z), doctest::Contains("not reachable"), Error);
  CHECK_FALSE(grad(std::vector<Tensor>{sum(y)}, std::vector<Tensor>{z}, {.allow_unused = true})[0].defined());
  CHECK_THROWS_WITH_AS(grad(sum(y), ones({3}, f64)), doctest::Contains("does not require grad"), Error);
  CHECK_THROWS_WITH_AS(reshape(a, {4, 2}), doctest::Contains("reshape: [2, 3]"), Error);
  CHECK_THROWS_WITH_AS(index_select(a, 1, from_ints({0, 3}, {2})), doctest::Contains("out of range"), Error);
  CHECK_THROWS_WITH_AS(Device::parse("gpu"), doctest::Contains("not a device"), Error);
}

TEST_CASE("a second sweep over a released graph is an error; retain_graph allows it") {
  Tensor x = ones({3}, {DType::f64, Device::cpu(), true});
  Tensor y = sum(exp(x));
  grad(y, x);
  CHECK_THROWS_WITH_AS(grad(y, x), doctest::Contains("already freed"), Error);
  Tensor y2 = sum(exp(x));
  grad({y2}, {x}, {.retain_graph = 1});
  CHECK(grad(y2, x).to_vector()[0] == doctest::Approx(std::exp(1.0)));
}

TEST_CASE("in-place modification of a saved tensor is detected") {
  Tensor w = ones({3}, f64);
  Tensor x = ones({3}, {DType::f64, Device::cpu(), true});
  Tensor y = sum(mul(x, w));
  w.add_(ones({3}, f64));
  CHECK_THROWS_WITH_AS(grad(y, x), doctest::Contains("modified in place"), Error);
  CHECK_THROWS_WITH_AS(x.add_(ones({3}, f64)), doctest::Contains("NoGrad"), Error);
}

TEST_CASE("NoGrad records nothing; detach cuts the graph") {
  Tensor x = ones({3}, {DType::f64, Device::cpu(), true});
  {
    NoGrad ng;
    CHECK_FALSE(exp(x).requires_grad());
  }
  CHECK(exp(x).requires_grad());
  CHECK_FALSE(exp(x.detach()).requires_grad());
}

TEST_CASE("10,000 training-style steps run in constant memory") {
  Generator g(1);
  Tensor w = g.normal({16, 8}, {DType::f32}), b = zeros({8});
  w.requires_grad_();
  b.requires_grad_();
  Tensor xb = g.normal({32, 16}), yb = g.normal({32, 8});
  auto step = [&] {
    Tensor loss = mean(square(sub(tanh(add(matmul(xb, w), b)), yb)));
    loss.backward();
    NoGrad ng;
    w.add_(w.grad(), -0.01);
    b.add_(b.grad(), -0.01);
    w.zero_grad();
    b.zero_grad();
  };
  for (int i = 0; i < 10; ++i) step();
  const int64_t nodes = Node::live_count(), bytes = Storage::live_bytes();
  for (int i = 0; i < 10000; ++i) step();
  CHECK(Node::live_count() == nodes);
  CHECK(Storage::live_bytes() == bytes);
}

TEST_CASE("HVPs in a loop release their graphs too") {
  Generator g(2);
  Tensor x = g.normal({10}, f64), v = g.normal({10}, f64);
  auto f = [](const Tensor& t) { return sum(tanh(t)); };
  hvp(f, x, v);
  const int64_t nodes = Node::live_count(), bytes = Storage::live_bytes();
  for (int i = 0; i < 500; ++i) third(f, x, v, v);
  CHECK(Node::live_count() == nodes);
  CHECK(Storage::live_bytes() == bytes);
}

TEST_CASE("a graph of 200,000 ops is swept and freed without recursion") {
  Tensor x = scalar(0.5, {DType::f64, Device::cpu(), true});
  Tensor y = x;
  for (int i = 0; i < 200000; ++i) y = add_scalar(y, 1e-6);
  CHECK(grad(y, x).item() == 1.0);
  y = Tensor();  // freeing the chain must not overflow the stack
  CHECK(Node::live_count() < 10);
}
