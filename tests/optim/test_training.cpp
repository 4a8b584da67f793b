// The training loop: a resumed run equals an uninterrupted one bit for bit (model,
// optimizer, generator and loader state all in the checkpoint), a non-finite loss stops
// the run with the last good checkpoint kept, bad hyperparameters are refused up front.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "datasets/synthetic.hpp"
#include "nn/layers.hpp"
#include "nn/safetensors.hpp"
#include "optim/training.hpp"

using namespace flatmin;
using namespace flatmin::optim;

namespace {
std::unique_ptr<nn::MLP> tiny_net(uint64_t seed) {
  Generator g(seed);
  return std::make_unique<nn::MLP>(std::vector<int64_t>{2, 8, 2}, nn::Act::tanh, g);
}
data::LoaderOptions loader_options() { return {.batch_size = 8, .shuffle = true, .seed = 3, .prefetch = 2}; }
std::string temp_path(const char* name) { return (std::filesystem::temp_directory_path() / name).string(); }

std::vector<float> values(const nn::Module& m) {
  std::vector<float> v;
  for (auto& [name, t] : m.state_dict())
    if (is_floating(t.dtype()))
      for (double x : t.to_vector()) v.push_back(float(x));
  return v;
}

OptimizerConfig config(const std::string& name) {
  OptimizerConfig c;
  c.name = name;
  c.sgd = {.lr = 0.1, .momentum = 0.9};
  c.sam = {.rho = 0.05};
  c.perturb = {.lr = 0.1, .rho = 0.05, .seed = 11, .batch = 2};
  return c;
}
}  // namespace

TEST_CASE("training: a resumed run equals an uninterrupted one bit for bit") {
  data::Dataset ds = data::two_blobs({.n = 40, .d = 2, .seed = 1});
  for (const char* name : {"sgd", "sam", "rs", "sa"}) {
    INFO("optimizer " << name);
    const std::string ck = temp_path("flatmin_test_resume.safetensors");
    // uninterrupted: 13 steps (crosses an epoch boundary: 5 batches per epoch)
    auto netA = tiny_net(4);
    data::Loader la(ds, loader_options());
    auto oa = make_optimizer(config(name), netA->parameters(), classifier_batch_closure(*netA, ds, DType::f32), ds.size());
    REQUIRE(train_loop(*netA, la, *oa, 0, {.total_steps = 13}).finished);
    // interrupted after 7 steps (checkpoint), resumed with fresh objects
    {
      auto netB = tiny_net(4);
      data::Loader lb(ds, loader_options());
      auto ob = make_optimizer(config(name), netB->parameters(), classifier_batch_closure(*netB, ds, DType::f32), ds.size());
      REQUIRE(train_loop(*netB, lb, *ob, 0, {.total_steps = 7, .checkpoint = ck}).finished);
    }
    auto netC = tiny_net(99);  // different initial values: everything must come from the file
    data::Loader lc(ds, loader_options());
    auto oc = make_optimizer(config(name), netC->parameters(), classifier_batch_closure(*netC, ds, DType::f32), ds.size());
    CheckpointInfo info = load_checkpoint(ck, *netC, *oc);
    CHECK(info.step == 7);
    lc.restore(info.loader);
    TrainOutcome out = train_loop(*netC, lc, *oc, info.step, {.total_steps = 13});
    CHECK(out.finished);
    CHECK(out.steps == 13);
    CHECK(values(*netC) == values(*netA));
    CHECK(oc->steps() == oa->steps());
    std::remove(ck.c_str());
  }
}

TEST_CASE("training: a non-finite loss stops the run and keeps the last good checkpoint") {
  data::Dataset ds = data::two_blobs({.n = 40, .d = 2, .separation = 40, .seed = 2});
  const std::string ck = temp_path("flatmin_test_nan.safetensors");
  Generator g(5);
  nn::MLP net({2, 8, 2}, nn::Act::relu, g);
  data::Loader loader(ds, loader_options());
  OptimizerConfig c;
  c.sgd = {.lr = 0.01};
  auto opt = make_optimizer(c, net.parameters());
  REQUIRE(train_loop(net, loader, *opt, 0, {.total_steps = 3, .checkpoint = ck}).finished);
  set_learning_rate(*opt, 1e30);  // the next steps overflow
  TrainOutcome out =
      train_loop(net, loader, *opt, 3, {.total_steps = 50, .checkpoint_every = 1, .checkpoint = ck, .known_checkpoint = 3});
  CHECK_FALSE(out.finished);
  CHECK(out.stopped_non_finite);
  INFO(out.message);
  CHECK(out.message.find("last good checkpoint (step " + std::to_string(out.last_checkpoint) + ")") != std::string::npos);
  CHECK(out.last_checkpoint >= 3);
  Generator g2(6);
  nn::MLP back({2, 8, 2}, nn::Act::relu, g2);
  auto o2 = make_optimizer(c, back.parameters());
  CheckpointInfo info = load_checkpoint(ck, back, *o2);
  CHECK(info.step == out.last_checkpoint);
  for (float v : values(back)) CHECK(std::isfinite(v));
  std::remove(ck.c_str());
}

TEST_CASE("training: bad hyperparameters are refused before any work") {
  Generator g(1);
  nn::MLP net({2, 4, 2}, nn::Act::tanh, g);
  OptimizerConfig c;
  c.name = "adam";
  CHECK_THROWS_AS(validate(c), Error);
  c.name = "sgd";
  c.sgd.lr = -0.1;
  CHECK_THROWS_AS(make_optimizer(c, net.parameters()), Error);
  c = {};
  c.name = "sam";
  c.sam.rho = -1;
  CHECK_THROWS_AS(validate(c), Error);
  c = {};
  c.name = "sa";
  c.perturb.batch = 0;
  CHECK_THROWS_AS(validate(c), Error);
  c.perturb.batch = 64;
  data::Dataset ds = data::two_blobs({.n = 10});
  CHECK_THROWS_AS(make_optimizer(c, net.parameters(), classifier_batch_closure(net, ds, DType::f32), ds.size()), Error);
}

TEST_CASE("training: a checkpoint of another kind of file is refused with its name") {
  const std::string p = temp_path("flatmin_test_not_ckpt.safetensors");
  Generator g(1);
  nn::MLP net({2, 4, 2}, nn::Act::tanh, g);
  nn::save_safetensors(net, p);
  OptimizerConfig c;
  auto opt = make_optimizer(c, net.parameters());
  CHECK_THROWS_WITH_AS(load_checkpoint(p, net, *opt), doctest::Contains("not a flatmin training checkpoint"), Error);
  std::remove(p.c_str());
}
