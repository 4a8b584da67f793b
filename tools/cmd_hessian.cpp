// `flatmin hessian`: the Hessian's spectrum at a training checkpoint, what PyHessian computes
// in Python, on flatmin's exact HVPs of the training loss on the first N examples: the top-k
// eigenpairs (Lanczos, full reorthogonalization), the spectral density (stochastic Lanczos
// quadrature, PyHessian's defaults), and per layer the trace (Hutchinson) and top eigenvalue.
// Writes DIR/hessian.json; with --density also DIR/density.jsonl and DIR/density.png; with
// --top-k also DIR/eigenvectors.safetensors. Every file is written atomically.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>

#include "nn/safetensors.hpp"
#include "optim/spectrum.hpp"
#include "tools/command.hpp"
#include "tools/jsonl.hpp"
#include "tools/plot.hpp"
#include "tools/train_setup.hpp"

namespace flatmin::tools {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

json num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

int run(int argc, char** argv) {
  CLI::App app{
      "Hessian spectrum of the training loss at a checkpoint: top-k eigenpairs, spectral density, per-layer trace"};
  ModelSpec model;
  DataSpec data_spec;
  std::string file, out_dir, dtype_name = "f32", device = "cpu";
  int64_t subset = 256;
  std::optional<int> top_k;
  int iterations = 0, layer_iterations = 20;
  bool want_density = false, by_layer = false;
  optim::DensityOptions dens;
  optim::HutchinsonOptions ho;
  uint64_t seed = 0;
  model.add_to(app);
  data_spec.add_to(app);
  app.add_option("checkpoint", file, "checkpoint (flatmin train --checkpoint) or model state dict (--save-model)")
      ->required();
  app.add_option("--out", out_dir, "existing, writable output folder")->required();
  app.add_option("--subset", subset, "the loss is the mean over the first N training examples")
      ->check(CLI::PositiveNumber);
  app.add_option("--top-k", top_k, "the k largest eigenvalues and their eigenvectors (Lanczos)");
  app.add_option("--iterations", iterations, "Lanczos steps for --top-k (0: min(d, max(2k+20, 40)))");
  app.add_flag("--density", want_density, "spectral density by stochastic Lanczos quadrature");
  app.add_option("--density-iterations", dens.iterations, "Lanczos steps per SLQ run (PyHessian: 100)");
  app.add_option("--runs", dens.runs, "SLQ runs (PyHessian: 1)");
  app.add_option("--bins", dens.bins, "density grid points (PyHessian: 10000)");
  app.add_option("--sigma-squared", dens.sigma_squared, "Gaussian variance per unit of grid width (PyHessian: 1e-5)");
  app.add_flag("--by-layer", by_layer, "trace and top eigenvalue of each layer's diagonal Hessian block");
  app.add_option("--layer-samples", ho.max_samples, "Hutchinson sample cap per layer (PyHessian: 100)");
  app.add_option("--layer-tol", ho.tol, "Hutchinson relative tolerance per layer (PyHessian: 1e-3)");
  app.add_option("--layer-iterations", layer_iterations, "Lanczos steps for each layer's top eigenvalue");
  app.add_option("--seed", seed, "seed of the random start vectors")->check(NotNegative);
  app.add_option("--dtype", dtype_name, "f32 | f64")->check(CLI::IsMember({"f32", "f64"}));
  app.add_option("--device", device, "cpu | cuda | cuda:N");
  CLI11_PARSE(app, argc, argv);

  // Everything that can be refused is refused here, before the data is read; every size flag
  // is bounded.
  if (!top_k && !want_density && !by_layer)
    throw Error("hessian: nothing to compute: give --top-k K, --density or --by-layer");
  if (top_k) check_range("hessian", "--top-k", *top_k, 1, 1000);
  check_range("hessian", "--iterations", iterations, 0, 10000);
  if (top_k && iterations > 0 && *top_k > iterations)
    throw Error("hessian: --top-k " + std::to_string(*top_k) +
                " eigenvalues need at least as many Lanczos --iterations, got " + std::to_string(iterations));
  check_range("hessian", "--density-iterations", dens.iterations, 1, 10000);
  check_range("hessian", "--runs", dens.runs, 1, 1000);
  check_range("hessian", "--bins", dens.bins, 2, 10'000'000);
  if (!(dens.sigma_squared > 0) || !std::isfinite(dens.sigma_squared))
    throw Error("hessian: --sigma-squared must be a positive number");
  check_range("hessian", "--layer-samples", ho.max_samples, 1, 1'000'000);
  if (!(ho.tol >= 0)) throw Error("hessian: --layer-tol must be >= 0");
  check_range("hessian", "--layer-iterations", layer_iterations, 1, 10000);
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) throw Error("hessian: --out " + out_dir + " is not an existing folder");
  if (::access(out_dir.c_str(), W_OK | X_OK) != 0) throw Error("hessian: --out " + out_dir + " is not writable");
  if (!fs::is_regular_file(file, ec)) throw Error("hessian: checkpoint " + file + " does not exist");
  std::string why;
  if (want_density && !plot_renderer_available("/usr/bin/python3", &why))
    throw Error("hessian: --density draws a PNG, but " + why);
  const DType dt = parse_dtype(dtype_name);
  const Device dev = Device::parse(device);

