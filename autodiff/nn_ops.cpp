// The network ops. Convolution and pooling call backend kernels and record one rule each,
// written with differentiable ops only: conv2d and its two adjoints are bilinear, so the
// rules of all three are the three conv ops again; max-pool's rule is a scatter at fixed
// indices (whose rule is a gather); avg-pool and its adjoint are each other's rules.
// Normalization and losses are compositions of ops.hpp, exact at every order as they are
// (the batch statistics are never detached). Forward rules (docs/taylor.md): the conv ops
// take the Cauchy product (bilinear), pooling is linear in its input (max-pool at the
// window maxima found by the kernel), and batch norm's three ops run their differentiable
// composites on inputs carrying series.
#include "autodiff/nn_ops.hpp"

#include <cmath>

#include "autodiff/backend.hpp"
#include "autodiff/graph.hpp"
#include "autodiff/jet_rules.hpp"
#include "autodiff/norm_shared.hpp"
#include "autodiff/op_checks.hpp"

namespace flatmin {

namespace {

void check_rank(const char* op, const Shape& s, size_t rank, const char* which) {
  if (s.size() != rank)
    throw Error(std::string(op) + ": " + which + " must have rank " + std::to_string(rank) + ", got " + to_string(s));
}

// ---- convolution geometry
thread_local bool bf16_convolutions_on = false;

// `x` is the op's first operand: its dtype and device decide whether the bf16 setting applies.
Conv2dParams conv_params(const char* op, const Conv2dOptions& o, const Tensor& x) {
  if (o.stride < 1) throw Error(std::string(op) + ": stride must be >= 1, got " + std::to_string(o.stride));
  if (o.padding < 0) throw Error(std::string(op) + ": padding must be >= 0, got " + std::to_string(o.padding));
  const bool bf16 = bf16_convolutions_on && x.dtype() == DType::f32;
  if (bf16)
    if (const std::string why = be(x).bf16_convolutions_unavailable(); !why.empty())
      throw Error(std::string(op) + ": bfloat16 convolutions (Bf16Convolutions) cannot run on " + x.device().str() +
                  ": " + why);
  return {o.stride, o.stride, o.padding, o.padding, bf16, o.channels_last};
}
// An activation's shape [N, H, W, C] as [N, C, H, W] and back (channels-last convolutions).
Shape nchw_shape(const Shape& s) { return {s[0], s[3], s[1], s[2]}; }
Shape nhwc_shape(const Shape& s) { return {s[0], s[2], s[3], s[1]}; }
// The output shape of a convolution of an input of shape x with weights of shape w.
Shape conv_out_shape(const char* op, const Shape& x_given, const Shape& w, const Conv2dOptions& o) {
  check_rank(op, x_given, 4, o.channels_last ? "input shape (N, H, W, C)" : "input shape (N, C, H, W)");
  check_rank(op, w, 4, "weight shape (O, C, KH, KW)");
  const Shape x = o.channels_last ? nchw_shape(x_given) : x_given;
  if (x[1] != w[1])
    throw Error(std::string(op) + ": input " + to_string(x_given) + " has " + std::to_string(x[1]) +
                " channels but weight " + to_string(w) + " expects " + std::to_string(w[1]));
  const int64_t eh = x[2] + 2 * o.padding - w[2], ew = x[3] + 2 * o.padding - w[3];
  if (eh < 0 || ew < 0 || w[2] < 1 || w[3] < 1)
    throw Error(std::string(op) + ": kernel " + to_string(w) + " is larger than the padded input " +
                to_string(x_given) + " (padding " + std::to_string(o.padding) + ")");
  const Shape y{x[0], w[0], eh / o.stride + 1, ew / o.stride + 1};
  return o.channels_last ? nhwc_shape(y) : y;
}

// Runs one of the three convolution kernels. Channels-last operands on a backend without
// channels-last kernels (float64, flatmin's own kernels, CUDA) run as NCHW on permuted
// copies: the same numbers, two extra passes.
enum class ConvKernel { forward, input_grad, weight_grad };
void run_conv_kernel(ConvKernel k, const Tensor& a, const Tensor& b, Tensor& out, Conv2dParams p) {
  Backend& bk = be(a);
  if (p.channels_last && !bk.supports_channels_last_convolutions(a.dtype())) {
    p.channels_last = false;
    auto to_nchw = [&](const Tensor& t) {
      Tensor r = empty(nchw_shape(t.shape()), t.options());
      bk.permute(t, r, {0, 3, 1, 2});
      return r;
    };
    const Tensor a2 = to_nchw(a), b2 = k == ConvKernel::weight_grad ? to_nchw(b) : b;
    if (k == ConvKernel::weight_grad) return bk.conv2d_weight_grad(a2, b2, out, p);
    Tensor o2 = empty(nchw_shape(out.shape()), out.options());
    if (k == ConvKernel::forward)
      bk.conv2d(a2, b2, o2, p);
    else
      bk.conv2d_input_grad(a2, b2, o2, p);
    return bk.permute(o2, out, {0, 2, 3, 1});
  }
  switch (k) {
    case ConvKernel::forward: return bk.conv2d(a, b, out, p);
    case ConvKernel::input_grad: return bk.conv2d_input_grad(a, b, out, p);
    case ConvKernel::weight_grad: return bk.conv2d_weight_grad(a, b, out, p);
  }
}
void check_grad_shape(const char* op, const Tensor& gy, const Shape& expect) {
  if (gy.shape() != expect)
    throw Error(std::string(op) + ": output gradient has shape " + to_string(gy.shape()) + ", expected " +
                to_string(expect));
}

// ---- pooling geometry
Pool2dParams pool_params(const char* op, const Shape& x, const Pool2dOptions& o) {
  check_rank(op, x, 4, "input (N, C, H, W)");
  const int64_t k = o.kernel, s = o.stride == 0 ? o.kernel : o.stride, p = o.padding;
  if (k < 1 || s < 1 || p < 0)
    throw Error(std::string(op) + ": kernel " + std::to_string(k) + ", stride " + std::to_string(s) + ", padding " +
                std::to_string(p) + " (need kernel >= 1, stride >= 1, padding >= 0)");
  if (2 * p > k)
    throw Error(std::string(op) + ": padding " + std::to_string(p) + " must be at most half the kernel " +
                std::to_string(k));
  if (x[2] + 2 * p < k || x[3] + 2 * p < k)
    throw Error(std::string(op) + ": kernel " + std::to_string(k) + " is larger than the padded input " + to_string(x));
  return {k, k, s, s, p, p};
}
Shape pool_out_shape(const Shape& x, const Pool2dParams& p) {
  return {x[0], x[1], (x[2] + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1,
          (x[3] + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1};
}

}  // namespace

// ---------------------------------------------------------------- convolution
bool bf16_convolutions() { return bf16_convolutions_on; }
Bf16Convolutions::Bf16Convolutions(bool on) : prev_(bf16_convolutions_on) { bf16_convolutions_on = on; }
Bf16Convolutions::~Bf16Convolutions() { bf16_convolutions_on = prev_; }

// y = A_w x. The rules follow from <A_w x, gy> = <x, A_w^T gy> = <w, B_x^T gy>.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dOptions opt) {
  const char* op = "conv2d";
  check_floating(op, x, "input");
  check_floating(op, w, "weight");
  check_same(op, x, "input", w, "weight");
  const Conv2dParams p = conv_params(op, opt, x);
  Tensor out = empty(conv_out_shape(op, x.shape(), w.shape(), opt), x.options());
  run_conv_kernel(ConvKernel::forward, x, w, out, p);
  if (any_requires_grad({&x, &w}))
    record(
        out, Op::conv2d, {x, w}, {x, w},
        [opt](const Tensor& g, const RuleContext& c) {
          Tensor x = c.saved(0), w = c.saved(1);
          return std::vector<Tensor>{c.needs(0) ? conv2d_input_grad(g, w, x.shape(), opt) : Tensor(),
                                     c.needs(1) ? conv2d_weight_grad(x, g, w.shape(), opt) : Tensor()};
        },
        [opt](const std::vector<Jet>& in, const Tensor&) {
          return jet::bilinear(in[0], in[1], [opt](const Tensor& a, const Tensor& b) { return conv2d(a, b, {}, opt); });
        });
  if (!bias.defined()) return out;
  check_floating(op, bias, "bias");
  check_same(op, x, "input", bias, "bias");
  if (bias.shape() != Shape{w.shape()[0]})
    throw Error("conv2d: bias has shape " + to_string(bias.shape()) + ", expected [" + std::to_string(w.shape()[0]) +
                "]");
  const int64_t O = w.shape()[0];
  return add(out, reshape(bias, opt.channels_last ? Shape{1, 1, 1, O} : Shape{1, O, 1, 1}));
}

// gx = A_w^T gy, bilinear in (gy, w): <gg, A_w^T gy> = <A_w gg, gy>, so the gradient
// w.r.t. gy is conv2d(gg, w) and w.r.t. w is conv2d_weight_grad(gg, gy).
Tensor conv2d_input_grad(const Tensor& gy, const Tensor& w, const Shape& x_shape, Conv2dOptions opt) {
  const char* op = "conv2d_input_grad";
  check_floating(op, gy, "output gradient");
  check_floating(op, w, "weight");
  check_same(op, gy, "output gradient", w, "weight");
  const Conv2dParams p = conv_params(op, opt, gy);
  check_grad_shape(op, gy, conv_out_shape(op, x_shape, w.shape(), opt));
  Tensor out = empty(x_shape, gy.options());
  run_conv_kernel(ConvKernel::input_grad, gy, w, out, p);
  if (any_requires_grad({&gy, &w}))
    record(
        out, Op::conv2d_input_grad, {gy, w}, {gy, w},
        [opt](const Tensor& gg, const RuleContext& c) {
          Tensor gy = c.saved(0), w = c.saved(1);
          return std::vector<Tensor>{c.needs(0) ? conv2d(gg, w, {}, opt) : Tensor(),
                                     c.needs(1) ? conv2d_weight_grad(gg, gy, w.shape(), opt) : Tensor()};
        },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::bilinear(in[0], in[1],
                               [&](const Tensor& a, const Tensor& b) { return conv2d_input_grad(a, b, x_shape, opt); });
        });
  return out;
}

// gw = B_x^T gy, bilinear in (x, gy): <gg, B_x^T gy> = <conv2d(x, gg), gy>, so the gradient
// w.r.t. x is conv2d_input_grad(gy, gg) and w.r.t. gy is conv2d(x, gg).
Tensor conv2d_weight_grad(const Tensor& x, const Tensor& gy, const Shape& w_shape, Conv2dOptions opt) {
  const char* op = "conv2d_weight_grad";
  check_floating(op, x, "input");
  check_floating(op, gy, "output gradient");
  check_same(op, x, "input", gy, "output gradient");
  const Conv2dParams p = conv_params(op, opt, x);
  check_grad_shape(op, gy, conv_out_shape(op, x.shape(), w_shape, opt));
  Tensor out = empty(w_shape, x.options());
  run_conv_kernel(ConvKernel::weight_grad, x, gy, out, p);
  if (any_requires_grad({&x, &gy}))
    record(
        out, Op::conv2d_weight_grad, {x, gy}, {x, gy},
        [opt](const Tensor& gg, const RuleContext& c) {
          Tensor x = c.saved(0), gy = c.saved(1);
          return std::vector<Tensor>{c.needs(0) ? conv2d_input_grad(gy, gg, x.shape(), opt) : Tensor(),
                                     c.needs(1) ? conv2d(x, gg, {}, opt) : Tensor()};
        },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::bilinear(
              in[0], in[1], [&](const Tensor& a, const Tensor& b) { return conv2d_weight_grad(a, b, w_shape, opt); });
        });
  return out;
}

