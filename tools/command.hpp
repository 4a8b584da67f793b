// Subcommands of the `flatmin` executable register themselves here (one file each).
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace flatmin::tools {

struct Command {
  std::string name;
  std::string summary;
  std::function<int(int argc, char** argv)> run;  // argv[0] is the subcommand's name
};

std::vector<Command>& commands();

// At namespace scope in a subcommand's file: static Register r{{"name", "summary", run}};
struct Register {
  explicit Register(Command c) { commands().push_back(std::move(c)); }
};

}  // namespace flatmin::tools
