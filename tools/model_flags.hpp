// The model, weights and batch flags shared by `flatmin probe` and `flatmin taylor`, and
// what they load: a ResNet-18 with given weights, a batch, and its loss as a function of
// the parameters.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "nn/nn.hpp"

namespace flatmin::tools {

struct ModelFlags {
  std::string model = "resnet18", stem = "cifar", norm = "batch", activation = "relu";
  int64_t in_channels = 3, classes = 10, width = 64;
  std::string weights, batch, mode = "train", dtype = "f64", device = "cpu";
  void add_to(CLI::App& app);
};

struct Problem {
  std::unique_ptr<nn::ResNet> net;
  Tensor input, target;
  std::vector<std::string> names;  // parameter names, in parameters() order
  Params x;                        // the parameters (from the weights file)
  ScalarFn loss;                   // mean cross-entropy on the batch in the chosen mode
};
// Builds the model, loads the weights and the batch (`input` (N,C,H,W), `target` (N) int64),
// converts to the dtype and device. Training mode uses batch statistics and never changes
// the running statistics.
Problem load_problem(const ModelFlags& flags);

// A direction file: one tensor per parameter, under the parameter's name (nothing else).
Params load_direction(const std::string& path, const Problem& p);

// %.17g, and null for values JSON cannot hold.
std::string json_number(double v);

}  // namespace flatmin::tools