// ---------------------------------------------------------------- pooling
// Taylor mode through max-pool needs one maximum per window: Error at a window whose
// maximum is shared (checked on the host: Taylor mode only).
static void check_no_window_ties(const Tensor& x, const Pool2dParams& p, size_t order) {
  const Shape& s = x.shape();
  const std::vector<double> v = x.to_vector();
  const Shape os = pool_out_shape(s, p);
  bool tie = false;
  for (int64_t plane = 0; plane < s[0] * s[1] && !tie; ++plane)
    for (int64_t oh = 0; oh < os[2] && !tie; ++oh)
      for (int64_t ow = 0; ow < os[3] && !tie; ++ow) {
        double best = -INFINITY;
        int count = 0;
        for (int64_t i = 0; i < p.kernel_h; ++i)
          for (int64_t j = 0; j < p.kernel_w; ++j) {
            const int64_t h = oh * p.stride_h - p.pad_h + i, w = ow * p.stride_w - p.pad_w + j;
            if (h < 0 || h >= s[2] || w < 0 || w >= s[3]) continue;
            const double e = v[size_t((plane * s[2] + h) * s[3] + w)];
            if (e > best)
              best = e, count = 1;
            else if (e == best)
              ++count;
          }
        tie = count > 1;
      }
  if (tie) check_no_kink("max_pool2d", ones({1}, x.options()), order, "a window whose maximum is shared");
}

