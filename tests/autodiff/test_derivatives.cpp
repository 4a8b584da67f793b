// Every op case of tests/op_cases.cpp marked fd, at orders 1, 2 and 3 against finite
// differences in float64, plus the symmetries ⟨u,Hv⟩ = ⟨v,Hu⟩ and ∇³f[u,v] = ∇³f[v,u]. The
// case table is checked against the op registry in both directions, so a new op without a
// case (or a case naming an op it does not record) fails here.
#include <doctest/doctest.h>

#include <functional>
#include <set>
#include <string>

#include "autodiff/autodiff.hpp"
#include "tests/op_cases.hpp"

using namespace flatmin;
using flatmin::test::OpCase;

namespace {

TensorOptions f64{DType::f64};

Params cast_all(const Params& xs, DType t) {
  Params r;
  for (const Tensor& x : xs) r.push_back(x.to(t));
  return r;
}

}  // namespace

TEST_CASE("every op case: derivatives of orders 1-3 match finite differences (float64)") {
  for (const OpCase& c : test::op_cases()) {
    if (!c.fd) continue;
    for (uint64_t seed : {1u, 2u}) {
      Params x = test::case_inputs(c, seed);
      auto on_cpu = test::harness(c, test::output_shape(c, x));
      ScalarFn f = [on_cpu](const Params& p) { return on_cpu(p, Device::cpu()); };
      DerivativeCheck r = check_derivatives(f, x, {.seed = seed});
      INFO("op case " << c.label << " " << to_string(c.shapes[0]) << " seed " << seed << ": " << r.message);
      CHECK(r.ok);
    }
  }
}

TEST_CASE("the op cases and the op registry cover each other, for both checkers") {
  // checker -> registry names recorded by its cases (forward graph and differentiable gradient)
  std::set<std::string> by_fd, by_parity;
  for (const OpCase& c : test::op_cases()) {
    INFO("op case " << c.label);
    CHECK((c.fd || c.parity));
    const Params x = test::case_inputs(c, 1);
    std::set<std::string> seen = test::recorded_ops(c, x);
    if (c.parity)  // the parity checker also runs float32, where a change of dtype is recorded
      for (const std::string& n : test::recorded_ops(c, cast_all(x, DType::f32))) seen.insert(n);
    // every recorded name is a registry entry, and a case records the op it is listed for
    for (const std::string& n : seen) {
      bool listed = false;
      for (const OpInfo& e : op_table) listed |= e.name == n;
      INFO("recorded op " << n);
      CHECK(listed);
    }
    if (c.op) CHECK(seen.count(op_name(*c.op)) == 1);
    if (c.fd) by_fd.insert(seen.begin(), seen.end());
    if (c.parity) by_parity.insert(seen.begin(), seen.end());
  }
  for (const OpInfo& e : op_table) {
    const std::string name(e.name);
    INFO("registry op " << name);
    // `own` ops are checked by tests of their own: to_dtype below, to_device in tests/gpu
    if (e.check == OpCheck::fd) CHECK_MESSAGE(by_fd.count(name) == 1, "no finite-difference case records it");
    if (name != "to_device") CHECK_MESSAGE(by_parity.count(name) == 1, "no CPU/CUDA parity case records it");
  }
}

TEST_CASE("to_dtype: gradients flow back converted, at every order") {
  // f64 -> f32 -> f64 loses precision, so compare against the same function computed in f64.
  Generator g(5);
  Tensor x = g.uniform({4}, f64, -1, 1), u = g.sphere({4}, f64), v = g.sphere({4}, f64);
  auto f32path = [](const Tensor& t) { return sum(pow(to_dtype(to_dtype(t, DType::f32), DType::f64), 3.0)); };
  auto f64path = [](const Tensor& t) { return sum(pow(t, 3.0)); };
  auto close = [](const Tensor& a, const Tensor& b) {
    auto va = a.to_vector(), vb = b.to_vector();
    for (size_t i = 0; i < va.size(); ++i) CHECK(va[i] == doctest::Approx(vb[i]).epsilon(1e-5));
  };
  close(gradient(f32path, x), gradient(f64path, x));
  close(hvp(f32path, x, v), hvp(f64path, x, v));
  close(third(f32path, x, u, v), third(f64path, x, u, v));
  CHECK(gradient(f32path, x).dtype() == DType::f64);
}

