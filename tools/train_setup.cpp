#include "tools/train_setup.hpp"

#include "tools/command.hpp"
#include "train/data_parallel.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "autodiff/backend.hpp"
#include "nn/safetensors.hpp"

namespace flatmin::tools {

void ModelSpec::add_to(CLI::App& app) {
  app.add_option("--model", model, "mlp | resnet18")->check(CLI::IsMember({"mlp", "resnet18"}));
  app.add_option("--norm", norm, "resnet18 normalization: group | batch | none (batch couples the examples of a batch)")
      ->check(CLI::IsMember({"group", "batch", "none"}));
  app.add_option("--width", width, "resnet18 stage width (64 = torchvision)")->check(CLI::Range(int64_t(1), kMaxWidth));
  app.add_option("--hidden", hidden, "mlp hidden layer sizes")
      ->delimiter(',')
      ->check(CLI::Range(int64_t(1), kMaxHidden));
  app.add_option("--activation", activation, "relu | tanh | softplus")
      ->check(CLI::IsMember({"relu", "tanh", "softplus"}));
  app.add_option("--model-seed", seed, "seed of the initial weights")->check(NotNegative);
  app.add_flag("--channels-last", channels_last,
               "resnet18: activations in NHWC order between the layers (faster float32 convolutions on the CPU with "
               "oneDNN; the same parameters and function)");
}
nlohmann::json ModelSpec::json() const {
  nlohmann::json j = {{"model", model},           {"norm", norm}, {"width", width}, {"hidden", hidden},
                      {"activation", activation}, {"seed", seed}};
  if (channels_last) j["channels_last"] = true;  // only when set: earlier checkpoints' configurations still match
  return j;
}

void DataSpec::add_to(CLI::App& app) {
  app.add_option("--dataset", dataset, "fashion-mnist | cifar10 | blobs")
      ->check(CLI::IsMember({"fashion-mnist", "cifar10", "blobs"}));
  app.add_option("--data-dir", dir, "folder of the IDX files (cifar10: of cifar-10-batches-bin's .bin files)");
  app.add_option("--train-subset", train_subset, "use the first N training examples (0: all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--test-subset", test_subset, "use the first N test examples (0: all)")->check(CLI::NonNegativeNumber);
}
nlohmann::json DataSpec::json() const {
  return {{"dataset", dataset}, {"train_subset", train_subset}, {"test_subset", test_subset}};
}
void flatten_for(const ModelSpec& m, data::Dataset& ds) {
  if (m.model == "mlp" && ds.images.dim() > 2) ds.images = reshape(ds.images, {ds.size(), -1});
}
static data::Dataset first(data::Dataset ds, int64_t n) { return n > 0 && n < ds.size() ? ds.head(n) : ds; }
// CIFAR-10 is not packaged: its folder must be named (the default folder is Fashion-MNIST's).
static const std::string& cifar_dir(const std::string& dir) {
  if (dir == data::kFashionMnistDir)
    throw Error("--dataset cifar10 needs --data-dir (the folder of data_batch_1.bin ... test_batch.bin)");
  return dir;
}
data::Dataset DataSpec::train() const {
  if (dataset == "blobs") return first(data::two_blobs({.n = 512, .d = 2, .seed = 1}), train_subset);
  if (dataset == "cifar10") return first(data::load_cifar10(cifar_dir(dir), data::Split::train), train_subset);
  return first(data::load_mnist_layout(dir, true, "fashion-mnist"), train_subset);
}
data::Dataset DataSpec::test() const {
  if (dataset == "blobs") return first(data::two_blobs({.n = 512, .d = 2, .seed = 2}), test_subset);
  if (dataset == "cifar10") return first(data::load_cifar10(cifar_dir(dir), data::Split::test), test_subset);
  return first(data::load_mnist_layout(dir, false, "fashion-mnist"), test_subset);
}

void OptimSpec::add_to(CLI::App& app) {
  app.add_option("--optimizer", name, "sgd | sam | rs | sa")->check(CLI::IsMember({"sgd", "sam", "rs", "sa"}));
  app.add_option("--lr", lr, "learning rate (η for rs/sa)");
  app.add_option("--momentum", momentum, "SGD momentum (sgd, sam)");
  app.add_option("--dampening", dampening, "SGD dampening");
  app.add_flag("--nesterov", nesterov, "Nesterov momentum");
  app.add_option("--weight-decay", weight_decay, "L2 weight decay (sgd, sam)");
  app.add_option("--rho", rho, "perturbation radius (sam, rs, sa)");
  app.add_flag("--adaptive", adaptive, "adaptive SAM");
  app.add_option("--lr-perturb", lr_perturb, "η' for rs/sa (default η)");
  app.add_option("--eps0", eps0, "rs/sa perturb only when ‖g‖ ≤ ε0 (default +inf)");
  app.add_option("--sa-batch", sa_batch,
                 "sa perturbation batch size b (1: per example; at most --batch-size with step sampling)");
  app.add_option("--sa-sampling", sa_sampling,
                 "sa: step (i drawn within the step's batch) | all (Algorithm 2 as written: g the full-batch gradient, "
                 "i over all n)")
      ->check(CLI::IsMember({"step", "all"}));
  app.add_option("--seed", seed, "seed of the optimizer's random draws")->check(NotNegative);
}
nlohmann::json OptimSpec::json() const {
  return {{"optimizer", name},
          {"lr", lr},
          {"momentum", momentum},
          {"dampening", dampening},
          {"nesterov", nesterov},
          {"weight_decay", weight_decay},
          {"rho", rho},
          {"adaptive", adaptive},
          {"lr_perturb", lr_perturb.value_or(lr)},
          {"eps0", std::isfinite(eps0) ? nlohmann::json(eps0) : nlohmann::json("inf")},
          {"sa_batch", sa_batch},
          {"sa_sampling", sa_sampling},
          {"seed", seed}};
}
optim::OptimizerConfig OptimSpec::config() const {
  optim::OptimizerConfig c;
  c.name = name;
  c.sgd = {.lr = lr, .momentum = momentum, .dampening = dampening, .nesterov = nesterov, .weight_decay = weight_decay};
  c.sam = {.rho = rho, .adaptive = adaptive};
  c.perturb = {.lr = lr,
               .lr_perturb = lr_perturb,
               .rho = rho,
               .eps0 = eps0,
               .seed = seed,
               .batch = sa_batch,
               .sampling = sa_sampling == "all" ? optim::SaSampling::all_examples : optim::SaSampling::step_batch};
  if (sa_sampling != "step" && sa_sampling != "all") throw Error("--sa-sampling: '" + sa_sampling + "' (step, all)");
  optim::validate(c);
  return c;
}
void OptimSpec::check_batch(int64_t batch_size) const {
  if (name == "sa" && sa_sampling == "step" && sa_batch > batch_size)
    throw Error("--sa-batch " + std::to_string(sa_batch) + " exceeds --batch-size " + std::to_string(batch_size) +
                " (SA draws its b examples within the step's batch; --sa-sampling all draws from all n)");
}

void ScheduleSpec::add_to(CLI::App& app) {
  app.add_option("--steps", steps, "optimizer steps in all (counting resumed ones)")->check(CLI::NonNegativeNumber);
  app.add_option("--epochs", epochs, "alternatively, epochs of the training set")->check(CLI::NonNegativeNumber);
  app.add_option("--batch-size", batch_size, "mini-batch size")->check(CLI::PositiveNumber);
  app.add_option("--eval-every", eval_every, "evaluate every N steps (0: only at the end)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--eval-trace", eval_trace, "also measure tr̄ (Hutchinson) at each evaluation");
  app.add_option("--trace-subset", trace_subset, "training examples for tr̄")->check(CLI::PositiveNumber);
  app.add_option("--trace-samples", trace_samples, "Hutchinson sample cap (PyHessian: 100)")
      ->check(CLI::PositiveNumber);
  app.add_option("--trace-tol", trace_tol, "Hutchinson relative tolerance (PyHessian: 1e-3)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--loader-seed", loader_seed, "seed of the shuffling")->check(NotNegative);
  app.add_option("--metrics", metrics, "append metrics as JSON lines to this file");
  app.add_option("--checkpoint", checkpoint, "checkpoint file (written atomically)");
  app.add_option("--checkpoint-every", checkpoint_every, "checkpoint every N steps (and at the end)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--resume", resume, "continue from --checkpoint bit for bit");
  app.add_option("--dtype", dtype, "f32 | f64")->check(CLI::IsMember({"f32", "f64"}));
  app.add_option("--loss", loss, "ce (cross-entropy) | mse (squared error to one-hot labels, the paper's Setting 1)")
      ->check(CLI::IsMember({"ce", "mse"}));
  app.add_option("--device", device, "cpu | cuda | cuda:N (the data stays on the host; batches move)");
  app.add_option("--micro-shards", micro_shards,
                 "split each batch into N fixed parts (>= the number of processes under mpirun); results depend on N, "
                 "not on the number of processes")
      ->check(CLI::PositiveNumber);
  app.add_flag("--bf16-convolutions", bf16_convolutions,
               "float32 convolutions with bfloat16 operands and float32 accumulation (CPU with oneDNN, CUDA with "
               "cuDNN; everything else stays float32)");
}

Device device_for_rank(const std::string& device) {
  const distributed::World& w = distributed::world();
  if (device == "cuda" && w.size() > 1) return Device::cuda(w.local_rank());
  return Device::parse(device);
}

nlohmann::json with_parallel(nlohmann::json config, const ScheduleSpec& sched) {
  if (sched.micro_shards != 1) config["micro_shards"] = sched.micro_shards;
  if (sched.bf16_convolutions) config["bf16_convolutions"] = true;
  return config;
}

void ScheduleSpec::check_outputs() const {
  nn::check_output_path("--metrics", metrics);
  nn::check_output_path("--checkpoint", checkpoint);
}

void ScheduleSpec::check_precision() const {
  if (!bf16_convolutions) return;
  if (dtype != "f32") throw Error("--bf16-convolutions needs --dtype f32, got " + dtype);
  const Device d = Device::parse(device);
  std::string why;
  try {
    why = backend(d).bf16_convolutions_unavailable();  // a device this machine lacks throws
  } catch (const Error& e) {
    why = e.what();
  }
  if (!why.empty()) throw Error("--bf16-convolutions --device " + device + ": " + why);
}

DType parse_dtype(const std::string& s) {
  if (s == "f32") return DType::f32;
  if (s == "f64") return DType::f64;
  throw Error("unknown dtype '" + s + "' (f32, f64)");
}

void load_weights(nn::Module& net, const std::string& file) {
  nn::SafeTensors st = nn::load_safetensors(file);
  nn::NamedTensors state;
  const bool is_ckpt = st.metadata.count("format") && st.metadata.at("format") == "flatmin-checkpoint";
  for (auto& [name, t] : st.tensors) {
    if (!is_ckpt)
      state.emplace_back(name, t);
    else if (name.rfind("model.", 0) == 0)
      state.emplace_back(name.substr(6), t);
  }
  nn::load_state_dict(net, state, file);
}

CheckpointModel load_checkpoint_model(const ModelSpec& m, const DataSpec& d, const std::string& file, int64_t subset,
                                      DType dtype, const Device& device) {
  CheckpointModel r;
  r.train = d.train();
  flatten_for(m, r.train);
  if (subset < r.train.size()) r.train = r.train.head(subset);
  r.net = build_model(m, r.train);
  load_weights(*r.net, file);
  const std::string bad = optim::first_non_finite(r.net->state_dict());
  if (!bad.empty()) throw Error(file + ": tensor '" + bad + "' holds a non-finite value: nothing to measure");
  r.net->to(dtype);
  r.net->to(device);
  r.net->train();
  return r;
}

std::unique_ptr<nn::Module> build_model(const ModelSpec& m, const data::Dataset& like) {
  if (!like.is_classification())
    throw Error("build_model: the data set '" + like.name + "' is not a classification set");
  if (m.model == "mlp") {
    if (m.channels_last) throw Error("--channels-last: only --model resnet18 has a channel layout");
    if (m.hidden.empty()) throw Error("--hidden: at least one hidden layer");
    std::vector<int64_t> sizes = {numel(like.example_shape())};
    for (int64_t h : m.hidden) {
      if (h < 1 || h > kMaxHidden) throw Error("--hidden: sizes must be in [1, " + std::to_string(kMaxHidden) + "]");
      sizes.push_back(h);
    }
    sizes.push_back(like.classes);
    check_parameter_count(mlp_parameter_count(sizes), "mlp");
    Generator g(m.seed);
    return std::make_unique<nn::MLP>(sizes, nn::parse_act(m.activation), g);
  }
  Shape s = like.example_shape();
  if (s.size() != 3) throw Error("resnet18 needs images (C,H,W), the data set has examples of shape " + to_string(s));
  if (m.width < 1 || m.width > kMaxWidth) throw Error("--width: must be in [1, " + std::to_string(kMaxWidth) + "]");
  const nn::ResNetOptions options{.in_channels = s[0],
                                  .classes = like.classes,
                                  .stem = nn::Stem::cifar,
                                  .width = m.width,
                                  .norm = nn::parse_norm(m.norm),
                                  .activation = nn::parse_act(m.activation),
                                  .seed = m.seed,
                                  .channels_last = m.channels_last};
  check_parameter_count(resnet18_parameter_count(options), "resnet18");
  return std::make_unique<nn::ResNet>(options);
}

MetricsLog::MetricsLog(const std::string& path, MetricsLogOptions o) : path_(path) {
  if (path.empty() || distributed::world().rank() != 0) return;  // rank 0 alone writes
  f_ = std::fopen(path.c_str(), o.resume ? "a+" : "w");
  if (!f_) throw Error("cannot open the metrics file " + path + ": " + std::strerror(errno));
}
MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}
void MetricsLog::write(const nlohmann::json& row) {
  if (!f_) return;
  const std::string s = row.dump() + "\n";
  if (std::fwrite(s.data(), 1, s.size(), f_) != s.size() || std::fflush(f_) != 0)
    throw Error("cannot write the metrics file " + path_ + ": " + std::strerror(errno));
}
bool MetricsLog::rewind_to(const std::string& phase, int64_t step) {
  if (!f_) return false;
  std::rewind(f_);
  std::string text;
  char buf[1 << 16];
  for (size_t k; (k = std::fread(buf, 1, sizeof buf, f_)) > 0;) text.append(buf, k);
  if (std::ferror(f_)) throw Error("cannot read the metrics file " + path_ + ": " + std::strerror(errno));
  size_t keep = 0;
  bool found = false;
  for (size_t at = 0, end; (end = text.find('\n', at)) != std::string::npos; at = end + 1) {
    const nlohmann::json row = nlohmann::json::parse(text.begin() + at, text.begin() + end, nullptr, false);
    if (row.is_discarded() || !row.is_object())
      throw Error("the metrics file " + path_ + " holds a line that is not a JSON object: line " +
                  std::to_string(std::count(text.begin(), text.begin() + at, '\n') + 1));
    if (row.value("phase", "") == phase && row.contains("step") && row["step"].is_number_integer()) {
      const int64_t s = row["step"].get<int64_t>();
      if (s > step) break;
      found |= s == step;
    }
    keep = end + 1;
  }
  if (std::fflush(f_) != 0 || ::ftruncate(::fileno(f_), off_t(keep)) != 0)
    throw Error("cannot cut the metrics file " + path_ + " back to step " + std::to_string(step) + ": " +
                std::strerror(errno));
  return found;
}