// The gradient goes to the window maxima, whose positions are constants: a scatter_add
// along the flattened plane, whose own rule is a gather.
Tensor max_pool2d(const Tensor& x, Pool2dOptions opt) {
  const char* op = "max_pool2d";
  check_floating(op, x, "input");
  const Pool2dParams p = pool_params(op, x.shape(), opt);
  const Shape os = pool_out_shape(x.shape(), p);
  Tensor out = empty(os, x.options());
  Tensor idx = empty(os, {DType::i64, x.device()});
  be(x).max_pool2d(x, out, idx, p);
  if (any_requires_grad({&x}))
    record(
        out, Op::max_pool2d, {x}, {idx},
        [sx = x.shape()](const Tensor& g, const RuleContext& c) {
          Tensor idx = c.saved(0);
          const Shape planes{sx[0], sx[1], -1};
          Tensor gx = scatter_add(reshape(g, planes), {sx[0], sx[1], sx[2] * sx[3]}, 2, reshape(idx, planes));
          return std::vector<Tensor>{reshape(gx, sx)};
        },
        [&](const std::vector<Jet>& in, const Tensor&) {  // the coefficients at the window maxima
          if (jet::order(in) > 1) check_no_window_ties(in[0][0], p, jet::order(in));
          const Shape planes{x.shape()[0], x.shape()[1], -1};
          const Tensor at = reshape(idx, planes);
          return jet::map(in[0], [&](const Tensor& t) { return reshape(gather(reshape(t, planes), 2, at), os); });
        });
  return out;
}

