#include "tools/escape_report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

namespace flatmin::tools::escape {
namespace {
using nlohmann::json;

json num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }
double get(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

// The quantities recorded at each evaluation, by name (the names of metrics.jsonl).
const std::vector<std::pair<const char*, double Point::*>> kQuantities = {
    {"train_loss", &Point::train_loss},  {"train_accuracy", &Point::train_accuracy},
    {"test_loss", &Point::test_loss},    {"test_accuracy", &Point::test_accuracy},
    {"trace_normalized", &Point::trace}, {"trace_normalized_stderr", &Point::trace_se}};

json stat(const MeanSe& m) { return {{"mean", num(m.mean)}, {"se", num(m.se)}, {"n", m.n}}; }

const Run* find_run(const Experiment& e, const std::string& arm, uint64_t seed) {
  for (const Run& r : e.runs)
    if (r.arm == arm && r.seed == seed) return &r;
  return nullptr;
}
const Arm* find_arm(const Experiment& e, const std::string& label) {
  for (const Arm& a : e.arms)
    if (a.label == label) return &a;
  return nullptr;
}

// tr̄ at each point divided by the reference's at the same training loss (same seed).
std::vector<double> matched(const Experiment& e, const Run& r) {
  std::vector<double> out(r.points.size(), NAN);
  const Run* ref = find_run(e, e.reference, r.seed);
  if (!ref) return out;
  for (size_t k = 0; k < r.points.size(); ++k)
    out[k] = r.points[k].trace / trace_at_loss(ref->points, r.points[k].train_loss);
  return out;
}

// Paired final differences a − b over the seeds both finished, per quantity.
struct Diff {
  MeanSe trace, matched_trace, test_accuracy;
};
Diff final_difference(const Experiment& e, const std::string& a, const std::string& b) {
  std::vector<double> dt, dm, da;
  for (uint64_t s : e.seeds()) {
    const Run *ra = find_run(e, a, s), *rb = find_run(e, b, s);
    if (!ra || !rb || ra->points.empty() || rb->points.empty()) continue;
    dt.push_back(ra->points.back().trace - rb->points.back().trace);
    dm.push_back(matched(e, *ra).back() - matched(e, *rb).back());
    da.push_back(ra->points.back().test_accuracy - rb->points.back().test_accuracy);
  }
  return {mean_se(dt), mean_se(dm), mean_se(da)};
}

// Empty when every seed of the arm ended at a global minimum (Experiment::minimum_loss);
// otherwise why not, for the verdict.
std::string left_minima(const Experiment& e, const std::string& label) {
  for (uint64_t s : e.seeds())
    if (const Run* r = find_run(e, label, s); r && !r->points.empty()) {
      const Point& p = r->points.back();
      if (at_global_minimum(p.train_accuracy, p.train_loss, e.minimum_loss)) continue;
      char buf[160];
      std::snprintf(buf, sizeof buf, "not comparable: %s left the minima set (seed %llu: train acc %.4g, loss %.3g)",
                    label.c_str(), (unsigned long long)s, p.train_accuracy, p.train_loss);
      return buf;
    }
  return "";
}

json comparison(const Experiment& e, const std::string& claim, const std::string& a, const std::string& b,
                const std::string& how) {
  Diff d = final_difference(e, a, b);
  std::string off = left_minima(e, a);
  if (off.empty()) off = left_minima(e, b);
  return {{"claim", claim},
          {"a", a},
          {"b", b},
          {"how", how},
          {"trace", stat(d.trace)},
          {"trace_verdict", off.empty() ? verdict(d.trace, -1) : off},
          {"matched_trace", stat(d.matched_trace)},
          {"matched_trace_verdict", off.empty() ? verdict(d.matched_trace, -1) : "not comparable"},
          {"test_accuracy", stat(d.test_accuracy)},
          {"test_accuracy_verdict", verdict(d.test_accuracy, +1)}};
}

std::string pm(const json& s, double scale = 1, int digits = 4) {
  const double m = get(s, "mean"), se = get(s, "se");
  if (!std::isfinite(m)) return "n/a";
  char buf[96];
  if (std::isfinite(se))
    std::snprintf(buf, sizeof buf, "%.*g ± %.2g", digits, m * scale, se * scale);
  else
    std::snprintf(buf, sizeof buf, "%.*g", digits, m * scale);
  return buf;
}
}  // namespace

std::vector<uint64_t> Experiment::seeds() const {
  std::set<uint64_t> s;
  for (const Run& r : runs) s.insert(r.seed);
  return {s.begin(), s.end()};
}

json Arm::json() const {
  return {{"label", label},           {"kind", kind}, {"b", b},      {"lr", lr},
          {"lr_perturb", lr_perturb}, {"rho", rho},   {"role", role}};
}

MeanSe mean_se(const std::vector<double>& values) {
  MeanSe m;
  double sum = 0;
  for (double v : values)
    if (std::isfinite(v)) sum += v, ++m.n;
  if (m.n == 0) return m;
  m.mean = sum / m.n;
  if (m.n < 2) return m;
  double ss = 0;
  for (double v : values)
    if (std::isfinite(v)) ss += (v - m.mean) * (v - m.mean);
  m.se = std::sqrt(ss / (m.n - 1) / m.n);
  return m;
}

double trace_at_loss(const std::vector<Point>& reference, double loss) {
  if (!std::isfinite(loss)) return NAN;
  for (size_t k = 0; k + 1 < reference.size(); ++k) {
    const Point &p = reference[k], &q = reference[k + 1];
    const double lo = std::min(p.train_loss, q.train_loss), hi = std::max(p.train_loss, q.train_loss);
    if (loss < lo || loss > hi) continue;
    if (hi == lo) return 0.5 * (p.trace + q.trace);
    const double t = (loss - p.train_loss) / (q.train_loss - p.train_loss);
    return p.trace + t * (q.trace - p.trace);
  }
  if (reference.size() == 1 && reference[0].train_loss == loss) return reference[0].trace;
  return NAN;
}

std::string verdict(const MeanSe& diff, int claimed_sign) {
  if (diff.n == 0 || !std::isfinite(diff.mean)) return "no data";
  if (diff.n < 2) {
    if (claimed_sign == 0) return "one seed";
    return diff.mean * claimed_sign > 0 ? "direction agrees (one seed)" : "direction disagrees (one seed)";
  }
  const bool resolved = std::abs(diff.mean) > 2 * diff.se;
  if (claimed_sign == 0) return resolved ? "changed" : "no resolved change";
  if (!resolved) return "not resolved";
  return diff.mean * claimed_sign > 0 ? "supports" : "contradicts";
}

json summarize(const Experiment& e) {
  json arms = json::object(), final_rows = json::array(), order = json::array();
  for (const Arm& a : e.arms) {
    order.push_back(a.label);
    std::vector<const Run*> runs;
    for (const Run& r : e.runs)
      if (r.arm == a.label) runs.push_back(&r);
    std::set<int64_t> steps;
    for (const Run* r : runs)
      for (const Point& p : r->points) steps.insert(p.step);
    json curve = json::array();
    double min_train_acc = INFINITY;
    for (int64_t step : steps) {
      json row = {{"step", step}};
      for (auto& [key, member] : kQuantities) {
        std::vector<double> v;
        for (const Run* r : runs)
          for (const Point& p : r->points)
            if (p.step == step) v.push_back(p.*member);
        row[key] = stat(mean_se(v));
      }
      std::vector<double> m, ratio;
      for (const Run* r : runs) {
        std::vector<double> mr = matched(e, *r);
        for (size_t k = 0; k < r->points.size(); ++k)
          if (r->points[k].step == step) {
            m.push_back(mr[k]);
            ratio.push_back(r->points[k].trace / e.start.trace);
            min_train_acc = std::min(min_train_acc, r->points[k].train_accuracy);
          }
      }
      row["matched_trace"] = stat(mean_se(m));
      row["trace_over_start"] = stat(mean_se(ratio));
      curve.push_back(row);
    }
    arms[a.label] = {
        {"arm", a.json()}, {"seeds_done", runs.size()}, {"curve", curve}, {"min_train_accuracy", num(min_train_acc)}};
    if (!curve.empty()) {
      json last = curve.back();
      last["arm"] = a.label;
      last["min_train_accuracy"] = num(min_train_acc);
      final_rows.push_back(last);
    }
  }

  // The claims of Section 5, each decided by paired final differences (a − b) over seeds.
  json claims = json::array();
  auto have = [&](const std::string& l) { return find_arm(e, l) != nullptr; };
  const std::string full = "sa" + std::to_string(e.batch_size);  // SA with i = the step's batch
  for (const Arm& a : e.arms) {
    if (a.kind != "sa" || a.rho == 0) continue;
    const bool plain = a.label.find('-') == std::string::npos;
    if (have(a.label + "-rho0"))
      claims.push_back(
          comparison(e, "the perturbation helps", a.label, a.label + "-rho0", "SA(ρ) vs SA(ρ = 0), same η, η', b"));
    else if (plain && a.b >= e.batch_size && have("sgd"))
      claims.push_back(comparison(e, "the perturbation helps", a.label, "sgd",
                                  "SA(ρ) vs SGD(η), which SA(ρ = 0) at b = batch size is (tested)"));
  }
  if (have(full) && have("rs"))
    claims.push_back(comparison(e, "SA escapes better than RS", full, "rs", "final values"));
  if (have(full) && have("sgd+"))
    claims.push_back(comparison(e, "SA is more than a larger step", full, "sgd+", "SA vs SGD at η + η'"));
  for (const Arm& a : e.arms) {
    if (a.kind != "sa" || a.rho == 0 || a.b >= e.batch_size) continue;
    const bool drift = a.label.size() > 6 && a.label.compare(a.label.size() - 6, 6, "-drift") == 0;
    if (!drift && a.label.find('-') == std::string::npos && have(full))
      claims.push_back(comparison(e, "smaller b escapes faster", a.label, full, "equal ρ and η'"));
    if (drift && have(full + "-drift"))
      claims.push_back(comparison(e, "smaller b escapes faster", a.label, full + "-drift", "equal ρ²η' (smaller η')"));
  }
  // SGD at the small η stays put: its change from the start.
  if (have("sgd")) {
    std::vector<double> dt, da;
    for (uint64_t s : e.seeds())
      if (const Run* r = find_run(e, "sgd", s); r && !r->points.empty()) {
        dt.push_back(r->points.back().trace - e.start.trace);
        da.push_back(r->points.back().test_accuracy - e.start.test_accuracy);
      }
    MeanSe t = mean_se(dt), a = mean_se(da);
    claims.push_back({{"claim", "SGD at small η does not escape"},
                      {"a", "sgd"},
                      {"b", "start"},
                      {"how", "change from the start"},
                      {"trace", stat(t)},
                      {"trace_verdict", verdict(t, 0)},
                      {"matched_trace", stat({})},
                      {"matched_trace_verdict", "n/a"},
                      {"test_accuracy", stat(a)},
                      {"test_accuracy_verdict", verdict(a, 0)}});
  }
  // Training accuracy stays 100%: the lowest of any evaluation of any seed, per arm.
  json kept = json::object();
  for (const Arm& a : e.arms)
    if (auto v = arms[a.label]["min_train_accuracy"]; v.is_number()) kept[a.label] = v;

  return {{"loss", e.loss},
          {"start",
           {{"train_loss", e.start.train_loss},
            {"train_accuracy", e.start.train_accuracy},
            {"test_loss", e.start.test_loss},
            {"test_accuracy", e.start.test_accuracy},
            {"trace_normalized", e.start.trace},
            {"trace_normalized_stderr", e.start.trace_se}}},
          {"reference", e.reference},
          {"seeds", e.seeds()},
          {"batch_size", e.batch_size},
          {"arms", arms},
          {"arm_order", order},
          {"final", final_rows},
          {"claims", claims},
          {"min_train_accuracy", kept}};
}

std::vector<json> curve_rows(const json& summary) {
  std::vector<json> rows;
  for (const json& l : summary.at("arm_order")) {
    const std::string label = l.get<std::string>();
    for (const json& c : summary.at("arms").at(label).at("curve")) {
      json row = {{"arm", label}, {"step", c.at("step")}};
      for (const char* key : {"train_loss", "train_accuracy", "test_accuracy", "trace_normalized", "matched_trace"}) {
        row[key] = c.at(key).at("mean");
        row[std::string(key) + "_se"] = c.at(key).at("se");
      }
      rows.push_back(row);
    }
  }
  return rows;
}

std::string render_report(const json& summary, const json& settings, bool complete) {
  std::string md = "# flatmin escape: results\n\n";
  md += complete ? "Status: **complete**.\n\n"
                 : "Status: **partial** (the run stopped or is still running; the tables hold the arm runs finished so "
                   "far).\n\n";
  md += "Settings (all in summary.json, `settings`; the command line reproduces the folder):\n\n```\n" +
        settings.value("command", std::string()) + "\n```\n\n";
  md +=
      "Mean ± standard error over seeds (each seed: its own batch order and perturbation draws from the same "
      "starting point). tr̄ is Hutchinson's estimate on a fixed training subset; its own standard error (from the "
      "Rademacher samples) is in metrics.jsonl. *tr̄ at matched loss* is an arm's tr̄ divided by the reference "
      "arm's tr̄ interpolated at the same training loss (same seed); n/a outside the reference's loss range.\n\n";
  md +=
      "A verdict compares final values paired by seed: *supports*/*contradicts* when the mean difference is more "
      "than 2 standard errors in/against the claimed direction (lower tr̄, higher test accuracy), *not resolved* "
      "otherwise. tr̄ is compared only between minima: when an arm's final point is not a global minimum by the "
      "start's criterion (100% train accuracy, train loss <= --start-loss), its tr̄ verdicts read *not comparable* "
      "(a lower tr̄ away from the minima set is not a flatter minimum); test accuracy is still compared. No minimum "
      "effect size: a resolved difference of a few test images still reads supports/contradicts.\n\n";
  for (const json& s : summary.at("losses")) {
    const json& st = s.at("start");
    char buf[512];
    md += "## Loss: " + s.at("loss").get<std::string>() + "\n\n";
    std::snprintf(
        buf, sizeof buf,
        "Start (the bad global minimum): train accuracy %.4f, train loss %.4g, test accuracy %.4f, tr̄ %.4g ± %.2g. "
        "Reference arm for matched loss: `%s`. Seeds: %d.\n\n",
        get(st, "train_accuracy"), get(st, "train_loss"), get(st, "test_accuracy"), get(st, "trace_normalized"),
        get(st, "trace_normalized_stderr"), s.at("reference").get<std::string>().c_str(), int(s.at("seeds").size()));
    md += buf;
    md += "| arm | method | b | ρ | η | η' | role |\n|---|---|---:|---:|---:|---:|---|\n";
    for (const json& l : s.at("arm_order")) {
      const std::string label = l.get<std::string>();
      const json& a = s.at("arms").at(label).at("arm");
      std::snprintf(buf, sizeof buf, "| %s | %s | %s | %g | %g | %g | %s |\n", label.c_str(),
                    a.at("kind").get<std::string>().c_str(),
                    a.at("b").get<int64_t>() > 0 ? std::to_string(a.at("b").get<int64_t>()).c_str() : "",
                    a.at("rho").get<double>(), a.at("lr").get<double>(), a.at("lr_perturb").get<double>(),
                    a.at("role").get<std::string>().c_str());
      md += buf;
    }
    md +=
        "\n### Final values\n\n| arm | step | seeds | train acc (lowest seen) | train loss | test acc (%) | tr̄ | tr̄ / "
        "tr̄(start) | tr̄ at matched loss |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const json& f : s.at("final")) {
      std::snprintf(
          buf, sizeof buf, "| %s | %lld | %d | %s | %s | %s | %s | %s | %s |\n", f.at("arm").get<std::string>().c_str(),
          (long long)f.at("step").get<int64_t>(), f.at("trace_normalized").at("n").get<int>(),
          f.at("min_train_accuracy").is_number()
              ? std::to_string(f.at("min_train_accuracy").get<double>()).substr(0, 6).c_str()
              : "n/a",
          pm(f.at("train_loss")).c_str(), pm(f.at("test_accuracy"), 100).c_str(), pm(f.at("trace_normalized")).c_str(),
          pm(f.at("trace_over_start"), 1, 3).c_str(), pm(f.at("matched_trace"), 1, 3).c_str());
      md += buf;
    }
    md +=
        "\n### Claims of Section 5\n\n| claim | a vs b | how | Δ tr̄ (a − b) | Δ tr̄ at matched loss | Δ test acc "
        "(points) |\n"
        "|---|---|---|---|---|---|\n";
    for (const json& c : s.at("claims")) {
      md += "| " + c.at("claim").get<std::string>() + " | " + c.at("a").get<std::string>() + " vs " +
            c.at("b").get<std::string>() + " | " + c.at("how").get<std::string>() + " | " + pm(c.at("trace"), 1, 3) +
            ": " + c.at("trace_verdict").get<std::string>() + " | " + pm(c.at("matched_trace"), 1, 3) + ": " +
            c.at("matched_trace_verdict").get<std::string>() + " | " + pm(c.at("test_accuracy"), 100, 3) + ": " +
            c.at("test_accuracy_verdict").get<std::string>() + " |\n";
    }
    md += "\nTraining accuracy stays 100%: ";
    std::string held, lost;
    for (const json& l : s.at("arm_order"))
      if (const json& v = s.at("min_train_accuracy").value(l.get<std::string>(), json()); v.is_number())
        // append, not " " + a temporary string (GCC 12 reports a false -Wrestrict there)
        (v.get<double>() >= 1.0 ? held : lost).append(" ").append(l.get<std::string>());
    md += (held.empty() ? "" : "held by" + held + ".") +
          (lost.empty() ? std::string() : " Not held (some evaluation below 100%) by" + lost + ".") + "\n\n";
    const std::string l = s.at("loss").get<std::string>();
    if (summary.value("plots", false))
      md += "![tr̄ vs step](plots/" + l + "-trace_normalized.png)\n![test accuracy vs step](plots/" + l +
            "-test_accuracy.png)\n![tr̄ vs training loss](plots/" + l + "-vs_loss-trace_normalized.png)\n\n";
  }
  if (!summary.value("plots", false)) md += "Plots: " + summary.value("plots_note", std::string("not drawn")) + "\n";
  return md;
}

}  // namespace flatmin::tools::escape
