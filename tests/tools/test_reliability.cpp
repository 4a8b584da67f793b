// Bad sizes, non-finite state, damaged checkpoints, output paths and the metrics log
// (issue 11): each class of defect refused with a one-line Error naming what is wrong,
// before any work; nothing written that a later load would silently trust.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "datasets/synthetic.hpp"
#include "nn/layers.hpp"
#include "nn/resnet.hpp"
#include "nn/safetensors.hpp"
#include "tools/model_flags.hpp"
#include "tools/train_setup.hpp"
#include "train/training.hpp"

using namespace flatmin;
using namespace flatmin::optim;
namespace fs = std::filesystem;

namespace {
std::string temp_path(const std::string& name) {  // per process: worktrees run their tests side by side
  return (fs::temp_directory_path() / (std::to_string(::getpid()) + "_" + name)).string();
}
std::string read_text(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}
void write_text(const std::string& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// A ResNet-18 of width 1 with BatchNorm on 3x8x8 blobs of noise: small and fast.
struct BnRun {
  data::Dataset ds;
  std::unique_ptr<nn::ResNet> net;
  std::unique_ptr<data::Loader> loader;
  std::unique_ptr<Optimizer> opt;
  explicit BnRun(uint64_t seed = 1) {
    Generator g(seed);
    ds = {g.normal({16, 3, 8, 8}), from_ints({0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}, {16}), 2, "noise"};
    net = std::make_unique<nn::ResNet>(
        nn::resnet18({.in_channels = 3, .classes = 2, .stem = nn::Stem::cifar, .width = 1, .norm = nn::Norm::batch}));
    loader = std::make_unique<data::Loader>(ds, data::LoaderOptions{.batch_size = 4, .shuffle = true, .seed = 2});
    OptimizerConfig c;
    c.sgd = {.lr = 0.01, .momentum = 0.9};
    opt = make_optimizer(c, net->parameters());
  }
};
}  // namespace

TEST_CASE("sizes: element counts, bytes and fans are checked; an overflow names the shape") {
  CHECK(numel({3, 4, 5}) == 60);
  CHECK(numel({int64_t(1) << 62, int64_t(1) << 62, 0}) == 0);  // empty, not an overflow
  CHECK_THROWS_WITH_AS(numel({int64_t(1) << 62, 4}), doctest::Contains("[4611686018427387904, 4]"), Error);
  CHECK_THROWS_WITH_AS(numel({int64_t(1) << 31, int64_t(1) << 31, int64_t(1) << 31}), doctest::Contains("overflows"),
                       Error);
  CHECK_THROWS_WITH_AS(numel({2, -3}), doctest::Contains("negative extent -3"), Error);
  // 2^61 float64 elements fit in int64 as a count but not as bytes.
  CHECK_THROWS_WITH_AS(empty({int64_t(1) << 61}, {DType::f64}), doctest::Contains("overflows int64 bytes"), Error);
  CHECK_THROWS_AS(zeros({int64_t(1) << 40, int64_t(1) << 40}), Error);
  // fan-in from the shape alone (nothing allocated), refusing a fan of 0 (a division by zero before)
  CHECK(nn::fan(Shape{8, 3, 5, 5}, nn::FanMode::fan_in) == 75);
  CHECK(nn::fan(Shape{8, 3, 5, 5}, nn::FanMode::fan_out) == 200);
  CHECK_THROWS_WITH_AS(nn::fan(Shape{8, 0}, nn::FanMode::fan_in), doctest::Contains("fan of 0"), Error);
  CHECK_THROWS_AS(nn::fan(Shape{int64_t(1) << 62, 784}, nn::FanMode::fan_in), Error);
  Generator g(0);
  CHECK_THROWS_AS(nn::Linear(0, 4, true, g), Error);
}

TEST_CASE("sizes: parameter counts from the options equal the built models'; the limit is enforced") {
  for (auto norm : {nn::Norm::batch, nn::Norm::group, nn::Norm::none})
    for (auto stem : {nn::Stem::cifar, nn::Stem::imagenet})
      for (int64_t width : {1, 4}) {
        nn::ResNetOptions o{.in_channels = 2, .classes = 7, .stem = stem, .width = width, .norm = norm};
        CHECK(tools::resnet18_parameter_count(o) == nn::ResNet(o).num_parameters());
      }
  // torchvision's resnet18: 11,689,512 parameters (an independent number)
  CHECK(tools::resnet18_parameter_count({.in_channels = 3, .classes = 1000}) == 11689512);
  Generator g(0);
  CHECK(tools::mlp_parameter_count({784, 32, 16, 10}) == nn::MLP({784, 32, 16, 10}, nn::Act::relu, g).num_parameters());
  CHECK_NOTHROW(tools::check_parameter_count(tools::kMaxParameters, "mlp"));
  CHECK_THROWS_WITH_AS(tools::check_parameter_count(tools::kMaxParameters + 1, "mlp"),
                       doctest::Contains("exceed the limit"), Error);
  CHECK_THROWS_AS(tools::mlp_parameter_count({int64_t(1) << 62, int64_t(1) << 62}), Error);
  // build_model refuses before allocating: 784·2^20 + 2^40 parameters
  data::Dataset like{zeros({1, 784}), from_ints({0}, {1}), 10, "like"};
  tools::ModelSpec m;
  m.hidden = {tools::kMaxHidden, tools::kMaxHidden};
  CHECK_THROWS_WITH_AS(tools::build_model(m, like), doctest::Contains("exceed the limit"), Error);
  m.hidden = {int64_t(1) << 62};
  CHECK_THROWS_WITH_AS(tools::build_model(m, like), doctest::Contains("--hidden"), Error);
}

TEST_CASE("NaN guard: a non-finite buffer stops the run; no checkpoint holds it; a loaded one is refused") {
  const std::string ck = temp_path("flatmin_test_bn_guard.safetensors");
  BnRun a;
  REQUIRE(train_loop(*a.net, *a.loader, *a.opt, 0, {.total_steps = 2, .checkpoint = ck}).finished);
  // What a diverging BatchNorm does: the loss (batch statistics) stays finite, the running
  // variance does not.
  for (auto& [name, t] : a.net->named_buffers())
    if (name == "layer2.0.bn1.running_var") t.fill_(INFINITY);
  TrainOutcome out = train_loop(*a.net, *a.loader, *a.opt, 2,
                                {.total_steps = 6, .checkpoint_every = 1, .checkpoint = ck, .known_checkpoint = 2});
  CHECK_FALSE(out.finished);
  CHECK(out.stopped_non_finite);
  CHECK(out.message.find("model.layer2.0.bn1.running_var") != std::string::npos);
  CHECK(out.last_checkpoint == 2);
  CHECK_THROWS_WITH_AS(save_checkpoint(ck, *a.net, *a.opt, {.step = 3}), doctest::Contains("non-finite"), Error);
  // without checkpoints the end of the loop still checks
  BnRun b;
  for (auto& [name, t] : b.net->named_buffers())
    if (name == "bn1.running_mean") t.fill_(NAN);
  TrainOutcome nb = train_loop(*b.net, *b.loader, *b.opt, 0, {.total_steps = 1});
  CHECK_FALSE(nb.finished);
  CHECK(nb.message.find("bn1.running_mean") != std::string::npos);
  // the checkpoint kept is the good one; a file holding inf (written around the guard) is refused
  BnRun c(9);
  CHECK(load_checkpoint(ck, *c.net, *c.opt).step == 2);
  nn::SafeTensors st = nn::load_safetensors(ck);
  for (auto& [name, t] : st.tensors)
    if (name == "model.fc.bias") t = full(t.shape(), INFINITY);
  st.metadata.erase("crc32");
  nn::save_safetensors(ck, st.tensors, st.metadata);
  CHECK_THROWS_WITH_AS(load_checkpoint(ck, *c.net, *c.opt),
                       doctest::Contains("model.fc.bias' holds a non-finite value"), Error);
  std::remove(ck.c_str());
}

TEST_CASE("checkpoints: damaged data or metadata is refused naming what is wrong; old files load with a warning") {
  const std::string ck = temp_path("flatmin_test_damaged.safetensors");
  BnRun a;
  REQUIRE(train_loop(*a.net, *a.loader, *a.opt, 0, {.total_steps = 3, .checkpoint = ck}).finished);
  const std::string good = read_text(ck);
  BnRun b(5);
  REQUIRE(load_checkpoint(ck, *b.net, *b.opt).step == 3);
  uint64_t header = 0;
  std::memcpy(&header, good.data(), 8);
  const size_t data_at = 8 + header;
  SUBCASE("one flipped bit in the tensor data") {
    std::string bad = good;
    bad[data_at + (good.size() - data_at) / 2] ^= 0x10;
    write_text(ck, bad);
    CHECK_THROWS_WITH_AS(load_checkpoint(ck, *b.net, *b.opt), doctest::Contains("the checksum of tensor '"), Error);
  }
  SUBCASE("a block of zeros in the tensor data") {
    std::string bad = good;
    for (size_t i = data_at; i < data_at + 256; ++i) bad[i] = 0;
    write_text(ck, bad);
    CHECK_THROWS_WITH_AS(load_checkpoint(ck, *b.net, *b.opt), doctest::Contains("damaged checkpoint"), Error);
  }
  SUBCASE("the step changed in the metadata (same length, so the file still parses)") {
    std::string bad = good;
    const size_t at = bad.find("\\\"step\\\":3");
    REQUIRE(at != std::string::npos);
    bad[at + 9] = '9';
    write_text(ck, bad);
    CHECK_THROWS_WITH_AS(load_checkpoint(ck, *b.net, *b.opt), doctest::Contains("the checksum of the state metadata"),
                         Error);
  }
  SUBCASE("old checkpoints (no checksums): load with a warning, fields still range-checked") {
    nn::SafeTensors st = nn::load_safetensors(ck);
    st.metadata.erase("crc32");
    nn::save_safetensors(ck, st.tensors, st.metadata);
    CHECK(load_checkpoint(ck, *b.net, *b.opt).step == 3);
    for (const char* field : {"\"step\":-5", "\"epoch\":-1", "\"position\":-2"}) {
      INFO(field);
      nlohmann::json meta = nlohmann::json::parse(st.metadata.at("state"));
      const std::string f = field;
      const std::string key = f.substr(1, f.find('"', 1) - 1);
      const int64_t v = std::stoll(f.substr(f.find(':') + 1));
      if (key == "step")
        meta["step"] = v;
      else
        meta["loader"][key] = v;
      nn::SafeTensors damaged = st;
      damaged.metadata["state"] = meta.dump();
      nn::save_safetensors(ck, damaged.tensors, damaged.metadata);
      CHECK_THROWS_WITH_AS(load_checkpoint(ck, *b.net, *b.opt), doctest::Contains("outside [0, "), Error);
    }
    nlohmann::json meta = nlohmann::json::parse(st.metadata.at("state"));
    meta["optim_integers"]["steps"] = uint64_t(1) << 62;
    meta["optim_reals"]["lr"] = "nan";
    st.metadata["state"] = meta.dump();
    nn::save_safetensors(ck, st.tensors, st.metadata);
    CHECK_THROWS_AS(load_checkpoint(ck, *b.net, *b.opt), Error);
  }
  std::remove(ck.c_str());
}

TEST_CASE("output paths: a missing folder, a folder as the file, a read-only file are refused up front") {
  const fs::path dir = temp_path("flatmin_test_outputs");
  fs::create_directories(dir);
  CHECK_NOTHROW(nn::check_output_path("--out", ""));
  CHECK_NOTHROW(nn::check_output_path("--out", (dir / "new.safetensors").string()));
  CHECK_FALSE(fs::exists(dir / "new.safetensors"));  // the check leaves nothing behind
  CHECK(fs::is_empty(dir));
  CHECK_THROWS_WITH_AS(nn::check_output_path("--checkpoint", (dir / "missing" / "c.safetensors").string()),
                       doctest::Contains("--checkpoint"), Error);
  CHECK_THROWS_WITH_AS(nn::check_output_path("--checkpoint", (dir / "missing" / "c.safetensors").string()),
                       doctest::Contains("does not exist"), Error);
  CHECK_THROWS_WITH_AS(nn::check_output_path("--save-model", dir.string()), doctest::Contains("is a folder"), Error);
  if (::geteuid() != 0) {  // root writes anywhere
    fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
    CHECK_THROWS_WITH_AS(nn::check_output_path("--metrics", (dir / "m.jsonl").string()),
                         doctest::Contains("cannot create"), Error);
    fs::permissions(dir, fs::perms::owner_all);
  }
  fs::remove_all(dir);
}

TEST_CASE("metrics log: rewinding to a checkpoint's step drops later rows and a torn line, keeps other phases") {
  const std::string p = temp_path("flatmin_test_metrics.jsonl");
  {
    tools::MetricsLog log(p);
    log.write({{"phase", "a"}, {"step", 5}});
    log.write({{"phase", "b"}, {"step", 10}});
    log.write({{"phase", "b"}, {"step", 20}});
    log.write({{"phase", "b"}, {"step", 30}});
  }
  std::ofstream(p, std::ios::app) << "{\"phase\": \"b\", \"st";  // a kill in the middle of a row
  {
    tools::MetricsLog log(p, {.resume = true});
    CHECK(log.rewind_to("b", 20));
    log.write({{"phase", "b"}, {"step", 30}});
  }
  CHECK(read_text(p) ==
        "{\"phase\":\"a\",\"step\":5}\n{\"phase\":\"b\",\"step\":10}\n{\"phase\":\"b\",\"step\":20}\n"
        "{\"phase\":\"b\",\"step\":30}\n");
  {
    tools::MetricsLog log(p, {.resume = true});
    CHECK_FALSE(log.rewind_to("b", 15));  // a checkpoint between two evaluations
  }
  CHECK(read_text(p) == "{\"phase\":\"a\",\"step\":5}\n{\"phase\":\"b\",\"step\":10}\n");
  {
    tools::MetricsLog fresh(p);  // a new run replaces the file
  }
  CHECK(read_text(p).empty());
  std::remove(p.c_str());
}

TEST_CASE("summaries: what was not measured is null, never 0") {
  tools::PhaseResult r;
  r.outcome.steps = 40;
  nlohmann::json j = tools::measured_json(r, true);
  for (const char* k : {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "trace_normalized"})
    CHECK(j[k].is_null());
  r.train = {.loss = 0.5, .accuracy = 0.75, .examples = 8};
  r.evaluated_step = 30;  // an evaluation, then a stop at step 40
  CHECK(tools::measured_json(r, false)["train_accuracy"].is_null());
  r.evaluated_step = 40;
  j = tools::measured_json(r, false);
  CHECK(j["train_accuracy"] == 0.75);
  CHECK(j["test_accuracy"].is_null());  // no test set
  CHECK_FALSE(j.contains("trace_normalized"));
}