static double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
Progress::Progress(std::string label, int64_t first_step, int64_t total_steps)
    : label_(std::move(label)), first_(first_step), total_(total_steps), tty_(::isatty(2)), start_(now_s()) {}
void Progress::update(int64_t step, const std::string& extra) {
  if (distributed::world().rank() != 0) return;  // rank 0 alone prints
  const double t = now_s();
  if (tty_ && t - last_print_ < 0.25 && step != total_ && extra.empty()) return;
  // Off a terminal (a log): evaluation lines, and a plain progress line every 10 s between them.
  if (!tty_ && extra.empty() && t - std::max(last_print_, start_) < 10) return;
  const double rate = (step - first_) / std::max(1e-9, t - start_);
  const double eta = rate > 0 ? double(total_ - step) / rate : 0;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s step %lld/%lld  %.1f steps/s  ETA %02d:%02d", label_.c_str(), (long long)step,
                (long long)total_, rate, int(eta) / 60, int(eta) % 60);
  if (tty_)
    std::fprintf(stderr, "\r\033[K%s  %s", buf, extra.c_str());
  else
    std::fprintf(stderr, "%s  %s\n", buf, extra.c_str());
  last_print_ = t;
}
void Progress::done() {
  if (tty_ && distributed::world().rank() == 0) std::fprintf(stderr, "\n");
}

