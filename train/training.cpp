#include "train/training.hpp"

#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "autodiff/nn_ops.hpp"
#include "nn/safetensors.hpp"
#include "train/data_parallel.hpp"

namespace flatmin::optim {

namespace {
// Restores a module's running-statistics switch on scope exit.
struct StatsSwitch {
  nn::Module& net;
  bool saved;
  StatsSwitch(nn::Module& n, bool on) : net(n), saved(n.updates_running_stats()) { n.update_running_stats(on); }
  ~StatsSwitch() { net.update_running_stats(saved); }
};
}  // namespace

ClassifierLoss parse_classifier_loss(const std::string& name) {
  if (name == "ce") return ClassifierLoss::cross_entropy;
  if (name == "mse") return ClassifierLoss::mse;
  throw Error("unknown loss '" + name + "' (ce, mse)");
}
const char* classifier_loss_name(ClassifierLoss l) { return l == ClassifierLoss::mse ? "mse" : "ce"; }

Tensor classifier_loss(const Tensor& logits, const Tensor& labels, ClassifierLoss loss, Reduction r) {
  if (loss == ClassifierLoss::cross_entropy) return cross_entropy(logits, labels, r);
  if (logits.dim() != 2 || labels.dim() != 1 || labels.shape()[0] != logits.shape()[0])
    throw Error("classifier_loss: mse needs logits (N, K) and labels (N), got " + to_string(logits.shape()) + " and " +
                to_string(labels.shape()));
  const int64_t n = logits.shape()[0];
  // e_y: ones scattered at the labels (a constant: no derivative flows into the targets)
  Tensor onehot = scatter_add(ones({n, 1}, {.dtype = logits.dtype(), .device = logits.device()}), logits.shape(), 1,
                              reshape(labels, {n, 1}));
  Tensor per_example = sum(square(logits - onehot), {1});
  if (r == Reduction::none) return per_example;
  return r == Reduction::sum ? sum(per_example) : mean(per_example);
}

Evaluation classifier_evaluation(nn::Module& net, const Tensor& images, const Tensor& labels, const EvalOptions& o,
                                 ClassifierLoss which, double weight) {
  StatsSwitch sw(net, o.update_stats);
  EnableGrad on;
  Params p = net.parameters();
  Tensor loss = classifier_loss(net(images), labels, which);
  if (weight != 1.0) loss = mul_scalar(loss, weight);
  Evaluation e;
  e.loss = loss.item();
  e.grad = grad({loss}, p, {.allow_unused = true});
  for (size_t i = 0; i < p.size(); ++i)
    if (!e.grad[i].defined()) e.grad[i] = zeros_like(p[i].detach());
  return e;
}

// Data lives on the host; each batch moves to the parameters' dtype and device.
Tensor images_for(const nn::Module& net, const Tensor& images, DType dtype) {
  return images.to(dtype).to(net.parameters().at(0).device());
}
Tensor labels_for(const nn::Module& net, const Tensor& labels) { return labels.to(net.parameters().at(0).device()); }

Closure classifier_closure(nn::Module& net, const Tensor& images, const Tensor& labels, ClassifierLoss loss) {
  return [&net, images, labels, loss](const EvalOptions& o) {
    return classifier_evaluation(net, images, labels, o, loss);
  };
}

BatchClosure classifier_batch_closure(nn::Module& net, const data::Dataset& train, DType dtype, ClassifierLoss loss) {
  return [&net, &train, dtype, loss](const std::vector<int64_t>& idx, const EvalOptions& o) {
    data::Dataset b = train.subset(idx);
    return classifier_evaluation(net, images_for(net, b.images, dtype), labels_for(net, b.labels), o, loss);
  };
}

ClassifierMetrics evaluate_classifier(nn::Module& net, const data::Dataset& ds, int64_t batch_size, DType dtype,
                                      ClassifierLoss loss) {
  if (batch_size < 1) throw Error("evaluate_classifier: batch size must be >= 1");
  return metrics_of(evaluate_batches(net, ds, batch_size, dtype, 0, (ds.size() + batch_size - 1) / batch_size, loss),
                    ds.size());
}

std::vector<BatchSums> evaluate_batches(nn::Module& net, const data::Dataset& ds, int64_t batch_size, DType dtype,
                                        int64_t first, int64_t last, ClassifierLoss loss) {
  if (batch_size < 1) throw Error("evaluate_classifier: batch size must be >= 1");
  const bool was_training = net.is_training();
  net.eval();
  NoGrad ng;
  std::vector<BatchSums> sums;
  try {
    for (int64_t at = first * batch_size; at < std::min(ds.size(), last * batch_size); at += batch_size) {
      std::vector<int64_t> idx;
      for (int64_t i = at; i < std::min(ds.size(), at + batch_size); ++i) idx.push_back(i);
      data::Dataset b = ds.subset(idx);
      Tensor logits = net(images_for(net, b.images, dtype));
      BatchSums s;
      s.loss_sum = classifier_loss(logits, labels_for(net, b.labels), loss, Reduction::sum).item();
      std::vector<int64_t> pred = argmax(logits, 1).to_int_vector(), truth = b.labels.to_int_vector();
      for (size_t k = 0; k < pred.size(); ++k) s.correct += pred[k] == truth[k];
      sums.push_back(s);
    }
  } catch (...) {
    net.train(was_training);
    throw;
  }
  net.train(was_training);
  return sums;
}

ClassifierMetrics metrics_of(const std::vector<BatchSums>& batches, int64_t examples) {
  ClassifierMetrics m;
  double loss_sum = 0;
  int64_t correct = 0;
  for (const BatchSums& b : batches) {
    loss_sum += b.loss_sum;
    correct += b.correct;
  }
  m.examples = examples;
  m.loss = m.examples ? loss_sum / double(m.examples) : 0;
  m.accuracy = m.examples ? double(correct) / double(m.examples) : 0;
  return m;
}

TraceEstimate classifier_trace(nn::Module& net, const data::Dataset& subset, DType dtype, const HutchinsonOptions& o,
                               ClassifierLoss loss) {
  StatsSwitch sw(net, false);
  Tensor x = images_for(net, subset.images, dtype), y = labels_for(net, subset.labels);
  Params p = net.parameters();
  return hutchinson_trace(hvp_fn_of_leaves([&] { return classifier_loss(net(x), y, loss); }, p), p, o);
}

void validate(const OptimizerConfig& c) {
  if (c.name == "sgd") return validate(c.sgd);
  if (c.name == "sam") {
    validate(c.sgd);
    return validate(c.sam);
  }
  if (c.name == "rs" || c.name == "sa") return validate(c.perturb);
  throw Error("optimizer: unknown name '" + c.name + "' (sgd, sam, rs, sa)");
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& c, const Params& params, BatchClosure examples,
                                          int64_t n) {
  validate(c);
  if (c.name == "sgd") return std::make_unique<Sgd>(params, c.sgd);
  if (c.name == "sam") return std::make_unique<Sam>(std::make_unique<Sgd>(params, c.sgd), c.sam);
  if (c.name == "rs") return std::make_unique<RandomlySmoothedPerturbation>(params, c.perturb);
  return std::make_unique<SharpnessAwarePerturbation>(params, c.perturb, std::move(examples), n);
}

void set_learning_rate(Optimizer& opt, double lr) {
  if (auto* g = dynamic_cast<GradientOptimizer*>(&opt)) return g->set_lr(lr);
  if (auto* s = dynamic_cast<Sam*>(&opt)) return s->base().set_lr(lr);
  if (auto* p = dynamic_cast<PerturbationOptimizer*>(&opt)) return p->set_lr(lr, p->options().lr_perturb);
  throw Error("set_learning_rate: unsupported optimizer");
}

bool all_finite(const Tensor& t) {
  if (!is_floating(t.dtype()) || t.numel() == 0) return true;
  NoGrad ng;
  return std::isfinite(sum(mul_scalar(t.detach(), 0.0)).item());  // NaN·0 and ±inf·0 are NaN
}

std::string first_non_finite(const nn::NamedTensors& tensors) {
  for (const auto& [name, t] : tensors)
    if (!all_finite(t)) return name;
  return "";
}

namespace {
// The training state as the checkpoint stores it: "model.<name>" (parameters and buffers),
// then "optim.<key>".
nn::NamedTensors checkpoint_tensors(const nn::Module& net, const OptimizerState& s) {
  nn::NamedTensors tensors;
  for (auto& [name, t] : net.state_dict()) tensors.emplace_back("model." + name, t.detach());
  for (auto& [key, t] : s.tensors) tensors.emplace_back("optim." + key, t.detach());
  return tensors;
}

// CRC-32 (zlib) of a tensor's bytes as stored (little-endian, its own dtype).
uint64_t crc32_of(const Tensor& t) {
  const Tensor h = t.to(Device::cpu());
  const size_t bytes = size_t(h.numel()) * dtype_size(h.dtype());
  return bytes ? crc32_z(0, static_cast<const Bytef*>(h.raw()), bytes) : 0;
}
uint64_t crc32_of(const std::string& s) { return crc32_z(0, reinterpret_cast<const Bytef*>(s.data()), s.size()); }

// Every stored field in its range: Error naming the field and the value.
void check_range(const std::string& path, const char* field, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi)
    throw Error(path + ": checkpoint field '" + field + "' is " + std::to_string(value) + ", outside [" +
                std::to_string(lo) + ", " + std::to_string(hi) + "]");
}
constexpr int64_t kMaxStep = int64_t(1) << 53;  // exact in a double and in JSON readers
}  // namespace

