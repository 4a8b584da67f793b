// Convolution and pooling kernels for the CPU (issue 3 fills these in).
#include "autodiff/cpu/cpu_kernels.hpp"

namespace flatmin::cpu {
static void missing(const char* op) { throw Error(std::string(op) + ": CPU kernel missing in this build"); }
void conv2d_forward(const Tensor&, const Tensor&, Tensor&, const Conv2dParams&) { missing("conv2d"); }
void conv2d_input_grad(const Tensor&, const Tensor&, Tensor&, const Conv2dParams&) { missing("conv2d_input_grad"); }
void conv2d_weight_grad(const Tensor&, const Tensor&, Tensor&, const Conv2dParams&) { missing("conv2d_weight_grad"); }
void max_pool2d(const Tensor&, Tensor&, Tensor&, const Pool2dParams&) { missing("max_pool2d"); }
void avg_pool2d(const Tensor&, Tensor&, const Pool2dParams&) { missing("avg_pool2d"); }
void avg_pool2d_adjoint(const Tensor&, Tensor&, const Pool2dParams&) { missing("avg_pool2d_adjoint"); }
}  // namespace flatmin::cpu
