// Training a classifier with any optimizer of optim/: closures over a model and a
// data set (with the BatchNorm running-statistics hook), evaluation, an optimizer built
// from a validated configuration, atomic checkpoints that resume bit for bit, and a loop
// that stops cleanly (keeping the last good checkpoint) when the loss stops being finite.
#pragma once
#include <cmath>
#include <functional>
#include <memory>
#include <string>

#include "autodiff/nn_ops.hpp"
#include "datasets/loader.hpp"
#include "distributed/world.hpp"
#include "nn/module.hpp"
#include "optim/perturbation.hpp"
#include "optim/sam.hpp"
#include "optim/sgd.hpp"
#include "optim/sharpness.hpp"

namespace flatmin::optim {

// ---- the loss of a classifier ----
// cross_entropy: softmax cross-entropy of the logits (no minimum at finite logits).
// mse: ‖logits − e_y‖² (sum over the classes, mean over the examples), one-hot targets e_y:
// the paper's Setting 1, a loss whose per-example minimum (ℓ′ = 0) is reached at the label.
enum class ClassifierLoss { cross_entropy, mse };
ClassifierLoss parse_classifier_loss(const std::string& name);  // "ce" | "mse"
const char* classifier_loss_name(ClassifierLoss l);
// logits (N, K), int64 labels (N).
Tensor classifier_loss(const Tensor& logits, const Tensor& labels, ClassifierLoss loss, Reduction r = Reduction::mean);

// ---- closures over a model ----
// The mean loss of net(images) against labels and its gradient at the model's current
// parameters; with update_stats = false BatchNorm leaves its running statistics alone.
// weight multiplies the loss (a micro-shard's share of its batch, train/data_parallel.hpp).
Evaluation classifier_evaluation(nn::Module& net, const Tensor& images, const Tensor& labels, const EvalOptions& o,
                                 ClassifierLoss loss = ClassifierLoss::cross_entropy, double weight = 1.0);
Closure classifier_closure(nn::Module& net, const Tensor& images, const Tensor& labels,
                           ClassifierLoss loss = ClassifierLoss::cross_entropy);
// Host data to the model's dtype and device (the data stays on the host; batches move).
Tensor images_for(const nn::Module& net, const Tensor& images, DType dtype);
Tensor labels_for(const nn::Module& net, const Tensor& labels);
// ∇f_i for Algorithm 2: the examples i of `train` (converted to dtype). With BatchNorm in
// training mode, "the loss of one example" uses the statistics of those b examples only:
// the per-example semantics hold exactly with GroupNorm or no normalization.
BatchClosure classifier_batch_closure(nn::Module& net, const data::Dataset& train, DType dtype,
                                      ClassifierLoss loss = ClassifierLoss::cross_entropy);

struct ClassifierMetrics {
  double loss = 0, accuracy = 0;
  int64_t examples = 0;
};
// Evaluation mode (BatchNorm running statistics), no recording, batches of batch_size.
ClassifierMetrics evaluate_classifier(nn::Module& net, const data::Dataset& ds, int64_t batch_size, DType dtype,
                                      ClassifierLoss loss = ClassifierLoss::cross_entropy);
// What evaluate_classifier adds up, for its batches [first, last) (to share them out).
struct BatchSums {
  double loss_sum = 0;
  int64_t correct = 0;
};
std::vector<BatchSums> evaluate_batches(nn::Module& net, const data::Dataset& ds, int64_t batch_size, DType dtype,
                                        int64_t first, int64_t last,
                                        ClassifierLoss loss = ClassifierLoss::cross_entropy);
// The sums added in batch order.
ClassifierMetrics metrics_of(const std::vector<BatchSums>& batches, int64_t examples);
// tr̄ of the training loss on `subset` (training-mode forward without updating statistics).
TraceEstimate classifier_trace(nn::Module& net, const data::Dataset& subset, DType dtype, const HutchinsonOptions& o,
                               ClassifierLoss loss = ClassifierLoss::cross_entropy);

// ---- optimizer from a configuration ----
struct OptimizerConfig {
  std::string name = "sgd";  // sgd | sam | rs | sa
  SgdOptions sgd;            // sgd, and the base of sam
  SamOptions sam;
  PerturbationOptions perturb;  // rs, sa (lr is perturb.lr)
};
// Throws flatmin::Error naming the first bad value: call before any expensive work.
void validate(const OptimizerConfig& c);
// sa needs the per-example closure and the number of examples.
std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& c, const Params& params, BatchClosure examples = {},
                                          int64_t n = 0);
