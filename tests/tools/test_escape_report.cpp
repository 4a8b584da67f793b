// flatmin escape's arithmetic on recorded evaluations: mean ± s.e., tr̄ at matched training
// loss, verdicts, and the claims a summary draws (values worked out by hand below).
#include <doctest/doctest.h>

#include <cmath>

#include "tools/escape_report.hpp"

using namespace flatmin::tools::escape;

namespace {
Point at(int64_t step, double loss, double trace, double test_acc = 0.4) {
  return {.step = step,
          .train_loss = loss,
          .train_accuracy = 1.0,
          .test_loss = 2.0,
          .test_accuracy = test_acc,
          .trace = trace};
}
}  // namespace

TEST_CASE("escape report: mean and standard error over seeds") {
  MeanSe m = mean_se({1.0, 2.0, 3.0, 4.0});
  CHECK(m.n == 4);
  CHECK(m.mean == doctest::Approx(2.5));
  // sample variance 5/3, s.e. sqrt(5/3 / 4)
  CHECK(m.se == doctest::Approx(std::sqrt(5.0 / 12.0)));
  MeanSe one = mean_se({7.0, NAN});
  CHECK(one.n == 1);
  CHECK(one.mean == 7.0);
  CHECK(std::isnan(one.se));
  CHECK(mean_se({}).n == 0);
}

TEST_CASE("escape report: tr̄ of the reference at the same training loss, no extrapolation") {
  // the reference's loss falls 0.04 -> 0.03 -> 0.02 while tr̄ falls 4 -> 3 -> 1
  std::vector<Point> ref = {at(0, 0.04, 4.0), at(100, 0.03, 3.0), at(200, 0.02, 1.0)};
  CHECK(trace_at_loss(ref, 0.035) == doctest::Approx(3.5));
  CHECK(trace_at_loss(ref, 0.025) == doctest::Approx(2.0));
  CHECK(trace_at_loss(ref, 0.04) == doctest::Approx(4.0));
  CHECK(std::isnan(trace_at_loss(ref, 0.015)));  // below the reference's range
  CHECK(std::isnan(trace_at_loss(ref, 0.05)));
  CHECK(std::isnan(trace_at_loss(ref, NAN)));
}

TEST_CASE("escape report: verdicts need a difference beyond two standard errors") {
  CHECK(verdict({-1.0, 0.1, 3}, -1) == "supports");
  CHECK(verdict({1.0, 0.1, 3}, -1) == "contradicts");
  CHECK(verdict({-1.0, 0.6, 3}, -1) == "not resolved");
  CHECK(verdict({-1.0, NAN, 1}, -1) == "direction agrees (one seed)");
  CHECK(verdict({0.5, 0.1, 3}, 0) == "changed");
  CHECK(verdict({}, 1) == "no data");
}

