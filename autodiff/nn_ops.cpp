#include "autodiff/nn_ops.hpp"

namespace flatmin {
const std::vector<std::string>& nn_op_names() {
  static const std::vector<std::string> names = {};
  return names;
}
}  // namespace flatmin
