// flatmin: one executable, one subcommand per file (see command.hpp).
#include <tbb/global_control.h>
#include <unistd.h>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>

#include "autodiff/tensor.hpp"
#include "distributed/world.hpp"
#include "tools/command.hpp"

namespace flatmin::tools {
std::vector<Command>& commands() {
  static std::vector<Command> all;
  return all;
}
}  // namespace flatmin::tools

using flatmin::tools::commands;

static void usage() {
  std::printf("usage: flatmin <command> [options]   (flatmin <command> --help for its options)\n\ncommands:\n");
  auto cmds = commands();
  std::sort(cmds.begin(), cmds.end(), [](auto& a, auto& b) { return a.name < b.name; });
  for (auto& c : cmds) std::printf("  %-10s %s\n", c.name.c_str(), c.summary.c_str());
}

// Where errors go: stderr, kept open on every rank when the others' output is silenced.
static std::FILE* errors = stderr;

// Under mpirun/srun: the MPI world, rank 0 alone printing (the other ranks keep only their
// error messages), and the cores of a machine shared by its processes (FLATMIN_THREADS
// overrides); a fatal error on any rank ends the whole job (MPI_Abort) instead of leaving
// the others waiting in a collective (docs/distributed.md).
static std::unique_ptr<tbb::global_control> join_world(int* argc, char*** argv) {
  namespace dist = flatmin::distributed;
  const dist::World& w = dist::init_from_environment(argc, argv);
  if (w.rank() != 0) {
    if (std::FILE* e = fdopen(dup(2), "w")) errors = e;
    if (!std::freopen("/dev/null", "w", stdout) || !std::freopen("/dev/null", "w", stderr))
      std::fprintf(errors, "flatmin: rank %d cannot silence its output\n", w.rank());
  }
  size_t threads = 0;
  if (const char* t = std::getenv("FLATMIN_THREADS"); t && *t)
    threads = size_t(std::max(1, std::atoi(t)));
  else if (w.local_size() > 1)
    threads = std::max<size_t>(1, std::thread::hardware_concurrency() / size_t(w.local_size()));
  if (threads == 0) return nullptr;
  return std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism, threads);
}

static int run_command(const flatmin::tools::Command& c, int argc, char** argv) {
  namespace dist = flatmin::distributed;
  try {
    const int rc = c.run(argc - 1, argv + 1);
    dist::finalize();
    return rc;
  } catch (const std::exception& e) {
    const dist::World& w = dist::world();
    if (w.size() == 1) {
      std::fprintf(stderr, "flatmin %s: error: %s\n", argv[1], e.what());
      return 1;
    }
    std::fprintf(errors, "flatmin %s: error on rank %d of %d: %s\n", argv[1], w.rank(), w.size(), e.what());
    w.abort(1);
    return 1;  // not reached: abort ends every process of the job
  }
}

int main(int argc, char** argv) {
  std::unique_ptr<tbb::global_control> threads;
  try {
    threads = join_world(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flatmin: error: %s\n", e.what());
    return 1;
  }
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  for (auto& c : commands())
    if (c.name == argv[1]) {
      return run_command(c, argc, argv);
    }
  std::fprintf(stderr, "flatmin: unknown command '%s'\n\n", argv[1]);
  usage();
  return 2;
}
