// Group norm: one recorded op whose forward is the backend's fused kernel (statistics and the
// per-channel affine in one pass, as PyTorch's native GroupNorm), else batch norm's kernels on
// a reshaped view plus the affine. Its rule: unrecorded (plain gradients) the fused backward
// kernel; recorded (create_graph: HVPs, third order) the same function as batch norm's ops on
// that view (nn_ops.cpp, via norm_shared.hpp), so higher orders run batch norm's fused
// second-order kernels and stay exact at every order. Forward rule: the composite.
#include <algorithm>
#include <string>

#include "autodiff/backend.hpp"
#include "autodiff/graph.hpp"
#include "autodiff/jet_rules.hpp"
#include "autodiff/nn_ops.hpp"
#include "autodiff/norm_shared.hpp"
#include "autodiff/op_checks.hpp"

namespace flatmin {

namespace {

// x as batch norm's input: NCHW as (1, N·G, C/G·H·W) over axes {0, 2} (group statistics are
// batch-norm statistics of that view, of shape [N·G]); channels-last as [N, H·W, G, C/G]
// over axes {1, 3} (batch norm per instance, statistics [N, G]).
struct GroupView {
  Shape shape, stats;
  Axes axes;
  int64_t channel_axis;  // of x
  Axes other_axes;       // x's axes but the channel axis (gw and gb sum over them)
};
GroupView group_view(const Tensor& x, int64_t groups, bool channels_last) {
  const int64_t N = x.shape()[0], C = channels_last ? x.shape().back() : x.shape()[1];
  const int64_t inner = x.numel() / std::max<int64_t>(N * groups, 1);  // values per group
  GroupView v;
  v.channel_axis = channels_last ? x.dim() - 1 : 1;
  for (int64_t a = 0; a < x.dim(); ++a)
    if (a != v.channel_axis) v.other_axes.push_back(a);
  if (channels_last) {
    const int64_t plane = x.numel() / std::max<int64_t>(N * C, 1);
    v.shape = {N, plane, groups, C / groups};
    v.stats = {N, groups};
    v.axes = {1, 3};
  } else {
    v.shape = {1, N * groups, inner};
    v.stats = {N * groups};
    v.axes = {0, 2};
  }
  return v;
}

// Checks a per-channel weight or bias (undefined: none) against x's C channels.
void check_channel_vector(const char* op, const Tensor& x, const Tensor& t, const char* name, int64_t C) {
  if (!t.defined()) return;
  check_floating(op, t, name);
  check_same(op, x, "input", t, name);
  if (t.shape() != Shape{C})
    throw Error(std::string(op) + ": " + name + " has shape " + to_string(t.shape()) + ", expected [" +
                std::to_string(C) + "]");
}

// y·w + b per channel (on v.channel_axis); weight/bias may be undefined.
Tensor channel_affine(const Tensor& y, const Tensor& w, const Tensor& b, const GroupView& v) {
  const Shape cs = channel_shape(y, v.channel_axis);
  Tensor out = y;
  if (w.defined()) out = mul(out, reshape(w, cs));
  if (b.defined()) out = add(out, reshape(b, cs));
  return out;
}

// Group norm as a composition of differentiable ops (the forward rule's).
Tensor group_norm_composite(const Tensor& x, const Tensor& w, const Tensor& b, int64_t groups, double eps, bool cl) {
  const GroupView v = group_view(x, groups, cl);
  Tensor xhat = reshape(batch_norm_composite(reshape(x, v.shape), {}, {}, eps, v.axes), x.shape());
  return channel_affine(xhat, w, b, v);
}

// The VJP of group norm in differentiable ops, recorded when grad mode is on, with the
// affine apart:  gx = batch norm's input gradient of g·w on the view (its fused kernels and
// its recorded backward op),  gw = Σ g·x̂,  gb = Σ g  (sums per channel). gw needs x̂ as a
// function of x (for its derivative): group norm without affine, run again (one fused pass,
// whose own rule never needs x̂).
std::vector<Tensor> group_norm_vjp(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                                   const Tensor& var, int64_t groups, double eps, bool cl, const BnNeeds& needs) {
  const GroupView v = group_view(x, groups, cl);
  const Shape vs{x.shape()[size_t(v.channel_axis)]};
  Tensor gx, gw, gb;
  if (needs[0]) {
    const Tensor gh = w.defined() ? mul(g, reshape(w, channel_shape(x, v.channel_axis))) : g;
    gx = reshape(batch_norm_backward(reshape(gh, v.shape), reshape(x, v.shape), {}, reshape(mean, v.stats),
                                     reshape(var, v.stats), eps, v.axes, {true, false, false})[0],
                 x.shape());
  }
  if (needs[1]) gw = reshape(sum(mul(g, group_norm(x, groups, {}, {}, eps, cl)), v.other_axes), vs);
  if (needs[2]) gb = reshape(sum(g, v.other_axes), vs);
  return {gx, gw, gb};
}

}  // namespace

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps,
                  bool channels_last) {
  const char* op = "group_norm";
  check_floating(op, x, "input");
  if (x.dim() < 2)
    throw Error(std::string("group_norm: input must be ") + (channels_last ? "(N, ..., C)" : "(N, C, ...)") + ", got " +
                to_string(x.shape()));
  const int64_t N = x.shape()[0], C = channels_last ? x.shape().back() : x.shape()[1];
  if (groups < 1 || C % groups != 0)
    throw Error("group_norm: " + std::to_string(C) + " channels cannot be split into " + std::to_string(groups) +
                " groups");
  check_channel_vector(op, x, weight, "weight", C);
  check_channel_vector(op, x, bias, "bias", C);
  Tensor y = empty(x.shape(), x.options()), mean = empty({N, groups}, x.options()),
         var = empty({N, groups}, x.options());
  if (!be(x).group_norm_forward(x, weight, bias, groups, eps, channels_last, y, mean, var)) {
    NoGrad ng;
    const GroupView v = group_view(x, groups, channels_last);
    Tensor bmean, bvar;
    const Tensor xhat = batch_norm_train(reshape(x.detach(), v.shape), {}, {}, eps, v.axes, bmean, bvar);
    y = channel_affine(reshape(xhat, x.shape()), weight.defined() ? weight.detach() : Tensor(),
                       bias.defined() ? bias.detach() : Tensor(), v);
    mean = reshape(bmean, {N, groups});
    var = reshape(bvar, {N, groups});
  }
  if (any_requires_grad({&x, &weight, &bias}))
    record(
        y, Op::group_norm, {x, weight, bias}, {x, weight, mean, var},
        [groups, eps, channels_last](const Tensor& g, const RuleContext& c) {
          const Tensor x = c.saved(0), w = c.saved(1), mean = c.saved(2), var = c.saved(3);
          // not recorded and no series to carry: the backend's fused kernel, where it has one
          if (!grad_enabled() && !any_requires_grad({&g, &x, &w})) {
            Tensor gx = c.needs(0) ? empty(x.shape(), x.options()) : Tensor();
            Tensor gw = c.needs(1) ? empty(w.shape(), w.options()) : Tensor();
            const int64_t C = channels_last ? x.shape().back() : x.shape()[1];
            Tensor gb = c.needs(2) ? empty({C}, x.options()) : Tensor();
            if (be(x).group_norm_backward(g, x, w, mean, var, groups, eps, channels_last, gx, gw, gb))
              return std::vector<Tensor>{gx, gw, gb};
          }
          return group_norm_vjp(g, x, w, mean, var, groups, eps, channels_last, {c.needs(0), c.needs(1), c.needs(2)});
        },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::through(in, [&](const std::vector<Tensor>& t) {
            return group_norm_composite(t[0], t[1], t[2], groups, eps, channels_last);
          });
        });
  return y;
}

}  // namespace flatmin