Tensor avg_pool2d(const Tensor& x, Pool2dOptions opt) {
  const char* op = "avg_pool2d";
  check_floating(op, x, "input");
  const Pool2dParams p = pool_params(op, x.shape(), opt);
  Tensor out = empty(pool_out_shape(x.shape(), p), x.options());
  be(x).avg_pool2d(x, out, p);
  if (any_requires_grad({&x}))
    record(
        out, Op::avg_pool2d, {x}, {},
        [sx = x.shape(), opt](const Tensor& g, const RuleContext&) {
          return std::vector<Tensor>{avg_pool2d_adjoint(g, sx, opt)};
        },
        [opt](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [opt](const Tensor& t) { return avg_pool2d(t, opt); });
        });
  return out;
}

Tensor avg_pool2d_adjoint(const Tensor& gy, const Shape& x_shape, Pool2dOptions opt) {
  const char* op = "avg_pool2d_adjoint";
  check_floating(op, gy, "output gradient");
  const Pool2dParams p = pool_params(op, x_shape, opt);
  check_grad_shape(op, gy, pool_out_shape(x_shape, p));
  Tensor out = empty(x_shape, gy.options());
  be(gy).avg_pool2d_adjoint(gy, out, p);
  if (any_requires_grad({&gy}))
    record(
        out, Op::avg_pool2d_adjoint, {gy}, {},
        [opt](const Tensor& g, const RuleContext&) { return std::vector<Tensor>{avg_pool2d(g, opt)}; },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::map(in[0], [&](const Tensor& t) { return avg_pool2d_adjoint(t, x_shape, opt); });
        });
  return out;
}

// PyTorch's windows: output i covers [floor(i*n/out), ceil((i+1)*n/out)). Windows are
// products of a row range and a column range, so the mean is taken along H, then W.
static Tensor adaptive_mean_axis(const Tensor& x, int64_t axis, int64_t out) {
  const int64_t n = x.shape()[axis];
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < out; ++i) {
    const int64_t start = i * n / out, stop = ((i + 1) * n + out - 1) / out;
    parts.push_back(mean(slice(x, axis, start, stop), {axis}, true));
  }
  return out == 1 ? parts[0] : concat(parts, axis);
}
Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w) {
  const char* op = "adaptive_avg_pool2d";
  check_floating(op, x, "input");
  check_rank(op, x.shape(), 4, "input (N, C, H, W)");
  const int64_t H = x.shape()[2], W = x.shape()[3];
  if (out_h < 1 || out_w < 1 || H < 1 || W < 1)
    throw Error(std::string(op) + ": output size " + std::to_string(out_h) + "x" + std::to_string(out_w) +
                " for input " + to_string(x.shape()) + " (need positive sizes)");
  if (out_h == 1 && out_w == 1) return mean(x, {2, 3}, true);
  if (H % out_h == 0 && W % out_w == 0 && H / out_h == W / out_w)
    return avg_pool2d(x, {.kernel = H / out_h, .stride = H / out_h, .padding = 0});
  return adaptive_mean_axis(adaptive_mean_axis(x, 2, out_h), 3, out_w);
}

// ---------------------------------------------------------------- normalization
// Shape (1, C, 1, ...) of a per-channel vector broadcast against x, channels on `axis`.
Shape channel_shape(const Tensor& x, int64_t axis) {
  Shape cs(x.dim(), 1);
  cs[size_t(axis)] = x.shape()[size_t(axis)];
  return cs;
}

// Batch statistics recomputed from x with differentiable ops (never detached), so that
// every rule below stays exact at the next order: r = (var + eps)^-1/2, x̂ = (x − μ)·r.
struct BnStats {
  Tensor r, xhat;
};
static BnStats bn_stats(const Tensor& x, double eps, const Axes& axes) {
  Tensor xc = sub(x, mean(x, axes, true));
  Tensor r = rsqrt(add_scalar(mean(square(xc), axes, true), eps));
  return {r, mul(xc, r)};
}
// P(v) = r·(v − ⟨v⟩ − x̂·⟨v·x̂⟩) (means per channel): the VJP of x ↦ x̂, a symmetric operator.
static Tensor bn_project(const Tensor& v, const BnStats& s, const Axes& axes) {
  return mul(s.r, sub(sub(v, mean(v, axes, true)), mul(s.xhat, mean(mul(v, s.xhat), axes, true))));
}

