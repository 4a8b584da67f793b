#include "train/data_parallel.hpp"

#include "autodiff/nn_ops.hpp"

namespace flatmin::optim {

using distributed::World;

namespace {
Device model_device(const nn::Module& net) { return net.parameters().at(0).device(); }

// One micro-shard: its inputs and its share of the whole batch.
struct Shard {
  Tensor images, labels;
  double weight = 1.0;
};

// Σ over `shards` shards (computed where they are owned) of the weighted loss and gradient,
// added in the fixed tree; shard 0 alone updates BatchNorm's running statistics, which its
// owner then sends to every process.
Evaluation sharded_evaluation(nn::Module& net, int64_t shards, const DataParallel& p, const EvalOptions& o,
                              ClassifierLoss loss, const std::function<Shard(int64_t)>& shard) {
  const Params params = net.parameters();
  const Device dev = params.at(0).device();
  const World& w = p.comm(dev);
  std::vector<double> losses;
  Tensor g = distributed::fixed_order_sum(w, shards, dev, [&](int64_t k) {
    Shard s = shard(k);
    EvalOptions ok = o;
    ok.update_stats = o.update_stats && k == 0;
    Evaluation e = classifier_evaluation(net, s.images, s.labels, ok, loss, s.weight);
    losses.push_back(e.loss);
    return flatten(e.grad);
  });
  Evaluation r;
  r.loss = distributed::fixed_order_sum(w.host(), shards, losses);
  r.grad = unflatten(g, detach(params));
  if (o.update_stats && w.size() > 1) {
    const int from = distributed::owner(0, shards, w.size());
    for (auto& [name, b] : net.named_buffers()) {
      Tensor t = b;
      distributed::broadcast(w, t, from);
    }
  }
  return r;
}

std::vector<int64_t> rows(const std::vector<int64_t>& all, int64_t k, int64_t shards) {
  const int64_t n = int64_t(all.size());
  return {all.begin() + n * k / shards, all.begin() + n * (k + 1) / shards};
}
}  // namespace

void validate(const DataParallel& p, int64_t batch_size, const Device& d) {
  const int size = p.comm(d).size();
  if (p.micro_shards < 1) throw Error("--micro-shards must be >= 1, got " + std::to_string(p.micro_shards));
  if (p.micro_shards < size)
    throw Error("--micro-shards " + std::to_string(p.micro_shards) + " is below the " + std::to_string(size) +
                " processes: give --micro-shards >= " + std::to_string(size) +
                " (the results depend on it, not on the number of processes)");
  if (p.micro_shards > batch_size)
    throw Error("--micro-shards " + std::to_string(p.micro_shards) + " exceeds the batch size " +
                std::to_string(batch_size));
}

Closure data_parallel_closure(nn::Module& net, const Tensor& images, const Tensor& labels, const DataParallel& p,
                              ClassifierLoss loss) {
  if (!p.active(model_device(net))) return classifier_closure(net, images, labels, loss);
  return [&net, images, labels, p, loss](const EvalOptions& o) {
    const int64_t n = images.size(0), shards = std::min(p.micro_shards, n);
    return sharded_evaluation(net, shards, p, o, loss, [&](int64_t k) {
      const int64_t a = n * k / shards, b = n * (k + 1) / shards;
      return Shard{slice(images, 0, a, b), slice(labels, 0, a, b), double(b - a) / double(n)};
    });
  };
}

BatchClosure data_parallel_batch_closure(nn::Module& net, const data::Dataset& train, DType dtype,
                                         const DataParallel& p, ClassifierLoss loss) {
  if (!p.active(model_device(net))) return classifier_batch_closure(net, train, dtype, loss);
  return [&net, &train, dtype, p, loss](const std::vector<int64_t>& idx, const EvalOptions& o) {
    if (idx.empty()) throw Error("SA: empty mini-batch");
    const int64_t n = int64_t(idx.size()), shards = std::min(p.micro_shards, n);
    return sharded_evaluation(net, shards, p, o, loss, [&](int64_t k) {
      data::Dataset b = train.subset(rows(idx, k, shards));
      return Shard{images_for(net, b.images, dtype), labels_for(net, b.labels), double(b.size()) / double(n)};
    });
  };
}

ClassifierMetrics evaluate_classifier(nn::Module& net, const data::Dataset& ds, int64_t batch_size, DType dtype,
                                      const DataParallel& p, ClassifierLoss loss) {
  const World& w = p.comm(model_device(net)).host();
  if (w.size() == 1) return evaluate_classifier(net, ds, batch_size, dtype, loss);
  if (batch_size < 1) throw Error("evaluate_classifier: batch size must be >= 1");
  const int64_t batches = (ds.size() + batch_size - 1) / batch_size;
  const distributed::Range mine = distributed::owned(batches, w.rank(), w.size());
  std::vector<double> flat;  // (loss_sum, correct) per owned batch
  for (const BatchSums& b : evaluate_batches(net, ds, batch_size, dtype, mine.begin, mine.end, loss)) {
    flat.push_back(b.loss_sum);
    flat.push_back(double(b.correct));  // exact: counts are far below 2^53
  }
  const std::vector<double> all = distributed::all_gather_v(w, flat);
  std::vector<BatchSums> sums;
  for (size_t i = 0; i + 1 < all.size(); i += 2) sums.push_back({all[i], int64_t(all[i + 1])});
  return metrics_of(sums, ds.size());
}

TraceEstimate classifier_trace(nn::Module& net, const data::Dataset& subset, DType dtype, const HutchinsonOptions& o,
                               const DataParallel& p, ClassifierLoss loss) {
  const World& w = p.comm(model_device(net)).host();
  if (w.size() == 1) return classifier_trace(net, subset, dtype, o, loss);
  const bool saved = net.updates_running_stats();
  net.update_running_stats(false);
  try {
    Tensor x = images_for(net, subset.images, dtype), y = labels_for(net, subset.labels);
    Params params = net.parameters();
    HvpFn hvp = hvp_fn_of_leaves([&] { return classifier_loss(net(x), y, loss); }, params);
    TraceEstimate t = hutchinson_trace(
        [&](const std::vector<Params>& zs) {
          std::vector<double> mine;
          if (size_t(w.rank()) < zs.size()) mine.push_back(dot(zs[size_t(w.rank())], hvp(zs[size_t(w.rank())])).item());
          return distributed::all_gather_v(w, mine);
        },
        w.size(), params, o);
    net.update_running_stats(saved);
    return t;
  } catch (...) {
    net.update_running_stats(saved);
    throw;
  }
}

}  // namespace flatmin::optim
