// `flatmin plot`: PNG plots of the JSON-lines metrics of train, escape and example1 — one
// PNG per quantity with one line per file (or per --group value), or the Example 1
// trajectories over the contours of (x1 x2 - 1)^2. Drawn by python3-matplotlib (tools/plot.hpp).
#include <CLI/CLI.hpp>
#include <cstdio>

#include "tools/command.hpp"
#include "tools/plot.hpp"

namespace flatmin::tools {
namespace {

int run(int argc, char** argv) {
  CLI::App app{"Plot flatmin metrics (JSON lines) as PNG files"};
  PlotOptions o;
  app.add_option("metrics", o.inputs, "metrics files written by flatmin train/escape (--metrics) or example1 (--out)")
      ->required();
  app.add_option("--out", o.out_dir, "output folder (one PNG per quantity)")->required();
  app.add_option("--x", o.x, "key of the horizontal axis")->capture_default_str();
  app.add_option("--y", o.y, "keys to plot, comma-separated (default: every numeric key)")->delimiter(',');
  app.add_option("--group", o.group, "one line per value of this key, e.g. phase (escape: the method)");
  app.add_option("--log-y", o.log_y, "keys drawn on a log scale, comma-separated (e.g. train_loss)")->delimiter(',');
  app.add_option("--title", o.title, "prefix of every plot title");
  app.add_flag("--bands", o.bands, "shade y ± <y>_se around each line where the rows have it");
  app.add_option("--file-prefix", o.file_prefix, "prefix of every PNG's name");
  app.add_flag("--example1", o.example1, "Example 1 trajectories x1, x2 over the contours of (x1 x2 - 1)^2");
  app.add_option("--python", o.python, "python interpreter with matplotlib")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  for (const auto& path : plot_metrics(o)) std::printf("wrote %s\n", path.c_str());
  return 0;
}

Register reg{{"plot", "PNG plots of metrics (loss, accuracy, tr̄ per step; Example 1 trajectories)", run}};
}  // namespace
}  // namespace flatmin::tools