// The three batch-norm ops as composites of ops, for their forward rules: y = x̂·w + b,
// gx = P(g·w) and gw = Σ g·x̂ (per channel).
Tensor batch_norm_composite(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Axes& axes) {
  Tensor y = bn_stats(x, eps, axes).xhat;
  if (w.defined()) y = mul(y, reshape(w, channel_shape(x)));
  if (b.defined()) y = add(y, reshape(b, channel_shape(x)));
  return y;
}
static Tensor batch_norm_input_grad_composite(const Tensor& g, const Tensor& x, const Tensor& w, double eps,
                                              const Axes& axes) {
  return bn_project(w.defined() ? mul(g, reshape(w, channel_shape(x))) : g, bn_stats(x, eps, axes), axes);
}
static Tensor batch_norm_weight_grad_composite(const Tensor& g, const Tensor& x, double eps, const Axes& axes) {
  return reshape(sum(mul(g, bn_stats(x, eps, axes).xhat), axes), {x.shape()[1]});
}

// The exact vector-Jacobian product of training-mode batch norm in differentiable ops of
// (g, x, w): gx = P(g·w), gw = Σ g·x̂, gb = Σ g.
static std::vector<Tensor> batch_norm_vjp(const Tensor& g, const Tensor& x, const Tensor& w, double eps,
                                          const Axes& axes, const BnNeeds& needs) {
  const Shape cs = channel_shape(x), vs{x.shape()[1]};
  const BnStats s = bn_stats(x, eps, axes);
  Tensor gx, gw, gb;
  if (needs[0]) gx = bn_project(w.defined() ? mul(g, reshape(w, cs)) : g, s, axes);
  if (needs[1]) gw = reshape(sum(mul(g, s.xhat), axes), vs);
  if (needs[2]) gb = reshape(sum(g, axes), vs);
  return {gx, gw, gb};
}

// Second-order rules. gx = P(gh), gh = g·w, is linear in g and w; its VJP for a cotangent a:
//   to g: w·P(a) (P is symmetric);  to w: Σ g·P(a);
//   to x: −r²·( x̂·(⟨a·gh⟩ − ⟨gh⟩⟨a⟩ − 3⟨gh·x̂⟩⟨a·x̂⟩) + (gh − ⟨gh⟩)·⟨a·x̂⟩ + ⟨gh·x̂⟩·(a − ⟨a⟩) ),
// from r' = −r³·(x − μ)/M and x̂ = (x − μ)·r. gw = Σ g·x̂ for a per-channel cotangent β:
//   to g: β·x̂;  to x: β·P(g).
static Rule batch_norm_input_grad_rule(double eps, const Axes& axes) {
  return [eps, axes](const Tensor& a, const RuleContext& c) {
    Tensor g = c.saved(0), x = c.saved(1), w = c.saved(2);
    // not recorded and no series to carry: the backend's fused kernel, where it has one
    if (!grad_enabled() && !any_requires_grad({&a, &g, &x, &w})) {
      Tensor dg = c.needs(0) ? empty(g.shape(), g.options()) : Tensor();
      Tensor dx = c.needs(1) ? empty(x.shape(), x.options()) : Tensor();
      Tensor dw = c.needs(2) ? empty(w.shape(), w.options()) : Tensor();
      if (be(x).batch_norm_input_grad_vjp(a, g, x, w, c.saved(3), c.saved(4), eps, dg, dx, dw))
        return std::vector<Tensor>{dg, dx, dw};
    }
    const Shape cs = channel_shape(x), vs{x.shape()[1]};
    const BnStats s = bn_stats(x, eps, axes);
    Tensor pa = bn_project(a, s, axes);
    Tensor dg, dx, dw;
    if (c.needs(0)) dg = w.defined() ? mul(pa, reshape(w, cs)) : pa;
    if (c.needs(2)) dw = reshape(sum(mul(g, pa), axes), vs);
    if (c.needs(1)) {
      Tensor gh = w.defined() ? mul(g, reshape(w, cs)) : g;
      auto m = [&](const Tensor& t) { return mean(t, axes, true); };
      Tensor ma = m(a), mgh = m(gh), mghx = m(mul(gh, s.xhat)), max = m(mul(a, s.xhat));
      Tensor k = sub(sub(m(mul(a, gh)), mul(mgh, ma)), mul_scalar(mul(mghx, max), 3.0));
      Tensor inner = add(add(mul(s.xhat, k), mul(sub(gh, mgh), max)), mul(mghx, sub(a, ma)));
      dx = neg(mul(square(s.r), inner));
    }
    return std::vector<Tensor>{dg, dx, dw};
  };
}
static Rule batch_norm_weight_grad_rule(double eps, const Axes& axes) {
  return [eps, axes](const Tensor& beta, const RuleContext& c) {
    Tensor g = c.saved(0), x = c.saved(1);
    if (!grad_enabled() && !any_requires_grad({&beta, &g, &x})) {
      Tensor dg = c.needs(0) ? empty(g.shape(), g.options()) : Tensor();
      Tensor dx = c.needs(1) ? empty(x.shape(), x.options()) : Tensor();
      if (be(x).batch_norm_weight_grad_vjp(beta, g, x, c.saved(2), c.saved(3), eps, dg, dx))
        return std::vector<Tensor>{dg, dx};
    }
    const BnStats s = bn_stats(x, eps, axes);
    Tensor b = reshape(beta, channel_shape(x));
    return std::vector<Tensor>{c.needs(0) ? mul(b, s.xhat) : Tensor(),
                               c.needs(1) ? mul(b, bn_project(g, s, axes)) : Tensor()};
  };
}

