// The one list of recorded ops. record() takes an Op, so an op cannot reach the tape
// without an entry here; the profiler's "rule:<op>" rows, the engine's error messages and
// the op-case tests (tests/op_cases) take their names from this list, and
// tests/autodiff/test_derivatives.cpp fails when an entry has no case (or a case no entry).
// Adding an op: docs/architecture.md, "Adding an op".
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace flatmin {

// X(name, check): `check` says how the op's derivatives are tested: `fd` by finite
// differences in float64 at orders 1-3 (and CPU/CUDA parity), `own` by a test of its own
// because finite differences cannot see it (a change of precision or of device).
// clang-format off
#define FLATMIN_OPS(X)                                                                                           \
  /* elementwise (ops_elementwise.cpp) */                                                                        \
  X(add, fd) X(sub, fd) X(mul, fd) X(div, fd) X(maximum, fd) X(minimum, fd) X(neg, fd) X(add_scalar, fd)       \
  X(mul_scalar, fd) X(rsub_scalar, fd) X(pow, fd) X(reciprocal, fd) X(exp, fd) X(log, fd) X(sqrt, fd)            \
  X(rsqrt, fd) X(tanh, fd) X(tanh_backward, fd) X(sigmoid, fd) X(softplus, fd) X(relu, fd) X(relu_backward, fd) \
  X(abs, fd) X(where, fd)                                                                                        \
  /* reductions (ops_reduce.cpp) */                                                                              \
  X(sum, fd) X(max, fd) X(min, fd)                                                                               \
  /* layout (ops_layout.cpp) */                                                                                  \
  X(reshape, fd) X(permute, fd) X(expand, fd) X(slice, fd) X(slice_backward, fd) X(concat, fd)                   \
  X(to_dtype, own) X(to_device, own)                                                                             \
  /* indexing (ops_index.cpp) */                                                                                 \
  X(index_select, fd) X(index_add, fd) X(gather, fd) X(scatter_add, fd)                                          \
  /* linear algebra (ops_linalg.cpp) */                                                                          \
  X(matmul, fd)                                                                                                  \
  /* network ops (nn_ops.cpp) */                                                                                 \
  X(conv2d, fd) X(conv2d_input_grad, fd) X(conv2d_weight_grad, fd) X(max_pool2d, fd) X(avg_pool2d, fd)           \
  X(avg_pool2d_adjoint, fd) X(batch_norm, fd) X(batch_norm_input_grad, fd) X(batch_norm_weight_grad, fd)       \
  X(batch_norm_eval, fd) X(add_relu, fd)                                                                       \
  X(group_norm, fd) /* norm_ops.cpp */
// clang-format on

enum class Op : uint8_t {
#define FLATMIN_OP_ENUM(name, check) name,
  FLATMIN_OPS(FLATMIN_OP_ENUM)
#undef FLATMIN_OP_ENUM
};

enum class OpCheck : uint8_t { fd, own };

struct OpInfo {
  std::string_view name;
  OpCheck check;
};

inline constexpr std::array op_table = {
#define FLATMIN_OP_INFO(name, check) OpInfo{#name, OpCheck::check},
    FLATMIN_OPS(FLATMIN_OP_INFO)
#undef FLATMIN_OP_INFO
};
inline constexpr size_t op_count = op_table.size();

constexpr const OpInfo& op_info(Op op) { return op_table[size_t(op)]; }
// Null-terminated: the names are string literals.
constexpr const char* op_name(Op op) { return op_table[size_t(op)].name.data(); }

}  // namespace flatmin
