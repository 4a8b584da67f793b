// Linear algebra: batched matmul with broadcasting, and dot.
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

// ---------------------------------------------------------------- linear algebra
// The core product op(a) @ op(b) of two tensors of rank >= 2 with broadcast batch dims.
// Its rule is again mm with transpose flags, so no transposed copy is ever made; its forward
// rule is the Cauchy product of the operands' series (mm is bilinear).
static Tensor mm(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  check_pair("matmul", a, b);
  check_floating("matmul", a);
  const int64_t ra = a.dim(), rb = b.dim();
  const int64_t m = ta ? a.shape()[ra - 1] : a.shape()[ra - 2], ka = ta ? a.shape()[ra - 2] : a.shape()[ra - 1];
  const int64_t kb = tb ? b.shape()[rb - 1] : b.shape()[rb - 2], n = tb ? b.shape()[rb - 2] : b.shape()[rb - 1];
  if (ka != kb)
    throw Error("matmul: inner dimensions differ: " + to_string(a.shape()) + (ta ? "^T" : "") + " @ " +
                to_string(b.shape()) + (tb ? "^T" : ""));
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(ba, bb, "matmul");
  const int64_t nb = numel(batch);
  // An operand whose batch part is all ones is shared by every batch entry (stride 0);
  // otherwise it is expanded to the full batch.
  auto operand = [&](const Tensor& t, const Shape& bt, int64_t& stride) {
    const int64_t mat = t.shape()[t.dim() - 2] * t.shape()[t.dim() - 1];
    if (numel(bt) == 1) {
      stride = 0;
      return t;
    }
    stride = mat;
    if (bt == batch) return t;
    Shape full = batch;
    full.push_back(t.shape()[t.dim() - 2]);
    full.push_back(t.shape()[t.dim() - 1]);
    return expand(t, full);
  };
  Backend::MatmulArgs args{nb, m, n, ka, ta, tb, 0, 0};
  Tensor A = operand(a.detach(), ba, args.stride_a), B = operand(b.detach(), bb, args.stride_b);
  Shape s = batch;
  s.push_back(m);
  s.push_back(n);
  Tensor out = empty(s, a.options());
  be(a).matmul(A, B, out, args);
  if (any_requires_grad({&a, &b}))
    record(
        out, Op::matmul, {a, b}, {a, b},
        [ta, tb](const Tensor& g, const RuleContext& c) {
          Tensor a = c.saved(0), b = c.saved(1), ga, gb;
          if (c.needs(0)) ga = sum_to(ta ? mm(b, g, tb, true) : mm(g, b, false, !tb), a.shape());
          if (c.needs(1)) gb = sum_to(tb ? mm(g, a, true, ta) : mm(a, g, !ta, false), b.shape());
          return std::vector<Tensor>{ga, gb};
        },
        [ta, tb](const std::vector<Jet>& in, const Tensor&) {
          return jet::bilinear(in[0], in[1], [ta, tb](const Tensor& x, const Tensor& y) { return mm(x, y, ta, tb); });
        });
  return out;
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_pair("matmul", a, b);
  if (a.dim() == 0 || b.dim() == 0)
    throw Error("matmul: operands must have rank >= 1, got " + to_string(a.shape()) + " and " + to_string(b.shape()));
  const bool va = a.dim() == 1, vb = b.dim() == 1;
  Tensor r = mm(va ? unsqueeze(a, 0) : a, vb ? unsqueeze(b, 1) : b, false, false);
  if (vb) r = squeeze(r, -1);
  if (va) r = squeeze(r, vb ? -1 : -2);
  return r;
}

Tensor dot(const Tensor& a, const Tensor& b) {
  check_pair("dot", a, b);
  if (a.shape() != b.shape())
    throw Error("dot: shapes " + to_string(a.shape()) + " and " + to_string(b.shape()) + " differ");
  return sum(mul(a, b));
}

}  // namespace flatmin
