// `flatmin escape`: the Section 5 experiment of docs/algorithms.md §7 as a fair test, CPU-sized
// by default, with its results written to a folder (docs/escape_results.md).
//  1. a bad global minimum (Liu et al. 2020): train on `--copies` noisy copies of the
//     training subset (10% of the pixels zeroed, random labels) until memorized, then on the
//     clean subset with plain SGD until 100% train accuracy and a training loss ≤ --start-loss;
//     the escape phase is refused when the start is not such a global minimum;
//  2. from that point, at a small constant learning rate, each arm of --methods (SGD at η and
//     at η + η', RS, SA at several b with its ρ = 0 ablation and at equal ρ²η', SAM) for
//     --escape-steps steps, once per seed, recording train/test loss and accuracy and tr̄;
//  3. summary.json, report.md (mean ± s.e. over seeds, tr̄ at matched training loss, a
//     verdict per claim) and PNG plots in --out (default results/escape-<date-time>/).
// --preset full is the complete grid (both losses, b ∈ {1, 16, 64, 128}), --preset gpu the
// same pipeline sized for one large GPU.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <tuple>

#include "nn/safetensors.hpp"
#include "tools/command.hpp"
#include "tools/escape_report.hpp"
#include "tools/plot.hpp"
#include "tools/train_setup.hpp"

namespace flatmin::tools {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

// ---- settings ----
struct Settings {
  std::string preset = "default";
  ModelSpec model;
  DataSpec data;
  // The default is sized to finish in about 15 minutes on 2 CPU cores (docs/escape_results.md
  // has the measured time): 256 training examples, so tr̄ is over the whole training set,
  // batch 64, 100 escape steps per arm; --preset full is the paper-shaped grid at batch 128.
  int64_t batch_size = 64, copies = 4;
  int64_t memorize_steps = 1500, memorize_eval = 50, clean_steps = 1500, clean_eval = 25;
  int64_t escape_steps = 100, escape_eval = 50;
  double zero_fraction = 0.1, memorize_acc = 0.95, start_loss = 0.01;
  std::optional<double> memorize_lr, clean_lr;  // unset: start_lrs(loss)
  double escape_lr = 0.001, lr_perturb = 0.01, rho_rs = 2.0, rho_sa = 0.1, rho_sam = 0.05;
  std::optional<double> drift_lr_perturb;  // η' of the equal-ρ²η' arms (default η'/10)
  std::vector<std::string> methods = {"sgd", "sgd+", "rs", "sa64", "sa8", "sa8-rho0"};
  std::vector<std::string> losses = {"ce"};
  std::string reference = "sgd+";
  int seeds = 2;
  uint64_t seed = 0;
  int64_t trace_subset = 256;
  int trace_samples = 10;
  std::string device = "cpu", out, save_start, load_start;
  bool force = false;
  std::string command;       // the command line, for report.md
  int64_t micro_shards = 1;  // data parallelism under mpirun (train/data_parallel.hpp)

