// CUDA against CPU, op by op: forward values and derivatives of orders 1-3 (gradient, H v,
// ∇³f[u,v]) of the same scalar function on both devices. float64 to 1e-10 relative,
// float32 to 1e-4 (value, gradient) and 1e-3 (H v, third), relative to the largest entry.
#include "tests/gpu/gpu_parity.hpp"

using namespace flatmin;
using namespace flatmin::gpu_test;

namespace {

struct Case {
  std::string name;
  std::vector<Shape> shapes;
  std::function<Tensor(const Params&, Device)> op;
  double low = -1.5, high = 1.5;
  bool distinct = false;  // inputs far from ties and kinks (max/min/relu/abs)
};

Tensor idx(std::vector<int64_t> v, Shape s, Device d) { return from_ints(v, s, d); }

std::vector<Case> cases() {
  using P = const Params&;
  return {
      {"add broadcast", {{3, 4}, {4}}, [](P x, Device) { return add(x[0], x[1]); }},
      {"add 3-way broadcast", {{2, 1, 3}, {4, 1}}, [](P x, Device) { return add(x[0], x[1]); }},
      {"sub", {{3, 4}, {3, 1}}, [](P x, Device) { return sub(x[0], x[1]); }},
      {"mul large broadcast", {{5, 1, 37, 3}, {6, 1, 3}}, [](P x, Device) { return mul(x[0], x[1]); }},
      {"div", {{3, 4}, {4}}, [](P x, Device) { return div(x[0], x[1]); }, 0.5, 2.0},
      {"maximum", {{3, 4}, {4}}, [](P x, Device) { return maximum(x[0], x[1]); }, 0, 0, true},
      {"minimum", {{3, 4}, {3, 4}}, [](P x, Device) { return minimum(x[0], x[1]); }, 0, 0, true},
      {"neg/add_scalar/mul_scalar/rsub_scalar", {{7}},
       [](P x, Device) { return rsub_scalar(mul_scalar(add_scalar(neg(x[0]), 0.7), -1.3), 2.0); }},
      {"pow 2.5", {{6}}, [](P x, Device) { return pow(x[0], 2.5); }, 0.5, 2.0},
      {"pow -1.5", {{6}}, [](P x, Device) { return pow(x[0], -1.5); }, 0.5, 2.0},
      {"pow 3 and square", {{6}}, [](P x, Device) { return add(pow(x[0], 3.0), square(x[0])); }},
      {"reciprocal", {{6}}, [](P x, Device) { return reciprocal(x[0]); }, 0.5, 2.0},
      {"exp", {{6}}, [](P x, Device) { return exp(x[0]); }},
      {"log", {{6}}, [](P x, Device) { return log(x[0]); }, 0.3, 3.0},
      {"sqrt", {{6}}, [](P x, Device) { return sqrt(x[0]); }, 0.3, 3.0},
      {"rsqrt", {{6}}, [](P x, Device) { return rsqrt(x[0]); }, 0.3, 3.0},
      {"tanh", {{6}}, [](P x, Device) { return tanh(x[0]); }},
      {"sigmoid", {{9}}, [](P x, Device) { return sigmoid(mul_scalar(x[0], 8.0)); }, -3, 3},
      {"softplus", {{9}}, [](P x, Device) { return softplus(mul_scalar(x[0], 8.0)); }, -3, 3},
      {"relu", {{8}}, [](P x, Device) { return relu(x[0]); }, 0, 0, true},
      {"abs", {{8}}, [](P x, Device) { return abs(x[0]); }, 0, 0, true},
      {"where", {{3, 4}, {4}},
       [](P x, Device d) {
         Tensor c = from_vector(std::vector<double>{1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1}, {3, 4}, {x[0].dtype(), d});
         return where(c, x[0], x[1]);
       }},
      {"sum axes {0,2}", {{2, 3, 4}}, [](P x, Device) { return sum(x[0], {0, 2}); }},
      {"sum keepdim", {{2, 3, 4}}, [](P x, Device) { return sum(x[0], {1}, true); }},
      {"sum all", {{2, 3}}, [](P x, Device) { return sum(x[0]); }},
      {"mean last", {{2, 3, 4}}, [](P x, Device) { return mean(x[0], {-1}); }},
      {"sum long rows (block tree)", {{3, 1000}}, [](P x, Device) { return sum(x[0], {1}); }},
      {"sum leading axis, many outputs (column kernel)", {{40, 1100}}, [](P x, Device) { return sum(x[0], {0}); }},
      {"sum all, large (split into partials)", {{300, 250}}, [](P x, Device) { return sum(x[0]); }},
      {"sum over batch and plane (batch-norm shape)", {{40, 3, 30, 30}}, [](P x, Device) { return sum(x[0], {0, 2, 3}); }},
      {"max all, large (split into partials)", {{300, 250}}, [](P x, Device) { return max(x[0]); }, 0, 0, true},
      {"sum alternating axes", {{3, 5, 4, 6, 2}}, [](P x, Device) { return sum(x[0], {0, 2, 4}); }},
      {"max", {{3, 4}}, [](P x, Device) { return max(x[0], {1}); }, 0, 0, true},
      {"max all", {{30, 40}}, [](P x, Device) { return max(x[0]); }, 0, 0, true},
      {"min keepdim", {{3, 4}}, [](P x, Device) { return min(x[0], {0}, true); }, 0, 0, true},
      {"reshape/flatten", {{2, 6}}, [](P x, Device) { return flatten(unsqueeze(reshape(x[0], {3, -1}), 1)); }},
      {"permute", {{2, 3, 4}}, [](P x, Device) { return permute(x[0], {2, 0, 1}); }},
      {"permute 5-d", {{2, 3, 4, 2, 3}}, [](P x, Device) { return permute(x[0], {4, 2, 0, 3, 1}); }},
      {"transpose", {{3, 4}}, [](P x, Device) { return transpose(x[0]); }},
      {"expand", {{3, 1}}, [](P x, Device) { return expand(x[0], {2, 3, 4}); }},
      {"slice step 2", {{5, 4}}, [](P x, Device) { return slice(x[0], 0, 1, 5, 2); }},
      {"slice last axis", {{3, 7}}, [](P x, Device) { return slice(x[0], -1, 2, 6); }},
      {"slice_backward", {{2, 4}}, [](P x, Device) { return slice_backward(x[0], {5, 4}, 0, 1, 2); }},
      {"concat", {{2, 3}, {2, 2}}, [](P x, Device) { return concat({x[0], x[1], x[0]}, 1); }},
      {"stack", {{2, 3}, {2, 3}}, [](P x, Device) { return stack({x[0], x[1]}, 1); }},
      {"index_select", {{4, 3}}, [](P x, Device d) { return index_select(x[0], 0, idx({3, 0, 3, 1}, {4}, d)); }},
      {"index_select inner axis", {{2, 4, 3}}, [](P x, Device d) { return index_select(x[0], 1, idx({3, 3, 0}, {3}, d)); }},
      {"index_add duplicates", {{4, 3}}, [](P x, Device d) { return index_add(x[0], {5, 3}, 0, idx({4, 0, 4, 1}, {4}, d)); }},
      {"gather", {{3, 4}}, [](P x, Device d) { return gather(x[0], 1, idx({0, 3, 3, 1, 2, 2, 0, 0, 1}, {3, 3}, d)); }},
      {"scatter_add duplicates", {{3, 2}},
       [](P x, Device d) { return scatter_add(x[0], {3, 4}, 1, idx({0, 0, 3, 1, 2, 3}, {3, 2}, d)); }},
      {"matmul", {{3, 4}, {4, 2}}, [](P x, Device) { return matmul(x[0], x[1]); }},
      {"matmul batched x shared", {{2, 3, 4}, {4, 5}}, [](P x, Device) { return matmul(x[0], x[1]); }},
      {"matmul broadcast batch", {{2, 1, 3, 4}, {3, 4, 2}}, [](P x, Device) { return matmul(x[0], x[1]); }},
      {"matmul vector-matrix", {{4}, {4, 3}}, [](P x, Device) { return matmul(x[0], x[1]); }},
      {"matmul matrix-vector", {{3, 4}, {4}}, [](P x, Device) { return matmul(x[0], x[1]); }},
      {"matmul transposed", {{4, 3}, {4, 2}}, [](P x, Device) { return matmul(transpose(x[0]), x[1]); }},
      {"matmul larger", {{33, 70}, {70, 17}}, [](P x, Device) { return matmul(x[0], x[1]); }, -0.3, 0.3},
      {"logsumexp", {{3, 4}}, [](P x, Device) { return logsumexp(x[0], 1); }},
      {"softmax", {{3, 4}}, [](P x, Device) { return softmax(x[0], 0); }},
      {"log_softmax", {{3, 4}}, [](P x, Device) { return log_softmax(x[0], -1); }},
      {"to_dtype round trip", {{5}}, [](P x, Device) { return to_dtype(to_dtype(x[0], DType::f64), x[0].dtype()); }},
  };
}

Params inputs(const Case& c, uint64_t seed) {
  Generator g(seed);
  Params xs;
  for (size_t i = 0; i < c.shapes.size(); ++i) {
    if (c.distinct) xs.push_back(add_scalar(distinct_values(c.shapes[i], seed + i, 3.0), 0.013 * double(i + 1)));
    else xs.push_back(g.uniform(c.shapes[i], {DType::f64}, c.low, c.high));
  }
  return xs;
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("every op: CUDA matches CPU in value and derivatives of orders 1-3") {
    for (const Case& c : cases()) {
      const Params x = inputs(c, 11);
      Shape out_shape;
      {
        NoGrad ng;
        out_shape = c.op(x, Device::cpu()).shape();
      }
      const DeviceFn f = harness(c.op, out_shape);
      check_parity(c.name, f, x, DType::f64);
      check_parity(c.name, f, x, DType::f32);
    }
  }

  TEST_CASE("to_device: gradients flow back across devices at every order") {
    const Params x = {Generator(3).uniform({6}, {DType::f64}, -1, 1)};
    // The same function with its middle computed on the other device.
    DeviceFn f = [](const Params& p, Device d) {
      const Device other = d.kind == DeviceKind::cpu ? kCuda : Device::cpu();
      return sum(pow(to_device(tanh(to_device(p[0], other)), d), 3.0));
    };
    check_parity("to_device", f, x, DType::f64);
  }
}
