// Used when flatmin is built without the CUDA Toolkit.
#include "autodiff/cuda/cuda_entry.hpp"

namespace flatmin::cuda {
bool compiled() { return false; }
int device_count(std::string* why) {
  if (why) *why = "flatmin was built without CUDA (configure with -Dcuda=enabled where nvcc exists)";
  return 0;
}
Backend* get(int, std::string* why) {
  device_count(why);
  return nullptr;
}
}  // namespace flatmin::cuda
