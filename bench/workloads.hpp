// Workloads that live in their own files (the ResNet-18 ones need nn/).
#pragma once
#include <vector>

#include "autodiff/tensor.hpp"
#include "bench/harness.hpp"

namespace flatmin::bench {

// Mean cross-entropy of logits (N, K) against int64 labels (N).
Tensor classification_loss(const Tensor& logits, const Tensor& labels);

// ResNet-18 workloads: width 64 (CIFAR shapes) and the shape of `flatmin escape`'s model.
std::vector<Group> resnet_groups();

}  // namespace flatmin::bench
