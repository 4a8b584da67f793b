// The training loop: a resumed run equals an uninterrupted one bit for bit (model,
// optimizer, generator and loader state all in the checkpoint), a non-finite loss stops
// the run with the last good checkpoint kept, bad hyperparameters are refused up front.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "datasets/synthetic.hpp"
#include "nn/layers.hpp"
#include "nn/safetensors.hpp"
#include "train/training.hpp"

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
    auto oa =
        make_optimizer(config(name), netA->parameters(), classifier_batch_closure(*netA, ds, DType::f32), ds.size());
    REQUIRE(train_loop(*netA, la, *oa, 0, {.total_steps = 13}).finished);
    // interrupted after 7 steps (checkpoint), resumed with fresh objects
    {
      auto netB = tiny_net(4);
      data::Loader lb(ds, loader_options());
      auto ob =
          make_optimizer(config(name), netB->parameters(), classifier_batch_closure(*netB, ds, DType::f32), ds.size());
      REQUIRE(train_loop(*netB, lb, *ob, 0, {.total_steps = 7, .checkpoint = ck}).finished);
    }
    auto netC = tiny_net(99);  // different initial values: everything must come from the file
    data::Loader lc(ds, loader_options());
    auto oc =
        make_optimizer(config(name), netC->parameters(), classifier_batch_closure(*netC, ds, DType::f32), ds.size());
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
  TrainOutcome out = train_loop(net, loader, *opt, 3,
                                {.total_steps = 50, .checkpoint_every = 1, .checkpoint = ck, .known_checkpoint = 3});
  CHECK_FALSE(out.finished);
  CHECK(out.stopped_non_finite);
  INFO(out.message);
  CHECK(out.message.find("last good checkpoint (step " + std::to_string(out.last_checkpoint) + ")") !=
        std::string::npos);
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

// ---- SA's mini-batch within the step's batch (docs/algorithms.md §4) ----
namespace {
// 20 steps of `c` from tiny_net(4) on 40 blobs with batches of 8 (5 per epoch).
std::vector<float> after_20_steps(const OptimizerConfig& c, const data::Dataset& ds, int64_t batch_size = 8) {
  auto net = tiny_net(4);
  data::LoaderOptions lo = loader_options();
  lo.batch_size = batch_size;
  data::Loader loader(ds, lo);
  auto opt = make_optimizer(c, net->parameters(), classifier_batch_closure(*net, ds, DType::f32), ds.size());
  REQUIRE(train_loop(*net, loader, *opt, 0, {.total_steps = 20}).finished);
  return values(*net);
}
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}
OptimizerConfig perturbed(const std::string& name, int64_t b, SaSampling sampling, double rho = 0.0) {
  OptimizerConfig c;
  c.name = name;
  c.perturb = {.lr = 0.1, .lr_perturb = 0.05, .rho = rho, .seed = 11, .batch = b, .sampling = sampling};
  return c;
}
}  // namespace

TEST_CASE("training: SA (rho 0, b = batch size, step sampling) and RS (rho 0) are SGD(lr) to rounding") {
  data::Dataset ds = data::two_blobs({.n = 40, .d = 2, .seed = 1});
  OptimizerConfig sgd;
  sgd.sgd = {.lr = 0.1};
  const std::vector<float> ref = after_20_steps(sgd, ds);
  CHECK(max_abs_diff(after_20_steps(perturbed("sa", 8, SaSampling::step_batch), ds), ref) < 1e-5);
  CHECK(max_abs_diff(after_20_steps(perturbed("rs", 1, SaSampling::step_batch), ds), ref) < 1e-5);
  // the comparison is sensitive: SA at rho 0 with s from 2 of the 8 examples adds η' Proj⊥_g s
  CHECK(max_abs_diff(after_20_steps(perturbed("sa", 2, SaSampling::step_batch), ds), ref) > 1e-3);
}

TEST_CASE("training: SA with step sampling draws its b examples within each step's batch") {
  data::Dataset ds = data::two_blobs({.n = 40, .d = 2, .seed = 1});
  auto net = tiny_net(4);
  data::Loader loader(ds, loader_options());
  auto opt = make_optimizer(perturbed("sa", 3, SaSampling::step_batch, 0.05), net->parameters(),
                            classifier_batch_closure(*net, ds, DType::f32), ds.size());
  auto& sa = dynamic_cast<SharpnessAwarePerturbation&>(*opt);
  CHECK_THROWS_WITH_AS(sa.step(classifier_closure(*net, ds.images, ds.labels)), doctest::Contains("set_step_examples"),
                       Error);
  for (int step = 0; step < 10; ++step) {
    data::Batch b = loader.next_batch();
    sa.set_step_examples(b.indices);
    sa.step(classifier_closure(*net, b.images, b.labels));
    const std::vector<int64_t>& i = sa.last().examples;
    CHECK(i.size() == 3);
    std::set<int64_t> distinct(i.begin(), i.end());
    CHECK(distinct.size() == 3);
    for (int64_t k : i) CHECK(std::find(b.indices.begin(), b.indices.end(), k) != b.indices.end());
  }
}

