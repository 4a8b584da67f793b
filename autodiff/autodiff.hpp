// Everything of the autodiff layer: tensors, ops, the engine, derivatives as functions,
// random numbers and the numerical checkers.
#pragma once
#include "autodiff/backend.hpp"
#include "autodiff/check.hpp"
#include "autodiff/functional.hpp"
#include "autodiff/graph.hpp"
#include "autodiff/nn_ops.hpp"
#include "autodiff/ops.hpp"
#include "autodiff/random.hpp"
#include "autodiff/tensor.hpp"
