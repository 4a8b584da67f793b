// Subcommands of the `flatmin` executable register themselves here (one file each).
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "autodiff/tensor.hpp"

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

// A size flag outside [lo, hi]: one line "<command>: <flag> must be in [lo, hi], got <value>",
// thrown after parsing and before any work.
inline void check_range(const char* command, const char* flag, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi)
    throw Error(std::string(command) + ": " + flag + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                "], got " + std::to_string(value));
}

}  // namespace flatmin::tools
