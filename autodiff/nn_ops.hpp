// Network ops with derivative rules of every order: convolution, pooling, normalization,
// losses. (Filled in by the nn issue.)
#pragma once
#include "autodiff/ops.hpp"

namespace flatmin {}  // namespace flatmin
