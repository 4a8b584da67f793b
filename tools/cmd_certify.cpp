// `flatmin certify`: is a point an (ε, √ε)-flat minimum (Definition 3)? Prints ‖∇f‖,
// ‖∂Φ∇tr̄‖ (∇tr̄ exact from third-order contractions) and the verdict, on a problem whose
// minima set is known in closed form (Example 1; the diagonal linear network of `ddep`; the
// matrix factorisation of `table1`, at its start or its closed-form flat minimum).
// ∂Φ: `--projector exact` projects onto the tangent space of the minima set {r = 0};
// `--projector hessian` onto the Hessian's near-null space from its top eigenvectors
// (Lanczos), the construction used for networks (optim/certificate.hpp says how the cut is
// chosen); on these problems both are available, so their agreement can be checked.
// With a CHECKPOINT (and the model and data flags of `flatmin train`): a network's training
// loss (--loss ce|mse) on the first --subset examples, ∂Φ from the Hessian's near-null space
// (refused where the cut cannot be determined: always so far for cross-entropy, which has no
// minimum at finite weights; a squared-error fit of n examples has the gap at rank ≤ n·K),
// ∇tr̄ from --trace-samples Hutchinson samples of ∇³f[z, z]/d.
#include <CLI/CLI.hpp>
#include <cmath>
#include <nlohmann/json.hpp>

#include "optim/certificate.hpp"
#include "tools/command.hpp"
#include "tools/flat_problems.hpp"
#include "tools/train_setup.hpp"

