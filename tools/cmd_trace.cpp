// `flatmin trace`: flatness of a training checkpoint (or a saved model): Hutchinson's tr and
// tr̄ with PyHessian's stopping rule, and λmax by power iteration, on the first N training
// examples. The model and data flags must match the run that wrote the file.
#include <CLI/CLI.hpp>

#include "tools/command.hpp"
#include "tools/train_setup.hpp"
#include "train/data_parallel.hpp"

namespace flatmin::tools {
namespace {

int run(int argc, char** argv) {
  CLI::App app{"Hessian trace (Hutchinson) and largest eigenvalue of the training loss at a checkpoint"};
  ModelSpec model;
  DataSpec data_spec;
  std::string file, dtype_name = "f32", device = "cpu";
  int64_t subset = 256;
  optim::HutchinsonOptions ho;
  optim::PowerOptions po;
  bool lambda = false;
  model.add_to(app);
  data_spec.add_to(app);
  app.add_option("checkpoint", file, "checkpoint (flatmin train --checkpoint) or model state dict (--save-model)")
      ->required();
  app.add_option("--subset", subset, "first N training examples")->check(CLI::PositiveNumber);
  app.add_option("--samples", ho.max_samples, "Hutchinson sample cap (PyHessian: 100)")->check(CLI::PositiveNumber);
  app.add_option("--tol", ho.tol, "Hutchinson relative tolerance (PyHessian: 1e-3)")->check(CLI::NonNegativeNumber);
  app.add_option("--seed", ho.seed, "seed of the Rademacher vectors")->check(NotNegative);
  app.add_flag("--lambda-max", lambda, "also λmax by power iteration");
  app.add_option("--power-iters", po.max_iter, "power iteration cap")->check(CLI::PositiveNumber);
  app.add_option("--dtype", dtype_name, "f32 | f64")->check(CLI::IsMember({"f32", "f64"}));
  app.add_option("--device", device, "cpu | cuda | cuda:N");
  CLI11_PARSE(app, argc, argv);
  const DType dt = parse_dtype(dtype_name);

  auto [net, train] = load_checkpoint_model(model, data_spec, file, subset, dt, device_for_rank(device));
  // Under mpirun the Hutchinson samples are shared out; λmax's power iteration is
  // sequential and runs on every process (the same numbers everywhere).
  distributed::require_same(distributed::world(), "the flags or the data",
                            std::to_string(distributed::hash_tensor(flatten(detach(net->parameters())),
                                                                    distributed::hash_tensor(train.images))) +
                                std::to_string(ho.max_samples) + std::to_string(ho.tol) + std::to_string(ho.seed) +
                                std::to_string(lambda) + std::to_string(po.max_iter) + dtype_name);
  optim::TraceEstimate t = optim::classifier_trace(*net, train, dt, ho, optim::DataParallel{});
  nlohmann::json out = {{"file", file},
                        {"examples", train.size()},
                        {"dim", t.dim},
                        {"trace", t.trace},
                        {"trace_normalized", t.trace_normalized},
                        {"stderr", t.stderr_trace},
                        {"stderr_normalized", t.stderr_normalized},
                        {"samples", t.samples},
                        {"converged", t.converged}};
  if (lambda) {
    const Device dev = device_for_rank(device);
    Tensor x = train.images.to(dt).to(dev), y = train.labels.to(dev);
    Params p = net->parameters();
    net->update_running_stats(false);
    optim::EigenEstimate e =
        optim::top_eigenvalue(optim::hvp_fn_of_leaves([&] { return cross_entropy((*net)(x), y); }, p), p, po);
    out["lambda_max"] = e.value;
    out["power_iterations"] = e.iterations;
    out["power_converged"] = e.converged;
  }
  std::printf("%s\n", out.dump().c_str());
  const bool measured = std::isfinite(t.trace) && (!lambda || std::isfinite(out["lambda_max"].get<double>()));
  if (!measured) std::fprintf(stderr, "flatmin trace: a non-finite estimate (printed as null)\n");
  return measured ? 0 : 3;
}

Register reg{{"trace", "flatness of a checkpoint: Hutchinson tr/tr̄ (PyHessian convention) and λmax", run}};
}  // namespace
}  // namespace flatmin::tools
