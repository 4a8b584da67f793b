// flatmin plot: PNGs from metrics lines (skipped without matplotlib), and clear errors on bad input.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "autodiff/tensor.hpp"
#include "tools/plot.hpp"

namespace fs = std::filesystem;
using flatmin::tools::plot_metrics;
using flatmin::tools::PlotOptions;

namespace {

struct Scratch {
  fs::path dir;
  Scratch() {
    std::string t = (fs::temp_directory_path() / "flatmin-test-plot-XXXXXX").string();
    REQUIRE(::mkdtemp(t.data()) != nullptr);
    dir = t;
  }
  ~Scratch() { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  }
};

// The 8-byte PNG signature, then the IHDR chunk's big-endian width and height.
void check_png(const std::string& path, uint32_t width, uint32_t height) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  unsigned char b[24] = {};
  in.read(reinterpret_cast<char*>(b), 24);
  const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  CHECK(std::equal(sig, sig + 8, b));
  CHECK(std::string(reinterpret_cast<char*>(b) + 12, 4) == "IHDR");
  auto be32 = [&](int i) {
    return uint32_t(b[i]) << 24 | uint32_t(b[i + 1]) << 16 | uint32_t(b[i + 2]) << 8 | b[i + 3];
  };
  CHECK(be32(16) == width);
  CHECK(be32(20) == height);
  CHECK(fs::file_size(path) > 10000);  // axes, text and lines, not an empty canvas
}

PlotOptions options(std::vector<std::string> inputs, std::string out_dir) {
  PlotOptions o;
  o.inputs = std::move(inputs);
  o.out_dir = std::move(out_dir);
  return o;
}

std::string error_of(const PlotOptions& o) {
  try {
    plot_metrics(o);
  } catch (const flatmin::Error& e) {
    return e.what();
  }
  return "(no error)";
}

const char* kEscapeLike = R"({"phase":"sgd","step":0,"train_loss":0.9,"test_accuracy":0.5,"batch_loss":null})"
                          "\n"
                          R"({"phase":"sgd","step":10,"train_loss":0.4,"test_accuracy":0.7,"batch_loss":0.5})"
                          "\n"
                          "\n"
                          R"({"phase":"sa","step":0,"train_loss":0.9,"test_accuracy":0.5,"batch_loss":0.8})"
                          "\n"
                          R"({"phase":"sa","step":10,"train_loss":0.2,"test_accuracy":0.8,"batch_loss":0.3})"
                          "\n";

}  // namespace

TEST_CASE("plot: one PNG per key, one line per group; Example 1 over its contours") {
  std::string why;
  if (!flatmin::tools::plot_renderer_available("/usr/bin/python3", &why)) {
    MESSAGE("skipped: " << why);
    return;
  }
  Scratch s;
  PlotOptions o = options({s.write("run.jsonl", kEscapeLike)}, (s.dir / "plots").string());
  o.y = {"train_loss", "test_accuracy"};
  o.group = "phase";
  o.log_y = {"train_loss"};
  o.title = "test";
  auto written = plot_metrics(o);
  REQUIRE(written.size() == 2);
  CHECK(written[0] == (s.dir / "plots" / "train_loss.png").string());
  CHECK(written[1] == (s.dir / "plots" / "test_accuracy.png").string());
  for (auto& p : written) check_png(p, 770, 495);  // 7 x 4.5 inches at 110 dpi
  int entries = 0;
  for (auto& e : fs::directory_iterator(s.dir / "plots")) entries += e.path().extension() == ".png" ? 1 : 100;
  CHECK(entries == 2);  // no temporary files left behind

  const std::string ex = s.write("sa.jsonl", R"({"step":0,"phase":"sa","x1":4.0,"x2":0.25,"loss":0})"
                                             "\n"
                                             R"({"step":100,"phase":"sa","x1":2.0,"x2":0.6,"loss":0.04})"
                                             "\n"
                                             R"({"step":200,"phase":"refine","x1":1.2,"x2":0.83,"loss":0})"
                                             "\n");
  PlotOptions e1 = options({ex}, (s.dir / "plots").string());
  e1.example1 = true;
  auto traj = plot_metrics(e1);
  REQUIRE(traj.size() == 1);
  CHECK(fs::path(traj[0]).filename() == "example1.png");
  check_png(traj[0], 770, 495);
}

