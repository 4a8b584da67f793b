// The model, weights and batch flags shared by `flatmin probe` and `flatmin taylor`, and
// what they load: a ResNet-18 with given weights, a batch, and its loss as a function of
// the parameters.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "nn/nn.hpp"

namespace flatmin::tools {

// ---- bounds of the size flags of every command, checked before anything is allocated ----
inline constexpr int64_t kMaxWidth = 1024;     // ResNet-18 first-stage width (torchvision: 64)
inline constexpr int64_t kMaxChannels = 4096;  // input channels
inline constexpr int64_t kMaxClasses = 1 << 20;
inline constexpr int64_t kMaxHidden = 1 << 20;               // one MLP hidden layer
inline constexpr int64_t kMaxParameters = int64_t(1) << 28;  // 1 GiB of float32 weights (ResNet-18: 11.2 M)
// Parameter counts from the options alone (checked arithmetic; nothing is built).
int64_t resnet18_parameter_count(const nn::ResNetOptions& o);
int64_t mlp_parameter_count(const std::vector<int64_t>& sizes);
// Error naming the model and the limit when `count` exceeds kMaxParameters.
void check_parameter_count(int64_t count, const std::string& model);

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
