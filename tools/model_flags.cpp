#include "tools/model_flags.hpp"

#include <cmath>
#include <cstdio>

namespace flatmin::tools {

namespace {
int64_t mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) throw Error("model size: the parameter count overflows int64");
  return r;
}
int64_t add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) throw Error("model size: the parameter count overflows int64");
  return r;
}
}  // namespace

int64_t resnet18_parameter_count(const nn::ResNetOptions& o) {
  if (o.in_channels <= 0 || o.classes <= 0 || o.width <= 0) throw Error("resnet18: sizes must be positive");
  auto norm = [&](int64_t ch) { return o.norm == nn::Norm::none ? 0 : mul(2, ch); };  // weight + bias
  const int64_t w = o.width, k = o.stem == nn::Stem::cifar ? 3 : 7;
  int64_t n = add(mul(mul(o.in_channels, w), k * k), norm(w));
  int64_t in = w;
  for (int s = 0; s < 4; ++s) {
    const int64_t out = mul(w, int64_t(1) << s);
    const int64_t block = add(mul(9, mul(out, out)), norm(out));       // conv 3x3 + norm
    n = add(n, add(mul(9, mul(in, out)), norm(out)));                  // block 0, conv1
    n = add(n, mul(3, block));                                         // block 0 conv2, block 1 conv1 + conv2
    if (s > 0 || in != out) n = add(n, add(mul(in, out), norm(out)));  // 1x1 downsample
    in = out;
  }
  return add(n, mul(add(in, 1), o.classes));  // fc
}

int64_t mlp_parameter_count(const std::vector<int64_t>& sizes) {
  int64_t n = 0;
  for (size_t i = 0; i + 1 < sizes.size(); ++i) n = add(n, mul(add(sizes[i], 1), sizes[i + 1]));
  return n;
}

void check_parameter_count(int64_t count, const std::string& model) {
  if (count > kMaxParameters)
    throw Error(model + ": " + std::to_string(count) + " parameters exceed the limit of " +
                std::to_string(kMaxParameters) + " (lower the width or the hidden sizes)");
}

void ModelFlags::add_to(CLI::App& app) {
  app.add_option("--model", model, "model (resnet18)")->check(CLI::IsMember({"resnet18"}));
  app.add_option("--stem", stem, "cifar | imagenet")->check(CLI::IsMember({"cifar", "imagenet"}));
  app.add_option("--in-channels", in_channels, "input channels")->check(CLI::Range(int64_t(1), kMaxChannels));
  app.add_option("--classes", classes, "number of classes")->check(CLI::Range(int64_t(1), kMaxClasses));
  app.add_option("--width", width, "first-stage width (stages w, 2w, 4w, 8w)")
      ->check(CLI::Range(int64_t(1), kMaxWidth));
  app.add_option("--norm", norm, "batch | group | none")->check(CLI::IsMember({"batch", "group", "none"}));
  app.add_option("--activation", activation, "relu | tanh | softplus")
      ->check(CLI::IsMember({"relu", "tanh", "softplus"}));
  app.add_option("--weights", weights, "state dict (.safetensors) with the model's names")->required();
  app.add_option("--batch", batch, "batch (.safetensors): input (N,C,H,W), target (N) int64")->required();
  app.add_option("--mode", mode, "train (batch statistics) | eval (running statistics)")
      ->check(CLI::IsMember({"train", "eval"}));
  app.add_option("--dtype", dtype, "f64 | f32")->check(CLI::IsMember({"f64", "f32"}));
  app.add_option("--device", device, "cpu | cuda");
}

Problem load_problem(const ModelFlags& flags) {
  const DType dtype = flags.dtype == "f32" ? DType::f32 : DType::f64;
  const Device device = Device::parse(flags.device);
  Problem p;
  const nn::ResNetOptions options{.in_channels = flags.in_channels,
                                  .classes = flags.classes,
                                  .stem = nn::parse_stem(flags.stem),
                                  .width = flags.width,
                                  .norm = nn::parse_norm(flags.norm),
                                  .activation = nn::parse_act(flags.activation)};
  check_parameter_count(resnet18_parameter_count(options), "resnet18");
  p.net = std::make_unique<nn::ResNet>(options);
  p.net->to(dtype);
  nn::load_safetensors(*p.net, flags.weights);
  p.net->to(device);
  p.net->train(flags.mode == "train").update_running_stats(false);
  auto batch = nn::load_safetensors(flags.batch);
  for (const char* key : {"input", "target"})
    if (!batch.contains(key)) throw Error(flags.batch + ": no tensor '" + key + "'");
  p.input = batch.at("input");
  p.target = batch.at("target");
  if (p.input.dim() != 4 || !is_floating(p.input.dtype()))
    throw Error(flags.batch + ": input must be a floating (N, C, H, W) tensor, got " + to_string(p.input.shape()));
  if (p.target.dtype() != DType::i64 || p.target.dim() != 1 || p.target.size(0) != p.input.size(0))
    throw Error(flags.batch + ": target must be int64 of shape [" + std::to_string(p.input.size(0)) + "], got " +
                dtype_name(p.target.dtype()) + " " + to_string(p.target.shape()));
  for (int64_t label : p.target.to_int_vector())
    if (label < 0 || label >= flags.classes)
      throw Error(flags.batch + ": label " + std::to_string(label) + " outside [0, " + std::to_string(flags.classes) +
                  ")");
  p.input = p.input.to(dtype).to(device);
  p.target = p.target.to(device);
  for (auto& [name, t] : p.net->named_parameters()) p.names.push_back(name);
  p.x = p.net->parameters();
  p.loss = nn::classification_loss(*p.net, p.input, p.target);
  return p;
}

Params load_direction(const std::string& path, const Problem& p) {
  auto file = nn::load_safetensors(path);
  Params v;
  for (size_t i = 0; i < p.names.size(); ++i) {
    if (!file.contains(p.names[i])) throw Error(path + ": no tensor for parameter '" + p.names[i] + "'");
    const Tensor& t = file.at(p.names[i]);
    if (t.shape() != p.x[i].shape())
      throw Error(path + ": '" + p.names[i] + "' has shape " + to_string(t.shape()) + ", the parameter " +
                  to_string(p.x[i].shape()));
    v.push_back(t.to(p.x[i].dtype()).to(p.x[i].device()));
  }
  if (file.tensors.size() != p.names.size())
    throw Error(path + ": " + std::to_string(file.tensors.size() - p.names.size()) +
                " tensors that are not parameters of the model");
  return v;
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace flatmin::tools
