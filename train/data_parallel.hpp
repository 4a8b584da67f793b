// Data-parallel closures (docs/distributed.md): the optimizers stay as they are; what they
// call shares the work out over the processes of the job (distributed/world.hpp).
//
// A batch of B examples is split into S = min(micro_shards, B) micro-shards, shard k being
// rows [B·k/S, B·(k+1)/S); each process computes the shards it owns (a contiguous range),
// each shard's gradient separately (its mean loss weighted by its share of B), and
// distributed::fixed_order_sum adds them in one tree that depends on S only. So 1, 2 or 3
// processes produce the same bits as one process with the same S, and every process holds
// the same gradient, loss, parameters and optimizer state after every step.
//
// BatchNorm in training mode normalizes each micro-shard with its own statistics (ghost
// batch norm: nothing is synchronized inside a forward pass); the running statistics are
// updated by shard 0 alone and broadcast from its owner (rank 0), once per step.
//
// Random draws (RS's u, SA's mini-batch i and σ, Hutchinson's z) come from the optimizers'
// and estimators' seeded generators, which every process advances identically.
#pragma once
#include "train/training.hpp"

namespace flatmin::optim {

// Refuses (flatmin::Error naming the flag) micro_shards < 1, more processes than shards, or
// more shards than examples per batch.
void validate(const DataParallel& p, int64_t batch_size, const Device& d);

// Loss and gradient of the mean cross-entropy over images/labels, shared out as above;
// classifier_closure itself when p is not active (one process, one shard).
Closure data_parallel_closure(nn::Module& net, const Tensor& images, const Tensor& labels, const DataParallel& p,
                              ClassifierLoss loss = ClassifierLoss::cross_entropy);
// SA's ∇f_i: the mini-batch i split into min(micro_shards, |i|) shards the same way (b = 1:
// one shard, computed by rank 0 and sent to the others).
BatchClosure data_parallel_batch_closure(nn::Module& net, const data::Dataset& train, DType dtype,
                                         const DataParallel& p, ClassifierLoss loss = ClassifierLoss::cross_entropy);
// evaluate_classifier with its batches dealt out in contiguous ranges; the per-batch sums
// are gathered and added in batch order, so the metrics equal the one-process ones.
ClassifierMetrics evaluate_classifier(nn::Module& net, const data::Dataset& ds, int64_t batch_size, DType dtype,
                                      const DataParallel& p, ClassifierLoss loss = ClassifierLoss::cross_entropy);
// classifier_trace with Hutchinson's samples dealt out: rounds of `size` samples, sample j
// of a round computed by rank j; the stopping rule then runs over the samples in order, so
// the estimate equals the one-process estimate (a round may compute up to size−1 samples
// past the stopping point).
TraceEstimate classifier_trace(nn::Module& net, const data::Dataset& subset, DType dtype, const HutchinsonOptions& o,
                               const DataParallel& p, ClassifierLoss loss = ClassifierLoss::cross_entropy);

}  // namespace flatmin::optim
