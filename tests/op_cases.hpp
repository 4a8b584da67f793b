// The one table of op cases that every checker runs: the finite-difference checker on the
// CPU (tests/autodiff/test_derivatives.cpp, float64, orders 1-3) and the CPU/CUDA parity
// checker (tests/gpu/test_cuda_ops.cpp, float64 and float32, orders 0-3). Each case
// builds its function for a device, so constants (indices, masks, running statistics)
// live beside the inputs. test_derivatives.cpp checks the table against the op registry
// (autodiff/op_registry.hpp) in both directions.
#pragma once
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "autodiff/autodiff.hpp"

namespace flatmin::test {

struct OpCase {
  std::optional<Op> op;  // the registry entry this case is for; empty for a composition
  std::string label;     // what a failure names
  std::vector<Shape> shapes;
  std::function<Tensor(const Params&, Device)> fn;
  double low = -1.5, high = 1.5;  // inputs uniform in [low, high] (kinks and ties avoided)
  bool distinct = false;          // well-separated values of both signs instead (max/min/relu/abs/pool)
  bool fd = true;                 // run by the finite-difference checker (small enough for orders 1-3)
  bool parity = true;             // run by the CPU/CUDA parity checker
};

const std::vector<OpCase>& op_cases();

// Float64 inputs for a case on the CPU: uniform in [low, high]; with distinct, a shuffled
// grid of well-separated values of both signs (no ties, no zeros).
Params case_inputs(const OpCase& c, uint64_t seed);

// The output shape of a case on the CPU at inputs x (nothing recorded).
Shape output_shape(const OpCase& c, const Params& x);

// The names of the ops recorded by c at x on the CPU, in the forward graph and in the
// graph of its differentiable gradient (where the backward ops of batch norm, ReLU, slicing
// and pooling are recorded).
std::set<std::string> recorded_ops(const OpCase& c, const Params& x);

// Σ w1⊙y + Σ w2⊙y³ of the case's output y with fixed random weights of out_shape: the
// second and third derivatives of the op's rule (the rule of the rule) are exercised too.
std::function<Tensor(const Params&, Device)> harness(const OpCase& c, const Shape& out_shape);

}  // namespace flatmin::test