TEST_CASE("symmetry: <u, Hv> = <v, Hu> and third[u,v] = third[v,u]") {
  Generator g(3);
  Tensor A = g.normal({6, 6}, f64);
  ScalarFn f = [A](const Params& x) {
    return add(sum(tanh(matmul(A, x[0]))), mul(sum(x[1]), sum(exp(mul_scalar(x[0], 0.3)))));
  };
  Params x = {g.normal({6}, f64), g.normal({2}, f64)};
  Params u = g.sphere_like(x), v = g.sphere_like(x);
  const double uHv = dot(u, hvp(f, x, v)).item(), vHu = dot(v, hvp(f, x, u)).item();
  CHECK(uHv == doctest::Approx(vHu).epsilon(1e-12));
  Params tuv = third(f, x, u, v), tvu = third(f, x, v, u);
  for (size_t i = 0; i < tuv.size(); ++i) {
    auto a = tuv[i].to_vector(), b = tvu[i].to_vector();
    for (size_t k = 0; k < a.size(); ++k) CHECK(a[k] == doctest::Approx(b[k]).epsilon(1e-11));
  }
  // and the full symmetry of the third derivative tensor: <w, T[u,v]> = <u, T[w,v]>
  Params w = g.sphere_like(x);
  CHECK(dot(w, tuv).item() == doctest::Approx(dot(u, third(f, x, w, v)).item()).epsilon(1e-11));
}

TEST_CASE("third() of Σ tanh(A x) and of a two-layer tanh net matches finite differences of the HVP") {
  // The function of bench/bench.cpp's tanh_orders (smaller), and one where the gradient
  // reaching the inner tanh's rule depends on x (tanh_backward differentiated in both inputs).
  Generator g(11);
  Tensor A = mul_scalar(g.normal({9, 9}, f64), 1.0 / 3.0), B = mul_scalar(g.normal({9, 9}, f64), 1.0 / 3.0);
  ScalarFn one = [A](const Params& x) { return sum(tanh(matmul(A, x[0]))); };
  ScalarFn two = [A, B](const Params& x) { return sum(tanh(matmul(B, tanh(matmul(A, x[0]))))); };
  for (const ScalarFn& f : {one, two})
    for (uint64_t seed : {1u, 2u}) {
      DerivativeCheck r = check_derivatives(f, {g.normal({9}, f64)}, {.directions = 3, .seed = seed});
      INFO(r.message);
      CHECK(r.ok);
      CHECK(r.error.size() == 3);
    }
  // tanh's rule is the one op tanh_backward at every order (not square, rsub_scalar and mul)
  Tensor x = g.normal({9}, f64);
  x.requires_grad_();
  Tensor gx = grad(sum(tanh(x)), x, {.create_graph = true});
  REQUIRE(gx.requires_grad());
  CHECK(std::string(gx.node()->op) == "tanh_backward");
  Tensor hx = grad(dot(gx, g.normal({9}, f64)), x, {.create_graph = true});
  CHECK(std::string(hx.node()->op) == "tanh_backward");
}

TEST_CASE("dense Hessian matches the Hessian-vector products and is symmetric") {
  Generator g(4);
  Tensor A = g.normal({5, 5}, f64);
  auto f = [A](const Tensor& x) { return sum(softplus(matmul(A, x))); };
  Tensor x = g.normal({5}, f64);
  Tensor H = hessian(f, x);
  REQUIRE(H.shape() == Shape{5, 5});
  auto h = H.to_vector();
  for (int i = 0; i < 5; ++i) {
    Tensor e = zeros({5}, f64);
    data_ptr<double>(e)[i] = 1;
    auto col = hvp(f, x, e).to_vector();
    for (int j = 0; j < 5; ++j) {
      CHECK(h[j * 5 + i] == doctest::Approx(col[j]).epsilon(1e-12));
      CHECK(h[j * 5 + i] == doctest::Approx(h[i * 5 + j]).epsilon(1e-12));
    }
  }
}

TEST_CASE("jvp equals J v from finite differences") {
  Generator g(6);
  Tensor A = g.normal({3, 4}, f64);
  VectorFn f = [A](const Params& x) { return tanh(matmul(A, x[0])); };
  Tensor x = g.normal({4}, f64), v = g.normal({4}, f64);
  auto jv = jvp(f, {x}, {v}).to_vector();
  const double h = 1e-6;
  NoGrad ng;
  auto fp = f({add(x, mul_scalar(v, h))}).to_vector(), fm = f({sub(x, mul_scalar(v, h))}).to_vector();
  for (size_t i = 0; i < jv.size(); ++i) CHECK(jv[i] == doctest::Approx((fp[i] - fm[i]) / (2 * h)).epsilon(1e-7));
}

TEST_CASE("the derivative checker catches a rule that is right only at first order") {
  // f = s·t with s = Σx², t = Σx, written with detached factors the way a shortcut rule
  // would be: the value and the gradient are right, the Hessian misses ∇s∇tᵀ + ∇t∇sᵀ.
  ScalarFn shortcut = [](const Params& x) {
    Tensor s = sum(square(x[0])), t = sum(x[0]);
    return add(mul(s.detach(), t), mul(sub(s, s.detach()), t.detach()));
  };
  Tensor x = from_vector(std::vector<double>{0.3, -0.2, 0.5}, {3}, f64);
  DerivativeCheck r = check_derivatives(shortcut, {x});
  CHECK_FALSE(r.ok);
  CHECK(r.error[0] < 1e-7);
  CHECK(r.error[1] > 1e-2);
}