  Settings() {
    model.model = "resnet18";
    model.width = 8;
    model.hidden = {512};  // --model mlp
    data.train_subset = 256;
    data.test_subset = 2000;
  }
  double drift_eta_prime() const { return drift_lr_perturb.value_or(lr_perturb / 10); }
  // The start's learning rates per loss unless given: the squared error's gradients near a
  // random initialization are larger (random labels at lr 0.05 with momentum became NaN within
  // 10 steps), so it gets smaller steps; both reach the start criterion in a few hundred steps.
  struct StartLrs {
    double memorize, clean;
  };
  StartLrs start_lrs(const std::string& loss) const {
    const StartLrs d = loss == "mse" ? StartLrs{0.01, 0.02} : StartLrs{0.05, 0.05};
    return {memorize_lr.value_or(d.memorize), clean_lr.value_or(d.clean)};
  }
  json start_lrs_by_loss(double StartLrs::*which) const {  // {"ce": lr, "mse": lr} for summary.json
    json j;
    for (const char* l : {"ce", "mse"}) j[l] = start_lrs(l).*which;
    return j;
  }
  json json_value() const {
    return {{"preset", preset},
            {"model", model.json()},
            {"data", data.json()},
            {"batch_size", batch_size},
            {"copies", copies},
            {"zero_fraction", zero_fraction},
            {"memorize_steps", memorize_steps},
            {"memorize_eval_every", memorize_eval},
            {"memorize_acc", memorize_acc},
            {"memorize_lr", start_lrs_by_loss(&StartLrs::memorize)},
            {"clean_steps", clean_steps},
            {"clean_eval_every", clean_eval},
            {"clean_lr", start_lrs_by_loss(&StartLrs::clean)},
            {"start_loss", start_loss},
            {"escape_steps", escape_steps},
            {"escape_eval_every", escape_eval},
            {"escape_lr", escape_lr},
            {"lr_perturb", lr_perturb},
            {"drift_lr_perturb", drift_eta_prime()},
            {"rho_rs", rho_rs},
            {"rho_sa", rho_sa},
            {"rho_sam", rho_sam},
            {"methods", methods},
            {"losses", losses},
            {"reference", reference},
            {"seeds", seeds},
            {"seed", seed},
            {"trace_subset", trace_subset},
            {"trace_samples", trace_samples},
            {"device", device},
            {"load_start", load_start},
            {"command", command}};
  }
};

// Presets change defaults; flags given on the command line still win.
void apply_preset(Settings& s) {
  if (s.preset == "default") return;
  if (s.preset == "full") {  // the paper's batch 128 on 500 examples, 200 steps, both losses
    s.losses = {"ce", "mse"};
    s.seeds = 3;
    s.batch_size = 128;
    s.data.train_subset = 500;
    s.escape_steps = 200;
    s.methods = {"sgd",       "sgd+",      "rs",       "sa128",       "sa64",       "sa16",       "sa1",
                 "sa64-rho0", "sa16-rho0", "sa1-rho0", "sa128-drift", "sa64-drift", "sa16-drift", "sa1-drift"};
    return;
  }
  if (s.preset == "gpu") {  // one large GPU: a wider network, ten times the data, five times the steps
    s.device = "cuda";
    s.batch_size = 128;
    s.model.width = 32;
    s.data.train_subset = 5000;
    s.data.test_subset = 10000;
    s.escape_steps = 1000;
    s.escape_eval = 100;
    s.clean_steps = 4000;
    s.memorize_steps = 4000;
    s.memorize_eval = 100;
    s.clean_eval = 50;
    s.seeds = 3;
    s.trace_subset = 512;
    s.trace_samples = 20;
    s.methods = {"sgd", "sgd+", "rs", "sa128", "sa16", "sa1", "sa16-rho0", "sa1-rho0"};
    return;
  }
  throw Error("--preset: unknown preset '" + s.preset + "' (default, full, gpu)");
}

// The value of --preset, read before the other flags so that they override its defaults.
std::string preset_of(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--preset" && i + 1 < argc) return argv[i + 1];
    if (a.rfind("--preset=", 0) == 0) return a.substr(9);
  }
  return "default";
}

// ---- arms ----
struct ArmSpec {
  escape::Arm arm;
  OptimSpec optim;
};

// sgd | sgd+ (SGD at η + η') | rs | sam | sa<b> | sa<b>-rho0 (ρ = 0) | sa<b>-drift (η'_drift,
// ρ scaled so that ρ²η' is the sa<b> arms')
ArmSpec make_arm(const std::string& label, const Settings& s) {
  ArmSpec a;
  a.arm.label = label;
  a.arm.lr = s.escape_lr;
  a.optim.lr = s.escape_lr;
  a.optim.seed = s.seed + 17;
  static const std::regex sa_re("sa([0-9]{1,9})(-rho0|-drift)?");
  std::smatch m;
  if (label == "sgd") {
    a.arm.kind = "sgd", a.arm.role = "plain SGD at the small η (the paper: does not escape)";
  } else if (label == "sgd+") {
    a.arm.kind = "sgd", a.arm.lr = a.optim.lr = s.escape_lr + s.lr_perturb;
    a.arm.role = "control: SGD at η + η' (a larger step with no perturbation)";
  } else if (label == "rs") {
    a.arm.kind = a.optim.name = "rs", a.arm.rho = a.optim.rho = s.rho_rs, a.arm.lr_perturb = s.lr_perturb;
    a.arm.role = "Algorithm 1, w at a random point of the ρ-sphere";
  } else if (label == "sam") {
    a.arm.kind = a.optim.name = "sam", a.arm.rho = a.optim.rho = s.rho_sam, a.arm.role = "SAM (practical baseline)";
  } else if (std::regex_match(label, m, sa_re)) {
    a.arm.kind = a.optim.name = "sa";
    a.arm.b = a.optim.sa_batch = std::stoll(m[1]);
    a.arm.rho = s.rho_sa, a.arm.lr_perturb = s.lr_perturb;
    a.arm.role = "Algorithm 2, i within the step's batch";
    if (m[2] == "-rho0") a.arm.rho = 0, a.arm.role = "ablation: SA at ρ = 0 (same η, η', b)";
    if (m[2] == "-drift") {
      a.arm.lr_perturb = s.drift_eta_prime();
      a.arm.rho = s.rho_sa * std::sqrt(s.lr_perturb / a.arm.lr_perturb);
      a.arm.role = "SA at the same ρ²η' with a smaller η'";
    }
    a.optim.rho = a.arm.rho;
  } else {
    throw Error("--methods: unknown method '" + label + "' (sgd, sgd+, rs, sam, sa<b>, sa<b>-rho0, sa<b>-drift)");
  }
  if (a.arm.kind == "rs" || a.arm.kind == "sa") a.optim.lr_perturb = a.arm.lr_perturb;
  a.optim.config();  // refuses bad hyperparameters now
  if (a.arm.b > s.batch_size)
    throw Error("--methods " + label + ": b = " + std::to_string(a.arm.b) + " exceeds --batch-size " +
                std::to_string(s.batch_size) + " (SA draws its b examples within the step's batch)");
  return a;
}