TEST_CASE("training: SA with all-examples sampling (Algorithm 2 as written) takes g over the whole training set") {
  // rho 0 and η' 0: the step is −η g, so with g the full-batch gradient it is gradient descent.
  data::Dataset ds = data::two_blobs({.n = 40, .d = 2, .seed = 1});
  OptimizerConfig gd;
  gd.sgd = {.lr = 0.1};
  OptimizerConfig sa = perturbed("sa", 5, SaSampling::all_examples);
  sa.perturb.lr_perturb = 0.0;
  CHECK(max_abs_diff(after_20_steps(sa, ds, 8), after_20_steps(gd, ds, 40)) < 1e-5);
}

TEST_CASE("training: SA with b larger than the batch is refused before the first step") {
  data::Dataset ds = data::two_blobs({.n = 40, .d = 2, .seed = 1});
  auto net = tiny_net(4);
  const std::vector<float> before = values(*net);
  data::Loader loader(ds, loader_options());
  auto opt = make_optimizer(perturbed("sa", 9, SaSampling::step_batch, 0.05), net->parameters(),
                            classifier_batch_closure(*net, ds, DType::f32), ds.size());
  CHECK_THROWS_WITH_AS(train_loop(*net, loader, *opt, 0, {.total_steps = 5}),
                       doctest::Contains("exceeds the batch size 8"), Error);
  CHECK(values(*net) == before);
  CHECK(loader.state().position == 0);
}

// ---- the squared-error loss on one-hot targets ----
TEST_CASE("training: the mse loss on one-hot labels, its value and derivatives at orders 1-3") {
  const TensorOptions f64{DType::f64};
  Tensor logits = from_vector(std::vector<double>{1, 2, 0, 0, 0.5, -1}, {3, 2}, f64);
  Tensor labels = from_ints({1, 0, 1}, {3});
  // by hand: (1² + 1²) = 2, (1² + 0²) = 1, (0.5² + 2²) = 4.25; mean 7.25 / 3
  CHECK(classifier_loss(logits, labels, ClassifierLoss::mse).item() == doctest::Approx(7.25 / 3).epsilon(1e-14));
  CHECK(classifier_loss(logits, labels, ClassifierLoss::mse, Reduction::sum).item() ==
        doctest::Approx(7.25).epsilon(1e-14));
  CHECK(classifier_loss(from_vector(std::vector<double>{0, 1, 1, 0}, {2, 2}, f64), from_ints({1, 0}, {2}),
                        ClassifierLoss::mse)
            .item() == 0.0);  // a true minimum at the labels
  CHECK(parse_classifier_loss("mse") == ClassifierLoss::mse);
  CHECK_THROWS_WITH_AS(parse_classifier_loss("hinge"), doctest::Contains("unknown loss 'hinge'"), Error);
  // central differences of value, gradient and Hessian-vector product, in float64
  Generator g(3);
  Tensor x = g.uniform({3, 4}, f64, -1, 1), u = g.uniform({3, 4}, f64, -1, 1), v = g.uniform({3, 4}, f64, -1, 1);
  Tensor y = from_ints({2, 0, 3}, {3});
  ScalarFn1 f = [&](const Tensor& z) { return classifier_loss(z, y, ClassifierLoss::mse); };
  const double h = 1e-4;
  auto at = [&](double t) { return add(x, mul(full({3, 4}, t, f64), u)); };
  auto dot1 = [](const Tensor& a, const Tensor& b) { return sum(mul(a, b)).item(); };
  const double fd1 = (f(at(h)).item() - f(at(-h)).item()) / (2 * h);
  CHECK(dot1(gradient(f, x), u) == doctest::Approx(fd1).epsilon(1e-7));
  const double fd2 = (dot1(gradient(f, at(h)), v) - dot1(gradient(f, at(-h)), v)) / (2 * h);
  CHECK(dot1(hvp(f, x, v), u) == doctest::Approx(fd2).epsilon(1e-7));
  CHECK(dot1(hvp(f, x, v), u) == doctest::Approx(2.0 / 3 * dot1(u, v)).epsilon(1e-12));  // H = (2/N) I
  const double fd3 = (dot1(hvp(f, at(h), v), v) - dot1(hvp(f, at(-h), v), v)) / (2 * h);
  CHECK(std::abs(dot1(third(f, x, u, v), v)) < 1e-10);  // a quadratic: ∇³ = 0
  CHECK(std::abs(fd3) < 1e-8);
}