namespace flatmin::tools {
namespace {
using nlohmann::json;
using namespace flatmin::optim;

int run(int argc, char** argv) {
  CLI::App app{
      "(ε, √ε)-flatness certificate: ‖∇f‖, ‖∂Φ ∇tr̄‖ on Example 1, the diagonal linear network or a matrix "
      "factorisation"};
  std::string problem = "example1", projector = "exact", at = "start";
  std::vector<int64_t> mf_shape = {4, 4, 2};
  std::vector<double> point = {1.0, 1.0};
  double eps = 0;
  int64_t dim = 16, examples = 4;
  double alpha = 2.0;
  uint64_t problem_seed = 1;
  NullSpaceOptions ns;
  std::string checkpoint, dtype_name = "f64", device = "cpu", loss_name = "ce";
  int64_t subset = 256;
  CertifyOptions co;
  ModelSpec model;
  DataSpec data_spec;
  model.add_to(app);
  data_spec.add_to(app);
  app.add_option("checkpoint", checkpoint, "a network's checkpoint (flatmin train): certify it instead of --problem");
  app.add_option("--subset", subset, "checkpoint: the loss over the first N training examples")
      ->check(CLI::PositiveNumber);
  app.add_option("--trace-samples", co.trace_samples, "checkpoint: Hutchinson samples of ∇tr̄ (default 10)");
  app.add_option("--dtype", dtype_name, "checkpoint: f32 | f64")->check(CLI::IsMember({"f32", "f64"}));
  app.add_option("--loss", loss_name,
                 "checkpoint: ce | mse (squared error to one-hot labels: minima at finite weights)")
      ->check(CLI::IsMember({"ce", "mse"}));
  app.add_option("--device", device, "checkpoint: cpu | cuda | cuda:N");
  app.add_option("--problem", problem, "example1 | dln | mf")->check(CLI::IsMember({"example1", "dln", "mf"}));
  app.add_option("--eps", eps, "ε: certify ‖∇f‖ ≤ ε and ‖∂Φ∇tr̄‖ ≤ √ε")->required();
  app.add_option("--point", point, "example1: the point x1 x2")->expected(2);
  app.add_option("--dim", dim, "dln: d = 2m (at most 4096, as ddep)")->check(CLI::Range(int64_t(2), int64_t(4096)));
  app.add_option("--examples", examples, "dln: n (at most 10000, as ddep)")
      ->check(CLI::Range(int64_t(1), int64_t(10000)));
  app.add_option("--alpha", alpha, "dln: the point u = α·1, v = β*/α; mf: U = α·U*, V = V*/α (global minima)");
  app.add_option("--mf-shape", mf_shape, "mf: p,q,k (teacher p×q of rank k; each at most 64)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t(1), int64_t(64)));
  app.add_option("--at", at, "mf: start (U = α·U*, V = V*/α) | flat (the closed-form flat minimum)")
      ->check(CLI::IsMember({"start", "flat"}));
  app.add_option("--problem-seed", problem_seed,
                 "dln: seed of the data (ddep and table1 use problem-seed + d); mf: of the teacher (as table1)")
      ->check(NotNegative);
  app.add_option("--projector", projector, "exact | hessian")->check(CLI::IsMember({"exact", "hessian"}));
  app.add_option("--top-k", ns.top_k, "hessian: eigenpairs computed");
  app.add_option("--rel-cut", ns.rel_cut, "hessian: eigenvalues above rel-cut·λ1 span the normal space");
  app.add_option("--min-gap", ns.min_gap, "hessian: required λ_r/λ_{r+1} at the cut");
  CLI11_PARSE(app, argc, argv);
  if (!(eps > 0) || !std::isfinite(eps)) throw Error("certify: --eps must be a positive finite number");
  if (problem == "dln" && (dim < 2 || dim % 2 || dim <= examples || examples < 1))
    throw Error("certify: --dim must be even and above --examples >= 1");
  if ((problem == "dln" || problem == "mf") && !(alpha > 0)) throw Error("certify: --alpha must be > 0");
  if (problem == "mf" && (mf_shape.size() != 3 || mf_shape[2] >= std::min(mf_shape[0], mf_shape[1])))
    throw Error("certify: --mf-shape: give p,q,k with 1 <= k < min(p, q)");
  if (app.count("--at") && problem != "mf")
    throw Error("certify: --at: only --problem mf has a closed-form flat minimum");
  check_range("certify", "--top-k", ns.top_k, 1, 1000);
  if (app.count("--trace-samples")) check_range("certify", "--trace-samples", co.trace_samples, 1, 100000);
  if (!checkpoint.empty()) {
    if (co.trace_samples == 0) co.trace_samples = 10;  // not given
    auto [net, train] =
        load_checkpoint_model(model, data_spec, checkpoint, subset, parse_dtype(dtype_name), Device::parse(device));
    net->update_running_stats(false);
    Params p = net->parameters();
    if (ns.top_k > numel(p)) ns.top_k = int(numel(p));
    const Device dev = Device::parse(device);
    Tensor x = train.images.to(parse_dtype(dtype_name)).to(dev), y = train.labels.to(dev);
    NullSpaceCut cut;
    const ClassifierLoss loss = parse_classifier_loss(loss_name);
    Certificate c = certify_leaves([&] { return classifier_loss((*net)(x), y, loss); }, p, eps, ns, co, &cut);
    json out = {{"checkpoint", checkpoint},
                {"loss", loss_name},
                {"examples", train.size()},
                {"d", numel(p)},
                {"eps", eps},
                {"projector", "hessian"},
                {"cut",
                 {{"rank", cut.rank},
                  {"gap", cut.gap},
                  {"eigenvalues", cut.eigenvalues},
                  {"rel_cut", ns.rel_cut},
                  {"min_gap", ns.min_gap},
                  {"hessian_vector_products", cut.products}}},
                {"trace_samples", co.trace_samples},
                {"trace_grad_stderr", c.trace_grad_stderr},
                {"grad_norm", c.flat.grad_norm},
                {"projected_trace_grad_norm", c.flat.projected_trace_grad_norm},
                {"eps_prime", c.flat.eps_prime},
                {"gradient_ok", c.flat.gradient_ok},
                {"trace_ok", c.flat.trace_ok},
                {"flat", c.flat.flat()}};
    std::printf("%s\n", out.dump().c_str());
    return c.flat.flat() ? 0 : 4;
  }

  FlatProblem P;
  Params x;
  if (problem == "example1") {
    P = example1_problem(point[0], point[1]);
    x = P.start;
  } else if (problem == "dln") {
    P = DiagonalNetwork(dim / 2, examples, alpha, problem_seed + uint64_t(dim)).problem();
    x = P.start;
  } else {
    MatrixFactorization mf(mf_shape[0], mf_shape[1], mf_shape[2], alpha, problem_seed);
    P = mf.problem();
    x = at == "flat" ? mf.flat_minimum() : P.start;
  }
  if (ns.top_k > P.dim) ns.top_k = int(P.dim);
  json out = {{"problem", P.name}, {"d", P.dim}, {"eps", eps}, {"projector", projector}};
  if (problem == "mf") out["at"] = at;
  ProjectorFn tangent;
  if (projector == "exact") {
    tangent = residual_tangent_projector(P.residual, x, P.normal_rank);
  } else {
    NullSpaceCut cut;
    tangent = hessian_null_projector(hvp_fn(P.loss, x), x, ns, &cut);
    out["cut"] = {{"rank", cut.rank},      {"gap", cut.gap},        {"eigenvalues", cut.eigenvalues},
                  {"rel_cut", ns.rel_cut}, {"min_gap", ns.min_gap}, {"hessian_vector_products", cut.products}};
  }
  Certificate c = certify(P.loss, x, eps, tangent);
  out["grad_norm"] = c.flat.grad_norm;
  out["projected_trace_grad_norm"] = c.flat.projected_trace_grad_norm;
  out["eps_prime"] = c.flat.eps_prime;
  out["gradient_ok"] = c.flat.gradient_ok;
  out["trace_ok"] = c.flat.trace_ok;
  out["flat"] = c.flat.flat();
  out["trace_normalized"] = P.trace_normalized(x);
  std::printf("%s\n", out.dump().c_str());
  return c.flat.flat() ? 0 : 4;
}

Register reg{{"certify",
              "is a point an (ε, √ε)-flat minimum? ‖∇f‖, ‖∂Φ∇tr̄‖ (Example 1, diagonal network, matrix factorisation)",
              run}};
}  // namespace
}  // namespace flatmin::tools