// Every setting that can be refused is refused here, before any data is read.
std::vector<ArmSpec> check_settings(const Settings& s) {
  if (s.methods.empty()) throw Error("--methods: give at least one method");
  std::vector<ArmSpec> arms;
  for (const std::string& m : s.methods) {
    for (const ArmSpec& a : arms)
      if (a.arm.label == m) throw Error("--methods: '" + m + "' is listed twice");
    arms.push_back(make_arm(m, s));
  }
  if (s.seeds < 1) throw Error("--seeds must be >= 1");
  if (!(s.zero_fraction >= 0 && s.zero_fraction <= 1)) throw Error("--zero-fraction must be in [0, 1]");
  if (!(s.memorize_acc > 0 && s.memorize_acc <= 1)) throw Error("--memorize-acc must be in (0, 1]");
  for (auto [flag, lr] : {std::pair{"--memorize-lr", s.memorize_lr}, std::pair{"--clean-lr", s.clean_lr}})
    if (lr && !(*lr > 0 && std::isfinite(*lr))) {
      char got[32];
      std::snprintf(got, sizeof got, "%g", *lr);
      throw Error(std::string(flag) + " must be a finite number > 0, got " + got);
    }
  // both losses are > 0 away from the labels and reach 0 only in the limit (ce) or exactly at them (mse)
  if (!(s.start_loss > 0) || !std::isfinite(s.start_loss))
    throw Error("--start-loss must be > 0 (a training loss of exactly 0 is never reached), got " +
                std::to_string(s.start_loss));
  for (const std::string& l : s.losses) optim::parse_classifier_loss(l);
  if (s.losses.empty()) throw Error("--losses: give ce, mse or both");
  if (!s.load_start.empty() && s.losses.size() > 1)
    throw Error("--load-start: one start serves one loss; give one --losses value");
  if (!s.load_start.empty() && !fs::is_regular_file(s.load_start)) throw Error("--load-start: no file " + s.load_start);
  if (s.data.train_subset > 0 && s.batch_size > s.data.train_subset)
    throw Error("--batch-size " + std::to_string(s.batch_size) + " exceeds --train-subset " +
                std::to_string(s.data.train_subset));
  return arms;
}

// ---- the results folder ----
std::string default_out() {
  std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "results/escape-%Y%m%d-%H%M%S", std::gmtime(&t));
  return buf;
}

// Refuses a file, a non-empty folder without --force, or a folder that cannot be written.
void prepare_out(const Settings& s) {
  if (distributed::world().rank() != 0) return;  // rank 0 alone writes files
  const fs::path out = s.out;
  std::error_code ec;
  if (fs::exists(out, ec)) {
    if (!fs::is_directory(out, ec)) throw Error("--out " + s.out + " is a file, not a folder");
    if (!fs::is_empty(out, ec) && !s.force)
      throw Error("--out " + s.out + " exists and is not empty (give --force to write into it)");
  }
  fs::create_directories(out, ec);
  if (ec) throw Error("--out " + s.out + ": cannot create the folder: " + ec.message());
  try {
    nn::write_file_atomic((out / ".write-test").string(), "ok");
  } catch (const std::exception& e) {
    throw Error("--out " + s.out + " is not writable: " + e.what());
  }
  fs::remove(out / ".write-test", ec);
}

std::string write_rows(const std::vector<json>& rows) {
  std::string text;
  for (const json& r : rows) text += r.dump() + "\n";
  return text;
}

