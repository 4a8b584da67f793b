// PNG plots of flatmin's JSON-lines metrics (train, escape, example1). C++ reads and checks
// the metrics; Debian's /usr/bin/python3 with matplotlib (python3-matplotlib) draws them.
// Every PNG is rendered under a temporary name in the output folder, fsynced, then renamed.
#pragma once
#include <string>
#include <vector>

namespace flatmin::tools {

struct PlotOptions {
  std::vector<std::string> inputs;  // metrics files (JSON lines)
  std::string out_dir;              // created if missing
  std::string x = "step";
  std::vector<std::string> y;      // one PNG per key; empty: every numeric key except x
  std::string group;               // one line per value of this key (per file); empty: one line per file
  std::vector<std::string> log_y;  // keys drawn on a log scale (their values must be > 0)
  bool log_x = false;              // x on a log scale (values must be > 0)
  std::string y_low, y_high;       // keys of error-bar ends (both or neither), drawn around y
  std::string title;               // prefix of every title
  std::string file_prefix;         // prefix of every PNG's name (<prefix><key>.png)
  bool bands = false;              // shade y ± "<y>_se" around each line where the rows have it (means over seeds)
  bool example1 = false;           // Example 1 trajectories (x1, x2) over the contours of (x1 x2 - 1)^2
  std::string python = "/usr/bin/python3";
};

// Draws the plots; returns the paths of the PNGs written. Throws flatmin::Error on bad input
// (file, line and key named) or when the renderer is missing (package named).
std::vector<std::string> plot_metrics(const PlotOptions& options);

// Whether `python` runs and imports matplotlib; otherwise `why` says what to install.
bool plot_renderer_available(const std::string& python, std::string* why = nullptr);

}  // namespace flatmin::tools
