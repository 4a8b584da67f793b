// `flatmin train`: a classifier (MLP or ResNet-18) on Fashion-MNIST (or two blobs) with SGD,
// SAM, RS or SA; evaluation every N steps (loss, train/test accuracy, optionally tr̄),
// metrics as JSON lines, progress with rate and ETA, atomic checkpoints, bit-exact
// --resume, a clean stop on a non-finite loss. The last line on stdout is a JSON summary.
#include <CLI/CLI.hpp>

#include "nn/safetensors.hpp"
#include "tools/command.hpp"
#include "tools/train_setup.hpp"

namespace flatmin::tools {
namespace {

int run(int argc, char** argv) {
  CLI::App app{"Train a classifier with SGD, SAM, RS (Algorithm 1) or SA (Algorithm 2)"};
  ModelSpec model;
  DataSpec data_spec;
  OptimSpec optim_spec;
  ScheduleSpec sched;
  std::string save_model;
  model.add_to(app);
  data_spec.add_to(app);
  optim_spec.add_to(app);
  sched.add_to(app);
  app.add_option("--save-model", save_model, "write the final model's state dict (safetensors)");
  CLI11_PARSE(app, argc, argv);
  sched.check_outputs();
  sched.check_precision();
  nn::check_output_path("--save-model", save_model);
  optim_spec.config();  // bad hyperparameters are refused before any data is read
  optim_spec.check_batch(sched.batch_size);
  if (sched.steps == 0 && sched.epochs == 0) throw Error("give --steps or --epochs");
  if (sched.steps > 0 && sched.epochs > 0) throw Error("give --steps or --epochs, not both");

  data::Dataset train = data_spec.train(), test = data_spec.test();
  flatten_for(model, train);
  flatten_for(model, test);
  auto net = build_model(model, train);
  nlohmann::json config = {{"model", model.json()},
                           {"data", data_spec.json()},
                           {"optimizer", optim_spec.json()},
                           {"batch_size", sched.batch_size},
                           {"loader_seed", sched.loader_seed},
                           {"dtype", sched.dtype},
                           {"loss", sched.loss}};
  std::fprintf(stderr, "%s: %lld parameters, %lld training / %lld test examples\n", model.model.c_str(),
               (long long)net->num_parameters(), (long long)train.size(), (long long)test.size());
  MetricsLog log(sched.metrics, {.resume = sched.resume});
  PhaseResult r = run_phase("train", *net, train, test, optim_spec, sched, config, log);
  if (!save_model.empty() && r.outcome.finished && distributed::world().rank() == 0)
    nn::save_safetensors(*net, save_model);
  nlohmann::json summary = measured_json(r, sched.eval_trace);
  summary.update({{"finished", r.outcome.finished}, {"steps", r.outcome.steps}});
  if (r.outcome.stopped_non_finite) summary["stopped"] = r.outcome.message;
  std::printf("%s\n", summary.dump().c_str());
  return r.outcome.finished ? 0 : 3;
}

Register reg{{"train", "train a classifier (MLP/ResNet-18) with SGD, SAM, RS or SA; checkpoints, resume", run}};
}  // namespace
}  // namespace flatmin::tools
