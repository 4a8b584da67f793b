// Every differentiable op at orders 1, 2 and 3 against finite differences in float64, plus
// the symmetries ⟨u,Hv⟩ = ⟨v,Hu⟩ and ∇³f[u,v] = ∇³f[v,u]. The case list is checked
// against the library's own list of op names, so a new op without a case fails here.
#include <doctest/doctest.h>

#include <functional>
#include <set>

#include "autodiff/autodiff.hpp"

using namespace flatmin;

namespace {

struct Case {
  std::string name;
  std::vector<Shape> shapes;
  std::function<Tensor(const Params&)> op;
  double low = -1.5, high = 1.5;  // inputs drawn uniformly here (kinks and ties avoided)
  bool positive_distinct = false;  // spread values so that max/min/relu/abs are far from ties and kinks
};

TensorOptions f64{DType::f64};

// Inputs for a case: uniform in [low, high]; with positive_distinct, a shuffled grid of
// well-separated values of both signs (no ties, no zeros).
Params make_inputs(const Case& c, uint64_t seed) {
  Generator g(seed);
  Params xs;
  for (const Shape& s : c.shapes) {
    const double shift = 0.09 * double(xs.size());  // keeps different inputs apart (no ties)
    if (c.positive_distinct) {
      const int64_t n = numel(s);
      auto perm = g.permutation(n);
      std::vector<double> v(n);
      for (int64_t i = 0; i < n; ++i) v[i] = (double(perm[i]) - double(n) / 2 + 0.5) * 0.37 + 0.11 * double(seed % 3) + shift;
      xs.push_back(from_vector(v, s, f64));
    } else {
      xs.push_back(g.uniform(s, f64, c.low, c.high));
    }
  }
  return xs;
}

// Smooth scalar harness: Σ w1⊙y + Σ w2⊙y³ with fixed random weights, so that second and
// third derivatives of the op's rule (the rule of the rule) are exercised too.
ScalarFn harness(const Case& c, const Shape& out_shape) {
  Generator g(99);
  Tensor w1 = g.uniform(out_shape, f64, -1, 1), w2 = g.uniform(out_shape, f64, -1, 1);
  return [c, w1, w2](const Params& x) {
    Tensor y = c.op(x);
    if (y.dtype() != DType::f64) y = to_dtype(y, DType::f64);
    return add(sum(mul(w1, y)), sum(mul(w2, mul(y, mul(y, y)))));
  };
}

Tensor idx(std::vector<int64_t> v, Shape s) { return from_ints(v, s); }

std::vector<Case> nn_cases();

std::vector<Case> cases() {
  using P = const Params&;
  std::vector<Case> c = {
      {"add", {{3, 4}, {4}}, [](P x) { return add(x[0], x[1]); }},
      {"add", {{2, 1, 3}, {4, 1}}, [](P x) { return add(x[0], x[1]); }},
      {"sub", {{3, 4}, {3, 1}}, [](P x) { return sub(x[0], x[1]); }},
      {"mul", {{3, 4}, {4}}, [](P x) { return mul(x[0], x[1]); }},
      {"mul", {{2, 3}, {2, 3}}, [](P x) { return mul(x[0], x[1]); }},
      {"div", {{3, 4}, {4}}, [](P x) { return div(x[0], x[1]); }, 0.5, 2.0},
      {"maximum", {{3, 4}, {4}}, [](P x) { return maximum(x[0], x[1]); }, 0, 0, true},
      {"minimum", {{3, 4}, {3, 4}}, [](P x) { return minimum(x[0], x[1]); }, 0, 0, true},
      {"neg", {{5}}, [](P x) { return neg(x[0]); }},
      {"add_scalar", {{5}}, [](P x) { return add_scalar(x[0], 0.7); }},
      {"mul_scalar", {{5}}, [](P x) { return mul_scalar(x[0], -1.3); }},
      {"rsub_scalar", {{5}}, [](P x) { return rsub_scalar(x[0], 2.0); }},
      {"pow", {{6}}, [](P x) { return pow(x[0], 2.5); }, 0.5, 2.0},
      {"pow", {{6}}, [](P x) { return pow(x[0], -1.5); }, 0.5, 2.0},
      {"pow", {{6}}, [](P x) { return pow(x[0], 3.0); }},
      {"pow", {{6}}, [](P x) { return square(x[0]); }},
      {"reciprocal", {{6}}, [](P x) { return reciprocal(x[0]); }, 0.5, 2.0},
      {"exp", {{6}}, [](P x) { return exp(x[0]); }},
      {"log", {{6}}, [](P x) { return log(x[0]); }, 0.3, 3.0},
      {"sqrt", {{6}}, [](P x) { return sqrt(x[0]); }, 0.3, 3.0},
      {"rsqrt", {{6}}, [](P x) { return rsqrt(x[0]); }, 0.3, 3.0},
      {"tanh", {{6}}, [](P x) { return tanh(x[0]); }},
      {"sigmoid", {{6}}, [](P x) { return sigmoid(x[0]); }, -3, 3},
      {"softplus", {{6}}, [](P x) { return softplus(x[0]); }, -3, 3},
      {"relu", {{8}}, [](P x) { return relu(x[0]); }, 0, 0, true},
      {"relu_backward", {{8}, {8}}, [](P x) { return relu_backward(x[0], x[1]); }, 0, 0, true},
      {"abs", {{8}}, [](P x) { return abs(x[0]); }, 0, 0, true},
      {"where", {{3, 4}, {4}},
       [](P x) {
         Tensor c = from_vector(std::vector<double>{1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1}, {3, 4}, {DType::f64});
         return where(c, x[0], x[1]);
       }},
      {"sum", {{2, 3, 4}}, [](P x) { return sum(x[0], {0, 2}); }},
      {"sum", {{2, 3, 4}}, [](P x) { return sum(x[0], {1}, true); }},
      {"sum", {{2, 3}}, [](P x) { return sum(x[0]); }},
      {"sum", {{2, 3, 4}}, [](P x) { return mean(x[0], {-1}); }},
      {"max", {{3, 4}}, [](P x) { return max(x[0], {1}); }, 0, 0, true},
      {"max", {{3, 4}}, [](P x) { return max(x[0]); }, 0, 0, true},
      {"min", {{3, 4}}, [](P x) { return min(x[0], {0}, true); }, 0, 0, true},
      {"reshape", {{2, 6}}, [](P x) { return reshape(x[0], {3, -1}); }},
      {"reshape", {{2, 3}}, [](P x) { return flatten(unsqueeze(x[0], 1)); }},
      {"permute", {{2, 3, 4}}, [](P x) { return permute(x[0], {2, 0, 1}); }},
      {"permute", {{3, 4}}, [](P x) { return transpose(x[0]); }},
      {"expand", {{3, 1}}, [](P x) { return expand(x[0], {2, 3, 4}); }},
      {"slice", {{5, 4}}, [](P x) { return slice(x[0], 0, 1, 5, 2); }},
      {"slice", {{3, 7}}, [](P x) { return slice(x[0], -1, 2, 6); }},
      {"slice_backward", {{2, 4}}, [](P x) { return slice_backward(x[0], {5, 4}, 0, 1, 2); }},
      {"concat", {{2, 3}, {1, 3}}, [](P x) { return concat({x[0], x[1]}, 0); }},
      {"concat", {{2, 3}, {2, 2}}, [](P x) { return concat({x[0], x[1], x[0]}, 1); }},
      {"concat", {{2, 3}, {2, 3}}, [](P x) { return stack({x[0], x[1]}, 1); }},
      {"index_select", {{4, 3}}, [](P x) { return index_select(x[0], 0, idx({3, 0, 3, 1}, {4})); }},
      {"index_add", {{4, 3}}, [](P x) { return index_add(x[0], {5, 3}, 0, idx({4, 0, 4, 1}, {4})); }},
      {"gather", {{3, 4}}, [](P x) { return gather(x[0], 1, idx({0, 3, 3, 1, 2, 2, 0, 0, 1}, {3, 3})); }},
      {"scatter_add", {{3, 2}},
       [](P x) { return scatter_add(x[0], {3, 4}, 1, idx({0, 0, 3, 1, 2, 3}, {3, 2})); }},
      {"matmul", {{3, 4}, {4, 2}}, [](P x) { return matmul(x[0], x[1]); }},
      {"matmul", {{2, 3, 4}, {4, 5}}, [](P x) { return matmul(x[0], x[1]); }},
      {"matmul", {{2, 1, 3, 4}, {3, 4, 2}}, [](P x) { return matmul(x[0], x[1]); }},
      {"matmul", {{4}, {4, 3}}, [](P x) { return matmul(x[0], x[1]); }},
      {"matmul", {{3, 4}, {4}}, [](P x) { return matmul(x[0], x[1]); }},
      {"matmul", {{4, 3}, {4, 2}}, [](P x) { return matmul(transpose(x[0]), x[1]); }},
      {"logsumexp", {{3, 4}}, [](P x) { return logsumexp(x[0], 1); }},
      {"softmax", {{3, 4}}, [](P x) { return softmax(x[0], 0); }},
      {"log_softmax", {{3, 4}}, [](P x) { return log_softmax(x[0], -1); }},
  };
  for (Case& n : nn_cases()) c.push_back(std::move(n));
  return c;
}

// The network ops (nn_ops.hpp): conv with stride 1/2, padding 0/1, kernel 1/3, odd sizes
// and outputs that leave rows of the input unused; pooling; normalization in training
// mode (batch statistics differentiated at every order) and eval mode; losses.
std::vector<Case> nn_cases() {
  using P = const Params&;
  auto bn = [](const Tensor& x, const Tensor& w, const Tensor& b, bool training) {
    Tensor rm = zeros({x.size(1)}, f64), rv = full({x.size(1)}, 0.7, f64);
    return batch_norm(x, w, b, rm, rv, training);
  };
  std::vector<Case> c = {
      {"conv2d", {{2, 2, 5, 5}, {3, 2, 3, 3}}, [](P x) { return conv2d(x[0], x[1], {}, {1, 1}); }},
      {"conv2d", {{1, 2, 6, 7}, {2, 2, 3, 3}}, [](P x) { return conv2d(x[0], x[1], {}, {2, 0}); }},
      {"conv2d", {{1, 2, 6, 5}, {2, 2, 3, 3}, {2}}, [](P x) { return conv2d(x[0], x[1], x[2], {2, 1}); }},
      {"conv2d", {{2, 3, 5, 5}, {2, 3, 1, 1}}, [](P x) { return conv2d(x[0], x[1], {}, {2, 0}); }},
      {"conv2d", {{2, 3, 3, 4}, {2, 3, 1, 1}}, [](P x) { return conv2d(x[0], x[1], {}, {1, 0}); }},
      {"conv2d_input_grad", {{1, 3, 3, 4}, {3, 2, 3, 3}},
       [](P x) { return conv2d_input_grad(x[0], x[1], {1, 2, 6, 7}, {2, 1}); }},
      {"conv2d_input_grad", {{2, 2, 3, 3}, {2, 3, 3, 3}},
       [](P x) { return conv2d_input_grad(x[0], x[1], {2, 3, 5, 5}, {1, 0}); }},
      {"conv2d_weight_grad", {{1, 2, 6, 7}, {1, 3, 3, 4}},
       [](P x) { return conv2d_weight_grad(x[0], x[1], {3, 2, 3, 3}, {2, 1}); }},
      {"conv2d_weight_grad", {{2, 3, 4, 4}, {2, 2, 4, 4}},
       [](P x) { return conv2d_weight_grad(x[0], x[1], {2, 3, 1, 1}, {1, 0}); }},
      {"max_pool2d", {{2, 2, 4, 5}}, [](P x) { return max_pool2d(x[0], {2, 2, 0}); }, 0, 0, true},
      {"max_pool2d", {{1, 2, 7, 6}}, [](P x) { return max_pool2d(x[0], {3, 2, 1}); }, 0, 0, true},
      {"avg_pool2d", {{1, 2, 5, 6}}, [](P x) { return avg_pool2d(x[0], {3, 2, 1}); }},
      {"avg_pool2d_adjoint", {{1, 2, 3, 3}}, [](P x) { return avg_pool2d_adjoint(x[0], {1, 2, 5, 6}, {3, 2, 1}); }},
      {"adaptive_avg_pool2d", {{1, 2, 5, 7}}, [](P x) { return adaptive_avg_pool2d(x[0], 3, 2); }},
      {"adaptive_avg_pool2d", {{2, 2, 4, 4}}, [](P x) { return adaptive_avg_pool2d(x[0], 1, 1); }},
      {"batch_norm", {{4, 3, 2, 2}, {3}, {3}}, [bn](P x) { return bn(x[0], x[1], x[2], true); }},
      {"batch_norm", {{5, 3}, {3}, {3}}, [bn](P x) { return bn(x[0], x[1], x[2], true); }},
      {"batch_norm", {{3, 2, 2, 2}, {2}, {2}}, [bn](P x) { return bn(x[0], x[1], x[2], false); }},
      {"group_norm", {{2, 4, 2, 3}, {4}, {4}}, [](P x) { return group_norm(x[0], 2, x[1], x[2]); }},
      {"cross_entropy", {{4, 3}},
       [](P x) { return cross_entropy(x[0], from_ints({2, 0, 1, 2}, {4}), Reduction::mean); }, -3, 3},
      {"cross_entropy", {{3, 5}}, [](P x) { return cross_entropy(x[0], from_ints({4, 0, 1}, {3}), Reduction::none); }},
      {"mse_loss", {{3, 4}, {3, 4}}, [](P x) { return mse_loss(x[0], x[1], Reduction::sum); }},
  };
  return c;
}

void collect_ops(const Tensor& y, std::set<std::string>& seen) {
  std::vector<Node*> stack{y.node().get()};
  std::set<Node*> visited;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (!n || !visited.insert(n).second) continue;
    seen.insert(n->op);
    for (auto& e : n->inputs) stack.push_back(e.get());
  }
}

}  // namespace

TEST_CASE("every op: derivatives of orders 1-3 match finite differences (float64)") {
  std::set<std::string> covered;
  for (const Case& c : cases()) {
    for (uint64_t seed : {1u, 2u}) {
      Params x = make_inputs(c, seed);
      Shape out_shape;
      {
        NoGrad ng;
        out_shape = c.op(x).shape();
      }
      ScalarFn f = harness(c, out_shape);
      {
        Params xl = leaves(x);
        collect_ops(f(xl), covered);
      }
      DerivativeCheck r = check_derivatives(f, x, {.seed = seed});
      INFO("op " << c.name << " " << to_string(c.shapes[0]) << " seed " << seed << ": " << r.message);
      CHECK(r.ok);
    }
  }
  for (const std::string& name : differentiable_op_names()) {
    if (name == "to_dtype" || name == "to_device") continue;  // precision/device changes: tested below
    INFO("op without a derivative case: " << name);
    CHECK(covered.count(name) == 1);
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