TEST_CASE("plot: bad input is refused with the file, line and key named") {
  Scratch s;
  const std::string out = (s.dir / "plots").string();
  const std::string good = s.write("good.jsonl", kEscapeLike);

  auto with = [&](std::vector<std::string> in, auto&& change) {
    PlotOptions o = options(std::move(in), out);
    change(o);
    return error_of(o);
  };
  auto none = [](PlotOptions&) {};
  CHECK(with({(s.dir / "missing.jsonl").string()}, none).find("missing.jsonl") != std::string::npos);

  const std::string bad = s.write("bad.jsonl", "{\"step\":0,\"loss\":1}\n{\"step\":1,\"loss\":\n");
  CHECK(with({good, bad}, none).find("bad.jsonl:2: not a JSON line") != std::string::npos);

  const std::string arr = s.write("arr.jsonl", "[1, 2]\n");
  CHECK(with({arr}, none).find("arr.jsonl:1: a metrics line must be a JSON object") != std::string::npos);

  const std::string str = s.write("str.jsonl", "{\"step\":0,\"loss\":1}\n{\"step\":1,\"loss\":\"high\"}\n");
  CHECK(with({str}, [](PlotOptions& o) { o.y = {"loss"}; }).find("str.jsonl:2: 'loss' is \"high\", not a number") !=
        std::string::npos);

  const std::string nox = s.write("nox.jsonl", "{\"step\":0,\"loss\":1}\n{\"loss\":0.5}\n");
  CHECK(with({nox}, none).find("nox.jsonl:2: has 'loss' but no numeric 'step'") != std::string::npos);

  CHECK(with({good}, [](PlotOptions& o) {
          o.y = {"trace_normalized"};
        }).find("no numeric values for 'trace_normalized'") != std::string::npos);
  CHECK(with({s.write("empty.jsonl", "\n")}, none).find("holds no metrics lines") != std::string::npos);
  CHECK(with({good}, [](PlotOptions& o) { o.example1 = true; }).find("needs lines with numeric 'x1' and 'x2'") !=
        std::string::npos);

  const std::string neg = s.write("neg.jsonl", "{\"step\":0,\"loss\":0}\n{\"step\":1,\"loss\":-1}\n");
  CHECK(with({neg}, [](PlotOptions& o) { o.log_y = {"loss"}; }).find("--log-y 'loss': no values > 0") !=
        std::string::npos);
  CHECK(with({good}, [](PlotOptions& o) {
          o.y = {"train_loss"};
          o.log_y = {"loss"};
        }).find("not a plotted key") != std::string::npos);

  const std::string clash = s.write("clash.jsonl", "{\"step\":0,\"a/b\":1,\"a_b\":2}\n");
  CHECK(with({clash}, none).find("would both be written to a_b.png") != std::string::npos);

  // A missing renderer names the package and leaves no partial PNG.
  const std::string e = with({good}, [&](PlotOptions& o) { o.python = (s.dir / "no-python3").string(); });
  CHECK(e.find("Debian package python3") != std::string::npos);
  CHECK((!fs::exists(out) || fs::is_empty(out)));
}

TEST_CASE("plot: bands of ± standard error, and a prefix on the file names") {
  std::string why;
  if (!flatmin::tools::plot_renderer_available("/usr/bin/python3", &why)) {
    MESSAGE("skipped: " << why);
    return;
  }
  Scratch s;
  const std::string curves = s.write("curves.jsonl", R"({"arm":"sgd","step":0,"trace":2.0,"trace_se":0.1})"
                                                     "\n"
                                                     R"({"arm":"sgd","step":10,"trace":1.8,"trace_se":null})"
                                                     "\n"
                                                     R"({"arm":"sa","step":0,"trace":2.0,"trace_se":0.2})"
                                                     "\n"
                                                     R"({"arm":"sa","step":10,"trace":1.1,"trace_se":0.3})"
                                                     "\n");
  PlotOptions o = options({curves}, (s.dir / "plots").string());
  o.y = {"trace"};
  o.group = "arm";
  o.bands = true;
  o.file_prefix = "ce-";
  auto written = plot_metrics(o);
  REQUIRE(written.size() == 1);
  CHECK(fs::path(written[0]).filename() == "ce-trace.png");
  check_png(written[0], 770, 495);
}

TEST_CASE("plot: error bars and a log x axis; bad error-bar and log-x input refused") {
  Scratch s;
  const std::string pts = s.write("pts.jsonl", R"({"series":"a","inv_eps":10,"q":100,"lo":80,"hi":130})"
                                               "\n"
                                               R"({"series":"a","inv_eps":100,"q":1000,"lo":900,"hi":1500})"
                                               "\n"
                                               R"({"series":"b","inv_eps":10,"q":50,"lo":40,"hi":60})"
                                               "\n");
  auto base = [&] {
    PlotOptions o = options({pts}, (s.dir / "plots").string());
    o.x = "inv_eps";
    o.y = {"q"};
    o.group = "series";
    o.log_y = {"q"};
    o.log_x = true;
    o.y_low = "lo";
    o.y_high = "hi";
    return o;
  };
  PlotOptions half = base();
  half.y_high.clear();
  CHECK(error_of(half).find("error bars need both") != std::string::npos);
  PlotOptions missing = base();
  missing.y_high = "upper";
  CHECK(error_of(missing).find("pts.jsonl:1: has 'q' but no numeric 'lo' and 'upper'") != std::string::npos);
  const std::string zero = s.write("zero.jsonl", R"({"series":"a","inv_eps":0,"q":1,"lo":1,"hi":1})"
                                                 "\n");
  PlotOptions zx = base();
  zx.inputs = {zero};
  CHECK(error_of(zx).find("log_x: 'inv_eps' has the value 0") != std::string::npos);
  std::string why;
  if (!flatmin::tools::plot_renderer_available("/usr/bin/python3", &why)) {
    MESSAGE("skipped the drawing: " << why);
    return;
  }
  auto written = plot_metrics(base());
  REQUIRE(written.size() == 1);
  check_png(written[0], 770, 495);
}
