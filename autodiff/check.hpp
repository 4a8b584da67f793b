// Numerical checkers, part of the public API: derivatives of orders 1-3 against central
// finite differences (in float64), and Taylor remainders with their fitted slopes.
#pragma once
#include <string>
#include <vector>

#include "autodiff/functional.hpp"

namespace flatmin {

struct DerivativeCheckOptions {
  int max_order = 3;   // check orders 1..max_order
  int directions = 2;  // random directions per order (order 1 also checks every coordinate when d <= 64)
  double step = 1e-5;  // finite-difference step (relative to 1 + ‖x‖∞)
  double rtol = 1e-6;  // ‖analytic − numeric‖ ≤ rtol·max(‖analytic‖, ‖numeric‖) + atol
  double atol = 1e-8;
  uint64_t seed = 1;
};

struct DerivativeCheck {
  bool ok = true;
  std::vector<double> error;  // worst ‖a−n‖/(max(‖a‖,‖n‖) + atol/rtol) per order (index 0 = order 1)
  std::string message;        // the first failure, naming the order and the direction
};

// Order 1: ⟨∇f, u⟩ (and ∂f/∂x_i) against (f(x+hu) − f(x−hu))/2h. Order 2: H v against
// (∇f(x+hv) − ∇f(x−hv))/2h. Order 3: ∇³f[u,v] against (H(x+hu)v − H(x−hu)v)/2h.
// x must be float64.
DerivativeCheck check_derivatives(const ScalarFn& f, const Params& x, const DerivativeCheckOptions& opt = {});

struct TaylorOptions {
  std::vector<double> radii;  // default: 0.1 / 2^i, i = 0..7
  int max_order = 3;          // orders k = 0..max_order
  bool gradient = false;      // expand ∇f (vector remainders, in norm) instead of f
  // D^k f[u^k] from one Taylor-mode propagation (taylor_coefficients) instead of nested
  // reverse mode; f only (not with gradient); max_order up to max_taylor_order.
  bool taylor_mode = false;
};

// remainder[k][i] = |f(x+ρ_i u) − Σ_{j≤k} ρ_i^j/j! D^j f[u^j]| (or the norm of the same for ∇f),
// slope[k] = least-squares slope of log remainder against log ρ over the radii whose
// remainder is above the rounding floor (used[k] of them); k+1 is expected.
struct TaylorReport {
  std::vector<double> radii;
  std::vector<std::vector<double>> remainder;
  std::vector<double> slope;
  std::vector<int> used;
};
TaylorReport taylor_check(const ScalarFn& f, const Params& x, const Params& u, const TaylorOptions& opt = {});

}  // namespace flatmin
