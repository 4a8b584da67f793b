#include "tests/op_cases.hpp"

namespace flatmin::test {

namespace {

using P = const Params&;
using D = Device;

Tensor idx(std::vector<int64_t> v, Shape s, D d) { return from_ints(v, s, d); }

// Batch norm with fresh running statistics on the inputs' device (left alone: the case
// differentiates the normalization, not the running estimates).
Tensor bn(P x, D d, bool training, bool relu = false) {
  const TensorOptions o{x[0].dtype(), d};
  Tensor rm = zeros({x[0].size(1)}, o), rv = full({x[0].size(1)}, 0.7, o);
  return batch_norm(x[0], x[1], x[2], rm, rv, {.training = training, .update_running = false, .relu = relu});
}
// Fused ReLU (BatchNormOptions::relu, add_relu). Finite differences of ReLU are valid only away
// from its kink: an input whose pre-activations come within 0.002 of 0 is an error, so that
// a case never passes by luck across the kink (the checker's steps, about 2.5e-5 along unit
// directions, move a pre-activation by about 1e-4 here).
void away_from_kink(const char* what, P x, const std::function<Tensor(P)>& pre_activation) {
  NoGrad ng;
  Params plain;
  for (const Tensor& t : x) plain.push_back(t.detach());
  const double margin = min(abs(pre_activation(plain))).item();
  if (margin < 0.002)
    throw Error(std::string(what) + " case: a pre-activation is " + std::to_string(margin) + " from ReLU's kink");
}
Tensor bn_relu(P x, D d, bool training) {
  away_from_kink("batch_norm + relu", x, [&](P p) { return bn(p, d, training); });
  return bn(x, d, training, true);
}
Tensor add_relu_case(P x) {
  away_from_kink("add_relu", x, [](P p) { return add(p[0], p[1]); });
  return add_relu(x[0], x[1]);
}

// fd: small cases, also run on CUDA unless parity = false. fd = false: sizes that take
// the device's other kernel paths (block trees, split reductions, Winograd), for parity only.
std::vector<OpCase> elementwise_cases() {
  return {
      {.op = Op::add, .label = "add broadcast", .shapes = {{3, 4}, {4}}, .fn = [](P x, D) { return add(x[0], x[1]); }},
      {.op = Op::add,
       .label = "add 3-way broadcast",
       .shapes = {{2, 1, 3}, {4, 1}},
       .fn = [](P x, D) { return add(x[0], x[1]); }},
      {.op = Op::sub, .label = "sub", .shapes = {{3, 4}, {3, 1}}, .fn = [](P x, D) { return sub(x[0], x[1]); }},
      {.op = Op::mul,
       .label = "mul broadcast",
       .shapes = {{3, 4}, {4}},
       .fn = [](P x, D) { return mul(x[0], x[1]); },
       .parity = false},
      {.op = Op::mul,
       .label = "mul",
       .shapes = {{2, 3}, {2, 3}},
       .fn = [](P x, D) { return mul(x[0], x[1]); },
       .parity = false},
      {.op = Op::mul,
       .label = "mul large broadcast",
       .shapes = {{5, 1, 37, 3}, {6, 1, 3}},
       .fn = [](P x, D) { return mul(x[0], x[1]); },
       .fd = false},
      {.op = Op::div,
       .label = "div",
       .shapes = {{3, 4}, {4}},
       .fn = [](P x, D) { return div(x[0], x[1]); },
       .low = 0.5,
       .high = 2.0},
      {.op = Op::maximum,
       .label = "maximum",
       .shapes = {{3, 4}, {4}},
       .fn = [](P x, D) { return maximum(x[0], x[1]); },
       .distinct = true},
      {.op = Op::minimum,
       .label = "minimum",
       .shapes = {{3, 4}, {3, 4}},
       .fn = [](P x, D) { return minimum(x[0], x[1]); },
       .distinct = true},
      {.op = Op::neg, .label = "neg", .shapes = {{5}}, .fn = [](P x, D) { return neg(x[0]); }, .parity = false},
      {.op = Op::add_scalar,
       .label = "add_scalar",
       .shapes = {{5}},
       .fn = [](P x, D) { return add_scalar(x[0], 0.7); },
       .parity = false},
      {.op = Op::mul_scalar,
       .label = "mul_scalar",
       .shapes = {{5}},
       .fn = [](P x, D) { return mul_scalar(x[0], -1.3); },
       .parity = false},
      {.op = Op::rsub_scalar,
       .label = "rsub_scalar",
       .shapes = {{5}},
       .fn = [](P x, D) { return rsub_scalar(x[0], 2.0); },
       .parity = false},
      {.label = "neg/add_scalar/mul_scalar/rsub_scalar",
       .shapes = {{7}},
       .fn = [](P x, D) { return rsub_scalar(mul_scalar(add_scalar(neg(x[0]), 0.7), -1.3), 2.0); },
       .fd = false},
      {.op = Op::pow,
       .label = "pow 2.5",
       .shapes = {{6}},
       .fn = [](P x, D) { return pow(x[0], 2.5); },
       .low = 0.5,
       .high = 2.0},
      {.op = Op::pow,
       .label = "pow -1.5",
       .shapes = {{6}},
       .fn = [](P x, D) { return pow(x[0], -1.5); },
       .low = 0.5,
       .high = 2.0},
      {.op = Op::pow, .label = "pow 3", .shapes = {{6}}, .fn = [](P x, D) { return pow(x[0], 3.0); }, .parity = false},
      {.op = Op::pow, .label = "square", .shapes = {{6}}, .fn = [](P x, D) { return square(x[0]); }, .parity = false},
      {.op = Op::pow,
       .label = "pow 3 and square",
       .shapes = {{6}},
       .fn = [](P x, D) { return add(pow(x[0], 3.0), square(x[0])); },
       .fd = false},
      {.op = Op::reciprocal,
       .label = "reciprocal",
       .shapes = {{6}},
       .fn = [](P x, D) { return reciprocal(x[0]); },
       .low = 0.5,
       .high = 2.0},
      {.op = Op::exp, .label = "exp", .shapes = {{6}}, .fn = [](P x, D) { return exp(x[0]); }},
      {.op = Op::log, .label = "log", .shapes = {{6}}, .fn = [](P x, D) { return log(x[0]); }, .low = 0.3, .high = 3.0},
      {.op = Op::sqrt,
       .label = "sqrt",
       .shapes = {{6}},
       .fn = [](P x, D) { return sqrt(x[0]); },
       .low = 0.3,
       .high = 3.0},
      {.op = Op::rsqrt,
       .label = "rsqrt",
       .shapes = {{6}},
       .fn = [](P x, D) { return rsqrt(x[0]); },
       .low = 0.3,
       .high = 3.0},
      {.op = Op::tanh, .label = "tanh", .shapes = {{6}}, .fn = [](P x, D) { return tanh(x[0]); }},
      {.op = Op::tanh_backward,
       .label = "tanh_backward",
       .shapes = {{6}, {6}},
       .fn = [](P x, D) { return tanh_backward(x[0], x[1]); }},
      {.op = Op::sigmoid,
       .label = "sigmoid",
       .shapes = {{6}},
       .fn = [](P x, D) { return sigmoid(x[0]); },
       .low = -3,
       .high = 3,
       .parity = false},
      {.op = Op::sigmoid,
       .label = "sigmoid, both tails",
       .shapes = {{9}},
       .fn = [](P x, D) { return sigmoid(mul_scalar(x[0], 8.0)); },
       .low = -3,
       .high = 3,
       .fd = false},
      {.op = Op::softplus,
       .label = "softplus",
       .shapes = {{6}},
       .fn = [](P x, D) { return softplus(x[0]); },
       .low = -3,
       .high = 3,
       .parity = false},
      {.op = Op::softplus,
       .label = "softplus, both tails",
       .shapes = {{9}},
       .fn = [](P x, D) { return softplus(mul_scalar(x[0], 8.0)); },
       .low = -3,
       .high = 3,
       .fd = false},
      {.op = Op::relu, .label = "relu", .shapes = {{8}}, .fn = [](P x, D) { return relu(x[0]); }, .distinct = true},
      {.op = Op::relu_backward,
       .label = "relu_backward",
       .shapes = {{8}, {8}},
       .fn = [](P x, D) { return relu_backward(x[0], x[1]); },
       .distinct = true,
       .parity = false},
      {.op = Op::abs, .label = "abs", .shapes = {{8}}, .fn = [](P x, D) { return abs(x[0]); }, .distinct = true},
      {.op = Op::where,
       .label = "where",
       .shapes = {{3, 4}, {4}},
       .fn =
           [](P x, D d) {
             Tensor c = from_vector(std::vector<double>{1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1}, {3, 4}, {x[0].dtype(), d});
             return where(c, x[0], x[1]);
           }},
  };
}

std::vector<OpCase> reduction_cases() {
  return {
      {.op = Op::sum,
       .label = "sum axes {0,2}",
       .shapes = {{2, 3, 4}},
       .fn =
           [](P x, D) {
             return sum(x[0], {0, 2});
           }},
      {.op = Op::sum, .label = "sum keepdim", .shapes = {{2, 3, 4}}, .fn = [](P x, D) { return sum(x[0], {1}, true); }},
      {.op = Op::sum, .label = "sum all", .shapes = {{2, 3}}, .fn = [](P x, D) { return sum(x[0]); }},
      {.op = Op::sum, .label = "mean last", .shapes = {{2, 3, 4}}, .fn = [](P x, D) { return mean(x[0], {-1}); }},
      {.op = Op::sum,
       .label = "sum long rows (block tree)",
       .shapes = {{3, 1000}},
       .fn = [](P x, D) { return sum(x[0], {1}); },
       .fd = false},
      {.op = Op::sum,
       .label = "sum leading axis, many outputs (column kernel)",
       .shapes = {{40, 1100}},
       .fn = [](P x, D) { return sum(x[0], {0}); },
       .fd = false},
      {.op = Op::sum,
       .label = "sum all, large (split into partials)",
       .shapes = {{300, 250}},
       .fn = [](P x, D) { return sum(x[0]); },
       .fd = false},
      {.op = Op::sum,
       .label = "sum over batch and plane (batch-norm shape)",
       .shapes = {{40, 3, 30, 30}},
       .fn =
           [](P x, D) {
             return sum(x[0], {0, 2, 3});
           },
       .fd = false},
      {.op = Op::max,
       .label = "max all, large (split into partials)",
       .shapes = {{300, 250}},
       .fn = [](P x, D) { return max(x[0]); },
       .distinct = true,
       .fd = false},
      {.op = Op::sum,
       .label = "sum alternating axes",
       .shapes = {{3, 5, 4, 6, 2}},
       .fn =
           [](P x, D) {
             return sum(x[0], {0, 2, 4});
           },
       .fd = false},
      {.op = Op::max,
       .label = "max",
       .shapes = {{3, 4}},
       .fn = [](P x, D) { return max(x[0], {1}); },
       .distinct = true},
      {.op = Op::max,
       .label = "max all",
       .shapes = {{3, 4}},
       .fn = [](P x, D) { return max(x[0]); },
       .distinct = true,
       .parity = false},
      {.op = Op::max,
       .label = "max all, 30x40",
       .shapes = {{30, 40}},
       .fn = [](P x, D) { return max(x[0]); },
       .distinct = true,
       .fd = false},
      {.op = Op::min,
       .label = "min keepdim",
       .shapes = {{3, 4}},
       .fn = [](P x, D) { return min(x[0], {0}, true); },
       .distinct = true},
      {.label = "logsumexp", .shapes = {{3, 4}}, .fn = [](P x, D) { return logsumexp(x[0], 1); }},
      {.label = "softmax", .shapes = {{3, 4}}, .fn = [](P x, D) { return softmax(x[0], 0); }},
      {.label = "log_softmax", .shapes = {{3, 4}}, .fn = [](P x, D) { return log_softmax(x[0], -1); }},
  };
}

std::vector<OpCase> layout_cases() {
  return {
      {.op = Op::reshape,
       .label = "reshape",
       .shapes = {{2, 6}},
       .fn =
           [](P x, D) {
             return reshape(x[0], {3, -1});
           },
       .parity = false},
      {.op = Op::reshape,
       .label = "flatten/unsqueeze",
       .shapes = {{2, 3}},
       .fn = [](P x, D) { return flatten(unsqueeze(x[0], 1)); },
       .parity = false},
      {.op = Op::reshape,
       .label = "reshape/flatten",
       .shapes = {{2, 6}},
       .fn =
           [](P x, D) {
             return flatten(unsqueeze(reshape(x[0], {3, -1}), 1));
           },
       .fd = false},
      {.op = Op::permute,
       .label = "permute",
       .shapes = {{2, 3, 4}},
       .fn =
           [](P x, D) {
             return permute(x[0], {2, 0, 1});
           }},
      {.op = Op::permute,
       .label = "permute 5-d",
       .shapes = {{2, 3, 4, 2, 3}},
       .fn =
           [](P x, D) {
             return permute(x[0], {4, 2, 0, 3, 1});
           },
       .fd = false},
      {.op = Op::permute, .label = "transpose", .shapes = {{3, 4}}, .fn = [](P x, D) { return transpose(x[0]); }},
      {.op = Op::expand,
       .label = "expand",
       .shapes = {{3, 1}},
       .fn =
           [](P x, D) {
             return expand(x[0], {2, 3, 4});
           }},
      {.op = Op::slice,
       .label = "slice step 2",
       .shapes = {{5, 4}},
       .fn = [](P x, D) { return slice(x[0], 0, 1, 5, 2); }},
      {.op = Op::slice,
       .label = "slice last axis",
       .shapes = {{3, 7}},
       .fn = [](P x, D) { return slice(x[0], -1, 2, 6); }},
      {.op = Op::slice_backward,
       .label = "slice_backward",
       .shapes = {{2, 4}},
       .fn =
           [](P x, D) {
             return slice_backward(x[0], {5, 4}, 0, 1, 2);
           }},
      {.op = Op::concat,
       .label = "concat axis 0",
       .shapes = {{2, 3}, {1, 3}},
       .fn =
           [](P x, D) {
             return concat({x[0], x[1]}, 0);
           },
       .parity = false},
      {.op = Op::concat,
       .label = "concat",
       .shapes = {{2, 3}, {2, 2}},
       .fn =
           [](P x, D) {
             return concat({x[0], x[1], x[0]}, 1);
           }},
      {.op = Op::concat,
       .label = "stack",
       .shapes = {{2, 3}, {2, 3}},
       .fn =
           [](P x, D) {
             return stack({x[0], x[1]}, 1);
           }},
      {.op = Op::to_dtype,
       .label = "to_dtype round trip",
       .shapes = {{5}},
       .fn = [](P x, D) { return to_dtype(to_dtype(x[0], DType::f64), x[0].dtype()); },
       .fd = false},
  };
}

std::vector<OpCase> indexing_cases() {
  return {
      {.op = Op::index_select,
       .label = "index_select",
       .shapes = {{4, 3}},
       .fn =
           [](P x, D d) {
             return index_select(x[0], 0, idx({3, 0, 3, 1}, {4}, d));
           }},
      {.op = Op::index_select,
       .label = "index_select inner axis",
       .shapes = {{2, 4, 3}},
       .fn =
           [](P x, D d) {
             return index_select(x[0], 1, idx({3, 3, 0}, {3}, d));
           },
       .fd = false},
      {.op = Op::index_add,
       .label = "index_add duplicates",
       .shapes = {{4, 3}},
       .fn =
           [](P x, D d) {
             return index_add(x[0], {5, 3}, 0, idx({4, 0, 4, 1}, {4}, d));
           }},
      {.op = Op::gather,
       .label = "gather",
       .shapes = {{3, 4}},
       .fn =
           [](P x, D d) {
             return gather(x[0], 1, idx({0, 3, 3, 1, 2, 2, 0, 0, 1}, {3, 3}, d));
           }},
      {.op = Op::scatter_add,
       .label = "scatter_add duplicates",
       .shapes = {{3, 2}},
       .fn =
           [](P x, D d) {
             return scatter_add(x[0], {3, 4}, 1, idx({0, 0, 3, 1, 2, 3}, {3, 2}, d));
           }},
  };
}

std::vector<OpCase> linalg_cases() {
  auto mm = [](P x, D) { return matmul(x[0], x[1]); };
  return {
      {.op = Op::matmul, .label = "matmul", .shapes = {{3, 4}, {4, 2}}, .fn = mm},
      {.op = Op::matmul, .label = "matmul batched x shared", .shapes = {{2, 3, 4}, {4, 5}}, .fn = mm},
      {.op = Op::matmul, .label = "matmul broadcast batch", .shapes = {{2, 1, 3, 4}, {3, 4, 2}}, .fn = mm},
      {.op = Op::matmul, .label = "matmul vector-matrix", .shapes = {{4}, {4, 3}}, .fn = mm},
      {.op = Op::matmul, .label = "matmul matrix-vector", .shapes = {{3, 4}, {4}}, .fn = mm},
      {.op = Op::matmul,
       .label = "matmul transposed",
       .shapes = {{4, 3}, {4, 2}},
       .fn = [](P x, D) { return matmul(transpose(x[0]), x[1]); }},
      {.op = Op::matmul,
       .label = "matmul larger",
       .shapes = {{33, 70}, {70, 17}},
       .fn = mm,
       .low = -0.3,
       .high = 0.3,
       .fd = false},
  };
}

// The network ops (nn_ops.hpp): conv with stride 1/2, padding 0/1/2, kernel 1/3, odd
// sizes and outputs that leave rows of the input unused; Winograd sizes (3x3, stride 1,
// >= 32 channels) for parity; pooling; normalization in training mode (batch statistics
// differentiated at every order) and eval mode; losses.
std::vector<OpCase> nn_cases() {
  using C = Conv2dOptions;
  return {
      {.op = Op::conv2d,
       .label = "conv2d pad 1",
       .shapes = {{2, 2, 5, 5}, {3, 2, 3, 3}},
       .fn = [](P x, D) { return conv2d(x[0], x[1], {}, C{.stride = 1, .padding = 1}); },
       .parity = false},
      {.op = Op::conv2d,
       .label = "conv2d stride 2",
       .shapes = {{1, 2, 6, 7}, {2, 2, 3, 3}},
       .fn = [](P x, D) { return conv2d(x[0], x[1], {}, C{.stride = 2}); },
       .parity = false},
      {.op = Op::conv2d,
       .label = "conv2d stride 2 pad 1 + bias, small",
       .shapes = {{1, 2, 6, 5}, {2, 2, 3, 3}, {2}},
       .fn = [](P x, D) { return conv2d(x[0], x[1], x[2], C{.stride = 2, .padding = 1}); },
       .parity = false},
      {.op = Op::conv2d,
       .label = "conv2d 1x1 stride 2",
       .shapes = {{2, 3, 5, 5}, {2, 3, 1, 1}},
       .fn = [](P x, D) { return conv2d(x[0], x[1], {}, C{.stride = 2}); },
       .parity = false},
      {.op = Op::conv2d,
       .label = "conv2d 1x1, small",
       .shapes = {{2, 3, 3, 4}, {2, 3, 1, 1}},
       .fn = [](P x, D) { return conv2d(x[0], x[1]); },
       .parity = false},
      // channels-last activations (NHWC): the rules carry the option into the ops they record
      {.op = Op::conv2d,
       .label = "conv2d channels-last stride 2 pad 1 + bias, small",
       .shapes = {{1, 6, 5, 2}, {2, 2, 3, 3}, {2}},
       .fn = [](P x, D) { return conv2d(x[0], x[1], x[2], C{.stride = 2, .padding = 1, .channels_last = true}); },
       .parity = false},
      {.op = Op::conv2d_input_grad,
       .label = "conv2d_input_grad channels-last stride 2 pad 1",
       .shapes = {{1, 3, 4, 3}, {3, 2, 3, 3}},
       .fn =
           [](P x, D) {
             return conv2d_input_grad(x[0], x[1], {1, 6, 7, 2}, C{.stride = 2, .padding = 1, .channels_last = true});
           },
       .parity = false},
      {.op = Op::conv2d_weight_grad,
       .label = "conv2d_weight_grad channels-last stride 2 pad 1",
       .shapes = {{1, 6, 7, 2}, {1, 3, 4, 3}},
       .fn =
           [](P x, D) {
             return conv2d_weight_grad(x[0], x[1], {3, 2, 3, 3}, C{.stride = 2, .padding = 1, .channels_last = true});
           },
       .parity = false},
      {.op = Op::conv2d_input_grad,
       .label = "conv2d_input_grad stride 2 pad 1",
       .shapes = {{1, 3, 3, 4}, {3, 2, 3, 3}},
       .fn =
           [](P x, D) {
             return conv2d_input_grad(x[0], x[1], {1, 2, 6, 7}, C{.stride = 2, .padding = 1});
           },
       .parity = false},
      {.op = Op::conv2d_input_grad,
       .label = "conv2d_input_grad",
       .shapes = {{2, 2, 3, 3}, {2, 3, 3, 3}},
       .fn =
           [](P x, D) {
             return conv2d_input_grad(x[0], x[1], {2, 3, 5, 5}, C{});
           },
       .parity = false},
      {.op = Op::conv2d_weight_grad,
       .label = "conv2d_weight_grad stride 2 pad 1",
       .shapes = {{1, 2, 6, 7}, {1, 3, 3, 4}},
       .fn =
           [](P x, D) {
             return conv2d_weight_grad(x[0], x[1], {3, 2, 3, 3}, C{.stride = 2, .padding = 1});
           },
       .parity = false},
      {.op = Op::conv2d_weight_grad,
       .label = "conv2d_weight_grad 1x1",
       .shapes = {{2, 3, 4, 4}, {2, 2, 4, 4}},
       .fn =
           [](P x, D) {
             return conv2d_weight_grad(x[0], x[1], {2, 3, 1, 1}, C{});
           },
       .parity = false},
      {.op = Op::conv2d,
       .label = "conv2d stride 2 pad 1 + bias",
       .shapes = {{2, 3, 7, 6}, {4, 3, 3, 3}, {4}},
       .fn = [](P x, D) { return conv2d(x[0], x[1], x[2], C{.stride = 2, .padding = 1}); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::conv2d,
       .label = "conv2d 1x1",
       .shapes = {{2, 5, 4, 4}, {3, 5, 1, 1}},
       .fn = [](P x, D) { return conv2d(x[0], x[1]); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::conv2d_input_grad,
       .label = "conv2d_input_grad stride 2 pad 1, 3 channels",
       .shapes = {{2, 4, 4, 3}, {4, 3, 3, 3}},
       .fn =
           [](P x, D) {
             return conv2d_input_grad(x[0], x[1], {2, 3, 7, 6}, C{.stride = 2, .padding = 1});
           },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::conv2d_weight_grad,
       .label = "conv2d_weight_grad stride 2 pad 1, 3 channels",
       .shapes = {{2, 3, 7, 6}, {2, 4, 4, 3}},
       .fn =
           [](P x, D) {
             return conv2d_weight_grad(x[0], x[1], {4, 3, 3, 3}, C{.stride = 2, .padding = 1});
           },
       .low = -1,
       .high = 1,
       .fd = false},
      // 3x3 stride-1 with >= 32 channels: the Winograd kernels on both devices
      {.op = Op::conv2d,
       .label = "conv2d Winograd pad 1, odd plane",
       .shapes = {{2, 32, 5, 7}, {33, 32, 3, 3}},
       .fn = [](P x, D) { return conv2d(x[0], x[1], {}, C{.stride = 1, .padding = 1}); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::conv2d,
       .label = "conv2d Winograd pad 0",
       .shapes = {{2, 33, 6, 5}, {32, 33, 3, 3}},
       .fn = [](P x, D) { return conv2d(x[0], x[1]); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::conv2d_input_grad,
       .label = "conv2d_input_grad Winograd pad 2",
       .shapes = {{2, 32, 7, 6}, {32, 33, 3, 3}},
       .fn =
           [](P x, D) {
             return conv2d_input_grad(x[0], x[1], {2, 33, 5, 4}, C{.stride = 1, .padding = 2});
           },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::conv2d_weight_grad,
       .label = "conv2d_weight_grad Winograd pad 1",
       .shapes = {{3, 32, 5, 5}, {3, 32, 5, 5}},
       .fn =
           [](P x, D) {
             return conv2d_weight_grad(x[0], x[1], {32, 32, 3, 3}, C{.stride = 1, .padding = 1});
           },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::max_pool2d,
       .label = "max_pool2d 2",
       .shapes = {{2, 2, 4, 5}},
       .fn = [](P x, D) { return max_pool2d(x[0], {.kernel = 2, .stride = 2}); },
       .distinct = true,
       .parity = false},
      {.op = Op::max_pool2d,
       .label = "max_pool2d 3/2/1, one image",
       .shapes = {{1, 2, 7, 6}},
       .fn = [](P x, D) { return max_pool2d(x[0], {.kernel = 3, .stride = 2, .padding = 1}); },
       .distinct = true,
       .parity = false},
      {.op = Op::max_pool2d,
       .label = "max_pool2d 3/2/1",
       .shapes = {{2, 3, 7, 6}},
       .fn = [](P x, D) { return max_pool2d(x[0], {.kernel = 3, .stride = 2, .padding = 1}); },
       .distinct = true,
       .fd = false},
      {.op = Op::max_pool2d,
       .label = "max_pool2d 2, square",
       .shapes = {{1, 2, 6, 6}},
       .fn = [](P x, D) { return max_pool2d(x[0], {.kernel = 2}); },
       .distinct = true,
       .fd = false},
      {.op = Op::avg_pool2d,
       .label = "avg_pool2d 3/2/1, one image",
       .shapes = {{1, 2, 5, 6}},
       .fn = [](P x, D) { return avg_pool2d(x[0], {.kernel = 3, .stride = 2, .padding = 1}); },
       .parity = false},
      {.op = Op::avg_pool2d,
       .label = "avg_pool2d 3/2/1",
       .shapes = {{2, 3, 7, 6}},
       .fn = [](P x, D) { return avg_pool2d(x[0], {.kernel = 3, .stride = 2, .padding = 1}); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::avg_pool2d_adjoint,
       .label = "avg_pool2d_adjoint",
       .shapes = {{1, 2, 3, 3}},
       .fn =
           [](P x, D) {
             return avg_pool2d_adjoint(x[0], {1, 2, 5, 6}, {.kernel = 3, .stride = 2, .padding = 1});
           },
       .parity = false},
      {.label = "adaptive_avg_pool2d 3x2",
       .shapes = {{1, 2, 5, 7}},
       .fn = [](P x, D) { return adaptive_avg_pool2d(x[0], 3, 2); },
       .parity = false},
      {.label = "adaptive_avg_pool2d 1x1",
       .shapes = {{2, 2, 4, 4}},
       .fn = [](P x, D) { return adaptive_avg_pool2d(x[0], 1, 1); },
       .parity = false},
      {.label = "adaptive_avg_pool2d",
       .shapes = {{2, 3, 5, 4}},
       .fn = [](P x, D) { return adaptive_avg_pool2d(x[0], 1, 1); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::batch_norm,
       .label = "batch_norm training 4-d, small",
       .shapes = {{4, 3, 2, 2}, {3}, {3}},
       .fn = [](P x, D d) { return bn(x, d, true); },
       .parity = false},
      {.op = Op::batch_norm,
       .label = "batch_norm training 2-d, small",
       .shapes = {{5, 3}, {3}, {3}},
       .fn = [](P x, D d) { return bn(x, d, true); },
       .parity = false},
      {.op = Op::batch_norm_eval,
       .label = "batch_norm eval 4-d (running statistics)",
       .shapes = {{3, 2, 2, 2}, {2}, {2}},
       .fn = [](P x, D d) { return bn(x, d, false); },
       .parity = false},
      {.op = Op::batch_norm_eval,
       .label = "batch_norm eval 2-d (running statistics)",
       .shapes = {{4, 3}, {3}, {3}},
       .fn = [](P x, D d) { return bn(x, d, false); },
       .parity = false},
      {.op = Op::batch_norm_eval,
       .label = "batch_norm eval 4-d",
       .shapes = {{4, 3, 3, 2}, {3}, {3}},
       .fn = [](P x, D d) { return bn(x, d, false); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::batch_norm_eval,
       .label = "batch_norm eval 2-d",
       .shapes = {{6, 4}, {4}, {4}},
       .fn = [](P x, D d) { return bn(x, d, false); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::batch_norm,
       .label = "batch_norm + relu training 4-d",
       .shapes = {{3, 2, 2, 2}, {2}, {2}},
       .fn = [](P x, D d) { return bn_relu(x, d, true); },
       .parity = false},
      {.op = Op::batch_norm,
       .label = "batch_norm + relu training 2-d",
       .shapes = {{5, 3}, {3}, {3}},
       .fn = [](P x, D d) { return bn_relu(x, d, true); },
       .parity = false},
      {.op = Op::batch_norm_eval,
       .label = "batch_norm + relu eval 4-d",
       .shapes = {{3, 2, 2, 2}, {2}, {2}},
       .fn = [](P x, D d) { return bn_relu(x, d, false); },
       .parity = false},
      {.op = Op::batch_norm_eval,
       .label = "batch_norm + relu eval 2-d",
       .shapes = {{4, 3}, {3}, {3}},
       .fn = [](P x, D d) { return bn_relu(x, d, false); },
       .parity = false},
      {.op = Op::add_relu,
       .label = "add_relu",
       .shapes = {{3, 4}, {3, 4}},
       .fn = [](P x, D) { return add_relu_case(x); },
       .distinct = true,
       .parity = false},
      {.op = Op::add_relu,
       .label = "add_relu large",
       .shapes = {{5, 37, 3}, {5, 37, 3}},
       .fn = [](P x, D) { return add_relu_case(x); },
       .distinct = true,  // sums k·0.37 + c, at least 0.06 from 0
       .fd = false},
      {.op = Op::batch_norm,
       .label = "batch_norm training 4-d",
       .shapes = {{4, 3, 3, 2}, {3}, {3}},
       .fn = [](P x, D d) { return bn(x, d, true); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::batch_norm,
       .label = "batch_norm training 2-d",
       .shapes = {{6, 4}, {4}, {4}},
       .fn = [](P x, D d) { return bn(x, d, true); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.op = Op::group_norm,
       .label = "group_norm 2 groups",
       .shapes = {{2, 4, 2, 3}, {4}, {4}},
       .fn = [](P x, D) { return group_norm(x[0], 2, x[1], x[2]); },
       .parity = false},
      {.op = Op::group_norm,
       .label = "group_norm without weight and bias",
       .shapes = {{2, 4, 3, 2}},
       .fn = [](P x, D) { return group_norm(x[0], 2, {}, {}); },
       .parity = false},
      // channels last ([N, H, W, C]; the recorded rule is batch norm per instance, statistics [N, G])
      {.op = Op::group_norm,
       .label = "group_norm channels-last 2 groups",
       .shapes = {{2, 3, 2, 4}, {4}, {4}},
       .fn = [](P x, D) { return group_norm(x[0], 2, x[1], x[2], 1e-5, true); },
       .parity = false},
      // the main job's deep layers: 32 groups of 2 channels
      {.op = Op::group_norm,
       .label = "group_norm channels-last 32 groups of 2",
       .shapes = {{2, 2, 1, 64}, {64}, {64}},
       .fn = [](P x, D) { return group_norm(x[0], 32, x[1], x[2], 1e-5, true); },
       .parity = false},
      {.op = Op::group_norm,
       .label = "group_norm",
       .shapes = {{2, 6, 3, 2}, {6}, {6}},
       .fn = [](P x, D) { return group_norm(x[0], 3, x[1], x[2]); },
       .low = -1,
       .high = 1,
       .fd = false},
      {.label = "cross_entropy mean",
       .shapes = {{4, 3}},
       .fn =
           [](P x, D d) {
             return cross_entropy(x[0], from_ints({2, 0, 1, 2}, {4}, d), Reduction::mean);
           },
       .low = -3,
       .high = 3,
       .parity = false},
      {.label = "cross_entropy none",
       .shapes = {{3, 5}},
       .fn =
           [](P x, D d) {
             return cross_entropy(x[0], from_ints({4, 0, 1}, {3}, d), Reduction::none);
           },
       .parity = false},
      {.label = "cross_entropy",
       .shapes = {{5, 4}},
       .fn =
           [](P x, D d) {
             return cross_entropy(x[0], from_ints({3, 0, 1, 3, 2}, {5}, d));
           },
       .low = -1,
       .high = 1,
       .fd = false},
      {.label = "cross_entropy sum",
       .shapes = {{3, 6}},
       .fn =
           [](P x, D d) {
             return cross_entropy(x[0], from_ints({5, 0, 2}, {3}, d), Reduction::sum);
           },
       .low = -1,
       .high = 1,
       .fd = false},
      {.label = "mse_loss sum",
       .shapes = {{3, 4}, {3, 4}},
       .fn = [](P x, D) { return mse_loss(x[0], x[1], Reduction::sum); },
       .parity = false},
      {.label = "mse_loss",
       .shapes = {{3, 4}, {3, 4}},
       .fn = [](P x, D) { return mse_loss(x[0], x[1]); },
       .low = -1,
       .high = 1,
       .fd = false},
  };
}

}  // namespace

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> all = [] {
    std::vector<OpCase> c;
    for (auto part : {elementwise_cases, reduction_cases, layout_cases, indexing_cases, linalg_cases, nn_cases})
      for (OpCase& k : part()) c.push_back(std::move(k));
    return c;
  }();
  return all;
}

Params case_inputs(const OpCase& c, uint64_t seed) {
  Generator g(seed);
  Params xs;
  for (const Shape& s : c.shapes) {
    const double shift = 0.09 * double(xs.size());  // keeps different inputs apart (no ties)
    if (c.distinct) {
      const int64_t n = numel(s);
      auto perm = g.permutation(n);
      std::vector<double> v(n);
      for (int64_t i = 0; i < n; ++i)
        v[i] = (double(perm[i]) - double(n) / 2 + 0.5) * 0.37 + 0.11 * double(seed % 3) + shift;
      xs.push_back(from_vector(v, s, {DType::f64}));
    } else {
      xs.push_back(g.uniform(s, {DType::f64}, c.low, c.high));
    }
  }
  return xs;
}

Shape output_shape(const OpCase& c, const Params& x) {
  NoGrad ng;
  return c.fn(x, Device::cpu()).shape();
}

std::set<std::string> recorded_ops(const OpCase& c, const Params& x) {
  std::set<std::string> seen;
  auto walk = [&seen](const std::vector<Tensor>& roots) {
    std::vector<Node*> stack;
    for (const Tensor& t : roots)
      if (t.defined()) stack.push_back(t.node().get());
    std::set<Node*> visited;
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      if (!n || !visited.insert(n).second) continue;
      if (!n->is_leaf()) seen.insert(n->op);
      for (auto& e : n->inputs) stack.push_back(e.get());
    }
  };
  // the checkers' own scalar function: its gradient's seed depends on x, so the backward
  // ops are recorded as they are when the checkers differentiate twice
  Params xl = leaves(x);
  const Tensor scalar = harness(c, output_shape(c, x))(xl, Device::cpu());
  walk({scalar});
  walk(grad({scalar}, xl, {.create_graph = true, .allow_unused = true}));
  return seen;
}

std::function<Tensor(const Params&, Device)> harness(const OpCase& c, const Shape& out_shape) {
  Generator g(99);
  const Tensor w1 = g.uniform(out_shape, {DType::f64}, -1, 1), w2 = g.uniform(out_shape, {DType::f64}, -1, 1);
  return [fn = c.fn, w1, w2](const Params& x, Device d) {
    const Tensor y = fn(x, d);
    const Tensor a = w1.to(y.dtype()).to(d), b = w2.to(y.dtype()).to(d);
    return add(sum(mul(a, y)), sum(mul(b, mul(y, mul(y, y)))));
  };
}

}  // namespace flatmin::test