void save_checkpoint(const std::string& path, const nn::Module& net, const Optimizer& opt, const CheckpointInfo& info) {
  OptimizerState s = opt.state();
  const nn::NamedTensors tensors = checkpoint_tensors(net, s);
  const std::string bad = first_non_finite(tensors);
  if (!bad.empty()) throw Error(path + ": not saved: tensor '" + bad + "' holds a non-finite value");
  nlohmann::json meta = {
      {"step", info.step},
      {"loader", {{"seed", info.loader.seed}, {"epoch", info.loader.epoch}, {"position", info.loader.position}}},
      {"optim_integers", s.integers},
      {"optim_reals", s.reals}};
  if (std::isfinite(info.batch_loss)) meta["batch_loss"] = info.batch_loss;
  const std::string state = meta.dump();
  nlohmann::json sums = {{"state", crc32_of(state)}, {"config", crc32_of(info.config)}};
  for (const auto& [name, t] : tensors) sums["tensors"][name] = crc32_of(t);
  nn::save_safetensors(
      path, tensors,
      {{"format", "flatmin-checkpoint"}, {"state", state}, {"config", info.config}, {"crc32", sums.dump()}});
}

CheckpointInfo load_checkpoint(const std::string& path, nn::Module& net, Optimizer& opt) {
  nn::SafeTensors st = nn::load_safetensors(path);
  auto fmt = st.metadata.find("format");
  if (fmt == st.metadata.end() || fmt->second != "flatmin-checkpoint" || !st.metadata.count("state"))
    throw Error(path + ": not a flatmin training checkpoint");
  // Checksums first: a damaged file is refused before any of it is interpreted.
  if (!st.metadata.count("crc32")) {
    std::fprintf(stderr, "warning: %s: a checkpoint without checksums (older format): its contents are not verified\n",
                 path.c_str());
  } else {
    nlohmann::json sums;
    try {
      sums = nlohmann::json::parse(st.metadata.at("crc32"));
      auto expect = [&](const std::string& what, uint64_t stored, uint64_t actual) {
        if (stored != actual) throw Error(path + ": damaged checkpoint: the checksum of " + what + " does not match");
      };
      expect("the state metadata", sums.at("state").get<uint64_t>(), crc32_of(st.metadata.at("state")));
      expect("the configuration", sums.at("config").get<uint64_t>(),
             crc32_of(st.metadata.count("config") ? st.metadata.at("config") : std::string()));
      const auto& per_tensor = sums.at("tensors");
      if (per_tensor.size() != st.tensors.size())
        throw Error(path + ": damaged checkpoint: " + std::to_string(st.tensors.size()) + " tensors, " +
                    std::to_string(per_tensor.size()) + " checksums");
      for (const auto& [name, t] : st.tensors) {
        if (!per_tensor.contains(name))
          throw Error(path + ": damaged checkpoint: no checksum for tensor '" + name + "'");
        expect("tensor '" + name + "'", per_tensor.at(name).get<uint64_t>(), crc32_of(t));
      }
    } catch (const nlohmann::json::exception& e) {
      throw Error(path + ": bad checkpoint checksums: " + e.what());
    }
  }
  const std::string bad = first_non_finite(st.tensors);
  if (!bad.empty()) throw Error(path + ": refused: tensor '" + bad + "' holds a non-finite value");
  nn::NamedTensors model;
  OptimizerState s;
  for (auto& [name, t] : st.tensors) {
    if (name.rfind("model.", 0) == 0)
      model.emplace_back(name.substr(6), t);
    else if (name.rfind("optim.", 0) == 0)
      s.tensors[name.substr(6)] = t;
    else
      throw Error(path + ": unexpected tensor '" + name + "'");
  }
  CheckpointInfo info;
  try {
    nlohmann::json meta = nlohmann::json::parse(st.metadata.at("state"));
    info.step = meta.at("step").get<int64_t>();
    info.loader.seed = meta.at("loader").at("seed").get<uint64_t>();
    info.loader.epoch = meta.at("loader").at("epoch").get<int64_t>();
    info.loader.position = meta.at("loader").at("position").get<int64_t>();
    s.integers = meta.at("optim_integers").get<std::map<std::string, uint64_t>>();
    s.reals = meta.at("optim_reals").get<std::map<std::string, double>>();
    if (meta.contains("batch_loss")) info.batch_loss = meta.at("batch_loss").get<double>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": bad checkpoint metadata: " + e.what());
  }
  check_range(path, "step", info.step, 0, kMaxStep);
  check_range(path, "loader.epoch", info.loader.epoch, 0, kMaxStep);
  check_range(path, "loader.position", info.loader.position, 0, kMaxStep);
  for (const auto& [key, v] : s.integers)
    if (key == "steps" || key.ends_with(".steps") || key == "iterates_seen")  // counters: at most one per step
      check_range(path, ("optim_integers." + key).c_str(), v > uint64_t(kMaxStep) ? -1 : int64_t(v), 0, kMaxStep);
  for (const auto& [key, v] : s.reals)
    if (!std::isfinite(v)) throw Error(path + ": checkpoint field 'optim_reals." + key + "' is not finite");
  if (st.metadata.count("config")) info.config = st.metadata.at("config");
  nn::load_state_dict(net, model, path);
  // The optimizer's tensors must live on the parameters' dtype and device.
  const Params p = net.parameters();
  for (auto& [key, t] : s.tensors) t = t.to(p[0].dtype()).to(p[0].device());
  opt.load_state(s);
  return info;
}

