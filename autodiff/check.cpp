#include "autodiff/check.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "autodiff/random.hpp"

namespace flatmin {

namespace {
double max_abs(const Params& x) {
  double m = 0;
  for (const Tensor& t : x)
    for (double v : t.to_vector()) m = std::max(m, std::fabs(v));
  return m;
}
std::vector<double> flat_values(const Params& x) {
  std::vector<double> r;
  for (const Tensor& t : x) {
    auto v = t.to_vector();
    r.insert(r.end(), v.begin(), v.end());
  }
  return r;
}
// ‖a − b‖ / (max(‖a‖, ‖b‖) + atol/rtol): at most rtol exactly when ‖a − b‖ ≤ rtol·max + atol.
double rel_error(const std::vector<double>& a, const std::vector<double>& b, double atol_over_rtol) {
  double diff = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return std::sqrt(diff) / (std::max(std::sqrt(na), std::sqrt(nb)) + atol_over_rtol);
}
Params shifted(const Params& x, const Params& u, double h) {
  NoGrad ng;
  return axpy(h, u, detach(x));
}
double fvalue(const ScalarFn& f, const Params& x) { return value(f, x).item(); }
}  // namespace

DerivativeCheck check_derivatives(const ScalarFn& f, const Params& x, const DerivativeCheckOptions& opt) {
  for (const Tensor& t : x)
    if (t.dtype() != DType::f64)
      throw Error("check_derivatives: inputs must be float64, got " + std::string(dtype_name(t.dtype())));
  DerivativeCheck r;
  r.error.assign(size_t(std::max(opt.max_order, 0)), 0.0);
  const double h = opt.step * (1.0 + max_abs(x));
  Generator gen(opt.seed);
  auto fail = [&](int order, double err, const std::string& what) {
    r.error[order - 1] = std::max(r.error[order - 1], err);
    if (err > opt.rtol && r.ok) {
      r.ok = false;
      r.message = "order " + std::to_string(order) + " (" + what + "): relative error " + std::to_string(err) + " > " +
                  std::to_string(opt.rtol);
    }
  };
  Params xd = detach(x);
  if (opt.max_order >= 1) {
    Params g = gradient(f, xd);
    const int64_t d = numel(xd);
    if (d <= 64) {  // every coordinate
      std::vector<double> num, ana = flat_values(g);
      for (int64_t i = 0; i < d; ++i) {
        Tensor e = zeros({d}, {DType::f64});
        data_ptr<double>(e)[i] = 1.0;
        Params ei = unflatten(e, xd);
        num.push_back((fvalue(f, shifted(xd, ei, h)) - fvalue(f, shifted(xd, ei, -h))) / (2 * h));
      }
      fail(1, rel_error(ana, num, opt.atol / opt.rtol), "all coordinates");
    }
    for (int k = 0; k < opt.directions; ++k) {
      Params u = gen.sphere_like(xd);
      const double num = (fvalue(f, shifted(xd, u, h)) - fvalue(f, shifted(xd, u, -h))) / (2 * h);
      fail(1, rel_error({dot(g, u).item()}, {num}, opt.atol / opt.rtol), "direction " + std::to_string(k));
    }
  }
  if (opt.max_order >= 2) {
    for (int k = 0; k < opt.directions; ++k) {
      Params v = gen.sphere_like(xd);
      auto ana = flat_values(hvp(f, xd, v));
      auto gp = flat_values(gradient(f, shifted(xd, v, h))), gm = flat_values(gradient(f, shifted(xd, v, -h)));
      std::vector<double> num(ana.size());
      for (size_t i = 0; i < num.size(); ++i) num[i] = (gp[i] - gm[i]) / (2 * h);
      fail(2, rel_error(ana, num, opt.atol / opt.rtol), "H v, direction " + std::to_string(k));
    }
  }
  if (opt.max_order >= 3) {
    for (int k = 0; k < opt.directions; ++k) {
      Params u = gen.sphere_like(xd), v = gen.sphere_like(xd);
      auto ana = flat_values(third(f, xd, u, v));
      auto hp = flat_values(hvp(f, shifted(xd, u, h), v)), hm = flat_values(hvp(f, shifted(xd, u, -h), v));
      std::vector<double> num(ana.size());
      for (size_t i = 0; i < num.size(); ++i) num[i] = (hp[i] - hm[i]) / (2 * h);
      fail(3, rel_error(ana, num, opt.atol / opt.rtol), "third[u, v], direction " + std::to_string(k));
    }
  }
  return r;
}

TaylorReport taylor_check(const ScalarFn& f, const Params& x, const Params& u, const TaylorOptions& opt) {
  if (opt.taylor_mode && opt.gradient) throw Error("taylor_check: Taylor mode expands f, not its gradient");
  const int limit = opt.taylor_mode ? max_taylor_order : 6;
  if (opt.max_order < 0 || opt.max_order > limit)
    throw Error("taylor_check: max_order must be in 0.." + std::to_string(limit));
  TaylorReport rep;
  rep.radii = opt.radii;
  if (rep.radii.empty())
    for (int i = 0; i < 8; ++i) rep.radii.push_back(0.1 / std::pow(2.0, i));
  for (double r : rep.radii)
    if (!(r > 0)) throw Error("taylor_check: radii must be positive");
  const int K = opt.max_order;
  // D^j f[u..u] for j <= K+1 (the gradient expansion needs one more order)
  DirectionalDerivatives dd;
  if (opt.taylor_mode)
    dd.values = taylor_coefficients(f, x, u, K).derivatives;
  else
    dd = directional_derivatives(f, x, u, opt.gradient ? K + 1 : K);
  rep.remainder.assign(size_t(K + 1), std::vector<double>(rep.radii.size()));
  std::vector<double> floor(size_t(K + 1));
  const double eps = std::numeric_limits<double>::epsilon();
  for (size_t i = 0; i < rep.radii.size(); ++i) {
    const double rho = rep.radii[i];
    Params xr = shifted(x, u, rho);
    if (!opt.gradient) {
      const double fv = fvalue(f, xr);
      double approx = 0, fact = 1;
      for (int k = 0; k <= K; ++k) {
        if (k > 0) fact *= k;
        approx += std::pow(rho, k) / fact * dd.values[k];
        rep.remainder[k][i] = std::fabs(fv - approx);
        floor[k] = std::max(floor[k], 64 * eps * (std::fabs(fv) + std::fabs(approx)));
      }
    } else {
      auto gv = flat_values(gradient(f, xr));
      std::vector<double> approx(gv.size(), 0.0);
      double fact = 1, scale = 0;
      for (double v : gv) scale = std::max(scale, std::fabs(v));
      for (int k = 0; k <= K; ++k) {
        if (k > 0) fact *= k;
        auto gk = flat_values(dd.grads[k]);
        double rem = 0;
        for (size_t j = 0; j < gv.size(); ++j) {
          approx[j] += std::pow(rho, k) / fact * gk[j];
          rem += (gv[j] - approx[j]) * (gv[j] - approx[j]);
        }
        rep.remainder[k][i] = std::sqrt(rem);
        floor[k] = std::max(floor[k], 64 * eps * (scale + 1e-300) * std::sqrt(double(gv.size())));
      }
    }
  }
  for (int k = 0; k <= K; ++k) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int n = 0;
    for (size_t i = 0; i < rep.radii.size(); ++i) {
      const double rem = rep.remainder[k][i];
      if (!(rem > floor[k] * 100)) continue;  // below the rounding floor: not informative
      const double lx = std::log(rep.radii[i]), ly = std::log(rem);
      sx += lx;
      sy += ly;
      sxx += lx * lx;
      sxy += lx * ly;
      ++n;
    }
    rep.used.push_back(n);
    rep.slope.push_back(n >= 2 ? (n * sxy - sx * sy) / (n * sxx - sx * sx) : std::nan(""));
  }
  return rep;
}

}  // namespace flatmin
