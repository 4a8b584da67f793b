// The choice of CUDA convolution engine (cuda_entry.hpp), compiled in every build so that a
// cuDNN request in a build without cuDNN is a named error rather than a missing symbol.
#include <atomic>
#include <cstdlib>
#include <string>

#include "autodiff/cuda/cuda_entry.hpp"
#include "autodiff/tensor.hpp"

namespace flatmin::cuda {

bool cudnn_compiled() {
#ifdef FLATMIN_HAVE_CUDNN
  return true;
#else
  return false;
#endif
}

namespace {
void require_cudnn(const std::string& what) {
  if (!cudnn_compiled())
    throw Error(what + ": flatmin was built without cuDNN (configure with -Dcudnn=enabled, -Dcudnn_dir=DIR " +
                "where cudnn.h and libcudnn are); FLATMIN_CUDA_CONV=native runs its own kernels");
}
ConvEngine engine_from_environment() {
  const char* v = std::getenv("FLATMIN_CUDA_CONV");
  const std::string s = v ? v : "";
  if (s.empty()) return cudnn_compiled() ? ConvEngine::automatic : ConvEngine::native;
  if (s == "native") return ConvEngine::native;
  if (s == "auto" || s == "cudnn" || s == "cudnn-benchmark") {
    require_cudnn("FLATMIN_CUDA_CONV=" + s);
    return s == "auto" ? ConvEngine::automatic : s == "cudnn" ? ConvEngine::cudnn : ConvEngine::cudnn_benchmark;
  }
  throw Error("FLATMIN_CUDA_CONV='" + s + "': expected auto, cudnn, cudnn-benchmark or native");
}
// Read once, at first use; a bad value throws there (and again at each later use).
std::atomic<int>& engine_setting() {
  static std::atomic<int> e{int(engine_from_environment())};
  return e;
}
}  // namespace

ConvEngine conv_engine() { return ConvEngine(engine_setting().load()); }

void set_conv_engine(ConvEngine e) {
  if (e != ConvEngine::native) require_cudnn("set_conv_engine");
  engine_setting().store(int(e));
}

}  // namespace flatmin::cuda
