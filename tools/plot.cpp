#include "tools/plot.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "autodiff/tensor.hpp"

extern char** environ;

namespace flatmin::tools {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

// The renderer: reads the plot list C++ prepared (every value already checked and finite)
// and writes each PNG to the temporary path it is given. Exit 3: matplotlib is missing.
constexpr const char* kRenderer = R"PY(
import json, sys
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
except ImportError as e:
    print("flatmin plot: %s" % e, file=sys.stderr)
    sys.exit(3)

def lines(p):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in p["series"]:
        c = "C%d" % (s["color"] % 10)
        if "lo" in s and s.get("bars"):
            err = [[y - l for y, l in zip(s["y"], s["lo"])], [h - y for y, h in zip(s["y"], s["hi"])]]
            ax.errorbar(s["x"], s["y"], yerr=err, marker="o", ms=4, lw=1.2, capsize=3, label=s["label"], color=c)
        else:
            ax.plot(s["x"], s["y"], marker="." if len(s["x"]) <= 60 else None, ms=4, lw=1.2, label=s["label"], color=c)
            if "lo" in s:
                ax.fill_between(s["x"], s["lo"], s["hi"], color=c, alpha=0.2, lw=0)
    if p["logy"]:
        ax.set_yscale("log")
    if p.get("logx"):
        ax.set_xscale("log")
    ax.set_xlabel(p["xlabel"])
    ax.set_ylabel(p["ylabel"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig, ax

def example1(p):
    xs = [v for s in p["series"] for v in s["x"]] + [1.0]
    ys = [v for s in p["series"] for v in s["y"]] + [1.0]
    mx = 0.1 * (max(xs) - min(xs)) + 0.1
    my = 0.1 * (max(ys) - min(ys)) + 0.1
    x0, x1, y0, y1 = min(xs) - mx, max(xs) + mx, min(ys) - my, max(ys) + my
    X, Y = np.meshgrid(np.linspace(x0, x1, 400), np.linspace(y0, y1, 400))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.contour(X, Y, np.log10((X * Y - 1) ** 2 + 1e-6), levels=20, cmap="Greys", linewidths=0.5)
    ax.contour(X, Y, X * Y - 1, levels=[0], colors="k", linewidths=1.2)
    ax.plot([], [], "k-", lw=1.2, label="minima x1 x2 = 1")
    for i, s in enumerate(p["series"]):
        c, k = "C%d" % i, s["split"]
        ax.plot(s["x"][:k], s["y"][:k], ".-", color=c, ms=3, lw=0.9, label=s["label"])
        if k < len(s["x"]):
            ax.plot(s["x"][max(k - 1, 0):], s["y"][max(k - 1, 0):], ":", color=c, lw=1.2, label=s["label"] + " (refine)")
        ax.plot(s["x"][:1], s["y"][:1], "o", color=c, mfc="none", ms=7, label="start" if i == 0 else None)
    ax.plot([1], [1], "*", ms=14, color="gold", mec="k", label="flat minimum (1, 1)")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.legend(loc="upper right", fontsize=8)
    return fig, ax

for p in json.load(open(sys.argv[1]))["plots"]:
    fig, ax = example1(p) if p["kind"] == "example1" else lines(p)
    ax.set_title(p["title"])
    fig.tight_layout()
    fig.savefig(p["path"], format="png", dpi=110)
    plt.close(fig)
)PY";

struct Row {
  json value;
  std::string file;
  int line;
  std::string where() const { return file + ":" + std::to_string(line); }
};

std::vector<Row> read_rows(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("plot: cannot open metrics file " + path);
  std::vector<Row> rows;
  std::string text;
  for (int line = 1; std::getline(in, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    Row r{{}, path, line};
    try {
      r.value = json::parse(text);
    } catch (const json::parse_error& e) {
      throw Error("plot: " + r.where() + ": not a JSON line (" + e.what() + ")");
    }
    if (!r.value.is_object()) throw Error("plot: " + r.where() + ": a metrics line must be a JSON object");
    rows.push_back(std::move(r));
  }
  if (rows.empty()) throw Error("plot: " + path + " holds no metrics lines");
  return rows;
}

// The number under `key`; nullopt when absent or null (flatmin writes non-finite values as null).
std::optional<double> number(const Row& r, const std::string& key) {
  auto it = r.value.find(key);
  if (it == r.value.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) throw Error("plot: " + r.where() + ": '" + key + "' is " + it->dump() + ", not a number");
  return it->get<double>();
}

std::string group_of(const Row& r, const std::string& key) {
  if (key.empty()) return "";
  auto it = r.value.find(key);
  if (it == r.value.end() || it->is_null()) return "(no " + key + ")";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

struct Series {
  std::string label;
  std::vector<double> x, y;
  std::vector<double> lo, hi;  // bands: y ∓ its standard error; error bars: the y_low, y_high keys
  size_t split = 0;            // example1: points from here on are the refine phase
};

// One line per (file, group value), in first-seen order; rows lacking y are left out.
std::vector<Series> collect(const std::vector<std::vector<Row>>& files, const PlotOptions& o, const std::string& xk,
                            const std::string& yk) {
  std::vector<Series> out;
  for (const auto& rows : files) {
    std::map<std::string, size_t> index;
    const std::string stem = fs::path(rows.front().file).stem().string();
    for (const Row& r : rows) {
      std::optional<double> y = number(r, yk);
      if (!y) continue;
      std::optional<double> x = number(r, xk);
      if (!x) throw Error("plot: " + r.where() + ": has '" + yk + "' but no numeric '" + xk + "'");
      const std::string g = group_of(r, o.group);
      auto [it, fresh] = index.try_emplace(g, out.size());
      if (fresh) {
        std::string label = o.group.empty() ? stem : (o.inputs.size() > 1 ? stem + ": " + g : g);
        out.push_back({label, {}, {}, {}, {}, 0});
      }
      Series& s = out[it->second];
      s.x.push_back(*x);
      s.y.push_back(*y);
      if (o.bands) {
        const double se = number(r, yk + "_se").value_or(0.0);
        s.lo.push_back(*y - se);
        s.hi.push_back(*y + se);
      } else if (!o.y_low.empty()) {
        std::optional<double> lo = number(r, o.y_low), hi = number(r, o.y_high);
        if (!lo || !hi)
          throw Error("plot: " + r.where() + ": has '" + yk + "' but no numeric '" + o.y_low + "' and '" + o.y_high +
                      "'");
        s.lo.push_back(*lo);
        s.hi.push_back(*hi);
      }
      const std::string phase = group_of(r, "phase");
      if (phase != "refine" && phase != "chosen-iterate") s.split = s.x.size();
    }
  }
  return out;
}

// A log axis cannot show values <= 0 (a loss of exactly 0 at a minimum): they are left out, and said so.
// With error bars (bars = true) a point whose lower end is <= 0 goes too.
void drop_non_positive(Series& s, const std::string& key, bool bars) {
  size_t kept = 0;
  for (size_t i = 0; i < s.y.size(); ++i)
    if (s.y[i] > 0 && (!bars || s.lo[i] > 0)) {
      s.x[kept] = s.x[i];
      if (!s.lo.empty()) s.lo[kept] = s.lo[i], s.hi[kept] = s.hi[i];
      s.y[kept++] = s.y[i];
    }
  if (kept < s.y.size())
    std::fprintf(stderr, "plot: %s: left %zu values <= 0 of '%s' off the log scale\n", s.label.c_str(),
                 s.y.size() - kept, key.c_str());
  s.x.resize(kept);
  s.y.resize(kept);
  if (!s.lo.empty()) s.lo.resize(kept), s.hi.resize(kept);
}

std::vector<std::string> numeric_keys(const std::vector<std::vector<Row>>& files, const PlotOptions& o) {
  std::vector<std::string> keys;
  for (const auto& rows : files)
    for (const Row& r : rows)
      for (auto& [k, v] : r.value.items())
        if (v.is_number() && k != o.x && k != o.group && std::find(keys.begin(), keys.end(), k) == keys.end())
          keys.push_back(k);
  return keys;
}

std::string file_name(const std::string& key) {
  std::string s = key;
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') c = '_';
  return s + ".png";
}

// Runs argv[0] with its output streams kept (or sent to /dev/null); returns the exit status,
// 127 when it could not be started.
int spawn(const std::vector<std::string>& args, bool quiet) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (quiet) {
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  }
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return 127;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return 127;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void fsync_path(const fs::path& p, int flags) {
  int fd = ::open(p.c_str(), flags);
  if (fd < 0) throw Error("plot: cannot open " + p.string() + ": " + std::strerror(errno));
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) throw Error("plot: cannot fsync " + p.string());
}

// A private folder for the renderer's script and plot list, removed on every path out.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "flatmin-plot-XXXXXX").string();
    if (!::mkdtemp(t.data()))
      throw Error("plot: cannot create a temporary folder: " + std::string(std::strerror(errno)));
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void render(const json& plots, const std::string& python) {
  TempDir tmp;
  std::ofstream(tmp.path / "render.py") << kRenderer;
  std::ofstream spec(tmp.path / "plots.json");
  spec << json{{"plots", plots}}.dump();
  spec.close();
  if (!spec) throw Error("plot: cannot write " + (tmp.path / "plots.json").string());
  const int rc = spawn({python, (tmp.path / "render.py").string(), (tmp.path / "plots.json").string()}, false);
  if (rc == 127) throw Error("plot: cannot run " + python + " (install the Debian package python3)");
  if (rc == 3) throw Error("plot: " + python + " has no matplotlib (install the Debian package python3-matplotlib)");
  if (rc != 0)
    throw Error("plot: the renderer failed with exit status " + std::to_string(rc) + " (its messages are above)");
}

}  // namespace

bool plot_renderer_available(const std::string& python, std::string* why) {
  const int rc = spawn({python, "-c", "import matplotlib"}, true);
  if (rc == 0) return true;
  if (why)
    *why = rc == 127 ? "cannot run " + python + " (Debian package python3)"
                     : python + " cannot import matplotlib (Debian package python3-matplotlib)";
  return false;
}

std::vector<std::string> plot_metrics(const PlotOptions& o) {
  if (o.inputs.empty()) throw Error("plot: give at least one metrics file");
  if (o.out_dir.empty()) throw Error("plot: give an output folder (--out)");
  if (o.y_low.empty() != o.y_high.empty()) throw Error("plot: error bars need both a low and a high key");
  std::vector<std::vector<Row>> files;
  for (const auto& path : o.inputs) files.push_back(read_rows(path));

  struct Planned {
    fs::path final_path;
    json plot;
  };
  std::vector<Planned> planned;
  const std::string prefix = o.title.empty() ? "" : o.title + ": ";
  if (o.example1) {
    std::vector<Series> s = collect(files, o, "x1", "x2");
    if (s.empty()) throw Error("plot: --example1 needs lines with numeric 'x1' and 'x2' (flatmin example1 --out)");
    json series = json::array();
    for (auto& v : s) series.push_back({{"label", v.label}, {"x", v.x}, {"y", v.y}, {"split", v.split}});
    planned.push_back({fs::path(o.out_dir) / "example1.png",
                       {{"kind", "example1"}, {"title", prefix + "Example 1: (x1 x2 - 1)^2"}, {"series", series}}});
  } else {
    std::vector<std::string> keys = o.y.empty() ? numeric_keys(files, o) : o.y;
    if (keys.empty()) throw Error("plot: no numeric keys besides '" + o.x + "' in the metrics files");
    for (const auto& k : o.log_y)
      if (std::find(keys.begin(), keys.end(), k) == keys.end())
        throw Error("plot: --log-y '" + k + "' is not a plotted key");
    for (const auto& k : keys) {
      std::vector<Series> s = collect(files, o, o.x, k);
      if (s.empty()) throw Error("plot: no numeric values for '" + k + "' in the metrics files");
      const bool logy = std::find(o.log_y.begin(), o.log_y.end(), k) != o.log_y.end();
      json series = json::array();
      for (size_t i = 0; i < s.size(); ++i) {  // a line keeps its colour when another is left out
        if (logy) drop_non_positive(s[i], k, !o.y_low.empty());
        if (o.log_x) {
          for (double v : s[i].x)
            if (!(v > 0)) throw Error("plot: log_x: '" + o.x + "' has the value " + std::to_string(v) + " <= 0");
        }
        if (s[i].x.empty()) continue;
        json line = {{"label", s[i].label}, {"x", s[i].x}, {"y", s[i].y}, {"color", i}};
        if (o.bands && !logy) line["lo"] = s[i].lo, line["hi"] = s[i].hi;
        if (!o.y_low.empty()) line["lo"] = s[i].lo, line["hi"] = s[i].hi, line["bars"] = true;
        series.push_back(line);
      }
      if (series.empty()) throw Error("plot: --log-y '" + k + "': no values > 0 to draw on a log scale");
      for (const auto& p : planned)
        if (p.final_path.filename() == o.file_prefix + file_name(k))
          throw Error("plot: the keys '" + k + "' and another one would both be written to " + file_name(k));
      planned.push_back({fs::path(o.out_dir) / (o.file_prefix + file_name(k)),
                         {{"kind", "lines"},
                          {"title", prefix + k + " vs " + o.x},
                          {"xlabel", o.x},
                          {"ylabel", k},
                          {"logy", logy},
                          {"logx", o.log_x},
                          {"series", series}}});
    }
  }

  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) throw Error("plot: cannot create the output folder " + o.out_dir + ": " + ec.message());
  json plots = json::array();
  for (auto& p : planned) {
    std::string hidden = ".";  // a hidden name beside the final one, so the rename stays in one file system
    hidden += p.final_path.filename().string();
    hidden += ".tmp" + std::to_string(::getpid());
    p.plot["path"] = (p.final_path.parent_path() / hidden).string();
    plots.push_back(p.plot);
  }
  try {
    render(plots, o.python);
    std::vector<std::string> written;
    for (auto& p : planned) {
      const fs::path tmp = p.plot["path"].get<std::string>();
      fsync_path(tmp, O_RDONLY);
      fs::rename(tmp, p.final_path);
      written.push_back(p.final_path.string());
    }
    fsync_path(o.out_dir, O_RDONLY | O_DIRECTORY);
    return written;
  } catch (...) {
    for (auto& p : planned) fs::remove(p.plot["path"].get<std::string>(), ec);
    throw;
  }
}

}  // namespace flatmin::tools
