#include "bench/harness.hpp"

#include "autodiff/nn_ops.hpp"
#include "autodiff/profile.hpp"

#include <sys/wait.h>
#include <tbb/global_control.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

namespace flatmin::bench {

static bool cpu_clock = false;
void use_cpu_time(bool on) { cpu_clock = on; }
double now_seconds() {
  timespec ts{};
  clock_gettime(cpu_clock ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

static double status_field_mib(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(f, line))
    if (line.compare(0, n, field) == 0) return std::stod(line.substr(n + 1)) / 1024.0;  // "VmHWM:  1234 kB"
  return 0;
}
double peak_rss_mib() { return status_field_mib("VmHWM"); }
double current_rss_mib() { return status_field_mib("VmRSS"); }

// Child -> parent protocol, one record per line, tab-separated:
//   metric <key> <unit> <higher_is_better> <sample>...   |   rss <base> <peak>   |   error <text>
static std::string serialize(const std::vector<Metric>& ms, double base, double peak) {
  std::ostringstream o;
  o.precision(9);
  for (const Metric& m : ms) {
    o << "metric\t" << m.key << '\t' << m.unit << '\t' << int(m.higher_is_better);
    for (double s : m.samples) o << '\t' << s;
    o << '\n';
  }
  o << "rss\t" << base << '\t' << peak << '\n';
  return o.str();
}

static void parse(const std::string& text, GroupResult& r) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::istringstream ls(line);
    for (std::string x; std::getline(ls, x, '\t');) f.push_back(x);
    if (f.empty()) continue;
    if (f[0] == "error") r.error = line.substr(6);
    if (f[0] == "rss" && f.size() == 3) {
      r.base_rss_mib = std::stod(f[1]);
      r.peak_rss_mib = std::stod(f[2]);
    }
    if (f[0] == "metric" && f.size() >= 4) {
      Metric m{f[1], f[2], f[3] == "1", {}};
      for (size_t i = 4; i < f.size(); ++i) m.samples.push_back(std::stod(f[i]));
      r.metrics.push_back(m);
    }
  }
}

static void write_all(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t w = ::write(fd, s.data() + done, s.size() - done);
    if (w <= 0) return;
    done += size_t(w);
  }
}

GroupResult run_in_child(const Group& g, const Config& cfg) {
  GroupResult r;
  r.name = g.name;
  int fds[2];
  if (::pipe(fds) != 0) {
    r.error = "pipe() failed";
    return r;
  }
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    r.error = "fork() failed";
    return r;
  }
  if (pid == 0) {  // child: the parent never started TBB, so its pool is created here
    ::close(fds[0]);
    std::string out;
    try {
      tbb::global_control threads(tbb::global_control::max_allowed_parallelism, size_t(cfg.threads));
      const double base = current_rss_mib();
      const Bf16Convolutions precision(cfg.bf16);
      std::vector<Metric> ms = g.run(cfg);
      out = serialize(ms, base, peak_rss_mib());
    } catch (const std::exception& e) {
      out = std::string("error\t") + e.what() + "\n";
    }
    if (profile::enabled()) {  // _exit skips the at-exit print
      std::fprintf(stderr, "\nFLATMIN_PROFILE of %s:\n", g.name.c_str());
      profile::print(stderr);
    }
    write_all(fds[1], out);
    ::close(fds[1]);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, size_t(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  parse(text, r);
  if (r.error.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
    r.error = "child process died (status " + std::to_string(status) + ")";
  return r;
}

}  // namespace flatmin::bench
