// The argument checks every op runs before any kernel, shared by ops_*.cpp and nn_ops.cpp
// (internal to autodiff, not installed). Each throws flatmin::Error naming the op, the
// argument and the problem.
#pragma once
#include <string>

#include "autodiff/backend.hpp"
#include "autodiff/tensor.hpp"

namespace flatmin {

inline Backend& be(const Tensor& t) { return backend(t.device()); }

inline void check_defined(const char* op, const Tensor& t, const char* which = "input") {
  if (!t.defined()) throw Error(std::string(op) + ": " + which + " is undefined");
}
inline void check_floating(const char* op, const Tensor& t, const char* which = "input") {
  check_defined(op, t, which);
  if (!is_floating(t.dtype()))
    throw Error(std::string(op) + ": " + which + " must be floating-point, got " + dtype_name(t.dtype()) + " " +
                to_string(t.shape()));
}
// Two defined tensors an op combines: same device and dtype.
inline void check_same(const char* op, const Tensor& a, const char* wa, const Tensor& b, const char* wb) {
  check_defined(op, a, wa);
  check_defined(op, b, wb);
  if (a.device() != b.device())
    throw Error(std::string(op) + ": " + wa + " and " + wb + " on different devices (" + a.device().str() + " " +
                to_string(a.shape()) + " and " + b.device().str() + " " + to_string(b.shape()) + ")");
  if (a.dtype() != b.dtype())
    throw Error(std::string(op) + ": dtype mismatch (" + wa + " " + dtype_name(a.dtype()) + " " + to_string(a.shape()) +
                ", " + wb + " " + dtype_name(b.dtype()) + " " + to_string(b.shape()) + ")");
}
inline void check_pair(const char* op, const Tensor& a, const Tensor& b) {
  check_same(op, a, "first input", b, "second input");
}
// An int64 index tensor on x's device.
inline void check_index(const char* op, const Tensor& x, const Tensor& idx) {
  check_defined(op, idx, "index");
  if (idx.dtype() != DType::i64) throw Error(std::string(op) + ": index must be int64, got " + dtype_name(idx.dtype()));
  if (idx.device() != x.device())
    throw Error(std::string(op) + ": index on " + idx.device().str() + " but input on " + x.device().str());
}

inline Tensor scalar_like(double v, const Tensor& t) { return full({}, v, t.options()); }

}  // namespace flatmin
