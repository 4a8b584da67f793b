// `flatmin escape`: the Section 5 pipeline of ALGORITHMS.md §7, CPU-sized by default.
//  1. a bad global minimum (Liu et al. 2020): train on `--copies` noisy copies of the
//     training subset (10% of the pixels zeroed, random labels) until memorized, then on the
//     clean subset with plain SGD until 100% train accuracy;
//  2. from that point, at a small constant learning rate, each method in --methods
//     (sgd, rs, sa<b> for SA with perturbation batch b, sam) for --escape-steps steps,
//     recording train accuracy, test accuracy and tr̄ (Hutchinson, PyHessian rule).
// Metrics go to --metrics as JSON lines ({"phase": ...}); the last stdout line is a JSON
// summary. The default is the paper's network shape at CPU size: a narrow ResNet-18
// (cifar stem, GroupNorm: SA's per-example semantics hold; no augmentation, no weight
// decay) on a Fashion-MNIST subset, about 15 minutes on 2 cores (docs/escape_results.md).
// --model mlp keeps the small MLP; --load-start skips step 1 (sweeps from one minimum).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>

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
  app.option_defaults()->always_capture_default();  // --help shows the measured defaults
  ModelSpec model;
  model.model = "resnet18";
  model.width = 8;
  model.hidden = {512};  // --model mlp
  DataSpec data_spec;
  // Defaults measured in docs/escape_results.md: 500 images, 4 noisy copies (memorized to
  // 95% in about 550 steps), a bad minimum near 38% test accuracy; escape at η = 0.001 with
  // η' = 10η for RS/SA (ρ_RS = 20ρ_SA); SA with b = 1 at ρ = 0.1, η' = 0.01 lost most of its
  // training accuracy within 50 steps, so b = 1 has its own smaller ρ and η' = η.
  data_spec.train_subset = 500;
  data_spec.test_subset = 2000;
  ScheduleSpec sched;
  sched.trace_subset = 128;  // fixed subset; the Rademacher vectors are the same at each evaluation
  sched.trace_samples = 10;  // PyHessian's cap of 100 costs more than the whole escape phase here
  int64_t copies = 4, memorize_steps = 1000, clean_steps = 600, escape_steps = 200, escape_eval = 100;
  int64_t memorize_eval = 50, clean_eval = 25;
  double zero_fraction = 0.1, memorize_acc = 0.95, memorize_lr = 0.05, clean_lr = 0.02, escape_lr = 0.001;
  double rho_rs = 2.0, rho_sa = 0.1, rho_sam = 0.05;
  std::optional<double> lr_perturb = 0.01, rho_sa1 = 0.02, lr_perturb_sa1 = 0.001;
  std::vector<std::string> methods = {"sgd", "rs", "sa128", "sa64", "sa1", "sam"};
  std::string save_start, load_start;
  uint64_t seed = 0;
  model.add_to(app);
  data_spec.add_to(app);
  app.add_option("--batch-size", sched.batch_size, "mini-batch size of every phase")->check(CLI::PositiveNumber);
  app.add_option("--copies", copies, "noisy copies per image in the random-label phase")->check(CLI::PositiveNumber);
  app.add_option("--zero-fraction", zero_fraction, "pixels zeroed in each noisy copy");
  app.add_option("--memorize-steps", memorize_steps, "cap on random-label steps")->check(CLI::PositiveNumber);
  app.add_option("--memorize-acc", memorize_acc, "random-label train accuracy that counts as memorized");
  app.add_option("--memorize-lr", memorize_lr, "SGD (momentum 0.9) learning rate on random labels");
  app.add_option("--memorize-eval-every", memorize_eval, "evaluate (and test for memorized) every N random-label steps")->check(CLI::PositiveNumber);
  app.add_option("--clean-steps", clean_steps, "cap on clean-label steps (plain SGD until 100% train accuracy)")->check(CLI::PositiveNumber);
  app.add_option("--clean-eval-every", clean_eval, "evaluate (and test for 100%) every N clean-label steps")->check(CLI::PositiveNumber);
  app.add_option("--clean-lr", clean_lr, "plain SGD learning rate on clean labels");
  app.add_option("--escape-steps", escape_steps, "steps of each method from the bad minimum")->check(CLI::PositiveNumber);
  app.add_option("--escape-eval-every", escape_eval, "evaluation (with tr̄) every N escape steps")->check(CLI::PositiveNumber);
  app.add_option("--escape-lr", escape_lr, "constant learning rate η of every method (paper: 0.001)");
  app.add_option("--lr-perturb", lr_perturb, "η' of RS/SA (default 0.01)");
  app.add_option("--rho-rs", rho_rs, "ρ of RS");
  app.add_option("--rho-sa", rho_sa, "ρ of SA");
  app.add_option("--rho-sam", rho_sam, "ρ of SAM");
  app.add_option("--rho-sa1", rho_sa1, "ρ of SA with b = 1 (default 0.02)");
  app.add_option("--lr-perturb-sa1", lr_perturb_sa1, "η' of SA with b = 1 (default 0.001)");
  app.add_option("--methods", methods, "sgd, rs, sa<b> (e.g. sa1, sa64, sa128), sam")->delimiter(',');
  app.add_option("--trace-subset", sched.trace_subset, "training examples for tr̄")->check(CLI::PositiveNumber);
  app.add_option("--trace-samples", sched.trace_samples, "Hutchinson sample cap (PyHessian: 100)")->check(CLI::PositiveNumber);
  app.add_option("--metrics", sched.metrics, "metrics as JSON lines");
  app.add_option("--device", sched.device, "cpu | cuda | cuda:N");
  app.add_option("--save-start", save_start, "write the bad global minimum's state dict here");
  app.add_option("--load-start", load_start, "start the methods from this state dict (skips making the bad minimum)");
  app.add_option("--seed", seed, "seed of labels, shuffling and perturbations")->check(NotNegative);
  CLI11_PARSE(app, argc, argv);
  sched.check_outputs();
  nn::check_output_path("--save-start", save_start);

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
    else if (m.rfind("sa", 0) == 0 && m.size() > 2 && m.size() < 12 && m.find_first_not_of("0123456789", 2) == std::string::npos) {
      o.name = "sa", o.rho = rho_sa, o.sa_batch = std::stoll(m.substr(2));
      if (o.sa_batch == 1) {
        o.rho = rho_sa1.value_or(rho_sa);
        if (lr_perturb_sa1) o.lr_perturb = lr_perturb_sa1;
      }
    } else throw Error("--methods: unknown method '" + m + "' (sgd, rs, sa<b>, sam)");
    o.config();
    specs.push_back(o);
  }
  if (!(zero_fraction >= 0 && zero_fraction <= 1)) throw Error("--zero-fraction must be in [0, 1]");
  if (!(memorize_acc > 0 && memorize_acc <= 1)) throw Error("--memorize-acc must be in (0, 1]");

  data::Dataset train = data_spec.train(), test = data_spec.test();
  for (const OptimSpec& o : specs)
    if (o.name == "sa" && o.sa_batch > train.size()) throw Error("--methods: SA batch " + std::to_string(o.sa_batch) + " exceeds the training subset");
  data::Dataset noisy;
  if (load_start.empty()) noisy = data::noisy_copies(train, {.copies = copies, .zero_fraction = zero_fraction, .seed = seed});
  flatten_for(model, train);
  flatten_for(model, test);
  if (load_start.empty()) flatten_for(model, noisy);
  auto net = build_model(model, train);
  std::fprintf(stderr, "escape: %s (width %lld, %s norm) with %lld parameters; %lld clean / %lld noisy training examples, %lld test\n",
               model.model.c_str(), (long long)model.width, model.norm.c_str(), (long long)net->num_parameters(),
               (long long)train.size(), (long long)noisy.size(), (long long)test.size());
  MetricsLog log(sched.metrics);
  nlohmann::json config = {{"model", model.json()}, {"data", data_spec.json()}};
  sched.loader_seed = seed;

  // One header line per phase, with the time spent so far: the run's progress at a glance.
  const auto t0 = std::chrono::steady_clock::now();
  const int phases = (load_start.empty() ? 2 : 0) + 1 + int(specs.size());
  int phase_no = 0;
  auto announce = [&](const std::string& what) {
    const int s = int(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::fprintf(stderr, "[%d/%d] %s  (elapsed %02d:%02d)\n", ++phase_no, phases, what.c_str(), s / 60, s % 60);
  };

  double random_label_acc = NAN;
  if (load_start.empty()) {
    // 1a. memorize random labels on noisy copies
    announce("random labels on " + std::to_string(noisy.size()) + " noisy copies, SGD momentum 0.9, lr " +
             std::to_string(memorize_lr) + ", until train acc >= " + std::to_string(memorize_acc) + " (at most " +
             std::to_string(memorize_steps) + " steps)");
    OptimSpec mem;
    mem.lr = memorize_lr;
    mem.momentum = 0.9;
    ScheduleSpec s1 = sched;
    s1.steps = memorize_steps;
    s1.eval_every = memorize_eval;
    PhaseResult r1 = run_phase("random-labels", *net, noisy, test, mem, s1, config, log,
                               [&](const PhaseResult& r) { return r.train.accuracy >= memorize_acc; });
    if (!r1.outcome.finished) throw Error("random-label phase stopped: " + r1.outcome.message);
    random_label_acc = r1.train.accuracy;
    // 1b. clean labels, plain SGD, until 100% train accuracy
    announce("clean labels, plain SGD lr " + std::to_string(clean_lr) + ", until 100% train acc (at most " +
             std::to_string(clean_steps) + " steps)");
    OptimSpec clean;
    clean.lr = clean_lr;
    ScheduleSpec s2 = sched;
    s2.steps = clean_steps;
    s2.eval_every = clean_eval;
    PhaseResult r2 = run_phase("clean-labels", *net, train, test, clean, s2, config, log,
                               [](const PhaseResult& r) { return r.train.accuracy >= 1.0; });
    if (!r2.outcome.finished) throw Error("clean-label phase stopped: " + r2.outcome.message);
  } else {
    nn::load_safetensors(*net, load_start);
  }
  announce("measuring the starting point (tr̄ on the first " + std::to_string(sched.trace_subset) + " training examples)");
  PhaseResult start = evaluate_all(*net, train, test, sched, true);
  std::fprintf(stderr, "bad minimum: train acc %.4f, test acc %.4f, tr̄ %.6g (random-label acc %.4f)\n", start.train.accuracy,
               start.test.accuracy, start.trace_normalized, random_label_acc);
  log.write({{"phase", "start"}, {"step", 0}, {"train_accuracy", start.train.accuracy}, {"test_accuracy", start.test.accuracy},
             {"train_loss", start.train.loss}, {"test_loss", start.test.loss}, {"trace_normalized", start.trace_normalized}});
  if (!save_start.empty()) nn::save_safetensors(*net, save_start);
  const nn::NamedTensors start_state = snapshot(*net);

  // 2. each method from the same point, same batches
  nlohmann::json results = nlohmann::json::array();
  for (size_t k = 0; k < specs.size(); ++k) {
    nn::load_state_dict(*net, start_state);
    const bool perturbed = specs[k].name != "sgd";
    char what[200];
    std::snprintf(what, sizeof what, "%s: %lld steps, lr %g", methods[k].c_str(), (long long)escape_steps, specs[k].lr);
    std::string hyper = what;
    if (perturbed) hyper += ", rho " + nlohmann::json(specs[k].rho).dump();
    if (specs[k].name == "rs" || specs[k].name == "sa") hyper += ", lr' " + nlohmann::json(specs[k].lr_perturb.value_or(specs[k].lr)).dump();
    announce(hyper);
    ScheduleSpec s3 = sched;
    s3.steps = escape_steps;
    s3.eval_every = escape_eval;
    s3.eval_trace = true;
    PhaseResult r = run_phase(methods[k], *net, train, test, specs[k], s3, config, log);
    const bool two_step = specs[k].name == "rs" || specs[k].name == "sa";
    results.push_back({{"method", methods[k]}, {"rho", perturbed ? nlohmann::json(specs[k].rho) : nlohmann::json(nullptr)},
                       {"lr_perturb", two_step ? nlohmann::json(specs[k].lr_perturb.value_or(specs[k].lr)) : nlohmann::json(nullptr)},
                       {"finished", r.outcome.finished}, {"train_accuracy", r.train.accuracy},
                       {"test_accuracy", r.test.accuracy}, {"trace_normalized", r.trace_normalized}});
  }
  const int total_s = int(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  std::fprintf(stderr, "\nstart   train acc %.4f  test acc %.4f  tr̄ %.6g\n", start.train.accuracy, start.test.accuracy,
               start.trace_normalized);
  for (const auto& r : results)
    std::fprintf(stderr, "%-7s train acc %.4f  test acc %.4f  tr̄ %.6g\n", r["method"].get<std::string>().c_str(),
                 r["train_accuracy"].get<double>(), r["test_accuracy"].get<double>(), r["trace_normalized"].get<double>());
  std::fprintf(stderr, "total %02d:%02d\n", total_s / 60, total_s % 60);
  nlohmann::json summary = {{"start", {{"train_accuracy", start.train.accuracy}, {"test_accuracy", start.test.accuracy},
                                       {"trace_normalized", start.trace_normalized},
                                       {"random_label_accuracy", std::isfinite(random_label_acc) ? nlohmann::json(random_label_acc) : nlohmann::json(nullptr)}}},
                            {"escape_lr", escape_lr}, {"escape_steps", escape_steps}, {"seconds", total_s}, {"results", results}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

Register reg{{"escape", "escape a bad global minimum: SGD, RS, SA (b=1/64/128), SAM (ALGORITHMS.md §7)", run}};
}  // namespace
}  // namespace flatmin::tools
