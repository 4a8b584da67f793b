// flatmin: one executable, one subcommand per file (see command.hpp).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>

#include "autodiff/tensor.hpp"
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

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  for (auto& c : commands())
    if (c.name == argv[1]) {
      try {
        return c.run(argc - 1, argv + 1);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "flatmin %s: error: %s\n", argv[1], e.what());
        return 1;
      }
    }
  std::fprintf(stderr, "flatmin: unknown command '%s'\n\n", argv[1]);
  usage();
  return 2;
}