TEST_CASE("escape report: summary of two seeds, matched loss and the claims drawn") {
  Experiment e;
  e.loss = "ce";
  e.start = at(0, 0.04, 4.0, 0.40);
  e.batch_size = 128;
  e.reference = "sgd+";
  e.arms = {{.label = "sgd", .kind = "sgd"},
            {.label = "sgd+", .kind = "sgd"},
            {.label = "rs", .kind = "rs", .rho = 2},
            {.label = "sa128", .kind = "sa", .b = 128, .rho = 0.1}};
  for (uint64_t s = 0; s < 2; ++s) {
    const double d = 0.01 * s;  // the second seed is a little different
    e.runs.push_back({"sgd", s, {e.start, at(100, 0.039, 3.9 + d, 0.40)}});
    e.runs.push_back({"sgd+", s, {e.start, at(100, 0.02, 2.0 + d, 0.41)}});
    e.runs.push_back({"rs", s, {e.start, at(100, 0.038, 3.8 + d, 0.40)}});
    e.runs.push_back({"sa128", s, {e.start, at(100, 0.03, 2.4 + 2 * d, 0.42 + d)}});
  }
  nlohmann::json sum = summarize(e);
  const nlohmann::json& sa_final = sum["arms"]["sa128"]["curve"].back();
  CHECK(sa_final["step"] == 100);
  CHECK(sa_final["trace_normalized"]["mean"].get<double>() == doctest::Approx(2.41));
  CHECK(sa_final["trace_normalized"]["n"] == 2);
  // the reference at loss 0.03: halfway from (0.04, 4) to (0.02, 2.0 + d): 3.0 (seed 0), 3.005 (seed 1)
  CHECK(sa_final["matched_trace"]["mean"].get<double>() == doctest::Approx(0.5 * (2.4 / 3.0 + 2.42 / 3.005)));
  CHECK(sa_final["trace_over_start"]["mean"].get<double>() == doctest::Approx(2.41 / 4.0));
  bool saw_rs = false, saw_step = false, saw_perturbation = false;
  for (const auto& c : sum["claims"]) {
    if (c["claim"] == "SA escapes better than RS") {
      saw_rs = true;
      CHECK(c["trace"]["mean"].get<double>() == doctest::Approx(2.41 - 3.805));
      CHECK(c["trace_verdict"] == "supports");  // differences -1.4 and -1.39: s.e. 0.005
    }
    if (c["claim"] == "SA is more than a larger step") {
      saw_step = true;
      CHECK(c["b"] == "sgd+");
      CHECK(c["trace_verdict"] == "contradicts");  // SA's tr̄ is higher than SGD(η + η')'s
    }
    if (c["claim"] == "the perturbation helps") {
      saw_perturbation = true;
      CHECK(c["b"] == "sgd");  // SA(ρ = 0) at b = batch size is SGD(η)
    }
  }
  CHECK(saw_rs);
  CHECK(saw_step);
  CHECK(saw_perturbation);
  CHECK(sum["min_train_accuracy"]["sa128"] == 1.0);
  const std::string md = render_report({{"losses", {sum}}, {"plots", false}}, {{"command", "flatmin escape"}}, true);
  CHECK(md.find("| sa128 | 100 | 2 |") != std::string::npos);
  CHECK(md.find("SA escapes better than RS") != std::string::npos);
  CHECK(curve_rows(sum).size() == 8);  // 4 arms x 2 steps
}

TEST_CASE("escape report: tr̄ is compared only between minima (the start's criterion)") {
  Experiment e;
  e.loss = "mse";
  e.start = at(0, 0.006, 4.0, 0.50);
  e.batch_size = 64;
  e.reference = "sgd+";
  e.minimum_loss = 0.01;
  e.arms = {{.label = "sgd", .kind = "sgd"},
            {.label = "rs", .kind = "rs", .rho = 2},
            {.label = "sa64", .kind = "sa", .b = 64, .rho = 0.1}};
  for (uint64_t s = 0; s < 2; ++s) {
    const double d = 0.01 * s;
    e.runs.push_back({"sgd", s, {e.start, at(100, 0.005, 4.0 + d, 0.50)}});
    e.runs.push_back({"rs", s, {e.start, at(100, 0.009, 3.0 + d, 0.50)}});  // still a minimum: comparable
    Point off = at(100, 0.7, 1.0 + d, 0.30);                                // loss 0.7 > 0.01: left the minima set
    e.runs.push_back({"sa64", s, {e.start, off}});
  }
  nlohmann::json sum = summarize(e);
  bool saw_perturbation = false, saw_rs = false;
  for (const auto& c : sum["claims"]) {
    if (c["claim"] == "the perturbation helps") {  // sa64 vs sgd: sa64 is off the minima set
      saw_perturbation = true;
      CHECK(c["trace_verdict"].get<std::string>().rfind("not comparable: sa64 left the minima set", 0) == 0);
      CHECK(c["test_accuracy_verdict"] == "contradicts");  // 30% vs 50%: still compared
    }
    if (c["claim"] == "SA escapes better than RS") {
      saw_rs = true;
      CHECK(c["trace_verdict"].get<std::string>().rfind("not comparable: sa64", 0) == 0);
    }
  }
  CHECK(saw_perturbation);
  CHECK(saw_rs);
}