void set_learning_rate(Optimizer& opt, double lr);

// ---- the guard against non-finite state ----
// True when a floating tensor holds no NaN or ±inf (integer tensors always pass).
bool all_finite(const Tensor& t);
// The name of the first tensor holding a non-finite value; "" when all are finite.
std::string first_non_finite(const nn::NamedTensors& tensors);

// ---- checkpoints: model state dict + optimizer state + loader state + step ----
struct CheckpointInfo {
  int64_t step = 0;
  data::LoaderState loader;
  std::string config;       // the run's configuration (JSON), checked on resume
  double batch_loss = NAN;  // the loss of step `step`'s batch (metrics rows of a resumed run); NaN: unknown
};
// Atomic (temp file, fsync, rename). One safetensors file: "model.<name>" tensors (parameters
// and buffers), "optim.<key>" tensors, and the rest as metadata, with the CRC-32 of every
// tensor and of the metadata strings ("crc32"). Refuses (Error) a state holding a non-finite value.
void save_checkpoint(const std::string& path, const nn::Module& net, const Optimizer& opt, const CheckpointInfo& info);
// Loads into net and opt (shapes checked); returns the step, loader state and config.
// Refuses, naming what is wrong, a file whose checksums do not match, whose metadata fields
// are out of range, or whose tensors hold a non-finite value; a file without checksums
// (written before they existed) loads with a warning on stderr.
CheckpointInfo load_checkpoint(const std::string& path, nn::Module& net, Optimizer& opt);

// ---- data parallelism (closures in train/data_parallel.hpp; docs/distributed.md) ----
// Every batch is split into micro_shards fixed parts whose gradients are added in a fixed
// tree: the result depends on micro_shards, never on the number of processes sharing them.
struct DataParallel {
  const distributed::World* world = nullptr;  // nullptr: distributed::world_for(the model's device)
  int64_t micro_shards = 1;                   // 1 on one process: the plain closures, unchanged
  const distributed::World& comm(const Device& d) const { return world ? *world : distributed::world_for(d); }
  bool active(const Device& d) const { return micro_shards > 1 || comm(d).size() > 1; }
};

// ---- the loop ----
struct TrainLoopOptions {
  int64_t total_steps = 0;        // run until this many steps in all (counting resumed ones)
  int64_t checkpoint_every = 0;   // 0: only at the end
  std::string checkpoint;         // path; empty: no checkpoints
  std::string config;             // stored in checkpoints
  bool save_at_end = true;        // also checkpoint after the last step
  int64_t known_checkpoint = -1;  // step of a checkpoint saved before this call (-1: none)
  ClassifierLoss loss = ClassifierLoss::cross_entropy;
  DataParallel parallel{};  // rank 0 alone writes the checkpoints
};
struct TrainOutcome {
  int64_t steps = 0;  // steps done in all
  bool finished = false;
  bool stopped_non_finite = false;
  std::string message;
  double last_loss = NAN;        // NaN until a step ran
  int64_t last_checkpoint = -1;  // step of the newest good checkpoint (-1: none)
};
// SA with step_batch sampling is told each step's examples (b larger than the loader's
// batch size is refused before the first step); SA with all_examples sampling (Algorithm 2
// as written) gets the full-batch gradient of the loader's data set as g at every step.
// after_step(step, loss) runs after every step (metrics, evaluation, progress); it may read
// but must not change the model or the optimizer.
TrainOutcome train_loop(nn::Module& net, data::Loader& loader, Optimizer& opt, int64_t start_step,
                        const TrainLoopOptions& o, const std::function<void(int64_t, double)>& after_step = {});

}  // namespace flatmin::optim
