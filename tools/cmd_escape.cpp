// `flatmin escape`: the Section 5 pipeline of ALGORITHMS.md §7, CPU-sized by default.
//  1. a bad global minimum (Liu et al. 2020): train on `--copies` noisy copies of the
//     training subset (10% of the pixels zeroed, random labels) until memorized, then on the
//     clean subset with plain SGD until 100% train accuracy;
//  2. from that point, at a small constant learning rate, each method in --methods
//     (sgd, rs, sa<b> for SA with perturbation batch b, sam) for --escape-steps steps,
//     recording train accuracy, test accuracy and tr̄ (Hutchinson, PyHessian rule).
// Metrics go to --metrics as JSON lines ({"phase": ...}); the last stdout line is a JSON
// summary. The default (MLP on 1000 Fashion-MNIST images) is sized for 2 CPU cores; the
// paper's setting is --model resnet18 --norm group (GroupNorm keeps SA's per-example
// semantics, no augmentation, no weight decay) on the full set, on a GPU.
#include <CLI/CLI.hpp>

#include "nn/safetensors.hpp"
#include "tools/command.hpp"
#include "tools/train_setup.hpp"

namespace flatmin::tools {
namespace {

nn::NamedTensors snapshot(const nn::Module& m) {
  nn::NamedTensors s;
  NoGrad ng;
  for (auto& [name, t] : m.state_dict()) s.emplace_back(name, t.detach().clone());
  return s;
}

int run(int argc, char** argv) {
  CLI::App app{"Escape from a bad global minimum: SGD vs RS vs SA (b = 1, 64, 128) vs SAM (ALGORITHMS.md §7)"};
  ModelSpec model;
  model.hidden = {512};
  DataSpec data_spec;
  data_spec.train_subset = 1000;
  data_spec.test_subset = 2000;
  ScheduleSpec sched;
  int64_t copies = 10, memorize_steps = 6000, clean_steps = 4000, escape_steps = 1000, escape_eval = 250;
  double zero_fraction = 0.1, memorize_acc = 0.99, memorize_lr = 0.05, clean_lr = 0.02, escape_lr = 0.001;
  double rho_rs = 0.5, rho_sa = 0.1, rho_sam = 0.05;
  std::optional<double> lr_perturb;
  std::vector<std::string> methods = {"sgd", "rs", "sa128", "sa64", "sa1", "sam"};
  std::string save_start;
  uint64_t seed = 0;
  model.add_to(app);
  data_spec.add_to(app);
  app.add_option("--batch-size", sched.batch_size, "mini-batch size of every phase")->check(CLI::PositiveNumber);
  app.add_option("--copies", copies, "noisy copies per image in the random-label phase")->check(CLI::PositiveNumber);
  app.add_option("--zero-fraction", zero_fraction, "pixels zeroed in each noisy copy");
  app.add_option("--memorize-steps", memorize_steps, "cap on random-label steps")->check(CLI::PositiveNumber);
  app.add_option("--memorize-acc", memorize_acc, "random-label train accuracy that counts as memorized");
  app.add_option("--memorize-lr", memorize_lr, "SGD (momentum 0.9) learning rate on random labels");
  app.add_option("--clean-steps", clean_steps, "cap on clean-label steps (plain SGD until 100% train accuracy)")->check(CLI::PositiveNumber);
  app.add_option("--clean-lr", clean_lr, "plain SGD learning rate on clean labels");
  app.add_option("--escape-steps", escape_steps, "steps of each method from the bad minimum")->check(CLI::PositiveNumber);
  app.add_option("--escape-eval-every", escape_eval, "evaluation (with tr̄) every N escape steps")->check(CLI::PositiveNumber);
  app.add_option("--escape-lr", escape_lr, "constant learning rate η of every method (paper: 0.001)");
  app.add_option("--lr-perturb", lr_perturb, "η' of RS/SA (default η)");
  app.add_option("--rho-rs", rho_rs, "ρ of RS");
  app.add_option("--rho-sa", rho_sa, "ρ of SA");
  app.add_option("--rho-sam", rho_sam, "ρ of SAM");
  app.add_option("--methods", methods, "sgd, rs, sa<b> (e.g. sa1, sa64, sa128), sam")->delimiter(',');
  app.add_option("--trace-subset", sched.trace_subset, "training examples for tr̄")->check(CLI::PositiveNumber);
  app.add_option("--trace-samples", sched.trace_samples, "Hutchinson sample cap (PyHessian: 100)")->check(CLI::PositiveNumber);
  app.add_option("--metrics", sched.metrics, "metrics as JSON lines");
  app.add_option("--save-start", save_start, "write the bad global minimum's state dict here");
  app.add_option("--seed", seed, "seed of labels, shuffling and perturbations");
  CLI11_PARSE(app, argc, argv);

  // Every method's hyperparameters are checked before any training.
  std::vector<OptimSpec> specs;
  for (const std::string& m : methods) {
    OptimSpec o;
    o.lr = escape_lr;
    o.lr_perturb = lr_perturb;
    o.seed = seed + 17;
    if (m == "sgd") o.name = "sgd";
    else if (m == "sam") o.name = "sam", o.rho = rho_sam;
    else if (m == "rs") o.name = "rs", o.rho = rho_rs;
    else if (m.rfind("sa", 0) == 0 && m.size() > 2 && m.find_first_not_of("0123456789", 2) == std::string::npos)
      o.name = "sa", o.rho = rho_sa, o.sa_batch = std::stoll(m.substr(2));
    else throw Error("--methods: unknown method '" + m + "' (sgd, rs, sa<b>, sam)");
    o.config();
    specs.push_back(o);
  }
  if (!(zero_fraction >= 0 && zero_fraction <= 1)) throw Error("--zero-fraction must be in [0, 1]");

  data::Dataset train = data_spec.train(), test = data_spec.test();
  for (const OptimSpec& o : specs)
    if (o.name == "sa" && o.sa_batch > train.size()) throw Error("--methods: SA batch " + std::to_string(o.sa_batch) + " exceeds the training subset");
  data::Dataset noisy = data::noisy_copies(train, {.copies = copies, .zero_fraction = zero_fraction, .seed = seed});
  flatten_for(model, train);
  flatten_for(model, test);
  flatten_for(model, noisy);
  auto net = build_model(model, train);
  std::fprintf(stderr, "escape: %s with %lld parameters; %lld clean / %lld noisy training examples, %lld test\n",
               model.model.c_str(), (long long)net->num_parameters(), (long long)train.size(), (long long)noisy.size(),
               (long long)test.size());
  MetricsLog log(sched.metrics, false);
  nlohmann::json config = {{"model", model.json()}, {"data", data_spec.json()}};
  sched.loader_seed = seed;

  // 1a. memorize random labels on noisy copies
  OptimSpec mem;
  mem.lr = memorize_lr;
  mem.momentum = 0.9;
  ScheduleSpec s1 = sched;
  s1.steps = memorize_steps;
  s1.eval_every = 200;
  PhaseResult r1 = run_phase("random-labels", *net, noisy, test, mem, s1, config, log,
                             [&](const PhaseResult& r) { return r.train.accuracy >= memorize_acc; });
  if (!r1.outcome.finished) throw Error("random-label phase stopped: " + r1.outcome.message);
  // 1b. clean labels, plain SGD, until 100% train accuracy
  OptimSpec clean;
  clean.lr = clean_lr;
  ScheduleSpec s2 = sched;
  s2.steps = clean_steps;
  s2.eval_every = 100;
  PhaseResult r2 = run_phase("clean-labels", *net, train, test, clean, s2, config, log,
                             [](const PhaseResult& r) { return r.train.accuracy >= 1.0; });
  if (!r2.outcome.finished) throw Error("clean-label phase stopped: " + r2.outcome.message);
  PhaseResult start = evaluate_all(*net, train, test, sched, true);
  std::fprintf(stderr, "bad minimum: train acc %.4f, test acc %.4f, tr̄ %.6g (random-label acc %.4f)\n", start.train.accuracy,
               start.test.accuracy, start.trace_normalized, r1.train.accuracy);
  log.write({{"phase", "start"}, {"step", 0}, {"train_accuracy", start.train.accuracy}, {"test_accuracy", start.test.accuracy},
             {"train_loss", start.train.loss}, {"trace_normalized", start.trace_normalized}});
  if (!save_start.empty()) nn::save_safetensors(*net, save_start);
  const nn::NamedTensors start_state = snapshot(*net);

  // 2. each method from the same point, same batches
  nlohmann::json results = nlohmann::json::array();
  for (size_t k = 0; k < specs.size(); ++k) {
    nn::load_state_dict(*net, start_state);
    ScheduleSpec s3 = sched;
    s3.steps = escape_steps;
    s3.eval_every = escape_eval;
    s3.eval_trace = true;
    PhaseResult r = run_phase(methods[k], *net, train, test, specs[k], s3, config, log);
    results.push_back({{"method", methods[k]}, {"rho", specs[k].name == "sgd" ? 0.0 : specs[k].rho},
                       {"finished", r.outcome.finished}, {"train_accuracy", r.train.accuracy},
                       {"test_accuracy", r.test.accuracy}, {"trace_normalized", r.trace_normalized}});
    std::fprintf(stderr, "%-6s train acc %.4f  test acc %.4f  tr̄ %.6g\n", methods[k].c_str(), r.train.accuracy,
                 r.test.accuracy, r.trace_normalized);
  }
  nlohmann::json summary = {{"start", {{"train_accuracy", start.train.accuracy}, {"test_accuracy", start.test.accuracy},
                                       {"trace_normalized", start.trace_normalized}, {"random_label_accuracy", r1.train.accuracy}}},
                            {"escape_lr", escape_lr}, {"escape_steps", escape_steps}, {"results", results}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

Register reg{{"escape", "escape a bad global minimum: SGD, RS, SA (b=1/64/128), SAM (ALGORITHMS.md §7)", run}};
}  // namespace
}  // namespace flatmin::tools
