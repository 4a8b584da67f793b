// The step sizes and radii that Theorems 1 and 2 of Ahn, Jadbabaie, Sra (2024) prescribe
// as functions of the target ε (docs/algorithms.md §3-4), with every hidden constant exposed,
// and the final plain-GD refinement of Theorem 2. See docs/table1.md for the derivation of
// each scaling and what is not fixed by the paper.
//
//   RS (Theorem 1):  η = 1/L,  η' = c_η'·δ·ε,   ρ = c_ρ·δ·√ε,                 ε0 = c_ε0·(δε)^{3/2}
//   SA (Theorem 2):  η = 1/L,  η' = c_η'·δ/L,   ρ = c_ρ·δ·√ε·min(1, √(d³ε)), ε0 = c_ε0·(δε)^{3/2}
//
// Per perturbed step the expected decrease of tr̄ is then η'ρ²·‖∂Φ∇tr̄‖²/2 ≥ δ³ε³/2 (RS) and
// d·min(1, d³ε)·δ³ε²/(2L) (SA), the rates docs/algorithms.md §4 states (L a constant there),
// whence T = O(ε⁻³δ⁻⁴) and O(d⁻¹ε⁻²·max(1, 1/(d³ε))·δ⁻⁴) steps (one factor δ⁻¹ from the
// random output iterate). SA's η' carries 1/L because its perturbed gradient ∇f_i(x + ρσŝ)
// contains ∇f_i(x) itself, an SGD step that diverges unless η'L < 2; RS's does not (the
// ∇f(x) part of ∇f(x + ρu) is projected out), and its η' = Θ(δε) is small already.
#pragma once
#include <cstdint>

#include "optim/perturbation.hpp"
#include "optim/sharpness.hpp"

namespace flatmin::optim {

struct TheoremConstants {
  double lr_perturb = 1.0;  // c_η'
  double rho = 1.0;         // c_ρ
  double eps0 = 1.0;        // c_ε0
};
struct TheoremSettings {
  double lr = 0, lr_perturb = 0, rho = 0, eps0 = 0;
};
// Refuse ε ≤ 0 or non-finite, L ≤ 0 or non-finite, δ outside (0, 1], d < 1, constants ≤ 0.
TheoremSettings rs_theorem_settings(double eps, double L, double delta, const TheoremConstants& c = {});
TheoremSettings sa_theorem_settings(double eps, double L, double delta, int64_t d, const TheoremConstants& c = {});
// The optimizer options: the settings plus the uniformly random output iterate.
PerturbationOptions theorem_options(const TheoremSettings& s, uint64_t seed);

// L by the power method: |λmax| of the Hessian at x (the Lipschitz constant of ∇f near x).
double smoothness_by_power(const HvpFn& hvp, const Params& like, const PowerOptions& o = {});

// Theorem 2's last phase: plain GD x ← x − η∇f(x) on the live parameters `x` until
// ‖∇f‖ ≤ eps or max_steps steps. Returns the gradient evaluations used (≥ 1).
struct RefineResult {
  int64_t gradient_evaluations = 0;
  double grad_norm = 0;
  bool reached = false;
};
RefineResult refine_until_stationary(const Params& x, const Closure& closure, double lr, double eps, int64_t max_steps);

}  // namespace flatmin::optim
