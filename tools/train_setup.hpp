// What `flatmin train`, `flatmin trace` and `flatmin escape` share: the flags for model,
// data, optimizer and schedule, building each from them (hyperparameters validated before
// any work), and one training phase with evaluation, metrics, progress and checkpoints.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "datasets/datasets.hpp"
#include "nn/nn.hpp"
#include "tools/model_flags.hpp"
#include "train/training.hpp"

namespace flatmin::tools {

struct ModelSpec {
  std::string model = "mlp";            // mlp | resnet18
  std::string norm = "group";           // resnet18: batch | group | none
  int64_t width = 64;                   // resnet18 stage width
  std::vector<int64_t> hidden = {256};  // mlp hidden sizes
  std::string activation = "relu";
  uint64_t seed = 0;
  bool channels_last = false;  // resnet18: NHWC activations (nn::ResNetOptions::channels_last)
  void add_to(CLI::App& app);
  nlohmann::json json() const;
};
struct DataSpec {
  std::string dataset = "fashion-mnist";  // fashion-mnist | cifar10 (needs --data-dir) | blobs
  std::string dir = data::kFashionMnistDir;
  int64_t train_subset = 0, test_subset = 0;  // first N examples (0: all)
  void add_to(CLI::App& app);
  nlohmann::json json() const;
  data::Dataset train() const;
  data::Dataset test() const;
};
struct OptimSpec {
  std::string name = "sgd";
  double lr = 0.01, momentum = 0, dampening = 0, weight_decay = 0, rho = 0.05, eps0 = INFINITY;
  bool nesterov = false, adaptive = false;
  std::optional<double> lr_perturb;
  int64_t sa_batch = 1;
  std::string sa_sampling = "step";  // step: i within the step's batch | all: Algorithm 2 as written
  uint64_t seed = 0;
  void add_to(CLI::App& app);
  nlohmann::json json() const;
  optim::OptimizerConfig config() const;  // validated
  // SA with step sampling draws b of the step's examples: refuses b > batch_size.
  void check_batch(int64_t batch_size) const;
};
struct ScheduleSpec {
  int64_t steps = 0, epochs = 0, batch_size = 128, eval_every = 0, checkpoint_every = 0;
  bool eval_trace = false;
  int64_t trace_subset = 256;
  int trace_samples = 100;
  double trace_tol = 1e-3;
  uint64_t loader_seed = 0;
  std::string metrics, checkpoint;
  bool resume = false;
  std::string dtype = "f32";
  std::string device = "cpu";      // cpu | cuda | cuda:N
  std::string loss = "ce";         // ce | mse (optim::ClassifierLoss)
  int64_t micro_shards = 1;        // data parallelism (train/data_parallel.hpp)
  bool bf16_convolutions = false;  // run_phase inside a Bf16Convolutions scope (nn_ops.hpp)
  void add_to(CLI::App& app);
  // Before any work: --metrics and --checkpoint can be written (nn::check_output_path).
  void check_outputs() const;
  // Before any work: --bf16-convolutions has float32 on a CPU backend that can run it.
  void check_precision() const;
  optim::DataParallel parallel() const { return {.micro_shards = micro_shards}; }
};
// Under mpirun: "cuda" means cuda:<local rank>; anything else as given.
Device device_for_rank(const std::string& device);
// The run's configuration for checkpoints: micro_shards and bf16_convolutions enter it only
// when not at their defaults, so that checkpoints written before they existed still resume.
nlohmann::json with_parallel(nlohmann::json config, const ScheduleSpec& sched);

// An MLP reads flat feature vectors: images (N,C,H,W) become (N,C·H·W).
void flatten_for(const ModelSpec& m, data::Dataset& ds);
std::unique_ptr<nn::Module> build_model(const ModelSpec& m, const data::Dataset& like);
DType parse_dtype(const std::string& s);
// Loads the model weights of a checkpoint (flatmin train --checkpoint: the "model." tensors)
// or of a state dict (--save-model) into net; the model flags must match the file's run.
void load_weights(nn::Module& net, const std::string& file);
// For the analysis commands (trace, hessian): the model of a checkpoint (load_weights) on
// dtype/device in training mode, and the first `subset` training examples.
struct CheckpointModel {
  std::unique_ptr<nn::Module> net;
  data::Dataset train;
};
CheckpointModel load_checkpoint_model(const ModelSpec& m, const DataSpec& d, const std::string& file, int64_t subset,
                                      DType dtype, const Device& device);

// Metrics as JSON lines, one row per evaluation, flushed per row (a kill loses no written
// row); a no-op without a path. A fresh log replaces the file; a resumed one keeps it, and
// run_phase rewinds it to the checkpoint's step, so that an interrupted and resumed run
// leaves the same file as an uninterrupted one.
struct MetricsLogOptions {
  bool resume = false;  // keep the existing rows (for rewind_to)
};
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path, MetricsLogOptions o = {});
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const nlohmann::json& row);
  // Cuts the file before the first row of `phase` past `step` (rows written after the
  // checkpoint the run resumes from) and drops a torn last line; returns whether a row of
  // (phase, step) is kept.
  bool rewind_to(const std::string& phase, int64_t step);

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

// Progress on stderr: one rewritten line with rate and ETA on a terminal; off a terminal,
// a line at each evaluation and every 10 s between them.
class Progress {
 public:
  Progress(std::string label, int64_t first_step, int64_t total_steps);
  void update(int64_t step, const std::string& extra);
  void done();

 private:
  std::string label_;
  int64_t first_, total_;
  bool tty_;
  double start_, last_print_ = -1;
};

struct PhaseResult {
  optim::TrainOutcome outcome;
  optim::ClassifierMetrics train, test;
  double trace_normalized = NAN, trace_normalized_stderr = NAN;  // Hutchinson's standard error
  int64_t evaluated_step = -1;  // the step train/test/trace were measured at (-1: never)
};
// train/test loss and accuracy (and tr̄ when with_trace) as JSON, null for what was not
// measured: no evaluation at the last step reached, no test set, no tr̄ — never a 0.
nlohmann::json measured_json(const PhaseResult& r, bool with_trace);
// One training phase: net on train (evaluated on test) with the optimizer and schedule;
// metrics rows carry {"phase": phase}. Resumes from schedule.checkpoint when asked.
// stop_early(step, result) runs after each evaluation; true ends the phase there.
PhaseResult run_phase(const std::string& phase, nn::Module& net, const data::Dataset& train, const data::Dataset& test,
                      const OptimSpec& optim_spec, const ScheduleSpec& sched, const nlohmann::json& config,
                      MetricsLog& log, const std::function<bool(int64_t step, const PhaseResult&)>& stop_early = {});
// Train/test evaluation and (when asked) tr̄ on the first trace_subset training examples.
PhaseResult evaluate_all(nn::Module& net, const data::Dataset& train, const data::Dataset& test,
                         const ScheduleSpec& sched, bool with_trace);

}  // namespace flatmin::tools
