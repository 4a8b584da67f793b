// Subcommands of the `flatmin` executable register themselves here (one file each).
#pragma once
#include <CLI/CLI.hpp>
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

// For unsigned flags (seeds): CLI11 would read "-1" as 2^64 - 1.
inline const CLI::Validator NotNegative(
    [](std::string& s) {
      const size_t at = s.find_first_not_of(" \t");
      return at != std::string::npos && s[at] == '-' ? std::string("must not be negative, got " + s) : std::string();
    },
    "NOT NEGATIVE", "NotNegative");

}  // namespace flatmin::tools
