// Problems whose minima set and flatness are known in closed form, shared by `flatmin ddep`,
// `flatmin certify` and `flatmin table1`: the minima set is {x : r(x) = 0} for a residual
// map r whose Jacobian has a known constant rank there, so ∂Φ on it is the orthogonal
// projection onto the null space of r's Jacobian (optim/certificate.hpp), and tr̄ and ∇tr̄ have closed forms
// (checked against the dense Hessian and third-order contractions in tests/tools).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "optim/optimizer.hpp"

namespace flatmin::tools {

struct FlatProblem {
  std::string name;
  int64_t dim = 0, examples = 1;                          // d, n
  Params start;                                           // the sharp minimum the runs start from
  ScalarFn loss;                                          // f = (1/n) Σ_i f_i
  optim::ExamplesFn examples_loss;                        // mean of f_i over the listed examples (SA's ∇f_i)
  VectorFn residual;                                      // r: the minima set is {r = 0}, r of shape (n)
  int64_t normal_rank = -1;                               // rank of r's Jacobian (the normal space's dimension); < 0: n
  std::function<double(const Params&)> trace_normalized;  // tr̄ = tr ∇²f / d
  std::function<Params(const Params&)> trace_normalized_grad;  // ∇tr̄
};

// Example 1 (docs/algorithms.md §6): f = (x1 x2 − 1)² (one example), tr̄ = x1² + x2²,
// r = x1 x2 − 1, started at (x1, x2).
FlatProblem example1_problem(double x1, double x2);

// The diagonal linear network of `flatmin ddep`: parameters u, v ∈ R^m (d = 2m),
//   f(u, v) = (1/n) Σ_i (⟨a_i, u⊙v⟩ − y_i)²,  a_i ~ N(0, I/m),  y_i = ⟨a_i, β*⟩,
// r_i = ⟨a_i, u⊙v⟩ − y_i; tr ∇²f = (2/n) Σ_i Σ_j a_ij² (u_j² + v_j²) exactly (∂²r_i/∂u_j² = 0).
// Start: the sharp global minimum u = α·1, v = β*/α.
struct DiagonalNetwork {
  int64_t m, n;
  Tensor A, Y;             // n×m, n×1
  Params start;            // (u, v)
  std::vector<double> a2;  // Σ_i a_ij² / n
  DiagonalNetwork(int64_t m, int64_t n, double alpha, uint64_t seed);
  Tensor loss(const Tensor& rows_A, const Tensor& rows_Y, const Params& p) const;
  Tensor full_loss(const Params& p) const { return loss(A, Y, p); }
  Tensor examples_loss(const std::vector<int64_t>& idx, const Params& p) const;
  double trace_normalized(const Params& p) const;
  Params trace_normalized_grad(const Params& p) const;
  FlatProblem problem() const;  // copies the data it needs
};

// A linear teacher-student network (fully observed matrix factorisation): parameters
// U ∈ R^{p×k}, V ∈ R^{q×k} (d = (p+q)k), teacher M* = U*V*ᵀ of rank k (U*, V* ~ N(0, 1)),
//   f(U, V) = (1/pq) Σ_{jl} ((UVᵀ)_jl − M*_jl)²   (one example per entry: n = pq),
// r = vec(UVᵀ − M*). Wherever U and V have full column rank, r's Jacobian J has rank
// (p+q−k)k = d − k² and ker J = {(UA, −VAᵀ) : A ∈ R^{k×k}}, the tangent space of the level
// set (the orbit (UG, VG⁻ᵀ), G ∈ GL(k)); at a minimum ∇²f = (2/pq)JᵀJ, whose null space is
// that tangent space. tr ∇²f = (2/p)‖U‖²_F + (2/q)‖V‖²_F exactly (r is bilinear); on the
// minima set its minimum is 4‖M*‖_*/√(pq), reached at the balanced factors
// U = (p/q)^{1/4} L S^{1/2} Q, V = (q/p)^{1/4} R S^{1/2} Q (M* = L S Rᵀ the SVD, Q ∈ O(k)),
// where UᵀU/p = VᵀV/q. docs/table1.md derives these. Start: the sharp minimum U = αU*, V = V*/α.
struct MatrixFactorization {
  int64_t p, q, k;
  Tensor M;      // p×q teacher
  Params start;  // (U, V)
  MatrixFactorization(int64_t p, int64_t q, int64_t k, double alpha, uint64_t seed);
  Tensor residual(const Params& x) const;                                            // vec(UVᵀ − M*), shape (pq)
  Tensor examples_loss(const std::vector<int64_t>& entries, const Params& x) const;  // entries of vec(·), row-major
  double trace_normalized(const Params& x) const;
  Params trace_normalized_grad(const Params& x) const;
  Params flat_minimum() const;           // the balanced factors with Q = I (from the SVD of M*)
  double flat_trace_normalized() const;  // 4‖M*‖_*/(√(pq)·d), tr̄'s minimum on the minima set
  FlatProblem problem() const;           // copies the data it needs
};

}  // namespace flatmin::tools