PhaseResult evaluate_all(nn::Module& net, const data::Dataset& train, const data::Dataset& test,
                         const ScheduleSpec& sched, bool with_trace) {
  const DType dt = parse_dtype(sched.dtype);
  const optim::ClassifierLoss loss = optim::parse_classifier_loss(sched.loss);
  PhaseResult r;
  r.evaluated_step = r.outcome.steps;  // measured now; run_phase sets the step
  r.train = optim::evaluate_classifier(net, train, 512, dt, sched.parallel(), loss);
  if (test.size() > 0) r.test = optim::evaluate_classifier(net, test, 512, dt, sched.parallel(), loss);
  if (with_trace) {
    data::Dataset sub = first(train, sched.trace_subset);
    optim::TraceEstimate t = optim::classifier_trace(
        net, sub, dt, {.max_samples = sched.trace_samples, .tol = sched.trace_tol, .seed = 7}, sched.parallel(), loss);
    r.trace_normalized = t.trace_normalized;
    r.trace_normalized_stderr = t.stderr_normalized;
  }
  return r;
}

// tests/faults.sh: FLATMIN_TEST_KILL_AT_STEP=S kills the process (SIGKILL) once step S is
// done and its checkpoint written, before the evaluation row of S: the narrowest window of
// a crash between a checkpoint and the metrics log.
static void kill_here_for_tests(int64_t step) {
  static const char* at = std::getenv("FLATMIN_TEST_KILL_AT_STEP");
  if (at && std::to_string(step) == at) ::kill(::getpid(), SIGKILL);
}

static nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

nlohmann::json measured_json(const PhaseResult& r, bool with_trace) {
  const bool now = r.evaluated_step >= 0 && r.evaluated_step == r.outcome.steps;
  auto of = [&](const optim::ClassifierMetrics& m, double v) { return now && m.examples > 0 ? num(v) : nullptr; };
  nlohmann::json j = {{"train_loss", of(r.train, r.train.loss)},
                      {"train_accuracy", of(r.train, r.train.accuracy)},
                      {"test_loss", of(r.test, r.test.loss)},
                      {"test_accuracy", of(r.test, r.test.accuracy)}};
  if (with_trace) {
    j["trace_normalized"] = now ? num(r.trace_normalized) : nullptr;
    j["trace_normalized_stderr"] = now ? num(r.trace_normalized_stderr) : nullptr;
  }
  return j;
}

// What this rank has sent to the others so far (host world and, for CUDA models, NCCL's).
static uint64_t bytes_sent_by(const nn::Module& net) {
  const Device device = net.parameters().at(0).device();  // named: GCC 13 flags a reference through a temporary
  const distributed::World &w = distributed::world(), &dw = distributed::world_for(device);
  return w.bytes_sent() + (&dw != &w ? dw.bytes_sent() : 0);
}

PhaseResult run_phase(const std::string& phase, nn::Module& net, const data::Dataset& train, const data::Dataset& test,
                      const OptimSpec& optim_spec, const ScheduleSpec& sched, const nlohmann::json& config,
                      MetricsLog& log, const std::function<bool(int64_t step, const PhaseResult&)>& stop_early) {
  const DType dt = parse_dtype(sched.dtype);
  sched.check_precision();
  const Bf16Convolutions precision(sched.bf16_convolutions);  // the steps and their evaluations
  const optim::ClassifierLoss loss = optim::parse_classifier_loss(sched.loss);
  optim::OptimizerConfig oc = optim_spec.config();  // refuses bad hyperparameters first
  optim_spec.check_batch(sched.batch_size);
  if (sched.steps > 0 && sched.epochs > 0) throw Error("give --steps or --epochs, not both");
  data::LoaderOptions lo{.batch_size = sched.batch_size, .shuffle = true, .seed = sched.loader_seed, .dtype = dt};
  if (sched.batch_size > train.size())
    throw Error("--batch-size " + std::to_string(sched.batch_size) + " exceeds the " + std::to_string(train.size()) +
                " training examples");
  net.to(dt);
  net.to(device_for_rank(sched.device));  // a clear error here if the device is not usable
  optim::validate(sched.parallel(), sched.batch_size, net.parameters().at(0).device());
  data::Loader loader(train, lo);
  int64_t total = sched.steps;
  if (sched.epochs > 0 && __builtin_mul_overflow(sched.epochs, loader.batches_per_epoch(), &total))
    throw Error("--epochs " + std::to_string(sched.epochs) + ": " + std::to_string(loader.batches_per_epoch()) +
                " steps per epoch overflow the step count");
  if (total <= 0) throw Error("nothing to do: give --steps or --epochs");
  auto opt = optim::make_optimizer(
      oc, net.parameters(), optim::data_parallel_batch_closure(net, train, dt, sched.parallel(), loss), train.size());
  int64_t start = 0;
  double resumed_loss = NAN;  // the batch loss of the checkpoint's step
  const std::string config_str = with_parallel(config, sched).dump();
  distributed::require_same(
      distributed::world(), "the configuration or the data",
      config_str + std::to_string(distributed::hash_tensor(train.images, distributed::hash_tensor(train.labels))) +
          std::to_string(distributed::hash_tensor(test.images, distributed::hash_tensor(test.labels))) + phase +
          std::to_string(distributed::hash_tensor(flatten(detach(net.parameters())))));
  if (sched.resume) {
    if (sched.checkpoint.empty()) throw Error("--resume needs --checkpoint");
    optim::CheckpointInfo info = optim::load_checkpoint(sched.checkpoint, net, *opt);
    if (info.config != config_str)
      throw Error(sched.checkpoint + ": the checkpoint was made with another configuration:\n  " + info.config +
                  "\nnow:\n  " + config_str);
    if (info.step > total)
      throw Error(sched.checkpoint + ": the checkpoint is at step " + std::to_string(info.step) + ", past the " +
                  std::to_string(total) + " steps asked for: nothing to do");
    // After step s > 0 the loader stands at batch p ∈ [1, B] of epoch e, s = e·B + p.
    const int64_t per_epoch = loader.batches_per_epoch();
    const int64_t epoch = info.step > 0 ? (info.step - 1) / per_epoch : 0, position = info.step - epoch * per_epoch;
    if (info.loader.seed != sched.loader_seed || info.loader.epoch != epoch || info.loader.position != position)
      throw Error(sched.checkpoint + ": damaged checkpoint: step " + std::to_string(info.step) +
                  " disagrees with its loader state (epoch " + std::to_string(info.loader.epoch) + ", batch " +
                  std::to_string(info.loader.position) + " of " + std::to_string(per_epoch) + ", seed " +
                  std::to_string(info.loader.seed) + ")");
    loader.restore(info.loader);
    start = info.step;
    resumed_loss = info.batch_loss;
    std::fprintf(stderr, "resuming %s from step %lld%s\n", sched.checkpoint.c_str(), (long long)start,
                 start == total ? " (the last step: evaluation only)" : "");
  }
  const uint64_t sent_before = bytes_sent_by(net);
  Progress progress(phase, start, total);
  PhaseResult last;
  bool stopped_early = false;
  auto evaluate = [&](int64_t step, double loss, bool write_row = true) {
    last = evaluate_all(net, train, test, sched, sched.eval_trace);
    last.evaluated_step = last.outcome.steps = step;
    nlohmann::json row = measured_json(last, sched.eval_trace);
    row.update({{"phase", phase}, {"step", step}, {"batch_loss", num(loss)}});
    if (write_row) log.write(row);
    char extra[200];
    std::snprintf(extra, sizeof extra, "train acc %.4f  test acc %.4f%s", last.train.accuracy, last.test.accuracy,
                  sched.eval_trace ? ("  tr̄ " + std::to_string(last.trace_normalized)).c_str() : "");
    progress.update(step, extra);
  };
  // An early stop (escape: "until 100% train accuracy") ends the phase after an evaluation;
  // the loop is re-entered with a smaller total, so the checkpoint logic stays in one place.
  optim::TrainOutcome out;
  out.steps = start;
  out.finished = start >= total;
  int64_t at = start;
  int64_t known_checkpoint = sched.resume ? start : -1;
  if (sched.resume) {
    // The log continues from the checkpoint: rows written after it go (the steps run
    // again), and an evaluation due at the checkpoint's step that a kill left unwritten (or
    // that an early stop depends on) is made again. The state is the same, so is the row.
    const bool have_row = log.rewind_to(phase, start);
    if (start > 0 && ((sched.eval_every > 0 && start % sched.eval_every == 0) || start == total)) {
      evaluate(start, resumed_loss, !have_row);
      if (stop_early && stop_early(start, last)) stopped_early = true;
    }
  }
  while (at < total && !stopped_early) {
    const int64_t chunk_end =
        sched.eval_every > 0 ? std::min(total, (at / sched.eval_every + 1) * sched.eval_every) : total;
    out = optim::train_loop(net, loader, *opt, at,
                            {.total_steps = chunk_end,
                             .checkpoint_every = sched.checkpoint_every,
                             .checkpoint = sched.checkpoint,
                             .config = config_str,
                             .save_at_end = chunk_end == total,
                             .known_checkpoint = known_checkpoint,
                             .loss = loss,
                             .parallel = sched.parallel()},
                            [&](int64_t step, double) { progress.update(step, ""); });
    known_checkpoint = out.last_checkpoint;
    if (!out.finished) break;
    at = out.steps;
    kill_here_for_tests(at);
    evaluate(at, out.last_loss);
    if (stop_early && stop_early(at, last)) stopped_early = true;
  }
  progress.done();
  if (distributed::world().size() > 1 && out.steps > start) {  // the cost measurements of docs/distributed.md
    const double sent = double(bytes_sent_by(net) - sent_before);
    std::fprintf(stderr,
                 "%s: %d processes, %lld micro-shards: rank 0 sent %.3f MB (%.3f MB per step, evaluations included)\n",
                 phase.c_str(), distributed::world().size(), (long long)sched.micro_shards, sent / 1e6,
                 sent / 1e6 / double(out.steps - start));
  }
  const int64_t evaluated = last.evaluated_step;
  last.outcome = out;
  last.evaluated_step = evaluated;
  if (out.stopped_non_finite) std::fprintf(stderr, "%s: stopped: %s\n", phase.c_str(), out.message.c_str());
  return last;
}

}  // namespace flatmin::tools
