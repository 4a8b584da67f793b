// One doctest main for every suite. Tests that need a GPU live in TEST_SUITE("gpu") and are
// excluded, with a message, when no usable CUDA device is present. `--gpu-suite` runs that
// suite alone and exits 77 (meson's "skipped") without a device, so that the test summary
// counts it as skipped rather than passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "autodiff/backend.hpp"

int main(int argc, char** argv) {
  std::vector<char*> args;
  bool gpu_suite = false;
  for (int i = 0; i < argc; ++i) {
    if (i > 0 && std::strcmp(argv[i], "--gpu-suite") == 0)
      gpu_suite = true;
    else
      args.push_back(argv[i]);
  }
  doctest::Context ctx;
  std::string why;
  const bool have_gpu = flatmin::cuda_device_count(&why) > 0;
  if (!have_gpu) std::printf("[flatmin] no usable CUDA device (%s): skipping test suite 'gpu'\n", why.c_str());
  if (gpu_suite && !have_gpu) return 77;
  if (gpu_suite)
    ctx.addFilter("test-suite", "gpu");
  else if (!have_gpu)
    ctx.addFilter("test-suite-exclude", "gpu");
  ctx.applyCommandLine(int(args.size()), args.data());
  return ctx.run();
}
