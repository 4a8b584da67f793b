// What `flatmin escape` computes from its evaluations, apart from running them: mean ± standard
// error over seeds, tr̄ at matched training loss, the verdict of each claim of the paper's
// Section 5 (docs/algorithms.md §7) as the data give it, and report.md. Pure functions of the
// recorded evaluations, so the numbers in a results folder can be recomputed from its
// metrics.jsonl and checked by tests.
#pragma once
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace flatmin::tools::escape {

// One evaluation of one arm and seed (step 0: the shared starting point).
struct Point {
  int64_t step = 0;
  double train_loss = 0, train_accuracy = 0, test_loss = 0, test_accuracy = 0;
  double trace = 0, trace_se = 0;  // tr̄ and Hutchinson's standard error of it
};

// One method with its hyperparameters, as run.
struct Arm {
  std::string label;  // e.g. "sa16", "sa16-rho0", "sgd+"
  std::string kind;   // sgd | rs | sa | sam
  int64_t b = 0;      // SA's perturbation batch (0 otherwise)
  double lr = 0, lr_perturb = 0, rho = 0;
  std::string role;  // what the arm is for (one line)
  nlohmann::json json() const;
};

struct Run {
  std::string arm;
  uint64_t seed = 0;          // the seed of its batch order and perturbation draws
  std::vector<Point> points;  // in step order, points[0] the start
};

struct MeanSe {
  double mean = NAN, se = NAN;  // se: sample standard deviation / √n (NaN for n < 2)
  int n = 0;
};
MeanSe mean_se(const std::vector<double>& values);  // non-finite values are left out

// The reference's tr̄ at training loss `loss`, linear in the loss between the two of its
// evaluations whose losses bracket it (the first such pair in step order); NaN outside the
// range of losses the reference went through: no extrapolation.
double trace_at_loss(const std::vector<Point>& reference, double loss);
// The one criterion of a global minimum of the training set, for the start and for the arms'
// final points: 100% train accuracy and train loss <= minimum_loss (--start-loss).
inline bool at_global_minimum(double train_accuracy, double train_loss, double minimum_loss) {
  return train_accuracy >= 1.0 && train_loss <= minimum_loss;
}

// Everything a run of one loss produced; `reference` names the arm of tr̄ at matched loss.
struct Experiment {
  std::string loss;  // ce | mse
  Point start;
  int64_t batch_size = 0;
  std::vector<Arm> arms;
  std::vector<Run> runs;                // finished (arm, seed) pairs
  std::vector<uint64_t> seeds() const;  // the distinct seeds of `runs`, ascending
  std::string reference;                // arm label
  // A final point is at a global minimum when it meets the start's criterion: 100% train
  // accuracy and train loss <= this (--start-loss). tr̄ compares minima; an arm that ended
  // elsewhere makes its tr̄ comparisons "not comparable" (test accuracy is still compared).
  double minimum_loss = INFINITY;
};

// Per arm and evaluation step, mean ± s.e. over seeds of every quantity (and of tr̄ at
// matched loss, tr̄ / reference's tr̄ at the same training loss, paired by seed); the final
// table; the comparisons that decide each claim. JSON, the body of summary.json.
nlohmann::json summarize(const Experiment& e);
// report.md from a summarize() result and the run's settings.
std::string render_report(const nlohmann::json& summary, const nlohmann::json& settings, bool complete);
// curves.jsonl rows for `flatmin plot`: per arm and step, means with "<key>_se" beside them.
std::vector<nlohmann::json> curve_rows(const nlohmann::json& summary);

// How a difference (a − b, paired by seed) reads against a claimed direction: "supports" or
// "contradicts" when |mean| > 2 s.e., otherwise "not resolved"; with one seed "direction only".
std::string verdict(const MeanSe& diff, int claimed_sign);

}  // namespace flatmin::tools::escape