// The VJP of training-mode batch norm: values from the backend's fused kernel where it has
// one (else the composite above, unrecorded). When the backward is itself recorded
// (create_graph), gx and gw become one op each whose rule is the exact VJP above: they save
// only g, x and w (and the statistics), where the composite would save five full-size
// intermediates per layer. Unrecorded, their rules run as the backend's fused kernels.
// relu_y (batch norm + ReLU): the op's output; batch norm's cotangent is then ReLU's VJP
// relu_backward(g, relu_y), one pass with batch norm's backward when nothing records, else
// the recorded op (a constant mask: ReLU'' = 0, so every order stays exact).
std::vector<Tensor> batch_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& bmean,
                                        const Tensor& bvar, double eps, const Axes& axes, const BnNeeds& needs,
                                        const Tensor& relu_y) {
  const Shape vs{x.shape()[1]};
  if (relu_y.defined()) {
    if (!grad_enabled() && !any_requires_grad({&g, &x, &w})) {
      NoGrad ng;
      Tensor gx = empty(x.shape(), x.options());
      Tensor gw = needs[1] ? empty(w.shape(), w.options()) : Tensor();
      Tensor gb = needs[2] ? empty(vs, x.options()) : Tensor();
      if (be(x).batch_norm_relu_backward(g, relu_y, x, w, bmean, bvar, eps, gx, gw, gb))
        return {needs[0] ? gx : Tensor(), gw, gb};
    }
    return batch_norm_backward(relu_backward(g, relu_y), x, w, bmean, bvar, eps, axes, needs);
  }
  Tensor gx, gw, gb;
  {
    NoGrad ng;
    gx = empty(x.shape(), x.options());
    gw = needs[1] ? empty(w.shape(), w.options()) : Tensor();
    gb = needs[2] ? empty(vs, x.options()) : Tensor();
    if (!be(x).batch_norm_backward(g, x, w, bmean, bvar, eps, gx, gw, gb)) {
      std::vector<Tensor> v = batch_norm_vjp(g, x, w, eps, axes, needs);
      gx = v[0], gw = v[1], gb = v[2];
    }
  }
  if (!needs[0]) gx = Tensor();
  if (!grad_enabled() && !any_requires_grad({&g, &x, &w})) return {gx, gw, gb};
  if (gx.defined() && any_requires_grad({&g, &x, &w}))
    record(gx, Op::batch_norm_input_grad, {g, x, w}, {g, x, w, bmean, bvar}, batch_norm_input_grad_rule(eps, axes),
           [&](const std::vector<Jet>& in, const Tensor&) {
             return jet::through(in, [&](const std::vector<Tensor>& t) {
               return batch_norm_input_grad_composite(t[0], t[1], t[2], eps, axes);
             });
           });
  if (gw.defined() && any_requires_grad({&g, &x}))
    record(gw, Op::batch_norm_weight_grad, {g, x}, {g, x, bmean, bvar}, batch_norm_weight_grad_rule(eps, axes),
           [&](const std::vector<Jet>& in, const Tensor&) {
             return jet::through(in, [&](const std::vector<Tensor>& t) {
               return batch_norm_weight_grad_composite(t[0], t[1], eps, axes);
             });
           });
  if (gb.defined()) gb = reshape(sum(g, axes), vs);
  return {gx, gw, gb};
}

// The statistics' shape: [C] for the channel axis 1, or [B, C] for x [B, N, C, S] reduced
// over axes {1, 3} (instances: group norm of channels-last activations, without weight and
// bias; the backends' contract in backend.hpp).
static Shape stats_shape(const Tensor& x, const Axes& axes, const Tensor& w, const Tensor& b) {
  if (x.dim() != 4 || axes != Axes{1, 3}) return {x.shape()[1]};
  if (w.defined() || b.defined()) throw Error("batch norm per instance: weight and bias must be applied outside");
  return {x.shape()[0], x.shape()[2]};
}