TrainOutcome train_loop(nn::Module& net, data::Loader& loader, Optimizer& opt, int64_t start_step,
                        const TrainLoopOptions& o, const std::function<void(int64_t, double)>& after_step) {
  TrainOutcome r;
  r.steps = start_step;
  const DType dtype = net.parameters().at(0).dtype();
  r.last_checkpoint = o.known_checkpoint;
  // Every tensor of the state, buffers included (a diverging BatchNorm can keep a finite
  // loss in training mode while its running variance is already infinite).
  std::string broken;
  auto state_finite = [&] {
    broken = first_non_finite(checkpoint_tensors(net, opt.state()));
    return broken.empty();
  };
  auto save = [&](int64_t step) {  // false: the state is not finite, nothing is written
    if (!state_finite()) return false;
    if (o.checkpoint.empty()) return true;
    if (o.parallel.comm(net.parameters().at(0).device()).rank() == 0)
      save_checkpoint(o.checkpoint, net, opt,
                      {.step = step, .loader = loader.state(), .config = o.config, .batch_loss = r.last_loss});
    r.last_checkpoint = step;
    return true;
  };
  auto not_finite = [&] { return "tensor '" + broken + "' of the training state became non-finite"; };
  auto stop = [&](int64_t step, const std::string& what) {
    r.stopped_non_finite = true;
    r.message = what + " at step " + std::to_string(step);
    if (o.checkpoint.empty())
      r.message += " (no checkpoint was asked for)";
    else if (r.last_checkpoint < 0)
      r.message += "; no checkpoint had been written yet";
    else
      r.message +=
          "; the last good checkpoint (step " + std::to_string(r.last_checkpoint) + ") is kept in " + o.checkpoint;
    return r;
  };
  // SA's sampling (the header says why): checked and prepared before the first step.
  auto* sa = dynamic_cast<SharpnessAwarePerturbation*>(&opt);
  const bool sa_step_batch = sa && sa->options().sampling == SaSampling::step_batch;
  if (sa_step_batch && sa->options().batch > loader.options().batch_size)
    throw Error("SA: the perturbation batch b = " + std::to_string(sa->options().batch) + " exceeds the batch size " +
                std::to_string(loader.options().batch_size) + " (i is drawn within the step's batch)");
  Closure full_batch;
  if (sa && !sa_step_batch) {
    const data::Dataset& all = loader.dataset();
    full_batch =
        data_parallel_closure(net, images_for(net, all.images, dtype), labels_for(net, all.labels), o.parallel, o.loss);
  }
  net.train();
  for (int64_t step = start_step + 1; step <= o.total_steps; ++step) {
    data::Batch b = loader.next_batch();
    if (sa_step_batch) sa->set_step_examples(b.indices);
    const double loss = opt.step(full_batch ? full_batch
                                            : data_parallel_closure(net, images_for(net, b.images, dtype),
                                                                    labels_for(net, b.labels), o.parallel, o.loss));
    r.last_loss = loss;
    if (!std::isfinite(loss)) return stop(step, "the training loss became " + std::to_string(loss));
    r.steps = step;
    if (after_step) after_step(step, loss);
    if (o.checkpoint_every > 0 && step % o.checkpoint_every == 0 && !save(step)) return stop(step, not_finite());
  }
  // The end of every call (an evaluation point) checks the state, saved or not.
  const bool just_saved = !o.checkpoint.empty() && r.last_checkpoint == r.steps;
  if (!just_saved && !(o.save_at_end ? save(r.steps) : state_finite())) return stop(r.steps, not_finite());
  r.finished = true;
  return r;
}

}  // namespace flatmin::optim