// ---- one loss: the starting point, then every arm and seed ----
struct Context {
  const Settings& s;
  const std::vector<ArmSpec>& arms;
  data::Dataset train, test, noisy;
  MetricsLog& log;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  int phase_no = 0, phases = 0;
  void announce(const std::string& what) {
    const int sec = int(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::fprintf(stderr, "[%d/%d] %s  (elapsed %02d:%02d)\n", ++phase_no, phases, what.c_str(), sec / 60, sec % 60);
  }
  ScheduleSpec schedule(const std::string& loss) const {
    ScheduleSpec sched;
    sched.batch_size = s.batch_size;
    sched.trace_subset = s.trace_subset;
    sched.trace_samples = s.trace_samples;
    sched.device = s.device;
    sched.micro_shards = s.micro_shards;
    sched.loss = loss;
    sched.loader_seed = s.seed;
    return sched;
  }
};

escape::Point point_of(int64_t step, const PhaseResult& r) {
  return {step,
          r.train.loss,
          r.train.accuracy,
          r.test.loss,
          r.test.accuracy,
          r.trace_normalized,
          r.trace_normalized_stderr};
}
json row_of(const std::string& loss, const std::string& arm, uint64_t seed, const escape::Point& p) {
  return {{"phase", "escape"},
          {"loss", loss},
          {"arm", arm},
          {"seed", seed},
          {"step", p.step},
          {"train_loss", p.train_loss},
          {"train_accuracy", p.train_accuracy},
          {"test_loss", p.test_loss},
          {"test_accuracy", p.test_accuracy},
          {"trace_normalized", p.trace},
          {"trace_normalized_stderr", p.trace_se}};
}

// Step 1: memorize random labels, then fit the clean labels to a global minimum (or load one).
// The start is saved in the results folder; a start that is not a global minimum of the
// training set (100% train accuracy, loss ≤ --start-loss) is refused with that file kept.
nn::NamedTensors make_start(Context& c, nn::Module& net, const std::string& loss, escape::Point& start) {
  const Settings& s = c.s;
  ScheduleSpec sched = c.schedule(loss);
  MetricsLog& log = c.log;
  const json config = {{"model", s.model.json()}, {"data", s.data.json()}, {"loss", loss}};
  auto is_global_minimum = [&](const PhaseResult& r) {
    return escape::at_global_minimum(r.train.accuracy, r.train.loss, s.start_loss);
  };
  int64_t clean_done = 0;
  if (s.load_start.empty()) {
    c.announce(loss + ": random labels on " + std::to_string(c.noisy.size()) + " noisy copies, SGD momentum 0.9, lr " +
               json(s.start_lrs(loss).memorize).dump() + ", until train acc >= " + json(s.memorize_acc).dump() +
               " (at most " + std::to_string(s.memorize_steps) + " steps)");
    OptimSpec mem;
    mem.lr = s.start_lrs(loss).memorize;
    mem.momentum = 0.9;
    ScheduleSpec s1 = sched;
    s1.steps = s.memorize_steps;
    s1.eval_every = s.memorize_eval;
    PhaseResult r1 = run_phase(loss + ":random-labels", net, c.noisy, c.test, mem, s1, config, log,
                               [&](int64_t, const PhaseResult& r) { return r.train.accuracy >= s.memorize_acc; });
    if (!r1.outcome.finished) throw Error("random-label phase stopped: " + r1.outcome.message);
    c.announce(loss + ": clean labels, plain SGD lr " + json(s.start_lrs(loss).clean).dump() +
               ", until 100% train acc and train loss <= " + json(s.start_loss).dump() + " (at most " +
               std::to_string(s.clean_steps) + " steps)");
    OptimSpec clean;
    clean.lr = s.start_lrs(loss).clean;
    ScheduleSpec s2 = sched;
    s2.steps = s.clean_steps;
    s2.eval_every = s.clean_eval;
    PhaseResult r2 = run_phase(loss + ":clean-labels", net, c.train, c.test, clean, s2, config, log,
                               [&](int64_t step, const PhaseResult& r) {
                                 clean_done = step;
                                 return is_global_minimum(r);
                               });
    if (!r2.outcome.finished) throw Error("clean-label phase stopped: " + r2.outcome.message);
  } else {
    nn::load_safetensors(net, s.load_start);
  }
  c.announce(loss + ": measuring the starting point (tr̄ on the first " + std::to_string(s.trace_subset) +
             " training examples)");
  net.to(parse_dtype(sched.dtype));
  net.to(device_for_rank(s.device));
  start = point_of(0, evaluate_all(net, c.train, c.test, sched, true));
  std::fprintf(stderr, "start (%s): train acc %.4f, train loss %.4g, test acc %.4f, tr̄ %.4g ± %.2g\n", loss.c_str(),
               start.train_accuracy, start.train_loss, start.test_accuracy, start.trace, start.trace_se);
  const std::string saved = (fs::path(s.out) / ("start-" + loss + ".safetensors")).string();
  if (distributed::world().rank() == 0) {  // rank 0 alone writes files
    nn::save_safetensors(net, saved);
    if (!s.save_start.empty()) nn::save_safetensors(net, s.save_start);
  }
  log.write({{"phase", "start"},
             {"loss", loss},
             {"step", 0},
             {"clean_steps", clean_done},
             {"train_accuracy", start.train_accuracy},
             {"train_loss", start.train_loss},
             {"test_accuracy", start.test_accuracy},
             {"test_loss", start.test_loss},
             {"trace_normalized", start.trace},
             {"trace_normalized_stderr", start.trace_se}});
  if (!escape::at_global_minimum(start.train_accuracy, start.train_loss, s.start_loss)) {
    char buf[400];
    std::snprintf(buf, sizeof buf,
                  "the start is not a global minimum of the training set (train accuracy %.4f, train loss %.4g; needed "
                  "1 and <= %g); "
                  "it is kept in %s: raise --clean-steps or --start-loss, or load another with --load-start",
                  start.train_accuracy, start.train_loss, s.start_loss, saved.c_str());
    throw Error(buf);
  }
  nn::NamedTensors state;
  NoGrad ng;
  for (auto& [name, t] : net.state_dict()) state.emplace_back(name, t.detach().clone());
  return state;
}

// Step 2 for one arm and seed: from the start, --escape-steps steps with evaluations.
escape::Run run_arm(Context& c, nn::Module& net, const nn::NamedTensors& start_state, const escape::Point& start,
                    const ArmSpec& a, const std::string& loss, uint64_t seed) {
  const Settings& s = c.s;
  nn::load_state_dict(net, start_state);
  ScheduleSpec sched = c.schedule(loss);
  sched.steps = s.escape_steps;
  sched.eval_every = s.escape_eval;
  sched.eval_trace = true;
  sched.loader_seed = seed;
  OptimSpec o = a.optim;
  o.seed = seed + 17;
  char what[300];
  std::snprintf(what, sizeof what, "%s: %s seed %llu, %lld steps, lr %g%s", loss.c_str(), a.arm.label.c_str(),
                (unsigned long long)seed, (long long)s.escape_steps, a.arm.lr,
                a.arm.kind == "sgd" ? ""
                                    : (", rho " + json(a.arm.rho).dump() +
                                       (a.arm.kind == "sam" ? "" : ", lr' " + json(a.arm.lr_perturb).dump()))
                                          .c_str());
  c.announce(what);
  escape::Run run{a.arm.label, seed, {start}};
  MetricsLog quiet("");  // escape rows carry the arm and seed: written here
  const json config = {{"arm", a.arm.json()}, {"loss", loss}, {"seed", seed}};
  PhaseResult r = run_phase(loss + ":" + a.arm.label, net, c.train, c.test, o, sched, config, quiet,
                            [&](int64_t step, const PhaseResult& res) {
                              run.points.push_back(point_of(step, res));
                              c.log.write(row_of(loss, a.arm.label, seed, run.points.back()));
                              return false;
                            });
  if (!r.outcome.finished)
    throw Error(loss + ":" + a.arm.label + " seed " + std::to_string(seed) + " stopped: " + r.outcome.message);
  return run;
}

// ---- the folder's files ----
struct Results {
  json settings;
  std::vector<escape::Experiment> experiments;
  int done = 0, total = 0;
  bool plots = false;
  std::string plots_note = "not drawn yet (they are drawn at the end of the run)";
  std::string stopped;
  double seconds = 0;
};

void write_results(const Settings& s, const Results& r, bool complete) {
  if (distributed::world().rank() != 0) return;  // rank 0 alone writes files
  json losses = json::array();
  for (const auto& e : r.experiments) losses.push_back(escape::summarize(e));
  json summary = {{"settings", r.settings},
                  {"complete", complete},
                  {"progress", {{"arm_runs_done", r.done}, {"arm_runs", r.total}}},
                  {"seconds", r.seconds},
                  {"plots", r.plots},
                  {"plots_note", r.plots_note},
                  {"losses", losses}};
  if (!r.stopped.empty()) summary["stopped"] = r.stopped;
  const fs::path out = s.out;
  nn::write_file_atomic((out / "summary.json").string(), summary.dump(1) + "\n");
  std::string md = escape::render_report(summary, r.settings, complete);
  char line[400];
  std::snprintf(line, sizeof line, "\nProgress: %d of %d arm runs finished, %.0f s.%s%s\n", r.done, r.total, r.seconds,
                r.stopped.empty() ? "" : " Stopped: ", r.stopped.c_str());
  nn::write_file_atomic((out / "report.md").string(), md + line);
}

void draw_plots(const Settings& s, Results& r) {
  if (distributed::world().rank() != 0) return;  // rank 0 alone writes files
  std::string why;
  if (!plot_renderer_available("/usr/bin/python3", &why)) {
    r.plots_note = "not drawn: " + why;
    return;
  }
  const fs::path out = s.out;
  for (const auto& e : r.experiments) {
    const std::string curves = (out / ("curves-" + e.loss + ".jsonl")).string();
    nn::write_file_atomic(curves, write_rows(escape::curve_rows(escape::summarize(e))));
    PlotOptions by_step{.inputs = {curves},
                        .out_dir = (out / "plots").string(),
                        .x = "step",
                        .y = {"trace_normalized", "test_accuracy", "matched_trace"},
                        .group = "arm",
                        .title = "escape (" + e.loss + ", mean ± s.e. over seeds)",
                        .file_prefix = e.loss + "-",
                        .bands = true};
    plot_metrics(by_step);
    PlotOptions by_loss = by_step;
    by_loss.x = "train_loss";
    by_loss.y = {"trace_normalized"};
    by_loss.file_prefix = e.loss + "-vs_loss-";
    plot_metrics(by_loss);
  }
  r.plots = true;
  r.plots_note = "";
}

// ---- --merge: one report from several folders ----
json read_json_file(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw Error("--merge: cannot read " + p.string());
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error("--merge: " + p.string() + ": " + e.what());
  }
}