// Training mode: batch statistics (biased variance), written to mean/var (detached) for
// the running estimates. One recorded op on every device: a backend's fused kernel
// computes the forward (else ops evaluated without recording do); its rule is
// batch_norm_backward above. relu: the op's output is relu(y) (the rule reads it back).
Tensor batch_norm_train(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Axes& axes, Tensor& bmean,
                        Tensor& bvar, bool relu) {
  const Shape ss = stats_shape(x, axes, w, b);
  Tensor y = empty(x.shape(), x.options());
  bmean = empty(ss, x.options());
  bvar = empty(ss, x.options());
  const bool fused_relu = relu && be(x).batch_norm_relu_forward(x, w, b, eps, y, bmean, bvar);
  if (!fused_relu && !be(x).batch_norm_forward(x, w, b, eps, y, bmean, bvar)) {
    NoGrad ng;
    const Shape cs = channel_shape(x);
    Tensor xd = x.detach(), mu = mean(xd, axes, true);
    Tensor xc = sub(xd, mu);
    Tensor var = mean(square(xc), axes, true);
    Tensor scale = rsqrt(add_scalar(var, eps));
    if (w.defined()) scale = mul(scale, reshape(w.detach(), cs));
    y = mul(xc, scale);
    if (b.defined()) y = add(y, reshape(b.detach(), cs));
    bmean = reshape(mu, ss);
    bvar = reshape(var, ss);
  }
  if (relu && !fused_relu) {
    NoGrad ng;
    y = flatmin::relu(y);
  }
  if (any_requires_grad({&x, &w, &b}))
    record(
        y, Op::batch_norm, {x, w, b}, {x, w, bmean, bvar}, {.save_output = relu},
        [eps, axes, relu](const Tensor& g, const RuleContext& c) {
          return batch_norm_backward(g, c.saved(0), c.saved(1), c.saved(2), c.saved(3), eps, axes,
                                     {c.needs(0), c.needs(1), c.needs(2)}, relu ? c.output() : Tensor());
        },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::through(in, [&](const std::vector<Tensor>& t) {
            Tensor z = batch_norm_composite(t[0], t[1], t[2], eps, axes);
            return relu ? flatmin::relu(z) : z;
          });
        });
  return y;
}

// Eval mode: y = x·s + t per channel (relu: then ReLU) as one op of (x, s, t); s and t are
// [C] tensors of the weight and bias, so their gradients flow on through small ops. One
// pass where the backend has the kernel, else the composite add(mul(x, s), t) unrecorded.
// Rule in differentiable ops (exact at every order): with m = g (relu: relu_backward(g, y)),
// gx = m·s, gs = Σ m·x, gt = Σ m.
static Tensor batch_norm_eval(const Tensor& x, const Tensor& s, const Tensor& t, const Axes& axes, bool relu) {
  Tensor y = empty(x.shape(), x.options());
  if (!be(x).batch_norm_eval(x, s, t, relu, y)) {
    NoGrad ng;
    const Shape cs = channel_shape(x);
    y = add(mul(x.detach(), reshape(s.detach(), cs)), reshape(t.detach(), cs));
    if (relu) y = flatmin::relu(y);
  }
  if (any_requires_grad({&x, &s, &t}))
    record(
        y, Op::batch_norm_eval, {x, s, t}, {x, s}, {.save_output = relu},
        [axes, relu](const Tensor& g, const RuleContext& c) {
          const Tensor x = c.saved(0), s = c.saved(1), m = relu ? relu_backward(g, c.output()) : g;
          const Shape vs{x.shape()[1]};
          return std::vector<Tensor>{c.needs(0) ? mul(m, reshape(s, channel_shape(x))) : Tensor(),
                                     c.needs(1) ? reshape(sum(mul(m, x), axes), vs) : Tensor(),
                                     c.needs(2) ? reshape(sum(m, axes), vs) : Tensor()};
        },
        [&](const std::vector<Jet>& in, const Tensor&) {
          return jet::through(in, [&](const std::vector<Tensor>& v) {
            const Shape cs = channel_shape(v[0]);
            Tensor z = add(mul(v[0], reshape(v[1], cs)), reshape(v[2], cs));
            return relu ? flatmin::relu(z) : z;
          });
        });
  return y;
}

