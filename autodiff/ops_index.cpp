// Indexing by int64 tensors (index_select, gather) and their adjoints (index_add,
// scatter_add); each pair's rules are each other, and each op's forward rule is itself
// applied to each Taylor coefficient (they are linear). Indices are checked on the host before
// any kernel runs.
// Each op: its checks, the forward kernel call and the one derivative rule, recorded under
// its registry entry (op_registry.hpp). Rules use only differentiable ops from ops.hpp, so
// with recording on they are themselves differentiated (Hessian-vector products,
// third-order terms).
#include "autodiff/ops.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autodiff/graph.hpp"
#include "autodiff/jet_rules.hpp"
#include "autodiff/op_checks.hpp"

namespace flatmin {

static void check_index_range(const char* op, const Tensor& idx, int64_t n) {
  // Indices are read on the host: an out-of-range index must never reach a kernel. CPU
  // indices are scanned in place (no copy); device indices are copied once.
  Tensor host = idx.device().kind == DeviceKind::cpu ? idx : idx.to(Device::cpu());
  const int64_t* v = data_ptr<int64_t>(host);
  for (int64_t i = 0, count = host.numel(); i < count; ++i)
    if (v[i] < 0 || v[i] >= n)
      throw Error(std::string(op) + ": index " + std::to_string(v[i]) + " is out of range for extent " +
                  std::to_string(n));
}

Tensor index_select(const Tensor& x, int64_t axis, const Tensor& idx) {
  check_defined("index_select", x);
  check_index("index_select", x, idx);
  if (idx.dim() != 1) throw Error("index_select: index must be 1-d, got " + to_string(idx.shape()));
  axis = normalize_axis(axis, x.dim(), "index_select");
  check_index_range("index_select", idx, x.shape()[axis]);
  Shape s = x.shape();
  s[axis] = idx.numel();
  Tensor out = empty(s, x.options());
  be(x).index_select(x, axis, idx, out);
  if (any_requires_grad({&x}))
    record(
        out, Op::index_select, {x}, {idx},
        [sx = x.shape(), axis](const Tensor& g, const RuleContext& c) {
          return std::vector<Tensor>{index_add(g, sx, axis, c.saved(0))};
        },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&](const Tensor& t) { return index_select(t, axis, idx); });
        });
  return out;
}
Tensor index_add(const Tensor& x, const Shape& shape, int64_t axis, const Tensor& idx) {
  check_defined("index_add", x);
  check_index("index_add", x, idx);
  axis = normalize_axis(axis, x.dim(), "index_add");
  Shape expect = shape;
  if (int64_t(expect.size()) != x.dim())
    throw Error("index_add: rank of " + to_string(shape) + " differs from " + to_string(x.shape()));
  expect[axis] = idx.numel();
  if (expect != x.shape() || idx.dim() != 1)
    throw Error("index_add: source " + to_string(x.shape()) + " does not match target " + to_string(shape) + " with " +
                std::to_string(idx.numel()) + " indices on axis " + std::to_string(axis));
  check_index_range("index_add", idx, shape[axis]);
  Tensor out = zeros(shape, x.options());
  be(x).index_add(x, axis, idx, out);
  if (any_requires_grad({&x}))
    record(
        out, Op::index_add, {x}, {idx},
        [axis](const Tensor& g, const RuleContext& c) {
          return std::vector<Tensor>{index_select(g, axis, c.saved(0))};
        },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&](const Tensor& t) { return index_add(t, shape, axis, idx); });
        });
  return out;
}

static void check_gather_shapes(const char* op, const Shape& data, const Shape& index, int64_t axis) {
  bool ok = data.size() == index.size();
  for (size_t i = 0; ok && i < data.size(); ++i) ok = int64_t(i) == axis || data[i] == index[i];
  if (!ok)
    throw Error(std::string(op) + ": index shape " + to_string(index) + " must match " + to_string(data) +
                " except along axis " + std::to_string(axis));
}
Tensor gather(const Tensor& x, int64_t axis, const Tensor& idx) {
  check_defined("gather", x);
  check_index("gather", x, idx);
  axis = normalize_axis(axis, x.dim(), "gather");
  check_gather_shapes("gather", x.shape(), idx.shape(), axis);
  check_index_range("gather", idx, x.shape()[axis]);
  Tensor out = empty(idx.shape(), x.options());
  be(x).gather(x, axis, idx, out);
  if (any_requires_grad({&x}))
    record(
        out, Op::gather, {x}, {idx},
        [sx = x.shape(), axis](const Tensor& g, const RuleContext& c) {
          return std::vector<Tensor>{scatter_add(g, sx, axis, c.saved(0))};
        },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&](const Tensor& t) { return gather(t, axis, idx); });
        });
  return out;
}
Tensor scatter_add(const Tensor& x, const Shape& shape, int64_t axis, const Tensor& idx) {
  check_defined("scatter_add", x);
  check_index("scatter_add", x, idx);
  axis = normalize_axis(axis, x.dim(), "scatter_add");
  if (idx.shape() != x.shape())
    throw Error("scatter_add: index shape " + to_string(idx.shape()) + " differs from source " + to_string(x.shape()));
  check_gather_shapes("scatter_add", shape, idx.shape(), axis);
  check_index_range("scatter_add", idx, shape[axis]);
  Tensor out = zeros(shape, x.options());
  be(x).scatter_add(x, axis, idx, out);
  if (any_requires_grad({&x}))
    record(
        out, Op::scatter_add, {x}, {idx},
        [axis](const Tensor& g, const RuleContext& c) { return std::vector<Tensor>{gather(g, axis, c.saved(0))}; },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&](const Tensor& t) { return scatter_add(t, shape, axis, idx); });
        });
  return out;
}

}  // namespace flatmin