  auto [net, train] = load_checkpoint_model(model, data_spec, file, subset, dt, dev);
  net->update_running_stats(false);  // the loss of the training-mode forward, statistics untouched
  Params p = net->parameters();
  const int64_t d = numel(p);
  if (top_k && *top_k > d)
    throw Error("hessian: --top-k " + std::to_string(*top_k) + " exceeds the " + std::to_string(d) + " parameters");
  Tensor x = train.images.to(dt).to(dev), y = train.labels.to(dev);
  optim::HvpFn hvp = optim::hvp_fn_of_leaves([&] { return cross_entropy((*net)(x), y); }, p);
  int64_t products = 0;
  optim::HvpFn counted = [&](const Params& v) {
    ++products;
    return hvp(v);
  };
  const auto t0 = std::chrono::steady_clock::now();

  json out = {
      {"file", file},          {"examples", train.size()}, {"dim", d},    {"dtype", dtype_name}, {"device", device},
      {"model", model.json()}, {"data", data_spec.json()}, {"seed", seed}};
  if (top_k) {
    std::optional<Progress> prog;  // the number of steps is known at the first one
    optim::EigenOptions eo{.k = *top_k, .iterations = iterations, .seed = seed};
    eo.progress = [&](int done, int total) {
      if (!prog) prog.emplace("hessian top-k (Lanczos)", 0, total);
      prog->update(done, "");
    };
    optim::Eigenpairs e = optim::top_eigenpairs(counted, p, eo);
    if (prog) prog->done();
    out["top_k"] = {{"k", *top_k},
                    {"iterations", e.iterations},
                    {"eigenvalues", e.values},
                    {"residuals", e.residuals},
                    {"order", "algebraically largest first"}};
    nn::NamedTensors vecs;
    nn::NamedTensors names = net->named_parameters();
    for (size_t i = 0; i < e.vectors.size(); ++i)
      for (size_t j = 0; j < names.size(); ++j)
        vecs.emplace_back("v" + std::to_string(i) + "." + names[j].first, e.vectors[i][j].to(Device::cpu()));
    nn::save_safetensors((fs::path(out_dir) / "eigenvectors.safetensors").string(), vecs,
                         {{"format", "flatmin-hessian-eigenvectors"}, {"eigenvalues", json(e.values).dump()}});
    std::fprintf(stderr, "hessian: top-%d eigenvalues %s\n", *top_k, json(e.values).dump().c_str());
  }
  if (want_density) {
    Progress prog("hessian density (SLQ)", 0, int64_t(dens.runs) * std::min<int64_t>(d, dens.iterations));
    dens.seed = seed + 1000;
    dens.progress = [&](int done, int) { prog.update(done, ""); };
    optim::SpectralDensity s = optim::spectral_density(counted, p, dens);
    prog.done();
    json nodes = json::array(), weights = json::array();
    for (const auto& q : s.runs) nodes.push_back(q.nodes), weights.push_back(q.weights);
    out["density"] = {{"iterations", s.iterations},
                      {"runs", dens.runs},
                      {"bins", dens.bins},
                      {"sigma_squared", dens.sigma_squared},
                      {"variance", s.variance},
                      {"overhead", dens.overhead},
                      {"grid_min", s.grid.front()},
                      {"grid_max", s.grid.back()},
                      {"nodes", nodes},
                      {"weights", weights},
                      {"curve", "density.jsonl"}};
    std::vector<json> rows;
    for (size_t j = 0; j < s.grid.size(); ++j)
      rows.push_back(
          {{"eigenvalue", s.grid[j]}, {"density", s.density[j]}, {"density_plus_1e-7", s.density[j] + 1e-7}});
    write_jsonl_atomic((fs::path(out_dir) / "density.jsonl").string(), rows);
  }
  if (by_layer) {
    json layers = json::array();
    std::vector<optim::ParamGroup> groups = optim::layer_groups(net->named_parameters());
    Progress prog("hessian by layer", 0, int64_t(groups.size()));
    for (size_t g = 0; g < groups.size(); ++g) {
      optim::HutchinsonOptions h = ho;
      h.seed = seed + 2000 + g;
      optim::GroupSpectrum s = optim::group_spectrum(counted, p, groups[g], h, layer_iterations, seed + 3000 + g);
      layers.push_back({{"layer", s.group.name},
                        {"dim", s.dim},
                        {"trace", s.trace.trace},
                        {"trace_normalized", s.trace.trace_normalized},
                        {"trace_stderr", s.trace.stderr_trace},
                        {"trace_samples", s.trace.samples},
                        {"trace_converged", s.trace.converged},
                        {"top_eigenvalue", s.top_eigenvalue},
                        {"top_residual", s.top_residual}});
      prog.update(int64_t(g + 1), s.group.name + " tr " + std::to_string(s.trace.trace));
    }
    prog.done();
    out["by_layer"] = layers;
  }
  out["hessian_vector_products"] = products;
  out["seconds"] = num(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  nn::write_file_atomic((fs::path(out_dir) / "hessian.json").string(), out.dump(2) + "\n");
  if (want_density) {
    PlotOptions po;
    po.inputs = {(fs::path(out_dir) / "density.jsonl").string()};
    po.out_dir = out_dir;
    po.x = "eigenvalue";
    po.y = {"density_plus_1e-7"};
    po.log_y = po.y;
    po.title = "Hessian ESD (SLQ)";
    std::vector<std::string> png = plot_metrics(po);
    fs::rename(png.at(0), fs::path(out_dir) / "density.png");  // same folder: atomic
  }
  std::printf("%s\n", json{{"out", (fs::path(out_dir) / "hessian.json").string()},
                           {"dim", d},
                           {"hessian_vector_products", products},
                           {"seconds", out["seconds"]}}
                          .dump()
                          .c_str());
  return 0;
}

Register reg{{"hessian", "Hessian spectrum at a checkpoint: top-k (Lanczos), density (SLQ), trace by layer", run}};
}  // namespace
}  // namespace flatmin::tools