// A residual block's sum and activation: ReLU's VJP m = relu_backward(g, y) goes to both
// summands (the same tensor), exact at every order as relu's own rule.
Tensor add_relu(const Tensor& a, const Tensor& b) {
  check_floating("add_relu", a, "first input");
  check_pair("add_relu", a, b);
  if (a.shape() != b.shape())
    throw Error("add_relu: inputs " + to_string(a.shape()) + " and " + to_string(b.shape()) + " differ in shape");
  Tensor y = empty(a.shape(), a.options());
  if (!be(a).add_relu(a, b, y)) {
    NoGrad ng;
    y = relu(add(a.detach(), b.detach()));
  }
  if (any_requires_grad({&a, &b}))
    record(
        y, Op::add_relu, {a, b}, {}, {.save_output = true},
        [](const Tensor& g, const RuleContext& c) {  // ReLU's VJP, passed to both summands
          const Tensor m = relu_backward(g, c.output());
          return std::vector<Tensor>{c.needs(0) ? m : Tensor(), c.needs(1) ? m : Tensor()};
        },
        [](const std::vector<Jet>& in, const Tensor&) {
          return jet::through(in, [](const std::vector<Tensor>& t) { return relu(add(t[0], t[1])); });
        });
  return y;
}

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean, Tensor& running_var,
                  const BatchNormOptions& opt) {
  const char* op = "batch_norm";
  const double eps = opt.eps, momentum = opt.momentum;
  check_floating(op, x, "input");
  if (x.dim() != 2 && x.dim() != 4)
    throw Error("batch_norm: input must be (N, C) or (N, C, H, W), got " + to_string(x.shape()));
  const int64_t C = x.shape()[1];
  const Axes axes = x.dim() == 2 ? Axes{0} : Axes{0, 2, 3};
  auto check_channel_vector = [&](const Tensor& t, const char* name) {
    check_floating(op, t, name);
    check_same(op, x, "input", t, name);
    if (t.shape() != Shape{C})
      throw Error(std::string("batch_norm: ") + name + " has shape " + to_string(t.shape()) + ", expected [" +
                  std::to_string(C) + "]");
  };
  if (weight.defined()) check_channel_vector(weight, "weight");
  if (bias.defined()) check_channel_vector(bias, "bias");
  const bool have_running = running_mean.defined() || running_var.defined();
  if (have_running) {
    check_channel_vector(running_mean, "running_mean");
    check_channel_vector(running_var, "running_var");
  }
  if (opt.training) {
    const int64_t count = x.numel() / std::max<int64_t>(C, 1);
    if (count < 2)
      throw Error("batch_norm: training needs more than one value per channel, got input " + to_string(x.shape()));
    Tensor bmean, bvar;
    Tensor y = batch_norm_train(x, weight, bias, eps, axes, bmean, bvar, opt.relu);
    if (have_running && opt.update_running) {
      NoGrad ng;
      running_mean.mul_(1.0 - momentum).add_(bmean, momentum);
      running_var.mul_(1.0 - momentum).add_(bvar, momentum * double(count) / double(count - 1));
    }
    return y;
  }
  if (!have_running) throw Error("batch_norm: eval mode needs running_mean and running_var");
  // y = x·s + t with s = w/√(running_var + ε), t = b − running_mean·s (constants but w, b);
  // the graph keeps a snapshot, so a later training step may update the running statistics
  Tensor rm, s;
  {
    NoGrad ng;
    rm = running_mean.clone();
    s = rsqrt(add_scalar(running_var, eps));
  }
  if (weight.defined()) s = mul(s, weight);
  Tensor t = neg(mul(rm, s));
  if (bias.defined()) t = add(t, bias);
  return batch_norm_eval(x, s, t, axes, opt.relu);
}

// ---------------------------------------------------------------- losses
static Tensor reduce(const Tensor& per_item, Reduction r) {
  switch (r) {
    case Reduction::mean: return mean(per_item);
    case Reduction::sum: return sum(per_item);
    case Reduction::none: break;
  }
  return per_item;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, Reduction r) {
  const char* op = "cross_entropy";
  check_floating(op, logits, "logits");
  if (logits.dim() != 2) throw Error("cross_entropy: logits must be (N, K), got " + to_string(logits.shape()));
  if (!target.defined() || target.dtype() != DType::i64) throw Error("cross_entropy: target must be int64 labels (N)");
  const int64_t N = logits.shape()[0], K = logits.shape()[1];
  if (target.shape() != Shape{N})
    throw Error("cross_entropy: target has shape " + to_string(target.shape()) + ", expected [" + std::to_string(N) +
                "] for logits " + to_string(logits.shape()));
  if (target.device() != logits.device())
    throw Error("cross_entropy: target on " + target.device().str() + " but logits on " + logits.device().str());
  const auto labels = target.to_int_vector();
  for (int64_t i = 0; i < N; ++i)
    if (labels[size_t(i)] < 0 || labels[size_t(i)] >= K)
      throw Error("cross_entropy: label " + std::to_string(labels[size_t(i)]) + " at position " + std::to_string(i) +
                  " is out of range for " + std::to_string(K) + " classes");
  Tensor picked = gather(log_softmax(logits, 1), 1, reshape(target, {N, 1}));
  return reduce(neg(reshape(picked, {N})), r);
}

Tensor mse_loss(const Tensor& pred, const Tensor& target, Reduction r) {
  check_floating("mse_loss", pred, "prediction");
  check_floating("mse_loss", target, "target");
  check_same("mse_loss", pred, "prediction", target, "target");
  if (pred.shape() != target.shape())
    throw Error("mse_loss: prediction " + to_string(pred.shape()) + " and target " + to_string(target.shape()) +
                " differ in shape");
  return reduce(square(sub(pred, target)), r);
}

}  // namespace flatmin