// Folders of the same settings and start whose seeds differ (seeds run as separate processes
// or machines): their finished arm runs, read back from summary.json and metrics.jsonl.
Results merge_folders(const std::vector<std::string>& dirs, std::string& metrics_text) {
  Results res;
  json same;  // the settings that must agree
  for (const std::string& d : dirs) {
    const json sum = read_json_file(fs::path(d) / "summary.json");
    json key = sum.at("settings");
    for (const char* k : {"seed", "seeds", "out", "command", "load_start"}) key.erase(k);
    if (same.is_null())
      res.settings = sum.at("settings"), same = key;
    else if (key != same)
      throw Error("--merge: " + d + " was run with other settings than " + dirs[0]);
    const int64_t steps = key.at("escape_steps").get<int64_t>();
    for (const json& l : sum.at("losses")) {
      const std::string loss = l.at("loss").get<std::string>();
      const json& st = l.at("start");
      auto num = [](const json& j, const char* k) { return j.at(k).is_number() ? j.at(k).get<double>() : NAN; };
      const escape::Point start{0,
                                num(st, "train_loss"),
                                num(st, "train_accuracy"),
                                num(st, "test_loss"),
                                num(st, "test_accuracy"),
                                num(st, "trace_normalized"),
                                num(st, "trace_normalized_stderr")};
      auto e = std::find_if(res.experiments.begin(), res.experiments.end(), [&](auto& x) { return x.loss == loss; });
      if (e == res.experiments.end()) {
        escape::Experiment x{.loss = loss,
                             .start = start,
                             .batch_size = l.at("batch_size").get<int64_t>(),
                             .reference = l.at("reference").get<std::string>(),
                             .minimum_loss = res.settings.at("start_loss").get<double>()};
        for (const json& label : l.at("arm_order")) {
          const json& a = l.at("arms").at(label.get<std::string>()).at("arm");
          x.arms.push_back({a.at("label").get<std::string>(), a.at("kind").get<std::string>(), a.at("b").get<int64_t>(),
                            a.at("lr").get<double>(), a.at("lr_perturb").get<double>(), a.at("rho").get<double>(),
                            a.at("role").get<std::string>()});
        }
        res.experiments.push_back(x);
        e = res.experiments.end() - 1;
      } else if (std::abs(e->start.trace - start.trace) > 1e-5 * std::abs(start.trace) ||
                 std::abs(e->start.train_loss - start.train_loss) > 1e-5 * std::abs(start.train_loss)) {
        throw Error("--merge: " + d + " starts from another point than " + dirs[0] +
                    " (give both the same --load-start)");
      }
    }
    // finished runs only: those with an evaluation at the last step
    std::ifstream in(fs::path(d) / "metrics.jsonl");
    if (!in) throw Error("--merge: cannot read " + d + "/metrics.jsonl");
    std::map<std::tuple<std::string, std::string, uint64_t>, escape::Run> runs;
    for (std::string text; std::getline(in, text);) {
      if (text.empty()) continue;
      metrics_text += text + "\n";
      const json r = json::parse(text);
      if (r.value("phase", "") != "escape") continue;
      auto num = [&](const char* k) { return r.at(k).is_number() ? r.at(k).get<double>() : NAN; };
      auto& run = runs[{r.at("loss").get<std::string>(), r.at("arm").get<std::string>(), r.at("seed").get<uint64_t>()}];
      run.arm = r.at("arm").get<std::string>();
      run.seed = r.at("seed").get<uint64_t>();
      run.points.push_back({r.at("step").get<int64_t>(), num("train_loss"), num("train_accuracy"), num("test_loss"),
                            num("test_accuracy"), num("trace_normalized"), num("trace_normalized_stderr")});
    }
    for (auto& [k, run] : runs) {
      if (run.points.back().step != steps) continue;
      auto& e = *std::find_if(res.experiments.begin(), res.experiments.end(),
                              [&](auto& x) { return x.loss == std::get<0>(k); });
      for (const escape::Run& other : e.runs)
        if (other.arm == run.arm && other.seed == run.seed)
          throw Error("--merge: seed " + std::to_string(run.seed) + " of " + run.arm + " is in two folders");
      run.points.insert(run.points.begin(), e.start);
      e.runs.push_back(run);
      ++res.done;
    }
    res.total += sum.at("progress").at("arm_runs").get<int>();
  }
  res.settings["merged_from"] = dirs;
  return res;
}

