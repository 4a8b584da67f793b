// Training a classifier with any optimizer of this folder: closures over a model and a
// data set (with the BatchNorm running-statistics hook), evaluation, an optimizer built
// from a validated configuration, atomic checkpoints that resume bit for bit, and a loop
// that stops cleanly (keeping the last good checkpoint) when the loss stops being finite.
#pragma once
#include <cmath>
#include <functional>
#include <memory>
#include <string>

#include "datasets/loader.hpp"
#include "nn/module.hpp"
#include "optim/perturbation.hpp"
#include "optim/sam.hpp"
#include "optim/sgd.hpp"
#include "optim/sharpness.hpp"

namespace flatmin::optim {

// ---- closures over a model ----
// Mean cross-entropy of net(images) against labels and its gradient at the model's current
// parameters; with update_stats = false BatchNorm leaves its running statistics alone.
Evaluation classifier_evaluation(nn::Module& net, const Tensor& images, const Tensor& labels, const EvalOptions& o);
Closure classifier_closure(nn::Module& net, const Tensor& images, const Tensor& labels);
// ∇f_i for Algorithm 2: the examples i of `train` (converted to dtype). With BatchNorm in
// training mode, "the loss of one example" uses the statistics of those b examples only:
// the per-example semantics hold exactly with GroupNorm or no normalization.
BatchClosure classifier_batch_closure(nn::Module& net, const data::Dataset& train, DType dtype);

struct ClassifierMetrics {
  double loss = 0, accuracy = 0;
  int64_t examples = 0;
};
// Evaluation mode (BatchNorm running statistics), no recording, batches of batch_size.
ClassifierMetrics evaluate_classifier(nn::Module& net, const data::Dataset& ds, int64_t batch_size, DType dtype);
// tr̄ of the training loss on `subset` (training-mode forward without updating statistics).
TraceEstimate classifier_trace(nn::Module& net, const data::Dataset& subset, DType dtype, const HutchinsonOptions& o);

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
  std::string config;  // the run's configuration (JSON), checked on resume
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

// ---- the loop ----
struct TrainLoopOptions {
  int64_t total_steps = 0;       // run until this many steps in all (counting resumed ones)
  int64_t checkpoint_every = 0;  // 0: only at the end
  std::string checkpoint;        // path; empty: no checkpoints
  std::string config;            // stored in checkpoints
  bool save_at_end = true;       // also checkpoint after the last step
  int64_t known_checkpoint = -1; // step of a checkpoint saved before this call (-1: none)
};
struct TrainOutcome {
  int64_t steps = 0;     // steps done in all
  bool finished = false;
  bool stopped_non_finite = false;
  std::string message;
  double last_loss = NAN;  // NaN until a step ran
  int64_t last_checkpoint = -1;  // step of the newest good checkpoint (-1: none)
};
// after_step(step, loss) runs after every step (metrics, evaluation, progress); it may read
// but must not change the model or the optimizer.
TrainOutcome train_loop(nn::Module& net, data::Loader& loader, Optimizer& opt, int64_t start_step,
                        const TrainLoopOptions& o, const std::function<void(int64_t, double)>& after_step = {});

}  // namespace flatmin::optim
