// Optional time accounting, switched on by the environment variable FLATMIN_PROFILE=1:
// every backend kernel call is timed under its kind ("conv2d", "binary:mul", ...), and
// every derivative rule run by a reverse sweep under "rule:<op>" (a rule's time includes
// the kernels it calls). The tables print to stderr at exit (or on profile::print()).
// Off, the only cost is one branch in backend() and one in the sweep.
#pragma once
#include <cstdio>

namespace flatmin {
class Backend;
}

namespace flatmin::profile {

bool enabled();  // FLATMIN_PROFILE is set to something other than "" or "0" (read once)
void add(const char* name, const char* detail, double seconds);  // thread-safe
void print(std::FILE* out);                                      // the tables so far, then cleared
double now();                                                    // seconds, monotonic

// Times a scope into (name, detail) when profiling is on.
class Scope {
 public:
  Scope(const char* name, const char* detail = nullptr)
      : name_(enabled() ? name : nullptr), detail_(detail), t0_(name_ ? now() : 0.0) {}
  ~Scope() {
    if (name_) add(name_, detail_, now() - t0_);
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  const char* name_;
  const char* detail_;
  double t0_;
};

// The backend that times each call of `inner` (backend() hands it out when enabled()).
Backend& timed(Backend& inner);

}  // namespace flatmin::profile
