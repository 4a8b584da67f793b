// One doctest main for every suite. Tests that need a GPU live in TEST_SUITE("gpu") and are
// excluded, with a message, when no usable CUDA device is present.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <string>

#include "autodiff/backend.hpp"

int main(int argc, char** argv) {
  doctest::Context ctx;
  std::string why;
  if (flatmin::cuda_device_count(&why) == 0) {
    std::printf("[flatmin] no usable CUDA device (%s): skipping test suite 'gpu'\n", why.c_str());
    ctx.addFilter("test-suite-exclude", "gpu");
  }
  ctx.applyCommandLine(argc, argv);
  return ctx.run();
}