// ---- the command ----
int run(int argc, char** argv) {
  Settings s;
  s.preset = preset_of(argc, argv);
  apply_preset(s);
  CLI::App app{
      "Escape from a bad global minimum: SGD, RS, SA, SAM as a fair test of Section 5 (docs/algorithms.md §7)"};
  app.option_defaults()->always_capture_default();  // --help shows the (preset's) defaults
  s.model.add_to(app);
  s.data.add_to(app);
  app.add_option("--preset", s.preset,
                 "default (CPU-sized; its time: docs/escape_results.md) | full (both losses, b in {1,16,64,128}, 3 "
                 "seeds) | gpu (one large GPU, not measured)");
  app.add_option("--out", s.out, "results folder (default results/escape-<UTC date-time>/)");
  app.add_flag("--force", s.force, "write into an existing, non-empty --out");
  app.add_option("--losses", s.losses, "ce, mse or both (each makes its own start)")->delimiter(',');
  app.add_option("--seeds", s.seeds, "seeds per arm (batch order and perturbation draws; one shared start)");
  app.add_option("--seed", s.seed, "base seed (start: labels and shuffling; the arms' seeds: base, base + 1, ...)")
      ->check(NotNegative);
  app.add_option("--batch-size", s.batch_size, "mini-batch size of every phase")->check(CLI::PositiveNumber);
  app.add_option("--copies", s.copies, "noisy copies per image in the random-label phase")->check(CLI::PositiveNumber);
  app.add_option("--zero-fraction", s.zero_fraction, "pixels zeroed in each noisy copy");
  app.add_option("--memorize-steps", s.memorize_steps, "cap on random-label steps")->check(CLI::PositiveNumber);
  app.add_option("--memorize-acc", s.memorize_acc, "random-label train accuracy that counts as memorized");
  app.add_option("--memorize-lr", s.memorize_lr,
                 "SGD (momentum 0.9) learning rate on random labels (default: ce 0.05, mse 0.01)");
  app.add_option("--memorize-eval-every", s.memorize_eval, "evaluate every N random-label steps")
      ->check(CLI::PositiveNumber);
  app.add_option("--clean-steps", s.clean_steps, "cap on clean-label steps")->check(CLI::PositiveNumber);
  app.add_option("--clean-eval-every", s.clean_eval, "evaluate every N clean-label steps")->check(CLI::PositiveNumber);
  app.add_option("--clean-lr", s.clean_lr, "plain SGD learning rate on clean labels (default: ce 0.05, mse 0.02)");
  app.add_option("--start-loss", s.start_loss, "the start must reach 100% train accuracy and this training loss");
  app.add_option("--escape-steps", s.escape_steps, "steps of each arm from the start")->check(CLI::PositiveNumber);
  app.add_option("--escape-eval-every", s.escape_eval, "evaluation (with tr̄) every N escape steps")
      ->check(CLI::PositiveNumber);
  app.add_option("--escape-lr", s.escape_lr, "constant learning rate η of every arm (paper: 0.001)");
  app.add_option("--lr-perturb", s.lr_perturb, "η' of RS/SA (and the +η' of sgd+)");
  app.add_option("--drift-lr-perturb", s.drift_lr_perturb,
                 "η' of the sa<b>-drift arms (default η'/10; ρ scaled to keep ρ²η')");
  app.add_option("--rho-rs", s.rho_rs, "ρ of RS");
  app.add_option("--rho-sa", s.rho_sa, "ρ of SA");
  app.add_option("--rho-sam", s.rho_sam, "ρ of SAM");
  app.add_option("--methods", s.methods, "arms: sgd, sgd+ (SGD at η+η'), rs, sam, sa<b>, sa<b>-rho0, sa<b>-drift")
      ->delimiter(',');
  app.add_option("--reference", s.reference, "arm whose tr̄ at the same training loss normalizes tr̄ at matched loss");
  app.add_option("--trace-subset", s.trace_subset, "training examples for tr̄")->check(CLI::PositiveNumber);
  app.add_option("--trace-samples", s.trace_samples, "Hutchinson samples (PyHessian's cap: 100)")
      ->check(CLI::PositiveNumber);
  app.add_option("--device", s.device, "cpu | cuda | cuda:N");
  app.add_option("--micro-shards", s.micro_shards,
                 "data parallelism: fixed parts per batch (>= processes under mpirun)")
      ->check(CLI::PositiveNumber);
  app.add_option("--save-start", s.save_start, "also write the start's state dict here (it is always in --out)");
  app.add_option("--load-start", s.load_start, "start the arms from this state dict (skips making the bad minimum)");
  std::vector<std::string> merge;
  app.add_option("--merge", merge,
                 "write one report into --out from these results folders (same settings and start, other seeds)")
      ->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  nn::check_output_path("--save-start", s.save_start);
  if (!merge.empty()) {
    if (s.out.empty()) throw Error("--merge needs --out");
    prepare_out(s);
    std::string metrics;
    Results res = merge_folders(merge, metrics);
    nn::write_file_atomic((fs::path(s.out) / "metrics.jsonl").string(), metrics);
    draw_plots(s, res);
    write_results(s, res, res.done == res.total);
    std::fprintf(stderr, "escape: %d of %d arm runs from %zu folders; results in %s/\n", res.done, res.total,
                 merge.size(), s.out.c_str());
    return 0;
  }
  for (int i = 0; i < argc; ++i) s.command += (i ? " " : "flatmin ") + std::string(argv[i]);

  const std::vector<ArmSpec> arms = check_settings(s);
  if (std::none_of(arms.begin(), arms.end(), [&](const ArmSpec& a) { return a.arm.label == s.reference; }))
    s.reference = std::any_of(arms.begin(), arms.end(), [](const ArmSpec& a) { return a.arm.label == "sgd"; })
                      ? "sgd"
                      : arms[0].arm.label;
  if (s.out.empty()) s.out = default_out();
  prepare_out(s);
  std::fprintf(stderr, "escape: results go to %s/\n", s.out.c_str());

  Results res;
  res.settings = s.json_value();
  res.settings["out"] = s.out;
  res.total = int(s.losses.size() * arms.size()) * s.seeds;
  MetricsLog log((fs::path(s.out) / "metrics.jsonl").string());
  Context c{s, arms, s.data.train(), s.data.test(), {}, log};
  if (s.data.train_subset == 0 && s.batch_size > c.train.size()) throw Error("--batch-size exceeds the training set");
  if (s.load_start.empty())
    c.noisy = data::noisy_copies(c.train, {.copies = s.copies, .zero_fraction = s.zero_fraction, .seed = s.seed});
  flatten_for(s.model, c.train);
  flatten_for(s.model, c.test);
  if (s.load_start.empty()) flatten_for(s.model, c.noisy);
  c.phases = int(s.losses.size()) * ((s.load_start.empty() ? 2 : 0) + 1) + res.total;
  write_results(s, res, false);  // from the first minute, the folder says how far the run got

  try {
    for (const std::string& loss : s.losses) {
      auto net = build_model(s.model, c.train);
      const std::string shape = s.model.model == "resnet18" ? "resnet18 (width " + std::to_string(s.model.width) +
                                                                  ", " + s.model.norm + " norm)"
                                                            : "mlp " + json(s.model.hidden).dump();
      std::fprintf(stderr,
                   "escape (%s): %s with %lld parameters; %lld clean / %lld noisy training examples, %lld test\n",
                   loss.c_str(), shape.c_str(), (long long)net->num_parameters(), (long long)c.train.size(),
                   (long long)c.noisy.size(), (long long)c.test.size());
      escape::Experiment e{
          .loss = loss, .batch_size = s.batch_size, .reference = s.reference, .minimum_loss = s.start_loss};
      for (const ArmSpec& a : arms) e.arms.push_back(a.arm);
      const nn::NamedTensors start_state = make_start(c, *net, loss, e.start);
      res.experiments.push_back(e);
      for (int k = 0; k < s.seeds; ++k)
        for (const ArmSpec& a : arms) {
          res.experiments.back().runs.push_back(run_arm(c, *net, start_state, e.start, a, loss, s.seed + uint64_t(k)));
          ++res.done;
          res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - c.t0).count();
          write_results(s, res, false);  // the folder always holds what is finished
        }
    }
    draw_plots(s, res);
  } catch (const std::exception& e) {
    res.stopped = e.what();
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - c.t0).count();
    write_results(s, res, false);
    std::fprintf(stderr, "escape: stopped after %d of %d arm runs; what was finished is in %s/\n", res.done, res.total,
                 s.out.c_str());
    throw;
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - c.t0).count();
  write_results(s, res, true);
  const int sec = int(res.seconds);
  std::fprintf(stderr, "escape: done in %02d:%02d; results in %s/ (report.md, summary.json, metrics.jsonl, plots/)\n",
               sec / 60, sec % 60, s.out.c_str());
  std::printf("%s\n",
              json({{"out", s.out}, {"complete", true}, {"seconds", sec}, {"arm_runs", res.done}}).dump().c_str());
  return 0;
}

Register reg{{"escape",
              "escape a bad global minimum: SGD, RS, SA, SAM as a fair test; results folder (docs/algorithms.md §7)",
              run}};
}  // namespace
}  // namespace flatmin::tools
